//! The sending side: upload one file, resuming and retrying until the server
//! answers `CRC32_OK` or the retry budget is spent.
//!
//! One attempt is one TCP connection. It offers protocol version 2 (see
//! [`crate::v2`]); a new server takes it (block-verified resume, repair,
//! errors in words) and a legacy one ignores it, and then the exchange is
//! version 1 exactly: header, offset, the bytes from that offset, verdict.
//! Between attempts it backs off exponentially.
//!
//! Here: the options, the source and its checksums, the counters, and the
//! retry loop ([`send_file`]). One attempt is `shell`, a blocking shell
//! over [`crate::machine::Sender`] (which sequences the protocol); what its
//! ending means as an error is `peer`. Not for prompts, progress bars or
//! exit codes: those belong to the caller (the CLI, C, Python).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod list;
pub use list::{list_remote, list_remote_with, Listing};
mod get;
mod grow;
mod pack;
mod peer;
mod secure;
mod shell;
mod streams;
pub mod tree;
mod tree_sums;
mod tree_token;

pub use streams::Streams;

pub use get::{get_file, part_paths, GetOutcome};
pub mod tree_get;
pub use tree_get::{get_tree, FileStatus, TreeGetOutcome, TreeGetProgress};
mod tree_tick;
pub use tree_tick::TreeTick;

use peer::Reply;

use crate::cache::{SourceStamp, SumCache, Sums};
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
    /// Compressed data frames (version 2, when the server accepts them):
    /// `Auto` (the default) compresses while the link, not the CPU, is
    /// the bottleneck and the data shrinks; `Zstd(level)` tries every
    /// block; `Off` never offers. CRC-32s are of the file's bytes always.
    pub compress: crate::compress::Compress,
    /// The TCP congestion control to ask for on each connection (`None`:
    /// the system default). The default asks for BBR, which keeps its
    /// pace under loss where CUBIC collapses; the kernel lets an
    /// unprivileged process have it only where the administrator allowed
    /// it, else the socket silently keeps the default.
    pub congestion: Option<String>,
    /// Demand the server's key to have this fingerprint, even on first
    /// contact (as `bigtransfer server` prints it).
    pub fingerprint: Option<crate::tls::Fingerprint>,
    /// The file of pinned server keys (`host:port SHA256:...` lines);
    /// `None`: nothing is pinned or stored (every contact is a first one).
    /// The default is [`crate::known_hosts::default_path`].
    pub known_hosts: Option<PathBuf>,
    /// Refuse plaintext even with a server never seen before.
    pub require_tls: bool,
    /// Connections for one upload or download (version 2): `Auto` (the
    /// default: one on a short path, else more while throughput rises),
    /// `Fixed(1)` one connection, more asks the server for a session that
    /// further connections join (see [`Streams`]).
    pub streams: Streams,
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
            compress: crate::compress::Compress::Auto,
            congestion: Some(crate::congestion::PREFERRED.to_owned()),
            fingerprint: None,
            known_hosts: crate::known_hosts::default_path().ok(),
            require_tls: false,
            streams: Streams::Auto,
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
    /// First contact over TLS: the server's key was accepted (and pinned
    /// in `pinned_in`, when there is a known-hosts file). Tell the user,
    /// with the fingerprint, so they can compare it out of band.
    FirstContact {
        /// `host:port` as pinned.
        server: &'a str,
        /// The fingerprint of the key the server presented.
        fingerprint: crate::tls::Fingerprint,
        /// The known-hosts file it was stored in.
        pinned_in: Option<&'a Path>,
    },
    /// The server closed on our TLS hello (a legacy server, or `--tls
    /// off`) and nothing pins its key: this upload goes in plaintext.
    Plaintext {
        /// `host:port`.
        server: &'a str,
    },
    /// The attempt failed with `error`; the next starts after `delay`.
    Retrying {
        /// Number of the attempt about to start (2 for the first retry).
        attempt: u32,
        /// Pause before it.
        delay: Duration,
        /// Why the previous attempt failed.
        error: &'a Error,
    },
    /// A download ([`get_file`]): the file on the server is not the one
    /// the partial download was started against (its size, mtime or block
    /// CRC-32s differ); what was held is dropped and it starts over.
    ServerChanged {
        /// The remote name.
        remote: &'a str,
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
    /// Whether the last connection was TLS (encrypted, the server's key
    /// checked).
    pub encrypted: bool,
    /// The key the server presented over TLS (None in plaintext).
    pub server_key: Option<crate::tls::Fingerprint>,
    /// The server's key when this upload met it first and accepted it
    /// (pinned in the known-hosts file, if there is one): what a front
    /// should show the user to compare out of band. None when the key was
    /// already pinned, or in plaintext.
    pub new_host_key: Option<crate::tls::Fingerprint>,
    /// From the call to the first file byte sent.
    pub time_to_first_byte: Duration,
    /// Connections made (1 when nothing went wrong).
    pub attempts: u32,
    /// Wall time of the whole upload, hashing included.
    pub elapsed: Duration,
    /// The compression asked for (`auto`, `zstd:LEVEL` or `off`; `off`
    /// with [`Protocol::Legacy`]).
    pub compress: crate::compress::Compress,
    /// Whether the server agreed to compressed frames (last connection).
    pub compress_agreed: bool,
    /// Blocks sent compressed, in all attempts.
    pub compressed_blocks: u64,
    /// Payload bytes on the wire in all attempts: `bytes_sent` less what
    /// compression saved (frame heads and trailers not counted).
    pub wire_bytes: u64,
    /// The congestion control of the last connection, as the kernel
    /// reported it (`None` where the OS does not say).
    pub congestion: Option<String>,
    /// Most connections used at once by one attempt (1 without streams).
    pub streams: u32,
    /// What `auto` decided, and why joined streams ended early or were
    /// refused, if any did.
    pub stream_notes: Vec<String>,
    /// What the server said storing did to the name: new, unchanged (the
    /// same content was there: nothing stored), the old file kept as a
    /// numbered version, or replaced. `New` from servers that do not say.
    pub stored_as: crate::v2::StoredAs,
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
    /// Blocks sent compressed, their raw and their wire bytes.
    packed: crate::machine::PackStats,
    congestion: Option<String>,
    /// The last connection was TLS.
    encrypted: bool,
    /// The key of the last TLS connection.
    server_key: Option<crate::tls::Fingerprint>,
    /// A key accepted on first contact during this upload.
    new_host_key: Option<crate::tls::Fingerprint>,
    streams: u32,
    stream_notes: Vec<String>,
    /// The most the server ever confirmed holding of this file (v1 resume
    /// offset, v2 bytes of verified blocks that match ours).
    confirmed: Option<u64>,
    /// What the server said storing did to the name (last connection).
    stored_as: crate::v2::StoredAs,
}

impl Tally {
    /// Adds a stream note unless the same words are there (each attempt
    /// decides again, usually alike).
    fn note_once(&mut self, words: String) {
        if !self.stream_notes.contains(&words) {
            self.stream_notes.push(words);
        }
    }

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
            packed: Default::default(),
            congestion: None,
            encrypted: false,
            server_key: None,
            new_host_key: None,
            streams: 1,
            stream_notes: Vec::new(),
            confirmed: None,
            stored_as: crate::v2::StoredAs::New,
        }
    }

    fn outcome(&self, filename: String, src: &Source, opts: &SendOptions) -> Outcome {
        Outcome {
            filename,
            filesize: src.size(),
            crc32: src.whole.unwrap_or(0),
            resumed_from: self.resumed_from.unwrap_or(0),
            stored_as: self.stored_as.clone(),
            bytes_sent: self.sent,
            bytes_hashed: self.hashed,
            bytes_read: self.read,
            blocks_resent: self.blocks_resent,
            repairs: self.repairs,
            protocol: self.protocol,
            encrypted: self.encrypted,
            server_key: self.server_key.filter(|_| self.encrypted),
            new_host_key: self.new_host_key,
            time_to_first_byte: self.first_byte.unwrap_or_default(),
            attempts: self.attempts,
            elapsed: self.started.elapsed(),
            compress: match opts.protocol {
                Protocol::Legacy => crate::compress::Compress::Off,
                Protocol::Auto => opts.compress,
            },
            compress_agreed: self.packed.agreed,
            compressed_blocks: self.packed.blocks,
            // Saturating: never a panic over a report (raw bytes are only
            // counted with the blocks they belong to).
            wire_bytes: self
                .sent
                .saturating_sub(self.packed.raw_bytes)
                .saturating_add(self.packed.wire_bytes),
            congestion: self.congestion.clone(),
            streams: self.streams,
            stream_notes: self.stream_notes.clone(),
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
    let cache = opts.cache_dir.as_ref().map(SumCache::new);
    let mut up = Upload::new(path, wire_name(path, opts)?, opts, progress, started);
    up.cache = cache.as_ref();
    up.legacy = opts.protocol == Protocol::Legacy;
    let mut src = Source::open(path, up.cache)?;
    loop {
        if !src.unchanged(path) {
            src = Source::open(path, up.cache)?;
        }
        if up.legacy && src.whole.is_none() {
            // Version 1 needs the whole file's CRC-32 before the first byte.
            src.whole = Some(hash_whole(&mut src, path, &mut up.t, up.progress)?);
            src.remember(path, up.cache);
        }
        up.t.attempts += 1;
        let confirmed_before = up.t.confirmed;
        let res = shell::attempt(&mut up, &mut src);
        // Progress is what the server confirmed it holds, never what we
        // sent: a server that takes bytes and keeps none must not reset
        // the budget (it held clients for ever and had them re-send the
        // whole file on every reconnection).
        let progressed = matches!((confirmed_before, up.t.confirmed), (Some(b), Some(n)) if n > b);
        let err = match up.judge(res, &mut src, progressed) {
            Next::Done(r) => {
                src.remember(path, up.cache);
                return r.map(|()| up.t.outcome(up.filename.clone(), &src, opts));
            }
            Next::Again => continue,
            Next::Retry(e) => e,
        };
        src.remember(path, up.cache);
        up.back_off(err)?;
    }
}

/// One upload's context, shared by its attempts.
struct Upload<'a> {
    path: &'a Path,
    filename: String,
    opts: &'a SendOptions,
    cache: Option<&'a SumCache>,
    progress: &'a mut dyn FnMut(&Progress) -> Control,
    t: Tally,
    ever_connected: bool,
    /// Speak version 1 only (asked for, or the server turned out legacy).
    legacy: bool,
    /// Failed attempts since the server last confirmed progress.
    failures: u32,
    delay: Duration,
    /// TLS or plaintext, once the first connection told.
    wire: secure::Wire,
    /// The key the last TLS connection presented (joined streams pin it).
    peer_key: Option<crate::tls::Fingerprint>,
}

impl<'a> Upload<'a> {
    /// A transfer's connection state before its first attempt: nothing
    /// connected, no failures, the first back-off, protocol 2 (the
    /// callers that may speak version 1 say so after).
    fn new(
        path: &'a Path,
        filename: String,
        opts: &'a SendOptions,
        progress: &'a mut dyn FnMut(&Progress) -> Control,
        started: Instant,
    ) -> Upload<'a> {
        Upload {
            path,
            filename,
            opts,
            cache: None,
            progress,
            t: Tally::new(started),
            ever_connected: false,
            legacy: false,
            failures: 0,
            delay: opts.backoff_initial,
            wire: secure::Wire::default(),
            peer_key: None,
        }
    }
}

/// What [`send_file`] does after an attempt.
enum Next {
    /// Return this (`Ok`: stored).
    Done(Result<()>),
    /// Go again at once, counting nothing.
    Again,
    /// Back off and retry, unless the budget is spent.
    Retry(Error),
}

impl Upload<'_> {
    fn judge(&mut self, res: Result<Reply>, src: &mut Source, progressed: bool) -> Next {
        let path = self.path;
        match res {
            Ok(Reply::Stored) => Next::Done(Ok(())),
            Ok(Reply::LegacyServer) => {
                // Found out the server is legacy without knowing the CRC-32:
                // nothing was sent; hash and go again at once.
                self.legacy = true;
                self.t.attempts -= 1;
                Next::Again
            }
            Ok(Reply::GiveUp(e)) => Next::Done(Err(e)),
            Ok(Reply::SourceChanged) => {
                self.failures += 1;
                src.whole = None;
                src.blocks.clear();
                Next::Retry(Error::new(
                    ErrorKind::SourceFile,
                    format!(
                        "{} changed during the upload; starting over with its new content",
                        path.display()
                    ),
                ))
            }
            Ok(Reply::Mismatch(why)) => {
                self.failures += 1;
                Next::Retry(mismatch(src, path, &self.filename, why, self.failures))
            }
            Err(e) => self.failed(e, progressed),
        }
    }

    fn failed(&mut self, e: Error, progressed: bool) -> Next {
        if matches!(
            e.kind(),
            ErrorKind::Cancelled
                | ErrorKind::SourceFile
                | ErrorKind::InvalidInput
                | ErrorKind::Refused
                | ErrorKind::HostKey
        ) {
            return Next::Done(Err(e));
        }
        if progressed {
            self.failures = 0;
            self.delay = self.opts.backoff_initial;
        } else {
            self.failures += 1;
        }
        Next::Retry(e)
    }

    /// Gives up once the retries are spent; else reports and sleeps.
    fn back_off(&mut self, err: Error) -> Result<()> {
        if self.failures > self.opts.retries {
            return Err(self.t.gave_up(err, self.ever_connected));
        }
        let p = Progress::Retrying {
            attempt: self.t.attempts + 1,
            delay: self.delay,
            error: &err,
        };
        if (self.progress)(&p) == Control::Cancel {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
        }
        std::thread::sleep(self.delay);
        self.delay = (self.delay * 2).min(self.opts.backoff_max);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

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
        let n = match shell::send_range(&mut tx, &file, 7, 2 << 20, &mut buf, &mut |_| {}) {
            Ok(n) => n,
            Err(_) => panic!("send_range failed"),
        };
        assert_eq!(n, 2 << 20);
        // Asking past the end sends what there is...
        let rest =
            match shell::send_range(&mut tx, &file, 7 + n as u64, 8 << 20, &mut buf, &mut |_| {}) {
                Ok(n) => n,
                Err(_) => panic!("send_range failed"),
            };
        assert_eq!(rest, data.len() - 7 - (2 << 20));
        // ...and at the end, nothing.
        assert!(matches!(
            shell::send_range(&mut tx, &file, data.len() as u64, 1, &mut buf, &mut |_| {}),
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
        opts.known_hosts = None;
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
