package moe

/*
#include <moe/moe.h>
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// DefaultLayerConfig is the library's default standalone layer (an MoE layer).
func DefaultLayerConfig() LayerConfig {
	var c LayerConfig
	C.moe_layer_config_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// Layer is one layer for custom trainers: standalone (NewLayer), or a sub-layer borrowed from a model
// (Model.Layer), which the model owns.
type Layer struct {
	p       *C.moe_layer
	ctx     *Ctx
	mesh    *Mesh  // standalone only
	model   *Model // borrowed only: keeps the model alive while the layer is used
	dModel  int
	ownGen  uint64
	lastLen int // floats in the last forward's x, 0 before any
	lastGen uint64
}

// NewLayer creates a standalone layer with fresh parameters.
func NewLayer(ctx *Ctx, mesh *Mesh, cfg LayerConfig) (*Layer, error) {
	if err := ctx.live(); err != nil {
		return nil, err
	}
	if err := mesh.live(); err != nil {
		return nil, err
	}
	cfg.setStructSize()
	var p *C.moe_layer
	err := ctxError(ctx.p, C.moe_layer_create(ctx.p, mesh.p, cfg.cptr(), &p))
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(mesh)
	if err != nil {
		return nil, err
	}
	l := &Layer{p: p, ctx: ctx, mesh: mesh, dModel: int(cfg.DModel)}
	ctx.children.open.Add(1)
	mesh.children.open.Add(1)
	runtime.SetFinalizer(l, func(l *Layer) { _ = l.Close() })
	return l, nil
}

// Layer borrows sub-layer kind of transformer block block.
func (m *Model) Layer(block int, kind LayerKind) (*Layer, error) {
	if err := m.live(); err != nil {
		return nil, err
	}
	var p *C.moe_layer
	if err := m.check(C.moe_model_layer(m.p, C.int32_t(block), C.int32_t(kind), &p)); err != nil {
		return nil, err
	}
	l := &Layer{p: p, ctx: m.ctx, model: m, dModel: int(m.cfg.DModel)}
	m.children.open.Add(1)
	runtime.SetFinalizer(l, func(l *Layer) { _ = l.Close() })
	return l, nil
}

// Close frees a standalone layer, or lets go of a borrowed one. Closing twice is a no-op.
func (l *Layer) Close() error {
	if l.p == nil {
		return nil
	}
	C.moe_layer_destroy(l.p) // a no-op on a borrowed layer: its model owns it
	l.p = nil
	if l.model != nil {
		l.model.children.open.Add(-1)
	} else {
		l.ctx.children.open.Add(-1)
		l.mesh.children.open.Add(-1)
	}
	runtime.SetFinalizer(l, nil)
	return nil
}

func (l *Layer) live() error {
	if l == nil || l.p == nil {
		return closedError("Layer")
	}
	if l.model != nil {
		return l.model.live()
	}
	return nil
}

func (l *Layer) check(st C.moe_status) error {
	err := ctxError(l.ctx.p, st)
	runtime.KeepAlive(l)
	return err
}

func (l *Layer) generation() *uint64 {
	if l.model != nil {
		return &l.model.generation
	}
	return &l.ownGen
}

// Kind is what the layer computes.
func (l *Layer) Kind() (LayerKind, error) {
	if err := l.live(); err != nil {
		return 0, err
	}
	var k C.int32_t
	err := l.check(C.moe_layer_kind_of(l.p, &k))
	return LayerKind(k), err
}

// Forward computes y = f(x) for batch*seqLen rows of d_model and saves what Backward needs.
func (l *Layer) Forward(x []float32, batch, seqLen int) ([]float32, error) {
	if err := l.live(); err != nil {
		return nil, err
	}
	if batch <= 0 || seqLen <= 0 || batch > math.MaxInt32 || seqLen > math.MaxInt32 || len(x) != batch*seqLen*l.dModel {
		return nil, invalid(fmt.Sprintf("Layer.Forward: %d floats for batch %d x seqLen %d x d_model %d",
			len(x), batch, seqLen, l.dModel))
	}
	y := make([]float32, len(x))
	gen := l.generation()
	*gen++
	err := l.check(C.moe_layer_forward(l.p, (*C.float)(unsafe.Pointer(&x[0])), C.int32_t(batch), C.int32_t(seqLen),
		(*C.float)(unsafe.Pointer(&y[0]))))
	runtime.KeepAlive(x)
	if err != nil {
		return nil, err
	}
	l.lastLen, l.lastGen = len(x), *gen
	return y, nil
}

// Backward returns dx for dy (the shape of the last Forward's output) and adds the parameter
// gradients.
func (l *Layer) Backward(dy []float32) ([]float32, error) {
	if err := l.live(); err != nil {
		return nil, err
	}
	if l.lastLen == 0 || l.lastGen != *l.generation() {
		return nil, &Error{Code: ErrState, Message: "Layer.Backward: no Forward of this layer since its state was last replaced"}
	}
	if len(dy) != l.lastLen {
		return nil, invalid(fmt.Sprintf("Layer.Backward: dy has %d floats, the forward made %d", len(dy), l.lastLen))
	}
	dx := make([]float32, len(dy))
	err := l.check(C.moe_layer_backward(l.p, (*C.float)(unsafe.Pointer(&dy[0])), (*C.float)(unsafe.Pointer(&dx[0]))))
	runtime.KeepAlive(dy)
	if err != nil {
		return nil, err
	}
	return dx, nil
}

// ZeroGrad sets the layer's parameter gradients to zero.
func (l *Layer) ZeroGrad() error {
	if err := l.live(); err != nil {
		return err
	}
	return l.check(C.moe_layer_zero_grad(l.p))
}

// Params lists the layer's parameter tensors by index.
func (l *Layer) Params() ([]ParamInfo, error) {
	if err := l.live(); err != nil {
		return nil, err
	}
	var count C.int32_t
	if err := l.check(C.moe_layer_param_count(l.p, &count)); err != nil {
		return nil, err
	}
	out := make([]ParamInfo, 0, int(count))
	name := make([]byte, 256)
	shape := make([]int64, TensorMaxDims)
	for i := 0; i < int(count); i++ {
		var ndim C.int32_t
		err := l.check(C.moe_layer_param_info(l.p, C.int32_t(i), (*C.char)(unsafe.Pointer(&name[0])),
			C.uint32_t(len(name)), &ndim, (*C.int64_t)(unsafe.Pointer(&shape[0]))))
		if err != nil {
			return nil, err
		}
		out = append(out, ParamInfo{Name: cName(name), Shape: append([]int64(nil), shape[:ndim]...)})
	}
	return out, nil
}

// ReadParam copies parameter index (or its gradient) into dst (exactly its element count).
func (l *Layer) ReadParam(index int, gradient bool, dst []float32) error {
	if err := l.live(); err != nil {
		return err
	}
	if len(dst) == 0 {
		return invalid("Layer.ReadParam: empty dst")
	}
	g := C.uint32_t(0)
	if gradient {
		g = 1
	}
	err := l.check(C.moe_layer_param_read(l.p, C.int32_t(index), g, (*C.float)(unsafe.Pointer(&dst[0])), C.int64_t(len(dst))))
	runtime.KeepAlive(dst)
	return err
}

// WriteParam overwrites parameter index from src (exactly its element count).
func (l *Layer) WriteParam(index int, src []float32) error {
	if err := l.live(); err != nil {
		return err
	}
	if len(src) == 0 {
		return invalid("Layer.WriteParam: empty src")
	}
	err := l.check(C.moe_layer_param_write(l.p, C.int32_t(index), (*C.float)(unsafe.Pointer(&src[0])), C.int64_t(len(src))))
	runtime.KeepAlive(src)
	return err
}

// RoutingStats reports an MoE layer's routing in its last forward, and the tokens kept per expert.
func (l *Layer) RoutingStats() (RoutingStats, []int64, error) {
	var s RoutingStats
	if err := l.live(); err != nil {
		return s, nil, err
	}
	s.setStructSize()
	if err := l.check(C.moe_layer_routing_stats(l.p, s.cptr(), nil, 0)); err != nil {
		return s, nil, err
	}
	perExpert := make([]int64, s.NumExperts)
	if len(perExpert) == 0 {
		return s, perExpert, nil
	}
	err := l.check(C.moe_layer_routing_stats(l.p, s.cptr(), (*C.int64_t)(unsafe.Pointer(&perExpert[0])),
		C.int32_t(len(perExpert))))
	return s, perExpert, err
}
