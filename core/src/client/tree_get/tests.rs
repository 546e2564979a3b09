//! The client's checks of a manifest the server sends: hostile names are
//! refused in words and nothing is written outside the destination.

use super::*;

/// One raw entry, written by hand so that names no `RelPath` would hold
/// can be sent.
fn raw_entry(kind: u8, path: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut e = vec![kind];
    e.extend_from_slice(&(path.len() as u16).to_be_bytes());
    e.extend_from_slice(path);
    e.extend_from_slice(tail);
    e
}

fn dir(path: &str) -> Vec<u8> {
    let mut tail = 0o755u32.to_be_bytes().to_vec();
    tail.extend_from_slice(&0i64.to_be_bytes());
    raw_entry(2, path.as_bytes(), &tail)
}

fn file(path: &[u8]) -> Vec<u8> {
    let mut tail = 5u64.to_be_bytes().to_vec();
    tail.extend_from_slice(&0o644u32.to_be_bytes());
    tail.extend_from_slice(&0i64.to_be_bytes());
    tail.push(0);
    raw_entry(1, path, &tail)
}

fn link(path: &str, target: &str) -> Vec<u8> {
    let mut tail = (target.len() as u16).to_be_bytes().to_vec();
    tail.extend_from_slice(target.as_bytes());
    raw_entry(3, path.as_bytes(), &tail)
}

fn page(entries: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = entries.concat();
    let mut p = b"BTMF".to_vec();
    p.extend_from_slice(&[1, 0]);
    p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(&body);
    p
}

/// Runs `entries` through a fresh destination for the tree `t`; the error
/// text, and what the directory around the destination holds afterwards.
fn refused_with(entries: &[Vec<u8>]) -> (String, Vec<String>) {
    let top = tempfile::tempdir().unwrap();
    let dest_dir = top.path().join("dest");
    fs::create_dir(&dest_dir).unwrap();
    let mut dest = Dest::new(&dest_dir, "t", false).unwrap();
    let err = match dest.page(&page(entries)) {
        Ok(_) => panic!("a hostile page was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let mut around: Vec<String> = fs::read_dir(top.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    around.sort();
    (err.to_string(), around)
}

#[test]
fn hostile_names_are_refused_in_words_and_nothing_lands_outside() {
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![dir("t"), file(b"t/../../evil")], "\"..\""),
        (vec![file(b"/etc/evil")], "absolute"),
        (vec![dir("t"), file(b"t/a\0b")], "control"),
        (vec![dir("t"), file(b"t/a\nb")], "control"),
        (
            vec![dir("t"), file(b"t/x"), file(b"t/x/y")],
            "a file in one entry and a directory in another",
        ),
        (vec![dir("t"), file(b"t/x"), file(b"t/x")], "appears twice"),
        (vec![dir("t"), link("t/l", "../../etc")], "outside the tree"),
        (vec![dir("t"), link("t/l", "/etc")], "absolute"),
        (vec![dir("other"), file(b"other/x")], "not under \"t\""),
        (vec![dir("t"), file(b"t/b"), file(b"t/a")], "must be sorted"),
    ];
    for (entries, words) in cases {
        let (err, around) = refused_with(&entries);
        assert!(err.contains(words), "{err:?} should say {words:?}");
        assert!(err.contains("refused"), "{err}");
        assert_eq!(around, vec!["dest".to_owned()], "written outside: {err}");
    }
}

#[test]
fn a_symlink_here_is_never_followed() {
    let top = tempfile::tempdir().unwrap();
    let dest_dir = top.path().join("dest");
    let outside = top.path().join("outside");
    fs::create_dir_all(&dest_dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest_dir.join("t")).unwrap();
    let mut dest = Dest::new(&dest_dir, "t", false).unwrap();
    let err = dest
        .page(&page(&[dir("t"), dir("t/sub")]))
        .err()
        .expect("a symlinked destination was followed");
    assert!(err.to_string().contains("other than a directory"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_good_page_makes_dirs_and_links_and_lists_files() {
    let top = tempfile::tempdir().unwrap();
    let mut dest = Dest::new(top.path(), "t", false).unwrap();
    let steps = dest
        .page(&page(&[
            dir("t"),
            dir("t/e"),
            link("t/l", "e"),
            file(b"t/x"),
        ]))
        .unwrap();
    assert!(top.path().join("t/e").is_dir());
    assert_eq!(
        fs::read_link(top.path().join("t/l")).unwrap(),
        Path::new("e")
    );
    let fetch: Vec<&str> = steps
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Fetch(t) => Some(t.path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(fetch, ["t/x"]);
    // A different file here is not replaced without force.
    fs::write(top.path().join("t/x"), b"other content").unwrap();
    let mut again = Dest::new(top.path(), "t", false).unwrap();
    let steps = again.page(&page(&[dir("t"), file(b"t/x")])).unwrap();
    assert!(matches!(&steps[1].1, Step::NotReplaced(_, why) if why.contains("not replaced")));
}
