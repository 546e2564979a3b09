//! `list`: asks a server what it holds (see [`crate::listing`]) over the
//! same transport as an upload (TLS with the server's key pinned, or
//! plaintext on purpose), proving the token when the server asks.
//!
//! Not for printing the listing (the caller's: names are raw bytes and
//! must be escaped) nor for uploads.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::{peer, secure, shell, Control, Progress, SendOptions, Upload};
use crate::listing::{encode_list_request_with, ListEntry};
use crate::transport::Transport;
use crate::v2::{self, Offer, ServerMsg};
use crate::{Error, ErrorKind, Result};

/// What a server holds, as it listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Files and partial uploads, in the server's order.
    pub entries: Vec<ListEntry>,
    /// Whether the connection was TLS (the server's key checked).
    pub encrypted: bool,
}

/// Lists what the server at `opts.host`:`opts.port` holds: everything, or
/// with `name` that name, its numbered versions and its partial upload.
/// One connection, no retries (a listing is cheap to ask again).
///
/// Errors: [`ErrorKind::Unreachable`], [`ErrorKind::HostKey`] (the key
/// differs from the pinned one), [`ErrorKind::Refused`] (no or a wrong
/// token, or the server refused), [`ErrorKind::Protocol`] (a server too
/// old to list), [`ErrorKind::ConnectionLost`].
pub fn list_remote(opts: &SendOptions, name: Option<&str>) -> Result<Listing> {
    list_remote_with(opts, name, false)
}

/// [`list_remote`], and with `dirs` the server is also asked for its
/// directories ([`crate::listing::EntryKind::Dir`]) and the summary of
/// the tree uploads in progress ([`crate::listing::EntryKind::TreeParts`]);
/// a server too old to know them ignores the request and sends none.
pub fn list_remote_with(opts: &SendOptions, name: Option<&str>, dirs: bool) -> Result<Listing> {
    let mut quiet = |_: &Progress| Control::Continue;
    let mut up = Upload::new(
        Path::new(""),
        String::new(),
        opts,
        &mut quiet,
        Instant::now(),
    );
    let (sock, _) = shell::connect(&up)?;
    let reconnect = |up: &Upload| shell::connect(up).map(|(s, _)| s);
    let mut stream = secure::open(&mut up, sock, &reconnect)?;
    let lost = |e: std::io::Error| Error::io(ErrorKind::ConnectionLost, "listing", e);
    stream
        .set_write_timeout(Some(opts.io_timeout))
        .map_err(lost)?;
    stream
        .set_read_timeout(Some(opts.io_timeout))
        .map_err(lost)?;
    let offer = Offer {
        version: v2::VERSION,
        block_size: v2::MIN_BLOCK,
        rev: v2::REV_KEEP,
        source: None,
    };
    let frame = encode_list_request_with(name, dirs, offer);
    stream.write_all(&frame).map_err(lost)?;
    greeting(stream.as_mut())?;
    let entries = pages(stream.as_mut(), opts, &frame[4..])?;
    Ok(Listing {
        entries,
        encrypted: stream.is_encrypted(),
    })
}

/// The server's first 8 bytes: the version-2 magic, or it cannot list.
fn greeting(stream: &mut dyn Transport) -> Result<()> {
    let mut magic = [0u8; 8];
    match stream.read_exact(&mut magic) {
        Ok(()) if magic == v2::MAGIC => Ok(()),
        Ok(()) => Err(too_old()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(too_old()),
        Err(e) => Err(Error::io(
            ErrorKind::ConnectionLost,
            "waiting for the server",
            e,
        )),
    }
}

fn too_old() -> Error {
    Error::new(
        ErrorKind::Protocol,
        "the server does not answer list requests (a legacy or older bigtransfer server)",
    )
}

/// Reads frames to the last page, answering a token challenge on the way.
fn pages(stream: &mut dyn Transport, opts: &SendOptions, json: &[u8]) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    loop {
        match next_frame(stream)? {
            ServerMsg::ListPage { entries, last } => {
                out.extend(entries);
                if last {
                    return Ok(out);
                }
            }
            ServerMsg::Challenge(nonce) => {
                let t = token(opts)?;
                stream
                    .write_all(&v2::encode_answer(&t.answer(&nonce, json)))
                    .map_err(|e| Error::io(ErrorKind::ConnectionLost, "answering", e))?;
            }
            ServerMsg::BoundChallenge { nonce, proof } => {
                let t = token(opts)?;
                let binding = stream.channel_binding().ok_or_else(|| {
                    Error::new(ErrorKind::Protocol, "a bound challenge outside TLS")
                })?;
                if !t.check_server_proof(&nonce, &binding, json, &proof) {
                    return Err(Error::new(
                        ErrorKind::Refused,
                        "the server does not know our token (its proof is wrong): check --token-file",
                    ));
                }
                let answer = t.client_answer(&nonce, &binding, json);
                stream
                    .write_all(&v2::encode_answer(&answer))
                    .map_err(|e| Error::io(ErrorKind::ConnectionLost, "answering", e))?;
            }
            ServerMsg::Fault(code, words) => return Err(peer::server_fault(Some(code), &words)),
            ServerMsg::Error(words) => return Err(peer::server_fault(None, &words)),
            other => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("unexpected reply to a list request: {other:?}"),
                ))
            }
        }
    }
}

fn token(opts: &SendOptions) -> Result<&crate::auth::Token> {
    opts.token.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::Refused,
            "the server requires a token: give it with --token-file or BIGTRANSFER_TOKEN",
        )
    })
}

fn next_frame(stream: &mut dyn Transport) -> Result<ServerMsg> {
    let lost = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::ConnectionLost,
            "the server closed the connection before the end of the listing",
        ),
        _ => Error::io(ErrorKind::ConnectionLost, "reading the listing", e),
    };
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).map_err(lost)?;
    let (tag, len) = v2::parse_server_head(head)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).map_err(lost)?;
    v2::parse_server_msg(tag, &payload)
}
