//! What a version-2 server reads from the client between data: frame heads,
//! `D offset u64 len u32`, `Z offset u64 len u32 wire u32` (a compressed
//! block), `E crc32 u32` and `A answer[32]` (the auth answer), checked against the file's size and the negotiated block size.
//!
//! Input: `filesize u64`, a block selector byte, then a stream of frame heads
//! as on the socket (tag, then `client_head_len(tag)` bytes). Block sizes:
//! selector bit 7 clear: a negotiable one, `1 << (16 + s % 13)` (64 KiB to
//! 256 MiB, the only sizes `parse_offer` lets through); bit 7 set: any
//! non-zero `u64` from the next 8 bytes (beyond the contract, for the
//! arithmetic). Block 0 is never passed: no caller can, since the block size
//! always comes from an accepted offer.
//!
//! Checks: errors are `Protocol` ones; a data frame is a whole block of this
//! file (block boundary, inside the file, exactly that block's length) and
//! its head re-encodes byte for byte with `encode_data_head` (a compressed
//! one: the same, its packed length 1 to `len`, with `encode_packed_head`); an end frame
//! re-encodes with `encode_end`, an answer with `encode_answer`; each frame
//! is of the kind its tag names; a short or long head is refused.
#![no_main]

use bigtransfer_core::v2::{self, ClientFrame};
use bigtransfer_core::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((size, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let filesize = u64::from_be_bytes(*size);
    let Some((&sel, mut rest)) = rest.split_first() else {
        return;
    };
    let block = if sel & 0x80 == 0 {
        1u64 << (16 + u32::from(sel % 13))
    } else {
        let Some((b, after)) = rest.split_first_chunk::<8>() else {
            return;
        };
        rest = after;
        u64::from_be_bytes(*b).max(1)
    };

    while let Some((&tag, after)) = rest.split_first() {
        let n = match v2::client_head_len(tag) {
            Ok(n) => n,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Protocol);
                // An unknown tag is refused whatever follows.
                let e = v2::parse_client_head(tag, after, filesize, block).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Protocol);
                return;
            }
        };
        if after.len() < n {
            let e = v2::parse_client_head(tag, after, filesize, block).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            return;
        }
        let (head, next) = after.split_at(n);
        check(tag, head, filesize, block);
        // One byte too many is refused too.
        if let Some(longer) = after.get(..n + 1) {
            assert!(v2::parse_client_head(tag, longer, filesize, block).is_err());
        }
        rest = next;
    }
});

fn check(tag: u8, head: &[u8], filesize: u64, block: u64) {
    let (frame, idx) = match v2::parse_client_head(tag, head, filesize, block) {
        Ok(x) => x,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
            let _ = e.to_string();
            return;
        }
    };
    let mut wire = vec![tag];
    wire.extend_from_slice(head);
    match frame {
        ClientFrame::Data { offset, len } => {
            assert_eq!(tag, b'D', "a data frame from tag 0x{tag:02x}");
            assert_eq!(offset % block, 0);
            assert!(offset < filesize);
            assert_eq!(idx, offset / block);
            assert!(idx < v2::block_count(filesize, block));
            assert!(len >= 1 && len <= block && len <= filesize - offset);
            assert_eq!(v2::block_range(filesize, block, idx), (offset, len));
            let len32 = u32::try_from(len).expect("the length came from a u32");
            assert_eq!(v2::encode_data_head(offset, len32)[..], wire[..]);
        }
        ClientFrame::Packed {
            offset,
            len,
            wire: packed,
        } => {
            assert_eq!(tag, b'Z', "a compressed frame from tag 0x{tag:02x}");
            assert_eq!(v2::block_range(filesize, block, idx), (offset, len));
            assert_eq!(idx, offset / block);
            assert!(packed >= 1 && packed <= len, "{packed} for {len}");
            let len32 = u32::try_from(len).expect("the length came from a u32");
            let p32 = u32::try_from(packed).expect("the length came from a u32");
            assert_eq!(v2::encode_packed_head(offset, len32, p32)[..], wire[..]);
        }
        ClientFrame::End { crc32 } => {
            assert_eq!(tag, b'E', "an end frame from tag 0x{tag:02x}");
            assert_eq!(idx, 0);
            assert_eq!(v2::encode_end(crc32)[..], wire[..]);
        }
        ClientFrame::Answer(answer) => {
            assert_eq!(tag, b'A', "an answer frame from tag 0x{tag:02x}");
            assert_eq!(idx, 0);
            assert_eq!(v2::encode_answer(&answer)[..], wire[..]);
        }
    }
}
