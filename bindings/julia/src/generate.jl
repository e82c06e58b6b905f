# Generation: a whole continuation in one call (greedy, sampling, beam search), or an incremental
# Decoder holding one sequence's KV cache for custom decoding loops.

"""
    GenerateConfig(; max_new_tokens, temperature, top_k, top_p, beam_width, length_penalty, stop_token, seed)

How [`generate`](@ref) picks tokens; the defaults are greedy decoding of 64 tokens.
"""
GenerateConfig(; changes...) =
    _config(LibMoe.moe_generate_config, LibMoe.moe_generate_config_init, values(changes))

"""
    generate(model, prompt, cfg = GenerateConfig()) -> Vector{Int32}

The tokens generated after `prompt` (without the prompt).
"""
function generate(m::Model, prompt::AbstractVector{<:Integer}, cfg::LibMoe.moe_generate_config = GenerateConfig())
    ids = Vector{Int32}(prompt)
    isempty(ids) && invalid("generate: empty prompt")
    capacity = max(0, min(Int(cfg.max_new_tokens), Int(m.cfg.max_seq_len) - length(ids)))
    out = zeros(Int32, max(capacity, 1))
    n = Ref{Int32}(0)
    m.generation += 1
    check(LibMoe.moe_model_generate(_ptr(m), Ref(_sized(cfg)), ids, Int32(length(ids)), out, Int32(length(out)), n),
          m.ctx.ptr)
    return out[1:n[]]
end

"""
    Decoder(model, max_len = 0)

An incremental decoder over `model` with an empty KV cache of `max_len` tokens (0 = max_seq_len).
"""
mutable struct Decoder
    ptr::Ptr{LibMoe.moe_decoder}
    model::Model
    function Decoder(m::Model, max_len::Integer = 0)
        out = Ref{Ptr{LibMoe.moe_decoder}}(C_NULL)
        check(LibMoe.moe_decoder_create(_ptr(m), Int32(max_len), out), m.ctx.ptr)
        x = new(out[], m)
        _adopt!(m)
        finalizer(_finalize, x)
        return x
    end
end

function _destroy!(x::Decoder)
    if x.ptr != C_NULL
        LibMoe.moe_decoder_destroy(x.ptr)
        x.ptr = C_NULL
        _release!(x.model)
    end
    return nothing
end

"""
    close(d::Decoder)

Frees the decoder and its cache. Closing twice does nothing.
"""
Base.close(x::Decoder) = _destroy!(x)

_ptr(x::Decoder) = x.ptr == C_NULL ? closed("Decoder") : x.ptr

"""
    reset!(d::Decoder)

Empties the cache: the next token fed is at position 0.
"""
function reset!(d::Decoder)
    check(LibMoe.moe_decoder_reset(_ptr(d)), d.model.ctx.ptr)
    return d
end

"""
    feed!(d::Decoder, tokens) -> Vector{Float32}

Appends tokens and returns the logits predicting the next one.
"""
function feed!(d::Decoder, tokens::AbstractVector{<:Integer})
    ids = Vector{Int32}(tokens)
    isempty(ids) && invalid("feed!: no tokens")
    logits = zeros(Float32, Int(d.model.cfg.vocab_size))
    d.model.generation += 1
    check(LibMoe.moe_decoder_feed(_ptr(d), ids, Int32(length(ids)), logits, UInt64(length(logits))), d.model.ctx.ptr)
    return logits
end

"""
    length(d::Decoder) -> Int

Tokens the decoder holds.
"""
function Base.length(d::Decoder)
    n = Ref{Int32}(0)
    check(LibMoe.moe_decoder_length(_ptr(d), n), d.model.ctx.ptr)
    return Int(n[])
end
