//! Uploads that should succeed: sizes, interruptions, resumes, concurrency.

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

#[test]
fn large_file_arrives_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("big.bin");
    // Not a multiple of any buffer size used on either side.
    let size = 300 * 1024 * 1024 + 12_345;
    let crc = write_random(&src, size, 1);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert_eq!(field(&out, "filesize"), size);
    assert_eq!(field(&out, "crc32"), crc as u64);
    assert_eq!(field(&out, "bytes_sent"), size);
    assert_eq!(field(&out, "resumed_from"), 0);
    let dst = t.path().join("store/big.bin");
    assert_same_file(&src, &dst);
    assert_eq!(crc_of(&dst), crc);
    assert!(
        held_parts(&srv.dir).is_empty(),
        "held part left behind after success"
    );
    assert!(
        srv.log.wait_for("big.bin: CRC32_OK", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn empty_one_byte_and_odd_sizes() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    for (i, size) in [0u64, 1, 4095, (1 << 20) + 1, 3 * (8 << 20) + 7]
        .into_iter()
        .enumerate()
    {
        let src = t.path().join(format!("f{i}.bin"));
        write_random(&src, size, 10 + i as u64);
        let out = send(&srv, &src, &[]);
        assert_ok(&out);
        assert_eq!(field(&out, "bytes_sent"), size);
        assert_same_file(&src, &t.path().join(format!("store/f{i}.bin")));
    }
    // Sending the same file again replaces it, still verified.
    let src = t.path().join("f1.bin");
    write_random(&src, 1, 99);
    assert_ok(&send(&srv, &src, &[]));
    assert_same_file(&src, &t.path().join("store/f1.bin"));
}

#[test]
fn killed_client_resumes_sending_only_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("resume.bin");
    let size = 64 * 1024 * 1024 + 333;
    write_random(&src, size, 2);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let mut slow = Command::new(BIN)
        .env(
            "BIGTRANSFER_KNOWN_HOSTS",
            crate::harness::fresh_known_hosts(),
        )
        .args([
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            &srv.port(),
            "--quiet",
            "--limit-rate",
            "40M",
        ])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= 8 << 20),
        "no progress"
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    assert!(
        srv.log.wait_for("held part kept", LONG),
        "{}",
        srv.log.text()
    );
    assert!(
        !t.path().join("store/resume.bin").exists(),
        "partial upload visible under its final name"
    );
    let held = held_part_len(&srv.dir);

    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    // Protocol 2 resumes from whole verified blocks (1 MiB here): the block
    // the client was killed in may be on disk without its checksum frame,
    // so at most one block of what is held is sent again.
    let block = 1 << 20;
    assert!(
        from >= (8 << 20) - block && from <= held && from % block == 0,
        "resumed from {from}, held {held}"
    );
    assert_eq!(
        field(&out, "bytes_sent"),
        size - from,
        "the resumed run must send only the rest"
    );
    assert_same_file(&src, &t.path().join("store/resume.bin"));
}

#[test]
fn server_killed_with_sigkill_then_restarted_resumes_from_durable_offset() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("crash.bin");
    let size = 120 * 1024 * 1024 + 77;
    write_random(&src, size, 3);
    let srv = ServerProc::start(&store, &[]);
    let port = srv.port();
    let mut slow = Command::new(BIN)
        .env(
            "BIGTRANSFER_KNOWN_HOSTS",
            crate::harness::fresh_known_hosts(),
        )
        .args([
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--quiet",
            "--retries",
            "0",
            "--limit-rate",
            "60M",
        ])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the first 32 MiB checkpoint.
    assert!(
        wait_until(LONG, || held_part_len(&store) >= 48 << 20),
        "no progress"
    );
    let received = held_part_len(&store);
    srv.kill9();
    let status = wait_child(&mut slow, LONG).expect("client hung after the server died");
    assert_eq!(status.code(), Some(4), "connection lost must exit 4");

    let srv = ServerProc::start(&store, &[]);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    assert!(from >= 32 << 20, "checkpoint lost: resumed from {from}");
    assert!(
        from <= received + (16 << 20),
        "resumed past what was received: {from} > {received}"
    );
    assert_eq!(field(&out, "bytes_sent"), size - from);
    assert_same_file(&src, &store.join("crash.bin"));
}

/// Protocol 1 can only detect a damaged held part at the end (CRC32_ERROR)
/// and start over; protocol 2 is tested in `verified.rs`.
#[test]
fn tampered_held_part_is_detected_and_recovered() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("tamper.bin");
    let size = 48 * 1024 * 1024;
    write_random(&src, size, 4);
    let srv = ServerProc::start(&store, &[]);
    let mut slow = Command::new(BIN)
        .env(
            "BIGTRANSFER_KNOWN_HOSTS",
            crate::harness::fresh_known_hosts(),
        )
        .args([
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            &srv.port(),
            "--quiet",
            "--legacy",
            "--limit-rate",
            "40M",
        ])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || held_part_len(&store) >= 4 << 20),
        "no progress"
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    assert!(srv.log.wait_for("held part kept", LONG));
    let part = held_parts(&store).pop().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 1000).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 1000).unwrap();
    drop(f);

    let out = send(&srv, &src, &["--legacy"]);
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    assert!(from > 1000);
    assert_eq!(field(&out, "protocol"), 1);
    assert_eq!(field(&out, "attempts"), 2, "CRC32_ERROR then a full retry");
    assert_eq!(field(&out, "bytes_sent"), (size - from) + size);
    assert!(srv.log.wait_for("CRC32_ERROR", LONG));
    assert_same_file(&src, &store.join("tamper.bin"));
}

#[test]
fn many_clients_at_once() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let files: Vec<_> = (0..8)
        .map(|i| {
            let p = t.path().join(format!("c{i}.bin"));
            write_random(&p, 6 * 1024 * 1024 + i * 1001, 100 + i);
            p
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|p| s.spawn(|| send(&srv, p, &[])))
            .collect();
        for h in handles {
            assert_ok(&h.join().unwrap());
        }
    });
    for (i, p) in files.iter().enumerate() {
        assert_same_file(p, &t.path().join(format!("store/c{i}.bin")));
    }
}

#[test]
fn ipv6_loopback_and_hostnames() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("v6.bin");
    write_random(&src, 100_000, 5);
    let srv = match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => ServerProc::start_at("::1", &t.path().join("store"), &[]),
        Err(_) => {
            eprintln!("skipping: no IPv6 loopback on this machine");
            return;
        }
    };
    let port = srv.port();
    for host in ["::1", "[::1]", "localhost"] {
        let out = client(
            &[
                "--host",
                host,
                "--port",
                &port,
                "--json",
                "--quiet",
                src.to_str().unwrap(),
            ],
            b"",
            &[],
        );
        if host == "localhost" && out.status.code() == Some(3) {
            continue; // localhost may resolve to 127.0.0.1 only
        }
        assert_ok(&out);
    }
    assert_same_file(&src, &t.path().join("store/v6.bin"));
}

#[test]
fn sigterm_stops_the_server_with_status_0() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn a_second_server_cannot_share_the_storage_directory() {
    let t = tempfile::tempdir().unwrap();
    let _srv = ServerProc::start(&t.path().join("store"), &[]);
    let out = Command::new(BIN)
        .args(["server", "--port", "0", "--bind", "127.0.0.1", "--dir"])
        .arg(t.path().join("store"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another server"));
}

#[test]
fn unreachable_server_exits_3_with_a_clear_message() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("x.bin");
    write_random(&src, 10, 6);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--retries",
            "1",
            src.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("server 127.0.0.1:{port} is unreachable")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_file_exits_2() {
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9",
            "/nonexistent/file.bin",
        ],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/file.bin"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn abandoned_partial_uploads_expire() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &["--expire-partial", "1s"]);
    // A header and a few bytes, then the client vanishes.
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    crate::hostile::send_header(&mut s, "abandoned.bin", 1000, 0);
    let mut off = [0u8; 8];
    std::io::Read::read_exact(&mut s, &mut off).unwrap();
    std::io::Write::write_all(&mut s, &[7u8; 100]).unwrap();
    drop(s);
    assert!(srv.log.wait_for("held part kept", LONG));
    assert!(
        wait_until(Duration::from_secs(30), || held_parts(&store).is_empty()),
        "held part never expired"
    );
    assert!(
        srv.log.wait_for("expired held part", LONG),
        "{}",
        srv.log.text()
    );
}
