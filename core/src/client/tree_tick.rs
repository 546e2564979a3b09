//! One shape for the progress of a tree send or download, for the C and
//! Python fronts: the file being moved (its name, its bytes done and
//! total) and both overall counts (files done of listed, bytes done of
//! listed), updated from either side's events.
//!
//! Not for the CLI (which prints the events themselves) nor for deciding
//! anything about the transfer.

use super::tree::TreeProgress;
use super::tree_get::TreeGetProgress;

/// Where a tree transfer is, after the last event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeTick {
    /// The file last moved (its path in the tree).
    pub path: String,
    /// Bytes of it done.
    pub file_done: u64,
    /// Its size.
    pub file_total: u64,
    /// Files done with (sent and verified, held, failed or not stored).
    pub files_done: u64,
    /// Files listed so far (the manifest is paged: this grows).
    pub files_total: u64,
    /// Bytes moved (a send: sent this run; a download: of the files done).
    pub bytes_done: u64,
    /// Bytes of the files listed so far.
    pub bytes_total: u64,
}

impl TreeTick {
    /// Takes a send's event; whether it is worth reporting.
    pub fn on_send(&mut self, p: &TreeProgress) -> bool {
        match p {
            TreeProgress::File { path, done, total } => self.file(path, *done, *total),
            TreeProgress::Verdict { path, .. } => {
                self.path = (*path).to_owned();
                self.file_done = self.file_total;
                self.files_done += 1;
            }
            TreeProgress::Overall {
                sent, files, bytes, ..
            } => {
                self.bytes_done = *sent;
                self.files_total = *files;
                self.bytes_total = *bytes;
            }
            _ => return false,
        }
        true
    }

    /// Takes a download's event; whether it is worth reporting.
    pub fn on_get(&mut self, p: &TreeGetProgress) -> bool {
        match p {
            TreeGetProgress::File { path, done, total } => self.file(path, *done, *total),
            TreeGetProgress::Done { path, .. } => {
                self.path = (*path).to_owned();
                self.file_done = self.file_total;
                // The counts follow in the Overall event just after.
                return false;
            }
            TreeGetProgress::Overall {
                files_done,
                files_listed,
                bytes_done,
                bytes_listed,
            } => {
                self.files_done = *files_done;
                self.files_total = *files_listed;
                self.bytes_done = *bytes_done;
                self.bytes_total = *bytes_listed;
            }
            _ => return false,
        }
        true
    }

    fn file(&mut self, path: &str, done: u64, total: u64) {
        if self.path != path {
            self.path = path.to_owned();
        }
        self.file_done = done;
        self.file_total = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_reports_the_file_and_both_counts() {
        let mut t = TreeTick::default();
        assert!(t.on_get(&TreeGetProgress::File {
            path: "t/a",
            done: 5,
            total: 10
        }));
        assert_eq!((t.path.as_str(), t.file_done, t.file_total), ("t/a", 5, 10));
        assert!(t.on_get(&TreeGetProgress::Overall {
            files_done: 1,
            files_listed: 3,
            bytes_done: 10,
            bytes_listed: 30
        }));
        assert_eq!(
            (t.files_done, t.files_total, t.bytes_done, t.bytes_total),
            (1, 3, 10, 30)
        );
        let mut s = TreeTick::default();
        assert!(s.on_send(&TreeProgress::Verdict {
            path: "t/b",
            ok: true,
            text: "stored and verified"
        }));
        assert_eq!((s.path.as_str(), s.files_done), ("t/b", 1));
    }
}
