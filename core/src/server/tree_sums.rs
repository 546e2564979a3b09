//! Records of the whole CRC-32 of the files a tree session stored in the
//! local storage directory, so a re-send of an unchanged tree offers each
//! file's CRC-32 (see `wire::CHECK_CRC`) without reading it.
//!
//! One record per stored directory (see [`crate::dirsums`]) lives in
//! `.bt-tree-parts/sums/`, named by a digest of the directory's path: a
//! re-send reads one small file per directory, not every file. An entry
//! is believed only while the stored file's size, mtime, inode and ctime
//! still match a fresh `stat`: anything that rewrites the file on the
//! server changes its ctime, so a stale entry is never used, only
//! recomputed. The records of the last few directories used are kept in
//! memory and written back (temporary file and rename, no fsync: a lost
//! record only means files are read again) when dropped to make room, at
//! the end of a page and at the end. Records are an
//! optimisation: any failure here only means the file is read.
//!
//! Not for parts (`tree`), nor for S3 (its finished records have the
//! CRC-32 already).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use crate::cache::SourceStamp;
use crate::dirsums::{DirSums, MAX_RECORD};
use crate::tree::RelPath;

/// The records' directory, inside the parts directory.
const SUMS_DIR: &str = "sums";

/// Records kept in memory at once: the walk comes back to a directory
/// after each of its subdirectories, so its ancestors' records stay
/// loaded instead of being written and read again at every turn.
const IN_MEMORY: usize = 16;

/// The records of one storage directory, the last few used in memory.
pub(super) struct Sums {
    dir: Option<OwnedFd>,
    /// Directories (their paths in the store) whose records are loaded,
    /// the most recently used last.
    loaded: Vec<(String, DirSums)>,
}

impl Sums {
    /// The records under the parts directory `parts` (made if missing).
    pub(super) fn open(parts: &OwnedFd) -> Sums {
        let _ = rfs::mkdirat(parts, SUMS_DIR, Mode::from_raw_mode(0o700));
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Sums {
            dir: rfs::openat(parts, SUMS_DIR, flags, Mode::empty()).ok(),
            loaded: Vec::new(),
        }
    }

    /// The recorded CRC-32 of the file at `path` whose `stat` is `st`,
    /// when its record matches it exactly.
    pub(super) fn get(&mut self, path: &RelPath, st: &rfs::Stat) -> Option<u32> {
        let name = path.file_name().to_owned();
        self.record_of(path)?.get(&name, &stamp(st))
    }

    /// Records `crc` for the file at `path` whose `stat` is `st`.
    pub(super) fn put(&mut self, path: &RelPath, st: &rfs::Stat, crc: u32) {
        let name = path.file_name().to_owned();
        if let Some(rec) = self.record_of(path) {
            rec.put(&name, stamp(st), crc);
        }
    }

    /// Records `crc`, just read from the file at `path` whose `stat`
    /// (taken before reading) is `st`, unless the file changed too
    /// recently for its ctime to prove it ([`crate::dirsums::settled`]).
    pub(super) fn put_read(&mut self, path: &RelPath, st: &rfs::Stat, crc: u32) {
        if crate::dirsums::settled(&stamp(st)) {
            self.put(path, st, crc);
        }
    }

    /// Writes the records in memory back where they changed.
    pub(super) fn flush(&mut self) {
        let Some(dir) = self.dir.as_ref() else {
            return;
        };
        for (key, rec) in self.loaded.iter_mut().filter(|(_, r)| r.is_dirty()) {
            write_record(dir, key, rec);
            rec.saved();
        }
    }

    /// The record of the directory holding `path`, loaded if needed (the
    /// least recently used one written back and dropped to make room).
    fn record_of(&mut self, path: &RelPath) -> Option<&mut DirSums> {
        let dir = self.dir.as_ref()?;
        let key = path.parent_str().unwrap_or("");
        match self.loaded.iter().position(|(k, _)| k == key) {
            Some(i) => {
                let hit = self.loaded.remove(i);
                self.loaded.push(hit);
            }
            None => {
                if self.loaded.len() >= IN_MEMORY {
                    let (old, rec) = self.loaded.remove(0);
                    if rec.is_dirty() {
                        write_record(dir, &old, &rec);
                    }
                }
                let rec = read_record(dir, key);
                self.loaded.push((key.to_owned(), rec));
            }
        }
        self.loaded.last_mut().map(|(_, rec)| rec)
    }
}

/// A `stat` as the records' stamp.
// time_t and its nanoseconds are not i64 on every target.
#[allow(clippy::unnecessary_cast)]
fn stamp(st: &rfs::Stat) -> SourceStamp {
    SourceStamp {
        size: st.st_size as u64,
        mtime: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as i64,
        ino: st.st_ino as u64,
        ctime: st.st_ctime as i64,
        ctime_nsec: st.st_ctime_nsec as i64,
    }
}

/// The record of the directory `key` (empty when missing, too large or
/// damaged).
fn read_record(dir: &OwnedFd, key: &str) -> DirSums {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rfs::openat(dir, name_of(key).as_str(), flags, Mode::empty()) else {
        return DirSums::default();
    };
    let mut bytes = Vec::new();
    let read = std::fs::File::from(fd)
        .take(MAX_RECORD + 1)
        .read_to_end(&mut bytes);
    match read {
        Ok(n) if n as u64 <= MAX_RECORD => DirSums::decode(&bytes, key.as_bytes()),
        _ => DirSums::default(),
    }
}

/// Writes `rec` as the record of `key`: a temporary file renamed over
/// the old record, so a reader sees the old or the new one, never half.
fn write_record(dir: &OwnedFd, key: &str, rec: &DirSums) {
    // Sessions run in threads of one process: a counter keeps their
    // temporary names apart.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = name_of(key);
    let tmp = format!(
        "{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rfs::openat(dir, tmp.as_str(), flags, Mode::from_raw_mode(0o600)) else {
        return;
    };
    let written = std::fs::File::from(fd).write_all(&rec.encode(key.as_bytes()));
    if written.is_err() || rfs::renameat(dir, tmp.as_str(), dir, name.as_str()).is_err() {
        let _ = rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
}

/// The record's name: a digest of the directory's path in the store.
fn name_of(key: &str) -> String {
    let id = crate::v2::source_id(&[b"dir:", key.as_bytes()]);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.dir")
}
