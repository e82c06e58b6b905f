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

// DefaultDatasetConfig is the library's default dataset config (auto kind, seq_len 256, 5% held out).
func DefaultDatasetConfig() DatasetConfig {
	var c DatasetConfig
	C.moe_dataset_config_init(c.cptr(), C.uint32_t(unsafe.Sizeof(c)))
	return c
}

// Dataset is an open token dataset: a byte-level text file or a Megatron indexed dataset. Its query
// methods and Batch may run on several goroutines at once.
type Dataset struct {
	p   *C.moe_dataset
	ctx *Ctx
}

// OpenDataset opens a text file, or the indexed dataset path.bin + path.idx, and fixes the split.
func OpenDataset(ctx *Ctx, path string, cfg DatasetConfig) (*Dataset, error) {
	if err := ctx.live(); err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	cfg.setStructSize()
	cfg.cptr().path = cpath // C memory, copied by the library and not kept
	var p *C.moe_dataset
	err := ctxError(ctx.p, C.moe_dataset_open(ctx.p, cfg.cptr(), &p))
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	ds := &Dataset{p: p, ctx: ctx}
	ctx.children.open.Add(1)
	runtime.SetFinalizer(ds, func(ds *Dataset) { _ = ds.Close() })
	return ds, nil
}

// Close closes the dataset and unmaps its files. Closing twice is a no-op.
func (ds *Dataset) Close() error {
	if ds.p == nil {
		return nil
	}
	C.moe_dataset_destroy(ds.p)
	ds.p = nil
	ds.ctx.children.open.Add(-1)
	runtime.SetFinalizer(ds, nil)
	return nil
}

func (ds *Dataset) live() error {
	if ds == nil || ds.p == nil {
		return closedError("Dataset")
	}
	return nil
}

func (ds *Dataset) check(st C.moe_status) error {
	err := ctxError(ds.ctx.p, st)
	runtime.KeepAlive(ds)
	return err
}

// NumSamples is the number of distinct samples of a split (training: one epoch).
func (ds *Dataset) NumSamples(split DatasetSplit) (int64, error) {
	if err := ds.live(); err != nil {
		return 0, err
	}
	var n C.int64_t
	err := ds.check(C.moe_dataset_num_samples(ds.p, C.int32_t(split), &n))
	return int64(n), err
}

// NumTokens is the number of tokens in the stream.
func (ds *Dataset) NumTokens() (int64, error) {
	if err := ds.live(); err != nil {
		return 0, err
	}
	var n C.int64_t
	err := ds.check(C.moe_dataset_num_tokens(ds.p, &n))
	return int64(n), err
}

// NumDocuments is the number of documents (1 for a text file).
func (ds *Dataset) NumDocuments() (int64, error) {
	if err := ds.live(); err != nil {
		return 0, err
	}
	var n C.int64_t
	err := ds.check(C.moe_dataset_num_documents(ds.p, &n))
	return int64(n), err
}

// VocabSize is the smallest vocabulary holding every token, as far as the dataset knows (0 = unknown).
func (ds *Dataset) VocabSize() (int, error) {
	if err := ds.live(); err != nil {
		return 0, err
	}
	var n C.int32_t
	err := ds.check(C.moe_dataset_vocab_size(ds.p, &n))
	return int(n), err
}

// Format is what the dataset was opened as and how its tokens are stored.
func (ds *Dataset) Format() (DatasetKind, DatasetDtype, error) {
	if err := ds.live(); err != nil {
		return 0, 0, err
	}
	var kind, dtype C.int32_t
	err := ds.check(C.moe_dataset_format(ds.p, &kind, &dtype))
	return DatasetKind(kind), DatasetDtype(dtype), err
}

// SeqLen is the sample length the dataset was opened with.
func (ds *Dataset) SeqLen() (int, error) {
	if err := ds.live(); err != nil {
		return 0, err
	}
	var n C.int32_t
	err := ds.check(C.moe_dataset_seq_len(ds.p, &n))
	return int(n), err
}

// SamplePosition is the stream position of the first token of sample index of a split.
func (ds *Dataset) SamplePosition(split DatasetSplit, index int64) (int64, error) {
	if err := ds.live(); err != nil {
		return 0, err
	}
	var p C.int64_t
	err := ds.check(C.moe_dataset_sample_position(ds.p, C.int32_t(split), C.int64_t(index), &p))
	return int64(p), err
}

// Batch returns count samples from index firstSample of a split: tokens and targets of
// count*SeqLen ids each, row-major.
func (ds *Dataset) Batch(split DatasetSplit, firstSample int64, count int) (tokens, targets []int32, err error) {
	seqLen, err := ds.SeqLen()
	if err != nil {
		return nil, nil, err
	}
	if count <= 0 || seqLen <= 0 {
		return nil, nil, invalid("Dataset.Batch: count and the dataset's seq_len must be positive")
	}
	tokens = make([]int32, count*seqLen)
	targets = make([]int32, count*seqLen)
	err = ds.check(C.moe_dataset_batch(ds.p, C.int32_t(split), C.int64_t(firstSample), C.int32_t(count),
		(*C.int32_t)(unsafe.Pointer(&tokens[0])), (*C.int32_t)(unsafe.Pointer(&targets[0]))))
	if err != nil {
		return nil, nil, err
	}
	return tokens, targets, nil
}

// DatasetWriter writes one indexed dataset (prefix.bin + prefix.idx); nothing appears there before
// Commit.
type DatasetWriter struct {
	p   *C.moe_dataset_writer
	ctx *Ctx
}

// NewDatasetWriter starts a dataset at prefix, its tokens stored as dtype.
func NewDatasetWriter(ctx *Ctx, prefix string, dtype DatasetDtype) (*DatasetWriter, error) {
	if err := ctx.live(); err != nil {
		return nil, err
	}
	cprefix := C.CString(prefix)
	defer C.free(unsafe.Pointer(cprefix))
	var p *C.moe_dataset_writer
	err := ctxError(ctx.p, C.moe_dataset_writer_create(ctx.p, cprefix, C.int32_t(dtype), &p))
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	w := &DatasetWriter{p: p, ctx: ctx}
	ctx.children.open.Add(1)
	runtime.SetFinalizer(w, func(w *DatasetWriter) { _ = w.Close() })
	return w, nil
}

// Close frees the writer; an uncommitted dataset is abandoned. Closing twice is a no-op.
func (w *DatasetWriter) Close() error {
	if w.p == nil {
		return nil
	}
	C.moe_dataset_writer_destroy(w.p)
	w.p = nil
	w.ctx.children.open.Add(-1)
	runtime.SetFinalizer(w, nil)
	return nil
}

func (w *DatasetWriter) live() error {
	if w == nil || w.p == nil {
		return closedError("DatasetWriter")
	}
	return nil
}

// AddTokens appends tokens to the current document.
func (w *DatasetWriter) AddTokens(tokens []int32) error {
	if err := w.live(); err != nil {
		return err
	}
	if len(tokens) == 0 {
		return nil
	}
	err := ctxError(w.ctx.p, C.moe_dataset_writer_add_tokens(w.p, (*C.int32_t)(unsafe.Pointer(&tokens[0])),
		C.int64_t(len(tokens))))
	runtime.KeepAlive(tokens)
	runtime.KeepAlive(w)
	return err
}

// EndDocument ends the current document.
func (w *DatasetWriter) EndDocument() error {
	if err := w.live(); err != nil {
		return err
	}
	err := ctxError(w.ctx.p, C.moe_dataset_writer_end_document(w.p))
	runtime.KeepAlive(w)
	return err
}

// Commit writes, syncs and renames both files into place; afterwards the writer can only be closed.
func (w *DatasetWriter) Commit() error {
	if err := w.live(); err != nil {
		return err
	}
	err := ctxError(w.ctx.p, C.moe_dataset_writer_commit(w.p))
	runtime.KeepAlive(w)
	return err
}

// WriteIndexed writes a whole indexed dataset of documents in one call.
func WriteIndexed(ctx *Ctx, prefix string, dtype DatasetDtype, documents [][]int32) error {
	if err := ctx.live(); err != nil {
		return err
	}
	var tokens []int32
	lengths := make([]int64, len(documents))
	for i, d := range documents {
		tokens = append(tokens, d...)
		lengths[i] = int64(len(d))
	}
	var tp *C.int32_t
	var lp *C.int64_t
	if len(tokens) > 0 {
		tp = (*C.int32_t)(unsafe.Pointer(&tokens[0]))
	}
	if len(lengths) > 0 {
		lp = (*C.int64_t)(unsafe.Pointer(&lengths[0]))
	}
	cprefix := C.CString(prefix)
	defer C.free(unsafe.Pointer(cprefix))
	err := ctxError(ctx.p, C.moe_dataset_write_indexed(ctx.p, cprefix, C.int32_t(dtype), tp, C.int64_t(len(tokens)),
		lp, C.int64_t(len(lengths))))
	runtime.KeepAlive(tokens)
	runtime.KeepAlive(lengths)
	runtime.KeepAlive(ctx)
	return err
}
