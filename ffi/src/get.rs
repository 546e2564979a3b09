//! `bt_get_file`: download a stored file from a server's storage directory
//! (resumable, every block verified against the server's CRC-32s), with
//! the connection settings of `bt_send_options`.
//!
//! Not for any transfer logic (the core's `get_file`).

use std::ffi::{c_char, c_int, c_void};

use bigtransfer_core::client::get_file;
use bigtransfer_core::{Control, Progress};

use crate::send::{bt_progress_fn, bt_send_options};
use crate::status::{arg_mut, arg_path, arg_utf8, bt_status, guard};

/// The outcome of a successful `bt_get_file`. On failure every field is 0.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct bt_get_result {
    /// Size of the file in bytes.
    pub filesize: u64,
    /// CRC-32 (zlib / ISO-HDLC) of the whole file, every block verified
    /// against the server's reference.
    pub crc32: u32,
    /// Bytes of a partial download already here (verified) at the start.
    pub resumed_from: u64,
    /// File bytes received over the network, all attempts together.
    pub bytes_received: u64,
    /// Connections made.
    pub attempts: u32,
    /// Blocks that arrived damaged and were asked for again.
    pub blocks_repaired: u64,
    /// 1 when the file changed on the server since a partial download
    /// began (that part was dropped and the download started over).
    pub restarted: u32,
    /// Blocks that arrived compressed (see `bt_send_options_set_compress`),
    /// all attempts together.
    pub compressed_blocks: u64,
    /// Payload bytes on the wire: `bytes_received` less what compression
    /// saved.
    pub wire_bytes: u64,
}

/// Downloads the stored file `remote` from the server at `host`:`port` to
/// `dest`, resuming a partial download of the same version of the file
/// (kept beside `dest` as `.NAME.bigtransfer-part` and
/// `.NAME.bigtransfer-get`), and returns once every block is verified,
/// synced and renamed into place. Blocks the calling thread.
///
/// - `remote`: the stored file's name, a plain name in the server's
///   storage directory; UTF-8, NUL-terminated.
/// - `dest`: the local path of the file (raw bytes on Unix). It must not
///   exist unless `force` is non-zero.
/// - `options`: from `bt_send_options_new` (host and port are these
///   arguments; the token, timeouts, rate limit, streams, known hosts,
///   fingerprint and compression apply: the server compresses the blocks
///   it sends as `bt_send_options_set_compress` says, an older server
///   sends them raw), or NULL for the defaults.
/// - `progress`/`user`: as for `bt_send_file` (`done` is the bytes of the
///   file here so far); non-zero cancels, the partial download is kept.
///
/// Returns `BT_OK`, or as `bt_send_file`; `BT_REFUSED` also for a file the
/// server does not have or a name it refuses, `BT_INVALID_INPUT` for an
/// existing `dest` without `force`.
///
/// # Safety
/// `host`, `remote` and `dest` must be NULL or NUL-terminated strings;
/// `options` NULL or a live handle; `result` NULL or writable; `progress`,
/// if not NULL, a function safe to call with `user`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn bt_get_file(
    host: *const c_char,
    port: u16,
    remote: *const c_char,
    dest: *const c_char,
    options: *const bt_send_options,
    force: c_int,
    progress: bt_progress_fn,
    user: *mut c_void,
    result: *mut bt_get_result,
) -> bt_status {
    guard("bt_get_file", || {
        // SAFETY (all): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(result, "result") }?;
        *out = bt_get_result::default();
        let host = unsafe { arg_utf8(host, "host") }?;
        let remote = unsafe { arg_utf8(remote, "remote") }?;
        let dest = unsafe { arg_path(dest, "dest") }?;
        let opts = unsafe { crate::send::call_options(host, port, options) }?;
        let mut on_progress = |p: &Progress| -> Control {
            let (
                Some(f),
                Progress::Connected {
                    offset: done,
                    total,
                    ..
                }
                | Progress::Sending { done, total },
            ) = (progress, p)
            else {
                return Control::Continue;
            };
            // SAFETY: the caller promised `progress` is safe to call with `user`.
            if unsafe { f(*done, *total, user) } != 0 {
                Control::Cancel
            } else {
                Control::Continue
            }
        };
        let o = get_file(remote, dest, &opts, force != 0, &mut on_progress)?;
        *out = bt_get_result {
            filesize: o.filesize,
            crc32: o.crc32,
            resumed_from: o.resumed_from,
            bytes_received: o.bytes_received,
            attempts: o.attempts,
            blocks_repaired: o.blocks_repaired,
            restarted: u32::from(o.restarted),
            compressed_blocks: o.compressed_blocks,
            wire_bytes: o.wire_bytes,
        };
        Ok(())
    })
}
