// Package moe is the Go API of libmoe, a C library that trains Mixture-of-Experts transformer
// language models. It calls the real C header through cgo (found with pkg-config); configs and
// statistics are generated mirrors of the C structs (zz_generated.go), byte for byte, so they are
// handed to C without copying field by field.
//
// Every handle (Ctx, Mesh, Tensor, Model, Layer, Optimizer) has Close, which is idempotent, and a
// finalizer that closes it if the program forgets; an object cannot be closed while objects made
// from it are open. Errors are values of type *Error carrying the status class and the library's
// message; errors.Is(err, moe.ErrInvalidArg) tests the class. C never keeps a Go pointer: slices are
// read or written during the call only, and the log callback reaches Go through a cgo.Handle held in
// C memory. A handle, and everything made from it, is used by one goroutine at a time.
package moe

/*
#cgo pkg-config: moe
#include <moe/moe.h>
*/
import "C"

import (
	"runtime"
	"sync/atomic"
)

// Error is a failed libmoe call: its status class and the library's message, which names the bad
// argument or field.
type Error struct {
	Code    StatusCode
	Message string
}

func (e *Error) Error() string {
	return "moe: " + e.Code.String() + ": " + e.Message
}

// Is makes errors.Is(err, moe.ErrInvalidArg) true for an *Error of that class.
func (e *Error) Is(target error) bool {
	c, ok := target.(StatusCode)
	return ok && c == e.Code
}

// Error lets a StatusCode be the target of errors.Is.
func (c StatusCode) Error() string {
	return c.String()
}

func invalid(message string) error {
	return &Error{Code: ErrInvalidArg, Message: message}
}

func closedError(what string) error {
	return &Error{Code: ErrState, Message: what + " is closed"}
}

// ctxError turns a status into an error with the message the ctx recorded. The ctx's message, not
// the thread-local one, because the goroutine may have moved to another thread since the call.
func ctxError(ctx *C.moe_ctx, st C.moe_status) error {
	if st == C.MOE_OK {
		return nil
	}
	return &Error{Code: StatusCode(st), Message: C.GoString(C.moe_ctx_last_error(ctx))}
}

// lockedCall runs a call made without a ctx and reads the calling thread's message on the same OS
// thread.
func lockedCall(call func() C.moe_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := call()
	if st == C.MOE_OK {
		return nil
	}
	return &Error{Code: StatusCode(st), Message: C.GoString(C.moe_last_error())}
}

// owner counts the open objects made from a handle, so Close can refuse to free a parent first.
type owner struct {
	open atomic.Int32
}

func (o *owner) busy(what string) error {
	if n := o.open.Load(); n > 0 {
		return &Error{Code: ErrState, Message: what + ".Close: objects made from it are still open"}
	}
	return nil
}

// VersionInfo is the version of the library linked at run time.
type VersionInfo struct {
	Text                string
	Major, Minor, Patch int
}

// Version reports the linked library's version (compare VersionMajor..., the headers').
func Version() VersionInfo {
	var major, minor, patch C.int32_t
	s := C.GoString(C.moe_version(&major, &minor, &patch))
	return VersionInfo{Text: s, Major: int(major), Minor: int(minor), Patch: int(patch)}
}

// StatusString is the library's name of a status, e.g. "MOE_ERR_INVALID_ARG".
func StatusString(code StatusCode) string {
	return C.GoString(C.moe_status_string(C.moe_status(code)))
}

// CUDADeviceCount is the number of visible CUDA devices (0 without CUDA).
func CUDADeviceCount() (int, error) {
	var n C.int32_t
	err := lockedCall(func() C.moe_status { return C.moe_cuda_device_count(&n) })
	return int(n), err
}

// Size is the number of bytes of one element.
func (d Dtype) Size() (int, error) {
	var n C.size_t
	err := lockedCall(func() C.moe_status { return C.moe_dtype_size(C.int32_t(d), &n) })
	return int(n), err
}
