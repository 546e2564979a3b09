//! The client against servers that lie, stall, fail or are not bigtransfer
//! servers at all: small fake servers on loopback, each speaking just enough
//! of the wire (read the header, answer with chosen bytes) to drive the
//! client into one situation. Checks that retries run out, that nothing is
//! sent on a bad repair list, that transient faults are retried and
//! permanent ones not, that peer text is escaped, and that a foreign peer is
//! named quickly. Not for the real server (see the e2e suite).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bigtransfer_core::v2::{self, FaultCode, ServerMsg, Verdict};
use bigtransfer_core::{send_file, Control, ErrorKind, Protocol, SendOptions};

const MIB: usize = 1 << 20;

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> Scratch {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("bt-limits-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8 ^ seed).collect()
}

/// What a fake server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicU32,
    /// Bytes received after the header, over all connections.
    bytes: AtomicU64,
    /// Bytes received after the first verdict of a connection.
    after_verdict: AtomicU64,
    /// Verdict frames sent.
    verdicts: AtomicU32,
}

/// A fake server on loopback: `handle` runs for each connection, one at a
/// time, until `MAX_CONNECTIONS` (so a client that never gives up is still
/// stopped, by refused connections) or until dropped.
struct Fake {
    port: u16,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const MAX_CONNECTIONS: u32 = 25;

impl Fake {
    fn start(handle: impl Fn(TcpStream, &Seen) + Send + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst)
                && s.connections.load(Ordering::SeqCst) < MAX_CONNECTIONS
            {
                match listener.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                        // A TLS hello is closed on, uncounted: the fakes
                        // play plaintext servers (the client falls back).
                        let mut b = [0u8; 1];
                        if matches!(c.peek(&mut b), Ok(1) if b[0] == 0x16) {
                            continue;
                        }
                        s.connections.fetch_add(1, Ordering::SeqCst);
                        handle(c, &s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Fake {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> u32 {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the client's header; returns its JSON.
fn read_header(c: &mut TcpStream) -> Option<String> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len).ok()?;
    let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut json).ok()?;
    String::from_utf8(json).ok()
}

fn send_msg(c: &mut TcpStream, m: &ServerMsg) {
    let _ = c.write_all(&v2::encode_server_msg(m));
}

/// Greets as a version-2 server holding nothing of the file.
fn greet_empty(c: &mut TcpStream) {
    let _ = c.write_all(&v2::MAGIC);
    send_msg(
        c,
        &ServerMsg::Held {
            held: 0,
            block_size: MIB as u64,
            crcs: vec![],
        },
    );
}

/// Reads client frames up to and including the end frame; false if the
/// connection ended first.
fn read_until_end(c: &mut TcpStream, seen: &Seen) -> bool {
    loop {
        let mut tag = [0u8; 1];
        if c.read_exact(&mut tag).is_err() {
            return false;
        }
        let Ok(n) = v2::client_head_len(tag[0]) else {
            return false;
        };
        let mut rest = vec![0u8; n];
        if c.read_exact(&mut rest).is_err() {
            return false;
        }
        seen.bytes.fetch_add(1 + n as u64, Ordering::SeqCst);
        if tag[0] == b'E' {
            return true;
        }
        let len = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as u64 + 4;
        match std::io::copy(&mut (&mut *c).take(len), &mut std::io::sink()) {
            Ok(got) => seen.bytes.fetch_add(got, Ordering::SeqCst),
            Err(_) => return false,
        };
    }
}

fn drain(c: &mut TcpStream) -> u64 {
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    std::io::copy(c, &mut std::io::sink()).unwrap_or(0)
}

fn options(port: u16, retries: u32) -> SendOptions {
    let mut o = SendOptions::new("127.0.0.1", port);
    o.retries = retries;
    o.cache_dir = None;
    o.known_hosts = None;
    o.backoff_initial = Duration::from_millis(5);
    o.backoff_max = Duration::from_millis(20);
    o.io_timeout = Duration::from_secs(10);
    o
}

fn source(dir: &Path, len: usize) -> PathBuf {
    let p = dir.join("src.bin");
    std::fs::write(&p, pattern(len, 0)).unwrap();
    p
}

fn go(path: &Path, o: &SendOptions) -> bigtransfer_core::Result<bigtransfer_core::Outcome> {
    send_file(path, o, &mut |_| Control::Continue)
}

// ---- A: a lying server cannot hold the client or amplify traffic ----

#[test]
fn a_server_that_never_gives_a_verdict_uses_up_the_retries() {
    // Takes every block, then answers the end frame with garbage: before,
    // each attempt "moved" (it sent bytes), so the budget never ran out and
    // only the fake's connection limit stopped the client.
    let fake = Fake::start(|mut c, seen| {
        if read_header(&mut c).is_some() {
            greet_empty(&mut c);
            if read_until_end(&mut c, seen) {
                let _ = c.write_all(b"?garbage");
            }
        }
    });
    let dir = tempdir("noverdict");
    let path = source(&dir, 3 * MIB);
    let e = go(&path, &options(fake.port, 3)).expect_err("a lying server must be given up on");
    assert_eq!(fake.connections(), 4, "{e}");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("retries exhausted"), "{e}");
    // Each of the 4 attempts sent the file once, no more.
    let sent = fake.seen.bytes.load(Ordering::SeqCst);
    assert!(sent < 4 * (3 * MIB as u64 + 1024), "{sent}");
}

#[test]
fn a_legacy_server_that_drops_every_connection_uses_up_the_retries() {
    let fake = Fake::start(|mut c, seen| {
        if read_header(&mut c).is_some() {
            let _ = c.write_all(&0u64.to_be_bytes());
            let got = std::io::copy(&mut (&mut c).take(MIB as u64), &mut std::io::sink());
            seen.bytes.fetch_add(got.unwrap_or(0), Ordering::SeqCst);
        }
    });
    let dir = tempdir("legacydrop");
    let path = source(&dir, 3 * MIB);
    let mut o = options(fake.port, 2);
    o.protocol = Protocol::Legacy;
    let e = go(&path, &o).expect_err("no progress was ever confirmed");
    assert_eq!(fake.connections(), 3, "{e}");
    assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
}

#[test]
fn confirmed_progress_still_survives_any_number_of_cuts() {
    // A legacy server that checkpoints 512 KiB more on every connection and
    // cuts it, 9 times, then takes the rest: with 1 retry the client must
    // still finish, because each reconnection confirms more.
    let count = AtomicU32::new(0);
    let fake = Fake::start(move |mut c, _| {
        if read_header(&mut c).is_none() {
            return;
        }
        let n = count.fetch_add(1, Ordering::SeqCst) as u64;
        let offset = n * (MIB as u64 / 2);
        let _ = c.write_all(&offset.to_be_bytes());
        if n < 9 {
            let _ = std::io::copy(&mut (&mut c).take(MIB as u64 / 2), &mut std::io::sink());
            return;
        }
        let want = 5 * MIB as u64 + 3 - offset;
        let _ = std::io::copy(&mut (&mut c).take(want), &mut std::io::sink());
        let _ = c.write_all(b"CRC32_OK");
    });
    let dir = tempdir("cuts");
    let path = source(&dir, 5 * MIB + 3);
    let mut o = options(fake.port, 1);
    o.protocol = Protocol::Legacy;
    let out = go(&path, &o).expect("each reconnection confirmed progress");
    assert_eq!(out.attempts, 10);
    assert_eq!(fake.connections(), 10);
}

/// A version-2 fake that takes the whole file and then answers every end
/// frame with the repair list `list(round)`.
fn repair_fake(list: fn(u64) -> Vec<u64>) -> Fake {
    Fake::start(move |mut c, seen| {
        if read_header(&mut c).is_none() {
            return;
        }
        greet_empty(&mut c);
        let mut at_first = None;
        let mut round = 0;
        while round < 100 && read_until_end(&mut c, seen) {
            at_first.get_or_insert(seen.bytes.load(Ordering::SeqCst));
            send_msg(&mut c, &ServerMsg::Verdict(Verdict::Repair(list(round))));
            seen.verdicts.fetch_add(1, Ordering::SeqCst);
            round += 1;
        }
        let rest = drain(&mut c);
        if let Some(at) = at_first {
            let after = seen.bytes.load(Ordering::SeqCst) - at + rest;
            seen.after_verdict.fetch_add(after, Ordering::SeqCst);
        }
    })
}

#[test]
fn a_repair_list_naming_a_block_twice_is_refused_before_sending() {
    // Before: block 0 named 2,000 times was sent 2,000 times.
    let fake = repair_fake(|_| vec![0; 2000]);
    let dir = tempdir("repairdup");
    let path = source(&dir, 3 * MIB);
    let e = go(&path, &options(fake.port, 0)).expect_err("a bad repair list");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("repair"), "{e}");
    let sent = fake.seen.bytes.load(Ordering::SeqCst);
    assert!(
        sent < 3 * MIB as u64 + 1024,
        "sent {sent} bytes for a 3 MiB file"
    );
}

#[test]
fn a_repair_list_with_a_bad_index_sends_nothing() {
    // Block 1 is valid, block 7 is not: nothing of the list may be sent.
    let fake = repair_fake(|_| vec![1, 7]);
    let dir = tempdir("repairidx");
    let path = source(&dir, 3 * MIB);
    let e = go(&path, &options(fake.port, 0)).expect_err("a bad repair list");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert_eq!(fake.seen.after_verdict.load(Ordering::SeqCst), 0, "{e}");
    let sent = fake.seen.bytes.load(Ordering::SeqCst);
    assert!(sent < 3 * MIB as u64 + 1024, "{sent}");
}

#[test]
fn repair_rounds_are_capped_on_the_client() {
    // Before: the client answered every round (16,261 in 20 s).
    let fake = repair_fake(|r| vec![r % 3]);
    let dir = tempdir("repaircap");
    let path = source(&dir, 3 * MIB);
    let e = go(&path, &options(fake.port, 0)).expect_err("endless repair");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("repair"), "{e}");
    let rounds = fake.seen.verdicts.load(Ordering::SeqCst);
    assert!(
        rounds as u64 <= u64::from(bigtransfer_core::client::MAX_REPAIR_ROUNDS) + 1,
        "{rounds} rounds"
    );
}

#[test]
fn peer_text_is_escaped_before_it_reaches_an_error() {
    for n in 0..3 {
        let fake = match n {
            0 => Fake::start(|mut c, _| {
                if read_header(&mut c).is_some() {
                    let _ = c.write_all(&v2::MAGIC);
                    send_msg(
                        &mut c,
                        &ServerMsg::Fault(FaultCode::NameRefused, "no\x1b[2J\u{202e}txt".into()),
                    );
                }
            }),
            1 => Fake::start(|mut c, _| {
                if read_header(&mut c).is_some() {
                    let _ = c.write_all(&v2::MAGIC);
                    send_msg(&mut c, &ServerMsg::Error("no\x1b[2J\u{202e}txt".into()));
                }
            }),
            _ => Fake::start(|mut c, seen| {
                if read_header(&mut c).is_some() {
                    greet_empty(&mut c);
                    if read_until_end(&mut c, seen) {
                        send_msg(
                            &mut c,
                            &ServerMsg::Verdict(Verdict::Failed("no\x1b[2J\u{202e}txt".into())),
                        );
                    }
                }
            }),
        };
        let dir = tempdir(&format!("escape{n}"));
        let path = source(&dir, 1000);
        let e = go(&path, &options(fake.port, 0)).expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("no\\u{1b}[2J\\u{202e}txt"),
            "case {n}: {text}"
        );
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "case {n}"
        );
    }
}

// ---- C: coded faults: transient ones are retried, permanent ones not ----

fn fault_fake(code: FaultCode) -> Fake {
    Fake::start(move |mut c, _| {
        if read_header(&mut c).is_some() {
            let _ = c.write_all(&v2::MAGIC);
            send_msg(
                &mut c,
                &ServerMsg::Fault(code, format!("fault {code:?} here")),
            );
        }
    })
}

#[test]
fn transient_faults_are_retried_until_the_budget_runs_out() {
    for code in [
        FaultCode::TakenOver,
        FaultCode::Busy,
        FaultCode::Storage,
        FaultCode::ShuttingDown,
        FaultCode::TooSlow,
        FaultCode::Internal,
    ] {
        assert!(code.is_transient());
        let fake = fault_fake(code);
        let dir = tempdir("transient");
        let path = source(&dir, 1000);
        let e = go(&path, &options(fake.port, 2)).expect_err("the server never recovers");
        assert_eq!(fake.connections(), 3, "{code:?}: {e}");
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{code:?}: {e}");
        let text = e.to_string();
        assert!(text.contains(&format!("fault {code:?} here")), "{text}");
        assert!(text.contains("retries exhausted"), "{text}");
    }
}

#[test]
fn permanent_faults_are_not_retried() {
    for code in [
        FaultCode::BadRequest,
        FaultCode::NameRefused,
        FaultCode::TooLarge,
        FaultCode::NoSpace,
        FaultCode::AuthRequired,
        FaultCode::AuthFailed,
        FaultCode::Unknown(999),
    ] {
        let fake = fault_fake(code);
        let dir = tempdir("permanent");
        let path = source(&dir, 1000);
        let e = go(&path, &options(fake.port, 3)).expect_err("refused");
        assert_eq!(fake.connections(), 1, "{code:?}: {e}");
        assert_eq!(e.kind(), ErrorKind::Refused, "{code:?}: {e}");
        assert!(
            e.to_string().contains(&format!("fault {code:?} here")),
            "{e}"
        );
    }
}

// ---- D: a peer that is not a bigtransfer server is named quickly ----

#[test]
fn an_http_server_is_named_as_such_at_once() {
    for protocol in [Protocol::Auto, Protocol::Legacy] {
        let fake = Fake::start(|mut c, _| {
            let _ = read_header(&mut c);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let _ = c.shutdown(std::net::Shutdown::Write);
            drain(&mut c);
        });
        let dir = tempdir("http");
        let path = source(&dir, 1000);
        let mut o = options(fake.port, 3);
        o.protocol = protocol;
        let e = go(&path, &o).expect_err("not our server");
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        let want = format!(
            "127.0.0.1:{} is not a bigtransfer server (it answered like an HTTP server)",
            fake.port
        );
        assert!(e.to_string().contains(&want), "{protocol:?}: {e}");
        // Not retried: no retry can make it one.
        assert_eq!(fake.connections(), 1, "{protocol:?}");
    }
}

#[test]
fn an_ssh_server_is_named_as_such() {
    let fake = Fake::start(|mut c, _| {
        let _ = c.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
        drain(&mut c);
    });
    let dir = tempdir("ssh");
    let path = source(&dir, 1000);
    let e = go(&path, &options(fake.port, 3)).expect_err("not our server");
    assert!(
        e.to_string()
            .contains("is not a bigtransfer server (it answered like an SSH server)"),
        "{e}"
    );
    assert_eq!(fake.connections(), 1);
}

#[test]
fn a_silent_peer_is_named_within_the_handshake_timeout() {
    // Reads our header and says nothing (as an HTTP server waiting for the
    // end of a request does). Before: 60 s of silence per attempt.
    let fake = Fake::start(|mut c, _| {
        let _ = read_header(&mut c);
        drain(&mut c);
    });
    let dir = tempdir("silent");
    let path = source(&dir, 1000);
    let mut o = options(fake.port, 3);
    o.handshake_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let e = go(&path, &o).expect_err("not our server");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "took {took:?}: {e}");
    let want = format!(
        "127.0.0.1:{} is not a bigtransfer server (it sent nothing within 0.3 s of our header)",
        fake.port
    );
    assert!(e.to_string().contains(&want), "{e}");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

#[test]
fn handshake_timeout_defaults_to_ten_seconds() {
    assert_eq!(
        SendOptions::new("h", 1).handshake_timeout,
        Duration::from_secs(10)
    );
}

#[test]
fn a_dribbling_peer_is_named_within_the_handshake_timeout_too() {
    // One byte every 100 ms, 7 in all: each byte must not buy more time.
    let fake = Fake::start(|mut c, _| {
        let _ = read_header(&mut c);
        for _ in 0..7 {
            if c.write_all(&[0]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drain(&mut c);
    });
    let dir = tempdir("dribble");
    let path = source(&dir, 1000);
    let mut o = options(fake.port, 0);
    o.handshake_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let e = go(&path, &o).expect_err("not our server");
    let took = started.elapsed();
    // Re-armed by each byte it would end 300 ms after the 7th, at 900 ms.
    assert!(took < Duration::from_millis(800), "took {took:?}: {e}");
    assert!(
        e.to_string().contains("bytes within 0.3 s of our header"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}
