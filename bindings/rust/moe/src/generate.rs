// Generation: a whole continuation in one call (greedy, sampling, beam search), or an incremental
// Decoder holding one sequence's KV cache for custom decoding loops.

use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use moe_sys as sys;

use crate::config::GenerateConfig;
use crate::error::{check, to_i32, Error, Result};
use crate::model::Model;

impl<'c> Model<'c> {
    /// The tokens generated after `prompt` (without the prompt).
    pub fn generate(&self, prompt: &[i32], cfg: &GenerateConfig) -> Result<Vec<i32>> {
        if prompt.is_empty() {
            return Err(Error::invalid("Model::generate: empty prompt"));
        }
        let raw = cfg.to_raw();
        let max_seq = self.config()?.max_seq_len.max(0) as usize;
        let capacity = (raw.max_new_tokens.max(0) as usize).min(max_seq.saturating_sub(prompt.len())).max(1);
        let mut out = vec![0i32; capacity];
        let mut n = 0i32;
        self.bump();
        check(
            unsafe {
                sys::moe_model_generate(
                    self.as_ptr(),
                    &raw,
                    prompt.as_ptr(),
                    to_i32(prompt.len(), "prompt_len")?,
                    out.as_mut_ptr(),
                    to_i32(out.len(), "out_capacity")?,
                    &mut n,
                )
            },
            self.ctx().as_ptr(),
        )?;
        out.truncate(n.max(0) as usize);
        Ok(out)
    }
}

/// An incremental decoder: one sequence's KV cache over a model, which it borrows.
pub struct Decoder<'m> {
    raw: NonNull<sys::moe_decoder>,
    model: &'m Model<'m>,
    _not_send: PhantomData<*mut ()>,
}

impl<'m> Decoder<'m> {
    /// A decoder with an empty cache of `max_len` tokens (0 = the model's max_seq_len).
    pub fn new(model: &'m Model<'m>, max_len: usize) -> Result<Decoder<'m>> {
        let mut out: *mut sys::moe_decoder = ptr::null_mut();
        check(
            unsafe { sys::moe_decoder_create(model.as_ptr(), to_i32(max_len, "max_len")?, &mut out) },
            model.ctx().as_ptr(),
        )?;
        match NonNull::new(out) {
            Some(raw) => Ok(Decoder { raw, model, _not_send: PhantomData }),
            None => Err(Error::new(sys::MOE_ERR_STATE, "moe_decoder_create returned no decoder")),
        }
    }

    /// The raw handle; it stays owned by this `Decoder`.
    pub fn as_ptr(&self) -> *mut sys::moe_decoder {
        self.raw.as_ptr()
    }

    /// Empties the cache: the next token fed is at position 0.
    pub fn reset(&self) -> Result<()> {
        check(unsafe { sys::moe_decoder_reset(self.as_ptr()) }, self.model.ctx().as_ptr())
    }

    /// Appends tokens and returns the logits predicting the next one.
    pub fn feed(&self, tokens: &[i32]) -> Result<Vec<f32>> {
        let vocab = self.model.vocab_and_width().0;
        let mut logits = vec![0f32; vocab];
        self.model.bump();
        check(
            unsafe {
                sys::moe_decoder_feed(
                    self.as_ptr(),
                    tokens.as_ptr(),
                    to_i32(tokens.len(), "count")?,
                    logits.as_mut_ptr(),
                    logits.len() as u64,
                )
            },
            self.model.ctx().as_ptr(),
        )?;
        Ok(logits)
    }

    /// Tokens the decoder holds.
    pub fn len(&self) -> Result<usize> {
        let mut n = 0i32;
        check(unsafe { sys::moe_decoder_length(self.as_ptr(), &mut n) }, self.model.ctx().as_ptr())?;
        Ok(n.max(0) as usize)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Drop for Decoder<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_decoder_destroy(self.raw.as_ptr()) }
    }
}
