//! The byte pipe under the protocol: plain TCP or TLS 1.3 over TCP, behind
//! one trait.
//!
//! [`Transport`] is what the client and server shells need of a connection
//! beyond `Read + Write`: the peer's address, a [`Shutdown`] handle another
//! thread can use (takeover, server stop), timeouts, and for TLS the
//! channel binding that [`crate::auth`] mixes into the token proof.
//! [`TcpTransport`] is today's plaintext socket; [`TlsTransport`] is TLS
//! with the handshake done (and checked) before it is handed out, on
//! rustls' unbuffered API ([`crate::tls_stream`]): records are decrypted
//! in place in a 256 KiB receive buffer the socket reads into (one
//! syscall brings ~16 records), which halved the CPU of receiving against
//! rustls' buffered stream in a disk-free loop (the tests'
//! `receive_cpu_unbuffered_against_buffered`).
//!
//! Not for protocol logic, pin storage ([`crate::known_hosts`]) or key
//! handling ([`crate::tls`]).
//!
//! Writes are encrypted into full 16 KiB records and sent at once, so
//! callers should write in large pieces (or vectored) rather than many
//! small writes, each of which becomes its own record. Records go out with
//! `send` (`MSG_NOSIGNAL`: never a SIGPIPE in a host program), as do
//! plaintext vectored writes (`sendmsg`).

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{self, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ServerConfig};

use crate::tls::{mismatch_of, Fingerprint, HostKeyMismatch, ALPN, EXPORTER_LABEL};
use crate::tls_stream::TlsStream;
use crate::{Error, ErrorKind};

/// Bytes of the receive buffer of a TLS connection.
pub const TLS_READ_BUFFER: usize = crate::tls_stream::RECV_BUFFER;

/// A connection the engine can speak its protocol over.
pub trait Transport: Read + Write + Send {
    /// The address of the other end.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// A handle that closes this connection from any thread.
    fn shutdown_handle(&self) -> Shutdown;
    /// Limits each read (None: wait forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Limits each write (None: wait forever).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// The TLS exporter value binding this connection (label
    /// [`EXPORTER_LABEL`], 32 bytes); None in plaintext.
    fn channel_binding(&self) -> Option<[u8; 32]>;
    /// Whether the bytes are encrypted and the peer's key checked.
    fn is_encrypted(&self) -> bool;
    /// Ends our sending side cleanly (TLS: close_notify), after which the
    /// peer reads end-of-file. Reading stays possible.
    fn close_write(&mut self) -> io::Result<()>;
    /// The socket underneath, to poll whether the peer sent something
    /// (bytes already buffered above it are not seen that way).
    fn fd(&self) -> BorrowedFd<'_>;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        (**self).peer_addr()
    }
    fn shutdown_handle(&self) -> Shutdown {
        (**self).shutdown_handle()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        (**self).set_write_timeout(t)
    }
    fn channel_binding(&self) -> Option<[u8; 32]> {
        (**self).channel_binding()
    }
    fn is_encrypted(&self) -> bool {
        (**self).is_encrypted()
    }
    fn close_write(&mut self) -> io::Result<()> {
        (**self).close_write()
    }
    fn fd(&self) -> BorrowedFd<'_> {
        (**self).fd()
    }
}

/// Closes a connection from another thread: both directions of the socket
/// are shut down, so a blocked read or write there returns at once. For
/// TLS no close_notify is sent (the owning thread holds the session).
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<TcpStream>);

impl Shutdown {
    /// A handle on `sock` (a duplicate of its descriptor).
    pub fn of(sock: &TcpStream) -> io::Result<Shutdown> {
        Ok(Shutdown(Arc::new(sock.try_clone()?)))
    }

    /// Shuts the connection down; a connection already closed is fine.
    pub fn shutdown(&self) {
        let _ = self.0.shutdown(net::Shutdown::Both);
    }

    /// Shuts only the receiving side: a blocked read there ends (as if
    /// the peer had gone), while the owner can still write its last words
    /// (a takeover's fault frame).
    pub fn shutdown_read(&self) {
        let _ = self.0.shutdown(net::Shutdown::Read);
    }
}

/// Plain TCP, today's wire.
#[derive(Debug)]
pub struct TcpTransport {
    sock: TcpStream,
    shutdown: Shutdown,
}

impl TcpTransport {
    /// Wraps a connected socket.
    pub fn new(sock: TcpStream) -> io::Result<TcpTransport> {
        let shutdown = Shutdown::of(&sock)?;
        Ok(TcpTransport { sock, shutdown })
    }

    /// The socket, for socket options.
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl Read for TcpTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for TcpTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(&self.sock, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Transport for TcpTransport {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()
    }
    fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(t)
    }
    fn channel_binding(&self) -> Option<[u8; 32]> {
        None
    }
    fn is_encrypted(&self) -> bool {
        false
    }
    fn close_write(&mut self) -> io::Result<()> {
        self.sock.shutdown(net::Shutdown::Write)
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// `writev` without its SIGPIPE: `writev(2)` on a connection the peer
/// closed raises SIGPIPE, which kills a C or other host program that did
/// not ignore it (Rust binaries do; the C API's users need not). `sendmsg`
/// with `MSG_NOSIGNAL` returns `EPIPE` instead, as std's `write` on a
/// `TcpStream` (`send` with `MSG_NOSIGNAL`) already does.
fn send_vectored(sock: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut control = rustix::net::SendAncillaryBuffer::default();
    rustix::net::sendmsg(sock, bufs, &mut control, rustix::net::SendFlags::NOSIGNAL)
        .map_err(io::Error::from)
}

enum Stream {
    Client(TlsStream<UnbufferedClientConnection>),
    Server(TlsStream<UnbufferedServerConnection>),
}

/// Calls `$body` with the stream of either side bound to `$s` (both are
/// `Read + Write`).
macro_rules! either {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Stream::Client($s) => $body,
            Stream::Server($s) => $body,
        }
    };
}

/// TLS 1.3 over TCP, handshake done, peer key and ALPN checked.
pub struct TlsTransport {
    stream: Stream,
    binding: [u8; 32],
    peer_spki: Vec<u8>,
    shutdown: Shutdown,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.stream {
            Stream::Client(_) => "client",
            Stream::Server(_) => "server",
        };
        write!(
            f,
            "TlsTransport({side}, peer key {})",
            self.peer_fingerprint()
        )
    }
}

/// Why a TLS connection could not be opened, as the client must tell them
/// apart.
#[derive(Debug)]
pub enum ConnectError {
    /// The server presented another key than the pinned one: refuse, and
    /// never fall back to plaintext.
    HostKey(HostKeyMismatch),
    /// The peer closed the connection on our ClientHello (or answered with
    /// something that is not TLS) before sending any TLS: a server without
    /// TLS. Plaintext may be tried, where policy allows.
    NotTls(Error),
    /// Any other failure (timeout, refused handshake, ALPN, network).
    Failed(Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::HostKey(m) => m.fmt(f),
            ConnectError::NotTls(e) | ConnectError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Error {
        match e {
            ConnectError::HostKey(m) => Error::new(ErrorKind::HostKey, m.to_string()),
            ConnectError::NotTls(e) | ConnectError::Failed(e) => e,
        }
    }
}

impl TlsTransport {
    /// Opens TLS as the client on a connected socket; the handshake (key
    /// check included) must finish within `timeout`. Afterwards the socket
    /// has no timeouts set.
    pub fn connect(
        sock: TcpStream,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<TlsTransport, ConnectError> {
        let shutdown = Shutdown::of(&sock).map_err(|e| ConnectError::Failed(net_err(e)))?;
        // No SNI is sent, so the name is only a placeholder rustls needs.
        let name = rustls::pki_types::ServerName::try_from("bigtransfer.invalid").map_err(|e| {
            ConnectError::Failed(Error::new(ErrorKind::InvalidInput, e.to_string()))
        })?;
        let mut s =
            TlsStream::client(sock, &config, name).map_err(|e| ConnectError::Failed(net_err(e)))?;
        if let Err(e) = s.handshake(timeout) {
            return Err(classify(e, s.received));
        }
        TlsTransport::finish(Stream::Client(s), shutdown).map_err(ConnectError::Failed)
    }

    /// Accepts TLS as the server on a connected socket whose first byte was
    /// 0x16; the handshake must finish within `timeout`. Nothing the client
    /// sends after its handshake is read here. Afterwards the socket has no
    /// timeouts set.
    pub fn accept(
        sock: TcpStream,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> crate::Result<TlsTransport> {
        let shutdown = Shutdown::of(&sock).map_err(net_err)?;
        let s = TlsStream::accept(sock, &config, timeout).map_err(|e| {
            Error::io(
                ErrorKind::ConnectionLost,
                "TLS handshake with the client failed",
                e,
            )
        })?;
        TlsTransport::finish(Stream::Server(s), shutdown)
    }

    fn finish(stream: Stream, shutdown: Shutdown) -> crate::Result<TlsTransport> {
        let (alpn_ok, binding, spki) = either!(&stream, s => (
            s.alpn_protocol() == Some(ALPN),
            s.export_binding(EXPORTER_LABEL),
            s.peer_spki(),
        ));
        if !alpn_ok {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the peer does not speak bigtransfer/2 over TLS (ALPN not agreed)",
            ));
        }
        let binding = binding
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("no TLS channel binding: {e}")))?;
        if let Stream::Client(_) = stream {
            if spki.is_none() {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "the server presented no key",
                ));
            }
        }
        let sock = either!(&stream, s => &s.sock);
        sock.set_read_timeout(None).map_err(net_err)?;
        sock.set_write_timeout(None).map_err(net_err)?;
        Ok(TlsTransport {
            stream,
            binding,
            peer_spki: spki.unwrap_or_default(),
            shutdown,
        })
    }

    /// The SubjectPublicKeyInfo DER the server presented (client side;
    /// empty on the server side, where clients have no key).
    pub fn peer_spki(&self) -> &[u8] {
        &self.peer_spki
    }

    /// The negotiated cipher suite, for logs (e.g. `TLS13_AES_128_GCM_SHA256`).
    pub fn cipher_suite(&self) -> String {
        let suite = either!(&self.stream, s => s.negotiated_cipher_suite());
        suite.map_or_else(|| "none".into(), |c| format!("{:?}", c.suite()))
    }

    /// The fingerprint of the server's key, to report and store after a
    /// first contact (client side).
    pub fn peer_fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.peer_spki)
    }

    fn sock(&self) -> &TcpStream {
        either!(&self.stream, s => &s.sock)
    }
}

fn classify(e: io::Error, received: u64) -> ConnectError {
    if let Some(m) = mismatch_of(&e) {
        return ConnectError::HostKey(m);
    }
    let closed = matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    );
    let not_tls = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|t| matches!(t, rustls::Error::InvalidMessage(_)));
    if (closed && received == 0) || not_tls {
        return ConnectError::NotTls(Error::io(
            ErrorKind::Unreachable,
            "the server does not speak TLS (it closed the connection on the TLS hello)",
            e,
        ));
    }
    let kind = if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock {
        ErrorKind::TimedOut
    } else {
        ErrorKind::Unreachable
    };
    ConnectError::Failed(Error::io(kind, "TLS handshake with the server failed", e))
}

fn net_err(e: io::Error) -> Error {
    Error::io(ErrorKind::ConnectionLost, "socket error", e)
}

impl Read for TlsTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        either!(&mut self.stream, s => s.read(buf))
    }
}

impl Write for TlsTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        either!(&mut self.stream, s => s.write(buf))
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        either!(&mut self.stream, s => s.write_vectored(bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        either!(&mut self.stream, s => s.flush())
    }
}

impl Transport for TlsTransport {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock().peer_addr()
    }
    fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock().set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock().set_write_timeout(t)
    }
    fn channel_binding(&self) -> Option<[u8; 32]> {
        Some(self.binding)
    }
    fn is_encrypted(&self) -> bool {
        true
    }
    fn close_write(&mut self) -> io::Result<()> {
        either!(&mut self.stream, s => s.send_close_notify())?;
        self.sock().shutdown(net::Shutdown::Write)
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{client_config, server_config, PinPolicy, ServerKey};
    use rustls::{ConnectionCommon, SideData, StreamOwned};
    use std::net::TcpListener;
    use std::ops::{Deref, DerefMut};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(10);

    /// The socket under rustls' buffered stream, the path both sides had
    /// before (kept to measure against): reads through a large buffer
    /// (rustls asks for 4 KiB at a time), writes straight through.
    struct BufferedSocket {
        sock: TcpStream,
        buf: Box<[u8]>,
        start: usize,
        end: usize,
        received: u64,
    }

    impl BufferedSocket {
        fn new(sock: TcpStream) -> BufferedSocket {
            BufferedSocket {
                sock,
                buf: vec![0u8; TLS_READ_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
                received: 0,
            }
        }
    }

    impl Read for BufferedSocket {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.start == self.end {
                if out.len() >= self.buf.len() {
                    let n = self.sock.read(out)?;
                    self.received += n as u64;
                    return Ok(n);
                }
                let n = self.sock.read(&mut self.buf)?;
                self.received += n as u64;
                self.start = 0;
                self.end = n;
            }
            let n = out.len().min(self.end - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            Ok(n)
        }
    }

    impl Write for BufferedSocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sock.write(buf)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            send_vectored(&self.sock, bufs)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.sock.flush()
        }
    }

    /// Drives the handshake to its end within `timeout`, then flushes what it
    /// queued (the client's Finished).
    fn handshake<C, S>(s: &mut StreamOwned<C, BufferedSocket>, timeout: Duration) -> io::Result<()>
    where
        C: DerefMut + Deref<Target = ConnectionCommon<S>>,
        S: SideData,
    {
        let deadline = Instant::now() + timeout;
        while s.conn.is_handshaking() || s.conn.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake not done within {timeout:?}"),
                ));
            }
            s.sock.sock.set_read_timeout(Some(left))?;
            s.sock.sock.set_write_timeout(Some(left))?;
            let (read, written) = s.conn.complete_io(&mut s.sock)?;
            if read == 0 && written == 0 && s.conn.is_handshaking() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// A connected loopback pair: (client side, server side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    /// Runs the server side of a handshake in a thread; its result comes
    /// back through the join handle.
    fn serve(
        sock: TcpStream,
        cfg: Arc<ServerConfig>,
    ) -> thread::JoinHandle<crate::Result<TlsTransport>> {
        thread::spawn(move || TlsTransport::accept(sock, cfg, T))
    }

    fn tls_pair(
        key: &ServerKey,
        pin: PinPolicy,
    ) -> (
        Result<TlsTransport, ConnectError>,
        crate::Result<TlsTransport>,
    ) {
        let (c, s) = pair();
        let server = serve(s, server_config(key).unwrap());
        let client = TlsTransport::connect(c, client_config(pin).unwrap(), T);
        (client, server.join().unwrap())
    }

    #[test]
    fn right_pin_connects_and_bindings_match_per_connection() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::Expect(key.fingerprint()));
        let (c, s) = (c.unwrap(), s.unwrap());
        assert!(c.is_encrypted() && s.is_encrypted());
        assert_eq!(c.peer_fingerprint(), key.fingerprint());
        assert_eq!(c.cipher_suite(), "TLS13_AES_128_GCM_SHA256");
        let b = c.channel_binding().unwrap();
        assert_eq!(Some(b), s.channel_binding());
        let (c2, s2) = tls_pair(&key, PinPolicy::Expect(key.fingerprint()));
        let (c2, s2) = (c2.unwrap(), s2.unwrap());
        assert_eq!(c2.channel_binding(), s2.channel_binding());
        assert_ne!(
            c2.channel_binding(),
            Some(b),
            "each connection has its own binding"
        );
        assert_eq!(c.peer_addr().unwrap(), s.sock().local_addr().unwrap());
    }

    /// Our exporter derivation (rustls' unbuffered API has none) against
    /// rustls' own `export_keying_material` on a buffered client: the same
    /// channel binding, else relayed-token protection would break or mean
    /// nothing.
    #[test]
    fn the_binding_equals_rustls_own_exporter() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = pair();
        let server = serve(s, server_config(&key).unwrap());
        let cfg = client_config(PinPolicy::Expect(key.fingerprint())).unwrap();
        let name = rustls::pki_types::ServerName::try_from("bigtransfer.invalid").unwrap();
        let conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut c = StreamOwned::new(conn, BufferedSocket::new(c));
        handshake(&mut c, T).unwrap();
        let s = server.join().unwrap().unwrap();
        let theirs = c
            .conn
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .unwrap();
        assert_eq!(s.channel_binding(), Some(theirs));
        // And our client derives the same as rustls' buffered server.
        let (c2, s2) = pair();
        let srv = thread::spawn(move || {
            let conn = rustls::ServerConnection::new(server_config(&key).unwrap()).unwrap();
            let mut st = StreamOwned::new(conn, BufferedSocket::new(s2));
            handshake(&mut st, T).unwrap();
            st.conn
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
                .unwrap()
        });
        let cfg = client_config(PinPolicy::TrustOnFirstUse).unwrap();
        let ours = TlsTransport::connect(c2, cfg, T).unwrap();
        assert_eq!(ours.channel_binding(), Some(srv.join().unwrap()));
    }

    #[test]
    fn wrong_pin_fails_with_both_fingerprints_and_the_server_reads_nothing() {
        let key = ServerKey::generate().unwrap();
        let pinned = ServerKey::generate().unwrap().fingerprint();
        let (c, s) = tls_pair(&key, PinPolicy::Expect(pinned));
        match c {
            Err(ConnectError::HostKey(m)) => {
                assert_eq!(m.expected, pinned);
                assert_eq!(m.presented, key.fingerprint());
                let text = Error::from(ConnectError::HostKey(m)).to_string();
                assert!(text.contains(&pinned.to_string()), "{text}");
                assert!(text.contains(&key.fingerprint().to_string()), "{text}");
            }
            other => panic!("expected a key mismatch, got {other:?}"),
        }
        // The server never completes a handshake, so it hands out no
        // connection to read application bytes from.
        let e = s.unwrap_err().to_string();
        assert!(e.contains("TLS handshake with the client failed"), "{e}");
    }

    #[test]
    fn first_use_reports_the_key() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::TrustOnFirstUse);
        let c = c.unwrap();
        s.unwrap();
        assert_eq!(c.peer_fingerprint(), key.fingerprint());
        assert_eq!(c.peer_spki(), key.spki());
    }

    #[test]
    fn a_client_without_our_alpn_is_refused() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = pair();
        let server = serve(s, server_config(&key).unwrap());
        for alpn in [vec![b"http/1.1".to_vec()], vec![]] {
            let mut cfg = (*client_config(PinPolicy::TrustOnFirstUse).unwrap()).clone();
            cfg.alpn_protocols = alpn;
            let (c2, s2) = pair();
            let srv = serve(s2, server_config(&key).unwrap());
            assert!(TlsTransport::connect(c2, Arc::new(cfg), T).is_err());
            assert!(srv.join().unwrap().is_err());
        }
        drop(c);
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn a_server_without_our_alpn_is_refused() {
        let key = ServerKey::generate().unwrap();
        let mut cfg = (*server_config(&key).unwrap()).clone();
        cfg.alpn_protocols = vec![b"other/1".to_vec()];
        let (c, s) = pair();
        let server = serve(s, Arc::new(cfg));
        let r = TlsTransport::connect(c, client_config(PinPolicy::TrustOnFirstUse).unwrap(), T);
        assert!(matches!(r, Err(ConnectError::Failed(_))), "{r:?}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn a_plaintext_server_that_closes_is_told_apart() {
        let (c, s) = pair();
        let peer = thread::spawn(move || {
            // A legacy server: reads a u32 length, finds it absurd, closes.
            let mut s = s;
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            len
        });
        let r = TlsTransport::connect(c, client_config(PinPolicy::TrustOnFirstUse).unwrap(), T);
        assert_eq!(peer.join().unwrap()[0], 0x16);
        assert!(matches!(r, Err(ConnectError::NotTls(_))), "{r:?}");
    }

    #[test]
    fn a_silent_server_times_out_within_the_deadline() {
        let (c, _s) = pair();
        let t0 = Instant::now();
        let cfg = client_config(PinPolicy::TrustOnFirstUse).unwrap();
        let r = TlsTransport::connect(c, cfg, Duration::from_millis(300));
        assert!(t0.elapsed() < Duration::from_secs(5));
        match r {
            Err(ConnectError::Failed(e)) => assert_eq!(e.kind(), ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn megabytes_round_trip_both_ways() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::Expect(key.fingerprint()));
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let up = pattern(5 * 1024 * 1024 + 13, 7);
        let down = pattern(3 * 1024 * 1024 + 5, 9);
        let (tx, rx) = mpsc::channel();
        let (up2, down2) = (up.clone(), down.clone());
        let srv = thread::spawn(move || {
            let mut got = vec![0u8; up2.len()];
            s.read_exact(&mut got).unwrap();
            tx.send(got == up2).unwrap();
            s.write_all(&down2).unwrap();
            s.close_write().unwrap();
            // The client's close_notify ends our reads cleanly.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            rest
        });
        c.set_read_timeout(Some(T)).unwrap();
        // One big write, and a vectored one: both must arrive in order.
        c.write_all(&up[..4 * 1024 * 1024]).unwrap();
        let tail = &up[4 * 1024 * 1024..];
        let (a, b) = tail.split_at(100);
        let n = c
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .unwrap();
        assert!(n > 0);
        c.write_all(&tail[n..]).unwrap();
        c.flush().unwrap();
        assert!(rx.recv_timeout(T).unwrap(), "upload arrived intact");
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(got == down, "download arrived intact ({} bytes)", got.len());
        c.close_write().unwrap();
        assert!(srv.join().unwrap().is_empty());
    }

    /// The server's stream keeps what a small read could not take, and
    /// what arrived while it wrote: every byte comes out once, in order.
    #[test]
    fn server_reads_of_any_size_between_writes_lose_nothing() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::Expect(key.fingerprint()));
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let up = pattern(3 * 1024 * 1024 + 77, 11);
        let up2 = up.clone();
        let writer = thread::spawn(move || {
            c.write_all(&up2).unwrap();
            c.flush().unwrap();
            let mut acks = Vec::new();
            c.read_to_end(&mut acks).map(|_| acks)
        });
        s.set_read_timeout(Some(T)).unwrap();
        let (mut got, mut sizes, mut acks) = (
            Vec::new(),
            [1usize, 7, 1000, 16_384, 70_000].iter().cycle(),
            0u32,
        );
        while got.len() < up.len() {
            let mut buf = vec![0u8; *sizes.next().unwrap()];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            // A write while records wait in the receive buffer.
            s.write_all(b"ack").unwrap();
            acks += 1;
        }
        assert!(got == up, "the upload arrived intact");
        s.close_write().unwrap();
        let acks_seen = writer.join().unwrap().unwrap();
        assert_eq!(acks_seen.len(), 3 * acks as usize);
        assert!(acks_seen.chunks(3).all(|a| a == b"ack"));
    }

    /// CPU time of the calling thread (the kernel's schedstat, in ns).
    fn thread_cpu() -> Duration {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        let ns = text.split_whitespace().next().unwrap().parse().unwrap();
        Duration::from_nanos(ns)
    }

    /// Receives everything on `s` through `read` into a 1 MiB buffer (as
    /// the server's connection does); returns (bytes, thread CPU).
    fn drain(mut r: impl Read) -> (u64, Duration) {
        let t0 = thread_cpu();
        let (mut buf, mut n) = (vec![0u8; 1 << 20], 0u64);
        loop {
            match r.read(&mut buf).unwrap() {
                0 => return (n, thread_cpu() - t0),
                k => n += k as u64,
            }
        }
    }

    /// Not a test but a measurement, free of disk and of the protocol: the
    /// server thread's CPU per received GiB over TLS, this server stream
    /// against rustls' buffered one behind our read buffer (the path the
    /// server had before), and plain TCP for scale, alternated in one run. Run it with
    /// `cargo test --release -p bigtransfer-core --lib receive_cpu -- --ignored --nocapture`
    /// (BT_RECV_MIB sets the size, default 1024).
    #[test]
    #[ignore]
    fn receive_cpu_unbuffered_against_buffered() {
        let mib: usize = std::env::var("BT_RECV_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let key = ServerKey::generate().unwrap();
        let chunk = pattern(1 << 20, 3);
        for round in 1..=3 {
            for kind in ["plaintext", "unbuffered", "buffered"] {
                let (c, s) = pair();
                let cfg = server_config(&key).unwrap();
                let srv = thread::spawn(move || match kind {
                    "plaintext" => drain(TcpTransport::new(s).unwrap()),
                    "unbuffered" => drain(TlsTransport::accept(s, cfg, T).unwrap()),
                    _ => {
                        let conn = rustls::ServerConnection::new(cfg).unwrap();
                        let mut st = StreamOwned::new(conn, BufferedSocket::new(s));
                        handshake(&mut st, T).unwrap();
                        drain(st)
                    }
                });
                let mut c: Box<dyn Transport> = if kind == "plaintext" {
                    Box::new(TcpTransport::new(c).unwrap())
                } else {
                    let cfg = client_config(PinPolicy::Expect(key.fingerprint())).unwrap();
                    Box::new(TlsTransport::connect(c, cfg, T).unwrap())
                };
                let t0 = Instant::now();
                for _ in 0..mib {
                    c.write_all(&chunk).unwrap();
                }
                c.close_write().unwrap();
                let (n, cpu) = srv.join().unwrap();
                let wall = t0.elapsed();
                assert_eq!(n, (mib as u64) << 20);
                eprintln!(
                    "round {round} {kind:>10}: server CPU {:.3} s per GiB, {:.0} MB/s",
                    cpu.as_secs_f64() * 1024.0 / mib as f64,
                    n as f64 / wall.as_secs_f64() / 1e6
                );
            }
        }
    }

    /// The other direction (a download): the server thread's CPU per sent
    /// GiB, this server stream against rustls' buffered one. Run as
    /// [`receive_cpu_unbuffered_against_buffered`].
    #[test]
    #[ignore]
    fn send_cpu_unbuffered_against_buffered() {
        let mib: u64 = std::env::var("BT_RECV_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let key = ServerKey::generate().unwrap();
        for round in 1..=3 {
            for kind in ["unbuffered", "buffered"] {
                let (c, s) = pair();
                let cfg = server_config(&key).unwrap();
                let srv = thread::spawn(move || {
                    let chunk = pattern(1 << 20, 5);
                    let mut w: Box<dyn Write> = if kind == "unbuffered" {
                        Box::new(TlsTransport::accept(s, cfg, T).unwrap())
                    } else {
                        let conn = rustls::ServerConnection::new(cfg).unwrap();
                        let mut st = StreamOwned::new(conn, BufferedSocket::new(s));
                        handshake(&mut st, T).unwrap();
                        Box::new(st)
                    };
                    let t0 = thread_cpu();
                    for _ in 0..mib {
                        w.write_all(&chunk).unwrap();
                    }
                    w.flush().unwrap();
                    thread_cpu() - t0
                });
                let cfg = client_config(PinPolicy::Expect(key.fingerprint())).unwrap();
                let c = TlsTransport::connect(c, cfg, T).unwrap();
                let mut got = 0u64;
                let mut r = c.take(mib << 20);
                let mut buf = vec![0u8; 1 << 20];
                while got < mib << 20 {
                    got += r.read(&mut buf).unwrap() as u64;
                }
                let cpu = srv.join().unwrap();
                eprintln!(
                    "round {round} {kind:>10}: server CPU {:.3} s per GiB sent",
                    cpu.as_secs_f64() * 1024.0 / mib as f64
                );
            }
        }
    }

    #[test]
    fn shutdown_from_another_thread_unblocks_a_read() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::TrustOnFirstUse);
        let (mut c, _s) = (c.unwrap(), s.unwrap());
        c.set_read_timeout(Some(T)).unwrap();
        let stop = c.shutdown_handle();
        let t0 = Instant::now();
        let reader = thread::spawn(move || {
            let mut b = [0u8; 1];
            c.read(&mut b)
        });
        // Let the reader block (no sleep as sync: it cannot read anything
        // before the shutdown, and a read after it ends at once too).
        thread::yield_now();
        stop.shutdown();
        let r = reader.join().unwrap();
        assert!(t0.elapsed() < T, "the read did not wait for its timeout");
        assert!(!matches!(r, Ok(n) if n > 0), "{r:?}");
    }

    /// A server's read waits no longer than its timeout, and a read after
    /// a timeout still gets what comes later.
    #[test]
    fn a_server_read_times_out_then_still_reads() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::TrustOnFirstUse);
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let wait = Duration::from_millis(50);
        s.set_read_timeout(Some(wait)).unwrap();
        let t0 = Instant::now();
        let mut b = [0u8; 8];
        let r = s.read(&mut b);
        let took = t0.elapsed();
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{r:?}"
        );
        assert!(took >= wait && took < T, "waited {took:?}");
        c.write_all(b"later").unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "end of stream after {got:?}");
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"later");
    }

    /// A client that goes away without close_notify is a cut, not an end:
    /// the server's read fails (after everything sent before it).
    #[test]
    fn a_cut_without_close_notify_fails_the_server_read_after_the_data() {
        let key = ServerKey::generate().unwrap();
        let (c, s) = tls_pair(&key, PinPolicy::TrustOnFirstUse);
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let up = pattern(700_000, 5);
        c.write_all(&up).unwrap();
        drop(c);
        s.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        assert!(
            got == up,
            "{} of {} bytes before the cut",
            got.len(),
            up.len()
        );
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{r:?}"
        );
    }

    #[test]
    fn a_relayed_token_proof_fails_on_the_other_connection() {
        use crate::auth::{nonce, Token, ANSWER_LEN, NONCE_LEN};
        let token = Token::generate().unwrap();
        let (real, mitm) = (
            ServerKey::generate().unwrap(),
            ServerKey::generate().unwrap(),
        );
        // client <-A-> man in the middle <-B-> server, both first contacts.
        let (client, mitm_srv) = tls_pair(&mitm, PinPolicy::TrustOnFirstUse);
        let (mitm_cli, server) = tls_pair(&real, PinPolicy::TrustOnFirstUse);
        let (mut client, mut mitm_srv) = (client.unwrap(), mitm_srv.unwrap());
        let (mut mitm_cli, mut server) = (mitm_cli.unwrap(), server.unwrap());
        let (bind_a, bind_b) = (
            client.channel_binding().unwrap(),
            server.channel_binding().unwrap(),
        );
        assert_ne!(bind_a, bind_b);
        let header = b"{\"name\":\"f\"}";
        // The server sends its nonce and proof; the man relays them.
        let n = nonce().unwrap();
        server.write_all(&n).unwrap();
        server
            .write_all(&token.server_proof(&n, &bind_b, header))
            .unwrap();
        server.flush().unwrap();
        let mut relay = [0u8; NONCE_LEN + ANSWER_LEN];
        mitm_cli.read_exact(&mut relay).unwrap();
        mitm_srv.write_all(&relay).unwrap();
        mitm_srv.flush().unwrap();
        let mut got = [0u8; NONCE_LEN + ANSWER_LEN];
        client.read_exact(&mut got).unwrap();
        let (gn, proof) = got.split_at(NONCE_LEN);
        let gn: [u8; NONCE_LEN] = gn.try_into().unwrap();
        assert!(
            !token.check_server_proof(&gn, &bind_a, header, proof),
            "client refuses"
        );
        // Even a client that answered would not get the man in: its answer
        // is bound to connection A, the server checks it against B.
        let answer = token.client_answer(&gn, &bind_a, header);
        client.write_all(&answer).unwrap();
        client.flush().unwrap();
        let mut relay = [0u8; ANSWER_LEN];
        mitm_srv.read_exact(&mut relay).unwrap();
        mitm_cli.write_all(&relay).unwrap();
        mitm_cli.flush().unwrap();
        let mut at_server = [0u8; ANSWER_LEN];
        server.read_exact(&mut at_server).unwrap();
        assert_eq!(at_server, answer, "the bytes did arrive unchanged");
        assert!(!token.check_client_answer(&n, &bind_b, header, &at_server));
        // Without the man, the same exchange succeeds.
        assert!(token.check_client_answer(
            &n,
            &bind_b,
            header,
            &token.client_answer(&n, &bind_b, header)
        ));
    }

    /// Forwards client->server bytes and records them; the other direction
    /// is forwarded unrecorded. Returns (client socket, server socket,
    /// recording).
    fn recording_relay() -> (TcpStream, TcpStream, thread::JoinHandle<Vec<u8>>) {
        let (client, relay_in) = pair();
        let (relay_out, server) = pair();
        let (mut in2, mut out2) = (
            relay_in.try_clone().unwrap(),
            relay_out.try_clone().unwrap(),
        );
        thread::spawn(move || io::copy(&mut out2, &mut in2));
        let rec = thread::spawn(move || {
            let (mut from, mut to, mut seen) = (relay_in, relay_out, Vec::new());
            let mut buf = vec![0u8; 65536];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(net::Shutdown::Write);
            seen
        });
        (client, server, rec)
    }

    #[test]
    fn big_writes_become_full_records_and_no_plaintext_is_on_the_wire() {
        let key = ServerKey::generate().unwrap();
        let (c, s, rec) = recording_relay();
        let server = serve(s, server_config(&key).unwrap());
        let cfg = client_config(PinPolicy::Expect(key.fingerprint())).unwrap();
        let mut c = TlsTransport::connect(c, cfg, T).unwrap();
        let mut s = server.join().unwrap().unwrap();
        let marker = b"MARKER-bigtransfer-plaintext-".repeat(36_160); // ~1 MiB
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            s.read_to_end(&mut got).map(|_| got)
        });
        c.write_all(&marker).unwrap();
        c.close_write().unwrap();
        assert!(reader.join().unwrap().unwrap() == marker);
        let wire = rec.join().unwrap();
        assert!(
            !wire.windows(29).any(|w| w == &marker[..29]),
            "plaintext leaked"
        );
        // Walk the TLS records: type, version, u16 length.
        let (mut at, mut full, mut small) = (0, 0, 0);
        while at + 5 <= wire.len() {
            let len = u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
            if wire[at] == 0x17 {
                if len >= 16 * 1024 {
                    full += 1
                } else {
                    small += 1
                }
            }
            at += 5 + len;
        }
        assert_eq!(at, wire.len(), "the capture is whole records");
        assert_eq!(full, marker.len() / (16 * 1024), "full 16 KiB records");
        // Finished, the tail of the data, close_notify.
        assert!(small <= 3, "{small} short records");
    }

    #[test]
    fn plain_transport_has_no_binding() {
        let (c, s) = pair();
        let mut c = TcpTransport::new(c).unwrap();
        let mut s = TcpTransport::new(s).unwrap();
        assert!(!c.is_encrypted() && c.channel_binding().is_none());
        c.write_all(b"hello").unwrap();
        c.close_write().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        s.shutdown_handle().shutdown();
    }
}
