//! The receiver's side of a download request, driven in memory: a header
//! with `"op": "get"` is handed to the shell (`Ending::Download`) without
//! admission, claim or held part, after the token check when there is
//! one; names that an upload would cut to their base name, and unknown
//! operations, are refused before anything is opened. Not for the
//! exchange after the hand-over (`server::get`, tests/get.rs).

use std::time::Instant;

use super::{Action, Ending, Event, Receiver, ReceiverConfig};
use crate::auth::Token;
use crate::getwire::encode_get_header;
use crate::v2::{self, FaultCode};

fn out_all(rx: &mut Receiver, now: Instant) -> Vec<u8> {
    let mut v = Vec::new();
    while let Some(b) = rx.poll_transmit(now) {
        v.extend(b);
    }
    v
}

/// Feeds `input` until the machine takes no more of it.
fn feed(rx: &mut Receiver, now: Instant, mut input: &[u8]) {
    while !input.is_empty() {
        let used = rx.handle_input(now, input).used;
        if used == 0 {
            break;
        }
        input = &input[used..];
    }
}

fn fault_code(out: &[u8]) -> u16 {
    assert_eq!(&out[..8], &v2::MAGIC[..]);
    assert_eq!(out[8], b'F', "a coded fault");
    u16::from_be_bytes([out[13], out[14]])
}

#[test]
fn a_get_request_is_handed_over_without_claim_or_held_part() {
    let t0 = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], t0);
    let h = encode_get_header("big.img").unwrap();
    feed(&mut rx, t0, &h);
    assert_eq!(
        rx.poll_action(),
        None,
        "nothing admitted, claimed or opened"
    );
    assert_eq!(out_all(&mut rx, t0), v2::MAGIC.to_vec());
    assert!(rx.is_done());
    assert_eq!(rx.ending(), Some(&Ending::Download));
    assert_eq!(rx.name().map(|n| n.as_str()), Some("big.img"));
}

#[test]
fn with_a_token_the_get_is_handed_over_only_after_the_right_answer() {
    let t0 = Instant::now();
    let token = Token::new(b"correct horse battery staple 42".to_vec()).unwrap();
    let cfg = ReceiverConfig {
        token: Some(token.clone()),
        ..ReceiverConfig::default()
    };
    let h = encode_get_header("big.img").unwrap();
    for (answer, ending) in [
        (token.answer(&[7; 32], &h[4..]), None),
        ([0u8; 32], Some(FaultCode::AuthFailed)),
    ] {
        let mut rx = Receiver::new(cfg.clone(), [7; 32], t0);
        feed(&mut rx, t0, &h);
        assert_eq!(rx.poll_action(), None);
        let out = out_all(&mut rx, t0);
        assert_eq!((&out[..8], out[8]), (&v2::MAGIC[..], b'C'));
        feed(&mut rx, t0, &v2::encode_answer(&answer));
        match ending {
            None => assert_eq!(rx.ending(), Some(&Ending::Download)),
            Some(code) => assert_eq!(
                fault_code(&[&v2::MAGIC[..], &out_all(&mut rx, t0)].concat()),
                code.to_u16()
            ),
        }
    }
}

#[test]
fn paths_hidden_names_and_unknown_operations_are_refused() {
    let t0 = Instant::now();
    for name in [
        "../x",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".bigtransfer",
        "x\u{7}",
    ] {
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], t0);
        feed(&mut rx, t0, &encode_get_header(name).unwrap());
        let out = out_all(&mut rx, t0);
        assert_eq!(
            fault_code(&out),
            FaultCode::NameRefused.to_u16(),
            "{name:?}"
        );
        assert!(!matches!(rx.ending(), Some(Ending::Download)), "{name:?}");
    }
    let json = br#"{"filename": "a", "filesize": 0, "crc32": null, "bt": {"v": 2, "block": 65536, "rev": 3, "op": "rm"}}"#;
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json);
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], t0);
    feed(&mut rx, t0, &frame);
    assert_eq!(
        fault_code(&out_all(&mut rx, t0)),
        FaultCode::BadRequest.to_u16()
    );
    // An upload header is still an upload (admission first).
    let up = br#"{"filename": "a", "filesize": 5, "crc32": null, "bt": {"v": 2, "block": 65536, "rev": 3}}"#;
    let mut frame = (up.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(up);
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], t0);
    feed(&mut rx, t0, &frame);
    assert!(matches!(rx.poll_action(), Some(Action::Admit { .. })));
    rx.handle_event(t0, Event::Admitted(Ok(())));
    assert!(matches!(rx.poll_action(), Some(Action::Claim { .. })));
}
