//! The [`Sender`]: the client side of one upload attempt, as a state
//! machine (diagram in the [module docs](super)). Bytes from the server go
//! in through [`Sender::handle_input`]; protocol bytes for the server come
//! out of [`Sender::poll_transmit`]; work on the source file comes out of
//! [`Sender::poll_action`] (hash these blocks, stream this block, stream
//! from this offset) and its result goes back through
//! [`Sender::handle_event`].
//!
//! Not for I/O, retries, backoff, progress or the checksum cache: one
//! machine is one attempt; the shell decides whether to make another.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::transfer::{Next, Outlet};
use super::{shown, Deadline, ServerDecoder, Timer};
use crate::auth::{Token, NONCE_LEN};
use crate::compress::{AutoCompressor, AutoConfig, Compress, CODEC, STREAM_CODEC};
use crate::proto::{self, Header};
use crate::v2::{self, FaultCode, Offer, ServerMsg};

/// What the sender knows about its source and how to speak.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The name to send.
    pub filename: String,
    /// The source's size.
    pub filesize: u64,
    /// The whole source's CRC-32, if known (required for version 1).
    pub whole_crc: Option<u32>,
    /// The block size to offer (see [`v2::block_size_for`]).
    pub block: u64,
    /// Speak version 1 only (no offer).
    pub legacy: bool,
    /// The token, for a server that challenges.
    pub token: Option<Token>,
    /// Longest wait for any reply from the server.
    pub reply_timeout: Duration,
    /// CRC-32s of the source's first blocks, if known (a checksum cache).
    pub known: Vec<u32>,
    /// The source id sent in the offer (`bt.sid`), the same on every
    /// attempt of this upload, so the server lets this client take over
    /// its own stale connection and nobody else's.
    pub source: Option<[u8; 16]>,
    /// Longest wait for the server's first 8 bytes (`None`: the
    /// `reply_timeout`). A bigtransfer server sends them at once, so a
    /// client offering version 2 may name a silent peer as foreign sooner.
    pub greeting_timeout: Option<Duration>,
    /// Most repair rounds answered on this connection (a server asking for
    /// more is broken or lying).
    pub max_repair_rounds: u32,
    /// Ask the shell, with [`SendAction::Recheck`], to confirm the source
    /// unchanged before the End frame, whose CRC-32 combines block CRC-32s
    /// taken earlier (from a cache or another attempt).
    pub recheck: bool,
    /// Whether to offer and use compressed data frames (version 2 only;
    /// the server must accept, else every block goes raw).
    pub compress: Compress,
    /// Inside TLS, the connection's channel binding: the server must then
    /// prove the token first and the answer covers the binding (see
    /// [`crate::auth`]). `None` in plaintext.
    pub binding: Option<[u8; crate::auth::BINDING_LEN]>,
}

/// Work on the source file the sender asks of its shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendAction {
    /// Read blocks `from..to` and answer their CRC-32s with
    /// [`SendEvent::Hashed`].
    HashBlocks {
        /// First block.
        from: u64,
        /// One past the last block.
        to: u64,
    },
    /// Stream the source's bytes `offset .. offset + len` (the frame head
    /// was already transmitted) and answer their CRC-32 with
    /// [`SendEvent::BlockSent`]; the machine then transmits the trailer.
    SendBlock {
        /// Block index.
        idx: u64,
        /// File offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write the payload of the block just packed (its head is on the
    /// wire) and answer [`SendEvent::BlockSent`] with the CRC-32 of its
    /// raw bytes.
    SendPacked {
        /// Block index.
        idx: u64,
        /// Raw bytes (what the block counts for in progress).
        len: u64,
    },
    /// Version 1: stream the source from `from` to its end, then answer
    /// [`SendEvent::BytesSent`].
    SendBytes {
        /// First byte.
        from: u64,
    },
    /// Compression was agreed and the policy says try: read block `idx`
    /// (`offset .. offset + len`), take its CRC-32, pack it at zstd
    /// `level` (the payload of [`crate::compress::BlockCompressor::pack`],
    /// which the shell may make a chunk at a time), time that, and answer
    /// [`SendEvent::Packed`]. The machine then transmits the compressed
    /// frame's head and asks for the payload with
    /// [`SendAction::SendPacked`], or, when packing did not pay, asks for
    /// the block raw with a [`SendAction::SendBlock`].
    PackBlock {
        /// Block index.
        idx: u64,
        /// File offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// zstd level.
        level: i32,
    },
    /// Before the End frame (only with [`SenderConfig::recheck`]): confirm
    /// the source is unchanged since its CRC-32s were taken and answer
    /// [`SendEvent::Rechecked`].
    Recheck,
    /// The server granted a session (parallel streams): send these blocks
    /// over this connection and joined ones, pulled from one queue, and
    /// answer [`SendEvent::ParallelSent`] once every joined stream ended.
    /// Only for the first round; repairs go over this connection alone.
    SendParallel {
        /// The session to join and its secret.
        ticket: crate::session::Ticket,
        /// Block indices, in the planned order.
        blocks: Vec<u64>,
    },
}

/// The result of a [`SendAction`]. An `Err` is a problem with the source
/// (its words); a broken connection is [`Sender::handle_eof`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendEvent {
    /// CRC-32s of the blocks asked for, in order.
    Hashed(Result<Vec<u32>, String>),
    /// CRC-32 of the block streamed.
    BlockSent(Result<u32, String>),
    /// The version-1 bytes were streamed.
    BytesSent(Result<(), String>),
    /// The source is unchanged (`Ok`) or changed, and how.
    Rechecked(Result<(), String>),
    /// The block of a [`SendAction::PackBlock`], read and packed.
    Packed(Result<Packed, String>),
    /// The blocks of a [`SendAction::SendParallel`] went out (over any
    /// stream): each with its CRC-32. A block not listed goes again if
    /// the server asks for it.
    ParallelSent(Result<Vec<(u64, u32)>, String>),
}

/// A block read and (maybe) compressed by the shell.
///
/// No bytes are carried: the shell keeps the payload (or what it needs to
/// make it: a shell may keep only the zstd frames and read stored chunks
/// again) and writes it at [`SendAction::SendPacked`]; a block that did
/// not pay goes out as a [`SendAction::SendBlock`], streamed from the
/// source like any raw block. So no buffer per block passes through the
/// machine, and a shell's memory need not follow the block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The packed payload's length, if packing paid (`None`: the machine
    /// asks for the block raw).
    pub wire: Option<u64>,
    /// How long packing took (the `auto` policy's CPU measurement).
    pub took: Duration,
}

/// What compression did on one connection (for reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Whether the server agreed to compressed frames.
    pub agreed: bool,
    /// Whether it agreed to one zstd stream per connection
    /// ([`STREAM_CODEC`]) rather than independent chunks.
    pub streaming: bool,
    /// Blocks sent compressed.
    pub blocks: u64,
    /// Their raw bytes.
    pub raw_bytes: u64,
    /// Their packed payload bytes on the wire.
    pub wire_bytes: u64,
    /// Blocks that were packed but went raw (they did not shrink).
    pub declined: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server stored the file (`CRC32_OK`).
    Stored,
    /// The server's verification failed and it discarded what it held.
    Mismatch(String),
    /// The server refused or stopped, with a code (revision 2) or only
    /// words (revision 1).
    Fault {
        /// What to do; see [`FaultCode::is_transient`].
        code: Option<FaultCode>,
        /// Why, for a person.
        words: String,
    },
    /// The attempt failed on this side.
    Failed(Failure),
}

impl Outcome {
    /// Whether another attempt may succeed without a person acting: a
    /// lost connection or a stall, a transient fault code, a failed
    /// verification (the server discarded its part; start over), or a
    /// legacy server that needs the CRC-32 first. A fault without a code
    /// (a revision-1 server's words) is for good, as today.
    pub fn is_transient(&self) -> bool {
        match self {
            Outcome::Stored => false,
            Outcome::Mismatch(_) => true,
            Outcome::Fault { code, .. } => code.is_some_and(FaultCode::is_transient),
            Outcome::Failed(f) => matches!(
                f,
                Failure::Lost(_) | Failure::TimedOut(_) | Failure::LegacyNeedsCrc
            ),
        }
    }
}

/// Why an attempt failed on the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The peer does not speak bigtransfer (what it said).
    NotBigtransfer(String),
    /// The server broke the protocol.
    Protocol(String),
    /// The connection broke in this state.
    Lost(&'static str),
    /// No reply in time in this state.
    TimedOut(&'static str),
    /// The server requires a token and none was given.
    TokenRequired,
    /// Inside TLS the server did not prove it knows our token on this
    /// connection (another token, or a man in the middle relaying it).
    ServerProof,
    /// A legacy server refused the header whose CRC-32 was unknown: hash
    /// the file and try again in version 1 (not counted as a failure).
    LegacyNeedsCrc,
    /// The source could not be read.
    Source(String),
    /// Re-reading these blocks gave different data.
    SourceUnstable(Vec<u64>),
    /// The source changed before the End frame ([`SendAction::Recheck`]):
    /// start again from what it holds now.
    SourceChanged(String),
    /// The request itself cannot be made (e.g. a name over 64 KiB).
    Invalid(String),
}

#[derive(Debug)]
enum State {
    SendHeader {
        frame: Vec<u8>,
    },
    AwaitReply {
        got: [u8; 8],
        n: usize,
    },
    AwaitChallenge,
    SendAnswer {
        nonce: [u8; NONCE_LEN],
    },
    /// Inside TLS the server's proof failed: answer with zeros (nothing
    /// about the token), so the server refuses in its words and counts a
    /// wrong answer.
    Decline,
    AwaitRefusal,
    AwaitHeld,
    Plan,
    SendBlocks,
    Recheck {
        frame: [u8; 5],
    },
    SendEnd {
        frame: [u8; 5],
    },
    AwaitVerdict,
    Repair,
    SendBytes,
    AwaitVerdict1 {
        buf: Vec<u8>,
    },
    Done(Outcome),
}

/// The client side of one attempt. See the [module docs](super).
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    state: State,
    json: Vec<u8>,
    dec: ServerDecoder,
    outlet: Outlet,
    out: VecDeque<Vec<u8>>,
    pending: Option<SendAction>,
    awaiting: bool,
    deadline: Option<Deadline>,
    armed_for: &'static str,
    protocol: u8,
    auto: AutoCompressor,
    /// The block being packed: offset, length and its raw frame head.
    packing: Option<(u64, u64, u64, [u8; 13])>,
    pack: PackStats,
    /// Streams asked for (`bt.streams`), and the session granted.
    streams: Option<u32>,
    ticket: Option<crate::session::Ticket>,
    /// What the server said storing did to the name.
    stored_as: v2::StoredAs,
}

/// The codecs a client offers: inside TLS the connection-long zstd stream
/// first. Not on plaintext: TCP's 16-bit checksum lets a rare flipped bit
/// through, which under [`CODEC`] costs its block alone (a repair) but in
/// a stream would spoil every later block of the connection; TLS refuses
/// a flipped bit before it reaches the decoder.
pub(crate) fn offered_codecs(tls: bool) -> &'static [&'static str] {
    if tls {
        &[STREAM_CODEC, CODEC]
    } else {
        &[CODEC]
    }
}

fn header_frame(cfg: &SenderConfig, streams: Option<u32>) -> Result<Vec<u8>, Failure> {
    let header = Header {
        filename: cfg.filename.clone(),
        filesize: cfg.filesize,
        crc32: cfg.whole_crc.unwrap_or(0),
    };
    let offer = Offer {
        version: v2::VERSION,
        block_size: cfg.block,
        rev: v2::REV_KEEP,
        source: cfg.source,
    };
    let r = match (cfg.legacy, cfg.whole_crc) {
        (true, None) => {
            return Err(Failure::Invalid(
                "version 1 needs the whole file's CRC-32".into(),
            ))
        }
        (true, Some(_)) => proto::encode_header(&header),
        (false, crc) if streams.is_some() => {
            let codecs: &[&str] = if cfg.compress == Compress::Off {
                &[]
            } else {
                offered_codecs(cfg.binding.is_some())
            };
            let extra = v2::Extra {
                streams,
                join: None,
            };
            v2::encode_header_ext(&header, crc, offer, codecs, &extra)
        }
        (false, crc) if cfg.compress != Compress::Off => v2::encode_header_with_codecs(
            &header,
            crc,
            offer,
            offered_codecs(cfg.binding.is_some()),
        ),
        (false, Some(_)) => v2::encode_header(&header, offer),
        (false, None) => v2::encode_header_unknown_crc(&header, offer),
    };
    r.map_err(|e| Failure::Invalid(e.to_string()))
}

impl Sender {
    /// One attempt, starting at `now`.
    pub fn new(cfg: SenderConfig, now: Instant) -> Sender {
        Sender::with_streams(cfg, now, None)
    }

    /// One attempt that asks the server for a session of `streams`
    /// parallel streams (`None` or 1: a single stream, as [`Sender::new`]).
    pub fn with_streams(cfg: SenderConfig, now: Instant, streams: Option<u32>) -> Sender {
        let streams = streams.filter(|&n| n > 1 && !cfg.legacy);
        let nblocks = v2::block_count(cfg.filesize, cfg.block.max(1));
        let mut outlet = Outlet::new(cfg.filesize, cfg.block, &cfg.known);
        outlet.set_max_rounds(cfg.max_repair_rounds);
        let max = (24 + 8 * nblocks.min(super::MAX_BLOCKS) as usize).max(64 << 10);
        let (state, json) = match header_frame(&cfg, streams) {
            Ok(frame) => (
                State::SendHeader {
                    frame: frame.clone(),
                },
                frame[4..].to_vec(),
            ),
            Err(f) => (State::Done(Outcome::Failed(f)), Vec::new()),
        };
        let mut s = Sender {
            cfg,
            state,
            json,
            dec: ServerDecoder::new(max),
            outlet,
            out: VecDeque::new(),
            pending: None,
            awaiting: false,
            deadline: None,
            armed_for: "",
            protocol: 0,
            auto: AutoCompressor::new(AutoConfig::default()),
            packing: None,
            pack: PackStats::default(),
            streams,
            ticket: None,
            stored_as: v2::StoredAs::New,
        };
        s.rearm(now, false);
        s
    }

    /// The current state's name (for logs and tests).
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::SendHeader { .. } => "SendHeader",
            State::AwaitReply { .. } => "AwaitReply",
            State::AwaitChallenge => "AwaitChallenge",
            State::SendAnswer { .. } => "SendAnswer",
            State::Decline => "Decline",
            State::AwaitRefusal => "AwaitRefusal",
            State::AwaitHeld => "AwaitHeld",
            State::Plan => "Plan",
            State::SendBlocks => "SendBlocks",
            State::Recheck { .. } => "Recheck",
            State::SendEnd { .. } => "SendEnd",
            State::AwaitVerdict => "AwaitVerdict",
            State::Repair => "Repair",
            State::SendBytes => "SendBytes",
            State::AwaitVerdict1 { .. } => "AwaitVerdict1",
            State::Done(_) => "Done",
        }
    }

    /// What the server said storing did to the name (after an OK verdict;
    /// `New` from servers that do not say).
    pub fn stored_as(&self) -> &v2::StoredAs {
        &self.stored_as
    }

    /// How the attempt ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// The protocol version in use (0 until the server replied).
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// The CRC-32s of the source's blocks learnt in this attempt (for the
    /// shell's cache): `None` where unknown.
    pub fn block_crcs(&self) -> &[Option<u32>] {
        self.outlet.crcs()
    }

    /// Repair rounds the server asked for on this connection.
    pub fn repairs(&self) -> u32 {
        self.outlet.round()
    }

    /// Blocks sent again on this connection: held blocks that differed
    /// from ours, and blocks named in repair lists.
    pub fn resent(&self) -> u64 {
        self.outlet.resent()
    }

    /// Bytes of the server's held blocks that match ours, once planned
    /// (where this connection resumes).
    pub fn kept(&self) -> Option<u64> {
        self.outlet.kept()
    }

    /// What compression did on this connection.
    pub fn pack_stats(&self) -> PackStats {
        self.pack
    }

    /// A measurement of the link: `wire_bytes` went into the socket in
    /// `elapsed` (time blocked writing, so a full send buffer shows the
    /// link's pace). Feeds the `auto` compression policy; the machine has
    /// no clock of its own.
    pub fn handle_sent(&mut self, wire_bytes: usize, elapsed: Duration) {
        self.auto.record_send(wire_bytes, elapsed);
    }

    /// When [`Sender::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.map(|d| d.at)
    }

    /// Time has come to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d.passed(now)) {
            let during = self.state_name();
            self.finish(Outcome::Failed(Failure::TimedOut(during)));
        }
    }

    fn finish(&mut self, o: Outcome) {
        if !matches!(self.state, State::Done(_)) {
            self.state = State::Done(o);
            self.deadline = None;
        }
    }

    fn fail_protocol(&mut self, words: impl Into<String>) {
        self.finish(Outcome::Failed(Failure::Protocol(words.into())));
    }

    fn waits(&self) -> bool {
        matches!(
            self.state,
            State::AwaitReply { .. }
                | State::AwaitChallenge
                | State::AwaitRefusal
                | State::AwaitHeld
                | State::AwaitVerdict
                | State::AwaitVerdict1 { .. }
        )
    }

    /// Sets the reply deadline on entering a waiting state or on progress.
    /// The greeting's deadline is not moved by its bytes: all 8 must come
    /// within `greeting_timeout` of the header, so a peer dribbling bytes
    /// is named as foreign as soon as a silent one.
    fn rearm(&mut self, now: Instant, progress: bool) {
        let name = self.state_name();
        let greeting = matches!(self.state, State::AwaitReply { .. });
        if (progress && !greeting) || name != self.armed_for {
            self.armed_for = name;
            let limit = match self.state {
                State::AwaitReply { .. } => self.cfg.greeting_timeout,
                _ => None,
            };
            let limit = limit.unwrap_or(self.cfg.reply_timeout);
            self.deadline = self
                .waits()
                .then(|| Deadline::after(now, limit, Timer::Reply));
        }
    }

    /// The next bytes to send to the server.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let State::Repair = self.state {
            self.next_block();
        }
        if let Some(b) = self.out.pop_front() {
            return Some(b);
        }
        let bytes = match std::mem::replace(&mut self.state, State::AwaitHeld) {
            State::SendHeader { frame } => {
                self.state = State::AwaitReply { got: [0; 8], n: 0 };
                frame
            }
            State::SendAnswer { nonce } => {
                let token = self.cfg.token.as_ref();
                let answer = match (token, &self.cfg.binding) {
                    (Some(t), Some(b)) => t.client_answer(&nonce, b, &self.json),
                    (Some(t), None) => t.answer(&nonce, &self.json),
                    (None, _) => Default::default(),
                };
                v2::encode_answer(&answer)
            }
            State::Decline => {
                self.state = State::AwaitRefusal;
                v2::encode_answer(&[0; crate::auth::ANSWER_LEN])
            }
            State::SendEnd { frame } => {
                self.state = State::AwaitVerdict;
                frame.to_vec()
            }
            other => {
                self.state = other;
                return None;
            }
        };
        self.rearm(now, false);
        Some(bytes)
    }

    /// The next work on the source (answer it with [`Sender::handle_event`]).
    pub fn poll_action(&mut self) -> Option<SendAction> {
        // A block's head must be on the wire before its payload.
        if self.awaiting || !self.out.is_empty() {
            return None;
        }
        let a = self.pending.take()?;
        self.awaiting = true;
        Some(a)
    }

    /// The result of the last action.
    pub fn handle_event(&mut self, now: Instant, ev: SendEvent) {
        let was = std::mem::replace(&mut self.awaiting, false);
        if matches!(self.state, State::Done(_)) {
            return;
        }
        if !was {
            return self.fail_protocol("internal: an event nobody asked for");
        }
        match ev {
            SendEvent::Hashed(Ok(v)) => self.on_hashed(v),
            SendEvent::BlockSent(Ok(crc)) => self.on_block_sent(crc),
            SendEvent::BytesSent(Ok(())) if matches!(self.state, State::SendBytes) => {
                self.state = State::AwaitVerdict1 { buf: Vec::new() };
            }
            SendEvent::Rechecked(Ok(())) => match self.state {
                State::Recheck { frame } => self.state = State::SendEnd { frame },
                _ => self.fail_protocol("internal: recheck out of turn"),
            },
            SendEvent::Rechecked(Err(e)) => self.finish(Outcome::Failed(Failure::SourceChanged(e))),
            SendEvent::Packed(Ok(p)) => self.on_packed(p),
            SendEvent::Packed(Err(e)) => self.finish(Outcome::Failed(Failure::Source(e))),
            SendEvent::ParallelSent(Ok(sent)) => self.on_parallel_sent(sent),
            SendEvent::ParallelSent(Err(e)) => self.finish(Outcome::Failed(Failure::Source(e))),
            SendEvent::Hashed(Err(e))
            | SendEvent::BlockSent(Err(e))
            | SendEvent::BytesSent(Err(e)) => self.finish(Outcome::Failed(Failure::Source(e))),
            SendEvent::BytesSent(Ok(())) => self.fail_protocol("internal: bytes sent out of turn"),
        }
        self.rearm(now, false);
    }

    /// The server closed the connection or it broke.
    pub fn handle_eof(&mut self, _now: Instant) {
        let o = match &self.state {
            State::Done(_) => return,
            State::AwaitReply { n: 0, .. } if !self.cfg.legacy && self.cfg.whole_crc.is_none() => {
                Outcome::Failed(Failure::LegacyNeedsCrc)
            }
            State::AwaitVerdict1 { buf } if buf.is_empty() => {
                Outcome::Failed(Failure::Lost("AwaitVerdict1"))
            }
            State::AwaitVerdict1 { buf } => match proto::parse_verdict(buf) {
                Ok(proto::Verdict::Ok) => Outcome::Stored,
                Ok(proto::Verdict::Mismatch) => {
                    Outcome::Mismatch("data was damaged in transit or on the server".into())
                }
                Err(e) => Outcome::Failed(Failure::Protocol(e.to_string())),
            },
            State::AwaitRefusal => Outcome::Failed(Failure::ServerProof),
            _ => Outcome::Failed(Failure::Lost(self.state_name())),
        };
        self.finish(o);
    }

    /// Bytes from the server; returns how many were used (call again with
    /// the rest until it uses nothing).
    pub fn handle_input(&mut self, now: Instant, input: &[u8]) -> usize {
        if input.is_empty() {
            return 0;
        }
        let used = match self.state {
            State::Done(_) | State::SendHeader { .. } | State::SendBytes => 0,
            State::AwaitReply { .. } => self.read_reply(input),
            State::AwaitVerdict1 { .. } => self.read_verdict1(input),
            _ => self.read_frames(input),
        };
        self.rearm(now, used > 0);
        used
    }

    fn read_reply(&mut self, input: &[u8]) -> usize {
        let State::AwaitReply { got, n } = &mut self.state else {
            return 0;
        };
        let take = (8 - *n).min(input.len());
        got[*n..*n + take].copy_from_slice(&input[..take]);
        *n += take;
        if *n == 8 {
            let got = *got;
            self.on_reply(got);
        }
        take
    }

    fn on_reply(&mut self, got: [u8; 8]) {
        if got == v2::MAGIC {
            if self.cfg.legacy {
                return self.fail_protocol("a version-2 reply to a version-1 header");
            }
            self.protocol = 2;
            self.state = State::AwaitChallenge;
            return;
        }
        let offset = proto::parse_offset(got);
        if offset > self.cfg.filesize {
            let words = format!(
                "the server answered \"{}\", neither a resume offset nor a bigtransfer greeting: is this a bigtransfer server?",
                shown(&got)
            );
            return self.finish(Outcome::Failed(Failure::NotBigtransfer(words)));
        }
        if self.cfg.whole_crc.is_none() {
            return self.fail_protocol("the server answered a header it should have refused");
        }
        self.protocol = 1;
        self.pending = Some(SendAction::SendBytes { from: offset });
        self.state = State::SendBytes;
    }

    fn read_verdict1(&mut self, input: &[u8]) -> usize {
        let State::AwaitVerdict1 { buf } = &mut self.state else {
            return 0;
        };
        buf.extend_from_slice(input);
        if buf.len() > 64 {
            let e = proto::parse_verdict(buf).err().map(|e| e.to_string());
            self.fail_protocol(e.unwrap_or_default());
        }
        input.len()
    }

    fn read_frames(&mut self, input: &[u8]) -> usize {
        match self.dec.decode(input) {
            Ok((used, Some(msg))) => {
                self.on_msg(msg);
                used
            }
            Ok((used, None)) => used,
            Err(e) => {
                self.fail_protocol(e);
                input.len()
            }
        }
    }

    fn on_msg(&mut self, msg: ServerMsg) {
        match (&self.state, msg) {
            (_, ServerMsg::Error(words)) => self.finish(Outcome::Fault { code: None, words }),
            (_, ServerMsg::Fault(c, words)) => self.finish(Outcome::Fault {
                code: Some(c),
                words,
            }),
            (State::AwaitChallenge, m @ ServerMsg::Challenge(_))
            | (State::AwaitChallenge, m @ ServerMsg::BoundChallenge { .. }) => self.on_challenge(m),
            (
                State::AwaitChallenge | State::AwaitHeld,
                ServerMsg::Held {
                    held,
                    block_size,
                    crcs,
                },
            ) => {
                let r = self.outlet.accept_held(held, block_size, crcs);
                self.on_held(r)
            }
            (
                State::AwaitChallenge | State::AwaitHeld,
                ServerMsg::HeldSet {
                    block_size,
                    runs,
                    crcs,
                },
            ) => {
                let r = self.outlet.accept_set(block_size, &runs, crcs);
                self.on_held(r)
            }
            (State::AwaitChallenge | State::AwaitHeld, ServerMsg::Codec(name)) => {
                self.on_codec(&name)
            }
            (State::AwaitChallenge | State::AwaitHeld, ServerMsg::Join(t))
                if self.streams.is_some() =>
            {
                self.ticket = Some(t);
            }
            (State::AwaitVerdict, ServerMsg::Verdict(v)) => self.on_verdict(v),
            // A server that takes a zero answer does not know the token.
            (State::AwaitRefusal, _) => self.finish(Outcome::Failed(Failure::ServerProof)),
            (_, other) => {
                let words = format!(
                    "unexpected {} frame from the server in state {}",
                    msg_name(&other),
                    self.state_name()
                );
                self.fail_protocol(words)
            }
        }
    }

    /// The server's challenge: answered only with a token, and inside TLS
    /// only once the server proved it knows the token too.
    fn on_challenge(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::Challenge(nonce) => match (&self.cfg.token, self.cfg.binding) {
                (None, _) => self.finish(Outcome::Failed(Failure::TokenRequired)),
                // Inside TLS a server that does not prove the token
                // first may be a man in the middle: no answer for it.
                (Some(_), Some(_)) => self.finish(Outcome::Failed(Failure::ServerProof)),
                (Some(_), None) => self.state = State::SendAnswer { nonce },
            },
            ServerMsg::BoundChallenge { nonce, proof } => {
                let proved = match (&self.cfg.token, &self.cfg.binding) {
                    (Some(t), Some(b)) => t.check_server_proof(&nonce, b, &self.json, &proof),
                    _ => false,
                };
                match (&self.cfg.token, proved) {
                    (None, _) => self.finish(Outcome::Failed(Failure::TokenRequired)),
                    (Some(_), false) => self.state = State::Decline,
                    (Some(_), true) => self.state = State::SendAnswer { nonce },
                }
            }
            _ => self.fail_protocol("internal: not a challenge"),
        }
    }

    pub(super) fn on_codec(&mut self, name: &str) {
        if (name != CODEC && name != STREAM_CODEC) || self.cfg.compress == Compress::Off {
            let words = format!("the server chose codec {name:?}, which was not offered");
            return self.fail_protocol(words);
        }
        self.pack.agreed = true;
        self.pack.streaming = name == STREAM_CODEC;
    }

    fn on_held(&mut self, accepted: Result<Option<(u64, u64)>, String>) {
        match accepted {
            Err(e) => self.fail_protocol(e),
            Ok(Some((from, to))) => {
                self.pending = Some(SendAction::HashBlocks { from, to });
                self.state = State::Plan;
            }
            Ok(None) => {
                self.state = State::Plan;
                self.plan();
            }
        }
    }

    fn on_hashed(&mut self, v: Vec<u32>) {
        if !matches!(self.state, State::Plan) {
            return self.fail_protocol("internal: hashes out of turn");
        }
        match self.outlet.add_hashes(v) {
            Ok(()) => self.plan(),
            Err(e) => self.fail_protocol(e),
        }
    }

    fn plan(&mut self) {
        self.outlet.plan();
        if let Some(ticket) = self.ticket.clone() {
            let blocks = self.outlet.take_queue();
            if !blocks.is_empty() {
                self.state = State::SendBlocks;
                self.pending = Some(SendAction::SendParallel { ticket, blocks });
                return;
            }
        }
        self.next_block();
    }

    /// The session granted by the server, if any.
    pub fn ticket(&self) -> Option<&crate::session::Ticket> {
        self.ticket.as_ref()
    }

    fn on_parallel_sent(&mut self, sent: Vec<(u64, u32)>) {
        if !matches!(self.state, State::SendBlocks) {
            return self.fail_protocol("internal: parallel blocks out of turn");
        }
        for (idx, crc) in sent {
            if let Err(e) = self.outlet.record_sent(idx, crc) {
                return self.fail_protocol(e);
            }
        }
        self.next_block();
    }

    fn next_block(&mut self) {
        match self.outlet.next_to_send() {
            Next::Block { head, action } => {
                self.state = State::SendBlocks;
                if let (SendAction::SendBlock { idx, offset, len }, Some(level)) =
                    (&action, self.pack_level())
                {
                    self.packing = Some((*idx, *offset, *len, head));
                    self.pending = Some(SendAction::PackBlock {
                        idx: *idx,
                        offset: *offset,
                        len: *len,
                        level,
                    });
                    return;
                }
                self.out.push_back(head.to_vec());
                self.pending = Some(action);
            }
            Next::End(frame) if self.cfg.recheck => {
                self.pending = Some(SendAction::Recheck);
                self.state = State::Recheck { frame };
            }
            Next::End(frame) => self.state = State::SendEnd { frame },
            Next::Unstable(list) => self.finish(Outcome::Failed(Failure::SourceUnstable(list))),
            Next::Broken(why) => self.fail_protocol(why),
        }
    }

    /// The zstd level to pack the next block at, if it is to be tried.
    fn pack_level(&mut self) -> Option<i32> {
        if !self.pack.agreed {
            return None;
        }
        match self.cfg.compress {
            Compress::Off => None,
            Compress::Zstd(level) => Some(level),
            Compress::Auto => self.auto.next_level(),
        }
    }

    /// A block was packed: its head goes out and the shell is asked for
    /// the payload (the trailer follows its CRC-32); or it did not pay and
    /// goes raw (its head now, its bytes streamed).
    fn on_packed(&mut self, p: Packed) {
        let Some((idx, offset, len, head)) = self.packing.take() else {
            return self.fail_protocol("internal: packed block out of turn");
        };
        if self.cfg.compress == Compress::Auto {
            let wire = p.wire.map(|w| w as usize);
            self.auto.record_compression(len as usize, wire, p.took);
        }
        match p.wire {
            Some(w) if w < len => {
                self.out
                    .push_back(v2::encode_packed_head(offset, len as u32, w as u32).to_vec());
                self.pack.blocks += 1;
                self.pack.raw_bytes += len;
                self.pack.wire_bytes += w;
                self.pending = Some(SendAction::SendPacked { idx, len });
            }
            _ => {
                self.pack.declined += 1;
                self.out.push_back(head.to_vec());
                self.pending = Some(SendAction::SendBlock { idx, offset, len });
            }
        }
    }

    fn on_block_sent(&mut self, crc: u32) {
        if !matches!(self.state, State::SendBlocks) {
            return self.fail_protocol("internal: block sent out of turn");
        }
        match self.outlet.sent(crc) {
            Ok(trailer) => {
                self.out.push_back(trailer.to_vec());
                self.next_block();
            }
            Err(why) => self.fail_protocol(why),
        }
    }

    fn on_verdict(&mut self, v: v2::Verdict) {
        match v {
            v2::Verdict::Ok => self.finish(Outcome::Stored),
            v2::Verdict::Stored(how) => {
                self.stored_as = how;
                self.finish(Outcome::Stored)
            }
            v2::Verdict::Failed(m) => self.finish(Outcome::Mismatch(m)),
            // The first block goes out at the next `poll_transmit`.
            v2::Verdict::Repair(list) => match self.outlet.repair(list) {
                Ok(()) => self.state = State::Repair,
                Err(e) => self.fail_protocol(e),
            },
        }
    }
}

fn msg_name(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Held { .. } => "held-list",
        ServerMsg::HeldSet { .. } => "held-set",
        ServerMsg::Error(_) => "error",
        ServerMsg::Fault(..) => "fault",
        ServerMsg::Challenge(_) | ServerMsg::BoundChallenge { .. } => "challenge",
        ServerMsg::Verdict(_) => "verdict",
        ServerMsg::Codec(_) => "codec",
        ServerMsg::Join(_) => "join",
        ServerMsg::ListPage { .. } => "list-page",
    }
}
