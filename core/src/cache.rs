//! The client's cache of block checksums, so a resumed upload does not read
//! again what it already hashed.
//!
//! One small file per source file under the cache directory, keyed by the
//! file's canonical path and valid only while its size, modification time,
//! status-change time (ctime) and inode are unchanged. The ctime matters:
//! a file edited in place whose mtime is then restored (`touch -r`,
//! `cp -p`, tar) keeps size, mtime and inode, but no user call can set its
//! ctime back. Writes are atomic (temporary file + rename) and
//! every read is checked, so a damaged or stale entry is ignored, never
//! trusted. Not for anything the server keeps.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Format 02 added the ctime to the stamp; entries of format 01 are
/// ignored (their stamp cannot prove the file unchanged).
const MAGIC: &[u8; 8] = b"BTSUMS02";

/// What is known of a source file's checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    /// Block size of `blocks`.
    pub block: u64,
    /// CRC-32 of the first `blocks.len()` blocks.
    pub blocks: Vec<u32>,
    /// CRC-32 of the whole file, once known.
    pub whole: Option<u32>,
}

/// Identity of a source file version: size, mtime and ctime (ns) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
    /// Inode number.
    pub ino: u64,
    /// Status-change time, seconds: moves on every write or metadata
    /// change, and cannot be set back, so an edit whose mtime was restored
    /// still shows.
    pub ctime: i64,
    /// Status-change time, nanoseconds.
    pub ctime_nsec: i64,
}

impl SourceStamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &fs::Metadata) -> SourceStamp {
        SourceStamp {
            size: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct SumCache {
    dir: PathBuf,
}

impl SumCache {
    /// The default location: `$BIGTRANSFER_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/bigtransfer`, else `~/.cache/bigtransfer`.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("BIGTRANSFER_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("bigtransfer")))
            .or_else(|| env("HOME").map(|h| h.join(".cache").join("bigtransfer")))
    }

    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> SumCache {
        SumCache { dir: dir.into() }
    }

    fn entry_path(&self, canonical: &Path) -> PathBuf {
        let key = crate::store::sha256_hex(canonical.as_os_str().as_bytes());
        self.dir.join(format!("{key}.sums"))
    }

    /// The cached checksums of `path` if they belong to this exact version
    /// of it.
    pub fn load(&self, path: &Path, stamp: SourceStamp) -> Option<Sums> {
        let canonical = fs::canonicalize(path).ok()?;
        let bytes = fs::read(self.entry_path(&canonical)).ok()?;
        decode(&bytes, canonical.as_os_str().as_bytes(), stamp)
    }

    /// The per-directory CRC-32 record of the directory `dir` (see
    /// [`crate::dirsums`]) with `dir`'s canonical path (the key to store
    /// it back under); None when `dir` cannot be resolved.
    pub fn load_dir(&self, dir: &Path) -> Option<(PathBuf, crate::dirsums::DirSums)> {
        use std::io::Read;
        let canonical = fs::canonicalize(dir).ok()?;
        let key = canonical.as_os_str().as_bytes();
        let mut bytes = Vec::new();
        let limit = crate::dirsums::MAX_RECORD;
        let read = fs::File::open(self.dir_entry_path(&canonical))
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes));
        let rec = match read {
            Ok(n) if n as u64 <= limit => crate::dirsums::DirSums::decode(&bytes, key),
            _ => crate::dirsums::DirSums::default(),
        };
        Some((canonical, rec))
    }

    /// Writes the record of the directory whose canonical path is
    /// `canonical` (atomically; best effort).
    pub fn store_dir(&self, canonical: &Path, rec: &crate::dirsums::DirSums) {
        if fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let target = self.dir_entry_path(canonical);
        let tmp = target.with_extension(format!("tmp{}", std::process::id()));
        let bytes = rec.encode(canonical.as_os_str().as_bytes());
        if fs::write(&tmp, bytes).is_ok() && fs::rename(&tmp, &target).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    fn dir_entry_path(&self, canonical: &Path) -> PathBuf {
        let mut keyed = b"dir:".to_vec();
        keyed.extend_from_slice(canonical.as_os_str().as_bytes());
        let key = crate::store::sha256_hex(&keyed);
        self.dir.join(format!("{key}.dir"))
    }

    /// Records the checksums of `path` (best effort: a cache that cannot be
    /// written only costs time later).
    pub fn store(&self, path: &Path, stamp: SourceStamp, sums: &Sums) {
        let Ok(canonical) = fs::canonicalize(path) else {
            return;
        };
        if fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let target = self.entry_path(&canonical);
        let tmp = target.with_extension(format!("tmp{}", std::process::id()));
        let bytes = encode(canonical.as_os_str().as_bytes(), stamp, sums);
        if fs::write(&tmp, bytes).is_ok() && fs::rename(&tmp, &target).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// Encodes a cache entry (plain function over bytes, for tests).
pub fn encode(path: &[u8], st: SourceStamp, s: &Sums) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&(path.len() as u32).to_be_bytes());
    v.extend_from_slice(path);
    for x in [
        st.size,
        st.mtime as u64,
        st.mtime_nsec as u64,
        st.ino,
        st.ctime as u64,
        st.ctime_nsec as u64,
        s.block,
        s.blocks.len() as u64,
    ] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    for c in &s.blocks {
        v.extend_from_slice(&c.to_be_bytes());
    }
    v.push(u8::from(s.whole.is_some()));
    v.extend_from_slice(&s.whole.unwrap_or(0).to_be_bytes());
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

/// Decodes a cache entry, returning it only if it is intact and for this
/// path and stamp.
pub fn decode(bytes: &[u8], path: &[u8], st: SourceStamp) -> Option<Sums> {
    let body = bytes.len().checked_sub(4)?;
    if crc32fast::hash(&bytes[..body]) != u32::from_be_bytes(bytes[body..].try_into().ok()?) {
        return None;
    }
    let mut r = &bytes[..body];
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        r = b;
        Some(a)
    };
    if take(8)? != MAGIC {
        return None;
    }
    let plen = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    if take(plen)? != path {
        return None;
    }
    let mut u = || -> Option<u64> { Some(u64::from_be_bytes(take(8)?.try_into().ok()?)) };
    let (size, mtime, nsec, ino) = (u()?, u()? as i64, u()? as i64, u()?);
    let (ctime, ctime_nsec, block, count) = (u()? as i64, u()? as i64, u()?, u()?);
    if (SourceStamp {
        size,
        mtime,
        mtime_nsec: nsec,
        ino,
        ctime,
        ctime_nsec,
    }) != st
        || !block.is_power_of_two()
        || !(crate::v2::MIN_BLOCK..=crate::v2::MAX_BLOCK).contains(&block)
        || count > size.div_ceil(block)
        // Never allocate for more entries than the bytes could hold.
        || count.checked_mul(4).is_none_or(|n| n > bytes.len() as u64)
    {
        return None;
    }
    let mut blocks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        blocks.push(u32::from_be_bytes(take(4)?.try_into().ok()?));
    }
    let known = take(1)?[0] == 1;
    let whole = u32::from_be_bytes(take(4)?.try_into().ok()?);
    Some(Sums {
        block,
        blocks,
        whole: known.then_some(whole),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_staleness_and_damage() {
        let st = SourceStamp {
            size: 10 << 20,
            mtime: 5,
            mtime_nsec: 6,
            ino: 7,
            ctime: 8,
            ctime_nsec: 9,
        };
        let s = Sums {
            block: 1 << 20,
            blocks: vec![1, 2, 3],
            whole: Some(9),
        };
        let e = encode(b"/a/b", st, &s);
        assert_eq!(decode(&e, b"/a/b", st), Some(s.clone()));
        assert_eq!(decode(&e, b"/a/c", st), None);
        assert_eq!(
            decode(
                &e,
                b"/a/b",
                SourceStamp {
                    mtime_nsec: 0,
                    ..st
                }
            ),
            None
        );
        // An edit whose mtime was put back still moves the ctime.
        for other in [
            SourceStamp { ctime: 80, ..st },
            SourceStamp {
                ctime_nsec: 90,
                ..st
            },
        ] {
            assert_eq!(decode(&e, b"/a/b", other), None);
        }
        // An entry of the format before ctime (BTSUMS01) is ignored.
        let mut old = e.clone();
        old[..8].copy_from_slice(b"BTSUMS01");
        let body = old.len() - 4;
        let crc = crc32fast::hash(&old[..body]);
        old[body..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode(&old, b"/a/b", st), None);
        let mut bad = e.clone();
        bad[20] ^= 1;
        assert_eq!(decode(&bad, b"/a/b", st), None);
        assert_eq!(decode(&e[..e.len() - 1], b"/a/b", st), None);
    }

    #[test]
    fn a_hostile_count_allocates_nothing() {
        // Found by fuzzing: a checksummed entry claiming 2^36 blocks of one
        // byte made the client allocate 256 GiB and abort.
        let st = SourceStamp {
            size: 1 << 36,
            mtime: 0,
            mtime_nsec: 0,
            ino: 0,
            ctime: 0,
            ctime_nsec: 0,
        };
        for (block, count) in [(1u64, 1u64 << 36), (1 << 20, 1 << 16), (u64::MAX, 1)] {
            let mut e = encode(
                b"/p",
                st,
                &Sums {
                    block: 1 << 20,
                    blocks: vec![],
                    whole: None,
                },
            );
            // Rewrite block and count, then fix up the checksum.
            let at = 8 + 4 + 2 + 8 * 6;
            e[at..at + 8].copy_from_slice(&block.to_be_bytes());
            e[at + 8..at + 16].copy_from_slice(&count.to_be_bytes());
            let body = e.len() - 4;
            let crc = crc32fast::hash(&e[..body]);
            e[body..].copy_from_slice(&crc.to_be_bytes());
            assert_eq!(decode(&e, b"/p", st), None, "block {block} count {count}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&b, b"/x", SourceStamp { size: 1, mtime: 0, mtime_nsec: 0, ino: 0, ctime: 0, ctime_nsec: 0 });
        }
    }
}
