//! `bigtransfer`: the Python extension module over `bigtransfer-core`.
//!
//! It exposes the engine's resumable, CRC-32-verified uploads to Python:
//! `send_file`, `crc32_file`, the `Server` class and one exception class per
//! engine error kind, with the GIL released while the engine works and
//! Ctrl-C honoured. Built by maturin as one abi3 wheel for CPython >= 3.9;
//! the type stubs are `bigtransfer.pyi` beside `pyproject.toml`.
//!
//! Not for: protocol, storage or retry logic (all in the engine), nor the
//! stdlib-only scripts `server.py` / `client.py`, which merely use this
//! module when it is importable.

use pyo3::prelude::*;
use pyo3::types::PyList;

mod client;
mod errors;
mod get;
mod server;
mod tree;
mod wait;

/// Resumable, CRC-32-verified uploads of very large files over TCP.
///
/// ``send_file`` uploads a file to a bigtransfer server (resuming and
/// retrying), ``Server`` receives uploads into a directory, ``crc32_file``
/// hashes a file as ``zlib.crc32`` does. Errors are ``BigTransferError``
/// subclasses. The GIL is released while they work.
#[pymodule(name = "bigtransfer")]
fn bigtransfer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let mut names: Vec<&str> = vec![
        "__version__",
        "send_file",
        "crc32_file",
        "list_remote",
        "Server",
        "Result",
        "get_file",
        "GetResult",
        "send_tree",
        "get_tree",
        "TreeResult",
    ];
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(client::send_file, m)?)?;
    m.add_function(wrap_pyfunction!(client::crc32_file, m)?)?;
    m.add_function(wrap_pyfunction!(client::list_remote, m)?)?;
    m.add_function(wrap_pyfunction!(get::get_file, m)?)?;
    m.add_class::<get::GetResult>()?;
    m.add_function(wrap_pyfunction!(tree::send_tree, m)?)?;
    m.add_function(wrap_pyfunction!(tree::get_tree, m)?)?;
    m.add_class::<tree::TreeResult>()?;
    m.add_class::<server::PyServer>()?;
    m.add_class::<client::SendResult>()?;
    for (name, class) in errors::all(py)? {
        m.add(name, class)?;
        names.push(name);
    }
    m.add("__all__", PyList::new(py, names)?)?;
    Ok(())
}
