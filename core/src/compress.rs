//! Block compression for the wire: zstd frames that must pay for themselves,
//! a bounded decompressor, and the `auto` policy that decides when to try.
//!
//! Under [`CODEC`] a block is compressed on its own (one zstd frame per
//! chunk that records its content size), so blocks stay independent for
//! resume, repair and parallel streams. Under [`STREAM_CODEC`] (inside TLS)
//! a connection's compressed blocks are one zstd stream, each chunk
//! flushed, so a block refers back to earlier ones ([`StreamDecoder`] is
//! the connection's receiving half); a block sent again is just compressed
//! in the stream of the connection it goes on. CRC-32s are always of the
//! uncompressed bytes; this module does not compute them.
//!
//! The packed payload of a compressed data frame (1 MiB chunks, each a zstd
//! frame or stored) is made by [`BlockCompressor::pack`] and read by
//! [`Unpacker`]; the frame around it (head, CRC-32 trailer) and the
//! negotiation are `v2`'s, the sequencing the protocol machines'. Nothing
//! here measures time: [`AutoCompressor`] is given durations, so it is pure
//! and testable.

use crate::{Error, ErrorKind, Result};
use std::time::Duration;

/// A compressed block is sent only if it is at least this many percent
/// smaller than the raw block. Below that, the receiver's decompression
/// work and the sender's framing buy almost nothing on the link, and a
/// frame that is about as large as its input (random or already compressed
/// data) would even be slightly larger once framed.
pub const MIN_SAVING_PERCENT: usize = 3;

/// The zstd level `auto` starts at: level 1 compresses several hundred MB/s
/// per core with most of level 3's ratio on typical data (see BENCHMARKS).
pub const AUTO_LEVEL: i32 = 1;

/// The level `auto` moves to when the link is so slow that even level 3
/// leaves the CPU waiting on it (a WAN at 100 Mbit/s: 12.5 MB/s of wire
/// against several hundred MB/s of compression): there the extra ratio is
/// pure gain (a tar of /usr/share: 2.1 at level 1, 2.7 at level 3).
pub const AUTO_SLOW_LINK_LEVEL: i32 = 3;

/// `auto` moves up to [`AUTO_SLOW_LINK_LEVEL`] when compression at
/// [`AUTO_LEVEL`] outruns what the link takes by this factor (level 3
/// costs about twice level 1, so half of it stays as margin), and back
/// down when at the higher level it no longer outruns it by
/// [`AUTO_LEVEL_DOWN`].
const AUTO_LEVEL_UP: f64 = 4.0;
const AUTO_LEVEL_DOWN: f64 = 1.5;

/// The largest compressed size that is worth sending for a raw block of
/// `raw_len` bytes.
pub fn max_worthwhile_len(raw_len: usize) -> usize {
    // In u128 so that no length overflows; the saving is at most raw_len.
    let saving = (raw_len as u128 * MIN_SAVING_PERCENT as u128).div_ceil(100);
    raw_len - saving as usize
}

/// A reusable zstd compressor for blocks (the context is kept between
/// blocks, which matters at a few hundred blocks per second).
pub struct BlockCompressor {
    inner: zstd::bulk::Compressor<'static>,
    /// Under [`STREAM_CODEC`]: one zstd stream for the whole connection.
    stream: Option<StreamCtx>,
}

/// The sending half of a connection's zstd stream ([`STREAM_CODEC`]).
struct StreamCtx {
    cctx: zstd::zstd_safe::CCtx<'static>,
    /// The next chunk starts a new zstd frame (and says so): the first one,
    /// and any after output the receiver never saw (a block that did not
    /// pay went raw, so its compressed form must not be referenced).
    reset_next: bool,
}

impl std::fmt::Debug for BlockCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCompressor").finish_non_exhaustive()
    }
}

impl BlockCompressor {
    /// A compressor at zstd `level` (1 to 22; negative levels are faster).
    pub fn new(level: i32) -> Result<BlockCompressor> {
        let inner = zstd::bulk::Compressor::new(level).map_err(|e| {
            Error::io(
                ErrorKind::InvalidInput,
                format!("cannot set up zstd at level {level}"),
                e,
            )
        })?;
        Ok(BlockCompressor {
            inner,
            stream: None,
        })
    }

    /// A compressor for one connection under [`STREAM_CODEC`] (`stream`)
    /// or the per-chunk frames of [`CODEC`]. A streaming one must see
    /// every block the connection carries compressed, in order, and no
    /// other; a new connection needs a new one.
    pub fn for_codec(level: i32, stream: bool) -> Result<BlockCompressor> {
        let mut c = BlockCompressor::new(level)?;
        if stream {
            let setup = |e: usize| {
                let name = zstd::zstd_safe::get_error_name(e);
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("cannot set up a zstd stream at level {level}: {name}"),
                )
            };
            let mut cctx = zstd::zstd_safe::CCtx::try_create()
                .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "cannot allocate zstd"))?;
            cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
                .map_err(setup)?;
            c.stream = Some(StreamCtx {
                cctx,
                reset_next: true,
            });
        }
        Ok(c)
    }

    /// One zstd frame of `raw` (with its content size recorded), or `None`
    /// when it would not be at least [`MIN_SAVING_PERCENT`] smaller.
    ///
    /// The output buffer is only as large as a worthwhile frame, so zstd
    /// gives up as soon as the frame would be too large; an error of zstd
    /// also gives `None` (the block then goes raw, which is always correct).
    pub fn compress(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        if raw.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(max_worthwhile_len(raw.len()));
        // compress2 records the content size by default; the decompressor
        // below insists on it.
        self.inner.compress_to_buffer(raw, &mut out).ok()?;
        (out.len() <= max_worthwhile_len(raw.len())).then_some(out)
    }
}

/// [`BlockCompressor::compress`] with a fresh compressor (for one-off use;
/// keep a [`BlockCompressor`] for a stream of blocks).
pub fn compress_block(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    BlockCompressor::new(level).ok()?.compress(raw)
}

/// Decompresses one block's frame that must produce exactly `expected_len`
/// bytes, never allocating or writing more than that.
///
/// Refused (as [`ErrorKind::Protocol`], naming what was wrong): input that
/// is not one whole zstd frame, a frame that does not record its content
/// size or records one other than `expected_len`, bytes after the frame,
/// corrupt data, and output of any other length. A "bomb" (a small frame
/// claiming or producing more) is thus refused before or while decoding
/// into a buffer of `expected_len` bytes.
pub fn decompress_block(frame: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(bad_frame("the frame does not record its content size")),
        Err(_) => return Err(bad_frame("it does not start with a zstd frame header")),
    };
    if declared != expected_len as u64 {
        return Err(bad_frame(&format!(
            "the frame declares {declared} bytes but the block is {expected_len} bytes"
        )));
    }
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        Ok(n) => {
            return Err(bad_frame(&format!(
                "{} bytes follow the {n}-byte frame",
                frame.len() - n
            )))
        }
        Err(_) => return Err(bad_frame("the frame is truncated or corrupt")),
    }
    let mut out = Vec::with_capacity(expected_len);
    let mut dctx = zstd::bulk::Decompressor::new()
        .map_err(|e| Error::io(ErrorKind::Protocol, "cannot set up zstd", e))?;
    // The Vec is never grown: zstd writes into its spare capacity only.
    let n = dctx
        .decompress_to_buffer(frame, &mut out)
        .map_err(|e| bad_frame(&format!("zstd could not decode it ({e})")))?;
    if n != expected_len {
        return Err(bad_frame(&format!(
            "it decoded to {n} bytes, not the block's {expected_len}"
        )));
    }
    Ok(out)
}

fn bad_frame(reason: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("refused a compressed block from the peer: {reason}"),
    )
}

/// What the sender does about compression (`--compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// Offer compression and compress blocks while it pays: the link,
    /// not the CPU, is the bottleneck and the data shrinks
    /// ([`AutoCompressor`], at [`AUTO_LEVEL`]).
    #[default]
    Auto,
    /// Offer compression and try every block at this zstd level (a block
    /// that does not shrink still goes raw).
    Zstd(i32),
    /// Neither offer nor compress: every block goes raw.
    Off,
}

/// The codec name offered and accepted on the wire (`"bt"."z"`).
pub const CODEC: &str = "zstd";

/// The codec name of a connection-long zstd stream: each connection
/// keeps one compressor and one decoder across its blocks, so that a block
/// refers back to the ones before it (a tar of /usr/share: about the
/// ratio of `zstd -3` on the whole file instead of that of 1 MiB pieces).
/// Offered before [`CODEC`]; a peer that does not know it picks `CODEC`.
pub const STREAM_CODEC: &str = "zstd-stream";

impl std::str::FromStr for Compress {
    type Err = Error;

    /// `auto`, `off`, `zstd` (level 3, zstd's default) or `zstd:LEVEL`
    /// (1 to 19; higher is smaller and slower).
    fn from_str(s: &str) -> Result<Compress> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidInput,
                format!("--compress {s:?}: expected auto, off, zstd or zstd:LEVEL (LEVEL 1 to 19)"),
            )
        };
        match s {
            "auto" => Ok(Compress::Auto),
            "off" | "none" => Ok(Compress::Off),
            "zstd" => Ok(Compress::Zstd(3)),
            _ => {
                let level = s.strip_prefix("zstd:").ok_or_else(bad)?;
                match level.parse::<i32>() {
                    Ok(l) if (1..=19).contains(&l) => Ok(Compress::Zstd(l)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl std::fmt::Display for Compress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compress::Auto => f.write_str("auto"),
            Compress::Zstd(l) => write!(f, "zstd:{l}"),
            Compress::Off => f.write_str("off"),
        }
    }
}

/// A compressed block travels as chunks of this many raw bytes (the last
/// one shorter), each its own zstd frame, so that the receiver never holds
/// more than one chunk in each form whatever the block size (1 MiB to
/// 256 MiB): its memory per connection grows by at most twice this.
pub const PACK_CHUNK: usize = 1 << 20;

/// Raw bytes of chunk `i` of a block of `block_len` bytes.
fn chunk_len(block_len: u64, i: u64) -> u64 {
    let from = i.saturating_mul(PACK_CHUNK as u64).min(block_len);
    (PACK_CHUNK as u64).min(block_len - from)
}

impl BlockCompressor {
    /// The packed payload of a block: for each chunk of [`PACK_CHUNK`] raw
    /// bytes, a u32 (big-endian) length, then that many bytes: a zstd frame
    /// of the chunk if shorter than the chunk, else the chunk itself
    /// (stored). `None` when the whole would not be at least
    /// [`MIN_SAVING_PERCENT`] smaller than the block.
    pub fn pack(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.pack_into(raw, &mut out).then_some(out)
    }

    /// [`BlockCompressor::pack`] into `out` (cleared first; `false` when
    /// packing does not pay, `out` then holding nothing of use). A sender
    /// that keeps `out` across blocks allocates nothing per block.
    pub fn pack_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        if self.stream.is_some() {
            return self.stream_into(raw, out);
        }
        let limit = max_worthwhile_len(raw.len());
        out.clear();
        out.reserve(limit);
        !raw.is_empty()
            && raw.chunks(PACK_CHUNK).all(|chunk| {
                let at = out.len();
                if at + 4 > limit {
                    return false;
                }
                out.extend_from_slice(&[0; 4]);
                let room = limit - at - 4;
                let body = match self.frame_chunk(chunk, out, room) {
                    Some(n) => n,
                    None if chunk.len() <= room => {
                        out.extend_from_slice(chunk);
                        chunk.len()
                    }
                    None => return false,
                };
                out[at..at + 4].copy_from_slice(&(body as u32).to_be_bytes());
                true
            })
    }

    /// Appends a zstd frame of one chunk of a packed block (at most
    /// [`PACK_CHUNK`] raw bytes) to `out` if it is worth it (see
    /// [`max_worthwhile_len`]) and at most `room` bytes: its length, or
    /// `None` with `out` as it was (the chunk is then stored). For senders
    /// that pack a block a chunk at a time rather than hold it whole.
    ///
    /// zstd writes straight into `out`, so no other buffer is used; a
    /// sender that keeps `out` across blocks allocates nothing per chunk.
    pub fn frame_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>, room: usize) -> Option<usize> {
        if chunk.is_empty() {
            return None;
        }
        let at = out.len();
        let room = room.min(max_worthwhile_len(chunk.len()));
        out.reserve(room);
        let mut tail = std::io::Cursor::new(&mut *out);
        tail.set_position(at as u64);
        match self.inner.compress_to_buffer(chunk, &mut tail) {
            Ok(n) if n <= room => {
                out.truncate(at + n);
                Some(n)
            }
            _ => {
                out.truncate(at);
                None
            }
        }
    }
}

/// The high bit of a chunk's length under [`STREAM_CODEC`]: the chunk
/// starts a new zstd frame, so the receiver resets its decoder first.
pub const STREAM_RESET: u32 = 1 << 31;

/// The largest window a streamed connection may use (8 MiB, zstd level
/// 19's): the receiver's memory per connection is bounded by it.
pub const STREAM_WINDOW_LOG_MAX: u32 = 23;

impl StreamCtx {
    /// Appends one chunk (at most [`PACK_CHUNK`] raw bytes) of a block
    /// under [`STREAM_CODEC`] to `out`: a u32 (big-endian) length, with
    /// [`STREAM_RESET`] when a new frame starts, then the zstd stream's
    /// output for the chunk, flushed (so the receiver can decode it at once,
    /// while later chunks still refer back to it). Never stored: every
    /// chunk goes through the stream. The bytes appended, or `None` when
    /// zstd failed (the caller then makes the next chunk a reset).
    fn chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
        let reset = std::mem::replace(&mut self.reset_next, false);
        if reset {
            // Parameters (the level) survive a session reset.
            self.cctx.reset(ResetDirective::SessionOnly).ok()?;
        }
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        // Exact: a kept buffer grows to a block's output and one chunk's
        // bound, not to the next power of two.
        out.reserve_exact(zstd::zstd_safe::compress_bound(chunk.len()));
        let mut input = InBuffer::around(chunk);
        loop {
            let pos = out.len();
            let mut o = OutBuffer::around_pos(out, pos);
            let left = self
                .cctx
                .compress_stream2(
                    &mut o,
                    &mut input,
                    zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .ok()?;
            if left == 0 && input.pos() == chunk.len() {
                break;
            }
            out.reserve_exact(64 << 10);
        }
        let body = out.len() - at - 4;
        if body as u64 >= u64::from(STREAM_RESET) {
            return None;
        }
        let word = body as u32 | if reset { STREAM_RESET } else { 0 };
        out[at..at + 4].copy_from_slice(&word.to_be_bytes());
        Some(4 + body)
    }
}

impl BlockCompressor {
    /// Whether this compressor is a connection's zstd stream
    /// ([`STREAM_CODEC`]): then every chunk must go through
    /// [`BlockCompressor::stream_chunk`], in order, none stored.
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Appends one chunk of a block to `out` through the connection's
    /// stream (see [`StreamCtx`]'s layout): the bytes appended (length
    /// word included), or `None` when this is no streaming compressor or
    /// zstd failed. A sender that packs a block a chunk at a time and gives
    /// up on it must call [`BlockCompressor::abandon_block`].
    pub fn stream_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let s = self.stream.as_mut()?;
        let n = s.chunk(chunk, out);
        if n.is_none() {
            s.reset_next = true;
        }
        n
    }

    /// The block being packed goes raw: the receiver never sees the
    /// stream's output for it, so the next chunk starts a new frame.
    pub fn abandon_block(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            s.reset_next = true;
        }
    }

    /// [`BlockCompressor::pack_into`] under [`STREAM_CODEC`].
    fn stream_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        let limit = max_worthwhile_len(raw.len());
        out.clear();
        out.reserve(limit + 64);
        let paid = !raw.is_empty()
            && raw
                .chunks(PACK_CHUNK)
                .all(|chunk| self.stream_chunk(chunk, out).is_some() && out.len() <= limit);
        if !paid {
            // The receiver will not see this output: start afresh.
            self.abandon_block();
        }
        paid
    }
}

/// The receiving half of a connection's zstd stream ([`STREAM_CODEC`]):
/// one decoder kept across the connection's compressed blocks, with a
/// bounded window.
pub struct StreamDecoder {
    dctx: zstd::zstd_safe::DCtx<'static>,
    /// A frame was started (a reset chunk) and nothing failed since.
    started: bool,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl StreamDecoder {
    /// A decoder that takes windows up to [`STREAM_WINDOW_LOG_MAX`].
    pub fn new() -> Result<StreamDecoder> {
        let mut dctx = zstd::zstd_safe::DCtx::try_create()
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "cannot allocate zstd"))?;
        dctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
            STREAM_WINDOW_LOG_MAX,
        ))
        .map_err(|_| Error::new(ErrorKind::Protocol, "cannot bound zstd's window"))?;
        Ok(StreamDecoder {
            dctx,
            started: false,
        })
    }

    /// Decodes one chunk's stream bytes, which must give exactly `raw`
    /// bytes; never writes more than that. After a refusal the decoder
    /// takes nothing but a reset chunk.
    pub fn decode(&mut self, reset: bool, input: &[u8], raw: usize) -> Result<Vec<u8>> {
        if reset {
            self.dctx
                .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                .map_err(|_| bad_frame("zstd could not start a new frame"))?;
            self.started = true;
        }
        if !self.started {
            return Err(bad_frame(
                "a streamed chunk continues no zstd stream (no reset chunk before it, or one failed)",
            ));
        }
        self.started = false;
        let out = self.decode_started(input, raw)?;
        self.started = true;
        Ok(out)
    }

    fn decode_started(&mut self, input: &[u8], raw: usize) -> Result<Vec<u8>> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let mut out: Vec<u8> = Vec::with_capacity(raw);
        let mut inb = InBuffer::around(input);
        while inb.pos() < input.len() {
            let before = (inb.pos(), out.len());
            let pos = out.len();
            let mut o = OutBuffer::around_pos(&mut out, pos);
            self.dctx.decompress_stream(&mut o, &mut inb).map_err(|e| {
                let name = zstd::zstd_safe::get_error_name(e);
                bad_frame(&format!("zstd could not decode a streamed chunk ({name})"))
            })?;
            if (inb.pos(), out.len()) == before || out.len() > raw {
                return Err(bad_frame(&format!(
                    "a streamed chunk decodes to more than its {raw} bytes"
                )));
            }
        }
        // Output the decoder still holds would belong to this chunk too.
        let mut probe: Vec<u8> = Vec::with_capacity(1);
        let mut none = InBuffer::around(&[]);
        let mut o = OutBuffer::around(&mut probe);
        let _ = self.dctx.decompress_stream(&mut o, &mut none);
        if out.len() != raw || !probe.is_empty() {
            return Err(bad_frame(&format!(
                "a streamed chunk decoded to {}{} bytes, not its {raw}",
                out.len(),
                if probe.is_empty() { "" } else { " or more" }
            )));
        }
        Ok(out)
    }
}

/// The receiving side of a packed block: payload bytes in, raw chunks out,
/// holding at most one chunk of each form.
///
/// Refused as [`ErrorKind::Protocol`], with words: a chunk of length 0 or
/// longer than its raw size, a chunk that does not decode to exactly its
/// raw size (see [`decompress_block`]), and a payload that ends inside a
/// chunk or goes on after the last.
#[derive(Debug)]
pub struct Unpacker {
    block_len: u64,
    /// Chunks are a connection's zstd stream ([`STREAM_CODEC`]).
    streaming: bool,
    next_chunk: u64,
    chunks: u64,
    at: UnpackAt,
}

#[derive(Debug)]
enum UnpackAt {
    Prefix {
        buf: [u8; 4],
        n: usize,
    },
    Body {
        raw: usize,
        buf: Vec<u8>,
        want: usize,
        reset: bool,
    },
    Done,
}

impl Unpacker {
    /// Unpacks a block of `block_len` raw bytes.
    pub fn new(block_len: u64) -> Unpacker {
        let chunks = block_len.div_ceil(PACK_CHUNK as u64);
        let at = if chunks == 0 {
            UnpackAt::Done
        } else {
            UnpackAt::Prefix { buf: [0; 4], n: 0 }
        };
        Unpacker {
            block_len,
            streaming: false,
            next_chunk: 0,
            chunks,
            at,
        }
    }

    /// Unpacks a block of `block_len` raw bytes whose chunks continue the
    /// connection's zstd stream ([`STREAM_CODEC`]; see
    /// [`Unpacker::feed_stream`]).
    pub fn streaming(block_len: u64) -> Unpacker {
        Unpacker {
            streaming: true,
            ..Unpacker::new(block_len)
        }
    }

    /// Whether the chunks continue the connection's stream.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Payload bytes that complete the current length or chunk (0 once
    /// every chunk is out). Feed at most this many at once.
    pub fn want(&self) -> usize {
        match &self.at {
            UnpackAt::Prefix { n, .. } => 4 - n,
            UnpackAt::Body { buf, want, .. } => want - buf.len(),
            UnpackAt::Done => 0,
        }
    }

    /// Whether every chunk of the block was produced.
    pub fn is_done(&self) -> bool {
        matches!(self.at, UnpackAt::Done)
    }

    /// Takes `input` (at most [`Unpacker::want`] bytes, all used); gives a
    /// raw chunk when one is complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.streaming {
            return Err(bad_frame("internal: a streamed block without its decoder"));
        }
        self.feed_with(input, None)
    }

    /// [`Unpacker::feed`] for a streamed block: chunks go through `dec`,
    /// the connection's decoder.
    pub fn feed_stream(
        &mut self,
        input: &[u8],
        dec: &mut StreamDecoder,
    ) -> Result<Option<Vec<u8>>> {
        self.feed_with(input, Some(dec))
    }

    fn feed_with(
        &mut self,
        input: &[u8],
        dec: Option<&mut StreamDecoder>,
    ) -> Result<Option<Vec<u8>>> {
        if input.len() > self.want() {
            return Err(bad_frame("bytes follow the block's last chunk"));
        }
        match &mut self.at {
            UnpackAt::Prefix { buf, n } => {
                buf[*n..*n + input.len()].copy_from_slice(input);
                *n += input.len();
                if *n == 4 {
                    let len = u32::from_be_bytes(*buf) as usize;
                    self.start_body(len)?;
                }
                Ok(None)
            }
            UnpackAt::Body {
                buf,
                want,
                raw,
                reset,
            } => {
                buf.extend_from_slice(input);
                if buf.len() < *want {
                    return Ok(None);
                }
                let (frame, raw, reset) = (std::mem::take(buf), *raw, *reset);
                self.next_chunk += 1;
                self.at = if self.next_chunk == self.chunks {
                    UnpackAt::Done
                } else {
                    UnpackAt::Prefix { buf: [0; 4], n: 0 }
                };
                if let Some(dec) = dec {
                    return dec.decode(reset, &frame, raw).map(Some);
                }
                if frame.len() == raw {
                    return Ok(Some(frame));
                }
                decompress_block(&frame, raw).map(Some)
            }
            UnpackAt::Done => Ok(None),
        }
    }

    fn start_body(&mut self, word: usize) -> Result<()> {
        let raw = chunk_len(self.block_len, self.next_chunk) as usize;
        let (len, reset, most) = if self.streaming {
            let reset = word as u32 & STREAM_RESET != 0;
            let len = (word as u32 & !STREAM_RESET) as usize;
            // A flushed chunk of data that does not shrink is a little
            // larger than the chunk (block headers), never more than this.
            (len, reset, zstd::zstd_safe::compress_bound(raw))
        } else {
            (word, false, raw)
        };
        if len == 0 || len > most {
            return Err(bad_frame(&format!(
                "chunk {} says {len} bytes for {raw} raw bytes (it may not be empty or expand)",
                self.next_chunk
            )));
        }
        self.at = UnpackAt::Body {
            raw,
            buf: Vec::with_capacity(len),
            want: len,
            reset,
        };
        Ok(())
    }
}

/// Tuning of [`AutoCompressor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoConfig {
    /// Consecutive blocks that did not shrink before `auto` stops trying.
    pub give_up_after: u32,
    /// While not trying, one block in this many is still compressed as a
    /// probe (data and links change; a probe costs 1/N of the CPU).
    pub probe_every: u32,
    /// Compression must promise at least this factor over sending raw to be
    /// chosen (1.1 = 10 % faster), so that noise in the measurements does
    /// not flip the choice on a link where it hardly matters.
    pub min_gain: f64,
}

impl Default for AutoConfig {
    fn default() -> AutoConfig {
        AutoConfig {
            give_up_after: 8,
            probe_every: 256,
            min_gain: 1.1,
        }
    }
}

/// The `auto` compression policy, fed with measurements.
///
/// The sender compresses on one thread while the socket sends, so the
/// transfer runs at `min(compression rate, link rate / ratio)` with
/// compression and at the link rate without. Compressing is chosen when
/// that promises at least [`AutoConfig::min_gain`]; that is, when the link
/// rather than the CPU is the bottleneck *and* the data shrinks.
/// Separately, after [`AutoConfig::give_up_after`] consecutive blocks that
/// did not shrink, it stops trying; in both "raw" states one block in
/// [`AutoConfig::probe_every`] is a probe, so a change is noticed.
#[derive(Debug, Clone)]
pub struct AutoCompressor {
    config: AutoConfig,
    misses: u32,
    since_probe: u32,
    /// Seconds per raw byte of compression, smoothed.
    compress_cost: Option<f64>,
    /// Seconds per wire byte of sending, smoothed.
    link_cost: Option<f64>,
    /// Compressed size / raw size of the blocks that shrank, smoothed.
    ratio: Option<f64>,
    /// The level blocks are compressed at (the costs above are of it).
    level: i32,
}

/// Weight of a new measurement in the moving averages: recent enough to
/// follow a change within a few dozen blocks, smooth enough to ignore one
/// block stalled by the scheduler.
const SMOOTHING: f64 = 0.2;

fn smooth(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + SMOOTHING * (new - o)))
}

/// Seconds per byte. Costs, not rates, are smoothed: writes into a full
/// socket buffer are bimodal (the kernel wakes a writer only once a third of
/// the buffer is free, so two writes of a block return at once and the
/// third waits for all three), and a mean of rates is ruled by the instant
/// ones (measured: 250 MB/s on a 12.5 MB/s link) where a mean of costs is
/// the link's.
fn cost(bytes: usize, elapsed: Duration) -> f64 {
    // A zero duration (coarse clock) counts as one microsecond.
    elapsed.as_secs_f64().max(1e-6) / bytes as f64
}

impl AutoCompressor {
    /// A policy with `config`, trying compression until measurements say no.
    pub fn new(config: AutoConfig) -> AutoCompressor {
        AutoCompressor {
            config,
            misses: 0,
            since_probe: 0,
            compress_cost: None,
            link_cost: None,
            ratio: None,
            level: AUTO_LEVEL,
        }
    }

    /// The level to compress the next block at, if it is to be tried
    /// (counts the block, as [`AutoCompressor::should_compress`]).
    pub fn next_level(&mut self) -> Option<i32> {
        self.should_compress().then_some(self.level)
    }

    /// The level compression runs at now.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Moves between [`AUTO_LEVEL`] and [`AUTO_SLOW_LINK_LEVEL`] by how far
    /// compression outruns the link (raw bytes per second each way). A
    /// change of level forgets the compression cost, which was of the old
    /// level.
    fn adapt_level(&mut self) {
        let (Some(cc), Some(lc), Some(r)) = (self.compress_cost, self.link_cost, self.ratio) else {
            return;
        };
        // Raw bytes per second: what compression produces, what the link
        // carries once compressed.
        let headroom = (1.0 / cc) / ((1.0 / lc) / r.max(1e-3));
        let next = if self.level == AUTO_LEVEL && headroom >= AUTO_LEVEL_UP {
            AUTO_SLOW_LINK_LEVEL
        } else if self.level == AUTO_SLOW_LINK_LEVEL && headroom < AUTO_LEVEL_DOWN {
            AUTO_LEVEL
        } else {
            return;
        };
        self.level = next;
        self.compress_cost = None;
    }

    /// Whether to try compressing the next block. Counts the block, so call
    /// it once per block.
    pub fn should_compress(&mut self) -> bool {
        if self.worth_it() {
            self.since_probe = 0;
            return true;
        }
        self.since_probe += 1;
        if self.since_probe >= self.config.probe_every {
            self.since_probe = 0;
            return true;
        }
        false
    }

    /// Whether compressing is the current choice, probes aside.
    pub fn worth_it(&self) -> bool {
        if self.misses >= self.config.give_up_after {
            return false;
        }
        let (Some(cc), Some(lc), Some(r)) = (self.compress_cost, self.link_cost, self.ratio) else {
            return true; // Not measured yet: try, and measure.
        };
        let (c, l) = (1.0 / cc, 1.0 / lc);
        let with = c.min(l / r.max(1e-3));
        with >= l * self.config.min_gain
    }

    /// Reports a compression attempt: `raw_len` bytes took `elapsed`, and
    /// gave `compressed_len` bytes (`None`: not worthwhile, sent raw).
    pub fn record_compression(
        &mut self,
        raw_len: usize,
        compressed_len: Option<usize>,
        elapsed: Duration,
    ) {
        if raw_len == 0 {
            return;
        }
        self.compress_cost = smooth(self.compress_cost, cost(raw_len, elapsed));
        // The ratio is of blocks that shrank; those that did not are counted
        // as misses instead, so one incompressible block (an embedded JPEG)
        // does not switch compression off for the compressible rest.
        match compressed_len {
            Some(c) => {
                self.ratio = smooth(self.ratio, c as f64 / raw_len as f64);
                self.misses = 0;
            }
            None => self.misses = self.misses.saturating_add(1),
        }
        self.adapt_level();
    }

    /// Reports that `wire_bytes` went into the socket in `elapsed` (time
    /// blocked in send, so a full socket buffer shows the link's rate).
    pub fn record_send(&mut self, wire_bytes: usize, elapsed: Duration) {
        if wire_bytes > 0 {
            self.link_cost = smooth(self.link_cost, cost(wire_bytes, elapsed));
        }
    }

    /// The smoothed compressed/raw ratio of the blocks that shrank (for
    /// `--json` reports).
    pub fn ratio(&self) -> Option<f64> {
        self.ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::noise as random;

    const MIB: usize = 1 << 20;

    fn text(len: usize) -> Vec<u8> {
        let words = ["alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta "];
        let mut out = Vec::with_capacity(len + 8);
        let mut i = 7u32;
        while out.len() < len {
            i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(words[(i >> 16) as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn round_trip_of_compressible_data() {
        let raw = text(MIB);
        let frame = compress_block(&raw, 3).expect("text shrinks");
        assert!(frame.len() < raw.len() / 2, "{}", frame.len());
        assert_eq!(decompress_block(&frame, raw.len()).unwrap(), raw);
    }

    #[test]
    fn incompressible_and_empty_blocks_go_raw() {
        assert_eq!(compress_block(&random(MIB), 1), None);
        assert_eq!(compress_block(&[], 1), None);
        // 100 bytes can lose at most 97 to be worthwhile.
        assert_eq!(max_worthwhile_len(100), 97);
        assert_eq!(max_worthwhile_len(MIB), MIB - (3 * MIB).div_ceil(100));
        // Tiny blocks (found by fuzzing: this once underflowed).
        let small: Vec<usize> = [0, 1, 2, 33, 34, 35].map(max_worthwhile_len).to_vec();
        assert_eq!(small, [0, 0, 1, 32, 32, 33]);
        let huge = max_worthwhile_len(usize::MAX);
        assert!(huge > usize::MAX / 100 * 96 && huge < usize::MAX / 100 * 98);
        for n in 0..300 {
            let raw = vec![0u8; n];
            if let Some(frame) = compress_block(&raw, 1) {
                assert!(frame.len() <= max_worthwhile_len(n));
                assert_eq!(decompress_block(&frame, n).unwrap(), raw);
            }
        }
        assert!(compress_block(&[0u8; 299], 1).is_some());
        // Half random, half zeros: shrinks by about half, so it is sent.
        let mut half = random(MIB / 2);
        half.resize(MIB, 0);
        let frame = compress_block(&half, 1).unwrap();
        assert!(frame.len() < MIB * 6 / 10);
    }

    #[test]
    fn bomb_claiming_more_than_the_block_is_refused() {
        // 64 MiB of zeros compress to a few KiB; the block is said to be 1 MiB.
        let frame = compress_block(&vec![0u8; 64 * MIB], 1).unwrap();
        assert!(frame.len() < 64 * 1024);
        let e = decompress_block(&frame, MIB).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(
            e.to_string(),
            "refused a compressed block from the peer: the frame declares 67108864 bytes but the block is 1048576 bytes"
        );
    }

    #[test]
    fn bomb_without_content_size_is_refused() {
        // A streaming encoder that is not told the size records none.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0u8; 64 * MIB]).unwrap();
        let frame = enc.finish().unwrap();
        let e = decompress_block(&frame, MIB).unwrap_err();
        assert!(
            e.to_string().contains("does not record its content size"),
            "{e}"
        );
    }

    /// A frame whose header lies about its size: the decoder would produce
    /// more than declared; it must stop at the buffer, not grow it.
    #[test]
    fn frame_producing_more_than_it_declares_is_refused() {
        let raw = vec![7u8; 256 * 1024];
        let frame = compress_block(&raw, 1).unwrap();
        let forged = forge_content_size(&frame, 4096);
        let e = decompress_block(&forged, 4096).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("zstd could not decode it"), "{e}");
    }

    /// Rewrites the frame content size of a zstd frame whose header has a
    /// 4-byte content size field (FCS flag 2), as level 1 writes for
    /// blocks of 64 KiB to 4 GiB.
    fn forge_content_size(frame: &[u8], size: u32) -> Vec<u8> {
        let descriptor = frame[4];
        assert_eq!(descriptor >> 6, 2, "expected a 4-byte content size field");
        let single_segment = descriptor & 0x20 != 0;
        let dict_id_len = [0, 1, 2, 4][(descriptor & 3) as usize];
        let at = 5 + usize::from(!single_segment) + dict_id_len;
        let mut forged = frame.to_vec();
        forged[at..at + 4].copy_from_slice(&size.to_le_bytes());
        forged
    }

    #[test]
    fn corrupt_and_foreign_frames_are_refused() {
        let raw = text(256 * 1024);
        let frame = compress_block(&raw, 3).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"not zstd at all".to_vec(),
                "does not start with a zstd frame header",
            ),
            (Vec::new(), "does not start with a zstd frame header"),
            (frame[..frame.len() / 2].to_vec(), "truncated or corrupt"),
            ([frame.clone(), vec![0]].concat(), "1 bytes follow the"),
            ([frame.clone(), frame.clone()].concat(), "follow the"),
        ];
        for (input, want) in cases {
            let e = decompress_block(&input, raw.len()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(e.to_string().contains(want), "{want:?}: {e}");
        }
        // Flipped bits in the compressed body: refused or, if zstd cannot
        // tell, never a different length. (No checksum in block frames: the
        // block's CRC-32 of the uncompressed bytes catches the rest.)
        for i in (20..frame.len()).step_by(97) {
            let mut bad = frame.clone();
            bad[i] ^= 0x40;
            if let Ok(out) = decompress_block(&bad, raw.len()) {
                assert_eq!(out.len(), raw.len());
            }
        }
        assert_eq!(decompress_block(&frame, raw.len()).unwrap(), raw);
    }

    fn unpack_all(payload: &[u8], len: u64, step: usize) -> Result<Vec<u8>> {
        let mut u = Unpacker::new(len);
        let (mut out, mut pos) = (Vec::new(), 0);
        while pos < payload.len() {
            let n = u.want().clamp(1, step).min(payload.len() - pos);
            if let Some(chunk) = u.feed(&payload[pos..pos + n])? {
                assert!(chunk.len() <= PACK_CHUNK);
                out.extend_from_slice(&chunk);
            }
            pos += n;
        }
        assert!(u.is_done(), "payload ended inside the block");
        Ok(out)
    }

    #[test]
    fn packed_blocks_round_trip_in_chunks_with_stored_ones_between() {
        // 2.5 chunks: text, random (stored as is), text.
        let mut raw = text(PACK_CHUNK);
        raw.extend(random(PACK_CHUNK));
        raw.extend(text(PACK_CHUNK / 2));
        let mut c = BlockCompressor::new(1).unwrap();
        let packed = c.pack(&raw).expect("two thirds text shrinks");
        assert!(packed.len() < raw.len() * 3 / 4, "{}", packed.len());
        let second = u32::from_be_bytes(packed[..4].try_into().unwrap()) as usize;
        let stored = u32::from_be_bytes(packed[4 + second..8 + second].try_into().unwrap());
        assert_eq!(stored as usize, PACK_CHUNK, "the random chunk is stored");
        for step in [1, 7, 4096, usize::MAX] {
            assert_eq!(unpack_all(&packed, raw.len() as u64, step).unwrap(), raw);
        }
        assert_eq!(c.pack(&random(3 * PACK_CHUNK)), None);
        assert_eq!(c.pack(&[]), None);
    }

    #[test]
    fn the_unpacker_refuses_what_does_not_fit_its_block() {
        let raw = text(100_000);
        let packed = compress_block(&raw, 1).unwrap();
        let mut p = (packed.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&packed);
        // Declared for a shorter block: the frame's content size disagrees.
        let e = unpack_all(&p, 99_999, usize::MAX).unwrap_err();
        assert!(e.to_string().contains("declares 100000 bytes"), "{e}");
        // A chunk longer than its raw size, or empty.
        for n in [100_001u32, 0] {
            let e = unpack_all(&n.to_be_bytes(), 100_000, usize::MAX).unwrap_err();
            assert!(e.to_string().contains("may not be empty or expand"), "{e}");
        }
        // More than the block's chunks.
        let mut u = Unpacker::new(100_000);
        let mut pos = 0;
        while u.want() > 0 {
            let n = u.want();
            u.feed(&p[pos..pos + n]).unwrap();
            pos += n;
        }
        assert!(u.feed(&[0]).is_err());
    }

    /// Text whose blocks repeat each other from afar (like files in a
    /// tar): a block alone compresses less than after the ones before.
    fn repeating_blocks(blocks: usize) -> Vec<u8> {
        let base = random(PACK_CHUNK / 4);
        let mut out = Vec::new();
        for i in 0..blocks * 4 {
            out.extend_from_slice(&base);
            let n = out.len();
            out[n - 1 - i] ^= 1;
        }
        out
    }

    fn unpack_stream(payload: &[u8], len: u64, dec: &mut StreamDecoder) -> Result<Vec<u8>> {
        let mut u = Unpacker::streaming(len);
        let (mut out, mut pos) = (Vec::new(), 0);
        while pos < payload.len() {
            let n = u.want().max(1).min(payload.len() - pos);
            if let Some(chunk) = u.feed_stream(&payload[pos..pos + n], dec)? {
                out.extend_from_slice(&chunk);
            }
            pos += n;
        }
        assert!(u.is_done(), "payload ended inside the block");
        Ok(out)
    }

    #[test]
    fn a_connection_stream_refers_back_across_blocks_and_round_trips() {
        let data = repeating_blocks(4);
        let mut c = BlockCompressor::for_codec(3, true).unwrap();
        let mut dec = StreamDecoder::new().unwrap();
        let mut chunked = BlockCompressor::new(3).unwrap();
        let (mut streamed, mut alone) = (0, 0);
        for (i, block) in data.chunks(PACK_CHUNK).enumerate() {
            // Random quarters: alone a block hardly shrinks.
            alone += chunked.pack(block).map_or(block.len(), |p| p.len());
            let p = c.pack(block).expect("a repeat shrinks");
            let word = u32::from_be_bytes(p[..4].try_into().unwrap());
            assert_eq!(
                word & STREAM_RESET != 0,
                i == 0,
                "only the first starts a frame"
            );
            streamed += p.len();
            assert_eq!(
                unpack_stream(&p, block.len() as u64, &mut dec).unwrap(),
                block
            );
        }
        assert!(streamed * 3 < alone, "streamed {streamed}, alone {alone}");
        // The old per-chunk unpacker does not take streamed chunks.
        let p = BlockCompressor::for_codec(3, true)
            .unwrap()
            .pack(&data[..PACK_CHUNK]);
        let e = unpack_all(&p.unwrap(), PACK_CHUNK as u64, usize::MAX).unwrap_err();
        assert!(e.to_string().contains("may not be empty or expand"), "{e}");
    }

    #[test]
    fn a_block_that_does_not_pay_goes_raw_and_the_next_starts_a_new_frame() {
        let mut c = BlockCompressor::for_codec(1, true).unwrap();
        let mut dec = StreamDecoder::new().unwrap();
        let first = text(PACK_CHUNK);
        let p = c.pack(&first).unwrap();
        assert_eq!(
            unpack_stream(&p, first.len() as u64, &mut dec).unwrap(),
            first
        );
        // Random: not worthwhile; the receiver never sees its output.
        assert_eq!(c.pack(&random(PACK_CHUNK)), None);
        let third = text(PACK_CHUNK / 2);
        let p = c.pack(&third).unwrap();
        assert_ne!(
            u32::from_be_bytes(p[..4].try_into().unwrap()) & STREAM_RESET,
            0
        );
        assert_eq!(
            unpack_stream(&p, third.len() as u64, &mut dec).unwrap(),
            third
        );
    }

    #[test]
    fn hostile_streamed_chunks_are_refused_and_bombs_bounded() {
        let raw = text(PACK_CHUNK);
        let good = BlockCompressor::for_codec(3, true)
            .unwrap()
            .pack(&raw)
            .unwrap();
        // Without the reset bit: continues no stream.
        let mut no_reset = good.clone();
        no_reset[0] &= 0x7f;
        let e = unpack_stream(
            &no_reset,
            raw.len() as u64,
            &mut StreamDecoder::new().unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("continues no zstd stream"), "{e}");
        // Declared for a shorter block: it decodes to more than that.
        let e = unpack_stream(&good, 1000, &mut StreamDecoder::new().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        // A bomb: 64 MiB of zeros in one flushed stream, said to be one chunk.
        let mut enc = BlockCompressor::for_codec(1, true).unwrap();
        let s = enc.stream.as_mut().unwrap();
        s.reset_next = false;
        let mut bomb = Vec::with_capacity(1 << 20);
        let zeros = vec![0u8; 64 * MIB];
        let mut input = zstd::zstd_safe::InBuffer::around(&zeros);
        let mut o = zstd::zstd_safe::OutBuffer::around(&mut bomb);
        while s
            .cctx
            .compress_stream2(
                &mut o,
                &mut input,
                zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            )
            .unwrap()
            != 0
        {}
        let mut payload = ((bomb.len() as u32) | STREAM_RESET).to_be_bytes().to_vec();
        payload.extend_from_slice(&bomb);
        let e = unpack_stream(
            &payload,
            PACK_CHUNK as u64,
            &mut StreamDecoder::new().unwrap(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("decodes to more than its 1048576 bytes"),
            "{e}"
        );
        // Garbage after a reset, and a failed decoder takes no continuation.
        let mut dec = StreamDecoder::new().unwrap();
        let mut junk = (16u32 | STREAM_RESET).to_be_bytes().to_vec();
        junk.extend_from_slice(b"not a zstd frame");
        assert!(unpack_stream(&junk, 16, &mut dec).is_err());
        let e = unpack_stream(&no_reset, raw.len() as u64, &mut dec).unwrap_err();
        assert!(e.to_string().contains("continues no zstd stream"), "{e}");
        // A window beyond the bound is refused.
        let mut big = zstd::zstd_safe::CCtx::create();
        big.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
            .unwrap();
        let mut frame = Vec::with_capacity(1 << 20);
        let mut input = zstd::zstd_safe::InBuffer::around(&raw[..4096]);
        let mut o = zstd::zstd_safe::OutBuffer::around(&mut frame);
        big.compress_stream2(
            &mut o,
            &mut input,
            zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
        )
        .unwrap();
        let mut payload = ((frame.len() as u32) | STREAM_RESET).to_be_bytes().to_vec();
        payload.extend_from_slice(&frame);
        let e = unpack_stream(&payload, 4096, &mut StreamDecoder::new().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("could not decode a streamed chunk"),
            "{e}"
        );
    }

    #[test]
    fn compress_modes_parse_and_print() {
        for (s, m) in [
            ("auto", Compress::Auto),
            ("off", Compress::Off),
            ("zstd", Compress::Zstd(3)),
            ("zstd:19", Compress::Zstd(19)),
        ] {
            assert_eq!(s.parse::<Compress>().unwrap(), m);
        }
        assert_eq!(Compress::Zstd(7).to_string(), "zstd:7");
        for bad in ["zstd:0", "zstd:20", "gzip", "zstd:x", ""] {
            let e = bad.parse::<Compress>().unwrap_err();
            assert!(e.to_string().contains("expected auto, off, zstd"), "{e}");
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn policy_compresses_on_a_slow_link() {
        // 100 Mbit/s link (12.5 MB/s), compression at 400 MB/s, ratio 0.4.
        let mut p = AutoCompressor::new(AutoConfig::default());
        for _ in 0..50 {
            assert!(p.should_compress());
            p.record_compression(MIB, Some(MIB * 4 / 10), Duration::from_micros(2621));
            p.record_send(MIB * 4 / 10, ms(34));
        }
        assert!(p.worth_it());
        assert!((p.ratio().unwrap() - 0.4).abs() < 0.01);
    }

    #[test]
    fn policy_moves_to_level_3_on_a_slow_link_and_back_when_it_speeds_up() {
        // 100 Mbit/s link, level 1 at 400 MB/s, ratio 0.4: 12.5 MB/s of
        // wire is 31 MB/s raw, a thirteenth of what level 1 produces.
        let mut p = AutoCompressor::new(AutoConfig::default());
        assert_eq!(p.next_level(), Some(AUTO_LEVEL));
        p.record_send(MIB * 4 / 10, ms(34));
        p.record_compression(MIB, Some(MIB * 4 / 10), Duration::from_micros(2621));
        assert_eq!(p.next_level(), Some(AUTO_SLOW_LINK_LEVEL));
        // Level 3 at 200 MB/s on the same link: stays.
        for _ in 0..20 {
            p.record_compression(MIB, Some(MIB * 3 / 10), Duration::from_micros(5242));
            p.record_send(MIB * 3 / 10, ms(25));
        }
        assert_eq!(p.level(), AUTO_SLOW_LINK_LEVEL);
        // The link becomes 1 GB/s: level 3 can no longer keep ahead of it.
        for _ in 0..40 {
            p.record_send(MIB * 3 / 10, Duration::from_micros(300));
            p.record_compression(MIB, Some(MIB * 3 / 10), Duration::from_micros(5242));
        }
        assert_eq!(p.level(), AUTO_LEVEL);
    }

    #[test]
    fn policy_sends_raw_when_the_cpu_is_the_bottleneck() {
        // Loopback at 2 GB/s, compression at 400 MB/s: raw is faster.
        let mut p = AutoCompressor::new(AutoConfig::default());
        assert!(p.should_compress());
        p.record_compression(MIB, Some(MIB * 4 / 10), Duration::from_micros(2621));
        p.record_send(MIB, Duration::from_micros(524));
        assert!(!p.worth_it());
        let tried = (0..1024).filter(|_| p.should_compress()).count();
        assert_eq!(tried, 4, "only probes, one in 256");
    }

    #[test]
    fn policy_sees_the_link_through_bursty_writes() {
        // A 12.5 MB/s link behind a socket buffer: two of three 1 MiB
        // writes return at once, the third waits for all three.
        let mut p = AutoCompressor::new(AutoConfig::default());
        p.record_compression(MIB, Some(MIB / 3), Duration::from_micros(2621));
        for i in 0..60 {
            let t = if i % 3 == 2 {
                ms(250)
            } else {
                Duration::from_micros(50)
            };
            p.record_send(MIB, t);
        }
        assert!(p.worth_it(), "the link, not the CPU, is the bottleneck");
    }

    #[test]
    fn policy_gives_up_on_incompressible_data_and_reprobes() {
        let cfg = AutoConfig::default();
        let mut p = AutoCompressor::new(cfg);
        // Slow link: only the data decides.
        for i in 0..cfg.give_up_after {
            assert!(p.should_compress(), "block {i}");
            p.record_compression(MIB, None, ms(3));
            p.record_send(MIB, ms(80));
        }
        assert!(!p.worth_it());
        let tried: Vec<usize> = (0..1000).filter(|_| p.should_compress()).collect();
        assert_eq!(tried, vec![255, 511, 767]);
        // A probe that shrinks resumes compression at once.
        p.record_compression(MIB, Some(MIB / 3), ms(3));
        assert_eq!(p.misses, 0);
        assert!(p.should_compress());
    }

    #[test]
    fn policy_ignores_a_few_misses_in_compressible_data() {
        let mut p = AutoCompressor::new(AutoConfig::default());
        for i in 0..100 {
            assert!(p.should_compress(), "block {i}");
            // One block in 4 is an embedded JPEG that does not shrink.
            let out = (i % 4 != 0).then_some(MIB / 4);
            p.record_compression(MIB, out, ms(3));
            p.record_send(out.unwrap_or(MIB), ms(80));
        }
    }
}
