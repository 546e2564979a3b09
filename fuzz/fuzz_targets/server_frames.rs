//! What a version-2 client reads from the server after `MAGIC`: frames of
//! `tag u8`, `len u32`, `payload[len]` (held list, held set, error, verdict).
//!
//! (`C`, the auth challenge, came later and is fuzzed the same way.)
//!
//! Input, used two ways per run:
//! 1. `tag = data[0]`, `payload = data[1..]` straight into
//!    `parse_server_msg`, so that every payload is tried whatever a frame
//!    head would have allowed;
//! 2. a stream of frames as on the socket: `parse_server_head` on 5 bytes,
//!    then `parse_server_msg` on the next `len` bytes, until the stream ends
//!    or a head is refused (as the client stops there).
//!
//! Checks: every error is a `Protocol` one; a parsed message re-encodes with
//! `encode_server_msg` to a frame whose head parses and whose payload parses
//! back equal; for binary payloads (and text that is UTF-8) the re-encoded
//! frame is byte for byte the input frame.
#![no_main]

use bigtransfer_core::v2::{self, ServerMsg, Verdict};
use bigtransfer_core::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&tag, payload)) = data.split_first() {
        check_msg(tag, payload);
    }

    let mut rest = data;
    while let Some((head, after)) = rest.split_first_chunk::<5>() {
        let (tag, len) = match v2::parse_server_head(*head) {
            Ok(x) => x,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
                let _ = e.to_string();
                return;
            }
        };
        assert_eq!(tag, head[0]);
        assert_eq!(
            len,
            u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize
        );
        assert!(len <= v2::MAX_SERVER_FRAME);
        if after.len() < len {
            return; // the client would see EOF here
        }
        let (payload, next) = after.split_at(len);
        check_msg(tag, payload);
        rest = next;
    }
});

fn check_msg(tag: u8, payload: &[u8]) {
    let msg = match v2::parse_server_msg(tag, payload) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
            let _ = e.to_string();
            return;
        }
    };
    match &msg {
        ServerMsg::Held { crcs, .. } => assert_eq!(payload.len(), 20 + 4 * crcs.len()),
        ServerMsg::HeldSet { runs, crcs, .. } => {
            assert_eq!(payload.len(), 12 + 16 * runs.len() + 4 * crcs.len());
            let held: u64 = runs.iter().map(|r| r.1).sum();
            assert_eq!(held, crcs.len() as u64);
            assert!(runs.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
        }
        ServerMsg::Verdict(Verdict::Repair(idx)) => assert_eq!(payload.len(), 5 + 8 * idx.len()),
        ServerMsg::Verdict(Verdict::Ok) => assert_eq!(payload, [0]),
        ServerMsg::Challenge(nonce) => assert_eq!(&nonce[..], payload),
        ServerMsg::Codec(name) => assert_eq!(name.as_bytes(), payload),
        ServerMsg::Join(t) => assert_eq!(t.payload(), payload),
        ServerMsg::BoundChallenge { nonce, proof } => {
            assert_eq!(payload.len(), 64);
            assert_eq!((&nonce[..], &proof[..]), payload.split_at(32));
        }
        ServerMsg::Error(_) | ServerMsg::Fault(..) | ServerMsg::Verdict(Verdict::Failed(_)) => {}
        ServerMsg::Verdict(Verdict::Stored(_)) => assert_eq!(payload[0], 3),
        ServerMsg::ListPage { entries, .. } => {
            assert!(entries.len() <= bigtransfer_core::listing::PAGE_ENTRIES)
        }
    }
    // Texts are encoded at most MAX_TEXT bytes long (cut at a character
    // boundary, never mid-frame): the round trip holds for those.
    let long_text = match &msg {
        ServerMsg::Error(t) | ServerMsg::Fault(_, t) | ServerMsg::Verdict(Verdict::Failed(t)) => {
            t.len() > v2::MAX_TEXT
        }
        _ => false,
    };
    if long_text {
        let frame = v2::encode_server_msg(&msg);
        assert!(frame.len() <= 5 + 3 + v2::MAX_TEXT);
        let (tag2, len2) = v2::parse_server_head([frame[0], frame[1], frame[2], frame[3], frame[4]])
            .expect("an encoded head must parse");
        assert_eq!((tag2, len2), (tag, frame.len() - 5));
        return;
    }
    let frame = v2::encode_server_msg(&msg);
    let (tag2, len2) = v2::parse_server_head([frame[0], frame[1], frame[2], frame[3], frame[4]])
        .expect("an encoded head must parse");
    assert_eq!(tag2, tag);
    assert_eq!(len2, frame.len() - 5);
    let back = v2::parse_server_msg(tag2, &frame[5..]).expect("an encoded frame must parse");
    assert_eq!(back, msg);
    let text = match &msg {
        ServerMsg::Error(_) => Some(payload),
        ServerMsg::Fault(..) => Some(&payload[2..]),
        ServerMsg::Verdict(Verdict::Failed(_)) => Some(&payload[1..]),
        _ => None,
    };
    if text.is_none_or(|t| std::str::from_utf8(t).is_ok()) {
        assert_eq!(&frame[5..], payload, "re-encoding changed the frame");
    }
}
