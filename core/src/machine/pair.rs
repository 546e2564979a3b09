//! quinn's `Pair` for bigtransfer: a [`Sender`] and a [`Receiver`] driven
//! against each other in memory, with a virtual clock, a [`MemStorage`]
//! executing the receiver's actions and an in-memory source executing the
//! sender's, and either byte stream cut at any position. Tests only; no
//! socket, thread or sleep.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::mem::{MemPart, MemStorage};
use super::*;
use crate::auth::Token;
use crate::compress::Compress;
use crate::proto;
use crate::v2::FaultCode;

const B: u64 = 65536;
const NAME: &str = "f.bin";

fn source(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn token(s: &str) -> Token {
    Token::new(format!("{s}-0123456789abcdef").into_bytes()).unwrap()
}

fn tx_cfg(src: &[u8]) -> SenderConfig {
    SenderConfig {
        filename: NAME.into(),
        filesize: src.len() as u64,
        whole_crc: None,
        block: B,
        legacy: false,
        token: None,
        reply_timeout: Duration::from_secs(30),
        known: Vec::new(),
        source: Some([7; 16]),
        greeting_timeout: None,
        max_repair_rounds: MAX_REPAIR_ROUNDS,
        recheck: false,
        compress: Compress::Off,
        binding: None,
    }
}

/// The shell's answer to a [`SendAction::PackBlock`] of `raw`, and the
/// payload and CRC-32 to write at the [`SendAction::SendPacked`] that
/// follows when it paid.
pub(super) fn packed_event(raw: &[u8], level: i32) -> (SendEvent, Option<(Vec<u8>, u32)>) {
    packed_on(&mut None, false, raw, level)
}

/// [`packed_event`] on a connection whose compressor is `zstd` (kept, as
/// the shell keeps it: one zstd stream per connection when `streaming`).
pub(super) fn packed_on(
    zstd: &mut Option<(i32, crate::compress::BlockCompressor)>,
    streaming: bool,
    raw: &[u8],
    level: i32,
) -> (SendEvent, Option<(Vec<u8>, u32)>) {
    if zstd.as_ref().is_none_or(|(l, _)| *l != level) {
        *zstd = crate::compress::BlockCompressor::for_codec(level, streaming)
            .ok()
            .map(|c| (level, c));
    }
    let packed = zstd.as_mut().and_then(|(_, c)| c.pack(raw));
    let ev = SendEvent::Packed(Ok(Packed {
        wire: packed.as_ref().map(|p| p.len() as u64),
        took: Duration::from_millis(1),
    }));
    (ev, packed.map(|p| (p, crc32fast::hash(raw))))
}

fn legacy_cfg(src: &[u8]) -> SenderConfig {
    SenderConfig {
        legacy: true,
        whole_crc: Some(crc32fast::hash(src)),
        ..tx_cfg(src)
    }
}

#[derive(Default, Clone)]
struct Policy {
    admit: Option<Fault>,
    claim: Option<Fault>,
}

struct Pair {
    now: Instant,
    rx: Receiver,
    tx: Sender,
    storage: MemStorage,
    part: Option<MemPart>,
    src: Vec<u8>,
    block: u64,
    c2s: Vec<u8>,
    c2s_pos: usize,
    c2s_cut: usize,
    s2c: Vec<u8>,
    s2c_pos: usize,
    s2c_cut: usize,
    /// Most bytes handed to one `handle_input` call.
    chunk: usize,
    /// Blocks whose next data frame gets a flipped bit (once per entry).
    corrupt: Vec<u64>,
    policy: Policy,
    rx_seen: BTreeSet<&'static str>,
    tx_seen: BTreeSet<&'static str>,
    /// Stream lengths after each append (frame boundaries).
    c2s_marks: Vec<usize>,
    s2c_marks: Vec<usize>,
    /// The payload and CRC-32 of the block last packed, until sent.
    packed: Option<(Vec<u8>, u32)>,
    payload_sent: u64,
    hashed: u64,
    dead: bool,
    /// When the connection breaks, the server crashes with it: nothing
    /// more is checkpointed.
    crash_on_cut: bool,
    /// The client's header says revision 2 (an older client, which reads
    /// no held set) instead of the revision the sender advertises.
    as_rev2: bool,
    /// The sender's compressor on this connection.
    zstd: Option<(i32, crate::compress::BlockCompressor)>,
}

impl Pair {
    fn new(storage: &MemStorage, rc: ReceiverConfig, tc: SenderConfig, src: Vec<u8>) -> Pair {
        let now = Instant::now();
        let block = tc.block;
        Pair {
            now,
            rx: Receiver::new(rc, [7; 32], now),
            tx: Sender::new(tc, now),
            storage: storage.clone(),
            part: None,
            src,
            block,
            c2s: Vec::new(),
            c2s_pos: 0,
            c2s_cut: usize::MAX,
            s2c: Vec::new(),
            s2c_pos: 0,
            s2c_cut: usize::MAX,
            chunk: 4093,
            corrupt: Vec::new(),
            policy: Policy::default(),
            rx_seen: BTreeSet::new(),
            tx_seen: BTreeSet::new(),
            c2s_marks: Vec::new(),
            s2c_marks: Vec::new(),
            packed: None,
            payload_sent: 0,
            hashed: 0,
            dead: false,
            crash_on_cut: false,
            as_rev2: false,
            zstd: None,
        }
    }

    fn plain(storage: &MemStorage, src: &[u8]) -> Pair {
        Pair::new(
            storage,
            ReceiverConfig::default(),
            tx_cfg(src),
            src.to_vec(),
        )
    }

    fn note(&mut self) {
        self.rx_seen.insert(self.rx.state_name());
        self.tx_seen.insert(self.tx.state_name());
    }

    fn exec_send(&mut self, a: SendAction) -> SendEvent {
        let size = self.src.len() as u64;
        match a {
            SendAction::HashBlocks { from, to } => {
                let v = (from..to)
                    .map(|i| {
                        let (o, l) = v2::block_range(size, self.block, i);
                        self.hashed += l;
                        crc32fast::hash(&self.src[o as usize..(o + l) as usize])
                    })
                    .collect();
                SendEvent::Hashed(Ok(v))
            }
            SendAction::SendBlock { idx, offset, len } => {
                let bytes = &self.src[offset as usize..(offset + len) as usize];
                let crc = crc32fast::hash(bytes);
                let start = self.c2s.len();
                self.c2s.extend_from_slice(bytes);
                if let Some(p) = self.corrupt.iter().position(|&c| c == idx) {
                    self.corrupt.remove(p);
                    self.c2s[start + len as usize / 2] ^= 0x10;
                }
                self.payload_sent += len;
                self.c2s_marks.push(self.c2s.len());
                SendEvent::BlockSent(Ok(crc))
            }
            SendAction::SendBytes { from } => {
                self.c2s.extend_from_slice(&self.src[from as usize..]);
                self.payload_sent += size - from;
                self.c2s_marks.push(self.c2s.len());
                SendEvent::BytesSent(Ok(()))
            }
            SendAction::Recheck => SendEvent::Rechecked(Ok(())),
            SendAction::SendParallel { .. } => SendEvent::ParallelSent(Err("no session".into())),
            SendAction::PackBlock {
                offset, len, level, ..
            } => {
                let raw = &self.src[offset as usize..(offset + len) as usize];
                let streaming = self.tx.pack_stats().streaming;
                let (ev, payload) = packed_on(&mut self.zstd, streaming, raw, level);
                self.packed = payload;
                ev
            }
            SendAction::SendPacked { len, .. } => match self.packed.take() {
                Some((payload, crc)) => {
                    self.c2s.extend_from_slice(&payload);
                    self.payload_sent += len;
                    self.c2s_marks.push(self.c2s.len());
                    SendEvent::BlockSent(Ok(crc))
                }
                None => SendEvent::BlockSent(Err("no packed block".into())),
            },
        }
    }

    fn exec_recv(&mut self, a: Action) -> Event {
        match &a {
            Action::Admit { .. } => Event::Admitted(self.policy.admit.clone().map_or(Ok(()), Err)),
            Action::Claim { .. } => Event::Claimed(self.policy.claim.clone().map_or(Ok(()), Err)),
            Action::OpenHeld(id) => Event::Opened(self.storage.open(id).map(|(p, h)| {
                self.part = Some(p);
                h
            })),
            other => match &mut self.part {
                Some(p) => apply(p, other).unwrap_or(Event::Applied(Ok(()))),
                None => Event::Applied(Err(Fault::new(FaultCode::Internal, "no part"))),
            },
        }
    }

    fn deliver_c2s(&mut self) -> bool {
        let (pos, lim) = (self.c2s_pos, self.c2s_cut.min(self.c2s.len()));
        if self.dead || pos >= lim {
            return false;
        }
        let end = (pos + self.chunk).min(lim);
        let Pair {
            rx, c2s, part, now, ..
        } = self;
        let fed = rx.handle_input(*now, &c2s[pos..end]);
        let used = fed.used;
        if let Some(w) = fed.write {
            // As the server's shell: protocol 1 hands the running CRC-32 on.
            let r = match (part, rx.prefix_crc()) {
                (Some(p), Some(crc)) => p.write_grown(w.offset, &w.bytes, crc),
                (Some(p), None) => p.write_at(w.offset, &w.bytes),
                (None, _) => Err(Fault::new(FaultCode::Internal, "write without a part")),
            };
            rx.handle_event(*now, Event::Applied(r));
        }
        self.c2s_pos += used;
        used > 0
    }

    fn deliver_s2c(&mut self) -> bool {
        let (pos, lim) = (self.s2c_pos, self.s2c_cut.min(self.s2c.len()));
        if self.dead || pos >= lim {
            return false;
        }
        let end = (pos + self.chunk).min(lim);
        let used = self.tx.handle_input(self.now, &self.s2c[pos..end]);
        self.s2c_pos += used;
        used > 0
    }

    fn step(&mut self) -> bool {
        let mut progress = false;
        while let Some(mut b) = self.tx.poll_transmit(self.now) {
            if self.as_rev2 && self.c2s.is_empty() {
                b = as_rev2(b);
            }
            self.c2s.extend_from_slice(&b);
            self.c2s_marks.push(self.c2s.len());
            self.note();
            progress = true;
        }
        if let Some(a) = self.tx.poll_action() {
            self.note();
            let ev = self.exec_send(a);
            self.tx.handle_event(self.now, ev);
            progress = true;
        }
        while let Some(b) = self.rx.poll_transmit(self.now) {
            self.s2c.extend_from_slice(&b);
            self.s2c_marks.push(self.s2c.len());
            self.note();
            progress = true;
        }
        if let Some(a) = self.rx.poll_action() {
            let ev = self.exec_recv(a);
            self.rx.handle_event(self.now, ev);
            self.note();
            progress = true;
        }
        progress |= self.deliver_c2s();
        self.note();
        progress |= self.deliver_s2c();
        self.note();
        progress
    }

    /// Runs both sides until both are done, breaking the connection when a
    /// cut stops it, and moving the clock to the next deadline when stuck.
    fn run(&mut self) {
        self.note();
        for _ in 0..10_000_000 {
            if self.step() {
                continue;
            }
            let (txd, rxd) = (self.tx.outcome().is_some(), self.rx.is_done());
            if txd && rxd {
                return;
            }
            if !self.dead && (self.c2s.len() > self.c2s_cut || self.s2c.len() > self.s2c_cut) {
                self.dead = true;
                if self.crash_on_cut {
                    self.storage.crash();
                    self.part = None;
                }
                self.rx.handle_eof(self.now);
                self.tx.handle_eof(self.now);
            } else if rxd {
                self.tx.handle_eof(self.now);
            } else if txd {
                self.rx.handle_eof(self.now);
            } else {
                let next = [self.rx.poll_timeout(), self.tx.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                let Some(t) = next else {
                    panic!(
                        "stuck: rx {} tx {}",
                        self.rx.state_name(),
                        self.tx.state_name()
                    )
                };
                self.now = self.now.max(t);
                self.rx.handle_timeout(self.now);
                self.tx.handle_timeout(self.now);
            }
            self.note();
        }
        panic!("did not finish");
    }

    fn outcome(&self) -> Outcome {
        self.tx.outcome().cloned().expect("sender done")
    }

    fn ending(&self) -> Ending {
        self.rx.ending().cloned().expect("receiver done")
    }
}

/// An upload cut at `c2s`/`s2c` bytes, then resumed by a fresh pair over
/// the same storage: the stored file must be the source, and the resume
/// must send exactly what was not durably held.
fn cut_then_resume(
    src: &[u8],
    tc: &SenderConfig,
    rc: &ReceiverConfig,
    c2s: usize,
    s2c: usize,
    chunk: usize,
) {
    let storage = MemStorage::new();
    let mut a = Pair::new(&storage, rc.clone(), tc.clone(), src.to_vec());
    (a.c2s_cut, a.s2c_cut, a.chunk) = (c2s, s2c, chunk);
    a.run();
    let first = a.outcome();
    let held = storage.durable_blocks(NAME).map_or(0, |h| h.prefix_bytes());
    let mut b = Pair::new(&storage, rc.clone(), tc.clone(), src.to_vec());
    b.run();
    let ctx = format!("cut c2s {c2s} s2c {s2c}: first {first:?}");
    assert_eq!(b.outcome(), Outcome::Stored, "{ctx}");
    assert_eq!(b.ending(), Ending::Stored, "{ctx}");
    let stored = storage.file(NAME).expect("stored");
    assert!(stored == src, "{ctx}: stored bytes differ");
    assert_eq!(crc32fast::hash(&stored), crc32fast::hash(src));
    if !tc.legacy {
        assert_eq!(b.payload_sent, src.len() as u64 - held, "{ctx}");
    }
}

/// Lengths of both streams and their frame boundaries in an uncut run.
fn streams(src: &[u8], tc: &SenderConfig, rc: &ReceiverConfig) -> (Vec<usize>, Vec<usize>) {
    let mut p = Pair::new(&MemStorage::new(), rc.clone(), tc.clone(), src.to_vec());
    p.run();
    assert_eq!(p.outcome(), Outcome::Stored);
    (p.c2s_marks, p.s2c_marks)
}

fn every_cut(src: &[u8], tc: &SenderConfig, rc: &ReceiverConfig) -> usize {
    let (c, s) = streams(src, tc, rc);
    let (cl, sl) = (*c.last().unwrap(), *s.last().unwrap());
    for cut in 0..cl {
        cut_then_resume(src, tc, rc, cut, usize::MAX, 1);
    }
    for cut in 0..sl {
        cut_then_resume(src, tc, rc, usize::MAX, cut, 1);
    }
    cl + sl
}

#[test]
fn every_byte_cut_of_a_small_upload_resumes_to_the_same_bytes() {
    let src = source(300, 1);
    let rc = ReceiverConfig::default();
    let n = every_cut(&src, &tx_cfg(&src), &rc);
    let known = SenderConfig {
        whole_crc: Some(crc32fast::hash(&src)),
        ..tx_cfg(&src)
    };
    let n2 = every_cut(&src, &known, &rc);
    let n3 = every_cut(&[], &tx_cfg(&[]), &rc);
    assert!(n > 400 && n2 > 400 && n3 > 100, "{n} {n2} {n3}");
}

#[test]
fn every_byte_cut_of_an_authenticated_upload_resumes() {
    let src = source(200, 2);
    let rc = ReceiverConfig {
        token: Some(token("t")),
        ..ReceiverConfig::default()
    };
    let tc = SenderConfig {
        token: Some(token("t")),
        ..tx_cfg(&src)
    };
    assert!(every_cut(&src, &tc, &rc) > 300);
}

#[test]
fn every_byte_cut_of_a_legacy_upload_resumes() {
    let src = source(300, 3);
    assert!(every_cut(&src, &legacy_cfg(&src), &ReceiverConfig::default()) > 350);
}

#[test]
fn cuts_at_every_frame_boundary_and_through_payloads_of_a_multi_block_upload() {
    let src = source(3 * B as usize + 100, 4);
    let (tc, rc) = (tx_cfg(&src), ReceiverConfig::default());
    let (c, s) = streams(&src, &tc, &rc);
    let mut cuts = BTreeSet::new();
    for &m in &c {
        cuts.extend([m.saturating_sub(1), m, m + 1]);
    }
    // Every byte of the frames around the first data frame, and a stride
    // through the payloads.
    cuts.extend(0..c[0] + 40);
    cuts.extend((0..*c.last().unwrap()).step_by(9973));
    for &cut in &cuts {
        cut_then_resume(&src, &tc, &rc, cut, usize::MAX, 4093);
    }
    for cut in 0..*s.last().unwrap() {
        cut_then_resume(&src, &tc, &rc, usize::MAX, cut, 4093);
    }
    assert!(cuts.len() > 150, "{}", cuts.len());
}

#[test]
fn a_fresh_upload_visits_the_version_2_states() {
    let storage = MemStorage::new();
    let src = source(2 * B as usize + 1, 5);
    let mut p = Pair::plain(&storage, &src);
    p.run();
    assert_eq!((p.outcome(), p.ending()), (Outcome::Stored, Ending::Stored));
    assert_eq!(storage.file(NAME), Some(src.clone()));
    assert_eq!(
        (p.payload_sent, p.hashed, p.tx.protocol()),
        (src.len() as u64, 0, 2)
    );
    for s in [
        "ReadLen",
        "ReadHeader",
        "Admit",
        "Claim",
        "OpenHeld",
        "SendHeld",
        "DataFrames",
        "Verify",
        "SendVerdict",
        "Done",
    ] {
        assert!(p.rx_seen.contains(s), "{s}: {:?}", p.rx_seen);
    }
    // The server speaks MAGIC right after the header, the held list later.
    assert_eq!(&p.s2c[..8], &v2::MAGIC);
    assert_eq!(p.s2c[8], b'H');
}

#[test]
fn a_damaged_frame_is_repaired_alone() {
    let storage = MemStorage::new();
    let src = source(3 * B as usize, 6);
    let mut p = Pair::plain(&storage, &src);
    p.corrupt = vec![1];
    p.run();
    assert_eq!((p.outcome(), p.ending()), (Outcome::Stored, Ending::Stored));
    assert_eq!(storage.file(NAME), Some(src.clone()));
    assert_eq!(p.payload_sent, src.len() as u64 + B);
    assert!(p.rx_seen.contains("Repair") && p.tx_seen.contains("Repair"));
}

#[test]
fn a_block_damaged_every_time_fails_after_the_last_round_and_is_discarded() {
    let storage = MemStorage::new();
    let src = source(2 * B as usize, 7);
    let mut p = Pair::plain(&storage, &src);
    p.corrupt = vec![0; 1 + MAX_REPAIR_ROUNDS as usize];
    p.run();
    let Outcome::Mismatch(words) = p.outcome() else {
        panic!("{:?}", p.outcome())
    };
    assert!(words.contains("5 repair rounds"), "{words}");
    assert!(matches!(p.ending(), Ending::Mismatch(_)));
    assert_eq!((storage.file(NAME), storage.has_part(NAME)), (None, false));
    assert_eq!(p.payload_sent, src.len() as u64 + 5 * B);
}

#[test]
fn a_source_changed_between_attempts_resends_only_the_changed_and_missing_blocks() {
    let storage = MemStorage::new();
    let old = source(3 * B as usize + 100, 8);
    let mut a = Pair::plain(&storage, &old);
    a.c2s_cut = v2_header_len(old.len() as u64) + 2 * (13 + B as usize + 4) + 3;
    a.run();
    assert!(matches!(a.outcome(), Outcome::Failed(Failure::Lost(_))));
    assert_eq!(storage.durable_blocks(NAME).unwrap().prefix(), 2);
    let mut new = old.clone();
    new[10] ^= 0xFF;
    let mut b = Pair::plain(&storage, &new);
    b.run();
    assert_eq!(b.outcome(), Outcome::Stored);
    assert_eq!(storage.file(NAME), Some(new.clone()));
    assert_eq!((b.hashed, b.payload_sent), (2 * B, 2 * B + 100));
    assert!(b.tx_seen.contains("Plan"));
}

#[test]
fn known_block_crcs_skip_hashing_on_resume() {
    let storage = MemStorage::new();
    let src = source(3 * B as usize, 9);
    let mut a = Pair::plain(&storage, &src);
    a.c2s_cut = 300_000;
    a.run();
    let known: Vec<u32> = a.tx.block_crcs().iter().flatten().copied().collect();
    assert!(known.len() >= 2);
    let tc = SenderConfig {
        known,
        ..tx_cfg(&src)
    };
    let mut b = Pair::new(&storage, ReceiverConfig::default(), tc, src.clone());
    b.run();
    assert_eq!((b.outcome(), b.hashed), (Outcome::Stored, 0));
    assert_eq!(storage.file(NAME), Some(src));
}

/// Bytes of the header frame a [`tx_cfg`] sender sends.
fn v2_header_len(filesize: u64) -> usize {
    let h = proto::Header {
        filename: NAME.into(),
        filesize,
        crc32: 0,
    };
    let offer = v2::Offer {
        version: 2,
        block_size: B,
        rev: v2::REVISION,
        source: Some([7; 16]),
    };
    v2::encode_header_unknown_crc(&h, offer).unwrap().len()
}

fn auth_pair(server: Option<&str>, client: Option<&str>, legacy: bool, allow: bool) -> Pair {
    let src = source(1000, 10);
    let rc = ReceiverConfig {
        token: server.map(token),
        allow_legacy: allow,
        ..ReceiverConfig::default()
    };
    let base = if legacy {
        legacy_cfg(&src)
    } else {
        tx_cfg(&src)
    };
    let tc = SenderConfig {
        token: client.map(token),
        ..base
    };
    let mut p = Pair::new(&MemStorage::new(), rc, tc, src);
    p.run();
    p
}

#[test]
fn authentication_right_wrong_missing_and_legacy() {
    let ok = auth_pair(Some("a"), Some("a"), false, false);
    assert_eq!(
        (ok.outcome(), ok.ending()),
        (Outcome::Stored, Ending::Stored)
    );
    for s in ["Challenge", "AwaitAnswer"] {
        assert!(ok.rx_seen.contains(s), "{s}");
    }
    for s in ["AwaitChallenge", "SendAnswer", "AwaitHeld"] {
        assert!(ok.tx_seen.contains(s), "{s}");
    }
    let wrong = auth_pair(Some("a"), Some("b"), false, false);
    assert!(matches!(
        wrong.outcome(),
        Outcome::Fault {
            code: Some(FaultCode::AuthFailed),
            ..
        }
    ));
    assert!(matches!(
        wrong.ending(),
        Ending::Refused(Fault {
            code: FaultCode::AuthFailed,
            ..
        })
    ));
    assert!(wrong.storage.file(NAME).is_none() && !wrong.storage.has_part(NAME));
    assert!(!wrong.outcome().is_transient(), "a wrong token is for good");
    let missing = auth_pair(Some("a"), None, false, false);
    assert_eq!(missing.outcome(), Outcome::Failed(Failure::TokenRequired));
    assert!(!missing.outcome().is_transient());
    let legacy = auth_pair(Some("a"), None, true, false);
    assert_eq!(
        legacy.outcome(),
        Outcome::Failed(Failure::Lost("AwaitReply"))
    );
    assert!(matches!(
        legacy.ending(),
        Ending::Refused(Fault {
            code: FaultCode::AuthRequired,
            ..
        })
    ));
    assert!(
        legacy.s2c.is_empty(),
        "a legacy client is refused in silence"
    );
    let allowed = auth_pair(Some("a"), None, true, true);
    assert_eq!(allowed.outcome(), Outcome::Stored);
    assert!(allowed.rx_seen.contains("Receiving") && allowed.tx_seen.contains("SendBytes"));
}

#[test]
fn a_legacy_client_resumes_from_the_durable_offset() {
    let storage = MemStorage::new();
    let src = source(5000, 11);
    let mut a = Pair::new(
        &storage,
        ReceiverConfig::default(),
        legacy_cfg(&src),
        src.clone(),
    );
    a.c2s_cut = 80 + 3000;
    a.run();
    let mut b = Pair::new(
        &storage,
        ReceiverConfig::default(),
        legacy_cfg(&src),
        src.clone(),
    );
    b.run();
    assert_eq!(b.outcome(), Outcome::Stored);
    assert!(b.payload_sent < 5000 - 2000, "{}", b.payload_sent);
    assert_eq!(storage.file(NAME), Some(src));
    for s in ["SendOffset", "Receiving", "Verify", "SendVerdict"] {
        assert!(b.rx_seen.contains(s), "{s}");
    }
    assert!(b.tx_seen.contains("AwaitVerdict1"));
}

#[test]
fn a_legacy_header_with_the_wrong_crc_ends_in_crc32_error_and_discards() {
    let storage = MemStorage::new();
    let src = source(500, 12);
    let tc = SenderConfig {
        whole_crc: Some(crc32fast::hash(&src) ^ 1),
        ..legacy_cfg(&src)
    };
    let mut p = Pair::new(&storage, ReceiverConfig::default(), tc, src);
    p.run();
    assert!(matches!(p.outcome(), Outcome::Mismatch(_)));
    assert!(p.s2c.ends_with(b"CRC32_ERROR"));
    assert!(!storage.has_part(NAME) && storage.file(NAME).is_none());
}

/// Drives a sender by hand as a legacy (or foreign) server would.
fn hand_sender(cfg: SenderConfig) -> (Sender, Instant, Vec<u8>) {
    let now = Instant::now();
    let mut tx = Sender::new(cfg, now);
    let header = tx.poll_transmit(now).expect("header");
    (tx, now, header)
}

#[test]
fn a_legacy_server_refusing_a_null_crc_or_taking_version_1() {
    let src = source(100, 13);
    let (mut tx, now, _) = hand_sender(tx_cfg(&src));
    tx.handle_eof(now);
    assert_eq!(
        tx.outcome(),
        Some(&Outcome::Failed(Failure::LegacyNeedsCrc))
    );

    let cfg = SenderConfig {
        whole_crc: Some(crc32fast::hash(&src)),
        ..tx_cfg(&src)
    };
    let (mut tx, now, header) = hand_sender(cfg);
    assert!(
        proto::parse_header(&header[4..]).is_ok(),
        "a legacy server accepts it"
    );
    assert_eq!(tx.handle_input(now, &proto::encode_offset(40)), 8);
    assert_eq!(tx.poll_action(), Some(SendAction::SendBytes { from: 40 }));
    tx.handle_event(now, SendEvent::BytesSent(Ok(())));
    assert_eq!(tx.handle_input(now, b"CRC32_OK"), 8);
    tx.handle_eof(now);
    assert_eq!((tx.outcome(), tx.protocol()), (Some(&Outcome::Stored), 1));
}

#[test]
fn a_server_that_is_not_bigtransfer_is_named() {
    let src = source(100, 14);
    let (mut tx, now, _) = hand_sender(tx_cfg(&src));
    tx.handle_input(now, b"HTTP/1.1 400 Bad Request\r\n");
    let Some(Outcome::Failed(Failure::NotBigtransfer(w))) = tx.outcome() else {
        panic!("{:?}", tx.outcome())
    };
    assert!(w.contains("HTTP/1.1"), "{w}");
}

#[test]
fn the_sender_checks_repair_lists() {
    for (list, what) in [
        (vec![0, 0], "twice"),
        (vec![1], "block 1 of 1"),
        (vec![], "no blocks"),
    ] {
        let src = source(10, 15);
        let (mut tx, now, _) = hand_sender(tx_cfg(&src));
        let mut s2c = v2::MAGIC.to_vec();
        s2c.extend(v2::encode_server_msg(&v2::ServerMsg::Held {
            held: 0,
            block_size: B,
            crcs: vec![],
        }));
        assert_eq!(tx.handle_input(now, &s2c), 8);
        assert_eq!(tx.handle_input(now, &s2c[8..]), s2c.len() - 8);
        assert_eq!(tx.poll_transmit(now).map(|h| h[0]), Some(b'D'));
        assert!(matches!(
            tx.poll_action(),
            Some(SendAction::SendBlock { idx: 0, .. })
        ));
        tx.handle_event(now, SendEvent::BlockSent(Ok(crc32fast::hash(&src))));
        assert_eq!(
            tx.poll_transmit(now),
            Some(crc32fast::hash(&src).to_be_bytes().to_vec())
        );
        assert_eq!(tx.poll_transmit(now).map(|e| e[0]), Some(b'E'));
        let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Repair(list)));
        tx.handle_input(now, &f);
        let Some(Outcome::Failed(Failure::Protocol(w))) = tx.outcome() else {
            panic!("{:?}", tx.outcome())
        };
        assert!(w.contains(what), "{w}");
    }
}

#[test]
fn faults_from_policy_and_storage_reach_the_sender_with_their_codes() {
    let src = source(3 * B as usize, 16);
    for (admit, claim, code) in [
        (
            Some(Fault::new(
                FaultCode::NoSpace,
                "refused: needs 3 more bytes",
            )),
            None,
            FaultCode::NoSpace,
        ),
        (
            None,
            Some(Fault::new(FaultCode::Busy, "a newer connection")),
            FaultCode::Busy,
        ),
    ] {
        let storage = MemStorage::new();
        let mut p = Pair::plain(&storage, &src);
        p.policy = Policy { admit, claim };
        p.run();
        let Outcome::Fault {
            code: Some(c),
            words,
        } = p.outcome()
        else {
            panic!("{:?}", p.outcome())
        };
        assert_eq!(c, code, "{words}");
        assert_eq!(p.outcome().is_transient(), code == FaultCode::Busy);
        assert!(p.rx_seen.contains("Closing"));
        assert!(
            !storage.has_part(NAME),
            "refused before anything was stored"
        );
    }
    // The disk fills up in the middle of block 1: the sender hears why,
    // block 0 is kept, and the resume sends the rest.
    let storage = MemStorage::new();
    storage.fail_writes_after(B + 10);
    let mut a = Pair::plain(&storage, &src);
    a.run();
    assert!(
        matches!(
            a.outcome(),
            Outcome::Fault {
                code: Some(FaultCode::NoSpace),
                ..
            }
        ),
        "{:?}",
        a.outcome()
    );
    assert_eq!(storage.durable_blocks(NAME).map(|h| h.prefix()), Some(1));
    storage.fail_writes_after(u64::MAX);
    let mut b = Pair::plain(&storage, &src);
    b.run();
    assert_eq!((b.outcome(), b.payload_sent), (Outcome::Stored, 2 * B));
    assert_eq!(storage.file(NAME), Some(src));
}

fn v2_header(rev: Option<u64>, extra: &str) -> Vec<u8> {
    let rev = rev.map(|r| format!(", \"rev\": {r}")).unwrap_or_default();
    let json = format!(
        r#"{{"filename": "f.bin", "filesize": 10, "crc32": null, "bt": {{"v": 2, "block": 65536{rev}}}{extra}}}"#
    );
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json.as_bytes());
    f
}

fn transmit_all(rx: &mut Receiver, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = rx.poll_transmit(now) {
        out.extend(b);
    }
    out
}

#[test]
fn a_revision_1_client_gets_words_and_a_revision_2_client_a_code() {
    for (rev, tag) in [(None, b'X'), (Some(2), b'F')] {
        let now = Instant::now();
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], now);
        let h = v2_header(rev, "");
        assert_eq!(rx.handle_input(now, &h).used, 4);
        assert_eq!(rx.handle_input(now, &h[4..]).used, h.len() - 4);
        assert!(matches!(rx.poll_action(), Some(Action::Admit { .. })));
        rx.handle_event(
            now,
            Event::Admitted(Err(Fault::new(FaultCode::TooLarge, "too big"))),
        );
        let out = transmit_all(&mut rx, now);
        assert_eq!(&out[..8], &v2::MAGIC);
        assert_eq!(out[8], tag);
        assert!(out.ends_with(b"too big"));
        assert!(rx.is_closing());
        assert_eq!(rx.handle_input(now, b"more bytes are drained").used, 22);
        rx.handle_eof(now);
        assert!(matches!(rx.ending(), Some(Ending::Refused(_))));
    }
}

#[test]
fn a_null_crc_without_a_valid_offer_is_refused_before_any_action() {
    let json = br#"{"filename": "f.bin", "filesize": 10, "crc32": null, "bt": {"v": 1}}"#;
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], now);
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json);
    rx.handle_input(now, &f[..4]);
    rx.handle_input(now, &f[4..]);
    assert_eq!(rx.poll_action(), None);
    assert!(rx.is_closing());
    let out = transmit_all(&mut rx, now);
    assert_eq!(&out[..8], &v2::MAGIC, "it mentions \"bt\": told in words");
    assert!(String::from_utf8_lossy(&out).contains("crc32"), "{out:?}");
    rx.handle_eof(now);
    let Some(Ending::Refused(f)) = rx.ending() else {
        panic!("{:?}", rx.ending())
    };
    assert_eq!(f.code, FaultCode::BadRequest);
}

#[test]
fn the_block_count_is_bounded_before_anything_is_admitted() {
    let now = Instant::now();
    let cfg = ReceiverConfig {
        max_blocks: 1,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(cfg, [0; 32], now);
    let json = br#"{"filename": "f.bin", "filesize": 65537, "crc32": null, "bt": {"v": 2, "block": 65536, "rev": 2}}"#;
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json);
    rx.handle_input(now, &f[..4]);
    rx.handle_input(now, &f[4..]);
    assert_eq!(rx.poll_action(), None);
    let out = transmit_all(&mut rx, now);
    assert_eq!(
        u16::from_be_bytes([out[13], out[14]]),
        FaultCode::TooLarge.to_u16()
    );
}

#[test]
fn a_malformed_data_frame_is_a_bad_request() {
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], now);
    let h = v2_header(Some(2), "");
    let mut fed = 0;
    while fed < h.len() {
        fed += rx.handle_input(now, &h[fed..]).used;
    }
    let storage = MemStorage::new();
    let mut part = None;
    while let Some(a) = rx.poll_action() {
        let ev = match &a {
            Action::Admit { .. } => Event::Admitted(Ok(())),
            Action::Claim { .. } => Event::Claimed(Ok(())),
            Action::OpenHeld(id) => Event::Opened(storage.open(id).map(|(p, h)| {
                part = Some(p);
                h
            })),
            _ => unreachable!(),
        };
        rx.handle_event(now, ev);
    }
    assert_eq!(rx.state_name(), "SendHeld");
    transmit_all(&mut rx, now);
    let bad = v2::encode_data_head(0, 9);
    rx.handle_input(now, &bad);
    let out = transmit_all(&mut rx, now);
    assert_eq!(out[0], b'F');
    assert_eq!(
        u16::from_be_bytes([out[5], out[6]]),
        FaultCode::BadRequest.to_u16()
    );
    assert_eq!(
        rx.poll_action(),
        Some(Action::Checkpoint),
        "what is held is kept"
    );
}

#[test]
fn a_slowloris_header_is_closed_at_the_header_deadline() {
    let t0 = Instant::now();
    let cfg = ReceiverConfig::default();
    let mut rx = Receiver::new(cfg.clone(), [0; 32], t0);
    let h = v2_header(None, "");
    let mut now = t0;
    for &b in h.iter().cycle() {
        now += Duration::from_millis(700);
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        if rx.is_done() {
            break;
        }
        assert_eq!(rx.handle_input(now, &[b]).used, 1);
    }
    assert_eq!(rx.ending(), Some(&Ending::TimedOut(Timer::Header)));
    assert!(now <= t0 + cfg.header_timeout + Duration::from_millis(700));
    assert!(
        transmit_all(&mut rx, now).is_empty(),
        "before MAGIC: closed in silence"
    );
}

#[test]
fn an_unanswered_challenge_is_closed_at_the_answer_deadline() {
    let t0 = Instant::now();
    let cfg = ReceiverConfig {
        token: Some(token("x")),
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(cfg, [0; 32], t0);
    let h = v2_header(Some(2), "");
    rx.handle_input(t0, &h[..4]);
    rx.handle_input(t0, &h[4..]);
    assert!(matches!(rx.poll_action(), Some(Action::Admit { .. })));
    rx.handle_event(t0, Event::Admitted(Ok(())));
    let out = transmit_all(&mut rx, t0);
    assert_eq!((&out[..8], out[8]), (&v2::MAGIC[..], b'C'));
    assert_eq!(rx.state_name(), "AwaitAnswer");
    let at = rx.poll_timeout().unwrap();
    assert_eq!(at, t0 + Duration::from_secs(10));
    rx.handle_timeout(at);
    let out = transmit_all(&mut rx, at);
    assert_eq!(
        u16::from_be_bytes([out[5], out[6]]),
        FaultCode::TooSlow.to_u16()
    );
    let drain = rx.poll_timeout().unwrap();
    rx.handle_timeout(drain);
    assert_eq!(rx.ending(), Some(&Ending::TimedOut(Timer::Answer)));
}

#[test]
fn idle_and_slow_blocks_time_out_and_keep_what_is_held() {
    for (min_rate, timer) in [(None, Timer::Idle), (Some(1000u64), Timer::Block)] {
        let storage = MemStorage::new();
        let src = source(2 * B as usize, 17);
        let rc = ReceiverConfig {
            min_rate,
            idle_timeout: Duration::from_secs(if min_rate.is_some() { 1000 } else { 60 }),
            ..ReceiverConfig::default()
        };
        let mut p = Pair::new(&storage, rc, tx_cfg(&src), src.clone());
        // The client stalls in the middle of block 1.
        p.c2s_cut = 200 + B as usize + 2000;
        p.s2c_cut = usize::MAX - 1;
        let t0 = p.now;
        let mut guard = 0;
        while !p.rx.is_done() && guard < 100_000 {
            guard += 1;
            if !p.step() {
                let t = p.rx.poll_timeout().expect("a deadline");
                p.now = t;
                p.rx.handle_timeout(t);
            }
        }
        assert_eq!(p.rx.ending(), Some(&Ending::TimedOut(timer)));
        let waited = p.now - t0;
        match timer {
            Timer::Idle => assert!(waited < Duration::from_secs(64), "{waited:?}"),
            _ => assert!(waited < Duration::from_secs(80), "{waited:?}"),
        }
        assert_eq!(storage.durable_blocks(NAME).map(|h| h.prefix()), Some(1));
        assert!(p
            .s2c
            .windows(2)
            .any(|w| w == [0, FaultCode::TooSlow.to_u16() as u8]));
    }
}

#[test]
fn a_silent_server_times_the_sender_out() {
    let src = source(10, 18);
    let (mut tx, now, _) = hand_sender(tx_cfg(&src));
    let at = tx.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_secs(30));
    tx.handle_timeout(at - Duration::from_millis(1));
    assert!(tx.outcome().is_none());
    tx.handle_timeout(at);
    assert_eq!(
        tx.outcome(),
        Some(&Outcome::Failed(Failure::TimedOut("AwaitReply")))
    );
}

#[test]
fn every_state_of_both_machines_is_visited() {
    let mut rx = BTreeSet::new();
    let mut tx = BTreeSet::new();
    let mut add = |p: &Pair| {
        rx.extend(p.rx_seen.iter().copied());
        tx.extend(p.tx_seen.iter().copied());
    };
    let src = source(2 * B as usize, 19);
    let storage = MemStorage::new();
    let mut p = Pair::plain(&storage, &src);
    p.corrupt = vec![1];
    p.c2s_cut = 100_000;
    p.run();
    add(&p);
    let mut p = Pair::plain(&storage, &src);
    p.corrupt = vec![1];
    p.run();
    add(&p);
    add(&auth_pair(Some("a"), Some("a"), false, false));
    add(&auth_pair(Some("a"), Some("b"), false, false));
    add(&auth_pair(Some("a"), None, true, true));
    add(&bound_pair(("a", 1), ("a", 1)));
    add(&bound_pair(("a", 1), ("b", 1)));
    // A sender that re-checks its source before the End frame.
    let tc = SenderConfig {
        recheck: true,
        ..tx_cfg(&src)
    };
    let mut p = Pair::new(
        &MemStorage::new(),
        ReceiverConfig::default(),
        tc,
        src.clone(),
    );
    p.run();
    add(&p);
    // A list request: the receiver answers it from the Listing state.
    let now = Instant::now();
    let mut lister = Receiver::new(ReceiverConfig::default(), [0; crate::auth::NONCE_LEN], now);
    let offer = v2::Offer {
        version: 2,
        block_size: v2::MIN_BLOCK,
        rev: v2::REV_KEEP,
        source: None,
    };
    let request = crate::listing::encode_list_request(None, offer);
    let mut fed = 0;
    while fed < request.len() {
        let used = lister.handle_input(now, &request[fed..]).used;
        assert!(used > 0, "the list request stalled at byte {fed}");
        fed += used;
    }
    rx.insert(lister.state_name());
    let all_rx = [
        "ReadLen",
        "ReadHeader",
        "Admit",
        "Challenge",
        "AwaitAnswer",
        "Claim",
        "OpenHeld",
        "SendOffset",
        "Receiving",
        "SendHeld",
        "DataFrames",
        "Repair",
        "Recheck",
        "Verify",
        "SendVerdict",
        "Closing",
        "Done",
        "Listing",
    ];
    let all_tx = [
        "SendHeader",
        "AwaitReply",
        "AwaitChallenge",
        "SendAnswer",
        "Decline",
        "AwaitRefusal",
        "AwaitHeld",
        "Plan",
        "SendBlocks",
        "Recheck",
        "SendEnd",
        "AwaitVerdict",
        "Repair",
        "SendBytes",
        "AwaitVerdict1",
        "Done",
    ];
    assert_eq!(rx, all_rx.into_iter().collect(), "receiver");
    assert_eq!(tx, all_tx.into_iter().collect(), "sender");
}

#[test]
fn a_crash_keeps_only_checkpointed_blocks_and_a_hole_is_sent_again() {
    let storage = MemStorage::new();
    let src = source(3 * B as usize, 20);
    let mut a = Pair::plain(&storage, &src);
    a.corrupt = vec![1];
    // The server crashes right after asking for block 1 again: the
    // checkpoint before the repair list made blocks 0 and 2 durable.
    a.c2s_cut = v2_header_len(src.len() as u64) + 3 * (13 + B as usize + 4) + 5;
    a.crash_on_cut = true;
    a.run();
    assert!(
        matches!(a.outcome(), Outcome::Failed(Failure::Lost(_))),
        "{:?}",
        a.outcome()
    );
    let held = storage.durable_blocks(NAME).unwrap();
    assert_eq!(held.missing(), vec![1], "a hole in the middle");
    assert_eq!(held.prefix(), 1);
    let mut b = Pair::plain(&storage, &src);
    b.run();
    assert_eq!(b.outcome(), Outcome::Stored);
    // The held set names the hole: block 1 alone travels.
    assert_eq!(b.payload_sent, B);
    assert_eq!((b.tx.kept(), b.tx.resent()), (Some(2 * B), 1));
    assert!(b.s2c[8..].starts_with(b"S"), "a held-set frame");
    assert_eq!(storage.file(NAME), Some(src));
}

/// A server holding blocks 0 and 2 of 3 (block 1 arrived damaged, then
/// the server crashed) and the source.
fn held_with_a_hole() -> (MemStorage, Vec<u8>) {
    let storage = MemStorage::new();
    let src = source(3 * B as usize, 20);
    let mut a = Pair::plain(&storage, &src);
    a.corrupt = vec![1];
    a.c2s_cut = v2_header_len(src.len() as u64) + 3 * (13 + B as usize + 4) + 5;
    a.crash_on_cut = true;
    a.run();
    assert_eq!(
        storage.durable_blocks(NAME).unwrap().runs(),
        vec![(0, 1), (2, 1)]
    );
    (storage, src)
}

#[test]
fn an_older_client_gets_the_held_prefix_and_still_stores_the_source() {
    let (storage, src) = held_with_a_hole();
    let mut b = Pair::plain(&storage, &src);
    b.as_rev2 = true;
    b.run();
    assert_eq!(b.outcome(), Outcome::Stored);
    // "The first N bytes" only: block 2 goes again too.
    assert_eq!(b.payload_sent, 2 * B);
    assert!(b.s2c[8..].starts_with(b"H"), "a held-list frame");
    assert_eq!(storage.file(NAME), Some(src));
}

#[test]
fn a_held_set_is_sent_only_when_read_and_only_with_a_hole() {
    let (storage, _) = held_with_a_hole();
    let set = storage.durable_blocks(NAME).unwrap();
    assert!(matches!(
        set.held_msg_for(2),
        v2::ServerMsg::Held { held: B, .. }
    ));
    match set.held_msg_for(v2::REV_HOLES) {
        v2::ServerMsg::HeldSet {
            block_size,
            runs,
            crcs,
        } => {
            assert_eq!((block_size, runs), (B, vec![(0, 1), (2, 1)]));
            assert_eq!(crcs, vec![set.crc(0).unwrap(), set.crc(2).unwrap()]);
        }
        other => panic!("{other:?}"),
    }
    let mut prefix = HeldSet::new(3 * B, B).unwrap();
    prefix.mark(0, 5);
    assert!(matches!(
        prefix.held_msg_for(v2::REV_HOLES),
        v2::ServerMsg::Held { .. }
    ));
    prefix.forget(0);
    prefix.mark(1, 5);
    assert!(matches!(
        prefix.held_msg_for(v2::REV_HOLES),
        v2::ServerMsg::HeldSet { .. }
    ));
}

#[test]
fn the_sender_checks_a_held_set_against_the_file() {
    let src = source(3 * B as usize, 22);
    let mut o = super::transfer::Outlet::new(src.len() as u64, B, &[]);
    assert!(
        o.accept_set(B, &[(2, 2)], vec![1, 2]).is_err(),
        "past the end"
    );
    assert!(
        o.accept_set(2 * B, &[(0, 1)], vec![1]).is_err(),
        "block size"
    );
    assert_eq!(o.accept_set(B, &[(1, 1)], vec![7]), Ok(Some((0, 2))));
}

/// The sender's header with its revision (3 or later) made `"rev":2`.
fn as_rev2(b: Vec<u8>) -> Vec<u8> {
    let at = b
        .windows(6)
        .position(|w| w == b"\"rev\":")
        .expect("the header has a revision");
    let mut b = b;
    let digit = at + 6 + b[at + 6..].iter().take_while(|c| **c == b' ').count();
    assert!(matches!(b[digit], b'3'..=b'9'), "a revision of 3 or later");
    b[digit] = b'2';
    b
}

#[test]
fn a_crash_without_any_checkpoint_starts_over_and_still_stores_the_source() {
    let storage = MemStorage::new();
    let src = source(2 * B as usize + 7, 21);
    let mut a = Pair::plain(&storage, &src);
    a.c2s_cut = 100_000;
    a.crash_on_cut = true;
    a.run();
    assert_eq!(storage.durable_blocks(NAME).map(|h| h.prefix()), Some(0));
    let mut b = Pair::plain(&storage, &src);
    b.run();
    assert_eq!(
        (b.outcome(), b.payload_sent),
        (Outcome::Stored, src.len() as u64)
    );
    assert_eq!(storage.file(NAME), Some(src));
}

#[test]
fn a_takeover_stops_the_older_connection_with_a_transient_code_and_keeps_its_blocks() {
    let storage = MemStorage::new();
    let src = source(3 * B as usize, 22);
    let mut a = Pair::plain(&storage, &src);
    a.chunk = 1024;
    while a.storage.durable_blocks(NAME).is_none() || a.c2s_pos < 150_000 {
        assert!(a.step(), "stalled in {}", a.rx.state_name());
    }
    a.rx.handle_abort(
        a.now,
        Fault::new(FaultCode::TakenOver, "another connection took over"),
    );
    a.run();
    let Outcome::Fault {
        code: Some(code),
        words,
    } = a.outcome()
    else {
        panic!("{:?}", a.outcome())
    };
    assert_eq!(code, FaultCode::TakenOver, "{words}");
    assert!(a.outcome().is_transient());
    assert_eq!(storage.durable_blocks(NAME).map(|h| h.prefix()), Some(2));
    let mut b = Pair::plain(&storage, &src);
    b.run();
    assert_eq!((b.outcome(), b.payload_sent), (Outcome::Stored, B));
    assert_eq!(storage.file(NAME), Some(src));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]

    /// Any cut in either direction, any delivery size, a damaged block or
    /// not, either protocol, compressed frames or not: the resume stores
    /// exactly the source.
    #[test]
    fn random_cuts_chunks_and_damage_always_end_in_the_source(
        len in 0usize..(2 * B as usize + 50),
        chunk in 1usize..9000,
        c2s in 0.0f64..1.1,
        s2c in 0usize..80,
        corrupt in proptest::option::of(0u64..3),
        legacy in proptest::prelude::any::<bool>(),
        packed in proptest::prelude::any::<bool>(),
    ) {
        let storage = MemStorage::new();
        let src = source(len, len as u32);
        let mut tc = if legacy { legacy_cfg(&src) } else { tx_cfg(&src) };
        if packed {
            // This source shrinks about 28 : 1, so every block goes as Z.
            tc.compress = Compress::Zstd(1);
        }
        let mut a = Pair::new(&storage, ReceiverConfig::default(), tc.clone(), src.clone());
        a.chunk = chunk;
        a.c2s_cut = (c2s * (len + 200) as f64) as usize;
        a.s2c_cut = s2c;
        a.corrupt = corrupt.into_iter().collect();
        a.run();
        let mut b = Pair::new(&storage, ReceiverConfig::default(), tc, src.clone());
        b.run();
        proptest::prop_assert_eq!(b.outcome(), Outcome::Stored);
        proptest::prop_assert!(storage.file(NAME) == Some(src));
    }
}

#[test]
fn a_server_silent_after_magic_or_before_the_verdict_times_the_sender_out() {
    let src = source(10, 23);
    let (mut tx, now, _) = hand_sender(tx_cfg(&src));
    let later = now + Duration::from_secs(20);
    assert_eq!(tx.handle_input(later, &v2::MAGIC), 8);
    assert_eq!(tx.state_name(), "AwaitChallenge");
    assert_eq!(
        tx.poll_timeout(),
        Some(later + Duration::from_secs(30)),
        "re-armed on progress"
    );
    tx.handle_timeout(later + Duration::from_secs(30));
    assert_eq!(
        tx.outcome(),
        Some(&Outcome::Failed(Failure::TimedOut("AwaitChallenge")))
    );

    let (mut tx, now, _) = hand_sender(tx_cfg(&[]));
    let mut s2c = v2::MAGIC.to_vec();
    s2c.extend(v2::encode_server_msg(&v2::ServerMsg::Held {
        held: 0,
        block_size: B,
        crcs: vec![],
    }));
    let mut pos = 0;
    while pos < s2c.len() {
        pos += tx.handle_input(now, &s2c[pos..]);
    }
    assert_eq!(
        tx.poll_transmit(now),
        Some(v2::encode_end(0).to_vec()),
        "an empty file is just E"
    );
    assert_eq!(tx.state_name(), "AwaitVerdict");
    tx.handle_timeout(now + Duration::from_secs(30));
    assert_eq!(
        tx.outcome(),
        Some(&Outcome::Failed(Failure::TimedOut("AwaitVerdict")))
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Hostile bytes after a good header: the receiver never panics, takes
    /// every byte or stops, and ends refused or still waiting.
    #[test]
    fn hostile_client_bytes_never_panic_the_receiver(junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), tag in 0usize..4) {
        let now = Instant::now();
        let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], now);
        let mut input = v2_header(Some(2), "");
        input.extend([b'D', b'E', b'A', b'Z'][tag..=tag].iter());
        input.extend(junk);
        let storage = MemStorage::new();
        let mut part = None;
        let mut pos = 0;
        for _ in 0..10_000 {
            while rx.poll_transmit(now).is_some() {}
            if let Some(a) = rx.poll_action() {
                let ev = match &a {
                    Action::Admit { .. } => Event::Admitted(Ok(())),
                    Action::Claim { .. } => Event::Claimed(Ok(())),
                    Action::OpenHeld(id) => Event::Opened(storage.open(id).map(|(p, h)| { part = Some(p); h })),
                    other => apply(part.as_mut().unwrap(), other).unwrap(),
                };
                rx.handle_event(now, ev);
                continue;
            }
            let fed = rx.handle_input(now, &input[pos..]);
            if let Some(w) = fed.write {
                let r = part.as_mut().unwrap().write_at(w.offset, &w.bytes);
                rx.handle_event(now, Event::Applied(r));
            }
            if fed.used == 0 {
                break;
            }
            pos += fed.used;
        }
        rx.handle_eof(now);
        while rx.poll_transmit(now).is_some() {}
        if let Some(a) = rx.poll_action() {
            proptest::prop_assert_eq!(a, Action::Checkpoint);
        }
        proptest::prop_assert!(!matches!(rx.ending(), Some(Ending::Stored)));
    }

    /// Hostile bytes from a server: the sender never panics and ends.
    #[test]
    fn hostile_server_bytes_never_panic_the_sender(junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), magic in proptest::prelude::any::<bool>()) {
        let src = source(100, 24);
        let (mut tx, now, _) = hand_sender(tx_cfg(&src));
        let mut input = if magic { v2::MAGIC.to_vec() } else { Vec::new() };
        input.extend(junk);
        let mut pos = 0;
        for _ in 0..10_000 {
            while tx.poll_transmit(now).is_some() {}
            if let Some(a) = tx.poll_action() {
                let ev = match a {
                    SendAction::HashBlocks { from, to } => SendEvent::Hashed(Ok((from..to).map(|_| 0).collect())),
                    SendAction::SendBlock { .. } => SendEvent::BlockSent(Ok(7)),
                    SendAction::SendBytes { .. } => SendEvent::BytesSent(Ok(())),
                    SendAction::Recheck => SendEvent::Rechecked(Ok(())),
                    SendAction::PackBlock { .. } => packed_event(&[7; 100], 1).0,
                    SendAction::SendPacked { .. } => SendEvent::BlockSent(Ok(7)),
                    SendAction::SendParallel { .. } => SendEvent::ParallelSent(Ok(Vec::new())),
                };
                tx.handle_event(now, ev);
                continue;
            }
            let used = tx.handle_input(now, &input[pos..]);
            if used == 0 {
                break;
            }
            pos += used;
        }
        tx.handle_eof(now);
        proptest::prop_assert!(tx.outcome().is_some());
        proptest::prop_assert_ne!(tx.outcome(), Some(&Outcome::Stored));
    }
}

/// A sender that has sent its only block to a server holding nothing,
/// with the trailer drained.
fn one_block_sent(cfg: SenderConfig, src: &[u8]) -> (Sender, Instant) {
    let (mut tx, now, _) = hand_sender(cfg);
    let mut s2c = v2::MAGIC.to_vec();
    s2c.extend(v2::encode_server_msg(&v2::ServerMsg::Held {
        held: 0,
        block_size: B,
        crcs: vec![],
    }));
    let used = tx.handle_input(now, &s2c);
    assert_eq!(tx.handle_input(now, &s2c[used..]), s2c.len() - used);
    assert_eq!(tx.poll_transmit(now).map(|h| h[0]), Some(b'D'));
    assert!(matches!(
        tx.poll_action(),
        Some(SendAction::SendBlock { .. })
    ));
    let crc = crc32fast::hash(src);
    tx.handle_event(now, SendEvent::BlockSent(Ok(crc)));
    assert_eq!(tx.poll_transmit(now), Some(crc.to_be_bytes().to_vec()));
    (tx, now)
}

#[test]
fn a_sender_with_recheck_asks_before_the_end_frame_and_stops_on_a_change() {
    let src = source(10, 21);
    let cfg = SenderConfig {
        recheck: true,
        binding: None,
        ..tx_cfg(&src)
    };
    // Unchanged: the End frame follows the answer, with the whole CRC-32.
    let (mut tx, now) = one_block_sent(cfg.clone(), &src);
    assert_eq!(tx.poll_transmit(now), None, "no End before the recheck");
    assert_eq!(tx.state_name(), "Recheck");
    assert_eq!(tx.poll_action(), Some(SendAction::Recheck));
    tx.handle_event(now, SendEvent::Rechecked(Ok(())));
    let end = v2::encode_end(crc32fast::hash(&src)).to_vec();
    assert_eq!(tx.poll_transmit(now), Some(end));
    assert_eq!((tx.kept(), tx.resent(), tx.repairs()), (Some(0), 0, 0));
    // Changed: no End frame, the attempt ends for a fresh start.
    let (mut tx, now) = one_block_sent(cfg, &src);
    assert_eq!(tx.poll_action(), Some(SendAction::Recheck));
    tx.handle_event(now, SendEvent::Rechecked(Err("touched".into())));
    assert_eq!(tx.poll_transmit(now), None);
    assert_eq!(
        tx.outcome(),
        Some(&Outcome::Failed(Failure::SourceChanged("touched".into())))
    );
}

#[test]
fn the_greeting_has_its_own_deadline_and_the_repair_cap_is_configurable() {
    let src = source(10, 22);
    let cfg = SenderConfig {
        greeting_timeout: Some(Duration::from_millis(300)),
        max_repair_rounds: 1,
        ..tx_cfg(&src)
    };
    let (mut tx, now, _) = hand_sender(cfg.clone());
    assert_eq!(tx.poll_timeout(), Some(now + Duration::from_millis(300)));
    // A dribbling peer does not move the greeting's deadline.
    let later = now + Duration::from_millis(200);
    assert_eq!(tx.handle_input(later, b"HTTP"), 4);
    assert_eq!(tx.poll_timeout(), Some(now + Duration::from_millis(300)));
    let (mut tx, now) = one_block_sent(cfg, &src);
    assert_eq!(
        tx.poll_timeout(),
        None,
        "sending: no reply deadline until End"
    );
    assert_eq!(tx.poll_transmit(now).map(|e| e[0]), Some(b'E'));
    assert_eq!(tx.poll_timeout(), Some(now + Duration::from_secs(30)));
    let repair = |tx: &mut Sender| {
        let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Repair(vec![0])));
        tx.handle_input(now, &f);
    };
    repair(&mut tx);
    assert_eq!(tx.poll_transmit(now).map(|h| h[0]), Some(b'D'));
    assert!(matches!(
        tx.poll_action(),
        Some(SendAction::SendBlock { idx: 0, .. })
    ));
    tx.handle_event(now, SendEvent::BlockSent(Ok(crc32fast::hash(&src))));
    while tx.poll_transmit(now).is_some() {}
    assert_eq!((tx.repairs(), tx.resent()), (1, 1));
    repair(&mut tx);
    let Some(Outcome::Failed(Failure::Protocol(w))) = tx.outcome() else {
        panic!("{:?}", tx.outcome())
    };
    assert!(w.contains("more than 1 rounds of repair"), "{w}");
}

// ---- Compressed data frames (negotiated with "bt"."z") ----

/// Realistic compressible data: log lines with varying numbers.
fn log_lines(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        let x = i.wrapping_mul(6364136223846793005) >> 40;
        let line = format!(
            "2026-11-30T10:{:02}:{:02} host{} GET /api/v1/items/{} status={} bytes={}\n",
            (i / 60) % 60,
            i % 60,
            x % 7,
            x % 100_000,
            [200, 200, 200, 404, 500][(x % 5) as usize],
            x % 65_536
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn packing(src: &[u8], compress: Compress) -> SenderConfig {
    SenderConfig {
        compress,
        ..tx_cfg(src)
    }
}

#[test]
fn compressible_blocks_travel_compressed_and_are_stored_identical() {
    let src = log_lines(5 * B as usize + 777);
    for mode in [Compress::Auto, Compress::Zstd(3)] {
        let storage = MemStorage::new();
        let tc = packing(&src, mode);
        let mut p = Pair::new(&storage, ReceiverConfig::default(), tc, src.clone());
        p.run();
        assert_eq!(p.outcome(), Outcome::Stored, "{mode}");
        assert!(
            storage.file(NAME) == Some(src.clone()),
            "{mode}: stored bytes differ"
        );
        let s = p.tx.pack_stats();
        assert!(s.agreed, "{mode}");
        assert_eq!((s.blocks, s.raw_bytes), (6, src.len() as u64), "{mode}");
        assert!(s.wire_bytes * 3 < s.raw_bytes, "{mode}: {s:?}");
        // The whole client stream (header and frames) is far below the file.
        assert!(p.c2s.len() * 3 < src.len(), "{mode}: {}", p.c2s.len());
    }
}

#[test]
fn random_blocks_go_raw_and_auto_stops_trying() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let src: Vec<u8> = (0..40 * B)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let storage = MemStorage::new();
    let tc = packing(&src, Compress::Auto);
    let mut p = Pair::new(&storage, ReceiverConfig::default(), tc, src.clone());
    p.run();
    assert_eq!(p.outcome(), Outcome::Stored);
    assert!(storage.file(NAME) == Some(src.clone()));
    let s = p.tx.pack_stats();
    let give_up = crate::compress::AutoConfig::default().give_up_after as u64;
    assert_eq!(
        (s.agreed, s.blocks, s.declined),
        (true, 0, give_up),
        "{s:?}"
    );
    // Raw frames: the stream is the file plus heads, trailers and header.
    let framing = p.c2s.len() - src.len();
    assert!(framing < 40 * 17 + 300, "{framing}");
}

#[test]
fn no_codec_frame_without_an_offer_or_with_compression_off_at_the_server() {
    let src = log_lines(3 * B as usize);
    // An older client (no "z"): the server says nothing of codecs.
    let mut old = Pair::plain(&MemStorage::new(), &src);
    old.run();
    assert_eq!(old.outcome(), Outcome::Stored);
    assert!(!old.s2c.windows(5).any(|w| w == b"Z\0\0\0\x04"));
    assert!(!old.c2s.windows(3).any(|w| w == b"\"z\""));
    assert!(!old.tx.pack_stats().agreed);
    // A server that does not take compression: everything goes raw.
    let rc = ReceiverConfig {
        compression: false,
        ..ReceiverConfig::default()
    };
    let tc = packing(&src, Compress::Zstd(3));
    let storage = MemStorage::new();
    let mut p = Pair::new(&storage, rc, tc, src.clone());
    p.run();
    assert_eq!(p.outcome(), Outcome::Stored);
    assert!(p.c2s.windows(3).any(|w| w == b"\"z\""), "it offered");
    assert_eq!(p.tx.pack_stats(), PackStats::default());
    assert!(storage.file(NAME) == Some(src));
}

#[test]
fn every_cut_of_a_compressed_upload_resumes_to_the_same_bytes() {
    let src = log_lines(3 * B as usize + 5);
    let tc = packing(&src, Compress::Zstd(1));
    let rc = ReceiverConfig::default();
    let (c2s, s2c) = streams(&src, &tc, &rc);
    let total = *c2s.last().unwrap();
    for cut in (0..total).step_by(97).chain(c2s.iter().copied()) {
        cut_then_resume(&src, &tc, &rc, cut, usize::MAX, 1 + cut % 5000);
    }
    for &cut in &s2c {
        cut_then_resume(&src, &tc, &rc, usize::MAX, cut, 4093);
    }
}

/// A sender inside TLS (a channel binding): it offers the connection-long
/// zstd stream first.
fn streamed(src: &[u8], mode: Compress) -> SenderConfig {
    SenderConfig {
        binding: Some([3; crate::auth::BINDING_LEN]),
        ..packing(src, mode)
    }
}

#[test]
fn inside_tls_blocks_travel_as_one_zstd_stream_and_are_stored_identical() {
    let src = log_lines(5 * B as usize + 777);
    let storage = MemStorage::new();
    let mut p = Pair::new(
        &storage,
        ReceiverConfig::default(),
        streamed(&src, Compress::Zstd(3)),
        src.clone(),
    );
    p.run();
    assert_eq!(p.outcome(), Outcome::Stored);
    assert!(
        storage.file(NAME) == Some(src.clone()),
        "stored bytes differ"
    );
    let s = p.tx.pack_stats();
    assert!(s.agreed && s.streaming, "{s:?}");
    assert_eq!((s.blocks, s.raw_bytes), (6, src.len() as u64));
    assert!(p.c2s.windows(13).any(|w| w == b"\"zstd-stream\""));
    // Against per-block frames of the same data: the stream is smaller.
    let mut chunked = Pair::new(
        &MemStorage::new(),
        ReceiverConfig::default(),
        packing(&src, Compress::Zstd(3)),
        src.clone(),
    );
    chunked.run();
    let c = chunked.tx.pack_stats();
    assert!(!c.streaming && c.agreed, "{c:?}");
    assert!(s.wire_bytes < c.wire_bytes, "{s:?} against {c:?}");
}

#[test]
fn a_receiver_that_only_knows_zstd_gets_per_block_frames() {
    // An older server: it reads the offer and picks the codec it knows.
    let src = log_lines(3 * B as usize);
    let mut rx_json_only_zstd = streamed(&src, Compress::Zstd(1));
    rx_json_only_zstd.binding = None;
    let mut p = Pair::new(
        &MemStorage::new(),
        ReceiverConfig::default(),
        rx_json_only_zstd,
        src.clone(),
    );
    p.run();
    assert_eq!(p.outcome(), Outcome::Stored);
    assert!(
        !p.c2s.windows(11).any(|w| w == b"zstd-stream"),
        "not offered on plaintext"
    );
    assert!(!p.tx.pack_stats().streaming);
    // The server's answer decides: "zstd" makes the streaming sender pack
    // per block (checked by the machine: it took the codec it named).
    let mut tx = Sender::new(streamed(&src, Compress::Zstd(1)), Instant::now());
    tx.on_codec(crate::compress::CODEC);
    assert!(tx.pack_stats().agreed && !tx.pack_stats().streaming);
    tx.on_codec("zstd-other");
    assert!(
        tx.outcome().is_some(),
        "an unoffered codec fails the attempt"
    );
}

#[test]
fn every_cut_of_a_streamed_upload_resumes_to_the_same_bytes() {
    // Each reconnection starts a new stream; a block cut in the middle is
    // sent again in the new connection's stream.
    let src = log_lines(3 * B as usize + 5);
    let tc = streamed(&src, Compress::Zstd(1));
    let rc = ReceiverConfig::default();
    let (c2s, s2c) = streams(&src, &tc, &rc);
    let total = *c2s.last().unwrap();
    for cut in (0..total).step_by(89).chain(c2s.iter().copied()) {
        cut_then_resume(&src, &tc, &rc, cut, usize::MAX, 1 + cut % 5000);
    }
    for &cut in &s2c {
        cut_then_resume(&src, &tc, &rc, usize::MAX, cut, 4093);
    }
}

/// A receiver set up for `f.bin` of `filesize` bytes by a client that
/// offered zstd (`z`), past its held list.
fn packed_receiver(
    filesize: u64,
    z: bool,
    now: Instant,
) -> (Receiver, MemPart, Vec<u8>, MemStorage) {
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], now);
    let z = if z { r#", "z": ["zstd"]"# } else { "" };
    let json = format!(
        r#"{{"filename": "f.bin", "filesize": {filesize}, "crc32": null, "bt": {{"v": 2, "block": 65536, "rev": 2{z}}}}}"#
    );
    let mut h = (json.len() as u32).to_be_bytes().to_vec();
    h.extend_from_slice(json.as_bytes());
    let mut fed = 0;
    while fed < h.len() {
        fed += rx.handle_input(now, &h[fed..]).used;
    }
    let storage = MemStorage::new();
    let mut part = None;
    while let Some(a) = rx.poll_action() {
        let ev = match &a {
            Action::Admit { .. } => Event::Admitted(Ok(())),
            Action::Claim { .. } => Event::Claimed(Ok(())),
            Action::OpenHeld(id) => Event::Opened(storage.open(id).map(|(p, h)| {
                part = Some(p);
                h
            })),
            _ => unreachable!(),
        };
        rx.handle_event(now, ev);
    }
    let out = transmit_all(&mut rx, now);
    (rx, part.expect("opened"), out, storage)
}

/// Feeds `wire` to `rx`, writing to `part`; the refusal's code and words.
fn feed_refused(rx: &mut Receiver, part: &mut MemPart, wire: &[u8], now: Instant) -> Fault {
    let mut pos = 0;
    while pos < wire.len() && !rx.is_closing() {
        if let Some(a) = rx.poll_action() {
            let ev = apply(part, &a).unwrap();
            rx.handle_event(now, ev);
            continue;
        }
        let fed = rx.handle_input(now, &wire[pos..]);
        if let Some(w) = fed.write {
            let r = part.write_at(w.offset, &w.bytes);
            rx.handle_event(now, Event::Applied(r));
        }
        if fed.used == 0 {
            break;
        }
        pos += fed.used;
    }
    match rx.ending() {
        Some(Ending::Refused(f)) => f.clone(),
        other => panic!("not refused: {other:?} in {}", rx.state_name()),
    }
}

fn packed_frame(offset: u64, len: u64, payload: &[u8], crc: u32) -> Vec<u8> {
    let mut f = v2::encode_packed_head(offset, len as u32, payload.len() as u32).to_vec();
    f.extend_from_slice(payload);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

#[test]
fn the_server_accepts_zstd_only_when_offered_and_says_so_before_the_held_list() {
    let now = Instant::now();
    let (_, _, out, _) = packed_receiver(10, true, now);
    let codec = v2::encode_server_msg(&v2::ServerMsg::Codec("zstd".into()));
    assert_eq!(&out[8..8 + codec.len()], &codec[..]);
    assert_eq!(out[8 + codec.len()], b'H');
    let (_, _, out, _) = packed_receiver(10, false, now);
    assert_eq!(out[8], b'H');
}

#[test]
fn hostile_compressed_frames_are_refused_with_words() {
    let now = Instant::now();
    let raw = log_lines(B as usize);
    let good = crate::compress::BlockCompressor::new(3)
        .unwrap()
        .pack(&raw)
        .unwrap();
    // Frames whose head breaks the rules: the connection is refused.
    let refused: Vec<(bool, Vec<u8>, &str)> = vec![
        (
            true,
            packed_frame(0, B, &vec![0x55; B as usize + 1], 0),
            "it may not be empty or expand",
        ),
        (
            false,
            packed_frame(0, B, &good, crc32fast::hash(&raw)),
            "no compression was agreed",
        ),
    ];
    for (z, wire, words) in refused {
        let (mut rx, mut part, _, storage) = packed_receiver(2 * B, z, now);
        let f = feed_refused(&mut rx, &mut part, &wire, now);
        assert_eq!(f.code, FaultCode::BadRequest, "{words}: {f:?}");
        assert!(f.words.contains(words), "{words}: {}", f.words);
        // What is held is kept, and block 0 is not vouched for.
        assert_eq!(rx.poll_action(), Some(Action::Checkpoint), "{words}");
        part.checkpoint().unwrap();
        let held = storage.durable_blocks(NAME).unwrap();
        assert_eq!(held.crc(0), None, "{words}");
    }
}

/// Payloads that lie, explode or break apart inside a well-formed frame:
/// the block is damaged (never held, never expanded past its chunk) and
/// asked for again, as a raw block with a wrong CRC-32 is: a bit flipped in
/// transit looks the same, and a peer that keeps lying runs out of repair
/// rounds.
#[test]
fn damaged_compressed_payloads_are_never_held_and_asked_for_again() {
    let now = Instant::now();
    let raw = log_lines(B as usize);
    let good = crate::compress::BlockCompressor::new(3)
        .unwrap()
        .pack(&raw)
        .unwrap();
    let other = log_lines(B as usize + 1)[1..].to_vec();
    // A 64 MiB bomb in one chunk of a 64 KiB block.
    let bomb = crate::compress::compress_block(&vec![0u8; 64 << 20], 1).unwrap();
    let mut bomb_payload = (bomb.len() as u32).to_be_bytes().to_vec();
    bomb_payload.extend_from_slice(&bomb);
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let damaged: Vec<(Vec<u8>, &str)> = vec![
        (packed_frame(0, B, &good, crc32fast::hash(&other)), "lie"),
        (
            packed_frame(0, B, &bomb_payload, crc32fast::hash(&raw)),
            "bomb",
        ),
        (packed_frame(0, B, &[0, 1, 0, 1, 9, 9], 0), "long chunk"),
        (
            packed_frame(0, B, &trailing, crc32fast::hash(&raw)),
            "trailing",
        ),
        (
            packed_frame(0, B, &good[..good.len() / 2], crc32fast::hash(&raw)),
            "short",
        ),
        (
            packed_frame(0, B, &flipped, crc32fast::hash(&raw)),
            "flipped",
        ),
    ];
    for (wire, what) in damaged {
        let (mut rx, mut part, _, storage) = packed_receiver(2 * B, true, now);
        let mut pos = 0;
        let mut recorded = None;
        while pos < wire.len() {
            if let Some(a) = rx.poll_action() {
                if let Action::RecordBlock { idx, good, .. } = a {
                    recorded = Some((idx, good));
                }
                let ev = apply(&mut part, &a).unwrap();
                rx.handle_event(now, ev);
                continue;
            }
            let fed = rx.handle_input(now, &wire[pos..]);
            if let Some(w) = fed.write {
                assert!(w.bytes.len() <= crate::compress::PACK_CHUNK, "{what}");
                let r = part.write_at(w.offset, &w.bytes);
                rx.handle_event(now, Event::Applied(r));
            }
            assert!(fed.used > 0, "{what}: stuck in {}", rx.state_name());
            pos += fed.used;
        }
        while let Some(a) = rx.poll_action() {
            if let Action::RecordBlock { idx, good, .. } = a {
                recorded = Some((idx, good));
            }
            let ev = apply(&mut part, &a).unwrap();
            rx.handle_event(now, ev);
        }
        assert!(rx.ending().is_none(), "{what}: {:?}", rx.ending());
        assert_eq!(recorded, Some((0, false)), "{what}");
        part.checkpoint().unwrap();
        let held = storage.durable_blocks(NAME).unwrap();
        assert_eq!(held.crc(0), None, "{what}");
    }
}

#[test]
fn a_good_compressed_frame_is_held_with_the_raw_crc() {
    let now = Instant::now();
    let raw = log_lines(B as usize);
    let good = crate::compress::BlockCompressor::new(3)
        .unwrap()
        .pack(&raw)
        .unwrap();
    // The good frame is taken: block 0 is held with the raw CRC-32.
    let (mut rx, mut part, _, storage) = packed_receiver(2 * B, true, now);
    let wire = packed_frame(0, B, &good, crc32fast::hash(&raw));
    let mut pos = 0;
    while pos < wire.len() {
        if let Some(a) = rx.poll_action() {
            let ev = apply(&mut part, &a).unwrap();
            rx.handle_event(now, ev);
            continue;
        }
        let fed = rx.handle_input(now, &wire[pos..]);
        if let Some(w) = fed.write {
            assert!(w.bytes.len() <= crate::compress::PACK_CHUNK);
            let r = part.write_at(w.offset, &w.bytes);
            rx.handle_event(now, Event::Applied(r));
        }
        pos += fed.used;
    }
    while let Some(a) = rx.poll_action() {
        let ev = apply(&mut part, &a).unwrap();
        rx.handle_event(now, ev);
    }
    assert!(rx.ending().is_none(), "{:?}", rx.ending());
    part.checkpoint().unwrap();
    let held = storage.durable_blocks(NAME).unwrap();
    assert_eq!(held.crc(0), Some(crc32fast::hash(&raw)));
}

/// Inside TLS: each side's channel binding (equal when nobody is in the
/// middle) and the tokens.
fn bound_pair(server: (&str, u8), client: (&str, u8)) -> Pair {
    let src = source(1000, 11);
    let rc = ReceiverConfig {
        token: Some(token(server.0)),
        binding: Some([server.1; 32]),
        ..ReceiverConfig::default()
    };
    let tc = SenderConfig {
        token: Some(token(client.0)),
        binding: Some([client.1; 32]),
        ..tx_cfg(&src)
    };
    let mut p = Pair::new(&MemStorage::new(), rc, tc, src);
    p.run();
    p
}

#[test]
fn inside_tls_the_server_proves_the_token_first_and_both_proofs_are_bound() {
    let ok = bound_pair(("a", 1), ("a", 1));
    assert_eq!(
        (ok.outcome(), ok.ending()),
        (Outcome::Stored, Ending::Stored)
    );
    // A wrong token: the client sees the server's proof fail and answers
    // zeros (nothing that could help guess the token); the server refuses
    // in its words.
    let wrong = bound_pair(("a", 1), ("b", 1));
    assert!(wrong.tx_seen.contains("Decline") && wrong.tx_seen.contains("AwaitRefusal"));
    assert!(matches!(
        wrong.outcome(),
        Outcome::Fault {
            code: Some(FaultCode::AuthFailed),
            ..
        }
    ));
    assert!(wrong.storage.file(NAME).is_none() && !wrong.storage.has_part(NAME));
    // A man in the middle: two connections, two bindings; the relayed
    // proof fails at the client, and its zeros fail at the server.
    let relayed = bound_pair(("a", 1), ("a", 2));
    assert!(relayed.tx_seen.contains("Decline"));
    assert!(matches!(
        relayed.outcome(),
        Outcome::Fault {
            code: Some(FaultCode::AuthFailed),
            ..
        }
    ));
    assert!(!relayed.storage.has_part(NAME));
    // A server that sends a bare challenge inside TLS gets no answer.
    let src = source(100, 12);
    let rc = ReceiverConfig {
        token: Some(token("a")),
        ..ReceiverConfig::default()
    };
    let tc = SenderConfig {
        token: Some(token("a")),
        binding: Some([1; 32]),
        ..tx_cfg(&src)
    };
    let mut bare = Pair::new(&MemStorage::new(), rc, tc, src);
    bare.run();
    assert_eq!(bare.outcome(), Outcome::Failed(Failure::ServerProof));
    // The wire form round-trips.
    let m = ServerMsg::BoundChallenge {
        nonce: [3; 32],
        proof: [4; 32],
    };
    let f = v2::encode_server_msg(&m);
    assert_eq!(f.len(), 5 + 64);
    assert_eq!(v2::parse_server_msg(f[0], &f[5..]).unwrap(), m);
    assert!(v2::parse_server_msg(f[0], &f[5..40]).is_err());
}

/// Parallel streams in memory: the first connection is granted a session
/// (J before the held list), its Sender hands the whole plan over as one
/// SendParallel; blocks 1 and 3 arrive "joined" (written by the owner
/// between its own frames), the rest as data frames of the first
/// connection; the end frame commits byte-identical data, and a damaged
/// block of the first connection is repaired on it alone.
#[test]
fn a_session_takes_joined_blocks_and_commits_once() {
    let src = source(5 * B as usize + 17, 41);
    let storage = MemStorage::new();
    let now = Instant::now();
    let mut tx = Sender::with_streams(tx_cfg(&src), now, Some(2));
    let mut rx = Receiver::new(ReceiverConfig::default(), [0; 32], now);
    let ticket = crate::session::Ticket::generate().unwrap();
    let mut part: Option<MemPart> = None;
    let mut parallel = None;
    let mut c2s: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        while let Some(b) = tx.poll_transmit(now) {
            c2s.extend(b);
        }
        let mut took = rx.handle_input(now, &c2s);
        if let Some(w) = took.write.take() {
            let r = part.as_mut().unwrap().write_at(w.offset, &w.bytes);
            rx.handle_event(now, Event::Applied(r));
        }
        c2s.drain(..took.used);
        if let Some(a) = rx.poll_action() {
            let ev = match a {
                Action::Admit { .. } => Event::Admitted(Ok(())),
                Action::Claim { .. } => Event::Claimed(Ok(())),
                Action::OpenHeld(id) => {
                    rx.grant_session(ticket.clone());
                    Event::Opened(storage.open(&id).map(|(p, h)| {
                        part = Some(p);
                        h
                    }))
                }
                other => apply(part.as_mut().unwrap(), &other).unwrap(),
            };
            rx.handle_event(now, ev);
        }
        while let Some(b) = rx.poll_transmit(now) {
            let mut pos = 0;
            while pos < b.len() {
                pos += tx.handle_input(now, &b[pos..]);
            }
        }
        match tx.poll_action() {
            Some(SendAction::SendParallel { ticket: t, blocks }) => {
                assert_eq!(t, ticket, "the J frame carried the session");
                assert_eq!(blocks, vec![0, 1, 2, 3, 4, 5]);
                parallel = Some(blocks);
                for &i in &[0u64, 2, 4, 5] {
                    let (o, l) = v2::block_range(src.len() as u64, B, i);
                    let bytes = &src[o as usize..(o + l) as usize];
                    let at = c2s.len() + 13 + 100;
                    c2s.extend(v2::encode_data_head(o, l as u32));
                    c2s.extend(bytes);
                    if i == 2 {
                        c2s[at] ^= 1; // Damaged on the first connection only.
                    }
                    c2s.extend(crc32fast::hash(bytes).to_be_bytes());
                }
            }
            Some(SendAction::SendBlock { idx, offset, len }) => {
                assert_eq!(idx, 2, "only the damaged block is repaired");
                let bytes = &src[offset as usize..(offset + len) as usize];
                c2s.extend(bytes);
                tx.handle_event(now, SendEvent::BlockSent(Ok(crc32fast::hash(bytes))));
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
        // The joined blocks, once the owner is between its own frames
        // and its first connection's frames are all in.
        if parallel.is_some() && c2s.is_empty() && rx.can_take_joined() {
            for i in [1u64, 3] {
                let (o, l) = v2::block_range(src.len() as u64, B, i);
                let bytes = &src[o as usize..(o + l) as usize];
                let crc = crc32fast::hash(bytes);
                rx.joining_block(i);
                let p = part.as_mut().unwrap();
                p.begin_block(i).unwrap();
                p.write_at(o, bytes).unwrap();
                p.record_block(i, crc, true).unwrap();
                rx.joined_block(now, i, crc);
            }
            let sent = (0..6)
                .map(|i| {
                    let (o, l) = v2::block_range(src.len() as u64, B, i);
                    (i, crc32fast::hash(&src[o as usize..(o + l) as usize]))
                })
                .collect();
            tx.handle_event(now, SendEvent::ParallelSent(Ok(sent)));
            parallel = None;
        }
        if tx.outcome().is_some() && rx.is_done() {
            break;
        }
    }
    assert_eq!(tx.outcome(), Some(&Outcome::Stored));
    assert_eq!(tx.repairs(), 1);
    assert_eq!(storage.file(NAME).as_deref(), Some(&src[..]));
}
