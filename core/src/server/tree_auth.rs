//! The token challenge of a tree session, on a server with a token: the
//! same proof as a single upload's ([`crate::auth::Token::challenge_proof`]
//! and [`crate::auth::Token::check_challenge_answer`]; inside TLS the
//! server proves the token first and both proofs are bound to the TLS
//! exporter), the same per-address throttle, before anything is written.
//!
//! The challenge goes out with `MAGIC`. A client sends its first manifest
//! page without waiting (it cannot know whether a challenge comes), so the
//! first frame may be a page or the end: it is held, unread, until the
//! answer (tree frame `A`, 32 bytes) checked out. Anything else, or a
//! second frame before the answer, is refused in words.
//!
//! Not for single uploads (the receiver machine), nor for what a tree
//! session does once it is authenticated (`tree`).

use std::io::Write;
use std::time::Instant;

use super::{lock, ConnInfo, Failed, Shared};
use crate::throttle::Note;
use crate::transport::Transport;
use crate::tree::wire;
use crate::v2;
use crate::{Error, ErrorKind, Result};

/// What came before the answer: the frame reader (it may hold more) and
/// the first frame, to be handled once authenticated.
pub(super) struct Early {
    pub(super) reader: wire::FrameReader,
    pub(super) first: Option<(u8, Vec<u8>)>,
}

/// Authenticates a tree session when the server has a token (`Ok(None)`
/// when it has none). `header` is the JSON of the session's header, which
/// the proofs cover. Writes `MAGIC` (and the challenge) itself.
pub(super) fn authenticate(
    sh: &Shared,
    conn: &ConnInfo,
    stream: &mut Box<dyn Transport>,
    header: &[u8],
) -> std::result::Result<Option<Early>, Failed> {
    let lost = |e| Error::io(ErrorKind::ConnectionLost, "cannot answer a tree session", e);
    let Some(token) = &sh.cfg.token else {
        stream.write_all(&v2::MAGIC).map_err(lost)?;
        return Ok(None);
    };
    if !lock(&sh.throttle).allows(conn.peer.ip(), Instant::now()) {
        // Counted for the summary, not logged one by one.
        let words =
            "authentication refused: too many wrong tokens from your address; wait a minute";
        let _ = stream.write_all(&v2::MAGIC);
        let _ = wire::write_frame(stream, wire::FAULT, words.as_bytes());
        return Err(Failed::Quiet(ErrorKind::Refused));
    }
    let nonce = crate::auth::nonce()?;
    let binding = stream.channel_binding();
    let proof = token.challenge_proof(&nonce, binding.as_ref(), header);
    let mut out = v2::MAGIC.to_vec();
    out.extend_from_slice(&v2::encode_server_msg(&v2::challenge_msg(nonce, proof)));
    stream.write_all(&out).map_err(lost)?;
    let setup = sh.cfg.header_timeout.min(sh.cfg.idle_timeout);
    let _ = stream.set_read_timeout(Some(setup.saturating_sub(conn.accepted.elapsed())));
    let (early, answer) = match read_answer(stream) {
        Ok(x) => x,
        // A frame that is not the answer: counted like a wrong answer.
        Err(e) if e.kind() == ErrorKind::Refused => {
            return Err(failed(sh, conn, stream, &e.to_string()))
        }
        Err(e) => return Err(refuse(stream, e.to_string(), e.kind()).into()),
    };
    if token.check_challenge_answer(&nonce, binding.as_ref(), header, &answer) {
        return Ok(Some(early));
    }
    Err(failed(
        sh,
        conn,
        stream,
        "authentication failed: wrong token",
    ))
}

/// A failed authentication: counted per address by the throttle, told to
/// the client; only the first few of an address are logged.
fn failed(sh: &Shared, conn: &ConnInfo, stream: &mut Box<dyn Transport>, words: &str) -> Failed {
    let note = lock(&sh.throttle).failed(conn.peer.ip(), Instant::now());
    let _ = wire::write_frame(stream, wire::FAULT, words.as_bytes());
    let _ = stream.flush();
    let _ = stream.close_write();
    match note {
        Note::Log => Failed::Logged(Error::new(ErrorKind::Refused, format!("tree session: {words}"))),
        Note::LogLast => Failed::Logged(Error::new(
            ErrorKind::Refused,
            format!("tree session: {words} (further failures from this address are counted, and summarised once a minute)"),
        )),
        Note::Quiet => Failed::Quiet(ErrorKind::Refused),
    }
}

/// Reads up to the answer, holding at most one frame (a page or the end)
/// that came first.
fn read_answer(stream: &mut Box<dyn Transport>) -> Result<(Early, Vec<u8>)> {
    let mut early = Early {
        reader: wire::FrameReader::new(),
        first: None,
    };
    loop {
        let mut buf = Vec::new();
        let tag = early.reader.read_frame(stream, &mut buf).map_err(|e| {
            Error::new(
                e.kind(),
                format!("authentication failed: no answer to the challenge ({e})"),
            )
        })?;
        match tag {
            wire::ANSWER => return Ok((early, buf)),
            wire::PAGE | wire::END if early.first.is_none() => early.first = Some((tag, buf)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Refused,
                    "authentication failed: the client did not answer the challenge (this server requires a token: pass --token-file)",
                ))
            }
        }
    }
}

/// Tells the client why (a lost connection is not told) and closes.
fn refuse(stream: &mut Box<dyn Transport>, words: String, kind: ErrorKind) -> Error {
    if kind != ErrorKind::ConnectionLost {
        let _ = wire::write_frame(stream, wire::FAULT, words.as_bytes());
        let _ = stream.flush();
        let _ = stream.close_write();
    }
    Error::new(kind, format!("tree session: {words}"))
}
