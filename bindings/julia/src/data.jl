# Datasets: a byte-level text file or a Megatron indexed dataset opened for shuffled, resumable
# batches with a held-out split, and a writer of indexed datasets.

"""
    DatasetConfig(; kind, seq_len, vocab_size, seed, validation_fraction, verify_tokens)

Options of [`Dataset`](@ref); the path is given to `Dataset` itself.
"""
DatasetConfig(; changes...) =
    _config(LibMoe.moe_dataset_config, LibMoe.moe_dataset_config_init, values(changes))

"""
    Dataset(ctx, path, cfg = DatasetConfig())

Opens a text file, or the indexed dataset `path.bin` + `path.idx`, and fixes the split.
"""
mutable struct Dataset
    ptr::Ptr{LibMoe.moe_dataset}
    ctx::Context
    function Dataset(ctx::Context, path::AbstractString, cfg::LibMoe.moe_dataset_config = DatasetConfig())
        cpath = String(path)
        occursin('\0', cpath) && invalid("Dataset: the path holds a NUL byte")
        out = Ref{Ptr{LibMoe.moe_dataset}}(C_NULL)
        GC.@preserve cpath begin
            raw = Ref(setfields(_sized(cfg), path = Base.unsafe_convert(Cstring, cpath)))
            check(LibMoe.moe_dataset_open(_ptr(ctx), raw, out), ctx.ptr)
        end
        x = new(out[], ctx)
        _adopt!(ctx)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::Dataset)
    if x.ptr != C_NULL
        LibMoe.moe_dataset_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.ctx)
    end
    return nothing
end

"""
    close(ds::Dataset)

Closes the dataset and unmaps its files. Closing twice does nothing.
"""
Base.close(x::Dataset) = _destroy!(x)

_ptr(x::Dataset) = x.ptr == C_NULL ? closed("Dataset") : x.ptr

function _count(f, ds::Dataset, T::Type, args...)
    r = Ref{T}(0)
    check(f(_ptr(ds), args..., r), ds.ctx.ptr)
    return Int(r[])
end

"""
    num_samples(ds, split = LibMoe.MOE_DATASET_SPLIT_TRAIN) -> Int

Distinct samples of a split (training: one epoch).
"""
num_samples(ds::Dataset, split::Integer = LibMoe.MOE_DATASET_SPLIT_TRAIN) =
    _count(LibMoe.moe_dataset_num_samples, ds, Int64, Int32(split))

"""
    num_tokens(ds) -> Int

Tokens in the stream.
"""
num_tokens(ds::Dataset) = _count(LibMoe.moe_dataset_num_tokens, ds, Int64)

"""
    num_documents(ds) -> Int

Documents in the stream (1 for a text file).
"""
num_documents(ds::Dataset) = _count(LibMoe.moe_dataset_num_documents, ds, Int64)

"""
    vocab_size(ds) -> Int

The smallest vocabulary holding every token, as far as the dataset knows (0 = not known).
"""
vocab_size(ds::Dataset) = _count(LibMoe.moe_dataset_vocab_size, ds, Int32)

"""
    seq_len(ds) -> Int

The sample length the dataset was opened with.
"""
seq_len(ds::Dataset) = _count(LibMoe.moe_dataset_seq_len, ds, Int32)

"""
    format(ds) -> (kind, dtype)

`LibMoe.MOE_DATASET_KIND_*` it was opened as and the `LibMoe.MOE_DATASET_DTYPE_*` of its tokens.
"""
function format(ds::Dataset)
    kind, dtype = Ref{Int32}(0), Ref{Int32}(0)
    check(LibMoe.moe_dataset_format(_ptr(ds), kind, dtype), ds.ctx.ptr)
    return (kind[], dtype[])
end

"""
    sample_position(ds, split, index) -> Int

Stream position of the first token of sample `index` (0-based) of a split.
"""
sample_position(ds::Dataset, split::Integer, index::Integer) =
    _count(LibMoe.moe_dataset_sample_position, ds, Int64, Int32(split), Int64(index))

"""
    batch(ds, split, first_sample, count) -> (tokens, targets)

`count` samples from index `first_sample` (0-based) of a split, each `seq_len` tokens, row-major.
"""
function batch(ds::Dataset, split::Integer, first_sample::Integer, count::Integer)
    n = count * seq_len(ds)
    tokens, targets = zeros(Int32, n), zeros(Int32, n)
    check(LibMoe.moe_dataset_batch(_ptr(ds), Int32(split), Int64(first_sample), Int32(count), tokens, targets),
          ds.ctx.ptr)
    return (tokens, targets)
end

"""
    DatasetWriter(ctx, prefix, dtype)

Writes an indexed dataset at `prefix` (`.bin` + `.idx`), stored as a `LibMoe.MOE_DATASET_DTYPE_*`;
nothing appears there before [`commit!`](@ref).
"""
mutable struct DatasetWriter
    ptr::Ptr{LibMoe.moe_dataset_writer}
    ctx::Context
    function DatasetWriter(ctx::Context, prefix::AbstractString, dtype::Integer)
        out = Ref{Ptr{LibMoe.moe_dataset_writer}}(C_NULL)
        check(LibMoe.moe_dataset_writer_create(_ptr(ctx), String(prefix), Int32(dtype), out), ctx.ptr)
        x = new(out[], ctx)
        _adopt!(ctx)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::DatasetWriter)
    if x.ptr != C_NULL
        LibMoe.moe_dataset_writer_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.ctx)
    end
    return nothing
end

"""
    close(w::DatasetWriter)

Frees the writer; an uncommitted dataset is abandoned. Closing twice does nothing.
"""
Base.close(x::DatasetWriter) = _destroy!(x)

_ptr(x::DatasetWriter) = x.ptr == C_NULL ? closed("DatasetWriter") : x.ptr

"""
    add_tokens!(w, tokens)

Appends tokens to the current document.
"""
function add_tokens!(w::DatasetWriter, tokens::AbstractVector{<:Integer})
    ids = Vector{Int32}(tokens)
    check(LibMoe.moe_dataset_writer_add_tokens(_ptr(w), ids, Int64(length(ids))), w.ctx.ptr)
    return w
end

"""
    end_document!(w)

Ends the current document.
"""
function end_document!(w::DatasetWriter)
    check(LibMoe.moe_dataset_writer_end_document(_ptr(w)), w.ctx.ptr)
    return w
end

"""
    commit!(w)

Writes, syncs and renames both files into place; afterwards the writer can only be closed.
"""
function commit!(w::DatasetWriter)
    check(LibMoe.moe_dataset_writer_commit(_ptr(w)), w.ctx.ptr)
    return w
end

"""
    write_indexed(ctx, prefix, dtype, documents)

Writes a whole indexed dataset of `documents` (vectors of tokens) in one call.
"""
function write_indexed(ctx::Context, prefix::AbstractString, dtype::Integer, documents::AbstractVector)
    tokens = Int32[t for doc in documents for t in doc]
    lengths = Int64[length(doc) for doc in documents]
    check(LibMoe.moe_dataset_write_indexed(_ptr(ctx), String(prefix), Int32(dtype), tokens, Int64(length(tokens)),
                                           lengths, Int64(length(lengths))), ctx.ptr)
    return nothing
end
