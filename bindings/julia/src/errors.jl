# Failures as exceptions that carry the library's status class and message, and the bookkeeping that
# keeps a parent handle alive (and unfreed) while objects made from it are open.

"""
    MoeError(code, name, message)

A failed libmoe call: `code` is the status (e.g. `LibMoe.MOE_ERR_INVALID_ARG`), `name` its C name and
`message` the library's text, which names the bad argument or field.
"""
struct MoeError <: Exception
    code::Int32
    name::String
    message::String
end

Base.showerror(io::IO, e::MoeError) = print(io, "MoeError: ", e.name, ": ", e.message)

"""
    status_name(code) -> String

The C name of a status, e.g. `"MOE_ERR_INVALID_ARG"`.
"""
status_name(code::Integer) = unsafe_string(LibMoe.moe_status_string(Int32(code)))

"""
    version() -> NamedTuple

The linked library's version: `(text, major, minor, patch)`; compare with `LibMoe.MOE_VERSION_*`.
"""
function version()
    major, minor, patch = Ref{Int32}(0), Ref{Int32}(0), Ref{Int32}(0)
    text = unsafe_string(LibMoe.moe_version(major, minor, patch))
    return (text = text, major = Int(major[]), minor = Int(minor[]), patch = Int(patch[]))
end

const NO_CTX = Ptr{LibMoe.moe_ctx}(C_NULL)

# Throws for a failed status. The message comes from the ctx when one is involved, else from the
# calling thread (a task does not switch threads between two ccalls with no yield between them).
function check(status::Integer, ctx::Ptr{LibMoe.moe_ctx} = NO_CTX)
    status == LibMoe.MOE_OK && return nothing
    msg = ctx == C_NULL ? unsafe_string(LibMoe.moe_last_error()) : unsafe_string(LibMoe.moe_ctx_last_error(ctx))
    throw(MoeError(Int32(status), status_name(status), msg))
end

invalid(msg::AbstractString) = throw(MoeError(LibMoe.MOE_ERR_INVALID_ARG, "MOE_ERR_INVALID_ARG", msg))
closed(what::AbstractString) = throw(MoeError(LibMoe.MOE_ERR_STATE, "MOE_ERR_STATE", what * " is closed"))

"""
    cuda_device_count() -> Int

Number of CUDA devices visible to the library (0 without CUDA).
"""
function cuda_device_count()
    n = Ref{Int32}(0)
    check(LibMoe.moe_cuda_device_count(n))
    return Int(n[])
end

"""
    dtype_size(dtype) -> Int

Bytes per element of a `LibMoe.MOE_DTYPE_*`.
"""
function dtype_size(dtype::Integer)
    n = Ref{Csize_t}(0)
    check(LibMoe.moe_dtype_size(Int32(dtype), n))
    return Int(n[])
end

# ---- parents and children ----
# Every handle wrapper has `nchildren` (open objects made from it) and `pending` (its finalizer ran
# while children were open). close() refuses a parent with open children; a finalizer instead marks it
# pending, and the last child to go frees it. Julia runs finalizers in no promised order, so this,
# not the order, keeps a ctx alive until its model is freed.

function _adopt!(parents...)
    for p in parents
        Threads.atomic_add!(p.nchildren, 1)
    end
end

function _release!(parents...)
    for p in parents
        if Threads.atomic_sub!(p.nchildren, 1) == 1 && p.pending
            _destroy!(p)
        end
    end
end

function _refuse_busy(x, what)
    x.nchildren[] > 0 &&
        throw(MoeError(LibMoe.MOE_ERR_STATE, "MOE_ERR_STATE", "close($what): objects made from it are still open"))
end

# The finalizer of every wrapper: free now, or when the last child goes.
function _finalize(x)
    x.ptr == C_NULL && return nothing
    if hasproperty(x, :nchildren) && x.nchildren[] > 0
        x.pending = true
    else
        _destroy!(x)
    end
    return nothing
end
