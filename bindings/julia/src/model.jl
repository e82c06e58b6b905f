# The model: creation, forward, forward+backward, one-call training steps, parameters by name, routing
# statistics. Token ids are Int32 vectors in row-major [batch][seq_len] order; every vector handed to
# C is checked against the size the library will read or write.

"""
    Model(ctx, mesh, cfg::LibMoe.moe_model_config)

A decoder-only Mixture-of-Experts transformer with freshly initialised parameters.
"""
mutable struct Model
    ptr::Ptr{LibMoe.moe_model}
    ctx::Context
    mesh::Mesh
    cfg::LibMoe.moe_model_config
    generation::Int # calls that ran the layers forward; a borrowed Layer's backward! checks it
    nchildren::Threads.Atomic{Int}
    pending::Bool
    function Model(ctx::Context, mesh::Mesh, cfg::LibMoe.moe_model_config)
        out = Ref{Ptr{LibMoe.moe_model}}(C_NULL)
        check(LibMoe.moe_model_create(_ptr(ctx), _ptr(mesh), Ref(_sized(cfg)), out), ctx.ptr)
        x = new(out[], ctx, mesh, cfg, 0, Threads.Atomic{Int}(0), false)
        _adopt!(ctx, mesh)
        finalizer(_finalize, x)
        x.cfg = config(x)
        return x
    end
end

function _destroy!(x::Model)
    if x.ptr != C_NULL
        LibMoe.moe_model_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.ctx, x.mesh)
    end
    return nothing
end

"""
    close(model::Model)

Frees the model (after its optimizers and borrowed layers). Closing twice does nothing.
"""
function Base.close(x::Model)
    x.ptr == C_NULL && return nothing
    _refuse_busy(x, "Model")
    return _destroy!(x)
end

_ptr(x::Model) = x.ptr == C_NULL ? closed("Model") : x.ptr

"""
    config(model) -> LibMoe.moe_model_config

The config the model was created with, defaults applied.
"""
function config(m::Model)
    r = Ref(_sized(m.cfg))
    check(LibMoe.moe_model_get_config(_ptr(m), r), m.ctx.ptr)
    return r[]
end

"""
    num_params(model) -> (total, active)

Total parameters and parameters used per token.
"""
function num_params(m::Model)
    total, active = Ref{Int64}(0), Ref{Int64}(0)
    check(LibMoe.moe_model_num_params(_ptr(m), total, active), m.ctx.ptr)
    return (Int(total[]), Int(active[]))
end

"""
    flops_per_token(model, seq_len) -> Float64

Training FLOPs per token at a sequence length.
"""
function flops_per_token(m::Model, seq_len::Integer)
    f = Ref{Float64}(0)
    check(LibMoe.moe_model_flops_per_token(_ptr(m), Int32(seq_len), f), m.ctx.ptr)
    return f[]
end

function _ids(what, ids::AbstractVector{<:Integer}, batch::Integer, seq_len::Integer)
    (batch > 0 && seq_len > 0 && length(ids) == batch * seq_len) ||
        invalid("$what: $(length(ids)) ids for batch $batch x seq_len $seq_len")
    return Vector{Int32}(ids)
end

"""
    forward(model, tokens, batch, seq_len) -> Vector{Float32}

Logits of `batch * seq_len` token ids, row-major `[batch][seq_len][vocab_size]`.
"""
function forward(m::Model, tokens::AbstractVector{<:Integer}, batch::Integer, seq_len::Integer)
    ids = _ids("forward", tokens, batch, seq_len)
    logits = zeros(Float32, length(ids) * Int(m.cfg.vocab_size))
    m.generation += 1
    check(LibMoe.moe_model_forward(_ptr(m), ids, Int32(batch), Int32(seq_len), logits, UInt64(length(logits))),
          m.ctx.ptr)
    return logits
end

"""
    forward_backward!(model, tokens, targets, batch, seq_len; loss_weight = 1) -> (lm, aux)

Forward and backward of one micro-batch; `loss_weight` times its gradient is added to the model's.
"""
function forward_backward!(m::Model, tokens::AbstractVector{<:Integer}, targets::AbstractVector{<:Integer},
                           batch::Integer, seq_len::Integer; loss_weight::Real = 1)
    ids = _ids("forward_backward!", tokens, batch, seq_len)
    tgt = _ids("forward_backward! targets", targets, batch, seq_len)
    lm, aux = Ref{Float64}(0), Ref{Float64}(0)
    m.generation += 1
    check(LibMoe.moe_model_forward_backward(_ptr(m), ids, tgt, Int32(batch), Int32(seq_len), Float32(loss_weight),
                                            lm, aux), m.ctx.ptr)
    return (lm[], aux[])
end

"""
    zero_grad!(model)

Sets every gradient to zero.
"""
zero_grad!(m::Model) = check(LibMoe.moe_model_zero_grad(_ptr(m)), m.ctx.ptr)

"""
    train_step!(model, opt, tokens, targets; micro_batch_size, seq_len) -> LibMoe.moe_step_stats

One training step: `tokens`/`targets` hold whole micro-batches of `micro_batch_size * seq_len` ids
(target -100 is not counted); gradients accumulate over them, then clipping and the update.
"""
function train_step!(m::Model, opt, tokens::AbstractVector{<:Integer}, targets::AbstractVector{<:Integer};
                     micro_batch_size::Integer, seq_len::Integer)
    per = micro_batch_size * seq_len
    (micro_batch_size > 0 && seq_len > 0 && !isempty(tokens) && length(tokens) % per == 0 &&
     length(targets) == length(tokens)) ||
        invalid("train_step!: $(length(tokens)) tokens, $(length(targets)) targets are not whole micro-batches of $micro_batch_size x $seq_len")
    ids, tgt = Vector{Int32}(tokens), Vector{Int32}(targets)
    b = Ref{LibMoe.moe_batch}()
    check(LibMoe.moe_batch_init(b, UInt32(sizeof(LibMoe.moe_batch))))
    stats = Ref(_out(LibMoe.moe_step_stats))
    m.generation += 1
    GC.@preserve ids tgt begin
        b[] = _set(b[], (tokens = pointer(ids), targets = pointer(tgt), micro_batch_size = Int32(micro_batch_size),
                         seq_len = Int32(seq_len), num_micro_batches = Int32(length(ids) ÷ per)))
        check(LibMoe.moe_train_step(_ptr(m), _ptr(opt), b, stats), m.ctx.ptr)
    end
    return stats[]
end

"""
    ParamInfo(name, shape)

Name and logical (C, row-major) shape of one parameter tensor.
"""
struct ParamInfo
    name::String
    shape::Vector{Int64}
end

Base.length(p::ParamInfo) = Int(prod(p.shape; init = Int64(1)))

function _param_info(getter, count)
    infos = ParamInfo[]
    name = zeros(UInt8, 256)
    shape = zeros(Int64, LibMoe.MOE_TENSOR_MAX_DIMS)
    ndim = Ref{Int32}(0)
    for i in 0:count-1
        getter(Int32(i), name, ndim, shape)
        len = something(findfirst(==(0x00), name), length(name) + 1) - 1
        push!(infos, ParamInfo(String(name[1:len]), shape[1:ndim[]]))
    end
    return infos
end

"""
    params(model) -> Vector{ParamInfo}

Every parameter tensor, in the model's fixed order.
"""
function params(m::Model)
    count = Ref{Int32}(0)
    check(LibMoe.moe_model_param_count(_ptr(m), count), m.ctx.ptr)
    return _param_info(count[]) do i, name, ndim, shape
        check(LibMoe.moe_model_param_info(_ptr(m), i, name, UInt32(length(name)), ndim, shape), m.ctx.ptr)
    end
end

"""
    read_param!(dst, model, name; gradient = false)

Copies a parameter (or its gradient) into `dst`, whose length must be its element count.
"""
function read_param!(dst::Vector{Float32}, m::Model, name::AbstractString; gradient::Bool = false)
    check(LibMoe.moe_model_param_read(_ptr(m), String(name), UInt32(gradient), dst, Int64(length(dst))), m.ctx.ptr)
    return dst
end

"""
    read_param(model, name; gradient = false) -> Vector{Float32}

A parameter's values (or its gradient), row-major.
"""
function read_param(m::Model, name::AbstractString; gradient::Bool = false)
    i = findfirst(p -> p.name == name, params(m))
    i === nothing && invalid("read_param: no parameter named $name")
    return read_param!(zeros(Float32, length(params(m)[i])), m, name; gradient = gradient)
end

"""
    write_param!(model, name, src)

Overwrites a parameter from `src` (its element count, row-major).
"""
function write_param!(m::Model, name::AbstractString, src::Vector{Float32})
    check(LibMoe.moe_model_param_write(_ptr(m), String(name), src, Int64(length(src))), m.ctx.ptr)
    return m
end

"""
    save_params(model) -> Vector{Pair{ParamInfo,Vector{Float32}}}

Every parameter's values by name: what a checkpoint holds of the weights.
"""
save_params(m::Model) = [p => read_param!(zeros(Float32, length(p)), m, p.name) for p in params(m)]

"""
    load_params!(model, snapshot)

Overwrites the parameters a [`save_params`](@ref) snapshot names.
"""
function load_params!(m::Model, snapshot)
    for (p, values) in snapshot
        write_param!(m, p.name, values)
    end
    return m
end

"""
    routing_stats(model, layer) -> (LibMoe.moe_routing_stats, tokens_per_expert)

Routing of MoE block `layer` (0-based) in the last forward.
"""
function routing_stats(m::Model, layer::Integer)
    stats = Ref(_out(LibMoe.moe_routing_stats))
    check(LibMoe.moe_model_routing_stats(_ptr(m), Int32(layer), stats, Ptr{Int64}(C_NULL), Int32(0)), m.ctx.ptr)
    per_expert = zeros(Int64, stats[].num_experts)
    check(LibMoe.moe_model_routing_stats(_ptr(m), Int32(layer), stats, per_expert, Int32(length(per_expert))),
          m.ctx.ptr)
    return (stats[], per_expert)
end

"""
    upcycle!(model, dense)

Initialises every MoE layer's experts from the dense MLPs of `dense`.
"""
function upcycle!(m::Model, dense::Model)
    check(LibMoe.moe_model_upcycle(_ptr(m), _ptr(dense)), m.ctx.ptr)
    return m
end

"""
    import_hf!(model, dir)

Loads a Hugging Face Mixtral checkpoint from `dir`.
"""
function import_hf!(m::Model, dir::AbstractString)
    check(LibMoe.moe_model_import_hf(_ptr(m), String(dir)), m.ctx.ptr)
    return m
end
