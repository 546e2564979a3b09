//! Listing a local file or directory as manifest entries, lazily, in the
//! manifest's sorted depth-first order.
//!
//! A directory is listed under its base name (like `scp -r dir` or `rsync
//! -r dir` without a trailing slash): walking `/data/photos` yields
//! `photos`, `photos/2024`, `photos/2024/a.jpg`, ... Symlinks are never
//! followed below the root (`lstat`); a link that stays inside the tree is
//! an entry, others are reported as skipped with the reason, as are
//! special files (fifos, sockets, devices) and names a peer would refuse
//! (not UTF-8, control characters). Memory is the sorted names of the
//! directories on the current path, never the whole tree.
//!
//! It is not for reading file data, and it does not detect a tree that
//! changes during the walk (the sender checks size and mtime when it reads).

use super::manifest::{symlink_stays_inside, Entry, EntryKind};
use super::path::RelPath;
use crate::sparse::looks_sparse;
use crate::{Error, ErrorKind, Result};
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The mode bits the walker keeps: permissions, never setuid, setgid or
/// sticky (a copied set-id program would be a gift to whoever runs it).
pub const KEPT_MODE_BITS: u32 = 0o777;

/// One step of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    /// An entry of the manifest, and the local path it was found at.
    Entry {
        /// The entry (its path starts with the root's base name).
        entry: Entry,
        /// Where it is on this machine.
        source: PathBuf,
        /// Its size, times and inode as the walk saw them (what the
        /// client's checksum records are keyed by).
        stamp: crate::cache::SourceStamp,
    },
    /// Something left out, and why in words (for a warning).
    Skipped {
        /// Where it is on this machine.
        source: PathBuf,
        /// Why it was left out.
        reason: String,
    },
}

struct Level {
    dir: PathBuf,
    rel: RelPath,
    /// The directory's names in byte order: the manifest's order for
    /// siblings.
    names: Vec<OsString>,
    next: usize,
}

/// A lazy, sorted, depth-first walk of one local file or directory.
pub struct Walker {
    root: Option<(PathBuf, RelPath)>,
    stack: Vec<Level>,
}

impl std::fmt::Debug for Walker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walker")
            .field("open_levels", &self.stack.len())
            .finish_non_exhaustive()
    }
}

impl Walker {
    /// A walk of `root` (a file or a directory; a symlink given as the root
    /// itself is followed, since the user named it), listed under its base
    /// name. Fails if the root has no usable name (`/`, a name a peer would
    /// refuse) or cannot be read.
    pub fn new(root: &Path) -> Result<Walker> {
        let base = base_name(root)?;
        let rel = RelPath::from_wire(&base).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot send {}: {e}", root.display()),
            )
        })?;
        std::fs::metadata(root).map_err(|e| {
            Error::io(
                ErrorKind::SourceFile,
                format!("cannot read {}", root.display()),
                e,
            )
        })?;
        Ok(Walker {
            root: Some((root.to_path_buf(), rel)),
            stack: Vec::new(),
        })
    }

    /// Walks of several roots (`client PATH...`), in the order their base
    /// names take in a manifest, so that chaining them yields one sorted
    /// manifest. Refuses ([`ErrorKind::InvalidInput`]) two roots with the
    /// same base name (`a/x` and `b/x`), which would collide on the peer.
    pub fn for_roots(roots: &[PathBuf]) -> Result<Vec<Walker>> {
        let mut walkers = roots
            .iter()
            .map(|r| Walker::new(r))
            .collect::<Result<Vec<_>>>()?;
        walkers.sort_by(|a, b| a.base().cmp(&b.base()));
        for pair in walkers.windows(2) {
            if pair[0].base() == pair[1].base() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "two of the paths given would both be stored as \"{}\"; rename one or send them separately",
                        pair[0].base().map_or("", RelPath::as_str)
                    ),
                ));
            }
        }
        Ok(walkers)
    }

    /// The name the root is listed under (`None` once the walk started).
    fn base(&self) -> Option<&RelPath> {
        self.root.as_ref().map(|(_, rel)| rel)
    }

    /// Directories currently open: the walk's memory is their names.
    pub fn open_levels(&self) -> usize {
        self.stack.len()
    }

    fn visit_root(&mut self, source: PathBuf, rel: RelPath) -> Walked {
        match std::fs::metadata(&source) {
            Ok(meta) => self.visit(source, rel, &meta),
            Err(e) => skipped(source, format!("cannot read it: {e}")),
        }
    }

    /// The entry for `source` (already `lstat`ed, or `stat`ed for the root),
    /// opening it as the next level if it is a directory.
    fn visit(&mut self, source: PathBuf, rel: RelPath, meta: &Metadata) -> Walked {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            let names = match sorted_names(&source) {
                Ok(names) => names,
                Err(e) => return skipped(source, format!("cannot list the directory: {e}")),
            };
            self.stack.push(Level {
                dir: source.clone(),
                rel: rel.clone(),
                names,
                next: 0,
            });
            EntryKind::Dir {
                mode: meta.mode() & KEPT_MODE_BITS,
                mtime_ns: mtime_ns(meta),
            }
        } else if ft.is_file() {
            EntryKind::File {
                size: meta.len(),
                mode: meta.mode() & KEPT_MODE_BITS,
                mtime_ns: mtime_ns(meta),
                sparse: looks_sparse(meta),
            }
        } else if ft.is_symlink() {
            match symlink_kind(&source, &rel) {
                Ok(kind) => kind,
                Err(reason) => return skipped(source, reason),
            }
        } else {
            let reason =
                "it is not a regular file, directory or symlink (a fifo, socket or device)";
            return skipped(source, reason.to_owned());
        };
        Walked::Entry {
            entry: Entry { path: rel, kind },
            source,
            stamp: crate::cache::SourceStamp::of(meta),
        }
    }
}

impl Iterator for Walker {
    type Item = Walked;

    fn next(&mut self) -> Option<Walked> {
        if let Some((source, rel)) = self.root.take() {
            return Some(self.visit_root(source, rel));
        }
        loop {
            let level = self.stack.last_mut()?;
            let Some(name) = level.names.get(level.next).cloned() else {
                self.stack.pop();
                continue;
            };
            level.next += 1;
            let source = level.dir.join(&name);
            let rel = match name.to_str().map(|n| level.rel.join(n)) {
                Some(Ok(rel)) => rel,
                Some(Err(e)) => return Some(skipped(source, e.to_string())),
                None => return Some(skipped(source, "its name is not UTF-8".to_owned())),
            };
            return Some(match std::fs::symlink_metadata(&source) {
                Ok(meta) => self.visit(source, rel, &meta),
                Err(e) => skipped(source, format!("cannot read it: {e}")),
            });
        }
    }
}

fn skipped(source: PathBuf, reason: String) -> Walked {
    Walked::Skipped { source, reason }
}

fn base_name(root: &Path) -> Result<String> {
    let named = match root.file_name() {
        Some(name) => Some(name.to_os_string()),
        // ".", ".." and "dir/.." have no name of their own: use the real one.
        None => std::fs::canonicalize(root)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string())),
    };
    let Some(name) = named else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "cannot send {}: it has no name to store it under",
                root.display()
            ),
        ));
    };
    name.into_string().map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("cannot send {}: its name is not UTF-8", root.display()),
        )
    })
}

fn sorted_names(dir: &Path) -> std::io::Result<Vec<OsString>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn symlink_kind(source: &Path, rel: &RelPath) -> std::result::Result<EntryKind, String> {
    let target = std::fs::read_link(source).map_err(|e| format!("cannot read the link: {e}"))?;
    let target = target
        .into_os_string()
        .into_string()
        .map_err(|_| "its target is not UTF-8".to_owned())?;
    symlink_stays_inside(rel, &target).map_err(|e| e.to_string())?;
    Ok(EntryKind::Symlink { target })
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

#[cfg(test)]
mod tests;
