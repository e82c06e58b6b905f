package moe_test

// Generation and datasets through the Go API: greedy generation follows the argmax of full forwards,
// the KV-cached decoder gives the full forward's logits, and an indexed dataset written by the
// library reads back as its sample rule says.

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"libmoe/bindings/go/moe"
)

func TestGenerationAndDecoderAgreeWithForward(t *testing.T) {
	e := open(t, 1)
	defer e.close(t)
	cfg := tinyConfig()
	cfg.InitStd = 0.3
	model, err := moe.NewModel(e.ctx, e.mesh, cfg)
	must(t, err)
	defer model.Close()
	gc := moe.DefaultGenerateConfig()
	gc.MaxNewTokens = 5
	prompt := []int32{3, 1, 4}
	out, err := model.Generate(prompt, gc)
	must(t, err)
	if len(out) != 5 {
		t.Fatalf("generated %v", out)
	}
	seq := append([]int32(nil), prompt...)
	for _, next := range out {
		logits, err := model.Forward(seq, 1, len(seq))
		must(t, err)
		last := logits[(len(seq)-1)*vocab:]
		best := 0
		for v := 1; v < vocab; v++ {
			if last[v] > last[best] {
				best = v
			}
		}
		if int(next) != best {
			t.Fatalf("greedy picked %d, argmax is %d", next, best)
		}
		seq = append(seq, next)
	}

	d, err := moe.NewDecoder(model, 0)
	must(t, err)
	defer d.Close()
	logits, err := d.Feed(seq[:4])
	must(t, err)
	full, err := model.Forward(seq[:4], 1, 4)
	must(t, err)
	for v := 0; v < vocab; v++ {
		if math.Abs(float64(logits[v]-full[3*vocab+v])) > 1e-4 {
			t.Fatalf("decoder logit %d: %v vs %v", v, logits[v], full[3*vocab+v])
		}
	}
	if n, err := d.Len(); err != nil || n != 4 {
		t.Fatalf("decoder length %d %v", n, err)
	}
	must(t, d.Reset())
	if _, err := d.Feed([]int32{99}); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("token out of range: %v", err)
	}
}

func TestIndexedDatasetRoundTrip(t *testing.T) {
	e := open(t, 1)
	defer e.close(t)
	dir := t.TempDir()
	prefix := filepath.Join(dir, "corpus")
	var doc1, doc2 []int32
	for i := int32(0); i < 30; i++ {
		if i < 10 {
			doc1 = append(doc1, i)
		} else {
			doc2 = append(doc2, i)
		}
	}
	must(t, moe.WriteIndexed(e.ctx, prefix, moe.DatasetDtypeU16, [][]int32{doc1, doc2}))
	dc := moe.DefaultDatasetConfig()
	dc.SeqLen = 4
	dc.ValidationFraction = 0
	ds, err := moe.OpenDataset(e.ctx, prefix, dc)
	must(t, err)
	defer ds.Close()
	nt, _ := ds.NumTokens()
	nd, _ := ds.NumDocuments()
	ns, _ := ds.NumSamples(moe.DatasetSplitTrain)
	if nt != 30 || nd != 2 || ns != 7 {
		t.Fatalf("tokens %d documents %d samples %d", nt, nd, ns)
	}
	if kind, dtype, err := ds.Format(); err != nil || kind != moe.DatasetKindIndexed || dtype != moe.DatasetDtypeU16 {
		t.Fatalf("format %v %v %v", kind, dtype, err)
	}
	tokens, targets, err := ds.Batch(moe.DatasetSplitTrain, 0, 3)
	must(t, err)
	for k := 0; k < 3; k++ {
		p, err := ds.SamplePosition(moe.DatasetSplitTrain, int64(k))
		must(t, err)
		for j := 0; j < 4; j++ {
			if tokens[k*4+j] != int32(p)+int32(j) || targets[k*4+j] != int32(p)+int32(j)+1 {
				t.Fatalf("sample %d at %d: %v / %v", k, p, tokens[k*4:k*4+4], targets[k*4:k*4+4])
			}
		}
	}

	w, err := moe.NewDatasetWriter(e.ctx, filepath.Join(dir, "w"), moe.DatasetDtypeU8)
	must(t, err)
	must(t, w.AddTokens([]int32{1, 2, 3}))
	must(t, w.EndDocument())
	if err := w.AddTokens([]int32{300}); !errors.Is(err, moe.ErrInvalidArg) {
		t.Fatalf("300 in a u8 dataset: %v", err)
	}
	must(t, w.Commit())
	must(t, w.Close())
	if _, err := os.Stat(filepath.Join(dir, "w.idx")); err != nil {
		t.Fatal(err)
	}
	_, err = moe.OpenDataset(e.ctx, filepath.Join(dir, "nothing-here"), dc)
	var me *moe.Error
	if !errors.As(err, &me) || me.Code != moe.ErrIO {
		t.Fatalf("missing file: %v", err)
	}
}
