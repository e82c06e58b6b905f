// Datasets: a byte-level text file or a Megatron indexed dataset opened for shuffled, resumable
// batches with a held-out split, and a writer of indexed datasets. Paths are UTF-8, as the library
// expects; buffers are sized from the dataset's own sample length before C fills them.

use std::marker::PhantomData;
use std::path::Path;
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::config::DatasetConfig;
use crate::ctx::Ctx;
use crate::error::{check, to_i32, to_i64, Error, Result};
use crate::path_cstring;

/// Which samples a batch is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training samples, reshuffled every epoch.
    Train,
    /// The held-out samples, in one fixed order.
    Validation,
}

impl Split {
    fn to_raw(self) -> i32 {
        match self {
            Split::Train => sys::MOE_DATASET_SPLIT_TRAIN,
            Split::Validation => sys::MOE_DATASET_SPLIT_VALIDATION,
        }
    }
}

/// An open dataset; borrows its ctx.
pub struct Dataset<'c> {
    raw: NonNull<sys::moe_dataset>,
    ctx: &'c Ctx,
    _not_send: PhantomData<*mut ()>,
}

impl<'c> Dataset<'c> {
    /// Opens a text file, or the indexed dataset `path.bin` + `path.idx`, and fixes the split.
    pub fn open(ctx: &'c Ctx, path: &Path, cfg: &DatasetConfig) -> Result<Dataset<'c>> {
        let cpath = path_cstring(path)?;
        let mut raw_cfg = cfg.to_raw();
        raw_cfg.path = cpath.as_ptr(); // copied by the library, not kept
        let mut out: *mut sys::moe_dataset = ptr::null_mut();
        check(unsafe { sys::moe_dataset_open(ctx.as_ptr(), &raw_cfg, &mut out) }, ctx.as_ptr())?;
        match NonNull::new(out) {
            Some(raw) => Ok(Dataset { raw, ctx, _not_send: PhantomData }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_dataset_open returned no dataset")),
        }
    }

    /// The raw handle; it stays owned by this `Dataset`.
    pub fn as_ptr(&self) -> *mut sys::moe_dataset {
        self.raw.as_ptr()
    }

    fn check(&self, st: i32) -> Result<()> {
        check(st, self.ctx.as_ptr())
    }

    /// Distinct samples of a split (training: one epoch).
    pub fn num_samples(&self, split: Split) -> Result<i64> {
        let mut n = 0i64;
        self.check(unsafe { sys::moe_dataset_num_samples(self.as_ptr(), split.to_raw(), &mut n) })?;
        Ok(n)
    }

    /// Tokens in the stream.
    pub fn num_tokens(&self) -> Result<i64> {
        let mut n = 0i64;
        self.check(unsafe { sys::moe_dataset_num_tokens(self.as_ptr(), &mut n) })?;
        Ok(n)
    }

    /// Documents in the stream (1 for a text file).
    pub fn num_documents(&self) -> Result<i64> {
        let mut n = 0i64;
        self.check(unsafe { sys::moe_dataset_num_documents(self.as_ptr(), &mut n) })?;
        Ok(n)
    }

    /// The smallest vocabulary holding every token, as far as the dataset knows (0 = not known).
    pub fn vocab_size(&self) -> Result<i32> {
        let mut n = 0i32;
        self.check(unsafe { sys::moe_dataset_vocab_size(self.as_ptr(), &mut n) })?;
        Ok(n)
    }

    /// The `MOE_DATASET_KIND_*` it was opened as and the `MOE_DATASET_DTYPE_*` of its tokens.
    pub fn format(&self) -> Result<(i32, i32)> {
        let (mut kind, mut dtype) = (0i32, 0i32);
        self.check(unsafe { sys::moe_dataset_format(self.as_ptr(), &mut kind, &mut dtype) })?;
        Ok((kind, dtype))
    }

    /// The sample length the dataset was opened with.
    pub fn seq_len(&self) -> Result<usize> {
        let mut n = 0i32;
        self.check(unsafe { sys::moe_dataset_seq_len(self.as_ptr(), &mut n) })?;
        Ok(n.max(0) as usize)
    }

    /// Stream position of the first token of sample `index` of a split.
    pub fn sample_position(&self, split: Split, index: u64) -> Result<i64> {
        let index = i64::try_from(index).map_err(|_| Error::invalid("sample_position: index too large"))?;
        let mut p = 0i64;
        self.check(unsafe { sys::moe_dataset_sample_position(self.as_ptr(), split.to_raw(), index, &mut p) })?;
        Ok(p)
    }

    /// `count` samples from index `first_sample` of a split: (tokens, targets), each
    /// `count * seq_len` ids, row-major.
    pub fn batch(&self, split: Split, first_sample: u64, count: usize) -> Result<(Vec<i32>, Vec<i32>)> {
        let n = count
            .checked_mul(self.seq_len()?)
            .ok_or_else(|| Error::invalid("Dataset::batch: count * seq_len overflows"))?;
        let first = i64::try_from(first_sample).map_err(|_| Error::invalid("Dataset::batch: first_sample too large"))?;
        let (mut tokens, mut targets) = (vec![0i32; n], vec![0i32; n]);
        self.check(unsafe {
            sys::moe_dataset_batch(
                self.as_ptr(),
                split.to_raw(),
                first,
                to_i32(count, "count")?,
                tokens.as_mut_ptr(),
                targets.as_mut_ptr(),
            )
        })?;
        Ok((tokens, targets))
    }
}

impl Drop for Dataset<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_dataset_destroy(self.raw.as_ptr()) }
    }
}

/// A writer of one indexed dataset (`prefix.bin` + `prefix.idx`); nothing appears there before
/// [`commit`](Self::commit). Borrows its ctx.
pub struct DatasetWriter<'c> {
    raw: NonNull<sys::moe_dataset_writer>,
    ctx: &'c Ctx,
    _not_send: PhantomData<*mut ()>,
}

impl<'c> DatasetWriter<'c> {
    /// Starts a dataset at `prefix`, its tokens stored as `dtype` (a `MOE_DATASET_DTYPE_*`).
    pub fn create(ctx: &'c Ctx, prefix: &Path, dtype: i32) -> Result<DatasetWriter<'c>> {
        let cprefix = path_cstring(prefix)?;
        let mut out: *mut sys::moe_dataset_writer = ptr::null_mut();
        check(unsafe { sys::moe_dataset_writer_create(ctx.as_ptr(), cprefix.as_ptr(), dtype, &mut out) }, ctx.as_ptr())?;
        match NonNull::new(out) {
            Some(raw) => Ok(DatasetWriter { raw, ctx, _not_send: PhantomData }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_dataset_writer_create returned no writer")),
        }
    }

    /// Appends tokens to the current document.
    pub fn add_tokens(&self, tokens: &[i32]) -> Result<()> {
        let count = to_i64(tokens.len(), "count")?;
        check(unsafe { sys::moe_dataset_writer_add_tokens(self.raw.as_ptr(), tokens.as_ptr(), count) }, self.ctx.as_ptr())
    }

    /// Ends the current document.
    pub fn end_document(&self) -> Result<()> {
        check(unsafe { sys::moe_dataset_writer_end_document(self.raw.as_ptr()) }, self.ctx.as_ptr())
    }

    /// Writes, syncs and renames both files into place; the writer is spent.
    pub fn commit(self) -> Result<()> {
        check(unsafe { sys::moe_dataset_writer_commit(self.raw.as_ptr()) }, self.ctx.as_ptr())
        // dropped here: destroy after commit only frees the writer
    }
}

impl Drop for DatasetWriter<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_dataset_writer_destroy(self.raw.as_ptr()) }
    }
}

/// Writes a whole indexed dataset of `documents` in one call.
pub fn write_indexed(ctx: &Ctx, prefix: &Path, dtype: i32, documents: &[&[i32]]) -> Result<()> {
    let cprefix = path_cstring(prefix)?;
    let tokens: Vec<i32> = documents.iter().flat_map(|d| d.iter().copied()).collect();
    let lengths: Vec<i64> = documents.iter().map(|d| d.len() as i64).collect();
    check(
        unsafe {
            sys::moe_dataset_write_indexed(
                ctx.as_ptr(),
                cprefix.as_ptr(),
                dtype,
                tokens.as_ptr(),
                to_i64(tokens.len(), "num_tokens")?,
                lengths.as_ptr(),
                to_i64(lengths.len(), "num_docs")?,
            )
        },
        ctx.as_ptr(),
    )
}
