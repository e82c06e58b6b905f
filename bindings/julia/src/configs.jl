# Configs: the generated isbits mirrors of the C structs, filled by the library's moe_x_config_init
# (so every field starts at its documented default) and changed with keywords. struct_size is always
# this binding's sizeof, so the library never reads past the struct.

function _set(c::T, changes) where {T}
    names = fieldnames(T)
    vals = Any[getfield(c, f) for f in names]
    for (k, v) in pairs(changes)
        i = findfirst(==(k), names)
        i === nothing && throw(ArgumentError("$(T) has no field $(k)"))
        vals[i] = convert(fieldtype(T, i), v)
    end
    return T(vals...)
end

# The struct with struct_size = sizeof, ready for C.
_sized(c::T) where {T} = _set(c, (struct_size = UInt32(sizeof(T)),))

function _config(::Type{T}, init, changes) where {T}
    r = Ref{T}()
    check(init(r, UInt32(sizeof(T))))
    haskey(changes, :struct_size) && throw(ArgumentError("struct_size is set by the binding"))
    return isempty(changes) ? r[] : _set(r[], changes)
end

# An all-zero struct with struct_size set (NULL pointers): what the library fills as an out-parameter.
_zero(::Type{T}) where {T} = T <: Union{Ptr,Cstring} ? T(C_NULL) : zero(T)
_out(::Type{T}) where {T} = T(UInt32(sizeof(T)), (_zero(fieldtype(T, i)) for i in 2:fieldcount(T))...)

"""
    setfields(cfg; field = value, ...)

A copy of a config with some fields changed: `setfields(ModelConfig(), d_model = 16)`.
"""
setfields(c; changes...) = _set(c, values(changes))

"""
    CtxConfig(; device_type, device_index, num_threads, seed, log_level)

Options of a [`Context`](@ref); unset fields keep the library's defaults. Logging is set with
`Context(cfg; logger = f)`.
"""
CtxConfig(; changes...) = _config(LibMoe.moe_ctx_config, LibMoe.moe_ctx_config_init, values(changes))

"""
    MeshConfig(; dp, tp, pp, ep, etp, sequence_parallel, comm_backend)

Sizes of a [`Mesh`](@ref).
"""
MeshConfig(; changes...) = _config(LibMoe.moe_mesh_config, LibMoe.moe_mesh_config_init, values(changes))

"""
    ModelConfig(; vocab_size, d_model, num_layers, ...)

Architecture of a [`Model`](@ref); the defaults are a small byte-level MoE model.
"""
ModelConfig(; changes...) = _config(LibMoe.moe_model_config, LibMoe.moe_model_config_init, values(changes))

"""
    LayerConfig(; kind, d_model, hidden, num_experts, top_k, ...)

Settings of a standalone [`Layer`](@ref).
"""
LayerConfig(; changes...) = _config(LibMoe.moe_layer_config, LibMoe.moe_layer_config_init, values(changes))

"""
    OptimizerConfig(; type, lr, min_lr, warmup_steps, ...)

Settings of an [`Optimizer`](@ref).
"""
OptimizerConfig(; changes...) =
    _config(LibMoe.moe_optimizer_config, LibMoe.moe_optimizer_config_init, values(changes))

"""
    validate(cfg::LibMoe.moe_model_config)

Checks a model config without creating anything; throws a [`MoeError`](@ref) naming the first bad field.
"""
validate(cfg::LibMoe.moe_model_config) = check(LibMoe.moe_model_config_validate(Ref(_sized(cfg))))

"""
    read_hf_config(dir, cfg = ModelConfig()) -> LibMoe.moe_model_config

Reads a Hugging Face Mixtral `config.json` in `dir` over `cfg`.
"""
function read_hf_config(dir::AbstractString, cfg::LibMoe.moe_model_config = ModelConfig())
    r = Ref(_sized(cfg))
    check(LibMoe.moe_hf_read_config(String(dir), r))
    return r[]
end
