//! Attackers against the server (issue "Hostile peers on both sides"):
//! none of them can make the server store wrong bytes with CRC32_OK, kick
//! or wipe someone else's upload, hold slots for ever, make a refused
//! header change held data, beat `--min-free` by concurrency, guess tokens
//! at full speed or forge log lines. Each test failed before its fix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bigtransfer_core::{proto, v2};

use crate::harness::*;
use crate::hostile::send_header;

const MIB: u64 = 1 << 20;

fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

/// A version-2 header frame (revision 2) for `name` of `size` bytes.
fn v2_header(name: &str, size: u64) -> Vec<u8> {
    let h = proto::Header {
        filename: name.into(),
        filesize: size,
        crc32: 0,
    };
    let offer = v2::Offer {
        version: 2,
        block_size: v2::block_size_for(size),
        rev: v2::REVISION,
        source: Some([0x33; 16]),
    };
    v2::encode_header_unknown_crc(&h, offer).unwrap()
}

fn the_part(dir: &Path) -> PathBuf {
    let parts = held_parts(dir);
    assert_eq!(parts.len(), 1, "{parts:?}");
    parts[0].clone()
}

fn state_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join(".bigtransfer"))
        .unwrap()
        .flatten()
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_part_changed_behind_the_servers_back_never_ends_crc32_ok() {
    // The key-collision attack worked by writing into a victim's part: the
    // verdict covered what arrived on the network, not what was on disk.
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let data: Vec<u8> = (0..4 * MIB as u32).map(|i| (i / 7) as u8).collect();
    let crc = crc32fast::hash(&data);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "victim.bin", data.len() as u64, crc);
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    s.write_all(&data[..MIB as usize]).unwrap();
    assert!(wait_until(LONG, || held_part_len(&srv.dir) >= MIB));
    // Someone else writes into the held part.
    scribble_on_held_part(&srv.dir, 1000, &[0xEE; 4096]);
    s.write_all(&data[MIB as usize..]).unwrap();
    assert_eq!(read_to_close(&mut s), b"CRC32_ERROR");
    assert!(!srv.dir.join("victim.bin").exists());
    assert!(
        srv.log
            .wait_for("changed on disk behind the server's back", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_block_changed_on_disk_is_repaired_before_protocol_2_says_ok() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("v2victim.bin");
    write_random(&src, 12 * MIB, 91);
    let c = spawn_client(&srv, &src, &["--limit-rate", "4M"]);
    assert!(wait_until(LONG, || held_part_len(&srv.dir) >= 3 * MIB));
    scribble_on_held_part(&srv.dir, 100, &[0xEE; 4096]);
    let (code, err) = finish_client(c);
    assert_eq!(code, Some(0), "{err}");
    assert_same_file(&src, &srv.dir.join("v2victim.bin"));
    assert!(
        srv.log
            .text()
            .contains("changed on disk behind the server's back"),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_header_for_another_source_cannot_kick_or_wipe_a_running_upload() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("running.bin");
    write_random(&src, 30 * MIB, 92);
    let victim = spawn_client(&srv, &src, &["--limit-rate", "1M"]);
    assert!(wait_until(LONG, || held_part_len(&srv.dir) >= 2 * MIB));
    // A version-2 header of another size: refused in words, not obeyed.
    let mut a = TcpStream::connect(srv.addr).unwrap();
    a.write_all(&v2_header("running.bin", 5)).unwrap();
    match server_frame(&mut a, true) {
        v2::ServerMsg::Fault(v2::FaultCode::Busy, m) => {
            assert!(m.contains("from another source"), "{m}")
        }
        other => panic!("expected a busy refusal, got {other:?}"),
    }
    // Legacy headers of another source, again and again (each used to
    // kick the upload): refused by closing, without an offset.
    for _ in 0..3 {
        let before = held_part_len(&srv.dir);
        let mut l = TcpStream::connect(srv.addr).unwrap();
        send_header(&mut l, "running.bin", 7, 1234);
        assert_eq!(read_to_close(&mut l), b"", "no offset for another source");
        assert!(held_part_len(&srv.dir) >= before, "the held part shrank");
    }
    let (code, err) = finish_client(victim);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("took over"), "{err}");
    assert_same_file(&src, &srv.dir.join("running.bin"));
}

#[test]
fn connections_that_have_not_authenticated_are_evicted_and_held_to_one_deadline() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, "an-attacker-cannot-guess-this-token-1234\n").unwrap();
    let tok = tok.to_str().unwrap();
    let srv = ServerProc::start(
        &t.path().join("store"),
        &[
            "--token-file",
            tok,
            "--max-connections",
            "2",
            "--header-timeout",
            "2s",
        ],
    );
    // Two connections whose headers parsed but who never answer the
    // challenge: before, they held both slots for the idle timeout.
    let mut squatters = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(&v2_header("sq.bin", 10)).unwrap();
        assert!(matches!(
            server_frame(&mut s, true),
            v2::ServerMsg::Challenge(_)
        ));
        squatters.push(s);
    }
    let src = t.path().join("real.bin");
    write_random(&src, MIB, 93);
    let out = send(&srv, &src, &["--token-file", tok]);
    assert_ok(&out);
    assert!(srv.log.wait_for("not admitted", LONG), "{}", srv.log.text());
    // An answer dripped a byte at a time is cut at the deadline.
    let mut drip = TcpStream::connect(srv.addr).unwrap();
    drip.write_all(&v2_header("drip.bin", 10)).unwrap();
    assert!(matches!(
        server_frame(&mut drip, true),
        v2::ServerMsg::Challenge(_)
    ));
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..33 {
        std::thread::sleep(Duration::from_millis(500));
        if drip.write_all(b"A").is_err() {
            cut = true;
            break;
        }
        drip.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut b = [0u8; 64];
        if matches!(drip.read(&mut b), Ok(0)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "the dripping connection was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert!(
        srv.log.wait_for("deadline passed while", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_header_dripped_a_byte_at_a_time_is_cut_at_the_header_deadline() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--header-timeout", "2s"]);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let json = br#"{"filename": "slow.bin", "filesize": 1, "crc32": 0}"#;
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json);
    let started = Instant::now();
    let mut cut = false;
    for b in frame {
        // Each byte well within any per-read timeout.
        std::thread::sleep(Duration::from_millis(300));
        if s.write_all(&[b]).is_err() {
            cut = true;
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        if matches!(s.read(&mut [0u8; 8]), Ok(0)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled header held its slot past the deadline");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        srv.log
            .wait_for("deadline passed while reading the header", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_trickle_of_data_is_closed_by_the_rate_floor() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(
        &t.path().join("store"),
        &["--timeout", "2s", "--min-rate", "1K"],
    );
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "trickle.bin", 1000, 0);
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    let mut cut = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(400));
        if s.write_all(b"x").is_err() {
            cut = true;
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        if matches!(s.read(&mut [0u8; 8]), Ok(0)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickle held its slot");
    assert!(srv.log.wait_for("too slow", LONG), "{}", srv.log.text());
}

#[test]
fn a_refused_header_changes_no_held_data_and_leaves_no_files() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--max-file-size", "64M"]);
    let data = vec![7u8; 3 * MIB as usize];
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(
        &mut s,
        "keep.bin",
        data.len() as u64,
        crc32fast::hash(&data),
    );
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    s.write_all(&data[..MIB as usize]).unwrap();
    drop(s);
    assert!(srv.log.wait_for("client disconnected at byte", LONG));
    let before = state_files(&srv.dir);
    let part_bytes = std::fs::read(the_part(&srv.dir)).unwrap();
    // Too large, the same name: refused before anything is touched.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "keep.bin", 100 * MIB, 1);
    assert_eq!(read_to_close(&mut s), b"");
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&v2_header("keep.bin", 1 << 40)).unwrap();
    assert!(matches!(
        server_frame(&mut s, true),
        v2::ServerMsg::Fault(v2::FaultCode::TooLarge, _)
    ));
    // A refused new name leaves no state files.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "new.bin", 100 * MIB, 1);
    assert_eq!(read_to_close(&mut s), b"");
    assert!(srv.log.wait_for("refused new.bin", LONG));
    assert_eq!(state_files(&srv.dir), before);
    assert_eq!(std::fs::read(the_part(&srv.dir)).unwrap(), part_bytes);
    // And the upload still resumes where it was.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(
        &mut s,
        "keep.bin",
        data.len() as u64,
        crc32fast::hash(&data),
    );
    s.read_exact(&mut off).unwrap();
    assert_eq!(u64::from_be_bytes(off), MIB);
}

#[test]
fn an_offer_of_millions_of_blocks_is_refused_before_any_memory_is_spent() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let h = proto::Header {
        filename: "huge.bin".into(),
        filesize: 4 << 20 << 16,
        crc32: 0,
    };
    let offer = v2::Offer {
        version: 2,
        block_size: v2::MIN_BLOCK,
        rev: v2::REVISION,
        source: None,
    };
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&v2::encode_header_unknown_crc(&h, offer).unwrap())
        .unwrap();
    match server_frame(&mut s, true) {
        v2::ServerMsg::Fault(v2::FaultCode::BadRequest, m) => {
            assert!(m.contains("too many blocks"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(held_parts(&srv.dir).is_empty());
}

#[test]
fn names_that_could_fool_a_terminal_are_escaped_in_the_log() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let name = "invoice\u{202E}fdp.exe\u{2028}forged line";
    let data = b"abc";
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, name, 3, crc32fast::hash(data));
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    s.write_all(data).unwrap();
    assert_eq!(read_to_close(&mut s), b"CRC32_OK");
    assert!(srv.log.wait_for("CRC32_OK", LONG));
    let log = srv.log.text();
    assert!(
        log.contains("invoice\\u{202e}fdp.exe\\u{2028}forged line"),
        "{log}"
    );
    assert!(
        !log.contains('\u{202E}') && !log.contains('\u{2028}'),
        "{log}"
    );
    // The file itself keeps its real name.
    assert_eq!(std::fs::read(srv.dir.join(name)).unwrap(), data);
}

#[test]
fn token_guessing_is_throttled_and_not_logged_line_by_line() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, "the-real-token-nobody-guesses-0001\n").unwrap();
    let srv = ServerProc::start(
        &t.path().join("store"),
        &["--token-file", tok.to_str().unwrap()],
    );
    let mut refused_early = 0;
    for _ in 0..(bigtransfer_core::throttle::MAX_FAILURES + 5) {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(&v2_header("guess.bin", 10)).unwrap();
        match server_frame(&mut s, true) {
            v2::ServerMsg::Challenge(_) => {
                s.write_all(&v2::encode_answer(&[0x55; 32])).unwrap();
                match server_frame(&mut s, false) {
                    v2::ServerMsg::Fault(v2::FaultCode::AuthFailed, m) => {
                        assert!(m.contains("wrong token"), "{m}")
                    }
                    other => panic!("{other:?}"),
                }
            }
            v2::ServerMsg::Fault(v2::FaultCode::AuthFailed, m) => {
                assert!(m.contains("too many wrong tokens"), "{m}");
                refused_early += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused_early, 5);
    let log = srv.log.text();
    let lines = log.matches("authentication failed").count();
    assert_eq!(
        lines,
        bigtransfer_core::throttle::LOGGED_FAILURES as usize,
        "{log}"
    );
    assert!(log.contains("summarised once a minute"), "{log}");
}

#[test]
fn the_open_file_limit_is_checked_at_start() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec '{BIN}' server --port 0 --bind 127.0.0.1 --dir '{}' --max-connections 64",
            t.path().join("store").display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open-file limit is 64"), "{err}");
    assert!(err.contains("--max-connections"), "{err}");
}

#[test]
fn an_authenticated_upload_cannot_be_taken_over_by_a_legacy_client() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    let token = "authenticated-uploads-stay-theirs-42";
    std::fs::write(&tok, format!("{token}\n")).unwrap();
    let srv = ServerProc::start(
        &t.path().join("store"),
        &["--token-file", tok.to_str().unwrap(), "--allow-legacy"],
    );
    // An authenticated upload that went quiet (as a dead connection does).
    let frame_bytes = v2_header("mine.bin", 4 * MIB);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&frame_bytes).unwrap();
    let v2::ServerMsg::Challenge(n) = server_frame(&mut s, true) else {
        panic!("no challenge")
    };
    let t_ = bigtransfer_core::auth::Token::new(token.as_bytes().to_vec()).unwrap();
    s.write_all(&v2::encode_answer(&t_.answer(&n, &frame_bytes[4..])))
        .unwrap();
    assert!(matches!(
        server_frame(&mut s, false),
        v2::ServerMsg::Held { .. }
    ));
    std::thread::sleep(Duration::from_secs(4));
    // A legacy client for the same name: refused, the upload kept.
    let mut l = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut l, "mine.bin", 4 * MIB, 0);
    assert_eq!(read_to_close(&mut l), b"");
    assert!(
        srv.log.wait_for("another source", LONG),
        "{}",
        srv.log.text()
    );
    // The authenticated connection is still there.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        s.read(&mut [0u8; 1]).is_err(),
        "the authenticated upload was cut"
    );
}

#[test]
fn min_free_holds_across_concurrent_uploads() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let Some((srv, view)) = server_on_tmpfs(&store, "64M", &["--min-free", "32M"]) else {
        return;
    };
    let mut kids = Vec::new();
    for i in 0..3 {
        let src = t.path().join(format!("c{i}.bin"));
        write_random(&src, 20 * MIB, 100 + i);
        kids.push(spawn_client(
            &srv,
            &src,
            &["--limit-rate", "8M", "--retries", "0"],
        ));
    }
    let mut refused = 0;
    let mut ok = 0;
    for k in kids {
        let (code, err) = finish_client(k);
        match code {
            Some(0) => ok += 1,
            Some(6) if err.contains("(--min-free)") => refused += 1,
            other => panic!("{other:?}: {err}"),
        }
    }
    // 64 MiB with 32 MiB kept free fits one 20 MiB upload, not two.
    assert_eq!((ok, refused), (1, 2), "{}", srv.log.text());
    // The refused uploads left no state behind.
    assert!(held_parts(&view).is_empty(), "{:?}", held_parts(&view));
}

#[test]
fn a_guessable_token_is_refused_at_start() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, "aaaaaaaaaaaaaaaa\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--token-file",
        ])
        .arg(&tok)
        .arg("--dir")
        .arg(t.path().join("store"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the token is too weak"), "{err}");
}

#[test]
fn a_token_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, "a-strong-enough-token-for-this-test-77\n").unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
    let srv = ServerProc::start(
        &t.path().join("store"),
        &["--token-file", tok.to_str().unwrap()],
    );
    assert!(
        srv.log
            .wait_for("is readable by other users (mode 644)", LONG),
        "{}",
        srv.log.text()
    );
    assert!(srv.log.wait_for("chmod 600", LONG));
    drop(srv);
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let srv = ServerProc::start(
        &t.path().join("store2"),
        &["--token-file", tok.to_str().unwrap()],
    );
    let src = t.path().join("f.bin");
    write_random(&src, 1000, 5);
    let out = send(&srv, &src, &["--token-file", tok.to_str().unwrap()]);
    assert_ok(&out);
    assert!(
        !srv.log.text().contains("readable by other users"),
        "{}",
        srv.log.text()
    );
}

#[test]
fn bigtransfer_token_prints_a_strong_fresh_token_the_server_accepts() {
    let a = Command::new(BIN).arg("token").output().unwrap();
    let b = Command::new(BIN).arg("token").output().unwrap();
    assert_eq!((a.status.code(), b.status.code()), (Some(0), Some(0)));
    let (ta, tb) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    let ta = ta.trim_end();
    assert_eq!(ta.len(), 64, "{ta}");
    assert!(ta.bytes().all(|c| c.is_ascii_hexdigit()), "{ta}");
    assert_ne!(ta, tb.trim_end(), "every token is new");
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, &a.stdout).unwrap();
    let tok = tok.to_str().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", tok]);
    let src = t.path().join("f.bin");
    write_random(&src, 3000, 6);
    assert_ok(&send(&srv, &src, &["--token-file", tok]));
}
