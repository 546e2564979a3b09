//! Nothing stored is lost silently: a re-send of stored content sends no
//! data and leaves the file untouched; a different content under a stored
//! name keeps the old file as a numbered version (or replaces it with
//! `--overwrite`), and the client says so; legacy clients get the same
//! policy; a stored file changed behind the server's back is not trusted.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use crate::harness::*;

const SIZE: u64 = 8 * 1024 * 1024 + 123;

/// The stored file's inode, mtime and ctime: all unchanged means the
/// server did not write, rename or replace it.
fn stamp(p: &Path) -> (u64, i64, i64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

fn flip_byte(p: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let mut b = [0u8; 1];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0xFF], at).unwrap();
}

fn versions(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".~"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_resend_of_the_same_file_sends_nothing_and_leaves_it_untouched() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("same.bin");
    write_random(&src, SIZE, 1);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let first = send(&srv, &src, &[]);
    assert_ok(&first);
    assert!(
        stdout(&first).contains("\"stored\": \"new\""),
        "{}",
        stdout(&first)
    );
    let stored = srv.dir.join("same.bin");
    let before = stamp(&stored);
    let again = send(&srv, &src, &[]);
    assert_ok(&again);
    assert_eq!(field(&again, "bytes_sent"), 0);
    assert!(
        stdout(&again).contains("\"stored\": \"unchanged\", \"kept_as\": null"),
        "{}",
        stdout(&again)
    );
    assert_eq!(stamp(&stored), before, "the stored file was touched");
    assert_same_file(&src, &stored);
    assert!(versions(&srv.dir).is_empty());
    assert!(held_parts(&srv.dir).is_empty());
    // In words, without --json.
    let port = srv.port();
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--quiet",
            src.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_ok(&out);
    assert!(stdout(&out).contains("sent 0 bytes"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("already held this content"),
        "{}",
        stdout(&out)
    );
    assert!(
        srv.log.wait_for("same content; left untouched", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn a_different_file_under_a_stored_name_keeps_the_old_one_as_a_version() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("doc.bin");
    write_random(&src, SIZE, 2);
    let original = std::fs::read(&src).unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    assert_ok(&send(&srv, &src, &[]));
    // One byte changed: only its block travels, the old file is kept.
    flip_byte(&src, SIZE / 2);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert!(field(&out, "bytes_sent") < SIZE / 2, "{}", stdout(&out));
    assert!(field(&out, "bytes_sent") > 0);
    assert!(
        stdout(&out).contains("\"stored\": \"kept\", \"kept_as\": \"doc.bin.~1~\""),
        "{}",
        stdout(&out)
    );
    assert_same_file(&src, &srv.dir.join("doc.bin"));
    assert_eq!(
        std::fs::read(srv.dir.join("doc.bin.~1~")).unwrap(),
        original
    );
    // Another size, in words this time: the next number, nothing overwritten.
    let second = std::fs::read(&src).unwrap();
    write_random(&src, 1000, 3);
    let port = srv.port();
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--quiet",
            src.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("kept it as doc.bin.~2~"),
        "{}",
        stdout(&out)
    );
    assert_eq!(versions(&srv.dir), ["doc.bin.~1~", "doc.bin.~2~"]);
    assert_eq!(
        std::fs::read(srv.dir.join("doc.bin.~1~")).unwrap(),
        original
    );
    assert_eq!(std::fs::read(srv.dir.join("doc.bin.~2~")).unwrap(), second);
    assert_same_file(&src, &srv.dir.join("doc.bin"));
    assert!(
        srv.log.wait_for("kept it as doc.bin.~2~", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn overwrite_replaces_the_stored_file_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("o.bin");
    write_random(&src, 4096, 4);
    let srv = ServerProc::start(&t.path().join("store"), &["--overwrite"]);
    assert_ok(&send(&srv, &src, &[]));
    write_random(&src, 5000, 5);
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("\"stored\": \"replaced\", \"kept_as\": null"),
        "{}",
        stdout(&out)
    );
    assert_same_file(&src, &srv.dir.join("o.bin"));
    assert!(versions(&srv.dir).is_empty());
    // The same content again still sends nothing.
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert_eq!(field(&out, "bytes_sent"), 0);
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn a_stored_file_changed_behind_the_servers_back_is_not_taken_as_identical() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("c.bin");
    write_random(&src, SIZE, 6);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    assert_ok(&send(&srv, &src, &[]));
    // Someone edits the stored file in place and puts its mtime back.
    let stored = srv.dir.join("c.bin");
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    flip_byte(&stored, 10);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let edited = std::fs::read(&stored).unwrap();
    let out = send(&srv, &src, &[]);
    assert_ok(&out);
    assert_eq!(
        field(&out, "bytes_sent"),
        SIZE,
        "the edited file was trusted"
    );
    assert_same_file(&src, &stored);
    assert_eq!(std::fs::read(srv.dir.join("c.bin.~1~")).unwrap(), edited);
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn legacy_clients_get_the_same_policy_without_being_told() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipping: python3 not found");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("leg.bin");
    write_random(&src, 3 * 1024 * 1024 + 1, 7);
    let original = std::fs::read(&src).unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let port = srv.port();
    let ok = |o: &std::process::Output| {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&legacy_py_client(&port, &src, &[]));
    let stored = srv.dir.join("leg.bin");
    let before = stamp(&stored);
    // The same content: held whole at once, nothing sent, untouched.
    let again = ok(&legacy_py_client(&port, &src, &[]));
    assert!(again.contains("sent 0 bytes"), "{again}");
    assert_eq!(stamp(&stored), before);
    // A different content: stored, the old file kept as a version.
    flip_byte(&src, 5);
    ok(&legacy_py_client(&port, &src, &[]));
    assert_same_file(&src, &stored);
    assert_eq!(
        std::fs::read(srv.dir.join("leg.bin.~1~")).unwrap(),
        original
    );
    assert!(
        srv.log.wait_for("kept it as leg.bin.~1~", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

/// `bigtransfer list --host 127.0.0.1 --port PORT EXTRA...`, with a known
/// hosts file of its own.
pub fn list(srv: &ServerProc, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["list", "--host", "127.0.0.1", "--port", &srv.port()])
        .arg("--known-hosts")
        .arg(fresh_known_hosts())
        .args(extra);
    output_within(&mut cmd, LONG, "list")
}

#[test]
fn list_shows_files_versions_and_partial_uploads_with_hostile_names_escaped() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("a b.bin");
    let crc_a = write_random(&src, 300_000, 8);
    assert_ok(&send(&srv, &src, &[]));
    let crc_b = write_random(&src, 1000, 9);
    assert_ok(&send(&srv, &src, &[]));
    // A file put there by other means: a hostile name, no record.
    std::fs::write(srv.dir.join("evil\x1b[2J\nfile"), b"xyz").unwrap();
    // A partial upload: a slow client killed mid-way.
    let big = t.path().join("part.bin");
    write_random(&big, 40 * 1024 * 1024, 10);
    let c = spawn_client(&srv, &big, &["--limit-rate", "20M"]);
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= 2 << 20),
        "no progress"
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
    let _ = finish_client(c);
    assert!(wait_until(LONG, || list(&srv, &["--json"])
        .stdout
        .windows(7)
        .any(|w| w == b"part.bi")));

    let out = list(&srv, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("file")
            && l.contains(&format!("crc32 {crc_b:08x}"))
            && l.ends_with("  a b.bin")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("crc32 {crc_a:08x}")) && l.ends_with("  a b.bin.~1~")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("evil\\u{1b}[2J\\u{a}file")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("partial")
            && l.contains(" 41943040 ")
            && l.ends_with("  part.bin")),
        "{text}"
    );
    assert!(!text.contains('\x1b'));

    let out = list(&srv, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{v}");
    let a = files.iter().find(|f| f["name"] == "a b.bin").unwrap();
    assert_eq!(
        (a["size"].as_u64(), a["crc32"].as_u64()),
        (Some(1000), Some(crc_b as u64))
    );
    let old = files.iter().find(|f| f["name"] == "a b.bin.~1~").unwrap();
    // The kept version keeps its record: its CRC-32 is known.
    assert_eq!(
        (old["size"].as_u64(), old["crc32"].as_u64()),
        (Some(300_000), Some(crc_a as u64))
    );
    let p = &v["partial"][0];
    assert_eq!(
        (p["name"].as_str(), p["size"].as_u64()),
        (Some("part.bin"), Some(40 << 20))
    );
    assert!(p["held"].as_u64().unwrap() < 40 << 20);
    assert_eq!(v["encrypted"], true);
    // One name: itself and its versions only.
    let out = list(&srv, &["--json", "a b.bin"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a b.bin", "a b.bin.~1~"]);
    assert!(v["partial"].as_array().unwrap().is_empty());
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn list_needs_the_token_when_the_server_has_one() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, "correct horse battery staple 42\n").unwrap();
    let tok = tok.to_str().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", tok]);
    let src = t.path().join("s.bin");
    write_random(&src, 5000, 11);
    assert_ok(&send(&srv, &src, &["--token-file", tok]));
    let out = list(&srv, &["--token-file", tok]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("  s.bin\n"));
    let out = list(&srv, &[]);
    assert_eq!(out.status.code(), Some(6), "refused without the token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires a token"));
    assert!(out.stdout.is_empty());
    assert_eq!(srv.terminate().code(), Some(0));
}
