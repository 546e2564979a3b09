//! Running a server from C: the `bt_server_config` and `bt_server` handles,
//! serving in the calling thread, and the async-signal-safe stop.
//!
//! A translation onto `bigtransfer_core::Server`; the accepting, receiving,
//! checkpointing and verifying all happen in the core. Not for: sending (see
//! `send.rs`) or daemonising, signal installation or logging to files, which
//! stay with the C program.

use std::ffi::{c_char, c_int, c_void, CString};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bigtransfer_core::server::TlsMode;
use bigtransfer_core::{Server, ServerConfig, StopHandle};

use crate::status::{
    arg_mut, arg_path, arg_ref, arg_token, arg_utf8, bt_status, guard, guard_free, guard_ptr,
    Failure,
};

/// How a server is set up: an opaque handle made by `bt_server_config_new`,
/// changed with the `bt_server_config_set_*` functions, released by
/// `bt_server_config_free`. `bt_server_new` copies it, so it may be freed
/// or reused right after.
#[allow(non_camel_case_types)]
pub struct bt_server_config {
    inner: ServerConfig,
    dir_set: bool,
}

/// A bound server: an opaque handle made by `bt_server_new`, run with
/// `bt_server_serve`, stopped with `bt_server_stop`, released by
/// `bt_server_free`.
#[allow(non_camel_case_types)]
pub struct bt_server {
    server: Server,
    stop: StopHandle,
}

/// Receives each log line of a server (UTF-8, NUL-terminated, no newline;
/// valid only during the call) with the `user` pointer given to
/// `bt_server_config_set_log_callback`. It is called from the server's
/// threads, possibly from several at the same time, so it must be
/// thread-safe.
#[allow(non_camel_case_types)]
pub type bt_log_fn = Option<unsafe extern "C" fn(line: *const c_char, user: *mut c_void)>;

/// A C log callback and its user pointer, made callable from any thread.
struct LogSink {
    f: unsafe extern "C" fn(*const c_char, *mut c_void),
    user: *mut c_void,
}

// SAFETY: the C caller promised (see bt_log_fn) that the callback and its
// user pointer may be used from any thread, at the same time.
unsafe impl Send for LogSink {}
// SAFETY: as above.
unsafe impl Sync for LogSink {}

impl LogSink {
    fn log(&self, line: &str) {
        let text = if line.contains('\0') {
            line.replace('\0', "\u{FFFD}")
        } else {
            line.to_owned()
        };
        let c = CString::new(text).unwrap_or_default();
        // SAFETY: by the contract of bt_server_config_set_log_callback.
        unsafe { (self.f)(c.as_ptr(), self.user) }
    }
}

/// A new server configuration with the defaults: all interfaces, port 8080,
/// 64 connections at once, 60 s idle timeout, 10 s to send the header, held
/// parts expire after 7 days, no file size limit, no free-space reserve, no
/// token (anyone may upload), log lines to standard error. The storage
/// directory has no default: set it with `bt_server_config_set_dir`.
///
/// Returns NULL only on an internal error (see `bt_last_error_message`).
/// Release it with `bt_server_config_free`.
#[no_mangle]
pub extern "C" fn bt_server_config_new() -> *mut bt_server_config {
    guard_ptr("bt_server_config_new", || {
        Box::into_raw(Box::new(bt_server_config {
            inner: ServerConfig::new(PathBuf::new()),
            dir_set: false,
        }))
    })
}

/// Releases a configuration made by `bt_server_config_new`. NULL is allowed
/// (does nothing). Leaves `bt_last_error_message()` as it was.
///
/// # Safety
/// `config` must be NULL or a handle from `bt_server_config_new` not yet
/// freed, and no other call may be using it.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_free(config: *mut bt_server_config) {
    if config.is_null() {
        return;
    }
    guard_free(|| {
        // SAFETY: a live handle from bt_server_config_new, by the contract.
        drop(unsafe { Box::from_raw(config) });
    });
}

/// Runs `change` on the configuration behind `config` inside the guard.
///
/// # Safety
/// `config` must be NULL or a live handle not used by another call.
unsafe fn set(
    func: &str,
    config: *mut bt_server_config,
    change: impl FnOnce(&mut bt_server_config) -> Result<(), Failure>,
) -> bt_status {
    guard(func, || {
        // SAFETY: forwarded contract.
        let c = unsafe { arg_mut(config, "config") }?;
        change(c)
    })
}

/// Sets the storage directory (created if missing). On Unix a path is raw
/// bytes, NUL-terminated: non-UTF-8 names work. Required before
/// `bt_server_new`.
///
/// # Safety
/// `config` must be NULL (gives `BT_NULL_POINTER`) or a live handle not used
/// by another call at the same time; `dir` NULL or a NUL-terminated string
/// (copied).
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_dir(
    config: *mut bt_server_config,
    dir: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_dir", config, |c| {
            // SAFETY: forwarded contract.
            let d = arg_path(dir, "dir")?;
            if d.as_os_str().is_empty() {
                return Err(Failure::invalid("dir is empty"));
            }
            c.inner.dir = d.to_path_buf();
            c.dir_set = true;
            Ok(())
        })
    }
}

/// Keeps uploads in an S3-compatible object store instead of the storage
/// directory: `url` is `s3://BUCKET[/PREFIX]` (UTF-8; `?endpoint=URL` and
/// `&region=NAME` may follow), `endpoint` and `region` (NULL: from the URL,
/// else AWS S3 in `us-east-1`) override the URL's. Credentials come from
/// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
/// `AWS_SESSION_TOKEN`), read now. Several servers over one bucket resume
/// each other's uploads. `bt_server_new` checks
/// that the store answers (wrong credentials fail there, in the store's
/// words). The directory is still required and holds nothing. NULL `url`
/// goes back to the directory. A bad URL or missing credentials:
/// `BT_INVALID_INPUT`, configuration unchanged.
///
/// # Safety
/// As `bt_server_config_set_dir`; `url`, `endpoint` and `region` NULL or
/// NUL-terminated strings (copied).
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_store(
    config: *mut bt_server_config,
    url: *const c_char,
    endpoint: *const c_char,
    region: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_store", config, |c| {
            if url.is_null() {
                return set_store(c, None);
            }
            // SAFETY: each non-NULL and NUL-terminated by the contract.
            let opt = |p: *const c_char, what| -> Result<Option<&str>, Failure> {
                if p.is_null() {
                    return Ok(None);
                }
                arg_utf8(p, what).map(Some)
            };
            // SAFETY: non-NULL, NUL-terminated by the contract.
            let url = arg_utf8(url, "url")?;
            set_store(
                c,
                Some((url, opt(endpoint, "endpoint")?, opt(region, "region")?)),
            )
        })
    }
}

#[cfg(feature = "s3")]
fn set_store(
    c: &mut bt_server_config,
    store: Option<(&str, Option<&str>, Option<&str>)>,
) -> Result<(), Failure> {
    c.inner.s3 = match store {
        None => None,
        Some((url, endpoint, region)) => Some(
            bigtransfer_core::s3::store_config(url, endpoint, region)
                .map_err(|e| Failure::invalid(e.message))?,
        ),
    };
    Ok(())
}

#[cfg(not(feature = "s3"))]
fn set_store(
    _: &mut bt_server_config,
    store: Option<(&str, Option<&str>, Option<&str>)>,
) -> Result<(), Failure> {
    match store {
        None => Ok(()),
        Some(_) => Err(Failure::invalid(
            "this library was built without object-store support (cargo feature `s3`)",
        )),
    }
}

/// Sets the address to listen on: an IPv4 or IPv6 address (UTF-8, e.g.
/// `"127.0.0.1"` or `"::1"`; brackets allowed). NULL goes back to the
/// default: every interface, IPv6 and IPv4. Not an address:
/// `BT_INVALID_INPUT`.
///
/// # Safety
/// As `bt_server_config_set_dir`, with `address` for `dir`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_bind_address(
    config: *mut bt_server_config,
    address: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_bind_address", config, |c| {
            if address.is_null() {
                c.inner.bind = None;
                return Ok(());
            }
            // SAFETY: non-NULL, NUL-terminated by the contract.
            let a = arg_utf8(address, "address")?;
            let bare = a
                .strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .unwrap_or(a);
            let ip: IpAddr = bare
                .parse()
                .map_err(|_| Failure::invalid(format!("{a:?} is not an IPv4 or IPv6 address")))?;
            c.inner.bind = Some(ip);
            Ok(())
        })
    }
}

/// Sets the TCP port to listen on; 0 picks a free port (read it with
/// `bt_server_port` after `bt_server_new`).
///
/// # Safety
/// `config` must be NULL (gives `BT_NULL_POINTER`) or a live handle not used
/// by another call at the same time.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_port(
    config: *mut bt_server_config,
    port: u16,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_port", config, |c| {
            c.inner.port = port;
            Ok(())
        })
    }
}

/// Sets how many connections are served at once (at least 1; 0 gives
/// `BT_INVALID_INPUT`); more are closed at once and logged.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_max_connections(
    config: *mut bt_server_config,
    max_connections: u32,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_max_connections", config, |c| {
            if max_connections == 0 {
                return Err(Failure::invalid("max_connections must be at least 1"));
            }
            c.inner.max_connections = usize::try_from(max_connections).unwrap_or(usize::MAX);
            Ok(())
        })
    }
}

/// Sets the idle timeout in milliseconds: a connection that sends nothing
/// for this long is closed, its held part kept for resuming. At least 1; 0
/// gives `BT_INVALID_INPUT`.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_idle_timeout_ms(
    config: *mut bt_server_config,
    timeout_ms: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_idle_timeout_ms", config, |c| {
            if timeout_ms == 0 {
                return Err(Failure::invalid("the idle timeout must be at least 1 ms"));
            }
            c.inner.idle_timeout = Duration::from_millis(timeout_ms);
            Ok(())
        })
    }
}

/// Refuses uploads larger than `max_bytes`; 0 removes the limit (the default:
/// only free disk space limits).
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_max_file_size(
    config: *mut bt_server_config,
    max_bytes: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_max_file_size", config, |c| {
            c.inner.max_file_size = (max_bytes > 0).then_some(max_bytes);
            Ok(())
        })
    }
}

/// With `on` non-zero, a different file uploaded under a name already
/// stored replaces it; 0 (the default) keeps the stored file as a
/// numbered version `NAME.~N~` beside the new one.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_overwrite(
    config: *mut bt_server_config,
    on: i32,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_overwrite", config, |c| {
            c.inner.overwrite = on != 0;
            Ok(())
        })
    }
}

/// Deletes held parts (interrupted uploads) not touched for `seconds`; 0
/// keeps them forever. The default is 7 days.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_expire_partial_secs(
    config: *mut bt_server_config,
    seconds: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_expire_partial_secs", config, |c| {
            c.inner.expire_partial = (seconds > 0).then(|| Duration::from_secs(seconds));
            Ok(())
        })
    }
}

/// Sets the header timeout in milliseconds: a connection must send its
/// complete header (and, with a token, its answer to the challenge) within
/// this time (bounded by the idle timeout), so idle sockets cannot hold
/// connection slots for long. At least 1; 0 gives `BT_INVALID_INPUT`. The
/// default is 10 s.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_header_timeout_ms(
    config: *mut bt_server_config,
    timeout_ms: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_header_timeout_ms", config, |c| {
            if timeout_ms == 0 {
                return Err(Failure::invalid("the header timeout must be at least 1 ms"));
            }
            c.inner.header_timeout = Duration::from_millis(timeout_ms);
            Ok(())
        })
    }
}

/// Refuses an upload that would leave less than `min_free` bytes free on
/// the storage file system; 0 (the default) keeps no reserve.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_min_free(
    config: *mut bt_server_config,
    min_free: u64,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_min_free", config, |c| {
            c.inner.min_free = min_free;
            Ok(())
        })
    }
}

/// Requires clients to prove knowledge of a shared token: the `len` bytes at
/// `token` (any bytes, at least 16; copied). Each protocol-2 client gets a
/// fresh challenge and must answer it (HMAC-SHA256; the token never crosses
/// the wire) before it may claim a name or store a byte; a wrong answer is
/// refused with "authentication failed: wrong token" and logged. Legacy
/// (protocol 1) clients cannot answer and are refused, unless
/// `bt_server_config_set_allow_legacy` admits them. NULL `token` or `len` 0
/// removes the token (the default: anyone may upload). Fewer than 16 bytes
/// gives `BT_INVALID_INPUT` and leaves the configuration unchanged.
///
/// # Safety
/// `config` as `bt_server_config_set_port`; `token` NULL or pointing to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_token(
    config: *mut bt_server_config,
    token: *const u8,
    len: usize,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_token", config, |c| {
            // SAFETY: forwarded contract.
            c.inner.token = arg_token(token, len)?;
            Ok(())
        })
    }
}

/// Non-zero `allow_legacy`: with a token set, still admit legacy clients
/// (protocol 1), which cannot authenticate. 0 (the default): a server with
/// a token refuses them. Without a token it changes nothing (everyone is
/// admitted).
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_allow_legacy(
    config: *mut bt_server_config,
    allow_legacy: c_int,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_allow_legacy", config, |c| {
            c.inner.allow_legacy = allow_legacy != 0;
            Ok(())
        })
    }
}

/// TLS on the server's port (`BT_TLS_AUTO`, the default: TLS for new
/// clients and plaintext for legacy ones, told apart by the first byte;
/// `BT_TLS_REQUIRED`: TLS only, plaintext clients refused unless legacy
/// clients are allowed; `BT_TLS_OFF`: plaintext only). Another value gives
/// `BT_INVALID_INPUT`.
///
/// # Safety
/// As `bt_server_config_set_port`.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_tls(
    config: *mut bt_server_config,
    mode: c_int,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_tls", config, |c| {
            c.inner.tls = match mode {
                BT_TLS_AUTO => TlsMode::Auto,
                BT_TLS_REQUIRED => TlsMode::Required,
                BT_TLS_OFF => TlsMode::Off,
                other => return Err(Failure::invalid(format!("unknown TLS mode {other}"))),
            };
            Ok(())
        })
    }
}

/// `bt_server_config_set_tls`: TLS and plaintext on one port (the default).
pub const BT_TLS_AUTO: c_int = 0;
/// `bt_server_config_set_tls`: TLS only.
pub const BT_TLS_REQUIRED: c_int = 1;
/// `bt_server_config_set_tls`: plaintext only.
pub const BT_TLS_OFF: c_int = 2;

/// Sets the server's key file (Ed25519, PKCS#8, mode 0600; made there on
/// first start if missing). NULL (the default): `DIR/.bigtransfer/key` in
/// the storage directory. On Unix a path is raw bytes, NUL-terminated.
///
/// # Safety
/// `config` as `bt_server_config_set_port`; `path` NULL or a
/// NUL-terminated string (copied).
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_key_file(
    config: *mut bt_server_config,
    path: *const c_char,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_key_file", config, |c| {
            if path.is_null() {
                c.inner.key_file = None;
                return Ok(());
            }
            // SAFETY: non-NULL and NUL-terminated by the contract.
            let p = arg_path(path, "path")?;
            if p.as_os_str().is_empty() {
                return Err(Failure::invalid("path is empty"));
            }
            c.inner.key_file = Some(p.to_path_buf());
            Ok(())
        })
    }
}

/// Sends the server's log lines to `callback` (see `bt_log_fn`) with `user`;
/// NULL `callback` goes back to the default, standard error with a
/// timestamp. To silence the server, pass a callback that does nothing.
///
/// # Safety
/// `config` as `bt_server_config_set_port`; `callback`, if not NULL, must be
/// safe to call with `user` from any thread, at the same time, for as long as
/// a server made from this configuration exists.
#[no_mangle]
pub unsafe extern "C" fn bt_server_config_set_log_callback(
    config: *mut bt_server_config,
    callback: bt_log_fn,
    user: *mut c_void,
) -> bt_status {
    // SAFETY: forwarded contract.
    unsafe {
        set("bt_server_config_set_log_callback", config, |c| {
            c.inner.logger = callback.map(|f| {
                let sink = LogSink { f, user };
                Arc::new(move |line: &str| sink.log(line)) as bigtransfer_core::server::Logger
            });
            Ok(())
        })
    }
}

/// Makes a server from `config`: opens (or creates) and locks the storage
/// directory and binds the listening socket, without serving yet. On success
/// `*server` is the new handle; on failure it is NULL and the status says why
/// (`BT_INVALID_INPUT` for no directory set or a port that cannot be bound,
/// `BT_STORAGE` for a directory that cannot be used, ...).
///
/// # Safety
/// `config` must be NULL or a live handle not being changed during the call;
/// `server` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bt_server_new(
    config: *const bt_server_config,
    server: *mut *mut bt_server,
) -> bt_status {
    guard("bt_server_new", || {
        // SAFETY (both): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(server, "server") }?;
        *out = std::ptr::null_mut();
        let c = unsafe { arg_ref(config, "config") }?;
        if !c.dir_set {
            return Err(Failure::invalid(
                "no storage directory set (bt_server_config_set_dir)",
            ));
        }
        let s = Server::bind(c.inner.clone())?;
        let stop = s.stop_handle();
        *out = Box::into_raw(Box::new(bt_server { server: s, stop }));
        Ok(())
    })
}

/// Writes the TCP port the server listens on to `*port` (the real one when
/// port 0 was asked for).
///
/// # Safety
/// `server` must be NULL or a live handle; `port` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bt_server_port(server: *const bt_server, port: *mut u16) -> bt_status {
    guard("bt_server_port", || {
        // SAFETY (both): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(port, "port") }?;
        let s = unsafe { arg_ref(server, "server") }?;
        *out = s.server.local_addr()?.port();
        Ok(())
    })
}

/// Writes the fingerprint of the server's TLS key (`SHA256:` and 43
/// base64 characters, NUL-terminated: 51 bytes) into `buf` of `len` bytes,
/// for clients to pin (`bt_send_options_set_fingerprint`). `BT_INVALID_INPUT`
/// when `len` is too small or the server runs with `BT_TLS_OFF` (no key).
///
/// # Safety
/// `server` must be NULL or a live handle; `buf` NULL or `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bt_server_fingerprint(
    server: *const bt_server,
    buf: *mut c_char,
    len: usize,
) -> bt_status {
    guard("bt_server_fingerprint", || {
        // SAFETY: forwarded contract; NULL is checked.
        let s = unsafe { arg_ref(server, "server") }?;
        if buf.is_null() {
            return Err(Failure::new(bt_status::BT_NULL_POINTER, "buf is NULL"));
        }
        let text = match s.server.fingerprint() {
            Some(f) => f.to_string(),
            None => return Err(Failure::invalid("the server has TLS off: no key")),
        };
        if text.len() >= len {
            return Err(Failure::invalid(format!(
                "buf holds {len} bytes, the fingerprint needs {}",
                text.len() + 1
            )));
        }
        // SAFETY: `buf` has `len` > text.len() writable bytes by the contract.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            *buf.add(text.len()) = 0;
        }
        Ok(())
    })
}

/// Serves in the calling thread until `bt_server_stop` is called (from
/// another thread or a signal handler), then ends every running upload at a
/// checkpoint (resumable), waits for the connection threads and returns
/// `BT_OK`. Only a failure of the listening socket itself is an error; one
/// misbehaving connection never stops the server. Once stopped, a server
/// stays stopped: calling this again returns at once.
///
/// # Safety
/// `server` must be NULL or a live handle, and must not be freed before this
/// returns.
#[no_mangle]
pub unsafe extern "C" fn bt_server_serve(server: *const bt_server) -> bt_status {
    guard("bt_server_serve", || {
        // SAFETY: forwarded contract; NULL is checked.
        let s = unsafe { arg_ref(server, "server") }?;
        s.server.serve()?;
        Ok(())
    })
}

/// Asks the server to stop: `bt_server_serve` then returns soon after (see
/// there). Callable from any thread, any number of times, before, during or
/// after `bt_server_serve`.
///
/// Async-signal-safe: it only stores an atomic flag and writes one byte to a
/// pipe, so a signal handler (SIGINT, SIGTERM) may call it. For that reason
/// it is the one function that leaves `bt_last_error_message` untouched;
/// NULL gives `BT_NULL_POINTER` without a message.
///
/// # Safety
/// `server` must be NULL or a live handle (a signal handler must not see a
/// handle that `bt_server_free` already released).
#[no_mangle]
pub unsafe extern "C" fn bt_server_stop(server: *const bt_server) -> bt_status {
    // No guard: it would write the thread-local message, which a signal
    // handler must not. Nothing below can panic, allocate or lock.
    // SAFETY: NULL or a live handle, by the contract.
    match unsafe { server.as_ref() } {
        None => bt_status::BT_NULL_POINTER,
        Some(s) => {
            // A signal handler must leave errno as it found it; the wake-up
            // write(2) sets it when the pipe is full (EAGAIN).
            let saved = errno::get();
            s.stop.stop();
            errno::set(saved);
            bt_status::BT_OK
        }
    }
}

mod errno {
    //! Reading and restoring the calling thread's `errno`, async-signal-safely,
    //! for `bt_server_stop`. Not for reporting errors: those go through
    //! `std::io::Error`.

    use std::ffi::c_int;

    #[cfg(any(target_os = "android", target_os = "netbsd", target_os = "openbsd"))]
    use libc::__errno as location;
    #[cfg(any(
        target_os = "linux",
        target_os = "emscripten",
        target_os = "fuchsia",
        target_os = "redox"
    ))]
    use libc::__errno_location as location;
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly"
    ))]
    use libc::__error as location;

    /// The current `errno`.
    pub(super) fn get() -> c_int {
        // SAFETY: the libc function returns this thread's errno slot.
        unsafe { *location() }
    }

    /// Sets `errno` to `value`.
    pub(super) fn set(value: c_int) {
        // SAFETY: as in get.
        unsafe { *location() = value }
    }
}

/// Releases a server made by `bt_server_new`: closes the listening socket and
/// unlocks the storage directory. NULL is allowed (does nothing). Call it only
/// after `bt_server_serve` returned (or if it was never called). Leaves
/// `bt_last_error_message()` as it was.
///
/// # Safety
/// `server` must be NULL or a handle from `bt_server_new` not yet freed, not
/// in use by any other call (in particular not serving), and no signal
/// handler may use it afterwards.
#[no_mangle]
pub unsafe extern "C" fn bt_server_free(server: *mut bt_server) {
    if server.is_null() {
        return;
    }
    guard_free(|| {
        // SAFETY: a live handle from bt_server_new, by the contract.
        drop(unsafe { Box::from_raw(server) });
    });
}
