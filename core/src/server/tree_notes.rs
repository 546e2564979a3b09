//! The name of the tree a held tree part belongs to, noted beside it
//! (`HEX.root` beside `HEX.part` in `.bt-tree-parts`) so that `list` can
//! say which tree uploads are in progress: parts are named by a digest of
//! their path, which cannot be read back.
//!
//! Only the tree's root name (the first component of a path that passed
//! the manifest's checks) is kept, never used as a path: the note's own
//! name is the server's digest. Written to a temporary name, synced and
//! renamed (a crash leaves the old note or the new, never half of one),
//! read back bounded and checked again. Noted only for files of more than
//! one data frame: a smaller file's part lives for one frame, and a note
//! per small file would cost a tree of many small files more than its
//! data.
//!
//! Not for the parts themselves (`server::tree`) nor the listing's
//! format (`server::list`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use crate::tree::RelPath;

/// Files of more than this many bytes have their tree's name noted.
pub(super) const NOTED_OVER: u64 = crate::tree::wire::MAX_DATA as u64;

/// Suffix of a note (beside the part's `.part`).
const NOTE: &str = ".root";

/// The note's file name for the part `part_key` (`HEX.part`).
fn note_name(part_key: &str) -> String {
    let stem = part_key.strip_suffix(".part").unwrap_or(part_key);
    format!("{stem}{NOTE}")
}

/// Notes `root` (a checked path's first component) beside the part
/// `part_key` in the parts directory `parts`. Best effort: a note that
/// cannot be written only leaves the part unnamed in listings.
pub(super) fn write(parts: &OwnedFd, part_key: &str, root: &str) {
    let name = note_name(part_key);
    let tmp = format!("{name}.tmp");
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rfs::openat(parts, tmp.as_str(), flags, Mode::from_raw_mode(0o600)) else {
        return;
    };
    let mut f = File::from(fd);
    let bytes = &root.as_bytes()[..root.len().min(crate::name::MAX_NAME_BYTES)];
    if f.write_all(bytes).and_then(|()| f.sync_all()).is_err()
        || rfs::renameat(parts, tmp.as_str(), parts, name.as_str()).is_err()
    {
        let _ = rfs::unlinkat(parts, tmp.as_str(), AtFlags::empty());
    }
}

/// Drops the note of `part_key` once its part is gone (stored, or
/// dropped): a part still there (another connection's, or a store that
/// failed) keeps its note.
pub(super) fn forget_if_gone(parts: &OwnedFd, part_key: &str) {
    if rfs::statat(parts, part_key, AtFlags::SYMLINK_NOFOLLOW).is_err() {
        let _ = rfs::unlinkat(parts, note_name(part_key).as_str(), AtFlags::empty());
    }
}

/// Whether a parts directory entry is a note (or its temporary), which
/// the part sweep handles with its part ([`sweep_orphan`]).
pub(super) fn is_note(file_name: &[u8]) -> bool {
    file_name.ends_with(NOTE.as_bytes()) || file_name.ends_with(b".root.tmp")
}

/// Removes the note `file_name` of `parts_dir` when its part is gone.
pub(super) fn sweep_orphan(parts_dir: &Path, file_name: &[u8]) {
    let Ok(name) = std::str::from_utf8(file_name) else {
        return;
    };
    let stem = name
        .strip_suffix(".root.tmp")
        .or_else(|| name.strip_suffix(NOTE))
        .unwrap_or(name);
    if !parts_dir.join(format!("{stem}.part")).exists() {
        let _ = std::fs::remove_file(parts_dir.join(name));
    }
}

/// The tree name noted beside the part `part_file_name` of `parts_dir`:
/// `None` without a note, or with one that is not a single valid path
/// component.
pub(crate) fn read(parts_dir: &Path, part_file_name: &[u8]) -> Option<String> {
    let part = std::str::from_utf8(part_file_name).ok()?;
    let path = parts_dir.join(note_name(part));
    let fd = rfs::open(
        &path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut bytes = Vec::new();
    File::from(fd)
        .take(crate::name::MAX_NAME_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    let root = String::from_utf8(bytes).ok()?;
    let rel = RelPath::from_wire(&root).ok()?;
    (rel.depth() == 1).then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_round_trips_and_a_bad_one_is_no_name() {
        let d = tempfile::tempdir().unwrap();
        let parts = rfs::open(d.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        write(&parts, "ab12.part", "photos 2024");
        assert_eq!(read(d.path(), b"ab12.part").as_deref(), Some("photos 2024"));
        assert!(!d.path().join("ab12.root.tmp").exists());
        for bad in [&b"a/b"[..], b"..", b"x\x1b[2J", b"\xff", &[b'n'; 300]] {
            std::fs::write(d.path().join("cd34.root"), bad).unwrap();
            assert_eq!(read(d.path(), b"cd34.part"), None, "{bad:?}");
        }
        // A note whose part is gone goes; one whose part is there stays.
        std::fs::write(d.path().join("ab12.part"), b"x").unwrap();
        forget_if_gone(&parts, "ab12.part");
        assert!(d.path().join("ab12.root").exists());
        std::fs::remove_file(d.path().join("ab12.part")).unwrap();
        forget_if_gone(&parts, "ab12.part");
        assert!(!d.path().join("ab12.root").exists());
        sweep_orphan(d.path(), b"cd34.root");
        assert!(!d.path().join("cd34.root").exists());
    }
}
