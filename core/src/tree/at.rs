//! A tree's directory on this machine, reached from its root's file
//! descriptor without following a symlink anywhere on the way: what the
//! server writes a received tree into and what a tree download writes
//! into, which must never be led outside their root.
//!
//! Not for what goes into the tree (the callers decide that) nor for
//! reading a local tree to send it ([`super::walk`]).

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::RelPath;
use crate::{Error, ErrorKind, Result};

/// How a directory is opened: read-only, a directory, not inherited.
pub(crate) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// An error of the local file system, as `what` went wrong.
pub(crate) fn storage(what: String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::io(ErrorKind::Storage, what, io::Error::from(e))
}

/// Whose tree it is, for the words of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The server's storage directory (a tree received).
    Server,
    /// The client's destination directory (a tree downloaded).
    Local,
}

impl Side {
    fn place(self) -> &'static str {
        match self {
            Side::Server => "on the server",
            Side::Local => "here",
        }
    }

    fn root(self) -> &'static str {
        match self {
            Side::Server => "the storage directory",
            Side::Local => "the destination directory",
        }
    }

    fn refused(self, why: String) -> Error {
        match self {
            Side::Server => Error::new(ErrorKind::Refused, format!("refused manifest: {why}")),
            Side::Local => Error::new(ErrorKind::Refused, why),
        }
    }
}

/// `rel` ("" for the root itself) under `root`, each component opened
/// with `O_NOFOLLOW`: a symlink anywhere on the way is refused.
pub(crate) fn open_dir(root: &OwnedFd, rel: &str, side: Side) -> Result<OwnedFd> {
    let mut fd = rfs::openat(root, ".", dir_flags(), Mode::empty())
        .map_err(storage(format!("cannot open {}", side.root())))?;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        fd =
            rfs::openat(&fd, comp, dir_flags() | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| {
                let place = side.place();
                let why =
                    format!("\"{rel}\" is not a directory {place} (symlinks are never followed)");
                Error::io(ErrorKind::Refused, why, io::Error::from(e))
            })?;
    }
    Ok(fd)
}

/// A file's mtime in nanoseconds since the epoch.
// time_t and its nanoseconds are not i64 on every target.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn mtime_of(st: &rfs::Stat) -> i64 {
    (st.st_mtime as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec as i64)
}

/// Access and modification time both set to `mtime_ns`.
pub(crate) fn times(mtime_ns: i64) -> Timestamps {
    let ts = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

/// The root of a tree being written, with the directory of the last entry
/// kept open (entries come directory by directory).
#[derive(Debug)]
pub(crate) struct DirCursor {
    root: OwnedFd,
    cached: Option<(String, OwnedFd)>,
    side: Side,
}

impl DirCursor {
    pub(crate) fn new(root: OwnedFd, side: Side) -> DirCursor {
        DirCursor {
            root,
            cached: None,
            side,
        }
    }

    /// `rel` under the root (see [`open_dir`]).
    pub(crate) fn open_dir(&self, rel: &str) -> Result<OwnedFd> {
        open_dir(&self.root, rel, self.side)
    }

    /// Forgets the directory kept open (after directories were changed).
    pub(crate) fn forget(&mut self) {
        self.cached = None;
    }

    /// The directory holding `path`, opened without following symlinks.
    pub(crate) fn parent(&mut self, path: &RelPath) -> Result<&OwnedFd> {
        let parent = path.parent_str().unwrap_or("");
        if self.cached.as_ref().is_some_and(|(p, _)| p == parent) {
            return Ok(&self.cached.as_ref().expect("checked").1);
        }
        let fd = open_dir(&self.root, parent, self.side)?;
        Ok(&self.cached.insert((parent.to_owned(), fd)).1)
    }

    /// Makes the directory `path` (writable by its owner until the
    /// caller sets its mode at the end); one there from an earlier run is
    /// made writable again, anything else there is refused: nothing is
    /// replaced.
    pub(crate) fn make_dir(&mut self, path: &RelPath) -> Result<()> {
        let side = self.side;
        let name = path.file_name().to_owned();
        let dir = self.parent(path)?;
        match rfs::mkdirat(dir, name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                let flags = dir_flags() | OFlags::NOFOLLOW;
                let fd = rfs::openat(dir, name.as_str(), flags, Mode::empty()).map_err(|_| {
                    let what = if side == Side::Server { "stored" } else { "here" };
                    side.refused(format!(
                        "\"{path}\" is {what} as something other than a directory; nothing is replaced"
                    ))
                })?;
                let st = rfs::fstat(&fd).map_err(storage(format!("cannot stat {path}")))?;
                rfs::fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o777) | 0o700))
                    .map_err(storage(format!("cannot make {path} writable")))
            }
            Err(e) => Err(storage(format!("cannot make the directory {path}"))(e)),
        }
    }
}
