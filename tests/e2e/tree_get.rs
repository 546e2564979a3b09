//! `bigtransfer get` of trees: a tree sent to the server comes back into
//! an empty directory identical (bytes, modes, mtimes, symlink targets,
//! empty directories, holes), a second get fetches nothing, a get killed
//! mid-way resumes with only what was missing and never shows a partial
//! file under its final name, several remotes and paths below the top
//! land under their base names, and set-id bits never come back.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::*;
use crate::tree::{assert_same_tree, make_tree, send_tree};

fn get_cmd(srv: &ServerProc, remotes: &[&str], extra: &[&str]) -> Command {
    let mut cmd = crate::harness::get_cmd(&srv.port(), &[&["--json"], extra].concat());
    cmd.args(remotes);
    cmd
}

pub(crate) fn get(srv: &ServerProc, remotes: &[&str], extra: &[&str]) -> Output {
    output_within(&mut get_cmd(srv, remotes, extra), LONG, "get")
}

#[track_caller]
fn assert_tree_ok(out: &Output) {
    assert_exit(out, 0);
    assert!(
        stdout(out).contains("\"result\": \"TREE_OK\""),
        "{}",
        stdout(out)
    );
}

fn sent(srv: &ServerProc, root: &Path) {
    let out = send_tree(srv, &[root], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_sent_tree_comes_back_identical_and_a_second_get_fetches_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = make_tree(&t.path().join("src"), 220, &[3 << 20, 5 << 20 | 17]);
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    sent(&srv, &root);
    // A set-id bit on the server never comes back.
    let script = store.join("photos/a/script.sh");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o4750)).unwrap();
    let dest = t.path().join("got");
    fs::create_dir(&dest).unwrap();
    let out = get(&srv, &["photos"], &["-o", dest.to_str().unwrap()]);
    assert_tree_ok(&out);
    let files = 220 + 2 + 3;
    assert_eq!(field(&out, "files"), files);
    assert_eq!(field(&out, "downloaded"), files);
    assert_same_tree(&root, &dest.join("photos"), &["outside"]);
    let top = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(top(&root), top(&dest.join("photos")), "the top's mtime");
    let img = fs::metadata(dest.join("photos/disk.img")).unwrap();
    assert_eq!(img.len(), 64 << 20);
    assert!(
        img.blocks() * 512 < 2 << 20,
        "holes kept: {} blocks",
        img.blocks()
    );
    let leftovers: Vec<_> = walk_names(&dest)
        .into_iter()
        .filter(|n| n.contains("bigtransfer-"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    assert!(srv.log.wait_for("sent a tree", LONG), "{}", srv.log.text());

    let again = get(&srv, &["photos"], &["-o", dest.to_str().unwrap()]);
    assert_tree_ok(&again);
    assert_eq!(field(&again, "downloaded"), 0);
    assert_eq!(field(&again, "bytes_received"), 0);
    assert_eq!(field(&again, "held"), files + 1, "files and the symlink");
    assert_same_tree(&root, &dest.join("photos"), &["outside"]);
}

/// Every name under `dir`, recursively.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

#[test]
fn a_killed_tree_get_resumes_with_only_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let root = make_tree(&t.path().join("src"), 200, &[4 << 20; 4]);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    sent(&srv, &root);
    let dest = t.path().join("got");
    let mut child = get_cmd(
        &srv,
        &["photos"],
        &["--limit-rate", "6M", "-o", dest.to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let large = |i: u32| dest.join(format!("photos/large{i}.bin"));
    let (part1, _) = bigtransfer_core::client::part_paths(&large(1));
    let started = wait_until(LONG, || part1.exists() && large(0).exists());
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = wait_child(&mut child, LONG);
    assert!(started, "the download never got to the second large file");
    assert!(!large(3).exists(), "the get ended before it was killed");
    // Nothing partial under a final name: what is there is whole.
    for i in 0..4 {
        if large(i).exists() {
            assert_same_file(&root.join(format!("large{i}.bin")), &large(i));
        }
    }
    let here: u64 = (0..4)
        .filter(|&i| large(i).exists())
        .map(|_| 4u64 << 20)
        .sum();
    let out = get(&srv, &["photos"], &["-o", dest.to_str().unwrap()]);
    assert_tree_ok(&out);
    let got = field(&out, "bytes_received");
    let total = 16u64 << 20;
    assert!(
        got + here <= total + (1 << 20),
        "received {got} bytes again though {here} of {total} were here"
    );
    assert!(field(&out, "held") >= here / (4 << 20), "{}", stdout(&out));
    assert_same_tree(&root, &dest.join("photos"), &["outside"]);
    assert!(walk_names(&dest)
        .iter()
        .all(|n| !n.contains("bigtransfer-")));
}

#[test]
fn several_remotes_and_paths_below_the_top_land_under_their_base_names() {
    let t = tempfile::tempdir().unwrap();
    let root = make_tree(&t.path().join("src"), 3, &[]);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    sent(&srv, &root);
    let dest = t.path().join("got");
    let out = get(
        &srv,
        &["photos/a/script.sh", "photos/empty"],
        &["-o", dest.to_str().unwrap()],
    );
    assert_tree_ok(&out);
    let script = dest.join("script.sh");
    assert_same_file(&root.join("a/script.sh"), &script);
    assert_eq!(fs::metadata(&script).unwrap().mode() & 0o777, 0o750);
    assert!(dest.join("empty/also empty").is_dir());
    // A different file here is not replaced without --force.
    fs::write(&script, "mine").unwrap();
    let out = get(
        &srv,
        &["photos/a/script.sh"],
        &["-o", dest.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not replaced: script.sh"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&script).unwrap(), b"mine");
    let out = get(
        &srv,
        &["photos/a/script.sh"],
        &["--force", "-o", dest.to_str().unwrap()],
    );
    assert_tree_ok(&out);
    assert_same_file(&root.join("a/script.sh"), &script);
    // A symlink planted on the server pointing out is never served or
    // followed: left out of a tree, refused when named.
    let store = t.path().join("store");
    std::os::unix::fs::symlink("/etc", store.join("photos/a/evil")).unwrap();
    let other = t.path().join("other");
    let out = get(&srv, &["photos/a"], &["-o", other.to_str().unwrap()]);
    assert_tree_ok(&out);
    assert!(other.join("a/script.sh").is_file());
    assert!(
        fs::symlink_metadata(other.join("a/evil")).is_err(),
        "served the planted link"
    );
    assert!(srv.log.wait_for("left out", LONG), "{}", srv.log.text());
    let out = get(
        &srv,
        &["photos/a/evil", "x"],
        &["-o", other.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a symlink on the server"),
        "{}",
        stderr(&out)
    );
    // Names the server would never serve are refused in words.
    let out = get(
        &srv,
        &["photos/../../etc", "x"],
        &["-o", dest.to_str().unwrap()],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("\"..\""), "{}", stderr(&out));
    let out = get(
        &srv,
        &["photos/nothing", "x"],
        &["-o", dest.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no \"photos/nothing\" on the server"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn list_of_a_directory_shows_every_file_under_it_page_by_page() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src/set");
    for i in 0..300 {
        let d = root.join(format!("d{}", i % 3));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f {i}")), vec![b'x'; i]).unwrap();
    }
    fs::create_dir_all(root.join("d0/empty")).unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    sent(&srv, &root);
    let out = crate::keep::list(&srv, &["set"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 299  ") && l.ends_with("set/d2/f 299")),
        "{text}"
    );
    let out = crate::keep::list(&srv, &["--json", "set/d1"]);
    let json = stdout(&out);
    assert_eq!(json.matches("\"name\": \"set/d1/").count(), 100, "{json}");
    assert!(!json.contains("set/d0"), "{json}");
}

#[test]
fn a_tree_get_survives_the_server_killed_and_restarted() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src/set");
    fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..3 {
        write_random(&root.join(format!("sub/big{i}.bin")), 6 << 20, 200 + i);
    }
    fs::write(root.join("small.txt"), "small").unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    sent(&srv, &root);
    let dest = t.path().join("got");
    let (part1, _) = bigtransfer_core::client::part_paths(&dest.join("set/sub/big1.bin"));
    let mut child = get_cmd(
        &srv,
        &["set"],
        &[
            "--limit-rate",
            "6M",
            "--retries",
            "0",
            "-o",
            dest.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    assert!(
        wait_until(LONG, || part1.exists()),
        "the download never got to the second file"
    );
    srv.kill9();
    let status = wait_child(&mut child, LONG).expect("the client noticed the server's death");
    assert_eq!(status.code(), Some(4), "connection lost, retries exhausted");
    let mut out = String::new();
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    assert!(out.contains("\"reason\""), "a JSON failure: {out}");
    assert!(!dest.join("set/sub/big2.bin").exists());
    let again = ServerProc::start(&store, &[]);
    let out = get(&again, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_tree_ok(&out);
    assert!(field(&out, "held") >= 1, "big0 was kept: {}", stdout(&out));
    assert!(
        field(&out, "bytes_received") < 18 << 20,
        "only what was missing travelled: {}",
        stdout(&out)
    );
    assert_same_tree(&root, &dest.join("set"), &[]);
}

#[test]
fn a_file_changed_on_the_server_after_it_was_listed_fails_in_words_and_comes_next_time() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src/set");
    fs::create_dir_all(&root).unwrap();
    write_random(&root.join("a-big.bin"), 8 << 20, 300);
    // More files between than the client asks for ahead (64): the request
    // for z.txt goes out only once a-big.bin has arrived, at the paced rate.
    fs::create_dir(root.join("m")).unwrap();
    for i in 0..80 {
        fs::write(root.join(format!("m/f{i}")), "x").unwrap();
    }
    fs::write(root.join("z.txt"), "before").unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    sent(&srv, &root);
    let dest = t.path().join("got");
    let (part, _) = bigtransfer_core::client::part_paths(&dest.join("set/a-big.bin"));
    let mut child = get_cmd(
        &srv,
        &["set"],
        &["--limit-rate", "4M", "-o", dest.to_str().unwrap()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    assert!(
        wait_until(LONG, || part.exists()),
        "the download never began"
    );
    // Listed already (the page went out first); its request comes later.
    fs::write(store.join("set/z.txt"), "after, and longer").unwrap();
    let status = wait_child(&mut child, LONG).expect("get hung");
    let (mut o, mut e) = (String::new(), String::new());
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut o);
    let _ = child.stderr.take().unwrap().read_to_string(&mut e);
    let out = Output {
        status,
        stdout: o.into_bytes(),
        stderr: e.into_bytes(),
    };
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed: set/z.txt: it changed on the server since it was listed"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.join("set/z.txt").exists());
    assert_same_file(&root.join("a-big.bin"), &dest.join("set/a-big.bin"));
    let out = get(&srv, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_tree_ok(&out);
    assert_eq!(
        fs::read(dest.join("set/z.txt")).unwrap(),
        b"after, and longer"
    );
}
