//! Downloading for Python: `get_file` and its `GetResult`.
//!
//! Argument conversion, the progress callback (on the caller's thread,
//! throttled like `send_file`'s) and cancellation; the download itself is
//! the engine's `bigtransfer_core::client::get_file` on a worker thread
//! without the GIL. Not for protocol, resume or retry logic (the engine's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bigtransfer_core::client::GetOutcome;
use bigtransfer_core::{Control, ErrorKind, Progress};
use pyo3::prelude::*;

use crate::client::{path_arg, token_arg, OptPath};
use crate::errors::{new_err, to_py};
use crate::wait::{Step, Worker};

/// The result of a successful `get_file`: every block verified, the file
/// synced and in place.
#[pyclass(name = "GetResult", module = "bigtransfer", frozen)]
pub struct GetResult {
    /// Where the file is.
    #[pyo3(get)]
    path: std::path::PathBuf,
    /// File size in bytes.
    #[pyo3(get)]
    filesize: u64,
    /// CRC-32 (zlib) of the whole file.
    #[pyo3(get)]
    crc32: u32,
    /// Bytes of a partial download already here (verified) at the start.
    #[pyo3(get)]
    resumed_from: u64,
    /// File bytes received over the network, all attempts together.
    #[pyo3(get)]
    bytes_received: u64,
    /// Blocks that arrived damaged and were asked for again.
    #[pyo3(get)]
    blocks_repaired: u64,
    /// The file changed on the server since a partial download began (it
    /// was started over).
    #[pyo3(get)]
    restarted: bool,
    /// Connections made.
    #[pyo3(get)]
    attempts: u32,
    /// Whether the last connection was TLS.
    #[pyo3(get)]
    encrypted: bool,
    /// Whether the server agreed to send compressed blocks (last connection).
    #[pyo3(get)]
    compress_agreed: bool,
    /// Blocks that arrived compressed, all attempts together.
    #[pyo3(get)]
    compressed_blocks: u64,
    /// Payload bytes on the wire: ``bytes_received`` less what compression saved.
    #[pyo3(get)]
    wire_bytes: u64,
}

impl From<GetOutcome> for GetResult {
    fn from(o: GetOutcome) -> GetResult {
        GetResult {
            path: o.path,
            filesize: o.filesize,
            crc32: o.crc32,
            resumed_from: o.resumed_from,
            bytes_received: o.bytes_received,
            blocks_repaired: o.blocks_repaired,
            restarted: o.restarted,
            attempts: o.attempts,
            encrypted: o.encrypted,
            compress_agreed: o.compress_agreed,
            compressed_blocks: o.compressed_blocks,
            wire_bytes: o.wire_bytes,
        }
    }
}

#[pymethods]
impl GetResult {
    fn __repr__(&self) -> String {
        format!(
            "GetResult(path={:?}, filesize={}, crc32=0x{:08x}, resumed_from={}, bytes_received={}, restarted={})",
            self.path, self.filesize, self.crc32, self.resumed_from, self.bytes_received, self.restarted
        )
    }
}

/// Download the stored file ``remote`` from the bigtransfer server at
/// ``host:port`` to ``dest`` (str or os.PathLike) and return a
/// ``GetResult`` once every block is verified against the server's CRC-32s
/// and the file is synced and in place.
///
/// An interrupted download resumes (its part waits beside ``dest`` as
/// ``.NAME.bigtransfer-part``); a file changed on the server since is
/// started over. ``dest`` must not exist unless ``force=True``. The
/// connection arguments (``retries``, ``timeout``, ``connect_timeout``,
/// ``limit_rate``, ``token``, ``fingerprint``, ``known_hosts``,
/// ``require_tls``, ``streams``, ``compress``) are ``send_file``'s:
/// ``streams`` splits the download over that many connections (``"auto"``,
/// the default, as for uploads); ``compress`` asks the server for zstd
/// blocks (``"auto"``: while it pays; ``"zstd:LEVEL"``: every block, the
/// server capping the level at 9; ``"off"``). ``progress(done, total)`` as for
/// ``send_file`` (``done``: bytes of the file here); exactly ``False``
/// cancels (``CancelledError``, the part is kept).
///
/// Raises ``RefusedError`` for a file the server does not have or a name
/// it refuses, ``InvalidInputError`` for an existing ``dest``, and the
/// other ``BigTransferError`` subclasses as ``send_file``.
#[pyfunction]
#[pyo3(signature = (host, port, remote, dest, *, force = false, retries = 5, timeout = 60.0,
                    connect_timeout = 10.0, limit_rate = None, progress = None, token = None,
                    fingerprint = None, known_hosts = OptPath::EngineDefault, require_tls = false,
                    streams = None, compress = "auto"))]
#[allow(clippy::too_many_arguments)]
pub fn get_file(
    py: Python<'_>,
    host: &str,
    port: i128,
    remote: String,
    dest: &Bound<'_, PyAny>,
    force: bool,
    retries: i128,
    timeout: f64,
    connect_timeout: f64,
    limit_rate: Option<i128>,
    progress: Option<Bound<'_, PyAny>>,
    token: Option<Bound<'_, PyAny>>,
    fingerprint: Option<String>,
    known_hosts: OptPath,
    require_tls: bool,
    streams: Option<Bound<'_, PyAny>>,
    compress: &str,
) -> PyResult<GetResult> {
    let mut opts = crate::client::server_options(py, host, port)?;
    crate::client::pacing(py, &mut opts, retries, timeout, connect_timeout, limit_rate)?;
    opts.token = token_arg(py, token.as_ref())?;
    crate::client::pin(py, &mut opts, fingerprint, known_hosts, require_tls)?;
    crate::client::streams_arg(py, &mut opts, streams)?;
    opts.compress = compress.parse().map_err(|e: bigtransfer_core::Error| {
        new_err(py, ErrorKind::InvalidInput, e.to_string())
    })?;
    let d = path_arg(dest)?;
    let pending: Arc<Mutex<Option<(u64, u64)>>> = Arc::new(Mutex::new(None));
    let pending_w = Arc::clone(&pending);
    let worker = Worker::spawn("bt-get", move |cancel: &AtomicBool| {
        bigtransfer_core::client::get_file(&remote, &d, &opts, force, &mut |ev: &Progress| {
            if let Progress::Connected {
                offset: done,
                total,
                ..
            }
            | Progress::Sending { done, total } = *ev
            {
                *pending_w.lock().unwrap_or_else(|e| e.into_inner()) = Some((done, total));
            }
            if cancel.load(Ordering::Relaxed) {
                Control::Cancel
            } else {
                Control::Continue
            }
        })
    })?;
    let finished = worker.run(py, |py| {
        let at = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(cb), Some((done, total))) = (&progress, at) else {
            return Ok(Step::Continue);
        };
        let ret = cb.call1((done, total))?;
        Ok(if ret.is(pyo3::types::PyBool::new(py, false).as_any()) {
            Step::Cancel
        } else {
            Step::Continue
        })
    })?;
    match finished {
        Some(Ok(o)) => {
            // The worker may end before its last report was polled: the
            // callback always hears of the end, as send_file's does.
            if let Some(cb) = &progress {
                cb.call1((o.filesize, o.filesize))?;
            }
            Ok(o.into())
        }
        Some(Err(e)) => Err(to_py(py, &e, Some(dest))),
        None => Err(new_err(
            py,
            ErrorKind::Cancelled,
            "cancelled by the progress callback",
        )),
    }
}
