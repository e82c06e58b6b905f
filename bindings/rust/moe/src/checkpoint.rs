// Checkpoints: save a model (and its optimizer) crash-safely, resume bit for bit, read a checkpoint's
// config and record without loading it, and export a model as a Hugging Face Mixtral checkpoint.

use std::ffi::CString;
use std::os::raw::c_char;
use std::path::Path;
use std::ptr;

use moe_sys as sys;

use crate::config::{CheckpointInfo, ModelConfig};
use crate::error::{check, Error, Result};
use crate::model::Model;
use crate::optim::Optimizer;
use crate::path_cstring;

/// The size of a checkpoint's trainer text, its NUL included.
fn user_json_size(dir: &CString) -> Result<u32> {
    let mut size = 0u32;
    check(
        unsafe { sys::moe_checkpoint_read_info(dir.as_ptr(), ptr::null_mut(), ptr::null_mut(), 0, &mut size) },
        ptr::null(),
    )?;
    Ok(size.max(1))
}

fn text_of(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl<'c> Model<'c> {
    /// Saves the model (and `opt`'s state) as `root_dir/step-<info.step>/`, then points
    /// `root_dir/latest` at it; `user_json` is stored verbatim.
    pub fn save_checkpoint(
        &self,
        opt: Option<&Optimizer<'_>>,
        root_dir: &Path,
        info: &CheckpointInfo,
        user_json: Option<&str>,
    ) -> Result<()> {
        let root = path_cstring(root_dir)?;
        let text = match user_json {
            Some(s) => Some(CString::new(s).map_err(|_| Error::invalid("save_checkpoint: user_json holds a NUL byte"))?),
            None => None,
        };
        let mut raw = info.to_raw();
        raw.user_json = text.as_ref().map_or(ptr::null(), |t| t.as_ptr());
        let opt_ptr = opt.map_or(ptr::null_mut(), |o| o.as_ptr());
        check(unsafe { sys::moe_checkpoint_save(self.as_ptr(), opt_ptr, root.as_ptr(), &raw) }, self.ctx().as_ptr())
    }

    /// Loads a checkpoint directory (or the one a root's `latest` names) into this model, which must
    /// have its config, and `opt`'s state; returns its record and trainer text. Nothing changes on
    /// failure.
    pub fn load_checkpoint(&self, opt: Option<&Optimizer<'_>>, dir: &Path) -> Result<(CheckpointInfo, String)> {
        let cdir = path_cstring(dir)?;
        let mut buf = vec![0 as c_char; user_json_size(&cdir)? as usize];
        let mut info = CheckpointInfo::zeroed();
        let opt_ptr = opt.map_or(ptr::null_mut(), |o| o.as_ptr());
        self.bump(); // the model's weights change under any layer's saved forward state
        check(
            unsafe {
                sys::moe_checkpoint_load(self.as_ptr(), opt_ptr, cdir.as_ptr(), &mut info.0, buf.as_mut_ptr(), buf.len() as u32)
            },
            self.ctx().as_ptr(),
        )?;
        Ok((info, text_of(&buf)))
    }

    /// Writes the model as a Hugging Face Mixtral checkpoint into `out_dir` (0 = one shard file).
    pub fn export_hf(&self, out_dir: &Path, max_shard_bytes: u64) -> Result<()> {
        let dir = path_cstring(out_dir)?;
        check(unsafe { sys::moe_model_export_hf(self.as_ptr(), dir.as_ptr(), max_shard_bytes) }, self.ctx().as_ptr())
    }
}

impl ModelConfig {
    /// The config a checkpoint was saved with, to create the model before loading it.
    pub fn from_checkpoint(dir: &Path) -> Result<ModelConfig> {
        let cdir = path_cstring(dir)?;
        let mut raw = ModelConfig::default().to_raw();
        check(unsafe { sys::moe_checkpoint_read_config(cdir.as_ptr(), &mut raw) }, ptr::null())?;
        Ok(ModelConfig::from_raw(raw))
    }
}

/// A checkpoint's step, data position, seed and trainer text, without loading tensors.
pub fn read_checkpoint_info(dir: &Path) -> Result<(CheckpointInfo, String)> {
    let cdir = path_cstring(dir)?;
    let mut buf = vec![0 as c_char; user_json_size(&cdir)? as usize];
    let mut info = CheckpointInfo::zeroed();
    check(
        unsafe {
            sys::moe_checkpoint_read_info(cdir.as_ptr(), &mut info.0, buf.as_mut_ptr(), buf.len() as u32, ptr::null_mut())
        },
        ptr::null(),
    )?;
    Ok((info, text_of(&buf)))
}
