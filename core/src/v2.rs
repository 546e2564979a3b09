//! Protocol version 2, as pure functions over bytes: block-verified resume,
//! block-level repair and errors in words, negotiated so that version 1
//! (`proto`) is untouched whenever either side is a legacy peer.
//!
//! Negotiation: the client adds `"bt": {"v": 2, "block": B}` to the legacy
//! header (a legacy server ignores unknown keys). A version-2 server answers
//! with [`MAGIC`] in place of the 8-byte offset: read as an offset it is
//! larger than any legal file size, so a new client tells the two replies
//! apart, and a legacy client never sees it because it never asks.
//!
//! Not for I/O: reading frames off a socket, files and retries belong to
//! `client` and `server`. See `docs/PROTOCOL.md` for the exchange.

use crate::json::{self, Field, Value};
use crate::proto::{Header, MAX_HEADER_LEN};
use crate::{Error, ErrorKind, Result};

/// What a version-2 server sends instead of the legacy offset. As a u64 it
/// is above `i64::MAX`, which no legal offset is.
pub const MAGIC: [u8; 8] = [0xFF, b'B', b'T', b'v', b'2', 0, 0, 0];

/// The protocol version this module implements.
pub const VERSION: u64 = 2;

/// Smallest and largest block size either side accepts.
pub const MIN_BLOCK: u64 = 64 * 1024;
/// See [`MIN_BLOCK`].
pub const MAX_BLOCK: u64 = 256 << 20;

/// Largest server frame payload (a block list of 4 M blocks).
pub const MAX_SERVER_FRAME: usize = 16 << 20;

/// How many blocks a file may have at most (the list stays under 64 KiB of
/// CRCs for any file up to 16 TiB at the largest block size).
const TARGET_BLOCKS: u64 = 16384;

/// The most blocks an offer may declare: 2^17, which [`block_size_for`]
/// never exceeds below 32 TiB. It bounds what a connection can make the
/// server hold (SECURITY.md gives the formula: 29 bytes per block at most,
/// 3.6 MiB at the bound) and keeps a repair list at most 1 MiB, well
/// inside [`MAX_SERVER_FRAME`]. (Before this bound, 64 unauthenticated
/// connections declaring 4 M blocks each took a server to 3.27 GB.)
pub const MAX_BLOCKS: u64 = 1 << 17;

/// The longest text an error or verdict frame carries; longer words are
/// cut at a character boundary, never mid-frame.
pub const MAX_TEXT: usize = 4096;

/// The block size for a file: 1 MiB up to 1 GiB (fine-grained repair), then
/// 4 MiB, doubling past 64 GiB so the block list never exceeds 16384 entries
/// (64 MiB blocks for a 1 TB file).
///
/// ```
/// use bigtransfer_core::v2::block_size_for;
/// assert_eq!(block_size_for(10), 1 << 20);
/// assert_eq!(block_size_for(1 << 30), 1 << 20);
/// assert_eq!(block_size_for(2 << 30), 4 << 20);
/// assert_eq!(block_size_for(1_000_000_000_000), 64 << 20);
/// ```
pub fn block_size_for(filesize: u64) -> u64 {
    if filesize <= 1 << 30 {
        return 1 << 20;
    }
    let per = filesize.div_ceil(TARGET_BLOCKS);
    per.next_power_of_two().clamp(4 << 20, MAX_BLOCK)
}

/// Number of blocks of a file (0 for an empty file).
pub fn block_count(filesize: u64, block: u64) -> u64 {
    filesize.div_ceil(block)
}

/// Byte range `(offset, len)` of block `idx`.
pub fn block_range(filesize: u64, block: u64, idx: u64) -> (u64, u64) {
    let off = idx.saturating_mul(block).min(filesize);
    (off, block.min(filesize - off))
}

/// The CRC-32 of a whole file from the CRC-32s of its blocks, in order
/// (no byte is read again).
///
/// ```
/// use bigtransfer_core::v2::combine;
/// let data = b"hello, world: a file of several blocks";
/// let crcs: Vec<u32> = data.chunks(8).map(crc32fast::hash).collect();
/// assert_eq!(combine(&crcs, data.len() as u64, 8), crc32fast::hash(data));
/// ```
pub fn combine(crcs: &[u32], filesize: u64, block: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (i, &c) in crcs.iter().enumerate() {
        let (_, len) = block_range(filesize, block, i as u64);
        h.combine(&crc32fast::Hasher::new_with_initial_len(c, len));
    }
    h.finalize()
}

/// The version-2 part of a client's header (the `"bt"` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The protocol version the client speaks.
    pub version: u64,
    /// The block size the client proposes.
    pub block_size: u64,
    /// The revision of version 2 the client speaks: 1 for the first
    /// clients (errors as bare text), [`REVISION`] for clients that read
    /// [`ServerMsg::Fault`] frames (an error code plus words). A missing
    /// `"rev"` key is revision 1.
    pub rev: u64,
    /// An identifier of the source file, the same on every attempt of one
    /// upload (`"sid"`, 32 hex digits; revision 2 clients). The server
    /// lets a newcomer take over a live upload only when it is the same
    /// source, so nobody else can kick a running upload off its name.
    pub source: Option<[u8; 16]>,
}

/// The revision of version 2 from which a client reads
/// [`ServerMsg::Fault`] frames (see [`Offer::rev`]).
pub const REVISION: u64 = 2;

/// The revision of version 2 from which a client reads
/// [`ServerMsg::HeldSet`] (a held list with holes); what this module's
/// client advertises. A server sends it only to such clients.
pub const REV_HOLES: u64 = 3;

/// The revision of version 2 from which a client reads
/// [`Verdict::Stored`] (what storing did to the name: unchanged, the old
/// file kept as a version, or replaced); what this module's client
/// advertises. Older clients get a plain [`Verdict::Ok`].
pub const REV_KEEP: u64 = 4;

/// What storing a verified upload did to its name (told to clients of
/// revision [`REV_KEEP`] and later, and logged).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoredAs {
    /// Nothing was stored under the name before.
    #[default]
    New,
    /// The same content was stored already: left untouched.
    Unchanged,
    /// A different content was there: kept under this name (a numbered
    /// version beside it).
    Kept(String),
    /// A different content was there and was replaced (`--overwrite`).
    Replaced,
}

/// Why a version-2 server refused or stopped an upload, as a number a
/// client acts on (the words travel beside it). Carried by
/// [`ServerMsg::Fault`] to clients of revision 2 and later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultCode {
    /// The client broke the protocol (malformed frame or header). For good.
    BadRequest,
    /// The file name is not acceptable. For good.
    NameRefused,
    /// Over the server's `--max-file-size`. For good.
    TooLarge,
    /// Not enough free space (or under `--min-free`), or the disk filled
    /// up. For good, until someone frees space.
    NoSpace,
    /// The server requires a token and the client sent none. For good.
    AuthRequired,
    /// The client's proof of the token was wrong. For good.
    AuthFailed,
    /// A newer connection for the same source took this upload over
    /// (usually this client's own reconnection). Retry.
    TakenOver,
    /// The name is being uploaded from another source, or the server is
    /// full or still releasing an older connection. Retry later.
    Busy,
    /// The server could not read or write its storage; what it holds is
    /// kept. Retry.
    Storage,
    /// The server is shutting down; what it holds is kept. Retry.
    ShuttingDown,
    /// The connection was too slow (a phase missed its deadline or the
    /// data rate fell under the server's minimum). Retry.
    TooSlow,
    /// Something went wrong inside the server. Retry.
    Internal,
    /// A download (`"op": "get"`) named a file the storage directory does
    /// not hold (or not as a regular file). For good.
    NotFound,
    /// The file being downloaded changed on the server while it was read
    /// (its stamp moved, or a block no longer has the CRC-32 announced).
    /// Retry: the next attempt gets the new version's reference.
    Changed,
    /// A code this client does not know (from a newer server). Treated as
    /// for good, so an unknown failure can never loop.
    Unknown(u16),
}

impl FaultCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            FaultCode::BadRequest => 1,
            FaultCode::NameRefused => 2,
            FaultCode::TooLarge => 3,
            FaultCode::NoSpace => 4,
            FaultCode::AuthRequired => 5,
            FaultCode::AuthFailed => 6,
            FaultCode::TakenOver => 7,
            FaultCode::Busy => 8,
            FaultCode::Storage => 9,
            FaultCode::ShuttingDown => 10,
            FaultCode::TooSlow => 11,
            FaultCode::Internal => 12,
            FaultCode::NotFound => 13,
            FaultCode::Changed => 14,
            FaultCode::Unknown(n) => n,
        }
    }

    /// The code for a number read off the wire.
    pub fn from_u16(n: u16) -> FaultCode {
        match n {
            1 => FaultCode::BadRequest,
            2 => FaultCode::NameRefused,
            3 => FaultCode::TooLarge,
            4 => FaultCode::NoSpace,
            5 => FaultCode::AuthRequired,
            6 => FaultCode::AuthFailed,
            7 => FaultCode::TakenOver,
            8 => FaultCode::Busy,
            9 => FaultCode::Storage,
            10 => FaultCode::ShuttingDown,
            11 => FaultCode::TooSlow,
            12 => FaultCode::Internal,
            13 => FaultCode::NotFound,
            14 => FaultCode::Changed,
            n => FaultCode::Unknown(n),
        }
    }

    /// Whether a client should retry (after a pause) rather than give up:
    /// the cause is on the server's side or in time, not in the request.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FaultCode::TakenOver
                | FaultCode::Busy
                | FaultCode::Storage
                | FaultCode::ShuttingDown
                | FaultCode::TooSlow
                | FaultCode::Internal
                | FaultCode::Changed
        )
    }
}

/// Parses a header of either version: the legacy keys and, from a new
/// client, its offer (the `"bt"` key). `crc32` may be `null` only with an
/// offer (the client does not know it yet; it reads as 0).
///
/// ```
/// use bigtransfer_core::v2::parse_header;
/// let (h, offer) = parse_header(br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 2, "block": 65536}}"#)?;
/// assert_eq!((h.crc32, offer.unwrap().block_size), (0, 65536));
/// assert!(parse_header(br#"{"filename": "a", "filesize": 5, "crc32": null}"#).is_err());
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn parse_header(json_bytes: &[u8]) -> Result<(Header, Option<Offer>)> {
    let value = json::parse(json_bytes)?;
    // The size is needed to check the offer, and the offer decides whether
    // a null CRC-32 is acceptable: parse the legacy keys leniently first,
    // then strictly once the offer is known. A "bt" key that is not a valid
    // version-2 offer (say {"v": 1}) makes the client a version-1 client,
    // which must send a real CRC-32: otherwise the upload could only end in
    // CRC32_ERROR after the whole file had travelled.
    let lenient = crate::proto::parse_header_value(&value, true)?;
    let offer = offer_of(&value, lenient.filesize)?;
    let header = crate::proto::parse_header_value(&value, offer.is_some())?;
    Ok((header, offer))
}

/// Reads the `"bt"` key of a header. `Ok(None)`: a legacy client. A `"bt"`
/// key of the wrong shape is an error, since only a new client sends one.
pub fn parse_offer(json_bytes: &[u8], filesize: u64) -> Result<Option<Offer>> {
    offer_of(&json::parse(json_bytes)?, filesize)
}

fn offer_of(value: &Value, filesize: u64) -> Result<Option<Offer>> {
    let Some(bt) = value.get("bt") else {
        return Ok(None);
    };
    let num = |k: &str| {
        bt.get(k).and_then(|v| {
            if let Value::Number(n) = v {
                n.as_u64()
            } else {
                None
            }
        })
    };
    let version =
        num("v").ok_or_else(|| protocol("\"bt\".\"v\" must be a non-negative integer"))?;
    if version < VERSION {
        return Ok(None);
    }
    let block_size =
        num("block").ok_or_else(|| protocol("\"bt\".\"block\" must be a non-negative integer"))?;
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(protocol(format!(
            "block size {block_size} must be a power of two from {MIN_BLOCK} to {MAX_BLOCK}"
        )));
    }
    if block_count(filesize, block_size) > MAX_BLOCKS {
        return Err(protocol(format!(
            "block size {block_size} gives too many blocks for {filesize} bytes"
        )));
    }
    // A client of the first revision sends no "rev"; a newer one says
    // which it reads. Anything but a small integer is a malformed offer.
    let rev = match bt.get("rev") {
        None => 1,
        Some(_) => {
            num("rev").ok_or_else(|| protocol("\"bt\".\"rev\" must be a non-negative integer"))?
        }
    };
    let source = match bt.get("sid") {
        None => None,
        Some(Value::String(hex)) => Some(
            parse_sid(hex)
                .ok_or_else(|| protocol("\"bt\".\"sid\" must be 32 hexadecimal digits"))?,
        ),
        Some(_) => return Err(protocol("\"bt\".\"sid\" must be a string")),
    };
    Ok(Some(Offer {
        version: VERSION,
        block_size,
        rev,
        source,
    }))
}

/// Encodes a header frame with the version-2 offer: the legacy header (in
/// the legacy key order) plus `"bt"`. See
/// [`encode_header_unknown_crc`] for a client that does not know the CRC-32
/// yet.
///
/// ```
/// use bigtransfer_core::proto::{parse_header, Header};
/// use bigtransfer_core::v2::{encode_header, parse_offer, Offer};
/// let h = Header { filename: "a.bin".into(), filesize: 5, crc32: 0 };
/// let offer = Offer { version: 2, block_size: 1 << 20, rev: 2, source: Some([7; 16]) };
/// let frame = encode_header(&h, offer)?;
/// assert_eq!(parse_header(&frame[4..])?, h);
/// assert_eq!(parse_offer(&frame[4..], 5)?, Some(offer));
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn encode_header(h: &Header, offer: Offer) -> Result<Vec<u8>> {
    encode(h, Some(h.crc32), offer, &[])
}

/// Encodes a version-2 header whose `crc32` is `null`: the client does not
/// know the CRC-32 yet. A version-2 server does not need it; a legacy server
/// refuses the header (wrong type) by closing, without touching what it
/// holds, which is how the client learns it must hash the file and speak
/// version 1.
pub fn encode_header_unknown_crc(h: &Header, offer: Offer) -> Result<Vec<u8>> {
    encode(h, None, offer, &[])
}

/// Encodes a version-2 header (`crc`: `None` for a `null` CRC-32) that
/// also offers to send compressed data frames with these codecs
/// (`"bt"."z"`, e.g. `["zstd"]`; empty: no key, as the other encoders).
/// A server that takes one says so with [`ServerMsg::Codec`]; an older
/// version-2 server ignores the key and gets raw frames only.
///
/// ```
/// use bigtransfer_core::proto::Header;
/// use bigtransfer_core::v2::{encode_header_with_codecs, offered_codecs, Offer};
/// let h = Header { filename: "a".into(), filesize: 5, crc32: 0 };
/// let offer = Offer { version: 2, block_size: 1 << 20, rev: 2, source: None };
/// let frame = encode_header_with_codecs(&h, None, offer, &["zstd"])?;
/// assert_eq!(offered_codecs(&frame[4..])?, vec!["zstd".to_string()]);
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn encode_header_with_codecs(
    h: &Header,
    crc: Option<u32>,
    offer: Offer,
    codecs: &[&str],
) -> Result<Vec<u8>> {
    encode(h, crc, offer, codecs)
}

/// Most codec names a header may offer, and their longest name: the list
/// is for a handful of algorithms, not a channel.
const MAX_CODECS: usize = 8;
const MAX_CODEC_NAME: usize = 32;

/// The codecs a version-2 header offers for compressed data frames
/// (`"bt"."z"`; empty without it). A `"z"` that is not a short list of
/// short strings is a malformed offer.
pub fn offered_codecs(json_bytes: &[u8]) -> Result<Vec<String>> {
    let value = json::parse(json_bytes)?;
    let Some(z) = value.get("bt").and_then(|bt| bt.get("z")) else {
        return Ok(Vec::new());
    };
    let bad = || protocol("\"bt\".\"z\" must be a list of at most 8 codec names");
    let Value::Array(items) = z else {
        return Err(bad());
    };
    if items.len() > MAX_CODECS {
        return Err(bad());
    }
    items
        .iter()
        .map(|v| match v {
            Value::String(n) if n.len() <= MAX_CODEC_NAME => Ok(n.clone()),
            _ => Err(bad()),
        })
        .collect()
}

fn encode(h: &Header, crc: Option<u32>, offer: Offer, codecs: &[&str]) -> Result<Vec<u8>> {
    encode_ext(h, crc, offer, codecs, &Extra::default())
}

/// Keys of a version-2 offer beyond the common ones: parallel streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    /// Ask for a session of this many streams (`"bt"."streams"`).
    pub streams: Option<u32>,
    /// Join a session (`"bt"."join"`).
    pub join: Option<crate::session::Join>,
}

/// Encodes a version-2 header as [`encode_header_with_codecs`] does,
/// with the parallel-stream keys of `extra`.
pub fn encode_header_ext(
    h: &Header,
    crc: Option<u32>,
    offer: Offer,
    codecs: &[&str],
    extra: &Extra,
) -> Result<Vec<u8>> {
    encode_ext(h, crc, offer, codecs, extra)
}

fn encode_ext(
    h: &Header,
    crc: Option<u32>,
    offer: Offer,
    codecs: &[&str],
    extra: &Extra,
) -> Result<Vec<u8>> {
    let crc = crc.map_or(Field::Null, |c| Field::Int(u64::from(c)));
    let sid = offer.source.map(|sid| sid_hex(&sid));
    let mut bt = vec![
        ("v", Field::Int(offer.version)),
        ("block", Field::Int(offer.block_size)),
        ("rev", Field::Int(offer.rev)),
    ];
    if let Some(sid) = &sid {
        bt.push(("sid", Field::Str(sid)));
    }
    if !codecs.is_empty() {
        bt.push(("z", Field::StrList(codecs)));
    }
    if let Some(n) = extra.streams {
        bt.push(("streams", Field::Int(u64::from(n))));
    }
    let join = extra.join.as_ref().map(|j| j.hex());
    if let Some([s, n, p]) = &join {
        let members = vec![
            ("s", Field::Str(s)),
            ("n", Field::Str(n)),
            ("p", Field::Str(p)),
        ];
        bt.push(("join", Field::Object(members)));
    }
    let json = json::write_object(&[
        ("filename", Field::Str(&h.filename)),
        ("filesize", Field::Int(h.filesize)),
        ("crc32", crc),
        ("bt", Field::Object(bt)),
    ]);
    if json.len() > MAX_HEADER_LEN {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the header would be over 64 KiB (file name too long?)",
        ));
    }
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    Ok(frame)
}

/// The source id (`bt.sid`) of a file: the first 16 bytes of a SHA-256
/// over what identifies the file on the client (its canonical path and its
/// stamp: size, mtime, inode, ctime), each part length-prefixed. The same
/// on every attempt while the file is unchanged, whichever process makes
/// it, so a killed and restarted client can take over its own stale
/// connection; unknowable to another client, which therefore cannot kick
/// a running upload off its name.
///
/// ```
/// use bigtransfer_core::v2::source_id;
/// let a = source_id(&[b"/data/x.img", &5u64.to_be_bytes()]);
/// assert_eq!(a, source_id(&[b"/data/x.img", &5u64.to_be_bytes()]));
/// assert_ne!(a, source_id(&[b"/data/x.im", &[b'g'], &5u64.to_be_bytes()]));
/// ```
pub fn source_id(parts: &[&[u8]]) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"bigtransfer source id v1\0");
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

fn parse_sid(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn sid_hex(sid: &[u8; 16]) -> String {
    sid.iter().map(|b| format!("{b:02x}")).collect()
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

/// A message from a version-2 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// What the server holds: the first `held` bytes, as blocks of
    /// `block_size` with these CRC-32s (the last may be short).
    Held {
        /// Bytes held (a multiple of `block_size`, or the file size).
        held: u64,
        /// Block size in force.
        block_size: u64,
        /// CRC-32 of each held block, in order.
        crcs: Vec<u32>,
    },
    /// What the server holds, with holes (to clients of revision
    /// [`REV_HOLES`] and later): runs of held blocks and the CRC-32 of each
    /// held block, in order.
    HeldSet {
        /// Block size in force.
        block_size: u64,
        /// Runs of held blocks: (first block, how many), ascending, not
        /// empty, not touching each other.
        runs: Vec<(u64, u64)>,
        /// CRC-32 of each held block, run after run.
        crcs: Vec<u32>,
    },
    /// The server refuses or has failed, and says why; it closes next.
    /// Sent to revision-1 clients; newer ones get [`ServerMsg::Fault`].
    Error(String),
    /// The server refuses or has failed: a code to act on and the words
    /// for a person; it closes next.
    Fault(FaultCode, String),
    /// The server requires authentication: answer this nonce (see
    /// [`crate::auth`]).
    Challenge([u8; crate::auth::NONCE_LEN]),
    /// Inside TLS: the nonce and the server's proof that it knows the
    /// token on this connection ([`crate::auth::Token::server_proof`]);
    /// the same tag as [`ServerMsg::Challenge`], 64 bytes of payload.
    BoundChallenge {
        /// The nonce to answer.
        nonce: [u8; crate::auth::NONCE_LEN],
        /// HMAC over the nonce, the channel binding and the header.
        proof: [u8; crate::auth::ANSWER_LEN],
    },
    /// The result after the client's end frame.
    Verdict(Verdict),
    /// The server takes compressed data frames with this codec, one the
    /// client offered (`"bt"."z"`). Sent only to a client that offered
    /// one, before the held list; without it every data frame is raw.
    Codec(String),
    /// The session further connections may join (parallel streams): sent
    /// only to a client that asked with `"bt"."streams"`, before the held
    /// list (see [`crate::session`]).
    Join(crate::session::Ticket),
    /// A page of the answer to a list request (see [`crate::listing`]).
    ListPage {
        /// The entries of this page.
        entries: Vec<crate::listing::ListEntry>,
        /// Whether this is the last page.
        last: bool,
    },
}

/// The server's answer to an end frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every block verified and the file stored durably (`CRC32_OK`).
    Ok,
    /// These blocks arrived damaged or are missing: send them again.
    Repair(Vec<u64>),
    /// The upload failed (`CRC32_ERROR`), with the reason; the server has
    /// discarded what it held.
    Failed(String),
    /// Like [`Verdict::Ok`], saying what storing did to the name (to
    /// clients of revision [`REV_KEEP`] and later; never [`StoredAs::New`]).
    Stored(StoredAs),
}

const TAG_HELD: u8 = b'H';
const TAG_HELD_SET: u8 = b'S';
const TAG_ERROR: u8 = b'X';
const TAG_VERDICT: u8 = b'V';
const TAG_CHALLENGE: u8 = b'C';
const TAG_FAULT: u8 = b'F';
const TAG_CODEC: u8 = b'Z';
const TAG_JOIN: u8 = b'J';
const TAG_LIST: u8 = b'L';

/// Encodes a server message as a frame: tag byte, u32 payload length, payload.
pub fn encode_server_msg(msg: &ServerMsg) -> Vec<u8> {
    let (tag, mut payload) = match msg {
        ServerMsg::Held {
            held,
            block_size,
            crcs,
        } => {
            let mut p = Vec::with_capacity(20 + 4 * crcs.len());
            p.extend_from_slice(&held.to_be_bytes());
            p.extend_from_slice(&block_size.to_be_bytes());
            p.extend_from_slice(&(crcs.len() as u32).to_be_bytes());
            for c in crcs {
                p.extend_from_slice(&c.to_be_bytes());
            }
            (TAG_HELD, p)
        }
        ServerMsg::HeldSet {
            block_size,
            runs,
            crcs,
        } => (TAG_HELD_SET, held_set_payload(*block_size, runs, crcs)),
        ServerMsg::Error(m) => (TAG_ERROR, capped(m).as_bytes().to_vec()),
        ServerMsg::Fault(code, m) => {
            let mut p = code.to_u16().to_be_bytes().to_vec();
            p.extend_from_slice(capped(m).as_bytes());
            (TAG_FAULT, p)
        }
        ServerMsg::Challenge(n) => (TAG_CHALLENGE, n.to_vec()),
        ServerMsg::Codec(name) => (TAG_CODEC, capped(name).as_bytes().to_vec()),
        ServerMsg::Join(t) => (TAG_JOIN, t.payload()),
        ServerMsg::BoundChallenge { nonce, proof } => (TAG_CHALLENGE, [&nonce[..], proof].concat()),
        ServerMsg::Verdict(Verdict::Ok) => (TAG_VERDICT, vec![0]),
        ServerMsg::Verdict(Verdict::Repair(idx)) => {
            let mut p = vec![1];
            p.extend_from_slice(&(idx.len() as u32).to_be_bytes());
            for i in idx {
                p.extend_from_slice(&i.to_be_bytes());
            }
            (TAG_VERDICT, p)
        }
        ServerMsg::Verdict(Verdict::Failed(m)) => {
            let mut p = vec![2];
            p.extend_from_slice(capped(m).as_bytes());
            (TAG_VERDICT, p)
        }
        ServerMsg::Verdict(Verdict::Stored(how)) => (TAG_VERDICT, stored_payload(how)),
        ServerMsg::ListPage { entries, last } => {
            (TAG_LIST, crate::listing::page_payload(entries, *last))
        }
    };
    // Every list is bounded by MAX_BLOCKS and every text by MAX_TEXT, so a
    // frame always fits: a frame cut short here would carry a count that
    // disagrees with its length.
    debug_assert!(payload.len() <= MAX_SERVER_FRAME);
    let mut f = vec![tag];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.append(&mut payload);
    f
}

/// A stored verdict: 3, then one byte (0 new, 1 unchanged, 2 kept, 3
/// replaced), then for "kept" the version's name in UTF-8.
fn stored_payload(how: &StoredAs) -> Vec<u8> {
    match how {
        StoredAs::New => vec![3, 0],
        StoredAs::Unchanged => vec![3, 1],
        StoredAs::Kept(v) => [&[3u8, 2][..], capped(v).as_bytes()].concat(),
        StoredAs::Replaced => vec![3, 3],
    }
}

fn parse_stored(p: &[u8]) -> Result<StoredAs> {
    match p {
        [0] => Ok(StoredAs::New),
        [1] => Ok(StoredAs::Unchanged),
        // Strict (UTF-8, within the text bound), so a frame re-encodes
        // exactly as it came.
        [2, name @ ..] if !name.is_empty() && name.len() <= MAX_TEXT => std::str::from_utf8(name)
            .map(|n| StoredAs::Kept(n.to_owned()))
            .map_err(|_| protocol("the kept version's name is not UTF-8")),
        [3] => Ok(StoredAs::Replaced),
        _ => Err(protocol("malformed stored verdict")),
    }
}

fn held_set_payload(block_size: u64, runs: &[(u64, u64)], crcs: &[u32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + 16 * runs.len() + 4 * crcs.len());
    p.extend_from_slice(&block_size.to_be_bytes());
    p.extend_from_slice(&(runs.len() as u32).to_be_bytes());
    for (first, count) in runs {
        p.extend_from_slice(&first.to_be_bytes());
        p.extend_from_slice(&count.to_be_bytes());
    }
    for c in crcs {
        p.extend_from_slice(&c.to_be_bytes());
    }
    p
}

/// Decodes a held set: runs ascending, not empty, not touching, within
/// [`MAX_BLOCKS`], and exactly one CRC-32 per held block.
fn parse_held_set(p: &[u8]) -> Result<ServerMsg> {
    if p.len() < 12 {
        return Err(protocol("short held-set frame"));
    }
    let (block_size, n) = (be_u64(&p[0..8]), be_u32(&p[8..12]) as usize);
    let crc_at = n
        .checked_mul(16)
        .and_then(|r| r.checked_add(12))
        .filter(|&e| e <= p.len())
        .ok_or_else(|| protocol("held-set frame shorter than its runs"))?;
    let mut runs = Vec::with_capacity(n);
    let (mut next, mut total) = (0u64, 0u64);
    for r in p[12..crc_at].chunks_exact(16) {
        let (first, count) = (be_u64(&r[..8]), be_u64(&r[8..]));
        let end = first.checked_add(count).filter(|&e| e <= MAX_BLOCKS);
        if count == 0 || first < next || (next > 0 && first == next) || end.is_none() {
            return Err(protocol(
                "held-set runs must be ascending, apart and not empty",
            ));
        }
        next = end.unwrap_or(0);
        total += count;
        runs.push((first, count));
    }
    if (p.len() - crc_at) as u64 != 4 * total {
        return Err(protocol("held-set frame length does not match its runs"));
    }
    let crcs = p[crc_at..].chunks_exact(4).map(be_u32).collect();
    Ok(ServerMsg::HeldSet {
        block_size,
        runs,
        crcs,
    })
}

/// `text` cut to at most [`MAX_TEXT`] bytes at a character boundary.
fn capped(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Decodes a server frame head (tag, payload length), checking both.
pub fn parse_server_head(head: [u8; 5]) -> Result<(u8, usize)> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let tags = [
        TAG_HELD,
        TAG_HELD_SET,
        TAG_ERROR,
        TAG_VERDICT,
        TAG_CHALLENGE,
        TAG_FAULT,
        TAG_CODEC,
        TAG_JOIN,
        TAG_LIST,
    ];
    if !tags.contains(&head[0]) {
        return Err(protocol(format!(
            "unknown server frame type 0x{:02x}",
            head[0]
        )));
    }
    if len > MAX_SERVER_FRAME {
        return Err(protocol(format!(
            "server frame of {len} bytes is over the limit"
        )));
    }
    Ok((head[0], len))
}

/// A challenge: 32 bytes of nonce, and inside TLS 32 of server proof.
fn parse_challenge(p: &[u8]) -> Result<ServerMsg> {
    const N: usize = crate::auth::NONCE_LEN;
    let (nonce, proof) = p.split_at(p.len().min(N));
    let nonce: [u8; N] = nonce
        .try_into()
        .map_err(|_| protocol("a challenge must be 32 or 64 bytes"))?;
    match proof.len() {
        0 => Ok(ServerMsg::Challenge(nonce)),
        crate::auth::ANSWER_LEN => Ok(ServerMsg::BoundChallenge {
            nonce,
            proof: proof.try_into().map_err(|_| protocol("short proof"))?,
        }),
        _ => Err(protocol("a challenge must be 32 or 64 bytes")),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes a server frame's payload, given its tag.
pub fn parse_server_msg(tag: u8, p: &[u8]) -> Result<ServerMsg> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match tag {
        TAG_HELD => {
            if p.len() < 20 {
                return Err(protocol("short held frame"));
            }
            let (held, block_size, n) = (
                be_u64(&p[0..8]),
                be_u64(&p[8..16]),
                be_u32(&p[16..20]) as usize,
            );
            if p.len() != 20 + 4 * n {
                return Err(protocol("held frame length does not match its block count"));
            }
            let crcs = p[20..].chunks_exact(4).map(be_u32).collect();
            Ok(ServerMsg::Held {
                held,
                block_size,
                crcs,
            })
        }
        TAG_HELD_SET => parse_held_set(p),
        TAG_LIST => crate::listing::parse_page(p)
            .map(|(entries, last)| ServerMsg::ListPage { entries, last }),
        TAG_ERROR => Ok(ServerMsg::Error(text(p))),
        TAG_JOIN => crate::session::Ticket::from_payload(p)
            .map(ServerMsg::Join)
            .ok_or_else(|| protocol("a join frame must be 48 bytes")),
        TAG_CODEC => match std::str::from_utf8(p) {
            Ok(name) if p.len() <= MAX_CODEC_NAME => Ok(ServerMsg::Codec(name.to_owned())),
            _ => Err(protocol("a codec frame must be a name of at most 32 bytes")),
        },
        TAG_FAULT => {
            if p.len() < 2 {
                return Err(protocol("short fault frame"));
            }
            let code = FaultCode::from_u16(u16::from_be_bytes([p[0], p[1]]));
            Ok(ServerMsg::Fault(code, text(&p[2..])))
        }
        TAG_CHALLENGE => parse_challenge(p),
        TAG_VERDICT => match p.first() {
            Some(0) if p.len() == 1 => Ok(ServerMsg::Verdict(Verdict::Ok)),
            Some(1) if p.len() >= 5 => {
                let n = be_u32(&p[1..5]) as usize;
                if p.len() != 5 + 8 * n {
                    return Err(protocol("repair frame length does not match its count"));
                }
                Ok(ServerMsg::Verdict(Verdict::Repair(
                    p[5..].chunks_exact(8).map(be_u64).collect(),
                )))
            }
            Some(2) => Ok(ServerMsg::Verdict(Verdict::Failed(text(&p[1..])))),
            Some(3) => parse_stored(&p[1..]).map(|s| ServerMsg::Verdict(Verdict::Stored(s))),
            _ => Err(protocol("malformed verdict frame")),
        },
        t => Err(protocol(format!("unknown server frame type 0x{t:02x}"))),
    }
}

/// A client frame, as announced by its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame {
    /// `len` bytes of data for file offset `offset` follow, then their CRC-32.
    Data {
        /// Where the bytes go in the file (a block boundary).
        offset: u64,
        /// How many bytes follow (exactly one block).
        len: u64,
    },
    /// A compressed block (negotiated, see [`ServerMsg::Codec`]): `wire`
    /// bytes of packed payload for the `len` raw bytes at `offset` follow
    /// (see [`crate::compress::BlockCompressor::pack`]), then the CRC-32
    /// of the raw bytes.
    Packed {
        /// Where the raw bytes go in the file (a block boundary).
        offset: u64,
        /// Raw bytes of the block (exactly one block).
        len: u64,
        /// Bytes of packed payload that follow (at most `len`).
        wire: u64,
    },
    /// The client is done; the whole file's CRC-32 as the client computed it.
    End {
        /// CRC-32 of the whole source file.
        crc32: u32,
    },
    /// The answer to the server's challenge.
    Answer([u8; crate::auth::ANSWER_LEN]),
}

const TAG_DATA: u8 = b'D';
const TAG_END: u8 = b'E';
const TAG_ANSWER: u8 = b'A';
const TAG_PACKED: u8 = b'Z';

/// The longest client frame head after its tag byte (an answer).
pub const MAX_CLIENT_HEAD: usize = crate::auth::ANSWER_LEN;

/// Length of the rest of a client frame head after its tag byte (at most
/// [`MAX_CLIENT_HEAD`]).
pub fn client_head_len(tag: u8) -> Result<usize> {
    match tag {
        TAG_DATA => Ok(12),
        TAG_PACKED => Ok(16),
        TAG_END => Ok(4),
        TAG_ANSWER => Ok(crate::auth::ANSWER_LEN),
        t => Err(protocol(format!("unknown client frame type 0x{t:02x}"))),
    }
}

/// Encodes the head of a data frame (the data and its CRC-32 follow).
pub fn encode_data_head(offset: u64, len: u32) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0] = TAG_DATA;
    h[1..9].copy_from_slice(&offset.to_be_bytes());
    h[9..13].copy_from_slice(&len.to_be_bytes());
    h
}

/// Encodes the head of a compressed data frame: `wire` bytes of packed
/// payload for the `len` raw bytes at `offset` follow, then the CRC-32 of
/// the raw bytes.
pub fn encode_packed_head(offset: u64, len: u32, wire: u32) -> [u8; 17] {
    let mut h = [0u8; 17];
    h[0] = TAG_PACKED;
    h[1..9].copy_from_slice(&offset.to_be_bytes());
    h[9..13].copy_from_slice(&len.to_be_bytes());
    h[13..17].copy_from_slice(&wire.to_be_bytes());
    h
}

/// Encodes the end frame.
pub fn encode_end(crc32: u32) -> [u8; 5] {
    let mut h = [TAG_END, 0, 0, 0, 0];
    h[1..5].copy_from_slice(&crc32.to_be_bytes());
    h
}

/// The challenge message: the bare nonce, or inside TLS the nonce with
/// the server's proof ([`crate::auth::Token::challenge_proof`]).
pub fn challenge_msg(
    nonce: [u8; crate::auth::NONCE_LEN],
    proof: Option<[u8; crate::auth::ANSWER_LEN]>,
) -> ServerMsg {
    match proof {
        Some(proof) => ServerMsg::BoundChallenge { nonce, proof },
        None => ServerMsg::Challenge(nonce),
    }
}

/// Encodes the answer frame.
pub fn encode_answer(answer: &[u8; crate::auth::ANSWER_LEN]) -> Vec<u8> {
    let mut f = vec![TAG_ANSWER];
    f.extend_from_slice(answer);
    f
}

/// Decodes a client frame head and checks it against the file: a data
/// frame must cover exactly one whole block. Returns the frame and, for
/// data, the block index.
pub fn parse_client_head(
    tag: u8,
    rest: &[u8],
    filesize: u64,
    block: u64,
) -> Result<(ClientFrame, u64)> {
    if rest.len() != client_head_len(tag)? {
        return Err(protocol("short client frame head"));
    }
    match tag {
        TAG_DATA => {
            let (offset, len) = (be_u64(&rest[0..8]), u64::from(be_u32(&rest[8..12])));
            let idx = whole_block(offset, len, filesize, block)?;
            Ok((ClientFrame::Data { offset, len }, idx))
        }
        TAG_PACKED => {
            let (offset, len) = (be_u64(&rest[0..8]), u64::from(be_u32(&rest[8..12])));
            let idx = whole_block(offset, len, filesize, block)?;
            let wire = u64::from(be_u32(&rest[12..16]));
            if wire == 0 || wire > len {
                return Err(protocol(format!(
                    "compressed frame for block {idx} has {wire} bytes for {len}: it may not be empty or expand"
                )));
            }
            Ok((ClientFrame::Packed { offset, len, wire }, idx))
        }
        TAG_ANSWER => {
            let mut a = [0u8; crate::auth::ANSWER_LEN];
            a.copy_from_slice(rest);
            Ok((ClientFrame::Answer(a), 0))
        }
        _ => Ok((
            ClientFrame::End {
                crc32: be_u32(rest),
            },
            0,
        )),
    }
}

/// The index of the block a data frame at `offset` of `len` bytes covers,
/// if it covers exactly one.
fn whole_block(offset: u64, len: u64, filesize: u64, block: u64) -> Result<u64> {
    if offset % block != 0 || offset >= filesize {
        return Err(protocol(format!(
            "data frame at offset {offset} is not a block of this file"
        )));
    }
    let idx = offset / block;
    if len != block_range(filesize, block, idx).1 {
        return Err(protocol(format!(
            "data frame for block {idx} has {len} bytes, not one block"
        )));
    }
    Ok(idx)
}

/// Which blocks the client must send: those of the held part whose CRC-32
/// differs from the source's (`source` has at least as many entries as
/// `held_crcs`), then every block from the end of the held part on.
///
/// ```
/// use bigtransfer_core::v2::plan;
/// // 5 blocks, the server holds 3 and its block 1 differs.
/// assert_eq!(plan(5, &[10, 99, 30], &[10, 20, 30]), vec![1, 3, 4]);
/// ```
pub fn plan(total_blocks: u64, held_crcs: &[u32], source: &[u32]) -> Vec<u64> {
    let mut out: Vec<u64> = held_crcs
        .iter()
        .zip(source)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u64)
        .collect();
    out.extend(held_crcs.len() as u64..total_blocks);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn stored_verdicts_round_trip_and_malformed_ones_are_refused() {
        for how in [
            StoredAs::New,
            StoredAs::Unchanged,
            StoredAs::Kept("a b.~3~".into()),
            StoredAs::Replaced,
        ] {
            let f = encode_server_msg(&ServerMsg::Verdict(Verdict::Stored(how.clone())));
            assert_eq!(f[0], b'V');
            assert_eq!(
                parse_server_msg(b'V', &f[5..]).unwrap(),
                ServerMsg::Verdict(Verdict::Stored(how))
            );
        }
        for bad in [&[3u8][..], &[3, 2], &[3, 9], &[3, 1, 0]] {
            assert!(parse_server_msg(b'V', bad).is_err(), "{bad:?}");
        }
        // A plain OK stays one byte, as revision 1 to 3 clients read it.
        let ok = encode_server_msg(&ServerMsg::Verdict(Verdict::Ok));
        assert_eq!(&ok[..], &[b'V', 0, 0, 0, 1, 0]);
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_held_set_round_trips_and_malformed_ones_are_refused() {
        let m = ServerMsg::HeldSet {
            block_size: 65536,
            runs: vec![(0, 2), (3, 1), (7, 2)],
            crcs: vec![1, 2, 4, 8, 9],
        };
        let f = encode_server_msg(&m);
        assert_eq!(f[0], b'S');
        let (tag, len) = parse_server_head([f[0], f[1], f[2], f[3], f[4]]).unwrap();
        assert_eq!(len, f.len() - 5);
        assert_eq!(parse_server_msg(tag, &f[5..]).unwrap(), m);
        let bad = |runs: Vec<(u64, u64)>, crcs: usize| {
            let p = held_set_payload(65536, &runs, &vec![0; crcs]);
            parse_server_msg(b'S', &p).unwrap_err().to_string()
        };
        assert!(bad(vec![(0, 2), (2, 1)], 3).contains("apart"), "touching");
        assert!(bad(vec![(3, 1), (0, 1)], 2).contains("ascending"));
        assert!(bad(vec![(0, 0)], 0).contains("not empty"));
        assert!(bad(vec![(u64::MAX, 2)], 2).contains("runs"), "overflow");
        assert!(bad(vec![(0, 2)], 3).contains("does not match"));
        let mut p = held_set_payload(65536, &[(0, 1)], &[0]);
        p[11] = 200;
        let e = parse_server_msg(b'S', &p).unwrap_err().to_string();
        assert!(e.contains("shorter than its runs"), "{e}");
    }

    #[test]
    fn magic_is_never_a_legal_offset() {
        assert!(u64::from_be_bytes(MAGIC) > i64::MAX as u64);
    }

    #[test]
    fn block_sizes_keep_lists_small() {
        for size in [
            0u64,
            1,
            1 << 20,
            (1 << 30) - 1,
            1 << 30,
            5 << 30,
            1 << 40,
            1 << 44,
        ] {
            let b = block_size_for(size);
            assert!(b.is_power_of_two() && (MIN_BLOCK..=MAX_BLOCK).contains(&b));
            let limit = if size <= 1 << 42 {
                TARGET_BLOCKS
            } else {
                (MAX_SERVER_FRAME as u64 - 24) / 4
            };
            assert!(block_count(size, b) <= limit, "{size}");
            if size < 1 << 30 {
                assert!(b <= 4 << 20);
            }
        }
    }

    #[test]
    fn a_null_crc_without_a_valid_offer_is_refused_before_any_byte() {
        // Accepted before as a version-1 upload with CRC 0, which could only
        // end in CRC32_ERROR after the whole file had been sent.
        for json in [
            &br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 1}}"#[..],
            br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 0, "block": 65536}}"#,
            br#"{"filename": "a", "filesize": 5, "crc32": null}"#,
        ] {
            assert!(
                parse_header(json).is_err(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        let ok =
            br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 2, "block": 65536}}"#;
        assert!(parse_header(ok).unwrap().1.is_some());
        // A legacy-shaped "bt" with a real CRC-32 is a version-1 client.
        let v1 = br#"{"filename": "a", "filesize": 5, "crc32": 7, "bt": {"v": 1}}"#;
        assert_eq!(parse_header(v1).unwrap().0.crc32, 7);
    }

    #[test]
    fn an_offer_over_the_block_bound_is_refused() {
        let too_many = (MAX_BLOCKS + 1) * MIN_BLOCK;
        let json = format!(
            r#"{{"filename": "a", "filesize": {too_many}, "crc32": null, "bt": {{"v": 2, "block": {MIN_BLOCK}}}}}"#
        );
        let e = parse_header(json.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("too many blocks"), "{e}");
        let fits = MAX_BLOCKS * MIN_BLOCK;
        let json = format!(
            r#"{{"filename": "a", "filesize": {fits}, "crc32": null, "bt": {{"v": 2, "block": {MIN_BLOCK}}}}}"#
        );
        assert!(parse_header(json.as_bytes()).is_ok());
    }

    #[test]
    fn frames_are_never_cut_inconsistently() {
        // The largest repair list a legal offer allows round-trips whole.
        let all: Vec<u64> = (0..MAX_BLOCKS).collect();
        let f = encode_server_msg(&ServerMsg::Verdict(Verdict::Repair(all.clone())));
        let (tag, len) = parse_server_head(f[..5].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 5);
        assert_eq!(
            parse_server_msg(tag, &f[5..]).unwrap(),
            ServerMsg::Verdict(Verdict::Repair(all))
        );
        // Long words are cut at a character boundary, and the frame agrees.
        let words = "é".repeat(MAX_TEXT);
        let f = encode_server_msg(&ServerMsg::Fault(FaultCode::Storage, words));
        let (tag, len) = parse_server_head(f[..5].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 5);
        match parse_server_msg(tag, &f[5..]).unwrap() {
            ServerMsg::Fault(FaultCode::Storage, t) => {
                assert!(
                    t.len() <= MAX_TEXT && t.chars().all(|c| c == 'é'),
                    "{}",
                    t.len()
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fault_codes_round_trip_and_unknown_ones_are_for_good() {
        for n in 0..40u16 {
            let c = FaultCode::from_u16(n);
            assert_eq!(c.to_u16(), n);
            let f = encode_server_msg(&ServerMsg::Fault(c, "why".into()));
            let (tag, _) = parse_server_head(f[..5].try_into().unwrap()).unwrap();
            assert_eq!(
                parse_server_msg(tag, &f[5..]).unwrap(),
                ServerMsg::Fault(c, "why".into())
            );
        }
        assert!(FaultCode::TakenOver.is_transient() && FaultCode::Busy.is_transient());
        assert!(!FaultCode::NoSpace.is_transient() && !FaultCode::Unknown(999).is_transient());
    }

    #[test]
    fn offer_parsing() {
        let h = br#"{"filename": "a", "filesize": 10, "crc32": 0}"#;
        assert_eq!(parse_offer(h, 10).unwrap(), None);
        let h = br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 1}}"#;
        assert_eq!(parse_offer(h, 10).unwrap(), None);
        let h = br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 3, "block": 65536}}"#;
        assert_eq!(
            parse_offer(h, 10).unwrap(),
            Some(Offer {
                version: 2,
                block_size: 65536,
                rev: 1,
                source: None,
            })
        );
        for bad in [
            &br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 2, "block": 1000}}"#[..],
            br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 2}}"#,
            br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": "2", "block": 65536}}"#,
        ] {
            assert!(parse_offer(bad, 10).is_err());
        }
    }

    #[test]
    fn data_frames_must_be_whole_blocks() {
        let (fs, b) = (2 * 65536 + 5, 65536);
        let h = encode_data_head(65536, 65536);
        assert_eq!(
            parse_client_head(h[0], &h[1..], fs, b).unwrap(),
            (
                ClientFrame::Data {
                    offset: 65536,
                    len: 65536
                },
                1
            )
        );
        let h = encode_data_head(2 * 65536, 5);
        assert_eq!(parse_client_head(h[0], &h[1..], fs, b).unwrap().1, 2);
        for (off, len) in [(1, 65536), (65536, 65535), (3 * 65536, 5), (2 * 65536, 6)] {
            let h = encode_data_head(off, len);
            assert!(
                parse_client_head(h[0], &h[1..], fs, b).is_err(),
                "{off} {len}"
            );
        }
        let a = encode_answer(&[0xA5; 32]);
        assert_eq!(
            parse_client_head(a[0], &a[1..], fs, b).unwrap().0,
            ClientFrame::Answer([0xA5; 32])
        );
        let e = encode_end(77);
        assert_eq!(
            parse_client_head(e[0], &e[1..], fs, b).unwrap().0,
            ClientFrame::End { crc32: 77 }
        );
        assert!(client_head_len(b'Q').is_err());
    }

    #[test]
    fn packed_frames_are_whole_blocks_that_never_expand() {
        let (fs, b) = (2 * 65536 + 5, 65536);
        let h = encode_packed_head(65536, 65536, 1000);
        assert_eq!(
            parse_client_head(h[0], &h[1..], fs, b).unwrap(),
            (
                ClientFrame::Packed {
                    offset: 65536,
                    len: 65536,
                    wire: 1000
                },
                1
            )
        );
        for (off, len, wire, want) in [
            (0, 65536, 65537, "may not be empty or expand"),
            (0, 65536, 0, "may not be empty or expand"),
            (1, 65536, 10, "not a block"),
            (0, 65535, 10, "not one block"),
        ] {
            let h = encode_packed_head(off, len, wire);
            let e = parse_client_head(h[0], &h[1..], fs, b).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn codecs_are_offered_in_the_header_and_accepted_by_a_frame() {
        let h = Header {
            filename: "a".into(),
            filesize: 5,
            crc32: 0,
        };
        let offer = Offer {
            version: 2,
            block_size: 65536,
            rev: 2,
            source: None,
        };
        let f = encode_header(&h, offer).unwrap();
        assert!(offered_codecs(&f[4..]).unwrap().is_empty());
        let f = encode_header_with_codecs(&h, Some(9), offer, &["zstd", "lz4"]).unwrap();
        assert_eq!(offered_codecs(&f[4..]).unwrap(), ["zstd", "lz4"]);
        assert_eq!(
            parse_header(&f[4..]).unwrap(),
            (Header { crc32: 9, ..h }, Some(offer))
        );
        for bad in [
            r#"{"bt": {"z": "zstd"}}"#.to_string(),
            r#"{"bt": {"z": [1]}}"#.into(),
            format!(r#"{{"bt": {{"z": ["{}"]}}}}"#, "x".repeat(33)),
            format!(r#"{{"bt": {{"z": [{}"a"]}}}}"#, "\"a\", ".repeat(8)),
        ] {
            assert!(offered_codecs(bad.as_bytes()).is_err(), "{bad}");
        }
        let f = encode_server_msg(&ServerMsg::Codec("zstd".into()));
        assert_eq!(f, b"Z\0\0\0\x04zstd");
        assert_eq!(
            parse_server_msg(f[0], &f[5..]).unwrap(),
            ServerMsg::Codec("zstd".into())
        );
        assert!(parse_server_msg(b'Z', &[0xFF]).is_err());
        assert!(parse_server_msg(b'Z', &[b'a'; 33]).is_err());
    }

    proptest! {
        #[test]
        fn server_messages_round_trip(held in any::<u64>(), bs in any::<u64>(), crcs in proptest::collection::vec(any::<u32>(), 0..50),
                                      idx in proptest::collection::vec(any::<u64>(), 0..50), msg in ".{0,40}") {
            for m in [
                ServerMsg::Held { held, block_size: bs, crcs: crcs.clone() },
                ServerMsg::Error(msg.clone()),
                ServerMsg::Verdict(Verdict::Ok),
                ServerMsg::Verdict(Verdict::Repair(idx.clone())),
                ServerMsg::Verdict(Verdict::Failed(msg.clone())),
                ServerMsg::Challenge([held as u8; 32]),
            ] {
                let f = encode_server_msg(&m);
                let (tag, len) = parse_server_head([f[0], f[1], f[2], f[3], f[4]]).unwrap();
                prop_assert_eq!(len, f.len() - 5);
                prop_assert_eq!(parse_server_msg(tag, &f[5..]).unwrap(), m);
            }
        }

        #[test]
        fn parsers_never_panic(tag in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..64), fs in any::<u64>()) {
            let _ = parse_server_msg(tag, &bytes);
            if bytes.len() >= 5 {
                let _ = parse_server_head([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]]);
            }
            let _ = parse_client_head(tag, &bytes, fs, 65536);
            let _ = parse_offer(&bytes, fs);
        }

        #[test]
        fn combine_matches_one_pass(data in proptest::collection::vec(any::<u8>(), 0..2000), bexp in 0u32..8) {
            let b = 1u64 << bexp;
            let crcs: Vec<u32> = data.chunks(b as usize).map(crc32fast::hash).collect();
            prop_assert_eq!(combine(&crcs, data.len() as u64, b), crc32fast::hash(&data));
        }

        #[test]
        fn plan_sends_exactly_what_differs_or_is_missing(n in 0u64..40, held_n in 0usize..40, seed in any::<u64>()) {
            let held_n = held_n.min(n as usize);
            let source: Vec<u32> = (0..n).map(|i| (i as u32).wrapping_mul(2654435761)).collect();
            let held: Vec<u32> = source[..held_n].iter().enumerate()
                .map(|(i, &c)| if (seed >> (i % 64)) & 1 == 1 { c ^ 1 } else { c }).collect();
            let p = plan(n, &held, &source);
            for i in 0..n {
                let must = (i as usize) >= held_n || held[i as usize] != source[i as usize];
                prop_assert_eq!(p.contains(&i), must);
            }
        }
    }
}
