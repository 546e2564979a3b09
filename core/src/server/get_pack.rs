//! Sending a download's blocks on one connection: raw (`D`), or
//! compressed (`P`, packed as uploads pack their `Z` frames) when the
//! client offered it and it pays. `auto` is the upload's policy
//! ([`AutoCompressor`]), fed here with this connection's measurements:
//! the CPU time of packing, and the time a frame took to go into the
//! socket (a full send buffer makes that the link's pace), so blocks are
//! compressed only while the link, not the CPU, is the bottleneck and
//! they shrink. A block that does not shrink by
//! [`crate::compress::MIN_SAVING_PERCENT`] goes raw. Each connection (each
//! stream of a session) has its own sender and compressor. Memory: a
//! block's packed payload is made whole before its frame (its length is in
//! the head), so a compressing connection holds at most about twice its
//! block size (the raw block and a payload at most 97 % of it). A frame
//! goes out in one write: the socket gets full TLS records and few sends.
//!
//! Not for choosing blocks or checking them against the reference
//! (`get`, `get_store`), nor the client's decoding (`client::get`).

use std::io::{self, Write};
use std::time::Instant;

use crate::compress::{AutoCompressor, AutoConfig, BlockCompressor, Compress, CODEC};
use crate::getwire;
use crate::v2::{self, ServerMsg};

/// Writes shorter than this say little about the link (they fit in the
/// socket's buffer whatever its pace), so `auto` does not learn from them.
const MIN_MEASURED: usize = 64 << 10;

/// Bytes before the block in a [`FrameBuf`]: a raw data frame's head.
const HEAD: usize = 13;

/// Where the block starts in a [`FrameBuf`]: on a page boundary, the head
/// just before it. The file is read into the block, and the kernel's copy
/// out of the page cache runs at a sixth of its speed into a destination a
/// few bytes off a page's alignment on this machine's CPUs (3.3 against
/// 20 GB/s measured for a 1 MiB `pread` 13 bytes in); the frame then goes
/// out from the head, where the offset costs nothing.
const BLOCK_AT: usize = crate::sys::PAGE;

/// A block buffer with room for a raw data frame's head before the block
/// and its CRC-32 after, so a raw block is read from the file straight
/// into its frame and goes out in one write.
pub(super) struct FrameBuf {
    buf: crate::sys::PageBuf,
}

impl FrameBuf {
    /// Room for blocks of up to `block` bytes.
    pub(super) fn new(block: usize) -> FrameBuf {
        FrameBuf {
            buf: crate::sys::PageBuf::new(BLOCK_AT + block + 4),
        }
    }

    /// The block's first `len` bytes (to read the file into).
    pub(super) fn block_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[BLOCK_AT..BLOCK_AT + len]
    }

    fn block(&self, len: usize) -> &[u8] {
        &self.buf[BLOCK_AT..BLOCK_AT + len]
    }

    /// The whole `D` frame of the block's first `len` bytes.
    fn raw_frame(&mut self, offset: u64, len: usize, crc: u32) -> &[u8] {
        let head = getwire::encode_data_head(offset, len as u32);
        let f = &mut self.buf[BLOCK_AT - HEAD..BLOCK_AT + len + 4];
        f[..HEAD].copy_from_slice(&head);
        f[HEAD + len..].copy_from_slice(&crc.to_be_bytes());
        f
    }
}

/// One connection's block sender.
pub(super) struct BlockSender {
    /// What the client offered and this server applies (`None`: raw).
    mode: Option<Compress>,
    auto: AutoCompressor,
    zstd: Option<(i32, BlockCompressor)>,
    /// The packed payload's buffer, kept across blocks: a connection
    /// allocates it once (a buffer per block left the heap growing).
    packed: Vec<u8>,
    /// A packed block's whole frame, to go out in one write; kept too.
    frame: Vec<u8>,
    /// Blocks sent compressed, their raw bytes and their packed bytes.
    blocks: u64,
    raw_bytes: u64,
    wire_bytes: u64,
}

impl BlockSender {
    /// A sender for a client that offered `mode` (`None`: no offer, or a
    /// server that does not compress; every block goes raw).
    pub(super) fn new(mode: Option<Compress>) -> BlockSender {
        BlockSender {
            mode: mode.filter(|m| *m != Compress::Off),
            auto: AutoCompressor::new(AutoConfig::default()),
            zstd: None,
            packed: Vec::new(),
            frame: Vec::new(),
            blocks: 0,
            raw_bytes: 0,
            wire_bytes: 0,
        }
    }

    /// The codec frame that agrees to compressed blocks, sent before the
    /// reference; `None` when every block goes raw (nothing is said, as to
    /// a client from before compression).
    pub(super) fn codec_frame(&self) -> Option<Vec<u8>> {
        self.mode
            .map(|_| v2::encode_server_msg(&ServerMsg::Codec(CODEC.into())))
    }

    /// The zstd level to try the next block at, if any.
    fn level(&mut self) -> Option<i32> {
        match self.mode? {
            Compress::Off => None,
            Compress::Zstd(l) => Some(l),
            Compress::Auto => self.auto.next_level(),
        }
    }

    /// Packs `raw` into `self.packed`; whether it is worth sending,
    /// measured for `auto`. A compressor that cannot be made sends raw
    /// (always correct).
    fn pack(&mut self, raw: &[u8]) -> bool {
        let Some(level) = self.level() else {
            return false;
        };
        if self.zstd.as_ref().is_none_or(|(l, _)| *l != level) {
            match BlockCompressor::new(level) {
                Ok(c) => self.zstd = Some((level, c)),
                Err(_) => return false,
            }
        }
        let Some((_, zstd)) = self.zstd.as_mut() else {
            return false;
        };
        let started = Instant::now();
        let paid = zstd.pack_into(raw, &mut self.packed);
        if self.mode == Some(Compress::Auto) {
            let wire = paid.then_some(self.packed.len());
            self.auto
                .record_compression(raw.len(), wire, started.elapsed());
        }
        paid && self.packed.len() < raw.len()
    }

    /// Sends the block of `raw` bytes at `offset` whose CRC-32 is `crc`:
    /// a `P` frame when it was packed and shrank, else a `D` frame (its
    /// head, bytes and trailer written one after the other: blocks
    /// that come from elsewhere than a [`FrameBuf`], an object store's).
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub(super) fn send<W: Write + ?Sized>(
        &mut self,
        out: &mut W,
        offset: u64,
        raw: &[u8],
        crc: u32,
    ) -> io::Result<()> {
        let len = raw.len() as u32;
        let packed = self.pack(raw);
        let started = Instant::now();
        let wire = if packed {
            self.send_packed(out, offset, len, crc)?
        } else {
            out.write_all(&getwire::encode_data_head(offset, len))?;
            out.write_all(raw)?;
            out.write_all(&crc.to_be_bytes())?;
            raw.len()
        };
        self.measured(wire, started);
        Ok(())
    }

    /// Sends the first `len` bytes of `fb`'s block (at `offset`, CRC-32
    /// `crc`) as [`BlockSender::send`] does, a raw block as one write of
    /// the whole frame: one `send` in plaintext, full records with TLS
    /// (head, bytes and trailer apart made six sends and two tiny records
    /// per block).
    pub(super) fn send_framed<W: Write + ?Sized>(
        &mut self,
        out: &mut W,
        offset: u64,
        fb: &mut FrameBuf,
        len: usize,
        crc: u32,
    ) -> io::Result<()> {
        let packed = self.pack(fb.block(len));
        let started = Instant::now();
        let wire = if packed {
            self.send_packed(out, offset, len as u32, crc)?
        } else {
            out.write_all(fb.raw_frame(offset, len, crc))?;
            len
        };
        self.measured(wire, started);
        Ok(())
    }

    /// Writes the frame of the block packed in `self.packed` in one write
    /// (assembled in `self.frame`, also kept across blocks); the payload's
    /// length.
    fn send_packed<W: Write + ?Sized>(
        &mut self,
        out: &mut W,
        offset: u64,
        len: u32,
        crc: u32,
    ) -> io::Result<usize> {
        let wire = self.packed.len();
        self.frame.clear();
        self.frame
            .extend_from_slice(&getwire::encode_packed_head(offset, len, wire as u32));
        self.frame.extend_from_slice(&self.packed);
        self.frame.extend_from_slice(&crc.to_be_bytes());
        out.write_all(&self.frame)?;
        self.blocks += 1;
        self.raw_bytes += u64::from(len);
        self.wire_bytes += wire as u64;
        Ok(wire)
    }

    /// `auto` learns the link's pace from a frame's write.
    fn measured(&mut self, wire: usize, started: Instant) {
        if self.mode == Some(Compress::Auto) && wire >= MIN_MEASURED {
            self.auto.record_send(wire, started.elapsed());
        }
    }

    /// For the server's log line: what compression did on this connection.
    pub(super) fn summary(&self) -> String {
        match self.mode {
            None => String::new(),
            Some(m) if self.blocks == 0 => format!(", compress {m}: no block compressed"),
            Some(m) => format!(
                ", compress {m}: {} block(s) of {} bytes sent as {} bytes",
                self.blocks, self.raw_bytes, self.wire_bytes
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Unpacker;
    use crate::testdata::noise;

    fn text(len: usize) -> Vec<u8> {
        let line = b"2026-11-30 14:00:01 INFO request served in 12 ms from 10.0.0.7\n";
        line.iter().copied().cycle().take(len).collect()
    }

    /// Splits what the sender wrote into (tag, offset, payload, crc).
    fn frame(out: &[u8]) -> (u8, u64, Vec<u8>, u32) {
        let len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(out.len(), 5 + len);
        let offset = u64::from_be_bytes(out[5..13].try_into().unwrap());
        let body = if out[0] == getwire::TAG_PACKED {
            17
        } else {
            13
        };
        let crc = u32::from_be_bytes(out[out.len() - 4..].try_into().unwrap());
        (out[0], offset, out[body..out.len() - 4].to_vec(), crc)
    }

    #[test]
    fn compressible_blocks_go_packed_with_the_raw_crc_and_noise_goes_raw() {
        let raw = text(3 << 20);
        let crc = crc32fast::hash(&raw);
        let mut s = BlockSender::new(Some(Compress::Zstd(3)));
        assert!(s.codec_frame().is_some());
        let mut out = Vec::new();
        s.send(&mut out, 1 << 22, &raw, crc).unwrap();
        let (tag, offset, payload, c) = frame(&out);
        assert_eq!((tag, offset, c), (getwire::TAG_PACKED, 1 << 22, crc));
        assert!(payload.len() < raw.len() / 10, "{}", payload.len());
        let declared = u32::from_be_bytes(out[13..17].try_into().unwrap());
        assert_eq!(declared as usize, raw.len());
        let mut u = Unpacker::new(raw.len() as u64);
        let (mut got, mut at) = (Vec::new(), 0);
        while u.want() > 0 {
            let n = u.want();
            if let Some(chunk) = u.feed(&payload[at..at + n]).unwrap() {
                got.extend(chunk);
            }
            at += n;
        }
        assert_eq!(got, raw);
        assert!(
            s.summary().contains("1 block(s) of 3145728 bytes"),
            "{}",
            s.summary()
        );

        let raw = noise(1 << 20);
        let mut out = Vec::new();
        s.send(&mut out, 0, &raw, 7).unwrap();
        assert_eq!(frame(&out), (getwire::TAG_DATA, 0, raw, 7));
    }

    /// A block sent from a [`FrameBuf`] is the same frame as one sent
    /// from a plain slice, in one write, raw or packed.
    #[test]
    fn a_framed_block_is_the_same_frame_in_one_write() {
        /// Counts the writes it is given.
        struct Writes(Vec<u8>, usize);
        impl Write for Writes {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.extend_from_slice(b);
                self.1 += 1;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for (mode, raw) in [
            (None, noise(1 << 20)),
            (Some(Compress::Zstd(3)), text(1 << 20)),
        ] {
            let crc = crc32fast::hash(&raw);
            let mut fb = FrameBuf::new(2 << 20);
            fb.block_mut(raw.len()).copy_from_slice(&raw);
            let mut framed = Writes(Vec::new(), 0);
            BlockSender::new(mode)
                .send_framed(&mut framed, 5 << 20, &mut fb, raw.len(), crc)
                .unwrap();
            let mut plain = Vec::new();
            BlockSender::new(mode)
                .send(&mut plain, 5 << 20, &raw, crc)
                .unwrap();
            assert_eq!(framed.0, plain);
            assert_eq!(framed.1, 1, "one write per frame");
            let (tag, offset, _, c) = frame(&framed.0);
            let want = if mode.is_some() {
                getwire::TAG_PACKED
            } else {
                getwire::TAG_DATA
            };
            assert_eq!((tag, offset, c), (want, 5 << 20, crc));
        }
    }

    #[test]
    fn without_an_offer_nothing_is_said_and_every_block_is_raw() {
        for mode in [None, Some(Compress::Off)] {
            let mut s = BlockSender::new(mode);
            assert_eq!(s.codec_frame(), None);
            let raw = text(1 << 20);
            let mut out = Vec::new();
            s.send(&mut out, 0, &raw, 9).unwrap();
            assert_eq!(frame(&out), (getwire::TAG_DATA, 0, raw, 9));
            assert_eq!(s.summary(), "");
        }
    }
}
