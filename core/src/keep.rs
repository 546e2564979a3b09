//! What the server keeps about files it has finished storing, and how it
//! never silently replaces one.
//!
//! - The finished record `DIR/.bigtransfer/KEY.done` (KEY as for held parts,
//!   see [`crate::store::key_of`]): the stored file's size, whole CRC-32,
//!   block size and block CRC-32s, and the file's stamp (inode, size, mtime,
//!   ctime) when it was stored. It is believed only while the file's stamp
//!   is unchanged, so a file changed behind the server's back is never
//!   vouched for ([`crate::store::Store::finished`]). It lets a re-send of
//!   the same content cost no data bytes, and serves as the reference for
//!   downloads and listings without re-reading gigabytes.
//! - Numbered versions: a different content stored under an existing name
//!   keeps the old file as `NAME.~N~` beside it (like GNU `cp
//!   --backup=numbered`), made by a hard link that never overwrites an
//!   existing version, before the new file is renamed over the name (so the
//!   name is never missing).
//!
//! Not for held parts (see [`crate::part`]) nor for the wire.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

/// A stored file's identity on disk: if any of it changed, something other
/// than the server wrote, renamed or replaced the file since it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Status-change time, seconds and nanoseconds.
    pub ctime: (i64, u32),
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
        }
    }
}

/// What the server knows of a file it stored (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRecord {
    /// The file's size.
    pub size: u64,
    /// The whole file's CRC-32.
    pub crc32: u32,
    /// The block size of `crcs`; 0 when the upload had no blocks (protocol 1).
    pub block: u64,
    /// CRC-32 of each block, in order (empty for protocol 1).
    pub crcs: Vec<u32>,
    /// The stored file's stamp when it was stored.
    pub stamp: FileStamp,
}

const DONE_MAGIC: &[u8; 8] = b"BTDONE01";
const DONE_HEAD: usize = 8 + 8 + 4 + 8 + 8 + 8 + 8 + 8 + 4 + 8 + 4;

/// The record's bytes: a fixed head, the block CRC-32s, and a CRC-32 of
/// everything before it (a torn or damaged record is never believed).
pub fn encode_finished(r: &FinishedRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(DONE_HEAD + 4 * r.crcs.len() + 4);
    v.extend_from_slice(DONE_MAGIC);
    v.extend_from_slice(&r.size.to_be_bytes());
    v.extend_from_slice(&r.crc32.to_be_bytes());
    v.extend_from_slice(&r.block.to_be_bytes());
    v.extend_from_slice(&(r.crcs.len() as u64).to_be_bytes());
    v.extend_from_slice(&r.stamp.ino.to_be_bytes());
    v.extend_from_slice(&r.stamp.size.to_be_bytes());
    v.extend_from_slice(&r.stamp.mtime.0.to_be_bytes());
    v.extend_from_slice(&r.stamp.mtime.1.to_be_bytes());
    v.extend_from_slice(&r.stamp.ctime.0.to_be_bytes());
    v.extend_from_slice(&r.stamp.ctime.1.to_be_bytes());
    for c in &r.crcs {
        v.extend_from_slice(&c.to_be_bytes());
    }
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// Decodes a finished record; `None` for anything damaged or inconsistent
/// (a plain function over bytes, so a hostile record can be tested).
pub fn decode_finished(b: &[u8]) -> Option<FinishedRecord> {
    if b.len() < DONE_HEAD + 4 || &b[..8] != DONE_MAGIC {
        return None;
    }
    let body = b.len() - 4;
    if crc32fast::hash(&b[..body]) != u32_at(b, body) {
        return None;
    }
    let (size, crc32, block, n) = (u64_at(b, 8), u32_at(b, 16), u64_at(b, 20), u64_at(b, 28));
    if (body - DONE_HEAD) as u64 != n.checked_mul(4)? {
        return None;
    }
    let blocks_fit = match block {
        0 => n == 0,
        _ => n == size.div_ceil(block),
    };
    if !blocks_fit {
        return None;
    }
    let stamp = FileStamp {
        ino: u64_at(b, 36),
        size: u64_at(b, 44),
        mtime: (u64_at(b, 52) as i64, u32_at(b, 60)),
        ctime: (u64_at(b, 64) as i64, u32_at(b, 72)),
    };
    let crcs = b[DONE_HEAD..body]
        .chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .collect();
    Some(FinishedRecord {
        size,
        crc32,
        block,
        crcs,
        stamp,
    })
}

/// The name of version `n` of `name`.
pub fn version_name(name: &str, n: u64) -> String {
    format!("{name}.~{n}~")
}

/// Keeps the file `name` in `dir` as its next free numbered version (a
/// hard link: the existing file is not touched, an existing version never
/// overwritten) and returns the version's name. The caller then renames the
/// new file over `name`.
pub(crate) fn keep_version(dir: &File, name: &str) -> io::Result<String> {
    let mut n = next_version_hint(dir, name);
    loop {
        let v = version_name(name, n);
        if v.len() > crate::name::MAX_NAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the name is too long to keep a numbered version ({v})"),
            ));
        }
        match crate::sys::link_at(dir, name, &v) {
            Ok(()) => return Ok(v),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// One more than the highest version of `name` found in the directory, so
/// that versions keep increasing even if older ones were deleted.
fn next_version_hint(dir: &File, name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", fd_of(dir))) else {
        return 1;
    };
    let prefix = format!("{name}.~");
    let highest = entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name();
            let s = f.to_str()?;
            s.strip_prefix(&prefix)?
                .strip_suffix('~')?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    highest.saturating_add(1)
}

fn fd_of(f: &File) -> i32 {
    use std::os::fd::AsRawFd;
    f.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> FinishedRecord {
        FinishedRecord {
            size: 3 * 1024 + 5,
            crc32: 0xDEAD_BEEF,
            block: 1024,
            crcs: vec![1, 2, 3, 4],
            stamp: FileStamp {
                ino: 9,
                size: 3 * 1024 + 5,
                mtime: (1_700_000_000, 5),
                ctime: (-1, 999_999_999),
            },
        }
    }

    #[test]
    fn finished_records_round_trip_and_damage_is_refused() {
        let r = rec();
        let b = encode_finished(&r);
        assert_eq!(decode_finished(&b), Some(r.clone()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode_finished(&bad), None, "byte {i} flipped");
        }
        assert_eq!(decode_finished(&b[..b.len() - 1]), None);
        // A block count that does not fit the size is refused even with a
        // good checksum.
        let mut odd = r.clone();
        odd.crcs.pop();
        assert_eq!(decode_finished(&encode_finished(&odd)), None);
        let legacy = FinishedRecord {
            block: 0,
            crcs: vec![],
            ..r
        };
        assert_eq!(
            decode_finished(&encode_finished(&legacy)),
            Some(legacy.clone())
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_finished(&bytes);
        }
    }

    #[test]
    fn versions_count_up_and_never_overwrite() {
        let d = std::env::temp_dir().join(format!("bt-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let dir = File::open(&d).unwrap();
        std::fs::write(d.join("a"), b"one").unwrap();
        assert_eq!(keep_version(&dir, "a").unwrap(), "a.~1~");
        std::fs::write(d.join("a.~5~"), b"five").unwrap();
        assert_eq!(keep_version(&dir, "a").unwrap(), "a.~6~");
        assert_eq!(std::fs::read(d.join("a.~1~")).unwrap(), b"one");
        assert_eq!(std::fs::read(d.join("a.~5~")).unwrap(), b"five");
        assert_eq!(version_name("x", 12), "x.~12~");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
