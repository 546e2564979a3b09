//! The object-store [`Storage`] of the protocol machine (feature `s3`): an
//! upload's held part is an S3 multipart upload, so any server node over
//! the same bucket can resume what another node started.
//!
//! - One S3 part = a run of consecutive protocol blocks (at least
//!   [`MIN_PART`], at most [`MAX_PARTS`] parts, the last may be short),
//!   uploaded once all its blocks are verified, with its CRC-32 combined
//!   from the block CRCs (nothing re-read); the store checks it.
//! - The multipart upload is created with `CRC32` / `FULL_OBJECT`, and
//!   completion carries the verified whole-file CRC-32: a wrong byte
//!   anywhere is refused by the store itself, and no object appears.
//! - The upload's state (upload id, layout, each uploaded part's ETag and
//!   block CRCs) lives in a small state object beside it
//!   (`PREFIX.bigtransfer-uploads/NAME`), written with conditional puts.
//!   The same object is the lease: it names the node holding the upload
//!   and when it last wrote; another node takes the upload over only when
//!   no holder is named or the holder has been silent for the lease's
//!   stale time, and only with `If-Match` on the ETag it read, so two
//!   nodes never both win. A holder whose conditional write loses stops
//!   with "taken over". On resume the parts are confirmed with `ListParts`.
//!
//! - A re-send: with nothing held and the object under the name vouched
//!   for by its finished record ([`super::finished`]) with the same size
//!   and block size, its blocks are offered as held; if the client sends
//!   none, the object is left untouched (`Unchanged`); if it sends some,
//!   the rest are asked for again at the recheck (they are in no part of
//!   the new upload). At commit a different object under the name is
//!   kept as a numbered version unless the server overwrites.
//!
//! Memory: the parts being filled are buffered whole (usually one; a part
//! waiting for a repaired block stays until the repair round), at most
//! [`MAX_BUFFERED`] parts per upload (more is a transient storage fault),
//! plus at most [`MAX_INFLIGHT`] parts being uploaded by threads of their
//! own while the next ones arrive: with 8 MiB parts, 40 MiB per upload in
//! the usual case, 96 MiB at most.
//!
//! Protocol 1 (a growing prefix) is the same with one part per "block"
//! (8 MiB or more), its CRC-32 computed here from the bytes as they fill
//! it; the resume offset is the uploaded parts from the start.
//!
//! Not for: claims within one node (the server's), downloads or listings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::finished::{self, Finished, DONE_DIR};
use super::{combine, Client, Part, S3Error, S3ErrorKind};
use crate::machine::{Fault, Held, HeldPart, HeldSet, Layout, PartId, Recheck, Storage, StoredAs};
use crate::v2::{block_count, block_range, FaultCode};

/// The smallest part (S3's own minimum is 5 MiB; the last part may be short).
pub const MIN_PART: u64 = 8 << 20;
/// The most parts of one upload (S3's limit).
pub const MAX_PARTS: u64 = 10_000;
/// The most parts of one upload buffered in memory at once.
pub const MAX_BUFFERED: usize = 8;
/// While bytes arrive, the holder writes its state at least this often,
/// even when no part was completed (a slow client), so its lease stays
/// fresh: well under the default stale time of 30 s.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The most part uploads of one upload in flight at once (their threads
/// hold their parts' memory).
pub const MAX_INFLIGHT: usize = 4;
/// Where the state objects live, under the bucket prefix. A name the
/// server stores can hold no '/', so no upload's object is ever under it.
pub const STATE_DIR: &str = ".bigtransfer-uploads";
/// The most bytes of a state object read.
const STATE_LIMIT: u64 = 64 << 20;
/// A holder writes its state at most this often while parts go out (a
/// heartbeat; checkpoints and the end always write).
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Uploads kept in an S3 bucket, shared by every connection of a node.
pub struct S3Storage {
    client: Arc<Client>,
    node: String,
    lease_stale: Duration,
    next: AtomicU64,
    overwrite: bool,
}

impl S3Storage {
    /// A storage over `client`'s bucket and prefix. `node` names this
    /// server node in leases (unique per process); a lease whose holder
    /// wrote nothing for `lease_stale` may be taken over by another node.
    pub fn new(client: Client, node: impl Into<String>, lease_stale: Duration) -> S3Storage {
        S3Storage {
            client: Arc::new(client),
            node: node.into(),
            lease_stale,
            next: AtomicU64::new(1),
            overwrite: false,
        }
    }

    /// With `yes`, a different content uploaded under a stored name
    /// replaces the object; otherwise (the default) the object is kept as
    /// a numbered version `NAME.~N~` first (see [`super::finished`]).
    pub fn with_overwrite(mut self, yes: bool) -> S3Storage {
        self.overwrite = yes;
        self
    }

    /// The client (for reading objects back).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Aborts the uploads nobody wrote to for `age` (their parts and
    /// state objects go); returns their names. Errors stop the sweep with
    /// the store's words; the next sweep tries again.
    pub fn expire(&self, age: Duration) -> Result<Vec<String>, S3Error> {
        let now = unix_ms(SystemTime::now());
        let mut gone = Vec::new();
        for e in self.client.list_objects(&format!("{STATE_DIR}/"))? {
            let Some(name) = e.name.strip_prefix(&format!("{STATE_DIR}/")) else {
                continue;
            };
            let text = match self.client.get_small(&e.name, STATE_LIMIT) {
                Ok((b, _)) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) if e.kind == S3ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Some(st) = State::decode(&text) else {
                continue;
            };
            if now.saturating_sub(st.beat) < age.as_millis() as u64 {
                continue;
            }
            match self.client.abort_multipart(name, &st.upload) {
                Ok(()) => {}
                Err(e) if e.kind == S3ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.client.delete_object(&e.name)?;
            gone.push(name.to_string());
        }
        Ok(gone)
    }

    /// The shared client (for listings that outlive a borrow).
    pub(super) fn client_arc(&self) -> Arc<Client> {
        Arc::clone(&self.client)
    }

    /// A node name unique to this process: host-less, from the process id
    /// and the start time.
    pub fn default_node() -> String {
        format!("pid{}-{}", std::process::id(), unix_ms(SystemTime::now()))
    }
}

/// The entry of the upload in progress whose state object is `key`
/// (`None` if it is gone or unreadable): its size, the bytes of its
/// uploaded parts and its last beat.
pub(super) fn upload_entry(
    client: &Client,
    key: &str,
    name: &str,
) -> Result<Option<crate::listing::ListEntry>, S3Error> {
    use crate::listing::{EntryKind, ListEntry};
    let st = match client.get_small(key, STATE_LIMIT) {
        Ok((b, _)) => State::decode(&String::from_utf8_lossy(&b)),
        Err(e) if e.kind == S3ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(st.map(|st| {
        let blocks: u64 = st.parts.values().map(|p| p.crcs.len() as u64).sum();
        ListEntry {
            kind: EntryKind::Partial,
            name: name.as_bytes().to_vec(),
            size: st.size,
            mtime: (st.beat / 1000) as i64,
            crc32: None,
            held: blocks.saturating_mul(st.block).min(st.size),
            files: None,
        }
    }))
}

/// The object's CRC-32 as the store keeps it, when it is one over the
/// whole object (not a CRC of part CRCs).
pub(super) fn full_object_crc(info: &super::ObjectInfo) -> Option<u32> {
    match info.checksum_type.as_deref() {
        None | Some("FULL_OBJECT") => info.crc32,
        Some(_) => None,
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Protocol 1's part size for a file: [`MIN_PART`], or more (whole MiB)
/// so that there are at most [`MAX_PARTS`] parts.
pub fn v1_part_size(filesize: u64) -> u64 {
    let mib = 1 << 20;
    MIN_PART.max(filesize.div_ceil(MAX_PARTS).div_ceil(mib) * mib)
}

/// Blocks per part for a file: parts of at least [`MIN_PART`], at most
/// [`MAX_PARTS`] of them.
pub fn blocks_per_part(filesize: u64, block: u64) -> u64 {
    let mut per = MIN_PART.div_ceil(block).max(1);
    while block_count(filesize, block).div_ceil(per) > MAX_PARTS {
        per *= 2;
    }
    per
}

/// An uploaded part, as the state object records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DonePart {
    etag: String,
    crcs: Vec<u32>,
}

/// The state object's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    size: u64,
    /// Protocol 1: the whole file's CRC-32 from the header (part of the
    /// upload's identity); 0 for protocol 2.
    crc: u32,
    block: u64,
    per: u64,
    upload: String,
    holder: String,
    beat: u64,
    parts: BTreeMap<u16, DonePart>,
}

const MAGIC: &str = "bigtransfer-s3-upload 1";

impl State {
    fn encode(&self) -> String {
        let mut s = format!(
            "{MAGIC}\nsize {}\ncrc {:08x}\nblock {}\nper {}\nupload {}\nholder {}\nbeat {}\n",
            self.size, self.crc, self.block, self.per, self.upload, self.holder, self.beat
        );
        for (n, p) in &self.parts {
            let crcs: Vec<String> = p.crcs.iter().map(|c| format!("{c:08x}")).collect();
            s.push_str(&format!("part {n} {} {}\n", p.etag, crcs.join(",")));
        }
        s
    }

    fn decode(text: &str) -> Option<State> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut kv = BTreeMap::new();
        let mut parts = BTreeMap::new();
        for line in lines {
            let mut w = line.split(' ');
            match (w.next()?, w.next()?) {
                ("part", n) => {
                    let etag = w.next()?.to_string();
                    let crcs = w.next()?.split(',').filter(|c| !c.is_empty());
                    let crcs: Option<Vec<u32>> =
                        crcs.map(|c| u32::from_str_radix(c, 16).ok()).collect();
                    parts.insert(n.parse().ok()?, DonePart { etag, crcs: crcs? });
                }
                (k, v) => {
                    kv.insert(k, v.to_string());
                }
            }
        }
        let num = |k: &str| kv.get(k)?.parse::<u64>().ok();
        Some(State {
            size: num("size")?,
            crc: u32::from_str_radix(kv.get("crc")?, 16).ok()?,
            block: num("block")?,
            per: num("per")?,
            upload: kv.get("upload")?.clone(),
            holder: kv.get("holder")?.clone(),
            beat: num("beat")?,
            parts,
        })
    }
}

/// A part being filled: its bytes and its blocks' CRCs as they arrive.
struct PartBuf {
    data: Vec<u8>,
    crcs: Vec<Option<u32>>,
}

/// A part being uploaded by a thread of its own.
struct Inflight {
    number: u16,
    crcs: Vec<u32>,
    handle: std::thread::JoinHandle<Result<String, S3Error>>,
}

/// One upload's held part in the store.
pub struct S3Part {
    client: Arc<Client>,
    name: String,
    state_key: String,
    holder: String,
    state: State,
    /// The state object's ETag as we last wrote it: our lease.
    etag: String,
    last_write: Instant,
    filesize: u64,
    /// Protocol 1: one growing prefix, cut into parts of one "block"
    /// each, whose CRC-32s are computed here.
    v1: bool,
    bufs: BTreeMap<u16, PartBuf>,
    /// Parts on their way to the store, oldest first.
    inflight: std::collections::VecDeque<Inflight>,
    /// Committed or discarded: nothing to release.
    ended: bool,
    /// Set while the held blocks are those of the object already stored
    /// under the name (a re-send, see [`S3Part::seed`]): if no block is
    /// written, the object is left untouched.
    base: Option<Finished>,
    /// Whether a different content replaces the object outright.
    overwrite: bool,
    /// What the commit did to the name.
    stored: StoredAs,
    /// A tree file's mtime at the client (ns), kept in its record.
    source_mtime: Option<i64>,
}

/// An S3 error as a fault a client acts on.
fn fault(e: &S3Error, what: &str) -> Fault {
    let code = match e.kind {
        S3ErrorKind::PreconditionFailed => FaultCode::TakenOver,
        _ => FaultCode::Storage,
    };
    Fault::new(code, format!("server cannot {what}: {e}"))
}

fn busy(words: String) -> Fault {
    Fault::new(FaultCode::Busy, words)
}

impl Storage for S3Storage {
    type Part = S3Part;

    fn open(&self, id: &PartId) -> Result<(S3Part, Held), Fault> {
        if id.name == STATE_DIR || id.name == DONE_DIR || id.name.contains('/') {
            return Err(Fault::new(
                FaultCode::NameRefused,
                format!("refused file name {:?}: reserved for the server", id.name),
            ));
        }
        self.open_checked(id)
    }
}

impl S3Storage {
    /// Opens the held part of a tree session's file: `id.name` is a
    /// relative path whose components the manifest validator checked, so
    /// it may hold '/' (the object's key is the prefix and the path); only
    /// a first component that is the server's own is refused.
    pub fn open_tree_file(&self, id: &PartId) -> Result<(S3Part, Held), Fault> {
        let top = id.name.split('/').next().unwrap_or("");
        if top == STATE_DIR || top == DONE_DIR {
            return Err(Fault::new(
                FaultCode::NameRefused,
                format!("refused path {:?}: reserved for the server", id.name),
            ));
        }
        self.open_checked(id)
    }

    fn open_checked(&self, id: &PartId) -> Result<(S3Part, Held), Fault> {
        let (block, per, crc) = match id.layout {
            Layout::Blocks { block } => (block, blocks_per_part(id.filesize, block), None),
            Layout::Prefix { crc32 } => (v1_part_size(id.filesize), 1, Some(crc32)),
        };
        // Refused before anything is written to the store.
        let empty = HeldSet::new(id.filesize, block)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut part = S3Part {
            client: Arc::clone(&self.client),
            name: id.name.clone(),
            state_key: format!("{STATE_DIR}/{}", id.name),
            holder: format!("{}-{n}", self.node),
            v1: crc.is_some(),
            state: State {
                size: id.filesize,
                crc: crc.unwrap_or(0),
                block,
                per,
                upload: String::new(),
                holder: String::new(),
                beat: 0,
                parts: BTreeMap::new(),
            },
            etag: String::new(),
            last_write: Instant::now(),
            filesize: id.filesize,
            bufs: BTreeMap::new(),
            inflight: Default::default(),
            ended: false,
            base: None,
            overwrite: self.overwrite,
            stored: StoredAs::New,
            source_mtime: None,
        };
        part.acquire(self.lease_stale)?;
        if part.state.parts.is_empty() {
            part.seed(id.layout)?;
        }
        let held = part.offered(empty);
        Ok((part, held))
    }
}

impl S3Part {
    /// Whether what is offered as held is the object stored under the
    /// name (a re-send), not parts of this upload.
    pub fn is_resend(&self) -> bool {
        self.base.is_some()
    }

    /// A tree file: its mtime at the client (ns), kept in the finished
    /// record so an unchanged re-send is known without its bytes.
    pub fn set_source_mtime(&mut self, ns: i64) {
        self.source_mtime = Some(ns);
    }

    /// A re-send: when nothing is held and the object stored under the
    /// name is vouched for by its record with the same size and block size
    /// (protocol 1: the same whole CRC-32, which the store's own
    /// `FULL_OBJECT` CRC-32 also gives without a record), its blocks are
    /// offered as held, so the client sends only blocks that differ; if it
    /// sends none, the object is left untouched.
    fn seed(&mut self, layout: Layout) -> Result<(), Fault> {
        let what = format!("look up the stored {}", self.name);
        let Some(info) = finished::head(&self.client, &self.name).map_err(|e| fault(&e, &what))?
        else {
            return Ok(());
        };
        let rec = finished::read_record(&self.client, &self.name)
            .map_err(|e| fault(&e, &what))?
            .filter(|r| r.vouches_for(&info));
        self.base = match (layout, rec) {
            (Layout::Blocks { block }, Some(r)) if r.size == self.filesize && r.block == block => {
                Some(r)
            }
            (Layout::Prefix { crc32 }, r) => {
                let stored = r.map(|r| r.crc32).or_else(|| full_object_crc(&info));
                (info.size == self.filesize && stored == Some(crc32)).then(|| Finished {
                    size: info.size,
                    crc32,
                    block: 0,
                    crcs: Vec::new(),
                    etag: info.etag.clone(),
                    mtime: 0,
                    source_mtime: None,
                })
            }
            _ => None,
        };
        Ok(())
    }

    /// What is held, as offered to the client: the stored object's blocks
    /// for a re-send, else the uploaded parts.
    fn offered(&self, mut empty: HeldSet) -> Held {
        match (&self.base, self.v1) {
            (Some(b), true) => Held::Prefix {
                offset: b.size,
                crc32: b.crc32,
            },
            (Some(b), false) => {
                for (i, &c) in b.crcs.iter().enumerate() {
                    empty.mark(i as u64, c);
                }
                empty.make_durable();
                Held::Blocks(empty)
            }
            (None, true) => self.held_prefix(),
            (None, false) => Held::Blocks(self.held(empty)),
        }
    }

    /// A block is written: the part no longer stands for the stored
    /// object (the blocks of it the client did not send are asked for
    /// again at the recheck).
    fn materialise(&mut self) {
        self.base = None;
    }

    /// Takes the lease: resumes the recorded upload of the same layout, or
    /// starts a new one; refuses while another node holds it.
    fn acquire(&mut self, stale: Duration) -> Result<(), Fault> {
        let found = match self.client.get_small(&self.state_key, STATE_LIMIT) {
            Ok((bytes, etag)) => Some((String::from_utf8_lossy(&bytes).into_owned(), etag)),
            Err(e) if e.kind == S3ErrorKind::NotFound => None,
            Err(e) => return Err(fault(&e, &format!("read the state of {}", self.name))),
        };
        let Some((text, etag)) = found else {
            return self.start(None);
        };
        let old = State::decode(&text);
        if let Some(old) = &old {
            let silent = unix_ms(SystemTime::now()).saturating_sub(old.beat);
            if old.holder != "-" && silent < stale.as_millis() as u64 {
                return Err(busy(format!(
                    "{} is being uploaded through another server node (last heard of {:.1} s ago); try again later",
                    self.name,
                    silent as f64 / 1000.0
                )));
            }
        }
        match old {
            Some(o)
                if (o.size, o.crc, o.block, o.per)
                    == (
                        self.filesize,
                        self.state.crc,
                        self.state.block,
                        self.state.per,
                    ) =>
            {
                self.resume(o, etag)
            }
            other => {
                if let Some(o) = other {
                    // Another layout (or size): its parts cannot be used.
                    let _ = self.client.abort_multipart(&self.name, &o.upload);
                }
                self.start(Some(etag))
            }
        }
    }

    /// Starts a new multipart upload and records it (the lease won only if
    /// the state object is still as read: absent, or at `etag`).
    fn start(&mut self, etag: Option<String>) -> Result<(), Fault> {
        let upload = self
            .client
            .create_multipart(&self.name)
            .map_err(|e| fault(&e, &format!("start storing {}", self.name)))?;
        self.state.upload = upload;
        self.state.parts.clear();
        self.etag = etag.unwrap_or_default();
        if let Err(f) = self.write_state(true) {
            let _ = self.client.abort_multipart(&self.name, &self.state.upload);
            return Err(f);
        }
        Ok(())
    }

    /// Resumes `old`: keeps the parts the store still lists with the ETag
    /// recorded, then takes the lease.
    fn resume(&mut self, old: State, etag: String) -> Result<(), Fault> {
        let listed = match self.client.list_parts(&self.name, &old.upload) {
            Ok(l) => l,
            // Aborted or expired behind our back: start over.
            Err(e) if e.kind == S3ErrorKind::NotFound => return self.start(Some(etag)),
            Err(e) => return Err(fault(&e, &format!("list the parts of {}", self.name))),
        };
        self.state = State {
            parts: BTreeMap::new(),
            ..old.clone()
        };
        for p in listed {
            let kept = old.parts.get(&p.number).filter(|d| d.etag == p.etag);
            if let Some(d) = kept.filter(|d| d.crcs.len() as u64 == self.part_blocks(p.number)) {
                self.state.parts.insert(p.number, d.clone());
            }
        }
        self.etag = etag;
        self.write_state(true)
    }

    /// Writes the state object under our lease (`If-Match` the ETag we
    /// hold, or `If-None-Match` when there was none), now as the holder.
    fn write_state(&mut self, holding: bool) -> Result<(), Fault> {
        use super::Condition;
        self.state.holder = if holding {
            self.holder.clone()
        } else {
            "-".into()
        };
        self.state.beat = unix_ms(SystemTime::now());
        let cond = if self.etag.is_empty() {
            Condition::Absent
        } else {
            Condition::Matches(self.etag.clone())
        };
        let body = self.state.encode();
        match self
            .client
            .put_small(&self.state_key, body.as_bytes(), &cond)
        {
            Ok(etag) => {
                self.etag = etag;
                self.last_write = Instant::now();
                Ok(())
            }
            Err(e) if e.kind == S3ErrorKind::PreconditionFailed => Err(Fault::new(
                FaultCode::TakenOver,
                format!(
                    "{}: another server node took over this upload (or started it first)",
                    self.name
                ),
            )),
            Err(e) => Err(fault(&e, &format!("record the state of {}", self.name))),
        }
    }

    /// Blocks in part `number` (1-based).
    fn part_blocks(&self, number: u16) -> u64 {
        let n = block_count(self.filesize, self.state.block);
        let first = (number as u64 - 1) * self.state.per;
        n.saturating_sub(first).min(self.state.per)
    }

    /// Part number and index within it of block `idx`.
    fn locate(&self, idx: u64) -> (u16, usize) {
        (
            (idx / self.state.per + 1) as u16,
            (idx % self.state.per) as usize,
        )
    }

    /// Offset and length of part `number` in the file.
    fn part_range(&self, number: u16) -> (u64, u64) {
        let first = (number as u64 - 1) * self.state.per;
        let (off, _) = block_range(self.filesize, self.state.block, first);
        let last = first + self.part_blocks(number) - 1;
        let (loff, llen) = block_range(self.filesize, self.state.block, last);
        (off, loff + llen - off)
    }

    /// Protocol 1: the uploaded parts from the start without a gap, as
    /// one prefix with its CRC-32.
    fn held_prefix(&self) -> Held {
        let mut pieces = Vec::new();
        let mut offset = 0;
        for n in 1.. {
            let Some(p) = self.state.parts.get(&n) else {
                break;
            };
            let (_, len) = self.part_range(n);
            pieces.push((p.crcs.first().copied().unwrap_or(0), len));
            offset += len;
        }
        Held::Prefix {
            offset,
            crc32: combine(pieces),
        }
    }

    /// The held set: every block of every uploaded part, durable.
    fn held(&self, mut set: HeldSet) -> HeldSet {
        for (&n, p) in &self.state.parts {
            let first = (n as u64 - 1) * self.state.per;
            for (i, &c) in p.crcs.iter().enumerate() {
                set.mark(first + i as u64, c);
            }
        }
        set.make_durable();
        set
    }

    /// The buffer of part `number`, made if missing (a part already
    /// uploaded is being replaced: it no longer counts).
    fn buf(&mut self, number: u16) -> Result<&mut PartBuf, Fault> {
        if !self.bufs.contains_key(&number) {
            if self.inflight.iter().any(|f| f.number == number) {
                // Replaced while on its way: let the old upload land
                // first, so the store keeps the new one.
                self.reap(true)?;
            }
            if self.bufs.len() >= MAX_BUFFERED {
                return Err(Fault::new(
                    FaultCode::Storage,
                    format!(
                        "{}: over {MAX_BUFFERED} parts of it wait for damaged blocks; retry to resume",
                        self.name
                    ),
                ));
            }
            self.state.parts.remove(&number);
            let (_, len) = self.part_range(number);
            let blocks = self.part_blocks(number) as usize;
            let buf = PartBuf {
                data: vec![0; len as usize],
                crcs: vec![None; blocks],
            };
            self.bufs.insert(number, buf);
        }
        self.bufs
            .get_mut(&number)
            .ok_or_else(|| Fault::new(FaultCode::Internal, "part buffer vanished"))
    }

    /// Protocol 1: part `number` is full; its CRC-32 from its bytes.
    fn seal(&mut self, number: u16) -> Result<(), Fault> {
        if let Some(b) = self.bufs.get_mut(&number) {
            b.crcs = vec![Some(crc32fast::hash(&b.data))];
        }
        self.flush(number)
    }

    /// Sends part `number` to the store in the background once all its
    /// blocks arrived verified (at most [`MAX_INFLIGHT`] at once: the
    /// oldest is waited for first).
    fn flush(&mut self, number: u16) -> Result<(), Fault> {
        let complete = self
            .bufs
            .get(&number)
            .is_some_and(|b| b.crcs.iter().all(Option::is_some));
        if !complete {
            return self.reap(false);
        }
        let Some(buf) = self.bufs.remove(&number) else {
            return Ok(());
        };
        let crcs: Vec<u32> = buf.crcs.iter().flatten().copied().collect();
        let first = (number as u64 - 1) * self.state.per;
        let crc = combine(crcs.iter().enumerate().map(|(i, &c)| {
            let len = block_range(self.filesize, self.state.block, first + i as u64).1;
            (c, len)
        }));
        while self.inflight.len() >= MAX_INFLIGHT {
            self.settle_oldest()?;
        }
        let (client, name) = (Arc::clone(&self.client), self.name.clone());
        let upload = self.state.upload.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("bt-s3-part-{number}"))
            .spawn(move || client.upload_part(&name, &upload, number, &buf.data, crc));
        let handle = spawned.map_err(|e| {
            Fault::new(
                FaultCode::Storage,
                format!("cannot start a part upload: {e}"),
            )
        })?;
        self.inflight.push_back(Inflight {
            number,
            crcs,
            handle,
        });
        self.reap(false)
    }

    /// Records the part uploads that ended (all of them, waiting, with
    /// `all`); the first failure is returned (its part is not held, so a
    /// resume sends it again). Writes the state now and then (a heartbeat).
    fn reap(&mut self, all: bool) -> Result<(), Fault> {
        let mut first_err = None;
        while self
            .inflight
            .front()
            .is_some_and(|f| all || f.handle.is_finished())
        {
            if let Err(f) = self.settle_oldest() {
                first_err.get_or_insert(f);
            }
        }
        if let Some(f) = first_err {
            return Err(f);
        }
        if self.last_write.elapsed() >= BEAT_EVERY {
            self.write_state(true)?;
        }
        Ok(())
    }

    /// Waits for the oldest part upload and records it.
    fn settle_oldest(&mut self) -> Result<(), Fault> {
        let Some(f) = self.inflight.pop_front() else {
            return Ok(());
        };
        let what = format!("store part {} of {}", f.number, self.name);
        let r = f
            .handle
            .join()
            .unwrap_or_else(|_| Err(S3Error::other(what.clone(), "the part upload panicked")));
        let etag = r.map_err(|e| fault(&e, &what))?;
        if !self.bufs.contains_key(&f.number) {
            // (A part being replaced meanwhile is recorded when it is sent.)
            let done = DonePart { etag, crcs: f.crcs };
            self.state.parts.insert(f.number, done);
        }
        Ok(())
    }

    /// The parts to name at completion, with their CRC-32s.
    fn completion(&self) -> Vec<Part> {
        self.state
            .parts
            .iter()
            .map(|(&number, p)| {
                let first = (number as u64 - 1) * self.state.per;
                let crc = combine(p.crcs.iter().enumerate().map(|(i, &c)| {
                    (
                        c,
                        block_range(self.filesize, self.state.block, first + i as u64).1,
                    )
                }));
                Part {
                    number,
                    etag: p.etag.clone(),
                    crc,
                }
            })
            .collect()
    }

    /// Drops the upload and its state (a failed completion, a discard).
    fn drop_upload(&mut self) {
        let _ = self.client.abort_multipart(&self.name, &self.state.upload);
        let _ = self.client.delete_object(&self.state_key);
        self.ended = true;
    }
}

impl S3Part {
    /// Bytes in the store for this upload (its uploaded parts, or the
    /// stored object offered for a re-send).
    pub fn held_bytes(&self) -> u64 {
        match &self.base {
            Some(b) => b.size,
            None => self.state.parts.keys().map(|&n| self.part_range(n).1).sum(),
        }
    }

    /// Verified blocks in the store for this upload.
    pub fn held_blocks(&self) -> usize {
        match &self.base {
            Some(b) => b.crcs.len(),
            None => self.state.parts.values().map(|p| p.crcs.len()).sum(),
        }
    }
}

impl HeldPart for S3Part {
    fn write_at(&mut self, mut offset: u64, mut bytes: &[u8]) -> Result<(), Fault> {
        self.materialise();
        // A protocol-1 write may cross parts (a protocol-2 one never
        // crosses its block).
        while !bytes.is_empty() {
            if offset >= self.filesize {
                return Err(Fault::new(FaultCode::Internal, "write past the end"));
            }
            let (number, _) = self.locate(offset / self.state.block);
            let (start, len) = self.part_range(number);
            let n = ((start + len - offset) as usize).min(bytes.len());
            let at = (offset - start) as usize;
            self.buf(number)?.data[at..at + n].copy_from_slice(&bytes[..n]);
            if self.v1 && offset + n as u64 == start + len {
                self.seal(number)?;
            }
            offset += n as u64;
            bytes = &bytes[n..];
        }
        if self.last_write.elapsed() >= HEARTBEAT {
            // A slow upload fills no part for a while: say we are alive.
            self.write_state(true)?;
        }
        Ok(())
    }

    fn begin_block(&mut self, idx: u64) -> Result<(), Fault> {
        self.materialise();
        let (number, i) = self.locate(idx);
        self.buf(number)?.crcs[i] = None;
        Ok(())
    }

    fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<(), Fault> {
        let (number, i) = self.locate(idx);
        self.buf(number)?.crcs[i] = good.then_some(crc);
        self.flush(number)
    }

    fn checkpoint(&mut self) -> Result<(), Fault> {
        let settled = self.reap(true);
        self.write_state(true)?;
        settled
    }

    /// Blocks of a part being replaced that were not sent again in this
    /// run are no longer in the store: asked for again.
    fn recheck(&mut self) -> Result<Recheck, Fault> {
        self.reap(true)?;
        if self.base.is_some() {
            return Ok(Recheck::Same);
        }
        let mut gone = Vec::new();
        for (&n, b) in &self.bufs {
            let first = (n as u64 - 1) * self.state.per;
            let missing = b.crcs.iter().enumerate().filter(|(_, c)| c.is_none());
            gone.extend(missing.map(|(i, _)| first + i as u64));
        }
        if !self.v1 {
            // Blocks offered from the stored object (a re-send that then
            // changed some of them) are in no part yet.
            gone.extend(self.unsent_parts_blocks());
            gone.sort_unstable();
        }
        Ok(match (gone.is_empty(), self.v1) {
            (true, _) => Recheck::Same,
            (false, false) => Recheck::Changed(gone),
            (false, true) => Recheck::Wrong(format!(
                "{}: {} byte range(s) never reached the object store",
                self.name,
                self.bufs.len()
            )),
        })
    }

    fn commit(&mut self, whole_crc: u32) -> Result<(), Fault> {
        if self.base.is_some() {
            // Every block was the stored object's: nothing to store.
            self.drop_upload();
            self.stored = StoredAs::Unchanged;
            return Ok(());
        }
        self.reap(true)?;
        // Still ours? (A node that lost the lease must not complete.)
        self.write_state(true)?;
        match self.make_room(whole_crc)? {
            StoredAs::Unchanged => {
                self.drop_upload();
                self.stored = StoredAs::Unchanged;
                return Ok(());
            }
            how => self.stored = how,
        }
        let parts = self.completion();
        let r = if parts.is_empty() {
            let _ = self.client.abort_multipart(&self.name, &self.state.upload);
            self.client
                .put_small(&self.name, &[], &super::Condition::None)
                .map(drop)
        } else {
            self.complete(&parts, whole_crc)
        };
        match r {
            Ok(()) => {
                self.record_finished(whole_crc);
                let _ = self.client.delete_object(&self.state_key);
                self.ended = true;
                Ok(())
            }
            Err(e) if matches!(e.kind, S3ErrorKind::BadDigest | S3ErrorKind::Other) => {
                // The store refused what we hold: never half a file; the
                // client's retry starts over.
                self.drop_upload();
                Err(fault(&e, &format!("store {} (starting over)", self.name)))
            }
            Err(e) => Err(fault(&e, &format!("store {}", self.name))),
        }
    }

    fn discard(&mut self) -> Result<(), Fault> {
        self.drop_upload();
        Ok(())
    }

    fn stored_as(&self) -> StoredAs {
        self.stored.clone()
    }
}

impl S3Part {
    /// Blocks of the parts that are neither uploaded nor being filled.
    fn unsent_parts_blocks(&self) -> Vec<u64> {
        let parts = block_count(self.filesize, self.state.block).div_ceil(self.state.per);
        let mut out = Vec::new();
        for n in 1..=parts as u16 {
            if self.state.parts.contains_key(&n) || self.bufs.contains_key(&n) {
                continue;
            }
            let first = (n as u64 - 1) * self.state.per;
            out.extend(first..first + self.part_blocks(n));
        }
        out
    }

    /// Before the new object is completed over the name: what is there
    /// already with the same content is left as it is (verified by our
    /// record, or by the store's own `FULL_OBJECT` CRC-32); a different
    /// object is kept as a numbered version, unless the server overwrites.
    fn make_room(&self, whole_crc: u32) -> Result<StoredAs, Fault> {
        let what = format!("look up the stored {}", self.name);
        let Some(info) = finished::head(&self.client, &self.name).map_err(|e| fault(&e, &what))?
        else {
            return Ok(StoredAs::New);
        };
        let rec = finished::read_record(&self.client, &self.name)
            .map_err(|e| fault(&e, &what))?
            .filter(|r| r.vouches_for(&info));
        let stored_crc = rec.map(|r| r.crc32).or_else(|| full_object_crc(&info));
        if info.size == self.filesize && stored_crc == Some(whole_crc) {
            return Ok(StoredAs::Unchanged);
        }
        if self.overwrite {
            return Ok(StoredAs::Replaced);
        }
        finished::keep_version(&self.client, &self.name, &info)
            .map(StoredAs::Kept)
            .map_err(|e| {
                fault(
                    &e,
                    &format!("keep the {} already stored before replacing it", self.name),
                )
            })
    }

    /// Writes the finished record of the object just stored: the block
    /// CRC-32s it was verified with, for re-sends, downloads and listings.
    /// Not fatal if it fails: the object is stored, only a re-send then
    /// costs its bytes and a download reads it once for its reference.
    fn record_finished(&self, whole_crc: u32) {
        let Ok(info) = self.client.head_object(&self.name) else {
            return;
        };
        let (block, crcs) = match self.v1 {
            true => (0, Vec::new()),
            false => (
                self.state.block,
                self.state
                    .parts
                    .values()
                    .flat_map(|p| p.crcs.iter().copied())
                    .collect(),
            ),
        };
        let rec = Finished {
            size: self.filesize,
            crc32: whole_crc,
            block,
            crcs,
            etag: info.etag,
            mtime: (unix_ms(SystemTime::now()) / 1000) as i64,
            source_mtime: self.source_mtime,
        };
        let _ = finished::write_record(&self.client, &self.name, &rec);
    }

    /// CompleteMultipartUpload; an answer lost on the way (NotFound after
    /// a retry) is success if the object is there with our CRC-32.
    fn complete(&self, parts: &[Part], whole_crc: u32) -> Result<(), S3Error> {
        match self
            .client
            .complete_multipart(&self.name, &self.state.upload, parts, whole_crc)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == S3ErrorKind::NotFound && e.attempts > 1 => {
                match self.client.head_object(&self.name) {
                    Ok(info) if info.crc32 == Some(whole_crc) => Ok(()),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for S3Part {
    /// Lets go of the lease, so another node may resume at once.
    fn drop(&mut self) {
        let _ = self.reap(true);
        if !self.ended && !self.etag.is_empty() {
            let _ = self.write_state(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let mut parts = BTreeMap::new();
        parts.insert(
            3,
            DonePart {
                etag: "\"abc\"".into(),
                crcs: vec![1, 0xdead_beef],
            },
        );
        let s = State {
            size: 99,
            crc: 0xfeed_f00d,
            block: 1 << 20,
            per: 8,
            upload: "u-1".into(),
            holder: "-".into(),
            beat: 42,
            parts,
        };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(State::decode("other\n"), None);
        assert_eq!(v1_part_size(1 << 30), MIN_PART);
        assert_eq!(v1_part_size(1 << 40) % (1 << 20), 0);
        assert!((1u64 << 40).div_ceil(v1_part_size(1 << 40)) <= MAX_PARTS);
    }

    #[test]
    fn parts_are_big_enough_and_few_enough() {
        assert_eq!(blocks_per_part(100 << 20, 1 << 20), 8);
        assert_eq!(blocks_per_part(100 << 20, 64 << 20), 1);
        let per = blocks_per_part(1 << 40, 1 << 20);
        assert!(block_count(1 << 40, 1 << 20).div_ceil(per) <= MAX_PARTS);
    }
}
