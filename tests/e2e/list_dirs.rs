//! `bigtransfer list` of a whole server: its directories (stored trees)
//! as `NAME/` entries with their files and bytes, the tree uploads in
//! progress summed up per tree by its name (one unnamed summary to an
//! older client), single partial uploads with their progress, hostile
//! directory names escaped, and none of the new entry kinds sent to a
//! client that did not ask for them (an older one would refuse them).

use std::fs;
use std::path::Path;

use bigtransfer_core::client::{list_remote, list_remote_with};
use bigtransfer_core::listing::EntryKind;
use bigtransfer_core::SendOptions;

use crate::harness::*;
use crate::keep::list;

/// The longest part of a tree upload the server holds.
fn tree_part_len(store: &Path) -> u64 {
    largest_part_len(&store.join(".bt-tree-parts"))
}

/// A file, a tree `t/` (nested), a hostile directory put there by hand,
/// one single and one tree upload interrupted mid-way.
fn populated(t: &Path) -> (ServerProc, u32) {
    let srv = ServerProc::start(&t.join("store"), &[]);
    let f = t.join("f.bin");
    let crc_f = write_random(&f, 5000, 21);
    assert_ok(&send(&srv, &f, &[]));
    let root = t.join("src/t");
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/c.txt"), vec![b'c'; 100]).unwrap();
    fs::write(root.join("a/e.txt"), vec![b'e'; 7]).unwrap();
    fs::write(root.join("d.txt"), vec![b'd'; 50]).unwrap();
    let out = crate::tree::send_tree(&srv, &[&root], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let evil = srv.dir.join("evil\x1b[2J\ndir");
    fs::create_dir(&evil).unwrap();
    fs::write(evil.join("x"), b"abc").unwrap();
    let big = t.join("part.bin");
    write_random(&big, 40 << 20, 22);
    let slow = t.join("src2/slow");
    fs::create_dir_all(&slow).unwrap();
    write_random(&slow.join("big.bin"), 40 << 20, 23);
    let c1 = spawn_client(&srv, &big, &["--limit-rate", "20M"]);
    let c2 = spawn_client(&srv, &slow, &["--limit-rate", "20M"]);
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= 2 << 20
            && tree_part_len(&srv.dir) >= 2 << 20),
        "no progress"
    );
    for c in [c1, c2] {
        // SAFETY: SIGKILL to the PID of a child we started.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
        let _ = finish_client(c);
    }
    // The server notices the lost connections and checkpoints.
    assert!(wait_until(LONG, || stdout(&list(&srv, &[])).contains("part.bin")));
    (srv, crc_f)
}

#[test]
fn list_shows_directories_partials_and_tree_uploads_in_progress() {
    let t = tempfile::tempdir().unwrap();
    let (srv, crc_f) = populated(t.path());

    let out = list(&srv, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let has = |f: &dyn Fn(&str) -> bool| text.lines().any(f);
    assert!(
        has(&|l| l.starts_with("file")
            && l.contains(&format!("crc32 {crc_f:08x}"))
            && l.ends_with("  f.bin")),
        "{text}"
    );
    assert!(
        has(&|l| l.starts_with("dir ")
            && l.contains(" 157  ")
            && l.contains("files 3")
            && l.ends_with("  t/")),
        "{text}"
    );
    assert!(
        has(&|l| l.starts_with("dir ") && l.ends_with("  evil\\u{1b}[2J\\u{a}dir/")),
        "{text}"
    );
    assert!(
        has(&|l| l.starts_with("partial")
            && l.contains(" 41943040 ")
            && l.contains("%)")
            && l.ends_with("  part.bin")),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("tree upload in progress: slow/: 1 file, ")),
        "{text}"
    );
    assert!(!text.contains('\x1b'));
    assert!(!text.contains(".bt-tree-parts"), "{text}");

    let out = list(&srv, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["f.bin"], "{v}");
    let dirs = v["dirs"].as_array().unwrap();
    let d = dirs.iter().find(|d| d["name"] == "t").expect("t listed");
    assert_eq!(
        (d["kind"].as_str(), d["files"].as_u64(), d["size"].as_u64()),
        (Some("dir"), Some(3), Some(157)),
        "{v}"
    );
    assert!(
        dirs.iter().any(|d| d["name"] == "evil\\u{1b}[2J\\u{a}dir"),
        "{v}"
    );
    assert_eq!(v["partial"][0]["name"], "part.bin", "{v}");
    assert_eq!(v["tree_parts"]["files"], 1, "{v}");
    assert!(v["tree_parts"]["held"].as_u64().unwrap() >= 2 << 20, "{v}");
    // By tree: its root's name, noted beside its part at upload time.
    let trees = v["tree_uploads"].as_array().unwrap();
    assert_eq!(trees.len(), 1, "{v}");
    assert_eq!(
        (trees[0]["name"].as_str(), trees[0]["files"].as_u64()),
        (Some("slow"), Some(1)),
        "{v}"
    );
    assert_eq!(trees[0]["held"], v["tree_parts"]["held"], "{v}");

    // A listing of the tree itself is still every file under it.
    let out = list(&srv, &["t"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with("file")), "{text}");
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn list_without_the_dirs_flag_gets_no_directory_entries() {
    let t = tempfile::tempdir().unwrap();
    let (srv, _) = populated(t.path());
    let mut opts = SendOptions::new("127.0.0.1", srv.port().parse().unwrap());
    opts.known_hosts = Some(fresh_known_hosts());
    // An old-style request: files and partial uploads only.
    let old = list_remote(&opts, None).expect("listing");
    let mut kinds: Vec<(EntryKind, String)> = old
        .entries
        .iter()
        .map(|e| (e.kind, String::from_utf8_lossy(&e.name).into_owned()))
        .collect();
    kinds.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        kinds,
        [
            (EntryKind::File, "f.bin".to_string()),
            (EntryKind::Partial, "part.bin".to_string())
        ]
    );
    let new = list_remote_with(&opts, None, true).expect("listing");
    let n = |k: EntryKind| new.entries.iter().filter(|e| e.kind == k).count();
    // t/, the hostile one, and slow/ (made as the tree upload began).
    assert_eq!((n(EntryKind::Dir), n(EntryKind::TreeParts)), (3, 1));
    let tree = new.entries.iter().find(|e| e.kind == EntryKind::TreeParts);
    assert_eq!(tree.map(|e| &e.name[..]), Some(&b"slow"[..]));
    // A client that asks for directories but not for trees by name (an
    // older one) gets the one unnamed summary it always got.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.port().parse().unwrap())).unwrap();
    let json = r#"{"filename": "", "filesize": 0, "crc32": null, "bt": {"v": 2, "block": 65536, "rev": 3, "op": "list", "dirs": true}}"#;
    use std::io::Write;
    s.write_all(&(json.len() as u32).to_be_bytes()).unwrap();
    s.write_all(json.as_bytes()).unwrap();
    let bigtransfer_core::v2::ServerMsg::ListPage { entries, last } = server_frame(&mut s, true)
    else {
        panic!("not a list page");
    };
    assert!(last);
    let trees: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::TreeParts)
        .collect();
    assert_eq!(trees.len(), 1);
    assert!(trees[0].name.is_empty(), "{:?}", trees[0]);
    assert_eq!(trees[0].files, Some(1));
    assert_eq!(srv.terminate().code(), Some(0));
}
