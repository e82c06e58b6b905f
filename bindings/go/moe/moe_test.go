package moe_test

// The Go API doing real work against the built libmoe: a tiny MoE model learns a pattern (the loss
// falls), a checkpoint saved with its optimizer reloads into a fresh model that gives the same logits
// and resumes training bit for bit, a bad config fails with the library's message, plus parameters by
// name, tensors, layers, the optimizer, the logger, Close and finalizers.

import (
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"libmoe/bindings/go/moe"
)

const vocab = 13

// tinyConfig is the tiny config the C tests use too: 2 blocks of width 8, 4 experts of hidden 6, top-2.
func tinyConfig() moe.ModelConfig {
	c := moe.DefaultModelConfig()
	c.VocabSize = vocab
	c.MaxSeqLen = 16
	c.DModel = 8
	c.NumLayers = 2
	c.NumHeads = 2
	c.NumKVHeads = 1
	c.HeadDim = 4
	c.FfnHidden = 12
	c.MoeNumExperts = 4
	c.MoeTopK = 2
	c.MoeExpertHidden = 6
	c.InitStd = 0.05
	return c
}

// pattern is a learnable sequence: the next token is (token + 1) mod vocab.
func pattern(n int) (tokens, targets []int32) {
	tokens = make([]int32, n)
	targets = make([]int32, n)
	for i := range tokens {
		tokens[i] = int32((i*5 + i/8) % vocab)
		targets[i] = (tokens[i] + 1) % vocab
	}
	return tokens, targets
}

type env struct {
	ctx  *moe.Ctx
	mesh *moe.Mesh
}

func open(t *testing.T, seed uint64) env {
	t.Helper()
	cc := moe.DefaultCtxConfig()
	cc.Seed = seed
	ctx, err := moe.NewCtx(&cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := moe.NewMesh(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return env{ctx, mesh}
}

func (e env) close(t *testing.T) {
	t.Helper()
	if err := e.mesh.Close(); err != nil {
		t.Error(err)
	}
	if err := e.ctx.Close(); err != nil {
		t.Error(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestVersionMatchesHeaders(t *testing.T) {
	v := moe.Version()
	if v.Major != moe.VersionMajor || v.Minor != moe.VersionMinor || v.Patch != moe.VersionPatch {
		t.Fatalf("library %+v, headers %d.%d.%d", v, moe.VersionMajor, moe.VersionMinor, moe.VersionPatch)
	}
	if moe.StatusString(moe.ErrInvalidArg) != "MOE_ERR_INVALID_ARG" || moe.ErrInvalidArg.String() != "MOE_ERR_INVALID_ARG" {
		t.Fatal("status names disagree")
	}
}

func TestTinyModelTrainsAndCheckpointRoundTrips(t *testing.T) {
	e := open(t, 7)
	defer e.close(t)
	model, err := moe.NewModel(e.ctx, e.mesh, tinyConfig())
	must(t, err)
	defer model.Close()
	total, active, err := model.NumParams()
	must(t, err)
	if !(total > active && active > 0) {
		t.Fatalf("params total %d active %d", total, active)
	}
	oc := moe.DefaultOptimizerConfig()
	oc.LR = 1e-2
	opt, err := moe.NewOptimizer(model, oc)
	must(t, err)
	defer opt.Close()

	tokens, targets := pattern(4 * 8)
	var first, last float64
	for step := 0; step < 25; step++ {
		s, err := model.TrainStep(opt, tokens, targets, 4, 8)
		must(t, err)
		if s.Step != int64(step+1) || s.Tokens != 32 || s.Skipped != 0 || math.IsNaN(s.Loss) {
			t.Fatalf("step %d: %+v", step, s)
		}
		if step == 0 {
			first = s.Loss
		}
		last = s.Loss
	}
	if math.Abs(first-math.Log(vocab)) > 0.5 {
		t.Errorf("a fresh model should be near uniform: first loss %v", first)
	}
	if last >= 0.6*first {
		t.Errorf("the loss fell from %v to only %v", first, last)
	}

	// save (with the optimizer), then one more step
	dir := t.TempDir()
	info := moe.DefaultCheckpointInfo()
	info.Step = 25
	info.DataPosition = 800
	const userJSON = `{"run": "go-test"}`
	must(t, model.SaveCheckpoint(opt, dir, info, userJSON))
	logits, err := model.Forward(tokens[:8], 1, 8)
	must(t, err)
	next, err := model.TrainStep(opt, tokens, targets, 4, 8)
	must(t, err)

	// resume elsewhere: config and record from the checkpoint, a ctx of the saved seed
	record, text, err := moe.ReadCheckpointInfo(dir)
	must(t, err)
	if record.Step != 25 || record.DataPosition != 800 || record.RNGSeed != 7 || text != userJSON {
		t.Fatalf("record %+v text %q", record, text)
	}
	cfg, err := moe.ReadCheckpointConfig(dir)
	must(t, err)
	if cfg.DModel != 8 || cfg.MoeNumExperts != 4 {
		t.Fatalf("config %+v", cfg)
	}
	e2 := open(t, record.RNGSeed)
	defer e2.close(t)
	fresh, err := moe.NewModel(e2.ctx, e2.mesh, cfg)
	must(t, err)
	defer fresh.Close()
	opt2, err := moe.NewOptimizer(fresh, oc)
	must(t, err)
	defer opt2.Close()
	before, err := fresh.Forward(tokens[:8], 1, 8)
	must(t, err)
	if reflect.DeepEqual(before, logits) {
		t.Fatal("before loading, the fresh model's weights should be its own")
	}
	loaded, loadedText, err := fresh.LoadCheckpoint(opt2, dir)
	must(t, err)
	if loaded.Step != 25 || loadedText != userJSON {
		t.Fatalf("loaded %+v %q", loaded, loadedText)
	}
	after, err := fresh.Forward(tokens[:8], 1, 8)
	must(t, err)
	if !reflect.DeepEqual(after, logits) {
		t.Fatal("the reloaded model's logits differ")
	}
	resumed, err := fresh.TrainStep(opt2, tokens, targets, 4, 8)
	must(t, err)
	if resumed.Step != 26 || math.Float64bits(resumed.Loss) != math.Float64bits(next.Loss) {
		t.Fatalf("resumed step %d loss %v, uninterrupted %d %v", resumed.Step, resumed.Loss, next.Step, next.Loss)
	}

	// failures carry the library's message and change nothing
	_, _, err = fresh.LoadCheckpoint(nil, filepath.Join(dir, "no-such-step"))
	if !errors.Is(err, moe.ErrIO) || !strings.Contains(err.Error(), "no-such-step") {
		t.Fatalf("missing checkpoint: %v", err)
	}
	wider := tinyConfig()
	wider.DModel = 16
	other, err := moe.NewModel(e2.ctx, e2.mesh, wider)
	must(t, err)
	defer other.Close()
	if _, _, err := other.LoadCheckpoint(nil, dir); !errors.Is(err, moe.ErrInvalidArg) || !strings.Contains(err.Error(), "d_model") {
		t.Fatalf("config mismatch: %v", err)
	}
}

func TestParametersRoundTripByName(t *testing.T) {
	e := open(t, 7)
	defer e.close(t)
	model, err := moe.NewModel(e.ctx, e.mesh, tinyConfig())
	must(t, err)
	defer model.Close()
	tokens, _ := pattern(8)
	snapshot, err := model.SaveParams()
	must(t, err)
	logits, err := model.Forward(tokens, 1, 8)
	must(t, err)
	e2 := open(t, 99)
	defer e2.close(t)
	fresh, err := moe.NewModel(e2.ctx, e2.mesh, tinyConfig())
	must(t, err)
	defer fresh.Close()
	before, err := fresh.Forward(tokens, 1, 8)
	must(t, err)
	if reflect.DeepEqual(before, logits) {
		t.Fatal("another seed should give other weights")
	}
	must(t, fresh.LoadParams(snapshot))
	after, err := fresh.Forward(tokens, 1, 8)
	must(t, err)
	if !reflect.DeepEqual(after, logits) {
		t.Fatal("the reloaded model's logits differ")
	}
}

func TestBadConfigIsATypedErrorWithTheLibraryMessage(t *testing.T) {
	e := open(t, 1)
	defer e.close(t)
	cfg := tinyConfig()
	cfg.DModel = 0
	err := cfg.Validate()
	if !errors.Is(err, moe.ErrInvalidArg) || !strings.Contains(err.Error(), "d_model") {
		t.Fatalf("Validate: %v", err)
	}
	_, err = moe.NewModel(e.ctx, e.mesh, cfg)
	var me *moe.Error
	if !errors.As(err, &me) {
		t.Fatalf("NewModel: %v is not a *moe.Error", err)
	}
	if me.Code != moe.ErrInvalidArg || !strings.Contains(me.Message, "moe_model_config.d_model") {
		t.Fatalf("NewModel: %+v", me)
	}
	if !strings.HasPrefix(err.Error(), "moe: MOE_ERR_INVALID_ARG: ") {
		t.Fatalf("Error(): %q", err.Error())
	}
	if !strings.Contains(e.ctx.LastError(), "d_model") {
		t.Fatalf("ctx last error %q", e.ctx.LastError())
	}

	model, err := moe.NewModel(e.ctx, e.mesh, tinyConfig())
	must(t, err)
	defer model.Close()
	if _, err := model.Forward([]int32{1, 2, 3}, 1, 8); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("wrong-length tokens: %v", err)
	}
	if _, err := model.Forward([]int32{0, 1, 2, 99}, 1, 4); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("token out of the vocabulary: %v", err)
	}
	if err := model.WriteParam("no.such.param", []float32{1}); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("unknown parameter: %v", err)
	}
}

func TestTensorsRoundTripAndCheckTheirDtype(t *testing.T) {
	e := open(t, 1)
	defer e.close(t)
	tn, err := moe.NewTensor(e.ctx, moe.DtypeF32, []int64{2, 3})
	must(t, err)
	defer tn.Close()
	shape, err := tn.Shape()
	must(t, err)
	numel, nbytes, err := tn.Size()
	must(t, err)
	if !reflect.DeepEqual(shape, []int64{2, 3}) || numel != 6 || nbytes != 24 {
		t.Fatalf("shape %v numel %d nbytes %d", shape, numel, nbytes)
	}
	data := []float32{1, -2, 3.5, 0, 1e-3, 7}
	must(t, tn.CopyFrom(data))
	out := make([]float32, 6)
	must(t, tn.CopyTo(out))
	if !reflect.DeepEqual(out, data) {
		t.Fatalf("round trip %v", out)
	}
	must(t, tn.Fill(2.5))
	must(t, tn.CopyTo(out))
	for _, v := range out {
		if v != 2.5 {
			t.Fatalf("fill: %v", out)
		}
	}
	if err := tn.CopyFrom([]int32{1, 2, 3, 4, 5, 6}); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("dtype mismatch: %v", err)
	}
	if err := tn.CopyFrom(make([]float32, 5)); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("size mismatch: %v", err)
	}
	if n, err := moe.DtypeF32.Size(); err != nil || n != 4 {
		t.Fatalf("dtype size %d %v", n, err)
	}
}

func TestStandaloneLayerForwardBackward(t *testing.T) {
	e := open(t, 1)
	defer e.close(t)
	lc := moe.DefaultLayerConfig()
	lc.DModel = 8
	lc.Hidden = 6
	lc.NumExperts = 4
	lc.TopK = 2
	layer, err := moe.NewLayer(e.ctx, e.mesh, lc)
	must(t, err)
	defer layer.Close()
	if k, err := layer.Kind(); err != nil || k != moe.LayerMoe {
		t.Fatalf("kind %v %v", k, err)
	}
	if _, err := layer.Backward(make([]float32, 16)); !errors.Is(err, moe.ErrState) {
		t.Fatalf("backward before forward: %v", err)
	}
	x := make([]float32, 2*8)
	for i := range x {
		x[i] = float32(i*7%5-2) * 0.3
	}
	y, err := layer.Forward(x, 1, 2)
	must(t, err)
	stats, perExpert, err := layer.RoutingStats()
	must(t, err)
	var sum int64
	for _, n := range perExpert {
		sum += n
	}
	if stats.Tokens != 2 || sum != stats.Assignments {
		t.Fatalf("routing %+v per expert %v", stats, perExpert)
	}
	ones := make([]float32, len(y))
	for i := range ones {
		ones[i] = 1
	}
	dx, err := layer.Backward(ones)
	must(t, err)
	if len(dx) != len(x) {
		t.Fatalf("dx %d", len(dx))
	}
	params, err := layer.Params()
	must(t, err)
	g := make([]float32, params[0].Numel())
	must(t, layer.ReadParam(0, true, g))
	nonzero := false
	for _, v := range g {
		nonzero = nonzero || v != 0
	}
	if !nonzero {
		t.Fatal("the backward added no gradient")
	}
}

func TestCustomLoopAndBorrowedLayer(t *testing.T) {
	e := open(t, 1)
	defer e.close(t)
	model, err := moe.NewModel(e.ctx, e.mesh, tinyConfig())
	must(t, err)
	defer model.Close()
	oc := moe.DefaultOptimizerConfig()
	oc.LR = 1e-2
	oc.WarmupSteps = 4
	opt, err := moe.NewOptimizer(model, oc)
	must(t, err)
	defer opt.Close()
	if lr, err := opt.LRAt(0); err != nil || math.Abs(lr-1e-2/4) > 1e-9 {
		t.Fatalf("lr at 0: %v %v", lr, err)
	}
	tokens, targets := pattern(16)
	var first, last float64
	for i := 0; i < 10; i++ {
		must(t, model.ZeroGrad())
		lm, _, err := model.ForwardBackward(tokens, targets, 2, 8, 1)
		must(t, err)
		s, err := opt.Step()
		must(t, err)
		if s.Skipped != 0 {
			t.Fatal("skipped step")
		}
		if i == 0 {
			first = lm
		}
		last = lm
	}
	if last >= first {
		t.Fatalf("loss %v -> %v", first, last)
	}

	layer, err := model.Layer(0, moe.LayerMoe)
	must(t, err)
	x := make([]float32, 3*8)
	y, err := layer.Forward(x, 1, 3)
	must(t, err)
	_, err = model.Forward(tokens[:8], 1, 8) // replaces the layer's saved state
	must(t, err)
	if _, err := layer.Backward(y); !errors.Is(err, moe.ErrState) {
		t.Fatalf("stale backward: %v", err)
	}
	// the model cannot be closed while the optimizer and the layer are open
	if err := model.Close(); !errors.Is(err, moe.ErrState) {
		t.Fatalf("closing a model with open children: %v", err)
	}
	must(t, layer.Close())
	must(t, layer.Close()) // idempotent
}

func TestLoggerAndPanickingLogger(t *testing.T) {
	var seen []string
	cc := moe.DefaultCtxConfig()
	cc.LogLevel = int32(moe.LogDebug)
	ctx, err := moe.NewCtx(&cc, func(level moe.LogLevel, msg string) {
		if level == moe.LogError {
			seen = append(seen, msg)
		}
	})
	must(t, err)
	mesh, err := moe.NewMesh(ctx, nil)
	must(t, err)
	bad := tinyConfig()
	bad.NumKVHeads = 5
	if _, err := moe.NewModel(ctx, mesh, bad); err == nil {
		t.Fatal("5 kv heads for 2 heads must fail")
	}
	if len(seen) == 0 || !strings.Contains(strings.Join(seen, "\n"), "num_kv_heads") {
		t.Fatalf("logged %q", seen)
	}
	if err := ctx.Close(); !errors.Is(err, moe.ErrState) {
		t.Fatalf("closing a ctx with an open mesh: %v", err)
	}
	must(t, mesh.Close())
	must(t, ctx.Close())
	must(t, ctx.Close())

	ctx2, err := moe.NewCtx(&cc, func(moe.LogLevel, string) { panic("a logger that panics") })
	must(t, err)
	defer ctx2.Close()
	mesh2, err := moe.NewMesh(ctx2, nil)
	must(t, err)
	defer mesh2.Close()
	if _, err := moe.NewModel(ctx2, mesh2, bad); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("still an error value, not a panic through C: %v", err)
	}
}

func TestFinalizersFreeForgottenHandles(t *testing.T) {
	cc := moe.DefaultCtxConfig()
	for i := 0; i < 3; i++ {
		func() {
			ctx, err := moe.NewCtx(&cc, func(moe.LogLevel, string) {})
			must(t, err)
			mesh, err := moe.NewMesh(ctx, nil)
			must(t, err)
			model, err := moe.NewModel(ctx, mesh, tinyConfig())
			must(t, err)
			_, err = moe.NewOptimizer(model, moe.DefaultOptimizerConfig())
			must(t, err)
			_, err = moe.NewTensor(ctx, moe.DtypeI32, []int64{4})
			must(t, err)
			// nothing closed: the finalizers free them, children before parents
		}()
		for j := 0; j < 6; j++ {
			runtime.GC()
		}
	}
}
