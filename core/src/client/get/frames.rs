//! Reading one block's data frame of a download: raw (`D`) or, when the
//! server agreed to compression on this connection, packed (`P`: the
//! upload's packed payload, see [`crate::compress::Unpacker`]),
//! decompressed chunk by chunk into the block's buffer, never past the
//! block's size, and checked against the CRC-32 of the uncompressed bytes
//! (the frame's trailer and the reference's).
//!
//! A frame whose head does not fit the block it answers is refused (the
//! connection is out of step). A payload that does not decompress to
//! exactly the block (corrupt, a "bomb" claiming more, trailing bytes) or
//! to bytes of another CRC-32 is *damaged*: it is read to its end, never
//! written, and the block is asked for again, the words kept for when
//! repair gives up.
//!
//! Not for asking for blocks, the part file or retries (`super`,
//! `streams`).

use std::io::Read;

use crate::compress::Unpacker;
use crate::getwire::{Reference, TAG_DATA, TAG_PACKED};
use crate::{Error, ErrorKind, Result};

/// What came where a block's data frame was due.
#[derive(Debug)]
pub(super) enum Frame {
    /// The block's frame, read whole.
    Block(Arrived),
    /// The head of another frame (a fault, usually); its payload unread.
    Other([u8; 5]),
}

/// A block's frame, read whole.
#[derive(Debug)]
pub(super) struct Arrived {
    /// The block's CRC-32 when its bytes are the reference's; else why
    /// not (it is asked for again).
    pub(super) verdict: std::result::Result<u32, String>,
    /// Payload bytes the frame carried (packed or raw).
    pub(super) wire: u64,
    /// Whether it came compressed.
    pub(super) packed: bool,
}

/// Bytes read at a time while skipping the rest of a damaged payload.
const SKIP: usize = 64 << 10;

fn protocol(words: String) -> Error {
    Error::new(ErrorKind::Protocol, words)
}

fn read<R: Read + ?Sized>(s: &mut R, out: &mut [u8]) -> Result<()> {
    s.read_exact(out)
        .map_err(|e| super::peer::lost(e, "receiving data"))
}

/// Reads the data frame of block `i` of `r` into `buf` (at least a block
/// long) and checks it; `packed_ok`: compression was agreed on this
/// connection.
pub(super) fn read_block<R: Read + ?Sized>(
    s: &mut R,
    r: &Reference,
    i: u64,
    buf: &mut [u8],
    packed_ok: bool,
) -> Result<Frame> {
    Ok(match read_unchecked(s, r, i, buf, packed_ok)? {
        Raw::Block(u) => {
            let b = &buf[..r.range(i).1 as usize];
            Frame::Block(u.check(b, i, r.crcs[i as usize]))
        }
        Raw::Other(head) => Frame::Other(head),
    })
}

/// What came where a block's data frame was due, its bytes not yet
/// checked (the check may run on another thread, see `writer`).
#[derive(Debug)]
pub(super) enum Raw {
    /// The block's frame, read whole into the buffer.
    Block(Unchecked),
    /// The head of another frame; its payload unread.
    Other([u8; 5]),
}

/// A block's frame read whole, before its CRC-32 is computed.
#[derive(Debug)]
pub(super) struct Unchecked {
    /// Why the payload did not decompress to exactly the block, if not.
    unpacked: std::result::Result<(), String>,
    /// The CRC-32 the frame's trailer claims.
    trailer: u32,
    /// Payload bytes the frame carried (packed or raw).
    pub(super) wire: u64,
    /// Whether it came compressed.
    pub(super) packed: bool,
}

impl Unchecked {
    /// The verdict on block `i`'s bytes `b` (as read into the buffer),
    /// whose reference CRC-32 is `expect`.
    pub(super) fn check(self, b: &[u8], i: u64, expect: u32) -> Arrived {
        let as_sent = if self.packed { " as decompressed" } else { "" };
        let verdict = self
            .unpacked
            .map_err(|why| format!("block {i}: {why}"))
            .and_then(|()| {
                let crc = crc32fast::hash(b);
                if crc != self.trailer {
                    Err(format!(
                    "block {i} arrived damaged (its bytes{as_sent} do not match the frame's CRC-32)"
                ))
                } else if crc != expect {
                    Err(format!(
                    "block {i} arrived as other bytes than the reference's (CRC-32 {crc:08x}{as_sent}, not {expect:08x})"
                ))
                } else {
                    Ok(crc)
                }
            });
        Arrived {
            verdict,
            wire: self.wire,
            packed: self.packed,
        }
    }
}

/// Reads the data frame of block `i` of `r` into `buf` without checking
/// its CRC-32 (see [`Unchecked::check`]).
pub(super) fn read_unchecked<R: Read + ?Sized>(
    s: &mut R,
    r: &Reference,
    i: u64,
    buf: &mut [u8],
    packed_ok: bool,
) -> Result<Raw> {
    let mut head = [0u8; 5];
    read(s, &mut head)?;
    let packed = match head[0] {
        TAG_DATA => false,
        TAG_PACKED if packed_ok => true,
        TAG_PACKED => return Err(protocol(
            "the server sent a compressed block, but no compression was agreed on this connection"
                .into(),
        )),
        _ => return Ok(Raw::Other(head)),
    };
    let flen = u64::from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]));
    let wire = payload_len(s, r, i, flen, packed)?;
    let b = &mut buf[..r.range(i).1 as usize];
    let unpacked = if packed {
        unpack(s, wire, b)?
    } else {
        read(s, b).map(Ok)?
    };
    let mut trailer = [0u8; 4];
    read(s, &mut trailer)?;
    Ok(Raw::Block(Unchecked {
        unpacked,
        trailer: u32::from_be_bytes(trailer),
        wire,
        packed,
    }))
}

/// Reads the rest of a data frame's head (of length `flen`) and checks it
/// fits block `i`; the payload's length on the wire.
fn payload_len<R: Read + ?Sized>(
    s: &mut R,
    r: &Reference,
    i: u64,
    flen: u64,
    packed: bool,
) -> Result<u64> {
    let (off, len) = r.range(i);
    let mut at = [0u8; 8];
    read(s, &mut at)?;
    let foff = u64::from_be_bytes(at);
    if !packed {
        if flen != 12 + len || foff != off {
            return Err(protocol(format!(
                "the server sent {} bytes at {foff} where block {i} ({len} bytes at {off}) was due",
                flen.saturating_sub(12)
            )));
        }
        return Ok(len);
    }
    let mut raw = [0u8; 4];
    read(s, &mut raw)?;
    let raw = u64::from(u32::from_be_bytes(raw));
    let wire = flen.saturating_sub(16);
    if foff != off || raw != len || flen < 16 || wire == 0 || wire > len {
        return Err(protocol(format!(
            "the server sent a compressed frame of {wire} bytes for {raw} bytes at {foff} where block {i} ({len} bytes at {off}) was due (a frame may not be empty or larger than its block)"
        )));
    }
    Ok(wire)
}

/// Reads `wire` bytes of packed payload and decompresses them into `out`
/// (the whole block), never writing past its end. The payload is always
/// read to its end, so the connection stays in step; the inner `Err`
/// says why it does not make exactly the block.
fn unpack<R: Read + ?Sized>(
    s: &mut R,
    wire: u64,
    out: &mut [u8],
) -> Result<std::result::Result<(), String>> {
    let mut u = Unpacker::new(out.len() as u64);
    let (mut left, mut at) = (wire as usize, 0usize);
    let mut why: Option<String> = None;
    let mut chunk = Vec::new();
    while left > 0 {
        let feeding = why.is_none() && u.want() > 0;
        let n = if feeding { u.want() } else { SKIP }.min(left);
        chunk.resize(n, 0);
        read(s, &mut chunk)?;
        left -= n;
        if why.is_some() {
            continue;
        }
        if !feeding {
            why = Some(format!("{} bytes follow the block's last chunk", left + n));
            continue;
        }
        match u.feed(&chunk) {
            Ok(Some(raw)) => match out.get_mut(at..at + raw.len()) {
                Some(dst) => {
                    dst.copy_from_slice(&raw);
                    at += raw.len();
                }
                None => why = Some("it decompressed past the block's size".into()),
            },
            Ok(None) => {}
            Err(e) => why = Some(e.to_string()),
        }
    }
    if why.is_none() && (!u.is_done() || at != out.len()) {
        why = Some("the compressed payload ended inside the block".into());
    }
    Ok(why.map_or(Ok(()), Err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{compress_block, BlockCompressor, PACK_CHUNK};
    use crate::getwire::{encode_data_head, encode_packed_head};

    const BLOCK: u64 = 1 << 20;

    fn text(len: usize) -> Vec<u8> {
        let words = ["north ", "south ", "east ", "west\n", "up ", "down "];
        let mut out = Vec::with_capacity(len + 8);
        let mut x = 11u32;
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    /// A file of two blocks: the reference and its bytes.
    fn file() -> (Reference, Vec<u8>) {
        let data = text(2 * BLOCK as usize);
        let crcs = data.chunks(BLOCK as usize).map(crc32fast::hash).collect();
        let r = Reference {
            size: data.len() as u64,
            block: BLOCK,
            mtime_ns: 1,
            crcs,
        };
        (r, data)
    }

    fn packed_frame(offset: u64, len: u32, payload: &[u8], crc: u32) -> Vec<u8> {
        let mut f = encode_packed_head(offset, len, payload.len() as u32).to_vec();
        f.extend_from_slice(payload);
        f.extend_from_slice(&crc.to_be_bytes());
        f
    }

    /// Reads block 1 from `wire` (followed by a marker that must be next).
    fn read_one(r: &Reference, wire: &[u8], packed_ok: bool) -> Result<(Arrived, Vec<u8>)> {
        let mut input = [wire, b"NEXT"].concat();
        let mut s = std::io::Cursor::new(&mut input[..]);
        let mut buf = vec![0u8; BLOCK as usize];
        let a = match read_block(&mut s, r, 1, &mut buf, packed_ok)? {
            Frame::Block(a) => a,
            Frame::Other(h) => panic!("not a block: {h:?}"),
        };
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"NEXT", "the frame was not read exactly");
        Ok((a, buf))
    }

    #[test]
    fn raw_and_packed_frames_give_the_block() {
        let (r, data) = file();
        let block = &data[BLOCK as usize..];
        let crc = r.crcs[1];
        let mut raw = encode_data_head(BLOCK, BLOCK as u32).to_vec();
        raw.extend_from_slice(block);
        raw.extend_from_slice(&crc.to_be_bytes());
        let (a, buf) = read_one(&r, &raw, true).unwrap();
        assert_eq!((a.verdict, a.wire, a.packed), (Ok(crc), BLOCK, false));
        assert_eq!(buf, block);

        let payload = BlockCompressor::new(3).unwrap().pack(block).unwrap();
        let f = packed_frame(BLOCK, BLOCK as u32, &payload, crc);
        let (a, buf) = read_one(&r, &f, true).unwrap();
        assert_eq!(a.verdict, Ok(crc));
        assert!(a.packed && a.wire == payload.len() as u64 && a.wire < BLOCK / 2);
        assert_eq!(buf, block);

        // The same frame on a connection that agreed to no compression.
        let e = read_one(&r, &f, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("no compression was agreed"), "{e}");
    }

    #[test]
    fn a_bomb_is_damage_in_words_and_never_written_past_the_block() {
        let (r, _) = file();
        // One chunk's frame that decompresses to 64 MiB of zeros.
        let bomb = compress_block(&vec![0u8; 64 << 20], 1).unwrap();
        let mut payload = (bomb.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(&bomb);
        let f = packed_frame(BLOCK, BLOCK as u32, &payload, r.crcs[1]);
        let (a, buf) = read_one(&r, &f, true).unwrap();
        assert_eq!(
            a.verdict.unwrap_err(),
            "block 1: refused a compressed block from the peer: the frame declares 67108864 bytes but the block is 1048576 bytes"
        );
        assert_eq!(buf.len(), BLOCK as usize);
        assert!(PACK_CHUNK as u64 == BLOCK, "one chunk per block here");
    }

    #[test]
    fn content_other_than_its_crc_is_damage_in_words() {
        let (r, data) = file();
        // A well-formed frame of other bytes, with their own CRC-32 (a
        // hostile server), and one whose trailer does not match.
        let other = text(3 * BLOCK as usize)[..BLOCK as usize].to_vec();
        let payload = BlockCompressor::new(1).unwrap().pack(&other).unwrap();
        let own = crc32fast::hash(&other);
        let (a, _) = read_one(&r, &packed_frame(BLOCK, BLOCK as u32, &payload, own), true).unwrap();
        let why = a.verdict.unwrap_err();
        assert!(
            why.starts_with("block 1 arrived as other bytes than the reference's"),
            "{why}"
        );
        assert!(why.contains("as decompressed"), "{why}");
        let (a, _) = read_one(
            &r,
            &packed_frame(BLOCK, BLOCK as u32, &payload, r.crcs[1]),
            true,
        )
        .unwrap();
        assert_eq!(
            a.verdict.unwrap_err(),
            "block 1 arrived damaged (its bytes as decompressed do not match the frame's CRC-32)"
        );
        // Corrupt compressed bytes: damage, the frame still read whole.
        let good = BlockCompressor::new(1)
            .unwrap()
            .pack(&data[BLOCK as usize..])
            .unwrap();
        let mut bad = good.clone();
        bad[4..12].copy_from_slice(b"garbage!");
        let (a, _) = read_one(
            &r,
            &packed_frame(BLOCK, BLOCK as u32, &bad, r.crcs[1]),
            true,
        )
        .unwrap();
        assert!(a
            .verdict
            .unwrap_err()
            .starts_with("block 1: refused a compressed block"));
        // Trailing bytes after the last chunk.
        let long = [good.as_slice(), &[0u8; 9]].concat();
        let (a, _) = read_one(
            &r,
            &packed_frame(BLOCK, BLOCK as u32, &long, r.crcs[1]),
            true,
        )
        .unwrap();
        assert_eq!(
            a.verdict.unwrap_err(),
            "block 1: 9 bytes follow the block's last chunk"
        );
    }

    #[test]
    fn frames_that_do_not_fit_their_block_are_refused() {
        let (r, _) = file();
        let payload = vec![1u8; 100];
        for (offset, len, wire) in [
            (0, BLOCK as u32, 100),                  // another block's offset
            (BLOCK, BLOCK as u32 - 1, 100),          // another length
            (BLOCK, BLOCK as u32, BLOCK as u32 + 1), // larger than the block
            (BLOCK, BLOCK as u32, 0),                // empty
        ] {
            let mut f = encode_packed_head(offset, len, wire).to_vec();
            f.extend_from_slice(&payload);
            let e = read_one(&r, &f, true).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(
                e.to_string()
                    .contains("where block 1 (1048576 bytes at 1048576) was due"),
                "{e}"
            );
        }
    }
}
