//! Safe Rust API of libmoe, a C library that trains Mixture-of-Experts transformer language models.
//!
//! Handles free themselves on `Drop`; lifetimes keep every object within the life of what it was made
//! from (a model borrows its ctx and mesh, an optimizer its model); every failure is an [`Error`]
//! carrying the library's message; slices go in and out, their lengths checked before C sees them; no
//! panic crosses into C. The raw generated declarations are [`sys`].
//!
//! ```no_run
//! use moe::{Batch, Ctx, Mesh, Model, ModelConfig, Optimizer, OptimizerConfig};
//!
//! let ctx = Ctx::new()?;
//! let mesh = Mesh::new(&ctx)?;
//! let mut cfg = ModelConfig::default();
//! cfg.d_model = 64;
//! let model = Model::new(&ctx, &mesh, &cfg)?;
//! let opt = Optimizer::new(&model, &OptimizerConfig::default())?;
//! let (tokens, targets) = (vec![1i32; 4 * 32], vec![2i32; 4 * 32]);
//! let stats = model.train_step(&opt, &Batch::new(&tokens, &targets, 4, 32)?)?;
//! println!("loss {}", stats.loss);
//! # Ok::<(), moe::Error>(())
//! ```

#![warn(missing_docs)]

mod checkpoint;
mod config;
mod ctx;
mod data;
mod error;
mod generate;
mod layer;
mod model;
mod optim;
mod tensor;

use std::ffi::CString;
use std::path::Path;

pub use moe_sys as sys;

pub use checkpoint::read_checkpoint_info;
pub use config::{
    CheckpointInfo, CtxConfig, DatasetConfig, GenerateConfig, LayerConfig, MeshConfig, ModelConfig, OptimizerConfig, OptimizerStats,
    RoutingStats, StepStats,
};
pub use ctx::{cuda_device_count, Ctx, DeviceType, LogLevel, Mesh, MeshAxis};
pub use data::{write_indexed, Dataset, DatasetWriter, Split};
pub use error::{status_name, Error, ErrorKind, Result};
pub use generate::Decoder;
pub use layer::{Layer, LayerKind};
pub use model::{Batch, Losses, Model, ParamInfo, ParamSnapshot};
pub use optim::Optimizer;
pub use tensor::{Dtype, Element, Tensor};

/// The version of the linked library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// "MAJOR.MINOR.PATCH".
    pub text: String,
    /// Major version (an ABI break changes it).
    pub major: i32,
    /// Minor version.
    pub minor: i32,
    /// Patch version.
    pub patch: i32,
}

/// The version of the libmoe linked at run time (compare with `sys::MOE_VERSION_*`, the headers').
pub fn version() -> Version {
    let (mut major, mut minor, mut patch) = (0i32, 0i32, 0i32);
    let text = unsafe { error::text(sys::moe_version(&mut major, &mut minor, &mut patch)) };
    Version { text, major, minor, patch }
}

/// A path as the UTF-8 C string the library expects.
pub(crate) fn path_cstring(path: &Path) -> Result<CString> {
    match path.to_str() {
        Some(s) => model::c_name(s),
        None => Err(Error::invalid(format!("path {:?} is not UTF-8", path))),
    }
}
