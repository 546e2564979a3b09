//! Trees: `bigtransfer client DIR` sends a whole directory in one tree
//! session. A tree of every shape arrives identical (bytes, modes, mtimes,
//! symlink targets, holes), a re-send sends nothing, a killed send resumes
//! with only what was missing, and hostile manifests spoken on the wire
//! are refused in words with nothing written outside the storage dir.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bigtransfer_core::client::tree::tree_header;
use bigtransfer_core::tree::wire;

use crate::harness::*;

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    fs::File::open(p).unwrap().set_modified(t).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// The tree of the issue: nested and empty directories, unicode and
/// spaces, a symlink inside and one outside, a sparse file, `small`
/// small files and a few larger ones. Returns its root.
pub(crate) fn make_tree(base: &Path, small: usize, large: &[u64]) -> PathBuf {
    let root = base.join("photos");
    let deep = root.join("a/b c/ünïcödé dir");
    fs::create_dir_all(&deep).unwrap();
    fs::create_dir_all(root.join("empty/also empty")).unwrap();
    fs::write(deep.join("naïve file.txt"), "ünïcödé content\n").unwrap();
    fs::write(root.join("a/script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    chmod(&root.join("a/script.sh"), 0o750);
    std::os::unix::fs::symlink("../script.sh", root.join("a/b c/inside")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("a/outside")).unwrap();
    let sparse = root.join("disk.img");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"data in the middle", 20 << 20).unwrap();
    drop(f);
    for i in 0..small {
        let dir = root.join(format!("many/{:02}", i % 40));
        fs::create_dir_all(&dir).unwrap();
        let body = format!("small file {i}\n").repeat(1 + i % 50);
        fs::write(dir.join(format!("f {i}.txt")), body).unwrap();
    }
    for (i, &size) in large.iter().enumerate() {
        write_random(&root.join(format!("large{i}.bin")), size, i as u64 + 7);
    }
    chmod(&root.join("empty"), 0o750);
    // Mtimes last, deepest first, so making entries does not move them.
    set_mtime(&deep.join("naïve file.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&deep, 1_500_000_000, 5);
    set_mtime(&root.join("empty/also empty"), 1_400_000_000, 0);
    set_mtime(&root.join("empty"), 1_400_000_001, 0);
    root
}

/// `diff -r` and more: the same entries, bytes, modes, mtimes and
/// symlink targets; `skip` names the entries not expected on the server.
pub(crate) fn assert_same_tree(a: &Path, b: &Path, skip: &[&str]) {
    let mut names: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !skip.contains(&n.to_str().unwrap()))
        .collect();
    names.sort();
    let mut there: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    there.sort();
    assert_eq!(
        names,
        there,
        "entries of {} and {}",
        a.display(),
        b.display()
    );
    for n in names {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pb.display());
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
            continue;
        }
        assert_eq!(
            ma.mode() & 0o777,
            mb.mode() & 0o777,
            "mode of {}",
            pb.display()
        );
        if ma.is_dir() {
            assert_same_tree(&pa, &pb, skip);
        } else {
            assert_eq!(ma.len(), mb.len(), "size of {}", pb.display());
            assert_eq!(crc_of(&pa), crc_of(&pb), "bytes of {}", pb.display());
        }
        // After the recursion: a directory's mtime is set last.
        let (ta, tb) = (ma.modified().unwrap(), mb.modified().unwrap());
        assert_eq!(ta, tb, "mtime of {}", pb.display());
    }
}

pub(crate) fn send_tree(srv: &ServerProc, paths: &[&Path], extra: &[&str]) -> std::process::Output {
    let port = srv.port();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--json", "--quiet"];
    args.extend_from_slice(extra);
    for p in paths {
        args.push(p.to_str().unwrap());
    }
    client(&args, b"", &[])
}

#[test]
fn a_tree_arrives_identical_and_a_resend_sends_nothing() {
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let root = make_tree(src.path(), 2000, &[3 << 20, 5 << 20 | 17]);
    let srv = ServerProc::start(store.path(), &[]);
    let out = send_tree(&srv, &[&root], &[]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("\"result\": \"TREE_OK\""),
        "{}",
        stdout(&out)
    );
    assert_eq!(field(&out, "files"), 2000 + 2 + 3);
    assert_eq!(field(&out, "skipped"), 1);
    assert_eq!(field(&out, "stored"), 2005);
    let err = stderr(&out);
    assert!(
        err.contains("skipped") && err.contains("outside") && err.contains("absolute"),
        "{err}"
    );
    assert_same_tree(&root, &store.path().join("photos"), &["outside"]);
    let stored = store.path().join("photos");
    let top = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(top(&root), top(&stored), "the top directory's mtime");
    assert!(!stored.join("a/outside").exists());
    let img = fs::metadata(stored.join("disk.img")).unwrap();
    assert_eq!(img.len(), 64 << 20);
    assert!(
        img.blocks() * 512 < 1 << 20,
        "holes kept: {} blocks",
        img.blocks()
    );
    // Only the data travelled, not the 64 MiB of holes.
    assert!(field(&out, "bytes_sent") < 12 << 20, "{}", stdout(&out));
    assert!(
        srv.log.wait_for("received a tree: 2005 files", LONG),
        "{}",
        srv.log.text()
    );

    let again = send_tree(&srv, &[&root], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(field(&again, "bytes_sent"), 0);
    assert_eq!(field(&again, "held"), 2005);
    assert_same_tree(&root, &store.path().join("photos"), &["outside"]);
}

#[test]
fn several_paths_and_a_changed_file_keeps_the_old_as_a_version() {
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (one, two) = (src.path().join("one.txt"), src.path().join("dir two"));
    fs::write(&one, "first").unwrap();
    fs::create_dir(&two).unwrap();
    fs::write(two.join("x"), "x").unwrap();
    let srv = ServerProc::start(store.path(), &[]);
    let out = send_tree(&srv, &[&one, &two], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fs::read(store.path().join("one.txt")).unwrap(), b"first");
    assert_eq!(fs::read(store.path().join("dir two/x")).unwrap(), b"x");
    fs::write(two.join("x"), "changed!").unwrap();
    let out = send_tree(&srv, &[&two], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "dir two/x: stored and verified; the different file stored under this name is kept as x.~1~"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read(store.path().join("dir two/x")).unwrap(),
        b"changed!"
    );
    assert_eq!(fs::read(store.path().join("dir two/x.~1~")).unwrap(), b"x");
    assert!(
        srv.log.wait_for("is kept as x.~1~", LONG),
        "{}",
        srv.log.text()
    );
    // The interactive prompt takes a directory too.
    let three = src.path().join("three");
    fs::create_dir(&three).unwrap();
    fs::write(three.join("y"), "y").unwrap();
    let answers = format!("127.0.0.1\n{}\n{}\n", srv.port(), three.display());
    let out = client(&[], answers.as_bytes(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("TREE_OK: 1 files"),
        "{}",
        stdout(&out)
    );
    assert_eq!(fs::read(store.path().join("three/y")).unwrap(), b"y");
}

#[test]
fn a_changed_file_replaces_the_stored_one_under_overwrite() {
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dir = src.path().join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("x"), "old").unwrap();
    let srv = ServerProc::start(store.path(), &["--overwrite"]);
    assert_eq!(send_tree(&srv, &[&dir], &[]).status.code(), Some(0));
    fs::write(dir.join("x"), "new content").unwrap();
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("d/x: stored and verified; it replaced the different file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(store.path().join("d/x")).unwrap(), b"new content");
    assert!(!store.path().join("d/x.~1~").exists());
    // Not a file under the name: never replaced.
    fs::remove_file(store.path().join("d/x")).unwrap();
    fs::create_dir(store.path().join("d/x")).unwrap();
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not stored: d/x: something other than a file"),
        "{}",
        stderr(&out)
    );
}

/// Rewrites `p` with `body` (the same length as before) and sets its
/// mtime back to what it was: size and mtime both unchanged.
fn rewrite_keeping_mtime(p: &Path, body: &[u8]) {
    let before = fs::metadata(p).unwrap();
    assert_eq!(before.len(), body.len() as u64, "the same size");
    let mtime = before.modified().unwrap();
    fs::write(p, body).unwrap();
    fs::File::open(p).unwrap().set_modified(mtime).unwrap();
    assert_eq!(fs::metadata(p).unwrap().modified().unwrap(), mtime);
}

#[test]
fn content_changed_under_the_same_size_and_mtime_is_sent_and_the_old_kept() {
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dir = src.path().join("d");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/x.txt"), "old content!").unwrap();
    fs::write(dir.join("same.txt"), "unchanged").unwrap();
    let big = dir.join("big.bin");
    write_random(&big, 3 << 20 | 5, 11);
    let srv = ServerProc::start(store.path(), &[]);
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "stored"), 3);

    // A re-send of the unchanged tree: every file held, no data byte.
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "bytes_sent"), 0, "{}", stdout(&out));
    assert_eq!(field(&out, "held"), 3, "{}", stdout(&out));
    assert_eq!(field(&out, "changed_same_mtime"), 0, "{}", stdout(&out));

    // New content, the same size and mtime: not taken for held.
    rewrite_keeping_mtime(&dir.join("sub/x.txt"), b"NEW content!");
    let mut body = fs::read(&big).unwrap();
    body[2 << 20] ^= 0x55;
    rewrite_keeping_mtime(&big, &body);
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "changed_same_mtime"), 2, "{}", stdout(&out));
    assert_eq!(field(&out, "stored"), 2, "{}", stdout(&out));
    assert_eq!(field(&out, "held"), 1, "{}", stdout(&out));
    assert_eq!(
        field(&out, "bytes_sent"),
        12 + (3 << 20 | 5),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("d/sub/x.txt: stored and verified; the different file stored under this name is kept as x.txt.~1~ (its size and mtime are the same as the stored file's, its content is not)"),
        "{err}"
    );
    let stored = store.path().join("d");
    assert_eq!(fs::read(stored.join("sub/x.txt")).unwrap(), b"NEW content!");
    assert_eq!(
        fs::read(stored.join("sub/x.txt.~1~")).unwrap(),
        b"old content!"
    );
    assert_eq!(crc_of(&stored.join("big.bin")), crc_of(&big));
    assert_ne!(crc_of(&stored.join("big.bin.~1~")), crc_of(&big));
    assert_eq!(
        fs::metadata(stored.join("sub/x.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        fs::metadata(dir.join("sub/x.txt"))
            .unwrap()
            .modified()
            .unwrap()
    );
    assert!(srv.log.wait_for("held already", LONG), "{}", srv.log.text());
    // And now that is held in turn (the large one from its CRC record).
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(field(&out, "bytes_sent"), 0, "{}", stdout(&out));
    assert_eq!(field(&out, "held"), 3, "{}", stdout(&out));

    // One record per stored directory (d, d/sub), none per file.
    let sums = store.path().join(".bt-tree-parts/sums");
    let mut names: Vec<String> = fs::read_dir(sums)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.retain(|n| n.ends_with(".dir"));
    assert_eq!(names.len(), 2, "{names:?}");
    // Changed on the server, same size and mtime: its CRC record is not
    // believed (the ctime moved), the client's content goes over it.
    let on_server = stored.join("big.bin");
    let mut body = fs::read(&on_server).unwrap();
    body[5] ^= 1;
    rewrite_keeping_mtime(&on_server, &body);
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(field(&out, "changed_same_mtime"), 1, "{}", stdout(&out));
    assert_eq!(crc_of(&on_server), crc_of(&big));
    assert_eq!(crc_of(&stored.join("big.bin.~2~")), crc32fast::hash(&body));
}

#[test]
fn a_killed_tree_send_resumes_with_only_what_is_missing() {
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let root = make_tree(src.path(), 200, &[4 << 20, 4 << 20, 4 << 20, 4 << 20]);
    let total: u64 = 16 << 20;
    let srv = ServerProc::start(store.path(), &[]);
    let mut c = spawn_client(&srv, &root, &["--limit-rate", "4M"]);
    let large = |i: u32| store.path().join(format!("photos/large{i}.bin"));
    assert!(
        wait_until(LONG, || large(0).exists()),
        "the first large file never arrived"
    );
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
    let _ = wait_child(&mut c, LONG);
    assert!(!large(3).exists(), "the send ended before it was killed");
    let stored_before: u64 = (0..4)
        .filter(|&i| large(i).exists())
        .map(|_| 4u64 << 20)
        .sum();
    let out = send_tree(&srv, &[&root], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent = field(&out, "bytes_sent");
    assert!(
        sent <= total - stored_before + (1 << 20),
        "resent {sent} bytes though {stored_before} of {total} were stored"
    );
    // What was stored before the kill is held, not sent again.
    assert!(
        field(&out, "held") > stored_before / (4 << 20),
        "{}",
        stdout(&out)
    );
    assert_same_tree(&root, &store.path().join("photos"), &["outside"]);
    let parts = store.path().join(".bt-tree-parts");
    let left: Vec<_> = fs::read_dir(parts)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "sums") // the stored files' CRC-32 records
        .collect();
    assert!(left.is_empty(), "parts left behind: {left:?}");
}

/// A hand-made entry: kind, path, symlink target.
type Raw<'a> = (u8, &'a str, &'a str);

/// One manifest entry, encoded by hand (the library refuses to encode
/// the hostile ones): kind 1 file, 2 directory, 3 symlink.
fn entry(out: &mut Vec<u8>, kind: u8, path: &str, target: &str) {
    out.push(kind);
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
    match kind {
        1 => {
            out.extend_from_slice(&5u64.to_be_bytes());
            out.extend_from_slice(&0o644u32.to_be_bytes());
            out.extend_from_slice(&0i64.to_be_bytes());
            out.push(0);
        }
        2 => {
            out.extend_from_slice(&0o755u32.to_be_bytes());
            out.extend_from_slice(&0i64.to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&(target.len() as u16).to_be_bytes());
            out.extend_from_slice(target.as_bytes());
        }
    }
}

fn page(entries: &[(u8, &str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for &(k, p, t) in entries {
        entry(&mut body, k, p, t);
    }
    let mut out = b"BTMF\x01\x00".to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Speaks a tree session in plaintext with one page; the server's fault.
fn hostile(srv: &ServerProc, entries: &[(u8, &str, &str)]) -> String {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(&tree_header()).unwrap();
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).unwrap();
    assert_eq!(magic, bigtransfer_core::v2::MAGIC);
    let mut w: &TcpStream = &s;
    wire::write_frame(&mut w, wire::PAGE, &page(entries)).unwrap();
    let mut buf = Vec::new();
    loop {
        let mut r: &TcpStream = &s;
        match wire::read_frame(&mut r, &mut buf) {
            Ok(wire::FAULT) => return String::from_utf8_lossy(&buf).into_owned(),
            Ok(wire::STATE) => panic!("the server took {entries:?}"),
            Ok(_) => {}
            Err(e) => panic!("no fault from the server: {e}"),
        }
    }
}

#[test]
fn hostile_manifests_are_refused_in_words_and_nothing_lands_outside() {
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("store");
    let outside = base.path().join("outside");
    fs::create_dir_all(&store).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(store.join("victim"), "stored").unwrap();
    std::os::unix::fs::symlink(&outside, store.join("trap")).unwrap();
    let srv = ServerProc::start(&store, &["--max-tree-entries", "10"]);
    let cases: &[(&[Raw], &str)] = &[
        (&[(1, "../evil", "")], "refused path \"../evil\""),
        (&[(1, "/etc/evil", "")], "absolute"),
        (
            &[(2, "t", ""), (1, "t/x", ""), (1, "t/x", "")],
            "appears twice",
        ),
        (
            &[(1, "t", ""), (1, "t/x", "")],
            "is a file in one entry and a directory in another",
        ),
        (
            &[(2, "t", ""), (3, "t/l", "../../etc")],
            "points outside the tree",
        ),
        (
            &[(2, "t", ""), (3, "t/l", "/etc")],
            "the target is absolute",
        ),
        (
            &[(2, "victim", "")],
            "stored as something other than a directory",
        ),
        (
            &[(2, "trap", ""), (1, "trap/x", "")],
            "stored as something other than a directory",
        ),
        (&[(2, ".bt-tree-parts", "")], "the server's own"),
        // A loop of symlinks is stored as links, never followed: a path
        // through one is refused.
        (
            &[
                (2, "l", ""),
                (3, "l/a", "b"),
                (1, "l/a/x", ""),
                (3, "l/b", "a"),
            ],
            "\"l/a\" is a symlink in one entry and a directory in another",
        ),
        (&[(1, "a\u{1}b", "")], "control"),
    ];
    for (entries, words) in cases {
        let fault = hostile(&srv, entries);
        assert!(fault.contains(words), "{entries:?}: {fault}");
    }
    let many: Vec<String> = (0..11).map(|i| format!("f{i:02}")).collect();
    let entries: Vec<(u8, &str, &str)> = many.iter().map(|n| (1, n.as_str(), "")).collect();
    let fault = hostile(&srv, &entries);
    assert!(fault.contains("more than 10 entries"), "{fault}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside"
    );
    assert_eq!(fs::read(store.join("victim")).unwrap(), b"stored");
    assert!(!base.path().join("evil").exists() && !Path::new("/etc/evil").exists());
    // The server goes on serving.
    let src = tempfile::tempdir().unwrap();
    let d = src.path().join("fine");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("x"), "ok").unwrap();
    let out = send_tree(&srv, &[&d], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn an_abandoned_tree_part_expires_like_a_held_part() {
    let store = tempfile::tempdir().unwrap();
    let parts = store.path().join(".bt-tree-parts");
    fs::create_dir(&parts).unwrap();
    let old = parts.join("0123abcd.part");
    fs::write(&old, "abandoned").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let srv = ServerProc::start(store.path(), &["--expire-partial", "1s"]);
    assert!(wait_until(LONG, || !old.exists()), "{}", srv.log.text());
    assert!(
        srv.log
            .wait_for("expired held tree part 0123abcd.part", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_tree_send_survives_a_killed_server() {
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let root = make_tree(src.path(), 50, &[4 << 20, 4 << 20, 4 << 20]);
    let srv = ServerProc::start(store.path(), &[]);
    let mut c = spawn_client(&srv, &root, &["--limit-rate", "4M", "--retries", "0"]);
    let large = |i: u32| store.path().join(format!("photos/large{i}.bin"));
    assert!(
        wait_until(LONG, || large(0).exists()),
        "large0 never arrived"
    );
    srv.kill9();
    let _ = wait_child(&mut c, LONG);
    assert!(
        !large(2).exists(),
        "the send ended before the server was killed"
    );
    let stored_before: u64 = (0..3)
        .filter(|&i| large(i).exists())
        .map(|_| 4u64 << 20)
        .sum();
    let srv = ServerProc::start(store.path(), &[]);
    let out = send_tree(&srv, &[&root], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent = field(&out, "bytes_sent");
    assert!(
        sent <= (12 << 20) - stored_before + (1 << 20),
        "resent {sent} bytes though {stored_before} were stored"
    );
    assert_same_tree(&root, &store.path().join("photos"), &["outside"]);
}

/// One raw tree session of the one file `d/x` ("hello", mtime 0) with
/// `header`: the state record of the file, then the verdicts' words (the
/// data is sent when the state asks for it, from 0).
fn raw_send_hello(srv: &ServerProc, header: &[u8]) -> (Vec<u8>, String) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(header).unwrap();
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).unwrap();
    assert_eq!(magic, bigtransfer_core::v2::MAGIC);
    let mut w: &TcpStream = &s;
    wire::write_frame(&mut w, wire::PAGE, &page(&[(2, "d", ""), (1, "d/x", "")])).unwrap();
    let mut buf = Vec::new();
    let mut r: &TcpStream = &s;
    assert_eq!(wire::read_frame(&mut r, &mut buf).unwrap(), wire::STATE);
    let state = buf.clone();
    if state[0] == wire::SEND {
        let mut begin = 0u32.to_be_bytes().to_vec();
        begin.extend_from_slice(&0u64.to_be_bytes());
        wire::write_frame(&mut w, wire::BEGIN, &begin).unwrap();
        wire::write_frame(&mut w, wire::DATA, b"hello").unwrap();
        let crc = crc32fast::hash(b"hello").to_be_bytes();
        wire::write_frame(&mut w, wire::CHECK, &crc).unwrap();
    }
    wire::write_frame(&mut w, wire::END, &[]).unwrap();
    let mut words = String::new();
    loop {
        match wire::read_frame(&mut r, &mut buf).unwrap() {
            wire::VERDICT => {
                let (_, path, text) = wire::parse_verdict(&buf).unwrap();
                words.push_str(&format!("{path}: {text}\n"));
            }
            wire::FINISHED => return (state, words),
            other => panic!("unexpected frame {other}"),
        }
    }
}

#[test]
fn an_older_tree_client_is_never_told_held_on_size_and_mtime_alone() {
    let store = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(store.path(), &[]);
    // The header of tree clients before verified holds: no "held".
    let json = br#"{"filename": "", "filesize": 0, "crc32": 0, "bt": {"v": 2, "op": "tree", "block": 1048576}}"#;
    let mut old = (json.len() as u32).to_be_bytes().to_vec();
    old.extend_from_slice(json);
    let (state, words) = raw_send_hello(&srv, &old);
    assert_eq!(state, [&[wire::SEND][..], &[0; 8]].concat());
    assert!(words.contains("d/x: stored and verified"), "{words}");
    // Again: sent (9-byte record, "send"), found the same, no version.
    let (state, words) = raw_send_hello(&srv, &old);
    assert_eq!(state, [&[wire::SEND][..], &[0; 8]].concat());
    assert!(
        words.contains("d/x: the same content was stored already; left as it is"),
        "{words}"
    );
    assert!(!store.path().join("d/x.~1~").exists());
    // A client that asks: a 13-byte record, "check" and the stored CRC-32.
    let (state, words) = raw_send_hello(&srv, &tree_header());
    let crc = crc32fast::hash(b"hello").to_be_bytes();
    assert_eq!(state, [&[wire::CHECK_CRC][..], &[0; 8], &crc].concat());
    assert_eq!(words, "");
    assert_eq!(fs::read(store.path().join("d/x")).unwrap(), b"hello");
    assert!(
        srv.log.wait_for("1 held already", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_quiet_change_on_a_later_page_is_caught_too() {
    // Over one page (4096 entries): the client hashes the second page's
    // small files early, while the server hashes its own.
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dir = src.path().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..4500 {
        fs::write(dir.join(format!("f{i:05}")), format!("file {i:05}")).unwrap();
    }
    let srv = ServerProc::start(store.path(), &[]);
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "stored"), 4500, "{}", stdout(&out));
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(field(&out, "bytes_sent"), 0, "{}", stdout(&out));
    assert_eq!(field(&out, "held"), 4500, "{}", stdout(&out));
    rewrite_keeping_mtime(&dir.join("f04321"), b"FILE 04321");
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "changed_same_mtime"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "bytes_sent"), 10, "{}", stdout(&out));
    assert_eq!(field(&out, "held"), 4499, "{}", stdout(&out));
    let stored = store.path().join("many");
    assert_eq!(fs::read(stored.join("f04321")).unwrap(), b"FILE 04321");
    assert_eq!(fs::read(stored.join("f04321.~1~")).unwrap(), b"file 04321");
}

#[test]
fn changes_on_either_side_are_caught_once_both_sides_keep_crc_records() {
    // Both sides record a file's CRC-32 per directory; the client only
    // once the file's ctime is over a second old (a write in the same
    // clock tick could otherwise hide). Aging the tree first (not a
    // synchronisation: there is nothing to wait for) makes the re-sends
    // below answer from records on both sides, opening no file.
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let dir = src.path().join("aged");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/a.txt"), "content a").unwrap();
    fs::write(dir.join("b.txt"), "content b").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let srv = ServerProc::start(store.path(), &[]);
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(field(&out, "stored"), 2, "{}", stdout(&out));
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(field(&out, "held"), 2, "{}", stdout(&out));
    assert_eq!(field(&out, "bytes_sent"), 0, "{}", stdout(&out));

    // On the client: new content, the same size and mtime.
    rewrite_keeping_mtime(&dir.join("sub/a.txt"), b"CONTENT A");
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "changed_same_mtime"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "bytes_sent"), 9, "{}", stdout(&out));
    let stored = store.path().join("aged");
    assert_eq!(fs::read(stored.join("sub/a.txt")).unwrap(), b"CONTENT A");
    assert_eq!(
        fs::read(stored.join("sub/a.txt.~1~")).unwrap(),
        b"content a"
    );

    // On the server: its record of b.txt no longer matches (ctime).
    rewrite_keeping_mtime(&stored.join("b.txt"), b"CONTENT B");
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(field(&out, "changed_same_mtime"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "held"), 1, "{}", stdout(&out));
    assert_eq!(fs::read(stored.join("b.txt")).unwrap(), b"content b");
    assert_eq!(fs::read(stored.join("b.txt.~1~")).unwrap(), b"CONTENT B");

    // Hostile or damaged server records are ignored, never trusted.
    let sums = store.path().join(".bt-tree-parts/sums");
    for e in fs::read_dir(&sums).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(bytes.len() / 2);
        bytes.extend_from_slice(b"\x00\x05../..\xff\xff");
        fs::write(&p, bytes).unwrap();
    }
    let out = send_tree(&srv, &[&dir], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(field(&out, "held"), 2, "{}", stdout(&out));
    assert_eq!(field(&out, "bytes_sent"), 0, "{}", stdout(&out));
}
