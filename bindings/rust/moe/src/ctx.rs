// The ctx (device, threads, seed, logging) and the mesh (parallel layout). Handles free themselves on
// Drop; lifetimes make every object outlive nothing it was made from (a mesh borrows its ctx). The log
// callback is a Rust closure behind a trampoline that never lets a panic unwind into C.

use std::cell::RefCell;
use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::config::{CtxConfig, MeshConfig};
use crate::error::{check, Error, Result};

/// Severity of a log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Failures; every failed call logs one.
    Error,
    /// Suspicious but not failing.
    Warn,
    /// Progress.
    Info,
    /// Detail for developers.
    Debug,
}

impl LogLevel {
    fn from_raw(level: i32) -> LogLevel {
        match level {
            sys::MOE_LOG_ERROR => LogLevel::Error,
            sys::MOE_LOG_WARN => LogLevel::Warn,
            sys::MOE_LOG_INFO => LogLevel::Info,
            _ => LogLevel::Debug,
        }
    }

    /// The C value (`moe_log_level`).
    pub fn to_raw(self) -> i32 {
        match self {
            LogLevel::Error => sys::MOE_LOG_ERROR,
            LogLevel::Warn => sys::MOE_LOG_WARN,
            LogLevel::Info => sys::MOE_LOG_INFO,
            LogLevel::Debug => sys::MOE_LOG_DEBUG,
        }
    }
}

/// Kind of device a ctx computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
    /// A device this version of the crate does not know.
    Other(i32),
}

type LogFn = dyn FnMut(LogLevel, &str);

/// The closure a ctx logs to; boxed so its address stays put while C holds it as user_data.
struct LogSlot {
    f: RefCell<Box<LogFn>>,
}

extern "C" fn log_trampoline(level: i32, message: *const c_char, user_data: *mut c_void) {
    // A panic must not unwind through libmoe's C frames: catch it and drop the message.
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        if user_data.is_null() || message.is_null() {
            return;
        }
        let slot = unsafe { &*(user_data as *const LogSlot) };
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
        // a logger that makes libmoe log again would re-enter: the inner message is dropped
        if let Ok(mut f) = slot.f.try_borrow_mut() {
            (*f)(LogLevel::from_raw(level), &text);
        }
    }));
}

/// A library context: where libmoe computes and whom it tells. Used by one thread at a time (it is
/// neither `Send` nor `Sync`); every object made from it borrows it.
pub struct Ctx {
    raw: NonNull<sys::moe_ctx>,
    _logger: Option<Box<LogSlot>>, // dropped after the ctx (Drop runs before fields are dropped)
}

impl Ctx {
    /// A ctx with every default (CPU, OpenMP's thread count, seed 1234).
    pub fn new() -> Result<Ctx> {
        Ctx::create(&CtxConfig::default(), None)
    }

    /// A ctx with the given options.
    pub fn with_config(cfg: &CtxConfig) -> Result<Ctx> {
        Ctx::create(cfg, None)
    }

    /// A ctx that sends its log messages (up to `cfg.log_level`) to `logger`, on the thread making
    /// the libmoe call. A panic in `logger` is caught and the message dropped.
    pub fn with_logger<F>(cfg: &CtxConfig, logger: F) -> Result<Ctx>
    where
        F: FnMut(LogLevel, &str) + 'static,
    {
        Ctx::create(cfg, Some(Box::new(LogSlot { f: RefCell::new(Box::new(logger)) })))
    }

    fn create(cfg: &CtxConfig, logger: Option<Box<LogSlot>>) -> Result<Ctx> {
        let mut raw = cfg.to_raw();
        match &logger {
            Some(slot) => {
                raw.log_fn = Some(log_trampoline);
                raw.log_user_data = &**slot as *const LogSlot as *mut c_void;
            }
            None => {
                raw.log_fn = None;
                raw.log_user_data = ptr::null_mut();
            }
        }
        let mut out: *mut sys::moe_ctx = ptr::null_mut();
        check(unsafe { sys::moe_ctx_create(&raw, &mut out) }, ptr::null())?;
        match NonNull::new(out) {
            Some(raw) => Ok(Ctx { raw, _logger: logger }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_ctx_create returned no ctx")),
        }
    }

    /// The raw handle, for calls into `moe_sys`; it stays owned by this `Ctx`.
    pub fn as_ptr(&self) -> *mut sys::moe_ctx {
        self.raw.as_ptr()
    }

    /// The device this ctx computes on, and its index.
    pub fn device(&self) -> Result<(DeviceType, i32)> {
        let (mut ty, mut index) = (0i32, 0i32);
        check(unsafe { sys::moe_ctx_device(self.as_ptr(), &mut ty, &mut index) }, self.as_ptr())?;
        let ty = match ty {
            sys::MOE_DEVICE_CPU => DeviceType::Cpu,
            sys::MOE_DEVICE_CUDA => DeviceType::Cuda,
            other => DeviceType::Other(other),
        };
        Ok((ty, index))
    }

    /// Bytes of tensor memory held now, and the most held at once.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let (mut current, mut peak) = (0u64, 0u64);
        check(unsafe { sys::moe_ctx_memory(self.as_ptr(), &mut current, &mut peak) }, self.as_ptr())?;
        Ok((current, peak))
    }

    /// The message of the last failed call made with this ctx ("" if none).
    pub fn last_error(&self) -> String {
        unsafe { crate::error::text(sys::moe_ctx_last_error(self.as_ptr())) }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe { sys::moe_ctx_destroy(self.raw.as_ptr()) }
    }
}

/// Number of CUDA devices visible (0 without CUDA).
pub fn cuda_device_count() -> Result<i32> {
    let mut n = 0i32;
    check(unsafe { sys::moe_cuda_device_count(&mut n) }, ptr::null())?;
    Ok(n)
}

/// A parallel group a rank belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshAxis {
    /// Every rank.
    World,
    /// Data-parallel replicas.
    Dp,
    /// Tensor-parallel shards.
    Tp,
    /// Pipeline stages.
    Pp,
    /// Expert-parallel shards.
    Ep,
    /// Tensor-parallel shards inside each expert.
    Etp,
    /// Data-parallel replicas of expert parameters.
    Edp,
}

impl MeshAxis {
    fn to_raw(self) -> i32 {
        match self {
            MeshAxis::World => sys::MOE_AXIS_WORLD,
            MeshAxis::Dp => sys::MOE_AXIS_DP,
            MeshAxis::Tp => sys::MOE_AXIS_TP,
            MeshAxis::Pp => sys::MOE_AXIS_PP,
            MeshAxis::Ep => sys::MOE_AXIS_EP,
            MeshAxis::Etp => sys::MOE_AXIS_ETP,
            MeshAxis::Edp => sys::MOE_AXIS_EDP,
        }
    }
}

/// The parallel layout (a world of one rank by default). Borrows its ctx.
pub struct Mesh<'c> {
    raw: NonNull<sys::moe_mesh>,
    ctx: &'c Ctx,
    _not_send: PhantomData<*mut ()>,
}

impl<'c> Mesh<'c> {
    /// A world of one rank.
    pub fn new(ctx: &'c Ctx) -> Result<Mesh<'c>> {
        Mesh::create(ctx, None)
    }

    /// A mesh with the given sizes.
    pub fn with_config(ctx: &'c Ctx, cfg: &MeshConfig) -> Result<Mesh<'c>> {
        Mesh::create(ctx, Some(cfg.to_raw()))
    }

    fn create(ctx: &'c Ctx, cfg: Option<sys::moe_mesh_config>) -> Result<Mesh<'c>> {
        let mut out: *mut sys::moe_mesh = ptr::null_mut();
        let cfg_ptr = cfg.as_ref().map_or(ptr::null(), |c| c as *const sys::moe_mesh_config);
        check(unsafe { sys::moe_mesh_create(ctx.as_ptr(), cfg_ptr, &mut out) }, ctx.as_ptr())?;
        match NonNull::new(out) {
            Some(raw) => Ok(Mesh { raw, ctx, _not_send: PhantomData }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_mesh_create returned no mesh")),
        }
    }

    /// The raw handle; it stays owned by this `Mesh`.
    pub fn as_ptr(&self) -> *mut sys::moe_mesh {
        self.raw.as_ptr()
    }

    /// The ctx this mesh was made from.
    pub fn ctx(&self) -> &'c Ctx {
        self.ctx
    }

    /// Size of this rank's group along an axis.
    pub fn group_size(&self, axis: MeshAxis) -> Result<i32> {
        let mut n = 0i32;
        check(unsafe { sys::moe_mesh_group_size(self.as_ptr(), axis.to_raw(), &mut n) }, self.ctx.as_ptr())?;
        Ok(n)
    }

    /// This rank's index in its group along an axis.
    pub fn group_rank(&self, axis: MeshAxis) -> Result<i32> {
        let mut r = 0i32;
        check(unsafe { sys::moe_mesh_group_rank(self.as_ptr(), axis.to_raw(), &mut r) }, self.ctx.as_ptr())?;
        Ok(r)
    }

    /// Whether norms and residuals are sharded over the tp group.
    pub fn sequence_parallel(&self) -> Result<bool> {
        let mut on = 0u32;
        check(unsafe { sys::moe_mesh_sequence_parallel(self.as_ptr(), &mut on) }, self.ctx.as_ptr())?;
        Ok(on != 0)
    }
}

impl Drop for Mesh<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_mesh_destroy(self.raw.as_ptr()) }
    }
}
