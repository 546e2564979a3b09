//! The [`Receiver`]: the server side of one upload connection, as a state
//! machine (diagram in the [module docs](super)). Bytes from the client go
//! in through [`Receiver::handle_input`]; bytes for the client come out of
//! [`Receiver::poll_transmit`]; storage and policy work comes out of
//! [`Receiver::poll_action`] and its result goes back in through
//! [`Receiver::handle_event`].
//!
//! Not for I/O, logging, counters or the claims registry: those are the
//! shell's, driven by the actions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crc32fast::Hasher;

use super::transfer::{Intake, Took};
use super::{
    earliest, Action, ClientDecoder, ClientItem, Deadline, Event, Fault, Fed, Held, Layout, PartId,
    Recheck, StoredAs, Timer, WriteAt, MAX_BLOCKS,
};
use crate::auth::{Token, NONCE_LEN};
use crate::getwire::{self, Op};
use crate::proto::{self, Header};
use crate::v2::{self, FaultCode, Offer, ServerMsg};
use crate::SafeName;

/// The receiver's limits and policy.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Version-2 clients must prove this token.
    pub token: Option<Token>,
    /// With a token: admit legacy clients without authentication.
    pub allow_legacy: bool,
    /// The whole header must arrive within this of the connection's start.
    pub header_timeout: Duration,
    /// The answer to a challenge must arrive within this.
    pub answer_timeout: Duration,
    /// Longest silence in the data phase.
    pub idle_timeout: Duration,
    /// Slowest acceptable data rate within a block, in bytes per second.
    pub min_rate: Option<u64>,
    /// Time allowed for a block on top of what `min_rate` gives.
    pub block_grace: Duration,
    /// How long a refused connection is drained so the refusal is read.
    pub drain: Duration,
    /// Most blocks per upload (bounds the memory of a connection).
    pub max_blocks: u64,
    /// Take compressed data frames from a client that offers zstd (it
    /// costs at most twice [`crate::compress::PACK_CHUNK`] of memory per
    /// connection while one is received).
    pub compression: bool,
    /// Inside TLS, the connection's channel binding: the challenge then
    /// carries the server's proof and the answer must cover the binding
    /// (see [`crate::auth`]). `None` in plaintext.
    pub binding: Option<[u8; crate::auth::BINDING_LEN]>,
}

impl Default for ReceiverConfig {
    fn default() -> ReceiverConfig {
        ReceiverConfig {
            token: None,
            allow_legacy: false,
            header_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            min_rate: None,
            block_grace: Duration::from_secs(10),
            drain: Duration::from_secs(3),
            max_blocks: MAX_BLOCKS,
            compression: true,
            binding: None,
        }
    }
}

/// How a connection ended, for the shell's log and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The file is stored (`CRC32_OK` / `V(ok)` sent).
    Stored,
    /// Verification failed; what was held is discarded.
    Mismatch(String),
    /// Refused or stopped for this reason (told to a version-2 client).
    Refused(Fault),
    /// The client went away in this state.
    Lost(&'static str),
    /// A deadline passed.
    TimedOut(Timer),
    /// A list request was answered in full.
    Listed,
    /// A download (`"op": "get"`) was asked for and, with a token,
    /// authenticated: the shell serves it (see [`crate::getwire`]).
    Download,
}

#[derive(Debug)]
struct Request {
    json: Vec<u8>,
    header: Header,
    name: SafeName,
    offer: Option<Offer>,
    /// The client offered zstd-compressed data frames.
    zstd: bool,
    /// The client offered a zstd stream per connection.
    zstd_stream: bool,
    /// Parallel streams: the session asked for (`bt.streams`) or joined
    /// (`bt.join`).
    streams: Option<u32>,
    join: Option<crate::session::Join>,
    /// What the header asks for.
    op: Op,
    /// A get by path (`"path": 1`): the checked tree path of the file.
    path: Option<String>,
}

#[derive(Debug)]
enum State {
    ReadLen {
        got: [u8; 4],
        n: usize,
    },
    ReadHeader {
        len: usize,
        buf: Vec<u8>,
    },
    Admit,
    Challenge,
    AwaitAnswer {
        dec: ClientDecoder,
    },
    Claim,
    OpenHeld,
    SendOffset {
        offset: u64,
        crc: u32,
    },
    Receiving {
        pos: u64,
        hasher: Hasher,
    },
    SendHeld,
    DataFrames,
    Repair {
        list: Vec<u64>,
    },
    Recheck {
        crc: u32,
    },
    Verify {
        ok: bool,
        words: String,
    },
    SendVerdict {
        bytes: Vec<u8>,
        ending: Ending,
    },
    Closing {
        ending: Ending,
    },
    Done(Ending),
    /// Answering a list request, page by page.
    Listing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Admit,
    Claim,
    Open,
    Recheck,
    Applied,
    Listed,
}

enum Why {
    Refuse(Fault),
    Lost(&'static str),
    Slow(Timer),
}

/// The server side of one connection. See the [module docs](super).
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    nonce: [u8; NONCE_LEN],
    state: State,
    req: Option<Request>,
    intake: Option<Intake>,
    out: VecDeque<Vec<u8>>,
    pending: Option<Action>,
    awaiting: Option<Expect>,
    phase: Option<Deadline>,
    idle: Option<Deadline>,
    magic_sent: bool,
    part_open: bool,
    rev: u64,
    /// The session granted to this (first) connection: sent as a `J`
    /// frame before the held list.
    ticket: Option<crate::session::Ticket>,
    /// What storing did to the name (after the commit).
    stored: StoredAs,
    /// A list request: the name asked about (`None` inside: everything).
    list: Option<Option<String>>,
    /// Whether the list request asked for directory entries.
    list_dirs: bool,
}

/// The revision a header that did not parse says it reads, so that its
/// refusal comes in a form it understands.
/// Whether a version-2 header asks for a listing (`bt.op`); an upload
/// when there is no op. An op this server does not know is refused in
/// words, before anything is touched.
/// What a header asks for beyond a plain upload.
#[derive(Default)]
struct Asks {
    /// The client offered zstd-compressed data frames.
    zstd: bool,
    /// The client offered a zstd stream per connection.
    zstd_stream: bool,
    streams: Option<u32>,
    join: Option<crate::session::Join>,
    op: Op,
    /// A get asked for its file by path (`"path": 1`).
    by_path: bool,
}

fn refused(e: impl std::fmt::Display) -> Fault {
    Fault::bad(format!("refused: {e}"))
}

/// The name a header asks for: a download's must be exactly a stored
/// file's name (an upload's is cut to its base name).
fn checked_name(header: &Header, op: Op) -> Result<SafeName, Fault> {
    match SafeName::from_wire(&header.filename) {
        Ok(n) if op == Op::Get && n.as_str() != header.filename => Err(Fault::new(
            FaultCode::NameRefused,
            strict_name(&header.filename),
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(Fault::new(FaultCode::NameRefused, format!("refused: {e}"))),
    }
}

/// The path a get by path asks for, checked as a tree's paths are (no
/// `..`, no absolute path, no control characters) and kept off the
/// server's own state; the file is then opened without following any
/// symlink on the way (`server::get`).
fn checked_path(header: &Header) -> Result<String, Fault> {
    let rel = crate::tree::RelPath::from_wire(&header.filename)
        .map_err(|e| Fault::new(FaultCode::NameRefused, format!("refused: {e}")))?;
    let top = rel.components().next().unwrap_or_default();
    if top == crate::server::tree::PARTS_DIR || top.eq_ignore_ascii_case(crate::name::RESERVED_NAME)
    {
        return Err(Fault::new(
            FaultCode::NameRefused,
            strict_name(&header.filename),
        ));
    }
    Ok(rel.as_str().to_owned())
}

fn requested_list(json: &[u8], offer: Option<Offer>) -> Result<bool, Fault> {
    if offer.is_none() {
        return Ok(false);
    }
    match crate::listing::requested_op(json) {
        Ok(None) => Ok(false),
        Ok(Some(op)) if op == crate::listing::OP_LIST => Ok(true),
        // Every other operation was checked by getwire::requested_op.
        Ok(Some(_)) => Ok(false),
        Err(e) => Err(Fault::bad(format!("refused: {e}"))),
    }
}

/// The name a list request's connection goes by in logs.
pub const LIST_LABEL: &str = "(list)";

fn guess_rev(json: &[u8]) -> u64 {
    crate::json::parse(json)
        .ok()
        .and_then(|v| match v.get("bt").and_then(|bt| bt.get("rev")) {
            Some(crate::json::Value::Number(n)) => n.as_u64(),
            _ => None,
        })
        .unwrap_or(1)
}

/// The refusal of a download name that is not a plain name in the
/// storage directory (an upload's name is cut to its base name; a
/// download's must already be one, so it never names something else).
fn strict_name(raw: &str) -> String {
    let shown: String = crate::text::printable(raw).chars().take(80).collect();
    format!(
        "refused: \"{shown}\" is not a file name in the storage directory (no '/', '\\', '..', or control characters)"
    )
}

fn internal(words: impl Into<String>) -> Why {
    Why::Refuse(Fault::new(FaultCode::Internal, words))
}

impl Receiver {
    /// A connection accepted at `now`; `nonce` is this connection's fresh
    /// challenge (random bytes from the shell, used only with a token).
    pub fn new(cfg: ReceiverConfig, nonce: [u8; NONCE_LEN], now: Instant) -> Receiver {
        let phase = Some(Deadline::after(now, cfg.header_timeout, Timer::Header));
        Receiver {
            cfg,
            nonce,
            state: State::ReadLen { got: [0; 4], n: 0 },
            req: None,
            intake: None,
            out: VecDeque::new(),
            pending: None,
            awaiting: None,
            phase,
            idle: None,
            magic_sent: false,
            part_open: false,
            rev: 1,
            ticket: None,
            stored: StoredAs::New,
            list: None,
            list_dirs: false,
        }
    }

    /// The current state's name (for logs and tests).
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::ReadLen { .. } => "ReadLen",
            State::ReadHeader { .. } => "ReadHeader",
            State::Admit => "Admit",
            State::Challenge => "Challenge",
            State::AwaitAnswer { .. } => "AwaitAnswer",
            State::Claim => "Claim",
            State::OpenHeld => "OpenHeld",
            State::SendOffset { .. } => "SendOffset",
            State::Receiving { .. } => "Receiving",
            State::SendHeld => "SendHeld",
            State::DataFrames => "DataFrames",
            State::Repair { .. } => "Repair",
            State::Recheck { .. } => "Recheck",
            State::Verify { .. } => "Verify",
            State::SendVerdict { .. } => "SendVerdict",
            State::Closing { .. } => "Closing",
            State::Done(_) => "Done",
            State::Listing => "Listing",
        }
    }

    /// How the connection ended, once it has (also while a refusal is
    /// being drained: the shell may act on it before it goes out).
    pub fn ending(&self) -> Option<&Ending> {
        match &self.state {
            State::Done(e) | State::Closing { ending: e } => Some(e),
            _ => None,
        }
    }

    /// Whether the shell should close the connection now: the connection
    /// has ended and nothing is left to transmit or to do (a last
    /// checkpoint is an action like any other).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
            && self.out.is_empty()
            && self.pending.is_none()
            && self.awaiting.is_none()
    }

    /// Whether the shell should shut down its write side and drain input
    /// (a refusal was sent and must not be lost to a reset).
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// The sanitised name of the upload, once the header was read.
    pub fn name(&self) -> Option<&SafeName> {
        self.req.as_ref().map(|r| &r.name)
    }

    /// The path a get by path (`"path": 1`) asks for, checked.
    pub fn get_path(&self) -> Option<&str> {
        self.req.as_ref().and_then(|r| r.path.as_deref())
    }

    /// The client's header, once it was read and accepted.
    pub fn header(&self) -> Option<&Header> {
        self.req.as_ref().map(|r| &r.header)
    }

    /// The client's version-2 offer (`None` for a legacy client or before
    /// the header).
    pub fn offer(&self) -> Option<Offer> {
        self.req.as_ref().and_then(|r| r.offer)
    }

    /// Protocol 1 while receiving: the CRC-32 of every byte received so far
    /// (those of the last [`WriteAt`] included), for
    /// [`HeldPart::write_grown`](super::HeldPart::write_grown).
    pub fn prefix_crc(&self) -> Option<u32> {
        match &self.state {
            State::Receiving { hasher, .. } => Some(hasher.clone().finalize()),
            _ => None,
        }
    }

    /// Bytes of file payload the machine takes next without any protocol
    /// decision in between (the rest of the version-1 file, or of the
    /// current data frame), so that a shell can read that many before it
    /// feeds them and the disk sees large writes.
    pub fn payload_left(&self) -> Option<u64> {
        if self.awaiting.is_some() || self.pending.is_some() {
            return None;
        }
        match &self.state {
            State::Receiving { pos, .. } => Some(self.geometry().0 - pos).filter(|&n| n > 0),
            State::DataFrames => self.intake.as_ref().and_then(Intake::payload_left),
            _ => None,
        }
    }

    /// Protocol 2, once every block is held: their CRC-32s in order (what
    /// a stored file's download is checked against).
    pub fn block_crcs(&self) -> Option<(u64, Vec<u32>)> {
        let held = self.intake.as_ref()?.held();
        let crcs = (0..held.count())
            .map(|i| held.crc(i))
            .collect::<Option<Vec<u32>>>()?;
        Some((held.block_size(), crcs))
    }

    /// While asking for a repair: the round (from 1) and how many blocks.
    pub fn repairing(&self) -> Option<(u32, usize)> {
        match &self.state {
            State::Repair { list } => {
                Some((self.intake.as_ref().map_or(0, Intake::round), list.len()))
            }
            _ => None,
        }
    }

    /// When [`Receiver::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.awaiting.is_some() || self.pending.is_some() {
            return None;
        }
        earliest(self.phase, self.idle).map(|d| d.at)
    }

    /// Time has come to `now`: a passed deadline ends the connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.awaiting.is_some() || self.pending.is_some() {
            return;
        }
        let Some(d) = earliest(self.phase, self.idle).filter(|d| d.passed(now)) else {
            return;
        };
        if let State::Closing { ending } = &self.state {
            self.state = State::Done(ending.clone());
        } else {
            self.fail(now, Why::Slow(d.timer));
        }
    }

    /// The next bytes to send to the client.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(b) = self.out.pop_front() {
            return Some(b);
        }
        match std::mem::replace(&mut self.state, State::Admit) {
            State::Challenge => {
                self.phase = Some(Deadline::after(now, self.cfg.answer_timeout, Timer::Answer));
                let (fs, block) = self.geometry();
                self.state = State::AwaitAnswer {
                    dec: ClientDecoder::new(fs, block),
                };
                Some(v2::encode_server_msg(&self.challenge()))
            }
            State::SendOffset { offset, crc } => {
                self.start_receiving(now, offset, crc);
                Some(proto::encode_offset(offset).to_vec())
            }
            State::SendHeld => {
                let rev = self.offer().map_or(0, |o| o.rev);
                let Some(msg) = self.intake.as_ref().map(|i| i.held().held_msg_for(rev)) else {
                    self.fail(now, internal("no held set"));
                    return self.out.pop_front();
                };
                self.enter_frames(now);
                Some(v2::encode_server_msg(&msg))
            }
            State::SendVerdict { bytes, ending } => {
                self.state = State::Done(ending);
                Some(bytes)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The next action for the shell (answer it with [`Receiver::handle_event`]).
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.awaiting.is_some() {
            return None;
        }
        let a = self.pending.take()?;
        self.awaiting = Some(match a {
            Action::Admit { .. } => Expect::Admit,
            Action::Claim { .. } | Action::Join { .. } => Expect::Claim,
            Action::OpenHeld(_) => Expect::Open,
            Action::Recheck => Expect::Recheck,
            Action::ListPage { .. } => Expect::Listed,
            _ => Expect::Applied,
        });
        Some(a)
    }

    /// The result of the last action or write.
    pub fn handle_event(&mut self, now: Instant, ev: Event) {
        let expect = self.awaiting.take();
        if matches!(self.state, State::Done(_) | State::Closing { .. }) {
            return;
        }
        match (expect, ev) {
            (Some(Expect::Admit), Event::Admitted(r)) => self.on_admitted(now, r),
            (Some(Expect::Claim), Event::Claimed(r)) => self.on_claimed(now, r),
            (Some(Expect::Open), Event::Opened(r)) => self.on_opened(now, r),
            (Some(Expect::Applied), Event::Applied(r)) => self.on_applied(now, r),
            (Some(Expect::Applied), Event::Committed(r)) => {
                if let Ok(how) = &r {
                    self.stored = how.clone();
                }
                self.on_applied(now, r.map(|_| ()))
            }
            (Some(Expect::Recheck), Event::Rechecked(r)) => self.on_rechecked(now, r),
            (Some(Expect::Listed), Event::Listed(r)) => self.on_listed(now, r),
            (_, ev) => self.fail(now, internal(format!("unexpected event {ev:?}"))),
        }
    }

    /// The client closed the connection or it broke.
    pub fn handle_eof(&mut self, now: Instant) {
        match &self.state {
            State::ReadLen { n: 0, .. } => self.state = State::Done(Ending::Lost("ReadLen")),
            State::Closing { ending } => self.state = State::Done(ending.clone()),
            // The verdict goes out (or fails to) whatever the client does.
            State::Done(_) | State::Verify { .. } | State::SendVerdict { .. } => {}
            _ => {
                let during = self.state_name();
                self.fail(now, Why::Lost(during));
            }
        }
    }

    /// Stops the upload from outside the protocol: another connection took
    /// it over, or the server is shutting down. A version-2 client is told
    /// `fault` (its code says whether to retry); what is held is kept.
    pub fn handle_abort(&mut self, now: Instant, fault: Fault) {
        self.fail(now, Why::Refuse(fault));
    }

    /// Bytes from the client. Call again with the rest until it uses
    /// nothing; answer a [`WriteAt`] with [`Event::Applied`].
    pub fn handle_input<'a>(&mut self, now: Instant, input: &'a [u8]) -> Fed<'a> {
        if input.is_empty() || self.awaiting.is_some() || self.pending.is_some() {
            return Fed::used(0);
        }
        match self.state {
            State::ReadLen { .. } => self.read_len(now, input),
            State::ReadHeader { .. } => self.read_header(now, input),
            State::AwaitAnswer { .. } => self.read_answer(now, input),
            State::Receiving { .. } => self.receive_v1(now, input),
            State::DataFrames => self.receive_frames(now, input),
            State::Closing { .. } => Fed::used(input.len()),
            _ => Fed::used(0),
        }
    }

    fn geometry(&self) -> (u64, u64) {
        let fs = self.req.as_ref().map_or(0, |r| r.header.filesize);
        let block = self.offer().map_or(v2::MIN_BLOCK, |o| o.block_size);
        (fs, block)
    }

    fn fail(&mut self, now: Instant, why: Why) {
        if matches!(self.state, State::Done(_) | State::Closing { .. }) {
            return;
        }
        let (ending, told) = match why {
            Why::Refuse(f) => (Ending::Refused(f.clone()), Some(f)),
            Why::Lost(during) => (Ending::Lost(during), None),
            Why::Slow(t) => (
                Ending::TimedOut(t),
                Some(Fault::new(
                    FaultCode::TooSlow,
                    format!("too slow: the {t:?} deadline passed"),
                )),
            ),
        };
        self.idle = None;
        self.phase = None;
        if self.part_open {
            // Keep every verified byte for the resume.
            self.pending = Some(Action::Checkpoint);
            self.part_open = false;
        }
        match told {
            Some(f) if self.magic_sent => {
                self.out.push_back(f.frame(self.rev));
                self.phase = Some(Deadline::after(now, self.cfg.drain, Timer::Drain));
                self.state = State::Closing { ending };
            }
            _ => self.state = State::Done(ending),
        }
    }

    fn read_len<'a>(&mut self, now: Instant, input: &'a [u8]) -> Fed<'a> {
        let State::ReadLen { got, n } = &mut self.state else {
            return Fed::used(0);
        };
        let take = (4 - *n).min(input.len());
        got[*n..*n + take].copy_from_slice(&input[..take]);
        *n += take;
        if *n == 4 {
            match proto::parse_header_len(*got) {
                Ok(len) => {
                    self.state = State::ReadHeader {
                        len,
                        buf: Vec::with_capacity(len),
                    }
                }
                Err(e) => self.fail(now, Why::Refuse(Fault::bad(format!("refused: {e}")))),
            }
        }
        Fed::used(take)
    }

    fn read_header<'a>(&mut self, now: Instant, input: &'a [u8]) -> Fed<'a> {
        let State::ReadHeader { len, buf } = &mut self.state else {
            return Fed::used(0);
        };
        let take = (*len - buf.len()).min(input.len());
        buf.extend_from_slice(&input[..take]);
        if buf.len() == *len {
            let json = std::mem::take(buf);
            self.on_header(now, json);
        }
        Fed::used(take)
    }

    fn say_magic(&mut self) {
        if !self.magic_sent {
            self.out.push_back(v2::MAGIC.to_vec());
            self.magic_sent = true;
        }
    }

    fn on_header(&mut self, now: Instant, json: Vec<u8>) {
        let (header, offer) = match self.parse_request(&json) {
            Ok(x) => x,
            Err(f) => return self.fail(now, Why::Refuse(f)),
        };
        self.phase = None;
        let asks = match offer {
            Some(o) => {
                self.say_magic();
                self.rev = o.rev;
                match self.read_offer(&json, &header, o) {
                    Ok(a) => a,
                    Err(f) => return self.fail(now, Why::Refuse(f)),
                }
            }
            None => Asks::default(),
        };
        match requested_list(&json, offer) {
            Ok(true) => return self.on_list_header(now, json, header, offer),
            Ok(false) => {}
            Err(f) => return self.fail(now, Why::Refuse(f)),
        }
        let path = match asks.by_path {
            true => match checked_path(&header) {
                Ok(p) => Some(p),
                Err(f) => return self.fail(now, Why::Refuse(f)),
            },
            false => None,
        };
        // A get by path goes by its base name in logs (checked above).
        let name = match path.as_deref().map(SafeName::from_wire) {
            Some(Ok(n)) => n,
            _ => match checked_name(&header, asks.op) {
                Ok(n) => n,
                Err(f) => return self.fail(now, Why::Refuse(f)),
            },
        };
        if offer.is_none() && self.cfg.token.is_some() && !self.cfg.allow_legacy {
            let f = Fault::new(
                FaultCode::AuthRequired,
                "refused a legacy (unauthenticated) client: this server requires a token",
            );
            return self.fail(now, Why::Refuse(f));
        }
        let Asks {
            zstd,
            zstd_stream,
            streams,
            join,
            op,
            by_path: _,
        } = asks;
        self.start_request(
            now,
            Request {
                json,
                header,
                name,
                offer,
                zstd,
                zstd_stream,
                streams,
                join,
                op,
                path,
            },
        );
    }

    /// The header parsed: a null CRC-32 is only for a client that offers
    /// version 2 (without a valid offer the header must pass the strict
    /// legacy parser). A refused header that mentions version 2 is told so
    /// in version 2's words.
    fn parse_request(&mut self, json: &[u8]) -> Result<(Header, Option<Offer>), Fault> {
        let parsed = v2::parse_header(json).and_then(|(h, o)| match o {
            None => proto::parse_header(json).map(|_| (h, o)),
            Some(_) => Ok((h, o)),
        });
        parsed.map_err(|e| {
            if json.windows(4).any(|w| w == b"\"bt\"") {
                self.rev = guess_rev(json);
                self.say_magic();
            }
            refused(e)
        })
    }

    /// A request accepted as well-formed: an upload is admitted next, a
    /// download only authenticated (it reserves no space, writes nothing).
    fn start_request(&mut self, now: Instant, req: Request) {
        let op = req.op;
        if op == Op::Upload {
            self.pending = Some(Action::Admit {
                name: req.name.clone(),
                filesize: req.header.filesize,
            });
        }
        self.req = Some(req);
        self.state = State::Admit;
        if op == Op::Get {
            self.on_admitted(now, Ok(()));
        }
    }

    /// What a version-2 offer asks for beyond an upload (sessions, the
    /// operation, compression), checked; a malformed ask is refused.
    fn read_offer(&self, json: &[u8], header: &Header, o: Offer) -> Result<Asks, Fault> {
        let streams = crate::session::offered_streams(json).map_err(refused)?;
        let join = crate::session::join_request(json).map_err(refused)?;
        let op = getwire::requested_op(json).map_err(refused)?;
        let by_path = op == Op::Get && getwire::requested_path(json).map_err(refused)?;
        let codecs = v2::offered_codecs(json).map_err(refused)?;
        let n = v2::block_count(header.filesize, o.block_size);
        if n > self.cfg.max_blocks {
            let words = format!("refused: {n} blocks are over this server's limit");
            return Err(Fault::new(FaultCode::TooLarge, words));
        }
        Ok(Asks {
            zstd: codecs.iter().any(|c| c == crate::compress::CODEC),
            zstd_stream: codecs.iter().any(|c| c == crate::compress::STREAM_CODEC),
            streams,
            join,
            op,
            by_path,
        })
    }

    fn on_admitted(&mut self, now: Instant, r: Result<(), Fault>) {
        if let Err(f) = r {
            return self.fail(now, Why::Refuse(f));
        }
        if self.offer().is_some() && self.cfg.token.is_some() {
            self.state = State::Challenge;
        } else {
            self.start_claim(false);
        }
    }

    /// A list request: after the token (when the server has one), pages
    /// of what the server holds, then the end. Nothing is admitted,
    /// claimed or opened.
    fn on_list_header(
        &mut self,
        now: Instant,
        json: Vec<u8>,
        header: Header,
        offer: Option<Offer>,
    ) {
        let asked = match crate::listing::requested_name(&json) {
            Ok(n) => n,
            Err(e) => return self.fail(now, Why::Refuse(Fault::bad(format!("refused: {e}")))),
        };
        // The request names no file: this placeholder only labels the
        // connection in logs (it is never claimed, opened or stored).
        let Ok(name) = SafeName::from_wire(LIST_LABEL) else {
            return self.fail(now, internal("the list label is not a valid name"));
        };
        self.list = Some(asked);
        self.list_dirs = crate::listing::requested_dirs(&json);
        self.req = Some(Request {
            json,
            header,
            name,
            offer,
            zstd: false,
            zstd_stream: false,
            streams: None,
            join: None,
            op: Op::List,
            path: None,
        });
        if self.cfg.token.is_some() {
            self.state = State::Challenge;
        } else {
            self.begin_list();
        }
    }

    fn begin_list(&mut self) {
        let name = self.list.clone().flatten();
        self.pending = Some(Action::ListPage {
            name,
            first: true,
            dirs: self.list_dirs,
        });
        self.state = State::Listing;
    }

    /// A page from the shell: sent at once (the shell transmits before its
    /// next action, so pages never pile up); the last one ends the answer.
    fn on_listed(
        &mut self,
        now: Instant,
        r: Result<(Vec<crate::listing::ListEntry>, bool), Fault>,
    ) {
        let (entries, last) = match r {
            Ok(x) => x,
            Err(f) => return self.fail(now, Why::Refuse(f)),
        };
        let frame = v2::encode_server_msg(&ServerMsg::ListPage { entries, last });
        if last {
            self.state = State::SendVerdict {
                bytes: frame,
                ending: Ending::Listed,
            };
        } else {
            self.out.push_back(frame);
            let name = self.list.clone().flatten();
            self.pending = Some(Action::ListPage {
                name,
                first: false,
                dirs: self.list_dirs,
            });
        }
    }

    fn start_claim(&mut self, authenticated: bool) {
        if self.list.is_some() {
            return self.begin_list();
        }
        if self.req.as_ref().is_some_and(|r| r.op == Op::Get) {
            self.state = State::Done(Ending::Download);
            return;
        }
        if let Some(j) = self.req.as_ref().and_then(|r| r.join.clone()) {
            self.pending = Some(Action::Join {
                join: j,
                authenticated,
            });
        } else if let Some(r) = &self.req {
            self.pending = Some(Action::Claim {
                name: r.name.clone(),
                authenticated,
            });
        }
        self.state = State::Claim;
    }

    /// The challenge to send: the bare nonce in plaintext; inside TLS the
    /// nonce with the server's proof of the token, bound to the connection.
    fn challenge(&self) -> ServerMsg {
        let proof = match (&self.cfg.token, &self.req) {
            (Some(t), Some(r)) => {
                t.challenge_proof(&self.nonce, self.cfg.binding.as_ref(), &r.json)
            }
            _ => None,
        };
        crate::v2::challenge_msg(self.nonce, proof)
    }

    fn read_answer<'a>(&mut self, now: Instant, input: &'a [u8]) -> Fed<'a> {
        let State::AwaitAnswer { dec } = &mut self.state else {
            return Fed::used(0);
        };
        let (used, item) = match dec.decode(input) {
            Ok(x) => x,
            Err(_) => (input.len(), Some(ClientItem::End(0))),
        };
        let answer = match item {
            None => return Fed::used(used),
            Some(ClientItem::Answer(a)) => a,
            Some(_) => {
                let f = Fault::new(
                    FaultCode::AuthFailed,
                    "authentication failed: the client did not answer the challenge",
                );
                self.fail(now, Why::Refuse(f));
                return Fed::used(used);
            }
        };
        let right = match (&self.cfg.token, &self.req) {
            (Some(t), Some(r)) => {
                t.check_challenge_answer(&self.nonce, self.cfg.binding.as_ref(), &r.json, &answer)
            }
            _ => false,
        };
        if right {
            self.phase = None;
            self.start_claim(true);
        } else {
            let f = Fault::new(FaultCode::AuthFailed, "authentication failed: wrong token");
            self.fail(now, Why::Refuse(f));
        }
        Fed::used(used)
    }

    fn on_claimed(&mut self, now: Instant, r: Result<(), Fault>) {
        if let Err(f) = r {
            return self.fail(now, Why::Refuse(f));
        }
        let Some(req) = &self.req else {
            return self.fail(now, internal("claimed without a header"));
        };
        let layout = match req.offer {
            Some(o) => Layout::Blocks {
                block: o.block_size,
            },
            None => Layout::Prefix {
                crc32: req.header.crc32,
            },
        };
        self.pending = Some(Action::OpenHeld(PartId {
            name: req.name.as_str().to_owned(),
            filesize: req.header.filesize,
            layout,
        }));
        self.state = State::OpenHeld;
    }

    fn on_opened(&mut self, now: Instant, r: Result<Held, Fault>) {
        let held = match r {
            Ok(h) => h,
            Err(f) => return self.fail(now, Why::Refuse(f)),
        };
        self.part_open = true;
        let (fs, block) = self.geometry();
        match (self.offer(), held) {
            (None, Held::Prefix { offset, crc32 }) if offset <= fs => {
                self.state = State::SendOffset { offset, crc: crc32 };
            }
            (Some(_), Held::Blocks(set)) if set.block_size() == block && set.filesize() == fs => {
                let mut intake = Intake::new(set);
                let asks = self.req.as_ref().filter(|_| self.cfg.compression);
                // Said before the held list, so the client knows it may
                // compress before it plans. The stream when offered.
                let codec = match asks {
                    Some(r) if r.zstd_stream => {
                        intake.accept_packed_stream();
                        Some(crate::compress::STREAM_CODEC)
                    }
                    Some(r) if r.zstd => {
                        intake.accept_packed();
                        Some(crate::compress::CODEC)
                    }
                    _ => None,
                };
                if let Some(name) = codec {
                    let codec = ServerMsg::Codec(name.into());
                    self.out.push_back(v2::encode_server_msg(&codec));
                }
                if let Some(t) = self.ticket.clone() {
                    self.out
                        .push_back(v2::encode_server_msg(&ServerMsg::Join(t)));
                }
                self.intake = Some(intake);
                self.state = State::SendHeld;
            }
            _ => self.fail(now, internal("the storage opened a part of another shape")),
        }
    }

    fn start_receiving(&mut self, now: Instant, offset: u64, crc: u32) {
        let (fs, _) = self.geometry();
        if offset == fs {
            return self.verify_v1(crc);
        }
        self.idle = Some(Deadline::after(now, self.cfg.idle_timeout, Timer::Idle));
        self.state = State::Receiving {
            pos: offset,
            hasher: Hasher::new_with_initial_len(crc, offset),
        };
    }

    fn receive_v1<'a>(&mut self, now: Instant, input: &'a [u8]) -> Fed<'a> {
        let (fs, _) = self.geometry();
        let State::Receiving { pos, hasher } = &mut self.state else {
            return Fed::used(0);
        };
        let n = (fs - *pos).min(input.len() as u64) as usize;
        if n == 0 {
            return Fed::used(0);
        }
        let bytes = &input[..n];
        hasher.update(bytes);
        let offset = *pos;
        *pos += n as u64;
        self.idle = Some(Deadline::after(now, self.cfg.idle_timeout, Timer::Idle));
        self.awaiting = Some(Expect::Applied);
        let bytes = std::borrow::Cow::Borrowed(bytes);
        Fed {
            used: n,
            write: Some(WriteAt { offset, bytes }),
        }
    }

    fn verify_v1(&mut self, crc: u32) {
        let want = self.req.as_ref().map_or(0, |r| r.header.crc32);
        self.idle = None;
        if crc == want {
            self.pending = Some(Action::Recheck);
            self.state = State::Recheck { crc };
        } else {
            self.pending = Some(Action::Discard);
            self.state = State::Verify {
                ok: false,
                words: "CRC-32 of the received file differs from the header's".into(),
            };
        }
    }

    fn enter_frames(&mut self, now: Instant) {
        self.idle = Some(Deadline::after(now, self.cfg.idle_timeout, Timer::Idle));
        self.state = State::DataFrames;
    }

    fn receive_frames<'a>(&mut self, now: Instant, input: &'a [u8]) -> Fed<'a> {
        let Some(intake) = &mut self.intake else {
            return Fed::used(0);
        };
        let (used, took) = match intake.take(input) {
            Ok(x) => x,
            Err(mut f) => {
                if f.code == FaultCode::BadRequest {
                    f.words = format!("protocol error: {}", f.words);
                }
                self.fail(now, Why::Refuse(f));
                return Fed::used(input.len());
            }
        };
        self.idle = Some(Deadline::after(now, self.cfg.idle_timeout, Timer::Idle));
        match took {
            Took::More => {}
            Took::Begin { idx, len } => {
                self.phase = self.cfg.min_rate.map(|rate| {
                    let secs = Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
                    Deadline::after(now, self.cfg.block_grace + secs, Timer::Block)
                });
                self.pending = Some(Action::BeginBlock { idx });
            }
            Took::Write(w) => {
                self.awaiting = Some(Expect::Applied);
                return Fed {
                    used,
                    write: Some(w),
                };
            }
            Took::Record { idx, crc, good } => {
                self.phase = None;
                self.pending = Some(Action::RecordBlock { idx, crc, good });
            }
            Took::End(crc) => {
                self.idle = None;
                self.phase = None;
                self.pending = Some(Action::Recheck);
                self.state = State::Recheck { crc };
            }
            other => {
                self.idle = None;
                self.decide(other);
            }
        }
        Fed::used(used)
    }

    /// Acts on the intake's decision after the end frame.
    fn decide(&mut self, took: Took<'_>) {
        match took {
            Took::Repair(list) => {
                self.pending = Some(Action::Checkpoint);
                self.state = State::Repair { list };
            }
            Took::Commit(whole_crc) => self.commit(whole_crc),
            Took::Discard(words) => self.discard(words),
            _ => {}
        }
    }

    fn commit(&mut self, whole_crc: u32) {
        self.pending = Some(Action::Commit { whole_crc });
        self.state = State::Verify {
            ok: true,
            words: String::new(),
        };
    }

    /// The storage's word on what it holds, before the verdict.
    fn on_rechecked(&mut self, now: Instant, r: Result<Recheck, Fault>) {
        let State::Recheck { crc } = self.state else {
            return self.fail(now, internal("recheck outside its state"));
        };
        if self.is_join() {
            // A joined stream's end only says its blocks were all handed
            // over; the session's first connection decides the upload.
            return self.commit(crc);
        }
        let r = match r {
            Ok(r) => r,
            Err(f) => return self.fail(now, Why::Refuse(f)),
        };
        match (self.intake.as_mut(), r) {
            (_, Recheck::Wrong(words)) => self.discard(words),
            (Some(intake), Recheck::Changed(list)) => {
                let took = intake.end(crc, &list);
                self.decide(took);
            }
            (Some(intake), Recheck::Same) => {
                let took = intake.end(crc, &[]);
                self.decide(took);
            }
            (None, _) => self.commit(crc),
        }
    }

    /// Whether this connection joins another's session (its blocks go to
    /// that connection; its end frame only closes the stream).
    pub fn is_join(&self) -> bool {
        self.req.as_ref().is_some_and(|r| r.join.is_some())
    }

    /// The session this connection asks to join (`bt.join`), if any.
    pub fn join_asked(&self) -> Option<&crate::session::Join> {
        self.req.as_ref().and_then(|r| r.join.as_ref())
    }

    /// The streams the client asked for (`bt.streams`), if any.
    pub fn streams_asked(&self) -> Option<u32> {
        self.req.as_ref().and_then(|r| r.streams)
    }

    /// The compression a download's client offered (see
    /// [`crate::getwire::requested_compress`]), when this server takes
    /// compression; `None`: its blocks go raw.
    pub fn download_compress(&self) -> Option<crate::compress::Compress> {
        if !self.cfg.compression {
            return None;
        }
        let r = self.req.as_ref()?;
        crate::getwire::requested_compress(&r.json)
    }

    /// Whether a list request asked for tree uploads by name (see
    /// [`crate::listing::TREE_NAMES_KEY`]).
    pub fn list_tree_names(&self) -> bool {
        self.req
            .as_ref()
            .is_some_and(|r| crate::listing::requested_tree_names(&r.json))
    }

    /// Grants a session: its `J` frame goes out before the held list.
    /// Call while executing [`Action::OpenHeld`].
    pub fn grant_session(&mut self, ticket: crate::session::Ticket) {
        self.ticket = Some(ticket);
    }

    /// Whether a block that arrived on a joined stream may be written now:
    /// in the data phase, nothing asked of the shell, and no block of this
    /// connection's own half received (whose bytes could interleave).
    pub fn can_take_joined(&self) -> bool {
        matches!(self.state, State::DataFrames)
            && self.pending.is_none()
            && self.awaiting.is_none()
            && self.intake.as_ref().is_some_and(Intake::between_blocks)
    }

    /// A block verified on a joined stream is about to be written: it no
    /// longer counts as held until [`Receiver::joined_block`].
    pub fn joining_block(&mut self, idx: u64) {
        if let Some(i) = self.intake.as_mut() {
            i.forget(idx);
        }
    }

    /// A block verified on a joined stream was written and recorded: it
    /// counts as held, and the upload is alive.
    pub fn joined_block(&mut self, now: Instant, idx: u64, crc: u32) {
        if let Some(i) = self.intake.as_mut() {
            i.mark(idx, crc);
        }
        self.idle = Some(Deadline::after(now, self.cfg.idle_timeout, Timer::Idle));
    }

    fn discard(&mut self, words: String) {
        self.pending = Some(Action::Discard);
        self.state = State::Verify { ok: false, words };
    }

    fn on_applied(&mut self, now: Instant, r: Result<(), Fault>) {
        let discarding = matches!(self.state, State::Verify { ok: false, .. });
        if let (Err(f), false) = (r, discarding) {
            return self.fail(now, Why::Refuse(f));
        }
        match std::mem::replace(&mut self.state, State::Admit) {
            State::Receiving { pos, hasher } => {
                if pos == self.geometry().0 {
                    self.verify_v1(hasher.finalize());
                } else {
                    self.state = State::Receiving { pos, hasher };
                }
            }
            State::Repair { list } => {
                let f = v2::encode_server_msg(&ServerMsg::Verdict(v2::Verdict::Repair(list)));
                self.out.push_back(f);
                self.enter_frames(now);
            }
            State::Verify { ok, words } => {
                self.part_open = false;
                self.state = self.verdict(ok, words);
            }
            other => self.state = other,
        }
    }

    /// What storing did to the name, after the verdict (for logs).
    pub fn stored_as(&self) -> &StoredAs {
        &self.stored
    }

    /// The OK verdict: saying what storing did to the name to a client
    /// that reads it, a plain OK to older ones.
    fn ok_verdict(&self) -> v2::Verdict {
        let reads = self.offer().is_some_and(|o| o.rev >= v2::REV_KEEP);
        match &self.stored {
            StoredAs::New => v2::Verdict::Ok,
            _ if !reads => v2::Verdict::Ok,
            how => v2::Verdict::Stored(how.clone()),
        }
    }

    fn verdict(&self, ok: bool, words: String) -> State {
        let ending = if ok {
            Ending::Stored
        } else {
            Ending::Mismatch(words.clone())
        };
        let bytes = match (self.offer().is_some(), ok) {
            (false, true) => proto::Verdict::Ok.as_bytes().to_vec(),
            (false, false) => proto::Verdict::Mismatch.as_bytes().to_vec(),
            (true, true) => v2::encode_server_msg(&ServerMsg::Verdict(self.ok_verdict())),
            (true, false) => v2::encode_server_msg(&ServerMsg::Verdict(v2::Verdict::Failed(words))),
        };
        State::SendVerdict { bytes, ending }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::MemStorage;
    use super::super::{apply, HeldPart, Storage};
    use super::*;

    /// Drives `rx` through its setup actions with `storage`, returning the
    /// bytes it transmitted and the open part.
    fn set_up(
        rx: &mut Receiver,
        storage: &MemStorage,
        now: Instant,
    ) -> (Vec<u8>, super::super::mem::MemPart) {
        let mut part = None;
        let mut out = Vec::new();
        loop {
            while let Some(b) = rx.poll_transmit(now) {
                out.extend(b);
            }
            let Some(a) = rx.poll_action() else { break };
            let ev = match a {
                Action::Admit { .. } => Event::Admitted(Ok(())),
                Action::Claim { .. } => Event::Claimed(Ok(())),
                Action::OpenHeld(id) => Event::Opened(storage.open(&id).map(|(p, h)| {
                    part = Some(p);
                    h
                })),
                other => panic!("{other:?}"),
            };
            rx.handle_event(now, ev);
        }
        (out, part.expect("opened"))
    }

    #[test]
    fn payload_left_is_the_rest_of_the_v1_file_then_nothing() {
        let now = Instant::now();
        let data = b"0123456789".to_vec();
        let h = Header {
            filename: "p.bin".into(),
            filesize: data.len() as u64,
            crc32: crc32fast::hash(&data),
        };
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; NONCE_LEN], now);
        let wire = proto::encode_header(&h).unwrap();
        assert_eq!(rx.payload_left(), None);
        assert_eq!(rx.handle_input(now, &wire).used, 4);
        assert_eq!(rx.handle_input(now, &wire[4..]).used, wire.len() - 4);
        let storage = MemStorage::new();
        let (out, mut part) = set_up(&mut rx, &storage, now);
        assert_eq!(out, proto::encode_offset(0));
        assert_eq!(rx.payload_left(), Some(10));
        let fed = rx.handle_input(now, &data[..4]);
        let w = fed.write.unwrap();
        assert_eq!((w.offset, &*w.bytes), (0, &data[..4]));
        assert_eq!(rx.payload_left(), None, "a write is outstanding");
        let r = part.write_at(w.offset, &w.bytes);
        rx.handle_event(now, Event::Applied(r));
        assert_eq!(rx.payload_left(), Some(6));
    }

    #[test]
    fn a_v1_part_the_storage_disowns_ends_in_a_mismatch_with_its_words() {
        let now = Instant::now();
        let data = b"abc".to_vec();
        let h = Header {
            filename: "w.bin".into(),
            filesize: 3,
            crc32: crc32fast::hash(&data),
        };
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; NONCE_LEN], now);
        let wire = proto::encode_header(&h).unwrap();
        let mut at = 0;
        while at < wire.len() {
            at += rx.handle_input(now, &wire[at..]).used;
        }
        let storage = MemStorage::new();
        let (_, mut part) = set_up(&mut rx, &storage, now);
        let w = rx.handle_input(now, &data).write.unwrap();
        let r = part.write_at(w.offset, &w.bytes);
        rx.handle_event(now, Event::Applied(r));
        assert_eq!(rx.poll_action(), Some(Action::Recheck));
        rx.handle_event(now, Event::Rechecked(Ok(Recheck::Wrong("changed".into()))));
        let a = rx.poll_action().unwrap();
        assert_eq!(a, Action::Discard);
        let ev = apply(&mut part, &a).unwrap();
        rx.handle_event(now, ev);
        assert_eq!(
            rx.poll_transmit(now),
            Some(proto::Verdict::Mismatch.as_bytes().to_vec())
        );
        assert_eq!(rx.ending(), Some(&Ending::Mismatch("changed".into())));
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;
    use crate::listing::{encode_list_request, EntryKind, ListEntry};

    fn feed(rx: &mut Receiver, now: Instant, wire: &[u8]) {
        let mut at = 0;
        while at < wire.len() {
            at += rx.handle_input(now, &wire[at..]).used;
        }
    }

    fn offer() -> Offer {
        Offer {
            version: 2,
            block_size: v2::MIN_BLOCK,
            rev: v2::REV_KEEP,
            source: None,
        }
    }

    fn frames(bytes: &[u8]) -> Vec<ServerMsg> {
        assert_eq!(&bytes[..8], &v2::MAGIC);
        let mut dec = super::super::ServerDecoder::new(1 << 20);
        let mut out = Vec::new();
        let mut rest = &bytes[8..];
        while !rest.is_empty() {
            let (used, msg) = dec.decode(rest).unwrap();
            out.extend(msg);
            rest = &rest[used..];
        }
        out
    }

    fn entry(name: &str) -> ListEntry {
        ListEntry {
            kind: EntryKind::File,
            name: name.as_bytes().to_vec(),
            size: 1,
            mtime: 2,
            crc32: Some(3),
            held: 1,
            files: None,
        }
    }

    #[test]
    fn only_a_list_request_with_dirs_asks_the_shell_for_directories() {
        let now = Instant::now();
        for (dirs, name) in [(true, None), (false, None), (true, Some("t"))] {
            let mut rx = Receiver::new(ReceiverConfig::default(), [0; NONCE_LEN], now);
            let req = crate::listing::encode_list_request_with(name, dirs, offer());
            feed(&mut rx, now, &req);
            let a = rx.poll_action();
            let want = Action::ListPage {
                name: name.map(str::to_string),
                first: true,
                dirs,
            };
            assert_eq!(a, Some(want));
        }
    }

    #[test]
    fn a_list_request_is_answered_page_by_page_without_claiming_anything() {
        let now = Instant::now();
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; NONCE_LEN], now);
        feed(&mut rx, now, &encode_list_request(Some("x.bin"), offer()));
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            while let Some(b) = rx.poll_transmit(now) {
                out.extend(b);
            }
            let Some(a) = rx.poll_action() else { break };
            let Action::ListPage { name, first, dirs } = a else {
                panic!("{a:?}")
            };
            // An old-style request (no "dirs") is never sent directories.
            assert_eq!(
                (name.as_deref(), first, dirs),
                (Some("x.bin"), pages == 0, false)
            );
            pages += 1;
            let page = (vec![entry(&format!("x.bin.~{pages}~"))], pages == 3);
            rx.handle_event(now, Event::Listed(Ok(page)));
        }
        assert_eq!(rx.ending(), Some(&Ending::Listed));
        let got = frames(&out);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            ServerMsg::ListPage {
                entries: vec![entry("x.bin.~3~")],
                last: true
            }
        );
    }

    #[test]
    fn only_revision_4_clients_are_told_what_storing_did() {
        let now = Instant::now();
        for (rev, how, want) in [
            (
                4,
                StoredAs::Kept("a.~1~".into()),
                v2::Verdict::Stored(StoredAs::Kept("a.~1~".into())),
            ),
            (
                4,
                StoredAs::Unchanged,
                v2::Verdict::Stored(StoredAs::Unchanged),
            ),
            (4, StoredAs::New, v2::Verdict::Ok),
            (3, StoredAs::Kept("a.~1~".into()), v2::Verdict::Ok),
            (2, StoredAs::Unchanged, v2::Verdict::Ok),
        ] {
            let mut rx = Receiver::new(ReceiverConfig::default(), [0; NONCE_LEN], now);
            rx.req = Some(Request {
                json: Vec::new(),
                header: Header {
                    filename: "a".into(),
                    filesize: 1,
                    crc32: 0,
                },
                name: SafeName::from_wire("a").unwrap(),
                offer: Some(Offer { rev, ..offer() }),
                zstd: false,
                zstd_stream: false,
                streams: None,
                join: None,
                op: Op::Upload,
                path: None,
            });
            rx.stored = how;
            assert_eq!(rx.ok_verdict(), want, "rev {rev}");
        }
    }

    #[test]
    fn an_unknown_op_is_refused_in_words_and_a_token_is_asked_for_a_list() {
        let now = Instant::now();
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; NONCE_LEN], now);
        let json = br#"{"filename": "", "filesize": 0, "crc32": null, "bt": {"v": 2, "block": 65536, "rev": 4, "op": "fly"}}"#;
        let mut wire = (json.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(json);
        feed(&mut rx, now, &wire);
        assert_eq!(rx.poll_action(), None);
        let Some(Ending::Refused(f)) = rx.ending() else {
            panic!("{:?}", rx.ending())
        };
        assert_eq!(f.code, FaultCode::BadRequest);
        assert!(f.words.contains("unknown operation \"fly\""), "{}", f.words);

        let token = Token::new(b"correct horse battery staple 42".to_vec()).unwrap();
        let cfg = ReceiverConfig {
            token: Some(token),
            ..ReceiverConfig::default()
        };
        let mut rx = Receiver::new(cfg, [9; NONCE_LEN], now);
        feed(&mut rx, now, &encode_list_request(None, offer()));
        let mut out = Vec::new();
        while let Some(b) = rx.poll_transmit(now) {
            out.extend(b);
        }
        assert_eq!(rx.poll_action(), None, "nothing listed before the answer");
        assert_eq!(frames(&out), vec![ServerMsg::Challenge([9; NONCE_LEN])]);
    }
}
