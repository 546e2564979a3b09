//! CRC-32 (zlib / ISO-HDLC, what Python's `zlib.crc32` returns) of files.
//!
//! Reads in large blocks with a sequential read-ahead hint so hashing runs at
//! the speed of the disk, with memory fixed at one block whatever the file
//! size. Not for hashing data as it streams over a socket: the sender and
//! receiver update a `crc32fast::Hasher` in their own loops.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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
/// in error messages. On success the file position is at the end.
///
/// Large files are read by up to [`MAX_HASH_THREADS`] threads at once, each
/// taking every n-th block, and the per-block CRC-32s are combined in order.
/// The read, a copy out of the page cache, is what costs (crc32fast itself
/// runs at tens of GB/s), and one core copies at a fraction of the memory's
/// speed; neighbouring blocks keep the disk's access nearly sequential when
/// the file is not cached. Memory: one block per thread.
pub fn crc32_of(
    file: &mut File,
    path: &Path,
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u32> {
    crate::sys::advise_sequential(file);
    let read_err = |e: std::io::Error| {
        Error::io(
            ErrorKind::SourceFile,
            format!("cannot read {}", path.display()),
            e,
        )
    };
    let start = file.stream_position().map_err(read_err)?;
    let len = file
        .metadata()
        .map_err(read_err)?
        .len()
        .saturating_sub(start);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_THREADS)
        .min((len / PARALLEL_FROM).max(1) as usize);
    let crc = if threads > 1 {
        let crc = crc32_striped(file, start, len, threads, path, progress)?;
        file.seek(SeekFrom::Start(start + len)).map_err(read_err)?;
        crc
    } else {
        crc32_sequential(file, path, progress)?
    };
    Ok(crc)
}

/// At most this many threads hash one file.
pub const MAX_HASH_THREADS: usize = 4;

/// Files smaller than this per thread are hashed by the calling thread alone:
/// below it, starting threads costs more than it saves.
const PARALLEL_FROM: u64 = 16 << 20;

fn crc32_sequential(
    file: &mut File,
    path: &Path,
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u32> {
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
            return Err(cancelled());
        }
    }
    Ok(hasher.finalize())
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "cancelled while computing the CRC-32")
}

/// `threads` workers hash blocks `k, k + threads, ...` of `[start, start +
/// len)`; the caller combines their block CRC-32s in file order as they
/// arrive and reports progress. A short read means the file shrank under
/// us: that is an error, never a CRC of something else.
fn crc32_striped(
    file: &File,
    start: u64,
    len: u64,
    threads: usize,
    path: &Path,
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u32> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    let block = READ_BLOCK as u64;
    let nblocks = len.div_ceil(block);
    let stop = AtomicBool::new(false);
    // Bounded, so a slow consumer holds workers back instead of queueing.
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<(u64, crc32fast::Hasher)>>(threads * 4);
    std::thread::scope(|s| {
        for k in 0..threads {
            let tx = tx.clone();
            let stop = &stop;
            s.spawn(move || {
                let mut buf = crate::sys::PageBuf::new(READ_BLOCK);
                let mut idx = k as u64;
                while idx < nblocks && !stop.load(Ordering::Relaxed) {
                    let off = idx * block;
                    let n = (len - off).min(block) as usize;
                    let r = file.read_exact_at(&mut buf[..n], start + off).map(|()| {
                        let mut h = crc32fast::Hasher::new();
                        h.update(&buf[..n]);
                        (idx, h)
                    });
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                    idx += threads as u64;
                }
            });
        }
        drop(tx);
        let result = combine_in_order(rx, nblocks, block, len, path, progress);
        // On an error or a cancel, workers see `stop` (or a closed channel)
        // after their current block; the scope then joins them.
        stop.store(true, Ordering::Relaxed);
        result
    })
}

fn combine_in_order(
    rx: std::sync::mpsc::Receiver<std::io::Result<(u64, crc32fast::Hasher)>>,
    nblocks: u64,
    block: u64,
    len: u64,
    path: &Path,
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u32> {
    let mut whole = crc32fast::Hasher::new();
    let mut next = 0u64;
    // Blocks that arrived ahead of `next`; at most a few per worker.
    let mut early: std::collections::BTreeMap<u64, crc32fast::Hasher> = Default::default();
    while next < nblocks {
        let (idx, h) = match rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Error::new(
                    ErrorKind::SourceFile,
                    format!("{} shrank while being read", path.display()),
                ))
            }
            Ok(Err(e)) => {
                return Err(Error::io(
                    ErrorKind::SourceFile,
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::SourceFile,
                    format!("cannot read {}: a hashing thread stopped", path.display()),
                ))
            }
        };
        early.insert(idx, h);
        while let Some(h) = early.remove(&next) {
            whole.combine(&h);
            next += 1;
            if !progress((next * block).min(len)) {
                return Err(cancelled());
            }
        }
    }
    Ok(whole.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8], tag: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("bt-crc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        File::create(&p).unwrap().write_all(bytes).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 2654435761usize) >> 13) as u8)
            .collect()
    }

    #[test]
    fn striped_matches_sequential_for_any_thread_count_and_start() {
        // 5 blocks and an odd tail, so every worker gets a different share.
        let data = pattern(5 * READ_BLOCK + 12345);
        let (p, f) = file_with(&data, "striped");
        for threads in [2, 3, 4, 7] {
            for start in [0usize, 1, READ_BLOCK + 7] {
                let want = crc32fast::hash(&data[start..]);
                let mut seen = Vec::new();
                let got = crc32_striped(
                    &f,
                    start as u64,
                    (data.len() - start) as u64,
                    threads,
                    &p,
                    &mut |d| {
                        seen.push(d);
                        true
                    },
                )
                .unwrap();
                assert_eq!(got, want, "threads {threads} start {start}");
                // Progress is reported in order and ends at the length.
                assert!(seen.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(seen.last().copied(), Some((data.len() - start) as u64));
            }
        }
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn crc32_of_hashes_from_the_position_and_ends_at_the_end() {
        let data = pattern(3 * READ_BLOCK + 5);
        let (p, mut f) = file_with(&data, "pos");
        f.seek(SeekFrom::Start(100)).unwrap();
        let got = crc32_of(&mut f, &p, &mut |_| true).unwrap();
        assert_eq!(got, crc32fast::hash(&data[100..]));
        assert_eq!(f.stream_position().unwrap(), data.len() as u64);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_file_shorter_than_expected_is_an_error_not_a_crc() {
        let data = pattern(2 * READ_BLOCK + 10);
        let (p, f) = file_with(&data, "short");
        let e = crc32_striped(&f, 0, data.len() as u64 + 1, 2, &p, &mut |_| true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourceFile);
        assert!(e.to_string().contains("shrank"), "{e}");
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn cancelling_stops_the_workers() {
        let data = pattern(8 * READ_BLOCK);
        let (p, f) = file_with(&data, "cancel");
        let mut calls = 0;
        let e = crc32_striped(&f, 0, data.len() as u64, 2, &p, &mut |_| {
            calls += 1;
            calls < 2
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert_eq!(calls, 2);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}
