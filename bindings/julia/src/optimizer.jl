# The optimizer: AdamW or SGD with a learning-rate schedule and clipping, bound to one model.

"""
    Optimizer(model, cfg = OptimizerConfig())

An optimizer with zero state for `model`.
"""
mutable struct Optimizer
    ptr::Ptr{LibMoe.moe_optimizer}
    model::Model
    function Optimizer(m::Model, cfg::LibMoe.moe_optimizer_config = OptimizerConfig())
        out = Ref{Ptr{LibMoe.moe_optimizer}}(C_NULL)
        check(LibMoe.moe_optimizer_create(_ptr(m), Ref(_sized(cfg)), out), m.ctx.ptr)
        x = new(out[], m)
        _adopt!(m)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::Optimizer)
    if x.ptr != C_NULL
        LibMoe.moe_optimizer_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.model)
    end
    return nothing
end

"""
    close(opt::Optimizer)

Frees the optimizer. Closing twice does nothing.
"""
Base.close(x::Optimizer) = _destroy!(x)

_ptr(x::Optimizer) = x.ptr == C_NULL ? closed("Optimizer") : x.ptr

"""
    step!(opt) -> LibMoe.moe_optimizer_stats

Clips the model's gradients and applies one update (for loops built on [`forward_backward!`](@ref)).
"""
function step!(opt::Optimizer)
    stats = Ref(_out(LibMoe.moe_optimizer_stats))
    check(LibMoe.moe_optimizer_step(_ptr(opt), stats), opt.model.ctx.ptr)
    return stats[]
end

"""
    lr_at(opt, step) -> Float64

The learning rate the schedule gives at update `step` (0 = the first).
"""
function lr_at(opt::Optimizer, step::Integer)
    lr = Ref{Float64}(0)
    check(LibMoe.moe_optimizer_lr_at(_ptr(opt), Int64(step), lr), opt.model.ctx.ptr)
    return lr[]
end
