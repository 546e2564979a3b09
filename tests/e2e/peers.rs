//! The CLI against peers that are not a healthy bigtransfer server: a
//! foreign service on the port, a server that keeps failing temporarily,
//! one that refuses for good. Checks the exit codes and words a user sees
//! (the engine's limits are tested on fakes in core/tests/client_limits.rs).
//! Not for the real server's refusals (see verified.rs).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bigtransfer_core::v2::{self, FaultCode, ServerMsg};

use crate::harness::{client, isolate_cache, stderr, write_random};

/// Serves `handle` to every connection on loopback until the test ends;
/// returns the port and the count of connections.
fn fake(handle: fn(TcpStream)) -> (String, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let n = Arc::new(AtomicU32::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            // A TLS hello is closed on, uncounted: these fakes play
            // plaintext servers, which the client then reaches in plaintext.
            if is_tls_hello(&c) {
                continue;
            }
            count.fetch_add(1, Ordering::SeqCst);
            let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
            handle(c);
        }
    });
    (port, n)
}

/// Whether the connection opens with a TLS handshake record.
pub fn is_tls_hello(c: &TcpStream) -> bool {
    let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
    let mut b = [0u8; 1];
    matches!(c.peek(&mut b), Ok(1) if b[0] == 0x16)
}

fn read_header(c: &mut TcpStream) {
    let mut len = [0u8; 4];
    if c.read_exact(&mut len).is_ok() {
        let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
        let _ = c.read_exact(&mut json);
    }
}

fn fault(mut c: TcpStream, code: FaultCode) {
    read_header(&mut c);
    let _ = c.write_all(&v2::MAGIC);
    let words = format!("fault {code:?}\x1b[2J here");
    let _ = c.write_all(&v2::encode_server_msg(&ServerMsg::Fault(code, words)));
}

fn run(port: &str, retries: &str) -> std::process::Output {
    isolate_cache();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("x.bin");
    write_random(&src, 5000, 9);
    let args = ["--host", "127.0.0.1", "--port", port, "--retries", retries];
    let mut all: Vec<&str> = args.to_vec();
    all.push(src.to_str().unwrap());
    client(&all, b"", &[])
}

#[test]
fn an_http_server_on_the_port_is_named_at_once_with_exit_1() {
    let (port, n) = fake(|mut c| {
        read_header(&mut c);
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let _ = c.shutdown(std::net::Shutdown::Write);
        let _ = std::io::copy(&mut c, &mut std::io::sink());
    });
    let started = Instant::now();
    let out = run(&port, "5");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "127.0.0.1:{port} is not a bigtransfer server (it answered like an HTTP server)"
        )),
        "{err}"
    );
    assert_eq!(n.load(Ordering::SeqCst), 1, "a foreign peer is not retried");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
}

#[test]
fn a_temporary_fault_is_retried_then_exits_4_in_the_servers_words() {
    let (port, n) = fake(|c| fault(c, FaultCode::Busy));
    let out = run(&port, "2");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(n.load(Ordering::SeqCst), 3, "{err}");
    assert!(err.contains("fault Busy\\u{1b}[2J here"), "{err}");
    assert!(err.contains("retries exhausted"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "escape sequence reached the terminal"
    );
}

#[test]
fn a_permanent_fault_exits_6_without_retrying() {
    let (port, n) = fake(|c| fault(c, FaultCode::TooLarge));
    let out = run(&port, "3");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert_eq!(n.load(Ordering::SeqCst), 1, "{err}");
    assert!(
        err.contains("server: fault TooLarge\\u{1b}[2J here"),
        "{err}"
    );
}
