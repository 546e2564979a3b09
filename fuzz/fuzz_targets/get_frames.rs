//! The download frames (`crate::getwire`): the server's reference `G`
//! (read by the client and from its record file) and the client's want
//! `W` (read by the server), from any bytes.
//!
//! Checks: a reference that parses re-encodes to exactly the input and is
//! self-consistent (its count fits its size and block size); a want that
//! parses names ascending blocks below the file's count and re-encodes to
//! exactly the input (the encoding is canonical: runs never touch). The
//! first byte picks the parser; for a want the next 3 give the file's
//! block count (at most the protocol's limit).
#![no_main]

use bigtransfer_core::getwire::{decode_want, encode_want, Reference};
use bigtransfer_core::v2;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 2 == 0 {
        if let Ok(r) = Reference::decode(rest) {
            assert_eq!(r.encode(), rest);
            assert_eq!(r.count(), v2::block_count(r.size, r.block));
        }
        return;
    }
    if rest.len() < 3 {
        return;
    }
    let total = (u64::from(rest[0]) << 16 | u64::from(rest[1]) << 8 | u64::from(rest[2]))
        .min(v2::MAX_BLOCKS);
    let p = &rest[3..];
    if let Ok(blocks) = decode_want(p, total) {
        assert!(blocks.windows(2).all(|w| w[0] < w[1]));
        assert!(blocks.iter().all(|&b| b < total));
        assert_eq!(&encode_want(&blocks)[5..], p);
    }
});
