package moe

/*
#include <stdlib.h>
#include <moe/moe.h>

// Builds the batch in C memory, so C never holds a Go struct that points at Go memory: the token
// slices arrive as plain call arguments, read during the call only.
static moe_status moe_go_train_step(moe_model *model, moe_optimizer *opt, const int32_t *tokens,
                                    const int32_t *targets, int32_t micro_batch_size, int32_t seq_len,
                                    int32_t num_micro_batches, moe_step_stats *stats)
{
    moe_batch b;
    moe_status st = moe_batch_init(&b, sizeof b);
    if (st != MOE_OK)
        return st;
    b.tokens = tokens;
    b.targets = targets;
    b.micro_batch_size = micro_batch_size;
    b.seq_len = seq_len;
    b.num_micro_batches = num_micro_batches;
    return moe_train_step(model, opt, &b, stats);
}
*/
import "C"

import (
	"bytes"
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// DefaultModelConfig is the library's default architecture (a small byte-level MoE model).
func DefaultModelConfig() ModelConfig {
	var c ModelConfig
	C.moe_model_config_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// Validate checks the config without creating anything; the error names the first bad field.
func (c ModelConfig) Validate() error {
	c.setStructSize()
	return lockedCall(func() C.moe_status { return C.moe_model_config_validate(c.cptr()) })
}

// ReadHFConfig reads a Hugging Face Mixtral config.json in dir into cfg; fields Mixtral does not
// have keep their values.
func ReadHFConfig(dir string, cfg *ModelConfig) error {
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	raw := *cfg
	raw.setStructSize()
	if err := lockedCall(func() C.moe_status { return C.moe_hf_read_config(cdir, raw.cptr()) }); err != nil {
		return err
	}
	*cfg = raw
	return nil
}

// Model is a decoder-only Mixture-of-Experts transformer.
type Model struct {
	p        *C.moe_model
	ctx      *Ctx
	mesh     *Mesh
	cfg      ModelConfig
	children owner
	// generation counts the calls that run the model's layers forward: a borrowed layer's Backward
	// checks that the library's saved state (and its size) still comes from its own Forward.
	generation uint64
}

// NewModel creates a model with freshly initialised parameters on a mesh.
func NewModel(ctx *Ctx, mesh *Mesh, cfg ModelConfig) (*Model, error) {
	if err := ctx.live(); err != nil {
		return nil, err
	}
	if err := mesh.live(); err != nil {
		return nil, err
	}
	cfg.setStructSize()
	var p *C.moe_model
	err := ctxError(ctx.p, C.moe_model_create(ctx.p, mesh.p, cfg.cptr(), &p))
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(mesh)
	if err != nil {
		return nil, err
	}
	m := &Model{p: p, ctx: ctx, mesh: mesh}
	ctx.children.open.Add(1)
	mesh.children.open.Add(1)
	runtime.SetFinalizer(m, func(m *Model) { _ = m.Close() })
	if m.cfg, err = m.Config(); err != nil {
		_ = m.Close()
		return nil, err
	}
	return m, nil
}

// Close frees the model (after its optimizers). Closing twice is a no-op.
func (m *Model) Close() error {
	if m.p == nil {
		return nil
	}
	if err := m.children.busy("Model"); err != nil {
		return err
	}
	C.moe_model_destroy(m.p)
	m.p = nil
	m.ctx.children.open.Add(-1)
	m.mesh.children.open.Add(-1)
	runtime.SetFinalizer(m, nil)
	return nil
}

func (m *Model) live() error {
	if m == nil || m.p == nil {
		return closedError("Model")
	}
	return nil
}

func (m *Model) check(st C.moe_status) error {
	err := ctxError(m.ctx.p, st)
	runtime.KeepAlive(m)
	return err
}

// Config is the config the model was created with, defaults applied.
func (m *Model) Config() (ModelConfig, error) {
	var c ModelConfig
	if err := m.live(); err != nil {
		return c, err
	}
	c.setStructSize()
	return c, m.check(C.moe_model_get_config(m.p, c.cptr()))
}

// NumParams is the total parameter count and the count used per token.
func (m *Model) NumParams() (total, active int64, err error) {
	if err := m.live(); err != nil {
		return 0, 0, err
	}
	var t, a C.int64_t
	err = m.check(C.moe_model_num_params(m.p, &t, &a))
	return int64(t), int64(a), err
}

// FlopsPerToken is the training FLOPs per token at a sequence length.
func (m *Model) FlopsPerToken(seqLen int) (float64, error) {
	if err := m.live(); err != nil {
		return 0, err
	}
	var f C.double
	err := m.check(C.moe_model_flops_per_token(m.p, C.int32_t(seqLen), &f))
	return float64(f), err
}

func idsFit(what string, ids []int32, batch, seqLen int) error {
	if batch <= 0 || seqLen <= 0 || batch > math.MaxInt32 || seqLen > math.MaxInt32 || len(ids) != batch*seqLen {
		return invalid(fmt.Sprintf("%s: %d ids for batch %d x seqLen %d", what, len(ids), batch, seqLen))
	}
	return nil
}

// Forward returns the logits [batch][seqLen][vocab] of batch*seqLen token ids.
func (m *Model) Forward(tokens []int32, batch, seqLen int) ([]float32, error) {
	if err := m.live(); err != nil {
		return nil, err
	}
	if err := idsFit("Model.Forward", tokens, batch, seqLen); err != nil {
		return nil, err
	}
	logits := make([]float32, len(tokens)*int(m.cfg.VocabSize))
	m.generation++
	err := m.check(C.moe_model_forward(m.p, (*C.int32_t)(unsafe.Pointer(&tokens[0])), C.int32_t(batch),
		C.int32_t(seqLen), (*C.float)(unsafe.Pointer(&logits[0])), C.uint64_t(len(logits))))
	runtime.KeepAlive(tokens)
	if err != nil {
		return nil, err
	}
	return logits, nil
}

// ForwardBackward runs one micro-batch forward and backward, adding lossWeight times its gradient
// to the model's; it returns the LM loss and the router losses.
func (m *Model) ForwardBackward(tokens, targets []int32, batch, seqLen int, lossWeight float32) (lm, aux float64, err error) {
	if err := m.live(); err != nil {
		return 0, 0, err
	}
	if err := idsFit("Model.ForwardBackward tokens", tokens, batch, seqLen); err != nil {
		return 0, 0, err
	}
	if err := idsFit("Model.ForwardBackward targets", targets, batch, seqLen); err != nil {
		return 0, 0, err
	}
	var l, a C.double
	m.generation++
	err = m.check(C.moe_model_forward_backward(m.p, (*C.int32_t)(unsafe.Pointer(&tokens[0])),
		(*C.int32_t)(unsafe.Pointer(&targets[0])), C.int32_t(batch), C.int32_t(seqLen), C.float(lossWeight), &l, &a))
	runtime.KeepAlive(tokens)
	runtime.KeepAlive(targets)
	return float64(l), float64(a), err
}

// ZeroGrad sets every gradient to zero.
func (m *Model) ZeroGrad() error {
	if err := m.live(); err != nil {
		return err
	}
	return m.check(C.moe_model_zero_grad(m.p))
}

// TrainStep runs one training step: tokens and targets hold numMicroBatches*microBatchSize*seqLen ids
// (numMicroBatches follows from their length; target -100 is not counted), gradients accumulate over
// the micro-batches, then clipping and the update.
func (m *Model) TrainStep(opt *Optimizer, tokens, targets []int32, microBatchSize, seqLen int) (StepStats, error) {
	var s StepStats
	if err := m.live(); err != nil {
		return s, err
	}
	if err := opt.live(); err != nil {
		return s, err
	}
	per := microBatchSize * seqLen
	if microBatchSize <= 0 || seqLen <= 0 || len(tokens) == 0 || len(tokens)%per != 0 || len(targets) != len(tokens) ||
		len(tokens)/per > math.MaxInt32 {
		return s, invalid(fmt.Sprintf("Model.TrainStep: %d tokens and %d targets are not whole micro-batches of %d x %d",
			len(tokens), len(targets), microBatchSize, seqLen))
	}
	s.setStructSize()
	m.generation++
	err := m.check(C.moe_go_train_step(m.p, opt.p, (*C.int32_t)(unsafe.Pointer(&tokens[0])),
		(*C.int32_t)(unsafe.Pointer(&targets[0])), C.int32_t(microBatchSize), C.int32_t(seqLen),
		C.int32_t(len(tokens)/per), s.cptr()))
	runtime.KeepAlive(opt)
	runtime.KeepAlive(tokens)
	runtime.KeepAlive(targets)
	return s, err
}

// ParamInfo is the name and logical shape of one parameter tensor.
type ParamInfo struct {
	Name  string
	Shape []int64
}

// Numel is the element count.
func (p ParamInfo) Numel() int {
	n := 1
	for _, d := range p.Shape {
		n *= int(d)
	}
	return n
}

func cName(buf []byte) string {
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		return string(buf[:i])
	}
	return string(buf)
}

// Params lists every parameter tensor in the model's fixed order.
func (m *Model) Params() ([]ParamInfo, error) {
	if err := m.live(); err != nil {
		return nil, err
	}
	var count C.int32_t
	if err := m.check(C.moe_model_param_count(m.p, &count)); err != nil {
		return nil, err
	}
	out := make([]ParamInfo, 0, int(count))
	name := make([]byte, 256)
	shape := make([]int64, TensorMaxDims)
	for i := 0; i < int(count); i++ {
		var ndim C.int32_t
		err := m.check(C.moe_model_param_info(m.p, C.int32_t(i), (*C.char)(unsafe.Pointer(&name[0])),
			C.uint32_t(len(name)), &ndim, (*C.int64_t)(unsafe.Pointer(&shape[0]))))
		if err != nil {
			return nil, err
		}
		out = append(out, ParamInfo{Name: cName(name), Shape: append([]int64(nil), shape[:ndim]...)})
	}
	return out, nil
}

// ReadParam copies a parameter (or, with gradient, its gradient) into dst, whose length must be its
// element count.
func (m *Model) ReadParam(name string, gradient bool, dst []float32) error {
	if err := m.live(); err != nil {
		return err
	}
	if len(dst) == 0 {
		return invalid("Model.ReadParam: empty dst")
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	g := C.uint32_t(0)
	if gradient {
		g = 1
	}
	err := m.check(C.moe_model_param_read(m.p, cname, g, (*C.float)(unsafe.Pointer(&dst[0])), C.int64_t(len(dst))))
	runtime.KeepAlive(dst)
	return err
}

// WriteParam overwrites a parameter from src (its element count).
func (m *Model) WriteParam(name string, src []float32) error {
	if err := m.live(); err != nil {
		return err
	}
	if len(src) == 0 {
		return invalid("Model.WriteParam: empty src")
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	err := m.check(C.moe_model_param_write(m.p, cname, (*C.float)(unsafe.Pointer(&src[0])), C.int64_t(len(src))))
	runtime.KeepAlive(src)
	return err
}

// ParamSnapshot is every parameter of a model by name: what a checkpoint holds of the weights.
type ParamSnapshot struct {
	Params []ParamInfo
	Values [][]float32
}

// SaveParams copies out every parameter.
func (m *Model) SaveParams() (*ParamSnapshot, error) {
	params, err := m.Params()
	if err != nil {
		return nil, err
	}
	s := &ParamSnapshot{Params: params, Values: make([][]float32, len(params))}
	for i, p := range params {
		s.Values[i] = make([]float32, p.Numel())
		if err := m.ReadParam(p.Name, false, s.Values[i]); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// LoadParams overwrites the parameters a snapshot names (shapes must match).
func (m *Model) LoadParams(s *ParamSnapshot) error {
	for i, p := range s.Params {
		if err := m.WriteParam(p.Name, s.Values[i]); err != nil {
			return err
		}
	}
	return nil
}

// RoutingStats reports MoE block layer's routing in the last forward, and the tokens kept per expert.
func (m *Model) RoutingStats(layer int) (RoutingStats, []int64, error) {
	var s RoutingStats
	if err := m.live(); err != nil {
		return s, nil, err
	}
	s.setStructSize()
	if err := m.check(C.moe_model_routing_stats(m.p, C.int32_t(layer), s.cptr(), nil, 0)); err != nil {
		return s, nil, err
	}
	perExpert := make([]int64, s.NumExperts)
	if len(perExpert) == 0 {
		return s, perExpert, nil
	}
	err := m.check(C.moe_model_routing_stats(m.p, C.int32_t(layer), s.cptr(),
		(*C.int64_t)(unsafe.Pointer(&perExpert[0])), C.int32_t(len(perExpert))))
	return s, perExpert, err
}

// Upcycle initialises every MoE layer's experts from the dense MLPs of a dense model.
func (m *Model) Upcycle(dense *Model) error {
	if err := m.live(); err != nil {
		return err
	}
	if err := dense.live(); err != nil {
		return err
	}
	err := m.check(C.moe_model_upcycle(m.p, dense.p))
	runtime.KeepAlive(dense)
	return err
}

// ImportHF loads a Hugging Face Mixtral checkpoint from dir.
func (m *Model) ImportHF(dir string) error {
	if err := m.live(); err != nil {
		return err
	}
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	return m.check(C.moe_model_import_hf(m.p, cdir))
}
