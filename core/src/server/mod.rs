//! The receiving side: a blocking TCP server, one thread per connection.
//!
//! It accepts connections, reads the header, tells the client how much it
//! already holds, receives the rest into a [`DiskPart`](crate::part::DiskPart)
//! while computing the CRC-32 in the same pass, and answers the verdict. It
//! never stops because one connection misbehaved: every per-connection error
//! is logged with the peer address and ends that connection only.
//!
//! This file holds the server's setup, the accept loop and the expiry
//! sweep. A connection's protocol is the sans-IO [`crate::machine::Receiver`];
//! `conn` is its blocking shell (the only code touching the socket),
//! `policy` answers its actions (admission, space, claims, storage),
//! `claims` decides who may write a name, `local` is the local-disk
//! storage behind it, and `report` turns its ending into log lines.
//!
//! Not for: storage layout and durability (see [`crate::store`] and [`crate::part`]) or byte
//! parsing (see [`crate::proto`]).

mod backend;
mod claims;
mod conn;
mod get;
mod get_pack;
#[cfg(feature = "s3")]
mod get_store;
mod getjoin;
mod list;
mod local;
mod open;
mod policy;
mod report;
mod streams;
pub mod tree;
mod tree_auth;
mod tree_get;
#[cfg(feature = "s3")]
mod tree_get_store;
mod tree_notes;
#[cfg(feature = "s3")]
mod tree_s3;
mod tree_sums;

pub use crate::machine::MAX_REPAIR_ROUNDS;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::name::SafeName;
use crate::store::{key_of, Store};
use crate::tls::{Fingerprint, ServerKey};
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
    /// A different content uploaded under a name already stored replaces
    /// the stored file. `false` (the default): the stored file is kept as
    /// a numbered version beside it (`NAME.~N~`, see [`crate::keep`]).
    pub overwrite: bool,
    /// Refuse an upload that would leave less than this many bytes free,
    /// counting the space still to come of every upload in progress.
    pub min_free: u64,
    /// The slowest data rate, in bytes per second, a connection may keep
    /// up over a window of the idle timeout (at most [`RATE_WINDOW`]) once
    /// its data phase began; a slower one is closed (its held part
    /// checkpointed), so a trickle cannot hold a slot for ever. 0: no minimum.
    pub min_rate: u64,
    /// Most entries a tree session's manifest may list (files,
    /// directories and symlinks together); a longer one is refused.
    pub max_tree_entries: u64,
    /// Largest file a tree download sends among the tree's blocks; a
    /// larger one is fetched alone by a client that offers to (see
    /// `docs/PROTOCOL.md`, "Tree downloads"), refused to an older one.
    /// Never above (and by default) [`crate::tree::fetch::MAX_FILE`], the
    /// protocol's limit; lower only to test that path with small files.
    pub tree_get_file_limit: u64,
    /// Store uploads in this S3 bucket (and prefix) instead of `dir`
    /// (which then keeps nothing): any server node over the same bucket
    /// can resume an upload another node started.
    #[cfg(feature = "s3")]
    pub s3: Option<crate::s3::Config>,
    /// With `s3`: an upload whose node wrote nothing for this long may be
    /// taken over by another node (its lease is stale).
    #[cfg(feature = "s3")]
    pub s3_lease_stale: Duration,
    /// Whether connections may, must or must not use TLS (see [`TlsMode`]).
    pub tls: TlsMode,
    /// The server's key file; `None`: `DIR/.bigtransfer/key`
    /// ([`crate::tls::state_key_path`]), made on first start.
    pub key_file: Option<PathBuf>,
}

/// Which connections a server serves, by what their first byte says
/// ([`crate::sniff`]): TLS, plaintext, or both on the one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// TLS (protocol 2 inside) and plaintext (legacy clients) on one port.
    #[default]
    Auto,
    /// TLS only; plaintext connections are refused unless
    /// [`ServerConfig::allow_legacy`] is set.
    Required,
    /// Plaintext only, as before TLS (no key is made or read).
    Off,
}

impl TlsMode {
    /// The mode named `auto`, `required` or `off`.
    ///
    /// ```
    /// use bigtransfer_core::server::TlsMode;
    /// assert_eq!(TlsMode::parse("required").unwrap(), TlsMode::Required);
    /// assert!(TlsMode::parse("on").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<TlsMode> {
        match text {
            "auto" => Ok(TlsMode::Auto),
            "required" => Ok(TlsMode::Required),
            "off" => Ok(TlsMode::Off),
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "--tls {}: expected auto, required or off",
                    crate::text::printable(other)
                ),
            )),
        }
    }

    /// The name [`TlsMode::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Auto => "auto",
            TlsMode::Required => "required",
            TlsMode::Off => "off",
        }
    }
}

/// The window over which [`ServerConfig::min_rate`] is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How a connection that reached no verdict ended, for the counters and
/// the log.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Counted and logged with the peer's address.
    Logged(Error),
    /// Counted, not logged: throttled token guessing is summarised
    /// instead, so a guesser cannot flood the log.
    Quiet(ErrorKind),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        Failed::Logged(e)
    }
}

/// File descriptors a connection may need at once (its socket and clones
/// of it, the part, its record, its block list and a second handle for
/// checkpoints), for the start-up check of the open-file limit.
pub const FDS_PER_CONNECTION: u64 = 8;

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
            .field("overwrite", &self.overwrite)
            .field("min_free", &self.min_free)
            .field("min_rate", &self.min_rate)
            .field("tls", &self.tls)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// The defaults: all interfaces, port 8080, 64 connections, 60 s idle
    /// timeout, 10 s to send the header (and answer a token challenge),
    /// held parts expire after 7 days, at least 1 KiB/s over each minute of
    /// a data phase, storing into `dir`.
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
            overwrite: false,
            min_free: 0,
            min_rate: 1024,
            max_tree_entries: crate::tree::manifest::DEFAULT_MAX_ENTRIES,
            tree_get_file_limit: crate::tree::fetch::MAX_FILE,
            #[cfg(feature = "s3")]
            s3: None,
            #[cfg(feature = "s3")]
            s3_lease_stale: Duration::from_secs(30),
            tls: TlsMode::Auto,
            key_file: None,
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
        crate::sys::wake(self.inner.wake_write.as_fd());
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
    /// The TLS key (none with [`TlsMode::Off`]) and whether it was made
    /// by this start.
    key: Option<(ServerKey, bool)>,
}

struct Shared {
    cfg: ServerConfig,
    /// Download references by file stamp (see [`get::RefCache`]).
    refs: get::RefCache,
    /// TLS for connections that open with a ClientHello (none when off).
    tls: Option<Arc<rustls::ServerConfig>>,
    store: Store,
    /// The object store, when uploads go there instead of `store`.
    #[cfg(feature = "s3")]
    s3: Option<crate::s3::S3Storage>,
    stop: StopHandle,
    logger: Logger,
    live: AtomicUsize,
    conns: Mutex<HashMap<u64, Conn>>,
    claims: Mutex<HashMap<SafeName, claims::Claimant>>,
    claims_cv: Condvar,
    next_id: AtomicU64,
    counters: Counters,
    /// Bytes still to arrive for every upload in progress: what the free
    /// space will shrink by, so `--min-free` holds across concurrent uploads.
    reserved: Mutex<u64>,
    /// Wrong token answers per address.
    throttle: Mutex<crate::throttle::AuthThrottle>,
    /// The zero of the millisecond clocks kept in atomics.
    epoch: Instant,
    /// Parallel-stream sessions open now.
    sessions: crate::session::Sessions,
}

impl Shared {
    /// Whether uploads go to an object store rather than the directory.
    fn remote_storage(&self) -> bool {
        #[cfg(feature = "s3")]
        if self.s3.is_some() {
            return true;
        }
        false
    }

    /// Milliseconds since the server started (for atomics).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A live connection, as the accept loop sees it.
struct Conn {
    stream: TcpStream,
    accepted: Instant,
    /// Not yet admitted (its header is incomplete, or it has not answered
    /// the token challenge): the first to be evicted when the server is
    /// full, so uploads in progress are never the victims (as OpenSSH's
    /// MaxStartups drops unauthenticated connections first).
    unadmitted: Arc<AtomicBool>,
}

/// What a connection's thread knows about itself.
struct ConnInfo {
    id: u64,
    peer: SocketAddr,
    accepted: Instant,
    unadmitted: Arc<AtomicBool>,
}

/// Log lines on standard error as `[RFC 3339 UTC time] message`: the shape
/// of `bigtransfer server` and `python/server.py`, so swapping one server
/// for another (or serving from C or Python) keeps one log format.
pub fn default_logger() -> Logger {
    Arc::new(|line: &str| {
        eprintln!(
            "[{}] {line}",
            humantime::format_rfc3339_millis(SystemTime::now())
        );
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
        if let Some(token) = &cfg.token {
            // A guessable token can be brute-forced offline from one
            // recorded exchange: refuse it (16 x "a" used to be accepted).
            token.check_strength()?;
        }
        check_fd_limit(cfg.max_connections)?;
        let mut store = Store::open(&cfg.dir)?;
        store.set_overwrite(cfg.overwrite);
        #[cfg(feature = "s3")]
        let s3 = open_s3(&cfg)?;
        let (key, tls) = load_tls(&cfg)?;
        let listener = listen(&cfg)?;
        let logger = cfg.logger.clone().unwrap_or_else(default_logger);
        Ok(Server {
            listener,
            key,
            shared: Arc::new(Shared {
                cfg,
                refs: Default::default(),
                tls,
                store,
                #[cfg(feature = "s3")]
                s3,
                stop: StopHandle::new()?,
                logger,
                live: AtomicUsize::new(0),
                conns: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
                claims_cv: Condvar::new(),
                next_id: AtomicU64::new(1),
                counters: Counters::default(),
                reserved: Mutex::new(0),
                throttle: Mutex::new(crate::throttle::AuthThrottle::default()),
                epoch: Instant::now(),
                sessions: crate::session::Sessions::default(),
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

    /// The fingerprint of the server's TLS key, for clients to pin (none
    /// with [`TlsMode::Off`]).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.key.as_ref().map(|(k, _)| k.fingerprint())
    }

    /// Whether this start made a new key (the first start, or the key
    /// file was missing).
    pub fn key_created(&self) -> bool {
        self.key.as_ref().is_some_and(|(_, new)| *new)
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
        let wake = sh.stop.inner.wake_read.as_fd();
        let lfd = self.listener.as_fd();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let sweeper = self.spawn_sweeper();
        let result = loop {
            if sh.stop.is_stopped() {
                break Ok(());
            }
            // Wake at least once a second, to log throttling summaries.
            let ready = match crate::sys::poll_readable(&[lfd, wake], Some(Duration::from_secs(1)))
            {
                Ok(r) => r,
                Err(e) => {
                    break Err(Error::io(
                        ErrorKind::Storage,
                        "poll on the listening socket failed",
                        e,
                    ))
                }
            };
            if ready[1] {
                crate::sys::drain(wake);
            }
            self.log_throttle_summaries();
            if ready[0] {
                self.accept_pending(&mut threads);
            }
        };
        (sh.logger)("stopping: checkpointing running uploads");
        for c in lock(&sh.conns).values() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
        if let Some(t) = sweeper {
            t.thread().unpark();
            let _ = t.join();
        }
        result
    }

    /// Accepts everything pending: never blocks on one client.
    fn accept_pending(&self, threads: &mut Vec<JoinHandle<()>>) {
        let sh = &self.shared;
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
                    let wake = sh.stop.inner.wake_read.as_fd();
                    let _ = crate::sys::poll_readable(&[wake], Some(Duration::from_millis(100)));
                    break;
                }
            }
        }
    }

    /// One line per address whose token guessing was throttled, once its
    /// window ended, instead of a line per wrong answer.
    fn log_throttle_summaries(&self) {
        let sh = &self.shared;
        let summaries = lock(&sh.throttle).summaries(Instant::now());
        for (ip, failures, refused) in summaries {
            (sh.logger)(&format!(
                "{ip}: {failures} wrong token answer(s) and {refused} connection(s) refused for it in the last {}s",
                crate::throttle::WINDOW.as_secs()
            ));
        }
    }

    /// Runs the expiry sweep on its own thread (at start-up, then every
    /// tenth of the expiry age, between 1 s and 1 h), so deleting many
    /// expired parts never delays accepting (100k of them took 8.6 s).
    fn spawn_sweeper(&self) -> Option<JoinHandle<()>> {
        let age = self.shared.cfg.expire_partial?;
        let every = (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let sh = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("bt-sweep".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !sh.stop.is_stopped() {
                    if Instant::now() >= next {
                        sweep(&sh, age);
                        next = Instant::now() + every;
                    }
                    let nap = next.saturating_duration_since(Instant::now());
                    std::thread::park_timeout(nap.min(Duration::from_millis(250)));
                }
            })
            .ok()
    }

    fn spawn(&self, stream: TcpStream, peer: SocketAddr) -> Option<JoinHandle<()>> {
        let sh = Arc::clone(&self.shared);
        sh.counters.connections.fetch_add(1, Ordering::Relaxed);
        if sh.live.load(Ordering::SeqCst) >= sh.cfg.max_connections
            && !evict_oldest_unadmitted(&sh, peer)
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
        let accepted = Instant::now();
        let unadmitted = Arc::new(AtomicBool::new(true));
        match stream.try_clone() {
            Ok(c) => {
                let conn = Conn {
                    stream: c,
                    accepted,
                    unadmitted: Arc::clone(&unadmitted),
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
            let info = ConnInfo {
                id,
                peer,
                accepted,
                unadmitted,
            };
            serve_one(&sh2, &info, stream);
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

/// Serves one connection on its own thread: its errors end it alone and
/// are logged with the peer's address; a panic is contained.
fn serve_one(sh: &Shared, info: &ConnInfo, stream: TcpStream) {
    let peer = info.peer;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = open::transport(sh, info, stream)?;
        conn::handle_connection(sh, info, t)
    }));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(failed)) => {
            let kind = match &failed {
                Failed::Logged(e) => e.kind(),
                Failed::Quiet(kind) => *kind,
            };
            sh.counters.failed.fetch_add(1, Ordering::Relaxed);
            sh.counters.failed_by_reason[reason_index(kind)].fetch_add(1, Ordering::Relaxed);
            if let Failed::Logged(e) = failed {
                (sh.logger)(&format!("{peer}: {e}"));
            }
        }
        Err(_) => {
            sh.counters.failed.fetch_add(1, Ordering::Relaxed);
            sh.counters.failed_by_reason[FAILURE_REASONS.len() - 1].fetch_add(1, Ordering::Relaxed);
            (sh.logger)(&format!(
                "{peer}: internal error (panic) in connection handler"
            ));
        }
    }
}

/// Deletes held parts untouched for longer than `age`. Each is re-checked
/// and deleted under the claims lock, after making sure no upload claims
/// it: a new upload claims its name before it opens its part, so the sweep
/// can never unlink a part under an upload that is just starting.
fn sweep(sh: &Shared, age: Duration) {
    #[cfg(feature = "s3")]
    if let Some(s3) = &sh.s3 {
        return sweep_s3(sh, s3, age);
    }
    let keys = match sh.store.expired(age) {
        Ok(k) => k,
        Err(e) => return (sh.logger)(&format!("expiry sweep failed: {e}")),
    };
    for key in keys {
        let claims = lock(&sh.claims);
        if claims.keys().any(|n| key_of(n) == key) {
            continue;
        }
        if sh.store.remove_if_expired(&key, age) {
            (sh.logger)(&format!(
                "expired held part {key} (untouched for over {}s)",
                age.as_secs()
            ));
        }
        drop(claims);
    }
    tree::sweep_parts(&sh.cfg.dir, age, &sh.logger);
}

/// The object store of `cfg`, checked once at start-up (a listing of the
/// state objects), so wrong credentials or a missing bucket stop the
/// server with the store's words instead of failing every upload.
#[cfg(feature = "s3")]
fn open_s3(cfg: &ServerConfig) -> Result<Option<crate::s3::S3Storage>> {
    let Some(c) = cfg.s3.clone() else {
        return Ok(None);
    };
    let client = crate::s3::Client::new(c)?;
    client.list_objects(&format!("{}/", crate::s3::STATE_DIR))?;
    let node = crate::s3::S3Storage::default_node();
    let storage = crate::s3::S3Storage::new(client, node, cfg.s3_lease_stale);
    Ok(Some(storage.with_overwrite(cfg.overwrite)))
}

/// The expiry sweep of an object store: uploads whose state nobody wrote
/// for `age` are aborted (their parts deleted by the store).
#[cfg(feature = "s3")]
fn sweep_s3(sh: &Shared, s3: &crate::s3::S3Storage, age: Duration) {
    match s3.expire(age) {
        Ok(names) => {
            for n in names {
                (sh.logger)(&format!(
                    "expired held upload {n} in the object store (untouched for over {}s)",
                    age.as_secs()
                ));
            }
        }
        Err(e) => (sh.logger)(&format!("expiry sweep of the object store failed: {e}")),
    }
}

/// The listening socket of `cfg` (non-blocking: the accept loop polls it
/// beside the stop pipe).
fn listen(cfg: &ServerConfig) -> Result<TcpListener> {
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
    Ok(listener)
}

/// The server's key and TLS configuration (none with `--tls off`).
#[allow(clippy::type_complexity)]
fn load_tls(
    cfg: &ServerConfig,
) -> Result<(Option<(ServerKey, bool)>, Option<Arc<rustls::ServerConfig>>)> {
    if cfg.tls == TlsMode::Off {
        return Ok((None, None));
    }
    let key = load_key(cfg)?;
    let tls = crate::tls::server_config(&key.0)?;
    Ok((Some(key), Some(tls)))
}

/// The key at `--key FILE` or in the state directory, made there on
/// first start.
fn load_key(cfg: &ServerConfig) -> Result<(ServerKey, bool)> {
    let path = match &cfg.key_file {
        Some(p) => p.clone(),
        None => crate::tls::state_key_path(&cfg.dir),
    };
    ServerKey::load_or_create(&path)
}

/// Makes sure the process may open enough files for `max_connections`
/// (raising the soft limit to the hard one): otherwise uploads would start
/// and `accept` fail later (8 uploads under `ulimit -n 64` stalled accepts
/// for 30 s).
fn check_fd_limit(max_connections: usize) -> Result<()> {
    let needed = max_connections as u64 * FDS_PER_CONNECTION + 64;
    let limit = crate::sys::raise_nofile_limit().map_err(|e| {
        Error::io(
            ErrorKind::InvalidInput,
            "cannot read the open-file limit",
            e,
        )
    })?;
    if limit < needed {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the open-file limit is {limit}, but --max-connections {max_connections} needs about {needed}: raise it (ulimit -n {needed}, or LimitNOFILE= in a systemd unit) or lower --max-connections"
            ),
        ));
    }
    Ok(())
}

/// Makes room for a newcomer when the server is full by ending the oldest
/// connection that is not admitted yet (header incomplete or token
/// challenge unanswered): idle, slow or unauthenticated connections can
/// then never lock real clients out. Returns false when every connection
/// is an admitted upload.
fn evict_oldest_unadmitted(sh: &Shared, newcomer: SocketAddr) -> bool {
    let conns = lock(&sh.conns);
    let victim = conns
        .values()
        .filter(|c| c.unadmitted.load(Ordering::SeqCst))
        .min_by_key(|c| c.accepted);
    match victim {
        Some(c) => {
            // Only once: an evicted connection is no longer a candidate.
            c.unadmitted.store(false, Ordering::SeqCst);
            let _ = c.stream.shutdown(Shutdown::Both);
            let who = c
                .stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            (sh.logger)(&format!("{who}: evicted: server full and not admitted after {:.1}s, making room for {newcomer}", c.accepted.elapsed().as_secs_f64()));
            true
        }
        None => false,
    }
}
