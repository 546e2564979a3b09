//! The sending side: upload one file, resuming and retrying until the server
//! answers `CRC32_OK` or the retry budget is spent.
//!
//! One attempt is one TCP connection. It offers protocol version 2 (see
//! [`crate::v2`]); a new server takes it (block-verified resume, repair,
//! errors in words) and a legacy one ignores it, and then the exchange is
//! version 1 exactly: header, offset, the bytes from that offset, verdict. Between attempts it backs off
//! exponentially. Not for prompts, progress bars or exit codes: those belong
//! to the caller (the CLI, C, Python).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cache::{SourceStamp, SumCache, Sums};
use crate::proto::{self, Header, Verdict};
use crate::v2;
use crate::{Error, ErrorKind, Result};

/// Which protocol [`send_file`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Offer version 2 and fall back to version 1 with a legacy server.
    Auto,
    /// Speak version 1 only, exactly as the original client did.
    Legacy,
}

/// Protocol 1 reports progress, checks for cancellation and paces a rate
/// limit after every this many bytes.
pub const SEND_CHUNK: usize = 8 << 20;

/// How [`send_file`] connects and retries. `SendOptions::new(host, port)`
/// gives the defaults.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Server host name, IPv4 or IPv6 address (without brackets).
    pub host: String,
    /// Server TCP port.
    pub port: u16,
    /// Extra attempts after a failure (unreachable, connection lost, CRC
    /// mismatch, a fault the server calls temporary). An attempt on which
    /// the server confirmed it holds more than ever before (the resume
    /// offset, or the verified blocks it lists) does not use up the budget,
    /// so a long upload survives any number of cable pulls as long as the
    /// server keeps checkpointing; bytes merely sent are no progress, so a
    /// server that takes them and never keeps them runs the budget out.
    pub retries: u32,
    /// Time allowed for each TCP connect.
    pub connect_timeout: Duration,
    /// A connection on which nothing moves for this long is given up (and
    /// retried).
    pub io_timeout: Duration,
    /// First pause between attempts; doubles each time up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
    /// Send at most this many bytes per second (`None`: as fast as possible).
    pub limit_rate: Option<u64>,
    /// Name to give the file on the server (`None`: the file's base name).
    pub remote_name: Option<String>,
    /// Which protocol to speak.
    pub protocol: Protocol,
    /// The shared token for servers that require authentication.
    pub token: Option<crate::auth::Token>,
    /// Where to cache block checksums of sent files, so a resumed upload
    /// does not re-read what it already hashed (`None`: no cache). The
    /// default is [`SumCache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Time allowed for the server's first 8 bytes after our header when
    /// offering version 2. A bigtransfer server sends them at once (before
    /// any slow storage work), so silence or another protocol's greeting
    /// within this time names the peer as not a bigtransfer server instead
    /// of waiting out `io_timeout`. Speaking version 1 only, `io_timeout`
    /// applies (an old server may do slow work first).
    pub handshake_timeout: Duration,
}

/// Most rounds of block repair the client answers on one connection. The
/// server gives up after 5 (`server::MAX_REPAIR_ROUNDS`); the margin leaves
/// room for a server tuned a little higher. A server asking for more is
/// broken or lying, and answering it would send the same blocks for ever.
pub const MAX_REPAIR_ROUNDS: u32 = 8;

impl SendOptions {
    /// Defaults: 5 retries, 10 s connect timeout, 10 s handshake timeout,
    /// 60 s I/O timeout, backoff from 0.5 s to 15 s, no rate limit.
    ///
    /// ```
    /// let o = bigtransfer_core::SendOptions::new("127.0.0.1", 8080);
    /// assert_eq!(o.retries, 5);
    /// ```
    pub fn new(host: impl Into<String>, port: u16) -> SendOptions {
        SendOptions {
            host: host.into(),
            port,
            retries: 5,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(15),
            limit_rate: None,
            remote_name: None,
            protocol: Protocol::Auto,
            token: None,
            cache_dir: SumCache::default_dir(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`send_file`] is doing, reported to its callback.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// Computing the file's CRC-32: `done` of `total` bytes read.
    Hashing {
        /// Bytes hashed so far.
        done: u64,
        /// File size.
        total: u64,
    },
    /// Connected to `addr`; the server holds `offset` bytes already.
    Connected {
        /// The server's address.
        addr: SocketAddr,
        /// Where this attempt resumes.
        offset: u64,
        /// File size.
        total: u64,
    },
    /// Sending: `done` of `total` bytes of the file are with the server.
    Sending {
        /// Bytes of the file at the server (offset plus sent this attempt).
        done: u64,
        /// File size.
        total: u64,
    },
    /// All bytes sent; waiting for the server's verdict.
    Verifying,
    /// The attempt failed with `error`; the next starts after `delay`.
    Retrying {
        /// Number of the attempt about to start (2 for the first retry).
        attempt: u32,
        /// Pause before it.
        delay: Duration,
        /// Why the previous attempt failed.
        error: &'a Error,
    },
}

/// Whether [`send_file`] should go on. Returning `Cancel` from the callback
/// ends the upload with an [`ErrorKind::Cancelled`] error; what the server
/// received stays resumable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop as soon as possible.
    Cancel,
}

/// The result of a successful upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Name the file was stored under (as sent in the header).
    pub filename: String,
    /// File size in bytes.
    pub filesize: u64,
    /// CRC-32 of the whole file, confirmed by the server.
    pub crc32: u32,
    /// Offset the first attempt resumed from (bytes the server already held).
    pub resumed_from: u64,
    /// File bytes sent over the network in all attempts together.
    pub bytes_sent: u64,
    /// File bytes read only to compute checksums (not sent).
    pub bytes_hashed: u64,
    /// File bytes read in all (for checksums and for sending).
    pub bytes_read: u64,
    /// Blocks sent again because the server's copy differed or arrived
    /// damaged (version 2).
    pub blocks_resent: u64,
    /// Rounds of block repair the server asked for (version 2).
    pub repairs: u32,
    /// The protocol version spoken on the last connection (1 or 2).
    pub protocol: u8,
    /// From the call to the first file byte sent.
    pub time_to_first_byte: Duration,
    /// Connections made (1 when nothing went wrong).
    pub attempts: u32,
    /// Wall time of the whole upload, hashing included.
    pub elapsed: Duration,
}

/// The source file as opened for one upload, with what is known of its
/// checksums.
struct Source {
    file: File,
    stamp: SourceStamp,
    /// CRC-32 of the whole file, once known (hashed, cached, or combined
    /// from all block CRC-32s).
    whole: Option<u32>,
    /// Block size and CRC-32s of the first blocks (version 2).
    block: u64,
    blocks: Vec<u32>,
}

impl Source {
    /// The source id sent in the offer (`bt.sid`): the same for every
    /// attempt, by any process, while the file is unchanged, so a restarted
    /// client may take over its own stale connection (see
    /// [`v2::source_id`]).
    fn source_id(&self, path: &Path) -> [u8; 16] {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let st = &self.stamp;
        v2::source_id(&[
            canonical.as_os_str().as_encoded_bytes(),
            &st.size.to_be_bytes(),
            &st.mtime.to_be_bytes(),
            &st.mtime_nsec.to_be_bytes(),
            &st.ino.to_be_bytes(),
            &st.ctime.to_be_bytes(),
            &st.ctime_nsec.to_be_bytes(),
        ])
    }

    fn open(path: &Path, cache: Option<&SumCache>) -> Result<Source> {
        let src_err = |what: &str, e: io::Error| {
            Error::io(
                ErrorKind::SourceFile,
                format!("cannot {what} {}", path.display()),
                e,
            )
        };
        let file = File::open(path).map_err(|e| src_err("open", e))?;
        let meta = file.metadata().map_err(|e| src_err("inspect", e))?;
        if !meta.is_file() {
            return Err(Error::new(
                ErrorKind::SourceFile,
                format!("{} is not a regular file", path.display()),
            ));
        }
        crate::sys::advise_sequential(&file);
        let stamp = SourceStamp::of(&meta);
        let block = v2::block_size_for(stamp.size);
        let mut src = Source {
            file,
            stamp,
            whole: None,
            block,
            blocks: Vec::new(),
        };
        if let Some(s) = cache.and_then(|c| c.load(path, stamp)) {
            src.whole = s.whole;
            if s.block == block {
                src.blocks = s.blocks;
            }
        }
        Ok(src)
    }

    fn size(&self) -> u64 {
        self.stamp.size
    }

    fn unchanged(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| SourceStamp::of(&m) == self.stamp)
    }

    fn remember(&self, path: &Path, cache: Option<&SumCache>) {
        if let Some(c) = cache {
            c.store(
                path,
                self.stamp,
                &Sums {
                    block: self.block,
                    blocks: self.blocks.clone(),
                    whole: self.whole,
                },
            );
        }
    }
}

/// The name sent in the header: the file's base name unless overridden.
fn wire_name(path: &Path, opts: &SendOptions) -> Result<String> {
    if let Some(n) = &opts.remote_name {
        return Ok(n.clone());
    }
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::SourceFile,
                format!("{} has no file name", path.display()),
            )
        })
}

/// Counters of one upload, across attempts.
struct Tally {
    started: Instant,
    attempts: u32,
    sent: u64,
    hashed: u64,
    read: u64,
    resumed_from: Option<u64>,
    blocks_resent: u64,
    repairs: u32,
    first_byte: Option<Duration>,
    protocol: u8,
    /// The most the server ever confirmed holding of this file (v1 resume
    /// offset, v2 bytes of verified blocks that match ours).
    confirmed: Option<u64>,
}

impl Tally {
    fn new(started: Instant) -> Tally {
        Tally {
            started,
            attempts: 0,
            sent: 0,
            hashed: 0,
            read: 0,
            resumed_from: None,
            blocks_resent: 0,
            repairs: 0,
            first_byte: None,
            protocol: 0,
            confirmed: None,
        }
    }

    fn outcome(&self, filename: String, src: &Source) -> Outcome {
        Outcome {
            filename,
            filesize: src.size(),
            crc32: src.whole.unwrap_or(0),
            resumed_from: self.resumed_from.unwrap_or(0),
            bytes_sent: self.sent,
            bytes_hashed: self.hashed,
            bytes_read: self.read,
            blocks_resent: self.blocks_resent,
            repairs: self.repairs,
            protocol: self.protocol,
            time_to_first_byte: self.first_byte.unwrap_or_default(),
            attempts: self.attempts,
            elapsed: self.started.elapsed(),
        }
    }

    /// The error that ends the upload once the retries are spent.
    fn gave_up(&self, err: Error, ever_connected: bool) -> Error {
        let attempts_txt = if self.attempts == 1 {
            "1 attempt".to_string()
        } else {
            format!("{} attempts", self.attempts)
        };
        let kind = match err.kind() {
            ErrorKind::Unreachable if ever_connected => ErrorKind::ConnectionLost,
            k => k,
        };
        Error::new(
            kind,
            format!("{err} (gave up after {attempts_txt}: retries exhausted)"),
        )
    }

    fn confirm(&mut self, held: u64) {
        self.confirmed = Some(self.confirmed.map_or(held, |c| c.max(held)));
    }
}

/// Uploads the file at `path` to the server in `opts`, resuming where an
/// earlier attempt stopped, and retrying as `opts` allows. Returns only when
/// the server answered `CRC32_OK`.
///
/// With a version-2 server (see [`crate::v2`]) the held part is compared
/// block by block before anything is sent, only differing or missing blocks
/// travel, and damaged blocks are repaired instead of restarting. With a
/// legacy server it speaks version 1 exactly.
///
/// `progress` is called often (after each block hashed or sent); returning
/// [`Control::Cancel`] stops the upload cleanly.
///
/// Errors: [`ErrorKind::SourceFile`] (cannot read the file),
/// [`ErrorKind::Unreachable`] (never connected), [`ErrorKind::ConnectionLost`]
/// (connected, then lost it and ran out of retries),
/// [`ErrorKind::CrcMismatch`] (the server kept answering `CRC32_ERROR`),
/// [`ErrorKind::Refused`] (a version-2 server said no, and why),
/// [`ErrorKind::Protocol`], [`ErrorKind::Cancelled`].
pub fn send_file(
    path: &Path,
    opts: &SendOptions,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Outcome> {
    let started = Instant::now();
    let filename = wire_name(path, opts)?;
    let cache = opts.cache_dir.as_ref().map(SumCache::new);
    let cache = cache.as_ref();
    let mut src = Source::open(path, cache)?;
    let mut t = Tally::new(started);
    let mut legacy_server = opts.protocol == Protocol::Legacy;
    let mut failures = 0u32;
    let mut ever_connected = false;
    let mut delay = opts.backoff_initial;
    loop {
        if !src.unchanged(path) {
            src = Source::open(path, cache)?;
        }
        if legacy_server && src.whole.is_none() {
            // Version 1 needs the whole file's CRC-32 before the first byte.
            src.whole = Some(hash_whole(&mut src, path, &mut t, progress)?);
            src.remember(path, cache);
        }
        t.attempts += 1;
        let confirmed_before = t.confirmed;
        let res = attempt(
            path,
            &filename,
            &mut src,
            opts,
            cache,
            progress,
            &mut t,
            &mut ever_connected,
            legacy_server,
        );
        // Progress is what the server confirmed it holds, never what we
        // sent: a server that takes bytes and keeps none must not reset
        // the budget (it held clients for ever and had them re-send the
        // whole file on every reconnection).
        let progressed = matches!((confirmed_before, t.confirmed), (Some(b), Some(n)) if n > b);
        let err = match res {
            Ok(Reply::Stored) => {
                src.remember(path, cache);
                return Ok(t.outcome(filename, &src));
            }
            Ok(Reply::LegacyServer) => {
                // Found out the server is legacy without knowing the CRC-32:
                // nothing was sent; hash and go again at once.
                legacy_server = true;
                t.attempts -= 1;
                continue;
            }
            Ok(Reply::GiveUp(e)) => {
                src.remember(path, cache);
                return Err(e);
            }
            Ok(Reply::SourceChanged) => {
                failures += 1;
                src.whole = None;
                src.blocks.clear();
                Error::new(
                    ErrorKind::SourceFile,
                    format!(
                        "{} changed during the upload; starting over with its new content",
                        path.display()
                    ),
                )
            }
            Ok(Reply::Mismatch(why)) => {
                failures += 1;
                mismatch(&mut src, path, &filename, why, failures)
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    ErrorKind::Cancelled
                        | ErrorKind::SourceFile
                        | ErrorKind::InvalidInput
                        | ErrorKind::Refused
                ) {
                    src.remember(path, cache);
                    return Err(e);
                }
                if !progressed {
                    failures += 1;
                } else {
                    failures = 0;
                    delay = opts.backoff_initial;
                }
                e
            }
        };
        src.remember(path, cache);
        if failures > opts.retries {
            return Err(t.gave_up(err, ever_connected));
        }
        if progress(&Progress::Retrying {
            attempt: t.attempts + 1,
            delay,
            error: &err,
        }) == Control::Cancel
        {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(opts.backoff_max);
    }
}

/// The error for a `CRC32_ERROR`, forgetting the checksums that may be
/// stale. A file whose stamp is unchanged almost surely still has the
/// checksums we know (the damage was in transit or on the server): keep
/// them once, so a retry costs no extra read; after a second mismatch in a
/// row trust nothing.
fn mismatch(src: &mut Source, path: &Path, filename: &str, why: String, failures: u32) -> Error {
    let changed = !src.unchanged(path);
    if changed || failures >= 2 {
        src.whole = None;
        src.blocks.clear();
    }
    let why = if changed {
        format!("the file changed during the upload ({why})")
    } else {
        why
    };
    Error::new(
        ErrorKind::CrcMismatch,
        format!("server answered CRC32_ERROR for {filename}: {why}"),
    )
}

/// Reads the whole source for its CRC-32 (version 1 needs it up front).
fn hash_whole(
    src: &mut Source,
    path: &Path,
    t: &mut Tally,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<u32> {
    let size = src.size();
    let mut last = 0u64;
    src.file.seek(SeekFrom::Start(0)).map_err(|e| {
        Error::io(
            ErrorKind::SourceFile,
            format!("cannot read {}", path.display()),
            e,
        )
    })?;
    let crc = crate::crc::crc32_of(&mut src.file, path, &mut |done| {
        t.hashed += done - last;
        t.read += done - last;
        last = done;
        progress(&Progress::Hashing { done, total: size }) == Control::Continue
    })?;
    if last != size {
        return Err(Error::new(
            ErrorKind::SourceFile,
            format!(
                "{} changed size while being read ({size} then {last} bytes)",
                path.display()
            ),
        ));
    }
    Ok(crc)
}

fn connect(opts: &SendOptions) -> Result<(TcpStream, SocketAddr)> {
    let target = format!("{}:{}", opts.host, opts.port);
    let addrs: Vec<SocketAddr> = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::io(
                ErrorKind::Unreachable,
                format!("cannot resolve {}", opts.host),
                e,
            )
        })?
        .collect();
    let mut last: Option<io::Error> = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, opts.connect_timeout) {
            Ok(s) => return Ok((s, *a)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => Error::io(
            ErrorKind::Unreachable,
            format!("server {target} is unreachable"),
            e,
        ),
        None => Error::new(
            ErrorKind::Unreachable,
            format!("{} resolves to no address", opts.host),
        ),
    })
}

fn lost(e: io::Error, during: &str) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::new(
            ErrorKind::ConnectionLost,
            format!("connection stalled while {during} (no progress within the I/O timeout)"),
        ),
        io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::ConnectionLost,
            format!("server closed the connection while {during} (it may have refused the upload: see the server's log)"),
        ),
        _ => Error::io(ErrorKind::ConnectionLost, format!("connection lost while {during}"), e),
    }
}

/// What the server's first 8 bytes turned out to be.
enum Greeting {
    /// 8 bytes that are a version-2 greeting or a version-1 offset.
    Reply([u8; 8]),
    /// Closed (or reset) before sending anything.
    Closed(io::Error),
    /// Not a bigtransfer server: the error that says so.
    Foreign(Error),
}

/// Greetings of other protocols a wrong port commonly reaches. None of them
/// can be a resume offset: each starts with a byte of 0x15 or more, an
/// offset of over 1.5 EB, and only an offset past the file's size is
/// matched against them.
const FOREIGN: &[(&[u8], &str)] = &[
    (b"HTTP/", "an HTTP server"),
    (b"SSH-", "an SSH server"),
    (b"220 ", "an FTP or SMTP server"),
    (b"220-", "an FTP or SMTP server"),
    (b"+OK", "a POP3 server"),
    (b"* OK", "an IMAP server"),
    (b"RFB ", "a VNC server"),
    (b"\x15\x03", "a TLS server"),
    (b"\x16\x03", "a TLS server"),
];

/// `host:port` as the user would type it (brackets around an IPv6 address).
fn target_name(opts: &SendOptions) -> String {
    if opts.host.contains(':') {
        format!("[{}]:{}", opts.host, opts.port)
    } else {
        format!("{}:{}", opts.host, opts.port)
    }
}

fn not_ours(opts: &SendOptions, why: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!(
            "{} is not a bigtransfer server ({why}): check the host and port",
            target_name(opts)
        ),
    )
}

/// Seconds as a person writes them: 10, 0.3.
fn secs(d: Duration) -> String {
    format!("{}", d.as_millis() as f64 / 1000.0)
}

/// Reads the server's first 8 bytes: the version-2 greeting or the version-1
/// resume offset. Offering version 2 they must come within
/// `opts.handshake_timeout` (a bigtransfer server sends them at once);
/// another protocol's greeting, or silence, names the peer as not a
/// bigtransfer server. Speaking version 1 only, `io_timeout` applies.
fn read_greeting(
    stream: &mut TcpStream,
    opts: &SendOptions,
    legacy: bool,
    filesize: u64,
) -> Result<Greeting> {
    let limit = if legacy {
        opts.io_timeout
    } else {
        opts.handshake_timeout
    };
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 8];
    let mut n = 0;
    let mut timed_out = false;
    while n < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| lost(e, "configuring the socket"))?;
        match stream.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                timed_out = true;
                break;
            }
            Err(e) if n == 0 => return Ok(Greeting::Closed(e)),
            Err(e) => return Err(lost(e, "waiting for the resume offset")),
        }
    }
    stream
        .set_read_timeout(Some(opts.io_timeout))
        .map_err(|e| lost(e, "configuring the socket"))?;
    classify_greeting(opts, legacy, filesize, &buf[..n], timed_out, limit)
}

/// What the first bytes (`got`, all that came) say about the peer.
fn classify_greeting(
    opts: &SendOptions,
    legacy: bool,
    filesize: u64,
    got: &[u8],
    timed_out: bool,
    limit: Duration,
) -> Result<Greeting> {
    if let Ok(b) = <[u8; 8]>::try_from(got) {
        if b == v2::MAGIC || proto::parse_offset(b) <= filesize {
            return Ok(Greeting::Reply(b));
        }
    }
    if let Some((_, what)) = FOREIGN.iter().find(|(p, _)| got.starts_with(p)) {
        return Ok(Greeting::Foreign(not_ours(
            opts,
            &format!("it answered like {what}"),
        )));
    }
    if got.len() == 8 {
        let shown: String = got
            .iter()
            .flat_map(|&b| std::ascii::escape_default(b))
            .map(char::from)
            .collect();
        return Ok(Greeting::Foreign(not_ours(
            opts,
            &format!(
                "its first reply \"{shown}\" is neither a bigtransfer greeting nor a resume offset"
            ),
        )));
    }
    match (timed_out, got.len()) {
        (true, _) if legacy => Err(lost(
            io::ErrorKind::TimedOut.into(),
            "waiting for the resume offset",
        )),
        (true, 0) => Ok(Greeting::Foreign(not_ours(
            opts,
            &format!("it sent nothing within {} s of our header", secs(limit)),
        ))),
        (true, k) => Ok(Greeting::Foreign(not_ours(
            opts,
            &format!(
                "it sent only {k} bytes within {} s of our header",
                secs(limit)
            ),
        ))),
        (false, 0) => Ok(Greeting::Closed(io::ErrorKind::UnexpectedEof.into())),
        (false, _) => Err(lost(
            io::ErrorKind::UnexpectedEof.into(),
            "waiting for the resume offset",
        )),
    }
}

/// How one attempt ended, short of an error.
enum Reply {
    /// `CRC32_OK`.
    Stored,
    /// `CRC32_ERROR`, with what is known of why.
    Mismatch(String),
    /// The server turned out to be legacy and we lacked the CRC-32 for it.
    LegacyServer,
    /// The source changed (its stamp moved) before the final CRC-32 was
    /// combined: start again from what it holds now.
    SourceChanged,
    /// A failure no retry can cure (the peer is not a bigtransfer server).
    GiveUp(Error),
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    path: &Path,
    filename: &str,
    src: &mut Source,
    opts: &SendOptions,
    cache: Option<&SumCache>,
    progress: &mut dyn FnMut(&Progress) -> Control,
    t: &mut Tally,
    ever_connected: &mut bool,
    legacy: bool,
) -> Result<Reply> {
    let (mut stream, addr) = connect(opts)?;
    *ever_connected = true;
    let _ = stream.set_nodelay(true);
    crate::sys::widen_send_buffer(&stream);
    stream
        .set_read_timeout(Some(opts.io_timeout))
        .and_then(|_| stream.set_write_timeout(Some(opts.io_timeout)))
        .map_err(|e| lost(e, "configuring the socket"))?;
    let header = Header {
        filename: filename.to_string(),
        filesize: src.size(),
        crc32: src.whole.unwrap_or(0),
    };
    let offer = v2::Offer {
        version: v2::VERSION,
        block_size: src.block,
        rev: v2::REVISION,
        source: Some(src.source_id(path)),
    };
    let frame = match (legacy, src.whole) {
        (true, _) => proto::encode_header(&header)?,
        (false, Some(_)) => v2::encode_header(&header, offer)?,
        (false, None) => v2::encode_header_unknown_crc(&header, offer)?,
    };
    stream
        .write_all(&frame)
        .map_err(|e| lost(e, "sending the header"))?;
    let first = match read_greeting(&mut stream, opts, legacy, src.size())? {
        Greeting::Reply(b) => b,
        Greeting::Foreign(e) => return Ok(Reply::GiveUp(e)),
        // A legacy server refuses a null CRC-32 by closing, without
        // touching what it holds: hash the file and speak version 1.
        Greeting::Closed(_) if !legacy && src.whole.is_none() => return Ok(Reply::LegacyServer),
        Greeting::Closed(e) => return Err(lost(e, "waiting for the resume offset")),
    };
    if first == v2::MAGIC {
        t.protocol = 2;
        let mut msg = read_server_msg(&mut stream, "waiting for the server's block list")?;
        if let v2::ServerMsg::Challenge(nonce) = msg {
            let Some(token) = &opts.token else {
                return Err(Error::new(
                    ErrorKind::Refused,
                    "the server requires a token and none was given",
                ));
            };
            let answer = token.answer(&nonce, &frame[4..]);
            stream
                .write_all(&v2::encode_answer(&answer))
                .map_err(|e| lost(e, "answering the challenge"))?;
            msg = read_server_msg(&mut stream, "waiting for the server's block list")?;
        }
        return session_v2(
            &mut stream,
            msg,
            addr,
            path,
            src,
            progress,
            t,
            cache,
            opts.limit_rate,
        );
    }
    if src.whole.is_none() {
        return Err(Error::new(
            ErrorKind::Protocol,
            "the server answered a header it should have refused",
        ));
    }
    t.protocol = 1;
    let offset = proto::parse_offset(first);
    if offset > header.filesize {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "server says it holds {offset} bytes of a {}-byte file",
                header.filesize
            ),
        ));
    }
    t.resumed_from.get_or_insert(offset);
    t.confirm(offset);
    if progress(&Progress::Connected {
        addr,
        offset,
        total: header.filesize,
    }) == Control::Cancel
    {
        return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
    }
    let mut pos = offset;
    let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
    let started = Instant::now();
    let chunk = chunk_for(opts);
    while pos < header.filesize {
        // The moment the first file byte is handed to the socket.
        t.first_byte.get_or_insert_with(|| t.started.elapsed());
        let want = ((header.filesize - pos) as usize).min(chunk);
        let n = send_range(&mut stream, &src.file, pos, want, &mut buf).map_err(|e| match e {
            SendError::Source(e) => Error::io(
                ErrorKind::SourceFile,
                format!("cannot read {} at byte {pos}", header.filename),
                e,
            ),
            SendError::Socket(e) => lost(e, "sending data"),
        })?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::SourceFile,
                format!(
                    "{} became shorter while being sent (at byte {pos})",
                    header.filename
                ),
            ));
        }
        pos += n as u64;
        t.sent += n as u64;
        t.read += n as u64;
        if progress(&Progress::Sending {
            done: pos,
            total: header.filesize,
        }) == Control::Cancel
        {
            let _ = stream.shutdown(Shutdown::Both);
            return Err(Error::new(
                ErrorKind::Cancelled,
                format!("cancelled at byte {pos}; the server keeps what it received"),
            ));
        }
        pace(opts, pos - offset, started);
    }
    if progress(&Progress::Verifying) == Control::Cancel {
        return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
    }
    let mut reply = Vec::with_capacity(16);
    (&mut stream)
        .take(64)
        .read_to_end(&mut reply)
        .map_err(|e| lost(e, "waiting for the verdict"))?;
    if reply.is_empty() {
        return Err(Error::new(
            ErrorKind::ConnectionLost,
            "server closed the connection without a verdict (it may be out of space: see the server's log)",
        ));
    }
    Ok(match proto::parse_verdict(&reply)? {
        Verdict::Ok => Reply::Stored,
        Verdict::Mismatch => Reply::Mismatch("data was damaged in transit or on the server".into()),
    })
}

/// Why [`send_range`] stopped: the source or the socket failed.
enum SendError {
    Source(io::Error),
    Socket(io::Error),
}

/// Sends up to `count` bytes of `file` from `offset` through `buf`: the
/// bytes sent, fewer only where the file ends early (0: it ends at
/// `offset`).
///
/// A plain `pread` and `write`, not `sendfile`: over loopback, 2 GiB in 8
/// alternated runs took 1.50 s this way against 1.70 s with `sendfile`, with
/// less CPU for the whole machine (2.75 against 2.95 s), because the
/// receiver copies out of page-cache fragments more slowly than out of the
/// socket's own buffers. Protocol 2 sends the same way (it must see the
/// bytes to hash them).
fn send_range(
    stream: &mut TcpStream,
    file: &File,
    offset: u64,
    count: usize,
    buf: &mut [u8],
) -> std::result::Result<usize, SendError> {
    let mut done = 0;
    while done < count {
        let want = (count - done).min(buf.len());
        let n = match file.read_at(&mut buf[..want], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SendError::Source(e)),
        };
        stream.write_all(&buf[..n]).map_err(SendError::Socket)?;
        done += n;
    }
    Ok(done)
}

fn chunk_for(opts: &SendOptions) -> usize {
    match opts.limit_rate {
        // Small chunks keep a rate-limited stream smooth.
        Some(r) => ((r / 20).max(4096) as usize).min(SEND_CHUNK),
        None => SEND_CHUNK,
    }
}

/// Sleeps as needed to keep to `opts.limit_rate`.
fn pace(opts: &SendOptions, sent: u64, started: Instant) {
    if let Some(rate) = opts.limit_rate {
        let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn read_server_msg(stream: &mut TcpStream, during: &str) -> Result<v2::ServerMsg> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).map_err(|e| lost(e, during))?;
    let (tag, len) = v2::parse_server_head(head)?;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .map_err(|e| lost(e, during))?;
    v2::parse_server_msg(tag, &payload)
}

/// The error for a server's error frame, its words escaped: a fault the
/// server calls temporary is retried like a lost connection; a permanent
/// one, or bare text from a revision-1 server, is a refusal.
fn server_fault(code: Option<v2::FaultCode>, text: &str) -> Error {
    let words = crate::text::printable(text);
    match code {
        Some(c) if c.is_transient() => Error::new(
            ErrorKind::ConnectionLost,
            format!("server: {words} (a temporary fault)"),
        ),
        _ => Error::new(ErrorKind::Refused, format!("server: {words}")),
    }
}

/// The error for a server message that is not the one expected `during`
/// a phase: the server's own error if it is one.
fn unexpected(msg: v2::ServerMsg, during: &str) -> Error {
    let what = match msg {
        v2::ServerMsg::Error(m) => return server_fault(None, &m),
        v2::ServerMsg::Fault(c, m) => return server_fault(Some(c), &m),
        v2::ServerMsg::Held { .. } => "a block list",
        v2::ServerMsg::Challenge(_) => "a challenge",
        v2::ServerMsg::Verdict(_) => "a verdict",
    };
    Error::new(
        ErrorKind::Protocol,
        format!("the server sent {what} while {during}"),
    )
}

/// Checks a repair list before anything of it is sent: each block at most
/// once and within the file. A list that breaks this is a lying or broken
/// server; obeying it sent block 0 two million times (12 GB in 15 s).
fn check_repair_list(list: &[u64], nblocks: u64) -> Result<()> {
    let bad = |why: String| {
        Err(Error::new(
            ErrorKind::Protocol,
            format!("the server's repair list {why}; nothing of it was sent"),
        ))
    };
    if list.is_empty() {
        return bad("names no block".into());
    }
    if list.len() as u64 > nblocks {
        return bad(format!(
            "names {} blocks of a {nblocks}-block file",
            list.len()
        ));
    }
    let mut sorted = list.to_vec();
    sorted.sort_unstable();
    if let Some(&last) = sorted.last().filter(|&&l| l >= nblocks) {
        return bad(format!("names block {last} of a {nblocks}-block file"));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return bad(format!("names block {} more than once", w[0]));
    }
    Ok(())
}

/// If the server has spoken while we send (it only does to report an
/// error), reads what it said.
fn check_for_server_error(stream: &mut TcpStream) -> Result<()> {
    let ready =
        crate::sys::poll_readable(&[stream.as_raw_fd()], Some(Duration::ZERO)).unwrap_or_default();
    if ready.first().copied().unwrap_or(false) {
        return match read_server_msg(stream, "reading the server's message") {
            Ok(msg) => Err(unexpected(msg, "we were sending")),
            Err(e) => Err(e),
        };
    }
    Ok(())
}

/// Reads block `idx` of the source and returns its CRC-32, sending it as a
/// data frame if `stream` is given.
fn read_block(
    src: &Source,
    idx: u64,
    buf: &mut [u8],
    mut stream: Option<&mut TcpStream>,
    t: &mut Tally,
) -> Result<u32> {
    let (off, len) = v2::block_range(src.size(), src.block, idx);
    if let Some(s) = stream.as_deref_mut() {
        s.write_all(&v2::encode_data_head(off, len as u32))
            .map_err(|e| lost(e, "sending data"))?;
    }
    let mut h = crc32fast::Hasher::new();
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(buf.len());
        src.file
            .read_exact_at(&mut buf[..n], off + pos)
            .map_err(|e| {
                Error::io(
                    ErrorKind::SourceFile,
                    format!("cannot read the source at byte {}", off + pos),
                    e,
                )
            })?;
        h.update(&buf[..n]);
        t.read += n as u64;
        if let Some(s) = stream.as_deref_mut() {
            s.write_all(&buf[..n])
                .map_err(|e| lost(e, "sending data"))?;
            t.sent += n as u64;
        } else {
            t.hashed += n as u64;
        }
        pos += n as u64;
    }
    let crc = h.finalize();
    if let Some(s) = stream {
        s.write_all(&crc.to_be_bytes())
            .map_err(|e| lost(e, "sending data"))?;
    }
    Ok(crc)
}

#[allow(clippy::too_many_arguments)]
fn session_v2(
    stream: &mut TcpStream,
    first: v2::ServerMsg,
    addr: SocketAddr,
    path: &Path,
    src: &mut Source,
    progress: &mut dyn FnMut(&Progress) -> Control,
    t: &mut Tally,
    cache: Option<&SumCache>,
    rate: Option<u64>,
) -> Result<Reply> {
    let size = src.size();
    let (held, block, server_crcs) = match first {
        v2::ServerMsg::Held {
            held,
            block_size,
            crcs,
        } => (held, block_size, crcs),
        other => return Err(unexpected(other, "we waited for its block list")),
    };
    let nblocks = v2::block_count(size, src.block);
    if block != src.block || held > size || server_crcs.len() as u64 > nblocks {
        return Err(Error::new(
            ErrorKind::Protocol,
            "server's block list does not fit this file",
        ));
    }
    let mut buf = crate::sys::PageBuf::new(crate::crc::READ_BLOCK);
    // Our CRC-32s for the blocks the server holds: cached, else read now.
    let known = src.blocks.len();
    for idx in known as u64..server_crcs.len() as u64 {
        let c = read_block(src, idx, &mut buf, None, t)?;
        src.blocks.push(c);
        if progress(&Progress::Hashing {
            done: (idx + 1) * block,
            total: held,
        }) == Control::Cancel
        {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
        }
    }
    let todo = v2::plan(nblocks, &server_crcs, &src.blocks);
    let differing = todo
        .iter()
        .filter(|&&i| (i as usize) < server_crcs.len())
        .count() as u64;
    t.blocks_resent += differing;
    let kept: u64 = (0..server_crcs.len() as u64)
        .filter(|i| !todo.contains(i))
        .map(|i| v2::block_range(size, block, i).1)
        .sum();
    t.resumed_from.get_or_insert(kept);
    t.confirm(kept);
    if progress(&Progress::Connected {
        addr,
        offset: kept,
        total: size,
    }) == Control::Cancel
    {
        return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
    }
    let mut done = kept;
    let started = Instant::now();
    let sent_before = t.sent;
    let mut since_save = 0u32;
    let mut send =
        |idx: u64, src: &mut Source, t: &mut Tally, stream: &mut TcpStream| -> Result<u32> {
            check_for_server_error(stream)?;
            // The moment the first file byte is handed to the socket.
            t.first_byte.get_or_insert_with(|| t.started.elapsed());
            let c = match read_block(src, idx, &mut buf, Some(stream), t) {
                Ok(c) => c,
                // The server may have said why it cut us off: prefer its words.
                Err(e) if e.kind() == ErrorKind::ConnectionLost => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    return Err(
                        match read_server_msg(stream, "reading the server's message") {
                            Ok(msg @ (v2::ServerMsg::Error(_) | v2::ServerMsg::Fault(..))) => {
                                unexpected(msg, "we were sending")
                            }
                            _ => e,
                        },
                    );
                }
                Err(e) => return Err(e),
            };
            Ok(c)
        };
    for &idx in &todo {
        let c = send(idx, src, t, stream)?;
        let i = idx as usize;
        if i < src.blocks.len() {
            src.blocks[i] = c;
        } else if i == src.blocks.len() {
            src.blocks.push(c);
        }
        done += v2::block_range(size, block, idx).1;
        since_save += 1;
        if since_save >= 32 {
            src.remember(path, cache);
            since_save = 0;
        }
        if progress(&Progress::Sending { done, total: size }) == Control::Cancel {
            let _ = stream.shutdown(Shutdown::Both);
            return Err(Error::new(
                ErrorKind::Cancelled,
                "cancelled; the server keeps the blocks it received",
            ));
        }
        pace_v2(t.sent - sent_before, started, rate);
    }
    let mut rounds = 0u32;
    loop {
        // The final CRC-32 may combine checksums read before this
        // connection (from the cache or an earlier attempt): only while
        // the stamp (ctime included) proves the file unchanged.
        if !src.unchanged(path) {
            return Ok(Reply::SourceChanged);
        }
        if src.blocks.len() as u64 != nblocks {
            return Err(Error::new(
                ErrorKind::Protocol,
                "internal: block list incomplete after sending",
            ));
        }
        let whole = v2::combine(&src.blocks, size, block);
        src.whole = Some(whole);
        if progress(&Progress::Verifying) == Control::Cancel {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
        }
        stream
            .write_all(&v2::encode_end(whole))
            .map_err(|e| lost(e, "sending the end of the file"))?;
        match read_server_msg(stream, "waiting for the verdict")? {
            v2::ServerMsg::Verdict(v2::Verdict::Ok) => return Ok(Reply::Stored),
            v2::ServerMsg::Verdict(v2::Verdict::Failed(m)) => {
                return Ok(Reply::Mismatch(crate::text::printable(&m).into_owned()))
            }
            v2::ServerMsg::Verdict(v2::Verdict::Repair(list)) => {
                rounds += 1;
                if rounds > MAX_REPAIR_ROUNDS {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("the server asked for more than {MAX_REPAIR_ROUNDS} rounds of repair; nothing more was sent"),
                    ));
                }
                check_repair_list(&list, nblocks)?;
                t.repairs += 1;
                t.blocks_resent += list.len() as u64;
                let mut unstable = Vec::new();
                for idx in list {
                    let c = send(idx, src, t, stream)?;
                    if src.blocks[idx as usize] != c {
                        unstable.push(idx);
                        src.blocks[idx as usize] = c;
                    }
                }
                if !unstable.is_empty() {
                    return Err(Error::new(
                        ErrorKind::SourceFile,
                        format!(
                            "the source is unstable: re-reading block(s) {unstable:?} of {} gave different data",
                            path.display()
                        ),
                    ));
                }
            }
            other => return Err(unexpected(other, "we waited for the verdict")),
        }
    }
}

fn pace_v2(sent: u64, started: Instant, rate: Option<u64>) {
    if let Some(rate) = rate {
        let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bt-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn send_range_sends_exactly_the_range_and_stops_at_the_end_of_the_file() {
        let dir = tempdir("range");
        let data = pattern(3 * (1 << 20) + 5);
        let path = dir.join("src");
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut rx, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        // A small buffer, so one call loops over several reads.
        let mut buf = vec![0u8; 64 << 10];
        let n = match send_range(&mut tx, &file, 7, 2 << 20, &mut buf) {
            Ok(n) => n,
            Err(_) => panic!("send_range failed"),
        };
        assert_eq!(n, 2 << 20);
        // Asking past the end sends what there is...
        let rest = match send_range(&mut tx, &file, 7 + n as u64, 8 << 20, &mut buf) {
            Ok(n) => n,
            Err(_) => panic!("send_range failed"),
        };
        assert_eq!(rest, data.len() - 7 - (2 << 20));
        // ...and at the end, nothing.
        assert!(matches!(
            send_range(&mut tx, &file, data.len() as u64, 1, &mut buf),
            Ok(0)
        ));
        drop(tx);
        assert_eq!(reader.join().unwrap(), &data[7..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_source_cut_short_during_a_protocol_1_send_is_a_source_error() {
        let dir = tempdir("shrink");
        let store = dir.join("store");
        let mut cfg = crate::ServerConfig::new(&store);
        cfg.bind = Some("127.0.0.1".parse().unwrap());
        cfg.port = 0;
        cfg.logger = Some(std::sync::Arc::new(|_: &str| {}));
        let server = crate::Server::bind(cfg).unwrap();
        let port = server.local_addr().unwrap().port();
        let stop = server.stop_handle();
        let serving = std::thread::spawn(move || server.serve());

        let path = dir.join("shrinking.bin");
        std::fs::write(&path, pattern(3 * SEND_CHUNK)).unwrap();
        let mut opts = SendOptions::new("127.0.0.1", port);
        opts.protocol = Protocol::Legacy;
        opts.cache_dir = None;
        opts.retries = 0;
        let cut = SEND_CHUNK as u64 + 12345;
        let mut cut_done = false;
        let res = send_file(&path, &opts, &mut |p| {
            if let Progress::Sending { .. } = p {
                if !cut_done {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(cut))
                        .unwrap();
                    cut_done = true;
                }
            }
            Control::Continue
        });
        stop.stop();
        serving.join().unwrap().unwrap();
        let e = res.expect_err("a shrunk source must not be reported as sent");
        assert_eq!(e.kind(), ErrorKind::SourceFile, "{e}");
        assert!(
            e.to_string()
                .contains(&format!("became shorter while being sent (at byte {cut})")),
            "{e}"
        );
        // Nothing was stored under the final name.
        assert!(!store.join("shrinking.bin").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
