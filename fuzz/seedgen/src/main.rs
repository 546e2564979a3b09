//! Writes the seed corpus of every fuzz target under `fuzz/corpus/<target>/`:
//! small, meaningful inputs in each target's input format (see the doc
//! comment at the top of each `fuzz/fuzz_targets/*.rs`), most of them made
//! by the project's own encoders so that they stay valid as the format does.
//!
//! `seedgen` rewrites the corpus; `seedgen --check` only compares and exits
//! 1 if the checked-in corpus differs from what it would write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bigtransfer_core::cache::{self, SourceStamp, Sums};
use bigtransfer_core::proto::{self, Header};
use bigtransfer_core::store::{self, Checkpoint, Identity, PartStamp};
use bigtransfer_core::v2::{self, Offer, ServerMsg, Verdict};
use bigtransfer_core::SafeName;

type Corpus = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

fn header(filename: &str, filesize: u64, crc32: u32) -> Header {
    Header {
        filename: filename.to_owned(),
        filesize,
        crc32,
    }
}

fn framed(json: &[u8]) -> Vec<u8> {
    let mut v = (json.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(json);
    v
}

fn legacy_header(out: &mut BTreeMap<String, Vec<u8>>) {
    let mut add = |n: &str, b: Vec<u8>| {
        out.insert(n.to_owned(), b);
    };
    // LEGACY-PROTOCOL.md's example, exactly as Python's client sends it.
    let example = br#"{"filename": "large_file.txt", "filesize": 1073741824, "crc32": 3735928559}"#;
    assert_eq!(example.len(), 75);
    add("legacy-example", framed(example));
    let h = header("large_file.txt", 1073741824, 3735928559);
    assert_eq!(proto::encode_header(&h).unwrap(), framed(example));

    for (n, h) in [
        (
            "enc-unicode",
            header("\u{65e5}\u{672c}\u{1f600} caf\u{e9}.txt", 1, 1),
        ),
        ("enc-empty-file", header("a", 0, 0)),
        ("enc-max", header("x.bin", i64::MAX as u64, u32::MAX)),
        ("enc-path", header("../../etc/passwd", 10, 7)),
        ("enc-windows-path", header("C:\\Users\\me\\big.iso", 10, 7)),
        ("enc-control", header("a\u{0}b\u{1b}[31m\u{85}", 10, 7)),
        ("enc-reserved", header(".BigTransfer. .", 10, 7)),
        ("enc-kelvin-reserved", header(".bigtransfer\u{212a}", 10, 7)),
        ("enc-dots", header("...", 10, 7)),
        ("enc-dotdot", header("dir/..", 10, 7)),
        ("enc-trailing-slash", header("dir/", 10, 7)),
        ("enc-255", header(&"n".repeat(255), 10, 7)),
        ("enc-256", header(&"\u{e9}".repeat(128), 10, 7)),
        ("enc-spaces", header("  a b  ", 10, 7)),
    ] {
        add(n, proto::encode_header(&h).unwrap());
    }
    // Version-2 offers, as the encoder writes them.
    for (n, h, block) in [
        ("v2-1mib", header("big.img", 2147483648, 0), 1u64 << 20),
        ("v2-min-block", header("a.bin", 5, 0), v2::MIN_BLOCK),
        ("v2-max-block", header("a.bin", 1 << 40, 9), v2::MAX_BLOCK),
    ] {
        let offer = Offer {
            version: v2::VERSION,
            block_size: block,
            rev: v2::REVISION,
            source: Some([0x5a; 16]),
        };
        add(n, v2::encode_header(&h, offer).unwrap());
    }
    // Hand-written JSON: accepted oddities, "bt" variants, refusals.
    for (n, json) in [
        ("doc-v2-example", &br#"{"filename": "big.img", "filesize": 2147483648, "crc32": 0, "bt": {"v": 2, "block": 4194304}}"#[..]),
        ("compact", br#"{"filename":"a","filesize":1,"crc32":2}"#),
        ("whitespace-order", b" \r\n\t{\n\t\"crc32\" :0 ,\"filesize\":\r\n5,\"filename\":\"x\"\n}\n "),
        ("extra-keys", br#"{"v": 2, "filename": "a.bin", "n": null, "o": {"x": [1, {"y": 1e9}]}, "filesize": 10, "b": true, "crc32": 123, "s": "\u00e9", "f": -1.5}"#),
        ("duplicate-keys", br#"{"filename": "a", "filesize": 1, "crc32": 2, "filename": "b", "filesize": 3}"#),
        ("escapes", br#"{"filename": "..\/etc\\passwd\n\u0000\"q\"", "filesize": 0, "crc32": 0}"#),
        ("surrogate-pair", br#"{"filename": "\u65e5\ud83d\ude00.txt", "filesize": 1, "crc32": 1}"#),
        ("lone-surrogate", br#"{"filename": "\ud800", "filesize": 1, "crc32": 2}"#),
        ("invalid-utf8", b"{\"filename\": \"caf\xe9\", \"filesize\": 1, \"crc32\": 2}"),
        ("cesu-surrogate", b"{\"filename\": \"\xed\xa0\x80\", \"filesize\": 1, \"crc32\": 2}"),
        ("float-size", br#"{"filename": "a.bin", "filesize": 1.0, "crc32": 7}"#),
        ("exp-size", br#"{"filename": "a", "filesize": 1E3, "crc32": 2}"#),
        ("negative-zero", br#"{"filename": "a", "filesize": -0, "crc32": 2}"#),
        ("absurd-size", br#"{"filename": "a", "filesize": 9223372036854775808, "crc32": 2}"#),
        ("huge-digits", br#"{"filename": "a", "filesize": 1, "crc32": 123456789012345678901234567890123456789012345678901234567890}"#),
        ("crc-too-big", br#"{"filename": "a", "filesize": 1, "crc32": 4294967296}"#),
        ("string-crc", br#"{"filename": "a", "filesize": 1, "crc32": "deadbeef"}"#),
        ("missing-key", br#"{"filename": "a", "crc32": 2}"#),
        ("not-object", br#"["filename", "a"]"#),
        ("trailing-garbage", br#"{"filename": "a", "filesize": 1, "crc32": 2} x"#),
        ("trailing-comma", br#"{"filename": "a", "filesize": 1, "crc32": 2,}"#),
        ("leading-zero", br#"{"filename": "a", "filesize": 01, "crc32": 2}"#),
        ("nan", br#"{"filename": "a", "filesize": NaN, "crc32": 2}"#),
        ("bt-v1", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 1}}"#),
        ("bt-v3", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 3, "block": 65536}}"#),
        ("bt-no-block", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 2}}"#),
        ("bt-odd-block", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 2, "block": 1000}}"#),
        ("bt-string-v", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": "2", "block": 65536}}"#),
        ("bt-array", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": [2, 65536]}"#),
        ("bt-too-many-blocks", br#"{"filename": "a", "filesize": 9223372036854775807, "crc32": 0, "bt": {"v": 2, "block": 65536}}"#),
        ("bt-huge-block", br#"{"filename": "a", "filesize": 10, "crc32": 0, "bt": {"v": 2, "block": 18446744073709551615}}"#),
        ("bt-without-header", br#"{"bt": {"v": 2, "block": 1048576}}"#),
    ] {
        add(n, framed(json));
    }
    let deep = format!(
        r#"{{"filename": "a", "filesize": 1, "crc32": 2, "x": {}{}}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    add("deep-nesting", framed(deep.as_bytes()));
    // 11 000 raw 'é': 22 KB on the wire, but 66 KB once the encoder escapes
    // it, over MAX_HEADER_LEN (also lets libFuzzer try inputs this long).
    let wide = format!(
        r#"{{"filename": "{}", "filesize": 1, "crc32": 2}}"#,
        "\u{e9}".repeat(11_000)
    );
    add("raw-unicode-over-limit-escaped", framed(wide.as_bytes()));
    // Hostile length prefixes.
    add(
        "len-zero",
        [0u8, 0, 0, 0].into_iter().chain(*b"{}").collect(),
    );
    add(
        "len-huge",
        [0xffu8; 4]
            .into_iter()
            .chain(*b"{\"filename\": \"a\"}")
            .collect(),
    );
    add(
        "len-65537",
        [0u8, 1, 0, 1].into_iter().chain(*b"{}").collect(),
    );
    let mut short = framed(example);
    short[3] += 10; // the prefix promises more than arrives
    add("len-longer-than-body", short);
}

fn server_frames(out: &mut BTreeMap<String, Vec<u8>>) {
    let msgs = [
        (
            "held-empty",
            ServerMsg::Held {
                held: 0,
                block_size: 1 << 20,
                crcs: vec![],
            },
        ),
        (
            "held-3",
            ServerMsg::Held {
                held: 3 << 20,
                block_size: 1 << 20,
                crcs: vec![0xCBF43926, 0, u32::MAX],
            },
        ),
        (
            "held-short-last",
            ServerMsg::Held {
                held: 65536 + 5,
                block_size: 65536,
                crcs: vec![1, 2],
            },
        ),
        (
            "held-set",
            ServerMsg::HeldSet {
                block_size: 65536,
                runs: vec![(0, 2), (5, 1)],
                crcs: vec![1, 2, 3],
            },
        ),
        (
            "error",
            ServerMsg::Error("not enough free space: 10 bytes needed".into()),
        ),
        (
            "error-unicode",
            ServerMsg::Error("refused caf\u{e9}\u{1f600}".into()),
        ),
        (
            "challenge",
            ServerMsg::Challenge(*b"0123456789abcdef0123456789ABCDEF"),
        ),
        (
            "challenge-bound",
            ServerMsg::BoundChallenge {
                nonce: *b"0123456789abcdef0123456789ABCDEF",
                proof: *b"fedcba9876543210FEDCBA9876543210",
            },
        ),
        ("verdict-ok", ServerMsg::Verdict(Verdict::Ok)),
        (
            "verdict-repair",
            ServerMsg::Verdict(Verdict::Repair(vec![1, 7, u64::MAX])),
        ),
        (
            "verdict-repair-none",
            ServerMsg::Verdict(Verdict::Repair(vec![])),
        ),
        (
            "verdict-failed",
            ServerMsg::Verdict(Verdict::Failed("blocks 3, 4 kept arriving damaged".into())),
        ),
    ];
    let mut stream = Vec::new();
    for (n, m) in &msgs {
        let f = v2::encode_server_msg(m);
        out.insert(format!("frame-{n}"), f.clone());
        // Tag and payload alone: the first way the target reads its input.
        let mut raw = vec![f[0]];
        raw.extend_from_slice(&f[5..]);
        out.insert(format!("raw-{n}"), raw);
        stream.extend_from_slice(&f);
    }
    out.insert("stream-all".into(), stream);
    let mut add = |n: &str, b: &[u8]| {
        out.insert(n.to_owned(), b.to_vec());
    };
    add("unknown-tag", b"Q\0\0\0\x01x");
    add("over-limit", b"H\x01\0\0\x01");
    add(
        "held-count-mismatch",
        b"H\0\0\0\x18\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\x02\0\0\0\x01",
    );
    add(
        "held-count-huge",
        b"H\0\0\0\x14\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\xff\xff\xff\xff",
    );
    add("held-short", b"H\0\0\0\x04\0\0\0\0");
    add("repair-count-huge", b"V\0\0\0\x05\x01\xff\xff\xff\xff");
    add("verdict-ok-extra", b"V\0\0\0\x02\0\0");
    add("verdict-unknown", b"V\0\0\0\x01\x03");
    add("verdict-empty", b"V\0\0\0\0");
    add("challenge-short", b"C\0\0\0\x04abcd");
    add("failed-invalid-utf8", b"V\0\0\0\x04\x02\xff\xfe\xc3");
    add("error-invalid-utf8", b"X\0\0\0\x03\xed\xa0\x80");
    add("truncated-payload", b"X\0\0\0\x10short");
}

fn client_heads(out: &mut BTreeMap<String, Vec<u8>>) {
    // filesize u64, block selector, then heads.
    let cfg = |filesize: u64, sel: u8, block: Option<u64>| {
        let mut v = filesize.to_be_bytes().to_vec();
        v.push(sel);
        if let Some(b) = block {
            v.extend_from_slice(&b.to_be_bytes());
        }
        v
    };
    let mut add = |n: &str, mut c: Vec<u8>, heads: &[&[u8]]| {
        for h in heads {
            c.extend_from_slice(h);
        }
        out.insert(n.to_owned(), c);
    };
    let fs = 2 * 65536 + 5;
    add(
        "three-blocks-and-end",
        cfg(fs, 0, None),
        &[
            &v2::encode_data_head(0, 65536),
            &v2::encode_data_head(65536, 65536),
            &v2::encode_data_head(131072, 5),
            &v2::encode_end(0xCBF43926),
        ],
    );
    add(
        "1mib-blocks",
        cfg(10 << 20, 4, None),
        &[&v2::encode_data_head(9 << 20, 1 << 20), &v2::encode_end(7)],
    );
    add(
        "max-block",
        cfg(1 << 40, 12, None),
        &[
            &v2::encode_data_head(256 << 20, 256 << 20),
            &v2::encode_end(7),
        ],
    );
    add(
        "end-only-empty-file",
        cfg(0, 0, None),
        &[&v2::encode_end(0)],
    );
    add(
        "data-on-empty-file",
        cfg(0, 0, None),
        &[&v2::encode_data_head(0, 0)],
    );
    add(
        "arbitrary-block-1000",
        cfg(2500, 0x80, Some(1000)),
        &[
            &v2::encode_data_head(2000, 500),
            &v2::encode_data_head(1000, 1000),
        ],
    );
    add(
        "arbitrary-block-huge",
        cfg(u64::MAX, 0x80, Some(u64::MAX)),
        &[&v2::encode_data_head(0, u32::MAX)],
    );
    add(
        "misaligned",
        cfg(fs, 0, None),
        &[&v2::encode_data_head(1, 65536)],
    );
    add(
        "past-end",
        cfg(fs, 0, None),
        &[&v2::encode_data_head(3 * 65536, 5)],
    );
    add(
        "wrong-len",
        cfg(fs, 0, None),
        &[&v2::encode_data_head(131072, 6)],
    );
    add("unknown-tag", cfg(fs, 0, None), &[b"Q\0\0\0\0"]);
    add(
        "answer",
        cfg(fs, 0, None),
        &[&v2::encode_answer(&[0xA5; 32])],
    );
    add(
        "answer-then-data",
        cfg(fs, 0, None),
        &[
            &v2::encode_answer(&[7; 32]),
            &v2::encode_data_head(0, 65536),
        ],
    );
    add(
        "short-head",
        cfg(fs, 0, None),
        &[&v2::encode_data_head(0, 65536)[..7]],
    );
}

fn meta_record(out: &mut BTreeMap<String, Vec<u8>>) {
    let id = |name: &str, filesize: u64, crc32: u32| Identity {
        name: SafeName::from_wire(name).unwrap(),
        filesize,
        crc32,
    };
    let stamp = PartStamp {
        ino: 1234,
        ctime: 1_700_000_000,
        ctime_nsec: 999_999_999,
    };
    let cp = |offset: u64, crc32: u32| Checkpoint { offset, crc32 };
    let rec = |id: &Identity, a: &[u8], b: &[u8]| {
        let mut v = store::encode_meta_head(id);
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        v
    };
    let v2_head = |mut r: Vec<u8>| {
        r[..8].copy_from_slice(b"BTHELD02");
        let crc = crc32fast::hash(&r[..273]);
        r[273..277].copy_from_slice(&crc.to_be_bytes());
        r
    };
    let mut add = |n: &str, flags: u8, r: Vec<u8>| {
        let mut v = vec![flags];
        v.extend_from_slice(&r);
        out.insert(n.to_owned(), v);
    };
    let big = id("big.img", 1 << 30, 0xDEADBEEF);
    let a = store::encode_slot(2, cp(64 << 20, 0x1111), stamp);
    let b = store::encode_slot(3, cp(96 << 20, 0x2222), stamp);
    add("v1-two-slots", 0, rec(&big, &a, &b));
    add("v1-one-slot", 0, rec(&big, &a, &[0; 44]));
    add("v1-slot-b-only", 0, rec(&big, &[0; 44], &b));
    add(
        "v1-equal-seq",
        0,
        rec(
            &big,
            &a,
            &store::encode_slot(2, cp(1, 1), PartStamp::default()),
        ),
    );
    let mut torn = rec(&big, &a, &b);
    torn[281 + 44 + 10] ^= 0xff;
    add("v1-torn-slot-b", 0, torn);
    add("v1-no-valid-slot", 0, rec(&big, &[0; 44], &[1; 44]));
    add(
        "v1-offset-past-size",
        0,
        rec(
            &big,
            &store::encode_slot(9, cp((1 << 30) + 1, 0), stamp),
            &a,
        ),
    );
    add(
        "v1-trailing-bytes",
        0,
        [rec(&big, &a, &b), b"extra".to_vec()].concat(),
    );
    add("v1-truncated", 0, rec(&big, &a, &b)[..368].to_vec());
    let uni = id("\u{65e5}\u{672c}\u{1f600}.txt", 0, 0);
    add(
        "v1-unicode-empty",
        0,
        rec(&uni, &store::encode_slot(0, cp(0, 0), stamp), &[0; 44]),
    );
    let long = id(&"\u{e9}".repeat(127), u64::MAX, u32::MAX);
    add(
        "v1-long-name",
        0,
        rec(
            &long,
            &store::encode_slot(u64::MAX, cp(u64::MAX, 1), stamp),
            &[0; 44],
        ),
    );
    // Version 2: the crc32 field holds log2 of the block size.
    let v2id = id("big.img", 3 << 20, 20);
    add(
        "v2-two-slots",
        0,
        v2_head(rec(
            &v2id,
            &a,
            &store::encode_slot(5, cp(2 << 20, 7), stamp),
        )),
    );
    // Heads the encoder cannot produce; flags ask the harness to fix CRCs.
    let mut raw = rec(&big, &a, &b);
    raw[22..31].copy_from_slice(b"dir/x.bin");
    raw[20..22].copy_from_slice(&9u16.to_be_bytes());
    add("fix-path-name", 1, raw.clone());
    raw[20..22].copy_from_slice(&0u16.to_be_bytes());
    add("fix-zero-name-len", 1, raw.clone());
    raw[20..22].copy_from_slice(&256u16.to_be_bytes());
    add("fix-name-len-256", 1, raw.clone());
    raw[20..22].copy_from_slice(&3u16.to_be_bytes());
    raw[22..25].copy_from_slice(b"\xff\xfe\x00");
    add("fix-non-utf8-name", 1, raw.clone());
    raw[22..25].copy_from_slice(b"..\0");
    add("fix-dotdot-name", 1, raw.clone());
    raw[20..22].copy_from_slice(&12u16.to_be_bytes());
    raw[22..34].copy_from_slice(b".bigtransfer");
    add("fix-reserved-name", 1, raw);
    let mut bad_magic = rec(&big, &a, &b);
    bad_magic[..8].copy_from_slice(b"BTHELD03");
    add("fix-bad-magic", 7, bad_magic);
    add("fix-all-zero", 7, vec![0; 369]);
}

fn cache_entry(out: &mut BTreeMap<String, Vec<u8>>) {
    // The path and stamp the target asks for when flags bit 0 is clear.
    let path = b"/data/big.img";
    let st = SourceStamp {
        size: 10 << 20,
        mtime: 1_700_000_000,
        mtime_nsec: 123_456_789,
        ino: 4242,
        ctime: 1_700_000_001,
        ctime_nsec: 987_654_321,
    };
    let mut add = |n: &str, flags: u8, e: Vec<u8>| {
        let mut v = vec![flags];
        v.extend_from_slice(&e);
        out.insert(n.to_owned(), v);
    };
    let sums = |block: u64, blocks: Vec<u32>, whole: Option<u32>| Sums {
        block,
        blocks,
        whole,
    };
    add(
        "complete",
        0,
        cache::encode(
            path,
            st,
            &sums(1 << 20, (0..10).collect(), Some(0xCBF43926)),
        ),
    );
    add(
        "partial",
        0,
        cache::encode(path, st, &sums(1 << 20, vec![1, 2, 3], None)),
    );
    add(
        "empty",
        0,
        cache::encode(path, st, &sums(1 << 20, vec![], None)),
    );
    add(
        "odd-block",
        0,
        cache::encode(path, st, &sums(3, vec![9; 4], None)),
    );
    let other = SourceStamp {
        size: 5,
        mtime: -1,
        mtime_nsec: 999_999_999,
        ino: u64::MAX,
        ctime: -1,
        ctime_nsec: 0,
    };
    add(
        "own-stamp",
        1,
        cache::encode(
            b"/home/me/\xe9t\xe9.iso",
            other,
            &sums(1, vec![1, 2, 3, 4, 5], Some(1)),
        ),
    );
    add(
        "own-stamp-empty-file",
        1,
        cache::encode(
            b"/e",
            SourceStamp { size: 0, ..other },
            &sums(65536, vec![], Some(0)),
        ),
    );
    add(
        "stale-stamp",
        0,
        cache::encode(
            path,
            SourceStamp { ino: 1, ..st },
            &sums(1 << 20, vec![1], None),
        ),
    );
    add(
        "wrong-path",
        0,
        cache::encode(b"/data/big.im", st, &sums(1 << 20, vec![1], None)),
    );
    let mut damaged = cache::encode(path, st, &sums(1 << 20, vec![1, 2], Some(3)));
    damaged[30] ^= 1;
    add("damaged", 0, damaged.clone());
    add("damaged-crc-fixed", 2, damaged);
    let e = cache::encode(path, st, &sums(1 << 20, vec![1, 2], Some(3)));
    add("truncated", 0, e[..e.len() - 1].to_vec());
    add("tiny", 0, b"BTSU".to_vec());
    // Fields the encoder never writes, with the CRC-32 fixed by the harness.
    let mut zero_block = cache::encode(path, st, &sums(1 << 20, vec![], None));
    let at = 8 + 4 + path.len() + 48;
    zero_block[at..at + 8].copy_from_slice(&0u64.to_be_bytes());
    add("fix-zero-block", 2, zero_block);
    let mut too_many = cache::encode(path, st, &sums(1 << 20, vec![], None));
    too_many[at + 8..at + 16].copy_from_slice(&11u64.to_be_bytes());
    add("fix-count-past-size", 2, too_many);
    let mut flag2 = cache::encode(path, st, &sums(1 << 20, vec![5], Some(6)));
    let flag_at = flag2.len() - 9;
    flag2[flag_at] = 2;
    add("fix-known-flag-2", 2, flag2);
    let mut plen = cache::encode(path, st, &sums(1 << 20, vec![], None));
    plen[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    add("fix-path-len-huge", 3, plen);
}

fn verdict(out: &mut BTreeMap<String, Vec<u8>>) {
    for (n, b) in [
        ("ok", &b"CRC32_OK"[..]),
        ("error", b"CRC32_ERROR"),
        ("empty", b""),
        ("ok-newline", b"CRC32_OK\n"),
        ("prefix", b"CRC32_O"),
        ("twice", b"CRC32_OKCRC32_OK"),
        ("lowercase", b"crc32_ok"),
        ("binary", b"CRC32_OK\r\n\x00\xff\""),
    ] {
        out.insert(n.to_owned(), b.to_vec());
    }
    out.insert("long".to_owned(), vec![b'A'; 100]);
}

fn corpus() -> Corpus {
    let mut c = Corpus::new();
    let gens: [(&'static str, fn(&mut BTreeMap<String, Vec<u8>>)); 6] = [
        ("legacy_header", legacy_header),
        ("server_frames", server_frames),
        ("client_heads", client_heads),
        ("meta_record", meta_record),
        ("cache_entry", cache_entry),
        ("verdict", verdict),
    ];
    for (target, gen) in gens {
        gen(c.entry(target).or_default());
    }
    c
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut differs = false;
    for (target, seeds) in corpus() {
        let dir = root.join(target);
        if check {
            let on_disk: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| {
                            (
                                e.file_name().to_string_lossy().into_owned(),
                                std::fs::read(e.path()).unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if on_disk != seeds {
                eprintln!("{}: differs from what seedgen writes", dir.display());
                differs = true;
            }
            continue;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        println!("{target}: {} seeds", seeds.len());
    }
    if differs {
        std::process::exit(1);
    }
}
