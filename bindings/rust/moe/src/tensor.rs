// Tensors: typed buffers in the ctx's memory space. Data moves in and out through slices whose element
// type must match the tensor's dtype; the byte count handed to C is always the slice's own size, so
// the library can neither read nor write past it.

use std::marker::PhantomData;
use std::mem;
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::ctx::Ctx;
use crate::error::{check, to_i32, Error, Result};

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// bfloat16 (moved as `u16` bit patterns).
    Bf16,
    /// IEEE binary16 (moved as `u16` bit patterns).
    F16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned byte.
    U8,
}

impl Dtype {
    /// The C value (`moe_dtype`).
    pub fn to_raw(self) -> i32 {
        match self {
            Dtype::F32 => sys::MOE_DTYPE_F32,
            Dtype::Bf16 => sys::MOE_DTYPE_BF16,
            Dtype::F16 => sys::MOE_DTYPE_F16,
            Dtype::I32 => sys::MOE_DTYPE_I32,
            Dtype::I64 => sys::MOE_DTYPE_I64,
            Dtype::U8 => sys::MOE_DTYPE_U8,
        }
    }

    fn from_raw(v: i32) -> Result<Dtype> {
        Ok(match v {
            sys::MOE_DTYPE_F32 => Dtype::F32,
            sys::MOE_DTYPE_BF16 => Dtype::Bf16,
            sys::MOE_DTYPE_F16 => Dtype::F16,
            sys::MOE_DTYPE_I32 => Dtype::I32,
            sys::MOE_DTYPE_I64 => Dtype::I64,
            sys::MOE_DTYPE_U8 => Dtype::U8,
            other => return Err(Error::new(sys::MOE_ERR_UNSUPPORTED, format!("unknown dtype {}", other))),
        })
    }

    /// Bytes per element, as the library reports it.
    pub fn size(self) -> Result<usize> {
        let mut n: usize = 0;
        check(unsafe { sys::moe_dtype_size(self.to_raw(), &mut n) }, ptr::null())?;
        Ok(n)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Rust types that can carry a tensor's elements.
pub trait Element: Copy + sealed::Sealed {
    /// Whether a tensor of `dtype` holds elements of this type.
    fn matches(dtype: Dtype) -> bool;
}

macro_rules! element {
    ($t:ty, $($d:pat_param)|+) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            fn matches(dtype: Dtype) -> bool {
                matches!(dtype, $($d)|+)
            }
        }
    };
}
element!(f32, Dtype::F32);
element!(u16, Dtype::Bf16 | Dtype::F16);
element!(i32, Dtype::I32);
element!(i64, Dtype::I64);
element!(u8, Dtype::U8);

/// A dense row-major tensor owned by the library; borrows its ctx.
pub struct Tensor<'c> {
    raw: NonNull<sys::moe_tensor>,
    ctx: &'c Ctx,
    _not_send: PhantomData<*mut ()>,
}

impl<'c> Tensor<'c> {
    /// A zero-filled tensor.
    pub fn new(ctx: &'c Ctx, dtype: Dtype, shape: &[i64]) -> Result<Tensor<'c>> {
        let ndim = to_i32(shape.len(), "ndim")?;
        let mut out: *mut sys::moe_tensor = ptr::null_mut();
        let shape_ptr = if shape.is_empty() { ptr::null() } else { shape.as_ptr() };
        check(unsafe { sys::moe_tensor_create(ctx.as_ptr(), dtype.to_raw(), ndim, shape_ptr, &mut out) }, ctx.as_ptr())?;
        match NonNull::new(out) {
            Some(raw) => Ok(Tensor { raw, ctx, _not_send: PhantomData }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_tensor_create returned no tensor")),
        }
    }

    /// The raw handle; it stays owned by this `Tensor`.
    pub fn as_ptr(&self) -> *mut sys::moe_tensor {
        self.raw.as_ptr()
    }

    /// The element type.
    pub fn dtype(&self) -> Result<Dtype> {
        let mut d = 0i32;
        check(unsafe { sys::moe_tensor_dtype(self.as_ptr(), &mut d) }, self.ctx.as_ptr())?;
        Dtype::from_raw(d)
    }

    /// The sizes of each dimension.
    pub fn shape(&self) -> Result<Vec<i64>> {
        let mut ndim = 0i32;
        check(unsafe { sys::moe_tensor_shape(self.as_ptr(), &mut ndim, ptr::null_mut(), 0) }, self.ctx.as_ptr())?;
        let mut shape = vec![0i64; ndim.max(0) as usize];
        let cap = ndim;
        check(unsafe { sys::moe_tensor_shape(self.as_ptr(), &mut ndim, shape.as_mut_ptr(), cap) }, self.ctx.as_ptr())?;
        Ok(shape)
    }

    /// Element count and byte size.
    pub fn size(&self) -> Result<(i64, u64)> {
        let (mut numel, mut nbytes) = (0i64, 0u64);
        check(unsafe { sys::moe_tensor_size(self.as_ptr(), &mut numel, &mut nbytes) }, self.ctx.as_ptr())?;
        Ok((numel, nbytes))
    }

    fn check_element<T: Element>(&self) -> Result<()> {
        let dtype = self.dtype()?;
        if T::matches(dtype) {
            Ok(())
        } else {
            Err(Error::invalid(format!("a {:?} tensor cannot hold {}", dtype, std::any::type_name::<T>())))
        }
    }

    /// Overwrites the whole tensor from `src` (exactly its element count).
    pub fn copy_from<T: Element>(&self, src: &[T]) -> Result<()> {
        self.check_element::<T>()?;
        let nbytes = mem::size_of_val(src) as u64; // the library requires exactly the tensor's size
        let p = if src.is_empty() { ptr::null() } else { src.as_ptr() as *const c_void };
        check(unsafe { sys::moe_tensor_copy_from(self.as_ptr(), p, nbytes) }, self.ctx.as_ptr())
    }

    /// Copies the whole tensor into `dst` (at least its element count).
    pub fn copy_to<T: Element>(&self, dst: &mut [T]) -> Result<()> {
        self.check_element::<T>()?;
        let nbytes = mem::size_of_val(dst) as u64; // the library writes at most this many bytes
        let p = if dst.is_empty() { ptr::null_mut() } else { dst.as_mut_ptr() as *mut c_void };
        check(unsafe { sys::moe_tensor_copy_to(self.as_ptr(), p, nbytes) }, self.ctx.as_ptr())
    }

    /// The whole tensor as a vector.
    pub fn to_vec<T: Element + Default>(&self) -> Result<Vec<T>> {
        let (numel, _) = self.size()?;
        let mut v = vec![T::default(); numel.max(0) as usize];
        self.copy_to(&mut v)?;
        Ok(v)
    }

    /// Sets every element to `value` (converted to the dtype).
    pub fn fill(&self, value: f64) -> Result<()> {
        check(unsafe { sys::moe_tensor_fill(self.as_ptr(), value) }, self.ctx.as_ptr())
    }
}

impl Drop for Tensor<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_tensor_destroy(self.raw.as_ptr()) }
    }
}
