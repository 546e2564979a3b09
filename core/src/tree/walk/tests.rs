use super::*;
use crate::tree::manifest::{ManifestValidator, ValidatorConfig};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, PermissionsExt};

struct Tree {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

/// A tree with nested and empty directories, unicode and spaces, links in
/// and out, a sparse file, a set-id file and names a peer would refuse.
fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src tree");
    fs::create_dir_all(root.join("a/x")).unwrap();
    fs::create_dir(root.join("a b")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("a/x/f.txt"), b"hello").unwrap();
    fs::write(root.join("a/x y"), b"").unwrap();
    fs::write(root.join("caf\u{e9} \u{1f600}"), b"unicode").unwrap();
    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4751)).unwrap();
    symlink("x/f.txt", root.join("a/in")).unwrap();
    symlink("../../etc/passwd", root.join("a/out")).unwrap();
    symlink("/etc/passwd", root.join("abs")).unwrap();
    symlink("../a", root.join("a b/up")).unwrap();
    fs::write(root.join("bad\nname"), b"").unwrap();
    fs::write(
        root.join(std::ffi::OsString::from_vec(b"latin1-\xe9".to_vec())),
        b"",
    )
    .unwrap();
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data", 4 << 20).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    Tree { _tmp: tmp, root }
}

fn walk(root: &Path) -> (Vec<Entry>, Vec<(String, String)>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let base = root.parent().unwrap();
    for w in Walker::new(root).unwrap() {
        match w {
            Walked::Entry { entry, source, .. } => {
                assert_eq!(source, base.join(entry.path.as_str()));
                entries.push(entry);
            }
            Walked::Skipped { source, reason } => {
                let rel = source
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                skipped.push((rel, reason));
            }
        }
    }
    (entries, skipped)
}

#[test]
fn walks_sorted_under_the_base_name() {
    let t = tree();
    let (entries, skipped) = walk(&t.root);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "src tree",
            "src tree/a",
            "src tree/a/in",
            "src tree/a/x",
            "src tree/a/x/f.txt",
            "src tree/a/x y",
            "src tree/a b",
            "src tree/a b/up",
            "src tree/caf\u{e9} \u{1f600}",
            "src tree/empty",
            "src tree/sparse.img",
            "src tree/suid",
        ]
    );
    let mut sorted = entries.clone();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(sorted, entries);
    let skipped_paths: Vec<&str> = skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        skipped_paths,
        [
            "src tree/a/out",
            "src tree/abs",
            "src tree/bad\nname",
            "src tree/fifo",
            "src tree/latin1-\u{fffd}",
        ]
    );
    let reasons: Vec<&str> = skipped.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons[0].ends_with("-> \"../../etc/passwd\": it points outside the tree"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].ends_with("the target is absolute"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("control character U+000A"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].contains("not a regular file, directory or symlink"),
        "{}",
        reasons[3]
    );
    assert_eq!(reasons[4], "its name is not UTF-8");
}

#[test]
fn keeps_kinds_modes_mtimes_and_sparseness() {
    let t = tree();
    let mtime = fs::metadata(t.root.join("a/x/f.txt")).unwrap();
    let (entries, _) = walk(&t.root);
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.path.as_str() == p)
            .unwrap()
            .kind
            .clone()
    };
    assert_eq!(
        get("src tree/a/x/f.txt"),
        EntryKind::File {
            size: 5,
            mode: mtime.mode() & 0o777,
            mtime_ns: mtime.mtime() * 1_000_000_000 + mtime.mtime_nsec(),
            sparse: false,
        }
    );
    match get("src tree/suid") {
        EntryKind::File { mode, .. } => assert_eq!(mode, 0o751),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        get("src tree/a/in"),
        EntryKind::Symlink {
            target: "x/f.txt".into()
        }
    );
    assert_eq!(
        get("src tree/a b/up"),
        EntryKind::Symlink {
            target: "../a".into()
        }
    );
    assert!(matches!(get("src tree/empty"), EntryKind::Dir { .. }));
    let sparse_meta = fs::metadata(t.root.join("sparse.img")).unwrap();
    match get("src tree/sparse.img") {
        EntryKind::File { size, sparse, .. } => {
            assert_eq!(size, 8 << 20);
            assert_eq!(sparse, looks_sparse(&sparse_meta));
            if !sparse {
                eprintln!("note: this file system stored no holes");
            }
        }
        other => panic!("{other:?}"),
    }
}

/// What the walker produces is what the receiving validator accepts.
#[test]
fn the_validator_accepts_the_walk() {
    let t = tree();
    let (entries, _) = walk(&t.root);
    let mut v = ManifestValidator::new(ValidatorConfig::default());
    for e in entries {
        let accepted = v.check(e.clone()).unwrap();
        assert_eq!(accepted.entry, e);
        assert_eq!(accepted.stripped, 0);
    }
}

#[test]
fn a_single_file_and_odd_roots() {
    let t = tree();
    let (entries, skipped) = walk(&t.root.join("a/x/f.txt"));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path.as_str(), "f.txt");
    assert!(skipped.is_empty());
    // "dir/." is listed under the directory's real name.
    let dot = t.root.join("a/.");
    let first = Walker::new(&dot).unwrap().next().unwrap();
    match first {
        Walked::Entry { entry, .. } => assert_eq!(entry.path.as_str(), "a"),
        other => panic!("{other:?}"),
    }
    let e = Walker::new(Path::new("/")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot send /: it has no name to store it under"
    );
    let e = Walker::new(&t.root.join("missing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SourceFile);
    // A root that is a symlink is followed: the user named it.
    let (entries, _) = walk(&t.root.join("a/in"));
    assert!(
        matches!(entries[0].kind, EntryKind::File { size: 5, .. }),
        "{entries:?}"
    );
}

#[test]
fn memory_follows_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    let mut p = root.clone();
    for i in 0..20 {
        p.push(format!("d{i}"));
    }
    fs::create_dir_all(&p).unwrap();
    for i in 0..500 {
        fs::write(root.join(format!("f{i:03}")), b"").unwrap();
    }
    let mut w = Walker::new(&root).unwrap();
    let mut most = 0;
    let mut n = 0;
    while w.next().is_some() {
        most = most.max(w.open_levels());
        n += 1;
    }
    assert_eq!(n, 1 + 20 + 500);
    assert_eq!(most, 21);
}

#[test]
fn unreadable_directory_is_skipped_with_the_reason() {
    if rustix::process::geteuid().is_root() {
        eprintln!("skipped: root reads any directory");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    fs::create_dir_all(root.join("locked")).unwrap();
    fs::write(root.join("z"), b"").unwrap();
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let (entries, skipped) = walk(&root);
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["r", "r/z"]);
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].1.starts_with("cannot list the directory: "),
        "{skipped:?}"
    );
}

#[test]
fn several_roots_in_manifest_order() {
    let t = tree();
    let roots = [
        t.root.join("a b"),
        t.root.join("a/x/f.txt"),
        t.root.join("a"),
    ];
    let entries: Vec<Entry> = Walker::for_roots(&roots)
        .unwrap()
        .into_iter()
        .flatten()
        .filter_map(|w| match w {
            Walked::Entry { entry, .. } => Some(entry),
            Walked::Skipped { .. } => None,
        })
        .collect();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["a", "a/in", "a/x", "a/x/f.txt", "a/x y", "a b", "f.txt"]
    );
    // "a b/up" -> "../a" leaves its own tree "a b" (that "a" is sent too
    // does not matter: each root is a tree of its own), so it is skipped.
    // The chained walks form one manifest the receiver accepts.
    let mut v = ManifestValidator::new(ValidatorConfig::default());
    for e in entries {
        v.check(e).unwrap();
    }
    let other = t._tmp.path().join("f.txt");
    fs::write(&other, b"other").unwrap();
    let e = Walker::for_roots(&[t.root.join("a/x/f.txt"), other]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "two of the paths given would both be stored as \"f.txt\"; rename one or send them separately"
    );
}
