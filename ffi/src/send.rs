//! Sending a file from C: the `bt_send_options` handle, the progress
//! callback and `bt_send_file` with its `bt_send_result`.
//!
//! This is a thin translation onto `bigtransfer_core::send_file`: the
//! resuming, retrying and verifying all happen in the core. Not for: the
//! server side (see `server.rs`) or anything that keeps state between sends.

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use bigtransfer_core::tls::Fingerprint;
use bigtransfer_core::{send_file, Control, Progress, Protocol, SendOptions};

use crate::status::{
    arg_mut, arg_path, arg_ref, arg_token, arg_utf8, bt_status, guard, guard_free, guard_ptr,
    Failure,
};

/// Options of an upload (retries, timeouts, backoff, rate limit, remote
/// name, token, protocol, checksum cache): an opaque handle made by
/// `bt_send_options_new`, changed with the `bt_send_options_set_*`
/// functions, released by `bt_send_options_free`.
///
/// One handle may be used for any number of sends, one at a time or from
/// several threads at once as long as no setter runs at the same time.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct bt_send_options {
    pub(crate) inner: SendOptions,
}

/// The outcome of a successful `bt_send_file`. On failure every field is 0.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct bt_send_result {
    /// Size of the file in bytes.
    pub filesize: u64,
    /// CRC-32 (zlib / ISO-HDLC) of the whole file, confirmed by the server.
    pub crc32: u32,
    /// Bytes the server already held when the first connection was made
    /// (0 for a fresh upload; more when an earlier upload was resumed).
    pub resumed_from: u64,
    /// File bytes sent over the network, all attempts together.
    pub bytes_sent: u64,
    /// Connections made (1 when nothing went wrong).
    pub attempts: u32,
    /// The protocol version spoken on the last connection: 2 between a new
    /// client and a new server, 1 with a legacy server or after
    /// `bt_send_options_set_legacy`.
    pub protocol: u32,
    /// File bytes read only to compute checksums (not sent).
    pub bytes_hashed: u64,
    /// File bytes read in all (for checksums and for sending).
    pub bytes_read: u64,
    /// Blocks sent again because the server's copy differed or arrived
    /// damaged (protocol 2).
    pub blocks_resent: u64,
    /// What storing did to the name: 0 a new name (or a server that does
    /// not say), 1 unchanged (the same content was there: nothing sent or
    /// stored), 2 the old file was kept as a numbered version `NAME.~N~`,
    /// 3 the old file was replaced (a server run with `--overwrite`).
    pub stored: u32,
    /// 1 when the last connection was TLS (encrypted, the server's key
    /// checked), 0 in plaintext (a legacy server, `--tls off`, or
    /// `bt_send_options_set_legacy`).
    pub encrypted: u32,
    /// 1 when this send met the server's key for the first time and
    /// accepted it (trust on first use, as ssh's `accept-new`): it is now
    /// pinned in the known-hosts file (if there is one; see
    /// `bt_send_options_set_known_hosts`). Show `server_fingerprint` to the
    /// user then, to compare with what the server printed (`bigtransfer
    /// fingerprint` on the server). 0 when the key was already pinned,
    /// demanded with `bt_send_options_set_fingerprint` and already stored,
    /// or in plaintext.
    pub new_host_key: u32,
    /// The fingerprint of the server's key, `SHA256:` and 43 base64
    /// characters, NUL-terminated; "" in plaintext.
    pub server_fingerprint: [c_char; 64],
}

impl Default for bt_send_result {
    fn default() -> bt_send_result {
        bt_send_result {
            filesize: 0,
            crc32: 0,
            resumed_from: 0,
            bytes_sent: 0,
            attempts: 0,
            protocol: 0,
            bytes_hashed: 0,
            bytes_read: 0,
            blocks_resent: 0,
            stored: 0,
            encrypted: 0,
            new_host_key: 0,
            server_fingerprint: [0; 64],
        }
    }
}

/// A fingerprint as a NUL-terminated C string in a fixed field ("" for
/// none); its 50 characters always fit.
fn fingerprint_text(key: Option<Fingerprint>) -> [c_char; 64] {
    let mut out = [0 as c_char; 64];
    if let Some(k) = key {
        let text = k.to_string();
        for (o, b) in out.iter_mut().zip(text.bytes().take(63)) {
            *o = b as c_char;
        }
    }
    out
}

/// Progress callback of `bt_send_file`: `done` of `total` bytes of the file
/// are with the server. Return 0 to go on, non-zero to cancel: the send then
/// returns `BT_CANCELLED` and the part the server received stays resumable
/// (the next send of the same file to the same server resumes from it).
///
/// It is called on the thread that called `bt_send_file`: with `done` = 0
/// while the file's CRC-32 is being computed (before connecting), then when
/// connected (with the offset the server resumes from), then after each block
/// sent, and before each retry. Within one connection `done` never
/// decreases; after a retry it restarts from what the server holds, which
/// may be less than the last figure. The last call of a successful send has
/// `done == total`.
#[allow(non_camel_case_types)]
pub type bt_progress_fn =
    Option<unsafe extern "C" fn(done: u64, total: u64, user: *mut c_void) -> c_int>;

/// A new set of send options with the defaults: 5 retries, 10 s connect
/// timeout, 60 s I/O timeout, backoff from 500 ms doubling up to 15 s, no
/// rate limit, the remote name taken from the file's base name, no token,
/// TLS with the server's key pinned on first use in the known-hosts file
/// (see `bt_send_options_set_known_hosts`), protocol 2 offered (falling
/// back to 1 with a legacy server), and the
/// checksum cache in `$BIGTRANSFER_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/bigtransfer`, else `~/.cache/bigtransfer` (read when the
/// options are made).
///
/// Returns NULL only on an internal error (see `bt_last_error_message`).
/// Release it with `bt_send_options_free`.
#[no_mangle]
pub extern "C" fn bt_send_options_new() -> *mut bt_send_options {
    guard_ptr("bt_send_options_new", || {
        Box::into_raw(Box::new(bt_send_options {
            inner: SendOptions::new("", 0),
        }))
    })
}

/// Releases options made by `bt_send_options_new`. NULL is allowed (does
/// nothing). Leaves `bt_last_error_message()` as it was.
///
/// # Safety
/// `options` must be NULL or a handle from `bt_send_options_new` not yet
/// freed, and no other call may be using it.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_free(options: *mut bt_send_options) {
    if options.is_null() {
        return;
    }
    guard_free(|| {
        // SAFETY: a live handle from bt_send_options_new, by the contract.
        drop(unsafe { Box::from_raw(options) });
    });
}

/// Runs `change` on the options behind `options` inside the guard.
///
/// # Safety
/// `options` must be NULL or a live handle not used by another call.
unsafe fn set(
    func: &str,
    options: *mut bt_send_options,
    change: impl FnOnce(&mut SendOptions) -> Result<(), Failure>,
) -> bt_status {
    guard(func, || {
        // SAFETY: forwarded contract.
        let o = unsafe { arg_mut(options, "options") }?;
        change(&mut o.inner)
    })
}

/// Sets how many extra attempts follow a failed one (unreachable, connection
/// lost, CRC mismatch). An attempt that moved the upload forward does not use
/// up this budget. 0: a single attempt.
///
/// # Safety
/// `options` must be NULL (gives `BT_NULL_POINTER`) or a live handle not used
/// by another call at the same time.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_retries(
    options: *mut bt_send_options,
    retries: u32,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_retries", options, |o| {
            o.retries = retries;
            Ok(())
        })
    }
}

/// Sets the time allowed for each TCP connect, in milliseconds (at least 1;
/// 0 gives `BT_INVALID_INPUT`).
///
/// # Safety
/// As `bt_send_options_set_retries`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_connect_timeout_ms(
    options: *mut bt_send_options,
    timeout_ms: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_connect_timeout_ms", options, |o| {
            o.connect_timeout = nonzero_ms(timeout_ms, "the connect timeout")?;
            Ok(())
        })
    }
}

/// Sets the I/O timeout in milliseconds: a connection on which nothing moves
/// for this long is given up (and retried). At least 1; 0 gives
/// `BT_INVALID_INPUT`.
///
/// # Safety
/// As `bt_send_options_set_retries`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_io_timeout_ms(
    options: *mut bt_send_options,
    timeout_ms: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_io_timeout_ms", options, |o| {
            o.io_timeout = nonzero_ms(timeout_ms, "the I/O timeout")?;
            Ok(())
        })
    }
}

/// Sets the pause between attempts, in milliseconds: `initial_ms` before the
/// first retry, doubling each time up to `max_ms` (which is raised to
/// `initial_ms` if smaller). 0 retries at once.
///
/// # Safety
/// As `bt_send_options_set_retries`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_backoff_ms(
    options: *mut bt_send_options,
    initial_ms: u64,
    max_ms: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_backoff_ms", options, |o| {
            o.backoff_initial = Duration::from_millis(initial_ms);
            o.backoff_max = Duration::from_millis(max_ms.max(initial_ms));
            Ok(())
        })
    }
}

/// Limits the sending rate to `bytes_per_second`; 0 removes the limit.
///
/// # Safety
/// As `bt_send_options_set_retries`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_limit_rate(
    options: *mut bt_send_options,
    bytes_per_second: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_limit_rate", options, |o| {
            o.limit_rate = (bytes_per_second > 0).then_some(bytes_per_second);
            Ok(())
        })
    }
}

/// Sets the name the file gets on the server (UTF-8, NUL-terminated; the
/// server keeps only its last path component). NULL goes back to the
/// default: the local file's base name (a non-UTF-8 base name is sent with
/// U+FFFD in place of its invalid bytes). An empty name gives
/// `BT_INVALID_INPUT`, a non-UTF-8 one `BT_UTF8`.
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `name` NULL or a
/// NUL-terminated string (copied; it need not outlive the call).
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_remote_name(
    options: *mut bt_send_options,
    name: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_remote_name", options, |o| {
            if name.is_null() {
                o.remote_name = None;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let n = arg_utf8(name, "name")?;
            if n.is_empty() {
                return Err(Failure::invalid("the remote name is empty"));
            }
            o.remote_name = Some(n.to_owned());
            Ok(())
        })
    }
}

/// Sets the shared token for a server that requires one: the `len` bytes at
/// `token` (any bytes, at least 16; copied). With it the client answers the
/// server's challenge (HMAC-SHA256, the token never crosses the wire); a
/// server without a token never asks. NULL `token` or `len` 0 removes the
/// token (the default). Fewer than 16 bytes gives `BT_INVALID_INPUT` and
/// leaves the options unchanged.
///
/// A send to a server that requires a token fails with `BT_REFUSED`: without
/// a token ("the server requires a token ...") or with a wrong one
/// ("server: authentication failed: wrong token").
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `token` NULL or pointing to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_token(
    options: *mut bt_send_options,
    token: *const u8,
    len: usize,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_token", options, |o| {
            // SAFETY: forwarded contract.
            o.token = arg_token(token, len)?;
            Ok(())
        })
    }
}

/// Non-zero `legacy`: speak protocol 1 only, exactly as the original
/// `client.py` did (no block-verified resume, no repair, no token: a server
/// that requires a token admits such a client only if it allows legacy
/// clients). 0 (the default): offer protocol 2 and fall back to 1 with a
/// legacy server.
///
/// # Safety
/// As `bt_send_options_set_retries`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_legacy(
    options: *mut bt_send_options,
    legacy: c_int,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_legacy", options, |o| {
            o.protocol = if legacy != 0 {
                Protocol::Legacy
            } else {
                Protocol::Auto
            };
            Ok(())
        })
    }
}

/// Sets the compression of blocks (protocol 2, when the server accepts it;
/// CRC-32s are always of the file's bytes): `"auto"` (the default:
/// compress with zstd only while it pays, i.e. the link rather than the CPU
/// is the bottleneck and the data shrinks), `"zstd"` or `"zstd:LEVEL"`
/// (LEVEL 1 to 19; try every block), `"off"` (never offer it). NULL goes
/// back to `"auto"`. Anything else gives `BT_INVALID_INPUT` and leaves the
/// options unchanged; a non-UTF-8 string gives `BT_UTF8`. For
/// `bt_get_file` the same mode is asked of the server, which compresses
/// the blocks it sends (capping LEVEL at 9; an older server sends raw).
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `mode` NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_compress(
    options: *mut bt_send_options,
    mode: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_compress", options, |o| {
            if mode.is_null() {
                o.compress = bigtransfer_core::compress::Compress::Auto;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let m = arg_utf8(mode, "mode")?;
            o.compress = m.parse().map_err(|e| Failure::invalid(format!("{e}")))?;
            Ok(())
        })
    }
}

/// Sets how many connections one upload or download (`bt_get_file`)
/// uses (protocol 2): `"auto"` (the default: one on a short path; on a
/// long one start with one and add streams while the throughput keeps
/// rising, up to 8), `"1"` (one connection), `"2"` to `"8"` (that many,
/// joining one session on the server; blocks pulled from one shared
/// queue). NULL goes back to `"auto"`. Anything else gives
/// `BT_INVALID_INPUT` and leaves the options unchanged; a non-UTF-8
/// string gives `BT_UTF8`.
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `streams` NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_streams(
    options: *mut bt_send_options,
    streams: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_streams", options, |o| {
            if streams.is_null() {
                o.streams = bigtransfer_core::client::Streams::Auto;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let m = arg_utf8(streams, "streams")?;
            o.streams = bigtransfer_core::client::Streams::parse(m).map_err(Failure::invalid)?;
            Ok(())
        })
    }
}

/// Sets the directory where block checksums of sent files are cached, so
/// that a resumed upload does not read again what it already hashed
/// (created when first written). On Unix a path is raw bytes,
/// NUL-terminated: non-UTF-8 names work. NULL: no cache at all (neither
/// read nor written). An empty path gives `BT_INVALID_INPUT`. The default
/// is described at `bt_send_options_new`.
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `dir` NULL or a
/// NUL-terminated string (copied).
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_cache_dir(
    options: *mut bt_send_options,
    dir: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_cache_dir", options, |o| {
            if dir.is_null() {
                o.cache_dir = None;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let d = arg_path(dir, "dir")?;
            if d.as_os_str().is_empty() {
                return Err(Failure::invalid("dir is empty"));
            }
            o.cache_dir = Some(d.to_path_buf());
            Ok(())
        })
    }
}

/// Demands the server's TLS key to have `fingerprint` (`SHA256:` and
/// base64, as `bigtransfer server` prints it), even on first contact;
/// another key ends the send with `BT_HOST_KEY` before any byte is sent.
/// NULL: no demand (the known-hosts pin, or trust on first use). A string
/// that is not a fingerprint gives `BT_INVALID_INPUT`.
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `fingerprint` NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_fingerprint(
    options: *mut bt_send_options,
    fingerprint: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_fingerprint", options, |o| {
            if fingerprint.is_null() {
                o.fingerprint = None;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let text = arg_utf8(fingerprint, "fingerprint")?;
            o.fingerprint = Some(Fingerprint::parse(text)?);
            Ok(())
        })
    }
}

/// Sets the file of pinned server keys (`host:port SHA256:...` lines): a
/// server seen for the first time is pinned there, a pinned one must show
/// the same key (else `BT_HOST_KEY`). NULL: no file (nothing pinned or
/// stored; every contact is a first one). The default is
/// `$BIGTRANSFER_KNOWN_HOSTS`, else `$XDG_CONFIG_HOME/bigtransfer/known_hosts`,
/// else `~/.config/bigtransfer/known_hosts` (read when the options are made).
///
/// # Safety
/// `options` as `bt_send_options_set_retries`; `path` NULL or a
/// NUL-terminated string (copied).
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_known_hosts(
    options: *mut bt_send_options,
    path: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_known_hosts", options, |o| {
            if path.is_null() {
                o.known_hosts = None;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let p = arg_path(path, "path")?;
            if p.as_os_str().is_empty() {
                return Err(Failure::invalid("path is empty"));
            }
            o.known_hosts = Some(p.to_path_buf());
            Ok(())
        })
    }
}

/// Non-zero `require`: refuse plaintext even with a server never seen
/// before (`BT_HOST_KEY`). 0 (the default): a server that does not speak
/// TLS and whose key is not pinned is reached in plaintext.
///
/// # Safety
/// As `bt_send_options_set_retries`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_options_set_require_tls(
    options: *mut bt_send_options,
    require: c_int,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_send_options_set_require_tls", options, |o| {
            o.require_tls = require != 0;
            Ok(())
        })
    }
}

fn nonzero_ms(ms: u64, what: &str) -> Result<Duration, Failure> {
    if ms == 0 {
        return Err(Failure::invalid(format!("{what} must be at least 1 ms")));
    }
    Ok(Duration::from_millis(ms))
}

/// The settings of one call to the server at `host:port`: those of
/// `options`, or the engine's defaults when it is NULL. `send`, `get` and
/// `list` share it, so they check the address alike.
///
/// # Safety
/// `options` must be NULL or a live handle.
pub(crate) unsafe fn call_options(
    host: &str,
    port: u16,
    options: *const bt_send_options,
) -> Result<SendOptions, Failure> {
    if host.is_empty() {
        return Err(Failure::invalid("host is empty"));
    }
    if port == 0 {
        return Err(Failure::invalid("port 0 is not a server's port"));
    }
    if options.is_null() {
        return Ok(SendOptions::new(host, port));
    }
    // SAFETY: forwarded contract; NULL was checked.
    let o = unsafe { arg_ref(options, "options") }?;
    Ok(SendOptions {
        host: host.to_owned(),
        port,
        ..o.inner.clone()
    })
}

/// Uploads the file at `path` to the server at `host`:`port`, resuming what
/// the server already holds of it, retrying as `options` allow, and returns
/// only when the server confirmed the CRC-32 (or on error). Blocks the
/// calling thread; any number of sends may run at once on different threads.
///
/// - `host`: host name, IPv4 or IPv6 address (no brackets); UTF-8,
///   NUL-terminated (`BT_UTF8` otherwise).
/// - `port`: the server's TCP port (not 0).
/// - `path`: the local file. On Unix a path is raw bytes, NUL-terminated, in
///   whatever encoding the file system uses: non-UTF-8 file names work.
/// - `options`: from `bt_send_options_new`, or NULL for the defaults.
/// - `progress`: called as described at `bt_progress_fn`, or NULL for none;
///   `user` is passed to it unchanged (may be NULL).
/// - `result`: receives the outcome; zeroed on failure. Must not be NULL.
///
/// Returns `BT_OK`, or `BT_SOURCE_FILE`, `BT_UNREACHABLE`,
/// `BT_CONNECTION_LOST`, `BT_CRC_MISMATCH`, `BT_PROTOCOL`, `BT_REFUSED` (the
/// server said no: a bad name, too large, no space, a missing or wrong
/// token), `BT_HOST_KEY` (the server's key is not the pinned one), `BT_CANCELLED`, `BT_INVALID_INPUT`, `BT_NULL_POINTER`, `BT_UTF8`,
/// ... with the reason in `bt_last_error_message()`.
///
/// # Safety
/// `host` and `path` must be NULL or NUL-terminated strings; `options` NULL
/// or a live handle (not being changed during the call); `result` NULL or
/// writable; `progress`, if not NULL, a function safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn bt_send_file(
    host: *const c_char,
    port: u16,
    path: *const c_char,
    options: *const bt_send_options,
    progress: bt_progress_fn,
    user: *mut c_void,
    result: *mut bt_send_result,
) -> bt_status {
    guard("bt_send_file", || {
        // SAFETY (all four): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(result, "result") }?;
        *out = bt_send_result::default();
        let host = unsafe { arg_utf8(host, "host") }?;
        let path = unsafe { arg_path(path, "path") }?;
        let opts = unsafe { call_options(host, port, options) }?;
        // (done, total) of the last report, repeated before a retry.
        let mut last = (0u64, 0u64);
        let mut on_progress = |p: &Progress| -> Control {
            let Some(f) = progress else {
                return Control::Continue;
            };
            let (done, total) = match *p {
                Progress::Hashing { total, .. } => (0, total),
                Progress::Connected { offset, total, .. } => (offset, total),
                Progress::Sending { done, total } => (done, total),
                Progress::Retrying { .. } => last,
                _ => return Control::Continue,
            };
            last = (done, total);
            // SAFETY: the caller promised `progress` is safe to call with `user`.
            if unsafe { f(done, total, user) } != 0 {
                Control::Cancel
            } else {
                Control::Continue
            }
        };
        let outcome = send_file(path, &opts, &mut on_progress)?;
        *out = bt_send_result {
            encrypted: u32::from(outcome.encrypted),
            new_host_key: u32::from(outcome.new_host_key.is_some()),
            server_fingerprint: fingerprint_text(outcome.server_key),
            filesize: outcome.filesize,
            crc32: outcome.crc32,
            resumed_from: outcome.resumed_from,
            bytes_sent: outcome.bytes_sent,
            attempts: outcome.attempts,
            protocol: u32::from(outcome.protocol),
            bytes_hashed: outcome.bytes_hashed,
            bytes_read: outcome.bytes_read,
            blocks_resent: outcome.blocks_resent,
            stored: match outcome.stored_as {
                bigtransfer_core::v2::StoredAs::New => 0,
                bigtransfer_core::v2::StoredAs::Unchanged => 1,
                bigtransfer_core::v2::StoredAs::Kept(_) => 2,
                bigtransfer_core::v2::StoredAs::Replaced => 3,
            },
        };
        Ok(())
    })
}

/// One entry of a listing, for `bt_list_fn`. Valid only during the call.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct bt_list_entry {
    /// The name as stored on the server, NUL-terminated: raw bytes, not
    /// necessarily UTF-8 (escape it before showing it).
    pub name: *const c_char,
    /// 0 a finished file, 1 a partial upload.
    pub partial: c_int,
    /// Size in bytes (of a partial upload: of the whole file).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Non-zero when `crc32` is known (a file the server stored and that
    /// nobody changed since).
    pub crc32_known: c_int,
    /// The whole file's CRC-32, when known.
    pub crc32: u32,
    /// Of a partial upload: bytes held from the start of the file.
    pub held: u64,
    /// What the entry is: 0 a finished file, 1 a partial upload, and only
    /// from `bt_list_dirs`: 2 a directory, 3 a tree upload in progress
    /// (named by its tree; empty name: parts whose tree the server did not
    /// note, or all of them from an older server). Added after the fields above, so code built
    /// against an older header reads those unchanged.
    pub kind: c_int,
    /// Of kinds 2 and 3: non-zero when `files` is known (a directory the
    /// server counted; then `size` is the bytes under it).
    pub files_known: c_int,
    /// Of a counted directory: the regular files under it; of kind 3: the
    /// files in progress (`size`: the bytes they hold).
    pub files: u64,
}

/// Called once per listed entry, in name order. Return 0 to go on,
/// non-zero to stop: `bt_list` then returns `BT_CANCELLED`.
#[allow(non_camel_case_types)]
pub type bt_list_fn =
    Option<unsafe extern "C" fn(entry: *const bt_list_entry, user: *mut c_void) -> c_int>;

/// Lists what the server at `host`:`port` holds: finished files (size,
/// mtime, the CRC-32 it recorded) and partial uploads (their progress),
/// calling `each` for every entry. `name` NULL lists everything; else that
/// name, its numbered versions (`NAME.~N~`) and its partial upload. The
/// connection uses `options` as `bt_send_file` does (TLS, pinning, token,
/// I/O timeout; NULL for the defaults).
///
/// Returns `BT_OK`, `BT_CANCELLED` (`each` asked to stop), or as
/// `bt_send_file` (`BT_REFUSED`: e.g. no or a wrong token; `BT_PROTOCOL`: a
/// server too old to list), with the reason in `bt_last_error_message()`.
///
/// # Safety
/// `host` must be a NUL-terminated string, `name` NULL or one; `options`
/// NULL or a live handle; `each` a function safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn bt_list(
    host: *const c_char,
    port: u16,
    name: *const c_char,
    options: *const bt_send_options,
    each: bt_list_fn,
    user: *mut c_void,
) -> bt_status {
    // SAFETY: forwarded contract.
    guard("bt_list", || unsafe {
        list(host, port, name, options, each, user, false)
    })
}

/// As `bt_list`, and the server is also asked for its directories (`kind`
/// 2: `files_known`, `files` and `size` say what is under each when the
/// server counted it) and for the tree uploads in progress summed up per
/// tree (`kind` 3, named by the tree's root; one with an empty name for
/// parts whose tree the server did not note, and from an older server one
/// for all). A server too old to know them sends none.
///
/// # Safety
/// As `bt_list`.
#[no_mangle]
pub unsafe extern "C" fn bt_list_dirs(
    host: *const c_char,
    port: u16,
    name: *const c_char,
    options: *const bt_send_options,
    each: bt_list_fn,
    user: *mut c_void,
) -> bt_status {
    // SAFETY: forwarded contract.
    guard("bt_list_dirs", || unsafe {
        list(host, port, name, options, each, user, true)
    })
}

/// `bt_list` and `bt_list_dirs`.
///
/// # Safety
/// As `bt_list`.
unsafe fn list(
    host: *const c_char,
    port: u16,
    name: *const c_char,
    options: *const bt_send_options,
    each: bt_list_fn,
    user: *mut c_void,
    dirs: bool,
) -> Result<(), Failure> {
    // SAFETY (all three): forwarded contract; NULL is checked.
    let host = unsafe { arg_utf8(host, "host") }?;
    let name = match name.is_null() {
        true => None,
        false => Some(unsafe { arg_utf8(name, "name") }?),
    };
    let opts = unsafe { call_options(host, port, options) }?;
    let each = each.ok_or_else(|| Failure::invalid("each (the callback) is NULL"))?;
    let mut entries = bigtransfer_core::client::list_remote_with(&opts, name, dirs)?.entries;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in &entries {
        let Ok(cname) = std::ffi::CString::new(e.name.clone()) else {
            continue;
        };
        let entry = list_entry(&cname, e);
        // SAFETY: the caller promised `each` is safe to call with `user`;
        // `entry` and its name live through the call.
        if unsafe { each(&entry, user) } != 0 {
            return Err(Failure::new(
                bt_status::BT_CANCELLED,
                "stopped by the callback",
            ));
        }
    }
    Ok(())
}

fn list_entry(cname: &std::ffi::CStr, e: &bigtransfer_core::listing::ListEntry) -> bt_list_entry {
    use bigtransfer_core::listing::EntryKind;
    bt_list_entry {
        name: cname.as_ptr(),
        partial: c_int::from(e.kind == EntryKind::Partial),
        size: e.size,
        mtime: e.mtime,
        crc32_known: c_int::from(e.crc32.is_some()),
        crc32: e.crc32.unwrap_or(0),
        held: e.held,
        kind: match e.kind {
            EntryKind::File => 0,
            EntryKind::Partial => 1,
            EntryKind::Dir => 2,
            EntryKind::TreeParts => 3,
        },
        files_known: c_int::from(e.files.is_some()),
        files: e.files.unwrap_or(0),
    }
}
