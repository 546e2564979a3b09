//! Trees for Python: `send_tree` (several paths, or directories, in one
//! tree session) and `get_tree` (stored directories or files into a local
//! directory), with `TreeResult` and a progress callback that gets the
//! file being moved and both overall counts.
//!
//! Argument conversion, the callback (on the caller's thread, throttled
//! like `send_file`'s) and cancellation only; the transfers are the
//! engine's `send_tree` and `get_tree` on a worker thread without the GIL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bigtransfer_core::client::{TreeGetOutcome, TreeTick};
use bigtransfer_core::{Control, ErrorKind, Result as CoreResult, TreeOutcome};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::client::{path_arg, token_arg, OptPath};
use crate::errors::{new_err, to_py};
use crate::wait::{Step, Worker};

/// The result of a successful `send_tree` or `get_tree`.
#[pyclass(name = "TreeResult", module = "bigtransfer", frozen)]
pub struct TreeResult {
    /// Regular files in the manifest.
    #[pyo3(get)]
    files: u64,
    /// Directories in it.
    #[pyo3(get)]
    dirs: u64,
    /// Symlinks in it.
    #[pyo3(get)]
    symlinks: u64,
    /// Sum of the files' sizes.
    #[pyo3(get)]
    bytes: u64,
    /// Files moved and verified by this call (stored, or downloaded).
    #[pyo3(get)]
    moved: u64,
    /// Files already there (nothing moved).
    #[pyo3(get)]
    held: u64,
    /// Files that did not verify, or the server could not send.
    #[pyo3(get)]
    failed: u64,
    /// Entries not stored / not replaced (a different one holds the name).
    #[pyo3(get)]
    not_stored: u64,
    /// File bytes sent or received, all attempts together.
    #[pyo3(get)]
    bytes_moved: u64,
    /// Local entries left out of a send (with the reason in the log).
    #[pyo3(get)]
    skipped: u64,
    /// Connections made.
    #[pyo3(get)]
    attempts: u32,
    /// Whether the last connection was TLS.
    #[pyo3(get)]
    encrypted: bool,
    /// Of a send: files sent although the server held one of the same
    /// size and mtime, their content being different (0 for a get).
    #[pyo3(get)]
    changed_same_mtime: u64,
}

impl From<TreeOutcome> for TreeResult {
    fn from(o: TreeOutcome) -> TreeResult {
        TreeResult {
            files: o.files,
            dirs: o.dirs,
            symlinks: o.symlinks,
            bytes: o.bytes,
            moved: o.stored,
            held: o.held,
            failed: o.failed,
            not_stored: o.not_stored,
            bytes_moved: o.sent,
            skipped: o.skipped,
            attempts: o.attempts,
            encrypted: o.encrypted,
            changed_same_mtime: o.changed_quietly,
        }
    }
}

impl From<TreeGetOutcome> for TreeResult {
    fn from(o: TreeGetOutcome) -> TreeResult {
        TreeResult {
            files: o.files,
            dirs: o.dirs,
            symlinks: o.symlinks,
            bytes: o.bytes,
            moved: o.fetched,
            held: o.held,
            failed: o.failed,
            not_stored: o.not_replaced,
            bytes_moved: o.received,
            skipped: 0,
            attempts: o.attempts,
            encrypted: o.encrypted,
            changed_same_mtime: 0,
        }
    }
}

#[pymethods]
impl TreeResult {
    fn __repr__(&self) -> String {
        format!(
            "TreeResult(files={}, dirs={}, symlinks={}, bytes={}, moved={}, held={}, changed_same_mtime={}, failed={}, not_stored={}, bytes_moved={})",
            self.files, self.dirs, self.symlinks, self.bytes, self.moved, self.held, self.changed_same_mtime, self.failed, self.not_stored, self.bytes_moved
        )
    }
}

/// One path or a list/tuple of them.
fn paths_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    if let Ok(p) = path_arg(value) {
        return Ok(vec![p]);
    }
    let items: Vec<Bound<'_, PyAny>> = value.extract().map_err(|_| {
        PyTypeError::new_err("paths must be a str, an os.PathLike, or a list of them")
    })?;
    items.iter().map(path_arg).collect()
}

/// One remote name or a list/tuple of them.
fn remotes_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = value.extract::<String>() {
        return Ok(vec![s]);
    }
    value
        .extract()
        .map_err(|_| PyTypeError::new_err("remotes must be a str or a list of str"))
}

/// Calls the progress callback with a tick.
fn call<'py>(cb: &Bound<'py, PyAny>, t: &TreeTick) -> PyResult<Bound<'py, PyAny>> {
    cb.call1((
        t.path.as_str(),
        t.files_done,
        t.files_total,
        t.bytes_done,
        t.bytes_total,
    ))
}

/// Runs `work` on a worker thread, calling `progress(path, files_done,
/// files_total, bytes_done, bytes_total)` with the latest tick; exactly
/// `False` cancels.
fn drive<T: Send + 'static>(
    py: Python<'_>,
    name: &str,
    progress: Option<Bound<'_, PyAny>>,
    work: impl FnOnce(&mut dyn FnMut(Option<&TreeTick>) -> Control) -> CoreResult<T> + Send + 'static,
) -> PyResult<CoreResult<T>> {
    let pending: Arc<Mutex<Option<TreeTick>>> = Arc::new(Mutex::new(None));
    let last: Arc<Mutex<TreeTick>> = Arc::new(Mutex::new(TreeTick::default()));
    let (pending_w, last_w) = (Arc::clone(&pending), Arc::clone(&last));
    let worker = Worker::spawn(name, move |cancel: &AtomicBool| {
        work(&mut |tick: Option<&TreeTick>| {
            if let Some(t) = tick {
                *pending_w.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
                *last_w.lock().unwrap_or_else(|e| e.into_inner()) = t.clone();
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
        let (Some(cb), Some(t)) = (&progress, at) else {
            return Ok(Step::Continue);
        };
        let ret = call(cb, &t)?;
        Ok(if ret.is(pyo3::types::PyBool::new(py, false).as_any()) {
            Step::Cancel
        } else {
            Step::Continue
        })
    })?;
    match finished {
        Some(r) => {
            // The worker may end before its last report was polled: the
            // callback always hears the final counts.
            if let (Some(cb), true) = (&progress, r.is_ok()) {
                let t = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                call(cb, &t)?;
            }
            Ok(r)
        }
        None => Err(new_err(
            py,
            ErrorKind::Cancelled,
            "cancelled by the progress callback",
        )),
    }
}

/// Send ``paths`` (a path, or a list of paths: files and directories) to
/// the bigtransfer server at ``host:port`` in one tree session and return
/// a ``TreeResult``. A directory is stored under its base name with all it
/// holds (empty directories, relative symlinks staying inside it, modes
/// without set-id bits, mtimes, holes). A file the server holds already
/// costs nothing; a different one under the same name keeps the stored one
/// as a numbered version (``NAME.~1~``) unless the server runs with
/// ``--overwrite``. An interrupted send is retried and resumes.
///
/// ``progress(path, files_done, files_total, bytes_done, bytes_total)``
/// is called on this thread as files move (``files_total`` and
/// ``bytes_total`` grow as the paged manifest is listed); exactly
/// ``False`` cancels (``CancelledError``). The connection arguments are
/// ``send_file``'s; a server with a token refuses trees for now
/// (``RefusedError``).
#[pyfunction]
#[pyo3(signature = (host, port, paths, *, retries = 5, timeout = 60.0, connect_timeout = 10.0,
                    limit_rate = None, progress = None, token = None, fingerprint = None,
                    known_hosts = OptPath::EngineDefault, require_tls = false))]
#[allow(clippy::too_many_arguments)]
pub fn send_tree(
    py: Python<'_>,
    host: &str,
    port: i128,
    paths: &Bound<'_, PyAny>,
    retries: i128,
    timeout: f64,
    connect_timeout: f64,
    limit_rate: Option<i128>,
    progress: Option<Bound<'_, PyAny>>,
    token: Option<Bound<'_, PyAny>>,
    fingerprint: Option<String>,
    known_hosts: OptPath,
    require_tls: bool,
) -> PyResult<TreeResult> {
    let mut opts = crate::client::server_options(py, host, port)?;
    crate::client::pacing(py, &mut opts, retries, timeout, connect_timeout, limit_rate)?;
    opts.token = token_arg(py, token.as_ref())?;
    crate::client::pin(py, &mut opts, fingerprint, known_hosts, require_tls)?;
    let list = paths_arg(paths)?;
    let r = drive(py, "bt-send-tree", progress, move |report| {
        let mut tick = TreeTick::default();
        bigtransfer_core::send_tree(&list, &opts, &mut |p| {
            let fresh = tick.on_send(p);
            report(fresh.then_some(&tick))
        })
    })?;
    r.map(TreeResult::from).map_err(|e| to_py(py, &e, None))
}

/// Download ``remotes`` (a path in the server's storage directory, or a
/// list of them: directories or files) from the server at ``host:port``
/// into the local directory ``dest`` (made if missing), each under its
/// base name, and return a ``TreeResult``. Every entry is checked as the
/// server checks incoming trees (no ``..``, absolute paths, collisions;
/// symlinks only inside the tree, never followed); every file is verified
/// against the server's CRC-32s and appears under its name only when
/// whole; modes (never set-id) and mtimes are applied. A call after an
/// interrupted one fetches only what is missing; a different file here is
/// not replaced unless ``force=True``. ``progress`` and the connection
/// arguments as ``send_tree``'s.
///
/// Raises ``RefusedError`` for a remote the server does not have or a
/// manifest the client refuses (in words), and the other errors as
/// ``get_file``.
#[pyfunction]
#[pyo3(signature = (host, port, remotes, dest, *, force = false, retries = 5, timeout = 60.0,
                    connect_timeout = 10.0, limit_rate = None, progress = None, token = None,
                    fingerprint = None, known_hosts = OptPath::EngineDefault, require_tls = false))]
#[allow(clippy::too_many_arguments)]
pub fn get_tree(
    py: Python<'_>,
    host: &str,
    port: i128,
    remotes: &Bound<'_, PyAny>,
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
) -> PyResult<TreeResult> {
    let mut opts = crate::client::server_options(py, host, port)?;
    crate::client::pacing(py, &mut opts, retries, timeout, connect_timeout, limit_rate)?;
    opts.token = token_arg(py, token.as_ref())?;
    crate::client::pin(py, &mut opts, fingerprint, known_hosts, require_tls)?;
    let list = remotes_arg(remotes)?;
    let d = path_arg(dest)?;
    let r = drive(py, "bt-get-tree", progress, move |report| {
        let mut tick = TreeTick::default();
        bigtransfer_core::client::get_tree(&list, &d, &opts, force, &mut |p| {
            let fresh = tick.on_get(p);
            report(fresh.then_some(&tick))
        })
    })?;
    r.map(TreeResult::from).map_err(|e| to_py(py, &e, None))
}
