//! Opening a held part: what its record and block list vouch for, whether
//! the part's witness still holds (else its bytes are re-read), and a fresh
//! record for whatever is vouched for after that.
//!
//! Protocol 1 resumes only a record of the same name, size and CRC-32; a
//! prefix changed since its checkpoint is re-read on a thread of its own
//! while the rest arrives and decides the verdict ([`recheck_growing`]).
//! Protocol 2 resumes blocks of the same name and size: from a block list
//! with holes, an older prefix-only list, or (other block size, a legacy
//! part) by re-reading the held prefix block by block.
//!
//! Not for writing or checkpointing (see [`super::DiskPart`]).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::ledger::{
    crc_at, Blocks, Growing, Ledger, PrefixCheck, BLK_HEAD, BLK_MAGIC_PREFIX, BLK_MAGIC_SET,
};
use super::{serr, DiskPart, Files, Syncer};
use crate::keep::FinishedRecord;
use crate::machine::{Layout, Recheck, StoredAs};
use crate::store::{
    decode_meta, encode_meta_head_as, key_of, At, Checkpoint, Identity, MetaRecord, PartStamp,
    Store, META_LEN, META_MAGIC, META_MAGIC_V2,
};
use crate::v2::{block_count, block_range};
use crate::{Result, SafeName};

/// How a held part was resumed (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Resumed from the record, nothing re-read.
    Trusted,
    /// Nothing was held.
    Fresh,
    /// The part was modified since its last checkpoint (a crash, or another
    /// writer), or came from another block size or a legacy upload: its
    /// bytes are re-read before they are vouched for. Why.
    Reread(String),
    /// The record was unusable or of another file; started over. Why.
    Discarded(String),
}

/// The files of one name's held part.
struct Paths {
    part: At,
    meta: At,
    blk: At,
}

/// What was found on disk: the ledger, how, the record's sequence number
/// and whether a fresh record must be written.
struct Found {
    ledger: Ledger,
    recovery: Recovery,
    seq: u64,
    rewrite: bool,
}

impl Found {
    fn over(ledger: Ledger, recovery: Recovery) -> Found {
        Found {
            ledger,
            recovery,
            seq: 0,
            rewrite: true,
        }
    }
}

fn block_log2(block: u64) -> u32 {
    block.trailing_zeros()
}

impl DiskPart {
    /// Opens the held part of `name` for a file of `filesize` bytes laid
    /// out as `layout`, resuming what can be vouched for.
    pub fn open(
        store: &Store,
        name: &SafeName,
        filesize: u64,
        layout: Layout,
    ) -> Result<(DiskPart, Recovery)> {
        let key = key_of(name);
        let paths = Paths {
            part: store.part_path(&key),
            meta: store.meta_path(&key),
            blk: store.state().at(&format!("{key}.blk")),
        };
        let record = read_record(&paths.meta)?;
        let (found, id) = match layout {
            Layout::Prefix { crc32 } => {
                let id = Identity {
                    name: name.clone(),
                    filesize,
                    crc32,
                };
                (find_growing(&paths, &id, record)?, id)
            }
            Layout::Blocks { block } => {
                let id = Identity {
                    name: name.clone(),
                    filesize,
                    crc32: block_log2(block),
                };
                (find_blocks(&paths, &id, block, record), id)
            }
        };
        let recovery = found.recovery.clone();
        let rewrite = found.rewrite;
        let mut part = assemble(store, name, paths, found)?;
        if rewrite {
            part.write_fresh_record(&id)?;
            store.state().sync()?;
        }
        if part.ledger.held_bytes() == 0 && part.ledger.held_blocks() == 0 {
            if let Some(rec) = store.finished(name) {
                part.seed(rec, layout);
            }
        }
        Ok((part, recovery))
    }

    /// A re-send: when nothing is held and the file stored under the name
    /// has the same size (and, protocol 1, the same CRC-32), its blocks
    /// are offered as held, so the client sends only blocks that differ.
    /// They stay in the stored file until a block is written (then it is
    /// copied into the part, [`DiskPart::materialise`]); if none is, the
    /// stored file is left untouched. Nothing of this is recorded in the
    /// part's checkpoints: they vouch only for bytes in the part.
    fn seed(&mut self, rec: FinishedRecord, layout: Layout) {
        let fits = match (&mut self.ledger, layout) {
            (Ledger::Blocks(b), Layout::Blocks { block }) => {
                let same = rec.size == b.filesize && rec.block == block;
                if same {
                    b.crcs.clone_from(&rec.crcs);
                    b.valid.iter_mut().for_each(|v| *v = true);
                }
                same
            }
            (Ledger::Growing(g), Layout::Prefix { crc32 }) => {
                let same = rec.size == g.filesize && rec.crc32 == crc32;
                if same {
                    (g.offset, g.crc) = (rec.size, rec.crc32);
                }
                same
            }
            _ => false,
        };
        if fits {
            self.base = Some(rec);
        }
    }

    /// Writes a record (and block list) naming this upload, then the first
    /// checkpoint of what is vouched for now.
    fn write_fresh_record(&mut self, id: &Identity) -> Result<()> {
        let f = &self.files;
        let (magic, blk) = match &self.ledger {
            Ledger::Growing(_) => (META_MAGIC, None),
            Ledger::Blocks(b) => (META_MAGIC_V2, Some((b.block, b.crcs.len() as u64))),
        };
        let mut rec = encode_meta_head_as(id, magic);
        rec.resize(META_LEN, 0);
        f.meta
            .set_len(0)
            .and_then(|_| f.meta.write_all_at(&rec, 0))
            .map_err(|e| serr("write", &f.meta_path, e))?;
        if let (Some((block, n)), Some(file)) = (blk, &f.blk) {
            let mut head = BLK_MAGIC_SET.to_vec();
            head.extend_from_slice(&block.to_be_bytes());
            head.extend_from_slice(&n.to_be_bytes());
            file.set_len(0)
                .and_then(|_| file.write_all_at(&head, 0))
                .map_err(|e| serr("write", &f.blk_path, e))?;
        }
        self.seq = 0;
        self.dirty = true;
        let job = self.record_job()?;
        job()
    }
}

/// The record at `meta`: `None` if there is none, `Some(Err(why))` if it
/// cannot be used.
fn read_record(meta: &At) -> Result<Option<std::result::Result<MetaRecord, String>>> {
    let mut f = match meta.open(false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(serr("open", meta, e)),
    };
    let mut bytes = Vec::with_capacity(META_LEN);
    f.read_to_end(&mut bytes)
        .map_err(|e| serr("read", meta, e))?;
    Ok(Some(decode_meta(&bytes)))
}

/// Opens the part's files around what was found.
fn assemble(store: &Store, name: &SafeName, paths: Paths, found: Found) -> Result<DiskPart> {
    let part = paths
        .part
        .open(true)
        .map_err(|e| serr("open", &paths.part, e))?;
    let meta = paths
        .meta
        .open(true)
        .map_err(|e| serr("open", &paths.meta, e))?;
    let blk = match &found.ledger {
        Ledger::Blocks(_) => Some(Arc::new(
            paths
                .blk
                .open(true)
                .map_err(|e| serr("open", &paths.blk, e))?,
        )),
        Ledger::Growing(_) => {
            let _ = paths.blk.remove();
            None
        }
    };
    if found.ledger.held_bytes() == 0 && found.ledger.held_blocks() == 0 {
        part.set_len(0)
            .map_err(|e| serr("truncate", &paths.part, e))?;
    }
    let witness = part.metadata().ok().map(|m| PartStamp::of(&m));
    let prealloc = crate::sys::Preallocator::for_file(&part);
    let files = Files {
        synced: part.try_clone().ok().map(Arc::new),
        part,
        meta: Arc::new(meta),
        blk,
        part_path: paths.part,
        meta_path: paths.meta,
        blk_path: paths.blk,
        final_path: store.final_at(name),
        dir: store.dir_handle().clone(),
        done_path: store.done_path(name),
        done_tmp: store.done_tmp_path(name),
        state: store.state().clone(),
    };
    Ok(DiskPart {
        name: name.clone(),
        files,
        ledger: found.ledger,
        seq: found.seq,
        syncer: Syncer::new(),
        written_since: 0,
        dirty: false,
        unflushed: 0,
        pieces: crate::pieces::PieceChooser::default(),
        prealloc,
        witness,
        tampered: false,
        done: false,
        overwrite: store.overwrites(),
        base: None,
        stored: StoredAs::New,
    })
}

fn growing(id: &Identity, cp: Checkpoint, check: Option<PrefixCheck>) -> Ledger {
    Ledger::Growing(Growing {
        filesize: id.filesize,
        want: id.crc32,
        offset: cp.offset,
        crc: cp.crc32,
        check,
        problem: None,
    })
}

/// Protocol 1: resumes a record of the same identity whose part holds at
/// least the checkpoint's bytes; a part changed since is cut back to them
/// and re-read in the background.
fn find_growing(
    paths: &Paths,
    id: &Identity,
    record: Option<std::result::Result<MetaRecord, String>>,
) -> Result<Found> {
    let zero = Checkpoint {
        offset: 0,
        crc32: 0,
    };
    let why = match record {
        None => return Ok(Found::over(growing(id, zero, None), Recovery::Fresh)),
        Some(Err(why)) => format!("checkpoint record: {why}"),
        Some(Ok(r)) if r.identity == *id && r.version == 1 => match paths.part.open(false) {
            Ok(part) => return resume_growing(paths, id, &r, &part),
            Err(e) => format!("part missing: {e}"),
        },
        Some(Ok(_)) => "it was of another source (size or CRC-32 differ)".into(),
    };
    Ok(Found::over(
        growing(id, zero, None),
        Recovery::Discarded(why),
    ))
}

fn resume_growing(paths: &Paths, id: &Identity, r: &MetaRecord, part: &File) -> Result<Found> {
    let cp = r.checkpoint;
    let m = part
        .metadata()
        .map_err(|e| serr("inspect", &paths.part, e))?;
    if m.len() < cp.offset {
        let why = format!(
            "part holds {} bytes but its checkpoint claims {}",
            m.len(),
            cp.offset
        );
        let zero = Checkpoint {
            offset: 0,
            crc32: 0,
        };
        return Ok(Found::over(
            growing(id, zero, None),
            Recovery::Discarded(why),
        ));
    }
    let (check, recovery) = if m.len() != cp.offset || PartStamp::of(&m) != r.stamp {
        // The server crashed mid-write, or something else wrote to it:
        // drop the unrecorded tail and re-read the recorded prefix
        // (alongside the transfer) before any verdict.
        part.set_len(cp.offset)
            .map_err(|e| serr("truncate", &paths.part, e))?;
        let why = "part changed since its last checkpoint".to_string();
        (
            Some(spawn_prefix_check(paths.part.open_read(), cp)),
            Recovery::Reread(why),
        )
    } else {
        (None, Recovery::Trusted)
    };
    Ok(Found {
        ledger: growing(id, cp, check),
        recovery,
        seq: r.seq,
        rewrite: false,
    })
}

/// Protocol 2: resumes the blocks a record of the same name and size
/// vouches for, re-reading what its witness no longer covers.
fn find_blocks(
    paths: &Paths,
    id: &Identity,
    block: u64,
    record: Option<std::result::Result<MetaRecord, String>>,
) -> Found {
    let mut b = Blocks::empty(id.filesize, block);
    let r = match record {
        None => return Found::over(Ledger::Blocks(b), Recovery::Fresh),
        Some(Err(why)) => {
            let why = format!("checkpoint record: {why}");
            return Found::over(Ledger::Blocks(b), Recovery::Discarded(why));
        }
        Some(Ok(r)) => r,
    };
    if r.identity.name != id.name || r.identity.filesize != id.filesize {
        let why = "it was of another file".to_string();
        return Found::over(Ledger::Blocks(b), Recovery::Discarded(why));
    }
    let recovery = resume_blocks(paths, id, &r, &mut b);
    let trusted = recovery == Recovery::Trusted;
    Found {
        ledger: Ledger::Blocks(b),
        recovery,
        seq: if trusted { r.seq } else { 0 },
        rewrite: !trusted,
    }
}

fn resume_blocks(paths: &Paths, id: &Identity, r: &MetaRecord, b: &mut Blocks) -> Recovery {
    let (cp, n) = (r.checkpoint, b.crcs.len() as u64);
    let held = if cp.offset == id.filesize {
        n
    } else {
        cp.offset / b.block
    };
    let same_blocks = r.version == 2 && r.identity.crc32 == id.crc32;
    let part = paths.part.open_read();
    let stamp_ok = part
        .as_ref()
        .ok()
        .and_then(|f| f.metadata().ok())
        .filter(|m| m.len() == cp.offset.min(id.filesize) || same_blocks)
        .is_some_and(|m| PartStamp::of(&m) == r.stamp);
    let list = same_blocks.then(|| read_blk(&paths.blk, b.block, n, held));
    match (list.flatten(), stamp_ok) {
        (Some((crcs, valid)), true) => {
            b.crcs = crcs;
            b.recorded.clone_from(&valid);
            b.valid = valid;
            Recovery::Trusted
        }
        (Some((crcs, valid)), false) => {
            // Held blocks whose bytes changed are reported with the CRC-32
            // of what is on disk: the sender sends them again.
            b.crcs = crcs;
            b.valid = valid;
            let why = "part changed since its last checkpoint";
            match part.and_then(|f| b.reread(&f, false)) {
                Ok(_) => Recovery::Reread(why.into()),
                Err(e) => discard(b, format!("{why}; re-reading it failed: {e}")),
            }
        }
        (None, _) => {
            let why = if r.version == 1 {
                "held part of a legacy upload"
            } else if !same_blocks {
                "held part used another block size"
            } else if !stamp_ok {
                "part changed since its last checkpoint"
            } else {
                "block list missing or damaged"
            };
            match part.and_then(|f| reread_prefix(&f, b, held)) {
                Ok(()) => Recovery::Reread(why.into()),
                Err(e) => discard(b, format!("{why}; re-reading it failed: {e}")),
            }
        }
    }
}

fn discard(b: &mut Blocks, why: String) -> Recovery {
    b.valid.fill(false);
    Recovery::Discarded(why)
}

/// The block list at `path` for `n` blocks of `block` bytes: every CRC-32
/// and whether it is held. An older prefix-only list holds its first
/// `held` blocks.
fn read_blk(path: &At, block: u64, n: u64, held: u64) -> Option<(Vec<u32>, Vec<bool>)> {
    let f = path.open_read().ok()?;
    let mut head = [0u8; BLK_HEAD as usize];
    f.read_exact_at(&mut head, 0).ok()?;
    let magic = &head[..8];
    let same = u64::from_be_bytes(head[8..16].try_into().ok()?) == block;
    let count = if magic == BLK_MAGIC_SET {
        (u64::from_be_bytes(head[16..24].try_into().ok()?) == n).then_some(n)?
    } else if magic == BLK_MAGIC_PREFIX {
        held
    } else {
        return None;
    };
    if !same || count > n {
        return None;
    }
    let mut list = vec![0u8; 4 * count as usize];
    f.read_exact_at(&mut list, BLK_HEAD).ok()?;
    let mut crcs: Vec<u32> = list
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    crcs.resize(n as usize, 0);
    let mut valid = vec![false; n as usize];
    if magic == BLK_MAGIC_PREFIX {
        valid[..held as usize].fill(true);
        return Some((crcs, valid));
    }
    let mut bits = vec![0u8; (n as usize).div_ceil(8)];
    f.read_exact_at(&mut bits, BLK_HEAD + 4 * n).ok()?;
    for (i, v) in valid.iter_mut().enumerate() {
        *v = bits[i / 8] & (1 << (i % 8)) != 0;
    }
    Some((crcs, valid))
}

/// Re-reads the first `blocks` blocks of the part and holds them with the
/// CRC-32s of their bytes (fewer if the part is shorter: only whole blocks
/// count). The sender compares them with its own and sends what differs.
fn reread_prefix(f: &File, b: &mut Blocks, blocks: u64) -> io::Result<()> {
    crate::sys::advise_sequential(f);
    let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
    for idx in 0..blocks.min(block_count(b.filesize, b.block)) {
        let (off, len) = block_range(b.filesize, b.block, idx);
        let Some(crc) = crc_at(f, off, len, &mut buf)? else {
            break;
        };
        b.crcs[idx as usize] = crc;
        b.valid[idx as usize] = true;
    }
    Ok(())
}

/// Re-reads `[0, cp.offset)` of the part on its own thread and says whether
/// its CRC-32 is the recorded one.
fn spawn_prefix_check(part: io::Result<File>, cp: Checkpoint) -> PrefixCheck {
    std::thread::spawn(move || {
        let f = part.map_err(|e| format!("cannot re-read held part: {e}"))?;
        crate::sys::advise_sequential(&f);
        let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
        match crc_at(&f, 0, cp.offset, &mut buf) {
            Err(e) => Err(format!("cannot re-read held part: {e}")),
            Ok(None) => Err(format!(
                "held part shrank below its checkpoint ({} bytes)",
                cp.offset
            )),
            Ok(Some(c)) if c != cp.crc32 => {
                Err("held part does not match its checkpoint (modified outside the server?)".into())
            }
            Ok(Some(_)) => Ok(()),
        }
    })
}

/// Protocol 1's check before the verdict: the resumed prefix matched its
/// record, the name still leads to our part (`same_file`) and, unless
/// nothing else wrote to it (`untouched`), the whole part read back has
/// the CRC-32 of the bytes received.
pub(super) fn recheck_growing(
    g: &mut Growing,
    part: &File,
    same_file: bool,
    untouched: bool,
) -> Recheck {
    match g.check.take().map(|t| t.join()) {
        None | Some(Ok(Ok(()))) => {}
        Some(Ok(Err(why))) => g.problem = Some(why),
        Some(Err(_)) => g.problem = Some("held part check failed".into()),
    }
    if g.problem.is_none() && !same_file {
        g.problem = Some("the held part was replaced behind the server's back".into());
    }
    if g.problem.is_none() && !untouched {
        let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
        g.problem = match crc_at(part, 0, g.offset, &mut buf) {
            Err(e) => Some(format!("cannot re-read the held part: {e}")),
            Ok(Some(c)) if c == g.crc => None,
            _ => Some(
                "the held part changed on disk behind the server's back (its bytes are not the ones received)".into(),
            ),
        };
    }
    g.problem.clone().map_or(Recheck::Same, Recheck::Wrong)
}
