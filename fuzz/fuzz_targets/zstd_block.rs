//! A compressed block from a peer: `compress::decompress_block`, and the
//! round trip of `compress::compress_block`.
//!
//! Input: two bytes (big-endian) of the block length the peer declared,
//! then the frame. Checks, besides "no panic": a decoded block has exactly
//! the declared length (a frame never expands past it); refusals are
//! `Protocol` errors; and the input compressed as a block either goes raw
//! or is a worthwhile frame that decompresses back to it.
#![no_main]

use bigtransfer_core::compress::{compress_block, decompress_block, max_worthwhile_len};
use bigtransfer_core::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let expected = usize::from(u16::from_be_bytes(*len));
    match decompress_block(frame, expected) {
        Ok(out) => assert_eq!(out.len(), expected),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Protocol, "{e}"),
    }
    if let Some(z) = compress_block(data, 1) {
        assert!(z.len() <= max_worthwhile_len(data.len()));
        assert_eq!(decompress_block(&z, data.len()).unwrap(), data);
    }
});
