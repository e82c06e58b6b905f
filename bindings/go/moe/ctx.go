package moe

/*
#include <stdlib.h>
#include <moe/moe.h>

extern void moeGoLog(int32_t level, char *message, void *user_data);

// The moe_log_fn libmoe calls; it forwards to the exported Go function.
static void moe_go_log_shim(int32_t level, const char *message, void *user_data)
{
    moeGoLog(level, (char *)message, user_data);
}

static void moe_go_set_logger(moe_ctx_config *cfg, void *slot)
{
    cfg->log_fn = slot ? moe_go_log_shim : NULL;
    cfg->log_user_data = slot;
}
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Logger receives a ctx's log messages (up to CtxConfig.LogLevel), on the goroutine making the
// libmoe call. It must not call back into the same ctx; a panic in it is recovered and dropped.
type Logger func(level LogLevel, message string)

// DefaultCtxConfig is the library's default ctx config (CPU, OpenMP's threads, seed 1234).
func DefaultCtxConfig() CtxConfig {
	var c CtxConfig
	C.moe_ctx_config_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// Ctx is a library context: device, threads, seed, logging.
type Ctx struct {
	p        *C.moe_ctx
	children owner
	logger   cgo.Handle
	logSlot  unsafe.Pointer // C memory holding the logger's handle, for as long as the ctx lives
}

// NewCtx creates a ctx; cfg nil means defaults, logger nil means no logging.
func NewCtx(cfg *CtxConfig, logger Logger) (*Ctx, error) {
	raw := DefaultCtxConfig()
	if cfg != nil {
		raw = *cfg
	}
	raw.setStructSize()
	c := &Ctx{}
	if logger != nil {
		c.logger = cgo.NewHandle(logger)
		c.logSlot = C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0))))
		*(*C.uintptr_t)(c.logSlot) = C.uintptr_t(c.logger)
	}
	C.moe_go_set_logger(raw.cptr(), c.logSlot)
	var p *C.moe_ctx
	if err := lockedCall(func() C.moe_status { return C.moe_ctx_create(raw.cptr(), &p) }); err != nil {
		c.freeLogger()
		return nil, err
	}
	c.p = p
	runtime.SetFinalizer(c, func(c *Ctx) { _ = c.Close() })
	return c, nil
}

func (c *Ctx) freeLogger() {
	if c.logSlot != nil {
		C.free(c.logSlot)
		c.logSlot = nil
		c.logger.Delete()
	}
}

// Close frees the ctx; every object made from it must be closed first. Closing twice is a no-op.
func (c *Ctx) Close() error {
	if c.p == nil {
		return nil
	}
	if err := c.children.busy("Ctx"); err != nil {
		return err
	}
	C.moe_ctx_destroy(c.p)
	c.p = nil
	c.freeLogger()
	runtime.SetFinalizer(c, nil)
	return nil
}

func (c *Ctx) live() error {
	if c == nil || c.p == nil {
		return closedError("Ctx")
	}
	return nil
}

// Device is the device the ctx computes on and its index.
func (c *Ctx) Device() (DeviceType, int, error) {
	if err := c.live(); err != nil {
		return 0, 0, err
	}
	var ty, index C.int32_t
	err := ctxError(c.p, C.moe_ctx_device(c.p, &ty, &index))
	runtime.KeepAlive(c)
	return DeviceType(ty), int(index), err
}

// Memory is the tensor memory the ctx holds now and the most it has held.
func (c *Ctx) Memory() (current, peak uint64, err error) {
	if err := c.live(); err != nil {
		return 0, 0, err
	}
	var cur, pk C.uint64_t
	err = ctxError(c.p, C.moe_ctx_memory(c.p, &cur, &pk))
	runtime.KeepAlive(c)
	return uint64(cur), uint64(pk), err
}

// LastError is the message of the last failed call made with this ctx ("" if none).
func (c *Ctx) LastError() string {
	if c.live() != nil {
		return ""
	}
	s := C.GoString(C.moe_ctx_last_error(c.p))
	runtime.KeepAlive(c)
	return s
}

// DefaultMeshConfig is a world of one rank.
func DefaultMeshConfig() MeshConfig {
	var m MeshConfig
	C.moe_mesh_config_init(m.cptr(), C.uint32_t(unsafe.Sizeof(m)))
	return m
}

// Mesh is the parallel layout of the ranks.
type Mesh struct {
	p        *C.moe_mesh
	ctx      *Ctx
	children owner
}

// NewMesh creates a mesh; cfg nil means a world of one rank.
func NewMesh(ctx *Ctx, cfg *MeshConfig) (*Mesh, error) {
	if err := ctx.live(); err != nil {
		return nil, err
	}
	var cp *C.moe_mesh_config
	var raw MeshConfig
	if cfg != nil {
		raw = *cfg
		raw.setStructSize()
		cp = raw.cptr()
	}
	var p *C.moe_mesh
	err := ctxError(ctx.p, C.moe_mesh_create(ctx.p, cp, &p))
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	m := &Mesh{p: p, ctx: ctx}
	ctx.children.open.Add(1)
	runtime.SetFinalizer(m, func(m *Mesh) { _ = m.Close() })
	return m, nil
}

// Close frees the mesh (after the models and layers made on it). Closing twice is a no-op.
func (m *Mesh) Close() error {
	if m.p == nil {
		return nil
	}
	if err := m.children.busy("Mesh"); err != nil {
		return err
	}
	C.moe_mesh_destroy(m.p)
	m.p = nil
	m.ctx.children.open.Add(-1)
	runtime.SetFinalizer(m, nil)
	return nil
}

func (m *Mesh) live() error {
	if m == nil || m.p == nil {
		return closedError("Mesh")
	}
	return nil
}

// GroupSize is the size of this rank's group along an axis.
func (m *Mesh) GroupSize(axis MeshAxis) (int, error) {
	if err := m.live(); err != nil {
		return 0, err
	}
	var n C.int32_t
	err := ctxError(m.ctx.p, C.moe_mesh_group_size(m.p, C.int32_t(axis), &n))
	runtime.KeepAlive(m)
	return int(n), err
}

// GroupRank is this rank's index in its group along an axis.
func (m *Mesh) GroupRank(axis MeshAxis) (int, error) {
	if err := m.live(); err != nil {
		return 0, err
	}
	var r C.int32_t
	err := ctxError(m.ctx.p, C.moe_mesh_group_rank(m.p, C.int32_t(axis), &r))
	runtime.KeepAlive(m)
	return int(r), err
}

// SequenceParallel reports whether norms and residuals are sharded over the tp group.
func (m *Mesh) SequenceParallel() (bool, error) {
	if err := m.live(); err != nil {
		return false, err
	}
	var on C.uint32_t
	err := ctxError(m.ctx.p, C.moe_mesh_sequence_parallel(m.p, &on))
	runtime.KeepAlive(m)
	return on != 0, err
}
