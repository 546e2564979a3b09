//! The download (`get`) exchange of protocol 2 as plain functions over
//! bytes: the request header (`"bt": {"v": 2, "op": "get", ...}`), the
//! server's reference frame `G` (size, block size, stamp and the CRC-32 of
//! every block), the client's want frame `W` (runs of blocks to send) and
//! the data frames `D` the server answers with. See docs/PROTOCOL.md,
//! *Downloads*.
//!
//! Not for I/O or policy: the server's shell is `server::get`, the
//! client's `client::get`.

use crate::compress::Compress;
use crate::json::{self, Field, Value};
use crate::v2::{self, MAX_BLOCKS};
use crate::{Error, ErrorKind, Result};

/// Server → client: the reference of the file to download.
pub const TAG_REFERENCE: u8 = b'G';
/// Server → client: one block of the file.
pub const TAG_DATA: u8 = b'D';
/// Client → server: the blocks wanted next (no runs: done).
pub const TAG_WANT: u8 = b'W';
/// Server → client: one block, compressed (only after the server agreed
/// with a codec frame, `Z` before the reference; see [`encode_packed_head`]).
pub const TAG_PACKED: u8 = b'P';

/// The zstd level a server compresses a download at, at most, whatever
/// the client asks: its CPU serves every client, and levels above this
/// cost several times the CPU for a few percent of size.
pub const MAX_SERVER_LEVEL: i32 = 9;

/// The block size of a download request's offer: any valid one (the
/// server picks the real block size from the file's size).
const REQUEST_BLOCK: u64 = v2::MIN_BLOCK;

fn protocol(words: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, words)
}

/// What a version-2 header asks for (`"bt"."op"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Op {
    /// No `"op"`: an upload, as always.
    #[default]
    Upload,
    /// `"op": "get"`: download the named stored file.
    Get,
    /// `"op": "list"`: list what the server holds (see [`crate::listing`]).
    List,
}

/// The operation a header asks for. An `"op"` that is not a string, or
/// names an operation this server does not know, is a malformed request.
pub fn requested_op(json_bytes: &[u8]) -> Result<Op> {
    let value = json::parse(json_bytes)?;
    match value.get("bt").and_then(|bt| bt.get("op")) {
        None => Ok(Op::Upload),
        Some(Value::String(s)) if s == "get" => Ok(Op::Get),
        Some(Value::String(s)) if s == "list" => Ok(Op::List),
        Some(Value::String(s)) => Err(protocol(format!(
            "unknown operation \"{}\" (this server knows uploads, \"get\" and \"list\")",
            crate::text::printable(s)
        ))),
        Some(_) => Err(protocol("\"bt\".\"op\" must be a string")),
    }
}

/// The header frame (length + JSON) asking to download `remote`.
pub fn encode_get_header(remote: &str) -> Result<Vec<u8>> {
    encode_get_header_ext(remote, None, None)
}

/// The header frame asking to download `remote` over a session of
/// `streams` connections (the server answers with a `J` frame before the
/// reference), or as a stream joining the session `join` names.
pub fn encode_get_header_ext(
    remote: &str,
    streams: Option<u32>,
    join: Option<&crate::session::Join>,
) -> Result<Vec<u8>> {
    encode_get_header_with(remote, streams, join, Compress::Off)
}

/// [`encode_get_header_ext`] that also offers compressed blocks unless
/// `compress` is off: `"z": ["zstd"]`, and with `zstd:LEVEL` the level
/// the server should try every block at (`"zlevel"`; without it the
/// server compresses while it pays, as `auto` does for uploads).
pub fn encode_get_header_with(
    remote: &str,
    streams: Option<u32>,
    join: Option<&crate::session::Join>,
    compress: Compress,
) -> Result<Vec<u8>> {
    encode_get_header_by(remote, false, streams, join, compress)
}

/// The key in a get header's `"bt"` object by which a client asks for a
/// file by its path below the storage directory (`"path": 1`): the
/// `filename` is then a tree path (checked as a tree's are), not a plain
/// stored name. Sent only to a server that said it serves such gets (a
/// [`crate::tree::wire::ALONE`] verdict of a tree download). Its streams
/// (`streams`, `join`) name the path the same way.
pub const PATH_KEY: &str = "path";

/// The header frame asking to download the file at `path` (a tree path
/// below the storage directory) by itself, on one connection.
pub fn encode_get_path_header(path: &str, compress: Compress) -> Result<Vec<u8>> {
    encode_get_header_by(path, true, None, None, compress)
}

/// Whether a get header asks for its file by path (`"path": 1`).
pub fn requested_path(json_bytes: &[u8]) -> Result<bool> {
    let value = json::parse(json_bytes)?;
    match value.get("bt").and_then(|bt| bt.get(PATH_KEY)) {
        None => Ok(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        Some(_) => Err(protocol("\"bt\".\"path\" must be 1")),
    }
}

/// [`encode_get_header_with`], of a stored name or (`by_path`) of a tree
/// path (`"path": 1`).
pub fn encode_get_header_by(
    remote: &str,
    by_path: bool,
    streams: Option<u32>,
    join: Option<&crate::session::Join>,
    compress: Compress,
) -> Result<Vec<u8>> {
    let mut bt = vec![
        ("v", Field::Int(v2::VERSION)),
        ("block", Field::Int(REQUEST_BLOCK)),
        ("rev", Field::Int(v2::REV_HOLES)),
        ("op", Field::Str("get")),
    ];
    if by_path {
        bt.push((PATH_KEY, Field::Int(1)));
    }
    if let Some(n) = streams {
        bt.push(("streams", Field::Int(u64::from(n))));
    }
    if compress != Compress::Off {
        bt.push(("z", Field::StrList(&[crate::compress::CODEC])));
    }
    if let Compress::Zstd(level) = compress {
        bt.push(("zlevel", Field::Int(level.max(1) as u64)));
    }
    let join = join.map(|j| j.hex());
    if let Some([s, n, p]) = &join {
        let members = vec![
            ("s", Field::Str(s)),
            ("n", Field::Str(n)),
            ("p", Field::Str(p)),
        ];
        bt.push(("join", Field::Object(members)));
    }
    let json = json::write_object(&[
        ("filename", Field::Str(remote)),
        ("filesize", Field::Int(0)),
        ("crc32", Field::Null),
        ("bt", Field::Object(bt)),
    ]);
    if json.len() > crate::proto::MAX_HEADER_LEN {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the remote name is too long",
        ));
    }
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    Ok(frame)
}

/// The compression a download request offers, as the server applies it:
/// `None` without `"z": ["zstd"]` (blocks go raw, as to every older
/// client); `zstd:LEVEL` with a `"zlevel"` (capped at
/// [`MAX_SERVER_LEVEL`]); else `auto`. A `"zlevel"` that is not a level
/// means `auto`: the offer is a wish, and raw or `auto` is always correct.
pub fn requested_compress(json_bytes: &[u8]) -> Option<Compress> {
    let codecs = v2::offered_codecs(json_bytes).ok()?;
    if !codecs.iter().any(|c| c == crate::compress::CODEC) {
        return None;
    }
    let value = json::parse(json_bytes).ok()?;
    let level = value.get("bt").and_then(|bt| bt.get("zlevel"));
    match level {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(l @ 1..=19) => Some(Compress::Zstd((l as i32).min(MAX_SERVER_LEVEL))),
            _ => Some(Compress::Auto),
        },
        _ => Some(Compress::Auto),
    }
}

/// What the server announces of the file before any byte of it: the
/// download is verified against this, and a partial download is resumed
/// only against the same reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// File size in bytes.
    pub size: u64,
    /// Block size (as an upload of this size would use).
    pub block: u64,
    /// Modification time in nanoseconds since the epoch (a changed file
    /// usually shows a new one; the CRC-32s catch the rest).
    pub mtime_ns: u64,
    /// The CRC-32 of each block, in order.
    pub crcs: Vec<u32>,
}

impl Reference {
    /// Number of blocks.
    pub fn count(&self) -> u64 {
        self.crcs.len() as u64
    }

    /// The whole file's CRC-32, combined from the block CRC-32s.
    pub fn whole(&self) -> u32 {
        v2::combine(&self.crcs, self.size, self.block)
    }

    /// Offset and length of block `i`.
    pub fn range(&self, i: u64) -> (u64, u64) {
        v2::block_range(self.size, self.block, i)
    }

    /// The reference as bytes (the `G` payload, also the client's record).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(28 + 4 * self.crcs.len());
        p.extend_from_slice(&self.size.to_be_bytes());
        p.extend_from_slice(&self.block.to_be_bytes());
        p.extend_from_slice(&self.mtime_ns.to_be_bytes());
        p.extend_from_slice(&(self.crcs.len() as u32).to_be_bytes());
        for c in &self.crcs {
            p.extend_from_slice(&c.to_be_bytes());
        }
        p
    }

    /// Reads a `G` payload, checking that it is self-consistent.
    pub fn decode(p: &[u8]) -> Result<Reference> {
        if p.len() < 28 {
            return Err(protocol("a reference frame is too short"));
        }
        let size = be_u64(&p[0..8]);
        let block = be_u64(&p[8..16]);
        let mtime_ns = be_u64(&p[16..24]);
        let count = u32::from_be_bytes([p[24], p[25], p[26], p[27]]) as u64;
        if !(v2::MIN_BLOCK..=v2::MAX_BLOCK).contains(&block) || !block.is_power_of_two() {
            return Err(protocol(format!(
                "reference block size {block} is not valid"
            )));
        }
        if count != v2::block_count(size, block) || count > MAX_BLOCKS {
            return Err(protocol(
                "the reference's block count does not fit its size",
            ));
        }
        if p.len() as u64 != 28 + 4 * count {
            return Err(protocol(
                "the reference frame's length does not match its count",
            ));
        }
        let crcs = p[28..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Reference {
            size,
            block,
            mtime_ns,
            crcs,
        })
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A server frame: tag, u32 length, payload.
pub fn encode_frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(tag);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The head of a data frame carrying `len` bytes at `offset` (the bytes
/// and their CRC-32, big-endian, follow).
pub fn encode_data_head(offset: u64, len: u32) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0] = TAG_DATA;
    h[1..5].copy_from_slice(&(8 + len + 4).to_be_bytes());
    h[5..13].copy_from_slice(&offset.to_be_bytes());
    h
}

/// The head of a compressed data frame: `wire` bytes of packed payload
/// (see [`crate::compress::BlockCompressor::pack`]) for the `len` raw
/// bytes at `offset` follow, then the CRC-32 of the raw bytes, big-endian.
/// The frame's length is `8 + 4 + wire + 4`.
pub fn encode_packed_head(offset: u64, len: u32, wire: u32) -> [u8; 17] {
    let mut h = [0u8; 17];
    h[0] = TAG_PACKED;
    h[1..5].copy_from_slice(&(12 + wire + 4).to_be_bytes());
    h[5..13].copy_from_slice(&offset.to_be_bytes());
    h[13..17].copy_from_slice(&len.to_be_bytes());
    h
}

/// Ascending, non-empty, non-touching runs `(first, count)` of blocks
/// below `total`: the blocks a `W` frame asks for.
pub fn runs_of(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    runs
}

/// A `W` frame asking for these blocks (ascending); none: the download is
/// complete.
pub fn encode_want(blocks: &[u64]) -> Vec<u8> {
    let runs = runs_of(blocks);
    let mut p = Vec::with_capacity(4 + 16 * runs.len());
    p.extend_from_slice(&(runs.len() as u32).to_be_bytes());
    for (first, n) in runs {
        p.extend_from_slice(&first.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
    }
    encode_frame(TAG_WANT, &p)
}

/// The most runs a `W` frame may carry (every other block of the largest
/// file).
pub const MAX_RUNS: u64 = MAX_BLOCKS / 2 + 1;

/// Reads a `W` payload into the blocks it asks for, refusing runs that
/// are empty, out of order, touching or past `total`.
pub fn decode_want(p: &[u8], total: u64) -> Result<Vec<u64>> {
    if p.len() < 4 {
        return Err(protocol("a want frame is too short"));
    }
    let runs = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as u64;
    if runs > MAX_RUNS || p.len() as u64 != 4 + 16 * runs {
        return Err(protocol("a want frame's length does not match its runs"));
    }
    let mut blocks = Vec::new();
    let mut next = 0u64;
    for (i, r) in p[4..].chunks_exact(16).enumerate() {
        let (first, n) = (be_u64(&r[0..8]), be_u64(&r[8..16]));
        let touching = i > 0 && first <= next;
        if n == 0 || touching || first < next || first.checked_add(n).is_none_or(|e| e > total) {
            return Err(protocol(format!(
                "a want frame names blocks {first}+{n}: out of order or past the file's {total} blocks"
            )));
        }
        blocks.extend(first..first + n);
        next = first + n;
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn want_round_trips_and_refuses_disorder() {
        let blocks = [0, 1, 2, 5, 7, 8];
        let f = encode_want(&blocks);
        assert_eq!(f[0], TAG_WANT);
        assert_eq!(decode_want(&f[5..], 9).unwrap(), blocks);
        assert!(decode_want(&f[5..], 8).is_err(), "past the end");
        let bad = encode_want(&[3]);
        assert!(decode_want(&bad[5..], 3).is_err());
        // Two runs that touch, or go backwards, are refused.
        let mut p = 2u32.to_be_bytes().to_vec();
        for (a, n) in [(4u64, 2u64), (6, 1)] {
            p.extend_from_slice(&a.to_be_bytes());
            p.extend_from_slice(&n.to_be_bytes());
        }
        assert!(decode_want(&p, 10).is_err());
        assert_eq!(
            decode_want(&encode_want(&[])[5..], 10).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn the_compression_offer_is_read_as_the_server_applies_it() {
        let ask = |c: Compress| {
            let h = encode_get_header_with("a.bin", None, None, c).unwrap();
            requested_compress(&h[4..])
        };
        assert_eq!(ask(Compress::Off), None);
        assert_eq!(ask(Compress::Auto), Some(Compress::Auto));
        assert_eq!(ask(Compress::Zstd(3)), Some(Compress::Zstd(3)));
        assert_eq!(
            ask(Compress::Zstd(19)),
            Some(Compress::Zstd(MAX_SERVER_LEVEL))
        );
        // The old request (no offer) gets raw blocks.
        let old = encode_get_header_ext("a.bin", None, None).unwrap();
        assert_eq!(requested_compress(&old[4..]), None);
        let odd = br#"{"filename": "a", "filesize": 0, "crc32": null, "bt": {"v": 2, "block": 65536, "op": "get", "z": ["zstd"], "zlevel": 99}}"#;
        assert_eq!(requested_compress(odd), Some(Compress::Auto));
        let other = br#"{"filename": "a", "filesize": 0, "crc32": null, "bt": {"v": 2, "block": 65536, "op": "get", "z": ["lz4"]}}"#;
        assert_eq!(requested_compress(other), None);
    }

    #[test]
    fn reference_round_trips_and_checks_its_count() {
        let r = Reference {
            size: (1 << 20) * 2 + 5,
            block: 1 << 20,
            mtime_ns: 42,
            crcs: vec![1, 2, 3],
        };
        assert_eq!(Reference::decode(&r.encode()).unwrap(), r);
        let mut short = r.clone();
        short.crcs.pop();
        assert!(Reference::decode(&short.encode()).is_err());
    }

    #[test]
    fn the_op_is_read_and_unknown_ones_refused() {
        let h = encode_get_header("a.bin").unwrap();
        assert_eq!(requested_op(&h[4..]).unwrap(), Op::Get);
        let (hd, offer) = v2::parse_header(&h[4..]).unwrap();
        assert_eq!((hd.filename.as_str(), hd.filesize), ("a.bin", 0));
        assert!(offer.is_some());
        let up =
            br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 2, "block": 65536}}"#;
        assert_eq!(requested_op(up).unwrap(), Op::Upload);
        let odd = br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 2, "block": 65536, "op": "rm"}}"#;
        assert!(requested_op(odd)
            .unwrap_err()
            .to_string()
            .contains("unknown operation"));
    }
}
