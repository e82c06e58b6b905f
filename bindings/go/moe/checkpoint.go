package moe

/*
#include <stdlib.h>
#include <moe/moe.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// DefaultCheckpointInfo is an empty checkpoint record (step 0, keep every checkpoint).
func DefaultCheckpointInfo() CheckpointInfo {
	var c CheckpointInfo
	C.moe_checkpoint_info_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// SaveCheckpoint saves the model (and opt's state, when opt is not nil) as rootDir/step-<info.Step>/
// and points rootDir/latest at it; userJSON ("" for none) is stored verbatim.
func (m *Model) SaveCheckpoint(opt *Optimizer, rootDir string, info CheckpointInfo, userJSON string) error {
	if err := m.live(); err != nil {
		return err
	}
	var optp *C.moe_optimizer
	if opt != nil {
		if err := opt.live(); err != nil {
			return err
		}
		optp = opt.p
	}
	croot := C.CString(rootDir)
	defer C.free(unsafe.Pointer(croot))
	info.setStructSize()
	if userJSON != "" {
		cjson := C.CString(userJSON)
		defer C.free(unsafe.Pointer(cjson))
		info.cptr().user_json = cjson // C memory, copied by the library and not kept
	} else {
		info.cptr().user_json = nil
	}
	err := m.check(C.moe_checkpoint_save(m.p, optp, croot, info.cptr()))
	runtime.KeepAlive(opt)
	return err
}

// userJSONSize is the bytes a checkpoint's trainer text needs, its NUL included.
func userJSONSize(cdir *C.char) (int, error) {
	var size C.uint32_t
	err := lockedCall(func() C.moe_status { return C.moe_checkpoint_read_info(cdir, nil, nil, 0, &size) })
	if size < 1 {
		size = 1
	}
	return int(size), err
}

// LoadCheckpoint loads a checkpoint directory (or the one rootDir/latest names) into this model, which
// must have its config, and opt's state (opt may be nil); it returns the record and the trainer text.
// Nothing changes on failure.
func (m *Model) LoadCheckpoint(opt *Optimizer, dir string) (CheckpointInfo, string, error) {
	var info CheckpointInfo
	if err := m.live(); err != nil {
		return info, "", err
	}
	var optp *C.moe_optimizer
	if opt != nil {
		if err := opt.live(); err != nil {
			return info, "", err
		}
		optp = opt.p
	}
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	size, err := userJSONSize(cdir)
	if err != nil {
		return info, "", err
	}
	buf := make([]byte, size)
	info.setStructSize()
	m.generation++ // the weights change under any layer's saved forward state
	err = m.check(C.moe_checkpoint_load(m.p, optp, cdir, info.cptr(), (*C.char)(unsafe.Pointer(&buf[0])),
		C.uint32_t(len(buf))))
	runtime.KeepAlive(opt)
	if err != nil {
		return CheckpointInfo{}, "", err
	}
	return info, cName(buf), nil
}

// ReadCheckpointConfig is the model config a checkpoint was saved with, to create the model before
// loading it.
func ReadCheckpointConfig(dir string) (ModelConfig, error) {
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	cfg := DefaultModelConfig()
	cfg.setStructSize()
	err := lockedCall(func() C.moe_status { return C.moe_checkpoint_read_config(cdir, cfg.cptr()) })
	return cfg, err
}

// ReadCheckpointInfo is a checkpoint's record and trainer text, without loading tensors.
func ReadCheckpointInfo(dir string) (CheckpointInfo, string, error) {
	var info CheckpointInfo
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	size, err := userJSONSize(cdir)
	if err != nil {
		return info, "", err
	}
	buf := make([]byte, size)
	info.setStructSize()
	err = lockedCall(func() C.moe_status {
		return C.moe_checkpoint_read_info(cdir, info.cptr(), (*C.char)(unsafe.Pointer(&buf[0])), C.uint32_t(len(buf)), nil)
	})
	if err != nil {
		return CheckpointInfo{}, "", err
	}
	return info, cName(buf), nil
}

// ExportHF writes the model as a Hugging Face Mixtral checkpoint into outDir (maxShardBytes 0 = one file).
func (m *Model) ExportHF(outDir string, maxShardBytes uint64) error {
	if err := m.live(); err != nil {
		return err
	}
	cdir := C.CString(outDir)
	defer C.free(unsafe.Pointer(cdir))
	return m.check(C.moe_model_export_hf(m.p, cdir, C.uint64_t(maxShardBytes)))
}
