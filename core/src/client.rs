//! The sending side: upload one file, resuming and retrying until the server
//! answers `CRC32_OK` or the retry budget is spent.
//!
//! One attempt is one TCP connection of the legacy exchange: header, offset,
//! the bytes from that offset (with `sendfile` where the OS has it), verdict.
//! Between attempts it backs off exponentially. Not for prompts, progress
//! bars or exit codes: those belong to the caller (the CLI, C, Python).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proto::{self, Header, Verdict};
use crate::{Error, ErrorKind, Result};

/// Bytes handed to the kernel per `sendfile` call; progress is reported and
/// cancellation checked between calls.
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
    /// mismatch). An attempt that moved the upload forward does not use up
    /// the budget, so a long upload survives any number of cable pulls as
    /// long as each reconnection makes progress.
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
}

impl SendOptions {
    /// Defaults: 5 retries, 10 s connect timeout, 60 s I/O timeout, backoff
    /// from 0.5 s to 15 s, no rate limit.
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
    /// File bytes read to compute the CRC-32.
    pub bytes_hashed: u64,
    /// Connections made (1 when nothing went wrong).
    pub attempts: u32,
    /// Wall time of the whole upload, hashing included.
    pub elapsed: Duration,
}

struct Source {
    file: File,
    size: u64,
    mtime: (i64, i64),
    ino: u64,
    crc32: u32,
}

fn stat_key(m: &std::fs::Metadata) -> (u64, (i64, i64), u64) {
    (m.len(), (m.mtime(), m.mtime_nsec()), m.ino())
}

fn open_source(
    path: &Path,
    hashed: &mut u64,
    cb: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Source> {
    let src_err = |what: &str, e: io::Error| {
        Error::io(
            ErrorKind::SourceFile,
            format!("cannot {what} {}", path.display()),
            e,
        )
    };
    let mut file = File::open(path).map_err(|e| src_err("open", e))?;
    let meta = file.metadata().map_err(|e| src_err("inspect", e))?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::SourceFile,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let (size, mtime, ino) = stat_key(&meta);
    let mut last = 0u64;
    let crc32 = crate::crc::crc32_of(&mut file, path, &mut |done| {
        *hashed += done - last;
        last = done;
        cb(&Progress::Hashing { done, total: size }) == Control::Continue
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
    Ok(Source {
        file,
        size,
        mtime,
        ino,
        crc32,
    })
}

fn unchanged(path: &Path, src: &Source) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => stat_key(&m) == (src.size, src.mtime, src.ino),
        Err(_) => false,
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

/// Uploads the file at `path` to the server in `opts`, resuming where an
/// earlier attempt stopped, and retrying as `opts` allows. Returns only when
/// the server answered `CRC32_OK`.
///
/// `progress` is called often (after each block hashed or sent); returning
/// [`Control::Cancel`] stops the upload cleanly.
///
/// Errors: [`ErrorKind::SourceFile`] (cannot read the file),
/// [`ErrorKind::Unreachable`] (never connected), [`ErrorKind::ConnectionLost`]
/// (connected, then lost it and ran out of retries),
/// [`ErrorKind::CrcMismatch`] (the server kept answering `CRC32_ERROR`),
/// [`ErrorKind::Protocol`], [`ErrorKind::Cancelled`].
pub fn send_file(
    path: &Path,
    opts: &SendOptions,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Outcome> {
    let started = Instant::now();
    let filename = wire_name(path, opts)?;
    let mut hashed = 0u64;
    let mut src = open_source(path, &mut hashed, progress)?;
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut sent_total = 0u64;
    let mut resumed_from: Option<u64> = None;
    let mut ever_connected = false;
    let mut delay = opts.backoff_initial;
    loop {
        if !unchanged(path, &src) {
            // The file changed since we hashed it: hash again so the header
            // describes what we will actually send.
            src = open_source(path, &mut hashed, progress)?;
        }
        attempts += 1;
        let header = Header {
            filename: filename.clone(),
            filesize: src.size,
            crc32: src.crc32,
        };
        let mut moved = false;
        let res = attempt(
            &header,
            &src,
            opts,
            progress,
            &mut |offset| {
                resumed_from.get_or_insert(offset);
            },
            &mut sent_total,
            &mut moved,
            &mut ever_connected,
        );
        let err = match res {
            Ok(Verdict::Ok) => {
                return Ok(Outcome {
                    filename,
                    filesize: src.size,
                    crc32: src.crc32,
                    resumed_from: resumed_from.unwrap_or(0),
                    bytes_sent: sent_total,
                    bytes_hashed: hashed,
                    attempts,
                    elapsed: started.elapsed(),
                })
            }
            Ok(Verdict::Mismatch) => {
                failures += 1;
                let changed = !unchanged(path, &src);
                Error::new(
                    ErrorKind::CrcMismatch,
                    if changed {
                        format!("server answered CRC32_ERROR for {filename}: the file changed during the upload")
                    } else {
                        format!("server answered CRC32_ERROR for {filename}: data was damaged in transit or on the server")
                    },
                )
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    ErrorKind::Cancelled | ErrorKind::SourceFile | ErrorKind::InvalidInput
                ) {
                    return Err(e);
                }
                if !moved {
                    failures += 1;
                } else {
                    failures = 0;
                    delay = opts.backoff_initial;
                }
                e
            }
        };
        if failures > opts.retries {
            let attempts_txt = if attempts == 1 {
                "1 attempt".to_string()
            } else {
                format!("{attempts} attempts")
            };
            let kind = match err.kind() {
                ErrorKind::Unreachable if ever_connected => ErrorKind::ConnectionLost,
                k => k,
            };
            return Err(Error::new(
                kind,
                format!("{err} (gave up after {attempts_txt})"),
            ));
        }
        if progress(&Progress::Retrying {
            attempt: attempts + 1,
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
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(ErrorKind::ConnectionLost, format!("connection stalled while {during} (no progress within the I/O timeout)"))
        }
        io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::ConnectionLost,
            format!("server closed the connection while {during} (it may have refused the upload: see the server's log)"),
        ),
        _ => Error::io(ErrorKind::ConnectionLost, format!("connection lost while {during}"), e),
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    header: &Header,
    src: &Source,
    opts: &SendOptions,
    progress: &mut dyn FnMut(&Progress) -> Control,
    first_offset: &mut dyn FnMut(u64),
    sent_total: &mut u64,
    moved: &mut bool,
    ever_connected: &mut bool,
) -> Result<Verdict> {
    let (mut stream, addr) = connect(opts)?;
    *ever_connected = true;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(opts.io_timeout))
        .and_then(|_| stream.set_write_timeout(Some(opts.io_timeout)))
        .map_err(|e| lost(e, "configuring the socket"))?;
    let frame = proto::encode_header(header)?;
    stream
        .write_all(&frame)
        .map_err(|e| lost(e, "sending the header"))?;
    let mut off = [0u8; 8];
    stream
        .read_exact(&mut off)
        .map_err(|e| lost(e, "waiting for the resume offset"))?;
    let offset = proto::parse_offset(off);
    if offset > header.filesize {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "server says it holds {offset} bytes of a {}-byte file",
                header.filesize
            ),
        ));
    }
    first_offset(offset);
    if progress(&Progress::Connected {
        addr,
        offset,
        total: header.filesize,
    }) == Control::Cancel
    {
        return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
    }
    let mut pos = offset;
    let mut scratch = Vec::new();
    let started = Instant::now();
    let chunk = match opts.limit_rate {
        // Small chunks keep a rate-limited stream smooth.
        Some(r) => ((r / 20).max(4096) as usize).min(SEND_CHUNK),
        None => SEND_CHUNK,
    };
    while pos < header.filesize {
        let want = ((header.filesize - pos) as usize).min(chunk);
        let n = match crate::sys::send_file_range(&stream, &src.file, pos, want, &mut scratch) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::SourceFile,
                    format!(
                        "{} became shorter while being sent (at byte {pos})",
                        header.filename
                    ),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(lost(e, "sending data")),
        };
        pos += n as u64;
        *sent_total += n as u64;
        *moved = true;
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
        if let Some(rate) = opts.limit_rate {
            let due = Duration::from_secs_f64((pos - offset) as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
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
    proto::parse_verdict(&reply)
}
