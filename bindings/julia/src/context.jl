# Context (device, threads, seed, logging) and Mesh (parallel layout). The log callback is a
# @cfunction trampoline; its user_data is a LogSink the Context roots for as long as the C ctx lives.

# What a ctx logs to: a function (level::Int32, message::String) -> anything.
mutable struct LogSink
    f::Any
end

function _log_trampoline(level::Int32, message::Cstring, user_data::Ptr{Cvoid})::Cvoid
    # an exception must not unwind through libmoe's C frames: report it and drop the message
    try
        sink = unsafe_pointer_to_objref(user_data)::LogSink
        sink.f(level, unsafe_string(message))
    catch err
        try
            Core.println("Moe: the log callback threw ", err)
        catch
        end
    end
    return nothing
end

"""
    Context(cfg = CtxConfig(); logger = nothing)

A library context: where libmoe computes (CPU by default) and whom it tells. `logger(level, message)`
receives messages up to `cfg.log_level` on the task making the libmoe call. Freed by `close` or its
finalizer; used by one task at a time.
"""
mutable struct Context
    ptr::Ptr{LibMoe.moe_ctx}
    sink::Union{Nothing,LogSink}
    nchildren::Threads.Atomic{Int}
    pending::Bool
    function Context(cfg::LibMoe.moe_ctx_config = CtxConfig(); logger = nothing)
        sink = logger === nothing ? nothing : LogSink(logger)
        fn = sink === nothing ? C_NULL :
             @cfunction(_log_trampoline, Cvoid, (Int32, Cstring, Ptr{Cvoid}))
        ud = sink === nothing ? C_NULL : pointer_from_objref(sink)
        raw = Ref(_set(_sized(cfg), (log_fn = fn, log_user_data = ud)))
        out = Ref{Ptr{LibMoe.moe_ctx}}(C_NULL)
        GC.@preserve sink check(LibMoe.moe_ctx_create(raw, out))
        x = new(out[], sink, Threads.Atomic{Int}(0), false)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::Context)
    if x.ptr != C_NULL
        LibMoe.moe_ctx_destroy(x.ptr)
        x.ptr = C_NULL
        x.sink = nothing
    end
    return nothing
end

"""
    close(ctx::Context)

Frees the ctx; objects made from it must be closed first. Closing twice does nothing.
"""
function Base.close(x::Context)
    x.ptr == C_NULL && return nothing
    _refuse_busy(x, "Context")
    return _destroy!(x)
end

_ptr(x::Context) = x.ptr == C_NULL ? closed("Context") : x.ptr

"""
    device(ctx) -> (device_type, device_index)

The device a ctx computes on (`LibMoe.MOE_DEVICE_CPU` or `LibMoe.MOE_DEVICE_CUDA`) and its index.
"""
function device(ctx::Context)
    ty, index = Ref{Int32}(0), Ref{Int32}(0)
    check(LibMoe.moe_ctx_device(_ptr(ctx), ty, index), ctx.ptr)
    return (ty[], Int(index[]))
end

"""
    memory(ctx) -> (current, peak)

Bytes of tensor memory the ctx holds now and the most it has held.
"""
function memory(ctx::Context)
    current, peak = Ref{UInt64}(0), Ref{UInt64}(0)
    check(LibMoe.moe_ctx_memory(_ptr(ctx), current, peak), ctx.ptr)
    return (current[], peak[])
end

"""
    last_error(ctx) -> String

The message of the last failed call made with this ctx ("" if none).
"""
last_error(ctx::Context) = unsafe_string(LibMoe.moe_ctx_last_error(_ptr(ctx)))

"""
    Mesh(ctx, cfg = nothing)

The parallel layout; `nothing` is a world of one rank.
"""
mutable struct Mesh
    ptr::Ptr{LibMoe.moe_mesh}
    ctx::Context
    nchildren::Threads.Atomic{Int}
    pending::Bool
    function Mesh(ctx::Context, cfg::Union{Nothing,LibMoe.moe_mesh_config} = nothing)
        out = Ref{Ptr{LibMoe.moe_mesh}}(C_NULL)
        raw = cfg === nothing ? Ptr{LibMoe.moe_mesh_config}(C_NULL) : Ref(_sized(cfg))
        check(LibMoe.moe_mesh_create(_ptr(ctx), raw, out), ctx.ptr)
        x = new(out[], ctx, Threads.Atomic{Int}(0), false)
        _adopt!(ctx)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::Mesh)
    if x.ptr != C_NULL
        LibMoe.moe_mesh_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.ctx)
    end
    return nothing
end

"""
    close(mesh::Mesh)

Frees the mesh (after the models and layers made on it). Closing twice does nothing.
"""
function Base.close(x::Mesh)
    x.ptr == C_NULL && return nothing
    _refuse_busy(x, "Mesh")
    return _destroy!(x)
end

_ptr(x::Mesh) = x.ptr == C_NULL ? closed("Mesh") : x.ptr

"""
    group_size(mesh, axis) -> Int

Size of this rank's group along a `LibMoe.MOE_AXIS_*`.
"""
function group_size(mesh::Mesh, axis::Integer)
    n = Ref{Int32}(0)
    check(LibMoe.moe_mesh_group_size(_ptr(mesh), Int32(axis), n), mesh.ctx.ptr)
    return Int(n[])
end

"""
    group_rank(mesh, axis) -> Int

This rank's index in its group along a `LibMoe.MOE_AXIS_*`.
"""
function group_rank(mesh::Mesh, axis::Integer)
    r = Ref{Int32}(0)
    check(LibMoe.moe_mesh_group_rank(_ptr(mesh), Int32(axis), r), mesh.ctx.ptr)
    return Int(r[])
end

"""
    sequence_parallel(mesh) -> Bool

Whether norms and residuals are sharded over the tp group.
"""
function sequence_parallel(mesh::Mesh)
    on = Ref{UInt32}(0)
    check(LibMoe.moe_mesh_sequence_parallel(_ptr(mesh), on), mesh.ctx.ptr)
    return on[] != 0
end
