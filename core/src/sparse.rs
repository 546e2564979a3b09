//! Sparse files: where a local file's data and holes are, and the CRC-32 of
//! a run of zeros computed without reading it.
//!
//! A sparse file (a VM disk, a database file) may be terabytes long with a
//! few gigabytes of data. [`segments`] finds the data and the holes with
//! `SEEK_DATA`/`SEEK_HOLE`, so a sender reads only the data; [`zeros_crc`]
//! gives the CRC-32 state of any number of zero bytes in O(log n) steps, so
//! the whole-file CRC-32 still covers the holes (as zeros) without reading
//! them. [`crc32_sparse`] puts both together.
//!
//! It is not for writing holes on the receiving side, nor for files that
//! change while they are read (the caller checks size and mtime around the
//! read, as it does for any file).

use crc32fast::Hasher;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Whether a segment holds data or is a hole (reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Bytes stored on disk (they may still be zeros).
    Data,
    /// A hole: reads as zeros, nothing stored.
    Hole,
}

/// A run of a file: `len` bytes from `offset`, all data or all hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Data or hole.
    pub kind: SegmentKind,
    /// Offset of the first byte.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
}

/// Whether a file's metadata suggests it has holes: fewer 512-byte blocks
/// allocated than its size needs. A cheap test before calling [`segments`];
/// a compressed or deduplicated file system can give a false positive, which
/// only costs a few `lseek` calls.
pub fn looks_sparse(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.is_file() && meta.blocks().saturating_mul(512) < meta.size()
}

/// The data and hole segments of the first `len` bytes of `file`, in order,
/// lazily (a very fragmented file is never listed whole in memory).
///
/// `len` is the size the caller took from `fstat`; the segments cover
/// exactly `[0, len)`. Where the OS or file system does not support
/// `SEEK_DATA`/`SEEK_HOLE`, the rest of the file is one data segment. The
/// seeks move the file's shared offset: read with `read_at` (pread), as
/// [`crc32_sparse`] does.
pub fn segments(file: &File, len: u64) -> Segments<'_> {
    Segments {
        file,
        len,
        pos: 0,
        unsupported: false,
    }
}

/// The iterator of [`segments`].
#[derive(Debug)]
pub struct Segments<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
    unsupported: bool,
}

impl Iterator for Segments<'_> {
    type Item = io::Result<Segment>;

    fn next(&mut self) -> Option<io::Result<Segment>> {
        if self.pos >= self.len {
            return None;
        }
        let start = self.pos;
        let (kind, end) = match self.next_boundary() {
            Ok(found) => found,
            Err(e) => {
                self.pos = self.len; // Stop after reporting the error.
                return Some(Err(e));
            }
        };
        let end = end.clamp(start + 1, self.len);
        self.pos = end;
        Some(Ok(Segment {
            kind,
            offset: start,
            len: end - start,
        }))
    }
}

impl Segments<'_> {
    /// The kind of the segment at `self.pos` and where it ends.
    fn next_boundary(&mut self) -> io::Result<(SegmentKind, u64)> {
        if self.unsupported {
            return Ok((SegmentKind::Data, self.len));
        }
        match seek_data(self.file, self.pos) {
            Ok(Some(data)) if data > self.pos => Ok((SegmentKind::Hole, data)),
            Ok(Some(_)) => match seek_hole(self.file, self.pos) {
                Ok(hole) => Ok((SegmentKind::Data, hole)),
                Err(e) if is_unsupported(&e) => self.fall_back(),
                Err(e) => Err(e),
            },
            // No data after pos: a hole up to the end (the file may also
            // have shrunk since the caller's fstat; the read will tell).
            Ok(None) => Ok((SegmentKind::Hole, self.len)),
            Err(e) if is_unsupported(&e) => self.fall_back(),
            Err(e) => Err(e),
        }
    }

    fn fall_back(&mut self) -> io::Result<(SegmentKind, u64)> {
        self.unsupported = true;
        Ok((SegmentKind::Data, self.len))
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::ENOSYS)
    ) || e.kind() == io::ErrorKind::Unsupported
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "macos"
))]
fn seek_data(file: &File, pos: u64) -> io::Result<Option<u64>> {
    use rustix::fs::{seek, SeekFrom};
    match seek(file, SeekFrom::Data(pos)) {
        Ok(at) => Ok(Some(at)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "macos"
))]
fn seek_hole(file: &File, pos: u64) -> io::Result<u64> {
    use rustix::fs::{seek, SeekFrom};
    Ok(seek(file, SeekFrom::Hole(pos))?)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "macos"
)))]
fn seek_data(_: &File, _: u64) -> io::Result<Option<u64>> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "macos"
)))]
fn seek_hole(_: &File, _: u64) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The CRC-32 state of `len` zero bytes, to be [`Hasher::combine`]d after
/// the state of what precedes them, in O(log len) combine steps and without
/// reading or allocating `len` bytes.
///
/// Zero runs are built by doubling (z, 2z, 4z, ...) and the ones for the set
/// bits of `len` are combined; since all runs are zeros, their order does not
/// matter.
pub fn zeros_crc(len: u64) -> Hasher {
    let mut result = Hasher::new();
    let mut power = Hasher::new();
    power.update(&[0]);
    let mut rest = len;
    while rest > 0 {
        if rest & 1 == 1 {
            result.combine(&power);
        }
        rest >>= 1;
        if rest > 0 {
            let copy = power.clone();
            power.combine(&copy);
        }
    }
    result
}

/// The CRC-32 of the first `len` bytes of `file`, reading only its data
/// segments (holes count as zeros, combined with [`zeros_crc`]).
///
/// Fails if the file is shorter than `len` when read, since the CRC would
/// then not be of the file the caller described.
pub fn crc32_sparse(file: &File, len: u64) -> io::Result<u32> {
    // A hole past the end of the file looks like any other hole to
    // SEEK_DATA, so a file shorter than `len` must be caught here.
    let actual = file.metadata()?.len();
    if actual < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file is {actual} bytes long, shorter than the expected {len} bytes"),
        ));
    }
    let mut whole = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    for seg in segments(file, len) {
        let seg = seg?;
        match seg.kind {
            SegmentKind::Hole => whole.combine(&zeros_crc(seg.len)),
            SegmentKind::Data => crc_range(file, seg, &mut buf, &mut whole)?,
        }
    }
    Ok(whole.finalize())
}

fn crc_range(file: &File, seg: Segment, buf: &mut [u8], whole: &mut Hasher) -> io::Result<()> {
    let end = seg.offset + seg.len;
    let mut pos = seg.offset;
    while pos < end {
        let want = usize::try_from(end - pos).map_or(buf.len(), |n| n.min(buf.len()));
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at byte {pos}, before its size of {end} bytes"),
            ));
        }
        whole.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn crc_of(bytes: &[u8]) -> u32 {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finalize()
    }

    #[test]
    fn zeros_crc_matches_real_zeros() {
        for len in [0u64, 1, 2, 3, 7, 8, 255, 256, 4095, 4096, 65_537, 1 << 20] {
            let zeros = vec![0u8; len as usize];
            assert_eq!(zeros_crc(len).finalize(), crc_of(&zeros), "len {len}");
        }
    }

    #[test]
    fn zeros_crc_combines_after_data() {
        let mut bytes = b"hello, sparse world".to_vec();
        let mut h = Hasher::new();
        h.update(&bytes);
        h.combine(&zeros_crc(100_003));
        bytes.resize(bytes.len() + 100_003, 0);
        assert_eq!(h.finalize(), crc_of(&bytes));
    }

    #[test]
    fn zeros_crc_of_a_terabyte_is_fast() {
        // 2^40 zeros: would take minutes to read; O(log n) here.
        let t = std::time::Instant::now();
        let a = zeros_crc(1 << 40);
        let mut b = zeros_crc(1 << 39);
        b.combine(&zeros_crc(1 << 39));
        assert_eq!(a.finalize(), b.finalize());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    fn sparse_file() -> (tempfile::TempDir, File, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = 16 << 20;
        file.set_len(len).unwrap();
        let mut expect = vec![0u8; len as usize];
        for (at, n, fill) in [(1u64 << 20, 70_000usize, 0xA5u8), (9 << 20, 4096, 0x3C)] {
            let data: Vec<u8> = (0..n).map(|i| fill ^ (i as u8)).collect();
            file.write_all_at(&data, at).unwrap();
            expect[at as usize..at as usize + n].copy_from_slice(&data);
        }
        file.sync_all().unwrap();
        (dir, file, expect)
    }

    #[test]
    fn segments_of_a_real_sparse_file() {
        let (_dir, file, expect) = sparse_file();
        let len = expect.len() as u64;
        let segs: Vec<Segment> = segments(&file, len).collect::<io::Result<_>>().unwrap();
        // They tile [0, len) exactly, alternating kinds.
        let mut pos = 0;
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.offset, pos, "{segs:?}");
            assert!(s.len > 0);
            if i > 0 {
                assert_ne!(segs[i - 1].kind, s.kind, "{segs:?}");
            }
            // Every written byte lies in a data segment.
            if s.kind == SegmentKind::Hole {
                let range = s.offset as usize..(s.offset + s.len) as usize;
                assert!(expect[range].iter().all(|&b| b == 0), "{s:?}");
            }
            pos += s.len;
        }
        assert_eq!(pos, len);
        let meta = file.metadata().unwrap();
        if looks_sparse(&meta) {
            // The file system keeps holes (ext4, xfs, btrfs, tmpfs do).
            assert_eq!(segs[0].kind, SegmentKind::Hole, "{segs:?}");
            assert_eq!(segs[0].offset, 0);
            assert!(segs[0].len >= (1 << 20) - 4096, "{segs:?}");
            assert_eq!(segs.last().unwrap().kind, SegmentKind::Hole, "{segs:?}");
            let data: u64 = segs
                .iter()
                .filter(|s| s.kind == SegmentKind::Data)
                .map(|s| s.len)
                .sum();
            assert!(data < 1 << 20, "{data} bytes of data in {segs:?}");
        } else {
            eprintln!("note: this file system stored no holes: {segs:?}");
        }
    }

    #[test]
    fn crc32_sparse_matches_crc_of_all_bytes() {
        let (_dir, mut file, expect) = sparse_file();
        let mut read_back = Vec::new();
        file.read_to_end(&mut read_back).unwrap();
        assert_eq!(read_back, expect);
        let len = expect.len() as u64;
        assert_eq!(crc32_sparse(&file, len).unwrap(), crc_of(&expect));
        // A prefix ending inside a hole and one ending inside data.
        for cut in [(1 << 20) - 1, (1 << 20) + 5000, 12 << 20] {
            assert_eq!(
                crc32_sparse(&file, cut).unwrap(),
                crc_of(&expect[..cut as usize]),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn file_shorter_than_claimed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, b"abc").unwrap();
        let file = File::open(&path).unwrap();
        let e = crc32_sparse(&file, 10).unwrap_err();
        // Never a silent CRC of 3 bytes plus 7 zeros of "hole".
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("3 bytes long"), "{e}");
    }
}
