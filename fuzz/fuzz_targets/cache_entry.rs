//! The client's checksum cache entry (`~/.cache/bigtransfer/HASH.sums`),
//! read back from disk where anything may have damaged or replaced it.
//!
//! Input: a flags byte, then the entry. `cache::decode` only returns an
//! entry for the exact path and source stamp asked for; bit 0 of the flags
//! takes them from the entry's own fields (as when the entry is for the very
//! file being sent), otherwise a fixed path and stamp are asked for. Bit 1
//! has the harness fix the trailing CRC-32 first (mutations cannot forge
//! it); with it clear, the bytes are used as they are.
//!
//! Checks, besides "no panic" (and no huge allocation): an accepted entry has
//! a non-zero block size, no more block CRC-32s than the file has blocks,
//! and re-encodes with `cache::encode` to an entry that decodes equal.
#![no_main]

use bigtransfer_core::cache::{decode, encode, SourceStamp};
use libfuzzer_sys::fuzz_target;

/// What the seeds are written for (see fuzz/seedgen).
const PATH: &[u8] = b"/data/big.img";
const STAMP: SourceStamp = SourceStamp {
    size: 10 << 20,
    mtime: 1_700_000_000,
    mtime_nsec: 123_456_789,
    ino: 4242,
    ctime: 1_700_000_001,
    ctime_nsec: 987_654_321,
};

/// The path and stamp an entry claims to be for, read leniently.
fn claimed(e: &[u8]) -> (&[u8], SourceStamp) {
    let at = |i: usize, n: usize| e.get(i..i + n);
    let plen = at(8, 4).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()) as usize);
    let path = e.get(12..).map_or(&[][..], |p| &p[..plen.min(p.len())]);
    let u = |k: usize| {
        12usize
            .checked_add(plen)
            .and_then(|i| at(i + 8 * k, 8))
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    let st = SourceStamp {
        size: u(0),
        mtime: u(1) as i64,
        mtime_nsec: u(2) as i64,
        ino: u(3),
        ctime: u(4) as i64,
        ctime_nsec: u(5) as i64,
    };
    (path, st)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, entry)) = data.split_first() else {
        return;
    };
    let mut entry = entry.to_vec();
    if flags & 2 != 0 && entry.len() >= 4 {
        let body = entry.len() - 4;
        let crc = crc32fast::hash(&entry[..body]);
        entry[body..].copy_from_slice(&crc.to_be_bytes());
    }
    let (path, st) = if flags & 1 != 0 {
        claimed(&entry)
    } else {
        (PATH, STAMP)
    };
    let Some(sums) = decode(&entry, path, st) else {
        return;
    };
    assert_ne!(sums.block, 0);
    assert!(sums.blocks.len() as u64 <= st.size.div_ceil(sums.block));
    let again = encode(path, st, &sums);
    assert!(again.len() <= entry.len(), "decode accepted a short entry");
    assert_eq!(decode(&again, path, st), Some(sums));
});
