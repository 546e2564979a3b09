//! Protocol 2 between new peers: block-verified resume, block repair,
//! errors in words, the checksum cache; and protocol 1 for comparison.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const MIB: u64 = 1 << 20;

/// Starts a client in the background, rate-limited, and kills it once the
/// server holds at least `at` bytes.
fn interrupted_upload(srv: &ServerProc, src: &std::path::Path, at: u64, extra: &[&str]) {
    interrupted_via(srv, &srv.port(), src, at, extra)
}

/// [`interrupted_upload`] through the server's `port` (a proxy's).
fn interrupted_via(srv: &ServerProc, port: &str, src: &std::path::Path, at: u64, extra: &[&str]) {
    let mut c = Command::new(BIN)
        .env(
            "BIGTRANSFER_KNOWN_HOSTS",
            crate::harness::fresh_known_hosts(),
        )
        .args([
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--quiet",
            "--limit-rate",
            "30M",
        ])
        .args(extra)
        .arg(src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= at),
        "no progress"
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut c, LONG).unwrap();
    assert!(
        srv.log.wait_for("held part kept", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn new_peers_speak_protocol_2_and_legacy_mode_speaks_1() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("p.bin");
    write_random(&src, 3 * MIB + 11, 70);
    let out = send(&srv, &src, &["--no-cache"]);
    assert_ok(&out);
    assert_eq!(field(&out, "protocol"), 2);
    assert_eq!(field(&out, "bytes_sent"), 3 * MIB + 11);
    assert_eq!(
        field(&out, "bytes_hashed"),
        0,
        "protocol 2 needs no hashing pass before sending"
    );
    let out = send(&srv, &src, &["--legacy", "--no-cache"]);
    assert_ok(&out);
    assert_eq!(field(&out, "protocol"), 1);
    assert_eq!(field(&out, "bytes_hashed"), 3 * MIB + 11);
    assert_same_file(&src, &t.path().join("store/p.bin"));
}

#[test]
fn a_changed_source_resends_only_the_changed_block() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("changed.bin");
    let size = 40 * MIB + 5;
    write_random(&src, size, 71);
    interrupted_upload(&srv, &src, 12 * MIB, &[]);
    let held = held_part_len(&srv.dir);
    // Same size, one byte changed in the middle of what the server holds.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(b"!", 5 * MIB + 123).unwrap();
    drop(f);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert_eq!(field(&out, "blocks_resent"), 1);
    // The server resumes from its verified blocks: whole ones, and the
    // block the client was killed in may be on disk without its checksum
    // frame yet (so one block less than the bytes on disk).
    let verified = field(&out, "resumed_from") + MIB;
    assert_eq!(verified % MIB, 0, "resumes from whole blocks");
    assert!(
        verified <= held && verified + 2 * MIB > held,
        "verified {verified} of {held} held"
    );
    assert_eq!(
        field(&out, "bytes_sent"),
        MIB + (size - verified),
        "only the changed block and the missing part travel"
    );
    assert_same_file(&src, &t.path().join("store/changed.bin"));
}

#[test]
fn a_corrupted_held_block_is_resent_alone() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("rot.bin");
    let size = 40 * MIB + 77;
    write_random(&src, size, 72);
    interrupted_upload(&srv, &src, 12 * MIB, &[]);
    let held = held_part_len(&srv.dir);
    let part = held_parts(&srv.dir).pop().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 3 * MIB + 999).unwrap();
    f.write_all_at(&[b[0] ^ 1], 3 * MIB + 999).unwrap();
    drop(f);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert_eq!(field(&out, "blocks_resent"), 1);
    // As in upload.rs: the block the client was killed in may be on disk
    // without its checksum frame, so it may travel again too (the full
    // suite under load hit that window once).
    let sent = field(&out, "bytes_sent");
    let exact = MIB + (size - held);
    assert!(
        (exact..=exact + MIB).contains(&sent),
        "sent {sent}, held {held}: the changed block and the rest ({exact}), and at most one block in flight"
    );
    assert_eq!(field(&out, "attempts"), 1);
    assert!(
        srv.log.wait_for("re-read its blocks", LONG),
        "{}",
        srv.log.text()
    );
    assert_same_file(&src, &t.path().join("store/rot.bin"));
}

/// A loopback proxy that flips one bit at byte `at` of the client-to-server
/// stream of its first connection. Serves at most `max` connections within
/// a minute, then stops by itself.
pub(crate) fn flip_proxy(target: SocketAddr, at: u64, max: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < max && Instant::now() < end {
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            client.set_nonblocking(false).unwrap();
            let server = TcpStream::connect(target).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let flipped = Arc::clone(&flipped);
            std::thread::spawn(move || {
                let (mut client, mut server) = (client, server);
                let mut pos = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if pos <= at && at < pos + n as u64 && !flipped.swap(true, Ordering::SeqCst) {
                        buf[(at - pos) as usize] ^= 0x10;
                    }
                    pos += n as u64;
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn a_bit_flipped_on_the_wire_is_repaired_not_restarted() {
    let t = tempfile::tempdir().unwrap();
    // Plaintext: inside TLS a flipped bit ends the connection instead
    // (tls.rs tests that); the client falls back on first contact.
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let src = t.path().join("flip.bin");
    let size = 8 * MIB + 3;
    write_random(&src, size, 73);
    for legacy in [false, true] {
        // The same content stored already would cost no data (keep.rs):
        // each pass starts from an empty name.
        let _ = std::fs::remove_file(t.path().join("store/flip.bin"));
        let proxy = flip_proxy(srv.addr, 5 * MIB + MIB / 2, 4);
        let port = proxy.port().to_string();
        let mut args = vec![
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--json",
            "--quiet",
            "--no-cache",
        ];
        if legacy {
            args.push("--legacy");
        }
        args.push(src.to_str().unwrap());
        let out = client(&args, b"", &[]);
        assert_ok(&out);
        if legacy {
            assert_eq!(field(&out, "attempts"), 2, "protocol 1 can only start over");
            assert_eq!(field(&out, "bytes_sent"), 2 * size);
            assert_eq!(
                field(&out, "bytes_hashed"),
                size,
                "the retry reuses the CRC-32 of the unchanged file"
            );
        } else {
            assert_eq!(field(&out, "attempts"), 1);
            assert_eq!(field(&out, "repairs"), 1);
            assert_eq!(field(&out, "blocks_resent"), 1);
            assert_eq!(
                field(&out, "bytes_sent"),
                size + MIB,
                "only the damaged block is sent again"
            );
        }
        assert_same_file(&src, &t.path().join("store/flip.bin"));
    }
    assert!(
        srv.log.wait_for("arrived damaged", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_hole_in_the_held_part_costs_that_block_alone_on_resume() {
    // Block 3 arrives damaged (a bit flipped on the wire), the blocks
    // after it arrive fine, then the client is killed before any repair:
    // the server holds blocks 0-2 and 4.. with a hole at 3. On resume the
    // held set names the hole, so block 3 and the blocks never received
    // travel, not everything from block 3 on.
    let t = tempfile::tempdir().unwrap();
    // Plaintext: inside TLS a flipped bit ends the connection instead.
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let src = t.path().join("hole.bin");
    let size = 24 * MIB + 5;
    write_random(&src, size, 75);
    // Two connections: the TLS hello the server closes, then plaintext.
    let proxy = flip_proxy(srv.addr, 3 * MIB + MIB / 2, 2);
    let port = proxy.port().to_string();
    interrupted_via(&srv, &port, &src, 10 * MIB, &["--no-cache"]);
    assert!(
        srv.log.wait_for("arrived damaged", LONG),
        "{}",
        srv.log.text()
    );
    let held = held_part_len(&srv.dir);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    let kept = field(&out, "resumed_from");
    // Everything but the hole and the block in flight at the kill is kept.
    assert!(
        kept >= held - 2 * MIB && kept > 3 * MIB,
        "kept {kept} of {held}"
    );
    assert_eq!(field(&out, "blocks_resent"), 1, "the hole");
    assert_eq!(
        field(&out, "bytes_sent"),
        size - kept,
        "each missing block once"
    );
    assert_eq!(field(&out, "repairs"), 0);
    assert_same_file(&src, &t.path().join("store/hole.bin"));
}

#[test]
fn the_cache_spares_rehashing_on_resume_in_both_modes() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let cache = t.path().join("cache");
    let cache_arg = cache.to_str().unwrap().to_string();
    let src = t.path().join("cached.bin");
    let size = 64 * MIB + 9;
    write_random(&src, size, 74);
    for legacy in [false, true] {
        let srv = ServerProc::start(&store, &[]);
        let port = srv.port();
        let mut args = vec![
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--quiet",
            "--retries",
            "0",
        ];
        args.extend(["--limit-rate", "40M", "--cache-dir", &cache_arg]);
        if legacy {
            args.push("--legacy");
        }
        let mut c = Command::new(BIN)
            .env(
                "BIGTRANSFER_KNOWN_HOSTS",
                crate::harness::fresh_known_hosts(),
            )
            .args(&args)
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Past the first 32 MiB checkpoint, so the restarted server holds something.
        assert!(
            wait_until(LONG, || held_part_len(&store) >= 40 * MIB),
            "no progress"
        );
        // The server dies; the client notices, records its checksums, exits 4.
        srv.kill9();
        assert_eq!(wait_child(&mut c, LONG).and_then(|s| s.code()), Some(4));
        let srv = ServerProc::start(&store, &[]);
        let mut args = vec!["--cache-dir", cache_arg.as_str()];
        if legacy {
            args.push("--legacy");
        }
        let out = send(&srv, &src, &args);
        assert_ok(&out);
        assert_eq!(
            field(&out, "bytes_hashed"),
            0,
            "the second run must not hash again (legacy: {legacy})"
        );
        assert_eq!(
            field(&out, "bytes_read"),
            field(&out, "bytes_sent"),
            "reads only what it sends"
        );
        assert!(field(&out, "resumed_from") > 0);
        assert_same_file(&src, &store.join("cached.bin"));
        std::fs::remove_file(store.join("cached.bin")).unwrap();
        drop(srv);
    }
}

#[test]
fn refusals_come_in_words() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--max-file-size", "1M"]);
    let src = t.path().join("toobig.bin");
    write_random(&src, 2 * MIB, 75);
    let out = send(&srv, &src, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("server: refused toobig.bin: 2097152 bytes is over the limit of 1048576"),
        "{}",
        stderr(&out)
    );
    // A legacy client gets only a closed connection, as the contract says.
    let out = send(&srv, &src, &["--legacy", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // A refused name, in words.
    let out = send(&srv, &src, &["--name", "..", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused file name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_running_upload_is_never_taken_over_and_the_newcomer_waits_its_turn() {
    // Before, any header for the name took the upload over: the running
    // client was told "took over" and gave up (exit 6).
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("twice.bin");
    let size = 32 * MIB;
    write_random(&src, size, 76);
    let older = spawn_client(&srv, &src, &["--limit-rate", "4M"]);
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= 2 * MIB),
        "no progress"
    );
    // The same file from another process: refused as busy while the older
    // one is receiving, retried, and stored once the older one is done.
    let out = send(&srv, &src, &["--no-cache", "--retries", "20"]);
    assert_ok(&out);
    let (code, err) = finish_client(older);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("took over"), "{err}");
    assert!(
        srv.log
            .text()
            .contains("being uploaded right now by another connection"),
        "{}",
        srv.log.text()
    );
    assert_same_file(&src, &t.path().join("store/twice.bin"));
}

#[test]
fn a_silent_upload_of_the_same_source_is_taken_over_and_the_displaced_client_retries() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("stale.bin");
    let size = 32 * MIB;
    write_random(&src, size, 77);
    let older = spawn_client(&srv, &src, &["--limit-rate", "4M", "--retries", "20"]);
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= 2 * MIB),
        "no progress"
    );
    // The older client freezes (as behind a dead link): its connection
    // goes silent, and the same source reconnecting takes it over.
    let pid = older.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let out = send(&srv, &src, &["--no-cache"]);
    assert_ok(&out);
    assert!(
        field(&out, "resumed_from") >= 2 * MIB,
        "the newcomer resumes what the older one sent"
    );
    assert!(srv.log.wait_for("taking over", LONG), "{}", srv.log.text());
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // Told "taken over" (a transient fault), the older client retries and
    // ends with the file stored.
    let (code, err) = finish_client(older);
    assert_eq!(code, Some(0), "{err}");
    assert_same_file(&src, &t.path().join("store/stale.bin"));
}

#[test]
fn min_free_refuses_uploads_that_would_fill_the_disk() {
    let t = tempfile::tempdir().unwrap();
    // More than any test machine has free: every upload would go under it.
    let srv = ServerProc::start(&t.path().join("store"), &["--min-free", "1000000T"]);
    let src = t.path().join("small.bin");
    write_random(&src, 1000, 77);
    let out = send(&srv, &src, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("(--min-free)"), "{}", stderr(&out));
    assert!(!t.path().join("store/small.bin").exists());
}
