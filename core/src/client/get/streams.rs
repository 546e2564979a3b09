//! Parallel streams for one download: the first connection got a session
//! ticket (`J`) with the reference; further connections join it (the
//! upload's join proof, pinned TLS, the token challenge) and check they
//! are served the same reference. Every stream pulls blocks from one
//! shared queue (the upload's), asks for each with its own want frame
//! (a few ahead, so the link never idles between blocks), writes what
//! arrives at its offset into the partial download in 1 MiB pieces as it
//! comes (one piece's buffer per stream, whatever the block size) and
//! checks the block's CRC-32 against the reference's at its end. A
//! damaged block goes back to the queue; a stream that breaks gives its
//! blocks back and ends; a block in flight too long is taken again by an
//! idle stream, and since pieces land before their block is checked, a
//! damaged copy undoes or spoils any other copy of that block
//! ([`Work::end_write`]). What is held afterwards is exactly the blocks
//! written whole and checked, so a failed attempt resumes as ever.
//!
//! Not for the single-connection download (`super::rounds`), the record
//! or the final rename (`super::Local`).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::super::streams::{dial, Dialer, Grow, Work};
use super::{Local, Upload};
use crate::auth::Token;
use crate::getwire::{self, Reference, TAG_REFERENCE};
use crate::session::Ticket;
use crate::sys::PageBuf;
use crate::transport::Transport;
use crate::v2::{self, ServerMsg};
use crate::{Control, Error, ErrorKind, Progress, Result};

/// Bytes asked for ahead on each stream of a long path: enough to cover
/// a round trip at a stream's window (4 MiB by default). On a short one
/// two blocks keep the link busy, and fewer blocks wait reserved behind
/// others on one stream.
const AHEAD: u64 = 8 << 20;

/// What every stream of one download shares.
struct Ctx<'a> {
    work: &'a Work,
    r: &'a Reference,
    part: &'a File,
    /// The part's (see `Local`); each write's range is allocated first.
    prealloc: crate::sys::Preallocator,
    window: usize,
    /// Blocks that arrived damaged (asked for again), and why the last did.
    damaged: AtomicU64,
    last_damage: Mutex<Option<String>>,
    /// Blocks that arrived compressed: how many, their raw bytes and their
    /// bytes on the wire.
    packed: [AtomicU64; 3],
    /// A local (disk) failure: it ends the download, not just a stream.
    fatal: Mutex<Option<Error>>,
}

/// Pulls the missing blocks over `primary` and joined streams until all
/// are held (or every stream ended). Marks what arrived as held either way.
pub(super) fn pull(
    up: &mut Upload,
    primary: &mut dyn Transport,
    local: &mut Local,
    ticket: Ticket,
    addr: std::net::SocketAddr,
) -> Result<()> {
    let (Some(r), Some(part), Some(prealloc)) =
        (local.reference.clone(), local.part.as_ref(), local.prealloc)
    else {
        return Err(Error::new(ErrorKind::Protocol, "no reference"));
    };
    let part = part
        .try_clone()
        .map_err(|e| super::local_err(format!("cannot open {}", local.part_path.display()), e))?;
    let work = Work::new(local.missing(), up.opts.limit_rate);
    let ctx = Ctx {
        work: &work,
        r: &r,
        part: &part,
        prealloc,
        window: window(primary, r.block),
        damaged: AtomicU64::new(0),
        last_damage: Mutex::new(None),
        packed: Default::default(),
        fatal: Mutex::new(None),
    };
    let mut dialer = dialer(up, ticket, addr)?;
    dialer.by_path = local.by_path;
    let base = local.held_bytes();
    let agreed = up.t.packed.agreed;
    let first = run_all(up, primary, agreed, &ctx, &dialer, base);
    for i in work.done_blocks() {
        local.held[i as usize] = true;
    }
    let damaged = ctx.damaged.load(Ordering::Relaxed);
    local.repaired += damaged;
    let t = &mut up.t;
    t.repairs += u32::from(damaged > 0);
    t.sent += work.bytes.load(Ordering::Relaxed);
    t.packed.blocks += ctx.packed[0].load(Ordering::Relaxed);
    t.packed.raw_bytes += ctx.packed[1].load(Ordering::Relaxed);
    t.packed.wire_bytes += ctx.packed[2].load(Ordering::Relaxed);
    let streams = 1 + work.joined.load(Ordering::SeqCst).min(7) as u32;
    t.streams = t.streams.max(streams);
    for n in work.notes.lock().map(|n| n.clone()).unwrap_or_default() {
        t.note_once(n);
    }
    if let Some(e) = ctx.fatal.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    // The first stream may break while the joined ones bring the rest.
    let missing = local.missing().len();
    if missing == 0 {
        return Ok(());
    }
    first?;
    Err(Error::new(
        ErrorKind::ConnectionLost,
        format!("every stream of the download ended with {missing} block(s) still missing"),
    ))
}

/// Blocks each stream asks for ahead: two on a short path, enough for
/// [`AHEAD`] on a long one.
fn window(primary: &dyn Transport, block: u64) -> usize {
    match super::super::streams::rtt_of(primary) {
        Some(rtt) if rtt < super::super::streams::AUTO_MIN_RTT => 2,
        _ => (AHEAD / block).clamp(2, 64) as usize,
    }
}

/// The first stream on this thread (it grows the others and reports
/// progress), joined ones on their own; returns when all ended.
fn run_all(
    up: &mut Upload,
    primary: &mut dyn Transport,
    agreed: bool,
    ctx: &Ctx,
    dialer: &Dialer,
    base: u64,
) -> Result<()> {
    let total = ctx.r.size;
    let mut grow = Grow::new(up.opts.streams);
    let progress = &mut *up.progress;
    std::thread::scope(|sc| {
        let mut joins = Vec::new();
        let mut tick = |work: &Work| -> Result<()> {
            let bytes = work.bytes.load(Ordering::Relaxed);
            for _ in 0..grow.more(std::time::Instant::now(), bytes, None) {
                joins.push(sc.spawn(move || joined(ctx, dialer)));
            }
            let done = (base + work.bytes.load(Ordering::Relaxed)).min(total);
            match progress(&Progress::Sending { done, total }) {
                Control::Continue => Ok(()),
                Control::Cancel => Err(super::cancelled()),
            }
        };
        let r = stream_loop(primary, agreed, ctx, &mut tick);
        if r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Cancelled) {
            ctx.work.halt();
        }
        // The first stream ended (done, or broken: the others go on):
        // report progress while they finish.
        let mut report = |work: &Work| -> Result<()> {
            let done = (base + work.bytes.load(Ordering::Relaxed)).min(total);
            match progress(&Progress::Sending { done, total }) {
                Control::Continue => Ok(()),
                Control::Cancel => Err(super::cancelled()),
            }
        };
        while joins.iter().any(|j| !j.is_finished()) {
            if report(ctx.work).is_err() {
                ctx.work.halt();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    })
}

/// One joined stream, from connecting to its last block; why it ended
/// early goes to the notes.
fn joined(ctx: &Ctx, d: &Dialer) {
    let r = join_stream(ctx, d).and_then(|(mut s, agreed)| {
        let mut tick = |_: &Work| Ok(());
        stream_loop(s.as_mut(), agreed, ctx, &mut tick)
            .map_err(|e| format!("a joined stream of the download ended: {e}"))
    });
    if let Err(words) = r {
        ctx.work.note(words);
    }
}

/// Asks for blocks (a window ahead) and receives them, until the queue
/// is empty and nothing is in flight; then says so to the server. On a
/// failure the blocks in flight go back to the queue. `agreed`: the
/// server agreed to compressed blocks on this stream.
fn stream_loop(
    s: &mut dyn Transport,
    agreed: bool,
    ctx: &Ctx,
    tick: &mut dyn FnMut(&Work) -> Result<()>,
) -> Result<()> {
    let mut flight = VecDeque::new();
    let r = blocks(s, agreed, ctx, &mut flight, tick);
    for i in flight {
        ctx.work.failed(i);
    }
    r?;
    s.write_all(&getwire::encode_want(&[]))
        .map_err(|e| super::peer::lost(e, "ending the download"))
}

fn blocks(
    s: &mut dyn Transport,
    agreed: bool,
    ctx: &Ctx,
    flight: &mut VecDeque<u64>,
    tick: &mut dyn FnMut(&Work) -> Result<()>,
) -> Result<()> {
    let mut buf = None;
    loop {
        while flight.len() < ctx.window {
            let Some(i) = ctx.work.take_pending() else {
                break;
            };
            flight.push_back(i);
            ask(s, i)?;
        }
        if flight.is_empty() {
            // Nothing queued: wait for a straggler's block, or the end.
            let Some(i) = ctx.work.take() else {
                return Ok(());
            };
            flight.push_back(i);
            ask(s, i)?;
        }
        let Some(&i) = flight.front() else { continue };
        let started = Instant::now();
        ctx.work.arriving(i);
        let crc = fetch(s, ctx, i, &mut buf, agreed)?;
        flight.pop_front();
        let len = ctx.r.range(i).1;
        if !ctx
            .work
            .end_write(i, len, crc.map(|c| (c, started.elapsed())))
        {
            if crc.is_none() {
                ctx.damaged.fetch_add(1, Ordering::Relaxed);
                bound_damage(ctx)?;
            }
            continue;
        }
        ctx.work.pace();
        tick(ctx.work)?;
    }
}

/// Writes block `i`'s pieces into the part as they come, folding their
/// CRC-32; a failed write ends the whole download.
struct ToPart<'a, 'b> {
    ctx: &'a Ctx<'b>,
    i: u64,
    buf: &'a mut Option<PageBuf>,
    crc: crc32fast::Hasher,
    begun: bool,
}

impl super::frames::Pieces for ToPart<'_, '_> {
    fn buffer(&mut self) -> Result<PageBuf> {
        Ok(self
            .buf
            .take()
            .unwrap_or_else(|| PageBuf::new(super::frames::PIECE)))
    }

    fn piece(&mut self, buf: PageBuf, len: usize, at: u64) -> Result<()> {
        if !self.begun {
            self.ctx.work.begin_write(self.i);
            self.begun = true;
        }
        let b = &buf[..len];
        self.crc.update(b);
        let mut prealloc = self.ctx.prealloc;
        let wrote = prealloc
            .before_write(self.ctx.part, at, len as u64)
            .and_then(|()| self.ctx.part.write_all_at(b, at));
        *self.buf = Some(buf);
        if let Err(e) = wrote {
            let e = Error::io(ErrorKind::Storage, "cannot write the partial download", e);
            if let Ok(mut f) = self.ctx.fatal.lock() {
                f.get_or_insert(e);
            }
            self.ctx.work.halt();
            return Err(Error::new(ErrorKind::Storage, "the local disk failed"));
        }
        Ok(())
    }
}

/// Blocks damaged over and over: the path corrupts data; give up as one
/// stream does after its rounds of repair.
fn bound_damage(ctx: &Ctx) -> Result<()> {
    let most = ctx.r.count() + 8 * u64::from(super::super::MAX_REPAIR_ROUNDS);
    if ctx.damaged.load(Ordering::Relaxed) > most {
        ctx.work.halt();
        let last = ctx.last_damage.lock().ok().and_then(|l| l.clone());
        let last = last.unwrap_or_else(|| "no reason known".into());
        return Err(Error::new(
            ErrorKind::CrcMismatch,
            format!("blocks kept arriving damaged on the download's streams (the last: {last})"),
        ));
    }
    Ok(())
}

fn ask(s: &mut dyn Transport, i: u64) -> Result<()> {
    s.write_all(&getwire::encode_want(&[i]))
        .map_err(|e| super::peer::lost(e, "asking for blocks"))
}

/// Reads the data frame of block `i` (raw, or compressed when `agreed`)
/// and writes it into the part piece by piece (in `buf`, one piece's
/// buffer kept from block to block); its CRC-32 when it is the
/// reference's block (`None`: damaged, the words kept for when repair
/// gives up). Pieces were written either way: the caller ends the write
/// ([`Work::end_write`]); a block broken off midway is ended here.
fn fetch(
    s: &mut dyn Transport,
    ctx: &Ctx,
    i: u64,
    buf: &mut Option<PageBuf>,
    agreed: bool,
) -> Result<Option<u32>> {
    let (off, len) = ctx.r.range(i);
    let mut to = ToPart {
        ctx,
        i,
        buf,
        crc: crc32fast::Hasher::new(),
        begun: false,
    };
    let read = super::frames::read_pieces(s, (i, off, len), agreed, &mut to);
    let (begun, crc) = (to.begun, to.crc.finalize());
    let u = match read {
        Ok(super::frames::Raw::Block(u)) => u,
        Ok(super::frames::Raw::Other(head)) => return Err(super::fault_instead(s, head)),
        Err(e) => {
            if begun {
                ctx.work.end_write(i, len, None);
            }
            return Err(e);
        }
    };
    if !begun {
        // No piece came (an empty block): it is ended all the same.
        ctx.work.begin_write(i);
    }
    if u.packed {
        ctx.packed[0].fetch_add(1, Ordering::Relaxed);
        ctx.packed[1].fetch_add(len, Ordering::Relaxed);
        ctx.packed[2].fetch_add(u.wire, Ordering::Relaxed);
    }
    match u.check_crc(crc, i, ctx.r.crcs[i as usize]) {
        Ok(crc) => Ok(Some(crc)),
        Err(why) => {
            if let Ok(mut l) = ctx.last_damage.lock() {
                *l = Some(why);
            }
            Ok(None)
        }
    }
}

/// How joined streams connect: as the first (same address, TLS pinned to
/// the key it saw, or plaintext as it was).
fn dialer(up: &Upload, ticket: Ticket, addr: std::net::SocketAddr) -> Result<Dialer> {
    let opts = up.opts;
    let tls = match (up.t.encrypted, up.peer_key) {
        (false, _) => None,
        (true, Some(f)) => Some(crate::tls::client_config(crate::tls::PinPolicy::Expect(f))?),
        (true, None) => {
            return Err(Error::new(
                ErrorKind::Protocol,
                "internal: no server key to pin",
            ))
        }
    };
    Ok(Dialer {
        addr,
        tls,
        connect_timeout: opts.connect_timeout,
        handshake_timeout: opts.handshake_timeout,
        io_timeout: opts.io_timeout,
        congestion: opts.congestion.clone(),
        limit_rate: opts.limit_rate,
        compress: opts.compress,
        // Downloads keep per-chunk frames (`get_pack`).
        stream_codec: false,
        filename: up.filename.clone(),
        by_path: false,
        filesize: 0,
        block: 0,
        source: None,
        token: opts.token.clone(),
        ticket,
    })
}

/// Connects a joined stream: the request with the join proof (and the
/// same compression offer as the first), the greeting, the challenge when
/// the server has a token, and the same reference as the first stream's.
/// Also whether the server agreed to compressed blocks on it.
fn join_stream(ctx: &Ctx, d: &Dialer) -> std::result::Result<(Box<dyn Transport>, bool), String> {
    let mut s = dial(d)?;
    if let Ok(mut c) = ctx.work.cuts.lock() {
        c.push(s.shutdown_handle());
    }
    let binding = s.channel_binding();
    let j = d.ticket.join(binding.as_ref()).map_err(|e| e.to_string())?;
    let header = getwire::encode_get_header_by(&d.filename, d.by_path, None, Some(&j), d.compress)
        .map_err(|e| e.to_string())?;
    let mut agreed = false;
    s.write_all(&header).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(d.handshake_timeout))
        .map_err(|e| e.to_string())?;
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic)
        .map_err(|e| format!("no greeting on a joined stream: {e}"))?;
    if magic != v2::MAGIC {
        return Err("the server did not greet a joined stream".into());
    }
    s.set_read_timeout(Some(d.io_timeout))
        .map_err(|e| e.to_string())?;
    loop {
        let (tag, p) = super::read_frame(s.as_mut(), v2::MAX_SERVER_FRAME, "joining")
            .map_err(|e| e.to_string())?;
        if tag == TAG_REFERENCE {
            let r = Reference::decode(&p).map_err(|e| e.to_string())?;
            if &r != ctx.r {
                return Err(
                    "the file changed on the server: a joined stream saw another version".into(),
                );
            }
            ctx.work.joined.fetch_add(1, Ordering::SeqCst);
            return Ok((s, agreed));
        }
        let msg = v2::parse_server_msg(tag, &p).map_err(|e| e.to_string())?;
        let token = d.token.as_ref();
        match msg {
            ServerMsg::Challenge(nonce) => answer(s.as_mut(), token, &header[4..], nonce, None)?,
            ServerMsg::BoundChallenge { nonce, proof } => {
                answer(s.as_mut(), token, &header[4..], nonce, Some(proof))?
            }
            ServerMsg::Codec(name) => {
                agreed = super::agree(d.compress, &name).map_err(|e| e.to_string())?
            }
            ServerMsg::Fault(_, w) | ServerMsg::Error(w) => {
                return Err(format!("server: {}", crate::text::printable(&w)))
            }
            other => return Err(format!("unexpected {other:?} on a joined stream")),
        }
    }
}

/// Answers the token challenge on a joined stream (inside TLS only after
/// the server proved the token on this connection).
fn answer(
    s: &mut dyn Transport,
    token: Option<&Token>,
    json: &[u8],
    nonce: [u8; crate::auth::NONCE_LEN],
    proof: Option<[u8; crate::auth::ANSWER_LEN]>,
) -> std::result::Result<(), String> {
    let Some(t) = token else {
        return Err("the server requires a token".into());
    };
    let a = match (proof, s.channel_binding()) {
        (None, _) => t.answer(&nonce, json),
        (Some(p), Some(b)) if t.check_server_proof(&nonce, &b, json, &p) => {
            t.client_answer(&nonce, &b, json)
        }
        _ => return Err("the server did not prove the token on a joined stream".into()),
    };
    s.write_all(&v2::encode_answer(&a))
        .map_err(|e| e.to_string())
}
