//! The sending side for Python: `send_file`, its `Result`, and `crc32_file`.
//!
//! Argument checking and conversion, the progress callback (called on the
//! caller's thread with the GIL, throttled by [`crate::wait::TICK`]) and
//! cancellation; the upload itself is the engine's
//! [`bigtransfer_core::send_file`], run on a worker thread without the GIL.
//! Not for: protocol, retry or resume logic (all in the engine).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigtransfer_core::auth::Token;
use bigtransfer_core::tls::Fingerprint;
use bigtransfer_core::v2::StoredAs;
use bigtransfer_core::{Control, ErrorKind, Outcome, Progress, Protocol, SendOptions};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyString};

use crate::errors::{new_err, to_py};
use crate::wait::{Step, Worker};

/// The result of a successful `send_file`: the server answered CRC32_OK.
#[pyclass(name = "Result", module = "bigtransfer", frozen)]
pub struct SendResult {
    /// Name the file was stored under on the server.
    #[pyo3(get)]
    filename: String,
    /// File size in bytes.
    #[pyo3(get)]
    filesize: u64,
    /// CRC-32 (zlib) of the whole file, confirmed by the server.
    #[pyo3(get)]
    crc32: u32,
    /// Bytes the server already held when the upload started (resumed from).
    #[pyo3(get)]
    resumed_from: u64,
    /// File bytes sent over the network, all attempts together.
    #[pyo3(get)]
    bytes_sent: u64,
    /// File bytes read only to compute checksums (not sent).
    #[pyo3(get)]
    bytes_hashed: u64,
    /// File bytes read in all (for checksums and for sending).
    #[pyo3(get)]
    bytes_read: u64,
    /// Blocks sent again because the server's copy differed or arrived
    /// damaged (protocol 2).
    #[pyo3(get)]
    blocks_resent: u64,
    /// The protocol version spoken (1: legacy server or ``legacy=True``; 2).
    #[pyo3(get)]
    protocol: u8,
    /// Connections made (1 when nothing went wrong).
    #[pyo3(get)]
    attempts: u32,
    /// Whether the last connection was TLS (encrypted, the server's key
    /// checked).
    #[pyo3(get)]
    encrypted: bool,
    /// The fingerprint of the server's key (``"SHA256:..."``), or None in
    /// plaintext.
    #[pyo3(get)]
    server_fingerprint: Option<String>,
    /// The server's fingerprint when this send met its key for the first
    /// time and accepted it (now pinned in the known-hosts file): show it
    /// to the user to compare with what the server printed. None when the
    /// key was already pinned, or in plaintext.
    #[pyo3(get)]
    new_host_key: Option<String>,
    /// Wall time of the whole upload in seconds, hashing included.
    #[pyo3(get)]
    seconds: f64,
    /// What storing did to the name: ``"new"``, ``"unchanged"`` (the same
    /// content was there: nothing sent or stored), ``"kept"`` (the old file
    /// kept as ``kept_as``) or ``"replaced"`` (a server with overwrite).
    #[pyo3(get)]
    stored: &'static str,
    /// The numbered version the server kept the previous file as, or None.
    #[pyo3(get)]
    kept_as: Option<String>,
}

impl From<Outcome> for SendResult {
    fn from(o: Outcome) -> SendResult {
        SendResult {
            filename: o.filename,
            filesize: o.filesize,
            crc32: o.crc32,
            resumed_from: o.resumed_from,
            bytes_sent: o.bytes_sent,
            bytes_hashed: o.bytes_hashed,
            bytes_read: o.bytes_read,
            blocks_resent: o.blocks_resent,
            protocol: o.protocol,
            attempts: o.attempts,
            encrypted: o.encrypted,
            server_fingerprint: o.server_key.map(|f| f.to_string()),
            new_host_key: o.new_host_key.map(|f| f.to_string()),
            seconds: o.elapsed.as_secs_f64(),
            stored: match &o.stored_as {
                StoredAs::New => "new",
                StoredAs::Unchanged => "unchanged",
                StoredAs::Kept(_) => "kept",
                StoredAs::Replaced => "replaced",
            },
            kept_as: match o.stored_as {
                StoredAs::Kept(v) => Some(v),
                _ => None,
            },
        }
    }
}

#[pymethods]
impl SendResult {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let name = PyString::new(py, &self.filename).repr()?;
        Ok(format!(
            "Result(filename={name}, filesize={}, crc32=0x{:08x}, resumed_from={}, bytes_sent={}, \
             bytes_hashed={}, protocol={}, attempts={}, seconds={:.3})",
            self.filesize,
            self.crc32,
            self.resumed_from,
            self.bytes_sent,
            self.bytes_hashed,
            self.protocol,
            self.attempts,
            self.seconds
        ))
    }
}

/// An integer argument, checked to lie in `min..=max`.
pub(crate) fn int_arg(
    py: Python<'_>,
    name: &str,
    value: i128,
    min: i128,
    max: i128,
) -> PyResult<i128> {
    if value < min || value > max {
        return Err(new_err(
            py,
            ErrorKind::InvalidInput,
            format!("{name} must be in {min}..={max}, not {value}"),
        ));
    }
    Ok(value)
}

/// A duration argument in seconds: a finite number above zero.
pub(crate) fn seconds_arg(py: Python<'_>, name: &str, value: f64) -> PyResult<Duration> {
    if value.is_nan() || value <= 0.0 {
        return Err(new_err(
            py,
            ErrorKind::InvalidInput,
            format!("{name} must be a positive number of seconds, not {value}"),
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|_| {
        new_err(
            py,
            ErrorKind::InvalidInput,
            format!("{name} is out of range: {value}"),
        )
    })
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// The path a caller passed (str or os.PathLike).
pub(crate) fn path_arg(value: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "path must be str or os.PathLike, not {}",
            type_name(value)
        ))
    })
}

/// A token argument: bytes (or bytearray) as they are, str as its UTF-8
/// bytes, None for no token. The engine checks the length (at least 16
/// bytes, else `InvalidInputError`).
pub(crate) fn token_arg(
    py: Python<'_>,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Token>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let bytes = if let Ok(b) = v.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if let Ok(b) = v.cast::<PyByteArray>() {
        b.to_vec()
    } else if let Ok(s) = v.cast::<PyString>() {
        s.to_cow()
            .map_err(|_| {
                new_err(
                    py,
                    ErrorKind::InvalidInput,
                    "token is a str that cannot be encoded as UTF-8",
                )
            })?
            .as_bytes()
            .to_vec()
    } else {
        return Err(PyTypeError::new_err(format!(
            "token must be bytes, str or None, not {}",
            type_name(v)
        )));
    };
    Token::new(bytes).map(Some).map_err(|e| to_py(py, &e, None))
}

/// A path argument of `send_file` that may also be ``None`` or left out
/// (``cache_dir``, ``known_hosts``).
pub enum OptPath {
    /// Not given (or ``...``): the engine's default.
    EngineDefault,
    /// ``None``: none at all (no cache; no known-hosts file).
    Off,
    /// A path (str or os.PathLike).
    Dir(PathBuf),
}

/// The ``cache_dir`` argument (kept by its old name).
pub type CacheDir = OptPath;

impl<'a, 'py> FromPyObject<'a, 'py> for OptPath {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<OptPath> {
        let py = obj.py();
        if obj.is_none() {
            return Ok(OptPath::Off);
        }
        if obj.is(py.Ellipsis()) {
            return Ok(OptPath::EngineDefault);
        }
        let dir: PathBuf = obj.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "cache_dir and known_hosts must be str, os.PathLike or None, not {}",
                type_name(&obj)
            ))
        })?;
        if dir.as_os_str().is_empty() {
            return Err(new_err(
                py,
                ErrorKind::InvalidInput,
                "cache_dir and known_hosts must not be empty (None turns them off)",
            ));
        }
        Ok(OptPath::Dir(dir))
    }
}

/// Return the CRC-32 of the whole file at ``path`` (str or os.PathLike), as
/// ``zlib.crc32`` computes it (an int in 0..2**32).
///
/// Reads the file in large blocks without holding the GIL, so other Python
/// threads run meanwhile; Ctrl-C interrupts it. Raises SourceFileError (a
/// FileNotFoundError for a missing file) when the file cannot be read.
#[pyfunction]
pub fn crc32_file(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<u32> {
    let p = path_arg(path)?;
    let worker = Worker::spawn("bt-crc32", move |cancel: &AtomicBool| {
        let mut file = File::open(&p).map_err(|e| {
            bigtransfer_core::Error::io(
                ErrorKind::SourceFile,
                format!("cannot open {}", p.display()),
                e,
            )
        })?;
        bigtransfer_core::crc::crc32_of(&mut file, &p, &mut |_| !cancel.load(Ordering::Relaxed))
    })?;
    match worker.run(py, |_| Ok(Step::Continue))? {
        Some(Ok(crc)) => Ok(crc),
        Some(Err(e)) => Err(to_py(py, &e, Some(path))),
        None => Err(new_err(
            py,
            ErrorKind::Cancelled,
            "cancelled while computing the CRC-32",
        )),
    }
}

/// The latest progress the worker saw and the caller has not reported yet.
type Pending = Arc<Mutex<Option<(u64, u64)>>>;

fn take_pending(p: &Pending) -> Option<(u64, u64)> {
    p.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Calls the progress callback with `(done, total)`; whether it asked to
/// cancel (returned exactly ``False``).
fn report(py: Python<'_>, cb: &Bound<'_, PyAny>, done: u64, total: u64) -> PyResult<bool> {
    let ret = cb.call1((done, total))?;
    Ok(ret.is(PyBool::new(py, false).as_any()))
}

/// Upload the file at ``path`` to the bigtransfer server at ``host:port``
/// and return a ``Result`` once the server confirmed its CRC-32.
///
/// The upload resumes where an earlier, interrupted one of the same file
/// stopped, and retries after failures: up to ``retries`` times in a row
/// without progress (an attempt that moved data resets the count).
/// ``timeout`` is the number of seconds a connection may stall before it is
/// given up (and retried); ``connect_timeout`` bounds each connect.
/// ``limit_rate`` caps the sending rate in bytes per second. ``name`` is the
/// name to store the file under (default: the file's base name).
///
/// ``token`` (bytes, or str sent as UTF-8; at least 16 bytes) is the shared
/// secret for a server that requires one: the client answers the server's
/// challenge with it (it never crosses the wire). ``legacy=True`` speaks
/// protocol 1 only, exactly as the original ``client.py`` (no block-verified
/// resume, no token). ``cache_dir`` is where block checksums of sent files
/// are kept so a resume does not read them again: not given, the engine's
/// default (``$BIGTRANSFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/bigtransfer``,
/// else ``~/.cache/bigtransfer``); None, no cache. ``compress`` is
/// ``"auto"`` (zstd only while it pays: the link is the bottleneck and the
/// data shrinks), ``"zstd"`` / ``"zstd:LEVEL"`` (every block) or ``"off"``;
/// it applies when the server accepts compression (protocol 2).
/// ``streams`` is how many connections the upload uses: ``"auto"`` (the
/// default: one on a short path; on a long one add streams while the
/// throughput keeps rising, up to 8), ``1``, or ``2`` to ``8`` (joining
/// one session on the server).
///
/// The upload goes over TLS. ``known_hosts`` is the file of pinned server
/// keys: not given, the engine's default (``$BIGTRANSFER_KNOWN_HOSTS``, else
/// ``$XDG_CONFIG_HOME/bigtransfer/known_hosts``, else
/// ``~/.config/bigtransfer/known_hosts``); None, nothing is pinned or stored.
/// A server seen for the first time is pinned there; a pinned server that
/// shows another key raises ``HostKeyError`` before anything is sent.
/// ``fingerprint`` (``"SHA256:..."``, as the server prints it) demands that
/// key even on first contact. A server that does not speak TLS is reached
/// in plaintext only when nothing pins its key and ``require_tls`` is False.
///
/// ``progress(done, total)``, if given, is called on this thread at most
/// about 20 times a second while data moves (not while the file is first
/// hashed), and once more with ``(total, total)`` at the end; ``done``
/// counts the bytes of the file the server holds (it starts at the resume
/// offset and only goes back if the server discarded a damaged upload).
/// Return exactly ``False`` to cancel: ``CancelledError`` is raised and what
/// the server received stays resumable. If it raises, the upload is
/// cancelled the same way and the exception propagates. The final call's
/// return value is ignored, and an upload that completed before a cancel
/// took effect returns its ``Result``.
///
/// The GIL is released while the upload runs, so other Python threads go
/// on; Ctrl-C cancels it (``KeyboardInterrupt``).
///
/// Raises ``InvalidInputError`` (bad argument, a token under 16 bytes),
/// ``SourceFileError`` / ``SourceFileNotFoundError`` (cannot read the file),
/// ``UnreachableError``, ``ConnectionLostError``, ``CrcMismatchError``,
/// ``ProtocolError``, ``RefusedError`` (the server said no: too large, no
/// space, a missing or wrong token, ...), ``HostKeyError`` (the server's
/// key is not the pinned one, or a pinned server offered no TLS),
/// ``CancelledError``; all are
/// ``BigTransferError``.
#[pyfunction]
#[pyo3(signature = (host, port, path, *, retries = 5, timeout = 60.0, connect_timeout = 10.0,
                    limit_rate = None, name = None, progress = None, token = None,
                    legacy = false, cache_dir = CacheDir::EngineDefault, compress = "auto",
                    fingerprint = None, known_hosts = OptPath::EngineDefault, require_tls = false,
                    streams = None),
       text_signature = "(host, port, path, *, retries=5, timeout=60.0, connect_timeout=10.0, \
                         limit_rate=None, name=None, progress=None, token=None, legacy=False, \
                         cache_dir=..., compress='auto', fingerprint=None, known_hosts=..., \
                         require_tls=False, streams='auto')")]
#[allow(clippy::too_many_arguments)]
pub fn send_file(
    py: Python<'_>,
    host: &str,
    port: i128,
    path: &Bound<'_, PyAny>,
    retries: i128,
    timeout: f64,
    connect_timeout: f64,
    limit_rate: Option<i128>,
    name: Option<String>,
    progress: Option<Bound<'_, PyAny>>,
    token: Option<Bound<'_, PyAny>>,
    legacy: bool,
    cache_dir: CacheDir,
    compress: &str,
    fingerprint: Option<String>,
    known_hosts: OptPath,
    require_tls: bool,
    streams: Option<Bound<'_, PyAny>>,
) -> PyResult<SendResult> {
    let mut opts = server_options(py, host, port)?;
    pacing(py, &mut opts, retries, timeout, connect_timeout, limit_rate)?;
    opts.remote_name = name;
    opts.compress = compress.parse().map_err(|e: bigtransfer_core::Error| {
        new_err(py, ErrorKind::InvalidInput, e.to_string())
    })?;
    opts.token = token_arg(py, token.as_ref())?;
    streams_arg(py, &mut opts, streams)?;
    opts.protocol = if legacy {
        Protocol::Legacy
    } else {
        Protocol::Auto
    };
    match cache_dir {
        CacheDir::EngineDefault => {}
        CacheDir::Off => opts.cache_dir = None,
        CacheDir::Dir(d) => opts.cache_dir = Some(d),
    }
    pin(py, &mut opts, fingerprint, known_hosts, require_tls)?;
    if let Some(cb) = &progress {
        if !cb.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "progress must be callable, not {}",
                type_name(cb)
            )));
        }
    }
    let p = path_arg(path)?;

    let pending: Pending = Arc::new(Mutex::new(None));
    let pending_w = Arc::clone(&pending);
    let worker = Worker::spawn("bt-send", move |cancel: &AtomicBool| {
        bigtransfer_core::send_file(&p, &opts, &mut |ev: &Progress| {
            let at = match *ev {
                Progress::Connected { offset, total, .. } => Some((offset, total)),
                Progress::Sending { done, total } => Some((done, total)),
                _ => None,
            };
            if let Some(at) = at {
                *pending_w.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
            }
            if cancel.load(Ordering::Relaxed) {
                Control::Cancel
            } else {
                Control::Continue
            }
        })
    })?;

    let mut last: Option<(u64, u64)> = None;
    let mut cancelled = false;
    let finished = worker.run(py, |py| {
        let (Some(cb), Some(at)) = (&progress, take_pending(&pending)) else {
            return Ok(Step::Continue);
        };
        last = Some(at);
        cancelled = report(py, cb, at.0, at.1)?;
        Ok(if cancelled {
            Step::Cancel
        } else {
            Step::Continue
        })
    })?;
    match finished {
        // Done (possibly just before a cancel request arrived: the file is
        // stored, so that is what we report).
        Some(Ok(outcome)) => {
            let total = outcome.filesize;
            if let (Some(cb), false) = (&progress, cancelled) {
                if last != Some((total, total)) {
                    report(py, cb, total, total)?;
                }
            }
            Ok(outcome.into())
        }
        Some(Err(e)) => Err(to_py(py, &e, Some(path))),
        None => Err(new_err(
            py,
            ErrorKind::Cancelled,
            "cancelled by the progress callback",
        )),
    }
}

/// List what the bigtransfer server at ``host:port`` holds: a list of
/// dicts, one per file (``{"kind": "file", "name", "size", "mtime",
/// "crc32"}``, ``crc32`` None when the server has no record of it) and per
/// partial upload (``{"kind": "partial", "name", "size", "mtime",
/// "held"}``), sorted by name. ``name``, if given, lists that name, its
/// numbered versions (``NAME.~N~``) and its partial upload only. A name
/// that is not UTF-8 on the server comes as bytes. ``dirs=True`` also asks
/// for directories (``{"kind": "dir", "name", "size", "mtime", "files"}``,
/// ``size`` and ``files`` None when not counted) and the tree uploads in
/// progress summed up per tree (``{"kind": "tree_parts", "name", "files",
/// "held", ...}``, ``name`` the tree's, "" for parts not noted).
///
/// The connection is as for ``send_file`` (TLS, ``known_hosts``,
/// ``fingerprint``, ``require_tls``, ``token``). Raises ``RefusedError``
/// (e.g. a token is needed), ``ProtocolError`` (a server too old to list),
/// ``UnreachableError``, ``ConnectionLostError``, ``HostKeyError``.
#[pyfunction]
#[pyo3(signature = (host, port, name = None, *, token = None, timeout = 60.0,
                    fingerprint = None, known_hosts = OptPath::EngineDefault, require_tls = false,
                    dirs = false),
       text_signature = "(host, port, name=None, *, token=None, timeout=60.0, fingerprint=None, \
                         known_hosts=..., require_tls=False, dirs=False)")]
#[allow(clippy::too_many_arguments)]
pub fn list_remote(
    py: Python<'_>,
    host: &str,
    port: i128,
    name: Option<String>,
    token: Option<Bound<'_, PyAny>>,
    timeout: f64,
    fingerprint: Option<String>,
    known_hosts: OptPath,
    require_tls: bool,
    dirs: bool,
) -> PyResult<Vec<Py<PyAny>>> {
    let mut opts = server_options(py, host, port)?;
    opts.io_timeout = seconds_arg(py, "timeout", timeout)?;
    opts.token = token_arg(py, token.as_ref())?;
    pin(py, &mut opts, fingerprint, known_hosts, require_tls)?;
    let listing = py
        .detach(|| bigtransfer_core::client::list_remote_with(&opts, name.as_deref(), dirs))
        .map_err(|e| to_py(py, &e, None))?;
    let mut entries = listing.entries;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.iter().map(|e| entry_dict(py, e)).collect()
}

/// Options for the server at `host` (an IPv6 literal may come in
/// brackets) and `port`, both checked; the rest at the engine's defaults.
pub(crate) fn server_options(py: Python<'_>, host: &str, port: i128) -> PyResult<SendOptions> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(new_err(
            py,
            ErrorKind::InvalidInput,
            "host must not be empty",
        ));
    }
    Ok(SendOptions::new(
        host,
        int_arg(py, "port", port, 1, 65535)? as u16,
    ))
}

/// Retries, timeouts and the rate limit of a transfer, checked.
pub(crate) fn pacing(
    py: Python<'_>,
    opts: &mut SendOptions,
    retries: i128,
    timeout: f64,
    connect_timeout: f64,
    limit_rate: Option<i128>,
) -> PyResult<()> {
    opts.retries = int_arg(py, "retries", retries, 0, u32::MAX.into())? as u32;
    opts.io_timeout = seconds_arg(py, "timeout", timeout)?;
    opts.connect_timeout = seconds_arg(py, "connect_timeout", connect_timeout)?;
    opts.limit_rate = match limit_rate {
        Some(r) => Some(int_arg(py, "limit_rate", r, 1, u64::MAX.into())? as u64),
        None => None,
    };
    Ok(())
}

/// How the server's key is checked: the pin file, a fingerprint demanded
/// even on first contact, and whether plaintext is refused.
pub(crate) fn pin(
    py: Python<'_>,
    opts: &mut SendOptions,
    fingerprint: Option<String>,
    known_hosts: OptPath,
    require_tls: bool,
) -> PyResult<()> {
    match known_hosts {
        OptPath::EngineDefault => {}
        OptPath::Off => opts.known_hosts = None,
        OptPath::Dir(f) => opts.known_hosts = Some(f),
    }
    opts.require_tls = require_tls;
    opts.fingerprint = match fingerprint {
        Some(f) => Some(Fingerprint::parse(&f).map_err(|e| to_py(py, &e, None))?),
        None => None,
    };
    Ok(())
}

fn entry_dict(py: Python<'_>, e: &bigtransfer_core::listing::ListEntry) -> PyResult<Py<PyAny>> {
    use bigtransfer_core::listing::EntryKind;
    let d = pyo3::types::PyDict::new(py);
    let name: Py<PyAny> = match std::str::from_utf8(&e.name) {
        Ok(s) => PyString::new(py, s).into_any().unbind(),
        Err(_) => PyBytes::new(py, &e.name).into_any().unbind(),
    };
    d.set_item("name", name)?;
    d.set_item("size", e.size)?;
    d.set_item("mtime", e.mtime)?;
    match e.kind {
        EntryKind::File => {
            d.set_item("kind", "file")?;
            d.set_item("crc32", e.crc32)?;
        }
        EntryKind::Partial => {
            d.set_item("kind", "partial")?;
            d.set_item("held", e.held)?;
        }
        EntryKind::Dir => {
            d.set_item("kind", "dir")?;
            d.set_item("files", e.files)?;
            d.set_item("size", e.files.map(|_| e.size))?;
        }
        EntryKind::TreeParts => {
            d.set_item("kind", "tree_parts")?;
            d.set_item("files", e.files)?;
            d.set_item("held", e.size)?;
        }
    }
    Ok(d.into_any().unbind())
}

/// Applies a ``streams`` argument (an int 1-8 or ``"auto"``; None keeps
/// the engine's default, ``auto``).
pub(crate) fn streams_arg(
    py: Python<'_>,
    opts: &mut SendOptions,
    streams: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let Some(s) = streams else { return Ok(()) };
    let text = match s.extract::<i128>() {
        Ok(n) => n.to_string(),
        Err(_) => s.extract::<String>().map_err(|_| {
            new_err(
                py,
                ErrorKind::InvalidInput,
                "streams must be an int or \"auto\"",
            )
        })?,
    };
    opts.streams = bigtransfer_core::client::Streams::parse(&text)
        .map_err(|e| new_err(py, ErrorKind::InvalidInput, e))?;
    Ok(())
}
