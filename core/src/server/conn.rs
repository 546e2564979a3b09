//! One connection, from its first byte until it is admitted and holds its
//! name: the header (whole, within the header deadline), the checks that
//! must pass before anything stored is touched (format, name, size, token,
//! space), then the claim. Receiving is `recv`'s.
//!
//! Order matters: nothing touches a held part before the upload is
//! admitted, so a refused header never changes or creates a stored file.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::claims::{self, Request, SourceId};
use super::fault::{Fault, Voice};
use super::{lock, recv, ConnInfo, Shared};
use crate::name::SafeName;
use crate::proto;
use crate::v2::{self, FaultCode};
use crate::{Error, ErrorKind, Result};

/// Serves one connection to its end.
pub(super) fn handle_connection(sh: &Shared, conn: &ConnInfo, mut stream: TcpStream) -> Result<()> {
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(sh.cfg.idle_timeout))
        .map_err(|e| Error::io(ErrorKind::ConnectionLost, "cannot set socket timeouts", e))?;
    // One deadline for the whole header and the answer to a challenge: a
    // client dripping a byte at a time cannot hold a slot past it.
    let deadline = conn.accepted + sh.cfg.header_timeout.min(sh.cfg.idle_timeout);
    let json = read_header(&mut stream, deadline)?;
    let guess = guess_voice(&json);
    let (header, name, offer) = admit(sh, &json).map_err(|f| guess.refuse(&mut stream, f))?;
    let mut voice = match offer {
        Some(o) => Voice::V2Unopened { rev: o.rev },
        None => Voice::Legacy,
    };
    // The magic goes out at once, so a client learns within its handshake
    // timeout that it reached a bigtransfer server, whatever comes next.
    voice
        .open(&mut stream)
        .map_err(|e| net_err(e, "sending the protocol reply"))?;
    let authenticated = authorize(
        sh,
        &mut stream,
        conn,
        voice,
        offer.is_some(),
        &json,
        deadline,
    )?;
    if !conn.unadmitted.swap(false, Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Refused,
            "evicted before it was admitted",
        ));
    }
    let _ = stream.set_read_timeout(Some(sh.cfg.idle_timeout));
    let held = sh.store.held_hint(&name, header.filesize);
    let reservation = reserve_space(sh, &name, header.filesize - held)
        .map_err(|f| voice.refuse(&mut stream, f))?;
    let request = Request {
        name: &name,
        conn_id: conn.id,
        stream: &stream,
        peer: conn.peer,
        source: SourceId::of(&header, offer.as_ref()),
        authenticated,
    };
    let claim = claims::claim(sh, request).map_err(|f| voice.refuse(&mut stream, f))?;
    let mut rx = recv::Receive {
        sh,
        stream: &mut stream,
        peer: conn.peer,
        claim: &claim,
        reservation: &reservation,
        voice,
    };
    match offer {
        Some(o) => rx.serve_v2(header.filesize, o),
        None => rx.serve_v1(&header),
    }
}

/// Reads the length prefix and the header, both before `deadline`.
fn read_header(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>> {
    let mut prefix = [0u8; 4];
    read_exact_by(stream, &mut prefix, deadline, "reading the header length")?;
    let len = proto::parse_header_len(prefix).map_err(refusal)?;
    let mut json = vec![0u8; len];
    read_exact_by(stream, &mut json, deadline, "reading the header")?;
    Ok(json)
}

/// Fills `buf` from the stream unless `deadline` passes first: each read
/// waits at most until the deadline, so a trickle cannot stretch it.
pub(super) fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    during: &str,
) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "deadline passed while {during} ({filled} of {} bytes arrived)",
                    buf.len()
                ),
            ));
        }
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(net_err(io::ErrorKind::UnexpectedEof.into(), during)),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(net_err(e, during)),
        }
    }
    Ok(())
}

/// How to refuse a header that may not parse: a version-2 client (one
/// that mentions "bt") gets words, in the revision it says it reads.
fn guess_voice(json: &[u8]) -> Voice {
    if !json.windows(4).any(|w| w == b"\"bt\"") {
        return Voice::Legacy;
    }
    let rev = crate::json::parse(json)
        .ok()
        .and_then(|v| match v.get("bt").and_then(|bt| bt.get("rev")) {
            Some(crate::json::Value::Number(n)) => n.as_u64(),
            _ => None,
        })
        .unwrap_or(1);
    Voice::V2Unopened { rev }
}

/// Checks a header: its format, the name, the size limit. Returns the
/// header, the sanitised name and the version-2 offer, if any.
fn admit(
    sh: &Shared,
    json: &[u8],
) -> std::result::Result<(proto::Header, SafeName, Option<v2::Offer>), Fault> {
    let bad = |e: Error| {
        Fault::new(
            FaultCode::BadRequest,
            ErrorKind::Refused,
            format!("refused: {e}"),
        )
    };
    let (header, offer) = v2::parse_header(json).map_err(bad)?;
    let name = SafeName::from_wire(&header.filename).map_err(|e| {
        Fault::new(
            FaultCode::NameRefused,
            ErrorKind::Refused,
            format!("refused: {e}"),
        )
    })?;
    if let Some(max) = sh.cfg.max_file_size {
        if header.filesize > max {
            return Err(Fault::new(
                FaultCode::TooLarge,
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

/// Checks the client's right to upload: a token holder proves it by the
/// challenge (version 2); a legacy client cannot, and is admitted only
/// with `--allow-legacy`. Returns whether the client authenticated.
fn authorize(
    sh: &Shared,
    stream: &mut TcpStream,
    conn: &ConnInfo,
    voice: Voice,
    speaks_v2: bool,
    json: &[u8],
    deadline: Instant,
) -> Result<bool> {
    let Some(token) = &sh.cfg.token else {
        return Ok(false);
    };
    if !speaks_v2 {
        if sh.cfg.allow_legacy {
            return Ok(false);
        }
        return Err(Error::new(
            ErrorKind::Refused,
            "refused a legacy (unauthenticated) client: this server requires a token (--allow-legacy admits legacy clients)",
        ));
    }
    let ip = conn.peer.ip();
    if !lock(&sh.throttle).allows(ip, Instant::now()) {
        let f = Fault::new(
            FaultCode::AuthFailed,
            ErrorKind::Refused,
            "authentication refused: too many wrong tokens from your address; wait a minute",
        );
        // Counted for the summary, not logged one by one.
        let _ = voice.refuse(stream, f);
        return Err(Error::new(ErrorKind::Refused, crate::server::QUIET));
    }
    match challenge(stream, token, json, deadline) {
        Ok(()) => Ok(true),
        Err(Challenged::Lost(e)) => Err(e),
        Err(Challenged::Wrong(f)) => {
            let note = lock(&sh.throttle).failed(ip, Instant::now());
            let e = voice.refuse(stream, f);
            Err(match note {
                crate::throttle::Note::Log => e,
                crate::throttle::Note::LogLast => Error::new(
                    e.kind(),
                    format!("{e} (further failures from this address are counted, and summarised once a minute)"),
                ),
                crate::throttle::Note::Quiet => Error::new(ErrorKind::Refused, crate::server::QUIET),
            })
        }
    }
}

enum Challenged {
    /// The connection broke or the deadline passed.
    Lost(Error),
    /// The answer was wrong or missing.
    Wrong(Fault),
}

/// Sends the challenge and checks the answer, within `deadline`.
fn challenge(
    stream: &mut TcpStream,
    token: &crate::auth::Token,
    json: &[u8],
    deadline: Instant,
) -> std::result::Result<(), Challenged> {
    let nonce = crate::auth::nonce().map_err(Challenged::Lost)?;
    let frame = v2::encode_server_msg(&v2::ServerMsg::Challenge(nonce));
    stream
        .write_all(&frame)
        .map_err(|e| Challenged::Lost(net_err(e, "sending the challenge")))?;
    let mut tag = [0u8; 1];
    read_exact_by(
        stream,
        &mut tag,
        deadline,
        "waiting for the answer to the challenge",
    )
    .map_err(Challenged::Lost)?;
    let wrong = |msg: &str| Fault::new(FaultCode::AuthFailed, ErrorKind::Refused, msg.to_string());
    if tag[0] != b'A' {
        return Err(Challenged::Wrong(wrong(
            "authentication failed: the client did not answer the challenge",
        )));
    }
    let mut answer = [0u8; crate::auth::ANSWER_LEN];
    read_exact_by(
        stream,
        &mut answer,
        deadline,
        "reading the answer to the challenge",
    )
    .map_err(Challenged::Lost)?;
    if !token.check(&nonce, json, &answer) {
        return Err(Challenged::Wrong(wrong(
            "authentication failed: wrong token",
        )));
    }
    Ok(())
}

/// Space kept for an upload in progress: what is still to arrive of it
/// counts against the free space that other uploads see. Released as
/// bytes arrive (they then use real space) and when the upload ends.
pub(super) struct Reservation<'a> {
    sh: &'a Shared,
    left: std::sync::atomic::AtomicU64,
}

impl Reservation<'_> {
    /// `n` bytes arrived and now take real space.
    pub(super) fn arrived(&self, n: u64) {
        let mut cur = self.left.load(Ordering::Relaxed);
        loop {
            let take = cur.min(n);
            match self
                .left
                .compare_exchange(cur, cur - take, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let mut total = lock(&self.sh.reserved);
                    *total = total.saturating_sub(take);
                    return;
                }
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let left = self.left.swap(0, Ordering::Relaxed);
        let mut total = lock(&self.sh.reserved);
        *total = total.saturating_sub(left);
    }
}

/// Refuses an upload that needs more than the free space left once every
/// upload in progress has what it still needs, or that would leave less
/// than `--min-free`; otherwise reserves its space. Checked and reserved
/// under one lock, so concurrent uploads cannot all pass on the same free
/// space (three 20 MiB uploads onto 64 MiB with `--min-free 32M` all
/// passed before).
fn reserve_space<'a>(
    sh: &'a Shared,
    name: &SafeName,
    needed: u64,
) -> std::result::Result<Reservation<'a>, Fault> {
    let mut reserved = lock(&sh.reserved);
    let avail = sh.store.available_space().map_err(Fault::storage)?;
    let avail = avail.saturating_sub(*reserved);
    let no_space = |msg: String| Fault::new(FaultCode::NoSpace, ErrorKind::Refused, msg);
    if needed > avail {
        return Err(no_space(format!(
            "refused {name}: needs {needed} more bytes, only {avail} free on the server (counting uploads in progress)"
        )));
    }
    if avail - needed < sh.cfg.min_free {
        return Err(no_space(format!(
            "refused {name}: it would leave {} bytes free, under the server's minimum of {} (--min-free)",
            avail - needed,
            sh.cfg.min_free
        )));
    }
    *reserved += needed;
    Ok(Reservation {
        sh,
        left: std::sync::atomic::AtomicU64::new(needed),
    })
}

pub(super) fn net_err(e: io::Error, during: &str) -> Error {
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

fn refusal(e: Error) -> Error {
    if e.kind() == ErrorKind::Protocol || e.kind() == ErrorKind::Refused {
        Error::new(ErrorKind::Refused, format!("refused: {e}"))
    } else {
        e
    }
}
