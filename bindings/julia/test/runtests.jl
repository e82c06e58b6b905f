# The Julia API doing real work against the built libmoe (run with `julia --project=bindings/julia
# -e 'using Pkg; Pkg.test()'`, libmoe found through LIBMOE_PATH or pkg-config): the generated structs
# have the C layout, a tiny MoE model learns a pattern (the loss falls), its weights survive a save and
# reload into a fresh model (which then resumes training bit for bit), a bad config throws MoeError
# with the library's message, and handles close idempotently and refuse to close before their children.
using Test
using Moe
using Moe: LibMoe

const VOCAB = 13

tiny_config() = ModelConfig(vocab_size = VOCAB, max_seq_len = 16, d_model = 8, num_layers = 2, num_heads = 2,
                            num_kv_heads = 1, head_dim = 4, ffn_hidden = 12, moe_num_experts = 4, moe_top_k = 2,
                            moe_expert_hidden = 6, init_std = 0.05)

# the next token is (token + 1) mod VOCAB
function pattern(n)
    tokens = Int32[(i * 5 + i ÷ 8) % VOCAB for i in 0:n-1]
    return tokens, Int32[(t + 1) % VOCAB for t in tokens]
end

@testset "Moe" begin
    @testset "layouts match the C compiler's" begin
        for (T, size, offsets) in LibMoe.C_LAYOUTS
            @test sizeof(T) == size
            @test Tuple(Int(fieldoffset(T, i)) for i in 1:fieldcount(T)) == offsets
        end
    end

    @testset "version" begin
        v = version()
        @test (v.major, v.minor, v.patch) == (LibMoe.MOE_VERSION_MAJOR, LibMoe.MOE_VERSION_MINOR, LibMoe.MOE_VERSION_PATCH)
        @test status_name(LibMoe.MOE_ERR_INVALID_ARG) == "MOE_ERR_INVALID_ARG"
    end

    @testset "a tiny model trains and its checkpoint round-trips" begin
        ctx = Context(CtxConfig(seed = 7))
        mesh = Mesh(ctx)
        model = Model(ctx, mesh, tiny_config())
        total, active = num_params(model)
        @test total > active > 0
        opt = Optimizer(model, OptimizerConfig(lr = 1f-2))
        tokens, targets = pattern(4 * 8)
        losses = Float64[]
        for step in 1:25
            s = train_step!(model, opt, tokens, targets; micro_batch_size = 4, seq_len = 8)
            @test s.step == step && s.tokens == 32 && s.skipped == 0
            push!(losses, s.loss)
        end
        @test abs(losses[1] - log(VOCAB)) < 0.5
        @test losses[end] < 0.6 * losses[1]

        # save (with the optimizer), then one more step
        dir = mktempdir()
        json = "{\"run\": \"julia-test\"}"
        save_checkpoint(model, dir; opt = opt, step = 25, data_position = 800, user_json = json)
        logits = forward(model, tokens[1:8], 1, 8)
        @test length(logits) == 8 * VOCAB
        next = train_step!(model, opt, tokens, targets; micro_batch_size = 4, seq_len = 8)

        # resume elsewhere: config and record from the checkpoint, a ctx of the saved seed
        record, text = read_checkpoint_info(dir)
        @test (record.step, record.data_position, record.rng_seed, text) == (25, 800, 7, json)
        cfg = read_checkpoint_config(dir)
        @test cfg.d_model == 8 && cfg.moe_num_experts == 4
        ctx2 = Context(CtxConfig(seed = record.rng_seed))
        mesh2 = Mesh(ctx2)
        fresh = Model(ctx2, mesh2, cfg)
        opt2 = Optimizer(fresh, OptimizerConfig(lr = 1f-2))
        @test forward(fresh, tokens[1:8], 1, 8) != logits
        loaded, loaded_text = load_checkpoint!(fresh, dir; opt = opt2)
        @test loaded.step == 25 && loaded_text == json
        @test forward(fresh, tokens[1:8], 1, 8) == logits
        resumed = train_step!(fresh, opt2, tokens, targets; micro_batch_size = 4, seq_len = 8)
        @test resumed.step == 26 && resumed.loss === next.loss   # bit for bit

        err = try
            load_checkpoint!(fresh, joinpath(dir, "no-such-step"))
            nothing
        catch e
            e
        end
        @test err isa MoeError && err.code == LibMoe.MOE_ERR_IO && occursin("no-such-step", err.message)

        # parameters by name round-trip too
        snapshot = save_params(model)
        load_params!(fresh, snapshot)
        @test forward(fresh, tokens[1:8], 1, 8) == forward(model, tokens[1:8], 1, 8)

        @test_throws MoeError close(ctx)  # the model is still open
        close(opt); close(model); close(mesh); close(ctx)
        close(ctx)                        # idempotent
        @test_throws MoeError forward(model, tokens[1:8], 1, 8)
        close(opt2); close(fresh); close(mesh2); close(ctx2)
    end

    @testset "a bad config throws MoeError with the library's message" begin
        bad = setfields(tiny_config(), d_model = 0)
        err = try
            validate(bad)
            nothing
        catch e
            e
        end
        @test err isa MoeError
        @test err.code == LibMoe.MOE_ERR_INVALID_ARG
        @test occursin("d_model", err.message)

        ctx = Context()
        mesh = Mesh(ctx)
        err = try
            Model(ctx, mesh, bad)
            nothing
        catch e
            e
        end
        @test err isa MoeError && occursin("moe_model_config.d_model", err.message)
        @test occursin("d_model", last_error(ctx))
        close(mesh); close(ctx)
    end

    @testset "logger" begin
        seen = String[]
        ctx = Context(CtxConfig(log_level = LibMoe.MOE_LOG_DEBUG);
                      logger = (level, msg) -> level == LibMoe.MOE_LOG_ERROR && push!(seen, msg))
        mesh = Mesh(ctx)
        @test_throws MoeError Model(ctx, mesh, setfields(tiny_config(), num_kv_heads = 5))
        @test any(m -> occursin("num_kv_heads", m), seen)
        close(mesh); close(ctx)
    end

    @testset "tensors" begin
        ctx = Context()
        t = Tensor(ctx, LibMoe.MOE_DTYPE_F32, [2, 3])
        @test size(t) == (2, 3) && length(t) == 6 && nbytes(t) == 24
        data = Float32[1, -2, 3.5, 0, 1e-3, 7]
        copyto!(t, data)
        @test copyto!(zeros(Float32, 6), t) == data
        fill!(t, 2.5)
        @test copyto!(zeros(Float32, 6), t) == fill(2.5f0, 6)
        @test_throws MoeError copyto!(t, Int32[1, 2, 3, 4, 5, 6])
        @test_throws MoeError copyto!(t, zeros(Float32, 5))
        close(t); close(t); close(ctx)
    end

    @testset "layers" begin
        ctx = Context()
        mesh = Mesh(ctx)
        l = Layer(ctx, mesh, LayerConfig(d_model = 8, hidden = 6, num_experts = 4, top_k = 2))
        @test kind(l) == LibMoe.MOE_LAYER_MOE
        @test_throws MoeError backward!(l, zeros(Float32, 16))
        x = Float32[((i * 7) % 5 - 2) * 0.3 for i in 0:15]
        y = forward(l, x, 1, 2)
        stats, per_expert = routing_stats(l)
        @test stats.tokens == 2 && sum(per_expert) == stats.assignments
        dx = backward!(l, ones(Float32, length(y)))
        @test length(dx) == length(x)
        g = read_param!(zeros(Float32, length(params(l)[1])), l, 0; gradient = true)
        @test any(!iszero, g)
        close(l); close(mesh); close(ctx)
    end

    @testset "generation and datasets" begin
        ctx = Context()
        mesh = Mesh(ctx)
        model = Model(ctx, mesh, tiny_config())
        tokens, _ = pattern(8)
        out = generate(model, tokens[1:3], GenerateConfig(max_new_tokens = 5))
        @test length(out) == 5 && all(0 .<= out .< VOCAB)
        d = Decoder(model)
        logits = feed!(d, tokens[1:4])
        @test length(d) == 4
        full = forward(model, tokens[1:4], 1, 4)
        @test maximum(abs.(logits .- full[3*VOCAB+1:4*VOCAB])) < 1e-4
        reset!(d)
        @test length(d) == 0
        close(d)

        dir = mktempdir()
        prefix = joinpath(dir, "corpus")
        write_indexed(ctx, prefix, LibMoe.MOE_DATASET_DTYPE_U16, [Int32.(0:9), Int32.(10:29)])
        ds = Dataset(ctx, prefix, DatasetConfig(seq_len = 4, validation_fraction = 0))
        @test num_tokens(ds) == 30 && num_documents(ds) == 2 && seq_len(ds) == 4
        @test num_samples(ds) == 7  # floor((30 - 1) / 4)
        toks, tgts = batch(ds, LibMoe.MOE_DATASET_SPLIT_TRAIN, 0, 2)
        @test length(toks) == 8 && tgts[1:3] == toks[2:4]
        close(ds)
        w = DatasetWriter(ctx, joinpath(dir, "w"), LibMoe.MOE_DATASET_DTYPE_U8)
        add_tokens!(w, Int32[1, 2, 3]); end_document!(w); commit!(w); close(w)
        @test isfile(joinpath(dir, "w.idx"))
        close(model); close(mesh); close(ctx)
    end
end
