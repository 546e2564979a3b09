//! The C API's free functions that need no handle: CRC-32 of a file, the
//! library version, the last error message and names of status codes.
//!
//! Not for: anything with state beyond the calling thread's last error
//! message (kept in `status.rs`).

use std::ffi::{c_char, c_int};

use crate::status::{arg_mut, arg_path, bt_status, guard, last_error_ptr};

/// The library version, e.g. `"0.1.0"`, NUL-terminated.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// Computes the CRC-32 (zlib / ISO-HDLC, what Python's `zlib.crc32` gives) of
/// the whole file at `path` into `*crc32`. On Unix a path is raw bytes,
/// NUL-terminated, in whatever encoding the file system uses: non-UTF-8 file
/// names work. A file that cannot be read gives `BT_SOURCE_FILE`.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string; `crc32` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bt_crc32_file(path: *const c_char, crc32: *mut u32) -> bt_status {
    guard("bt_crc32_file", || {
        // SAFETY (both): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(crc32, "crc32") }?;
        let p = unsafe { arg_path(path, "path") }?;
        *out = bigtransfer_core::crc32_file(p)?;
        Ok(())
    })
}

/// The library version (e.g. `"0.1.0"`): a static, NUL-terminated string,
/// never NULL, never to be freed.
#[no_mangle]
pub extern "C" fn bt_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// The message of the last failed call on the calling thread (UTF-8,
/// NUL-terminated), or an empty string if the last call succeeded or none
/// was made. Never NULL. Do not free it.
///
/// When it is valid: each call on this thread of a function that returns a
/// `bt_status` or a new handle (`bt_*_new`) replaces the message, so the
/// pointer and the text are valid only until the next such call on this
/// thread: read or copy it first. The functions that leave it untouched are
/// `bt_server_stop`, `bt_send_options_free`, `bt_server_config_free`,
/// `bt_server_free`, `bt_version`, `bt_status_name` and this one, so a
/// caller may free its handles and then print the message. Other threads
/// have their own message and never change this one.
#[no_mangle]
pub extern "C" fn bt_last_error_message() -> *const c_char {
    last_error_ptr()
}

/// A short, stable, lowercase name of a status code (`"ok"`, `"unreachable"`,
/// `"cancelled"`, ...), or `"unknown"` for a value that is no `bt_status`: a
/// static string, never NULL, never to be freed.
#[no_mangle]
pub extern "C" fn bt_status_name(code: c_int) -> *const c_char {
    bt_status::from_int(code).map_or(c"unknown".as_ptr(), |s| s.name().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn version_is_the_engines() {
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(bt_version()) };
        assert_eq!(v.to_str().ok(), Some(bigtransfer_core::VERSION));
    }

    #[test]
    fn status_names() {
        // SAFETY: static NUL-terminated strings.
        unsafe {
            assert_eq!(CStr::from_ptr(bt_status_name(0)).to_bytes(), b"ok");
            assert_eq!(CStr::from_ptr(bt_status_name(9)).to_bytes(), b"cancelled");
            assert_eq!(CStr::from_ptr(bt_status_name(99)).to_bytes(), b"unknown");
        }
    }
}
