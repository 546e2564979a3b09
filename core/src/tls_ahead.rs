//! Read-ahead for a TLS connection: a thread of its own receives and
//! decrypts the peer's records while the connection's owner works on what
//! came before (a server writes an upload to disk), so decryption and the
//! disk write run on two cores instead of taking turns on one. The owner
//! reads plaintext from a short queue of buffers; it writes as before,
//! both sides sharing the one rustls connection under a lock (held for a
//! batch of records, never while waiting for the network).
//!
//! Not the record handling itself ([`crate::tls_stream`]) nor the
//! [`Transport`](crate::transport::Transport) seam ([`crate::transport`]).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::SupportedCipherSuite;

use crate::tls_stream::{Opened, Side, TlsStream};

/// Plaintext decrypted per buffer handed over (about 16 records).
const BATCH: usize = 256 * 1024;

/// Buffers decrypted ahead and not yet read: with the one being filled and
/// the one being read, at most about 1 MiB of plaintext per connection.
const QUEUED: usize = 2;

/// The read-ahead thread's stack: it only moves buffers and calls rustls.
const STACK: usize = 256 * 1024;

/// What the read-ahead thread sends the owner.
enum Ahead {
    Plain(Vec<u8>),
    /// The peer closed the connection cleanly (close_notify).
    Closed,
    Failed(io::Error),
}

/// How the peer's side of the connection ended.
#[derive(Debug, Clone, Copy)]
enum End {
    /// close_notify: reads return 0 from now on.
    Clean,
    /// A cut or a TLS error: reads fail with this kind from now on.
    Failed(io::ErrorKind),
}

/// A TLS stream whose receiving side runs ahead on its own thread.
pub struct ReadAhead<C: Side> {
    conn: Arc<Mutex<TlsStream<C>>>,
    sock: TcpStream,
    rx: Option<Receiver<Ahead>>,
    /// Read buffers go back to the thread for reuse (no allocation, no
    /// fresh pages per batch).
    spent: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
    /// How reads end, once they have.
    ended: Option<End>,
    timeout: Mutex<Option<Duration>>,
    thread: Option<JoinHandle<()>>,
}

impl<C: Side + 'static> ReadAhead<C> {
    /// Starts reading ahead on `stream` (its handshake done). If no thread
    /// can be started, the stream comes back unchanged.
    pub fn start(mut stream: TlsStream<C>) -> Result<ReadAhead<C>, TlsStream<C>> {
        let Ok(sock) = stream.sock.try_clone() else {
            return Err(stream);
        };
        let Ok(reader_sock) = stream.sock.try_clone() else {
            return Err(stream);
        };
        let (inb, start, end, pending) = stream.hand_over_reading();
        let conn = Arc::new(Mutex::new(stream));
        let (tx, rx) = mpsc::sync_channel(QUEUED);
        let (spent, reuse) = mpsc::sync_channel(QUEUED + 2);
        let reader = Reader {
            conn: conn.clone(),
            sock: reader_sock,
            inb,
            start,
            end,
            tx,
            reuse,
        };
        let spawned = std::thread::Builder::new()
            .name("bt-tls-read".into())
            .stack_size(STACK)
            .spawn(move || reader.run());
        let thread = match spawned {
            Ok(t) => t,
            Err(_) => return Err(Self::take_back(conn)),
        };
        Ok(ReadAhead {
            conn,
            sock,
            rx: Some(rx),
            spent,
            cur: pending,
            at: 0,
            ended: None,
            timeout: Mutex::new(None),
            thread: Some(thread),
        })
    }

    /// The stream back from a thread that never started (no other owner).
    fn take_back(conn: Arc<Mutex<TlsStream<C>>>) -> TlsStream<C> {
        match Arc::try_unwrap(conn) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
            // Unreachable: the closure holding the other reference was
            // dropped with the failed spawn.
            Err(_) => unreachable!("read-ahead stream shared without a thread"),
        }
    }
}

impl<C: Side> ReadAhead<C> {
    /// The socket (timeouts on writes, shutdown, peer address, TCP_INFO).
    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    /// How long a read waits for the peer (`None`: for ever); stands in
    /// for the socket's read timeout, which the thread does not use.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        if t == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        *self.timeout.lock().unwrap_or_else(|p| p.into_inner()) = t;
        Ok(())
    }

    fn conn(&self) -> io::Result<MutexGuard<'_, TlsStream<C>>> {
        self.conn
            .lock()
            .map_err(|_| io::Error::other("the TLS connection's read-ahead thread failed"))
    }

    /// The negotiated cipher suite.
    pub fn negotiated_cipher_suite(&self) -> Option<SupportedCipherSuite> {
        self.conn().ok()?.negotiated_cipher_suite()
    }

    /// Sends close_notify (then nothing more may be written).
    pub fn send_close_notify(&mut self) -> io::Result<()> {
        self.conn()?.send_close_notify()
    }

    /// Takes the next buffer from the thread: waiting within the read
    /// timeout when `wait`, else only if one is there. `Ok(false)`: none
    /// (not waiting) or the peer closed cleanly.
    fn next(&mut self, wait: bool) -> io::Result<bool> {
        let Some(rx) = self.rx.as_ref() else {
            return Ok(false);
        };
        let timeout = *self.timeout.lock().unwrap_or_else(|p| p.into_inner());
        let got = match (wait, timeout) {
            (false, _) => rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
            (true, Some(t)) => rx.recv_timeout(t),
            (true, None) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(Ahead::Plain(v)) => {
                let old = std::mem::replace(&mut self.cur, v);
                let _ = self.spent.try_send(old);
                self.at = 0;
                Ok(true)
            }
            Ok(Ahead::Closed) => {
                self.ended = Some(End::Clean);
                Ok(false)
            }
            Ok(Ahead::Failed(e)) => {
                self.ended = Some(End::Failed(e.kind()));
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) if wait => Err(io::ErrorKind::WouldBlock.into()),
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = Some(End::Failed(io::ErrorKind::UnexpectedEof));
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the TLS connection's read-ahead thread stopped",
                ))
            }
        }
    }

    /// Copies what is buffered into `buf`.
    fn take(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.cur[self.at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        n
    }
}

impl<C: Side> Read for ReadAhead<C> {
    /// What is decrypted, up to `buf`'s length; waits only when nothing is.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        loop {
            n += self.take(&mut buf[n..]);
            if n == buf.len() {
                return Ok(n);
            }
            match self.ended {
                Some(End::Clean) => return Ok(n),
                Some(End::Failed(_)) if n > 0 => return Ok(n),
                Some(End::Failed(kind)) => return Err(kind.into()),
                None => {}
            }
            match self.next(n == 0) {
                Ok(true) => {}
                Ok(false) if self.ended.is_some() => {}
                Ok(false) => return Ok(n),
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<C: Side> Write for ReadAhead<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn()?.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.conn()?.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn()?.flush()
    }
}

impl<C: Side> Drop for ReadAhead<C> {
    /// Stops the thread: one handing over a buffer sees the queue gone, one
    /// receiving sees the socket shut (the connection ends with this
    /// stream in any case).
    fn drop(&mut self) {
        self.rx = None;
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The read-ahead thread's side.
struct Reader<C: Side> {
    conn: Arc<Mutex<TlsStream<C>>>,
    sock: TcpStream,
    /// Received bytes; `inb[start..end]` not yet decrypted.
    inb: Box<[u8]>,
    start: usize,
    end: usize,
    tx: SyncSender<Ahead>,
    reuse: Receiver<Vec<u8>>,
}

impl<C: Side> Reader<C> {
    fn run(mut self) {
        let end = self.pump();
        let _ = self.tx.send(end);
    }

    /// Decrypts and hands over until the connection ends: how it ended.
    fn pump(&mut self) -> Ahead {
        loop {
            let mut out = self
                .reuse
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH + 2 * 16384));
            out.clear();
            let opened = match self.conn.lock() {
                Ok(mut c) => c.open_records(&mut self.inb[self.start..self.end], &mut out, BATCH),
                Err(_) => {
                    return Ahead::Failed(io::Error::other("the TLS connection's writer failed"))
                }
            };
            let why = match opened {
                Ok((used, why)) => {
                    self.start += used;
                    why
                }
                Err(e) => return Ahead::Failed(e),
            };
            if !out.is_empty() && self.tx.send(Ahead::Plain(out)).is_err() {
                return Ahead::Closed; // The owner is gone; nobody reads this.
            }
            match why {
                Opened::Full => {}
                Opened::PeerClosed => return Ahead::Closed,
                Opened::NeedInput => {
                    if let Err(e) = self.receive() {
                        return Ahead::Failed(e);
                    }
                }
            }
        }
    }

    /// Receives more after what is not yet decrypted (moved to the front
    /// when the buffer's end is reached: at most one partial record).
    fn receive(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.inb.len() {
            self.inb.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            match (&self.sock).read(&mut self.inb[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
