//! What the object store holds, for a list request (feature `s3`), one
//! page at a time: the stored objects (`ListObjectsV2` with the `/`
//! delimiter, so the server's own records under `.bigtransfer-*/` are
//! skipped by the store, followed by continuation tokens), each with the
//! store's own whole CRC-32 (`HeadObject`, a few at once), then the
//! uploads in progress from their state objects, with their progress.
//! Memory holds one page of the store's listing, never the whole.
//!
//! Asked for directories, the store's common prefixes of the same pages
//! (what the `/` delimiter sums up) become directory entries (not counted:
//! that would list every object under them; `mtime` 0: a prefix has
//! none), and the uploads in progress are listed without the delimiter,
//! so the files of tree uploads (state objects named by their paths) are
//! listed with their paths and progress.
//!
//! Not for the wire format ([`crate::listing`]) nor for which entries a
//! listing of one name keeps (the server's).

use std::collections::VecDeque;
use std::sync::Arc;

use super::finished::DONE_DIR;
use super::storage::{full_object_crc, upload_entry};
use super::{Client, S3Error, S3Storage, STATE_DIR};
use crate::listing::{EntryKind, ListEntry};

/// `HeadObject` requests in flight at once for one page.
const HEADS_AT_ONCE: usize = 8;

/// Where a listing is.
enum Phase {
    Objects,
    Uploads,
    Done,
}

/// A listing of the store under way.
pub struct S3Lister {
    client: Arc<Client>,
    /// The name listed (its objects, versions and upload), or everything.
    prefix: String,
    phase: Phase,
    token: Option<String>,
    ready: VecDeque<ListEntry>,
    /// Whether directories (common prefixes) and tree uploads are listed.
    dirs: bool,
}

impl S3Storage {
    /// A listing of what the store holds whose name starts with `prefix`;
    /// with `dirs`, directories and tree uploads too (see the module).
    pub fn lister(&self, prefix: &str, dirs: bool) -> S3Lister {
        S3Lister {
            client: self.client_arc(),
            prefix: prefix.to_string(),
            phase: Phase::Objects,
            token: None,
            ready: VecDeque::new(),
            dirs,
        }
    }
}

impl S3Lister {
    /// The next entry, `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<ListEntry>, S3Error> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            match self.phase {
                Phase::Objects => self.objects_page()?,
                Phase::Uploads => self.uploads_page()?,
                Phase::Done => return Ok(None),
            }
        }
    }

    fn objects_page(&mut self) -> Result<(), S3Error> {
        let client = &*self.client;
        let page = client.list_page(&self.prefix, true, self.token.as_deref())?;
        let mut entries: Vec<ListEntry> = page
            .entries
            .iter()
            .map(|e| ListEntry {
                kind: EntryKind::File,
                name: e.name.clone().into_bytes(),
                size: e.size,
                mtime: e.modified,
                crc32: None,
                held: e.size,
                files: None,
            })
            .collect();
        for chunk in entries.chunks_mut(HEADS_AT_ONCE) {
            std::thread::scope(|s| {
                for e in chunk.iter_mut() {
                    s.spawn(move || {
                        let name = String::from_utf8_lossy(&e.name).into_owned();
                        // Unknown rather than failing the listing.
                        e.crc32 = client.head_object(&name).ok().and_then(|i| {
                            (i.size == e.size).then(|| full_object_crc(&i)).flatten()
                        });
                    });
                }
            });
        }
        self.ready.extend(entries);
        if self.dirs {
            self.ready
                .extend(page.prefixes.iter().filter_map(|p| dir_entry(p)));
        }
        self.advance(page.next, Phase::Uploads);
        Ok(())
    }

    fn uploads_page(&mut self) -> Result<(), S3Error> {
        let client = &*self.client;
        let state = format!("{STATE_DIR}/");
        let prefix = format!("{state}{}", self.prefix);
        let page = client.list_page(&prefix, !self.dirs, self.token.as_deref())?;
        for e in &page.entries {
            let Some(upload) = e.name.strip_prefix(&state) else {
                continue;
            };
            if let Some(entry) = upload_entry(client, &e.name, upload)? {
                self.ready.push_back(entry);
            }
        }
        self.advance(page.next, Phase::Done);
        Ok(())
    }

    /// The next page of this phase, or the start of `then`.
    fn advance(&mut self, next: Option<String>, then: Phase) {
        match next {
            Some(t) => self.token = Some(t),
            None => {
                self.token = None;
                self.phase = then;
            }
        }
    }
}

/// A common prefix (`NAME/`) as a directory entry; the server's own
/// records are not one.
fn dir_entry(prefix: &str) -> Option<ListEntry> {
    let name = prefix.strip_suffix('/').unwrap_or(prefix);
    let top = name.split('/').next().unwrap_or(name);
    if name.is_empty() || top == STATE_DIR || top == DONE_DIR {
        return None;
    }
    Some(ListEntry {
        kind: EntryKind::Dir,
        name: name.as_bytes().to_vec(),
        size: 0,
        mtime: 0,
        crc32: None,
        held: 0,
        files: None,
    })
}

#[cfg(test)]
mod tests {
    use super::dir_entry;

    #[test]
    fn common_prefixes_are_directories_but_the_servers_records_are_not() {
        let d = dir_entry("t/").map(|e| e.name);
        assert_eq!(d.as_deref(), Some(&b"t"[..]));
        assert!(dir_entry(".bigtransfer-uploads/").is_none());
        assert!(dir_entry(".bigtransfer-done/").is_none());
        assert!(dir_entry("/").is_none());
    }
}
