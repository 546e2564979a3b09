//! The receiving side for Python: the `Server` class.
//!
//! Wraps one bound [`bigtransfer_core::Server`] and the thread that runs its
//! `serve`: in the foreground (`serve_forever`, which waits without the GIL
//! and wakes every [`TICK`] for Ctrl-C) or in the background (`start`).
//! `stop` works from any thread in both cases. Not for: connection handling,
//! storage or logging (the engine's; its log lines go to standard error).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bigtransfer_core::server::TlsMode;
use bigtransfer_core::{ErrorKind, ServerConfig, StopHandle};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::client::{int_arg, path_arg, seconds_arg, token_arg};
use crate::errors::{new_err, to_py};
use crate::wait::{wait_detached, Slot, TICK};

/// What `serve` returned, kept for whoever waits for it.
type Served = Slot<bigtransfer_core::Result<()>>;

enum RunState {
    /// Bound, never served.
    Idle,
    /// `serve` runs on `handle`'s thread; it stores its result in `done`.
    Running {
        done: Arc<Served>,
        handle: Option<JoinHandle<()>>,
        foreground: bool,
    },
    /// Stopped for good (the engine's stop request cannot be undone).
    Stopped,
}

/// A bigtransfer server: receives uploads into a storage directory.
///
/// ``Server(dir, port=8080, bind=None, max_connections=64, timeout=60.0,
/// expire_partial=604800.0, max_file_size=None, token=None,
/// allow_legacy=False, min_free=0, store=None, s3_endpoint=None,
/// s3_region=None)`` creates ``dir`` if missing and binds
/// at once, so ``address`` holds the real port even when ``port`` is 0.
/// ``bind`` is the address to listen on (default: every interface, IPv6 and
/// IPv4 where the system allows). At most ``max_connections`` uploads are
/// served at once; a connection idle for ``timeout`` seconds is closed (its
/// data kept for resume); partial uploads untouched for ``expire_partial``
/// seconds are deleted (None: never); uploads larger than
/// ``max_file_size`` bytes are refused (None: no limit), and so are uploads
/// that would leave fewer than ``min_free`` bytes free on the disk.
/// A different file uploaded under a name already stored keeps the stored
/// one as ``NAME.~N~`` beside it, unless ``overwrite`` is true.
///
/// With ``token`` (bytes, or str taken as UTF-8; at least 16 bytes) only
/// clients proving they know it (a challenge-response; the token never
/// crosses the wire) may upload; the others get ``RefusedError``
/// ("authentication failed"). Legacy (protocol 1) clients cannot prove it
/// and are refused unless ``allow_legacy`` is true. Log lines go to
/// standard error.
///
/// With ``store="s3://BUCKET[/PREFIX]"`` uploads go to an S3-compatible
/// object store instead of ``dir`` (which then holds nothing): several
/// servers over one bucket resume each other's uploads. ``s3_endpoint`` (e.g. ``"http://127.0.0.1:8333"``, path-style)
/// and ``s3_region`` override the URL's ``?endpoint=``/``&region=``
/// (defaults: AWS S3, ``us-east-1``); credentials come from
/// ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``.
/// The store is checked at once (wrong credentials raise here).
///
/// Serve with ``serve_forever()`` (blocks until ``stop()`` or Ctrl-C) or
/// ``start()`` (in the background); ``stop()`` ends either. As a context
/// manager it starts on entry and stops on exit. A stopped server cannot be
/// started again.
#[pyclass(name = "Server", module = "bigtransfer", frozen)]
pub struct PyServer {
    core: Arc<bigtransfer_core::Server>,
    stop: StopHandle,
    addr: SocketAddr,
    dir: PathBuf,
    dir_arg: Py<PyAny>,
    state: Mutex<RunState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bind_addr(py: Python<'_>, bind: &str) -> PyResult<Option<IpAddr>> {
    let b = bind.trim();
    if b.is_empty() {
        return Ok(None);
    }
    let b = b
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(b);
    if let Ok(ip) = b.parse::<IpAddr>() {
        return Ok(Some(ip));
    }
    // A host name such as "localhost": its first address.
    let resolved = py.detach(|| (b, 0u16).to_socket_addrs().map(|mut a| a.next()));
    match resolved {
        Ok(Some(a)) => Ok(Some(a.ip())),
        Ok(None) => Err(new_err(
            py,
            ErrorKind::InvalidInput,
            format!("bind address {b} resolves to no address"),
        )),
        Err(e) => Err(new_err(
            py,
            ErrorKind::InvalidInput,
            format!("invalid bind address {b}: {e}"),
        )),
    }
}

impl PyServer {
    fn spawn(&self, py: Python<'_>, foreground: bool) -> PyResult<Arc<Served>> {
        let mut st = lock(&self.state);
        match *st {
            RunState::Idle => {}
            RunState::Running { .. } => {
                return Err(PyRuntimeError::new_err("the server is already serving"));
            }
            RunState::Stopped => {
                return Err(PyRuntimeError::new_err(
                    "the server was stopped; create a new Server to serve again",
                ));
            }
        }
        let done: Arc<Served> = Arc::new(Slot::new());
        let (core, done2) = (Arc::clone(&self.core), Arc::clone(&done));
        let handle = std::thread::Builder::new()
            .name("bt-serve".to_string())
            .spawn(move || done2.put(core.serve()))
            .map_err(|e| {
                new_err(
                    py,
                    ErrorKind::Storage,
                    format!("cannot start the server thread: {e}"),
                )
            })?;
        *st = RunState::Running {
            done: Arc::clone(&done),
            handle: Some(handle),
            foreground,
        };
        Ok(done)
    }

    /// Marks the server stopped and joins its thread; the caller made sure
    /// `serve` returned. Returns whether it ran in the background.
    fn reap(&self, py: Python<'_>) -> bool {
        let old = std::mem::replace(&mut *lock(&self.state), RunState::Stopped);
        match old {
            RunState::Running {
                handle, foreground, ..
            } => {
                if let Some(h) = handle {
                    let _ = py.detach(|| h.join());
                }
                !foreground
            }
            _ => false,
        }
    }

    fn served_result(&self, py: Python<'_>, done: &Served) -> PyResult<()> {
        match done.take() {
            Some(Err(e)) => Err(to_py(py, &e, None)),
            _ => Ok(()),
        }
    }
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (dir, port = 8080, bind = None, max_connections = 64, timeout = 60.0,
                        expire_partial = Some(604800.0), max_file_size = None, token = None,
                        allow_legacy = false, min_free = 0, store = None, s3_endpoint = None,
                        s3_region = None, tls = "auto", key = None, overwrite = false),
           text_signature = "(dir, port=8080, bind=None, max_connections=64, timeout=60.0, \
                             expire_partial=604800.0, max_file_size=None, token=None, \
                             allow_legacy=False, min_free=0, store=None, s3_endpoint=None, \
                             s3_region=None, tls='auto', key=None, overwrite=False)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dir: &Bound<'_, PyAny>,
        port: i128,
        bind: Option<&str>,
        max_connections: i128,
        timeout: f64,
        expire_partial: Option<f64>,
        max_file_size: Option<i128>,
        token: Option<Bound<'_, PyAny>>,
        allow_legacy: bool,
        min_free: i128,
        store: Option<&str>,
        s3_endpoint: Option<&str>,
        s3_region: Option<&str>,
        tls: &str,
        key: Option<&Bound<'_, PyAny>>,
        overwrite: bool,
    ) -> PyResult<PyServer> {
        let dir_arg = dir.clone().unbind();
        let dir = path_arg(dir)?;
        let mut cfg = ServerConfig::new(dir.clone());
        cfg.port = int_arg(py, "port", port, 0, 65535)? as u16;
        cfg.bind = match bind {
            Some(b) => bind_addr(py, b)?,
            None => None,
        };
        cfg.max_connections = int_arg(py, "max_connections", max_connections, 1, 1 << 20)? as usize;
        cfg.idle_timeout = seconds_arg(py, "timeout", timeout)?;
        cfg.expire_partial = match expire_partial {
            Some(s) => Some(seconds_arg(py, "expire_partial", s)?),
            None => None,
        };
        cfg.max_file_size = match max_file_size {
            Some(m) => Some(int_arg(py, "max_file_size", m, 0, u64::MAX.into())? as u64),
            None => None,
        };
        cfg.token = token_arg(py, token.as_ref())?;
        cfg.allow_legacy = allow_legacy;
        cfg.overwrite = overwrite;
        cfg.min_free = int_arg(py, "min_free", min_free, 0, u64::MAX.into())? as u64;
        if let Some(url) = store {
            let s3 = bigtransfer_core::s3::store_config(url, s3_endpoint, s3_region)
                .map_err(|e| to_py(py, &bigtransfer_core::Error::from(e), None))?;
            cfg.s3 = Some(s3);
        }
        cfg.tls = TlsMode::parse(tls).map_err(|e| to_py(py, &e, None))?;
        cfg.key_file = key.map(path_arg).transpose()?;
        cfg.logger = Some(bigtransfer_core::server::default_logger());
        let core = py
            .detach(|| bigtransfer_core::Server::bind(cfg))
            .map_err(|e| to_py(py, &e, None))?;
        let addr = core.local_addr().map_err(|e| to_py(py, &e, None))?;
        let stop = core.stop_handle();
        Ok(PyServer {
            core: Arc::new(core),
            stop,
            addr,
            dir,
            dir_arg,
            state: Mutex::new(RunState::Idle),
        })
    }

    /// ``(host, port)`` actually listened on (the real port when 0 was asked).
    #[getter]
    fn address<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            [
                self.addr.ip().to_string().into_pyobject(py)?.into_any(),
                self.addr.port().into_pyobject(py)?.into_any(),
            ],
        )
    }

    /// The fingerprint of the server's TLS key (``"SHA256:..."``, for clients
    /// to pin), or None with ``tls="off"``.
    #[getter]
    fn fingerprint(&self) -> Option<String> {
        self.core.fingerprint().map(|f| f.to_string())
    }

    /// The storage directory, as given to the constructor.
    #[getter]
    fn dir(&self, py: Python<'_>) -> Py<PyAny> {
        self.dir_arg.clone_ref(py)
    }

    /// Whether the server is serving now (in the foreground or background).
    #[getter]
    fn running(&self) -> bool {
        match &*lock(&self.state) {
            RunState::Running { done, .. } => !done.is_done(),
            _ => false,
        }
    }

    /// Counters since the server was created: ``connections``, ``completed``,
    /// ``crc_errors``, ``failed``, ``bytes_received`` (a new dict each time).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.core.stats();
        let d = PyDict::new(py);
        d.set_item("connections", s.connections)?;
        d.set_item("completed", s.completed)?;
        d.set_item("crc_errors", s.crc_errors)?;
        d.set_item("failed", s.failed)?;
        d.set_item("bytes_received", s.bytes_received)?;
        Ok(d)
    }

    /// Serve until ``stop()`` is called (from another thread) or Ctrl-C.
    ///
    /// Blocks without holding the GIL. On Ctrl-C the server is stopped
    /// (running uploads end resumable) and ``KeyboardInterrupt`` propagates.
    /// Raises RuntimeError if the server is already serving or was stopped.
    fn serve_forever(&self, py: Python<'_>) -> PyResult<()> {
        let done = self.spawn(py, true)?;
        loop {
            if wait_detached(py, &done, TICK) {
                self.reap(py);
                return self.served_result(py, &done);
            }
            if let Err(e) = py.check_signals() {
                self.stop.stop();
                // Stopping checkpoints uploads and joins their threads: quick.
                if wait_detached(py, &done, Duration::from_secs(30)) {
                    self.reap(py);
                }
                return Err(e);
            }
        }
    }

    /// Start serving on a background thread and return at once.
    ///
    /// Does nothing if the server is already serving; raises RuntimeError if
    /// it was stopped.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        if matches!(*lock(&self.state), RunState::Running { .. }) {
            return Ok(());
        }
        self.spawn(py, false).map(|_| ())
    }

    /// Stop serving and wait until the server has stopped: it accepts no
    /// more connections and running uploads end at a checkpoint, resumable.
    ///
    /// Works from any thread, also while another is in ``serve_forever()``.
    /// Calling it again, or before serving, does nothing (but a stopped
    /// server cannot serve again). If background serving had failed, its
    /// error is raised here (once).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.stop.stop();
        let done = {
            let mut st = lock(&self.state);
            match &*st {
                RunState::Idle => {
                    *st = RunState::Stopped;
                    return Ok(());
                }
                RunState::Stopped => return Ok(()),
                RunState::Running { done, .. } => Arc::clone(done),
            }
        };
        while !wait_detached(py, &done, TICK) {
            py.check_signals()?;
        }
        if self.reap(py) {
            self.served_result(py, &done)?;
        }
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().start(slf.py())?;
        Ok(slf)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyType>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let _ = (exc_type, exc, tb);
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match &*lock(&self.state) {
            RunState::Idle => "idle",
            RunState::Running { done, .. } if !done.is_done() => "serving",
            _ => "stopped",
        };
        let host = match self.addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        format!(
            "<bigtransfer.Server {host}:{} dir={:?} {state}>",
            self.addr.port(),
            self.dir.display().to_string()
        )
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        // A server object collected while serving in the background must not
        // keep its port: ask the thread to stop (it ends on its own).
        self.stop.stop();
    }
}
