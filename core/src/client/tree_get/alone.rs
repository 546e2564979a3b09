//! The files of a tree download that the server sends alone (a
//! [`crate::tree::wire::ALONE`] verdict: over what it sends among the tree's 1 MiB
//! blocks, see `docs/PROTOCOL.md`): each fetched once the tree's session
//! is over with a single-file get by path (blocks that grow with the
//! file), into its place in the tree, with a single-file get's
//! guarantees (verified against the server's CRC-32s, resumed from its
//! part beside it, renamed into place only when whole, a change on the
//! server detected), then its manifest mode and mtime.
//!
//! Not for the tree's own files (the parent module) nor the get itself
//! (`client::get`).

use super::{FileStatus, Session, Todo, TreeGetProgress};
use crate::client::{get, Control, Progress};
use crate::{Error, ErrorKind, Result};

/// What the get's progress said that the tree must know.
#[derive(Default)]
struct Seen {
    /// The server's size when it is not the manifest's (the file changed
    /// since it was listed): the get was stopped before any data.
    other_size: Option<u64>,
    /// The partial download here was of another version: started over.
    restarted: bool,
    /// The tree's caller cancelled.
    cancelled: bool,
}

impl Session<'_, '_> {
    /// Fetches `t` alone into its place; a failure the server or the file
    /// explains is counted, one of the connection or the local disk ends
    /// the attempt (the next resumes the file).
    pub(super) fn fetch_alone(&mut self, t: Todo) -> Result<()> {
        let remote = match self.remote.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{}", t.path),
            None => t.path.as_str().to_owned(),
        };
        let target = self.dest.dir.join(t.path.to_path_buf());
        // Its directory in the tree (not the user's -o directory, for a
        // remote that is the file itself) keeps the manifest's mtime.
        let parent = match t.path.parent_str() {
            Some(_) => Some(self.dest.hold_parent(&t.path)?),
            None => None,
        };
        let mut seen = Seen::default();
        let got = {
            let (path, size) = (t.path.as_str(), t.size);
            let progress = &mut *self.progress;
            let mut report = |p: &Progress| forward(p, path, size, &mut seen, progress);
            get::get_tree_file(&remote, &target, self.opts, &mut report)
        };
        let r = self.judge(&t, got, &seen);
        if let Some(p) = parent {
            self.dest.restore_parent(&t.path, p);
        }
        r
    }

    fn judge(&mut self, t: &Todo, got: Result<get::GetOutcome>, seen: &Seen) -> Result<()> {
        let o = match got {
            Ok(o) => o,
            Err(_) if seen.cancelled => return Err(cancelled()),
            Err(_) if seen.other_size.is_some() => {
                let now = seen.other_size.unwrap_or_default();
                let text = format!(
                    "it changed on the server since it was listed ({} bytes then, {now} now); get it again",
                    t.size
                );
                return self.done(&t.path, Some(t.size), FileStatus::Failed, &text);
            }
            Err(e) if counted(e.kind()) => {
                let text = crate::text::printable(&e.to_string()).into_owned();
                return self.done(&t.path, Some(t.size), FileStatus::Failed, &text);
            }
            Err(e) => return Err(e),
        };
        self.out.received += o.bytes_received;
        self.dest.set_attrs(t)?;
        let mut text = format!("downloaded alone and verified (CRC-32 {:08x})", o.crc32);
        if seen.restarted || o.restarted {
            text.push_str("; it changed on the server since the partial download here, which was started over");
        }
        self.done(&t.path, Some(t.size), FileStatus::Fetched, &text)
    }
}

/// The get's progress, as the tree's: bytes of this file; a server size
/// other than the manifest's stops the get.
fn forward(
    p: &Progress,
    path: &str,
    size: u64,
    seen: &mut Seen,
    progress: &mut super::Report<'_>,
) -> Control {
    let c = match *p {
        Progress::Connected { total, .. } if total != size => {
            seen.other_size = Some(total);
            return Control::Cancel;
        }
        Progress::Connected { offset, total, .. } => progress(&TreeGetProgress::File {
            path,
            done: offset,
            total,
        }),
        Progress::Sending { done, total } => progress(&TreeGetProgress::File { path, done, total }),
        Progress::ServerChanged { .. } => {
            seen.restarted = true;
            Control::Continue
        }
        _ => Control::Continue,
    };
    seen.cancelled |= c == Control::Cancel;
    c
}

/// Failures that are the file's (counted, the tree goes on), not the
/// connection's or the local disk's (which end the attempt).
fn counted(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Refused | ErrorKind::CrcMismatch | ErrorKind::Protocol | ErrorKind::InvalidInput
    )
}

fn cancelled() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "cancelled; what is here is kept for a resume",
    )
}
