//! Parallel streams on the client: one upload's planned blocks sent over
//! the first connection and joined ones, all pulling from one shared
//! queue (not fixed ranges), so a slow stream never holds the tail: once
//! the queue is empty, a block in flight too long on one stream is sent
//! again by an idle one. How many streams, and when, is client/grow.rs's
//! decision (`auto`: what the windows need for 1 Gbit/s at once, then
//! more while the first connection is window-bound or lossy and the
//! throughput rises), up to [`MAX_STREAMS`].
//!
//! Joined connections speak a small fixed exchange (header with the join,
//! challenge when the server has a token, held list, data frames, end,
//! verdict) without the machine: they never plan, repair or decide; the
//! first connection's machine does. Not for retries (the parent's): a
//! joined stream that fails gives its block back and ends; the first
//! connection failing ends the attempt.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::grow::auto_start;
pub(super) use super::grow::Grow;
pub(super) use super::grow::AUTO_MIN_RTT;
use super::pack::Packing;
use super::shell::{send_range, SendError};
use crate::auth::Token;
use crate::compress::{AutoCompressor, AutoConfig, Compress, STREAM_CODEC};
use crate::machine::ServerDecoder;
use crate::proto::Header;
use crate::session::{Ticket, MAX_STREAMS};
use crate::transport::{Shutdown, TcpTransport, TlsTransport, Transport};
use crate::v2::{self, ServerMsg};

/// How many connections one upload uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Exactly this many (1: one connection, as before streams existed).
    Fixed(u32),
    /// One on a round trip under 1 ms; else what the windows need for
    /// 1 Gbit/s at once, then more while the throughput keeps rising,
    /// up to [`MAX_STREAMS`] (client/grow.rs).
    Auto,
}

impl Streams {
    /// Parses `N` (1 ..= 8) or `auto`.
    pub fn parse(s: &str) -> Result<Streams, String> {
        if s == "auto" {
            return Ok(Streams::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=MAX_STREAMS).contains(&n) => Ok(Streams::Fixed(n)),
            _ => Err(format!(
                "--streams takes a number from 1 to {MAX_STREAMS} or \"auto\", not {s:?}"
            )),
        }
    }

    /// The streams to ask the server for (`None`: one, no session).
    pub fn ask(self) -> Option<u32> {
        match self {
            Streams::Fixed(n) if n > 1 => Some(n.min(MAX_STREAMS)),
            Streams::Fixed(_) => None,
            Streams::Auto => Some(MAX_STREAMS),
        }
    }

    /// The streams to ask for on a connection whose round trip the kernel
    /// measured as `rtt`, and what `auto` decided (for the notes). `auto`
    /// on a short path asks for none: one stream there is bound by CPU or
    /// disk, never by its window, so more would only share them (and the
    /// single-connection path costs nothing extra).
    pub fn ask_on(self, rtt: Option<Duration>) -> (Option<u32>, Option<String>) {
        match (self, rtt) {
            (Streams::Auto, Some(r)) if r < AUTO_MIN_RTT => (
                None,
                Some(format!(
                    "auto kept one stream: round trip {:.2} ms, under {} ms, where one stream is not window-bound",
                    r.as_secs_f64() * 1e3,
                    AUTO_MIN_RTT.as_millis()
                )),
            ),
            _ => (self.ask(), None),
        }
    }
}

/// The kernel's round-trip estimate of a connected socket, if it says.
pub fn rtt_of(t: &dyn Transport) -> Option<Duration> {
    crate::sys::tcp_rtt(t.fd())
}

impl std::fmt::Display for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Streams::Fixed(n) => write!(f, "{n}"),
            Streams::Auto => f.write_str("auto"),
        }
    }
}

/// A block in flight: since when, and whether an idle stream took it too.
struct Flight {
    since: Instant,
    doubled: bool,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<u64>,
    flying: HashMap<u64, Flight>,
    done: HashMap<u64, u32>,
    /// A download's blocks being written, piece by piece, by how many
    /// streams (an idle stream may fetch a straggler's block again).
    writing: HashMap<u64, u32>,
    /// Blocks a damaged copy was written over while another copy was
    /// being written: none of those copies counts.
    spoiled: HashSet<u64>,
    /// Time blocks took on the wire, summed, and how many.
    took: Duration,
    count: u32,
}

/// The shared queue of one parallel send (or download: `client::get`).
pub(super) struct Work {
    q: Mutex<Queue>,
    cv: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) bytes: AtomicU64,
    /// Joined streams the server admitted.
    pub(super) joined: AtomicU64,
    /// Blocks sent compressed, their raw and their wire bytes.
    packed: [AtomicU64; 3],
    pub(super) cuts: Mutex<Vec<Shutdown>>,
    pub(super) notes: Mutex<Vec<String>>,
    /// `--limit-rate` over all streams together, from `started`.
    limit: Option<u64>,
    started: Instant,
}

/// Least time in flight before a block is sent again by an idle stream.
const STRAGGLER_MIN: Duration = Duration::from_millis(300);

impl Work {
    pub(super) fn new(blocks: Vec<u64>, limit: Option<u64>) -> Work {
        Work {
            q: Mutex::new(Queue {
                pending: blocks.into(),
                ..Queue::default()
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            packed: Default::default(),
            cuts: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
            limit,
            started: Instant::now(),
        }
    }

    /// The next block for a stream: from the queue, else a straggler's
    /// (in flight over three times the mean block time), else `None` once
    /// nothing is left in flight.
    pub(super) fn take(&self) -> Option<u64> {
        let mut q = self.q.lock().ok()?;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(i) = q.pending.pop_front() {
                let f = Flight {
                    since: Instant::now(),
                    doubled: false,
                };
                q.flying.insert(i, f);
                return Some(i);
            }
            if q.flying.is_empty() {
                return None;
            }
            let mean = q.took.checked_div(q.count.max(1)).unwrap_or_default();
            let limit = (mean * 3).max(STRAGGLER_MIN);
            let late = q
                .flying
                .iter_mut()
                .filter(|(_, f)| !f.doubled && f.since.elapsed() > limit)
                .min_by_key(|(_, f)| f.since);
            if let Some((&i, f)) = late {
                f.doubled = true;
                return Some(i);
            }
            q = self.cv.wait_timeout(q, Duration::from_millis(50)).ok()?.0;
        }
    }

    pub(super) fn done(&self, idx: u64, crc: u32, took: Duration, len: u64) {
        self.bytes.fetch_add(len, Ordering::Relaxed);
        if let Ok(mut q) = self.q.lock() {
            q.done.insert(idx, crc);
            q.flying.remove(&idx);
            q.took += took;
            q.count += 1;
        }
        self.cv.notify_all();
    }

    /// The next block from the queue without waiting (never a
    /// straggler's): for a stream that still has blocks in flight.
    pub(super) fn take_pending(&self) -> Option<u64> {
        if self.stop.load(Ordering::SeqCst) {
            return None;
        }
        let mut q = self.q.lock().ok()?;
        let i = q.pending.pop_front()?;
        let f = Flight {
            since: Instant::now(),
            doubled: false,
        };
        q.flying.insert(i, f);
        Some(i)
    }

    /// Block `idx` starts arriving now: its time in flight counts from
    /// here (a download asks for blocks ahead; waiting behind the others
    /// of its stream is not being late).
    pub(super) fn arriving(&self, idx: u64) {
        if let Ok(mut q) = self.q.lock() {
            if let Some(f) = q.flying.get_mut(&idx) {
                f.since = Instant::now();
            }
        }
    }

    /// The blocks done so far.
    pub(super) fn done_blocks(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .q
            .lock()
            .map(|q| q.done.keys().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// A stream failed with `idx` in flight: it goes back to the queue.
    pub(super) fn failed(&self, idx: u64) {
        if let Ok(mut q) = self.q.lock() {
            if !q.done.contains_key(&idx) && q.flying.remove(&idx).is_some() {
                q.pending.push_front(idx);
            }
        }
        self.cv.notify_all();
    }

    /// A download's stream starts writing block `idx` into the part.
    pub(super) fn begin_write(&self, idx: u64) {
        if let Ok(mut q) = self.q.lock() {
            *q.writing.entry(idx).or_insert(0) += 1;
        }
    }

    /// A download's stream wrote all of block `idx` (`good`: its CRC-32
    /// matched), or stopped writing it (broken, damaged: not `good`).
    /// Whether it is held now. Pieces are written before the block's
    /// CRC-32 is known, so a bad copy may have overwritten another copy
    /// of the same block: a good one done before is undone, and copies
    /// being written meanwhile do not count; the block goes back to the
    /// queue once no copy is being written.
    pub(super) fn end_write(&self, idx: u64, len: u64, good: Option<(u32, Duration)>) -> bool {
        let Ok(mut q) = self.q.lock() else {
            return false;
        };
        let others = match q.writing.get_mut(&idx) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if others == 0 {
            q.writing.remove(&idx);
        }
        let held = match good {
            Some((crc, took)) if !q.spoiled.contains(&idx) => {
                drop(q);
                self.done(idx, crc, took, len);
                return true;
            }
            Some(_) => false,
            None => {
                if q.done.remove(&idx).is_some() {
                    self.bytes.fetch_sub(len, Ordering::Relaxed);
                }
                if others > 0 {
                    q.spoiled.insert(idx);
                }
                false
            }
        };
        if others == 0 {
            q.spoiled.remove(&idx);
            if !q.done.contains_key(&idx) && !q.pending.contains(&idx) {
                q.flying.remove(&idx);
                q.pending.push_front(idx);
            }
        }
        drop(q);
        self.cv.notify_all();
        held
    }

    /// Sleeps as needed to keep all streams together under the limit.
    pub(super) fn pace(&self) {
        let Some(rate) = self.limit else { return };
        let sent = self.bytes.load(Ordering::Relaxed);
        let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    pub(super) fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(c) = self.cuts.lock() {
            for s in c.iter() {
                s.shutdown();
            }
        }
        self.cv.notify_all();
    }

    pub(super) fn note(&self, words: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(words);
        }
    }
}

/// How to open a joined connection like the first one.
pub(super) struct Dialer {
    pub(super) addr: SocketAddr,
    /// TLS pinned to the key the first connection saw; `None`: plaintext.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) connect_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) io_timeout: Duration,
    pub(super) congestion: Option<String>,
    pub(super) limit_rate: Option<u64>,
    /// The compression asked for, when the first connection agreed it
    /// with the server (else `Off`): every stream packs blocks the same way.
    pub(super) compress: Compress,
    /// The first connection agreed one zstd stream per connection: its
    /// packer goes on in a new stream (joined streams agree their own).
    pub(super) stream_codec: bool,
    pub(super) filename: String,
    /// A download's `filename` is a tree path (`"path": 1`).
    pub(super) by_path: bool,
    pub(super) filesize: u64,
    pub(super) block: u64,
    pub(super) source: Option<[u8; 16]>,
    pub(super) token: Option<Token>,
    pub(super) ticket: Ticket,
}

/// What a parallel send did.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// Each block sent and its CRC-32.
    pub(super) sent: Vec<(u64, u32)>,
    /// Streams that carried blocks: the first and the joins the server
    /// admitted.
    pub(super) streams: u32,
    /// File bytes sent over all streams (doubled blocks count twice).
    pub(super) bytes: u64,
    /// Why joined streams ended early or were refused.
    pub(super) notes: Vec<String>,
    /// Blocks sent compressed, their raw bytes and their wire bytes.
    pub(super) packed: (u64, u64, u64),
}

/// Sends `blocks` over `primary` and joined streams (`mode`), calling
/// `tick` with the bytes sent so far after each block of the first
/// connection (an `Err` stops everything). A socket error on the first
/// connection ends the send.
pub(super) fn run(
    primary: &mut dyn Transport,
    file: &File,
    blocks: Vec<u64>,
    mode: super::Streams,
    dialer: Dialer,
    tick: &mut dyn FnMut(u64) -> crate::Result<()>,
) -> Result<Report, SendError> {
    let work = Arc::new(Work::new(blocks, dialer.limit_rate));
    let dialer = Arc::new(dialer);
    let mut joins = Vec::new();
    // The path's own round trip: the smoothed one may carry a queue
    // left by an earlier transfer (measured: 47 ms on a 20 ms path).
    let rtt = crate::sys::tcp_sample(primary.fd())
        .map(|s| Duration::from_micros(u64::from(s.min_rtt_us)))
        .filter(|r| !r.is_zero())
        .or_else(|| rtt_of(primary));
    let start = auto_start(rtt, crate::sys::send_window_ceiling(primary.fd()));
    let mut grow = Grow::starting(mode, start, rtt, Instant::now());
    if mode == super::Streams::Auto && start > 1 {
        work.note(format!(
            "auto opened {start} streams at once: round trip {:.0} ms, where one stream's window caps it",
            rtt.unwrap_or_default().as_secs_f64() * 1e3
        ));
    }
    let mut buf = vec![0u8; crate::crc::READ_BLOCK];
    let mut packer = Packer::new(dialer.compress, dialer.stream_codec);
    let r = loop {
        let bytes = work.bytes.load(Ordering::Relaxed);
        let sample = crate::sys::tcp_sample(primary.fd());
        for _ in 0..grow.more(Instant::now(), bytes, sample) {
            joins.push(spawn_join(&work, &dialer, file));
        }
        let Some(idx) = work.take() else {
            break Ok(());
        };
        if let Err(e) = send_one(primary, file, &work, &dialer, idx, &mut buf, &mut packer) {
            work.failed(idx);
            break Err(e);
        }
        if let Err(e) = tick(work.bytes.load(Ordering::Relaxed)) {
            // Interrupted: the caller cancelled (not a source error).
            let e = std::io::Error::new(std::io::ErrorKind::Interrupted, e.to_string());
            break Err(SendError::Source(e));
        }
    };
    if r.is_err() {
        work.halt();
    }
    settle(&work, &joins);
    for j in joins {
        let _ = j.join();
    }
    r?;
    let q = work.q.lock().map_err(|_| poisoned())?;
    let mut sent: Vec<(u64, u32)> = q.done.iter().map(|(&i, &c)| (i, c)).collect();
    sent.sort_unstable();
    let notes = work.notes.lock().map(|n| n.clone()).unwrap_or_default();
    Ok(Report {
        sent,
        streams: 1 + work
            .joined
            .load(Ordering::SeqCst)
            .min(u64::from(MAX_STREAMS - 1)) as u32,
        bytes: work.bytes.load(Ordering::Relaxed),
        notes,
        packed: (
            work.packed[0].load(Ordering::Relaxed),
            work.packed[1].load(Ordering::Relaxed),
            work.packed[2].load(Ordering::Relaxed),
        ),
    })
}

/// Waits for the joined streams to hand their blocks over; one stuck
/// longer than a few block times (a dead path whose writes hang until the
/// write timeout) is cut: the server asks for its blocks again, and the
/// first connection sends them.
fn settle(work: &Work, joins: &[std::thread::JoinHandle<()>]) {
    let mean = work
        .q
        .lock()
        .map(|q| q.took.checked_div(q.count.max(1)).unwrap_or_default())
        .unwrap_or_default();
    let until = Instant::now() + (mean * 4).max(SETTLE_MIN);
    while Instant::now() < until && joins.iter().any(|j| !j.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if joins.iter().any(|j| !j.is_finished()) {
        work.note("a joined stream did not finish in time and was cut".into());
        work.halt();
    }
}

/// Least wait for joined streams to end after the last block.
const SETTLE_MIN: Duration = Duration::from_secs(3);

fn poisoned() -> SendError {
    SendError::Source(std::io::Error::other(
        "internal: the block queue was poisoned",
    ))
}

/// Sends block `idx` as a data frame.
fn send_one(
    s: &mut dyn Transport,
    file: &File,
    work: &Work,
    d: &Dialer,
    idx: u64,
    buf: &mut [u8],
    packer: &mut Packer,
) -> Result<(), SendError> {
    let (offset, len) = v2::block_range(d.filesize, d.block, idx);
    let started = Instant::now();
    if let Some(level) = packer.level() {
        // A block that did not pay goes raw below, read again.
        if let Some(crc) = packer.send(s, file, work, (offset, len), level, buf)? {
            work.done(idx, crc, started.elapsed(), len);
            work.pace();
            return Ok(());
        }
    }
    s.write_all(&v2::encode_data_head(offset, len as u32))
        .map_err(SendError::Socket)?;
    let mut h = crc32fast::Hasher::new();
    let n = send_range(s, file, offset, len as usize, buf, &mut |b| h.update(b))?;
    if (n as u64) < len {
        let e = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the source became shorter while being sent (at byte {})",
                offset + n as u64
            ),
        );
        return Err(SendError::Source(e));
    }
    let crc = h.finalize();
    s.write_all(&crc.to_be_bytes()).map_err(SendError::Socket)?;
    packer.sent(len as usize, started.elapsed());
    work.done(idx, crc, started.elapsed(), len);
    work.pace();
    Ok(())
}

fn spawn_join(work: &Arc<Work>, d: &Arc<Dialer>, file: &File) -> std::thread::JoinHandle<()> {
    let (work, d) = (Arc::clone(work), Arc::clone(d));
    let file = file.try_clone();
    std::thread::spawn(move || {
        let r = file
            .map_err(|e| format!("cannot open the source again: {e}"))
            .and_then(|f| join_stream(&work, &d, &f));
        if let Err(words) = r {
            work.note(words);
        }
    })
}

/// One joined stream, from connecting to the server's word that it
/// handed every block over.
fn join_stream(work: &Work, d: &Dialer, file: &File) -> Result<(), String> {
    let mut s = dial(d)?;
    if let Ok(mut c) = work.cuts.lock() {
        c.push(s.shutdown_handle());
    }
    let agreed = handshake(s.as_mut(), d)?;
    work.joined.fetch_add(1, Ordering::SeqCst);
    let mut buf = vec![0u8; crate::crc::READ_BLOCK];
    let mut packer = match agreed {
        Some(streaming) => Packer::new(d.compress, streaming),
        None => Packer::new(Compress::Off, false),
    };
    while let Some(idx) = work.take() {
        if let Err(e) = send_one(s.as_mut(), file, work, d, idx, &mut buf, &mut packer) {
            work.failed(idx);
            return Err(match e {
                SendError::Socket(e) => format!("a joined stream broke: {e}"),
                SendError::Source(e) => format!("a joined stream could not read the source: {e}"),
            });
        }
    }
    if work.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    s.write_all(&v2::encode_end(0))
        .map_err(|e| format!("a joined stream broke at its end: {e}"))?;
    match read_msg(s.as_mut(), d.io_timeout)? {
        ServerMsg::Verdict(v2::Verdict::Ok) => Ok(()),
        other => Err(format!("a joined stream ended with {other:?}")),
    }
}

pub(super) fn dial(d: &Dialer) -> Result<Box<dyn Transport>, String> {
    let sock = TcpStream::connect_timeout(&d.addr, d.connect_timeout)
        .map_err(|e| format!("cannot open another stream to {}: {e}", d.addr))?;
    let _ = sock.set_nodelay(true);
    if let Some(cc) = &d.congestion {
        let _ = crate::congestion::request(&sock, cc);
    }
    let t: Box<dyn Transport> = match &d.tls {
        Some(cfg) => Box::new(
            TlsTransport::connect(sock, Arc::clone(cfg), d.handshake_timeout)
                .map_err(|e| format!("TLS on another stream failed: {e:?}"))?,
        ),
        None => Box::new(TcpTransport::new(sock).map_err(|e| e.to_string())?),
    };
    t.set_write_timeout(Some(d.io_timeout))
        .map_err(|e| e.to_string())?;
    Ok(t)
}

/// Header with the join, the greeting, the challenge if any, the held
/// list (ignored: the first connection planned). Whether the server took
/// compressed frames on this stream (`Some`), and whether as one zstd
/// stream (`Some(true)`).
fn handshake(s: &mut dyn Transport, d: &Dialer) -> Result<Option<bool>, String> {
    let binding = s.channel_binding();
    let join = d.ticket.join(binding.as_ref()).map_err(|e| e.to_string())?;
    let header = Header {
        filename: d.filename.clone(),
        filesize: d.filesize,
        crc32: 0,
    };
    let offer = v2::Offer {
        version: v2::VERSION,
        block_size: d.block,
        rev: v2::REV_HOLES,
        source: d.source,
    };
    let extra = v2::Extra {
        streams: None,
        join: Some(join),
    };
    let codecs: &[&str] = if d.compress == Compress::Off {
        &[]
    } else {
        crate::machine::offered_codecs(d.tls.is_some())
    };
    let frame =
        v2::encode_header_ext(&header, None, offer, codecs, &extra).map_err(|e| e.to_string())?;
    s.write_all(&frame).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 8];
    s.set_read_timeout(Some(d.handshake_timeout))
        .map_err(|e| e.to_string())?;
    s.read_exact(&mut magic)
        .map_err(|e| format!("no greeting on a joined stream: {e}"))?;
    if magic != v2::MAGIC {
        return Err("the server did not greet a joined stream".into());
    }
    let mut agreed = None;
    loop {
        match read_msg(s, d.io_timeout)? {
            ServerMsg::Held { .. } | ServerMsg::HeldSet { .. } => return Ok(agreed),
            ServerMsg::Codec(name) if codecs.contains(&name.as_str()) => {
                agreed = Some(name == STREAM_CODEC)
            }
            ServerMsg::Challenge(nonce) => answer(s, d, &nonce, None, &frame[4..])?,
            ServerMsg::BoundChallenge { nonce, proof } => {
                let (Some(t), Some(b)) = (&d.token, &binding) else {
                    return Err("a joined stream was challenged without a token".into());
                };
                if !t.check_server_proof(&nonce, b, &frame[4..], &proof) {
                    return Err("the server did not prove the token on a joined stream".into());
                }
                answer(s, d, &nonce, binding.as_ref(), &frame[4..])?
            }
            ServerMsg::Fault(_, w) | ServerMsg::Error(w) => return Err(format!("server: {w}")),
            other => return Err(format!("unexpected {other:?} on a joined stream")),
        }
    }
}

fn answer(
    s: &mut dyn Transport,
    d: &Dialer,
    nonce: &[u8; crate::auth::NONCE_LEN],
    binding: Option<&[u8; 32]>,
    json: &[u8],
) -> Result<(), String> {
    let Some(t) = &d.token else {
        return Err("the server requires a token".into());
    };
    let a = match binding {
        Some(b) => t.client_answer(nonce, b, json),
        None => t.answer(nonce, json),
    };
    s.write_all(&v2::encode_answer(&a))
        .map_err(|e| e.to_string())
}

/// One stream's compression: the policy of the first connection's
/// machine (`auto` measures packing against this stream's writes), with
/// the same frames (`Z`, chunks of 1 MiB, the CRC-32 of the raw bytes).
struct Packer {
    mode: Compress,
    auto: AutoCompressor,
    /// The compressor and the buffers kept across this stream's blocks.
    packing: Packing,
    /// One zstd stream for the connection ([`STREAM_CODEC`]).
    streaming: bool,
}

impl Packer {
    fn new(mode: Compress, streaming: bool) -> Packer {
        Packer {
            mode,
            auto: AutoCompressor::new(AutoConfig::default()),
            packing: Packing::default(),
            streaming,
        }
    }

    /// The level to try the next block at, if any.
    fn level(&mut self) -> Option<i32> {
        match self.mode {
            Compress::Off => None,
            Compress::Zstd(l) => Some(l),
            Compress::Auto => self.auto.next_level(),
        }
    }

    /// A write of `bytes` took `took` (the link's pace, for `auto`).
    fn sent(&mut self, bytes: usize, took: Duration) {
        if self.mode == Compress::Auto && bytes >= 64 << 10 {
            self.auto.record_send(bytes, took);
        }
    }

    /// Reads, packs and sends the block at `offset` of `len` bytes as a
    /// `Z` frame through `buf` (the stream's read buffer): its CRC-32, or
    /// `None` (nothing sent) when packing did not pay.
    fn send(
        &mut self,
        s: &mut dyn Transport,
        file: &File,
        work: &Work,
        (offset, len): (u64, u64),
        level: i32,
        buf: &mut [u8],
    ) -> Result<Option<u32>, SendError> {
        let setup = |e: crate::Error| SendError::Source(std::io::Error::other(e.to_string()));
        self.packing.ready(level, self.streaming).map_err(setup)?;
        let packed = self
            .packing
            .pack(file, offset, len, buf)
            .map_err(SendError::Source)?;
        let wire = packed.map(|(_, w)| w);
        if self.mode == Compress::Auto {
            let took = self.packing.took();
            self.auto
                .record_compression(len as usize, wire.map(|w| w as usize), took);
        }
        let Some(wire) = wire.filter(|&w| w < len) else {
            return Ok(None);
        };
        let started = Instant::now();
        let head = v2::encode_packed_head(offset, len as u32, wire as u32);
        s.write_all(&head).map_err(SendError::Socket)?;
        let crc = self.packing.write_payload(s, file, buf)?;
        s.write_all(&crc.to_be_bytes()).map_err(SendError::Socket)?;
        work.packed[0].fetch_add(1, Ordering::Relaxed);
        work.packed[1].fetch_add(len, Ordering::Relaxed);
        work.packed[2].fetch_add(wire, Ordering::Relaxed);
        self.sent(wire as usize, started.elapsed());
        Ok(Some(crc))
    }
}

/// Reads one server frame within `wait`.
fn read_msg(s: &mut dyn Transport, wait: Duration) -> Result<ServerMsg, String> {
    let mut dec = ServerDecoder::new(1 << 20);
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    loop {
        // Frames here are few and small: a byte at a time keeps the
        // stream's data phase free of read-ahead.
        s.read_exact(&mut byte)
            .map_err(|e| format!("a joined stream lost the server: {e}"))?;
        if let (_, Some(m)) = dec.decode(&byte)? {
            return Ok(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_hands_out_each_block_then_doubles_a_straggler() {
        let w = Work::new(vec![0, 1], None);
        assert_eq!(w.take(), Some(0));
        assert_eq!(w.take(), Some(1));
        w.done(1, 7, Duration::from_millis(1), 10);
        // Block 0 is late: an idle stream takes it too, once.
        let t = Instant::now();
        assert_eq!(w.take(), Some(0));
        assert!(t.elapsed() >= Duration::from_millis(200));
        w.failed(5);
        w.done(0, 9, Duration::from_millis(1), 10);
        assert_eq!(w.take(), None);
        assert_eq!(w.q.lock().unwrap().done.len(), 2);
    }

    #[test]
    fn a_failed_block_goes_back_to_the_queue() {
        let w = Work::new(vec![3], None);
        assert_eq!(w.take(), Some(3));
        w.failed(3);
        assert_eq!(w.take(), Some(3));
        w.done(3, 1, Duration::ZERO, 1);
        assert_eq!(w.take(), None);
    }

    /// A damaged copy of a doubled block undoes a good copy done before
    /// it, and spoils one being written meanwhile; the block is asked for
    /// again once no copy is being written.
    #[test]
    fn a_damaged_copy_of_a_doubled_block_is_never_counted_over_a_good_one() {
        let w = Work::new(vec![4], None);
        assert_eq!(w.take(), Some(4));
        let good = Some((9, Duration::ZERO));
        // Good copy done, then a damaged copy written over it.
        w.begin_write(4);
        w.begin_write(4);
        assert!(w.end_write(4, 10, good));
        assert!(!w.end_write(4, 10, None));
        assert!(w.done_blocks().is_empty());
        assert_eq!(w.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(w.take_pending(), Some(4));
        // The damaged copy ends first: the good one still being written
        // does not count either; then the block is queued again.
        w.begin_write(4);
        w.begin_write(4);
        assert!(!w.end_write(4, 10, None));
        assert_eq!(w.take_pending(), None, "queued while a copy is written");
        assert!(!w.end_write(4, 10, good));
        assert!(w.done_blocks().is_empty());
        assert_eq!(w.take_pending(), Some(4));
        // One copy alone, good: held.
        w.begin_write(4);
        assert!(w.end_write(4, 10, good));
        assert_eq!(w.done_blocks(), vec![4]);
        assert_eq!(w.take(), None);
    }

    #[test]
    fn streams_parse() {
        assert_eq!(Streams::parse("auto"), Ok(Streams::Auto));
        assert_eq!(Streams::parse("4"), Ok(Streams::Fixed(4)));
        assert!(Streams::parse("0").is_err() && Streams::parse("9").is_err());
        assert_eq!(Streams::Fixed(1).ask(), None);
        assert_eq!(Streams::Auto.ask(), Some(MAX_STREAMS));
    }

    #[test]
    fn auto_keeps_one_stream_on_a_short_path_only() {
        let short = Some(Duration::from_micros(40));
        let (ask, why) = Streams::Auto.ask_on(short);
        assert_eq!(ask, None);
        assert!(why.unwrap().contains("auto kept one stream"));
        let long = Some(Duration::from_millis(100));
        assert_eq!(Streams::Auto.ask_on(long), (Some(MAX_STREAMS), None));
        // Unknown round trip: auto measures as ever.
        assert_eq!(Streams::Auto.ask_on(None), (Some(MAX_STREAMS), None));
        // A number given is a number used.
        assert_eq!(Streams::Fixed(4).ask_on(short), (Some(4), None));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_reports_a_loopback_round_trip_under_the_auto_floor() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _server = l.accept().unwrap();
        let t = TcpTransport::new(c).unwrap();
        let rtt = rtt_of(&t).expect("TCP_INFO on Linux");
        assert!(rtt < AUTO_MIN_RTT, "{rtt:?}");
    }

    #[test]
    fn the_kernel_reports_bytes_sent_and_a_window_ceiling() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        c.write_all(&vec![7u8; 256 << 10]).unwrap();
        let mut got = vec![0u8; 256 << 10];
        server.read_exact(&mut got).unwrap();
        let t = TcpTransport::new(c).unwrap();
        let s = crate::sys::tcp_sample(t.fd()).expect("TCP_INFO on Linux 4.19+");
        assert!(s.bytes_sent >= 256 << 10, "{s:?}");
        assert!(s.min_rtt_us > 0 && s.min_rtt_us < 1000, "{s:?}");
        assert!(crate::sys::send_window_ceiling(t.fd()).unwrap() >= 4096);
    }
}
