//! Tests of the held-part engine on a real directory: resume, crashes
//! (a part dropped without its final checkpoint), foreign writes, holes.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::*;
use crate::machine::{Layout, Slot};
use crate::name::RESERVED_NAME;
use crate::store::{key_of, Store};
use crate::v2::block_range;

pub(super) fn setup() -> (PathBuf, Store) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "bt-part-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&d).unwrap();
    let s = Store::open(&d).unwrap();
    (d, s)
}

pub(super) fn name(n: &str) -> SafeName {
    SafeName::from_wire(n).unwrap()
}

pub(super) fn v1(store: &Store, n: &str, data: &[u8]) -> (DiskPart, Recovery) {
    let layout = Layout::Prefix {
        crc32: crc32fast::hash(data),
    };
    DiskPart::open(store, &name(n), data.len() as u64, layout).unwrap()
}

pub(super) fn v2(store: &Store, n: &str, size: u64, block: u64) -> (DiskPart, Recovery) {
    DiskPart::open(store, &name(n), size, Layout::Blocks { block }).unwrap()
}

fn offset(p: &DiskPart) -> u64 {
    match p.held() {
        Ok(Held::Prefix { offset, .. }) => offset,
        other => panic!("{other:?}"),
    }
}

pub(super) fn put(p: &mut DiskPart, data: &[u8], block: u64, idx: u64) {
    let (off, len) = block_range(data.len() as u64, block, idx);
    let chunk = &data[off as usize..(off + len) as usize];
    p.begin_block(idx).unwrap();
    p.write_at(off, chunk, None).unwrap();
    p.record_block(idx, crc32fast::hash(chunk), true).unwrap();
}

fn held_crcs(p: &DiskPart) -> Vec<Option<u32>> {
    let Ok(Held::Blocks(set)) = p.held() else {
        panic!("not blocks")
    };
    (0..set.count()).map(|i| set.crc(i)).collect()
}

fn scribble(d: &std::path::Path, n: &str, at: u64) {
    let part = d
        .join(RESERVED_NAME)
        .join(format!("{}.part", key_of(&name(n))));
    let f = fs::OpenOptions::new().write(true).open(part).unwrap();
    f.write_all_at(b"zz", at).unwrap();
}

#[test]
fn v1_background_checkpoints_survive_a_crash() {
    let (d, store) = setup();
    let step = CHECKPOINT_STEP as usize;
    let data: Vec<u8> = (0..3 * step + 5000).map(|i| (i % 239) as u8).collect();
    let (mut p, _) = v1(&store, "bg.bin", &data);
    // Odd-sized writes, so they straddle the steps.
    let mut at = 0;
    for chunk in data[..3 * step + 1000].chunks(700 << 10) {
        p.write_at(at, chunk, None).unwrap();
        at += chunk.len() as u64;
        // Never more than an interval unrecorded.
        let flight = p.syncer.in_flight().map_or(0, |n| n.covered);
        assert!(flight + p.written_since < CHECKPOINT_INTERVAL);
    }
    // About one checkpoint per step, not one per write.
    assert!((1..=3).contains(&p.seq), "{} checkpoints", p.seq);
    std::mem::forget(p); // a crash: no final checkpoint
    let (mut p, rec) = v1(&store, "bg.bin", &data);
    // Written to after its last checkpoint: the prefix is re-read.
    assert!(matches!(rec, Recovery::Reread(_)), "{rec:?}");
    // What the checkpoints promise: never more than an interval of the
    // bytes written lost (how much less depends on whether the last
    // background checkpoint was done when the process died).
    let from = offset(&p);
    assert!(
        from >= step as u64 && from + CHECKPOINT_INTERVAL >= at,
        "resumed from {from} of {at} written"
    );
    p.write_at(from, &data[from as usize..], None).unwrap();
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.finish().unwrap();
    assert_eq!(fs::read(d.join("bg.bin")).unwrap(), data);
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn v1_resume_continues_the_crc_without_rereading() {
    let (d, store) = setup();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (mut p, rec) = v1(&store, "r.bin", &data);
    assert_eq!(rec, Recovery::Fresh);
    p.write_at(0, &data[..40_000], None).unwrap();
    drop(p); // checkpoints
    let (mut p, rec) = v1(&store, "r.bin", &data);
    assert_eq!(rec, Recovery::Trusted);
    let want = crc32fast::hash(&data[..40_000]);
    assert_eq!(
        p.held().unwrap(),
        Held::Prefix {
            offset: 40_000,
            crc32: want
        }
    );
    // The caller's CRC-32 is used as given (the receiver computed it).
    let whole = crc32fast::hash(&data);
    p.write_at(40_000, &data[40_000..], Some(whole)).unwrap();
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.finish().unwrap();
    assert_eq!(fs::read(d.join("r.bin")).unwrap(), data);
    // Only the lock and the finished record of r.bin stay.
    let key = key_of(&name("r.bin"));
    assert!(fs::read_dir(d.join(RESERVED_NAME))
        .unwrap()
        .flatten()
        .all(
            |e| e.file_name() == "lock" || e.file_name().to_string_lossy() == format!("{key}.done")
        ));
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn v1_another_source_or_a_tampered_part_is_never_resumed_blindly() {
    let (d, store) = setup();
    let data = vec![9u8; 50_000];
    let (mut p, _) = v1(&store, "t.bin", &data);
    p.write_at(0, &data[..20_000], None).unwrap();
    drop(p);
    // Same name, other size: starts over.
    let (p, rec) = v1(&store, "t.bin", &[1u8; 60_000]);
    assert!(matches!(rec, Recovery::Discarded(ref w) if w.contains("another source")));
    assert_eq!(offset(&p), 0);
    drop(p);
    // Rebuild the original held part, then flip a byte in it.
    let (mut p, _) = v1(&store, "t.bin", &data);
    p.write_at(0, &data[..20_000], None).unwrap();
    drop(p);
    scribble(&d, "t.bin", 5);
    let (mut p, rec) = v1(&store, "t.bin", &data);
    assert!(matches!(rec, Recovery::Reread(_)), "{rec:?}");
    p.write_at(20_000, &data[20_000..], None).unwrap();
    match p.recheck().unwrap() {
        Recheck::Wrong(w) => assert!(w.contains("does not match its checkpoint"), "{w}"),
        other => panic!("{other:?}"),
    }
    assert!(p.finish().is_err());
    assert!(!d.join("t.bin").exists());
    drop(p);
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn v2_a_held_block_being_replaced_is_not_vouched_for() {
    let (d, store) = setup();
    let block = 65536u64;
    let data: Vec<u8> = (0..(4 * block)).map(|i| (i % 251) as u8).collect();
    let (mut p, _) = v2(&store, "r.bin", data.len() as u64, block);
    for i in 0..3 {
        put(&mut p, &data, block, i);
    }
    drop(p);
    // The source changed: block 1 is being replaced when the link drops.
    let (mut p, rec) = v2(&store, "r.bin", data.len() as u64, block);
    assert_eq!(rec, Recovery::Trusted);
    p.begin_block(1).unwrap();
    p.write_at(block, &[0xEE; 1000], None).unwrap();
    drop(p); // the cut-off checkpoint
    let (p, rec) = v2(&store, "r.bin", data.len() as u64, block);
    assert_eq!(rec, Recovery::Trusted);
    // Block 1 is a hole now: its old CRC-32 over the new bytes would let
    // a source changed back be "verified" wrongly. Blocks 0 and 2 stay.
    let c = |i: usize| {
        Some(crc32fast::hash(
            &data[i * block as usize..][..block as usize],
        ))
    };
    assert_eq!(held_crcs(&p), vec![c(0), None, c(2), None]);
    assert_eq!((p.held_bytes(), p.held_blocks()), (2 * block, 2));
    drop(p);
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn v2_background_checkpoints_survive_a_crash() {
    let (d, store) = setup();
    let block = 1u64 << 20;
    let steps = CHECKPOINT_STEP / block;
    let data: Vec<u8> = (0..((2 * steps + 3) * block))
        .map(|i| (i % 241) as u8)
        .collect();
    let (mut p, _) = v2(&store, "bg.bin", data.len() as u64, block);
    for i in 0..=2 * steps {
        put(&mut p, &data, block, i);
        let flight = p.syncer.in_flight().map_or(0, |n| n.covered);
        assert!(flight + p.written_since < CHECKPOINT_INTERVAL);
    }
    std::mem::forget(p); // a crash: no final checkpoint
    let (p, _) = v2(&store, "bg.bin", data.len() as u64, block);
    let held = p.held_blocks() as u64 * block;
    assert!(
        (steps * block..=(2 * steps + 1) * block).contains(&held),
        "held {held}"
    );
    let expect: Vec<Option<u32>> = data
        .chunks(block as usize)
        .map(|c| Some(crc32fast::hash(c)))
        .collect();
    assert_eq!(
        held_crcs(&p)[..(held / block) as usize],
        expect[..(held / block) as usize]
    );
    drop(p);
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn v2_resume_keeps_holes_and_rereads_a_modified_part() {
    let (d, store) = setup();
    let block = 65536u64;
    let data: Vec<u8> = (0..(5 * block + 100)).map(|i| (i % 253) as u8).collect();
    let size = data.len() as u64;
    let (mut p, rec) = v2(&store, "b.bin", size, block);
    assert_eq!(rec, Recovery::Fresh);
    for i in [0, 1, 2, 4] {
        put(&mut p, &data, block, i);
    }
    // Block 3 arrived damaged: a hole between held blocks.
    p.begin_block(3).unwrap();
    p.write_at(3 * block, &[0u8; 65536], None).unwrap();
    p.record_block(3, 7, false).unwrap();
    drop(p);
    let (p, rec) = v2(&store, "b.bin", size, block);
    assert_eq!(rec, Recovery::Trusted);
    let c: Vec<Option<u32>> = data
        .chunks(block as usize)
        .map(|c| Some(crc32fast::hash(c)))
        .collect();
    assert_eq!(held_crcs(&p), vec![c[0], c[1], c[2], None, c[4], None]);
    let Ok(Held::Blocks(set)) = p.held() else {
        panic!()
    };
    assert_eq!(set.slot(4), Some(Slot::Durable(c[4].unwrap())));
    drop(p);
    // Damage block 1 on disk: the part is re-read and block 1 is held
    // with the CRC-32 of its bytes on disk (the sender sends it again).
    scribble(&d, "b.bin", block + 7);
    let (mut p, rec) = v2(&store, "b.bin", size, block);
    assert!(matches!(rec, Recovery::Reread(_)), "{rec:?}");
    let now = held_crcs(&p);
    assert_ne!(now[1], c[1]);
    assert_eq!((now[0], now[2], now[3], now[4]), (c[0], c[2], None, c[4]));
    for i in [1, 3, 5] {
        put(&mut p, &data, block, i);
    }
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.finish().unwrap();
    assert_eq!(fs::read(d.join("b.bin")).unwrap(), data);
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn v2_resumes_an_older_prefix_only_block_list() {
    let (d, store) = setup();
    let block = 65536u64;
    let data: Vec<u8> = (0..(3 * block)).map(|i| (i % 249) as u8).collect();
    let (mut p, _) = v2(&store, "o.bin", data.len() as u64, block);
    for i in 0..2 {
        put(&mut p, &data, block, i);
    }
    drop(p);
    // Rewrite the list as the engine before holes did: the first N CRCs.
    let blk = d
        .join(RESERVED_NAME)
        .join(format!("{}.blk", key_of(&name("o.bin"))));
    let old = fs::read(&blk).unwrap();
    let mut list = ledger::BLK_MAGIC_PREFIX.to_vec();
    list.extend_from_slice(&old[8..24 + 8]);
    // Rewriting the list does not touch the part, so its stamp holds.
    fs::write(&blk, &list).unwrap();
    let (p, rec) = v2(&store, "o.bin", data.len() as u64, block);
    assert_eq!(rec, Recovery::Trusted);
    assert_eq!(p.held_bytes(), 2 * block);
    drop(p);
    drop(store);
    fs::remove_dir_all(&d).unwrap();
}

/// Each write's range is allocated just before it (where that pays), never
/// the whole part: a sparse source's holes, which are never sent, stay
/// holes on the server, and the held bytes are exactly the ones written.
#[test]
fn v2_allocates_only_what_is_written() {
    use std::os::unix::fs::MetadataExt;
    let (d, store) = setup();
    let block = 1u64 << 20;
    let size = 64 * block;
    let first: Vec<u8> = (0..block).map(|i| (i % 251) as u8).collect();
    let last: Vec<u8> = (0..block).map(|i| (i % 241) as u8).collect();
    let (mut p, _) = v2(&store, "sparse.bin", size, block);
    for (idx, bytes) in [(0, &first), (63, &last)] {
        p.begin_block(idx).unwrap();
        p.write_at(idx * block, bytes, None).unwrap();
        p.record_block(idx, crc32fast::hash(bytes), true).unwrap();
    }
    p.checkpoint().unwrap();
    let part = fs::read_dir(&d)
        .unwrap()
        .chain(fs::read_dir(store.state_path()).unwrap())
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .expect("the part file")
        .path();
    let meta = fs::metadata(&part).unwrap();
    assert_eq!(meta.len(), size, "the size is where the last write ended");
    // Two written blocks, and some metadata blocks at most: never the
    // 62 MiB between them.
    assert!(
        meta.blocks() * 512 <= 4 * block,
        "{} bytes allocated for 2 MiB written",
        meta.blocks() * 512
    );
    let mut got = vec![0u8; block as usize];
    let f = fs::File::open(&part).unwrap();
    f.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, first);
    f.read_exact_at(&mut got, 63 * block).unwrap();
    assert_eq!(got, last);
    f.read_exact_at(&mut got, 10 * block).unwrap();
    assert!(got.iter().all(|&b| b == 0), "a hole reads as zeros");
    drop((p, f, store));
    fs::remove_dir_all(&d).unwrap();
}
