//! Parallel streams: the wire pieces of one upload carried over several
//! connections that join one session. The first connection asks for a
//! session (`"bt": {..., "streams": N}`); the server answers with a `J`
//! frame (session id and a random 256-bit join secret) before the held
//! list; every further connection names the session in its header
//! (`"bt": {..., "join": {"s", "n", "p"}}`) and proves the secret with an
//! HMAC over the session id, a fresh client nonce and, inside TLS, the
//! connection's channel binding, so a recorded or relayed join fails.
//!
//! Also the server's registry of open sessions ([`Sessions`]): what a join
//! is checked against and where its verified blocks go. Not for the
//! transfer itself (the machines' Intake and Outlet) nor for sockets.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::json::Value;
use crate::{Error, ErrorKind, Result};

/// Bytes of a session id.
pub const SESSION_LEN: usize = 16;
/// Bytes of a join secret (256 bits).
pub const SECRET_LEN: usize = 32;
/// Bytes of a join's nonce.
pub const JOIN_NONCE_LEN: usize = 16;
/// Bytes of a join proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Most streams one upload may use (a client asking for more gets this).
pub const MAX_STREAMS: u32 = 8;

const JOIN_LABEL: &[u8] = b"bigtransfer join v1\0";

/// What the server gives the first connection: the session to join and
/// the secret that proves a join belongs to the same client.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The session's id.
    pub session: [u8; SESSION_LEN],
    /// The join secret.
    pub secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never goes to a log.
        write!(f, "Ticket({})", hex(&self.session))
    }
}

impl Ticket {
    /// A fresh ticket from the OS's random bytes.
    pub fn generate() -> Result<Ticket> {
        let a = crate::auth::nonce()?;
        let b = crate::auth::nonce()?;
        let mut session = [0u8; SESSION_LEN];
        session.copy_from_slice(&a[..SESSION_LEN]);
        Ok(Ticket { session, secret: b })
    }

    /// The `J` frame's payload: session id then secret.
    pub fn payload(&self) -> Vec<u8> {
        [&self.session[..], &self.secret[..]].concat()
    }

    /// Reads a `J` frame's payload.
    pub fn from_payload(p: &[u8]) -> Option<Ticket> {
        if p.len() != SESSION_LEN + SECRET_LEN {
            return None;
        }
        let mut t = Ticket {
            session: [0; SESSION_LEN],
            secret: [0; SECRET_LEN],
        };
        t.session.copy_from_slice(&p[..SESSION_LEN]);
        t.secret.copy_from_slice(&p[SESSION_LEN..]);
        Some(t)
    }

    fn mac(&self, nonce: &[u8; JOIN_NONCE_LEN], binding: Option<&[u8; 32]>) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(JOIN_LABEL);
        m.update(&self.session);
        m.update(nonce);
        // Inside TLS the proof is bound to this connection: a proof
        // recorded or relayed onto another connection does not verify.
        m.update(binding.map_or(&[][..], |b| &b[..]));
        m
    }

    /// A join request for a new connection (`binding`: its TLS exporter
    /// value, `None` in plaintext).
    pub fn join(&self, binding: Option<&[u8; 32]>) -> Result<Join> {
        let n = crate::auth::nonce()?;
        let mut nonce = [0u8; JOIN_NONCE_LEN];
        nonce.copy_from_slice(&n[..JOIN_NONCE_LEN]);
        let mut proof = [0u8; PROOF_LEN];
        proof.copy_from_slice(&self.mac(&nonce, binding).finalize().into_bytes());
        Ok(Join {
            session: self.session,
            nonce,
            proof,
        })
    }

    /// Whether `j` proves this ticket's secret on this connection
    /// (constant time).
    pub fn check(&self, j: &Join, binding: Option<&[u8; 32]>) -> bool {
        j.session == self.session && self.mac(&j.nonce, binding).verify_slice(&j.proof).is_ok()
    }
}

/// A join as a header carries it (`"bt"."join"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The session to join.
    pub session: [u8; SESSION_LEN],
    /// Fresh per connection: a server refuses a nonce it saw before in
    /// this session (a replay in plaintext).
    pub nonce: [u8; JOIN_NONCE_LEN],
    /// HMAC-SHA256(secret, label || session || nonce || binding).
    pub proof: [u8; PROOF_LEN],
}

impl Join {
    /// The three hex strings of the header's `"join"` object.
    pub fn hex(&self) -> [String; 3] {
        [hex(&self.session), hex(&self.nonce), hex(&self.proof)]
    }
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn bad(words: &str) -> Error {
    Error::new(ErrorKind::Protocol, words)
}

/// The streams a header asks for (`"bt"."streams"`, capped at
/// [`MAX_STREAMS`]); `None` without the key.
pub fn offered_streams(json: &[u8]) -> Result<Option<u32>> {
    let value = crate::json::parse(json)?;
    match value.get("bt").and_then(|bt| bt.get("streams")) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n.min(u64::from(MAX_STREAMS)) as u32)),
            _ => Err(bad("\"bt\".\"streams\" must be a positive integer")),
        },
        Some(_) => Err(bad("\"bt\".\"streams\" must be a positive integer")),
    }
}

/// The join a header carries (`"bt"."join"`), if any.
pub fn join_request(json: &[u8]) -> Result<Option<Join>> {
    let value = crate::json::parse(json)?;
    let Some(j) = value.get("bt").and_then(|bt| bt.get("join")) else {
        return Ok(None);
    };
    let words = "\"bt\".\"join\" must be {\"s\": 32, \"n\": 32, \"p\": 64 hex digits}";
    let field = |k: &str| match j.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (Some(s), Some(n), Some(p)) = (field("s"), field("n"), field("p")) else {
        return Err(bad(words));
    };
    match (unhex(&s), unhex(&n), unhex(&p)) {
        (Some(session), Some(nonce), Some(proof)) => Ok(Some(Join {
            session,
            nonce,
            proof,
        })),
        _ => Err(bad(words)),
    }
}

/// A verified block a join connection hands to the session's owner.
#[derive(Debug)]
pub struct Joined {
    /// Block index.
    pub idx: u64,
    /// Its bytes (exactly the block).
    pub bytes: Vec<u8>,
    /// Their CRC-32 (checked by the join).
    pub crc: u32,
}

/// One open session on the server: owned by its first connection, which
/// holds the part and writes every block; joins send it verified blocks
/// through a bounded channel (so the memory is bounded by the streams
/// times the block size).
#[derive(Debug)]
pub struct Session {
    /// The ticket issued.
    pub ticket: Ticket,
    /// The upload's name, file size and block size (a join must agree).
    pub name: String,
    /// File size.
    pub filesize: u64,
    /// Block size.
    pub block: u64,
    /// Streams granted (the first included).
    pub streams: u32,
    tx: SyncSender<Joined>,
    nonces: Mutex<HashSet<[u8; JOIN_NONCE_LEN]>>,
    joined: Mutex<u32>,
}

impl Session {
    /// Where joins send blocks; refuses a nonce seen before and more
    /// joins than the streams granted.
    pub fn admit(&self, j: &Join) -> std::result::Result<SyncSender<Joined>, String> {
        let mut seen = self.nonces.lock().map_err(|_| "session state poisoned")?;
        if !seen.insert(j.nonce) {
            return Err("join refused: this join request was used before (a replay)".into());
        }
        let mut n = self.joined.lock().map_err(|_| "session state poisoned")?;
        if *n + 1 >= self.streams {
            return Err(format!(
                "join refused: the session already has its {} streams",
                self.streams
            ));
        }
        *n += 1;
        Ok(self.tx.clone())
    }

    /// A join ended: its stream may be opened again.
    pub fn left(&self) {
        if let Ok(mut n) = self.joined.lock() {
            *n = n.saturating_sub(1);
        }
    }
}

/// The server's open sessions, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; SESSION_LEN], Arc<Session>>>,
}

impl Sessions {
    /// Opens a session for an upload; the owner keeps the receiving end.
    pub fn open(
        &self,
        name: &str,
        filesize: u64,
        block: u64,
        streams: u32,
    ) -> Result<(Arc<Session>, Receiver<Joined>)> {
        let ticket = Ticket::generate()?;
        // One block waiting per stream: with one being read per join,
        // at most 2 x streams x block size held in memory.
        let (tx, rx) = std::sync::mpsc::sync_channel(streams.max(1) as usize);
        let s = Arc::new(Session {
            ticket,
            name: name.to_string(),
            filesize,
            block,
            streams,
            tx,
            nonces: Mutex::new(HashSet::new()),
            joined: Mutex::new(0),
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(s.ticket.session, Arc::clone(&s));
        }
        Ok((s, rx))
    }

    /// The session of this id, if open.
    pub fn find(&self, id: &[u8; SESSION_LEN]) -> Option<Arc<Session>> {
        self.map.lock().ok()?.get(id).cloned()
    }

    /// The owner ended: joins can no longer find or feed it.
    pub fn close(&self, id: &[u8; SESSION_LEN]) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_verifies_only_with_its_secret_and_binding() {
        let t = Ticket::generate().unwrap();
        let b = [7u8; 32];
        let j = t.join(Some(&b)).unwrap();
        assert!(t.check(&j, Some(&b)));
        assert!(
            !t.check(&j, Some(&[8u8; 32])),
            "relayed to another connection"
        );
        assert!(!t.check(&j, None));
        let other = Ticket::generate().unwrap();
        assert!(!other.check(&j, Some(&b)), "another session's secret");
        let mut forged = j.clone();
        forged.proof[0] ^= 1;
        assert!(!t.check(&forged, Some(&b)));
        assert_eq!(Ticket::from_payload(&t.payload()), Some(t));
    }

    #[test]
    fn join_and_streams_keys_parse_strictly() {
        let t = Ticket::generate().unwrap();
        let j = t.join(None).unwrap();
        let [s, n, p] = j.hex();
        let json = format!(r#"{{"bt": {{"join": {{"s": "{s}", "n": "{n}", "p": "{p}"}}}}}}"#);
        assert_eq!(join_request(json.as_bytes()).unwrap(), Some(j));
        assert!(join_request(br#"{"bt": {"join": {"s": "00"}}}"#).is_err());
        assert_eq!(join_request(br#"{"bt": {}}"#).unwrap(), None);
        assert_eq!(
            offered_streams(br#"{"bt": {"streams": 99}}"#).unwrap(),
            Some(8)
        );
        assert!(offered_streams(br#"{"bt": {"streams": 0}}"#).is_err());
    }

    #[test]
    fn a_session_refuses_a_replayed_nonce_and_extra_streams() {
        let reg = Sessions::default();
        let (s, _rx) = reg.open("a", 10, 65536, 2).unwrap();
        let j = s.ticket.join(None).unwrap();
        assert!(s.admit(&j).is_ok());
        assert!(s.admit(&j).unwrap_err().contains("replay"));
        let j2 = s.ticket.join(None).unwrap();
        assert!(s.admit(&j2).unwrap_err().contains("streams"));
        s.left();
        assert!(s.admit(&s.ticket.join(None).unwrap()).is_ok());
        assert!(reg.find(&s.ticket.session).is_some());
        reg.close(&s.ticket.session);
        assert!(reg.find(&s.ticket.session).is_none());
    }
}
