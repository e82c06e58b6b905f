package moe

/*
#include <moe/moe.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Tensor is a dense row-major buffer in the ctx's memory space.
type Tensor struct {
	p   *C.moe_tensor
	ctx *Ctx
}

// NewTensor creates a zero-filled tensor.
func NewTensor(ctx *Ctx, dtype Dtype, shape []int64) (*Tensor, error) {
	if err := ctx.live(); err != nil {
		return nil, err
	}
	var sp *C.int64_t
	if len(shape) > 0 {
		sp = (*C.int64_t)(unsafe.Pointer(&shape[0]))
	}
	var p *C.moe_tensor
	err := ctxError(ctx.p, C.moe_tensor_create(ctx.p, C.int32_t(dtype), C.int32_t(len(shape)), sp, &p))
	runtime.KeepAlive(shape)
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	t := &Tensor{p: p, ctx: ctx}
	ctx.children.open.Add(1)
	runtime.SetFinalizer(t, func(t *Tensor) { _ = t.Close() })
	return t, nil
}

// Close frees the tensor. Closing twice is a no-op.
func (t *Tensor) Close() error {
	if t.p == nil {
		return nil
	}
	C.moe_tensor_destroy(t.p)
	t.p = nil
	t.ctx.children.open.Add(-1)
	runtime.SetFinalizer(t, nil)
	return nil
}

func (t *Tensor) live() error {
	if t == nil || t.p == nil {
		return closedError("Tensor")
	}
	return nil
}

// Dtype is the element type.
func (t *Tensor) Dtype() (Dtype, error) {
	if err := t.live(); err != nil {
		return 0, err
	}
	var d C.int32_t
	err := ctxError(t.ctx.p, C.moe_tensor_dtype(t.p, &d))
	runtime.KeepAlive(t)
	return Dtype(d), err
}

// Shape is the size of each dimension.
func (t *Tensor) Shape() ([]int64, error) {
	if err := t.live(); err != nil {
		return nil, err
	}
	var ndim C.int32_t
	shape := make([]int64, TensorMaxDims)
	err := ctxError(t.ctx.p, C.moe_tensor_shape(t.p, &ndim, (*C.int64_t)(unsafe.Pointer(&shape[0])), TensorMaxDims))
	runtime.KeepAlive(t)
	if err != nil {
		return nil, err
	}
	return shape[:ndim], nil
}

// Size is the element count and the byte size.
func (t *Tensor) Size() (numel int64, nbytes uint64, err error) {
	if err := t.live(); err != nil {
		return 0, 0, err
	}
	var n C.int64_t
	var b C.uint64_t
	err = ctxError(t.ctx.p, C.moe_tensor_size(t.p, &n, &b))
	runtime.KeepAlive(t)
	return int64(n), uint64(b), err
}

// bytesOf views a slice of a supported element type as memory, checking it against the dtype.
func bytesOf(data interface{}, dtype Dtype) (unsafe.Pointer, uint64, error) {
	var p unsafe.Pointer
	var n, size int
	ok := false
	switch s := data.(type) {
	case []float32:
		ok, n, size = dtype == DtypeF32, len(s), 4
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	case []uint16: // bf16 and f16 bit patterns
		ok, n, size = dtype == DtypeBF16 || dtype == DtypeF16, len(s), 2
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	case []int32:
		ok, n, size = dtype == DtypeI32, len(s), 4
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	case []int64:
		ok, n, size = dtype == DtypeI64, len(s), 8
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	case []uint8:
		ok, n, size = dtype == DtypeU8, len(s), 1
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	}
	if !ok {
		return nil, 0, invalid("a " + dtype.String() + " tensor cannot exchange data with this slice type")
	}
	return p, uint64(n * size), nil
}

// CopyFrom overwrites the whole tensor from a slice ([]float32, []int32, []int64, []uint8, or
// []uint16 for bf16/f16) holding exactly its elements.
func (t *Tensor) CopyFrom(src interface{}) error {
	dtype, err := t.Dtype()
	if err != nil {
		return err
	}
	p, n, err := bytesOf(src, dtype)
	if err != nil {
		return err
	}
	err = ctxError(t.ctx.p, C.moe_tensor_copy_from(t.p, p, C.uint64_t(n)))
	runtime.KeepAlive(src)
	runtime.KeepAlive(t)
	return err
}

// CopyTo copies the whole tensor into a slice of at least its element count.
func (t *Tensor) CopyTo(dst interface{}) error {
	dtype, err := t.Dtype()
	if err != nil {
		return err
	}
	p, n, err := bytesOf(dst, dtype)
	if err != nil {
		return err
	}
	err = ctxError(t.ctx.p, C.moe_tensor_copy_to(t.p, p, C.uint64_t(n)))
	runtime.KeepAlive(dst)
	runtime.KeepAlive(t)
	return err
}

// Fill sets every element to a value (converted to the dtype).
func (t *Tensor) Fill(value float64) error {
	if err := t.live(); err != nil {
		return err
	}
	err := ctxError(t.ctx.p, C.moe_tensor_fill(t.p, C.double(value)))
	runtime.KeepAlive(t)
	return err
}
