//! Authentication: only clients that prove knowledge of the token upload;
//! the token never crosses the wire and a recorded answer cannot be replayed.

use std::io::Write;
use std::net::TcpStream;

use bigtransfer_core::auth::Token;
use bigtransfer_core::v2;

use crate::harness::*;

const TOKEN: &str = "correct horse battery staple 42";

fn token_file(dir: &std::path::Path, name: &str, token: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn only_clients_with_the_token_may_upload() {
    let t = tempfile::tempdir().unwrap();
    let good = token_file(t.path(), "good", TOKEN);
    let bad = token_file(t.path(), "bad", "not the right token at all");
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", &good]);
    let src = t.path().join("secret.bin");
    write_random(&src, 2 << 20, 80);

    let out = send(&srv, &src, &["--token-file", &good]);
    assert_ok(&out);
    assert_same_file(&src, &t.path().join("store/secret.bin"));

    let out = send(&srv, &src, &["--token-file", &bad]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("authentication failed: wrong token"),
        "{}",
        stderr(&out)
    );

    let out = send(&srv, &src, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("server requires a token"),
        "{}",
        stderr(&out)
    );

    // The token can come from the environment too.
    let port = srv.port();
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--json",
            "--quiet",
            src.to_str().unwrap(),
        ],
        b"",
        &[("BIGTRANSFER_TOKEN", TOKEN)],
    );
    assert_ok(&out);

    // Legacy clients cannot authenticate: refused, and logged with the peer.
    let out = send(&srv, &src, &["--legacy", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        srv.log
            .wait_for("refused a legacy (unauthenticated) client", LONG),
        "{}",
        srv.log.text()
    );
    let log = srv.log.text();
    assert!(
        log.lines()
            .any(|l| l.contains("127.0.0.1:") && l.contains("authentication failed: wrong token")),
        "{log}"
    );
}

#[test]
fn allow_legacy_admits_legacy_clients() {
    let t = tempfile::tempdir().unwrap();
    let good = token_file(t.path(), "good", TOKEN);
    let srv = ServerProc::start(
        &t.path().join("store"),
        &["--token-file", &good, "--allow-legacy"],
    );
    let src = t.path().join("old.bin");
    write_random(&src, 100_000, 81);
    let out = send(&srv, &src, &["--legacy"]);
    assert_ok(&out);
    assert_eq!(field(&out, "protocol"), 1);
    // New clients must still authenticate.
    let out = send(&srv, &src, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
}

#[test]
fn a_recorded_answer_cannot_be_replayed() {
    let t = tempfile::tempdir().unwrap();
    let good = token_file(t.path(), "good", TOKEN);
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", &good]);
    let token = Token::new(TOKEN.as_bytes().to_vec()).unwrap();
    let frame = v2_header("replay.bin");

    let mut s1 = TcpStream::connect(srv.addr).unwrap();
    s1.write_all(&frame).unwrap();
    let v2::ServerMsg::Challenge(n1) = server_frame(&mut s1, true) else {
        panic!("no challenge")
    };
    let answer = token.answer(&n1, &frame[4..]);
    s1.write_all(&v2::encode_answer(&answer)).unwrap();
    assert!(
        matches!(server_frame(&mut s1, false), v2::ServerMsg::Held { .. }),
        "a right answer is accepted"
    );
    drop(s1);

    let mut s2 = TcpStream::connect(srv.addr).unwrap();
    s2.write_all(&frame).unwrap();
    let v2::ServerMsg::Challenge(n2) = server_frame(&mut s2, true) else {
        panic!("no challenge")
    };
    assert_ne!(n1, n2, "every connection gets a fresh nonce");
    s2.write_all(&v2::encode_answer(&answer)).unwrap();
    match server_frame(&mut s2, false) {
        v2::ServerMsg::Error(m) => assert!(m.contains("authentication failed"), "{m}"),
        other => panic!("replayed answer accepted: {other:?}"),
    }
    assert!(srv.log.wait_for("authentication failed", LONG));
    assert!(!t.path().join("store/replay.bin").exists());
}

#[test]
fn an_answer_frame_in_the_data_phase_is_a_protocol_error_in_words() {
    // Found by fuzzing: the server sized its frame-head buffer for data
    // frames only, and an answer frame there panicked the connection.
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let frame = v2_header("odd.bin");
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&frame).unwrap();
    assert!(matches!(
        server_frame(&mut s, true),
        v2::ServerMsg::Held { .. }
    ));
    s.write_all(&v2::encode_answer(&[0xA5; 32])).unwrap();
    match server_frame(&mut s, false) {
        v2::ServerMsg::Error(m) => assert!(m.contains("protocol error"), "{m}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert!(
        srv.log.wait_for("unexpected answer frame", LONG),
        "{}",
        srv.log.text()
    );
    assert!(!srv.log.text().contains("panic"));
}
