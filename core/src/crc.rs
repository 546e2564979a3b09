//! CRC-32 (zlib / ISO-HDLC, what Python's `zlib.crc32` returns) of files.
//!
//! Reads in large blocks with a sequential read-ahead hint so hashing runs at
//! the speed of the disk, with memory fixed at one block whatever the file
//! size. Not for hashing data as it streams over a socket: the sender and
//! receiver update a `crc32fast::Hasher` in their own loops.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::{Error, ErrorKind, Result};

/// Size of one read while hashing a file.
pub const READ_BLOCK: usize = 1 << 20;

/// The CRC-32 of the whole file at `path`.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("bt-crc-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let p = dir.join("x");
/// std::fs::write(&p, b"123456789").unwrap();
/// assert_eq!(bigtransfer_core::crc32_file(&p).unwrap(), 0xCBF4_3926);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn crc32_file(path: &Path) -> Result<u32> {
    let mut file = File::open(path).map_err(|e| {
        Error::io(
            ErrorKind::SourceFile,
            format!("cannot open {}", path.display()),
            e,
        )
    })?;
    crc32_of(&mut file, path, &mut |_| true)
}

/// The CRC-32 of everything `file` yields from its current position, calling
/// `progress(bytes_hashed_so_far)` after each block; when it returns `false`
/// hashing stops with an [`ErrorKind::Cancelled`] error. `path` is only used
/// in error messages.
pub fn crc32_of(
    file: &mut File,
    path: &Path,
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u32> {
    crate::sys::advise_sequential(file);
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = crate::sys::PageBuf::new(READ_BLOCK);
    let mut done = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::io(
                    ErrorKind::SourceFile,
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        if !progress(done) {
            return Err(Error::new(
                ErrorKind::Cancelled,
                "cancelled while computing the CRC-32",
            ));
        }
    }
    Ok(hasher.finalize())
}
