// The optimizer: AdamW or SGD with a learning-rate schedule and global-norm clipping, bound to one
// model, which it borrows.

use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::config::{OptimizerConfig, OptimizerStats};
use crate::ctx::Ctx;
use crate::error::{check, Error, Result};
use crate::model::Model;

/// An optimizer for one model; borrows it.
pub struct Optimizer<'m> {
    raw: NonNull<sys::moe_optimizer>,
    ctx: &'m Ctx,
    _model: PhantomData<&'m Model<'m>>,
}

impl<'m> Optimizer<'m> {
    /// An optimizer with zero state for `model`.
    pub fn new<'c: 'm>(model: &'m Model<'c>, cfg: &OptimizerConfig) -> Result<Optimizer<'m>> {
        let raw_cfg = cfg.to_raw();
        let ctx: &'m Ctx = model.ctx();
        let mut out: *mut sys::moe_optimizer = ptr::null_mut();
        check(unsafe { sys::moe_optimizer_create(model.as_ptr(), &raw_cfg, &mut out) }, ctx.as_ptr())?;
        match NonNull::new(out) {
            Some(raw) => Ok(Optimizer { raw, ctx, _model: PhantomData }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_optimizer_create returned no optimizer")),
        }
    }

    /// The raw handle; it stays owned by this `Optimizer`.
    pub fn as_ptr(&self) -> *mut sys::moe_optimizer {
        self.raw.as_ptr()
    }

    /// Clips the model's gradients and applies one update (for custom loops built on
    /// [`Model::forward_backward`]).
    pub fn step(&self) -> Result<OptimizerStats> {
        let mut stats = OptimizerStats::zeroed();
        check(unsafe { sys::moe_optimizer_step(self.as_ptr(), &mut stats.0) }, self.ctx.as_ptr())?;
        Ok(stats)
    }

    /// The learning rate the schedule gives at update `step` (0 = the first).
    pub fn lr_at(&self, step: i64) -> Result<f64> {
        let mut lr = 0f64;
        check(unsafe { sys::moe_optimizer_lr_at(self.as_ptr(), step, &mut lr) }, self.ctx.as_ptr())?;
        Ok(lr)
    }
}

impl Drop for Optimizer<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_optimizer_destroy(self.raw.as_ptr()) }
    }
}
