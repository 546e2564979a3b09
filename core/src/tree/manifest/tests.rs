use super::*;
use proptest::prelude::*;

fn p(s: &str) -> RelPath {
    RelPath::from_wire(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn file(path: &str, mode: u32) -> Entry {
    Entry {
        path: p(path),
        kind: EntryKind::File {
            size: 1234,
            mode,
            mtime_ns: 1_700_000_000_123_456_789,
            sparse: false,
        },
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: p(path),
        kind: EntryKind::Dir {
            mode: 0o755,
            mtime_ns: -5,
        },
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: p(path),
        kind: EntryKind::Symlink {
            target: target.to_owned(),
        },
    }
}

fn sample() -> Vec<Entry> {
    vec![
        dir("t"),
        file("t/a", 0o644),
        dir("t/a b"),
        Entry {
            path: p("t/a b/big.img"),
            kind: EntryKind::File {
                size: u64::MAX,
                mode: 0o7777,
                mtime_ns: i64::MIN,
                sparse: true,
            },
        },
        link("t/a b/l", "../a"),
        file("t/caf\u{e9} \u{1f600}", 0o600),
    ]
}

#[test]
fn page_round_trip() {
    let entries = sample();
    let page = encode_page(&entries).unwrap();
    assert_eq!(&page[..6], b"BTMF\x01\x00");
    assert_eq!(page[6..10], 6u32.to_be_bytes());
    assert_eq!(decode_page(&page).unwrap(), entries);
    let empty = encode_page(&[]).unwrap();
    assert_eq!(empty.len(), HEADER_LEN);
    assert_eq!(decode_page(&empty).unwrap(), vec![]);
}

#[test]
fn page_builder_bounds_entries_and_bytes() {
    let mut page = PageBuilder::new();
    for i in 0..MAX_PAGE_ENTRIES {
        assert!(page.try_push(&file(&format!("d/{i:06}"), 0o644)), "{i}");
    }
    assert!(!page.try_push(&file("d/one-more", 0o644)));
    assert_eq!(page.len(), MAX_PAGE_ENTRIES);
    let bytes = page.finish();
    assert_eq!(decode_page(&bytes).unwrap().len(), MAX_PAGE_ENTRIES);

    // Long paths fill the bytes first.
    let long = vec!["x".repeat(250); 15].join("/");
    let mut page = PageBuilder::new();
    let mut n = 0;
    while page.try_push(&file(&format!("{long}/{n:08}"), 0o644)) {
        n += 1;
    }
    assert!(n > 200 && n < MAX_PAGE_ENTRIES, "{n}");
    let bytes = page.finish();
    assert!(bytes.len() <= MAX_PAGE_BYTES);
    assert_eq!(decode_page(&bytes).unwrap().len(), n);
    let too_many: Vec<Entry> = (0..=MAX_PAGE_ENTRIES)
        .map(|i| file(&format!("{i}"), 0))
        .collect();
    let e = encode_page(&too_many).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "entry 4097 (4096) does not fit in one manifest page"
    );
}

/// A page with one raw entry body, the header made consistent.
fn raw_page(count: u32, body: &[u8]) -> Vec<u8> {
    let mut page = b"BTMF\x01\x00".to_vec();
    page.extend_from_slice(&count.to_be_bytes());
    page.extend_from_slice(&(body.len() as u32).to_be_bytes());
    page.extend_from_slice(body);
    page
}

fn raw_entry(tag: u8, path: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path);
    out.extend_from_slice(rest);
    out
}

fn dir_rest(mode: u32) -> Vec<u8> {
    [mode.to_be_bytes().as_slice(), &0i64.to_be_bytes()].concat()
}

fn decode_err(page: &[u8]) -> (ErrorKind, String) {
    let e = decode_page(page).expect_err("should be refused");
    (e.kind(), e.to_string())
}

#[test]
fn malformed_pages_are_refused_precisely() {
    use ErrorKind::{Protocol, Refused};
    let good = encode_page(&sample()).unwrap();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut v2 = good.clone();
    v2[4] = 2;
    let mut reserved = good.clone();
    reserved[5] = 1;
    let mut many = good.clone();
    many[6..10].copy_from_slice(&4097u32.to_be_bytes());
    let mut longer = good.clone();
    longer.push(0);
    let file_rest = |flags: u8| {
        [
            &7u64.to_be_bytes()[..],
            &0o644u32.to_be_bytes(),
            &0i64.to_be_bytes(),
            &[flags],
        ]
        .concat()
    };
    let sym = |t: &[u8]| [&(t.len() as u16).to_be_bytes()[..], t].concat();
    let cases: Vec<(Vec<u8>, ErrorKind, &str)> = vec![
        (bad_magic, Protocol, "malformed manifest page: it does not start with the manifest magic \"BTMF\" (at byte 0)"),
        (v2, Protocol, "malformed manifest page: version 2, this side reads 1 (at byte 4)"),
        (reserved, Protocol, "malformed manifest page: the reserved byte is not 0 (at byte 5)"),
        (many, Protocol, "malformed manifest page: 4097 entries, over the limit of 4096 (at byte 6)"),
        (longer, Protocol, "the header says 152 bytes of entries, the page has 153 (at byte 10)"),
        (good[..9].to_vec(), Protocol, "truncated: the entry count needs 4 bytes, 3 are left (at byte 6)"),
        (raw_page(2, &raw_entry(2, b"d", &dir_rest(0o755))), Protocol,
            "malformed manifest page: truncated: the entry kind needs 1 bytes, 0 are left (at byte 30) (entry 2 of the page)"),
        (raw_page(1, &raw_entry(2, b"d", &dir_rest(0o755)[..7])), Protocol, "truncated: the mtime needs 8 bytes, 3 are left (at byte 22) (entry 1"),
        (raw_page(1, &raw_entry(9, b"d", &dir_rest(0o755))), Protocol, "unknown entry kind 9 (at byte 14) (entry 1 of the page)"),
        (raw_page(1, &raw_entry(2, b"d\xff", &dir_rest(0))), Protocol, "the path is not UTF-8 (at byte 17)"),
        (raw_page(1, &raw_entry(2, b"../etc", &dir_rest(0))), Refused, "refused path \"../etc\": component 1: refused file name \"..\""),
        (raw_page(1, &raw_entry(2, b"/etc", &dir_rest(0))), Refused, "refused path \"/etc\": it is absolute"),
        (raw_page(1, &raw_entry(2, b"d", &dir_rest(0o40755))), Protocol, "mode 0o40755 has bits outside 0o7777 (at byte 18)"),
        (raw_page(1, &raw_entry(1, b"f", &file_rest(2))), Protocol, "unknown file flags 0x02 (at byte 38)"),
        (raw_page(1, &raw_entry(3, b"d/l", &sym(b""))), Protocol, "the symlink target is empty"),
        (raw_page(1, &raw_entry(3, b"d/l", &sym(b"a\nb"))), Protocol, "the symlink target contains the control character U+000A"),
        (raw_page(1, &raw_entry(3, b"d/l", &sym(b"\xc0"))), Protocol, "the symlink target is not UTF-8"),
        (raw_page(1, &raw_entry(3, b"d/l", &sym(&[b'a'; 4096]))), Protocol, "the symlink target is 4096 bytes, over the limit of 4095"),
        ([raw_page(1, &raw_entry(2, b"d", &dir_rest(0))), vec![0; 3]].concat(), Protocol, "the header says 16 bytes of entries, the page has 19"),
        (raw_page(1, &[raw_entry(2, b"d", &dir_rest(0)), vec![0; 3]].concat()), Protocol, "3 bytes follow the last of 1 entries (at byte 30)"),
        (vec![0; MAX_PAGE_BYTES + 1], Protocol, "the page is 1048577 bytes, over the limit of 1048576 (at byte 0)"),
    ];
    for (page, kind, want) in cases {
        let (k, msg) = decode_err(&page);
        assert!(msg.contains(want), "want {want:?}\n got {msg:?}");
        assert_eq!(k, kind, "{msg}");
    }
    // The good page still decodes: nothing above was a false alarm.
    assert_eq!(decode_page(&good).unwrap(), sample());
}

fn validate_all(entries: Vec<Entry>, config: ValidatorConfig) -> Result<Vec<Accepted>> {
    let mut v = ManifestValidator::new(config);
    entries.into_iter().map(|e| v.check(e)).collect()
}

fn refusal(entries: Vec<Entry>) -> String {
    let e = validate_all(entries, ValidatorConfig::default()).expect_err("should be refused");
    assert_eq!(e.kind(), ErrorKind::Refused);
    e.to_string()
}

#[test]
fn validator_accepts_a_sorted_tree() {
    let entries = vec![
        dir("a"),
        dir("a/x"),
        file("a/x/f", 0o644),
        file("a/x y", 0o644),
        file("a b", 0o644),
        dir("b"),
        dir("b/c"),
        dir("b/c/d"),
        link("b/c/d/same", "./f"),
        link("b/c/d/up", "../../c"),
        link("b/loop", "loop"),
        file("top-file", 0o755),
    ];
    let accepted = validate_all(entries.clone(), ValidatorConfig::default()).unwrap();
    let out: Vec<Entry> = accepted.into_iter().map(|a| a.entry).collect();
    assert_eq!(out, entries);
}

#[test]
fn validator_refuses_duplicates_and_disorder() {
    assert_eq!(
        refusal(vec![dir("a"), file("a/x", 0), file("a/x", 0)]),
        "refused manifest: \"a/x\" appears twice"
    );
    assert_eq!(
        refusal(vec![file("a b", 0), dir("a")]),
        "refused manifest: \"a\" comes after \"a b\" (entries must be sorted depth-first, component by component)"
    );
    // String order would accept this; component order does not.
    assert!(refusal(vec![dir("a"), file("a b", 0), file("a/x", 0)]).contains("comes after"));
    // A second declaration of a directory later on is a duplicate too.
    assert!(refusal(vec![dir("a"), dir("a")]).contains("appears twice"));
}

#[test]
fn validator_refuses_a_name_that_is_a_file_and_a_directory() {
    assert_eq!(
        refusal(vec![file("a", 0o644), file("a/x", 0o644)]),
        "refused manifest: \"a\" is a file in one entry and a directory in another (\"a/x\")"
    );
    assert!(refusal(vec![dir("d"), link("d/l", "x"), file("d/l/x", 0)])
        .contains("\"d/l\" is a symlink in one entry and a directory in another"));
    assert_eq!(
        refusal(vec![dir("a"), file("a/b/c", 0)]),
        "refused manifest: the directory \"a/b\" holding \"a/b/c\" was not declared before it"
    );
    // A directory that was closed cannot be reopened later.
    assert!(refusal(vec![dir("a"), dir("b"), file("a/x", 0)]).contains("comes after"));
}

#[test]
fn validator_refuses_escaping_symlinks() {
    let cases = [
        ("d/l", "/etc/passwd", "the target is absolute"),
        ("d/l", "..", "it points outside the tree"),
        ("d/l", "../d", "it points outside the tree"),
        ("d/s/l", "../../x", "it points outside the tree"),
        ("d/l", "a/../../..", "\"..\" after a name"),
        ("d/l", "s/../x", "\"..\" after a name"),
        ("l", "x", "a top-level entry cannot be a symlink"),
    ];
    for (at, target, want) in cases {
        let mut entries = match at {
            "l" => vec![],
            "d/l" => vec![dir("d")],
            _ => vec![dir("d"), dir("d/s")],
        };
        entries.push(link(at, target));
        let msg = refusal(entries);
        assert!(
            msg.starts_with(&format!("refused symlink \"{at}\" -> \"{target}\": ")),
            "{msg}"
        );
        assert!(msg.contains(want), "{msg}");
    }
    assert!(symlink_stays_inside(&p("d/s/l"), "../x").is_ok());
    assert!(symlink_stays_inside(&p("d/s/l"), "./../././x/y/").is_ok());
    assert!(symlink_stays_inside(&p("d/l"), ".").is_ok());
}

#[test]
fn validator_strips_and_names_special_bits() {
    let accepted = validate_all(
        vec![
            Entry {
                path: p("d"),
                kind: EntryKind::Dir {
                    mode: 0o1777,
                    mtime_ns: 0,
                },
            },
            file("d/both", 0o6711),
            file("d/plain", 0o640),
            file("d/suid", 0o4755),
        ],
        ValidatorConfig::default(),
    )
    .unwrap();
    let modes: Vec<u32> = accepted
        .iter()
        .map(|a| match a.entry.kind {
            EntryKind::File { mode, .. } | EntryKind::Dir { mode, .. } => mode,
            EntryKind::Symlink { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(modes, [0o777, 0o711, 0o640, 0o755]);
    let notes: Vec<Option<String>> = accepted.iter().map(Accepted::note).collect();
    assert_eq!(
        notes,
        [
            Some("stripped the sticky bit of \"d\"".to_owned()),
            Some("stripped the setuid and setgid bits of \"d/both\"".to_owned()),
            None,
            Some("stripped the setuid bit of \"d/suid\"".to_owned()),
        ]
    );
}

#[test]
fn case_collisions_only_when_asked() {
    let entries = vec![dir("d"), file("d/A", 0), file("d/B", 0), file("d/a", 0)];
    validate_all(entries.clone(), ValidatorConfig::default()).unwrap();
    let config = ValidatorConfig {
        case_insensitive: true,
        ..ValidatorConfig::default()
    };
    let e = validate_all(entries, config).unwrap_err();
    assert_eq!(
        e.to_string(),
        "refused manifest: \"d/a\" and \"A\" in the same directory differ only in case (one file on a case-insensitive file system)"
    );
    let e = validate_all(vec![file("D", 0), dir("d")], config).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"d\" and \"D\" in the same directory"),
        "{e}"
    );
    // Full case folding: the Kelvin sign is a capital k.
    let e = validate_all(vec![file("k", 0), file("\u{212a}", 0)], config).unwrap_err();
    assert!(e.to_string().contains("differ only in case"), "{e}");
    // Same names in different directories are fine.
    validate_all(
        vec![dir("a"), file("a/x", 0), dir("b"), file("b/X", 0)],
        config,
    )
    .unwrap();
}

/// A hostile manifest of a million entries: refused at the cap, and the
/// validator's state never grows with the count (only with depth).
#[test]
fn a_million_entries_in_constant_memory() {
    let config = ValidatorConfig {
        max_entries: 1_000_000,
        case_insensitive: false,
    };
    let mut v = ManifestValidator::new(config);
    v.check(dir("d")).unwrap();
    v.check(dir("d/e")).unwrap();
    let mut most_open = 0;
    for i in 0..999_998u32 {
        v.check(file(&format!("d/e/{i:07}"), 0o644)).unwrap();
        most_open = most_open.max(v.open_dirs());
    }
    assert_eq!(v.count(), 1_000_000);
    assert_eq!(most_open, 2);
    let e = v.check(file("d/e/9999999", 0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "refused manifest: the manifest has more than 1000000 entries"
    );
}

#[test]
fn open_directories_follow_depth_not_count() {
    let mut v = ManifestValidator::new(ValidatorConfig::default());
    let mut path = "r".to_owned();
    v.check(dir(&path)).unwrap();
    for depth in 2..=MAX_DEPTH_FOR_TEST {
        path.push_str("/s");
        v.check(dir(&path)).unwrap();
        assert_eq!(v.open_dirs(), depth);
    }
    v.check(file("z", 0)).unwrap();
    assert_eq!(v.open_dirs(), 0);
}

const MAX_DEPTH_FOR_TEST: usize = crate::tree::path::MAX_DEPTH;

proptest! {
    #[test]
    fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_page(&bytes);
        let mut page = raw_page(1, &bytes);
        let _ = decode_page(&page);
        page[9] = page[9].wrapping_add(1);
        let _ = decode_page(&page);
    }

    #[test]
    fn prop_mutated_pages_never_panic(at in 0usize..200, xor in 1u8..=255) {
        let mut page = encode_page(&sample()).unwrap();
        let at = at % page.len();
        page[at] ^= xor;
        if let Ok(entries) = decode_page(&page) {
            prop_assert_eq!(entries.len(), sample().len());
        }
    }
}
