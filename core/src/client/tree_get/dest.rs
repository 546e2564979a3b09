//! The local side of a tree download: each entry of the server's manifest
//! checked by the [`ManifestValidator`] the server uses for incoming trees
//! (and kept under the name asked for), directories and symlinks made
//! under the destination with every directory on the way opened
//! `O_NOFOLLOW`, files looked up (here already, in the way, or to fetch),
//! and modes and mtimes applied.
//!
//! Not for the network (the parent module) nor for file data.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::tree::at::{dir_flags, mtime_of, storage, times, DirCursor, Side};
use crate::tree::{decode_page, Entry, EntryKind, ManifestValidator, RelPath, ValidatorConfig};
use crate::{Error, ErrorKind, Result};

/// A file of the page to download.
pub(super) struct Todo {
    /// Its index among the page's files (the server's numbering).
    pub(super) index: u32,
    pub(super) path: RelPath,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) mtime_ns: i64,
}

/// What the destination makes of one manifest entry.
pub(super) enum Step {
    /// A directory (made, or there already), or a new symlink.
    Made,
    /// A file or symlink here already.
    Held(RelPath),
    /// Something else is here: not replaced (the words say what).
    NotReplaced(RelPath, String),
    /// A file to download.
    Fetch(Todo),
}

/// A directory whose mode and mtime are set once its entries are in.
struct DirAttr {
    path: RelPath,
    mode: u32,
    mtime_ns: i64,
}

/// The local side of one remote's download: checks each entry of the
/// manifest and makes directories and symlinks under `dir`, never
/// following a symlink on the way.
pub(super) struct Dest {
    pub(super) dir: PathBuf,
    /// The destination, and the last parent directory opened.
    dirs: DirCursor,
    base: String,
    force: bool,
    validator: ManifestValidator,
    open: Vec<DirAttr>,
    closed: Vec<DirAttr>,
    files_in_page: u32,
}

fn refused(why: String) -> Error {
    Error::new(
        ErrorKind::Refused,
        format!("refused the server's manifest: {why}"),
    )
}

impl Dest {
    /// The destination `dir` (which exists) for the tree named `base`.
    pub(super) fn new(dir: &Path, base: &str, force: bool) -> Result<Dest> {
        let root = rfs::open(dir, dir_flags(), Mode::empty())
            .map_err(storage(format!("cannot open {}", dir.display())))?;
        Ok(Dest {
            dir: dir.to_path_buf(),
            dirs: DirCursor::new(root, Side::Local),
            base: base.to_owned(),
            force,
            validator: ManifestValidator::new(ValidatorConfig::default()),
            open: Vec::new(),
            closed: Vec::new(),
            files_in_page: 0,
        })
    }

    /// The steps of one manifest page, entry by entry; refuses the whole
    /// page (nothing more made) at the first entry that breaks a rule.
    pub(super) fn page(&mut self, bytes: &[u8]) -> Result<Vec<(Entry, Step)>> {
        let entries = decode_page(bytes).map_err(|e| refused(e.to_string()))?;
        self.files_in_page = 0;
        let mut steps = Vec::with_capacity(entries.len());
        for e in entries {
            let kept = e.clone();
            steps.push((kept, self.entry(e)?));
        }
        Ok(steps)
    }

    fn entry(&mut self, e: Entry) -> Result<Step> {
        let acc = self
            .validator
            .check(e)
            .map_err(|e| refused(e.to_string()))?;
        let path = acc.entry.path;
        if path.components().next() != Some(self.base.as_str()) {
            return Err(refused(format!(
                "\"{path}\" is not under \"{}\", the name asked for",
                self.base
            )));
        }
        while let Some(d) = self.open.last() {
            if d.path.is_ancestor_or_self(&path) {
                break;
            }
            if let Some(d) = self.open.pop() {
                self.closed.push(d);
            }
        }
        match acc.entry.kind {
            EntryKind::Dir { mode, mtime_ns } => {
                self.dirs.make_dir(&path)?;
                self.open.push(DirAttr {
                    path,
                    mode,
                    mtime_ns,
                });
                Ok(Step::Made)
            }
            EntryKind::Symlink { target } => self.make_link(path, &target),
            EntryKind::File {
                size,
                mode,
                mtime_ns,
                ..
            } => {
                let index = self.files_in_page;
                self.files_in_page += 1;
                self.file_state(Todo {
                    index,
                    path,
                    size,
                    mode,
                    mtime_ns,
                })
            }
        }
    }

    /// The directory holding `path`, opened without following symlinks.
    fn parent(&mut self, path: &RelPath) -> Result<&OwnedFd> {
        self.dirs.parent(path)
    }

    fn make_link(&mut self, path: RelPath, target: &str) -> Result<Step> {
        let name = path.file_name().to_owned();
        let force = self.force;
        let dir = self.parent(&path)?;
        let mut tried_replace = false;
        loop {
            match rfs::symlinkat(target, dir, name.as_str()) {
                Ok(()) => return Ok(Step::Made),
                Err(Errno::EXIST) => {
                    let same = rfs::readlinkat(dir, name.as_str(), Vec::new())
                        .is_ok_and(|t| t.as_bytes() == target.as_bytes());
                    if same {
                        return Ok(Step::Held(path));
                    }
                    let is_link = rfs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| {
                            rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Symlink
                        });
                    if force && is_link && !tried_replace {
                        tried_replace = true;
                        let _ = rfs::unlinkat(dir, name.as_str(), AtFlags::empty());
                        continue;
                    }
                    let why = "something different is here under this name; it is not replaced";
                    return Ok(Step::NotReplaced(path, why.into()));
                }
                Err(e) => return Err(storage(format!("cannot make the symlink {path}"))(e)),
            }
        }
    }

    /// Here already (same size and mtime), in the way (something else
    /// there, no `force`), or to download.
    fn file_state(&mut self, todo: Todo) -> Result<Step> {
        let name = todo.path.file_name().to_owned();
        let force = self.force;
        let dir = self.parent(&todo.path)?;
        let st = match rfs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Step::Fetch(todo)),
            Err(e) => return Err(storage(format!("cannot look at {}", todo.path))(e)),
        };
        let regular = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile;
        if regular && st.st_size as u64 == todo.size && mtime_of(&st) == todo.mtime_ns {
            return Ok(Step::Held(todo.path));
        }
        if regular && force {
            return Ok(Step::Fetch(todo));
        }
        let why = if regular {
            "a different file is here under this name (size or mtime differ); it is not replaced (--force replaces it)"
        } else {
            "something other than a file is here under this name; it is not replaced"
        };
        Ok(Step::NotReplaced(todo.path, why.into()))
    }

    /// A downloaded file's mode (permission bits only) and mtime.
    pub(super) fn set_attrs(&mut self, todo: &Todo) -> Result<()> {
        let dir = self.parent(&todo.path)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(dir, todo.path.file_name(), flags, Mode::empty())
            .map_err(storage(format!("cannot open {}", todo.path)))?;
        let _ = rfs::fchmod(&fd, Mode::from_raw_mode(todo.mode & 0o777));
        let _ = rfs::futimens(&fd, &times(todo.mtime_ns));
        Ok(())
    }

    /// The mode and mtime of `path`'s parent directory now (they may be
    /// the manifest's already), the directory made writable by its owner
    /// so a file fetched alone can land in it after the tree's session;
    /// [`Self::restore_parent`] puts them back.
    pub(super) fn hold_parent(&mut self, path: &RelPath) -> Result<(u32, i64)> {
        let dir = self.parent(path)?;
        let st =
            rfs::fstat(dir).map_err(storage(format!("cannot look at the directory of {path}")))?;
        let mode = st.st_mode & 0o7777;
        let mtime_ns = (st.st_mtime as i64)
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_mtime_nsec as i64);
        if mode & 0o300 != 0o300 {
            let _ = rfs::fchmod(dir, Mode::from_raw_mode(mode | 0o700));
        }
        Ok((mode, mtime_ns))
    }

    /// Puts back what [`Self::hold_parent`] saw.
    pub(super) fn restore_parent(&mut self, path: &RelPath, (mode, mtime_ns): (u32, i64)) {
        if let Ok(dir) = self.parent(path) {
            let _ = rfs::fchmod(dir, Mode::from_raw_mode(mode & 0o777));
            let _ = rfs::futimens(dir, &times(mtime_ns));
        }
    }

    /// Modes and mtimes of the directories the walk has left (deepest
    /// first), now that everything in them is in place; all of them at
    /// the end.
    pub(super) fn apply_closed(&mut self, all: bool) -> Result<()> {
        if all {
            while let Some(d) = self.open.pop() {
                self.closed.push(d);
            }
        }
        for d in std::mem::take(&mut self.closed) {
            let fd = self.dirs.open_dir(d.path.as_str())?;
            let _ = rfs::fchmod(&fd, Mode::from_raw_mode(d.mode & 0o777));
            let _ = rfs::futimens(&fd, &times(d.mtime_ns));
        }
        self.dirs.forget();
        Ok(())
    }
}
