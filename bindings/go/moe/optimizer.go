package moe

/*
#include <moe/moe.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// DefaultOptimizerConfig is the library's default optimizer (AdamW, lr 1e-3, clipping at 1).
func DefaultOptimizerConfig() OptimizerConfig {
	var c OptimizerConfig
	C.moe_optimizer_config_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// Optimizer updates one model's parameters.
type Optimizer struct {
	p     *C.moe_optimizer
	model *Model
}

// NewOptimizer creates an optimizer with zero state for a model.
func NewOptimizer(model *Model, cfg OptimizerConfig) (*Optimizer, error) {
	if err := model.live(); err != nil {
		return nil, err
	}
	cfg.setStructSize()
	var p *C.moe_optimizer
	if err := model.check(C.moe_optimizer_create(model.p, cfg.cptr(), &p)); err != nil {
		return nil, err
	}
	o := &Optimizer{p: p, model: model}
	model.children.open.Add(1)
	runtime.SetFinalizer(o, func(o *Optimizer) { _ = o.Close() })
	return o, nil
}

// Close frees the optimizer. Closing twice is a no-op.
func (o *Optimizer) Close() error {
	if o.p == nil {
		return nil
	}
	C.moe_optimizer_destroy(o.p)
	o.p = nil
	o.model.children.open.Add(-1)
	runtime.SetFinalizer(o, nil)
	return nil
}

func (o *Optimizer) live() error {
	if o == nil || o.p == nil {
		return closedError("Optimizer")
	}
	return nil
}

func (o *Optimizer) check(st C.moe_status) error {
	err := ctxError(o.model.ctx.p, st)
	runtime.KeepAlive(o)
	return err
}

// Step clips the model's gradients and applies one update (for loops built on ForwardBackward).
func (o *Optimizer) Step() (OptimizerStats, error) {
	var s OptimizerStats
	if err := o.live(); err != nil {
		return s, err
	}
	s.setStructSize()
	return s, o.check(C.moe_optimizer_step(o.p, s.cptr()))
}

// LRAt is the learning rate the schedule gives at update step (0 = the first).
func (o *Optimizer) LRAt(step int64) (float64, error) {
	if err := o.live(); err != nil {
		return 0, err
	}
	var lr C.double
	err := o.check(C.moe_optimizer_lr_at(o.p, C.int64_t(step), &lr))
	return float64(lr), err
}
