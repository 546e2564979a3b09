//! Records of the whole CRC-32 of the large files a tree session stored
//! in the local storage directory, so a re-send of an unchanged tree
//! offers each file's CRC-32 (see `wire::CHECK_CRC`) without reading it.
//!
//! A record lives in `.bt-tree-parts/sums/`, named by a digest of the
//! file's path, and holds the stored file's size, mtime, inode and ctime
//! with the CRC-32. It is believed only while all four still match a
//! fresh `stat`: anything that rewrites the file on the server changes
//! its ctime, so a stale record is never used, only recomputed. Files
//! under [`MIN_SIZE`] get no record (reading one costs what reading the
//! record would). Records are an optimisation: any failure here only
//! means the file is read.
//!
//! Not for parts (`tree`), nor for S3 (its finished records have the
//! CRC-32 already).

use std::io::Write;
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::tree::RelPath;

/// The records' directory, inside the parts directory.
const SUMS_DIR: &str = "sums";
/// Files of at least this size get a record.
pub(super) const MIN_SIZE: u64 = 1 << 20;

/// The records of one storage directory.
pub(super) struct Sums {
    dir: Option<OwnedFd>,
}

impl Sums {
    /// The records under the parts directory `parts` (made if missing).
    pub(super) fn open(parts: &OwnedFd) -> Sums {
        let _ = rfs::mkdirat(parts, SUMS_DIR, Mode::from_raw_mode(0o700));
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Sums {
            dir: rfs::openat(parts, SUMS_DIR, flags, Mode::empty()).ok(),
        }
    }

    /// The recorded CRC-32 of the file at `path` whose `stat` is `st`,
    /// when a record matches it exactly.
    pub(super) fn get(&self, path: &RelPath, st: &rfs::Stat) -> Option<u32> {
        let dir = self
            .dir
            .as_ref()
            .filter(|_| st.st_size as u64 >= MIN_SIZE)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(dir, key(path).as_str(), flags, Mode::empty()).ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).ok()?;
        let (line, crc) = text.trim_end().rsplit_once(' ')?;
        (line == fingerprint(st)).then(|| u32::from_str_radix(crc, 16).ok())?
    }

    /// Records `crc` for the file at `path` whose `stat` is `st`.
    pub(super) fn put(&self, path: &RelPath, st: &rfs::Stat, crc: u32) {
        let Some(dir) = self.dir.as_ref() else {
            return;
        };
        if (st.st_size as u64) < MIN_SIZE {
            return;
        }
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW;
        let Ok(fd) = rfs::openat(
            dir,
            key(path).as_str(),
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) else {
            return;
        };
        let line = format!("{} {crc:08x}\n", fingerprint(st));
        // One write; a torn record does not parse and is recomputed.
        let _ = std::fs::File::from(fd).write_all(line.as_bytes());
    }
}

/// What must not have changed for a record to hold: size, mtime, inode,
/// ctime (ns).
// time_t and its nanoseconds are not i64 on every target.
#[allow(clippy::unnecessary_cast)]
fn fingerprint(st: &rfs::Stat) -> String {
    format!(
        "BTSUM1 {} {}.{} {} {}.{}",
        st.st_size,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
        st.st_ino as u64,
        st.st_ctime as i64,
        st.st_ctime_nsec as i64
    )
}

/// The record's name: a digest of the whole path.
fn key(path: &RelPath) -> String {
    let id = crate::v2::source_id(&[path.as_str().as_bytes()]);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.sum")
}
