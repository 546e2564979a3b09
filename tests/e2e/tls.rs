//! TLS end to end: what crosses the wire, what a damaged or intercepted
//! connection does, key pinning (first contact, a changed key, a
//! downgrade to plaintext), the token inside TLS, and the server's
//! `--tls` modes. Proxies and the man in the middle are written here, on
//! loopback. Not for the TLS pieces alone (core's transport and tls tests).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigtransfer_core::tls::{client_config, server_config, PinPolicy, ServerKey};
use bigtransfer_core::transport::{TlsTransport, Transport};

use crate::harness::*;

const MIB: u64 = 1 << 20;

/// A loopback proxy to a target that the test may switch, recording the
/// client-to-server bytes of every connection and flipping one bit at
/// byte `flip_at` of the first connection that gets that far. Stops
/// accepting after a minute.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    /// Client-to-server bytes, one entry per connection.
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Proxy {
    fn start(target: SocketAddr, flip_at: Option<u64>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let target = Arc::new(Mutex::new(target));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (t2, s2) = (Arc::clone(&target), Arc::clone(&seen));
        let flipped = Arc::new(AtomicBool::new(flip_at.is_none()));
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let to = *t2.lock().unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let idx = {
                    let mut s = s2.lock().unwrap();
                    s.push(Vec::new());
                    s.len() - 1
                };
                let (s3, f3) = (Arc::clone(&s2), Arc::clone(&flipped));
                std::thread::spawn(move || {
                    relay_up(client, server, flip_at.unwrap_or(u64::MAX), &f3, &s3, idx)
                });
            }
        });
        Proxy { addr, target, seen }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    fn switch_to(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    fn connections(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

/// Forwards client to server (recording, maybe flipping a bit) and server
/// to client; either end closing closes both.
fn relay_up(
    mut client: TcpStream,
    mut server: TcpStream,
    flip_at: u64,
    flipped: &AtomicBool,
    seen: &Mutex<Vec<Vec<u8>>>,
    idx: usize,
) {
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    while let Ok(n @ 1..) = client.read(&mut buf) {
        if pos <= flip_at && flip_at < pos + n as u64 && !flipped.swap(true, Ordering::SeqCst) {
            buf[(flip_at - pos) as usize] ^= 0x10;
        }
        pos += n as u64;
        seen.lock().unwrap()[idx].extend_from_slice(&buf[..n]);
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
}

/// The `fingerprint SHA256:...` the server printed after `listening on`.
fn fingerprint_of(srv: &ServerProc) -> String {
    assert!(srv.out.wait_for("fingerprint ", LONG), "{}", srv.out.text());
    let text = srv.out.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("fingerprint "))
        .unwrap();
    line["fingerprint ".len()..].to_string()
}

/// `client --host 127.0.0.1 --port PORT --json --quiet --no-cache
/// --known-hosts KH EXTRA... FILE`.
fn send_via(port: &str, kh: &Path, file: &Path, extra: &[&str]) -> std::process::Output {
    let kh = kh.to_str().unwrap();
    let mut args = vec![
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--json",
        "--quiet",
        "--no-cache",
        "--known-hosts",
        kh,
        "--retries",
        "2",
    ];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    client(&args, b"", &[])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_upload_shows_nothing_of_the_file_on_the_wire_and_pins_the_key() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let fp = fingerprint_of(&srv);
    let proxy = Proxy::start(srv.addr, None);
    let marker = b"MARKER-bigtransfer-plaintext!";
    let src = t.path().join("marked.bin");
    let body = marker.repeat((4 * MIB) as usize / marker.len());
    std::fs::write(&src, &body).unwrap();
    let kh = t.path().join("known_hosts");
    // Uncompressed, so that only the encryption can hide the marker.
    let out = send_via(&proxy.port(), &kh, &src, &["--compress", "off"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("\"encrypted\": true"),
        "{}",
        stdout(&out)
    );
    assert_same_file(&src, &t.path().join("store/marked.bin"));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("first contact with 127.0.0.1:{}", proxy.port()))
            && err.contains(&fp),
        "{err}"
    );
    let pinned = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(pinned, format!("127.0.0.1:{} {fp}\n", proxy.port()));
    let wire = proxy.connections().concat();
    assert!(wire.len() as u64 > 4 * MIB, "{} bytes captured", wire.len());
    assert_eq!(wire[0], 0x16, "the connection opens with a TLS hello");
    assert!(
        !contains(&wire, marker),
        "the file's bytes crossed the wire in clear"
    );
    assert!(
        !contains(&wire, b"marked.bin"),
        "the file name crossed the wire in clear"
    );
    // A second upload: no notice, the pin holds.
    let out = send_via(&proxy.port(), &kh, &src, &["--name", "again.bin"]);
    assert_ok(&out);
    assert!(!stderr(&out).contains("first contact"), "{}", stderr(&out));
    // The fingerprint is printed again on demand, the same.
    let again = std::process::Command::new(BIN)
        .args(["fingerprint", "--dir"])
        .arg(t.path().join("store"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("fingerprint {fp}\n")
    );
}

#[test]
fn a_bit_flipped_inside_tls_breaks_the_connection_and_the_retry_completes() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let proxy = Proxy::start(srv.addr, Some(5 * MIB + MIB / 2));
    let src = t.path().join("flip.bin");
    write_random(&src, 8 * MIB + 3, 91);
    let out = send_via(&proxy.port(), &t.path().join("kh"), &src, &[]);
    assert_ok(&out);
    assert_eq!(field(&out, "attempts"), 2, "{}", stderr(&out));
    assert_eq!(
        field(&out, "repairs"),
        0,
        "TLS stopped the damage before it landed"
    );
    assert_same_file(&src, &t.path().join("store/flip.bin"));
    assert!(stdout(&out).contains("\"encrypted\": true"));
}

#[test]
fn a_pinned_client_reaching_another_server_stops_with_exit_7_before_any_file_byte() {
    let t = tempfile::tempdir().unwrap();
    let real = ServerProc::start(&t.path().join("real"), &[]);
    let other = ServerProc::start(&t.path().join("other"), &[]);
    let (fp_real, fp_other) = (fingerprint_of(&real), fingerprint_of(&other));
    assert_ne!(fp_real, fp_other);
    let proxy = Proxy::start(real.addr, None);
    let kh = t.path().join("kh");
    let src = t.path().join("f.bin");
    write_random(&src, 3 * MIB, 92);
    assert_ok(&send_via(&proxy.port(), &kh, &src, &[]));
    proxy.switch_to(other.addr);
    let out = send_via(&proxy.port(), &kh, &src, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("has CHANGED") && err.contains(&fp_real) && err.contains(&fp_other),
        "{err}"
    );
    assert!(
        err.contains(&format!("delete line 1 of {}", kh.display())),
        "{err}"
    );
    assert!(held_parts(&t.path().join("other")).is_empty());
    assert!(!t.path().join("other/f.bin").exists());
    assert!(
        !other.log.text().contains("receiving"),
        "{}",
        other.log.text()
    );
    let conns = proxy.connections();
    assert_eq!(conns.len(), 2, "one try, no retries: {}", conns.len());
    assert!(
        conns[1].len() < 4096,
        "{} bytes sent to the wrong server",
        conns[1].len()
    );
    // --fingerprint demands a key even on first contact.
    let fresh = t.path().join("kh2");
    let out = send_via(&other.port(), &fresh, &src, &["--fingerprint", &fp_real]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not the one given with --fingerprint"),
        "{}",
        stderr(&out)
    );
    let out = send_via(&other.port(), &fresh, &src, &["--fingerprint", &fp_other]);
    assert_ok(&out);
    assert_same_file(&src, &t.path().join("other/f.bin"));
}

#[test]
fn a_plaintext_server_gets_a_noticed_fallback_unless_pinned_or_tls_is_required() {
    let t = tempfile::tempdir().unwrap();
    let tls = ServerProc::start(&t.path().join("tls"), &[]);
    let plain = ServerProc::start(&t.path().join("plain"), &["--tls", "off"]);
    assert!(
        !plain.out.text().contains("fingerprint"),
        "{}",
        plain.out.text()
    );
    let src = t.path().join("p.bin");
    write_random(&src, 2 * MIB, 93);
    let kh = t.path().join("kh");
    let out = send_via(&plain.port(), &kh, &src, &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains("\"encrypted\": false"));
    assert!(stderr(&out).contains("does not speak TLS") && stderr(&out).contains("UNENCRYPTED"));
    assert_same_file(&src, &t.path().join("plain/p.bin"));
    assert!(plain
        .log
        .text()
        .contains("receiving p.bin (2097152 bytes, protocol 2, blocks"));
    assert!(!kh.exists() || std::fs::read_to_string(&kh).unwrap().is_empty());
    // --require-tls refuses it even on first contact.
    let out = send_via(
        &plain.port(),
        &kh,
        &src,
        &["--require-tls", "--name", "q.bin"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("--require-tls"), "{}", stderr(&out));
    assert!(!t.path().join("plain/q.bin").exists());
    // Pinned through a TLS server on the address, then a plaintext one
    // there: a downgrade, refused.
    let proxy = Proxy::start(tls.addr, None);
    assert_ok(&send_via(&proxy.port(), &kh, &src, &[]));
    proxy.switch_to(plain.addr);
    let out = send_via(&proxy.port(), &kh, &src, &["--name", "down.bin"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("its key is pinned"),
        "{}",
        stderr(&out)
    );
    assert!(!t.path().join("plain/down.bin").exists());
}

#[test]
fn the_tls_required_server_refuses_plaintext_unless_legacy_is_allowed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("r.bin");
    write_random(&src, MIB, 94);
    let srv = ServerProc::start(&t.path().join("a"), &["--tls", "required"]);
    let kh = t.path().join("kh");
    assert_ok(&send_via(&srv.port(), &kh, &src, &[]));
    let out = send_via(&srv.port(), &kh, &src, &["--legacy", "--name", "l.bin"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        srv.log.wait_for("refused a plaintext connection", LONG),
        "{}",
        srv.log.text()
    );
    assert!(!t.path().join("a/l.bin").exists());
    let srv = ServerProc::start(
        &t.path().join("b"),
        &["--tls", "required", "--allow-legacy"],
    );
    assert_ok(&send_via(&srv.port(), &kh, &src, &["--legacy"]));
    assert_same_file(&src, &t.path().join("b/r.bin"));
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef-tls-token";

#[test]
fn the_token_inside_tls_right_and_wrong() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    std::fs::write(&good, TOKEN).unwrap();
    let bad = t.path().join("bad");
    std::fs::write(&bad, "fedcba9876543210fedcba9876543210-not-it").unwrap();
    let srv = ServerProc::start(
        &t.path().join("s"),
        &["--token-file", good.to_str().unwrap()],
    );
    let src = t.path().join("t.bin");
    write_random(&src, 2 * MIB, 95);
    let kh = t.path().join("kh");
    let out = send_via(
        &srv.port(),
        &kh,
        &src,
        &["--token-file", good.to_str().unwrap()],
    );
    assert_ok(&out);
    assert!(stdout(&out).contains("\"encrypted\": true"));
    assert_same_file(&src, &t.path().join("s/t.bin"));
    let out = send_via(
        &srv.port(),
        &kh,
        &src,
        &["--token-file", bad.to_str().unwrap(), "--name", "u.bin"],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("authentication failed: wrong token"),
        "{}",
        stderr(&out)
    );
    assert!(!t.path().join("s/u.bin").exists());
    assert!(held_parts(&t.path().join("s")).is_empty());
}

/// An answer recorded on one TLS connection and replayed on another: the
/// nonce and the channel binding are new there, so the server refuses it
/// and stores nothing (the plaintext replay test is in `auth.rs`).
#[test]
fn a_recorded_answer_is_refused_on_another_tls_connection() {
    use bigtransfer_core::auth::Token;
    use bigtransfer_core::v2::{self, ServerMsg};
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    std::fs::write(&good, TOKEN).unwrap();
    let srv = ServerProc::start(
        &t.path().join("s"),
        &["--token-file", good.to_str().unwrap()],
    );
    let token = Token::new(TOKEN.as_bytes().to_vec()).unwrap();
    let frame = v2_header("replay.bin");
    let open = || {
        let sock = TcpStream::connect(srv.addr).unwrap();
        let cfg = client_config(PinPolicy::TrustOnFirstUse).unwrap();
        let mut c = TlsTransport::connect(sock, cfg, LONG).unwrap();
        c.set_read_timeout(Some(LONG)).unwrap();
        c.write_all(&frame).unwrap();
        c.flush().unwrap();
        let ServerMsg::BoundChallenge { nonce, proof } = server_frame_from(&mut c, true) else {
            panic!("no bound challenge inside TLS")
        };
        let binding = c.channel_binding().unwrap();
        assert!(token.check_server_proof(&nonce, &binding, &frame[4..], &proof));
        (c, nonce, binding)
    };
    let (mut c1, n1, b1) = open();
    let answer = token.client_answer(&n1, &b1, &frame[4..]);
    c1.write_all(&v2::encode_answer(&answer)).unwrap();
    c1.flush().unwrap();
    assert!(
        matches!(server_frame_from(&mut c1, false), ServerMsg::Held { .. }),
        "the right answer on its own connection is accepted"
    );
    drop(c1);
    let (mut c2, n2, b2) = open();
    assert_ne!(n1, n2, "every connection gets a fresh nonce");
    assert_ne!(b1, b2, "and its own channel binding");
    c2.write_all(&v2::encode_answer(&answer)).unwrap();
    c2.flush().unwrap();
    match server_frame_from(&mut c2, false) {
        ServerMsg::Error(m) => assert!(m.contains("authentication failed"), "{m}"),
        other => panic!("replayed answer accepted: {other:?}"),
    }
    assert!(srv.log.wait_for("authentication failed", LONG));
    assert!(!t.path().join("s/replay.bin").exists());
}

/// A man in the middle who terminates TLS on both sides with his own key
/// and relays the plaintext between them. Returns his address.
fn mitm(real: SocketAddr) -> SocketAddr {
    let key = ServerKey::generate().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let key = key.clone();
            std::thread::spawn(move || {
                let t = Duration::from_secs(10);
                let Ok(down) = TlsTransport::accept(c, server_config(&key).unwrap(), t) else {
                    return;
                };
                let cfg = client_config(PinPolicy::TrustOnFirstUse).unwrap();
                let up = TlsTransport::connect(TcpStream::connect(real).unwrap(), cfg, t);
                if let Ok(up) = up {
                    splice(down, up);
                }
            });
        }
    });
    addr
}

/// Relays both ways between two TLS connections on one thread (they
/// cannot be split), polling each with a short read timeout.
fn splice(mut a: TlsTransport, mut b: TlsTransport) {
    let tick = Some(Duration::from_millis(5));
    a.set_read_timeout(tick).unwrap();
    b.set_read_timeout(tick).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if !pump(&mut a, &mut b, &mut buf) || !pump(&mut b, &mut a, &mut buf) {
            return;
        }
    }
}

/// Moves what `from` has to `to`; false once either is done.
fn pump(from: &mut TlsTransport, to: &mut TlsTransport, buf: &mut [u8]) -> bool {
    match from.read(buf) {
        Ok(0) => false,
        Ok(n) => to.write_all(&buf[..n]).and_then(|()| to.flush()).is_ok(),
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_man_in_the_middle_with_his_own_key_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    std::fs::write(&good, TOKEN).unwrap();
    let store = t.path().join("s");
    let srv = ServerProc::start(&store, &["--token-file", good.to_str().unwrap()]);
    let fp = fingerprint_of(&srv);
    let man = mitm(srv.addr).port().to_string();
    let src = t.path().join("m.bin");
    write_random(&src, MIB, 96);
    let tok = ["--token-file", good.to_str().unwrap()];
    // Knowing the server's key (given out of band): the man's key is refused.
    let kh = t.path().join("kh");
    let mut args = tok.to_vec();
    args.extend(["--fingerprint", &fp]);
    let out = send_via(&man, &kh, &src, &args);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains(&fp), "{}", stderr(&out));
    // On a first contact the man's key is accepted, but he cannot prove
    // the token (the server's proof is bound to his other connection), so
    // the client never answers it and the upload is refused.
    let out = send_via(&man, &t.path().join("kh-first"), &src, &tok);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("first contact"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&fp),
        "the man's key is not the server's"
    );
    assert!(
        srv.log.wait_for("authentication failed", LONG),
        "{}",
        srv.log.text()
    );
    assert!(!store.join("m.bin").exists());
    assert!(held_parts(&store).is_empty());
    // The same client straight to the server: stored.
    assert_ok(&send_via(
        &srv.port(),
        &t.path().join("kh-direct"),
        &src,
        &tok,
    ));
    assert_same_file(&src, &store.join("m.bin"));
}

#[test]
fn the_tls_mode_and_key_come_from_the_config_file_too() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("server.toml");
    let key = t.path().join("k.pem");
    std::fs::write(
        &cfg,
        format!("tls = \"required\"\nkey = \"{}\"\n", key.display()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("server")
            .args(args)
            .output()
            .unwrap()
    };
    let c = cfg.to_str().unwrap();
    let out = run(&["--config", c, "--check-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "tls = required"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == format!("key = {}", key.display())),
        "{text}"
    );
    let out = run(&["--config", c, "--tls", "off", "--check-config"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tls = off"),
        "the flag wins"
    );
    std::fs::write(&cfg, "tls = \"sometimes\"\n").unwrap();
    let out = run(&["--config", c, "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1") && err.contains("'sometimes'"),
        "{err}"
    );
    // The key named there is the one the server makes and prints.
    let srv = ServerProc::start(&t.path().join("s"), &["--key", key.to_str().unwrap()]);
    let fp = fingerprint_of(&srv);
    let again = std::process::Command::new(BIN)
        .args(["fingerprint", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("fingerprint {fp}\n")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
}
