//! Parallel streams (`--streams`): one upload over several connections
//! joining one session. Byte-identical results with N streams, with one
//! stream cut mid-way, after the whole client is killed and resumed with
//! another N, with a bit flipped on one stream; joins with a wrong or
//! replayed secret refused in words; legacy peers unchanged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bigtransfer_core::proto::Header;
use bigtransfer_core::session::Ticket;
use bigtransfer_core::v2::{self, ServerMsg};

use crate::harness::*;

const MIB: u64 = 1 << 20;

fn str_field(out: &std::process::Output, key: &str) -> String {
    let s = stdout(out);
    let pat = format!("\"{key}\": ");
    let i = s.find(&pat).unwrap_or_else(|| panic!("no {key} in {s}"));
    s[i + pat.len()..]
        .chars()
        .take_while(|c| *c != ',' && *c != '}')
        .collect()
}

#[test]
fn four_streams_upload_identical_over_tls() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("four.bin");
    write_random(&src, 24 * MIB + 5, 81);
    let out = send(&srv, &src, &["--streams", "4"]);
    assert_ok(&out);
    assert_same_file(&src, &srv.dir.join("four.bin"));
    assert_eq!(field(&out, "streams"), 4, "{}", stdout(&out));
    assert_eq!(str_field(&out, "encrypted"), "true");
    assert!(
        srv.log
            .wait_for("stream joined the upload of four.bin", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.log.text().matches("stream joined").count(), 3);
    // One stream, as before: no session, no join.
    let one = t.path().join("one.bin");
    write_random(&one, 3 * MIB, 82);
    let out = send(&srv, &one, &["--streams", "1"]);
    assert_ok(&out);
    assert_eq!(field(&out, "streams"), 1);
    assert_eq!(srv.log.text().matches("stream joined").count(), 3);
}

/// A loopback proxy that cuts its `victim`-th connection (from 1) after
/// `after` client bytes; the others pass untouched. Returns its address
/// and the count of connections seen.
fn cut_proxy(target: SocketAddr, victim: usize, after: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(90);
        while Instant::now() < end {
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            client.set_nonblocking(false).unwrap();
            let server = TcpStream::connect(target).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let limit = if n == victim { after } else { u64::MAX };
            std::thread::spawn(move || pump(client, server, limit));
        }
    });
    (addr, seen)
}

/// Client to server, cutting both ways after `limit` bytes.
fn pump(mut client: TcpStream, mut server: TcpStream, limit: u64) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let take = (limit - pos).min(n as u64) as usize;
        if server.write_all(&buf[..take]).is_err() {
            break;
        }
        pos += take as u64;
        if pos >= limit {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
}

fn via(port: &str, file: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--host", "127.0.0.1", "--port", port, "--json", "--quiet"];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    client(&args, b"", &[])
}

#[test]
fn one_stream_cut_mid_way_the_upload_completes_identical() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let src = t.path().join("cut.bin");
    write_random(&src, 32 * MIB + 77, 83);
    // Connection 1 is the TLS hello the plaintext server refuses, 2 the
    // first plaintext connection, 3.. the joined streams: cut the first join.
    let (proxy, seen) = cut_proxy(srv.addr, 3, 3 * MIB + 123);
    // Paced (about 0.5 s in all), so that the first join carries its
    // 3 MiB even when it completes its handshake last: unpaced, on a
    // loaded machine the other streams sent the whole file before it.
    let paced = ["--streams", "4", "--limit-rate", "64M"];
    let out = via(&proxy.port().to_string(), &src, &paced);
    assert_ok(&out);
    assert_same_file(&src, &srv.dir.join("cut.bin"));
    assert!(
        seen.load(Ordering::SeqCst) >= 5,
        "the streams went through the proxy"
    );
    assert_eq!(
        field(&out, "attempts"),
        1,
        "the cut stream did not end the attempt"
    );
    // The server may log the cut stream after the client is done.
    assert!(
        srv.log
            .wait_for("client disconnected while receiving", LONG),
        "a joined stream was cut: {}",
        srv.log.text()
    );
    // Blocks the cut stream had in flight come back at most as a repair
    // on the first connection, and a straggler's last blocks may be
    // issued again to an idle stream (more of them on a loaded machine);
    // nothing else of the 33 blocks is sent again.
    assert!(field(&out, "repairs") <= 1, "{}", stdout(&out));
    assert!(field(&out, "blocks_resent") <= 6, "{}", stdout(&out));
}

#[test]
fn a_killed_client_resumed_with_another_n_sends_only_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let src = t.path().join("resume.bin");
    let size = 64 * MIB + 9;
    write_random(&src, size, 84);
    let kh = fresh_known_hosts();
    let kh = kh.to_str().unwrap();
    let mut c = spawn_client(
        &srv,
        &src,
        &["--streams", "4", "--limit-rate", "12M", "--known-hosts", kh],
    );
    let mut held = 0;
    assert!(
        wait_until(LONG, || {
            held = held_part_len(&store);
            held >= 20 * MIB
        }),
        "no progress; server log:\n{}",
        srv.log.text()
    );
    let _ = c.kill();
    let _ = c.wait();
    let out = send(&srv, &src, &["--streams", "2", "--known-hosts", kh]);
    assert_ok(&out);
    assert_same_file(&src, &store.join("resume.bin"));
    let sent = field(&out, "bytes_sent");
    assert!(
        sent <= size - 8 * MIB,
        "resumed upload sent {sent} of {size} bytes; it should send only the rest"
    );
    assert_eq!(field(&out, "streams"), 2);
}

/// The first connection of a session, played by hand in plaintext: the
/// ticket the server grants.
fn open_session(srv: &ServerProc, name: &str, size: u64) -> (TcpStream, Ticket) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let frame = header(name, size, Some(2), None);
    s.write_all(&frame).unwrap();
    let mut ticket = None;
    let mut magic = true;
    loop {
        match server_frame(&mut s, std::mem::replace(&mut magic, false)) {
            ServerMsg::Join(t) => ticket = Some(t),
            ServerMsg::Held { .. } | ServerMsg::HeldSet { .. } => break,
            ServerMsg::Codec(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (s, ticket.expect("the server granted no session"))
}

fn header(
    name: &str,
    size: u64,
    streams: Option<u32>,
    join: Option<bigtransfer_core::session::Join>,
) -> Vec<u8> {
    let h = Header {
        filename: name.into(),
        filesize: size,
        crc32: 0,
    };
    let offer = v2::Offer {
        version: 2,
        block_size: 1 << 20,
        rev: 3,
        source: Some([5; 16]),
    };
    let extra = v2::Extra { streams, join };
    v2::encode_header_ext(&h, None, offer, &[], &extra).unwrap()
}

/// A join's first answer: the held list (admitted) or a fault's words.
fn try_join(srv: &ServerProc, frame: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(frame).unwrap();
    match server_frame(&mut s, true) {
        ServerMsg::Held { .. } | ServerMsg::HeldSet { .. } => Ok(()),
        ServerMsg::Fault(_, w) => Err(w),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_join_with_a_wrong_or_replayed_secret_is_refused_in_words() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let (_first, ticket) = open_session(&srv, "joined.bin", 4 * MIB);
    let wrong = Ticket {
        session: ticket.session,
        secret: [0x42; 32],
    };
    let bad = header("joined.bin", 4 * MIB, None, Some(wrong.join(None).unwrap()));
    let words = try_join(&srv, &bad).unwrap_err();
    assert!(words.contains("wrong join secret"), "{words}");
    let good = header(
        "joined.bin",
        4 * MIB,
        None,
        Some(ticket.join(None).unwrap()),
    );
    assert_eq!(try_join(&srv, &good), Ok(()));
    let words = try_join(&srv, &good).unwrap_err();
    assert!(words.contains("used before (a replay)"), "{words}");
    // Another upload's name with the right secret: refused too.
    let other = header("other.bin", 4 * MIB, None, Some(ticket.join(None).unwrap()));
    let words = try_join(&srv, &other).unwrap_err();
    assert!(words.contains("another upload"), "{words}");
    assert!(
        srv.log.wait_for("wrong join secret", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_bit_flipped_on_one_stream_is_repaired_alone() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let src = t.path().join("flip.bin");
    write_random(&src, 12 * MIB + 3, 85);
    let proxy = crate::verified::flip_proxy(srv.addr, 2 * MIB + MIB / 2, 8);
    let out = via(&proxy.port().to_string(), &src, &["--streams", "3"]);
    assert_ok(&out);
    assert_same_file(&src, &srv.dir.join("flip.bin"));
    assert_eq!(field(&out, "repairs"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "blocks_resent"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "attempts"), 1);
}

#[test]
fn legacy_peers_are_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("legacy.bin");
    write_random(&src, 3 * MIB + 1, 86);
    // --legacy against a new server: version 1, one connection.
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let out = send(&srv, &src, &["--streams", "4", "--legacy"]);
    assert_ok(&out);
    assert_eq!(field(&out, "protocol"), 1);
    assert_eq!(field(&out, "streams"), 1);
    assert!(!srv.log.text().contains("stream joined"));
    // A legacy (Python) server: the new client speaks version 1 to it.
    if crate::compat::python().is_none() {
        eprintln!("skipping the Python server half: python3 not found");
        return;
    }
    let store = t.path().join("pystore");
    let py = crate::compat::PyServer::start(&store);
    let out = via(&py.port.to_string(), &src, &["--streams", "4"]);
    assert_ok(&out);
    assert_eq!(field(&out, "protocol"), 1);
    assert_eq!(field(&out, "streams"), 1);
    assert_same_file(&src, &store.join("legacy.bin"));
}

#[test]
fn with_a_token_every_stream_authenticates() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("token");
    std::fs::write(&tok, "streams-e2e-token-0123456789abcdef\n").unwrap();
    let tok = tok.to_str().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", tok]);
    let src = t.path().join("auth.bin");
    write_random(&src, 9 * MIB + 1, 87);
    let out = send(&srv, &src, &["--streams", "3", "--token-file", tok]);
    assert_ok(&out);
    assert_same_file(&src, &srv.dir.join("auth.bin"));
    assert_eq!(field(&out, "streams"), 3);
    assert_eq!(srv.log.text().matches("stream joined").count(), 2);
    assert!(!srv.log.text().contains("authentication failed"));
}

#[test]
fn compressible_data_is_compressed_on_every_stream() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("text.bin");
    let line: Vec<u8> = (0..16 * MIB)
        .map(|i| b"log line 0123456789 abcdefghij\n"[(i % 31) as usize] ^ ((i >> 20) as u8 & 1))
        .collect();
    std::fs::write(&src, &line).unwrap();
    // Paced, so that the joined streams take blocks too.
    let args = [
        "--streams",
        "3",
        "--compress",
        "zstd",
        "--limit-rate",
        "32M",
    ];
    let out = send(&srv, &src, &args);
    assert_ok(&out);
    assert_same_file(&src, &srv.dir.join("text.bin"));
    assert_eq!(field(&out, "streams"), 3, "{}", stdout(&out));
    assert_eq!(field(&out, "compressed_blocks"), 16, "{}", stdout(&out));
    assert!(field(&out, "wire_bytes") < MIB, "{}", stdout(&out));
}

#[test]
fn a_compressed_stream_cut_mid_way_its_blocks_go_again_on_the_others() {
    // Inside TLS every connection is its own zstd stream: the blocks the
    // cut one had in flight are compressed again in another's.
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("half.bin");
    // Half text, half noise, in 4 KiB pieces: about 2 : 1.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<u8> = (0..32 * MIB)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i >> 11) & 1 == 0 {
                b"status=200 GET /index.html\n"[(i % 27) as usize]
            } else {
                (x >> 24) as u8
            }
        })
        .collect();
    std::fs::write(&src, &data).unwrap();
    // Connection 1 is the first, 2.. the joined streams: cut the first join.
    let (proxy, seen) = cut_proxy(srv.addr, 2, MIB + 123);
    let args = [
        "--streams",
        "4",
        "--compress",
        "zstd",
        "--limit-rate",
        "64M",
    ];
    let out = via(&proxy.port().to_string(), &src, &args);
    assert_ok(&out);
    assert_same_file(&src, &srv.dir.join("half.bin"));
    assert!(
        seen.load(Ordering::SeqCst) >= 4,
        "the streams went through the proxy"
    );
    assert_eq!(field(&out, "attempts"), 1, "{}", stdout(&out));
    assert!(field(&out, "compressed_blocks") >= 32, "{}", stdout(&out));
    assert!(field(&out, "wire_bytes") < 24 * MIB, "{}", stdout(&out));
    let log = srv.log.text();
    assert!(
        log.contains("client disconnected while receiving"),
        "a joined stream was cut: {log}"
    );
}

/// `bigtransfer get` through `port` into `dest`, as JSON.
fn get_via(
    port: &str,
    remote: &str,
    dest: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = get_cmd(port, &[&["--json"], extra].concat());
    cmd.args(["-o", dest.to_str().unwrap(), remote]);
    output_within(&mut cmd, LONG, "get")
}

#[test]
fn four_streams_download_identical_with_a_token_over_tls() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("token");
    std::fs::write(&tok, "streams-get-token-0123456789abcdef\n").unwrap();
    let tok = tok.to_str().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", tok]);
    let stored = srv.dir.join("down.bin");
    write_random(&stored, 24 * MIB + 7, 91);
    let dest = t.path().join("down.bin");
    // Paced, so that every joined stream takes blocks too.
    let extra = ["--streams", "4", "--token-file", tok, "--limit-rate", "24M"];
    let out = get_via(&srv.port(), "down.bin", &dest, &extra);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_file(&stored, &dest);
    assert_eq!(field(&out, "streams"), 4, "{}", stdout(&out));
    assert_eq!(str_field(&out, "encrypted"), "true");
    assert!(
        srv.log
            .wait_for("stream joined the download of down.bin", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(
        srv.log.text().matches("stream joined the download").count(),
        3
    );
    assert!(!srv.log.text().contains("authentication failed"));
    // Every connection served part of it: no stream sat idle.
    assert!(
        wait_until(LONG, || srv.log.text().matches("down.bin: sent").count()
            == 4),
        "{}",
        srv.log.text()
    );
    let parts: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bigtransfer-"))
        .collect();
    assert!(parts.is_empty(), "part or record left: {parts:?}");
}

#[test]
fn one_stream_of_a_download_cut_mid_way_it_completes_identical() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let stored = srv.dir.join("cutget.bin");
    write_random(&stored, 32 * MIB + 77, 92);
    // Connection 1 is the TLS hello the plaintext server refuses, 2 the
    // first plaintext connection, 3.. the joined streams: cut the first
    // join after its header and five want frames (one block each, two
    // asked ahead), with most of its share still to come.
    let probe = Ticket {
        session: [0; 16],
        secret: [0; 32],
    };
    let head = bigtransfer_core::getwire::encode_get_header_ext(
        "cutget.bin",
        None,
        Some(&probe.join(None).unwrap()),
    )
    .unwrap()
    .len() as u64;
    let want = bigtransfer_core::getwire::encode_want(&[9]).len() as u64;
    let (proxy, seen) = cut_proxy(srv.addr, 3, head + 5 * want);
    let dest = t.path().join("cutget.bin");
    let extra = ["--streams", "4", "--limit-rate", "24M"];
    let out = get_via(&proxy.port().to_string(), "cutget.bin", &dest, &extra);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_file(&stored, &dest);
    assert!(
        seen.load(Ordering::SeqCst) >= 5,
        "the streams went through the proxy"
    );
    assert_eq!(
        field(&out, "attempts"),
        1,
        "the cut stream did not end the attempt"
    );
    assert!(
        stdout(&out).contains("a joined stream of the download ended"),
        "{}",
        stdout(&out)
    );
    // What the cut stream had asked for came again; little else did.
    let got = field(&out, "bytes_received");
    assert!(got <= 32 * MIB + 77 + 6 * MIB, "{}", stdout(&out));
}

/// The first connection of a download session, played by hand in
/// plaintext: the ticket the server grants before the reference.
fn open_get_session(srv: &ServerProc, name: &str) -> (TcpStream, Ticket) {
    use bigtransfer_core::getwire;
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&getwire::encode_get_header_ext(name, Some(2), None).unwrap())
        .unwrap();
    let ServerMsg::Join(ticket) = server_frame(&mut s, true) else {
        panic!("the server granted no session");
    };
    (s, ticket)
}

/// A download join's first answer: the reference (admitted) or a fault's words.
fn try_get_join(
    srv: &ServerProc,
    name: &str,
    j: bigtransfer_core::session::Join,
) -> Result<(), String> {
    use bigtransfer_core::getwire;
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&getwire::encode_get_header_ext(name, None, Some(&j)).unwrap())
        .unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let mut p = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize];
    s.read_exact(&mut p).unwrap();
    if head[0] == getwire::TAG_REFERENCE {
        return Ok(());
    }
    match v2::parse_server_msg(head[0], &p).unwrap() {
        ServerMsg::Fault(_, w) => Err(w),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_download_join_with_a_wrong_or_replayed_secret_is_refused_in_words() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    write_random(&srv.dir.join("g.bin"), 3 * MIB, 93);
    write_random(&srv.dir.join("h.bin"), 2 * MIB, 94);
    let (_first, ticket) = open_get_session(&srv, "g.bin");
    let wrong = Ticket {
        session: ticket.session,
        secret: [0x42; 32],
    };
    let words = try_get_join(&srv, "g.bin", wrong.join(None).unwrap()).unwrap_err();
    assert!(words.contains("wrong join secret"), "{words}");
    let good = ticket.join(None).unwrap();
    assert_eq!(try_get_join(&srv, "g.bin", good.clone()), Ok(()));
    let words = try_get_join(&srv, "g.bin", good).unwrap_err();
    assert!(words.contains("used before (a replay)"), "{words}");
    // Another file with the right secret: refused too.
    let words = try_get_join(&srv, "h.bin", ticket.join(None).unwrap()).unwrap_err();
    assert!(words.contains("another transfer"), "{words}");
    assert!(
        srv.log.wait_for("wrong join secret", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_killed_download_over_streams_resumes_with_another_n_and_only_the_rest() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let size = 48 * MIB + 3;
    let stored = srv.dir.join("resume-get.bin");
    write_random(&stored, size, 95);
    let dest = t.path().join("resume-get.bin");
    let part = t.path().join(".resume-get.bin.bigtransfer-part");
    let kh = fresh_known_hosts();
    let mut c = std::process::Command::new(BIN)
        .args([
            "get",
            "--host",
            "127.0.0.1",
            "--port",
            &srv.port(),
            "--quiet",
        ])
        .args([
            "--streams",
            "4",
            "--limit-rate",
            "12M",
            "-o",
            dest.to_str().unwrap(),
        ])
        .arg("resume-get.bin")
        .env("BIGTRANSFER_KNOWN_HOSTS", &kh)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The part is sparse: its allocated blocks are what arrived.
    let written = || std::fs::metadata(&part).map_or(0, |m| m.blocks() * 512);
    assert!(wait_until(LONG, || written() >= 16 * MIB), "no progress");
    let _ = c.kill();
    let _ = c.wait();
    assert!(
        !dest.exists(),
        "a partial download is never under its final name"
    );
    let out = get_via(&srv.port(), "resume-get.bin", &dest, &["--streams", "2"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_file(&stored, &dest);
    assert!(field(&out, "resumed_from") >= 12 * MIB, "{}", stdout(&out));
    assert!(
        field(&out, "bytes_received") <= size - 12 * MIB,
        "{}",
        stdout(&out)
    );
    assert!(!part.exists());
}
