//! What a held part vouches for: the verified blocks and their CRC-32s.
//! Protocol 2 holds a set of fixed-size blocks (with holes); protocol 1 is
//! one block that grows (a prefix and its running CRC-32). A [`Ledger`]
//! says what a checkpoint records and re-reads the part when its bytes
//! may not be the ones received.
//!
//! Not for file handles, syncing or when to checkpoint (see
//! [`super::DiskPart`]) nor for opening and resuming (see [`super::open`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use crate::machine::{Fault, Held, HeldSet};
use crate::store::Checkpoint;
use crate::v2::{block_count, block_range, combine};

/// Magic of the block list `KEY.blk` written before this engine: the
/// CRC-32s of the first N blocks only (N from the checkpoint's offset).
pub(super) const BLK_MAGIC_PREFIX: &[u8; 8] = b"BTBLK001";
/// Magic of the block list with holes: every block's CRC-32, then one bit
/// per block saying whether it is held.
pub(super) const BLK_MAGIC_SET: &[u8; 8] = b"BTBLK002";
/// Magic, block size, block count.
pub(super) const BLK_HEAD: u64 = 24;

/// A background re-read of a resumed protocol-1 prefix: `Err(why)` when
/// its bytes are not the recorded ones.
pub(super) type PrefixCheck = JoinHandle<Result<(), String>>;

/// Protocol 1: the first `offset` bytes and their CRC-32.
#[derive(Debug)]
pub(crate) struct Growing {
    pub(super) filesize: u64,
    /// The whole file's CRC-32 from the header.
    pub(super) want: u32,
    pub(super) offset: u64,
    pub(super) crc: u32,
    /// The resumed prefix being re-read (the part changed after its last
    /// checkpoint), and what that found.
    pub(super) check: Option<PrefixCheck>,
    pub(super) problem: Option<String>,
}

/// Protocol 2: block index -> CRC-32 and whether it is held.
#[derive(Debug)]
pub(crate) struct Blocks {
    pub(super) filesize: u64,
    pub(super) block: u64,
    pub(super) crcs: Vec<u32>,
    pub(super) valid: Vec<bool>,
    /// Which blocks the newest record (durable or in flight) vouches for.
    pub(super) recorded: Vec<bool>,
}

/// What a held part vouches for.
#[derive(Debug)]
pub(crate) enum Ledger {
    /// Protocol 1.
    Growing(Growing),
    /// Protocol 2.
    Blocks(Blocks),
}

/// What one checkpoint writes: the record's slot and, for blocks, the
/// block list (written and synced first).
pub(super) struct Entry {
    pub(super) cp: Checkpoint,
    pub(super) list: Option<Vec<u8>>,
}

impl Blocks {
    /// No block held yet.
    pub(super) fn empty(filesize: u64, block: u64) -> Blocks {
        let n = block_count(filesize, block) as usize;
        Blocks {
            filesize,
            block,
            crcs: vec![0; n],
            valid: vec![false; n],
            recorded: vec![false; n],
        }
    }

    /// Blocks held without a hole from the start.
    pub(super) fn prefix(&self) -> u64 {
        self.valid
            .iter()
            .position(|v| !v)
            .unwrap_or(self.valid.len()) as u64
    }

    /// The block list with holes: every CRC-32, then the held bitmap.
    fn list(&self) -> Vec<u8> {
        let n = self.crcs.len();
        let mut out = Vec::with_capacity(4 * n + n.div_ceil(8));
        for c in &self.crcs {
            out.extend_from_slice(&c.to_be_bytes());
        }
        let mut bits = vec![0u8; n.div_ceil(8)];
        for (i, _) in self.valid.iter().enumerate().filter(|(_, v)| **v) {
            bits[i / 8] |= 1 << (i % 8);
        }
        out.extend_from_slice(&bits);
        out
    }

    fn entry(&mut self) -> Entry {
        let good = self.prefix();
        self.recorded.clone_from(&self.valid);
        Entry {
            cp: Checkpoint {
                offset: block_range(self.filesize, self.block, good).0,
                crc32: combine(&self.crcs[..good as usize], self.filesize, self.block),
            },
            list: Some(self.list()),
        }
    }

    /// Re-reads every held block of `part` and returns those whose bytes
    /// no longer match their CRC-32. With `drop_changed` they become
    /// missing (before a verdict: to be repaired); without, they stay held
    /// with the CRC-32 of the bytes on disk (at resume: the sender compares
    /// and sends what differs). Blocks the part is too short for are
    /// missing either way.
    pub(super) fn reread(&mut self, part: &File, drop_changed: bool) -> std::io::Result<Vec<u64>> {
        let mut bad = Vec::new();
        let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
        for idx in 0..self.valid.len() {
            if !self.valid[idx] {
                continue;
            }
            let (off, len) = block_range(self.filesize, self.block, idx as u64);
            let now = crc_at(part, off, len, &mut buf)?;
            if now == Some(self.crcs[idx]) {
                continue;
            }
            bad.push(idx as u64);
            match now {
                Some(crc) if !drop_changed => self.crcs[idx] = crc,
                _ => self.valid[idx] = false,
            }
        }
        Ok(bad)
    }

    fn held(&self) -> Result<Held, Fault> {
        let mut set = HeldSet::new(self.filesize, self.block)?;
        for (i, _) in self.valid.iter().enumerate().filter(|(_, v)| **v) {
            set.mark(i as u64, self.crcs[i]);
        }
        set.make_durable();
        Ok(Held::Blocks(set))
    }
}

/// CRC-32 of `len` bytes of `part` at `off`; `None` if the part is shorter.
pub(super) fn crc_at(
    part: &File,
    off: u64,
    len: u64,
    buf: &mut [u8],
) -> std::io::Result<Option<u32>> {
    let mut h = crc32fast::Hasher::new();
    let mut at = 0u64;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        let n = part.read_at(&mut buf[..want], off + at)?;
        if n == 0 {
            return Ok(None);
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Some(h.finalize()))
}

impl Ledger {
    /// What is held, as the protocol machine sees it.
    pub(crate) fn held(&self) -> Result<Held, Fault> {
        match self {
            Ledger::Growing(g) => Ok(Held::Prefix {
                offset: g.offset,
                crc32: g.crc,
            }),
            Ledger::Blocks(b) => b.held(),
        }
    }

    /// Bytes held (protocol 2: in every held block, holes or not).
    pub(crate) fn held_bytes(&self) -> u64 {
        match self {
            Ledger::Growing(g) => g.offset,
            Ledger::Blocks(b) => (0..b.valid.len())
                .filter(|&i| b.valid[i])
                .map(|i| block_range(b.filesize, b.block, i as u64).1)
                .sum(),
        }
    }

    /// Blocks held (protocol 1: none).
    pub(crate) fn held_blocks(&self) -> usize {
        match self {
            Ledger::Growing(_) => 0,
            Ledger::Blocks(b) => b.valid.iter().filter(|v| **v).count(),
        }
    }

    /// Notes bytes written at `offset`; `crc_after` is the CRC-32 of the
    /// whole prefix after them when the caller already computed it.
    pub(super) fn wrote(&mut self, offset: u64, bytes: &[u8], crc_after: Option<u32>) {
        if let Ledger::Growing(g) = self {
            g.crc = crc_after.unwrap_or_else(|| {
                let mut h = crc32fast::Hasher::new_with_initial_len(g.crc, g.offset);
                h.update(bytes);
                h.finalize()
            });
            g.offset = offset + bytes.len() as u64;
        }
    }

    /// What the next checkpoint records (and, for blocks, that the record
    /// now vouches for exactly the blocks held).
    pub(super) fn entry(&mut self) -> Entry {
        match self {
            Ledger::Growing(g) => Entry {
                cp: Checkpoint {
                    offset: g.offset,
                    crc32: g.crc,
                },
                list: None,
            },
            Ledger::Blocks(b) => b.entry(),
        }
    }
}
