//! The first bytes a server reads from any client: the 4-byte header length,
//! the header JSON, the file name in it and the version-2 offer (`"bt"`).
//!
//! Input: the bytes as they arrive on the socket. The first 4 are the length
//! prefix; the JSON is the next `len` bytes (or all the rest when the prefix
//! is refused, so that the JSON parser is fuzzed whatever the prefix says).
//!
//! Checks, besides "no panic": every error is a `Protocol` one (a `Refused`
//! one for the name); an accepted header re-encodes (legacy and version-2
//! encoders) to JSON that parses back equal; an accepted name obeys every
//! rule of `SafeName` and is a fixed point of it; an accepted offer is a
//! power of two in range.
#![no_main]

use bigtransfer_core::proto::{self, Header};
use bigtransfer_core::{v2, ErrorKind, SafeName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((prefix, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let json = match proto::parse_header_len(*prefix) {
        Ok(len) => {
            assert!((1..=proto::MAX_HEADER_LEN).contains(&len));
            assert_eq!(len as u64, u64::from(u32::from_be_bytes(*prefix)));
            &rest[..len.min(rest.len())]
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Protocol);
            let n = u32::from_be_bytes(*prefix) as usize;
            assert!(n == 0 || n > proto::MAX_HEADER_LEN, "{n} refused: {e}");
            rest
        }
    };

    // The server asks for the offer before it looks at the header at all.
    let early = v2::parse_offer(json, 0);
    if let Err(e) = &early {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    }

    let header = match proto::parse_header(json) {
        Ok(h) => h,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
            let _ = e.to_string();
            return;
        }
    };
    assert!(header.filesize <= i64::MAX as u64);
    legacy_round_trip(&header);
    check_name(&header.filename);

    match v2::parse_offer(json, header.filesize) {
        Ok(Some(offer)) => {
            assert_eq!(offer.version, v2::VERSION);
            assert!(offer.block_size.is_power_of_two());
            assert!((v2::MIN_BLOCK..=v2::MAX_BLOCK).contains(&offer.block_size));
            assert!(
                v2::block_count(header.filesize, offer.block_size)
                    <= (v2::MAX_SERVER_FRAME as u64 - 24) / 4
            );
            // A size-independent refusal at size 0 is a refusal at any size.
            assert!(early.is_ok(), "offer accepted for the size, refused for 0");
            v2_round_trip(&header, offer);
        }
        Ok(None) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::Protocol, "{e}"),
    }
});

fn legacy_round_trip(h: &Header) {
    let frame = match proto::encode_header(h) {
        Ok(f) => f,
        // Escaping can make a 64 KiB header longer than 64 KiB.
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            return;
        }
    };
    let len = proto::parse_header_len([frame[0], frame[1], frame[2], frame[3]])
        .expect("encoded length prefix must parse");
    assert_eq!(len, frame.len() - 4);
    assert!(frame[4..].is_ascii(), "the encoder escapes non-ASCII");
    let back = proto::parse_header(&frame[4..]).expect("encoded header must parse");
    assert_eq!(&back, h);
    assert_eq!(v2::parse_offer(&frame[4..], h.filesize).unwrap(), None);
}

fn v2_round_trip(h: &Header, offer: v2::Offer) {
    let frame = match v2::encode_header(h, offer) {
        Ok(f) => f,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            return;
        }
    };
    let len = proto::parse_header_len([frame[0], frame[1], frame[2], frame[3]])
        .expect("encoded length prefix must parse");
    assert_eq!(len, frame.len() - 4);
    assert_eq!(&proto::parse_header(&frame[4..]).unwrap(), h);
    assert_eq!(
        v2::parse_offer(&frame[4..], h.filesize).unwrap(),
        Some(offer)
    );
}

fn check_name(raw: &str) {
    match SafeName::from_wire(raw) {
        Ok(name) => {
            let s = name.as_str();
            assert!(!s.is_empty() && s.len() <= 255, "{s:?}");
            assert!(!s.contains(['/', '\\']), "{s:?}");
            assert!(!s.chars().any(char::is_control), "{s:?}");
            assert!(!s.chars().all(|c| c == '.'), "{s:?}");
            assert!(raw.ends_with(s), "{raw:?} -> {s:?}");
            let trimmed = s.trim_end_matches(['.', ' ']);
            assert!(!trimmed.eq_ignore_ascii_case(".bigtransfer"), "{s:?}");
            // Sanitising a sanitised name changes nothing.
            assert_eq!(SafeName::from_wire(s).expect("fixed point"), name);
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
            let _ = e.to_string();
        }
    }
}
