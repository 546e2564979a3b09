//! What the object store holds, for a list request (feature `s3`), one
//! page at a time: the stored objects (`ListObjectsV2` with the `/`
//! delimiter, so the server's own records under `.bigtransfer-*/` are
//! skipped by the store, followed by continuation tokens), each with the
//! store's own whole CRC-32 (`HeadObject`, a few at once), then the
//! uploads in progress from their state objects, with their progress.
//! Memory holds one page of the store's listing, never the whole.
//!
//! Not for the wire format ([`crate::listing`]) nor for which entries a
//! listing of one name keeps (the server's).

use std::collections::VecDeque;
use std::sync::Arc;

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
}

impl S3Storage {
    /// A listing of what the store holds whose name starts with `prefix`.
    pub fn lister(&self, prefix: &str) -> S3Lister {
        S3Lister {
            client: self.client_arc(),
            prefix: prefix.to_string(),
            phase: Phase::Objects,
            token: None,
            ready: VecDeque::new(),
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
        self.advance(page.next, Phase::Uploads);
        Ok(())
    }

    fn uploads_page(&mut self) -> Result<(), S3Error> {
        let client = &*self.client;
        let state = format!("{STATE_DIR}/");
        let prefix = format!("{state}{}", self.prefix);
        let page = client.list_page(&prefix, true, self.token.as_deref())?;
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
