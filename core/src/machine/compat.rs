//! Wire compatibility of the machines with today's engine, over loopback
//! TCP: the [`Sender`] (in a minimal blocking test shell) uploads to
//! today's [`crate::Server`], and today's [`crate::send_file`] uploads to
//! the [`Receiver`] (in a minimal blocking test shell over a
//! [`MemStorage`]), in both protocols and with a token. Tests only; the
//! server's real shell is `server::conn`, the client's `client::shell`.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mem::{MemPart, MemStorage};
use super::*;
use crate::auth::Token;
use crate::{Control, Server, ServerConfig};

const B: u64 = 65536;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bt-machine-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn source(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect()
}

fn token() -> Token {
    Token::new(b"compat-0123456789abcdef".to_vec()).unwrap()
}

/// Runs one attempt of `tx` over `stream` until it ends.
fn run_sender(mut stream: TcpStream, tx: &mut Sender, src: &[u8]) -> Outcome {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let (mut buf, mut have) = (vec![0u8; 1 << 16], 0..0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut zstd, mut packed) = (None, None);
    while tx.outcome().is_none() {
        assert!(Instant::now() < deadline, "stuck in {}", tx.state_name());
        let now = Instant::now();
        while let Some(b) = tx.poll_transmit(now) {
            if stream.write_all(&b).is_err() {
                tx.handle_eof(now);
            }
        }
        if let Some(a) = tx.poll_action() {
            let ev = match a {
                SendAction::HashBlocks { from, to } => SendEvent::Hashed(Ok((from..to)
                    .map(|i| {
                        let (o, l) = v2::block_range(src.len() as u64, B, i);
                        crc32fast::hash(&src[o as usize..(o + l) as usize])
                    })
                    .collect())),
                SendAction::SendBlock { offset, len, .. } => {
                    let bytes = &src[offset as usize..(offset + len) as usize];
                    let _ = stream.write_all(bytes);
                    SendEvent::BlockSent(Ok(crc32fast::hash(bytes)))
                }
                SendAction::SendBytes { from } => {
                    let _ = stream.write_all(&src[from as usize..]);
                    SendEvent::BytesSent(Ok(()))
                }
                SendAction::Recheck => SendEvent::Rechecked(Ok(())),
                SendAction::SendParallel { .. } => {
                    SendEvent::ParallelSent(Err("no session here".into()))
                }
                SendAction::PackBlock {
                    offset, len, level, ..
                } => {
                    let raw = &src[offset as usize..(offset + len) as usize];
                    let streaming = tx.pack_stats().streaming;
                    let (ev, p) = super::pair::packed_on(&mut zstd, streaming, raw, level);
                    packed = p;
                    ev
                }
                SendAction::SendPacked { .. } => match packed.take() {
                    Some((payload, crc)) => {
                        let _ = stream.write_all(&payload);
                        SendEvent::BlockSent(Ok(crc))
                    }
                    None => SendEvent::BlockSent(Err("no packed block".into())),
                },
            };
            tx.handle_event(now, ev);
            continue;
        }
        if have.start < have.end {
            let used = tx.handle_input(now, &buf[have.clone()]);
            have.start += used;
            if used > 0 {
                continue;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => tx.handle_eof(now),
            Ok(n) => have = 0..n,
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                tx.handle_timeout(Instant::now())
            }
            Err(_) => tx.handle_eof(now),
        }
    }
    tx.outcome().cloned().unwrap()
}

fn exec(a: &Action, storage: &MemStorage, part: &mut Option<MemPart>) -> Event {
    match a {
        Action::Admit { .. } => Event::Admitted(Ok(())),
        Action::Claim { .. } => Event::Claimed(Ok(())),
        Action::OpenHeld(id) => Event::Opened(storage.open(id).map(|(p, h)| {
            *part = Some(p);
            h
        })),
        other => match part {
            Some(p) => apply(p, other).unwrap_or(Event::Applied(Ok(()))),
            None => Event::Applied(Err(Fault::new(v2::FaultCode::Internal, "no part"))),
        },
    }
}

/// Serves one connection with `rx` until it ends.
fn run_receiver(mut stream: TcpStream, rx: &mut Receiver, storage: &MemStorage) {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let (mut part, mut buf, mut have) = (None, vec![0u8; 1 << 16], 0..0);
    let mut shut = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rx.is_done() {
        assert!(Instant::now() < deadline, "stuck in {}", rx.state_name());
        let now = Instant::now();
        while let Some(b) = rx.poll_transmit(now) {
            if stream.write_all(&b).is_err() {
                rx.handle_eof(now);
            }
        }
        if let Some(a) = rx.poll_action() {
            let ev = exec(&a, storage, &mut part);
            rx.handle_event(now, ev);
            continue;
        }
        if rx.is_closing() && !shut {
            let _ = stream.shutdown(Shutdown::Write);
            shut = true;
        }
        if have.start < have.end {
            let fed = rx.handle_input(now, &buf[have.clone()]);
            let used = fed.used;
            if let Some(w) = fed.write {
                let r = match &mut part {
                    Some(p) => p.write_at(w.offset, &w.bytes),
                    None => Err(Fault::new(v2::FaultCode::Internal, "no part")),
                };
                rx.handle_event(now, Event::Applied(r));
            }
            have.start += used;
            if used > 0 {
                continue;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => rx.handle_eof(now),
            Ok(n) => have = 0..n,
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                if rx.poll_timeout().is_some_and(|t| t <= Instant::now()) {
                    rx.handle_timeout(Instant::now());
                }
            }
            Err(_) => rx.handle_eof(now),
        }
    }
}

fn quiet() -> Option<crate::server::Logger> {
    Some(Arc::new(|_: &str| {}))
}

fn machine_sender_to_todays_server(tag: &str, len: usize, legacy: bool, tok: bool) {
    let dir = tempdir(tag);
    let mut cfg = ServerConfig::new(&dir);
    cfg.bind = Some("127.0.0.1".parse().unwrap());
    cfg.logger = quiet();
    cfg.token = tok.then(token);
    let server = Server::bind(cfg).unwrap();
    let addr = server.local_addr().unwrap();
    let stop = server.stop_handle();
    let serving = std::thread::spawn(move || server.serve());
    let src = source(len);
    let tc = SenderConfig {
        filename: "m.bin".into(),
        filesize: len as u64,
        whole_crc: legacy.then(|| crc32fast::hash(&src)),
        block: B,
        legacy,
        token: tok.then(token),
        reply_timeout: Duration::from_secs(10),
        known: Vec::new(),
        source: Some([9; 16]),
        greeting_timeout: None,
        max_repair_rounds: MAX_REPAIR_ROUNDS,
        recheck: true,
        compress: crate::compress::Compress::Auto,
        binding: None,
    };
    let mut tx = Sender::new(tc, Instant::now());
    let outcome = run_sender(TcpStream::connect(addr).unwrap(), &mut tx, &src);
    stop.stop();
    serving.join().unwrap().unwrap();
    assert_eq!(outcome, Outcome::Stored, "{tag}");
    assert_eq!(tx.protocol(), if legacy { 1 } else { 2 });
    assert!(std::fs::read(dir.join("m.bin")).unwrap() == src, "{tag}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_machine_sender_uploads_to_todays_server() {
    machine_sender_to_todays_server("s-v2", 2 * B as usize + 77, false, false);
    machine_sender_to_todays_server("s-v1", 100_000, true, false);
    machine_sender_to_todays_server("s-tok", B as usize + 1, false, true);
    machine_sender_to_todays_server("s-empty", 0, false, false);
}

fn todays_client_to_machine_receiver(tag: &str, len: usize, legacy: bool, tok: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let storage = MemStorage::new();
    let st = storage.clone();
    let rc = ReceiverConfig {
        token: tok.then(token),
        ..ReceiverConfig::default()
    };
    let serving = std::thread::spawn(move || {
        // A plaintext peer: a TLS hello is closed on (the client falls back).
        let stream = loop {
            let (s, _) = listener.accept().unwrap();
            let mut b = [0u8; 1];
            if !matches!(s.peek(&mut b), Ok(1) if b[0] == 0x16) {
                break s;
            }
        };
        let mut rx = Receiver::new(rc, [9; 32], Instant::now());
        run_receiver(stream, &mut rx, &st);
        rx.ending().cloned()
    });
    let dir = tempdir(tag);
    let src = source(len);
    let path = dir.join("c.bin");
    std::fs::write(&path, &src).unwrap();
    let mut opts = crate::SendOptions::new("127.0.0.1", port);
    opts.cache_dir = None;
    opts.known_hosts = None;
    opts.retries = 0;
    opts.io_timeout = Duration::from_secs(10);
    opts.token = tok.then(token);
    if legacy {
        opts.protocol = crate::Protocol::Legacy;
    }
    let r = crate::send_file(&path, &opts, &mut |_| Control::Continue);
    let ending = serving.join().unwrap();
    assert!(r.is_ok(), "{tag}: {r:?} / {ending:?}");
    assert_eq!(ending, Some(Ending::Stored), "{tag}");
    assert!(storage.file("c.bin") == Some(src), "{tag}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn todays_client_uploads_to_the_machine_receiver() {
    todays_client_to_machine_receiver("c-v2", 2 * B as usize + 77, false, false);
    todays_client_to_machine_receiver("c-v1", 100_000, true, false);
    todays_client_to_machine_receiver("c-tok", B as usize + 1, false, true);
}
