# Single layers for custom trainers: a standalone MoE or dense-MLP layer, or a sub-layer borrowed from a
# model. The library keeps the last forward's state (and size) for the backward; the wrapper remembers
# which forward that was, so backward! never hands C a buffer of another size.

"""
    Layer(ctx, mesh, cfg::LibMoe.moe_layer_config)

A standalone layer with fresh parameters. [`layer`](@ref) borrows one from a model instead.
"""
mutable struct Layer
    ptr::Ptr{LibMoe.moe_layer}
    ctx::Context
    mesh::Union{Nothing,Mesh}   # standalone
    model::Union{Nothing,Model} # borrowed: the model owns the layer
    d_model::Int
    own_generation::Int
    last_len::Int
    last_generation::Int
    function Layer(ctx::Context, mesh::Mesh, cfg::LibMoe.moe_layer_config)
        out = Ref{Ptr{LibMoe.moe_layer}}(C_NULL)
        check(LibMoe.moe_layer_create(_ptr(ctx), _ptr(mesh), Ref(_sized(cfg)), out), ctx.ptr)
        x = new(out[], ctx, mesh, nothing, Int(cfg.d_model), 0, 0, -1)
        _adopt!(ctx, mesh)
        finalizer(_finalize, x)
        return x
    end
    function Layer(m::Model, block::Integer, kind::Integer)
        out = Ref{Ptr{LibMoe.moe_layer}}(C_NULL)
        check(LibMoe.moe_model_layer(_ptr(m), Int32(block), Int32(kind), out), m.ctx.ptr)
        x = new(out[], m.ctx, nothing, m, Int(m.cfg.d_model), 0, 0, -1)
        _adopt!(m)
        finalizer(_finalize, x)
        return x
    end
end

"""
    layer(model, block, kind) -> Layer

Borrows sub-layer `kind` (`LibMoe.MOE_LAYER_ATTENTION`, `_DENSE_MLP` or `_MOE`) of block `block` (0-based).
"""
layer(m::Model, block::Integer, kind::Integer) = Layer(m, block, kind)

function _destroy!(x::Layer)
    if x.ptr != C_NULL
        LibMoe.moe_layer_destroy(x.ptr) # a no-op on a borrowed layer
        x.ptr = C_NULL
        x.model === nothing ? _release!(x.ctx, x.mesh) : _release!(x.model)
    end
    return nothing
end

"""
    close(l::Layer)

Frees a standalone layer, or lets go of a borrowed one. Closing twice does nothing.
"""
Base.close(x::Layer) = _destroy!(x)

function _ptr(x::Layer)
    x.ptr == C_NULL && closed("Layer")
    x.model !== nothing && _ptr(x.model)
    return x.ptr
end

_bump!(l::Layer) = l.model === nothing ? (l.own_generation += 1) : (l.model.generation += 1)
_generation(l::Layer) = l.model === nothing ? l.own_generation : l.model.generation

"""
    kind(l) -> Int32

What the layer computes (a `LibMoe.MOE_LAYER_*`).
"""
function kind(l::Layer)
    k = Ref{Int32}(0)
    check(LibMoe.moe_layer_kind_of(_ptr(l), k), l.ctx.ptr)
    return k[]
end

"""
    forward(l::Layer, x, batch, seq_len) -> Vector{Float32}

y = f(x) for `batch * seq_len` rows of `d_model` (row-major); saves what [`backward!`](@ref) needs.
"""
function forward(l::Layer, x::Vector{Float32}, batch::Integer, seq_len::Integer)
    (batch > 0 && seq_len > 0 && length(x) == batch * seq_len * l.d_model) ||
        invalid("forward: $(length(x)) floats for batch $batch x seq_len $seq_len x d_model $(l.d_model)")
    y = zeros(Float32, length(x))
    g = _bump!(l)
    check(LibMoe.moe_layer_forward(_ptr(l), x, Int32(batch), Int32(seq_len), y), l.ctx.ptr)
    l.last_len, l.last_generation = length(x), g
    return y
end

"""
    backward!(l::Layer, dy) -> dx

The gradient with respect to the last forward's input; adds the parameter gradients.
"""
function backward!(l::Layer, dy::Vector{Float32})
    l.last_generation == _generation(l) ||
        throw(MoeError(LibMoe.MOE_ERR_STATE, "MOE_ERR_STATE", "backward!: no forward of this layer since its state was replaced"))
    length(dy) == l.last_len || invalid("backward!: dy has $(length(dy)) floats, the forward made $(l.last_len)")
    dx = zeros(Float32, length(dy))
    check(LibMoe.moe_layer_backward(_ptr(l), dy, dx), l.ctx.ptr)
    return dx
end

"""
    zero_grad!(l::Layer)

Sets the layer's parameter gradients to zero.
"""
zero_grad!(l::Layer) = check(LibMoe.moe_layer_zero_grad(_ptr(l)), l.ctx.ptr)

"""
    params(l::Layer) -> Vector{ParamInfo}

The layer's parameter tensors, by 0-based index.
"""
function params(l::Layer)
    count = Ref{Int32}(0)
    check(LibMoe.moe_layer_param_count(_ptr(l), count), l.ctx.ptr)
    return _param_info(count[]) do i, name, ndim, shape
        check(LibMoe.moe_layer_param_info(_ptr(l), i, name, UInt32(length(name)), ndim, shape), l.ctx.ptr)
    end
end

"""
    read_param!(dst, l::Layer, index; gradient = false)

Copies parameter `index` (0-based) or its gradient into `dst` (exactly its element count).
"""
function read_param!(dst::Vector{Float32}, l::Layer, index::Integer; gradient::Bool = false)
    check(LibMoe.moe_layer_param_read(_ptr(l), Int32(index), UInt32(gradient), dst, Int64(length(dst))), l.ctx.ptr)
    return dst
end

"""
    write_param!(l::Layer, index, src)

Overwrites parameter `index` (0-based) from `src` (exactly its element count).
"""
function write_param!(l::Layer, index::Integer, src::Vector{Float32})
    check(LibMoe.moe_layer_param_write(_ptr(l), Int32(index), src, Int64(length(src))), l.ctx.ptr)
    return l
end

"""
    routing_stats(l::Layer) -> (LibMoe.moe_routing_stats, tokens_per_expert)

Routing of an MoE layer's last forward.
"""
function routing_stats(l::Layer)
    stats = Ref(_out(LibMoe.moe_routing_stats))
    check(LibMoe.moe_layer_routing_stats(_ptr(l), stats, Ptr{Int64}(C_NULL), Int32(0)), l.ctx.ptr)
    per_expert = zeros(Int64, stats[].num_experts)
    check(LibMoe.moe_layer_routing_stats(_ptr(l), stats, per_expert, Int32(length(per_expert))), l.ctx.ptr)
    return (stats[], per_expert)
end
