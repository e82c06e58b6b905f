//! Raw FFI bindings to libmoe, generated from the C headers by `bindings/gen/bindgen` (see
//! `src/bindings.rs`; never edit it by hand). Everything here is `unsafe` and follows the C API's
//! rules (docs in `moe/moe.h`); the `moe` crate is the safe API on top.
//!
//! Linking: `build.rs` asks `pkg-config` for `moe` (set `PKG_CONFIG_PATH` for a libmoe installed
//! outside the default prefixes), or takes the directory in `MOE_LIB_DIR`. Dependents get that
//! directory as `DEP_MOE_LIBDIR`.

mod bindings;
pub use bindings::*;
