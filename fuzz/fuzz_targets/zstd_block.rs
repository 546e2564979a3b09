//! A compressed block from a peer: `compress::decompress_block`, the same
//! bytes as a packed payload through `compress::Unpacker`, and the round
//! trips of `compress::compress_block` and `BlockCompressor::pack`.
//!
//! Input: two bytes (big-endian) of the block length the peer declared,
//! then the frame. Checks, besides "no panic": a decoded block has exactly
//! the declared length (a frame never expands past it); refusals are
//! `Protocol` errors; and the input compressed as a block either goes raw
//! or is a worthwhile frame that decompresses back to it; the unpacker never
//! gives a chunk over `PACK_CHUNK` nor more bytes than the block's. The
//! same for the connection-long stream (`zstd-stream`): the frame as a
//! streamed payload into a fresh decoder, and the input packed in a stream
//! twice (the second block referring back to the first) decoding back.
#![no_main]

use bigtransfer_core::compress::{
    compress_block, decompress_block, max_worthwhile_len, BlockCompressor, StreamDecoder, Unpacker,
    PACK_CHUNK,
};
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
    unpack(frame, expected as u64);
    if let Some(p) = BlockCompressor::new(1).ok().and_then(|mut c| c.pack(data)) {
        assert!(p.len() <= max_worthwhile_len(data.len()));
        assert_eq!(unpack(&p, data.len() as u64), Some(data.to_vec()));
    }
    if let Ok(mut dec) = StreamDecoder::new() {
        unpack_stream(frame, expected as u64, &mut dec);
    }
    if let (Ok(mut c), Ok(mut dec)) = (BlockCompressor::for_codec(1, true), StreamDecoder::new()) {
        for _ in 0..2 {
            let Some(p) = c.pack(data) else { continue };
            assert!(p.len() <= max_worthwhile_len(data.len()));
            assert_eq!(
                unpack_stream(&p, data.len() as u64, &mut dec),
                Some(data.to_vec())
            );
        }
    }
});

/// The block a streamed `payload` unpacks to through `dec`, if valid.
fn unpack_stream(payload: &[u8], len: u64, dec: &mut StreamDecoder) -> Option<Vec<u8>> {
    drive(payload, len, Unpacker::streaming(len), |u, b| {
        u.feed_stream(b, dec)
    })
}

/// The block `payload` unpacks to, if it is a whole valid one.
fn unpack(payload: &[u8], len: u64) -> Option<Vec<u8>> {
    drive(payload, len, Unpacker::new(len), |u, b| u.feed(b))
}

/// Feeds `payload` to `u` in the pieces it asks for, through `feed`,
/// checking every chunk it gives; the block, if whole and valid.
fn drive(
    payload: &[u8],
    len: u64,
    mut u: Unpacker,
    mut feed: impl FnMut(&mut Unpacker, &[u8]) -> bigtransfer_core::Result<Option<Vec<u8>>>,
) -> Option<Vec<u8>> {
    let (mut out, mut pos) = (Vec::new(), 0);
    while pos < payload.len() {
        let n = u.want().max(1).min(payload.len() - pos);
        match feed(&mut u, &payload[pos..pos + n]) {
            Ok(Some(chunk)) => {
                assert!(chunk.len() <= PACK_CHUNK);
                out.extend_from_slice(&chunk);
                assert!(out.len() as u64 <= len);
            }
            Ok(None) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
                return None;
            }
        }
        pos += n;
    }
    u.is_done().then_some(out)
}
