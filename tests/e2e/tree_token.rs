//! Trees on a server with a token: the tree session answers the same
//! challenge as a single upload (inside TLS the bound proofs, in plaintext
//! the plain answer); a right token stores the tree identical, a wrong or
//! missing one is refused in words with nothing written; the same for
//! getting the tree back.

use std::fs;
use std::path::Path;

use crate::harness::*;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-tree-token";

/// A small tree: nested and empty directories, a symlink inside, files.
fn small_tree(base: &Path) -> std::path::PathBuf {
    let root = base.join("set");
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    write_random(&root.join("a/b/big.bin"), 3 << 20, 41);
    fs::write(root.join("a/small.txt"), "small\n").unwrap();
    std::os::unix::fs::symlink("b/big.bin", root.join("a/link")).unwrap();
    root
}

/// The same entries, bytes and symlink targets under `a` and `b`.
fn assert_same(a: &Path, b: &Path) {
    let mut names: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut there: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    there.sort();
    assert_eq!(names, there, "{}", b.display());
    for n in names {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let ma = fs::symlink_metadata(&pa).unwrap();
        let mb = fs::symlink_metadata(&pb).unwrap();
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pb.display());
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else if ma.is_dir() {
            assert_same(&pa, &pb);
        } else {
            assert_eq!(
                fs::read(&pa).unwrap(),
                fs::read(&pb).unwrap(),
                "{}",
                pb.display()
            );
        }
    }
}

fn send_tree(srv: &ServerProc, root: &Path, extra: &[&str]) -> std::process::Output {
    let port = srv.port();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--json", "--quiet"];
    args.extend_from_slice(extra);
    args.push(root.to_str().unwrap());
    client(&args, b"", &[])
}

/// Nothing of the tree reached the storage directory: no entry, no part.
fn assert_nothing_stored(store: &Path) {
    assert!(!store.join("set").exists(), "the tree was stored");
    let parts = store.join(".bt-tree-parts");
    assert!(!parts.exists(), "a tree part directory was made");
}

fn right_wrong_and_missing(server_args: &[&str], encrypted: bool) {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    fs::write(&good, format!("{TOKEN}\n")).unwrap();
    let bad = t.path().join("bad");
    fs::write(&bad, "fedcba9876543210fedcba9876543210-not-it").unwrap();
    let root = small_tree(t.path());
    let store = t.path().join("store");
    let mut args = vec!["--token-file", good.to_str().unwrap()];
    args.extend_from_slice(server_args);
    let srv = ServerProc::start(&store, &args);

    let out = send_tree(&srv, &root, &["--token-file", bad.to_str().unwrap()]);
    assert_exit(&out, 6);
    assert!(
        stderr(&out).contains("authentication failed: wrong token"),
        "{}",
        stderr(&out)
    );
    assert_nothing_stored(&store);
    assert!(
        srv.log
            .wait_for("tree session: authentication failed: wrong token", LONG),
        "{}",
        srv.log.text()
    );

    let out = send_tree(&srv, &root, &[]);
    assert_exit(&out, 6);
    assert!(
        stderr(&out).contains("the server requires a token"),
        "{}",
        stderr(&out)
    );
    assert_nothing_stored(&store);

    let out = send_tree(&srv, &root, &["--token-file", good.to_str().unwrap()]);
    assert_exit(&out, 0);
    let enc = format!("\"encrypted\": {encrypted}");
    assert!(stdout(&out).contains(&enc), "{}", stdout(&out));
    assert_eq!(field(&out, "stored"), 2);
    assert_same(&root, &store.join("set"));
    assert!(
        srv.log.wait_for("received a tree: 2 files", LONG),
        "{}",
        srv.log.text()
    );
    get_back(&srv, &root, &good, &bad, t.path());
}

/// The tree comes back with the right token only: a wrong or missing one
/// is refused in words and nothing is written into the output directory.
fn get_back(srv: &ServerProc, root: &Path, good: &Path, bad: &Path, base: &Path) {
    use crate::tree_get::get;
    let out_dir = base.join("got");
    let dir = out_dir.to_str().unwrap();
    let out = get(
        srv,
        &["set"],
        &["-o", dir, "--token-file", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong token"), "{}", stderr(&out));
    assert!(
        !out_dir.join("set").exists(),
        "a refused get wrote the tree"
    );
    let out = get(srv, &["set"], &["-o", dir]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the server requires a token"),
        "{}",
        stderr(&out)
    );
    assert!(
        !out_dir.join("set").exists(),
        "a refused get wrote the tree"
    );
    let out = get(
        srv,
        &["set"],
        &["-o", dir, "--token-file", good.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same(root, &out_dir.join("set"));
}

#[test]
fn a_tree_inside_tls_needs_the_token_proved_both_ways() {
    right_wrong_and_missing(&[], true);
}

#[test]
fn a_tree_in_plaintext_answers_the_plain_challenge() {
    right_wrong_and_missing(&["--tls", "off"], false);
}

/// `--allow-legacy` admits legacy single uploads without a token; it
/// says nothing about tree sessions, which always authenticate.
#[test]
fn allow_legacy_does_not_open_trees_without_the_token() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    fs::write(&good, TOKEN).unwrap();
    let root = small_tree(t.path());
    let store = t.path().join("store");
    let srv = ServerProc::start(
        &store,
        &["--token-file", good.to_str().unwrap(), "--allow-legacy"],
    );
    let out = send_tree(&srv, &root, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the server requires a token"),
        "{}",
        stderr(&out)
    );
    assert_nothing_stored(&store);
}

/// Wrong tokens in tree sessions count against the address like wrong
/// answers to uploads: past the limit even the challenge is refused.
#[test]
fn wrong_tokens_in_tree_sessions_are_throttled() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    fs::write(&good, TOKEN).unwrap();
    let bad = t.path().join("bad");
    fs::write(&bad, "fedcba9876543210fedcba9876543210-not-it").unwrap();
    let root = small_tree(t.path());
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &["--token-file", good.to_str().unwrap()]);
    let limit = bigtransfer_core::throttle::MAX_FAILURES as usize;
    for _ in 0..limit {
        let out = send_tree(&srv, &root, &["--token-file", bad.to_str().unwrap()]);
        assert!(stderr(&out).contains("wrong token"), "{}", stderr(&out));
    }
    let out = send_tree(&srv, &root, &["--token-file", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("too many wrong tokens"),
        "{}",
        stderr(&out)
    );
    assert_nothing_stored(&store);
}
