//! The server's held part for a version-2 (block-verified) upload.
//!
//! Like [`crate::store::HeldPart`] it lives in `DIR/.bigtransfer/KEY.part`
//! with a checkpoint record `KEY.meta`, plus `KEY.blk`: the CRC-32 of every
//! held block, so that the held part can be compared with the client's file
//! block by block without re-reading it. Blocks may be written out of order
//! (a repaired block in the middle), so the durable state is "the first N
//! blocks are good", N being the first block that is missing or damaged.
//!
//! Not for the wire (see [`crate::v2`]) or for sockets (see the server).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::store::{
    decode_meta, encode_meta_head_as, key_of, write_slot, At, Checkpoint, Dir, Identity, PartStamp,
    Store, SyncJob, Syncer, CHECKPOINT_STEP, META_LEN, META_MAGIC_V2,
};
use crate::v2::{block_count, block_range, combine};
use crate::{Error, ErrorKind, Result};

const BLK_MAGIC: &[u8; 8] = b"BTBLK001";
const BLK_HEAD: u64 = 24;

/// Why a block part starts from less than the record says (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Resumed from the record, nothing re-read.
    Trusted,
    /// Nothing was held.
    Fresh,
    /// The part was modified since its last checkpoint (a crash, or another
    /// writer), or came from a legacy upload: its blocks were re-read.
    Reread(String),
    /// The record was unusable; started over. The reason.
    Discarded(String),
}

/// A version-2 upload in progress on the server.
#[derive(Debug)]
pub struct BlockPart {
    name: crate::SafeName,
    filesize: u64,
    block: u64,
    crcs: Vec<u32>,
    valid: Vec<bool>,
    durable_blocks: u64,
    written_since: u64,
    unflushed: u64,
    seq: u64,
    part: File,
    meta: Arc<File>,
    blk: Arc<File>,
    part_path: At,
    meta_path: At,
    blk_path: At,
    final_path: At,
    dir: Dir,
    done: bool,
    /// Background checkpoints (see [`Syncer`]), each noted with its sequence
    /// number, the good prefix it records and the bytes written since the
    /// previous one, and a second handle on the part for their `fdatasync`.
    syncer: Syncer<(u64, u64, u64)>,
    synced_part: Option<Arc<File>>,
    /// The size of the page-cache writes, chosen by how fast they go.
    pieces: crate::pieces::PieceChooser,
    /// The part's stamp after our last write (see [`BlockPart::recheck_on_disk`]).
    witness: Option<PartStamp>,
    /// Whether a foreign write was seen before one of ours.
    tampered: bool,
}

fn serr(what: &str, p: &At, e: io::Error) -> Error {
    Error::io(
        ErrorKind::Storage,
        format!("cannot {what} {}", p.display()),
        e,
    )
}

fn block_log2(block: u64) -> u32 {
    block.trailing_zeros()
}

impl BlockPart {
    /// Opens the held part of `name` for a file of `filesize` bytes in
    /// blocks of `block` bytes, resuming what can be vouched for.
    pub fn begin(
        store: &Store,
        name: &crate::SafeName,
        filesize: u64,
        block: u64,
    ) -> Result<(BlockPart, Recovery)> {
        let key = key_of(name);
        let part_path = store.part_path(&key);
        let meta_path = store.meta_path(&key);
        let blk_path = store.state().at(&format!("{key}.blk"));
        let n = block_count(filesize, block) as usize;
        let id = Identity {
            name: name.clone(),
            filesize,
            crc32: block_log2(block),
        };

        // What the record says, if it is for this file.
        let mut held: Option<(u64, Option<Vec<u32>>, u64, String)> = None; // (held blocks, trusted crcs, seq, why not trusted)
        let mut recovery = Recovery::Fresh;
        if let Ok(mut meta) = meta_path.open(false) {
            let mut bytes = Vec::new();
            let rec = meta
                .read_to_end(&mut bytes)
                .map_err(|e| e.to_string())
                .and_then(|_| decode_meta(&bytes));
            match rec {
                Ok(r) if r.identity.name == *name && r.identity.filesize == filesize => {
                    let cp = r.checkpoint;
                    let hb = if cp.offset == filesize {
                        n as u64
                    } else {
                        cp.offset / block
                    };
                    let same_blocks = r.version == 2 && r.identity.crc32 == block_log2(block);
                    let stamp_ok = part_path
                        .open_read()
                        .and_then(|f| f.metadata())
                        .ok()
                        .filter(|m| m.len() == cp.offset.min(filesize) || same_blocks)
                        .is_some_and(|m| PartStamp::of(&m) == r.stamp);
                    let crcs = if same_blocks && stamp_ok {
                        read_blk(&blk_path, block, hb as usize)
                    } else {
                        None
                    };
                    let why = if r.version == 1 {
                        "held part of a legacy upload".to_string()
                    } else if !same_blocks {
                        "held part used another block size".to_string()
                    } else if !stamp_ok {
                        "part changed since its last checkpoint".to_string()
                    } else {
                        "block list missing or damaged".to_string()
                    };
                    held = Some((hb, crcs, r.seq, why));
                }
                Ok(_) => recovery = Recovery::Discarded("held part of another file".into()),
                Err(why) => recovery = Recovery::Discarded(format!("checkpoint record: {why}")),
            }
        }
        let (held_blocks, crcs_held, seq) = match held {
            Some((hb, Some(c), seq, _)) => {
                recovery = Recovery::Trusted;
                (hb, c, seq)
            }
            Some((hb, None, seq, why)) => match reread(&part_path, filesize, block, hb) {
                Ok(c) => {
                    recovery = Recovery::Reread(why);
                    (c.len() as u64, c, seq)
                }
                Err(e) => {
                    recovery = Recovery::Discarded(format!("{why}; re-reading it failed: {e}"));
                    (0, Vec::new(), 0)
                }
            },
            None => (0, Vec::new(), 0),
        };

        let part = part_path
            .open(true)
            .map_err(|e| serr("open", &part_path, e))?;
        let meta = meta_path
            .open(true)
            .map_err(|e| serr("open", &meta_path, e))?;
        let blk = blk_path
            .open(true)
            .map_err(|e| serr("open", &blk_path, e))?;
        let held_bytes = block_range(filesize, block, held_blocks).0;
        if held_blocks == 0 {
            part.set_len(0)
                .map_err(|e| serr("truncate", &part_path, e))?;
        }
        let mut crcs = vec![0u32; n];
        let mut valid = vec![false; n];
        crcs[..held_blocks as usize].copy_from_slice(&crcs_held);
        valid[..held_blocks as usize].fill(true);
        let witness = part.metadata().ok().map(|m| PartStamp::of(&m));
        let mut bp = BlockPart {
            witness,
            tampered: false,
            name: name.clone(),
            filesize,
            block,
            crcs,
            valid,
            durable_blocks: held_blocks,
            written_since: 0,
            unflushed: 0,
            seq,
            synced_part: part.try_clone().ok().map(Arc::new),
            part,
            meta: Arc::new(meta),
            blk: Arc::new(blk),
            syncer: Syncer::new(),
            pieces: crate::pieces::PieceChooser::default(),
            part_path,
            meta_path,
            blk_path,
            final_path: store.final_at(name),
            dir: store.dir_handle().clone(),
            done: false,
        };
        if !matches!(recovery, Recovery::Trusted) {
            // Write a fresh record for what we now vouch for.
            let mut rec = encode_meta_head_as(&id, META_MAGIC_V2);
            rec.resize(META_LEN, 0);
            bp.meta
                .set_len(0)
                .map_err(|e| serr("truncate", &bp.meta_path, e))?;
            bp.meta
                .write_all_at(&rec, 0)
                .map_err(|e| serr("write", &bp.meta_path, e))?;
            let mut head = BLK_MAGIC.to_vec();
            head.extend_from_slice(&block.to_be_bytes());
            head.extend_from_slice(&(n as u64).to_be_bytes());
            bp.blk
                .set_len(0)
                .map_err(|e| serr("truncate", &bp.blk_path, e))?;
            bp.blk
                .write_all_at(&head, 0)
                .map_err(|e| serr("write", &bp.blk_path, e))?;
            bp.seq = 0;
            debug_assert_eq!(block_range(filesize, block, bp.good_prefix()).0, held_bytes);
            (bp.record_job()?)()?;
            bp.seq = 1;
            store.state().sync()?;
        }
        Ok((bp, recovery))
    }

    /// Bytes held: the good blocks from the start.
    pub fn held(&self) -> u64 {
        block_range(self.filesize, self.block, self.good_prefix()).0
    }

    /// CRC-32s of the held blocks.
    pub fn held_crcs(&self) -> &[u32] {
        &self.crcs[..self.good_prefix() as usize]
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.filesize
    }

    /// The block size in force.
    pub fn block_size(&self) -> u64 {
        self.block
    }

    fn good_prefix(&self) -> u64 {
        self.valid
            .iter()
            .position(|v| !v)
            .unwrap_or(self.valid.len()) as u64
    }

    /// Writes `data` at file offset `offset` (part of a block being received).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        // Never hold a whole interval beyond what is known durable: before
        // that, wait for the checkpoint in flight.
        if let Some(&(_, _, covered)) = self.syncer.in_flight() {
            if covered + self.written_since + data.len() as u64 >= crate::store::CHECKPOINT_INTERVAL
            {
                self.settle()?;
            }
        }
        if let (Some(w), Ok(m)) = (self.witness, self.part.metadata()) {
            self.tampered |= w != PartStamp::of(&m);
        }
        let mut at = offset;
        let started = std::time::Instant::now();
        for piece in data.chunks(self.pieces.piece()) {
            self.part
                .write_all_at(piece, at)
                .map_err(|e| serr("write", &self.part_path, e))?;
            at += piece.len() as u64;
        }
        self.pieces.record(data.len(), started.elapsed());
        self.witness = self.part.metadata().ok().map(|m| PartStamp::of(&m));
        self.written_since += data.len() as u64;
        self.unflushed += data.len() as u64;
        if self.unflushed >= crate::store::WRITEBACK_STEP {
            // Data arrives in ascending order within a run of blocks: start
            // writeback of what precedes this point.
            let end = offset + data.len() as u64;
            let start = end.saturating_sub(self.unflushed);
            crate::sys::start_writeback(&self.part, start, end - start);
            self.unflushed = 0;
        }
        Ok(())
    }

    /// Called before the first byte of block `idx` is written: a block being
    /// received is not held. If the durable record lists it (the source
    /// changed, so a held block is being replaced), a checkpoint without it
    /// is made first: otherwise a crash mid-write could leave a record that
    /// vouches for the old block's CRC-32 over new bytes.
    pub fn begin_block(&mut self, idx: u64) -> Result<()> {
        let i = idx as usize;
        if i >= self.valid.len() || !self.valid[i] {
            return Ok(());
        }
        self.valid[i] = false;
        let recorded = self
            .syncer
            .in_flight()
            .map_or(self.durable_blocks, |&(_, good, _)| {
                good.max(self.durable_blocks)
            });
        if idx < recorded {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Records the outcome of block `idx`: its CRC-32 as received, and
    /// whether that matched the CRC-32 the client sent with it. A damaged
    /// block is marked missing, to be asked for again.
    pub fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<()> {
        let i = idx as usize;
        self.crcs[i] = crc;
        self.valid[i] = good;
        if self.written_since >= CHECKPOINT_STEP {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// Blocks still missing or damaged.
    pub fn missing(&self) -> Vec<u64> {
        self.valid
            .iter()
            .enumerate()
            .filter(|(_, v)| !**v)
            .map(|(i, _)| i as u64)
            .collect()
    }

    /// Makes sure the verdict is taken over the bytes on disk: when the
    /// part's stamp is not the one our last write left (something else
    /// wrote to it) or its name no longer leads to our file, every held
    /// block is read back, and those that no longer match their CRC-32
    /// become missing (to be repaired) and are returned.
    pub fn recheck_on_disk(&mut self) -> Result<Vec<u64>> {
        let now = self
            .part
            .metadata()
            .map(|m| PartStamp::of(&m))
            .map_err(|e| serr("inspect", &self.part_path, e))?;
        let same_file = self
            .part_path
            .open_read()
            .and_then(|f| f.metadata())
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == now.ino);
        if !same_file {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "{} was replaced behind the server's back",
                    self.part_path.display()
                ),
            ));
        }
        if !self.tampered && self.witness.is_none_or(|w| w == now) {
            return Ok(Vec::new());
        }
        let mut bad = Vec::new();
        let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
        for idx in 0..self.valid.len() as u64 {
            if !self.valid[idx as usize] {
                continue;
            }
            let crc = self.crc_on_disk(idx, &mut buf)?;
            if crc != self.crcs[idx as usize] {
                self.valid[idx as usize] = false;
                bad.push(idx);
            }
        }
        self.witness = Some(now);
        self.tampered = false;
        Ok(bad)
    }

    fn crc_on_disk(&self, idx: u64, buf: &mut [u8]) -> Result<u32> {
        let (off, len) = block_range(self.filesize, self.block, idx);
        let mut h = crc32fast::Hasher::new();
        let mut at = 0u64;
        while at < len {
            let want = ((len - at) as usize).min(buf.len());
            let n = self
                .part
                .read_at(&mut buf[..want], off + at)
                .map_err(|e| serr("re-read", &self.part_path, e))?;
            if n == 0 {
                break; // Short: the CRC will not match.
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(h.finalize())
    }

    /// CRC-32 of the whole file as held (meaningful when nothing is missing).
    pub fn whole_crc(&self) -> u32 {
        combine(&self.crcs, self.filesize, self.block)
    }

    /// Records a finished background checkpoint as the durable one.
    fn settle(&mut self) -> Result<()> {
        if let Some((seq, good, _)) = self.syncer.settle()? {
            self.seq = seq;
            self.durable_blocks = good;
        }
        Ok(())
    }

    /// Makes the good prefix durable and records it, on this thread (after
    /// any background checkpoint in flight).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.settle()?;
        let good = self.good_prefix();
        if self.written_since == 0 && good == self.durable_blocks {
            return Ok(());
        }
        crate::sys::fdatasync(&self.part).map_err(|e| serr("sync", &self.part_path, e))?;
        self.written_since = 0;
        let job = self.record_job()?;
        job()?;
        self.seq += 1;
        self.durable_blocks = good;
        Ok(())
    }

    /// Has the helper thread make the good prefix durable and record it,
    /// while this thread goes on receiving (after waiting for the previous
    /// one). Falls back to [`BlockPart::checkpoint`] if the part could not
    /// be opened twice.
    fn checkpoint_in_background(&mut self) -> Result<()> {
        self.settle()?;
        let Some(part) = self.synced_part.clone() else {
            return self.checkpoint();
        };
        let good = self.good_prefix();
        let record = self.record_job()?;
        let part_path = self.part_path.clone();
        self.syncer.submit(
            Box::new(move || {
                // Every block of the good prefix was written before this job
                // was made, so this covers them all.
                crate::sys::fdatasync(&part).map_err(|e| serr("sync", &part_path, e))?;
                record()
            }),
            (self.seq + 1, good, self.written_since),
        )?;
        self.written_since = 0;
        Ok(())
    }

    /// The disk work of recording the good prefix as it is now, as checkpoint
    /// `seq + 1`: the block list, then the record slot, each synced. The
    /// part's stamp is taken here, while the record is exactly true: any
    /// later write changes it, so a crash after one makes the next start
    /// re-read the part instead of trusting the record.
    fn record_job(&self) -> Result<SyncJob> {
        let good = self.good_prefix() as usize;
        let mut list = Vec::with_capacity(4 * good);
        for c in &self.crcs[..good] {
            list.extend_from_slice(&c.to_be_bytes());
        }
        let stamp = self
            .part
            .metadata()
            .map(|m| PartStamp::of(&m))
            .map_err(|e| serr("inspect", &self.part_path, e))?;
        let cp = Checkpoint {
            offset: block_range(self.filesize, self.block, good as u64).0,
            crc32: combine(&self.crcs[..good], self.filesize, self.block),
        };
        let seq = self.seq + 1;
        let (blk, blk_path) = (Arc::clone(&self.blk), self.blk_path.clone());
        let (meta, meta_path) = (Arc::clone(&self.meta), self.meta_path.clone());
        Ok(Box::new(move || {
            blk.write_all_at(&list, BLK_HEAD)
                .and_then(|_| crate::sys::fdatasync(&blk))
                .map_err(|e| serr("write", &blk_path, e))?;
            write_slot(&meta, &meta_path, seq, cp, stamp)
        }))
    }

    /// Stores the complete, verified file under its final name (durably).
    pub fn finish(&mut self) -> Result<()> {
        // A background fdatasync that failed may have lost data that a later
        // one would not report again: it fails the upload.
        self.settle()?;
        self.part
            .set_len(self.filesize)
            .map_err(|e| serr("truncate", &self.part_path, e))?;
        self.part
            .sync_all()
            .map_err(|e| serr("sync", &self.part_path, e))?;
        self.part_path
            .rename_to(&self.final_path)
            .map_err(|e| serr("rename into", &self.final_path, e))?;
        self.done = true;
        self.dir.sync()?;
        let _ = self.meta_path.remove();
        let _ = self.blk_path.remove();
        Ok(())
    }

    /// Throws the held part away (after a failed verification).
    pub fn discard(&mut self) {
        self.done = true;
        for p in [&self.part_path, &self.meta_path, &self.blk_path] {
            let _ = p.remove();
        }
    }

    /// The file name.
    pub fn name(&self) -> &crate::SafeName {
        &self.name
    }
}

impl Drop for BlockPart {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.checkpoint();
        }
    }
}

fn read_blk(path: &At, block: u64, count: usize) -> Option<Vec<u32>> {
    let f = path.open_read().ok()?;
    let mut head = [0u8; BLK_HEAD as usize];
    f.read_exact_at(&mut head, 0).ok()?;
    if &head[..8] != BLK_MAGIC || u64::from_be_bytes(head[8..16].try_into().ok()?) != block {
        return None;
    }
    let mut list = vec![0u8; 4 * count];
    f.read_exact_at(&mut list, BLK_HEAD).ok()?;
    Some(
        list.chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Re-reads the first `blocks` blocks of the part and returns their CRC-32s
/// (fewer if the part is shorter: only whole blocks that are there count).
fn reread(path: &At, filesize: u64, block: u64, blocks: u64) -> io::Result<Vec<u32>> {
    let f = path.open_read()?;
    crate::sys::advise_sequential(&f);
    let len = f.metadata()?.len();
    let mut out = Vec::new();
    let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
    for idx in 0..blocks {
        let (off, blen) = block_range(filesize, block, idx);
        if off + blen > len {
            break;
        }
        let mut h = crc32fast::Hasher::new();
        let mut pos = off;
        while pos < off + blen {
            let n = ((off + blen - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        out.push(h.finalize());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn setup() -> (PathBuf, Store) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "bt-blocks-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&d).unwrap();
        let s = Store::open(&d).unwrap();
        (d, s)
    }

    fn put(bp: &mut BlockPart, data: &[u8], idx: u64) {
        let (off, len) = block_range(data.len() as u64, bp.block, idx);
        let chunk = &data[off as usize..(off + len) as usize];
        bp.write_at(off, chunk).unwrap();
        bp.record_block(idx, crc32fast::hash(chunk), true).unwrap();
    }

    #[test]
    fn a_held_block_being_replaced_is_not_vouched_for() {
        let (d, store) = setup();
        let name = crate::SafeName::from_wire("r.bin").unwrap();
        let block = 65536u64;
        let data: Vec<u8> = (0..(4 * block)).map(|i| (i % 251) as u8).collect();
        let (mut bp, _) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        for i in 0..3 {
            put(&mut bp, &data, i);
        }
        drop(bp);
        // The source changed: block 1 is being replaced when the link drops.
        let (mut bp, rec) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        assert_eq!(rec, Recovery::Trusted);
        bp.begin_block(1).unwrap();
        bp.write_at(block, &[0xEE; 1000]).unwrap();
        drop(bp); // the cut-off checkpoint
        let (bp, rec) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        assert_eq!(rec, Recovery::Trusted);
        // Only block 0 is vouched for; block 1's old CRC-32 over the new
        // bytes would let a source changed back be "verified" wrongly.
        assert_eq!(bp.held(), block);
        assert_eq!(bp.held_crcs(), &[crc32fast::hash(&data[..block as usize])]);
        drop(bp);
        drop(store);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn background_checkpoints_survive_a_crash() {
        let (d, store) = setup();
        let name = crate::SafeName::from_wire("bg.bin").unwrap();
        let block = 1u64 << 20;
        let steps = CHECKPOINT_STEP / block;
        let data: Vec<u8> = (0..((2 * steps + 3) * block))
            .map(|i| (i % 241) as u8)
            .collect();
        let (mut bp, _) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        // Two steps and a block: the second step's checkpoint waited for the
        // first, so the first is on disk whatever the helper is doing now.
        for i in 0..=2 * steps {
            put(&mut bp, &data, i);
            // What is known durable is never a whole interval behind.
            assert!((i + 1 - bp.durable_blocks) * block < crate::store::CHECKPOINT_INTERVAL);
        }
        std::mem::forget(bp); // a crash: no final checkpoint
        let (bp, _) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        let held = bp.held();
        assert!(
            (steps * block..=(2 * steps + 1) * block).contains(&held),
            "held {held}"
        );
        let expect: Vec<u32> = data.chunks(block as usize).map(crc32fast::hash).collect();
        assert_eq!(bp.held_crcs(), &expect[..(held / block) as usize]);
        drop(bp);
        drop(store);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resume_trusts_the_record_and_rereads_a_modified_part() {
        let (d, store) = setup();
        let name = crate::SafeName::from_wire("b.bin").unwrap();
        let block = 65536u64;
        let data: Vec<u8> = (0..(5 * block + 100)).map(|i| (i % 253) as u8).collect();
        let (mut bp, rec) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        assert_eq!(rec, Recovery::Fresh);
        for i in 0..3 {
            put(&mut bp, &data, i);
        }
        drop(bp);
        let (bp, rec) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        assert_eq!(rec, Recovery::Trusted);
        assert_eq!(bp.held(), 3 * block);
        let expect: Vec<u32> = data
            .chunks(block as usize)
            .take(3)
            .map(crc32fast::hash)
            .collect();
        assert_eq!(bp.held_crcs(), &expect[..]);
        drop(bp);
        // Damage block 1 on disk: the part is re-read and block 1 shows it.
        let part = d
            .join(".bigtransfer")
            .join(format!("{}.part", key_of(&name)));
        fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .unwrap()
            .write_all_at(b"zz", block + 7)
            .unwrap();
        let (mut bp, rec) = BlockPart::begin(&store, &name, data.len() as u64, block).unwrap();
        assert!(matches!(rec, Recovery::Reread(_)), "{rec:?}");
        assert_eq!(bp.held_crcs()[0], expect[0]);
        assert_ne!(bp.held_crcs()[1], expect[1]);
        assert_eq!(bp.held_crcs()[2], expect[2]);
        for i in [1, 3, 4, 5] {
            put(&mut bp, &data, i);
        }
        assert!(bp.missing().is_empty());
        assert_eq!(bp.whole_crc(), crc32fast::hash(&data));
        bp.finish().unwrap();
        assert_eq!(fs::read(d.join("b.bin")).unwrap(), data);
        drop(store);
        fs::remove_dir_all(&d).unwrap();
    }
}
