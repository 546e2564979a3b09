//! The server's storage directory: finished files and held parts.
//!
//! Layout of a storage directory `DIR`:
//!
//! - `DIR/NAME`: a finished upload. It appears only after its CRC-32 matched,
//!   by an atomic rename, and is durable (file and directory fsynced) before
//!   the server answers `CRC32_OK`.
//! - `DIR/.bigtransfer/`: the server's own state, never visible as a file a
//!   client could name (the name is reserved):
//!   - `lock`: held (flock) by the one server using `DIR`;
//!   - `KEY.part`: the bytes received so far of an interrupted upload;
//!   - `KEY.meta`: its checkpoint record (see [`Checkpoint`]);
//!
//!   where `KEY` is the SHA-256 of the name in hex, so that names
//!   of up to 255 bytes still fit the file system's name limit.
//!
//! Durability: data is written to `KEY.part`; for a checkpoint the part is
//! `fdatasync`ed and only then is the checkpoint (offset and the CRC-32 of
//! the bytes up to that offset) written to `KEY.meta` and `fdatasync`ed.
//! While data flows, a checkpoint is taken every [`CHECKPOINT_STEP`] bytes on
//! a helper thread (a [`Syncer`]), so the receive loop never waits for the
//! disk's flush; when a connection ends, one is taken before it returns.
//! After a crash the server resumes from the last checkpoint: every byte it
//! announces was received and is on disk, and no byte needs to be re-read to
//! recompute the CRC. A crash costs less than [`CHECKPOINT_INTERVAL`] of
//! received data: one step being received, one being synced.
//!
//! Not for: the network. This module knows nothing of sockets or the wire.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::name::{SafeName, RESERVED_NAME};
use crate::proto::Verdict;
use crate::{Error, ErrorKind, Result};

/// The most received data a server crash can cost.
pub const CHECKPOINT_INTERVAL: u64 = 32 << 20;

/// Received bytes between two checkpoints. Half the interval: a checkpoint
/// is made durable on a helper thread while the next step arrives, and the
/// next one waits for it, so at most two steps are ever unrecorded.
pub const CHECKPOINT_STEP: u64 = CHECKPOINT_INTERVAL / 2;

/// Writeback of received data is started every this many bytes, so the disk
/// works in parallel with the network and a checkpoint's `fdatasync` finds
/// little left to write.
pub(crate) const WRITEBACK_STEP: u64 = 8 << 20;

const META_MAGIC: &[u8; 8] = b"BTHELD01";
/// Same record layout, for a version-2 (block-verified) upload; its `crc32`
/// field holds the block size's log2, since the whole-file CRC-32 is only
/// known at the end.
pub(crate) const META_MAGIC_V2: &[u8; 8] = b"BTHELD02";
/// Fixed part of the record: magic, filesize, crc32, name length, name, crc.
pub(crate) const META_HEAD_LEN: usize = 8 + 8 + 4 + 2 + 255 + 4;
pub(crate) const SLOT_LEN: usize = 8 + 8 + 4 + 8 + 8 + 4 + 4;
pub(crate) const META_LEN: usize = META_HEAD_LEN + 2 * SLOT_LEN;

/// The durable state of a held part: how many bytes are safely on disk and
/// the CRC-32 of exactly those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Bytes of the file that are on disk and were received.
    pub offset: u64,
    /// CRC-32 of bytes `[0, offset)`.
    pub crc32: u32,
}

/// What the held part belongs to: an upload is resumed only onto a held part
/// of the same name, size and whole-file CRC-32, so a changed source file is
/// never appended to stale bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The sanitised file name.
    pub name: SafeName,
    /// The whole file's size, as the client announced it.
    pub filesize: u64,
    /// The whole file's CRC-32, as the client announced it.
    pub crc32: u32,
}

/// Encodes the checkpoint record file: a checksummed head naming the upload
/// and two checksummed slots written alternately, so that a torn write of one
/// slot leaves the other intact.
pub fn encode_meta_head(id: &Identity) -> Vec<u8> {
    encode_meta_head_as(id, META_MAGIC)
}

pub(crate) fn encode_meta_head_as(id: &Identity, magic: &[u8; 8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(META_LEN);
    v.extend_from_slice(magic);
    v.extend_from_slice(&id.filesize.to_be_bytes());
    v.extend_from_slice(&id.crc32.to_be_bytes());
    let name = id.name.as_str().as_bytes();
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    let mut padded = [0u8; 255];
    padded[..name.len()].copy_from_slice(name);
    v.extend_from_slice(&padded);
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

/// The part file's identity on disk when a checkpoint was taken: if it is
/// unchanged at resume, nothing but this server touched the part since, and
/// the recorded CRC-32 state can be trusted without re-reading the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartStamp {
    /// Inode number.
    pub ino: u64,
    /// Status-change time, seconds.
    pub ctime: i64,
    /// Status-change time, nanoseconds.
    pub ctime_nsec: u32,
}

impl PartStamp {
    pub(crate) fn of(m: &fs::Metadata) -> PartStamp {
        use std::os::unix::fs::MetadataExt;
        PartStamp {
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec() as u32,
        }
    }
}

/// Encodes one checkpoint slot (sequence number, checkpoint, part stamp).
pub fn encode_slot(seq: u64, cp: Checkpoint, stamp: PartStamp) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    s[0..8].copy_from_slice(&seq.to_be_bytes());
    s[8..16].copy_from_slice(&cp.offset.to_be_bytes());
    s[16..20].copy_from_slice(&cp.crc32.to_be_bytes());
    s[20..28].copy_from_slice(&stamp.ino.to_be_bytes());
    s[28..36].copy_from_slice(&stamp.ctime.to_be_bytes());
    s[36..40].copy_from_slice(&stamp.ctime_nsec.to_be_bytes());
    let crc = crc32fast::hash(&s[..40]);
    s[40..44].copy_from_slice(&crc.to_be_bytes());
    s
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// A decoded checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRecord {
    /// What the held part belongs to.
    pub identity: Identity,
    /// Sequence number of the newest valid slot.
    pub seq: u64,
    /// The newest valid checkpoint.
    pub checkpoint: Checkpoint,
    /// The part file's stamp when that checkpoint was taken.
    pub stamp: PartStamp,
    /// 1: a legacy upload; 2: a block-verified one (see [`crate::v2`]).
    pub version: u8,
}

/// Decodes a checkpoint record: the identity it belongs to and its newest
/// valid slot. A plain function over bytes, so a damaged or hostile record
/// can be tested (and fuzzed) without a disk.
pub fn decode_meta(bytes: &[u8]) -> std::result::Result<MetaRecord, String> {
    if bytes.len() < META_LEN {
        return Err(format!(
            "record is {} bytes, expected {META_LEN}",
            bytes.len()
        ));
    }
    let head = &bytes[..META_HEAD_LEN];
    let version = match &head[..8] {
        m if m == META_MAGIC => 1,
        m if m == META_MAGIC_V2 => 2,
        _ => return Err("bad magic".into()),
    };
    let body = META_HEAD_LEN - 4;
    if crc32fast::hash(&head[..body]) != be_u32(&head[body..]) {
        return Err("head checksum mismatch".into());
    }
    let filesize = be_u64(&head[8..16]);
    let file_crc = be_u32(&head[16..20]);
    let name_len = u16::from_be_bytes([head[20], head[21]]) as usize;
    if name_len == 0 || name_len > 255 {
        return Err("bad name length".into());
    }
    let name = std::str::from_utf8(&head[22..22 + name_len]).map_err(|_| "name is not UTF-8")?;
    let name = SafeName::from_wire(name).map_err(|e| format!("bad name: {e}"))?;
    let mut best: Option<(u64, Checkpoint, PartStamp)> = None;
    for i in 0..2 {
        let s = &bytes[META_HEAD_LEN + i * SLOT_LEN..META_HEAD_LEN + (i + 1) * SLOT_LEN];
        if crc32fast::hash(&s[..40]) != be_u32(&s[40..]) {
            continue;
        }
        let seq = be_u64(&s[0..8]);
        let cp = Checkpoint {
            offset: be_u64(&s[8..16]),
            crc32: be_u32(&s[16..20]),
        };
        let stamp = PartStamp {
            ino: be_u64(&s[20..28]),
            ctime: be_u64(&s[28..36]) as i64,
            ctime_nsec: be_u32(&s[36..40]),
        };
        if cp.offset > filesize {
            continue;
        }
        if best.is_none_or(|(bs, _, _)| seq > bs) {
            best = Some((seq, cp, stamp));
        }
    }
    let (seq, checkpoint, stamp) = best.ok_or("no valid checkpoint slot")?;
    Ok(MetaRecord {
        identity: Identity {
            name,
            filesize,
            crc32: file_crc,
        },
        seq,
        checkpoint,
        stamp,
        version,
    })
}

/// A file inside one of the store's directories, reached through the
/// directory's open descriptor (`openat`), never through a path: if a
/// directory is swapped for a symlink while the server runs, every open,
/// rename and unlink still happens in the directory the server opened.
#[derive(Debug, Clone)]
pub(crate) struct At {
    dir: Arc<File>,
    name: String,
    shown: PathBuf,
}

impl At {
    /// Opens read-write (creating if asked). A symlink in its place is
    /// removed, never followed: nothing but the server puts files here.
    pub(crate) fn open(&self, create: bool) -> io::Result<File> {
        match crate::sys::open_at(&self.dir, &self.name, create) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                crate::sys::unlink_at(&self.dir, &self.name)?;
                if create {
                    crate::sys::open_at(&self.dir, &self.name, true)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "a symlink was in its place (removed)",
                    ))
                }
            }
            r => r,
        }
    }

    pub(crate) fn open_read(&self) -> io::Result<File> {
        crate::sys::open_read_at(&self.dir, &self.name)
    }

    pub(crate) fn remove(&self) -> io::Result<()> {
        crate::sys::unlink_at(&self.dir, &self.name)
    }

    /// Whether something (a file, or anything else) is at this name.
    pub(crate) fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.shown).is_ok()
    }

    pub(crate) fn rename_to(&self, to: &At) -> io::Result<()> {
        crate::sys::rename_at(&self.dir, &self.name, &to.dir, &to.name)
    }

    /// The path, for messages only.
    pub(crate) fn display(&self) -> std::path::Display<'_> {
        self.shown.display()
    }
}

/// An open directory of the store.
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    fd: Arc<File>,
    path: PathBuf,
}

impl Dir {
    pub(crate) fn at(&self, name: &str) -> At {
        At {
            dir: Arc::clone(&self.fd),
            name: name.to_string(),
            shown: self.path.join(name),
        }
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.fd.sync_all().map_err(|e| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot sync directory {}", self.path.display()),
                e,
            )
        })
    }
}

/// The state-directory key of a name: SHA-256 of its UTF-8 bytes, in hex
/// (64 characters, so names of up to 255 bytes still fit the file system's
/// name limit). A cryptographic hash, because two names sharing a key would
/// share a held part: with the linear FNV used before, an attacker could
/// compute a twin of a victim's name and overwrite its held bytes.
pub fn key_of(name: &SafeName) -> String {
    sha256_hex(name.as_str().as_bytes())
}

/// SHA-256 in lowercase hex: a stable, collision-resistant file name for
/// arbitrary bytes (state keys, cache entry names).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A storage directory, opened and locked by one server.
#[derive(Debug)]
pub struct Store {
    dir: Dir,
    state: Dir,
    _lock: File,
}

/// Why a held part could not be resumed and was started over (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fresh {
    /// There was nothing held for this name.
    Nothing,
    /// Something was held but for another file (size or CRC-32 differ).
    OtherSource,
    /// The checkpoint record or the part was damaged or missing; the reason.
    Damaged(String),
}

impl Store {
    /// Opens (creating if missing) the storage directory `dir` and takes its
    /// lock, so two servers never share one directory.
    pub fn open(dir: &Path) -> Result<Store> {
        let serr = |what: String, e: io::Error| Error::io(ErrorKind::Storage, what, e);
        fs::create_dir_all(dir).map_err(|e| {
            serr(
                format!("cannot create storage directory {}", dir.display()),
                e,
            )
        })?;
        let state = dir.join(RESERVED_NAME);
        match fs::symlink_metadata(&state) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::Storage,
                    format!(
                        "{} exists and is not a directory; move it away",
                        state.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&state)
                    .map_err(|e| serr(format!("cannot create {}", state.display()), e))?;
            }
            Err(e) => return Err(serr(format!("cannot inspect {}", state.display()), e)),
        }
        let dir_fd = crate::sys::open_dir(dir).map_err(|e| {
            serr(
                format!("cannot open storage directory {}", dir.display()),
                e,
            )
        })?;
        let state_fd = crate::sys::open_dir_at(&dir_fd, RESERVED_NAME).map_err(|e| {
            serr(
                format!(
                    "cannot open {} (it must be a directory, not a symlink)",
                    state.display()
                ),
                e,
            )
        })?;
        let dir = Dir {
            fd: Arc::new(dir_fd),
            path: dir.to_path_buf(),
        };
        let state = Dir {
            fd: Arc::new(state_fd),
            path: state,
        };
        let lock = state
            .at("lock")
            .open(true)
            .map_err(|e| serr(format!("cannot open {}", state.at("lock").display()), e))?;
        crate::sys::try_lock_exclusive(&lock).map_err(|e| {
            serr(
                format!(
                    "storage directory {} is in use by another server",
                    dir.path.display()
                ),
                e,
            )
        })?;
        Ok(Store {
            dir,
            state,
            _lock: lock,
        })
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Bytes free for new data on the storage directory's file system.
    pub fn available_space(&self) -> Result<u64> {
        crate::sys::available_space(&self.dir.path)
            .map_err(|e| Error::io(ErrorKind::Storage, "cannot read free space", e))
    }

    pub(crate) fn part_path(&self, key: &str) -> At {
        self.state.at(&format!("{key}.part"))
    }

    pub(crate) fn meta_path(&self, key: &str) -> At {
        self.state.at(&format!("{key}.meta"))
    }

    /// Opens the held part for `id`: resumes it when a valid checkpoint of
    /// the same identity exists, else starts it over from zero. Returns the
    /// part and, when it starts from zero, why.
    pub fn begin(&self, id: Identity) -> Result<(HeldPart, Option<Fresh>)> {
        let key = key_of(&id.name);
        let part_path = self.part_path(&key);
        let meta_path = self.meta_path(&key);
        let serr = |what: &str, p: &At, e: io::Error| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot {what} {}", p.display()),
                e,
            )
        };
        let mut fresh = Some(Fresh::Nothing);
        let mut resume: Option<(MetaRecord, File, File)> = None;
        match meta_path.open(false) {
            Ok(mut meta) => {
                let mut bytes = Vec::with_capacity(META_LEN);
                meta.read_to_end(&mut bytes)
                    .map_err(|e| serr("read", &meta_path, e))?;
                match decode_meta(&bytes) {
                    Ok(rec) if rec.identity == id && rec.version == 1 => {
                        match part_path.open(false) {
                            Ok(part) => {
                                let len = part
                                    .metadata()
                                    .map_err(|e| serr("inspect", &part_path, e))?
                                    .len();
                                if len >= rec.checkpoint.offset {
                                    resume = Some((rec, part, meta));
                                    fresh = None;
                                } else {
                                    fresh = Some(Fresh::Damaged(format!(
                                        "part holds {len} bytes but its checkpoint claims {}",
                                        rec.checkpoint.offset
                                    )));
                                }
                            }
                            Err(e) => fresh = Some(Fresh::Damaged(format!("part missing: {e}"))),
                        }
                    }
                    Ok(_) => fresh = Some(Fresh::OtherSource),
                    Err(why) => fresh = Some(Fresh::Damaged(format!("checkpoint record: {why}"))),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(serr("open", &meta_path, e)),
        }
        let mut prefix_check = None;
        let (seq, cp, part, meta) = match resume {
            Some((rec, part, meta)) => {
                let cp = rec.checkpoint;
                let m = part
                    .metadata()
                    .map_err(|e| serr("inspect", &part_path, e))?;
                if m.len() != cp.offset || PartStamp::of(&m) != rec.stamp {
                    // The part changed after its last checkpoint: the server
                    // crashed mid-write, or something else wrote to it. Drop
                    // the unrecorded tail, and have the recorded prefix
                    // re-read (alongside the transfer) before any verdict.
                    if m.len() != cp.offset {
                        part.set_len(cp.offset)
                            .map_err(|e| serr("truncate", &part_path, e))?;
                    }
                    prefix_check = Some(spawn_prefix_check(part_path.open_read(), cp));
                }
                (rec.seq, cp, part, meta)
            }
            None => {
                let _ = self.state.at(&format!("{key}.blk")).remove();
                let part = part_path
                    .open(true)
                    .map_err(|e| serr("create", &part_path, e))?;
                part.set_len(0)
                    .map_err(|e| serr("truncate", &part_path, e))?;
                let meta = meta_path
                    .open(true)
                    .map_err(|e| serr("create", &meta_path, e))?;
                let cp = Checkpoint {
                    offset: 0,
                    crc32: 0,
                };
                let stamp = part
                    .metadata()
                    .map(|m| PartStamp::of(&m))
                    .unwrap_or_default();
                let mut rec = encode_meta_head(&id);
                rec.extend_from_slice(&encode_slot(0, cp, stamp));
                rec.extend_from_slice(&[0u8; SLOT_LEN]);
                meta.set_len(0)
                    .map_err(|e| serr("truncate", &meta_path, e))?;
                meta.write_all_at(&rec, 0)
                    .map_err(|e| serr("write", &meta_path, e))?;
                meta.sync_all().map_err(|e| serr("sync", &meta_path, e))?;
                self.state.sync()?;
                (0, cp, part, meta)
            }
        };
        let mut part = part;
        part.seek(SeekFrom::Start(cp.offset))
            .map_err(|e| serr("seek", &part_path, e))?;
        let witness = part.metadata().ok().map(|m| PartStamp::of(&m));
        let held = HeldPart {
            witness,
            tampered: false,
            hasher: crc32fast::Hasher::new_with_initial_len(cp.crc32, cp.offset),
            offset: cp.offset,
            durable: cp,
            seq,
            synced_part: part.try_clone().ok().map(Arc::new),
            part,
            meta: Arc::new(meta),
            part_path,
            meta_path,
            final_path: self.final_at(&id.name),
            dir: self.dir.clone(),
            id,
            done: false,
            syncer: Syncer::new(),
            prefix_check,
            prefix_problem: None,
            written_back: cp.offset,
            pieces: crate::pieces::PieceChooser::default(),
        };
        Ok((held, fresh))
    }

    pub(crate) fn state(&self) -> &Dir {
        &self.state
    }

    pub(crate) fn final_at(&self, name: &SafeName) -> At {
        self.dir.at(name.as_str())
    }

    pub(crate) fn dir_handle(&self) -> &Dir {
        &self.dir
    }

    /// How many bytes of an upload of `name` with `filesize` bytes the
    /// record says are held, read without touching anything: the space an
    /// upload needs is checked with it before its held part is opened, so a
    /// refused header never changes what is held.
    pub fn held_hint(&self, name: &SafeName, filesize: u64) -> u64 {
        let meta_path = self.meta_path(&key_of(name));
        let Ok(mut meta) = meta_path.open_read() else {
            return 0;
        };
        let mut bytes = Vec::with_capacity(META_LEN);
        if meta.read_to_end(&mut bytes).is_err() {
            return 0;
        }
        match decode_meta(&bytes) {
            Ok(rec) if rec.identity.name == *name && rec.identity.filesize == filesize => {
                rec.checkpoint.offset.min(filesize)
            }
            _ => 0,
        }
    }

    /// Keys of held parts untouched for longer than `max_age`: those whose
    /// record is that old, and orphans (a `.part` or `.blk` without a
    /// record, left by a crash between creating the files) that old. Only
    /// candidates: [`Store::remove_if_expired`] checks again.
    pub fn expired(&self, max_age: Duration) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.state.path)
            .map_err(|e| Error::io(ErrorKind::Storage, "cannot list the state directory", e))?;
        let mut keys = Vec::new();
        for entry in entries.flatten() {
            let fname = entry.file_name();
            let Some(name) = fname.to_str() else { continue };
            let Some((key, ext)) = name.rsplit_once('.') else {
                continue;
            };
            let orphan = matches!(ext, "part" | "blk") && !self.meta_path(key).exists();
            if (ext == "meta" || orphan)
                && self.is_older(name, max_age)
                && !keys.iter().any(|k| k == key)
            {
                keys.push(key.to_string());
            }
        }
        Ok(keys)
    }

    fn is_older(&self, file: &str, max_age: Duration) -> bool {
        let age = fs::symlink_metadata(self.state.path.join(file))
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        age.is_some_and(|a| a > max_age)
    }

    /// Deletes the held part `key` if it is still untouched for longer than
    /// `max_age` (its record, or for an orphan its part). The caller holds
    /// the claims lock and has checked that no upload claims the key, so a
    /// starting upload can never lose its part to the sweep.
    pub fn remove_if_expired(&self, key: &str, max_age: Duration) -> bool {
        let record = format!("{key}.meta");
        let still = if self.meta_path(key).exists() {
            self.is_older(&record, max_age)
        } else {
            ["part", "blk"].iter().all(|ext| {
                !self.state.at(&format!("{key}.{ext}")).exists()
                    || self.is_older(&format!("{key}.{ext}"), max_age)
            })
        };
        if still {
            let _ = self.part_path(key).remove();
            let _ = self.state.at(&format!("{key}.blk")).remove();
            let _ = self.meta_path(key).remove();
        }
        still
    }
}

/// Re-reads `[0, cp.offset)` of the part on its own thread and says whether
/// its CRC-32 is the recorded one.
fn spawn_prefix_check(
    part: io::Result<File>,
    cp: Checkpoint,
) -> std::thread::JoinHandle<std::result::Result<(), String>> {
    std::thread::spawn(move || {
        let f = part.map_err(|e| format!("cannot re-read held part: {e}"))?;
        crate::sys::advise_sequential(&f);
        let mut r = f.take(cp.offset);
        let mut h = crc32fast::Hasher::new();
        let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
        let mut n_total = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("cannot re-read held part: {e}")),
            };
            h.update(&buf[..n]);
            n_total += n as u64;
        }
        if n_total != cp.offset {
            return Err(format!(
                "held part shrank to {n_total} bytes (checkpoint: {})",
                cp.offset
            ));
        }
        if h.finalize() != cp.crc32 {
            return Err(
                "held part does not match its checkpoint (modified outside the server?)".into(),
            );
        }
        Ok(())
    })
}

/// One checkpoint's disk work, run by a [`Syncer`].
pub(crate) type SyncJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// Makes checkpoints durable on a helper thread, one at a time, so that the
/// connection's thread keeps receiving while the disk flushes. A checkpoint
/// `fdatasync`s the part, then writes and syncs the record; on this class of
/// machine that blocked the receive loop for 5-10 ms every step.
///
/// At most one job is in flight, with a note of what it records (`T`): the
/// caller settles the previous job (taking back its note to apply it) before
/// submitting the next, which bounds both the memory and the data a crash
/// can cost. A job's error (a failed `fdatasync` means data may be lost) is
/// returned by [`Syncer::settle`], never dropped.
///
/// Not for anything but checkpoints: jobs must not touch the socket.
#[derive(Debug)]
pub(crate) struct Syncer<T> {
    worker: Option<SyncWorker>,
    in_flight: Option<T>,
}

#[derive(Debug)]
struct SyncWorker {
    jobs: std::sync::mpsc::SyncSender<SyncJob>,
    results: std::sync::mpsc::Receiver<Result<()>>,
    thread: std::thread::JoinHandle<()>,
}

fn checkpoint_thread_gone() -> Error {
    Error::new(
        ErrorKind::Storage,
        "the checkpoint thread stopped unexpectedly",
    )
}

impl<T> Syncer<T> {
    /// A syncer with no thread yet: the thread starts with the first job,
    /// so short uploads never start one.
    pub(crate) fn new() -> Syncer<T> {
        Syncer {
            worker: None,
            in_flight: None,
        }
    }

    /// The note of the job in flight, if any.
    pub(crate) fn in_flight(&self) -> Option<&T> {
        self.in_flight.as_ref()
    }

    /// Waits for the job in flight, if any: its note once it succeeded,
    /// `None` if nothing was in flight, or its error.
    pub(crate) fn settle(&mut self) -> Result<Option<T>> {
        let Some(note) = self.in_flight.take() else {
            return Ok(None);
        };
        match self.worker.as_ref().map(|w| w.results.recv()) {
            Some(Ok(r)) => r.map(|()| Some(note)),
            _ => Err(checkpoint_thread_gone()),
        }
    }

    /// Starts `job`, noted as `note`. The previous job must have been
    /// settled.
    pub(crate) fn submit(&mut self, job: SyncJob, note: T) -> Result<()> {
        if self.in_flight.is_some() {
            return Err(Error::new(
                ErrorKind::Storage,
                "internal: a checkpoint is already in flight",
            ));
        }
        if self.worker.is_none() {
            let (jobs, job_rx) = std::sync::mpsc::sync_channel::<SyncJob>(1);
            let (res_tx, results) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name("bt-checkpoint".into())
                .spawn(move || {
                    for job in job_rx {
                        if res_tx.send(job()).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| {
                    Error::io(ErrorKind::Storage, "cannot start a checkpoint thread", e)
                })?;
            self.worker = Some(SyncWorker {
                jobs,
                results,
                thread,
            });
        }
        match self.worker.as_ref().map(|w| w.jobs.send(job)) {
            Some(Ok(())) => {
                self.in_flight = Some(note);
                Ok(())
            }
            _ => Err(checkpoint_thread_gone()),
        }
    }
}

impl<T> Drop for Syncer<T> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            // Closing the job channel ends the thread after its current job.
            drop(w.jobs);
            let _ = w.thread.join();
        }
    }
}

/// An upload in progress on the server: the part file, the running CRC-32
/// and the last durable checkpoint. Dropping it without [`HeldPart::finish`]
/// checkpoints what was received, so the upload stays resumable.
#[derive(Debug)]
pub struct HeldPart {
    id: Identity,
    hasher: crc32fast::Hasher,
    offset: u64,
    durable: Checkpoint,
    seq: u64,
    part: File,
    meta: Arc<File>,
    part_path: At,
    meta_path: At,
    final_path: At,
    dir: Dir,
    done: bool,
    /// Background checkpoints, each noted with its sequence number and what
    /// it records; `synced_part` is a second handle on the part for their
    /// `fdatasync`.
    syncer: Syncer<(u64, Checkpoint)>,
    synced_part: Option<Arc<File>>,
    prefix_check: Option<std::thread::JoinHandle<std::result::Result<(), String>>>,
    prefix_problem: Option<String>,
    written_back: u64,
    /// The size of the page-cache writes, chosen by how fast they go.
    pieces: crate::pieces::PieceChooser,
    /// The part's stamp after our last write: if it differs before our
    /// next write or at the end, something else wrote to the part, and the
    /// verdict is taken over the bytes on disk, re-read, not over what
    /// arrived on the network.
    witness: Option<PartStamp>,
    /// Whether a foreign write was seen.
    tampered: bool,
}

impl HeldPart {
    /// Bytes held so far (received, maybe not yet durable).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// CRC-32 of the bytes held so far.
    pub fn crc32(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    /// The last durable checkpoint.
    pub fn durable(&self) -> Checkpoint {
        self.durable
    }

    /// Why the resumed prefix was rejected by [`HeldPart::finish`], if it was.
    pub fn prefix_problem(&self) -> Option<&str> {
        self.prefix_problem.as_deref()
    }

    /// What this part belongs to.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Appends received bytes, checkpointing every [`CHECKPOINT_INTERVAL`].
    /// On error nothing past the last good write is counted, and the part
    /// stays resumable from its last checkpoint.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let room = self.id.filesize - self.offset;
        if data.len() as u64 > room {
            return Err(Error::new(
                ErrorKind::Protocol,
                "more bytes than the announced file size",
            ));
        }
        // Never hold a whole interval beyond what is known durable: before
        // that, wait for the checkpoint in flight.
        if self.syncer.in_flight().is_some()
            && self.offset + data.len() as u64 - self.durable.offset >= CHECKPOINT_INTERVAL
        {
            self.settle()?;
        }
        self.note_foreign_writes();
        let started = std::time::Instant::now();
        let written = data
            .chunks(self.pieces.piece())
            .try_for_each(|piece| self.part.write_all(piece));
        self.pieces.record(data.len(), started.elapsed());
        if let Err(e) = written {
            // Part of `data` may be on disk: realign the file position with
            // what we count, so a later checkpoint never covers torn bytes.
            let _ = self.part.seek(SeekFrom::Start(self.offset));
            return Err(Error::io(
                ErrorKind::Storage,
                format!("cannot write {}", self.part_path.display()),
                e,
            ));
        }
        // The witness is taken at once: hashing first would leave a window
        // in which another writer's change is mistaken for ours.
        self.witness = self.stamp().ok();
        self.hasher.update(data);
        self.offset += data.len() as u64;
        if self.offset - self.written_back >= WRITEBACK_STEP {
            crate::sys::start_writeback(
                &self.part,
                self.written_back,
                self.offset - self.written_back,
            );
            self.written_back = self.offset;
        }
        let since = self
            .syncer
            .in_flight()
            .map_or(self.durable.offset, |(_, cp)| cp.offset);
        if self.offset - since >= CHECKPOINT_STEP {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// Records a finished background checkpoint as the durable one.
    fn settle(&mut self) -> Result<()> {
        if let Some((seq, cp)) = self.syncer.settle()? {
            self.seq = seq;
            self.durable = cp;
        }
        Ok(())
    }

    /// Asks the helper thread for a checkpoint of everything written so far
    /// (after waiting for the previous one). Falls back to a checkpoint on
    /// this thread if the part could not be opened twice.
    fn checkpoint_in_background(&mut self) -> Result<()> {
        self.settle()?;
        let Some(part) = self.synced_part.clone() else {
            return self.checkpoint();
        };
        let cp = Checkpoint {
            offset: self.offset,
            crc32: self.hasher.clone().finalize(),
        };
        // The stamp is taken now, while the record is exactly true: a later
        // write changes the part's ctime, so a crash after it makes the next
        // start re-read the prefix instead of trusting it.
        let stamp = self.stamp()?;
        let seq = self.seq + 1;
        let meta = Arc::clone(&self.meta);
        let (part_path, meta_path) = (self.part_path.clone(), self.meta_path.clone());
        self.syncer.submit(
            Box::new(move || {
                crate::sys::fdatasync(&part).map_err(|e| {
                    Error::io(
                        ErrorKind::Storage,
                        format!("cannot sync {}", part_path.display()),
                        e,
                    )
                })?;
                write_slot(&meta, &meta_path, seq, cp, stamp)
            }),
            (seq, cp),
        )
    }

    fn stamp(&self) -> Result<PartStamp> {
        self.part
            .metadata()
            .map(|m| PartStamp::of(&m))
            .map_err(|e| {
                Error::io(
                    ErrorKind::Storage,
                    format!("cannot inspect {}", self.part_path.display()),
                    e,
                )
            })
    }

    /// Makes everything received so far durable and records it, on this
    /// thread (after any background checkpoint in flight).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.settle()?;
        if self.offset == self.durable.offset {
            return Ok(());
        }
        crate::sys::fdatasync(&self.part).map_err(|e| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot sync {}", self.part_path.display()),
                e,
            )
        })?;
        let cp = Checkpoint {
            offset: self.offset,
            crc32: self.hasher.clone().finalize(),
        };
        let stamp = self.stamp()?;
        let seq = self.seq + 1;
        write_slot(&self.meta, &self.meta_path, seq, cp, stamp)?;
        self.seq = seq;
        self.durable = cp;
        Ok(())
    }

    /// Ends a complete upload: compares the CRC-32 of all received bytes with
    /// the announced one. On a match the file is made durable and renamed to
    /// its final name before this returns [`Verdict::Ok`]; on a mismatch the
    /// held part is discarded so the client's retry starts from zero.
    pub fn finish(&mut self) -> Result<Verdict> {
        if self.offset != self.id.filesize {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "upload incomplete: {} of {} bytes",
                    self.offset, self.id.filesize
                ),
            ));
        }
        let problem = self.verify()?;
        self.done = true;
        if self.hasher.clone().finalize() != self.id.crc32 || problem.is_some() {
            self.discard();
            return Ok(Verdict::Mismatch);
        }
        let storage = |what: String, e: io::Error| Error::io(ErrorKind::Storage, what, e);
        self.part
            .sync_all()
            .map_err(|e| storage(format!("cannot sync {}", self.part_path.display()), e))?;
        if let Err(e) = self.part_path.rename_to(&self.final_path) {
            self.done = false;
            return Err(storage(
                format!("cannot rename into {}", self.final_path.display()),
                e,
            ));
        }
        self.dir.sync()?;
        let _ = self.meta_path.remove();
        Ok(Verdict::Ok)
    }
}

impl HeldPart {
    /// Whether the held part holds exactly the bytes received, to be asked
    /// before the verdict: the resumed prefix (re-read in the background)
    /// matched its record, and nothing else wrote to the part since. The
    /// reason when it does not (also kept as [`HeldPart::prefix_problem`]).
    pub fn verify(&mut self) -> Result<Option<String>> {
        // A background fdatasync that failed may have lost data that a later
        // one would not report again: it fails the upload.
        self.settle()?;
        match self.prefix_check.take().map(|t| t.join()) {
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(why))) => self.prefix_problem = Some(why),
            Some(Err(_)) => self.prefix_problem = Some("held part check failed".into()),
        }
        if self.prefix_problem.is_none() {
            let crc = self.hasher.clone().finalize();
            if let Err(why) = self.check_on_disk(crc) {
                self.prefix_problem = Some(why);
            }
        }
        Ok(self.prefix_problem.clone())
    }

    /// Throws the held part away (after a failed verification), so the
    /// client's retry starts from zero.
    pub fn discard(&mut self) {
        self.done = true;
        let _ = self.part_path.remove();
        let _ = self.meta_path.remove();
    }

    /// Notes whether the part changed since our last write (its stamp is
    /// not the one that write left): someone else wrote to it.
    fn note_foreign_writes(&mut self) {
        if let (Some(w), Ok(now)) = (self.witness, self.stamp()) {
            self.tampered |= w != now;
        }
    }

    /// Confirms that the part on disk holds the bytes whose CRC-32 is `crc`:
    /// when its stamp is the one our last write left and the name still
    /// leads to our file, nothing else wrote to it; otherwise the whole part
    /// is read back and its CRC-32 must be `crc`.
    fn check_on_disk(&self, crc: u32) -> std::result::Result<(), String> {
        let now = self.stamp().map_err(|e| e.to_string())?;
        let same_file = self
            .part_path
            .open_read()
            .and_then(|f| f.metadata())
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == now.ino);
        if same_file && !self.tampered && self.witness.is_none_or(|w| w == now) {
            return Ok(());
        }
        let reread = crc_of_file(&self.part, self.id.filesize)
            .map_err(|e| format!("cannot re-read the held part: {e}"))?;
        if !same_file || reread != crc {
            return Err(
                "the held part changed on disk behind the server's back (its bytes are not the ones received)".into(),
            );
        }
        Ok(())
    }
}

/// CRC-32 of the first `len` bytes of `file`, read in large blocks.
pub(crate) fn crc_of_file(file: &File, len: u64) -> io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
    let mut at = 0u64;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..want], at)?;
        h.update(&buf[..want]);
        at += want as u64;
    }
    Ok(h.finalize())
}

/// Writes checkpoint `seq` into its slot of the record and syncs it.
pub(crate) fn write_slot(
    meta: &File,
    meta_path: &At,
    seq: u64,
    cp: Checkpoint,
    stamp: PartStamp,
) -> Result<()> {
    let pos = (META_HEAD_LEN + (seq % 2) as usize * SLOT_LEN) as u64;
    meta.write_all_at(&encode_slot(seq, cp, stamp), pos)
        .and_then(|_| crate::sys::fdatasync(meta))
        .map_err(|e| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot write {}", meta_path.display()),
                e,
            )
        })
}

impl Drop for HeldPart {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.checkpoint();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, filesize: u64, crc32: u32) -> Identity {
        Identity {
            name: SafeName::from_wire(name).unwrap(),
            filesize,
            crc32,
        }
    }

    fn record(i: &Identity, slots: &[(u64, Checkpoint)]) -> Vec<u8> {
        let mut v = encode_meta_head(i);
        let mut s = [[0u8; SLOT_LEN]; 2];
        for &(seq, cp) in slots {
            s[(seq % 2) as usize] = encode_slot(seq, cp, PartStamp::default());
        }
        v.extend_from_slice(&s[0]);
        v.extend_from_slice(&s[1]);
        v
    }

    #[test]
    fn record_round_trip_takes_the_newest_valid_slot() {
        let i = id("a.bin", 1000, 7);
        let old = Checkpoint {
            offset: 100,
            crc32: 1,
        };
        let new = Checkpoint {
            offset: 200,
            crc32: 2,
        };
        let rec = record(&i, &[(4, old), (5, new)]);
        assert_eq!(rec.len(), META_LEN);
        let d = decode_meta(&rec).unwrap();
        assert_eq!((d.identity, d.seq, d.checkpoint), (i.clone(), 5, new));
        // A torn newest slot falls back to the previous checkpoint.
        let mut torn = rec.clone();
        torn[META_HEAD_LEN + SLOT_LEN + 9] ^= 1;
        let d = decode_meta(&torn).unwrap();
        assert_eq!((d.seq, d.checkpoint), (4, old));
    }

    #[test]
    fn damaged_records_are_rejected_not_trusted() {
        let i = id("a.bin", 1000, 7);
        let rec = record(
            &i,
            &[(
                1,
                Checkpoint {
                    offset: 10,
                    crc32: 3,
                },
            )],
        );
        assert!(decode_meta(&rec[..rec.len() - 1]).is_err(), "truncated");
        let mut bad = rec.clone();
        bad[30] ^= 1;
        assert!(decode_meta(&bad).unwrap_err().contains("head checksum"));
        let mut bad = rec.clone();
        bad[0] = b'X';
        assert!(decode_meta(&bad).is_err());
        // Both slots broken.
        let mut bad = rec.clone();
        for b in &mut bad[META_HEAD_LEN..] {
            *b ^= 0xff;
        }
        assert!(decode_meta(&bad)
            .unwrap_err()
            .contains("no valid checkpoint"));
        // An offset past the file size is never believed.
        let rec = record(
            &i,
            &[(
                1,
                Checkpoint {
                    offset: 1001,
                    crc32: 3,
                },
            )],
        );
        assert!(decode_meta(&rec).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode_meta(&bytes);
        }
    }

    #[test]
    fn background_checkpoints_survive_a_crash() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let step = CHECKPOINT_STEP as usize;
        let data: Vec<u8> = (0..3 * step + 5000).map(|i| (i % 239) as u8).collect();
        let ident = id("bg.bin", data.len() as u64, crc32fast::hash(&data));
        let (mut held, _) = store.begin(ident.clone()).unwrap();
        // Odd-sized writes, so they straddle the steps.
        for chunk in data[..3 * step + 1000].chunks(700 << 10) {
            held.write(chunk).unwrap();
            // What is known durable is never a whole interval behind.
            assert!(held.offset() - held.durable().offset < CHECKPOINT_INTERVAL);
        }
        // About one checkpoint per step, not one per write.
        let durable = held.durable().offset as usize;
        let in_flight = held
            .syncer
            .in_flight()
            .map(|&(seq, cp)| (seq, cp.offset as usize));
        assert!((1..=3).contains(&held.seq), "{} checkpoints", held.seq);
        assert!(durable >= step, "durable {durable}");
        std::mem::forget(held); // a crash: no final checkpoint
        let (mut held, fresh) = store.begin(ident).unwrap();
        assert_eq!(fresh, None);
        let from = held.offset() as usize;
        assert!(
            from == durable || Some(from) == in_flight.map(|(_, o)| o),
            "resumed from {from}, durable {durable}, in flight {in_flight:?}"
        );
        held.write(&data[from..]).unwrap();
        assert_eq!(held.finish().unwrap(), Verdict::Ok);
        assert_eq!(fs::read(dir.join("bg.bin")).unwrap(), data);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_continues_the_crc_without_rereading() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let ident = id("r.bin", data.len() as u64, crc32fast::hash(&data));
        let (mut held, fresh) = store.begin(ident.clone()).unwrap();
        assert_eq!(fresh, Some(Fresh::Nothing));
        held.write(&data[..40_000]).unwrap();
        drop(held); // checkpoints
        let (mut held, fresh) = store.begin(ident.clone()).unwrap();
        assert_eq!(fresh, None);
        assert_eq!(held.offset(), 40_000);
        assert!(
            held.prefix_check.is_none(),
            "clean resume must not re-read the part"
        );
        held.write(&data[40_000..]).unwrap();
        assert_eq!(held.finish().unwrap(), Verdict::Ok);
        assert_eq!(fs::read(dir.join("r.bin")).unwrap(), data);
        assert!(fs::read_dir(dir.join(RESERVED_NAME))
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == "lock"));
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_source_or_a_tampered_part_is_never_resumed_blindly() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let data = vec![9u8; 50_000];
        let ident = id("t.bin", data.len() as u64, crc32fast::hash(&data));
        let (mut held, _) = store.begin(ident.clone()).unwrap();
        held.write(&data[..20_000]).unwrap();
        drop(held);
        // Same name, other size: starts over.
        let (held, fresh) = store.begin(id("t.bin", 60_000, 1)).unwrap();
        assert_eq!(fresh, Some(Fresh::OtherSource));
        assert_eq!(held.offset(), 0);
        drop(held);
        // Rebuild the original held part, then flip a byte in it.
        let (mut held, _) = store.begin(ident.clone()).unwrap();
        held.write(&data[..20_000]).unwrap();
        drop(held);
        let part = dir
            .join(RESERVED_NAME)
            .join(format!("{}.part", key_of(&ident.name)));
        let f = fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(b"X", 5).unwrap();
        drop(f);
        let (mut held, fresh) = store.begin(ident.clone()).unwrap();
        assert_eq!(fresh, None);
        assert!(
            held.prefix_check.is_some(),
            "a modified part must be re-verified"
        );
        held.write(&data[20_000..]).unwrap();
        assert_eq!(held.finish().unwrap(), Verdict::Mismatch);
        assert!(held
            .prefix_problem()
            .unwrap()
            .contains("does not match its checkpoint"));
        assert!(!dir.join("t.bin").exists());
        drop(held);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_server_per_directory() {
        let dir = tempdir();
        let _a = Store::open(&dir).unwrap();
        let e = Store::open(&dir).unwrap_err();
        assert!(e.to_string().contains("in use by another server"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn age(path: &Path, secs: u64) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn expired_and_orphaned_parts_are_swept_but_fresh_ones_stay() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let day = Duration::from_secs(86400);
        // An old held part with its record, an old orphan part (a crash
        // between creating the files; it never expired before), and a
        // fresh held part.
        let old = id("old.bin", 10, 1);
        let fresh = id("fresh.bin", 10, 1);
        for i in [&old, &fresh] {
            let (mut h, _) = store.begin(i.clone()).unwrap();
            h.write(b"12345").unwrap();
            h.checkpoint().unwrap();
        }
        let st = dir.join(RESERVED_NAME);
        let old_key = key_of(&old.name);
        age(&st.join(format!("{old_key}.meta")), 2 * 86400);
        let orphan = "f".repeat(64);
        fs::write(st.join(format!("{orphan}.part")), b"x").unwrap();
        age(&st.join(format!("{orphan}.part")), 2 * 86400);
        let mut keys = store.expired(day).unwrap();
        keys.sort();
        let mut want = vec![old_key.clone(), orphan.clone()];
        want.sort();
        assert_eq!(keys, want);
        for k in &keys {
            assert!(store.remove_if_expired(k, day));
        }
        assert!(!st.join(format!("{old_key}.part")).exists());
        assert!(!st.join(format!("{orphan}.part")).exists());
        let fresh_key = key_of(&fresh.name);
        assert!(st.join(format!("{fresh_key}.part")).exists());
        // A candidate touched since it was listed is not removed.
        age(&st.join(format!("{fresh_key}.meta")), 2 * 86400);
        let keys = store.expired(day).unwrap();
        assert_eq!(keys, vec![fresh_key.clone()]);
        let (mut h, _) = store.begin(fresh.clone()).unwrap();
        h.write(b"6").unwrap();
        h.checkpoint().unwrap();
        assert!(!store.remove_if_expired(&fresh_key, day));
        assert!(st.join(format!("{fresh_key}.part")).exists());
        drop(h);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_held_hint_reads_without_creating_or_changing_anything() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let i = id("hint.bin", 100, 5);
        assert_eq!(store.held_hint(&i.name, 100), 0);
        let listing = || {
            let mut v: Vec<_> = fs::read_dir(dir.join(RESERVED_NAME))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(listing().len(), 1, "only the lock");
        let (mut h, _) = store.begin(i.clone()).unwrap();
        h.write(&[1; 40]).unwrap();
        h.checkpoint().unwrap();
        drop(h);
        let before = listing();
        assert_eq!(store.held_hint(&i.name, 100), 40);
        assert_eq!(
            store.held_hint(&i.name, 99),
            0,
            "another size holds nothing"
        );
        assert_eq!(listing(), before);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_keys_are_sha256_of_the_name() {
        let n = SafeName::from_wire("abc").unwrap();
        assert_eq!(
            key_of(&n),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "bt-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
