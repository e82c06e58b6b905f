# Tensors: dense row-major buffers in the ctx's memory space. Data moves through Julia vectors whose
# element type must match the dtype; the byte count given to C is always the vector's own size.

const _ELTYPES = Dict{Int32,Any}(
    LibMoe.MOE_DTYPE_F32 => Float32,
    LibMoe.MOE_DTYPE_BF16 => UInt16, # bit patterns
    LibMoe.MOE_DTYPE_F16 => Float16,
    LibMoe.MOE_DTYPE_I32 => Int32,
    LibMoe.MOE_DTYPE_I64 => Int64,
    LibMoe.MOE_DTYPE_U8 => UInt8,
)

"""
    Tensor(ctx, dtype, shape)

A zero-filled tensor of a `LibMoe.MOE_DTYPE_*` with the C (row-major) `shape`.
"""
mutable struct Tensor
    ptr::Ptr{LibMoe.moe_tensor}
    ctx::Context
    function Tensor(ctx::Context, dtype::Integer, shape::AbstractVector{<:Integer})
        dims = Int64.(collect(shape))
        out = Ref{Ptr{LibMoe.moe_tensor}}(C_NULL)
        check(LibMoe.moe_tensor_create(_ptr(ctx), Int32(dtype), Int32(length(dims)), dims, out), ctx.ptr)
        x = new(out[], ctx)
        _adopt!(ctx)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::Tensor)
    if x.ptr != C_NULL
        LibMoe.moe_tensor_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.ctx)
    end
    return nothing
end

"""
    close(t::Tensor)

Frees the tensor. Closing twice does nothing.
"""
Base.close(x::Tensor) = _destroy!(x)

_ptr(x::Tensor) = x.ptr == C_NULL ? closed("Tensor") : x.ptr

"""
    dtype(t) -> Int32

The tensor's `LibMoe.MOE_DTYPE_*`.
"""
function dtype(t::Tensor)
    d = Ref{Int32}(0)
    check(LibMoe.moe_tensor_dtype(_ptr(t), d), t.ctx.ptr)
    return d[]
end

"""
    size(t::Tensor) -> Tuple

The C (row-major) shape.
"""
function Base.size(t::Tensor)
    ndim = Ref{Int32}(0)
    shape = zeros(Int64, LibMoe.MOE_TENSOR_MAX_DIMS)
    check(LibMoe.moe_tensor_shape(_ptr(t), ndim, shape, Int32(length(shape))), t.ctx.ptr)
    return Tuple(shape[1:ndim[]])
end

function _numel_nbytes(t::Tensor)
    numel, bytes = Ref{Int64}(0), Ref{UInt64}(0)
    check(LibMoe.moe_tensor_size(_ptr(t), numel, bytes), t.ctx.ptr)
    return (Int(numel[]), Int(bytes[]))
end

Base.length(t::Tensor) = _numel_nbytes(t)[1]

"""
    nbytes(t) -> Int

The tensor's size in bytes.
"""
nbytes(t::Tensor) = _numel_nbytes(t)[2]

function _check_eltype(t::Tensor, ::Type{T}) where {T}
    want = get(_ELTYPES, dtype(t), Nothing)
    want === T || invalid("a tensor of dtype $(dtype(t)) holds $(want), not $(T)")
    return nothing
end

"""
    copyto!(t::Tensor, src::Vector)

Overwrites the whole tensor from `src` (exactly its element count, row-major order).
"""
function Base.copyto!(t::Tensor, src::Vector{T}) where {T}
    _check_eltype(t, T)
    check(LibMoe.moe_tensor_copy_from(_ptr(t), src, UInt64(sizeof(src))), t.ctx.ptr)
    return t
end

"""
    copyto!(dst::Vector, t::Tensor)

Copies the whole tensor into `dst` (at least its element count).
"""
function Base.copyto!(dst::Vector{T}, t::Tensor) where {T}
    _check_eltype(t, T)
    check(LibMoe.moe_tensor_copy_to(_ptr(t), dst, UInt64(sizeof(dst))), t.ctx.ptr)
    return dst
end

"""
    fill!(t::Tensor, value)

Sets every element to `value`, converted to the dtype.
"""
function Base.fill!(t::Tensor, value::Real)
    check(LibMoe.moe_tensor_fill(_ptr(t), Float64(value)), t.ctx.ptr)
    return t
end
