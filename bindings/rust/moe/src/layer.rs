// Single layers for custom trainers: a standalone MoE or dense-MLP layer, or a sub-layer borrowed from a
// model. The library saves the last forward's state (and its size) for the backward; this wrapper
// remembers the size and which forward it was, so a backward never hands C a buffer of another size.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::config::{LayerConfig, RoutingStats};
use crate::ctx::{Ctx, Mesh};
use crate::error::{check, to_i32, to_i64, Error, Result};
use crate::model::Model;
use crate::ParamInfo;

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// norm + causal self-attention (borrowed from a model only).
    Attention,
    /// A dense MLP.
    DenseMlp,
    /// Router + experts.
    Moe,
}

impl LayerKind {
    /// The C value (`moe_layer_kind`).
    pub fn to_raw(self) -> i32 {
        match self {
            LayerKind::Attention => sys::MOE_LAYER_ATTENTION,
            LayerKind::DenseMlp => sys::MOE_LAYER_DENSE_MLP,
            LayerKind::Moe => sys::MOE_LAYER_MOE,
        }
    }
}

/// A layer: standalone (owns its parameters) or borrowed from a model (then it borrows the model).
pub struct Layer<'a> {
    raw: NonNull<sys::moe_layer>,
    ctx: &'a Ctx,
    model: Option<&'a Model<'a>>, // Some for a borrowed layer
    d_model: usize,
    own_generation: Cell<u64>,
    last_forward: Cell<Option<(usize, u64)>>, // (floats in x, generation at that forward)
    _not_send: PhantomData<*mut ()>,
}

impl<'a> Layer<'a> {
    /// A standalone layer with freshly initialised parameters.
    pub fn new(ctx: &'a Ctx, mesh: &'a Mesh<'a>, cfg: &LayerConfig) -> Result<Layer<'a>> {
        let raw_cfg = cfg.to_raw();
        let mut out: *mut sys::moe_layer = ptr::null_mut();
        check(unsafe { sys::moe_layer_create(ctx.as_ptr(), mesh.as_ptr(), &raw_cfg, &mut out) }, ctx.as_ptr())?;
        match NonNull::new(out) {
            Some(raw) => Ok(Layer {
                raw,
                ctx,
                model: None,
                d_model: raw_cfg.d_model.max(0) as usize,
                own_generation: Cell::new(0),
                last_forward: Cell::new(None),
                _not_send: PhantomData,
            }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_layer_create returned no layer")),
        }
    }

    /// Borrows sub-layer `kind` of transformer block `block` of a model.
    pub fn of_model(model: &'a Model<'a>, block: usize, kind: LayerKind) -> Result<Layer<'a>> {
        let mut out: *mut sys::moe_layer = ptr::null_mut();
        let ctx = model.ctx();
        check(
            unsafe { sys::moe_model_layer(model.as_ptr(), to_i32(block, "block")?, kind.to_raw(), &mut out) },
            ctx.as_ptr(),
        )?;
        match NonNull::new(out) {
            Some(raw) => Ok(Layer {
                raw,
                ctx,
                model: Some(model),
                d_model: model.vocab_and_width().1,
                own_generation: Cell::new(0),
                last_forward: Cell::new(None),
                _not_send: PhantomData,
            }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_model_layer returned no layer")),
        }
    }

    /// The raw handle; it stays owned by this `Layer` (or its model).
    pub fn as_ptr(&self) -> *mut sys::moe_layer {
        self.raw.as_ptr()
    }

    fn check(&self, status: i32) -> Result<()> {
        check(status, self.ctx.as_ptr())
    }

    // The generation that the library's saved forward state belongs to: the model's for a borrowed
    // layer (model calls run its layers too), the layer's own otherwise.
    fn generation(&self) -> &Cell<u64> {
        match self.model {
            Some(m) => &m.generation,
            None => &self.own_generation,
        }
    }

    /// What the layer computes.
    pub fn kind(&self) -> Result<LayerKind> {
        let mut k = 0i32;
        self.check(unsafe { sys::moe_layer_kind_of(self.as_ptr(), &mut k) })?;
        Ok(match k {
            sys::MOE_LAYER_ATTENTION => LayerKind::Attention,
            sys::MOE_LAYER_DENSE_MLP => LayerKind::DenseMlp,
            _ => LayerKind::Moe,
        })
    }

    /// y = f(x) for `batch * seq_len` rows of `d_model`; saves what the backward needs.
    pub fn forward(&self, x: &[f32], batch: usize, seq_len: usize) -> Result<Vec<f32>> {
        let rows = batch.checked_mul(seq_len);
        if rows.and_then(|r| r.checked_mul(self.d_model)) != Some(x.len()) {
            return Err(Error::invalid(format!(
                "Layer::forward: {} floats for batch {} x seq_len {} x d_model {}",
                x.len(),
                batch,
                seq_len,
                self.d_model
            )));
        }
        let mut y = vec![0f32; x.len()];
        let gen = self.generation();
        gen.set(gen.get() + 1);
        self.check(unsafe {
            sys::moe_layer_forward(self.as_ptr(), x.as_ptr(), to_i32(batch, "batch")?, to_i32(seq_len, "seq_len")?, y.as_mut_ptr())
        })?;
        self.last_forward.set(Some((x.len(), gen.get())));
        Ok(y)
    }

    /// dx for `dy` (the shape of the last forward's output); adds the parameter gradients.
    pub fn backward(&self, dy: &[f32]) -> Result<Vec<f32>> {
        match self.last_forward.get() {
            Some((n, g)) if g == self.generation().get() && n == dy.len() => {}
            Some((n, g)) if g == self.generation().get() => {
                return Err(Error::invalid(format!("Layer::backward: dy has {} floats, the forward made {}", dy.len(), n)))
            }
            _ => {
                return Err(Error::new(
                    sys::MOE_ERR_STATE,
                    "Layer::backward: no forward of this layer since its state was last replaced",
                ))
            }
        }
        let mut dx = vec![0f32; dy.len()];
        self.check(unsafe { sys::moe_layer_backward(self.as_ptr(), dy.as_ptr(), dx.as_mut_ptr()) })?;
        Ok(dx)
    }

    /// Sets the layer's parameter gradients to zero.
    pub fn zero_grad(&self) -> Result<()> {
        self.check(unsafe { sys::moe_layer_zero_grad(self.as_ptr()) })
    }

    /// Names and shapes of the layer's parameters, by index.
    pub fn params(&self) -> Result<Vec<ParamInfo>> {
        let mut count = 0i32;
        self.check(unsafe { sys::moe_layer_param_count(self.as_ptr(), &mut count) })?;
        let mut out = Vec::with_capacity(count.max(0) as usize);
        for i in 0..count {
            let mut name = [0 as std::os::raw::c_char; 256];
            let mut ndim = 0i32;
            let mut shape = [0i64; sys::MOE_TENSOR_MAX_DIMS as usize];
            self.check(unsafe {
                sys::moe_layer_param_info(self.as_ptr(), i, name.as_mut_ptr(), name.len() as u32, &mut ndim, shape.as_mut_ptr())
            })?;
            let name = unsafe { crate::error::text(name.as_ptr()) };
            out.push(ParamInfo { name, shape: shape[..ndim.clamp(0, sys::MOE_TENSOR_MAX_DIMS) as usize].to_vec() });
        }
        Ok(out)
    }

    /// Copies parameter `index` (or its gradient) into `dst` (exactly its element count).
    pub fn read_param_into(&self, index: usize, gradient: bool, dst: &mut [f32]) -> Result<()> {
        let count = to_i64(dst.len(), "count")?;
        self.check(unsafe {
            sys::moe_layer_param_read(self.as_ptr(), to_i32(index, "index")?, gradient as u32, dst.as_mut_ptr(), count)
        })
    }

    /// Overwrites parameter `index` from `src` (exactly its element count).
    pub fn write_param(&self, index: usize, src: &[f32]) -> Result<()> {
        let count = to_i64(src.len(), "count")?;
        self.check(unsafe { sys::moe_layer_param_write(self.as_ptr(), to_i32(index, "index")?, src.as_ptr(), count) })
    }

    /// Routing statistics of an MoE layer's last forward, and the tokens kept per expert.
    pub fn routing_stats(&self) -> Result<(RoutingStats, Vec<i64>)> {
        let mut stats = RoutingStats::zeroed();
        self.check(unsafe { sys::moe_layer_routing_stats(self.as_ptr(), &mut stats.0, ptr::null_mut(), 0) })?;
        let mut per_expert = vec![0i64; stats.num_experts.max(0) as usize];
        let cap = to_i32(per_expert.len(), "capacity")?;
        self.check(unsafe { sys::moe_layer_routing_stats(self.as_ptr(), &mut stats.0, per_expert.as_mut_ptr(), cap) })?;
        Ok((stats, per_expert))
    }
}

impl Drop for Layer<'_> {
    fn drop(&mut self) {
        // a borrowed layer belongs to its model (and destroy would be a no-op on it anyway)
        if self.model.is_none() {
            unsafe { sys::moe_layer_destroy(self.raw.as_ptr()) }
        }
    }
}
