//! The server's one held-part engine on local disk: a [`DiskPart`] is an
//! upload in progress, a set of verified blocks ([`ledger`]) with a
//! durable witness. Protocol 2 holds fixed-size blocks, with holes;
//! protocol 1 is the same engine with one block that grows.
//!
//! Files, in the store's state directory (see [`crate::store`]):
//! `KEY.part` the bytes, `KEY.meta` the checkpoint record (two alternating
//! checksummed slots: the held prefix, its CRC-32 and the part's stamp),
//! and for protocol 2 `KEY.blk`, the block list (every block's CRC-32 and
//! whether it is held). A checkpoint `fdatasync`s the part, then writes
//! and syncs the block list, then the record slot; while data flows one is
//! taken every [`CHECKPOINT_STEP`] bytes on a helper thread ([`Syncer`]).
//! The part's stamp (inode, ctime) taken with each record is the witness:
//! if it changed at resume, or between our own writes, someone else wrote
//! to the part and its bytes are re-read before they are vouched for.
//!
//! Not for the wire (see [`crate::machine`]) nor for the directory, its
//! lock and the record's byte format (see [`crate::store`]).

#[cfg(test)]
mod keep_tests;
mod ledger;
mod open;
mod sync;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub(crate) use ledger::Ledger;
pub use open::Recovery;
pub(crate) use sync::{SyncJob, Syncer};

use crate::keep::{FileStamp, FinishedRecord};
use crate::machine::{Fault, Held, Recheck, StoredAs};
use crate::store::{read_finished, write_finished, write_slot, At, Dir, PartStamp};
use crate::{Error, ErrorKind, Result, SafeName};

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

/// A held part's files and where they live.
#[derive(Debug)]
struct Files {
    part: File,
    /// A second handle on the part for background `fdatasync`s.
    synced: Option<Arc<File>>,
    meta: Arc<File>,
    /// Protocol 2's block list.
    blk: Option<Arc<File>>,
    part_path: At,
    meta_path: At,
    blk_path: At,
    final_path: At,
    dir: Dir,
    /// The finished record of the name, and its temporary (see
    /// [`crate::keep`]).
    done_path: At,
    done_tmp: At,
    /// The state directory (records of kept versions).
    state: Dir,
}

/// A checkpoint in flight: the bytes written in the step it covers.
#[derive(Debug, Clone, Copy)]
struct Note {
    covered: u64,
}

/// An upload in progress on the server. Dropping it without
/// [`DiskPart::finish`] or [`DiskPart::discard`] checkpoints what was
/// received, so the upload stays resumable.
#[derive(Debug)]
pub struct DiskPart {
    name: SafeName,
    files: Files,
    ledger: Ledger,
    /// The sequence number of the newest record written or in flight.
    seq: u64,
    syncer: Syncer<Note>,
    /// Bytes written since the last checkpoint was taken.
    written_since: u64,
    /// Whether what is vouched for changed since the last checkpoint.
    dirty: bool,
    /// Bytes written since writeback was last started.
    unflushed: u64,
    /// The size of the page-cache writes, chosen by how fast they go.
    pieces: crate::pieces::PieceChooser,
    /// Allocates each write's range first.
    prealloc: crate::sys::Preallocator,
    /// The part's stamp after our last write: if it differs before our
    /// next write or at the end, something else wrote to the part.
    witness: Option<PartStamp>,
    /// Whether a foreign write was seen.
    tampered: bool,
    done: bool,
    /// Whether a different content replaces the stored file outright
    /// instead of keeping it as a numbered version.
    overwrite: bool,
    /// Set while the held blocks are those of the file already stored
    /// under the name (a re-send), not yet copied into the part: if no
    /// block is written, the stored file is left untouched.
    base: Option<FinishedRecord>,
    /// What the commit did to the name.
    stored: StoredAs,
}

fn serr(what: &str, p: &At, e: std::io::Error) -> Error {
    Error::io(
        ErrorKind::Storage,
        format!("cannot {what} {}", p.display()),
        e,
    )
}

impl DiskPart {
    /// What is held, as the protocol machine sees it.
    pub fn held(&self) -> std::result::Result<Held, Fault> {
        self.ledger.held()
    }

    /// Bytes held (protocol 2: in every held block, holes or not; for logs).
    pub fn held_bytes(&self) -> u64 {
        self.ledger.held_bytes()
    }

    /// Blocks held (protocol 1: none; for logs).
    pub fn held_blocks(&self) -> usize {
        self.ledger.held_blocks()
    }

    /// The file name.
    pub fn name(&self) -> &SafeName {
        &self.name
    }

    fn stamp(&self) -> Result<PartStamp> {
        self.files
            .part
            .metadata()
            .map(|m| PartStamp::of(&m))
            .map_err(|e| serr("inspect", &self.files.part_path, e))
    }

    /// Writes `bytes` at file offset `offset`. Protocol 1 writes in order;
    /// `crc_after`, when given, is the CRC-32 of the whole prefix after
    /// these bytes (the receiver computed it already, so it is not
    /// computed twice).
    pub fn write_at(&mut self, offset: u64, bytes: &[u8], crc_after: Option<u32>) -> Result<()> {
        self.check_write(offset, bytes.len() as u64)?;
        self.materialise()?;
        // Never hold a whole interval beyond what is known durable: before
        // that, wait for the checkpoint in flight.
        if let Some(n) = self.syncer.in_flight() {
            if n.covered + self.written_since + bytes.len() as u64 >= CHECKPOINT_INTERVAL {
                self.settle()?;
            }
        }
        if let (Some(w), Ok(now)) = (self.witness, self.stamp()) {
            self.tampered |= w != now;
        }
        self.allocate(offset, bytes.len() as u64)?;
        let started = std::time::Instant::now();
        let mut at = offset;
        for piece in bytes.chunks(self.pieces.piece()) {
            self.files
                .part
                .write_all_at(piece, at)
                .map_err(|e| serr("write", &self.files.part_path, e))?;
            at += piece.len() as u64;
        }
        self.pieces.record(bytes.len(), started.elapsed());
        // The witness is taken at once: anything later would leave a
        // window in which another writer's change is mistaken for ours.
        self.witness = self.stamp().ok();
        self.ledger.wrote(offset, bytes, crc_after);
        self.after_write(at, bytes.len() as u64)
    }

    /// Allocates the range a write is about to fill, so a full disk is
    /// found before its bytes are copied, and the filesystem skips its
    /// page-by-page reservation. After the witness check: the allocation
    /// changes the part's ctime, and the stamp taken after the write
    /// covers it.
    fn allocate(&mut self, offset: u64, len: u64) -> Result<()> {
        self.prealloc
            .before_write(&self.files.part, offset, len)
            .map_err(|e| serr("make room in", &self.files.part_path, e))
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        let ok = match &self.ledger {
            Ledger::Growing(g) => offset == g.offset && len <= g.filesize - g.offset,
            Ledger::Blocks(b) => offset.checked_add(len).is_some_and(|e| e <= b.filesize),
        };
        if ok {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Protocol,
            format!("a write of {len} bytes at {offset} is outside the file or out of order"),
        ))
    }

    /// Starts writeback now and then; protocol 1 checkpoints as it grows
    /// (its one block is verified as it is written).
    fn after_write(&mut self, end: u64, len: u64) -> Result<()> {
        self.written_since += len;
        self.unflushed += len;
        self.dirty = true;
        if self.unflushed >= WRITEBACK_STEP {
            // Data arrives in ascending order within a run of blocks: start
            // writeback of what precedes this point.
            let start = end.saturating_sub(self.unflushed);
            crate::sys::start_writeback(&self.files.part, start, end - start);
            self.unflushed = 0;
        }
        if matches!(self.ledger, Ledger::Growing(_)) && self.written_since >= CHECKPOINT_STEP {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// Called before the first byte of block `idx` is written: a block being
    /// received is not held. If a record vouches for it (the source
    /// changed, so a held block is being replaced), a checkpoint without it
    /// is made first: otherwise a crash mid-write could leave a record that
    /// vouches for the old block's CRC-32 over new bytes.
    pub fn begin_block(&mut self, idx: u64) -> Result<()> {
        self.materialise()?;
        let Ledger::Blocks(b) = &mut self.ledger else {
            return Ok(());
        };
        let i = idx as usize;
        if !b.valid.get(i).copied().unwrap_or(false) {
            return Ok(());
        }
        b.valid[i] = false;
        self.dirty = true;
        if b.recorded[i] {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Records the outcome of block `idx`: its CRC-32 as received, and
    /// whether that matched the sender's. A damaged block stays missing.
    pub fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<()> {
        let Ledger::Blocks(b) = &mut self.ledger else {
            return Ok(());
        };
        let i = idx as usize;
        if i >= b.valid.len() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("block {idx} is past the end of the file"),
            ));
        }
        b.crcs[i] = crc;
        b.valid[i] = good;
        self.dirty = true;
        if self.written_since >= CHECKPOINT_STEP {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// A re-send that differs: copies the stored file into the part (on a
    /// copy-on-write file system, by reference), so its blocks offered as
    /// held are really in the part before any is replaced; the stored file
    /// itself is never written. If it changed since it was offered, the
    /// end's recheck re-reads every held block instead of trusting them.
    fn materialise(&mut self) -> Result<()> {
        let Some(base) = self.base.take() else {
            return Ok(());
        };
        let f = &self.files;
        let mut src = f
            .final_path
            .open_read()
            .map_err(|e| serr("open", &f.final_path, e))?;
        f.part
            .set_len(0)
            .map_err(|e| serr("truncate", &f.part_path, e))?;
        // The part's cursor is at 0: every write to it is positioned.
        let mut dst = &f.part;
        std::io::copy(&mut src, &mut dst).map_err(|e| serr("copy into", &f.part_path, e))?;
        let same = read_finished(&f.done_path, &f.final_path).is_some_and(|r| r == base);
        self.tampered |= !same;
        self.witness = self.stamp().ok();
        self.dirty = true;
        Ok(())
    }

    /// Records a finished background checkpoint.
    fn settle(&mut self) -> Result<()> {
        self.syncer.settle().map(|_| ())
    }

    /// Makes what is vouched for durable and records it, on this thread
    /// (after any background checkpoint in flight).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.settle()?;
        // Blocks of the stored file are not the part's to vouch for.
        if !self.dirty || self.base.is_some() {
            return Ok(());
        }
        crate::sys::fdatasync(&self.files.part)
            .map_err(|e| serr("sync", &self.files.part_path, e))?;
        let job = self.record_job()?;
        job()
    }

    /// Has the helper thread make what is vouched for durable and record
    /// it, while this thread goes on receiving (after waiting for the
    /// previous one). Falls back to [`DiskPart::checkpoint`] if the part
    /// could not be opened twice.
    fn checkpoint_in_background(&mut self) -> Result<()> {
        self.settle()?;
        let Some(part) = self.files.synced.clone() else {
            return self.checkpoint();
        };
        let covered = self.written_since;
        let record = self.record_job()?;
        let part_path = self.files.part_path.clone();
        let job: SyncJob = Box::new(move || {
            // Every byte vouched for was written before this job was made.
            crate::sys::fdatasync(&part).map_err(|e| serr("sync", &part_path, e))?;
            record()
        });
        self.syncer.submit(job, Note { covered })
    }

    /// The disk work of recording what is vouched for now, as the next
    /// checkpoint: the block list, then the record slot, each synced. The
    /// part's stamp is taken here, while the record is exactly true: any
    /// later write changes it, so a crash after one makes the next start
    /// re-read the part instead of trusting the record.
    fn record_job(&mut self) -> Result<SyncJob> {
        let stamp = self.stamp()?;
        let entry = self.ledger.entry();
        self.seq += 1;
        self.written_since = 0;
        self.dirty = false;
        let (seq, cp) = (self.seq, entry.cp);
        let (meta, meta_path) = (Arc::clone(&self.files.meta), self.files.meta_path.clone());
        let blk = match (entry.list, &self.files.blk) {
            (Some(list), Some(f)) => Some((list, Arc::clone(f), self.files.blk_path.clone())),
            _ => None,
        };
        Ok(Box::new(move || {
            if let Some((list, f, path)) = blk {
                f.write_all_at(&list, ledger::BLK_HEAD)
                    .and_then(|_| crate::sys::fdatasync(&f))
                    .map_err(|e| serr("write", &path, e))?;
            }
            write_slot(&meta, &meta_path, seq, cp, stamp)
        }))
    }

    /// Before the verdict: confirms that the part on disk holds the bytes
    /// received. Protocol 2: blocks changed on disk become missing and are
    /// named; protocol 1: the resumed prefix must have matched its record
    /// and the whole part its CRC-32.
    pub fn recheck(&mut self) -> Result<Recheck> {
        // A background fdatasync that failed may have lost data that a
        // later one would not report again: it fails the upload.
        self.settle()?;
        if let Some(base) = &self.base {
            let f = &self.files;
            if read_finished(&f.done_path, &f.final_path).as_ref() == Some(base) {
                return Ok(Recheck::Same);
            }
            if matches!(self.ledger, Ledger::Growing(_)) {
                return Ok(Recheck::Wrong(format!(
                    "{} changed behind the server's back since the upload started; send it again",
                    f.final_path.display()
                )));
            }
            // Its blocks are re-read from a copy below, and those that
            // changed asked for again.
            self.materialise()?;
        }
        let now = self.stamp()?;
        let same_file = self
            .files
            .part_path
            .open_read()
            .and_then(|f| f.metadata())
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == now.ino);
        let untouched = !self.tampered && self.witness.is_none_or(|w| w == now);
        let r = match &mut self.ledger {
            Ledger::Blocks(_) if !same_file => Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "{} was replaced behind the server's back",
                    self.files.part_path.display()
                ),
            )),
            Ledger::Blocks(_) if untouched => Ok(Recheck::Same),
            Ledger::Blocks(b) => b
                .reread(&self.files.part, true)
                .map(|bad| match bad.is_empty() {
                    true => Recheck::Same,
                    false => Recheck::Changed(bad),
                })
                .map_err(|e| serr("re-read", &self.files.part_path, e)),
            Ledger::Growing(g) => Ok(open::recheck_growing(
                g,
                &self.files.part,
                same_file,
                untouched,
            )),
        };
        self.witness = Some(now);
        self.tampered = false;
        if matches!(r, Ok(Recheck::Changed(_))) {
            self.dirty = true;
        }
        r
    }

    /// What the commit did to the name (see [`StoredAs`]).
    pub fn stored_as(&self) -> &StoredAs {
        &self.stored
    }

    /// Stores the complete, verified file under its final name, durably,
    /// keeping a file already there as a numbered version (unless the
    /// store overwrites), and records what was stored.
    pub fn finish(&mut self) -> Result<()> {
        self.settle()?;
        if let Ledger::Growing(g) = &self.ledger {
            if g.offset != g.filesize || g.crc != g.want || g.problem.is_some() {
                self.discard();
                return Err(Error::new(
                    ErrorKind::Storage,
                    "the held part changed on disk behind the server's back",
                ));
            }
        }
        if self.base.is_some() {
            // Every block was the stored file's: nothing to store.
            self.discard();
            self.stored = StoredAs::Unchanged;
            return Ok(());
        }
        let rec = self.finished_record();
        let old = read_finished(&self.files.done_path, &self.files.final_path);
        if old.as_ref().is_some_and(|o| same_content(o, &rec)) {
            // Verified to be what is stored already (a resumed part of
            // another attempt can end there): keep the stored file.
            self.discard();
            self.stored = StoredAs::Unchanged;
            return Ok(());
        }
        let f = &self.files;
        f.part
            .set_len(rec.size)
            .map_err(|e| serr("truncate", &f.part_path, e))?;
        f.part
            .sync_all()
            .map_err(|e| serr("sync", &f.part_path, e))?;
        self.stored = self.make_room()?;
        let f = &self.files;
        f.part_path
            .rename_to(&f.final_path)
            .map_err(|e| serr("rename into", &f.final_path, e))?;
        self.done = true;
        f.dir.sync()?;
        let _ = f.meta_path.remove();
        let _ = f.blk_path.remove();
        self.record_finished(rec);
        if let StoredAs::Kept(v) = &self.stored {
            // After the rename: it changed the old file's ctime (one link
            // fewer).
            self.carry_record(old, v);
        }
        Ok(())
    }

    /// Before the new file is renamed over the name: keeps whatever is
    /// there as a numbered version, unless the store overwrites. The old
    /// record goes first, so no crash leaves it beside the new file.
    fn make_room(&self) -> Result<StoredAs> {
        let f = &self.files;
        if !f.final_path.exists() {
            return Ok(StoredAs::New);
        }
        let _ = f.done_path.remove();
        if self.overwrite {
            return Ok(StoredAs::Replaced);
        }
        crate::keep::keep_version(f.dir.fd(), self.name.as_str())
            .map(StoredAs::Kept)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    // For good: another try cannot make the name shorter.
                    return Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "refused to replace {}: {e}; send it under a shorter name",
                            self.name
                        ),
                    );
                }
                Error::io(
                    ErrorKind::Storage,
                    format!(
                        "cannot keep the file already stored as {} before replacing it",
                        f.final_path.display()
                    ),
                    e,
                )
            })
    }

    /// The kept version is the old file (a hard link): what was recorded
    /// of it holds for the version too, if nothing but the link changed
    /// (its ctime), so listings and downloads of versions know its CRC-32s.
    fn carry_record(&self, old: Option<FinishedRecord>, version: &str) {
        let (Some(mut rec), Ok(v)) = (old, SafeName::from_wire(version)) else {
            return;
        };
        let at = self.files.dir.at(version);
        let Ok(m) = at.open_read().and_then(|h| h.metadata()) else {
            return;
        };
        let now = FileStamp::of(&m);
        let same =
            (now.ino, now.size, now.mtime) == (rec.stamp.ino, rec.stamp.size, rec.stamp.mtime);
        if same {
            rec.stamp = now;
            let key = crate::store::key_of(&v);
            let tmp = self.files.state.at(&format!("{key}.done.tmp"));
            let dest = self.files.state.at(&format!("{key}.done"));
            let _ = write_finished(&tmp, &dest, &rec);
        }
    }

    /// The record of the file being stored (its stamp is filled in after
    /// the rename).
    fn finished_record(&self) -> FinishedRecord {
        let (size, crc32, block, crcs) = match &self.ledger {
            Ledger::Growing(g) => (g.filesize, g.want, 0, Vec::new()),
            Ledger::Blocks(b) => (
                b.filesize,
                crate::v2::combine(&b.crcs, b.filesize, b.block),
                b.block,
                b.crcs.clone(),
            ),
        };
        FinishedRecord {
            size,
            crc32,
            block,
            crcs,
            stamp: FileStamp::default(),
        }
    }

    /// Writes the finished record of the file just stored. Its absence
    /// only costs the next re-send its shortcut, so a failure is not the
    /// upload's.
    fn record_finished(&self, mut rec: FinishedRecord) {
        let f = &self.files;
        let Ok(m) = f.final_path.open_read().and_then(|h| h.metadata()) else {
            return;
        };
        rec.stamp = FileStamp::of(&m);
        let _ = write_finished(&f.done_tmp, &f.done_path, &rec);
    }

    /// Throws the held part away (after a failed verification), so the
    /// client's retry starts from zero.
    pub fn discard(&mut self) {
        self.done = true;
        let f = &self.files;
        for p in [&f.part_path, &f.meta_path, &f.blk_path] {
            let _ = p.remove();
        }
    }
}

/// Whether two records describe the same content: size and whole CRC-32,
/// and the block CRC-32s when both have them at the same block size.
fn same_content(a: &FinishedRecord, b: &FinishedRecord) -> bool {
    let blocks = a.block == 0 || b.block == 0 || a.block != b.block || a.crcs == b.crcs;
    a.size == b.size && a.crc32 == b.crc32 && blocks
}

impl Drop for DiskPart {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.checkpoint();
        }
    }
}
