//! Which transport an attempt speaks over: TLS by default, the server's
//! key checked against `--fingerprint` or the known-hosts pin, or stored
//! on first contact (ssh's `accept-new`); plaintext only on purpose
//! (`--legacy`), or as a fallback for a server that closes on our TLS
//! hello while nothing pins its key and TLS is not required. A pinned
//! server never gets plaintext: that would be a downgrade.
//!
//! Not for the protocol over the transport (`shell`) nor for the TLS
//! configuration and the pin file themselves ([`crate::tls`],
//! [`crate::known_hosts`]).

use std::net::TcpStream;
use std::path::PathBuf;

use super::{Progress, Protocol, Upload};
use crate::known_hosts::{host_key, KnownHosts, Lookup, Mismatch};
use crate::tls::{client_config, Fingerprint, HostKeyMismatch, PinPolicy};
use crate::transport::{ConnectError, TcpTransport, TlsTransport, Transport};
use crate::{Error, ErrorKind, Result};

/// What this upload settled on, kept across its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Wire {
    /// Not known yet: try TLS.
    #[default]
    Unknown,
    /// TLS worked (the key is pinned now).
    Tls,
    /// The server speaks no TLS (and nothing pins it): plaintext.
    Plain,
}

/// The pin that applies to this server, and where it came from.
struct Pin {
    policy: PinPolicy,
    /// The known-hosts line that holds it (file, line).
    line: Option<(PathBuf, usize)>,
}

/// The transport for one attempt over the connected `sock`. `reconnect`
/// opens a fresh socket for a plaintext fallback (the first one saw our
/// TLS hello and was closed).
pub(super) fn open(
    up: &mut Upload,
    sock: TcpStream,
    reconnect: &dyn Fn(&Upload) -> Result<TcpStream>,
) -> Result<Box<dyn Transport>> {
    if up.opts.protocol == Protocol::Legacy || up.wire == Wire::Plain {
        return plain(sock);
    }
    let server = host_key(&up.opts.host, up.opts.port);
    let known = load_known(up)?;
    let pin = pin_for(up, known.as_ref(), &server)?;
    let config = client_config(pin.policy)?;
    match TlsTransport::connect(sock, config, up.opts.handshake_timeout) {
        Ok(t) => {
            if pin.policy == PinPolicy::TrustOnFirstUse || pin.line.is_none() {
                remember(up, known, &server, t.peer_fingerprint())?;
            }
            up.wire = Wire::Tls;
            up.peer_key = Some(t.peer_fingerprint());
            up.t.server_key = up.peer_key;
            Ok(Box::new(t))
        }
        Err(ConnectError::HostKey(m)) => Err(changed(&server, m, pin.line)),
        Err(ConnectError::NotTls(_)) => {
            if let Some(why) = downgrade(up, &pin) {
                return Err(no_tls(&server, why));
            }
            up.wire = Wire::Plain;
            let _ = (up.progress)(&Progress::Plaintext { server: &server });
            plain(reconnect(up)?)
        }
        Err(ConnectError::Failed(e)) => Err(e),
    }
}

fn plain(sock: TcpStream) -> Result<Box<dyn Transport>> {
    let t = TcpTransport::new(sock)
        .map_err(|e| Error::io(ErrorKind::ConnectionLost, "cannot use the socket", e))?;
    Ok(Box::new(t))
}

fn load_known(up: &Upload) -> Result<Option<KnownHosts>> {
    up.opts
        .known_hosts
        .as_deref()
        .map(KnownHosts::load)
        .transpose()
}

/// `--fingerprint` wins; else the known-hosts pin; else first contact. A
/// damaged line about this server is an error (never a silent re-pin).
fn pin_for(up: &Upload, known: Option<&KnownHosts>, server: &str) -> Result<Pin> {
    let looked = known.map(|k| (k.lookup(server), k.path().to_path_buf()));
    let line = match &looked {
        Some((Lookup::Known(f, n), path)) => Some((*f, (path.clone(), *n))),
        Some((Lookup::Damaged(d), path)) => {
            return Err(Error::new(
                ErrorKind::HostKey,
                format!(
                "line {} of the known-hosts file {} (about {}) is damaged: {}; fix or delete it",
                d.line,
                path.display(),
                d.host,
                d.why
            ),
            ))
        }
        _ => None,
    };
    Ok(match (up.opts.fingerprint, line) {
        (Some(f), l) => Pin {
            policy: PinPolicy::Expect(f),
            line: l.filter(|(pinned, _)| *pinned == f).map(|(_, at)| at),
        },
        (None, Some((f, at))) => Pin {
            policy: PinPolicy::Expect(f),
            line: Some(at),
        },
        (None, None) => Pin {
            policy: PinPolicy::TrustOnFirstUse,
            line: None,
        },
    })
}

/// First contact (or a `--fingerprint` not yet in the file): pins the key
/// and says so.
fn remember(
    up: &mut Upload,
    known: Option<KnownHosts>,
    server: &str,
    fingerprint: Fingerprint,
) -> Result<()> {
    let stored = match known {
        Some(mut k) => {
            // Already pinned (to this key, or to another that an explicit
            // --fingerprint overrode for this run): leave the file alone.
            if let Lookup::Known(..) = k.lookup(server) {
                return Ok(());
            }
            k.add(server, &fingerprint)?;
            Some(k.path().to_path_buf())
        }
        None => None,
    };
    up.t.new_host_key = Some(fingerprint);
    let _ = (up.progress)(&Progress::FirstContact {
        server,
        fingerprint,
        pinned_in: stored.as_deref(),
    });
    Ok(())
}

/// The server presented another key than the pinned one.
fn changed(server: &str, m: HostKeyMismatch, line: Option<(PathBuf, usize)>) -> Error {
    let text = match line {
        Some((file, line)) => Mismatch {
            host: server.to_string(),
            pinned: m.expected,
            presented: m.presented,
            file,
            line,
        }
        .to_string(),
        None => format!(
            "the key of {server} is not the one given with --fingerprint: expected {}, the server presented {}. Someone may be intercepting the connection, or the fingerprint is wrong: check it with the server's operator (`bigtransfer fingerprint` on the server). Nothing was sent",
            m.expected, m.presented
        ),
    };
    Error::new(ErrorKind::HostKey, text)
}

/// Why plaintext must not be tried with this server, if it must not.
fn downgrade(up: &Upload, pin: &Pin) -> Option<&'static str> {
    if pin.policy != PinPolicy::TrustOnFirstUse {
        return Some("its key is pinned, so plaintext would be a downgrade: someone may be intercepting the connection, or the server now runs with --tls off or an old version");
    }
    if up.opts.require_tls {
        return Some("TLS is required (--require-tls)");
    }
    if up.wire == Wire::Tls {
        return Some("it spoke TLS earlier in this upload, so plaintext now would be a downgrade");
    }
    None
}

/// The server did not speak TLS where it must.
fn no_tls(server: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::HostKey,
        format!("{server} does not speak TLS (it closed the connection on our TLS hello); refusing plaintext: {why}. Nothing was sent"),
    )
}
