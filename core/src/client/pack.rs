//! Reading and packing one upload block for a compressed data frame with
//! memory that does not grow with the block: the block is read a chunk
//! ([`PACK_CHUNK`]) at a time into the caller's read buffer, and only the
//! zstd frames of chunks that shrink are kept (in one buffer kept across
//! blocks); a chunk that does not shrink goes stored, read again from the
//! file when the payload is written. A block that does not shrink enough
//! is given up on (it goes raw, streamed like any other).
//!
//! Under the stream codec (`zstd-stream`, inside TLS) the connection's
//! compressor is one zstd stream: every chunk goes through it, in order,
//! into the same kept buffer (none stored, since the receiver's decoder
//! must see all the stream's output); a block that does not pay goes raw
//! and the stream's next chunk starts a new frame.
//!
//! Used by the first connection's shell and by every joined stream, so the
//! client holds at most the compressed part of one block and one chunk
//! per connection, not the block itself (a block read whole into a fresh
//! buffer, packed into another, made the client's peak RSS follow the
//! block size).
//!
//! Not for the frame around the payload (the machine, or the stream that
//! writes it) nor for when to try (the `auto` policy).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::shell::SendError;
use crate::compress::{max_worthwhile_len, BlockCompressor, PACK_CHUNK};
use crate::Result;

/// One connection's packing state: the compressor, the last block packed
/// and the buffer of its frames, kept across blocks.
#[derive(Debug, Default)]
pub(super) struct Packing {
    zstd: Option<(i32, BlockCompressor)>,
    /// The chunks that shrank, one after the other: each a u32 length
    /// (big-endian) and its zstd frame, as on the wire.
    frames: Vec<u8>,
    /// For each chunk of the last block: its frame's length (without the
    /// length before it) in `frames`, or `None` when it goes stored.
    chunks: Vec<Option<u32>>,
    /// The last block: file offset, raw length, payload length, CRC-32.
    block: (u64, u64, u64, u32),
    /// Time spent compressing the last block (reads excluded: `auto`
    /// weighs compression against the link, not the disk).
    took: Duration,
}

impl Packing {
    /// Readies the compressor at zstd `level` (kept while the level
    /// stays), a connection-long zstd stream when `streaming`.
    pub(super) fn ready(&mut self, level: i32, streaming: bool) -> Result<()> {
        let same = |(l, c): &(i32, BlockCompressor)| *l == level && c.is_streaming() == streaming;
        if !self.zstd.as_ref().is_some_and(same) {
            self.zstd = Some((level, BlockCompressor::for_codec(level, streaming)?));
        }
        Ok(())
    }

    /// Drops the compressor: another packer took over the connection (its
    /// own zstd stream), so the next block here starts a new one.
    pub(super) fn forget(&mut self) {
        self.zstd = None;
    }

    /// Reads `len` bytes of `file` at `offset` a chunk at a time into
    /// `buf` (at least [`PACK_CHUNK`] bytes) and packs them at the level
    /// last readied: the CRC-32 of the raw bytes and the payload's length
    /// ([`Packing::write_payload`] writes it), or `None` as soon as packing
    /// cannot pay. A source that ends early is an `UnexpectedEof` error.
    pub(super) fn pack(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        buf: &mut [u8],
    ) -> io::Result<Option<(u32, u64)>> {
        let Some((_, zstd)) = self.zstd.as_mut() else {
            return Err(io::Error::other("internal: packing before a level was set"));
        };
        let limit = max_worthwhile_len(len as usize);
        let (mut wire, mut pos) = (0usize, 0u64);
        let mut h = crc32fast::Hasher::new();
        self.frames.clear();
        self.chunks.clear();
        self.took = Duration::ZERO;
        while pos < len {
            let n = ((len - pos) as usize).min(PACK_CHUNK);
            let chunk = buf
                .get_mut(..n)
                .ok_or_else(|| io::Error::other("internal: read buffer under a chunk"))?;
            if let Err(e) = file.read_exact_at(chunk, offset + pos) {
                // Chunks already streamed will never be sent.
                zstd.abandon_block();
                return Err(e);
            }
            h.update(chunk);
            if zstd.is_streaming() {
                let started = Instant::now();
                let framed = zstd.stream_chunk(chunk, &mut self.frames);
                self.took += started.elapsed();
                // zstd failing here is a block that does not pay: it goes raw.
                wire += framed.unwrap_or(limit + 1);
                if wire > limit {
                    // The receiver never sees this block's stream output.
                    zstd.abandon_block();
                    return Ok(None);
                }
                self.chunks.push(framed.map(|f| (f - 4) as u32));
                pos += n as u64;
                continue;
            }
            let room = limit.saturating_sub(wire + 4);
            // Each frame is kept behind its length, so that a run of
            // frames goes out in one write.
            let at = self.frames.len();
            self.frames.extend_from_slice(&[0; 4]);
            let started = Instant::now();
            let framed = zstd.frame_chunk(chunk, &mut self.frames, room);
            self.took += started.elapsed();
            match framed {
                Some(f) => self.frames[at..at + 4].copy_from_slice(&(f as u32).to_be_bytes()),
                None => self.frames.truncate(at),
            }
            wire += 4 + framed.unwrap_or(n);
            if wire > limit {
                return Ok(None);
            }
            self.chunks.push(framed.map(|f| f as u32));
            pos += n as u64;
        }
        let crc = h.finalize();
        self.block = (offset, len, wire as u64, crc);
        Ok((len > 0).then_some((crc, wire as u64)))
    }

    /// The file offset of the last block packed.
    pub(super) fn offset(&self) -> u64 {
        self.block.0
    }

    /// The payload length of the last block packed.
    pub(super) fn wire(&self) -> u64 {
        self.block.2
    }

    /// How long compressing the last block took.
    pub(super) fn took(&self) -> Duration {
        self.took
    }

    /// Writes the payload of the last block packed: each chunk's length,
    /// then its frame, or the chunk itself read again into `buf`. Its
    /// CRC-32 (of the bytes read when packing).
    pub(super) fn write_payload(
        &self,
        w: &mut dyn Write,
        file: &File,
        buf: &mut [u8],
    ) -> std::result::Result<u32, SendError> {
        let (offset, len, _, crc) = self.block;
        // Frames are written in runs up to the next stored chunk.
        let (mut from, mut to) = (0usize, 0usize);
        for (i, framed) in self.chunks.iter().enumerate() {
            if let Some(f) = framed {
                to += 4 + *f as usize;
                continue;
            }
            w.write_all(&self.frames[from..to])
                .map_err(SendError::Socket)?;
            from = to;
            let at = i as u64 * PACK_CHUNK as u64;
            let n = (len - at).min(PACK_CHUNK as u64) as usize;
            let short = || io::Error::other("internal: read buffer under a chunk");
            let chunk = buf
                .get_mut(..n)
                .ok_or_else(short)
                .map_err(SendError::Source)?;
            file.read_exact_at(chunk, offset + at)
                .map_err(SendError::Source)?;
            w.write_all(&(n as u32).to_be_bytes())
                .map_err(SendError::Socket)?;
            w.write_all(chunk).map_err(SendError::Socket)?;
        }
        w.write_all(&self.frames[from..to])
            .map_err(SendError::Socket)?;
        Ok(crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Unpacker;
    use crate::testdata::noise;
    use std::io::Write;

    fn text(len: usize) -> Vec<u8> {
        let line = b"2026-11-30 17:00:01 INFO block 42 packed into a kept buffer\n";
        line.iter().copied().cycle().take(len).collect()
    }

    fn unpack(payload: &[u8], len: usize) -> Vec<u8> {
        let mut u = Unpacker::new(len as u64);
        let (mut raw, mut at) = (Vec::new(), 0);
        while !u.is_done() {
            let n = u.want();
            if let Some(c) = u.feed(&payload[at..at + n]).expect("a valid payload") {
                raw.extend(c);
            }
            at += n;
        }
        assert_eq!(at, payload.len(), "bytes after the last chunk");
        raw
    }

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, File::open(&path).unwrap())
    }

    fn payload(p: &Packing, file: &File, buf: &mut [u8]) -> (u32, Vec<u8>) {
        let mut out = Vec::new();
        let crc = p.write_payload(&mut out, file, buf).ok().expect("written");
        (crc, out)
    }

    #[test]
    fn blocks_unpack_to_their_bytes_with_only_shrinking_chunks_kept() {
        // Blocks of 2.5 chunks: text; noise, text, noise; text again.
        let block = 2 * PACK_CHUNK + PACK_CHUNK / 2;
        let mut src = text(block);
        src.extend(noise(PACK_CHUNK));
        src.extend(text(PACK_CHUNK));
        src.extend(noise(PACK_CHUNK / 2));
        src.extend(text(block + 7).split_off(7));
        let (_dir, file) = file_of(&src);
        let mut buf = vec![0u8; PACK_CHUNK];
        let mut p = Packing::default();
        p.ready(1, false).unwrap();
        let mut kept = Vec::new();
        for (i, raw) in src.chunks(block).enumerate() {
            let at = (i * block) as u64;
            let (crc, wire) = p.pack(&file, at, block as u64, &mut buf).unwrap().unwrap();
            assert_eq!(crc, crc32fast::hash(raw), "block {i}");
            let (sent_crc, bytes) = payload(&p, &file, &mut buf);
            assert_eq!((sent_crc, bytes.len() as u64), (crc, wire), "block {i}");
            assert!(unpack(&bytes, block) == raw, "block {i} differs");
            kept.push(p.frames.len());
            let stored: Vec<bool> = p.chunks.iter().map(Option::is_none).collect();
            let want = if i == 1 {
                [true, false, true]
            } else {
                [false; 3]
            };
            assert_eq!(stored, want, "block {i}: which chunks go stored");
        }
        // One buffer serves every block, no larger than two chunks here.
        assert!(
            p.frames.capacity() <= 2 * PACK_CHUNK,
            "{}",
            p.frames.capacity()
        );
        // Only frames are held: the noise of block 1 is read again.
        assert!(kept[1] < PACK_CHUNK / 10, "{kept:?}");
        assert!(
            kept[0] < PACK_CHUNK / 10 && kept[2] < PACK_CHUNK / 10,
            "{kept:?}"
        );
    }

    #[test]
    fn noise_does_not_pay_and_a_short_source_is_an_early_end() {
        let noise = noise(3 * PACK_CHUNK);
        let (_dir, file) = file_of(&noise);
        let mut buf = vec![0u8; PACK_CHUNK];
        let mut p = Packing::default();
        assert!(p.pack(&file, 0, 10, &mut buf).is_err(), "no level readied");
        p.ready(3, false).unwrap();
        assert_eq!(
            p.pack(&file, 0, noise.len() as u64, &mut buf).unwrap(),
            None
        );
        assert!(p.frames.is_empty(), "nothing held for noise");
        let e = p.pack(&file, PACK_CHUNK as u64, 3 * PACK_CHUNK as u64, &mut buf);
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // Text after noise in the same connection still packs right.
        let (_d2, f2) = file_of(&text(PACK_CHUNK + 5));
        let got = p.pack(&f2, 0, PACK_CHUNK as u64 + 5, &mut buf).unwrap();
        let (crc, bytes) = payload(&p, &f2, &mut buf);
        assert_eq!(got, Some((crc, bytes.len() as u64)));
        assert!(unpack(&bytes, PACK_CHUNK + 5) == text(PACK_CHUNK + 5));
    }

    #[test]
    fn a_streamed_connection_sends_every_chunk_through_its_stream_and_resets_after_a_raw_block() {
        use crate::compress::{StreamDecoder, STREAM_RESET};
        // Blocks of 2.5 chunks: text, text+noise (does not pay), text.
        let block = 2 * PACK_CHUNK + PACK_CHUNK / 2;
        let mut src = text(block);
        src.extend(noise(block));
        src.extend(text(block + 11).split_off(11));
        let (_dir, file) = file_of(&src);
        let mut buf = vec![0u8; PACK_CHUNK];
        let mut p = Packing::default();
        p.ready(3, true).unwrap();
        let mut dec = StreamDecoder::new().unwrap();
        for (i, raw) in src.chunks(block).enumerate() {
            let got = p.pack(&file, (i * block) as u64, block as u64, &mut buf);
            if i == 1 {
                assert_eq!(got.unwrap(), None, "noise goes raw");
                continue;
            }
            let (crc, wire) = got.unwrap().unwrap();
            assert!(p.chunks.iter().all(Option::is_some), "none stored");
            let (sent_crc, bytes) = payload(&p, &file, &mut buf);
            assert_eq!((sent_crc, bytes.len() as u64), (crc, wire), "block {i}");
            let word = u32::from_be_bytes(bytes[..4].try_into().unwrap());
            assert_ne!(word & STREAM_RESET, 0, "block {i} starts a frame");
            let mut u = Unpacker::streaming(block as u64);
            let (mut out, mut at) = (Vec::new(), 0);
            while !u.is_done() {
                let n = u.want();
                if let Some(c) = u.feed_stream(&bytes[at..at + n], &mut dec).unwrap() {
                    out.extend(c);
                }
                at += n;
            }
            assert!(out == raw, "block {i} differs");
        }
        // One kept buffer: a block's worthwhile output and one chunk's bound.
        let most = max_worthwhile_len(block) + zstd::zstd_safe::compress_bound(PACK_CHUNK);
        assert!(p.frames.capacity() <= most, "{}", p.frames.capacity());
    }
}
