//! Serving a tree download from the object store (`--store s3://`,
//! feature `s3`): the same frames as [`super::tree_get`] (see
//! `docs/PROTOCOL.md`, "Tree downloads"), with the manifest built from the
//! store's listing under the requested prefix and each requested file
//! served as [`super::get_store`] serves a single object: its reference
//! from the finished record, its blocks read with ranged GETs, each
//! checked against the record's CRC-32s before it goes out (a mismatch is
//! refused for that file in words, never sent as good).
//!
//! The manifest: a folder is every key prefix ending in `/`, so the
//! directories are implied by the keys. The validator on the client wants
//! entries depth-first, sorted component by component, and a directory
//! before what it holds; the store lists keys in byte order, where
//! `a/` sorts after `a-b` and `a.txt`. So each directory is listed twice
//! with the `/` delimiter: once for its subfolders (their names kept, one
//! directory's worth for each open directory), once for its objects,
//! merged a page at a time with the sorted subfolders. Memory: one page of
//! the store's listing and the subfolder names of the open directories,
//! never the whole listing.
//!
//! Objects have no modes: files are listed 0644, directories 0755. A
//! file's mtime is the client's mtime kept in its finished record when
//! there is one (a tree sent here), else the object's Last-Modified; a
//! directory's is the time the listing began. Numbered versions
//! (`NAME.~N~`, older contents kept by the never-replace policy) are left
//! out: a tree download gives the current tree (`list` shows them). The
//! server's own folders (`.bigtransfer-uploads`, `.bigtransfer-done`) are
//! only at the top of the store and cannot be asked for. An object whose
//! name is also a folder is left out (logged): the folder is listed.
//!
//! Not for the local storage directory (`tree_get`) nor the store's reads.

use std::io::Write;

use super::get::Stop;
use super::get_store::{runs, send_run};
use super::tree_get::{cut, next_ask, Ask, BigFiles, Outbox};
use super::{ConnInfo, Failed, Shared};
use crate::getwire::{self, TAG_REFERENCE, TAG_WANT};
use crate::s3::finished::{self, DONE_DIR};
use crate::s3::{Client, S3Error, S3Storage, STATE_DIR};
use crate::transport::Transport;
use crate::tree::fetch::{BLOCK, MAX_FILE};
use crate::tree::wire::{self, FrameReader};
use crate::tree::{Entry, EntryKind, PageBuilder, RelPath};
use crate::{Error, ErrorKind, Result};

use super::tree_get::OUT_BUFFER;
/// Finished records read at once for one page of the listing.
const RECORDS_AT_ONCE: usize = 8;
/// The mode of every file and directory listed: objects have none.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
    entries: u64,
}

struct Session<'a> {
    s3: &'a S3Storage,
    io: Outbox,
    reader: FrameReader,
    buf: Vec<u8>,
    /// The key prefix of the remote's parent ("" or ending in `/`).
    base: String,
    /// The files of the page last sent, by index, with their listed sizes.
    files: Vec<(RelPath, u64)>,
    /// Files over the limit, and whether the client fetches them alone.
    big: BigFiles,
    t: Tally,
}

/// Serves a tree download of `remote` from the store, once the header was
/// read and the token (if any) answered.
pub(super) fn serve(
    sh: &Shared,
    s3: &S3Storage,
    conn: &ConnInfo,
    stream: Box<dyn Transport>,
    remote: &str,
    big: BigFiles,
) -> std::result::Result<(), Failed> {
    let shown = crate::text::printable(remote).into_owned();
    let logger = |m: &str| (sh.logger)(m);
    let mut s = Session {
        s3,
        io: Outbox::new(stream, OUT_BUFFER + 64),
        reader: FrameReader::new(),
        buf: Vec::new(),
        base: String::new(),
        files: Vec::new(),
        big,
        t: Tally::default(),
    };
    let walk = remote_path(remote).and_then(|rel| {
        s.base = rel.parent_str().map_or(String::new(), |p| format!("{p}/"));
        Walk::start(s3.client(), &s.base, &rel, &logger)
    });
    let r = walk.and_then(|mut w| s.run(&mut w));
    match r {
        Ok(()) => {
            let t = &s.t;
            (sh.logger)(&format!(
                "{}: {shown}: sent a tree from the object store ({} entries, {} files on request, {} bytes)",
                conn.peer, t.entries, t.files, t.bytes
            ));
            Ok(())
        }
        Err(e) => {
            if e.kind() != ErrorKind::ConnectionLost {
                let _ = s.io.flush();
                let _ = wire::write_frame(&mut s.io.stream, wire::FAULT, e.to_string().as_bytes());
                let _ = s.io.stream.close_write();
            }
            Err(Error::new(e.kind(), format!("{}: {shown}: tree get: {e}", conn.peer)).into())
        }
    }
}

fn refused(why: String) -> Error {
    Error::new(ErrorKind::Refused, why)
}

fn not_found(rel: &str) -> Error {
    refused(format!(
        "no \"{rel}\" on the server (not found in its object store)"
    ))
}

fn store_error(what: &str, e: &S3Error) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!("the server cannot list {what} in its object store: {e}"),
    )
}

/// The remote path, checked as a tree path and kept off the server's own
/// folders.
fn remote_path(remote: &str) -> Result<RelPath> {
    let rel = RelPath::from_wire(remote).map_err(|e| refused(format!("cannot get it: {e}")))?;
    let top = rel.components().next().unwrap_or_default();
    if top == STATE_DIR || top == DONE_DIR {
        return Err(not_found(rel.as_str()));
    }
    Ok(rel)
}

/// Whether `name` is a numbered version `BASE.~N~` (see `crate::keep`).
fn is_version(name: &str) -> bool {
    name.strip_suffix('~')
        .and_then(|r| r.rsplit_once(".~"))
        .is_some_and(|(base, n)| {
            !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
}

/// An object of a directory being listed.
struct Object {
    name: String,
    size: u64,
    mtime_ns: i64,
}

/// One open directory of the walk.
struct Level {
    /// Its key prefix, ending in `/`.
    key: String,
    /// Its subfolders' names, sorted, and the next one to list.
    dirs: Vec<String>,
    next_dir: usize,
    /// Objects of the page read, not listed yet (in key order).
    objects: std::collections::VecDeque<Object>,
    token: Option<String>,
    listed: bool,
}

/// The manifest's entries in the validator's order, from the listing.
struct Walk<'c> {
    client: &'c Client,
    base: String,
    first: Option<Entry>,
    stack: Vec<Level>,
    now_ns: i64,
    log: &'c dyn Fn(&str),
}

impl<'c> Walk<'c> {
    /// The walk of `rel` (a folder, or a single object), or not found.
    fn start(
        client: &'c Client,
        base: &str,
        rel: &RelPath,
        log: &'c dyn Fn(&str),
    ) -> Result<Walk<'c>> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut w = Walk {
            client,
            base: base.to_owned(),
            first: None,
            stack: Vec::new(),
            now_ns,
            log,
        };
        let key = format!("{base}{}", rel.file_name());
        let root = w.open_level(format!("{key}/"))?;
        let found = !root.dirs.is_empty() || {
            let p = client
                .list_page(&root.key, true, None)
                .map_err(|e| store_error(&key, &e))?;
            !p.entries.is_empty() || p.next.is_some()
        };
        let path = RelPath::from_wire(rel.file_name()).map_err(|e| refused(e.to_string()))?;
        if found {
            w.first = Some(w.dir_entry(path));
            w.stack.push(root);
            return Ok(w);
        }
        let info = finished::head(client, &key)
            .map_err(|e| store_error(&key, &e))?
            .ok_or_else(|| not_found(rel.as_str()))?;
        let mtime_ns =
            source_mtime(client, &key, info.size).unwrap_or(info.modified * 1_000_000_000);
        w.first = Some(file_entry(path, info.size, mtime_ns));
        Ok(w)
    }

    fn dir_entry(&self, path: RelPath) -> Entry {
        Entry {
            path,
            kind: EntryKind::Dir {
                mode: DIR_MODE,
                mtime_ns: self.now_ns,
            },
        }
    }

    /// A directory to list: its subfolders first (the first listing).
    fn open_level(&self, key: String) -> Result<Level> {
        let mut dirs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_page(&key, true, token.as_deref())
                .map_err(|e| store_error(&key, &e))?;
            for p in page.prefixes {
                let name = p.strip_prefix(&key).unwrap_or("").trim_end_matches('/');
                if !name.is_empty() {
                    dirs.push(name.to_owned());
                }
            }
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        dirs.sort_unstable();
        dirs.dedup();
        Ok(Level {
            key,
            dirs,
            next_dir: 0,
            objects: Default::default(),
            token: None,
            listed: false,
        })
    }

    /// The manifest path of the key `key` (below the base), or `None`
    /// (logged) when it is not a name a tree may carry.
    fn path_of(&self, key: &str) -> Option<RelPath> {
        let rel = key.strip_prefix(&self.base).unwrap_or(key);
        match RelPath::from_wire(rel) {
            Ok(p) => Some(p),
            Err(e) => {
                (self.log)(&format!(
                    "tree get: left out the object store's \"{}\": {e}",
                    crate::text::printable(rel)
                ));
                None
            }
        }
    }

    /// The next entry, `None` at the end.
    fn next(&mut self) -> Result<Option<Entry>> {
        if let Some(e) = self.first.take() {
            return Ok(Some(e));
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            if top.objects.is_empty() && !top.listed {
                let mut level = self.stack.pop().unwrap_or_else(|| unreachable!());
                let filled = self.fill(&mut level);
                self.stack.push(level);
                filled?;
                continue;
            }
            let dir = top.dirs.get(top.next_dir);
            let take_dir = match (dir, top.objects.front()) {
                (None, None) => {
                    self.stack.pop();
                    continue;
                }
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(d), Some(o)) => d.as_str() < o.name.as_str(),
            };
            if take_dir {
                let key = format!("{}{}", top.key, top.dirs[top.next_dir]);
                top.next_dir += 1;
                if let Some(path) = self.path_of(&key) {
                    let level = self.open_level(format!("{key}/"))?;
                    self.stack.push(level);
                    return Ok(Some(self.dir_entry(path)));
                }
            } else if let Some(o) = top.objects.pop_front() {
                let key = format!("{}{}", top.key, o.name);
                if let Some(path) = self.path_of(&key) {
                    return Ok(Some(file_entry(path, o.size, o.mtime_ns)));
                }
            }
        }
    }

    /// The next page of `level`'s objects (the second listing), with the
    /// mtimes their records keep.
    fn fill(&self, level: &mut Level) -> Result<()> {
        let page = self
            .client
            .list_page(&level.key, true, level.token.as_deref())
            .map_err(|e| store_error(&level.key, &e))?;
        let mut objects: Vec<Object> = Vec::with_capacity(page.entries.len());
        for e in page.entries {
            let name = e.name.strip_prefix(&level.key).unwrap_or("");
            if name.is_empty() || is_version(name) {
                continue; // a folder marker, or an older version
            }
            if level
                .dirs
                .binary_search_by(|d| d.as_str().cmp(name))
                .is_ok()
            {
                (self.log)(&format!(
                    "tree get: left out the object \"{}\": a folder of that name is listed",
                    crate::text::printable(&e.name)
                ));
                continue;
            }
            objects.push(Object {
                name: name.to_owned(),
                size: e.size,
                mtime_ns: e.modified.saturating_mul(1_000_000_000),
            });
        }
        let client = self.client;
        let key = &level.key;
        for chunk in objects.chunks_mut(RECORDS_AT_ONCE) {
            std::thread::scope(|s| {
                for o in chunk.iter_mut() {
                    s.spawn(move || {
                        if let Some(t) = source_mtime(client, &format!("{key}{}", o.name), o.size) {
                            o.mtime_ns = t;
                        }
                    });
                }
            });
        }
        level.objects.extend(objects);
        level.listed = page.next.is_none();
        level.token = page.next;
        Ok(())
    }
}

/// The client's mtime a tree file's record keeps, when it is for an object
/// of this size (an unreadable record: the object's own time is used).
fn source_mtime(client: &Client, key: &str, size: u64) -> Option<i64> {
    finished::read_record(client, key)
        .ok()
        .flatten()
        .filter(|r| r.size == size)
        .and_then(|r| r.source_mtime)
}

fn file_entry(path: RelPath, size: u64, mtime_ns: i64) -> Entry {
    Entry {
        path,
        kind: EntryKind::File {
            size,
            mode: FILE_MODE,
            mtime_ns,
            sparse: false,
        },
    }
}

impl Session<'_> {
    fn run(&mut self, walk: &mut Walk) -> Result<()> {
        let mut carry: Option<Entry> = None;
        loop {
            let page = self.next_page(walk, &mut carry)?;
            if page.is_empty() {
                self.io.send(wire::END, &[])?;
                return self.io.flush();
            }
            self.io.send(wire::PAGE, &page.finish())?;
            self.io.flush()?;
            if !self.answer_page()? {
                return Ok(());
            }
        }
    }

    fn next_page(&mut self, walk: &mut Walk, carry: &mut Option<Entry>) -> Result<PageBuilder> {
        let mut page = PageBuilder::new();
        self.files.clear();
        loop {
            let entry = match carry.take() {
                Some(e) => e,
                None => match walk.next()? {
                    Some(e) => e,
                    None => return Ok(page),
                },
            };
            if !page.try_push(&entry) {
                *carry = Some(entry);
                return Ok(page);
            }
            self.t.entries += 1;
            if let EntryKind::File { size, .. } = entry.kind {
                self.files.push((entry.path, size));
            }
        }
    }

    /// The client's requests for the page's files, until it asks for the
    /// next page (true) or ends (false).
    fn answer_page(&mut self) -> Result<bool> {
        loop {
            match next_ask(&mut self.io, &mut self.reader, &mut self.buf)? {
                Ask::File(idx, all) => self.serve_file(idx, all)?,
                Ask::Next => return Ok(true),
                Ask::End => return Ok(false),
            }
        }
    }

    /// One file: its reference (or a verdict why not), then its blocks.
    fn serve_file(&mut self, idx: usize, all: bool) -> Result<()> {
        let Some((path, listed)) = self.files.get(idx).cloned() else {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("a request for file {idx} of a page of {}", self.files.len()),
            ));
        };
        let limit = self.big.limit.min(MAX_FILE);
        // Told before its reference is made (which may read it whole).
        if listed > limit {
            return self.io.over_limit(&path, listed, self.big);
        }
        let key = format!("{}{}", self.base, path.as_str());
        let r = match self.s3.tree_reference(&key, BLOCK) {
            Ok(r) if r.size > limit => {
                return self.io.over_limit(&path, r.size, self.big);
            }
            Ok(r) => r,
            Err(f) => return self.io.verdict(&path, &f.words),
        };
        self.io.send(TAG_REFERENCE, &r.encode())?;
        self.t.files += 1;
        if all {
            // The client asks again (not whole) for a file that arrived
            // damaged.
            return self.send_blocks(&path, &key, &r, &[(0, r.count())]);
        }
        for _ in 0..=crate::client::MAX_REPAIR_ROUNDS + 1 {
            self.io.flush()?;
            let tag = self.reader.read_frame(&mut self.io.stream, &mut self.buf)?;
            if tag != TAG_WANT {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("expected a want frame, got {tag:#04x}"),
                ));
            }
            let want = getwire::decode_want(&self.buf, r.count())?;
            if want.is_empty() {
                return Ok(());
            }
            self.send_blocks(&path, &key, &r, &runs(&want))?;
        }
        Err(Error::new(
            ErrorKind::Protocol,
            "too many rounds of blocks asked for one file",
        ))
    }

    /// The runs of blocks, each checked against the reference as it is
    /// read; a block that does not match ends the file with a verdict.
    fn send_blocks(
        &mut self,
        path: &RelPath,
        key: &str,
        r: &getwire::Reference,
        runs: &[(u64, u64)],
    ) -> Result<()> {
        self.io.flush()?;
        for &(first, count) in runs {
            let stream = &mut self.io.stream;
            let mut send = |off: u64, bytes: &[u8], crc: u32| {
                stream.write_all(&getwire::encode_data_head(off, bytes.len() as u32))?;
                stream.write_all(bytes)?;
                stream.write_all(&crc.to_be_bytes())
            };
            match send_run(self.s3, key, r, first, count, &mut send) {
                Ok(n) => self.t.bytes += n,
                Err(Stop::Fault(f)) => return self.io.verdict(path, &f.words),
                Err(Stop::Lost(e)) => return Err(cut(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_versions_are_known() {
        assert!(super::is_version("a.txt.~1~"));
        assert!(super::is_version("x.~12~"));
        assert!(!super::is_version("a.txt"));
        assert!(!super::is_version(".~1~"));
        assert!(!super::is_version("a.~~"));
        assert!(!super::is_version("a.~1x~"));
    }
}
