package moe

/*
#include <moe/moe.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// DefaultGenerateConfig is the library's default generation (greedy, 64 tokens, no stop token).
func DefaultGenerateConfig() GenerateConfig {
	var c GenerateConfig
	C.moe_generate_config_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// Generate returns the tokens generated after prompt (without the prompt).
func (m *Model) Generate(prompt []int32, cfg GenerateConfig) ([]int32, error) {
	if err := m.live(); err != nil {
		return nil, err
	}
	if len(prompt) == 0 {
		return nil, invalid("Model.Generate: empty prompt")
	}
	capacity := int(cfg.MaxNewTokens)
	if room := int(m.cfg.MaxSeqLen) - len(prompt); room < capacity {
		capacity = room
	}
	if capacity < 1 {
		capacity = 1
	}
	out := make([]int32, capacity)
	var n C.int32_t
	cfg.setStructSize()
	m.generation++
	err := m.check(C.moe_model_generate(m.p, cfg.cptr(), (*C.int32_t)(unsafe.Pointer(&prompt[0])), C.int32_t(len(prompt)),
		(*C.int32_t)(unsafe.Pointer(&out[0])), C.int32_t(len(out)), &n))
	runtime.KeepAlive(prompt)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// Decoder holds one sequence's KV cache over a model, for custom decoding loops.
type Decoder struct {
	p     *C.moe_decoder
	model *Model
}

// NewDecoder creates a decoder with an empty cache of maxLen tokens (0 = the model's max_seq_len).
func NewDecoder(model *Model, maxLen int) (*Decoder, error) {
	if err := model.live(); err != nil {
		return nil, err
	}
	var p *C.moe_decoder
	if err := model.check(C.moe_decoder_create(model.p, C.int32_t(maxLen), &p)); err != nil {
		return nil, err
	}
	d := &Decoder{p: p, model: model}
	model.children.open.Add(1)
	runtime.SetFinalizer(d, func(d *Decoder) { _ = d.Close() })
	return d, nil
}

// Close frees the decoder and its cache. Closing twice is a no-op.
func (d *Decoder) Close() error {
	if d.p == nil {
		return nil
	}
	C.moe_decoder_destroy(d.p)
	d.p = nil
	d.model.children.open.Add(-1)
	runtime.SetFinalizer(d, nil)
	return nil
}

func (d *Decoder) live() error {
	if d == nil || d.p == nil {
		return closedError("Decoder")
	}
	return nil
}

func (d *Decoder) check(st C.moe_status) error {
	err := ctxError(d.model.ctx.p, st)
	runtime.KeepAlive(d)
	return err
}

// Reset empties the cache: the next token fed is at position 0.
func (d *Decoder) Reset() error {
	if err := d.live(); err != nil {
		return err
	}
	return d.check(C.moe_decoder_reset(d.p))
}

// Feed appends tokens and returns the logits predicting the next one.
func (d *Decoder) Feed(tokens []int32) ([]float32, error) {
	if err := d.live(); err != nil {
		return nil, err
	}
	if len(tokens) == 0 {
		return nil, invalid("Decoder.Feed: no tokens")
	}
	logits := make([]float32, d.model.cfg.VocabSize)
	d.model.generation++
	err := d.check(C.moe_decoder_feed(d.p, (*C.int32_t)(unsafe.Pointer(&tokens[0])), C.int32_t(len(tokens)),
		(*C.float)(unsafe.Pointer(&logits[0])), C.uint64_t(len(logits))))
	runtime.KeepAlive(tokens)
	if err != nil {
		return nil, err
	}
	return logits, nil
}

// Len is the number of tokens the decoder holds.
func (d *Decoder) Len() (int, error) {
	if err := d.live(); err != nil {
		return 0, err
	}
	var n C.int32_t
	err := d.check(C.moe_decoder_length(d.p, &n))
	return int(n), err
}
