// The model: creation, forward, forward+backward, parameters by name, routing statistics, one-call
// training steps. Every slice handed to C is checked against the size the library will read or write
// first, so a wrong length is an InvalidArg error here, never an out-of-bounds access there.

use std::cell::Cell;
use std::ffi::CString;
use std::marker::PhantomData;
use std::os::raw::c_char;
use std::path::Path;
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::config::{ModelConfig, RoutingStats, StepStats};
use crate::ctx::{Ctx, Mesh};
use crate::error::{check, to_i32, to_i64, Error, Result};
use crate::optim::Optimizer;

/// Name and logical shape of one parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// e.g. "layers.0.moe.experts.w1".
    pub name: String,
    /// The unsharded shape.
    pub shape: Vec<i64>,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }
}

/// Every parameter of a model, by name: what a checkpoint holds of the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSnapshot {
    /// Each parameter with its values, in the model's order.
    pub tensors: Vec<(ParamInfo, Vec<f32>)>,
}

/// The losses of one forward+backward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// Mean cross-entropy over the counted targets.
    pub lm: f64,
    /// Router aux + z losses summed over MoE layers.
    pub aux: f64,
}

/// One data-parallel rank's batch: `tokens` and `targets` hold `num_micro_batches * micro_batch_size
/// * seq_len` ids each (target -100 = not counted).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'d> {
    tokens: &'d [i32],
    targets: &'d [i32],
    micro_batch_size: usize,
    seq_len: usize,
    num_micro_batches: usize,
}

impl<'d> Batch<'d> {
    /// Splits `tokens`/`targets` into micro-batches of `micro_batch_size` sequences of `seq_len`.
    pub fn new(tokens: &'d [i32], targets: &'d [i32], micro_batch_size: usize, seq_len: usize) -> Result<Batch<'d>> {
        let per_micro = micro_batch_size.checked_mul(seq_len).unwrap_or(0);
        if per_micro == 0 || tokens.is_empty() || tokens.len() % per_micro != 0 {
            return Err(Error::invalid(format!(
                "Batch::new: {} tokens are not a whole number of micro-batches of {} x {}",
                tokens.len(),
                micro_batch_size,
                seq_len
            )));
        }
        if targets.len() != tokens.len() {
            return Err(Error::invalid(format!(
                "Batch::new: {} targets for {} tokens",
                targets.len(),
                tokens.len()
            )));
        }
        Ok(Batch { tokens, targets, micro_batch_size, seq_len, num_micro_batches: tokens.len() / per_micro })
    }

    /// Micro-batches accumulated into one update.
    pub fn num_micro_batches(&self) -> usize {
        self.num_micro_batches
    }

    fn to_raw(self) -> Result<sys::moe_batch> {
        let mut raw: sys::moe_batch = unsafe { std::mem::zeroed() };
        check(unsafe { sys::moe_batch_init(&mut raw, std::mem::size_of::<sys::moe_batch>() as u32) }, ptr::null())?;
        raw.tokens = self.tokens.as_ptr();
        raw.targets = self.targets.as_ptr();
        raw.micro_batch_size = to_i32(self.micro_batch_size, "micro_batch_size")?;
        raw.seq_len = to_i32(self.seq_len, "seq_len")?;
        raw.num_micro_batches = to_i32(self.num_micro_batches, "num_micro_batches")?;
        Ok(raw)
    }
}

/// A decoder-only MoE transformer; borrows its ctx and mesh. Methods take `&self`: the model lives in
/// C memory, and the type is neither `Send` nor `Sync`, so one thread uses it at a time.
pub struct Model<'c> {
    raw: NonNull<sys::moe_model>,
    ctx: &'c Ctx,
    cfg: sys::moe_model_config,
    // Bumped by every call that runs layers forward; a borrowed layer's backward checks it still
    // matches its own forward, because the library's saved state (and its sizes) came from the last one.
    pub(crate) generation: Cell<u64>,
    _mesh: PhantomData<&'c Mesh<'c>>,
}

pub(crate) fn c_name(name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| Error::invalid(format!("name {:?} holds a NUL byte", name)))
}

impl<'c> Model<'c> {
    /// A model with freshly initialised parameters.
    pub fn new(ctx: &'c Ctx, mesh: &'c Mesh<'c>, cfg: &ModelConfig) -> Result<Model<'c>> {
        let raw_cfg = cfg.to_raw();
        let mut out: *mut sys::moe_model = ptr::null_mut();
        check(unsafe { sys::moe_model_create(ctx.as_ptr(), mesh.as_ptr(), &raw_cfg, &mut out) }, ctx.as_ptr())?;
        let raw = match NonNull::new(out) {
            Some(raw) => raw,
            None => return Err(Error::new(sys::MOE_ERR_STATE, "moe_model_create returned no model")),
        };
        let mut model = Model { raw, ctx, cfg: raw_cfg, generation: Cell::new(0), _mesh: PhantomData };
        model.cfg = model.config()?.to_raw(); // with the library's defaults applied
        Ok(model)
    }

    /// The raw handle; it stays owned by this `Model`.
    pub fn as_ptr(&self) -> *mut sys::moe_model {
        self.raw.as_ptr()
    }

    /// The ctx the model was made with.
    pub fn ctx(&self) -> &'c Ctx {
        self.ctx
    }

    fn check(&self, status: i32) -> Result<()> {
        check(status, self.ctx.as_ptr())
    }

    pub(crate) fn bump(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    /// The config the model was created with, defaults applied.
    pub fn config(&self) -> Result<ModelConfig> {
        let mut cfg = ModelConfig::zeroed();
        self.check(unsafe { sys::moe_model_get_config(self.as_ptr(), &mut cfg.0) })?;
        Ok(cfg)
    }

    /// Total parameters and parameters active per token.
    pub fn num_params(&self) -> Result<(i64, i64)> {
        let (mut total, mut active) = (0i64, 0i64);
        self.check(unsafe { sys::moe_model_num_params(self.as_ptr(), &mut total, &mut active) })?;
        Ok((total, active))
    }

    /// Training FLOPs per token at a sequence length.
    pub fn flops_per_token(&self, seq_len: usize) -> Result<f64> {
        let mut flops = 0f64;
        self.check(unsafe { sys::moe_model_flops_per_token(self.as_ptr(), to_i32(seq_len, "seq_len")?, &mut flops) })?;
        Ok(flops)
    }

    fn check_tokens(&self, what: &str, ids: &[i32], batch: usize, seq_len: usize) -> Result<()> {
        if batch.checked_mul(seq_len) != Some(ids.len()) {
            return Err(Error::invalid(format!("{}: {} ids for batch {} x seq_len {}", what, ids.len(), batch, seq_len)));
        }
        Ok(())
    }

    /// Logits `[batch][seq_len][vocab_size]` for `batch * seq_len` token ids.
    pub fn forward(&self, tokens: &[i32], batch: usize, seq_len: usize) -> Result<Vec<f32>> {
        let vocab = self.cfg.vocab_size.max(0) as usize;
        let mut logits = vec![0f32; tokens.len() * vocab];
        self.forward_into(tokens, batch, seq_len, &mut logits)?;
        Ok(logits)
    }

    /// As [`forward`](Self::forward), into a caller's buffer of at least `batch * seq_len * vocab_size`.
    pub fn forward_into(&self, tokens: &[i32], batch: usize, seq_len: usize, logits: &mut [f32]) -> Result<()> {
        self.check_tokens("Model::forward", tokens, batch, seq_len)?;
        self.bump();
        self.check(unsafe {
            sys::moe_model_forward(
                self.as_ptr(),
                tokens.as_ptr(),
                to_i32(batch, "batch")?,
                to_i32(seq_len, "seq_len")?,
                logits.as_mut_ptr(),
                logits.len() as u64,
            )
        })
    }

    /// Forward and backward of one micro-batch; `loss_weight` times its gradient is added to the
    /// model's gradients.
    pub fn forward_backward(&self, tokens: &[i32], targets: &[i32], batch: usize, seq_len: usize, loss_weight: f32) -> Result<Losses> {
        self.check_tokens("Model::forward_backward tokens", tokens, batch, seq_len)?;
        self.check_tokens("Model::forward_backward targets", targets, batch, seq_len)?;
        let mut losses = Losses { lm: 0.0, aux: 0.0 };
        self.bump();
        self.check(unsafe {
            sys::moe_model_forward_backward(
                self.as_ptr(),
                tokens.as_ptr(),
                targets.as_ptr(),
                to_i32(batch, "batch")?,
                to_i32(seq_len, "seq_len")?,
                loss_weight,
                &mut losses.lm,
                &mut losses.aux,
            )
        })?;
        Ok(losses)
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&self) -> Result<()> {
        self.check(unsafe { sys::moe_model_zero_grad(self.as_ptr()) })
    }

    /// One training step: the batch's micro-batches, gradient accumulation, clipping, update.
    pub fn train_step(&self, opt: &Optimizer<'_>, batch: &Batch<'_>) -> Result<StepStats> {
        let raw = batch.to_raw()?;
        let mut stats = StepStats::zeroed();
        self.bump();
        self.check(unsafe { sys::moe_train_step(self.as_ptr(), opt.as_ptr(), &raw, &mut stats.0) })?;
        Ok(stats)
    }

    /// Names and shapes of every parameter tensor, in the model's fixed order.
    pub fn params(&self) -> Result<Vec<ParamInfo>> {
        let mut count = 0i32;
        self.check(unsafe { sys::moe_model_param_count(self.as_ptr(), &mut count) })?;
        let mut out = Vec::with_capacity(count.max(0) as usize);
        for i in 0..count {
            let mut name = [0 as c_char; 256];
            let mut ndim = 0i32;
            let mut shape = [0i64; sys::MOE_TENSOR_MAX_DIMS as usize];
            self.check(unsafe {
                sys::moe_model_param_info(self.as_ptr(), i, name.as_mut_ptr(), name.len() as u32, &mut ndim, shape.as_mut_ptr())
            })?;
            let name = unsafe { crate::error::text(name.as_ptr()) };
            out.push(ParamInfo { name, shape: shape[..ndim.clamp(0, sys::MOE_TENSOR_MAX_DIMS) as usize].to_vec() });
        }
        Ok(out)
    }

    /// Copies a parameter (or its gradient) into `dst`, whose length must be its element count.
    pub fn read_param_into(&self, name: &str, gradient: bool, dst: &mut [f32]) -> Result<()> {
        let cname = c_name(name)?;
        let count = to_i64(dst.len(), "count")?; // the library writes exactly this many, if it matches
        self.check(unsafe { sys::moe_model_param_read(self.as_ptr(), cname.as_ptr(), gradient as u32, dst.as_mut_ptr(), count) })
    }

    /// A parameter's values (`gradient = false`) or its gradient.
    pub fn read_param(&self, name: &str, gradient: bool) -> Result<Vec<f32>> {
        let info = self.params()?.into_iter().find(|p| p.name == name);
        let info = match info {
            Some(info) => info,
            None => return Err(Error::invalid(format!("Model::read_param: no parameter named {:?}", name))),
        };
        let mut v = vec![0f32; info.numel()];
        self.read_param_into(name, gradient, &mut v)?;
        Ok(v)
    }

    /// Overwrites a parameter; `src` must hold its element count.
    pub fn write_param(&self, name: &str, src: &[f32]) -> Result<()> {
        let cname = c_name(name)?;
        let count = to_i64(src.len(), "count")?;
        self.check(unsafe { sys::moe_model_param_write(self.as_ptr(), cname.as_ptr(), src.as_ptr(), count) })
    }

    /// Every parameter's values, by name.
    pub fn save_params(&self) -> Result<ParamSnapshot> {
        let mut tensors = Vec::new();
        for info in self.params()? {
            let mut v = vec![0f32; info.numel()];
            self.read_param_into(&info.name, false, &mut v)?;
            tensors.push((info, v));
        }
        Ok(ParamSnapshot { tensors })
    }

    /// Overwrites parameters from a snapshot (names and shapes must match).
    pub fn load_params(&self, snapshot: &ParamSnapshot) -> Result<()> {
        let mine = self.params()?;
        for (info, values) in &snapshot.tensors {
            match mine.iter().find(|p| p.name == info.name) {
                Some(p) if p.shape == info.shape => self.write_param(&info.name, values)?,
                Some(p) => {
                    return Err(Error::invalid(format!(
                        "Model::load_params: {} has shape {:?} here, {:?} in the snapshot",
                        info.name, p.shape, info.shape
                    )))
                }
                None => return Err(Error::invalid(format!("Model::load_params: no parameter named {}", info.name))),
            }
        }
        Ok(())
    }

    /// Routing statistics of MoE block `layer` from the last forward, and the tokens kept per expert.
    pub fn routing_stats(&self, layer: usize) -> Result<(RoutingStats, Vec<i64>)> {
        let layer = to_i32(layer, "layer")?;
        let mut stats = RoutingStats::zeroed();
        self.check(unsafe { sys::moe_model_routing_stats(self.as_ptr(), layer, &mut stats.0, ptr::null_mut(), 0) })?;
        let mut per_expert = vec![0i64; stats.num_experts.max(0) as usize];
        let cap = to_i32(per_expert.len(), "capacity")?;
        self.check(unsafe { sys::moe_model_routing_stats(self.as_ptr(), layer, &mut stats.0, per_expert.as_mut_ptr(), cap) })?;
        Ok((stats, per_expert))
    }

    /// Initialises every MoE layer's experts from the dense MLPs of `dense` (upcycling).
    pub fn upcycle(&self, dense: &Model<'_>) -> Result<()> {
        self.check(unsafe { sys::moe_model_upcycle(self.as_ptr(), dense.as_ptr()) })
    }

    /// Loads a Hugging Face Mixtral checkpoint from `dir` into this model.
    pub fn import_hf(&self, dir: &Path) -> Result<()> {
        let dir = crate::path_cstring(dir)?;
        self.check(unsafe { sys::moe_model_import_hf(self.as_ptr(), dir.as_ptr()) })
    }

    pub(crate) fn vocab_and_width(&self) -> (usize, usize) {
        (self.cfg.vocab_size.max(0) as usize, self.cfg.d_model.max(0) as usize)
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_model_destroy(self.raw.as_ptr()) }
    }
}
