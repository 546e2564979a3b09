//! A tree session on a server that stores in S3 (`--store s3://`, feature
//! `s3`): the same frames as `tree` (see `docs/PROTOCOL.md`, "Tree
//! sessions"), each file of the tree stored as the object PREFIX + its
//! relative path through the same multipart uploads as a single upload
//! ([`crate::s3::S3Storage::open_tree_file`]): parts with their CRC-32s,
//! completion with the whole file's `FULL_OBJECT` CRC-32 (the client's,
//! checked here first over the blocks received), the upload's state in
//! the store (so an interrupted tree resumes on any node, file by file,
//! from the parts already uploaded), and the store's never-replace policy
//! (a different content keeps the old object as `PATH.~N~` unless
//! `--overwrite`).
//!
//! An unchanged file is held, nothing sent: when its finished record has
//! the same size and the client's mtime, the record's whole CRC-32 goes
//! to the client ([`wire::CHECK_CRC`]), which sends the file only if its
//! own differs (a client that did not ask for verified holds is sent
//! [`wire::HELD`] on size and mtime, as before them). Objects have no modes,
//! mtimes, directories or symlinks: a symlink and an empty directory are
//! skipped, each with a verdict in words (a directory holding files is
//! implied by their keys); modes and mtimes are not kept.
//!
//! Memory: one block (1 MiB for files up to 1 GiB) plus what the S3 part
//! buffers (see [`crate::s3::S3Part`]), one file at a time.
//!
//! Not for the local storage directory (`tree`), nor the token (`tree_auth`).

use std::io::Write;

use super::tree_auth::Early;
use super::{ConnInfo, Failed, Shared};
use crate::machine::{Fault, Held, HeldPart, Layout, PartId, Recheck, StoredAs};
use crate::s3::{finished, S3Part, S3Storage, STATE_DIR};
use crate::transport::Transport;
use crate::tree::wire::{self, be32, be64};
use crate::tree::{decode_page, EntryKind, ManifestValidator, RelPath, ValidatorConfig};
use crate::{Error, ErrorKind, Result};

/// A checkpoint (the upload's state written to the store) at least this
/// often while a file's bytes arrive.
const CHECKPOINT_EVERY: u64 = 8 << 20;

/// A file of the current page.
struct Slot {
    path: RelPath,
    size: u64,
    mtime_ns: i64,
    status: u8,
    offset: u64,
    /// Opened when the page came (a resume): its held blocks' CRC-32s.
    part: Option<(S3Part, Vec<u32>)>,
    /// The stored object's whole CRC-32, offered for a check.
    stored_crc: u32,
}

#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
    held: u64,
    failed: u64,
    not_stored: u64,
    skipped: u64,
}

struct Session<'a> {
    sh: &'a Shared,
    s3: &'a S3Storage,
    peer: String,
    stream: Box<dyn Transport>,
    validator: ManifestValidator,
    files: Vec<Slot>,
    /// The last directory listed, until an entry shows it holds something.
    dir: Option<RelPath>,
    buf: Vec<u8>,
    reader: wire::FrameReader,
    /// The client asked for verified holds (see [`wire::CHECK_CRC`]).
    crc_holds: bool,
    t: Tally,
}

/// Serves a tree session into the store, after its token (if any).
pub(super) fn serve(
    sh: &Shared,
    s3: &S3Storage,
    conn: &ConnInfo,
    stream: Box<dyn Transport>,
    early: Option<Early>,
    crc_holds: bool,
) -> std::result::Result<(), Failed> {
    let _ = stream.set_read_timeout(Some(sh.cfg.idle_timeout));
    let (reader, first) = match early {
        Some(e) => (e.reader, e.first),
        None => (wire::FrameReader::new(), None),
    };
    let config = ValidatorConfig {
        max_entries: sh.cfg.max_tree_entries,
        case_insensitive: false,
    };
    let mut s = Session {
        sh,
        s3,
        peer: conn.peer.to_string(),
        stream,
        validator: ManifestValidator::new(config),
        files: Vec::new(),
        dir: None,
        buf: Vec::new(),
        reader,
        crc_holds,
        t: Tally::default(),
    };
    match s.run(first) {
        Ok(()) => Ok(()),
        Err(e) => {
            if e.kind() != ErrorKind::ConnectionLost {
                let _ = wire::write_frame(&mut s.stream, wire::FAULT, e.to_string().as_bytes());
                let _ = s.stream.flush();
            }
            Err(e.into())
        }
    }
}

impl Session<'_> {
    fn run(&mut self, mut first: Option<(u8, Vec<u8>)>) -> Result<()> {
        loop {
            let tag = match first.take() {
                Some((tag, payload)) => {
                    self.buf = payload;
                    tag
                }
                None => self.reader.read_frame(&mut self.stream, &mut self.buf)?,
            };
            match tag {
                wire::PAGE => self.page()?,
                wire::BEGIN => self.receive_file()?,
                wire::END => {
                    self.count_confirmed();
                    return self.end();
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("unexpected frame {other:#04x} in a tree session"),
                    ))
                }
            }
        }
    }

    fn send(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        wire::write_frame(&mut self.stream, tag, payload)
            .map_err(|e| Error::io(ErrorKind::ConnectionLost, "the tree session was cut", e))
    }

    fn verdict(&mut self, status: u8, path: &RelPath, text: &str) -> Result<()> {
        let p = wire::verdict(status, path.as_str(), text);
        self.send(wire::VERDICT, &p)
    }

    fn end(&mut self) -> Result<()> {
        self.close_dir(None)?;
        let t = &self.t;
        let text = format!(
            "received a tree into the object store: {} files ({} bytes); {} held already, {} failed, {} not stored, {} skipped (symlinks and empty directories are not objects; modes and mtimes are not kept)",
            t.files, t.bytes, t.held, t.failed, t.not_stored, t.skipped
        );
        (self.sh.logger)(&format!("{}: {text}", self.peer));
        self.send(wire::FINISHED, text.as_bytes())?;
        let _ = self.stream.flush();
        let _ = self.stream.close_write();
        Ok(())
    }

    /// The directory listed last is empty unless `next` is inside it: an
    /// empty directory cannot be an object, the client is told so.
    fn close_dir(&mut self, next: Option<&RelPath>) -> Result<()> {
        let Some(d) = self.dir.take() else {
            return Ok(());
        };
        if next.is_some_and(|n| d.is_ancestor_or_self(n)) {
            return Ok(());
        }
        self.t.skipped += 1;
        let why = "skipped: an object store has no empty directories (a directory holding files is implied by their keys)";
        self.verdict(wire::SKIPPED, &d, why)
    }

    fn page(&mut self) -> Result<()> {
        let entries = decode_page(&self.buf)?;
        self.count_confirmed();
        self.files.clear();
        let mut state = Vec::with_capacity(entries.len() * wire::STATE_RECORD_CRC);
        for e in entries {
            let acc = self.validator.check(e)?;
            let path = acc.entry.path;
            self.close_dir(Some(&path))?;
            match acc.entry.kind {
                EntryKind::Dir { .. } => self.dir = Some(path),
                EntryKind::Symlink { .. } => {
                    self.t.skipped += 1;
                    let why = "skipped: an object store keeps no symlinks";
                    self.verdict(wire::SKIPPED, &path, why)?;
                }
                EntryKind::File { size, mtime_ns, .. } => {
                    let mut slot = Slot {
                        path,
                        size,
                        mtime_ns,
                        status: wire::SEND,
                        offset: 0,
                        part: None,
                        stored_crc: 0,
                    };
                    self.file_state(&mut slot)?;
                    state.push(slot.status);
                    state.extend_from_slice(&slot.offset.to_be_bytes());
                    if self.crc_holds {
                        state.extend_from_slice(&slot.stored_crc.to_be_bytes());
                    }
                    self.files.push(slot);
                }
            }
        }
        self.send(wire::STATE, &state)
    }

    /// Files of the last page offered for a CRC check whose data never
    /// came: the client found them the same, so they are held.
    fn count_confirmed(&mut self) {
        let n = self.files.iter().filter(|f| f.status == wire::CHECK_CRC);
        self.t.held += n.count() as u64;
    }

    /// Offered for a CRC check (its record has this size and mtime; held
    /// outright for a client without verified holds), refused (over the size
    /// limit, a name of the server's), resumed from the parts uploaded, or
    /// sent from the start.
    fn file_state(&mut self, slot: &mut Slot) -> Result<()> {
        if let Some(max) = self.sh.cfg.max_file_size.filter(|&m| slot.size > m) {
            let why = format!(
                "it is {} bytes, over this server's limit of {max}",
                slot.size
            );
            return self.refuse(slot, &why);
        }
        let name = slot.path.as_str();
        let top = name.split('/').next().unwrap_or("");
        if top == STATE_DIR || top == finished::DONE_DIR {
            let why = format!("\"{top}\" is the server's own in the store");
            return self.refuse(slot, &why);
        }
        let client = self.s3.client();
        let same = finished::vouched(client, name)
            .map_err(|e| store_err(&e, name))?
            .filter(|(_, r)| r.size == slot.size && r.source_mtime == Some(slot.mtime_ns));
        if let Some((_, r)) = same {
            if self.crc_holds {
                // Sent (a new upload, from 0) only if the client's differs.
                slot.status = wire::CHECK_CRC;
                slot.stored_crc = r.crc32;
                return Ok(());
            }
            slot.status = wire::HELD;
            self.t.held += 1;
            return Ok(());
        }
        match client.get_small(&format!("{STATE_DIR}/{name}"), 1) {
            Err(e) if e.kind == crate::s3::S3ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
        // An upload of this path was started: resume from its parts.
        match self.open(slot) {
            Ok((part, crcs)) => {
                let block = crate::v2::block_size_for(slot.size);
                slot.offset = (crcs.len() as u64 * block).min(slot.size);
                slot.part = Some((part, crcs));
                Ok(())
            }
            Err(f) => self.refuse(slot, &f.words),
        }
    }

    fn refuse(&mut self, slot: &mut Slot, why: &str) -> Result<()> {
        slot.status = wire::REFUSED;
        self.t.not_stored += 1;
        let path = slot.path.clone();
        self.verdict(wire::NOT_STORED, &path, why)
    }

    /// The file's upload in the store and the CRC-32s of the blocks it
    /// holds from the start (none for a re-send of another content).
    fn open(&self, slot: &Slot) -> std::result::Result<(S3Part, Vec<u32>), Fault> {
        let block = crate::v2::block_size_for(slot.size);
        let id = PartId {
            name: slot.path.as_str().to_owned(),
            filesize: slot.size,
            layout: Layout::Blocks { block },
        };
        let (mut part, held) = self.s3.open_tree_file(&id)?;
        part.set_source_mtime(slot.mtime_ns);
        let crcs = match held {
            Held::Blocks(set) if !part.is_resend() => {
                (0..set.prefix()).filter_map(|i| set.crc(i)).collect()
            }
            _ => Vec::new(),
        };
        Ok((part, crcs))
    }

    fn receive_file(&mut self) -> Result<()> {
        let bad = || Error::new(ErrorKind::Protocol, "a malformed tree file start");
        let idx = be32(&self.buf, 0).ok_or_else(bad)? as usize;
        let offset = be64(&self.buf, 4).ok_or_else(bad)?;
        let slot = self.files.get_mut(idx).ok_or_else(bad)?;
        let wanted = slot.status == wire::SEND || slot.status == wire::CHECK_CRC;
        if !wanted || offset != slot.offset {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("data for \"{}\" that the server did not ask for", slot.path),
            ));
        }
        // The client's content differs though size and mtime do not.
        let quiet = slot.status == wire::CHECK_CRC;
        slot.status = wire::HELD; // its data may not come again
        let (path, size) = (slot.path.clone(), slot.size);
        let opened = slot.part.take().map(Ok);
        let opened = match opened {
            Some(p) => p,
            None => self.open(&self.files[idx]),
        };
        let (mut rx, why) = match opened {
            Ok((part, crcs)) => (Some(Incoming::new(part, crcs, size)), String::new()),
            Err(f) => (None, f.words),
        };
        let got = self.take_data(rx.as_mut())?;
        let Some(rx) = rx else {
            self.t.failed += 1;
            let why = format!(
                "the object store could not start its upload: {why}; a new send tries again"
            );
            return self.verdict(wire::FAILED, &path, &why);
        };
        let text = rx.finish(got, &path);
        match text {
            Ok(words) => {
                self.t.files += 1;
                let words = match quiet {
                    true => format!("{words} (its size and mtime are the same as the stored object's, its content is not)"),
                    false => words,
                };
                self.verdict(wire::OK, &path, &words)
            }
            Err(words) => {
                self.t.failed += 1;
                self.verdict(wire::FAILED, &path, &words)
            }
        }
    }

    /// The file's frames up to its CHECK, into `rx` (drained without one).
    fn take_data(&mut self, mut rx: Option<&mut Incoming>) -> Result<u32> {
        loop {
            let tag = self.reader.read_frame(&mut self.stream, &mut self.buf)?;
            match tag {
                wire::DATA => {
                    self.t.bytes += self.buf.len() as u64;
                    if let Some(r) = rx.as_deref_mut() {
                        r.push(&self.buf);
                    }
                }
                wire::HOLE => {
                    let len = be64(&self.buf, 0).ok_or_else(|| bad_frame("hole"))?;
                    if let Some(r) = rx.as_deref_mut() {
                        r.zeros(len);
                    }
                }
                wire::CHECK => return be32(&self.buf, 0).ok_or_else(|| bad_frame("check")),
                other => return Err(bad_frame(&format!("{other:#04x}"))),
            }
        }
    }
}

/// One file's bytes on their way into its S3 upload, block by block.
struct Incoming {
    part: S3Part,
    block: u64,
    size: u64,
    /// CRC-32 of every block stored, in order (held ones first).
    crcs: Vec<u32>,
    cur: Vec<u8>,
    /// The first failure of the store; the rest of the data is drained.
    fault: Option<String>,
    since_checkpoint: u64,
}

impl Incoming {
    fn new(part: S3Part, crcs: Vec<u32>, size: u64) -> Incoming {
        let block = crate::v2::block_size_for(size);
        Incoming {
            part,
            block,
            size,
            crcs,
            cur: Vec::with_capacity(block.min(size) as usize),
            fault: None,
            since_checkpoint: 0,
        }
    }

    /// Where the bytes that come next belong (the last block may be short).
    fn at(&self) -> u64 {
        (self.crcs.len() as u64 * self.block).min(self.size) + self.cur.len() as u64
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.at() >= self.size {
                self.fail("more bytes arrived than the file's size".into());
                return;
            }
            let want = (self.block as usize - self.cur.len()).min(bytes.len());
            self.cur.extend_from_slice(&bytes[..want]);
            bytes = &bytes[want..];
            if self.cur.len() as u64 == self.block {
                self.store_block();
            }
        }
    }

    fn zeros(&mut self, mut len: u64) {
        static CHUNK: [u8; 64 << 10] = [0; 64 << 10];
        while len > 0 && self.fault.is_none() {
            let n = len.min(CHUNK.len() as u64) as usize;
            self.push(&CHUNK[..n]);
            len -= n as u64;
        }
    }

    fn fail(&mut self, words: String) {
        self.fault.get_or_insert(words);
    }

    /// The block gathered goes to the part with its CRC-32.
    fn store_block(&mut self) {
        let idx = self.crcs.len() as u64;
        let crc = crc32fast::hash(&self.cur);
        if self.fault.is_none() {
            let r = self
                .part
                .begin_block(idx)
                .and_then(|_| self.part.write_at(idx * self.block, &self.cur))
                .and_then(|_| self.part.record_block(idx, crc, true));
            if let Err(f) = r {
                self.fail(f.words);
            }
        }
        self.since_checkpoint += self.cur.len() as u64;
        if self.since_checkpoint >= CHECKPOINT_EVERY && self.fault.is_none() {
            self.since_checkpoint = 0;
            if let Err(f) = self.part.checkpoint() {
                self.fail(f.words);
            }
        }
        self.crcs.push(crc);
        self.cur.clear();
    }

    /// After the CHECK: the whole CRC-32 over every block against the
    /// client's, then the commit (the store checks it again). The verdict's
    /// words either way.
    fn finish(mut self, crc_sent: u32, path: &RelPath) -> std::result::Result<String, String> {
        if !self.cur.is_empty() {
            self.store_block();
        }
        if let Some(f) = self.fault.take() {
            let _ = self.part.discard();
            return Err(format!("not stored: {f}; a new send starts it again"));
        }
        let end = self.at().min(self.size);
        let pieces = self.crcs.iter().enumerate().map(|(i, &c)| {
            let len = self.block.min(self.size - i as u64 * self.block);
            (c, len)
        });
        let whole = crate::s3::combine(pieces);
        if self.at() != self.size || whole != crc_sent {
            let _ = self.part.discard();
            return Err(if end != self.size {
                format!("{end} bytes arrived for a file of {}", self.size)
            } else {
                "the data did not match its CRC-32; a new send starts it again".to_owned()
            });
        }
        match self.part.recheck() {
            Ok(Recheck::Same) => {}
            Ok(_) | Err(_) => {
                let _ = self.part.discard();
                return Err(
                    "some of its blocks never reached the object store; a new send starts it again"
                        .into(),
                );
            }
        }
        if let Err(f) = self.part.commit(whole) {
            return Err(format!("not stored: {}", f.words));
        }
        Ok(match self.part.stored_as() {
            StoredAs::New => "stored and verified (the store checked the whole CRC-32)".into(),
            StoredAs::Unchanged => "the same content was stored already; left as it is".into(),
            StoredAs::Kept(v) => {
                format!("stored and verified; the different object stored before under {path} is kept as {v}")
            }
            StoredAs::Replaced => {
                "stored and verified, replacing the different object stored before (--overwrite)"
                    .into()
            }
        })
    }
}

fn store_err(e: &crate::s3::S3Error, name: &str) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!("the object store could not be asked about {name}: {e}"),
    )
}

fn bad_frame(what: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("a malformed tree frame ({what})"),
    )
}
