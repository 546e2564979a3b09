//! TLS connections on rustls' unbuffered API, both sides, so a received
//! record is copied as little as possible: the socket reads straight into
//! one large receive buffer, rustls decrypts each record there, and its
//! plaintext goes to the reader's buffer (rustls 0.23 still copies it once
//! into a chunk of its own on the way).
//!
//! The buffered `StreamOwned` path this replaces copied every received
//! byte more: from our read buffer into rustls' 4 KiB deframer reads, the
//! unprocessed tail down to the front of that buffer after each record,
//! and through its plaintext queue. In a disk-free loop, receiving now
//! costs half the CPU it did; sending costs the same (measured in
//! bench/results/tls-recv-2026-11-30.md).
//!
//! rustls' unbuffered connections have no `export_keying_material`; the
//! channel binding is derived here from the exporter secret that rustls
//! hands to a per-connection [`KeyLog`], with the negotiated suite's own
//! HKDF and hash (RFC 8446 section 7.5). The transport tests check both
//! sides agree, and agree with rustls' own exporter.
//!
//! Not for configuration ([`crate::tls`]) or the [`Transport`] seam itself
//! ([`crate::transport`]).
//!
//! [`Transport`]: crate::transport::Transport

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::ops::DerefMut;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::tls13::OkmBlock;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, KeyLog, ServerConfig, SupportedCipherSuite};

/// Bytes of the receive buffer: one `recv` then brings ~16 records.
pub const RECV_BUFFER: usize = 256 * 1024;

/// A receive into less room than this moves the partial record in front
/// of it to the start of the buffer first. Without it a `recv` got
/// whatever room the last record left, 150 KiB on average instead of 256:
/// twice the system calls, and twice the wake-ups of a sender waiting
/// for room in the socket.
const MIN_FILL: usize = 64 * 1024;

/// Plaintext encrypted per step of a write: the records of one `send`.
const WRITE_CHUNK: usize = 256 * 1024;

/// At most this much more is taken into a write's last chunk.
const WRITE_TAIL: usize = 16 * 1024;

/// Keeps the one secret the binding needs, for this connection only.
#[derive(Default)]
struct ExporterSecret(Mutex<Option<Vec<u8>>>);

impl fmt::Debug for ExporterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExporterSecret")
    }
}

impl KeyLog for ExporterSecret {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "EXPORTER_SECRET" {
            if let Ok(mut slot) = self.0.lock() {
                *slot = Some(secret.to_vec());
            }
        }
    }
    fn will_log(&self, label: &str) -> bool {
        label == "EXPORTER_SECRET"
    }
}

/// Either side's unbuffered connection: one entry point for its records.
pub trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send {
    /// rustls' per-side state.
    type Data;
    /// rustls' `process_tls_records` of this side.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// What one turn of rustls' state machine came to.
enum Step {
    /// Plaintext copied to the reader's buffer (0: a record without any).
    Read(usize),
    /// Plaintext taken and encrypted into the send queue.
    Wrote(usize),
    /// Handshake records queued or sent: turn again.
    Again,
    /// rustls needs more bytes from the peer.
    NeedInput,
    /// The handshake is done and nothing is pending: writes may go.
    Ready,
    /// The peer sent close_notify: no more plaintext will come.
    PeerClosed,
}

/// A TLS connection over `sock`, decrypting in place.
pub struct TlsStream<C> {
    conn: C,
    /// The socket (timeouts, shutdown and peer address are set on it).
    pub sock: TcpStream,
    inb: Box<[u8]>,
    /// Received bytes not yet processed: `inb[start..end]`.
    start: usize,
    end: usize,
    /// Plaintext of a record the reader's buffer could not take whole,
    /// from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    out: Outbox,
    peer_closed: bool,
    exporter: Arc<ExporterSecret>,
    /// Bytes received in all (0: the peer never answered).
    pub received: u64,
}

impl TlsStream<UnbufferedServerConnection> {
    /// Runs the server's handshake on `sock` (within `timeout`; errors
    /// carry the rustls error inside the `io::Error`). The config gets a
    /// key log of this connection's own, for the channel binding.
    pub fn accept(
        sock: TcpStream,
        config: &Arc<ServerConfig>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let exporter = Arc::new(ExporterSecret::default());
        let mut cfg = (**config).clone();
        cfg.key_log = exporter.clone();
        let conn = UnbufferedServerConnection::new(Arc::new(cfg)).map_err(io::Error::other)?;
        let mut s = TlsStream::new(conn, sock, exporter);
        s.handshake(timeout)?;
        Ok(s)
    }
}

impl TlsStream<UnbufferedClientConnection> {
    /// Starts the client's side on `sock`; [`TlsStream::handshake`] then
    /// runs it (the caller looks at [`TlsStream::received`] when it fails).
    pub fn client(
        sock: TcpStream,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let exporter = Arc::new(ExporterSecret::default());
        let mut cfg = (**config).clone();
        cfg.key_log = exporter.clone();
        let conn =
            UnbufferedClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
        Ok(TlsStream::new(conn, sock, exporter))
    }
}

impl<C: Side> TlsStream<C> {
    fn new(conn: C, sock: TcpStream, exporter: Arc<ExporterSecret>) -> Self {
        TlsStream {
            conn,
            sock,
            inb: vec![0u8; RECV_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            plain: Vec::new(),
            plain_at: 0,
            out: Outbox::default(),
            peer_closed: false,
            exporter,
            received: 0,
        }
    }

    /// Drives the handshake to its end within `timeout`.
    pub fn handshake(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake not done within {timeout:?}"),
                ));
            }
            self.sock.set_read_timeout(Some(left))?;
            self.sock.set_write_timeout(Some(left))?;
            match self.step_or_alert(&mut [], &[])? {
                // Application data right after the client's Finished is
                // kept for the first read.
                Step::Again | Step::Read(_) | Step::Wrote(_) => {}
                // The server may write before the client's Finished came
                // (rustls allows it), but the handshake is not done.
                Step::NeedInput | Step::Ready if self.conn.is_handshaking() => self.fill()?,
                Step::NeedInput => self.fill()?,
                Step::Ready => return Ok(()),
                Step::PeerClosed => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// One turn; on a TLS error, first tries to send the alert rustls
    /// queued for it (the peer then learns why), then returns the error.
    fn step_or_alert(&mut self, dst: &mut [u8], src: &[u8]) -> io::Result<Step> {
        match self.step(dst, src) {
            Ok(s) => Ok(s),
            Err(e) => {
                self.out.len = 0;
                if let Ok(Step::Again) = self.step(&mut [], &[]) {
                    let _ = self.send_out();
                }
                Err(e)
            }
        }
    }

    /// Processes what was received, as far as rustls gets: one record's
    /// plaintext into `dst` (rest kept), `src` encrypted when writing is
    /// possible, handshake records queued and sent.
    fn step(&mut self, dst: &mut [u8], src: &[u8]) -> io::Result<Step> {
        let status = self.conn.process(&mut self.inb[self.start..self.end]);
        let mut discard = status.discard;
        let step = match status.state.map_err(io::Error::other)? {
            ConnectionState::ReadTraffic(mut r) => match r.next_record() {
                Some(rec) => {
                    let rec = rec.map_err(io::Error::other)?;
                    discard += rec.discard;
                    let n = rec.payload.len().min(dst.len());
                    dst[..n].copy_from_slice(&rec.payload[..n]);
                    self.plain.extend_from_slice(&rec.payload[n..]);
                    Step::Read(n)
                }
                None => Step::Read(0),
            },
            ConnectionState::EncodeTlsData(mut e) => {
                self.out.append(|b| e.encode(b), encode_needs)?;
                Step::Again
            }
            ConnectionState::TransmitTlsData(t) => {
                let sent = send_sealed(&self.sock, self.out.queued());
                self.out.len = 0;
                sent?;
                t.done();
                Step::Again
            }
            ConnectionState::BlockedHandshake => Step::NeedInput,
            ConnectionState::WriteTraffic(mut w) if !src.is_empty() => {
                // A short tail goes with this chunk: alone it would be a
                // send of its own and a tiny record (a frame's trailer).
                let n = if src.len() <= WRITE_CHUNK + WRITE_TAIL {
                    src.len()
                } else {
                    WRITE_CHUNK
                };
                self.out
                    .append(|b| w.encrypt(&src[..n], b), encrypt_needs)?;
                Step::Wrote(n)
            }
            ConnectionState::WriteTraffic(_) => Step::Ready,
            ConnectionState::PeerClosed | ConnectionState::Closed => Step::PeerClosed,
            other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
        };
        self.start += discard;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        Ok(step)
    }

    /// Receives more bytes after those not yet processed (moved to the
    /// front first when less than [`MIN_FILL`] is left behind them: at most
    /// one partial record, so the move is short, and every `recv` may
    /// bring many records). End of stream is an error here: callers get
    /// there only while rustls still expects bytes.
    fn fill(&mut self) -> io::Result<()> {
        if self.inb.len() - self.end < MIN_FILL {
            self.inb.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            match self.sock.read(&mut self.inb[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.end += n;
                    self.received += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends what is queued, all of it.
    fn send_out(&mut self) -> io::Result<()> {
        let r = send_sealed(&self.sock, self.out.queued());
        self.out.len = 0;
        r
    }

    /// The channel binding: the TLS exporter of this connection for
    /// `label`, no context, 32 bytes (as rustls' `export_keying_material`
    /// computes it). Once only: the secret is dropped when it is used.
    pub fn export_binding(&self, label: &[u8]) -> Result<[u8; 32], String> {
        let secret = self
            .exporter
            .0
            .lock()
            .map_err(|_| "the exporter secret is unavailable".to_string())?
            .take()
            .ok_or("the handshake gave no exporter secret")?;
        let Some(SupportedCipherSuite::Tls13(suite)) = self.conn.negotiated_cipher_suite() else {
            return Err("not a TLS 1.3 connection".into());
        };
        let hash = suite.common.hash_provider;
        let expander = suite
            .hkdf_provider
            .expander_for_okm(&OkmBlock::new(&secret));
        // Derive-Secret(exporter_secret, label, "") ...
        let mut derived = vec![0u8; expander.hash_len()];
        expand_label(&*expander, label, hash.hash(&[]).as_ref(), &mut derived)?;
        // ... then HKDF-Expand-Label(that, "exporter", Hash(""), 32).
        let expander = suite
            .hkdf_provider
            .expander_for_okm(&OkmBlock::new(&derived));
        let mut out = [0u8; 32];
        expand_label(&*expander, b"exporter", hash.hash(&[]).as_ref(), &mut out)?;
        Ok(out)
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The peer's raw public key (SubjectPublicKeyInfo DER), if it
    /// presented one (the server does; clients do not).
    pub fn peer_spki(&self) -> Option<Vec<u8>> {
        let certs = self.conn.peer_certificates()?;
        certs.first().map(|c| c.to_vec())
    }

    /// The negotiated cipher suite.
    pub fn negotiated_cipher_suite(&self) -> Option<SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// Sends close_notify (then nothing more may be written).
    pub fn send_close_notify(&mut self) -> io::Result<()> {
        loop {
            match self.step(&mut [], &[])? {
                Step::Again | Step::Read(_) => {}
                Step::NeedInput => return Err(io::ErrorKind::NotConnected.into()),
                Step::Ready | Step::Wrote(_) | Step::PeerClosed => break,
            }
        }
        let status = self.conn.process(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
            self.out
                .append(|b| w.queue_close_notify(b), encrypt_needs)?;
        }
        self.send_out()
    }
}

/// Sends TLS records, all of them. Never inlined, so valgrind can tell
/// it by name: its bytes were sealed by ring's assembly, which memcheck
/// cannot follow (tests/c/valgrind.supp).
#[inline(never)]
fn send_sealed(mut sock: &TcpStream, records: &[u8]) -> io::Result<()> {
    sock.write_all(records)
}

/// HKDF-Expand-Label of RFC 8446 section 7.1 into `out`.
fn expand_label(
    expander: &dyn rustls::crypto::tls13::HkdfExpander,
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let len = u16::try_from(out.len()).map_err(|_| "exporter output too long")?;
    let info: [&[u8]; 6] = [
        &len.to_be_bytes(),
        &[(6 + label.len()) as u8],
        b"tls13 ",
        label,
        &[context.len() as u8],
        context,
    ];
    expander
        .expand_slice(&info, out)
        .map_err(|_| "exporter output too long".to_string())
}

/// Encoded TLS bytes waiting to be sent: `buf[..len]`. The buffer keeps
/// its size between sends, so it is zero-filled once, not per write.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    len: usize,
}

impl Outbox {
    /// Appends what `f` writes into the free room, growing the room as
    /// rustls asks (`f` reports the size it needs).
    fn append<E: std::error::Error + Send + Sync + 'static>(
        &mut self,
        mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> io::Result<()> {
        loop {
            match f(&mut self.buf[self.len..]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(e) => match needs(&e) {
                    Some(room) if room > self.buf.len() - self.len => {
                        self.buf.resize(self.len + room, 0)
                    }
                    _ => return Err(io::Error::other(e)),
                },
            }
        }
    }

    fn queued(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

impl<C: Side> Read for TlsStream<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut n = self.take_plain(buf);
        while n < buf.len() {
            match self.step_or_alert(&mut buf[n..], &[])? {
                Step::Read(k) => n += k,
                Step::Again | Step::Wrote(_) => {}
                Step::PeerClosed => {
                    self.peer_closed = true;
                    break;
                }
                // Nothing decrypted is waiting: return what we have, or
                // wait for the peer.
                Step::NeedInput | Step::Ready if n > 0 || self.peer_closed => break,
                Step::NeedInput | Step::Ready => self.fill()?,
            }
            if !self.plain.is_empty() {
                break;
            }
        }
        Ok(n)
    }
}

impl<C: Side> TlsStream<C> {
    /// Copies the kept plaintext of an earlier record into `buf`.
    fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.plain[self.plain_at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain.clear();
            self.plain_at = 0;
        }
        n
    }

    /// Encrypts up to [`WRITE_CHUNK`] of `src`, queued; records the peer
    /// sent meanwhile are decrypted and kept for the next read.
    fn encrypt_some(&mut self, src: &[u8]) -> io::Result<usize> {
        loop {
            let mut spill = [0u8; 0];
            match self.step_or_alert(&mut spill, src)? {
                Step::Wrote(n) => return Ok(n),
                Step::Again | Step::Read(_) => {}
                // Closed both ways (we sent close_notify too).
                Step::PeerClosed if self.peer_closed => {
                    return Err(io::ErrorKind::BrokenPipe.into())
                }
                Step::PeerClosed => self.peer_closed = true,
                Step::NeedInput => return Err(io::ErrorKind::NotConnected.into()),
                Step::Ready => return Ok(0),
            }
        }
    }
}

impl<C: Side> Write for TlsStream<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.encrypt_some(buf)?;
        self.send_out()?;
        Ok(n)
    }

    /// Each slice becomes its own records (as in rustls' buffered
    /// writer), sent together in one go.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            let n = self.encrypt_some(b)?;
            total += n;
            if n < b.len() || total >= WRITE_CHUNK {
                break;
            }
        }
        self.send_out()?;
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_out()
    }
}
