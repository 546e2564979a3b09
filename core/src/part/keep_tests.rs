//! Tests of what the engine keeps of finished files: the finished record,
//! re-sends that store nothing, numbered versions, `--overwrite`, and a
//! stored file changed behind the server's back.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::tests::{name, put, setup, v1, v2};
use super::*;
use crate::keep::FinishedRecord;
use crate::machine::StoredAs;
use crate::store::Store;

const B: u64 = 4096;

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Uploads `bytes` as `n` in protocol 2, writing only the blocks not held.
fn upload(store: &Store, n: &str, bytes: &[u8]) -> (StoredAs, usize) {
    let (mut p, _) = v2(store, n, bytes.len() as u64, B);
    let Ok(Held::Blocks(set)) = p.held() else {
        panic!("not blocks")
    };
    let mut sent = 0;
    for idx in 0..set.count() {
        let (off, len) = crate::v2::block_range(bytes.len() as u64, B, idx);
        let want = crc32fast::hash(&bytes[off as usize..(off + len) as usize]);
        if set.crc(idx) != Some(want) {
            put(&mut p, bytes, B, idx);
            sent += 1;
        }
    }
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.finish().unwrap();
    (p.stored_as().clone(), sent)
}

fn stamp(path: &std::path::Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime_nsec(), m.ctime_nsec())
}

#[test]
fn a_finished_upload_keeps_its_block_crcs_and_a_resend_stores_nothing() {
    let (d, store) = setup();
    let a = data(1, 3 * B as usize + 100);
    assert_eq!(upload(&store, "a.bin", &a), (StoredAs::New, 4));
    let rec: FinishedRecord = store.finished(&name("a.bin")).unwrap();
    assert_eq!((rec.size, rec.block), (a.len() as u64, B));
    assert_eq!(rec.crc32, crc32fast::hash(&a));
    assert_eq!(rec.crcs[3], crc32fast::hash(&a[3 * B as usize..]));
    let before = stamp(&d.join("a.bin"));
    assert_eq!(upload(&store, "a.bin", &a), (StoredAs::Unchanged, 0));
    assert_eq!(stamp(&d.join("a.bin")), before, "the stored file untouched");
    assert_eq!(fs::read(d.join("a.bin")).unwrap(), a);
    // Protocol 1 with the same size and CRC-32: held whole at once.
    let (mut p, _) = v1(&store, "a.bin", &a);
    assert!(matches!(p.held(), Ok(Held::Prefix { offset, .. }) if offset == a.len() as u64));
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.finish().unwrap();
    assert_eq!(p.stored_as(), &StoredAs::Unchanged);
    assert_eq!(stamp(&d.join("a.bin")), before);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_different_content_keeps_the_old_file_as_a_numbered_version() {
    let (d, store) = setup();
    let a = data(1, 3 * B as usize);
    let mut b = a.clone();
    b[B as usize + 7] ^= 0xFF;
    upload(&store, "f", &a);
    // Same size, one block differs: only it is sent, the stored file is
    // never written in place.
    assert_eq!(upload(&store, "f", &b), (StoredAs::Kept("f.~1~".into()), 1));
    assert_eq!(fs::read(d.join("f")).unwrap(), b);
    assert_eq!(fs::read(d.join("f.~1~")).unwrap(), a);
    // The version keeps what was recorded of it.
    let kept = store.finished(&name("f.~1~")).unwrap();
    assert_eq!(
        (kept.size, kept.crc32),
        (a.len() as u64, crc32fast::hash(&a))
    );
    // Another size: a new upload; versions count up.
    let c = data(9, 100);
    assert_eq!(upload(&store, "f", &c).0, StoredAs::Kept("f.~2~".into()));
    assert_eq!(fs::read(d.join("f.~1~")).unwrap(), a);
    assert_eq!(fs::read(d.join("f.~2~")).unwrap(), b);
    assert_eq!(fs::read(d.join("f")).unwrap(), c);
    assert_eq!(
        store.finished(&name("f")).unwrap().crc32,
        crc32fast::hash(&c)
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_same_content_reached_through_a_held_part_keeps_the_stored_file() {
    let (d, store) = setup();
    let a = data(1, 3 * B as usize);
    let mut b = a.clone();
    b[10] ^= 1;
    upload(&store, "h", &a);
    let before = fs::metadata(d.join("h")).unwrap().ino();
    // An interrupted upload of another content leaves a held part...
    let (mut p, _) = v2(&store, "h", a.len() as u64, B);
    put(&mut p, &b, B, 0);
    p.checkpoint().unwrap();
    drop(p);
    // ...then the stored content is sent again: block 0 travels, and the
    // result is what is stored: no version, the file untouched.
    assert_eq!(upload(&store, "h", &a), (StoredAs::Unchanged, 1));
    assert_eq!(fs::metadata(d.join("h")).unwrap().ino(), before);
    assert!(!d.join("h.~1~").exists());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_name_too_long_for_a_version_is_refused_for_good_and_the_file_kept() {
    let (d, store) = setup();
    let long = "n".repeat(252);
    let a = data(1, 100);
    upload(&store, &long, &a);
    let b = data(2, 100);
    let (mut p, _) = v2(&store, &long, 100, B);
    put(&mut p, &b, B, 0);
    let e = p.finish().unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("shorter name"), "{e}");
    assert_eq!(fs::read(d.join(&long)).unwrap(), a);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn overwrite_replaces_and_keeps_no_version() {
    let (d, mut store) = setup();
    store.set_overwrite(true);
    upload(&store, "o", &data(1, 5000));
    let c = data(2, 5000);
    assert_eq!(upload(&store, "o", &c).0, StoredAs::Replaced);
    assert_eq!(fs::read(d.join("o")).unwrap(), c);
    assert!(!d.join("o.~1~").exists());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_stored_file_changed_behind_the_servers_back_is_not_trusted() {
    let (d, store) = setup();
    let a = data(1, 2 * B as usize);
    upload(&store, "t", &a);
    // Same size, same mtime forced back: the inode's ctime still tells.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.join("t"))
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"XX", 10).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(store.finished(&name("t")), None);
    // So a re-send of the original sends every block again and keeps the
    // changed file as a version.
    assert_eq!(upload(&store, "t", &a), (StoredAs::Kept("t.~1~".into()), 2));
    assert_eq!(fs::read(d.join("t")).unwrap(), a);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_stored_file_changed_during_a_resend_is_reread_not_vouched_for() {
    let (d, store) = setup();
    let a = data(1, 2 * B as usize);
    upload(&store, "r", &a);
    let (mut p, _) = v2(&store, "r", a.len() as u64, B);
    // Offered whole; then someone writes to the stored file.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.join("r"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"XX", B + 1).unwrap();
    assert_eq!(p.recheck().unwrap(), Recheck::Changed(vec![1]));
    put(&mut p, &a, B, 1);
    assert_eq!(p.recheck().unwrap(), Recheck::Same);
    p.finish().unwrap();
    assert_eq!(fs::read(d.join("r")).unwrap(), a);
    assert!(matches!(p.stored_as(), StoredAs::Kept(_)));
    fs::remove_dir_all(&d).unwrap();
}
