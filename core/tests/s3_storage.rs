//! Integration tests of the object-store storage seam (`S3Storage`, feature
//! `s3`) against a real store: SeaweedFS started by `tests/s3/run.sh`
//! (BT_S3_* and AWS_* variables; without them each store test prints
//! "skipped: no store" and passes; the unreachable-store test needs none).
//! Held parts driven as the server's machine drives them: begin, write in
//! pieces, record, checkpoint, commit.
#![cfg(feature = "s3")]

use std::time::{Duration, Instant, SystemTime};

use bigtransfer_core::listing::EntryKind;
use bigtransfer_core::machine::{Held, HeldPart, Layout, PartId, Recheck, Storage, StoredAs};
use bigtransfer_core::s3::{
    finished, Client, Condition, Config, Retry, S3ErrorKind, S3Part, S3Storage,
};
use bigtransfer_core::v2::FaultCode;

const MIB: u64 = 1 << 20;

fn config(test: &str, endpoint_var: &str) -> Option<Config> {
    let Ok(endpoint) = std::env::var(endpoint_var) else {
        eprintln!("{test}: skipped: no store (run tests/s3/run.sh)");
        return None;
    };
    let bucket = std::env::var("BT_S3_BUCKET").unwrap_or_else(|_| "bt-test".into());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("test/{test}-{}-{nanos}/", std::process::id());
    let mut cfg = Config::from_env(&endpoint, "us-east-1", &bucket, &prefix)
        .expect("BT_S3_ENDPOINT is set, so AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY must be");
    cfg.retry = Retry {
        attempts: 3,
        base: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_total: Duration::from_secs(5),
    };
    Some(cfg)
}

/// Two nodes over one bucket and prefix: the second through the second
/// gateway when there is one.
fn nodes(test: &str, stale: Duration) -> Option<(S3Storage, S3Storage)> {
    let a = config(test, "BT_S3_ENDPOINT")?;
    let mut b = a.clone();
    if let Ok(e) = std::env::var("BT_S3_ENDPOINT2") {
        b.endpoint = e;
    }
    let mk = |c: Config, n: &str| S3Storage::new(Client::new(c).expect("client"), n, stale);
    Some((mk(a, "nodeA"), mk(b, "nodeB")))
}

fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn id(name: &str, size: u64) -> PartId {
    PartId {
        name: name.into(),
        filesize: size,
        layout: Layout::Blocks { block: MIB },
    }
}

/// Sends block `idx` of `all` as the machine does: head, payload in two
/// pieces, trailer.
fn send_block(p: &mut S3Part, all: &[u8], idx: u64, crc: Option<u32>) -> Result<(), String> {
    let off = idx * MIB;
    let end = (off + MIB).min(all.len() as u64);
    let bytes = &all[off as usize..end as usize];
    let crc = crc.unwrap_or_else(|| crc32fast::hash(bytes));
    let half = bytes.len() / 2;
    p.begin_block(idx).map_err(|f| f.words.clone())?;
    p.write_at(off, &bytes[..half])
        .map_err(|f| f.words.clone())?;
    p.write_at(off + half as u64, &bytes[half..])
        .map_err(|f| f.words.clone())?;
    p.record_block(idx, crc, true).map_err(|f| f.words)
}

fn read_back(s: &S3Storage, name: &str, len: u64) -> Vec<u8> {
    let mut got = Vec::new();
    s.client()
        .get_range(name, 0, len, &mut got)
        .expect("read back");
    got
}

fn held_blocks(h: &Held) -> Vec<u64> {
    match h {
        Held::Blocks(set) => (0..set.count()).filter(|&i| set.crc(i).is_some()).collect(),
        other => panic!("expected blocks, got {other:?}"),
    }
}

#[test]
fn an_upload_lands_as_the_object_byte_identical() {
    let Some((a, _)) = nodes("lands", Duration::from_secs(30)) else {
        return;
    };
    let all = data(20 * MIB + 12345, 7);
    let (mut p, held) = a.open(&id("f.bin", all.len() as u64)).expect("open");
    assert!(held_blocks(&held).is_empty());
    for idx in 0..21 {
        send_block(&mut p, &all, idx, None).expect("block");
    }
    p.checkpoint().expect("checkpoint");
    p.commit(crc32fast::hash(&all)).expect("commit");
    let info = a.client().head_object("f.bin").expect("head");
    assert_eq!(info.crc32, Some(crc32fast::hash(&all)));
    assert_eq!(read_back(&a, "f.bin", all.len() as u64), all);
    // No state left behind: the object and its finished record.
    let names: Vec<String> = a
        .client()
        .list_objects("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [".bigtransfer-done/f.bin", "f.bin"]);
    let rec = finished::read_record(a.client(), "f.bin")
        .unwrap()
        .expect("a finished record");
    assert!(rec.vouches_for(&info), "{rec:?} {info:?}");
    assert_eq!(
        (rec.size, rec.crc32, rec.block),
        (all.len() as u64, crc32fast::hash(&all), MIB)
    );
    let blocks: Vec<u32> = all.chunks(MIB as usize).map(crc32fast::hash).collect();
    assert_eq!(rec.crcs, blocks);
}

#[test]
fn a_resend_is_offered_the_stored_blocks_and_changes_nothing() {
    let Some((a, b)) = nodes("seed", Duration::from_secs(30)) else {
        return;
    };
    let all = data(9 * MIB + 5, 17);
    let pid = id("s.bin", all.len() as u64);
    let (mut p, _) = a.open(&pid).expect("open");
    for idx in 0..10 {
        send_block(&mut p, &all, idx, None).expect("block");
    }
    p.commit(crc32fast::hash(&all)).expect("commit");
    drop(p);
    let etag = a.client().head_object("s.bin").unwrap().etag;
    // Through the other node: every block offered with its CRC-32.
    let (mut p, held) = b.open(&pid).expect("open again");
    assert_eq!(held_blocks(&held), (0..10).collect::<Vec<_>>());
    assert_eq!((p.held_bytes(), p.held_blocks()), (all.len() as u64, 10));
    if let Held::Blocks(set) = &held {
        assert_eq!(set.crc(9), Some(crc32fast::hash(&all[9 << 20..])));
    }
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.commit(crc32fast::hash(&all)).expect("commit");
    assert_eq!(p.stored_as(), StoredAs::Unchanged);
    drop(p);
    assert_eq!(b.client().head_object("s.bin").unwrap().etag, etag);
    // One block changed: the others are asked for again at the recheck
    // (they are in no part of the new upload), then the old is kept.
    let mut changed = all.clone();
    changed[3 << 20] ^= 1;
    let (mut p, _) = a.open(&pid).expect("open a third time");
    send_block(&mut p, &changed, 3, None).expect("block 3");
    let Recheck::Changed(again) = p.recheck().unwrap() else {
        panic!("the rest must be asked for");
    };
    assert_eq!(again, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    for idx in again {
        send_block(&mut p, &changed, idx, None).expect("block");
    }
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.commit(crc32fast::hash(&changed)).expect("commit");
    assert_eq!(p.stored_as(), StoredAs::Kept("s.bin.~1~".into()));
    drop(p);
    assert_eq!(read_back(&a, "s.bin", all.len() as u64), changed);
    assert_eq!(read_back(&a, "s.bin.~1~", all.len() as u64), all);
    // The version keeps a record that vouches for it: a download of it
    // is checked against the original block CRC-32s.
    let r = a.reference("s.bin.~1~").expect("reference of the version");
    assert_eq!(r.whole(), crc32fast::hash(&all));
}

#[test]
fn a_legacy_resend_of_stored_content_is_held_whole_and_changes_nothing() {
    let Some((a, _)) = nodes("legacy-seed", Duration::from_secs(30)) else {
        return;
    };
    let body = data(3 * MIB + 11, 23);
    let crc = crc32fast::hash(&body);
    // Put there by other means: the store's own CRC-32 vouches for it.
    a.client()
        .put_small("v1.bin", &body, &Condition::None)
        .unwrap();
    let etag = a.client().head_object("v1.bin").unwrap().etag;
    let pid = PartId {
        name: "v1.bin".into(),
        filesize: body.len() as u64,
        layout: Layout::Prefix { crc32: crc },
    };
    let (mut p, held) = a.open(&pid).expect("open");
    assert_eq!(
        held,
        Held::Prefix {
            offset: body.len() as u64,
            crc32: crc
        }
    );
    p.commit(crc).expect("commit");
    assert_eq!(p.stored_as(), StoredAs::Unchanged);
    drop(p);
    assert_eq!(a.client().head_object("v1.bin").unwrap().etag, etag);
    // Another content of the same size: nothing is offered.
    let other = PartId {
        layout: Layout::Prefix { crc32: crc ^ 1 },
        ..pid
    };
    let (p, held) = a.open(&other).expect("open other");
    assert_eq!(
        held,
        Held::Prefix {
            offset: 0,
            crc32: 0
        }
    );
    drop(p);
}

#[test]
fn a_listing_follows_continuation_tokens_a_page_at_a_time() {
    let Some(mut cfg) = config("pages", "BT_S3_ENDPOINT") else {
        return;
    };
    cfg.page_size = 2;
    let s = S3Storage::new(
        Client::new(cfg).expect("client"),
        "n",
        Duration::from_secs(30),
    );
    let names = ["a", "b.~1~", "b", "c", "d"];
    for (i, n) in names.iter().enumerate() {
        let body = vec![i as u8; 100 + i];
        s.client().put_small(n, &body, &Condition::None).unwrap();
    }
    let all = data(9 * MIB, 5);
    let (mut p, _) = s.open(&id("e.bin", all.len() as u64)).expect("open");
    for idx in 0..8 {
        send_block(&mut p, &all, idx, None).expect("block");
    }
    p.checkpoint().expect("checkpoint");
    let mut l = s.lister("", false);
    let mut got = Vec::new();
    while let Some(e) = l.next_entry().expect("listing") {
        got.push((
            String::from_utf8(e.name).unwrap(),
            e.size,
            e.kind,
            e.crc32,
            e.held,
        ));
    }
    let mut want: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let body = vec![i as u8; 100 + i];
            (
                n.to_string(),
                body.len() as u64,
                EntryKind::File,
                Some(crc32fast::hash(&body)),
                body.len() as u64,
            )
        })
        .collect();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    want.push(("e.bin".into(), 9 * MIB, EntryKind::Partial, None, 8 * MIB));
    assert_eq!(got, want);
    drop(p);
}

#[test]
fn asked_for_directories_a_listing_gives_prefixes_and_tree_uploads() {
    let Some(mut cfg) = config("dirs", "BT_S3_ENDPOINT") else {
        return;
    };
    cfg.page_size = 2;
    let s = S3Storage::new(
        Client::new(cfg).expect("client"),
        "n",
        Duration::from_secs(30),
    );
    for n in ["a", "t/x/y", "t/z", "u/v"] {
        s.client().put_small(n, b"12", &Condition::None).unwrap();
    }
    let all = data(9 * MIB, 6);
    let (mut p, _) = s
        .open_tree_file(&id("t/w/p.bin", all.len() as u64))
        .expect("open");
    for idx in 0..8 {
        send_block(&mut p, &all, idx, None).expect("block");
    }
    p.checkpoint().expect("checkpoint");
    let listed = |dirs: bool| {
        let mut l = s.lister("", dirs);
        let mut got = Vec::new();
        while let Some(e) = l.next_entry().expect("listing") {
            got.push((String::from_utf8(e.name).unwrap(), e.kind, e.held));
        }
        got
    };
    assert_eq!(
        listed(true),
        vec![
            ("a".to_string(), EntryKind::File, 2),
            ("t".to_string(), EntryKind::Dir, 0),
            ("u".to_string(), EntryKind::Dir, 0),
            ("t/w/p.bin".to_string(), EntryKind::Partial, 8 * MIB),
        ]
    );
    // An older client's listing is as before: no directories, and the
    // tree's upload (a path) is not among the top-level uploads.
    assert_eq!(listed(false), vec![("a".to_string(), EntryKind::File, 2)]);
    drop(p);
}

#[test]
fn an_upload_interrupted_on_one_node_resumes_on_another_with_the_rest() {
    let Some((a, b)) = nodes("resume", Duration::from_secs(30)) else {
        return;
    };
    let all = data(19 * MIB + 7, 11);
    let pid = id("r.bin", all.len() as u64);
    {
        let (mut p, _) = a.open(&pid).expect("open on A");
        for idx in 0..11 {
            send_block(&mut p, &all, idx, None).expect("block");
        }
        p.checkpoint().expect("checkpoint");
    } // A's connection ends: the lease is let go.
    let (mut p, held) = b.open(&pid).expect("open on B");
    // Part 1 (blocks 0-7) is in the store; blocks 8-10 were only buffered.
    assert_eq!(held_blocks(&held), (0..8).collect::<Vec<_>>());
    if let Held::Blocks(set) = &held {
        assert_eq!(set.crc(3), Some(crc32fast::hash(&all[3 << 20..4 << 20])));
    }
    for idx in 8..20 {
        send_block(&mut p, &all, idx, None).expect("block on B");
    }
    p.commit(crc32fast::hash(&all)).expect("commit on B");
    assert_eq!(read_back(&b, "r.bin", all.len() as u64), all);
}

#[test]
fn two_nodes_never_hold_one_upload_and_a_silent_holder_is_taken_over() {
    let stale = Duration::from_millis(1500);
    let Some((a, b)) = nodes("lease", stale) else {
        return;
    };
    let all = data(9 * MIB, 3);
    let pid = id("l.bin", all.len() as u64);
    let (mut pa, _) = a.open(&pid).expect("A takes the lease");
    let refused = b
        .open(&pid)
        .err()
        .expect("B must be refused while A holds it");
    assert_eq!(refused.code, FaultCode::Busy, "{}", refused.words);
    assert!(
        refused.words.contains("another server node"),
        "{}",
        refused.words
    );
    // A goes silent: B may take over once the lease is stale (polled).
    let t0 = Instant::now();
    let (mut pb, _) = loop {
        match b.open(&pid) {
            Ok(x) => break x,
            Err(f) if f.code == FaultCode::Busy && t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(f) => panic!("B never took over: {}", f.words),
        }
    };
    assert!(t0.elapsed() + Duration::from_millis(200) >= stale);
    let lost = pa.checkpoint().expect_err("A lost the lease");
    assert_eq!(lost.code, FaultCode::TakenOver, "{}", lost.words);
    drop(pa);
    for idx in 0..9 {
        send_block(&mut pb, &all, idx, None).expect("block on B");
    }
    pb.commit(crc32fast::hash(&all)).expect("commit on B");
    assert_eq!(read_back(&b, "l.bin", all.len() as u64), all);
}

#[test]
fn a_crc_mismatch_never_produces_a_visible_object() {
    let Some((a, _)) = nodes("mismatch", Duration::from_secs(30)) else {
        return;
    };
    let all = data(10 * MIB, 5);
    // A block whose recorded CRC is not its bytes': the store refuses the part.
    let (mut p, _) = a.open(&id("bad.bin", all.len() as u64)).expect("open");
    // (Parts go out in the background: the refusal shows at the next
    // call that settles them, at the latest the checkpoint.)
    let mut err = None;
    for idx in 0..8 {
        let crc = (idx == 5).then_some(0x1234_5678);
        if let Err(e) = send_block(&mut p, &all, idx, crc) {
            err = Some(e);
            break;
        }
    }
    let err = err.or_else(|| p.checkpoint().err().map(|f| f.words));
    let err = err.expect("the store must refuse the part");
    assert!(
        err.contains("BadDigest") || err.contains("checksum"),
        "{err}"
    );
    drop(p);
    // A wrong whole-file CRC: the store refuses completion.
    let (mut p, _) = a.open(&id("bad2.bin", all.len() as u64)).expect("open");
    for idx in 0..10 {
        send_block(&mut p, &all, idx, None).expect("block");
    }
    let f = p
        .commit(crc32fast::hash(&all) ^ 1)
        .expect_err("completion refused");
    assert_eq!(f.code, FaultCode::Storage, "{}", f.words);
    for name in ["bad.bin", "bad2.bin"] {
        let e = a.client().head_object(name).expect_err("no object");
        assert_eq!(e.kind, S3ErrorKind::NotFound, "{name}: {e}");
    }
    // After the refused completion, a new upload of the name starts over.
    let (_, held) = a.open(&id("bad2.bin", all.len() as u64)).expect("reopen");
    assert!(held_blocks(&held).is_empty());
}

#[test]
fn abandoned_uploads_expire_and_fresh_ones_stay() {
    let Some((a, _)) = nodes("expire", Duration::from_secs(30)) else {
        return;
    };
    let all = data(9 * MIB, 9);
    let pid = id("old.bin", all.len() as u64);
    {
        let (mut p, _) = a.open(&pid).expect("open");
        for idx in 0..8 {
            send_block(&mut p, &all, idx, None).expect("block");
        }
        p.checkpoint().expect("checkpoint");
    }
    assert!(a
        .expire(Duration::from_secs(3600))
        .expect("sweep")
        .is_empty());
    assert_eq!(
        a.expire(Duration::ZERO).expect("sweep"),
        vec!["old.bin".to_string()]
    );
    assert!(
        a.client().list_objects("").expect("list").is_empty(),
        "state left"
    );
    let (_, held) = a.open(&pid).expect("reopen");
    assert!(held_blocks(&held).is_empty(), "expired parts still held");
}

#[test]
fn a_block_damaged_in_flight_holds_back_its_part_until_repaired() {
    let Some((a, b)) = nodes("repair", Duration::from_secs(30)) else {
        return;
    };
    let all = data(17 * MIB + 1, 13);
    let pid = id("fix.bin", all.len() as u64);
    let (mut p, _) = a.open(&pid).expect("open");
    for idx in 0..18 {
        send_block(&mut p, &all, idx, None).expect("block");
        if idx == 3 {
            // Its trailer did not match: the machine records it as bad.
            p.record_block(3, 0xbad, false).expect("record bad");
        }
    }
    // The repair round starts with a checkpoint: part 1 is not stored.
    p.checkpoint().expect("checkpoint");
    let (done_bytes, done_blocks) = (p.held_bytes(), p.held_blocks());
    assert_eq!(
        (done_bytes, done_blocks),
        (9 * MIB + 1, 10),
        "parts 2 and 3 only"
    );
    send_block(&mut p, &all, 3, None).expect("repaired block");
    p.checkpoint().expect("checkpoint");
    assert_eq!(p.held_blocks(), 18);
    drop(p);
    // Resumed elsewhere: everything is held; completing gives the file.
    let (mut p, held) = b.open(&pid).expect("open on B");
    assert_eq!(held_blocks(&held).len(), 18);
    p.commit(crc32fast::hash(&all)).expect("commit");
    assert_eq!(read_back(&b, "fix.bin", all.len() as u64), all);
}

#[test]
fn an_unreachable_store_is_a_transient_fault_in_words() {
    // Needs no store: a closed loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let cfg = Config {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        bucket: "b".into(),
        prefix: String::new(),
        path_style: true,
        credentials: bigtransfer_core::s3::Credentials {
            key: "k".into(),
            secret: "s".into(),
            token: None,
        },
        retry: Retry {
            attempts: 2,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            max_total: Duration::from_secs(2),
        },
        timeout: Duration::from_secs(2),
        page_size: 1000,
    };
    let s = S3Storage::new(
        Client::new(cfg).expect("client"),
        "n",
        Duration::from_secs(30),
    );
    let f = s.open(&id("u.bin", 5)).err().expect("no store, no upload");
    assert_eq!(f.code, FaultCode::Storage, "{}", f.words);
    assert!(f.code.is_transient());
    assert!(f.words.contains("unreachable"), "{}", f.words);
}
