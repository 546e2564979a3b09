//! The receiving side: a blocking TCP server, one thread per connection.
//!
//! It accepts connections, reads the header, tells the client how much it
//! already holds, receives the rest into a [`HeldPart`](crate::store::HeldPart)
//! while computing the CRC-32 in the same pass, and answers the verdict. It
//! never stops because one connection misbehaved: every per-connection error
//! is logged with the peer address and ends that connection only.
//!
//! Not for: storage layout and durability (see [`crate::store`]) or byte
//! parsing (see [`crate::proto`]).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::blocks::{BlockPart, Recovery};
use crate::name::SafeName;
use crate::proto::{self, Verdict};
use crate::store::{key_of, Fresh, Identity, Store};
use crate::v2;
use crate::{Error, ErrorKind, Result};

/// Size of the buffer each connection receives into.
pub const RECV_BUFFER: usize = 1 << 20;

/// A function that receives the server's log lines.
pub type Logger = Arc<dyn Fn(&str) + Send + Sync>;

/// How a [`Server`] is set up. `ServerConfig::new(dir)` gives the defaults.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on. `None`: every interface, IPv6 and IPv4 where the
    /// system allows (falls back to IPv4 only).
    pub bind: Option<IpAddr>,
    /// TCP port; 0 picks a free one (see [`Server::local_addr`]).
    pub port: u16,
    /// The storage directory (created if missing).
    pub dir: PathBuf,
    /// Connections served at once. When full, the oldest connection still
    /// waiting for its header is evicted to make room; if every connection
    /// is a running upload, the newcomer is closed and logged.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (its held
    /// part checkpointed).
    pub idle_timeout: Duration,
    /// A connection must send its complete header within this time (bounded
    /// by `idle_timeout`), so idle sockets cannot hold slots for long.
    pub header_timeout: Duration,
    /// Held parts not touched for this long are deleted. `None`: never.
    pub expire_partial: Option<Duration>,
    /// Uploads larger than this are refused. `None`: no limit beyond free
    /// disk space.
    pub max_file_size: Option<u64>,
    /// Where log lines go. `None`: standard error, with a timestamp.
    pub logger: Option<Logger>,
    /// When set, only clients proving knowledge of this token (protocol 2
    /// challenge-response) may upload.
    pub token: Option<crate::auth::Token>,
    /// With a token: also admit legacy clients, which cannot authenticate.
    pub allow_legacy: bool,
    /// Refuse an upload that would leave less than this many bytes free.
    pub min_free: u64,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("expire_partial", &self.expire_partial)
            .field("max_file_size", &self.max_file_size)
            .field("token", &self.token)
            .field("allow_legacy", &self.allow_legacy)
            .field("min_free", &self.min_free)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// The defaults: all interfaces, port 8080, 64 connections, 60 s idle
    /// timeout, 10 s to send the header, held parts expire after 7 days,
    /// storing into `dir`.
    ///
    /// ```
    /// let c = bigtransfer_core::ServerConfig::new("received");
    /// assert_eq!(c.port, 8080);
    /// assert_eq!(c.max_connections, 64);
    /// ```
    pub fn new(dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            bind: None,
            port: 8080,
            dir: dir.into(),
            max_connections: 64,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            expire_partial: Some(Duration::from_secs(7 * 24 * 3600)),
            max_file_size: None,
            logger: None,
            token: None,
            allow_legacy: false,
            min_free: 0,
        }
    }
}

/// Stops a running [`Server`] from any thread, or from a signal handler.
#[derive(Clone, Debug)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    stopped: AtomicBool,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

impl StopHandle {
    fn new() -> Result<StopHandle> {
        let (r, w) = crate::sys::pipe().map_err(|e| {
            Error::io(
                ErrorKind::Storage,
                "cannot create the server's wake-up pipe",
                e,
            )
        })?;
        Ok(StopHandle {
            inner: Arc::new(StopInner {
                stopped: AtomicBool::new(false),
                wake_read: r,
                wake_write: w,
            }),
        })
    }

    /// Asks the server to stop: it stops accepting, checkpoints running
    /// uploads and returns from [`Server::serve`]. Async-signal-safe (an
    /// atomic store and one `write(2)`), so a signal handler may call it.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        crate::sys::wake(self.inner.wake_write.as_raw_fd());
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// The raw write end of the wake-up pipe: writing a byte to it after
    /// setting nothing else also wakes the server, which then checks
    /// [`StopHandle::is_stopped`]. For signal handlers that cannot reach a
    /// `StopHandle` value; prefer [`StopHandle::stop`].
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        self.inner.wake_write.as_raw_fd()
    }
}

/// Counters of what a server did since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Uploads that ended with `CRC32_OK`.
    pub completed: u64,
    /// Uploads that ended with `CRC32_ERROR`.
    pub crc_errors: u64,
    /// Connections refused or ended early (bad header, timeout, disconnect...).
    pub failed: u64,
    /// File bytes received.
    pub bytes_received: u64,
    /// Connections closed at once because the server was full (or could
    /// not start a thread for them).
    pub refused: u64,
    /// Connections open now.
    pub live_connections: u64,
    /// Uploads running now (names being received).
    pub uploads_running: u64,
    /// `failed` split by the error's kind, indexed like [`FAILURE_REASONS`].
    pub failed_by_reason: [u64; FAILURE_REASONS.len()],
}

/// The names (`ErrorKind::as_str`) of the failure reasons counted in
/// [`ServerStats::failed_by_reason`]; the last, "other", counts panics and
/// kinds added later.
pub const FAILURE_REASONS: [&str; 11] = [
    "invalid-input",
    "source-file",
    "unreachable",
    "connection-lost",
    "protocol",
    "refused",
    "crc-mismatch",
    "storage",
    "cancelled",
    "timed-out",
    "other",
];

fn reason_index(kind: ErrorKind) -> usize {
    FAILURE_REASONS
        .iter()
        .position(|r| *r == kind.as_str())
        .unwrap_or(FAILURE_REASONS.len() - 1)
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    completed: AtomicU64,
    crc_errors: AtomicU64,
    failed: AtomicU64,
    bytes_received: AtomicU64,
    refused: AtomicU64,
    failed_by_reason: [AtomicU64; FAILURE_REASONS.len()],
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    cfg: ServerConfig,
    store: Store,
    stop: StopHandle,
    logger: Logger,
    live: AtomicUsize,
    conns: Mutex<HashMap<u64, Conn>>,
    claims: Mutex<HashMap<SafeName, Claimant>>,
    claims_cv: Condvar,
    next_id: AtomicU64,
    counters: Counters,
}

/// A live connection, as the accept loop sees it.
struct Conn {
    stream: TcpStream,
    accepted: Instant,
    /// Still waiting for a complete header: the first to be evicted when the
    /// server is full, so uploads in progress are never the victims.
    awaiting_header: Arc<AtomicBool>,
}

struct Claimant {
    conn_id: u64,
    stream: TcpStream,
    /// Set once this connection's protocol-2 exchange has begun, so a
    /// takeover can tell it why it is being ended (in a frame it parses).
    in_v2: Arc<AtomicBool>,
}

fn default_logger() -> Logger {
    Arc::new(|line: &str| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!("[{}.{:03}] {line}", now.as_secs(), now.subsec_millis());
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the whole server down.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Opens the storage directory and binds the listening socket.
    pub fn bind(cfg: ServerConfig) -> Result<Server> {
        if cfg.max_connections == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "max_connections must be at least 1",
            ));
        }
        let store = Store::open(&cfg.dir)?;
        let listener = match cfg.bind {
            Some(ip) => TcpListener::bind(SocketAddr::new(ip, cfg.port)),
            // Linux's default (bindv6only=0) makes [::] accept IPv4 too.
            None => TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), cfg.port))
                .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], cfg.port)))),
        }
        .map_err(|e| {
            let at = match cfg.bind {
                Some(ip) => SocketAddr::new(ip, cfg.port).to_string(),
                None => format!("port {}", cfg.port),
            };
            Error::io(ErrorKind::InvalidInput, format!("cannot listen on {at}"), e)
        })?;
        listener.set_nonblocking(true).map_err(|e| {
            Error::io(
                ErrorKind::InvalidInput,
                "cannot configure the listening socket",
                e,
            )
        })?;
        let logger = cfg.logger.clone().unwrap_or_else(default_logger);
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                cfg,
                store,
                stop: StopHandle::new()?,
                logger,
                live: AtomicUsize::new(0),
                conns: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
                claims_cv: Condvar::new(),
                next_id: AtomicU64::new(1),
                counters: Counters::default(),
            }),
        })
    }

    /// The address actually listened on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| {
            Error::io(
                ErrorKind::InvalidInput,
                "cannot read the listening address",
                e,
            )
        })
    }

    /// A handle that stops [`Server::serve`] from another thread or a signal.
    pub fn stop_handle(&self) -> StopHandle {
        self.shared.stop.clone()
    }

    /// What the server did so far.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            connections: c.connections.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            crc_errors: c.crc_errors.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            live_connections: self.shared.live.load(Ordering::Relaxed) as u64,
            uploads_running: lock(&self.shared.claims).len() as u64,
            failed_by_reason: std::array::from_fn(|i| {
                c.failed_by_reason[i].load(Ordering::Relaxed)
            }),
        }
    }

    /// Free bytes on the storage directory's file system (for status pages).
    pub fn available_space(&self) -> Result<u64> {
        self.shared.store.available_space()
    }

    /// Serves until [`StopHandle::stop`] is called, then ends every running
    /// upload at a checkpoint (resumable), waits for the connection threads,
    /// and returns. Only a failure of the listening socket itself is an error.
    pub fn serve(&self) -> Result<()> {
        let sh = &self.shared;
        let wake = sh.stop.inner.wake_read.as_raw_fd();
        let lfd = self.listener.as_raw_fd();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let sweep_every = sh
            .cfg
            .expire_partial
            .map(|a| (a / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)));
        let mut next_sweep = Instant::now();
        while !sh.stop.is_stopped() {
            if let Some(every) = sweep_every {
                if Instant::now() >= next_sweep {
                    self.sweep();
                    next_sweep = Instant::now() + every;
                }
            }
            let timeout = sweep_every.map(|_| next_sweep.saturating_duration_since(Instant::now()));
            let ready = crate::sys::poll_readable(&[lfd, wake], timeout).map_err(|e| {
                Error::io(ErrorKind::Storage, "poll on the listening socket failed", e)
            })?;
            if ready[1] {
                crate::sys::drain(wake);
            }
            if !ready[0] {
                continue;
            }
            // Accept everything pending: never block on one client.
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        threads.retain(|t| !t.is_finished());
                        if let Some(t) = self.spawn(stream, peer) {
                            threads.push(t);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EMFILE and friends: log, back off briefly, keep serving.
                        (sh.logger)(&format!("accept failed: {e}"));
                        let _ =
                            crate::sys::poll_readable(&[wake], Some(Duration::from_millis(100)));
                        break;
                    }
                }
            }
        }
        (sh.logger)("stopping: checkpointing running uploads");
        for c in lock(&sh.conns).values() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }

    fn sweep(&self) {
        let sh = &self.shared;
        let Some(age) = sh.cfg.expire_partial else {
            return;
        };
        let active: HashSet<String> = lock(&sh.claims).keys().map(key_of).collect();
        match sh.store.expire(age, &active) {
            Ok(keys) => {
                for k in keys {
                    (sh.logger)(&format!(
                        "expired held part {k} (untouched for over {}s)",
                        age.as_secs()
                    ));
                }
            }
            Err(e) => (sh.logger)(&format!("expiry sweep failed: {e}")),
        }
    }

    fn spawn(&self, stream: TcpStream, peer: SocketAddr) -> Option<JoinHandle<()>> {
        let sh = Arc::clone(&self.shared);
        sh.counters.connections.fetch_add(1, Ordering::Relaxed);
        if sh.live.load(Ordering::SeqCst) >= sh.cfg.max_connections
            && !evict_oldest_waiting(&sh, peer)
        {
            (sh.logger)(&format!(
                "{peer}: refused: {} uploads already running (--max-connections)",
                sh.cfg.max_connections
            ));
            sh.counters.failed.fetch_add(1, Ordering::Relaxed);
            sh.counters.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let awaiting_header = Arc::new(AtomicBool::new(true));
        match stream.try_clone() {
            Ok(c) => {
                let conn = Conn {
                    stream: c,
                    accepted: Instant::now(),
                    awaiting_header: Arc::clone(&awaiting_header),
                };
                lock(&sh.conns).insert(id, conn);
            }
            Err(e) => {
                (sh.logger)(&format!("{peer}: refused: cannot track connection: {e}"));
                sh.counters.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        sh.live.fetch_add(1, Ordering::SeqCst);
        let builder = std::thread::Builder::new().name(format!("bt-conn-{id}"));
        let sh2 = Arc::clone(&sh);
        let spawned = builder.spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle_connection(&sh2, id, stream, peer, &awaiting_header)
            }));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    sh2.counters.failed.fetch_add(1, Ordering::Relaxed);
                    sh2.counters.failed_by_reason[reason_index(e.kind())]
                        .fetch_add(1, Ordering::Relaxed);
                    (sh2.logger)(&format!("{peer}: {e}"));
                }
                Err(_) => {
                    sh2.counters.failed.fetch_add(1, Ordering::Relaxed);
                    sh2.counters.failed_by_reason[FAILURE_REASONS.len() - 1]
                        .fetch_add(1, Ordering::Relaxed);
                    (sh2.logger)(&format!(
                        "{peer}: internal error (panic) in connection handler"
                    ));
                }
            }
            lock(&sh2.conns).remove(&id);
            sh2.live.fetch_sub(1, Ordering::SeqCst);
        });
        match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                lock(&sh.conns).remove(&id);
                sh.live.fetch_sub(1, Ordering::SeqCst);
                (sh.logger)(&format!("{peer}: refused: cannot start a thread: {e}"));
                sh.counters.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Makes room for a newcomer when the server is full by ending the oldest
/// connection that has still not sent a complete header (as OpenSSH's
/// MaxStartups drops unauthenticated connections first): idle or slow
/// connections can then never lock real clients out. Returns false when
/// every connection is a running upload.
fn evict_oldest_waiting(sh: &Shared, newcomer: SocketAddr) -> bool {
    let conns = lock(&sh.conns);
    let victim = conns
        .values()
        .filter(|c| c.awaiting_header.load(Ordering::SeqCst))
        .min_by_key(|c| c.accepted);
    match victim {
        Some(c) => {
            // Only once: an evicted connection is no longer a candidate.
            c.awaiting_header.store(false, Ordering::SeqCst);
            let _ = c.stream.shutdown(Shutdown::Both);
            let who = c
                .stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            (sh.logger)(&format!("{who}: evicted: server full and no header after {:.1}s, making room for {newcomer}", c.accepted.elapsed().as_secs_f64()));
            true
        }
        None => false,
    }
}

/// Owns the right to write one name's held part; released on drop.
struct Claim<'a> {
    sh: &'a Shared,
    name: SafeName,
    conn_id: u64,
    in_v2: Arc<AtomicBool>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = lock(&self.sh.claims);
        if claims
            .get(&self.name)
            .is_some_and(|c| c.conn_id == self.conn_id)
        {
            claims.remove(&self.name);
        }
        self.sh.claims_cv.notify_all();
    }
}

/// Takes over `name`: a connection already uploading it is ended (it
/// checkpoints on the way out) and we wait until it has let go. The usual
/// cause is a client that reconnected while its old connection still looks
/// open to us, so the newcomer wins; a stale claim can never block a resume.
fn claim<'a>(
    sh: &'a Shared,
    name: &SafeName,
    conn_id: u64,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Result<Claim<'a>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut claims = lock(&sh.claims);
    let mut announced = false;
    while let Some(old) = claims.get(name) {
        if old.conn_id > conn_id {
            // Connections are numbered as accepted: the one holding the name
            // arrived after us, so we are the stale one, merely slower to get
            // here. The newest connection always wins.
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{name}: a newer connection is uploading it"),
            ));
        }
        if !announced {
            (sh.logger)(&format!(
                "{peer}: {name}: taking over from an older connection for the same name"
            ));
            if old.in_v2.load(Ordering::SeqCst) {
                let msg =
                    format!("another connection (from {peer}) took over the upload of {name}");
                let _ = (&old.stream).write_all(&v2::encode_server_msg(&v2::ServerMsg::Error(msg)));
            }
            let _ = old.stream.shutdown(Shutdown::Both);
            announced = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{name}: older connection did not let go within 30 s"),
            ));
        }
        claims = sh
            .claims_cv
            .wait_timeout(claims, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    let s = stream
        .try_clone()
        .map_err(|e| Error::io(ErrorKind::Storage, "cannot track connection", e))?;
    let in_v2 = Arc::new(AtomicBool::new(false));
    claims.insert(
        name.clone(),
        Claimant {
            conn_id,
            stream: s,
            in_v2: Arc::clone(&in_v2),
        },
    );
    Ok(Claim {
        sh,
        name: name.clone(),
        conn_id,
        in_v2,
    })
}

fn net_err(e: io::Error, during: &str) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(ErrorKind::TimedOut, format!("idle timeout while {during}"))
        }
        io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::ConnectionLost,
            format!("client disconnected while {during}"),
        ),
        _ => Error::io(
            ErrorKind::ConnectionLost,
            format!("connection failed while {during}"),
            e,
        ),
    }
}

fn handle_connection(
    sh: &Shared,
    conn_id: u64,
    mut stream: TcpStream,
    peer: SocketAddr,
    awaiting_header: &AtomicBool,
) -> Result<()> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(sh.cfg.header_timeout.min(sh.cfg.idle_timeout)))
        .and_then(|_| stream.set_write_timeout(Some(sh.cfg.idle_timeout)))
        .map_err(|e| Error::io(ErrorKind::ConnectionLost, "cannot set socket timeouts", e))?;

    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .map_err(|e| net_err(e, "reading the header length"))?;
    let len = proto::parse_header_len(prefix).map_err(refusal)?;
    let mut json = vec![0u8; len];
    stream
        .read_exact(&mut json)
        .map_err(|e| net_err(e, "reading the header"))?;
    let speaks_v2 = v2::parse_offer(&json, 0).is_ok_and(|o| o.is_some()) || json_mentions_v2(&json);
    let admitted = admit(sh, &json, awaiting_header);
    let (header, name, offer) = match admitted {
        Ok(x) => x,
        Err(e) => {
            if speaks_v2 {
                say_error(&mut stream, &e.to_string(), true);
            }
            return Err(e);
        }
    };
    stream
        .set_read_timeout(Some(sh.cfg.idle_timeout))
        .map_err(|e| Error::io(ErrorKind::ConnectionLost, "cannot set socket timeouts", e))?;
    let mut magic_sent = false;
    if let Some(token) = &sh.cfg.token {
        if offer.is_none() && !sh.cfg.allow_legacy {
            return Err(Error::new(
                ErrorKind::Refused,
                "refused a legacy (unauthenticated) client: this server requires a token (--allow-legacy admits legacy clients)",
            ));
        }
        if offer.is_some() {
            authenticate(sh, &mut stream, token, &json)?;
            magic_sent = true;
        }
    }
    if let Some(offer) = offer {
        let claim = claim(sh, &name, conn_id, &stream, peer);
        return match claim {
            Ok(claim) => serve_v2(
                sh,
                &mut stream,
                peer,
                header.filesize,
                offer,
                &claim,
                magic_sent,
            ),
            Err(e) => {
                say_error(&mut stream, &e.to_string(), !magic_sent);
                Err(e)
            }
        };
    }
    let _claim = claim(sh, &name, conn_id, &stream, peer)?;
    let id = Identity {
        name: name.clone(),
        filesize: header.filesize,
        crc32: header.crc32,
    };
    let (mut held, fresh) = sh.store.begin(id)?;
    if let Some(Fresh::OtherSource) = fresh {
        (sh.logger)(&format!("{peer}: {name}: held part was of another source (size or CRC-32 differ); starting over"));
    } else if let Some(Fresh::Damaged(why)) = &fresh {
        (sh.logger)(&format!(
            "{peer}: {name}: held part not resumable ({why}); starting over"
        ));
    }
    let offset = held.offset();
    check_space(sh, &name, header.filesize - offset)?;
    (sh.logger)(&format!(
        "{peer}: receiving {name} ({} bytes) from offset {offset}",
        header.filesize
    ));
    stream
        .write_all(&proto::encode_offset(offset))
        .map_err(|e| net_err(e, "sending the offset"))?;

    let mut buf = crate::sys::PageBuf::new(RECV_BUFFER);
    while held.offset() < header.filesize {
        let want = ((header.filesize - held.offset()) as usize).min(buf.len());
        let (n, stop) = fill(&mut stream, &mut buf[..want]);
        // What arrived before a failure was received: keep it too.
        if let Err(e) = held.write(&buf[..n]) {
            let at = held.offset();
            let cp = held.checkpoint();
            let kept = match cp {
                Ok(()) => format!("held part kept at byte {at} for resume"),
                Err(c) => format!(
                    "checkpoint also failed ({c}); resume from byte {}",
                    held.durable().offset
                ),
            };
            return Err(Error::new(e.kind(), format!("{name}: {e}; {kept}")));
        }
        sh.counters
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Some(e) = stop {
            held.checkpoint()?;
            let (at, size) = (held.offset(), header.filesize);
            let e = net_err(e, "receiving data");
            let what = if e.kind() == ErrorKind::ConnectionLost && e.io_error().is_none() {
                "client disconnected".to_string()
            } else {
                e.to_string()
            };
            return Err(Error::new(
                e.kind(),
                format!("{name}: {what} at byte {at} of {size}; held part kept for resume"),
            ));
        }
    }

    let verdict = held.finish()?;
    match verdict {
        Verdict::Ok => {
            sh.counters.completed.fetch_add(1, Ordering::Relaxed);
            (sh.logger)(&format!(
                "{peer}: {name}: CRC32_OK ({} bytes, stored)",
                header.filesize
            ));
        }
        Verdict::Mismatch => {
            sh.counters.crc_errors.fetch_add(1, Ordering::Relaxed);
            let why = held
                .prefix_problem()
                .unwrap_or("CRC-32 of the received file differs from the header's");
            (sh.logger)(&format!(
                "{peer}: {name}: CRC32_ERROR: {why}; received bytes discarded"
            ));
        }
    }
    stream
        .write_all(verdict.as_bytes())
        .map_err(|e| net_err(e, "sending the verdict"))?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// Whether a header that failed to parse still shows a version-2 client
/// (so the refusal can be put in words for it).
fn json_mentions_v2(json: &[u8]) -> bool {
    json.windows(4).any(|w| w == b"\"bt\"")
}

/// Checks a header: its format, the name, the size limit. Returns the
/// header, the sanitised name and the version-2 offer, if any.
fn admit(
    sh: &Shared,
    json: &[u8],
    awaiting_header: &AtomicBool,
) -> Result<(proto::Header, SafeName, Option<v2::Offer>)> {
    let (header, offer) = v2::parse_header(json).map_err(refusal)?;
    if !awaiting_header.swap(false, Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Refused,
            "evicted before its header was complete",
        ));
    }
    let name = SafeName::from_wire(&header.filename).map_err(refusal)?;
    if let Some(max) = sh.cfg.max_file_size {
        if header.filesize > max {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "refused {name}: {} bytes is over the limit of {max} (--max-file-size)",
                    header.filesize
                ),
            ));
        }
    }
    Ok((header, name, offer))
}

/// Sends a version-2 client the reason it is refused or failed (after the
/// magic when nothing was sent yet), then lets it drain: the client may
/// still be sending, and closing with unread data would reset the
/// connection and lose the message.
fn say_error(stream: &mut TcpStream, msg: &str, before_offer: bool) {
    let mut out = Vec::new();
    if before_offer {
        out.extend_from_slice(&v2::MAGIC);
    }
    out.extend_from_slice(&v2::encode_server_msg(&v2::ServerMsg::Error(
        msg.to_string(),
    )));
    if stream.write_all(&out).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut sink = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        }
    }
}

/// Refuses an upload that needs more than the free space, or would leave
/// less than `--min-free`, before a byte of it is stored.
fn check_space(sh: &Shared, name: &SafeName, needed: u64) -> Result<()> {
    let avail = sh.store.available_space()?;
    if needed > avail {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("refused {name}: needs {needed} more bytes, only {avail} free on the server"),
        ));
    }
    if avail - needed < sh.cfg.min_free {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "refused {name}: it would leave {} bytes free, under the server's minimum of {} (--min-free)",
                avail - needed,
                sh.cfg.min_free
            ),
        ));
    }
    Ok(())
}

/// Challenges a protocol-2 client to prove it knows the token, before
/// anything is claimed or stored. Every refusal is logged with the peer.
fn authenticate(
    sh: &Shared,
    stream: &mut TcpStream,
    token: &crate::auth::Token,
    header: &[u8],
) -> Result<()> {
    let nonce = crate::auth::nonce()?;
    let mut out = v2::MAGIC.to_vec();
    out.extend_from_slice(&v2::encode_server_msg(&v2::ServerMsg::Challenge(nonce)));
    stream
        .write_all(&out)
        .map_err(|e| net_err(e, "sending the challenge"))?;
    let _ = stream.set_read_timeout(Some(sh.cfg.header_timeout.min(sh.cfg.idle_timeout)));
    let mut tag = [0u8; 1];
    stream
        .read_exact(&mut tag)
        .map_err(|e| net_err(e, "waiting for the answer to the challenge"))?;
    let mut answer = [0u8; crate::auth::ANSWER_LEN];
    if tag[0] != b'A' {
        let e = Error::new(
            ErrorKind::Refused,
            "authentication failed: the client did not answer the challenge",
        );
        say_error(stream, &e.to_string(), false);
        return Err(e);
    }
    stream
        .read_exact(&mut answer)
        .map_err(|e| net_err(e, "reading the answer to the challenge"))?;
    let _ = stream.set_read_timeout(Some(sh.cfg.idle_timeout));
    if !token.check(&nonce, header, &answer) {
        let e = Error::new(ErrorKind::Refused, "authentication failed: wrong token");
        say_error(stream, &e.to_string(), false);
        return Err(e);
    }
    Ok(())
}

/// Most rounds of block repair before an upload is declared failed.
pub const MAX_REPAIR_ROUNDS: u32 = 5;

/// One version-2 upload, after the header was admitted and the name claimed.
fn serve_v2(
    sh: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    filesize: u64,
    offer: v2::Offer,
    claim: &Claim,
    magic_sent: bool,
) -> Result<()> {
    let (name, in_v2) = (&claim.name, &claim.in_v2);
    let block = offer.block_size;
    let (mut bp, recovery) = match BlockPart::begin(&sh.store, name, filesize, block) {
        Ok(x) => x,
        Err(e) => {
            say_error(stream, &format!("server storage error: {e}"), !magic_sent);
            return Err(e);
        }
    };
    match &recovery {
        Recovery::Reread(why) => (sh.logger)(&format!(
            "{peer}: {name}: {why}: re-read its blocks to verify them"
        )),
        Recovery::Discarded(why) => (sh.logger)(&format!(
            "{peer}: {name}: held part not usable ({why}); starting over"
        )),
        _ => {}
    }
    let held = bp.held();
    if let Err(e) = check_space(sh, name, filesize - held) {
        say_error(stream, &e.to_string(), !magic_sent);
        return Err(e);
    }
    (sh.logger)(&format!(
        "{peer}: receiving {name} ({filesize} bytes, protocol 2, blocks of {block}); holds {held} bytes in {} verified blocks",
        bp.held_crcs().len()
    ));
    let mut hello = if magic_sent {
        Vec::new()
    } else {
        v2::MAGIC.to_vec()
    };
    hello.extend_from_slice(&v2::encode_server_msg(&v2::ServerMsg::Held {
        held,
        block_size: block,
        crcs: bp.held_crcs().to_vec(),
    }));
    stream
        .write_all(&hello)
        .map_err(|e| net_err(e, "sending the held block list"))?;
    in_v2.store(true, Ordering::SeqCst);

    let mut buf = crate::sys::PageBuf::new(RECV_BUFFER);
    let mut rounds = 0u32;
    loop {
        let mut tag = [0u8; 1];
        stream
            .read_exact(&mut tag)
            .map_err(|e| cut_off(&mut bp, e, "waiting for the next block"))?;
        let mut rest = [0u8; v2::MAX_CLIENT_HEAD];
        let rest =
            &mut rest[..v2::client_head_len(tag[0]).map_err(|e| fail_v2(stream, &mut bp, e))?];
        stream
            .read_exact(rest)
            .map_err(|e| cut_off(&mut bp, e, "reading a frame head"))?;
        let (frame, idx) = v2::parse_client_head(tag[0], rest, filesize, block)
            .map_err(|e| fail_v2(stream, &mut bp, e))?;
        match frame {
            v2::ClientFrame::Data { offset, len } => {
                if let Err(e) = bp.begin_block(idx) {
                    let msg = format!("server cannot store {name}: {e}");
                    say_error(stream, &msg, false);
                    return Err(Error::new(ErrorKind::Storage, msg));
                }
                let mut h = crc32fast::Hasher::new();
                let mut pos = 0u64;
                while pos < len {
                    let want = ((len - pos) as usize).min(buf.len());
                    let (n, stop) = fill(stream, &mut buf[..want]);
                    if let Some(e) = stop {
                        // An incomplete block is worth nothing: it stays missing.
                        return Err(cut_off(&mut bp, e, &format!("receiving block {idx}")));
                    }
                    h.update(&buf[..n]);
                    if let Err(e) = bp.write_at(offset + pos, &buf[..n]) {
                        // The block is incomplete: it stays missing.
                        let _ = bp.record_block(idx, 0, false);
                        let cp = bp.checkpoint();
                        let msg = format!(
                            "server cannot store {name}: {e}; {} bytes held for resume{}",
                            bp.held(),
                            cp.err()
                                .map(|c| format!(" (checkpoint failed too: {c})"))
                                .unwrap_or_default()
                        );
                        say_error(stream, &msg, false);
                        return Err(Error::new(ErrorKind::Storage, msg));
                    }
                    pos += n as u64;
                    sh.counters
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                let mut trailer = [0u8; 4];
                stream
                    .read_exact(&mut trailer)
                    .map_err(|e| cut_off(&mut bp, e, "reading a block checksum"))?;
                let got = h.finalize();
                let good = got == u32::from_be_bytes(trailer);
                if !good {
                    (sh.logger)(&format!(
                        "{peer}: {name}: block {idx} arrived damaged; will ask for it again"
                    ));
                }
                bp.record_block(idx, got, good)?;
            }
            v2::ClientFrame::Answer(_) => {
                return Err(fail_v2(
                    stream,
                    &mut bp,
                    Error::new(ErrorKind::Protocol, "unexpected answer frame"),
                ));
            }
            v2::ClientFrame::End { crc32 } => {
                let missing = bp.missing();
                if !missing.is_empty() {
                    rounds += 1;
                    if rounds > MAX_REPAIR_ROUNDS {
                        let msg = format!(
                            "CRC32_ERROR: {} block(s) still damaged after {MAX_REPAIR_ROUNDS} repair rounds (first: block {}); the link keeps corrupting data or the source keeps changing",
                            missing.len(), missing[0]);
                        return Err(finish_failed(sh, stream, &mut bp, peer, msg));
                    }
                    bp.checkpoint()?;
                    (sh.logger)(&format!(
                        "{peer}: {name}: asking again for {} block(s), round {rounds}",
                        missing.len()
                    ));
                    let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Repair(
                        missing,
                    )));
                    stream
                        .write_all(&f)
                        .map_err(|e| net_err(e, "asking for a repair"))?;
                    continue;
                }
                if bp.whole_crc() != crc32 {
                    let msg = format!(
                        "CRC32_ERROR: every block matched its checksum but the whole-file CRC-32 is {:08x}, the client says {crc32:08x}; the client's block list is inconsistent",
                        bp.whole_crc());
                    return Err(finish_failed(sh, stream, &mut bp, peer, msg));
                }
                if let Err(e) = bp.finish() {
                    say_error(stream, &format!("server cannot store {name}: {e}"), false);
                    return Err(e);
                }
                sh.counters.completed.fetch_add(1, Ordering::Relaxed);
                (sh.logger)(&format!(
                    "{peer}: {name}: CRC32_OK ({filesize} bytes, protocol 2, stored)"
                ));
                let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Ok));
                stream
                    .write_all(&f)
                    .map_err(|e| net_err(e, "sending the verdict"))?;
                let _ = stream.shutdown(Shutdown::Write);
                return Ok(());
            }
        }
    }
}

/// Reads until `buf` is full, so that the disk sees large writes whatever
/// sizes the socket delivers. Returns the bytes read and, if it stopped
/// early, why (end of stream as `UnexpectedEof`).
fn fill(stream: &mut TcpStream, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return (filled, Some(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

/// The connection broke in the data phase: checkpoint the good blocks and
/// say what is kept.
fn cut_off(bp: &mut BlockPart, e: io::Error, during: &str) -> Error {
    let _ = bp.checkpoint();
    let e = net_err(e, during);
    Error::new(
        e.kind(),
        format!(
            "{}: {e}; held part kept: {} bytes for resume",
            bp.name(),
            bp.held()
        ),
    )
}

/// A protocol violation in the data phase: keep what is good, say why.
fn fail_v2(stream: &mut TcpStream, bp: &mut BlockPart, e: Error) -> Error {
    let _ = bp.checkpoint();
    say_error(stream, &format!("protocol error: {e}"), false);
    e
}

fn finish_failed(
    sh: &Shared,
    stream: &mut TcpStream,
    bp: &mut BlockPart,
    peer: SocketAddr,
    msg: String,
) -> Error {
    sh.counters.crc_errors.fetch_add(1, Ordering::Relaxed);
    (sh.logger)(&format!(
        "{peer}: {}: {msg}; received bytes discarded",
        bp.name()
    ));
    bp.discard();
    let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Failed(msg.clone())));
    let _ = stream.write_all(&f);
    Error::new(ErrorKind::CrcMismatch, msg)
}

fn refusal(e: Error) -> Error {
    if e.kind() == ErrorKind::Protocol || e.kind() == ErrorKind::Refused {
        Error::new(ErrorKind::Refused, format!("refused: {e}"))
    } else {
        e
    }
}
