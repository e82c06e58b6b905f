# Checkpoints: save a model (and its optimizer) crash-safely, resume bit for bit, read a checkpoint's
# config and record without loading it, and export a model as a Hugging Face Mixtral checkpoint.

"""
    CheckpointInfo(; step, data_position, keep_last)

What a checkpoint records besides tensors; the trainer text is a keyword of [`save_checkpoint`](@ref).
"""
CheckpointInfo(; changes...) =
    _config(LibMoe.moe_checkpoint_info, LibMoe.moe_checkpoint_info_init, values(changes))

"""
    save_checkpoint(model, root_dir; opt = nothing, step = 0, data_position = 0, keep_last = 0, user_json = nothing)

Saves the model (and `opt`'s state) as `root_dir/step-<step>/` and points `root_dir/latest` at it.
"""
function save_checkpoint(m::Model, root_dir::AbstractString; opt = nothing, step::Integer = 0,
                         data_position::Integer = 0, keep_last::Integer = 0,
                         user_json::Union{Nothing,AbstractString} = nothing)
    text = user_json === nothing ? nothing : String(user_json)
    text !== nothing && occursin('\0', text) && invalid("save_checkpoint: user_json holds a NUL byte")
    optr = opt === nothing ? Ptr{LibMoe.moe_optimizer}(C_NULL) : _ptr(opt)
    GC.@preserve text begin
        cjson = text === nothing ? Cstring(C_NULL) : Base.unsafe_convert(Cstring, text)
        info = Ref(_set(CheckpointInfo(step = step, data_position = data_position, keep_last = keep_last),
                        (user_json = cjson,)))
        check(LibMoe.moe_checkpoint_save(_ptr(m), optr, String(root_dir), info), m.ctx.ptr)
    end
    return nothing
end

function _user_json_size(dir::String)
    size = Ref{UInt32}(0)
    check(LibMoe.moe_checkpoint_read_info(dir, Ptr{LibMoe.moe_checkpoint_info}(C_NULL), Ptr{UInt8}(C_NULL),
                                          UInt32(0), size))
    return Int(size[])
end

_text(buf::Vector{UInt8}) = String(buf[1:something(findfirst(==(0x00), buf), length(buf) + 1)-1])

"""
    load_checkpoint!(model, dir; opt = nothing) -> (info, user_json)

Loads a checkpoint directory (or a root's `latest`) into a model of its config, and `opt`'s state.
Nothing changes on failure.
"""
function load_checkpoint!(m::Model, dir::AbstractString; opt = nothing)
    path = String(dir)
    buf = zeros(UInt8, max(_user_json_size(path), 1))
    info = Ref(_out(LibMoe.moe_checkpoint_info))
    optr = opt === nothing ? Ptr{LibMoe.moe_optimizer}(C_NULL) : _ptr(opt)
    check(LibMoe.moe_checkpoint_load(_ptr(m), optr, path, info, buf, UInt32(length(buf))), m.ctx.ptr)
    return (info[], _text(buf))
end

"""
    read_checkpoint_config(dir) -> LibMoe.moe_model_config

The model config a checkpoint was saved with, to create the model before loading.
"""
function read_checkpoint_config(dir::AbstractString)
    cfg = Ref(_sized(ModelConfig()))
    check(LibMoe.moe_checkpoint_read_config(String(dir), cfg))
    return cfg[]
end

"""
    read_checkpoint_info(dir) -> (info, user_json)

A checkpoint's step, data position, seed and trainer text, without loading tensors.
"""
function read_checkpoint_info(dir::AbstractString)
    path = String(dir)
    buf = zeros(UInt8, max(_user_json_size(path), 1))
    info = Ref(_out(LibMoe.moe_checkpoint_info))
    check(LibMoe.moe_checkpoint_read_info(path, info, buf, UInt32(length(buf)), Ptr{UInt32}(C_NULL)))
    return (info[], _text(buf))
end

"""
    export_hf(model, out_dir; max_shard_bytes = 0)

Writes the model as a Hugging Face Mixtral checkpoint (config.json + safetensors) into `out_dir`.
"""
function export_hf(m::Model, out_dir::AbstractString; max_shard_bytes::Integer = 0)
    check(LibMoe.moe_model_export_hf(_ptr(m), String(out_dir), UInt64(max_shard_bytes)), m.ctx.ptr)
    return nothing
end
