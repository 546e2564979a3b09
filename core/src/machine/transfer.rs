//! The data-transfer half of version 2, apart from connection setup: an
//! [`Intake`] takes data and end frames into a [`HeldSet`] and decides
//! repair, commit or discard; an [`Outlet`] plans which blocks to send
//! against a held list, frames them and checks repair lists.
//!
//! Neither knows which side opened the connection, who authenticated or
//! what storage is behind: the [`Receiver`](super::Receiver) and
//! [`Sender`](super::Sender) wrap them with setup, deadlines and faults. A
//! download runs the same two with the roles swapped; parallel streams can
//! run several over one held set. Not for deadlines, the wire's fault
//! frames or storage calls.

use std::collections::VecDeque;

use crc32fast::Hasher;

use super::{ClientDecoder, ClientItem, Fault, HeldSet, SendAction, WriteAt, MAX_REPAIR_ROUNDS};
use crate::compress::{StreamDecoder, Unpacker};
use crate::v2;

#[derive(Debug)]
struct InBlock {
    idx: u64,
    pos: u64,
    hasher: Hasher,
    /// For a compressed frame: its chunks, decompressed one at a time.
    unpack: Option<Unpacker>,
    /// Why the compressed payload could not be unpacked: the rest of the
    /// frame is skipped and the block counts as damaged, to be sent again
    /// (zstd turns a bit flipped in transit into a decoding error, which
    /// is a repair like a raw block's wrong CRC-32, not a refusal; a peer
    /// that keeps lying runs out of repair rounds).
    damaged: Option<String>,
}

/// What the intake made of some input.
#[derive(Debug, PartialEq, Eq)]
pub enum Took<'a> {
    /// Nothing complete yet.
    More,
    /// Block `idx` of `len` bytes begins: it no longer counts as held.
    Begin {
        /// Block index.
        idx: u64,
        /// Its length.
        len: u64,
    },
    /// Payload bytes to write.
    Write(WriteAt<'a>),
    /// A block ended: its CRC-32 as received and whether it matched.
    Record {
        /// Block index.
        idx: u64,
        /// CRC-32 of the bytes received.
        crc: u32,
        /// Whether the sender's CRC-32 agreed.
        good: bool,
    },
    /// The end frame came with the whole file's CRC-32: the receiver
    /// rechecks its storage, then decides with [`Intake::end`].
    End(u32),
    /// The end frame came and these blocks are missing: ask again.
    Repair(Vec<u64>),
    /// The end frame came, every block is held and the whole CRC-32 agrees.
    Commit(u32),
    /// The end frame came and the upload cannot succeed (why).
    Discard(String),
}

/// The receiving half of a block transfer.
#[derive(Debug)]
pub struct Intake {
    held: HeldSet,
    dec: ClientDecoder,
    block: Option<InBlock>,
    round: u32,
    packed_ok: bool,
    /// The connection's zstd stream decoder, when [`crate::compress::STREAM_CODEC`]
    /// was agreed (made at its first compressed frame).
    stream: Option<Option<StreamDecoder>>,
}

impl Intake {
    /// Takes blocks into `held` (what is held already).
    pub fn new(held: HeldSet) -> Intake {
        let dec = ClientDecoder::new(held.filesize(), held.block_size());
        Intake {
            held,
            dec,
            block: None,
            round: 0,
            packed_ok: false,
            stream: None,
        }
    }

    /// Compressed data frames were agreed on this connection: take them
    /// (until then one is a protocol error).
    pub fn accept_packed(&mut self) {
        self.packed_ok = true;
    }

    /// Compressed data frames continuing one zstd stream per connection
    /// ([`crate::compress::STREAM_CODEC`]) were agreed: take those.
    pub fn accept_packed_stream(&mut self) {
        self.packed_ok = true;
        self.stream = Some(None);
    }

    /// Payload bytes the current compressed frame takes next, if one is
    /// being received.
    fn packed_want(&mut self) -> Option<usize> {
        let left = self.dec.payload_left()?;
        let b = self.block.as_mut()?;
        let u = b.unpack.as_ref()?;
        if b.damaged.is_some() {
            return Some(left.min(usize::MAX as u64) as usize);
        }
        match u.want() as u64 {
            0 => {
                b.damaged = Some(format!("{left} bytes follow its last chunk"));
                Some(left.min(usize::MAX as u64) as usize)
            }
            n => Some(n.min(left) as usize),
        }
    }

    /// Takes packed payload (at most what [`Intake::packed_want`] said),
    /// giving a decompressed chunk to write when one is complete.
    fn take_packed<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Took<'a>), Fault> {
        let (used, item) = self.dec.decode(input)?;
        let ended = self.dec.payload_left().is_none();
        let (Some(ClientItem::Payload(bytes)), Some(b)) = (item, self.block.as_mut()) else {
            return Err(Fault::bad("compressed payload outside a block"));
        };
        let Some(u) = b.unpack.as_mut() else {
            return Err(Fault::bad("compressed payload outside a block"));
        };
        if b.damaged.is_some() {
            return Ok((used, Took::More));
        }
        let out = if u.is_streaming() {
            // The stream's state is shared by the connection's later
            // blocks: a chunk that fails is a refusal, not a repair.
            let dec = match self.stream.as_mut().map(Option::as_mut) {
                Some(Some(d)) => d,
                Some(None) => {
                    let d = StreamDecoder::new().map_err(|e| Fault::bad(e.to_string()))?;
                    self.stream
                        .insert(Some(d))
                        .as_mut()
                        .ok_or_else(|| Fault::bad("internal"))?
                }
                None => return Err(Fault::bad("internal: a streamed block without a stream")),
            };
            let out = u
                .feed_stream(bytes, dec)
                .map_err(|e| Fault::bad(e.to_string()))?;
            if ended && !u.is_done() {
                return Err(Fault::bad(
                    "refused a compressed block from the peer: its payload ends before its last chunk",
                ));
            }
            out
        } else {
            match u.feed(bytes) {
                Ok(out) => out,
                Err(e) => {
                    b.damaged = Some(e.to_string());
                    return Ok((used, Took::More));
                }
            }
        };
        if ended && !u.is_done() {
            b.damaged = Some("its payload ends before its last chunk".into());
        }
        let Some(raw) = out else {
            return Ok((used, Took::More));
        };
        let offset = b.pos;
        b.pos += raw.len() as u64;
        b.hasher.update(&raw);
        let bytes = std::borrow::Cow::Owned(raw);
        Ok((used, Took::Write(WriteAt { offset, bytes })))
    }

    /// The blocks held.
    pub fn held(&self) -> &HeldSet {
        &self.held
    }

    /// Whether no data frame is half received.
    pub fn between_blocks(&self) -> bool {
        self.block.is_none() && self.dec.payload_left().is_none()
    }

    /// Block `idx` (from another stream) no longer counts as held.
    pub fn forget(&mut self, idx: u64) {
        self.held.forget(idx);
    }

    /// Block `idx` (from another stream) is held with CRC-32 `crc`.
    pub fn mark(&mut self, idx: u64, crc: u32) {
        self.held.mark(idx, crc);
    }

    /// Repair rounds asked for so far.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Payload bytes of the current data frame still to come.
    pub fn payload_left(&self) -> Option<u64> {
        self.dec.payload_left()
    }

    /// Takes from `input`: bytes used and what came of them.
    pub fn take<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Took<'a>), Fault> {
        if input.is_empty() {
            return Ok((0, Took::More));
        }
        if let Some(n) = self.packed_want() {
            return self.take_packed(&input[..n.min(input.len())]);
        }
        let (used, item) = self.dec.decode(input)?;
        let took = match item {
            None => Took::More,
            Some(ClientItem::DataHead { idx, offset, len }) => self.begin(idx, offset, len, None),
            Some(ClientItem::PackedHead {
                idx, offset, len, ..
            }) => {
                if !self.packed_ok {
                    return Err(Fault::bad(
                        "a compressed data frame, but no compression was agreed on this connection",
                    ));
                }
                let u = if self.stream.is_some() {
                    Unpacker::streaming(len)
                } else {
                    Unpacker::new(len)
                };
                self.begin(idx, offset, len, Some(u))
            }
            Some(ClientItem::Payload(bytes)) => {
                let b = self
                    .block
                    .as_mut()
                    .ok_or_else(|| Fault::bad("payload outside a block"))?;
                let offset = b.pos;
                b.pos += bytes.len() as u64;
                b.hasher.update(bytes);
                let bytes = std::borrow::Cow::Borrowed(bytes);
                Took::Write(WriteAt { offset, bytes })
            }
            Some(ClientItem::Trailer(sent)) => {
                let b = self
                    .block
                    .take()
                    .ok_or_else(|| Fault::bad("trailer outside a block"))?;
                let crc = b.hasher.finalize();
                let good = crc == sent && b.damaged.is_none();
                if good {
                    self.held.mark(b.idx, crc);
                }
                Took::Record {
                    idx: b.idx,
                    crc,
                    good,
                }
            }
            Some(ClientItem::End(crc)) => Took::End(crc),
            Some(ClientItem::Answer(_)) => return Err(Fault::bad("unexpected answer frame")),
        };
        Ok((used, took))
    }

    fn begin(
        &mut self,
        idx: u64,
        offset: u64,
        len: u64,
        unpack: Option<Unpacker>,
    ) -> Took<'static> {
        self.block = Some(InBlock {
            idx,
            pos: offset,
            hasher: Hasher::new(),
            unpack,
            damaged: None,
        });
        self.held.forget(idx);
        Took::Begin { idx, len }
    }

    /// Decides after the end frame (whole CRC-32 `crc`): repair, commit or
    /// discard. `changed` are held blocks the storage found changed on
    /// disk since they were verified: they count as missing.
    pub fn end(&mut self, crc: u32, changed: &[u64]) -> Took<'static> {
        for &idx in changed {
            self.held.forget(idx);
        }
        let missing = self.held.missing();
        if let Some(&first) = missing.first() {
            if self.round >= MAX_REPAIR_ROUNDS {
                return Took::Discard(format!(
                    "CRC32_ERROR: {} block(s) still damaged after {MAX_REPAIR_ROUNDS} repair rounds (first: block {first}); the link keeps corrupting data or the source keeps changing",
                    missing.len()
                ));
            }
            self.round += 1;
            return Took::Repair(missing);
        }
        match self.held.whole_crc() {
            Some(whole) if whole == crc => Took::Commit(crc),
            whole => Took::Discard(format!(
                "CRC32_ERROR: every block matched its checksum but the whole-file CRC-32 is {:08x}, the client says {crc:08x}",
                whole.unwrap_or(0)
            )),
        }
    }
}

/// What the outlet sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Transmit `head`, then have the shell stream the block (`action`).
    Block {
        /// The data frame's head.
        head: [u8; 13],
        /// The [`SendAction::SendBlock`] for the payload.
        action: SendAction,
    },
    /// Every planned block is sent: transmit this end frame.
    End([u8; 5]),
    /// Re-reading these blocks for a repair gave different data.
    Unstable(Vec<u64>),
    /// A block's CRC-32 is unknown (a bug in the caller).
    Broken(&'static str),
}

/// The sending half of a block transfer.
#[derive(Debug)]
pub struct Outlet {
    filesize: u64,
    block: u64,
    crcs: Vec<Option<u32>>,
    /// The receiver's held list, block by block up to its last held one.
    server: Vec<Option<u32>>,
    queue: VecDeque<u64>,
    current: Option<u64>,
    round: u32,
    max_rounds: u32,
    resent: u64,
    kept: Option<u64>,
    unstable: Vec<u64>,
}

impl Outlet {
    /// Sends a file of `filesize` bytes in blocks of `block`, knowing the
    /// CRC-32s of its first blocks (`known`, from a cache).
    pub fn new(filesize: u64, block: u64, known: &[u32]) -> Outlet {
        let n = v2::block_count(filesize, block.max(1)).min(super::MAX_BLOCKS) as usize;
        let mut crcs: Vec<Option<u32>> = known.iter().take(n).map(|&c| Some(c)).collect();
        crcs.resize(n, None);
        Outlet {
            filesize,
            block,
            crcs,
            server: Vec::new(),
            queue: VecDeque::new(),
            current: None,
            round: 0,
            max_rounds: MAX_REPAIR_ROUNDS,
            resent: 0,
            kept: None,
            unstable: Vec::new(),
        }
    }

    /// Answers at most `n` repair rounds (default [`MAX_REPAIR_ROUNDS`]).
    pub fn set_max_rounds(&mut self, n: u32) {
        self.max_rounds = n;
    }

    /// Blocks sent again: held ones that differed, and repaired ones.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// Bytes of held blocks that match ours, once planned.
    pub fn kept(&self) -> Option<u64> {
        self.kept
    }

    /// The source's block CRC-32s known so far.
    pub fn crcs(&self) -> &[Option<u32>] {
        &self.crcs
    }

    /// Repair rounds so far.
    pub fn round(&self) -> u32 {
        self.round
    }

    fn known(&self) -> u64 {
        self.crcs.iter().take_while(|c| c.is_some()).count() as u64
    }

    /// Checks the receiver's held list ("the first `held` bytes") against
    /// the file; returns the blocks whose CRC-32 must be computed before
    /// planning, if any.
    pub fn accept_held(
        &mut self,
        held: u64,
        block: u64,
        server: Vec<u32>,
    ) -> Result<Option<(u64, u64)>, String> {
        let count = server.len() as u64;
        let fits = block == self.block
            && count <= self.crcs.len() as u64
            && held == v2::block_range(self.filesize, block, count).0;
        if !fits {
            return Err("the server's block list does not fit this file".into());
        }
        self.server = server.into_iter().map(Some).collect();
        Ok(self.to_hash())
    }

    /// Checks the receiver's held set (runs of blocks, with holes, as
    /// [`v2::ServerMsg::HeldSet`] gives them) against the file, like
    /// [`Outlet::accept_held`].
    pub fn accept_set(
        &mut self,
        block: u64,
        runs: &[(u64, u64)],
        crcs: Vec<u32>,
    ) -> Result<Option<(u64, u64)>, String> {
        let end = runs.last().map_or(0, |&(first, n)| first + n);
        if block != self.block || end > self.crcs.len() as u64 {
            return Err("the server's block set does not fit this file".into());
        }
        let mut server = vec![None; end as usize];
        let mut crcs = crcs.into_iter();
        for &(first, n) in runs {
            for slot in &mut server[first as usize..(first + n) as usize] {
                *slot = crcs.next();
            }
        }
        self.server = server;
        Ok(self.to_hash())
    }

    /// Blocks up to the receiver's last held one whose CRC-32 we lack.
    fn to_hash(&self) -> Option<(u64, u64)> {
        let (known, count) = (self.known(), self.server.len() as u64);
        (known < count).then_some((known, count))
    }

    /// The CRC-32s of the blocks asked for by [`Outlet::accept_held`].
    pub fn add_hashes(&mut self, v: Vec<u32>) -> Result<(), String> {
        let known = self.known() as usize;
        if known + v.len() != self.server.len() {
            return Err("internal: wrong number of block hashes".into());
        }
        for (i, c) in v.into_iter().enumerate() {
            self.crcs[known + i] = Some(c);
        }
        Ok(())
    }

    /// Plans the blocks to send, in order: those the receiver holds with
    /// another CRC-32 or lacks (counted as sent again up to its last held
    /// block), then the rest.
    pub fn plan(&mut self) {
        let n = self.server.len();
        let keep = |i: usize| self.server[i].is_some() && self.server[i] == self.crcs[i];
        let redo: Vec<u64> = (0..n).filter(|&i| !keep(i)).map(|i| i as u64).collect();
        let kept = (0..n).filter(|&i| keep(i));
        let kept = kept.map(|i| v2::block_range(self.filesize, self.block, i as u64).1);
        self.kept = Some(kept.sum());
        self.resent += redo.len() as u64;
        self.queue = redo.into_iter().collect();
        self.queue.extend(n as u64..self.crcs.len() as u64);
    }

    /// What to send next.
    pub fn next_to_send(&mut self) -> Next {
        let Some(idx) = self.queue.pop_front() else {
            if !self.unstable.is_empty() {
                return Next::Unstable(std::mem::take(&mut self.unstable));
            }
            let all: Option<Vec<u32>> = self.crcs.iter().copied().collect();
            let Some(all) = all else {
                return Next::Broken("internal: a block's CRC-32 is unknown at the end");
            };
            return Next::End(v2::encode_end(v2::combine(&all, self.filesize, self.block)));
        };
        self.current = Some(idx);
        let (offset, len) = v2::block_range(self.filesize, self.block, idx);
        Next::Block {
            // A block is at most 256 MiB, so its length fits the u32 field.
            head: v2::encode_data_head(offset, len as u32),
            action: SendAction::SendBlock { idx, offset, len },
        }
    }

    /// Takes the planned blocks out (to send them over several streams).
    pub fn take_queue(&mut self) -> Vec<u64> {
        self.queue.drain(..).collect()
    }

    /// Block `idx` went out (over another stream) with CRC-32 `crc`.
    pub fn record_sent(&mut self, idx: u64, crc: u32) -> Result<(), String> {
        let slot = self
            .crcs
            .get_mut(idx as usize)
            .ok_or_else(|| format!("internal: block {idx} is outside the file"))?;
        *slot = Some(crc);
        Ok(())
    }

    /// The block in flight was streamed with CRC-32 `crc`: its trailer.
    pub fn sent(&mut self, crc: u32) -> Result<[u8; 4], &'static str> {
        let idx = self.current.take().ok_or("internal: no block in flight")?;
        let slot = &mut self.crcs[idx as usize];
        if self.round > 0 && slot.is_some_and(|c| c != crc) {
            self.unstable.push(idx);
        }
        *slot = Some(crc);
        Ok(crc.to_be_bytes())
    }

    /// A repair list: valid when it names each block at most once, each
    /// within the file, is not empty, and the rounds are not exhausted.
    pub fn repair(&mut self, list: Vec<u64>) -> Result<(), String> {
        if self.round >= self.max_rounds {
            return Err(format!(
                "the server asked for more than {} rounds of repair; nothing more was sent",
                self.max_rounds
            ));
        }
        let n = self.crcs.len() as u64;
        let bad = |why: String| {
            Err(format!(
                "the server's repair list {why}; nothing of it was sent"
            ))
        };
        if list.is_empty() {
            return bad("names no blocks".into());
        }
        let mut seen = vec![false; self.crcs.len()];
        for &i in &list {
            match seen.get_mut(i as usize) {
                None => return bad(format!("names block {i} of {n} (numbered from 0)")),
                Some(true) => return bad(format!("names block {i} twice")),
                Some(s) => *s = true,
            }
        }
        self.round += 1;
        self.resent += list.len() as u64;
        self.queue = list.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 65536;

    fn frame(src: &[u8], idx: u64, damage: bool) -> Vec<u8> {
        let (o, l) = v2::block_range(src.len() as u64, B, idx);
        let bytes = &src[o as usize..(o + l) as usize];
        let mut f = v2::encode_data_head(o, l as u32).to_vec();
        f.extend_from_slice(bytes);
        if damage {
            f[13] ^= 1;
        }
        f.extend_from_slice(&crc32fast::hash(bytes).to_be_bytes());
        f
    }

    fn take_all(i: &mut Intake, mut input: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        while !input.is_empty() {
            let (used, mut took) = i.take(input).unwrap();
            if let Took::End(crc) = took {
                took = i.end(crc, &[]);
            }
            if !matches!(took, Took::More | Took::Write(_)) {
                seen.push(format!("{took:?}"));
            }
            input = &input[used..];
        }
        seen
    }

    #[test]
    fn the_outlet_plans_frames_and_ends_with_the_whole_crc() {
        let src: Vec<u8> = (0..(2 * B + 9) as u32).map(|i| (i >> 7) as u8).collect();
        let c0 = crc32fast::hash(&src[..B as usize]);
        let mut o = Outlet::new(src.len() as u64, B, &[]);
        assert_eq!(o.accept_held(B, B, vec![c0 ^ 1]), Ok(Some((0, 1))));
        o.add_hashes(vec![c0]).unwrap();
        o.plan();
        let mut sent = Vec::new();
        while let Next::Block { head, action } = o.next_to_send() {
            let SendAction::SendBlock { idx, offset, len } = action else {
                panic!("{action:?}")
            };
            assert_eq!(head, v2::encode_data_head(offset, len as u32));
            let crc = crc32fast::hash(&src[offset as usize..(offset + len) as usize]);
            assert_eq!(o.sent(crc), Ok(crc.to_be_bytes()));
            sent.push(idx);
        }
        assert_eq!(sent, vec![0, 1, 2], "block 0 differs from the held one");
        o.queue.clear();
        assert_eq!(
            o.next_to_send(),
            Next::End(v2::encode_end(crc32fast::hash(&src)))
        );
        assert!(
            o.accept_held(1, B, vec![]).is_err(),
            "held bytes must match the list"
        );
        assert!(o.repair(vec![3]).is_err() && o.repair(vec![1, 1]).is_err());
        o.repair(vec![1]).unwrap();
        assert!(matches!(o.next_to_send(), Next::Block { .. }));
        o.sent(0xDEAD).unwrap();
        assert_eq!(o.next_to_send(), Next::Unstable(vec![1]));
    }

    #[test]
    fn the_intake_asks_again_for_damaged_blocks_then_gives_up() {
        let src: Vec<u8> = (0..(2 * B) as u32).map(|i| (i >> 5) as u8).collect();
        let whole = crc32fast::hash(&src);
        let mut i = Intake::new(HeldSet::new(src.len() as u64, B).unwrap());
        let mut wire = frame(&src, 0, false);
        wire.extend(frame(&src, 1, true));
        wire.extend(v2::encode_end(whole));
        let seen = take_all(&mut i, &wire);
        assert_eq!(
            seen.last().map(String::as_str),
            Some("Repair([1])"),
            "{seen:?}"
        );
        assert!(seen.iter().any(|s| s.contains("good: false")));
        for _ in 1..MAX_REPAIR_ROUNDS {
            let mut w = frame(&src, 1, true);
            w.extend(v2::encode_end(whole));
            assert_eq!(
                take_all(&mut i, &w).last().map(String::as_str),
                Some("Repair([1])")
            );
        }
        let mut w = frame(&src, 1, true);
        w.extend(v2::encode_end(whole));
        assert!(take_all(&mut i, &w).last().unwrap().starts_with("Discard"));
        let mut w = frame(&src, 1, false);
        w.extend(v2::encode_end(whole));
        assert_eq!(
            take_all(&mut i, &w).last().unwrap(),
            &format!("Commit({whole})")
        );
        assert_eq!(i.held().whole_crc(), Some(whole));
    }
}
