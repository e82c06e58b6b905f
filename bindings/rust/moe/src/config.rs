// Configs and statistics: thin owners of the generated #[repr(C)] structs. `Default` fills a config
// through the library's `moe_x_config_init` (so new fields get the library's defaults), fields are
// read and set through Deref (`cfg.d_model = 64`), and `struct_size` is always rewritten before a
// config reaches C, so a caller cannot make the library read past the struct.

use std::mem;
use std::ops::{Deref, DerefMut};

use moe_sys as sys;

macro_rules! c_struct {
    ($(#[$doc:meta])* $name:ident, $raw:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name(pub(crate) sys::$raw);

        impl Deref for $name {
            type Target = sys::$raw;
            fn deref(&self) -> &sys::$raw {
                &self.0
            }
        }

        impl DerefMut for $name {
            fn deref_mut(&mut self) -> &mut sys::$raw {
                &mut self.0
            }
        }

        impl $name {
            /// The C struct, with `struct_size` set to this binding's size of it.
            pub fn to_raw(&self) -> sys::$raw {
                let mut raw = self.0;
                raw.struct_size = mem::size_of::<sys::$raw>() as u32;
                raw
            }

            /// Wraps a C struct.
            pub fn from_raw(raw: sys::$raw) -> Self {
                $name(raw)
            }

            /// All zero but `struct_size`: what the library fills in an out-parameter.
            pub(crate) fn zeroed() -> Self {
                // the generated structs hold integers, floats, nullable pointers and Option<fn>: all
                // valid when zero
                let mut raw: sys::$raw = unsafe { mem::zeroed() };
                raw.struct_size = mem::size_of::<sys::$raw>() as u32;
                $name(raw)
            }
        }
    };
}

macro_rules! config {
    ($(#[$doc:meta])* $name:ident, $raw:ident, $init:ident) => {
        c_struct!($(#[$doc])* $name, $raw);

        impl Default for $name {
            fn default() -> Self {
                let mut c = Self::zeroed();
                // fails only for a NULL pointer or a size below struct_size: neither can happen here
                let st = unsafe { sys::$init(&mut c.0, mem::size_of::<sys::$raw>() as u32) };
                debug_assert_eq!(st, sys::MOE_OK);
                c
            }
        }

        impl $name {
            /// The library's defaults (same as `Default::default()`).
            pub fn new() -> Self {
                Self::default()
            }
        }
    };
}

config!(
    /// Options of a [`Ctx`](crate::Ctx): device, threads, seed, log level. Logging is set with
    /// [`Ctx::with_logger`](crate::Ctx::with_logger); the raw `log_fn`/`log_user_data` fields are ignored.
    CtxConfig, moe_ctx_config, moe_ctx_config_init
);
config!(
    /// Sizes of a [`Mesh`](crate::Mesh) (dp, tp, pp, ep, etp, sequence parallelism, backend).
    MeshConfig, moe_mesh_config, moe_mesh_config_init
);
config!(
    /// Architecture of a [`Model`](crate::Model); defaults to a small byte-level MoE model.
    ModelConfig, moe_model_config, moe_model_config_init
);
config!(
    /// Settings of a standalone [`Layer`](crate::Layer).
    LayerConfig, moe_layer_config, moe_layer_config_init
);
config!(
    /// Settings of an [`Optimizer`](crate::Optimizer): AdamW or SGD, schedule, clipping.
    OptimizerConfig, moe_optimizer_config, moe_optimizer_config_init
);
config!(
    /// How [`Model::generate`](crate::Model::generate) picks tokens; greedy decoding of 64 by default.
    GenerateConfig, moe_generate_config, moe_generate_config_init
);
config!(
    /// Options of a [`Dataset`](crate::Dataset); its path is given to `Dataset::open` (the raw `path`
    /// field is ignored).
    DatasetConfig, moe_dataset_config, moe_dataset_config_init
);
config!(
    /// What a checkpoint records besides tensors: step, data position, rotation (`keep_last`); after a
    /// load, the saving ctx's seed. The trainer text is an argument of the save (the raw `user_json`
    /// field is ignored).
    CheckpointInfo, moe_checkpoint_info, moe_checkpoint_info_init
);
c_struct!(
    /// What one training step did: loss, aux loss, gradient norm, learning rate, tokens, load.
    StepStats, moe_step_stats
);
c_struct!(
    /// What one optimizer step did.
    OptimizerStats, moe_optimizer_stats
);
c_struct!(
    /// Routing statistics of one MoE layer's last forward pass.
    RoutingStats, moe_routing_stats
);

impl ModelConfig {
    /// Checks the config without creating anything; the error names the first invalid field.
    pub fn validate(&self) -> crate::Result<()> {
        let raw = self.to_raw();
        crate::error::check(unsafe { sys::moe_model_config_validate(&raw) }, std::ptr::null())
    }

    /// Reads a Hugging Face Mixtral `config.json` in `dir` into this config; fields Mixtral does not
    /// have keep their values.
    pub fn read_hf(&mut self, dir: &std::path::Path) -> crate::Result<()> {
        let dir = crate::path_cstring(dir)?;
        let mut raw = self.to_raw();
        crate::error::check(unsafe { sys::moe_hf_read_config(dir.as_ptr(), &mut raw) }, std::ptr::null())?;
        self.0 = raw;
        Ok(())
    }
}
