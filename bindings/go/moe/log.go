package moe

// The exported log callback. A file with //export may only declare C in its preamble, so the shim
// with the exact moe_log_fn signature lives in ctx.go.

/*
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

//export moeGoLog
func moeGoLog(level C.int32_t, message *C.char, userData unsafe.Pointer) {
	defer func() {
		_ = recover() // a panicking Logger must not unwind into libmoe's C frames
	}()
	if userData == nil || message == nil {
		return
	}
	h := cgo.Handle(*(*C.uintptr_t)(userData))
	if f, ok := h.Value().(Logger); ok {
		f(LogLevel(level), C.GoString(message))
	}
}
