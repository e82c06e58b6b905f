// Errors as values: every failed libmoe call becomes an `Error` carrying the status class and the
// library's own message, read right after the call from the ctx involved (or the calling thread).

use std::ffi::CStr;
use std::fmt;
use std::os::raw::c_char;

use moe_sys as sys;

/// The class of a failure (the C API's `moe_status_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument or config field is invalid; the message names it.
    InvalidArg,
    /// An allocation failed.
    OutOfMemory,
    /// A file could not be opened, read, written, synced or renamed.
    Io,
    /// A file or buffer is malformed.
    Format,
    /// Valid, but not available in this build or on this device.
    Unsupported,
    /// A communication failed.
    Comm,
    /// The accelerator runtime reported an error.
    Device,
    /// A non-finite value where a finite one is required.
    Numeric,
    /// Not valid in the object's current state.
    State,
    /// An operation did not complete in time.
    Timeout,
    /// A status this version of the crate does not know.
    Other(i32),
}

impl ErrorKind {
    /// The kind of a (negative) `moe_status`.
    pub fn from_status(status: i32) -> ErrorKind {
        match status {
            sys::MOE_ERR_INVALID_ARG => ErrorKind::InvalidArg,
            sys::MOE_ERR_OUT_OF_MEMORY => ErrorKind::OutOfMemory,
            sys::MOE_ERR_IO => ErrorKind::Io,
            sys::MOE_ERR_FORMAT => ErrorKind::Format,
            sys::MOE_ERR_UNSUPPORTED => ErrorKind::Unsupported,
            sys::MOE_ERR_COMM => ErrorKind::Comm,
            sys::MOE_ERR_DEVICE => ErrorKind::Device,
            sys::MOE_ERR_NUMERIC => ErrorKind::Numeric,
            sys::MOE_ERR_STATE => ErrorKind::State,
            sys::MOE_ERR_TIMEOUT => ErrorKind::Timeout,
            other => ErrorKind::Other(other),
        }
    }
}

/// A failed libmoe call: its status and the library's message (which names the bad argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: i32,
    message: String,
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error found by the binding itself before calling C (a slice of the wrong length, a string
    /// with an interior NUL); it uses the library's status classes.
    pub(crate) fn new(status: i32, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(sys::MOE_ERR_INVALID_ARG, message)
    }

    /// The class of the failure.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_status(self.status)
    }

    /// The raw `moe_status` (negative).
    pub fn status(&self) -> i32 {
        self.status
    }

    /// The library's message, e.g. `moe_model_create: moe_model_config.d_model must be in 1..65536`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", status_name(self.status), self.message)
    }
}

impl std::error::Error for Error {}

/// The C name of a status, e.g. "MOE_ERR_INVALID_ARG".
pub fn status_name(status: i32) -> String {
    // static strings owned by the library, never NULL
    unsafe { text(sys::moe_status_string(status)) }
}

/// Copies a NUL-terminated string the library owns.
pub(crate) unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Turns a status into a `Result`, taking the message from the ctx when one is involved (Go-style
/// thread hopping cannot happen in Rust, but the ctx message is the one tied to the object).
pub(crate) fn check(status: i32, ctx: *const sys::moe_ctx) -> Result<()> {
    if status == sys::MOE_OK {
        return Ok(());
    }
    let message = unsafe {
        if ctx.is_null() {
            text(sys::moe_last_error())
        } else {
            text(sys::moe_ctx_last_error(ctx))
        }
    };
    Err(Error { status, message })
}

/// `usize` to the C API's `int32_t`, or an InvalidArg error naming the argument.
pub(crate) fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::invalid(format!("{} = {} does not fit in int32_t", what, value)))
}

pub(crate) fn to_i64(value: usize, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid(format!("{} = {} does not fit in int64_t", what, value)))
}
