# Julia API of libmoe, a C library that trains Mixture-of-Experts transformer language models.
# LibMoe.jl (generated from the C headers) holds the @ccall layer; the files included below wrap it:
# handles are mutable structs with finalizers and an idempotent close, failures throw MoeError with
# the library's message, configs are the generated isbits structs built with keyword constructors.
# The library is found through ENV["LIBMOE_PATH"] or pkg-config (see LibMoe.libmoe), when the package
# is loaded; it is not precompiled so that lookup happens at every load.
__precompile__(false)

module Moe

include("LibMoe.jl")

export MoeError, version, status_name, cuda_device_count, dtype_size
export CtxConfig, MeshConfig, ModelConfig, LayerConfig, OptimizerConfig, setfields, validate, read_hf_config
export Context, Mesh, Tensor, Model, Layer, Optimizer, ParamInfo
export device, memory, last_error, group_size, group_rank, sequence_parallel, nbytes
export config, num_params, flops_per_token, forward, forward_backward!, zero_grad!, train_step!
export params, read_param, read_param!, write_param!, save_params, load_params!, routing_stats
export upcycle!, import_hf!, layer, kind, backward!, step!, lr_at
export GenerateConfig, generate, Decoder, reset!, feed!
export DatasetConfig, Dataset, DatasetWriter, num_samples, num_tokens, num_documents, vocab_size, seq_len
export sample_position, batch, add_tokens!, end_document!, commit!, write_indexed
export CheckpointInfo, save_checkpoint, load_checkpoint!, read_checkpoint_config, read_checkpoint_info, export_hf

include("errors.jl")
include("configs.jl")
include("context.jl")
include("tensor.jl")
include("model.jl")
include("layer.jl")
include("optimizer.jl")
include("generate.jl")
include("data.jl")
include("checkpoint.jl")

end # module Moe
