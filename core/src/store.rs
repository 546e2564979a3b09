//! The server's storage directory: finished files, the lock, the state
//! directory of held parts and the byte format of their checkpoint records.
//!
//! Layout of a storage directory `DIR`:
//!
//! - `DIR/NAME`: a finished upload. It appears only after its CRC-32 matched,
//!   by an atomic rename, and is durable (file and directory fsynced) before
//!   the server answers `CRC32_OK`.
//! - `DIR/.bigtransfer/`: the server's own state, never visible as a file a
//!   client could name (the name is reserved):
//!   - `lock`: held (flock) by the one server using `DIR`;
//!   - `KEY.part`, `KEY.meta`, `KEY.blk`: one held part (see [`crate::part`]);
//!
//!   where `KEY` is the SHA-256 of the name in hex, so that names
//!   of up to 255 bytes still fit the file system's name limit.
//!
//! The record `KEY.meta` is a checksummed head naming the upload and two
//! checksummed slots written alternately ([`Checkpoint`] and [`PartStamp`]),
//! so that a torn write of one slot leaves the other intact; it is decoded
//! by a plain function over bytes ([`decode_meta`], fuzzed).
//!
//! Not for: the held-part engine (writes, checkpoints, resume: see
//! [`crate::part`]) or the network.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::keep::{FileStamp, FinishedRecord};
use crate::name::{SafeName, RESERVED_NAME};
use crate::{Error, ErrorKind, Result};

pub(crate) const META_MAGIC: &[u8; 8] = b"BTHELD01";
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

/// One checkpoint slot, if its checksum holds: sequence number,
/// checkpoint, part stamp.
fn decode_slot(s: &[u8]) -> Option<(u64, Checkpoint, PartStamp)> {
    if crc32fast::hash(&s[..40]) != be_u32(&s[40..]) {
        return None;
    }
    let cp = Checkpoint {
        offset: be_u64(&s[8..16]),
        crc32: be_u32(&s[16..20]),
    };
    let stamp = PartStamp {
        ino: be_u64(&s[20..28]),
        ctime: be_u64(&s[28..36]) as i64,
        ctime_nsec: be_u32(&s[36..40]),
    };
    Some((be_u64(&s[0..8]), cp, stamp))
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
    let best = (0..2)
        .filter_map(|i| decode_slot(&bytes[META_HEAD_LEN + i * SLOT_LEN..][..SLOT_LEN]))
        .filter(|(_, cp, _)| cp.offset <= filesize)
        // The newer slot; on a tie the first, as always.
        .reduce(|a, b| if b.0 > a.0 { b } else { a });
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

    /// The open directory, for calls made relative to it.
    pub(crate) fn fd(&self) -> &File {
        &self.fd
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
    /// Whether a different content replaces a stored file outright
    /// (`--overwrite`) instead of keeping it as a numbered version.
    overwrite: bool,
}

/// Creates the state directory `state` unless it is there; anything else
/// in its place is refused, never removed.
fn make_state_dir(state: &Path) -> Result<()> {
    let serr = |what: String, e: io::Error| Error::io(ErrorKind::Storage, what, e);
    match fs::symlink_metadata(state) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::new(
            ErrorKind::Storage,
            format!(
                "{} exists and is not a directory; move it away",
                state.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(state).map_err(|e| serr(format!("cannot create {}", state.display()), e))
        }
        Err(e) => Err(serr(format!("cannot inspect {}", state.display()), e)),
    }
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
        make_state_dir(&state)?;
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
            overwrite: false,
        })
    }

    /// Makes a different content replace a stored file outright instead of
    /// keeping the old one as a numbered version (`--overwrite`).
    pub fn set_overwrite(&mut self, on: bool) {
        self.overwrite = on;
    }

    /// Whether a different content replaces a stored file outright.
    pub fn overwrites(&self) -> bool {
        self.overwrite
    }

    pub(crate) fn done_path(&self, name: &SafeName) -> At {
        self.state.at(&format!("{}.done", key_of(name)))
    }

    pub(crate) fn done_tmp_path(&self, name: &SafeName) -> At {
        self.state.at(&format!("{}.done.tmp", key_of(name)))
    }

    /// What the server knows of the file it stored as `name`: its size,
    /// whole and block CRC-32s. `None` if there is no record, it is
    /// damaged, or the file is not exactly the one stored (replaced,
    /// written to, truncated or touched behind the server's back): such a
    /// file is never vouched for.
    pub fn finished(&self, name: &SafeName) -> Option<FinishedRecord> {
        read_finished(&self.done_path(name), &self.final_at(name))
    }

    /// The storage directory, open: names are opened under it (never
    /// through a symlink), so nothing outside it is reached.
    pub(crate) fn dir_file(&self) -> &File {
        &self.dir.fd
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

    /// The state directory's path (for listing it).
    pub(crate) fn state_path(&self) -> &Path {
        &self.state.path
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

/// The finished record at `done`, if it is sound and `file` is still
/// exactly the file it was taken of (see [`Store::finished`]).
pub(crate) fn read_finished(done: &At, file: &At) -> Option<FinishedRecord> {
    let mut bytes = Vec::new();
    done.open_read().ok()?.read_to_end(&mut bytes).ok()?;
    let rec = crate::keep::decode_finished(&bytes)?;
    let now = file.open_read().ok()?.metadata().ok()?;
    (now.is_file() && FileStamp::of(&now) == rec.stamp && rec.size == now.len()).then_some(rec)
}

/// Writes a finished record to `tmp`, syncs it and renames it to `dest`,
/// so a crash leaves the old record or the new one, never half of one.
pub(crate) fn write_finished(tmp: &At, dest: &At, rec: &FinishedRecord) -> Result<()> {
    let werr = |e| {
        Error::io(
            ErrorKind::Storage,
            format!("cannot write {}", tmp.display()),
            e,
        )
    };
    let f = tmp.open(true).map_err(werr)?;
    f.set_len(0)
        .and_then(|_| f.write_all_at(&crate::keep::encode_finished(rec), 0))
        .and_then(|_| crate::sys::fdatasync(&f))
        .map_err(werr)?;
    tmp.rename_to(dest).map_err(werr)
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
            let (mut h, _) = begin(&store, i);
            h.write_at(0, b"12345", None).unwrap();
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
        let (mut h, _) = begin(&store, &fresh);
        h.write_at(5, b"6", None).unwrap();
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
        let (mut h, _) = begin(&store, &i);
        h.write_at(0, &[1; 40], None).unwrap();
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

    fn begin(store: &Store, i: &Identity) -> (crate::part::DiskPart, crate::part::Recovery) {
        let layout = crate::machine::Layout::Prefix { crc32: i.crc32 };
        crate::part::DiskPart::open(store, &i.name, i.filesize, layout).unwrap()
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
