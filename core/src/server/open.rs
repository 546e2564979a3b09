//! What a new connection is: its first byte, peeked under the header
//! deadline, picks the transport. `0x00` is today's plaintext header,
//! `0x16` a TLS ClientHello (the handshake then finishes within what is
//! left of the same deadline), anything else is closed and logged with a
//! guess at who knocked (see [`crate::sniff`]). `--tls` decides which of
//! the first two are served.
//!
//! Not for the protocol spoken over the transport (`conn`) nor for TLS keys
//! and configuration ([`crate::tls`]).

use std::net::TcpStream;
use std::time::Duration;

use super::{ConnInfo, Shared, TlsMode};
use crate::sniff::{self, FirstByte};
use crate::transport::{TcpTransport, TlsTransport, Transport};
use crate::{Error, ErrorKind, Result};

/// The transport for `sock`, by its first byte and the server's TLS mode;
/// an error (logged by the caller) ends the connection.
pub(super) fn transport(
    sh: &Shared,
    info: &ConnInfo,
    sock: TcpStream,
) -> Result<Box<dyn Transport>> {
    let _ = sock.set_nodelay(true);
    let setup = sh.cfg.header_timeout.min(sh.cfg.idle_timeout);
    let left = || setup.saturating_sub(info.accepted.elapsed());
    // A peer that closes or stays silent takes the plaintext path, whose
    // machine says so in the words it always used.
    let first = sniff::sniff(&sock, left()).ok().flatten();
    match first {
        Some(FirstByte::Tls) => tls(sh, sock, left()),
        Some(FirstByte::Other(_)) => Err(stranger(&sock)),
        Some(FirstByte::Plain) | None => plain(sh, sock),
    }
}

fn tls(sh: &Shared, sock: TcpStream, left: Duration) -> Result<Box<dyn Transport>> {
    let Some(cfg) = &sh.tls else {
        return Err(Error::new(
            ErrorKind::Refused,
            "refused a TLS connection: this server has TLS off (--tls off); the client falls back to plaintext unless it pinned this server's key",
        ));
    };
    let t = TlsTransport::accept(sock, cfg.clone(), left.max(Duration::from_millis(1)))?;
    Ok(Box::new(t))
}

fn plain(sh: &Shared, sock: TcpStream) -> Result<Box<dyn Transport>> {
    if sh.cfg.tls == TlsMode::Required && !sh.cfg.allow_legacy {
        return Err(Error::new(
            ErrorKind::Refused,
            "refused a plaintext connection: this server requires TLS (--tls required); a legacy client needs --allow-legacy on the server",
        ));
    }
    let t = TcpTransport::new(sock)
        .map_err(|e| Error::io(ErrorKind::ConnectionLost, "cannot track connection", e))?;
    Ok(Box::new(t))
}

/// Neither a plaintext header nor TLS: names the peer from its first
/// bytes (already arrived, so the peek does not wait).
fn stranger(sock: &TcpStream) -> Error {
    let mut head = [0u8; 8];
    let n = sniff::peek(sock, &mut head, Duration::from_millis(50)).unwrap_or(1);
    Error::new(
        ErrorKind::Protocol,
        format!(
            "closed: not a bigtransfer client, {} (a bigtransfer connection starts with 0x00 or a TLS hello, 0x16)",
            sniff::describe_stranger(&head[..n.max(1)])
        ),
    )
}
