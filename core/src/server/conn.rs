//! The blocking shell around one connection's [`Receiver`]: the only code
//! that touches its socket. It follows the machine's four rules (see
//! [`crate::machine`]): transmit what the machine gives, execute each
//! action once (policy in `policy`, storage in `local`), feed input until
//! nothing is used, and let the machine's `poll_timeout` bound every read.
//!
//! File payload is read in whole buffers before it is fed (the machine
//! says how much comes without a protocol decision in between), so the
//! disk sees large writes. Not for protocol decisions (the machine's),
//! admission policy (`policy`) or the log lines of an ending (`report`).

use std::io::{self, Read, Write};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::backend::ServerPart;
use super::claims::Claim;
use super::policy::Reservation;
use super::{ConnInfo, Failed, Shared, RATE_WINDOW, RECV_BUFFER};
use crate::machine::{self, Event, Fault, HeldPart, Receiver, ReceiverConfig};
use crate::transport::Transport;
use crate::v2::FaultCode;
use crate::{Error, ErrorKind};

/// Most bytes read when the machine expects no file payload next: a
/// frame head or a header, and little of what follows (which would have
/// to be moved to the buffer's start before the payload's large read).
const SMALL_READ: usize = 4096;

/// Longest a session's owner sleeps in a read before it looks for blocks
/// its joined streams verified.
const OWNER_WAKE: Duration = Duration::from_millis(2);

/// Why reading stopped before the machine's wish was met.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stall {
    /// End of stream or a broken connection.
    Eof,
    /// The machine's next deadline came.
    Timeout,
    /// The data rate fell under the floor (why).
    Slow(String),
}

/// One connection being served.
pub(super) struct Shell<'a> {
    pub(super) sh: &'a Shared,
    pub(super) conn: &'a ConnInfo,
    pub(super) stream: Box<dyn Transport>,
    pub(super) rx: Receiver,
    pub(super) part: Option<ServerPart>,
    pub(super) claim: Option<Claim<'a>>,
    pub(super) reservation: Option<Reservation<'a>>,
    /// The refusal is counted elsewhere (token throttling), not logged.
    pub(super) quiet: bool,
    /// A wrong answer to the challenge, counted as soon as it was seen
    /// (before the refusal goes out, so the client's next try sees it):
    /// how it ends.
    pub(super) auth_failure: Option<Failed>,
    buf: crate::sys::PageBuf,
    have: Range<usize>,
    stall: Option<Stall>,
    floor: Option<RateFloor>,
    shut: bool,
    /// The socket's read timeout in force.
    read_timeout: Option<Duration>,
    /// Parallel streams: the session this connection owns, or the one it
    /// joined.
    pub(super) owner: Option<super::streams::Owner>,
    pub(super) sink: Option<super::streams::Sink>,
    /// A list request's walk over the storage directory.
    pub(super) lister: Option<super::list::Lister>,
}

/// Serves one connection to its end.
pub(super) fn handle_connection(
    sh: &Shared,
    conn: &ConnInfo,
    stream: Box<dyn Transport>,
) -> std::result::Result<(), Failed> {
    stream
        .set_write_timeout(Some(sh.cfg.idle_timeout))
        .map_err(|e| Error::io(ErrorKind::ConnectionLost, "cannot set socket timeouts", e))?;
    let mut stream = stream;
    let setup = sh.cfg.header_timeout.min(sh.cfg.idle_timeout);
    let (pre, is_tree) = super::tree::peek_header(
        stream.as_mut(),
        setup.saturating_sub(conn.accepted.elapsed()),
    );
    if is_tree {
        return super::tree::serve(sh, conn, stream, &pre[4..]);
    }
    if let Some(remote) = pre.get(4..).and_then(crate::tree::fetch::requested_remote) {
        return super::tree_get::serve(sh, conn, stream, &pre[4..], &remote);
    }
    let nonce = crate::auth::nonce()?;
    let binding = stream.channel_binding();
    let mut shell = Shell {
        sh,
        conn,
        stream,
        rx: Receiver::new(receiver_config(sh, binding), nonce, conn.accepted),
        part: None,
        claim: None,
        reservation: None,
        quiet: false,
        auth_failure: None,
        buf: crate::sys::PageBuf::new(RECV_BUFFER),
        have: 0..0,
        stall: None,
        floor: None,
        shut: false,
        read_timeout: None,
        owner: None,
        sink: None,
        lister: None,
    };
    // The header read to tell a tree session apart is the machine's input.
    shell.buf[..pre.len()].copy_from_slice(&pre);
    shell.have = 0..pre.len();
    shell.run();
    shell.report()
}

/// The machine's limits from the server's: the header and the answer to
/// a challenge each within the header timeout (bounded by the idle one).
/// The rate floor is the shell's (windows of bytes, not blocks).
/// Inside TLS, `binding` ties the token proofs to this connection.
fn receiver_config(sh: &Shared, binding: Option<[u8; 32]>) -> ReceiverConfig {
    let setup = sh.cfg.header_timeout.min(sh.cfg.idle_timeout);
    ReceiverConfig {
        token: sh.cfg.token.clone(),
        allow_legacy: sh.cfg.allow_legacy,
        header_timeout: setup,
        answer_timeout: setup,
        idle_timeout: sh.cfg.idle_timeout,
        min_rate: None,
        binding,
        ..ReceiverConfig::default()
    }
}

impl Shell<'_> {
    /// Drives the machine until it is done.
    fn run(&mut self) {
        while !self.rx.is_done() {
            let now = Instant::now();
            self.take_joined(now);
            self.count_auth_failure();
            self.transmit(now);
            if let Some(a) = self.rx.poll_action() {
                let ev = self.execute(a);
                self.rx.handle_event(Instant::now(), ev);
                continue;
            }
            if self.rx.is_done() {
                break;
            }
            if self.rx.is_closing() && !self.shut {
                // Let the client read the refusal: shut our side, drain theirs.
                let _ = self.stream.close_write();
                self.shut = true;
            }
            if !self.have.is_empty() && (self.ready() || self.stall.is_some()) && self.feed(now) {
                continue;
            }
            match self.stall.take() {
                Some(s) => self.on_stall(s),
                None => self.stall = self.read_more(),
            }
        }
        if let Some(c) = &self.claim {
            c.ending();
        }
        self.close_session();
        self.sink = None;
    }

    /// Rule 1: everything the machine has to say goes out first.
    fn transmit(&mut self, now: Instant) {
        while let Some(bytes) = self.rx.poll_transmit(now) {
            if self.stream.write_all(&bytes).is_err() {
                self.rx.handle_eof(now);
            }
        }
    }

    /// Executes an action: policy here, storage on the held part.
    fn execute(&mut self, a: machine::Action) -> Event {
        use machine::Action;
        match a {
            Action::Admit { name, filesize } => Event::Admitted(self.admit(&name, filesize)),
            Action::Claim {
                name,
                authenticated,
            } => Event::Claimed(self.claim(&name, authenticated)),
            Action::Join {
                join,
                authenticated,
            } => Event::Claimed(self.join(&join, authenticated)),
            Action::OpenHeld(id) if self.sink.is_some() => Event::Opened(self.open_joined(&id)),
            Action::OpenHeld(id) => {
                let r = self.open(&id);
                if let Ok(held) = &r {
                    self.maybe_own_session(&id, held);
                }
                Event::Opened(r)
            }
            Action::ListPage { name, first, dirs } => {
                Event::Listed(self.list_page(name, first, dirs))
            }
            other if self.sink.is_some() => self.apply_joined(&other),
            other => self.apply(&other),
        }
    }

    /// Whether enough input is buffered to feed: the whole payload the
    /// machine expects next (up to the buffer), or anything otherwise.
    fn ready(&self) -> bool {
        match self.rx.payload_left() {
            Some(n) => self.have.len() as u64 >= n.min(self.buf.len() as u64),
            None => true,
        }
    }

    /// Rule 3: feeds buffered input; a write goes to the held part and its
    /// result back to the machine. Returns whether input was used.
    fn feed(&mut self, now: Instant) -> bool {
        let Shell {
            rx,
            buf,
            have,
            part,
            sink,
            ..
        } = self;

        let fed = rx.handle_input(now, &buf[have.clone()]);
        let used = fed.used;
        let mut wrote = 0;
        if let Some(w) = fed.write {
            // Protocol 1: the machine's running CRC-32 is the part's too.
            let r = match (part.as_mut(), rx.prefix_crc()) {
                _ if sink.is_some() => Ok(()),
                (Some(p), Some(crc)) => p.write_grown(w.offset, &w.bytes, crc),
                (Some(p), None) => p.write_at(w.offset, &w.bytes),
                (None, _) => Err(Fault::new(FaultCode::Internal, "no held part to write")),
            };
            let r = match r {
                Ok(()) => match sink.as_mut() {
                    Some(s) => s.write(w.offset, &w.bytes),
                    None => Ok(()),
                },
                r => r,
            };
            wrote = if r.is_ok() { w.bytes.len() } else { 0 };
            rx.handle_event(now, Event::Applied(r));
        }
        have.start += used;
        if have.start >= have.end {
            *have = 0..0;
        }
        self.arrived(wrote as u64);
        used > 0
    }

    /// Bytes a joined stream brought: counted as this upload's.
    pub(super) fn count_joined(&mut self, n: u64) {
        self.arrived(n);
        if let Some(f) = self.floor.as_mut() {
            // The floor is the upload's; a joined block is progress.
            let _ = f.count(n as usize);
        }
    }

    fn arrived(&self, n: u64) {
        if n == 0 {
            return;
        }
        let c = &self.sh.counters.bytes_received;
        c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = &self.reservation {
            r.arrived(n);
        }
    }

    /// Input read but not fed to the machine (the start of what follows
    /// the header, for a download's own exchange).
    pub(super) fn take_leftover(&mut self) -> Vec<u8> {
        let v = self.buf[self.have.clone()].to_vec();
        self.have = 0..0;
        v
    }

    /// Rule 4: the peer went away, a deadline came, or the rate floor cut in.
    fn on_stall(&mut self, s: Stall) {
        let now = Instant::now();
        match s {
            Stall::Eof if self.claim.as_ref().is_some_and(|c| c.taken_over()) => {
                let name = self.claim.as_ref().map(|c| c.name.to_string());
                let words = format!(
                    "another connection of the same source took over the upload of {}",
                    name.unwrap_or_default()
                );
                self.rx
                    .handle_abort(now, Fault::new(FaultCode::TakenOver, words));
            }
            Stall::Eof => self.rx.handle_eof(now),
            Stall::Timeout => {
                if self.rx.poll_timeout().is_some_and(|t| t <= now) {
                    self.rx.handle_timeout(now);
                }
            }
            Stall::Slow(words) => self
                .rx
                .handle_abort(now, Fault::new(FaultCode::TooSlow, words)),
        }
    }

    /// Reads until the machine's wish is buffered (see [`Shell::ready`]),
    /// each read bounded by the machine's next deadline.
    fn read_more(&mut self) -> Option<Stall> {
        self.start_floor();
        loop {
            let end = self.read_end();
            if end <= self.have.end {
                return Some(Stall::Eof); // The machine takes nothing of a full buffer.
            }
            let now = Instant::now();
            let wait = match self.rx.poll_timeout() {
                Some(t) if t <= now => return Some(Stall::Timeout),
                Some(t) => Some((t - now).max(Duration::from_millis(1))),
                None => None,
            };
            // A session's owner wakes often to write its joined blocks.
            let wait = match (&self.owner, wait) {
                (Some(_), Some(w)) => Some(w.min(OWNER_WAKE)),
                (Some(_), None) => Some(OWNER_WAKE),
                (None, w) => w,
            };
            self.bound_reads(wait);
            match self.stream.read(&mut self.buf[self.have.end..end]) {
                Ok(0) => return Some(Stall::Eof),
                Ok(n) => {
                    self.have.end += n;
                    if let Some(s) = self.got(n) {
                        return Some(s);
                    }
                    if self.ready() {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Some(Stall::Timeout)
                }
                Err(_) => return Some(Stall::Eof),
            }
        }
    }

    /// Makes the socket's reads wait no longer than `wait` (the time left
    /// until the machine's next deadline). The call is skipped while the
    /// timeout in force is within an eighth of it: a fill of many reads
    /// then costs one system call, and a read overshoots a deadline by at
    /// most an eighth of what was left.
    fn bound_reads(&mut self, wait: Option<Duration>) {
        let close = match (wait, self.read_timeout) {
            (Some(w), Some(set)) => set >= w && set - w <= w / 8,
            (None, None) => true,
            _ => false,
        };
        if !close && self.stream.set_read_timeout(wait).is_ok() {
            self.read_timeout = wait;
        }
    }

    /// Where the next read may fill up to: the end of the payload the
    /// machine expects (so a large payload lands alone in the buffer, from
    /// its start, and needs no copying), else a small read for frame heads
    /// and the header. Moves what is left to the start when it must.
    fn read_end(&mut self) -> usize {
        let cap = self.buf.len();
        let want = match self.rx.payload_left() {
            Some(n) => n.min(cap as u64) as usize,
            None => self.have.len() + SMALL_READ,
        }
        .min(cap);
        if self.have.start + want > cap {
            self.buf.copy_within(self.have.clone(), 0);
            self.have = 0..self.have.len();
        }
        self.have.start + want
    }

    /// `n` bytes were read: the upload is alive; is it fast enough?
    fn got(&mut self, n: usize) -> Option<Stall> {
        if let Some(c) = &self.claim {
            c.received();
        }
        let floor = self.floor.as_mut()?;
        floor.count(n).err().map(Stall::Slow)
    }

    /// The rate floor starts with the data phase.
    fn start_floor(&mut self) {
        let data = matches!(self.rx.state_name(), "Receiving" | "DataFrames");
        if self.floor.is_none() && data && self.sh.cfg.min_rate > 0 {
            self.floor = Some(RateFloor::new(self.sh));
        }
    }
}

/// The minimum data rate, checked window by window.
struct RateFloor {
    min: u64,
    window: Duration,
    start: Instant,
    bytes: u64,
}

impl RateFloor {
    /// A floor of `min` bytes/s over windows of the idle timeout, at most
    /// [`RATE_WINDOW`] (so a test with a short timeout sees it act soon).
    fn new(sh: &Shared) -> RateFloor {
        RateFloor {
            min: sh.cfg.min_rate,
            window: sh.cfg.idle_timeout.min(RATE_WINDOW),
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes; why, when a whole window passed below the floor.
    fn count(&mut self, n: usize) -> std::result::Result<(), String> {
        self.bytes += n as u64;
        let elapsed = self.start.elapsed();
        if elapsed < self.window {
            return Ok(());
        }
        let need = (self.min as f64 * elapsed.as_secs_f64()) as u64;
        if self.bytes < need {
            return Err(format!(
                "too slow: {} bytes in {} s, under the server's minimum of {} bytes/s",
                self.bytes,
                elapsed.as_secs(),
                self.min
            ));
        }
        self.start = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}
