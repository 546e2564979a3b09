//! Reading and packing one upload block for a compressed data frame, with
//! the same two buffers for every block of a connection: one chunk of raw
//! bytes ([`PACK_CHUNK`]) and the packed payload (at most the block's
//! worthwhile size). Used by the first connection's shell and by every
//! joined stream, so the client's memory does not grow with the number of
//! blocks sent (a buffer allocated and freed per block, as before, left the
//! heap as large as a few blocks).
//!
//! Not for the frame around the payload (the machine, or the stream that
//! writes it) nor for when to try (the `auto` policy).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::compress::{pack_begin, BlockCompressor, PACK_CHUNK};
use crate::Result;

/// One connection's packing state: the compressor and the buffers kept
/// across blocks.
#[derive(Debug, Default)]
pub(super) struct Packing {
    zstd: Option<(i32, BlockCompressor)>,
    chunk: Vec<u8>,
    out: Vec<u8>,
    /// Time spent compressing the last block (reads excluded: `auto`
    /// weighs compression against the link, not the disk).
    took: Duration,
}

impl Packing {
    /// Readies the compressor at zstd `level` (kept while the level stays).
    pub(super) fn ready(&mut self, level: i32) -> Result<()> {
        if self.zstd.as_ref().is_none_or(|(l, _)| *l != level) {
            self.zstd = Some((level, BlockCompressor::new(level)?));
        }
        Ok(())
    }

    /// Reads `len` bytes of `file` at `offset` a chunk at a time and packs
    /// them at the level last readied: the CRC-32 of the raw bytes, the
    /// payload then in [`Packing::payload`]; `None` as soon as packing
    /// cannot pay (the block then goes raw, read again). A source that
    /// ends early is an `UnexpectedEof` error.
    pub(super) fn pack(&mut self, file: &File, offset: u64, len: u64) -> io::Result<Option<u32>> {
        let Some((_, zstd)) = self.zstd.as_mut() else {
            return Err(io::Error::other("internal: packing before a level was set"));
        };
        let limit = pack_begin(&mut self.out, len as usize);
        let mut h = crc32fast::Hasher::new();
        let mut pos = 0u64;
        self.took = Duration::ZERO;
        while pos < len {
            let n = ((len - pos) as usize).min(PACK_CHUNK);
            self.chunk.resize(n.max(self.chunk.len()), 0);
            let chunk = &mut self.chunk[..n];
            file.read_exact_at(chunk, offset + pos)?;
            h.update(chunk);
            let started = Instant::now();
            let paid = zstd.pack_chunk(chunk, &mut self.out, limit);
            self.took += started.elapsed();
            if !paid {
                return Ok(None);
            }
            pos += n as u64;
        }
        Ok((len > 0).then(|| h.finalize()))
    }

    /// How long compressing the last block took.
    pub(super) fn took(&self) -> Duration {
        self.took
    }

    /// The payload of the last block packed.
    pub(super) fn payload(&self) -> &[u8] {
        &self.out
    }

    /// Hands the payload's buffer out (to a machine that queues it);
    /// [`Packing::recycle`] takes it back once it was written.
    pub(super) fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Takes back a buffer that was written to the socket, keeping it for
    /// the next payload if it is larger than the one kept (so the payload
    /// handed out wins over the small heads and trailers around it).
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.out.capacity() {
            self.out = buf;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Unpacker;
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

    #[test]
    fn a_recycled_payload_buffer_is_reused_and_every_block_unpacks_to_its_bytes() {
        // Three blocks of 2.5 chunks: the second different from the first.
        let block = 2 * PACK_CHUNK + PACK_CHUNK / 2;
        let mut src = text(block);
        src.extend(text(block + 7).split_off(7));
        src.extend(text(block));
        let (_dir, file) = file_of(&src);
        let mut p = Packing::default();
        p.ready(1).unwrap();
        let mut kept: Option<*const u8> = None;
        for (i, raw) in src.chunks(block).enumerate() {
            let at = (i * block) as u64;
            let crc = p.pack(&file, at, block as u64).unwrap();
            assert_eq!(crc, Some(crc32fast::hash(raw)), "block {i}");
            let payload = p.take_payload();
            assert!(payload.len() * 10 < block, "block {i}: {}", payload.len());
            assert!(unpack(&payload, block) == raw, "block {i} differs");
            if let Some(ptr) = kept {
                assert_eq!(payload.as_ptr(), ptr, "block {i}: a new buffer");
            }
            kept = Some(payload.as_ptr());
            p.recycle(vec![0u8; 17]);
            p.recycle(payload);
            p.recycle(vec![0u8; 4]);
        }
    }

    #[test]
    fn noise_does_not_pay_and_a_short_source_is_an_early_end() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..3 * PACK_CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let (_dir, file) = file_of(&noise);
        let mut p = Packing::default();
        assert!(p.pack(&file, 0, 10).is_err(), "no level readied");
        p.ready(3).unwrap();
        assert_eq!(p.pack(&file, 0, noise.len() as u64).unwrap(), None);
        let e = p.pack(&file, PACK_CHUNK as u64, 3 * PACK_CHUNK as u64);
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // Text after noise in the same connection still packs right.
        let (_d2, f2) = file_of(&text(PACK_CHUNK + 5));
        assert!(p.pack(&f2, 0, PACK_CHUNK as u64 + 5).unwrap().is_some());
        assert!(unpack(p.payload(), PACK_CHUNK + 5) == text(PACK_CHUNK + 5));
    }
}
