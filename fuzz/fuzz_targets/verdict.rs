//! The legacy verdict: everything a version-1 server sends after the data,
//! up to EOF (the client reads at most 64 bytes, but the parser takes any).
//!
//! Checks: only the exact bytes `CRC32_OK` / `CRC32_ERROR` are accepted and
//! re-encode to the input; every refusal is a `Protocol` error whose message
//! is ASCII (the bytes are escaped) and bounded (at most 64 bytes shown).
#![no_main]

use bigtransfer_core::proto::parse_verdict;
use bigtransfer_core::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_verdict(data) {
        Ok(v) => assert_eq!(v.as_bytes(), data),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Protocol);
            let msg = e.to_string();
            assert!(msg.is_ascii(), "{msg:?}");
            // 64 bytes shown, each at most 4 characters escaped, plus words.
            assert!(msg.len() <= 64 * 4 + 120, "{} bytes of message", msg.len());
        }
    }
});
