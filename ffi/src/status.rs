//! Status codes, the per-thread last error message, and the guard that every
//! exported function runs its body in.
//!
//! The guard is what keeps the C ABI's promises: no panic ever unwinds into
//! C (it becomes `BT_PANIC`), every pointer argument is checked before use
//! (NULL becomes `BT_NULL_POINTER`), and every failure leaves a message that
//! `bt_last_error_message` returns. Not for: the transfer logic itself,
//! which is the core's; nothing here knows about files or sockets.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bigtransfer_core::auth::Token;
use bigtransfer_core::{Error, ErrorKind};

/// The result of every fallible function of the C API.
///
/// `BT_OK` (0) means success; every other value says what went wrong, and
/// `bt_last_error_message()` then describes it in words. The codes from
/// `BT_INVALID_INPUT` to `BT_TIMED_OUT` are the error kinds of the engine;
/// the ones after them are the C API's own.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum bt_status {
    /// Success.
    BT_OK = 0,
    /// An argument or option is invalid (a zero timeout, a bad bind address,
    /// a port the server cannot listen on, ...).
    BT_INVALID_INPUT = 1,
    /// The local file cannot be opened or read (missing, not a regular
    /// file, unreadable, changed while being read).
    BT_SOURCE_FILE = 2,
    /// No connection to the server could be made (refused, no route, name
    /// does not resolve), after all retries.
    BT_UNREACHABLE = 3,
    /// A connection was made but broke before the upload finished, after
    /// all retries.
    BT_CONNECTION_LOST = 4,
    /// The peer broke the wire protocol.
    BT_PROTOCOL = 5,
    /// The server refused the upload (bad name, too large, no space, ...).
    BT_REFUSED = 6,
    /// The server kept answering that the CRC-32 did not match.
    BT_CRC_MISMATCH = 7,
    /// The storage directory (or a file in it) cannot be used.
    BT_STORAGE = 8,
    /// The operation was cancelled (the progress callback returned
    /// non-zero). What the server received stays resumable.
    BT_CANCELLED = 9,
    /// The peer sent nothing within the timeout.
    BT_TIMED_OUT = 10,
    /// A pointer argument that must not be NULL was NULL.
    BT_NULL_POINTER = 11,
    /// An internal error (a Rust panic) was caught at the API boundary. The
    /// handles passed to the call are still safe to free.
    BT_PANIC = 12,
    /// A string that must be UTF-8 (a host name, an address, a remote file
    /// name) was not.
    BT_UTF8 = 13,
    /// An error of a kind this version of the C API does not know yet (the
    /// engine grew a new kind); the message says what it was.
    BT_OTHER = 14,
    /// The server's TLS key is not the pinned one (known-hosts file) or
    /// the one given with `bt_send_options_set_fingerprint`, or a server
    /// whose key is pinned (or with `bt_send_options_set_require_tls`)
    /// offered no TLS. Nothing was sent; not retried. The message shows
    /// both fingerprints and how to fix it.
    BT_HOST_KEY = 15,
}

impl bt_status {
    /// A short, stable, lowercase name of the code (`"ok"`, `"cancelled"`, ...).
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            bt_status::BT_OK => c"ok",
            bt_status::BT_INVALID_INPUT => c"invalid-input",
            bt_status::BT_SOURCE_FILE => c"source-file",
            bt_status::BT_UNREACHABLE => c"unreachable",
            bt_status::BT_CONNECTION_LOST => c"connection-lost",
            bt_status::BT_PROTOCOL => c"protocol",
            bt_status::BT_REFUSED => c"refused",
            bt_status::BT_CRC_MISMATCH => c"crc-mismatch",
            bt_status::BT_STORAGE => c"storage",
            bt_status::BT_CANCELLED => c"cancelled",
            bt_status::BT_TIMED_OUT => c"timed-out",
            bt_status::BT_NULL_POINTER => c"null-pointer",
            bt_status::BT_PANIC => c"panic",
            bt_status::BT_UTF8 => c"utf8",
            bt_status::BT_OTHER => c"other",
            bt_status::BT_HOST_KEY => c"host-key",
        }
    }

    /// The code whose numeric value is `code`, if there is one.
    pub(crate) fn from_int(code: c_int) -> Option<bt_status> {
        const ALL: [bt_status; 16] = [
            bt_status::BT_OK,
            bt_status::BT_INVALID_INPUT,
            bt_status::BT_SOURCE_FILE,
            bt_status::BT_UNREACHABLE,
            bt_status::BT_CONNECTION_LOST,
            bt_status::BT_PROTOCOL,
            bt_status::BT_REFUSED,
            bt_status::BT_CRC_MISMATCH,
            bt_status::BT_STORAGE,
            bt_status::BT_CANCELLED,
            bt_status::BT_TIMED_OUT,
            bt_status::BT_NULL_POINTER,
            bt_status::BT_PANIC,
            bt_status::BT_UTF8,
            bt_status::BT_OTHER,
            bt_status::BT_HOST_KEY,
        ];
        ALL.iter().copied().find(|s| *s as c_int == code)
    }
}

impl From<ErrorKind> for bt_status {
    fn from(kind: ErrorKind) -> bt_status {
        match kind {
            ErrorKind::InvalidInput => bt_status::BT_INVALID_INPUT,
            ErrorKind::SourceFile => bt_status::BT_SOURCE_FILE,
            ErrorKind::Unreachable => bt_status::BT_UNREACHABLE,
            ErrorKind::ConnectionLost => bt_status::BT_CONNECTION_LOST,
            ErrorKind::Protocol => bt_status::BT_PROTOCOL,
            ErrorKind::Refused => bt_status::BT_REFUSED,
            ErrorKind::CrcMismatch => bt_status::BT_CRC_MISMATCH,
            ErrorKind::Storage => bt_status::BT_STORAGE,
            ErrorKind::Cancelled => bt_status::BT_CANCELLED,
            ErrorKind::TimedOut => bt_status::BT_TIMED_OUT,
            ErrorKind::HostKey => bt_status::BT_HOST_KEY,
            _ => bt_status::BT_OTHER,
        }
    }
}

/// A failed call: the code returned to C and the message kept for
/// `bt_last_error_message`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: bt_status,
    pub(crate) message: String,
    /// Made by this crate (not the engine): the message gets the function's
    /// name in front, since it talks about that function's arguments.
    own: bool,
}

impl Failure {
    pub(crate) fn new(code: bt_status, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            own: true,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(bt_status::BT_INVALID_INPUT, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = bt_status::from(e.kind());
        let message = if code == bt_status::BT_OTHER {
            format!("{} ({})", e, e.kind().as_str())
        } else {
            e.to_string()
        };
        Failure {
            code,
            message,
            own: false,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Replaces the calling thread's last error message (NULs become U+FFFD so
/// that the whole message survives as a C string).
pub(crate) fn set_last_error(message: &str) {
    let text = if message.contains('\0') {
        message.replace('\0', "\u{FFFD}")
    } else {
        message.to_owned()
    };
    let c = CString::new(text).unwrap_or_default();
    // try_with / try_borrow_mut: never panic here, even during thread exit
    // or if a callback re-entered the API while a message was being read.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut s) = slot.try_borrow_mut() {
            *s = c;
        }
    });
}

/// The calling thread's last error message, as a pointer valid until the next
/// call of the API on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| {
            slot.try_borrow()
                .map(|s| s.as_ptr())
                .unwrap_or(c"".as_ptr())
        })
        .unwrap_or(c"".as_ptr())
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

/// Runs the body of the exported function `func`: catches a panic, turns the
/// outcome into a status code, and sets the thread's last error message
/// (empty on success).
pub(crate) fn guard(func: &str, body: impl FnOnce() -> Result<(), Failure>) -> bt_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            bt_status::BT_OK
        }
        Ok(Err(f)) => {
            let message = if f.own {
                format!("{func}: {}", f.message)
            } else {
                f.message
            };
            set_last_error(&message);
            f.code
        }
        Err(payload) => {
            set_last_error(&format!(
                "{func}: internal error (panic): {}",
                panic_text(payload.as_ref())
            ));
            bt_status::BT_PANIC
        }
    }
}

/// Runs the body of a `bt_*_free` function: catches a panic (it must not
/// unwind into C) but leaves the thread's last error message untouched, so
/// that a caller may free its handles before reading why a call failed.
pub(crate) fn guard_free(body: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(body));
}

/// Like [`guard`] for a constructor that returns a pointer: NULL on panic.
pub(crate) fn guard_ptr<T>(func: &str, body: impl FnOnce() -> *mut T) -> *mut T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(p) => {
            set_last_error("");
            p
        }
        Err(payload) => {
            set_last_error(&format!(
                "{func}: internal error (panic): {}",
                panic_text(payload.as_ref())
            ));
            std::ptr::null_mut()
        }
    }
}

fn null(what: &str) -> Failure {
    Failure::new(bt_status::BT_NULL_POINTER, format!("{what} is NULL"))
}

/// `&*p`, or a `BT_NULL_POINTER` failure naming `what`.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` that outlives `'a`.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: non-NULL, and valid by the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// `&mut *p`, or a `BT_NULL_POINTER` failure naming `what`.
///
/// # Safety
/// `p` must be NULL or point to a valid `T`, not aliased, that outlives `'a`.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: non-NULL, and valid and unaliased by the caller's contract.
    unsafe { p.as_mut() }.ok_or_else(|| null(what))
}

/// The NUL-terminated string at `p`, or a `BT_NULL_POINTER` failure.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn arg_cstr<'a>(p: *const c_char, what: &str) -> Result<&'a CStr, Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// The UTF-8 string at `p`: `BT_NULL_POINTER` or `BT_UTF8` failures.
///
/// # Safety
/// As [`arg_cstr`].
pub(crate) unsafe fn arg_utf8<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded contract.
    let c = unsafe { arg_cstr(p, what) }?;
    c.to_str().map_err(|e| {
        Failure::new(
            bt_status::BT_UTF8,
            format!("{what} is not valid UTF-8 ({e})"),
        )
    })
}

/// The path at `p`, taken as raw bytes (any encoding the file system allows).
///
/// # Safety
/// As [`arg_cstr`].
pub(crate) unsafe fn arg_path<'a>(p: *const c_char, what: &str) -> Result<&'a Path, Failure> {
    // SAFETY: forwarded contract.
    let c = unsafe { arg_cstr(p, what) }?;
    Ok(Path::new(OsStr::from_bytes(c.to_bytes())))
}

/// The token of `len` bytes at `p`: `None` when `p` is NULL or `len` is 0
/// (no token), else the engine's [`Token`] (fewer than 16 bytes is the
/// engine's `BT_INVALID_INPUT`). The bytes are copied.
///
/// # Safety
/// `p` must be NULL or point to `len` readable bytes.
pub(crate) unsafe fn arg_token(p: *const u8, len: usize) -> Result<Option<Token>, Failure> {
    if p.is_null() || len == 0 {
        return Ok(None);
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!("token length {len} is too large")));
    }
    // SAFETY: non-NULL, `len` readable bytes by the caller's contract, and
    // `len` fits a slice.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    Ok(Some(Token::new(bytes.to_vec())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: the pointer is valid until the next API call on this thread.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_bt_panic_with_a_message() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let code = guard("bt_test", || panic!("boom"));
        std::panic::set_hook(prev);
        assert_eq!(code, bt_status::BT_PANIC);
        assert!(last().contains("boom"), "{}", last());
        assert!(last().starts_with("bt_test:"), "{}", last());
    }

    #[test]
    fn a_panicking_constructor_returns_null() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let p: *mut u8 = guard_ptr("bt_test_new", || panic!("no"));
        std::panic::set_hook(prev);
        assert!(p.is_null());
        assert!(last().contains("panic"));
    }

    #[test]
    fn success_clears_the_message_and_failure_sets_it() {
        assert_eq!(
            guard("bt_x", || Err(Failure::new(bt_status::BT_REFUSED, "no"))),
            bt_status::BT_REFUSED
        );
        assert_eq!(last(), "bt_x: no");
        let engine = Error::new(ErrorKind::Refused, "too large");
        assert_eq!(guard("bt_x", || Err(engine.into())), bt_status::BT_REFUSED);
        assert_eq!(last(), "too large");
        assert_eq!(guard("bt_x", || Ok(())), bt_status::BT_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn messages_with_nul_survive() {
        set_last_error("a\0b");
        assert_eq!(last(), "a\u{FFFD}b");
    }

    #[test]
    fn null_and_utf8_arguments_are_failures() {
        // SAFETY: NULL and a valid NUL-terminated literal.
        unsafe {
            assert_eq!(
                arg_cstr(std::ptr::null(), "x").err().map(|f| f.code),
                Some(bt_status::BT_NULL_POINTER)
            );
            let bad = c"caf\xe9";
            assert_eq!(
                arg_utf8(bad.as_ptr(), "host").err().map(|f| f.code),
                Some(bt_status::BT_UTF8)
            );
            assert_eq!(
                arg_path(bad.as_ptr(), "path")
                    .map(|p| p.as_os_str().as_bytes().to_vec())
                    .ok(),
                Some(b"caf\xe9".to_vec())
            );
        }
    }

    #[test]
    fn tokens_are_checked_by_the_engine() {
        // SAFETY: NULL, and pointers to live arrays of the given lengths.
        unsafe {
            assert!(matches!(arg_token(std::ptr::null(), 20), Ok(None)));
            assert!(matches!(arg_token(b"x".as_ptr(), 0), Ok(None)));
            let short = arg_token(b"short".as_ptr(), 5).err();
            assert_eq!(
                short.as_ref().map(|f| f.code),
                Some(bt_status::BT_INVALID_INPUT)
            );
            assert!(short.is_some_and(|f| !f.own && f.message.contains("16 bytes")));
            let long = b"0123456789abcdef\0with a NUL";
            assert!(matches!(arg_token(long.as_ptr(), long.len()), Ok(Some(_))));
        }
    }

    #[test]
    fn every_kind_maps_to_its_own_code() {
        let kinds = [
            ErrorKind::InvalidInput,
            ErrorKind::SourceFile,
            ErrorKind::Unreachable,
            ErrorKind::ConnectionLost,
            ErrorKind::Protocol,
            ErrorKind::Refused,
            ErrorKind::CrcMismatch,
            ErrorKind::Storage,
            ErrorKind::Cancelled,
            ErrorKind::TimedOut,
        ];
        for (i, k) in kinds.iter().enumerate() {
            let code = bt_status::from(*k);
            assert_eq!(code as i32, i as i32 + 1);
            assert_eq!(code.name().to_str().ok(), Some(k.as_str()));
        }
        for i in 0..16 {
            assert_eq!(bt_status::from_int(i).map(|s| s as i32), Some(i));
        }
        assert_eq!(bt_status::from_int(16), None);
        let host_key = bt_status::from(ErrorKind::HostKey);
        assert_eq!(host_key, bt_status::BT_HOST_KEY);
        assert_eq!(
            host_key.name().to_str().ok(),
            Some(ErrorKind::HostKey.as_str())
        );
        assert_eq!(bt_status::from_int(-1), None);
    }
}
