//! One port, both worlds: what the first byte of a new connection says.
//!
//! A legacy header starts with its u32 big-endian length, at most 64 KiB,
//! so its first byte is `0x00`; a TLS record carrying a ClientHello starts
//! with `0x16` (handshake). Anything else is neither and is refused; for the
//! log, [`describe_stranger`] names the usual wrong peers (a web browser,
//! an ssh client). The byte is only peeked, so the chosen path reads the
//! connection from its start.
//!
//! Not for parsing either protocol.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What a connection's first byte makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    /// `0x00`: the legacy plaintext header (length prefix).
    Plain,
    /// `0x16`: a TLS handshake record (ClientHello).
    Tls,
    /// Anything else: not ours.
    Other(u8),
}

/// Classifies a first byte.
///
/// ```
/// use bigtransfer_core::sniff::{classify, FirstByte};
/// assert_eq!(classify(0x00), FirstByte::Plain);
/// assert_eq!(classify(0x16), FirstByte::Tls);
/// assert_eq!(classify(b'G'), FirstByte::Other(b'G'));
/// ```
pub fn classify(byte: u8) -> FirstByte {
    match byte {
        0x00 => FirstByte::Plain,
        0x16 => FirstByte::Tls,
        b => FirstByte::Other(b),
    }
}

/// Names the peer behind a refused connection from its first bytes, for
/// the log line ("an HTTP client", "an ssh client", or the bytes in hex).
///
/// ```
/// use bigtransfer_core::sniff::describe_stranger;
/// assert_eq!(describe_stranger(b"GET / HTTP/1.1"), "an HTTP client (GET)");
/// assert_eq!(describe_stranger(b"SSH-2.0-OpenSSH"), "an ssh client");
/// assert_eq!(describe_stranger(&[0x80, 1]), "an unknown peer (first bytes 80 01)");
/// ```
pub fn describe_stranger(prefix: &[u8]) -> String {
    const HTTP: [&str; 9] = [
        "GET ", "POST", "HEAD", "PUT ", "DELETE", "OPTIONS", "PATCH", "CONNECT", "PRI ",
    ];
    for m in HTTP {
        let n = m.len().min(prefix.len());
        if n >= 3 && prefix[..n] == m.as_bytes()[..n] {
            return format!("an HTTP client ({})", m.trim_end());
        }
    }
    if prefix.starts_with(b"SSH-") {
        return "an ssh client".into();
    }
    let hex: Vec<String> = prefix.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("an unknown peer (first bytes {})", hex.join(" "))
}

/// Peeks at the first bytes of `sock` (up to `buf.len()`, at least one)
/// without consuming them, waiting at most `deadline`. Returns how many
/// bytes were seen; `Ok(0)` when the peer closed without sending, a
/// `TimedOut` error when it sent nothing in time. The socket's read timeout
/// is restored afterwards.
pub fn peek(sock: &TcpStream, buf: &mut [u8], deadline: Duration) -> io::Result<usize> {
    let before = sock.read_timeout()?;
    let r = peek_within(sock, buf, deadline);
    sock.set_read_timeout(before)?;
    r
}

fn peek_within(sock: &TcpStream, buf: &mut [u8], deadline: Duration) -> io::Result<usize> {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer sent nothing within {deadline:?}"),
            ));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.peek(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Peeks the first byte under `deadline` and classifies it; `Ok(None)`
/// when the peer closed without sending anything.
pub fn sniff(sock: &TcpStream, deadline: Duration) -> io::Result<Option<FirstByte>> {
    let mut b = [0u8; 1];
    Ok(match peek(sock, &mut b, deadline)? {
        0 => None,
        _ => Some(classify(b[0])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn every_first_byte_has_one_meaning() {
        let plain = (0..=255u8).filter(|b| classify(*b) == FirstByte::Plain);
        assert_eq!(plain.collect::<Vec<_>>(), vec![0]);
        let tls = (0..=255u8).filter(|b| classify(*b) == FirstByte::Tls);
        assert_eq!(tls.collect::<Vec<_>>(), vec![0x16]);
        // Every legal legacy header length (1..=64 KiB) starts with 0x00.
        assert_eq!(65536u32.to_be_bytes()[0], 0);
        assert_eq!(classify(b'{'), FirstByte::Other(b'{'));
    }

    #[test]
    fn strangers_are_named() {
        assert_eq!(describe_stranger(b"POST /x"), "an HTTP client (POST)");
        assert_eq!(
            describe_stranger(b"HEAD / HTTP/1.0"),
            "an HTTP client (HEAD)"
        );
        assert_eq!(describe_stranger(b"PRI * HTTP/2.0"), "an HTTP client (PRI)");
        assert_eq!(
            describe_stranger(b"GE"),
            "an unknown peer (first bytes 47 45)"
        );
        assert_eq!(describe_stranger(b""), "an unknown peer (first bytes )");
        assert_eq!(
            describe_stranger(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            "an unknown peer (first bytes 01 02 03 04 05 06 07 08)"
        );
    }

    #[test]
    fn peek_leaves_the_bytes_for_the_chosen_path() {
        let (mut c, mut s) = pair();
        c.write_all(&[0x16, 3, 1]).unwrap();
        assert_eq!(
            sniff(&s, Duration::from_secs(5)).unwrap(),
            Some(FirstByte::Tls)
        );
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, [0x16, 3, 1]);
        assert_eq!(s.read_timeout().unwrap(), None, "timeout restored");
    }

    #[test]
    fn silence_times_out_and_close_is_none() {
        let (c, s) = pair();
        let t0 = Instant::now();
        let e = sniff(&s, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(c);
        assert_eq!(sniff(&s, Duration::from_secs(5)).unwrap(), None);
    }

    #[test]
    fn an_http_request_is_refused_and_named() {
        let (mut c, s) = pair();
        c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut b = [0u8; 8];
        let n = peek(&s, &mut b, Duration::from_secs(5)).unwrap();
        assert_eq!(classify(b[0]), FirstByte::Other(b'G'));
        assert_eq!(describe_stranger(&b[..n]), "an HTTP client (GET)");
    }
}
