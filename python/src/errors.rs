//! The module's exception classes and the mapping from engine errors to them.
//!
//! The classes are defined in Python (`exceptions.py`, run once at import)
//! because several of them derive from two bases, one of them a built-in
//! (`ConnectionError`, `OSError`, `ValueError`, ...), which PyO3's
//! `create_exception!` cannot express. This module keeps them for raising
//! from Rust and turns a [`bigtransfer_core::Error`] into the right one.
//! Not for: deciding what is an error (the engine does that).

use std::ffi::CString;

use bigtransfer_core::{Error, ErrorKind};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// Names of the classes `exceptions.py` defines, in the order of
/// [`Exceptions`]' fields; all of them are exported by the module.
pub(crate) const NAMES: [&str; 13] = [
    "BigTransferError",
    "InvalidInputError",
    "SourceFileError",
    "SourceFileNotFoundError",
    "UnreachableError",
    "ConnectionLostError",
    "ProtocolError",
    "RefusedError",
    "CrcMismatchError",
    "StorageError",
    "CancelledError",
    "TimedOutError",
    "HostKeyError",
];

/// The exception classes, created once per process.
pub(crate) struct Exceptions {
    base: Py<PyType>,
    invalid_input: Py<PyType>,
    source_file: Py<PyType>,
    source_not_found: Py<PyType>,
    unreachable: Py<PyType>,
    connection_lost: Py<PyType>,
    protocol: Py<PyType>,
    refused: Py<PyType>,
    crc_mismatch: Py<PyType>,
    storage: Py<PyType>,
    cancelled: Py<PyType>,
    timed_out: Py<PyType>,
    host_key: Py<PyType>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

fn create(py: Python<'_>) -> PyResult<Exceptions> {
    let source = CString::new(include_str!("exceptions.py"))
        .map_err(|_| PyRuntimeError::new_err("exceptions.py contains a NUL byte"))?;
    let ns = PyDict::new(py);
    ns.set_item("__name__", "bigtransfer")?;
    py.run(&source, Some(&ns), None)?;
    let get = |name: &str| -> PyResult<Py<PyType>> {
        let obj = ns.get_item(name)?.ok_or_else(|| {
            PyRuntimeError::new_err(format!("exceptions.py does not define {name}"))
        })?;
        Ok(obj.cast_into::<PyType>()?.unbind())
    };
    Ok(Exceptions {
        base: get(NAMES[0])?,
        invalid_input: get(NAMES[1])?,
        source_file: get(NAMES[2])?,
        source_not_found: get(NAMES[3])?,
        unreachable: get(NAMES[4])?,
        connection_lost: get(NAMES[5])?,
        protocol: get(NAMES[6])?,
        refused: get(NAMES[7])?,
        crc_mismatch: get(NAMES[8])?,
        storage: get(NAMES[9])?,
        cancelled: get(NAMES[10])?,
        timed_out: get(NAMES[11])?,
        host_key: get(NAMES[12])?,
    })
}

/// The exception classes (created on first use).
pub(crate) fn exceptions(py: Python<'_>) -> PyResult<&Exceptions> {
    EXCEPTIONS.get_or_try_init(py, || create(py))
}

/// Every class with its name, for adding them to the module.
pub(crate) fn all(py: Python<'_>) -> PyResult<Vec<(&'static str, Bound<'_, PyType>)>> {
    let e = exceptions(py)?;
    let classes = [
        &e.base,
        &e.invalid_input,
        &e.source_file,
        &e.source_not_found,
        &e.unreachable,
        &e.connection_lost,
        &e.protocol,
        &e.refused,
        &e.crc_mismatch,
        &e.storage,
        &e.cancelled,
        &e.timed_out,
        &e.host_key,
    ];
    Ok(NAMES
        .iter()
        .zip(classes)
        .map(|(n, c)| (*n, c.bind(py).clone()))
        .collect())
}

impl Exceptions {
    fn class_of(&self, err: &Error) -> &Py<PyType> {
        match err.kind() {
            ErrorKind::InvalidInput => &self.invalid_input,
            ErrorKind::SourceFile => {
                let missing = err
                    .io_error()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                if missing {
                    &self.source_not_found
                } else {
                    &self.source_file
                }
            }
            ErrorKind::Unreachable => &self.unreachable,
            ErrorKind::ConnectionLost => &self.connection_lost,
            ErrorKind::Protocol => &self.protocol,
            ErrorKind::Refused => &self.refused,
            ErrorKind::CrcMismatch => &self.crc_mismatch,
            ErrorKind::Storage => &self.storage,
            ErrorKind::Cancelled => &self.cancelled,
            ErrorKind::TimedOut => &self.timed_out,
            ErrorKind::HostKey => &self.host_key,
            // A kind added to the engine later: still a BigTransferError.
            _ => &self.base,
        }
    }
}

fn build(py: Python<'_>, err: &Error, filename: Option<&Bound<'_, PyAny>>) -> PyResult<PyErr> {
    let cls = exceptions(py)?.class_of(err).bind(py);
    let exc = cls.call1((err.to_string(),))?;
    exc.setattr("kind", err.kind().as_str())?;
    if matches!(err.kind(), ErrorKind::SourceFile | ErrorKind::Storage) {
        // The OSError attributes, so callers can branch on errno as usual.
        if let Some(errno) = err.raw_os_error() {
            exc.setattr("errno", errno)?;
            let strerror = py.import("os")?.getattr("strerror")?.call1((errno,))?;
            exc.setattr("strerror", strerror)?;
        }
        if let (ErrorKind::SourceFile, Some(f)) = (err.kind(), filename) {
            exc.setattr("filename", f)?;
        }
    }
    Ok(PyErr::from_value(exc))
}

/// The Python exception for the engine error `err`; `filename` is the path
/// object the caller passed for the local file (set as the `filename`
/// attribute of source-file errors, as `open()` would).
pub(crate) fn to_py(py: Python<'_>, err: &Error, filename: Option<&Bound<'_, PyAny>>) -> PyErr {
    build(py, err, filename).unwrap_or_else(|e| e)
}

/// The Python exception for an engine error of `kind` with `message`.
pub(crate) fn new_err(py: Python<'_>, kind: ErrorKind, message: impl Into<String>) -> PyErr {
    to_py(py, &Error::new(kind, message), None)
}
