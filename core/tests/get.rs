//! Downloads (`get_file` against the real in-process server, over a
//! loopback relay that can cut or damage the server's bytes): a download
//! cut at every byte of the exchange's frame heads and at points through
//! the data resumes to the same bytes with nothing received twice; a block
//! damaged in transit is asked for again alone; a file rewritten on the
//! server while it is being sent is caught by the server's own check and
//! fetched anew; the same for compressed (`P`) frames. Plaintext (`Protocol::Legacy` makes the transport plain)
//! so the relay can see and flip the bytes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bigtransfer_core::client::get_file;
use bigtransfer_core::compress::{BlockCompressor, Compress};
use bigtransfer_core::{Control, Progress, Protocol, SendOptions};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 251 + seed * 7) % 253) as u8)
        .collect()
}

struct Fixture {
    served: common::Served,
}

impl std::ops::Deref for Fixture {
    type Target = common::Served;
    fn deref(&self) -> &common::Served {
        &self.served
    }
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        Fixture {
            served: common::Served::start(&format!("get-{tag}"), |_| {}),
        }
    }

    fn opts(&self, port: u16) -> SendOptions {
        let mut o = SendOptions::new("127.0.0.1", port);
        o.protocol = Protocol::Legacy;
        o.known_hosts = None;
        o.retries = 3;
        o.backoff_initial = Duration::from_millis(1);
        o.backoff_max = Duration::from_millis(1);
        o.io_timeout = Duration::from_secs(10);
        // Raw `D` frames, whose boundaries these tests compute; the
        // compressed ones have tests of their own below.
        o.compress = Compress::Off;
        o
    }
}

/// What the relay does to the server's bytes on its first connection.
#[derive(Clone, Copy)]
enum Harm {
    /// Close both ways after this many bytes.
    Cut(u64),
    /// XOR this byte with 0x55.
    Flip(u64),
}

/// A relay to `port` that harms only its first connection.
fn relay(port: u16, harm: Harm) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            std::thread::spawn(move || pump(c2, s2, None));
            std::thread::spawn(move || pump(s, c, first.then_some(harm)));
        }
    });
    me
}

fn pump(mut from: TcpStream, mut to: TcpStream, harm: Option<Harm>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let end = at + n as u64;
        match harm {
            Some(Harm::Cut(c)) if end >= c => {
                let _ = to.write_all(&chunk[..(c - at) as usize]);
                break;
            }
            Some(Harm::Flip(p)) if (at..end).contains(&p) => chunk[(p - at) as usize] ^= 0x55,
            _ => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        at = end;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn fetch(fx: &Fixture, port: u16, name: &str, dest: &Path) -> bigtransfer_core::client::GetOutcome {
    let o = fx.opts(port);
    get_file(name, dest, &o, false, &mut |_| Control::Continue)
        .unwrap_or_else(|e| panic!("get {name} through {port}: {e}"))
}

/// Where the server's frames start and end, for a file of `size` bytes in
/// blocks of `block`: magic, reference, then one data frame per block.
fn boundaries(size: usize, block: usize) -> Vec<u64> {
    let blocks = size.div_ceil(block);
    let mut at = 8 + 5 + 28 + 4 * blocks as u64;
    let mut v = vec![8, at];
    for i in 0..blocks {
        at += 13 + (block.min(size - i * block)) as u64 + 4;
        v.push(at);
    }
    v
}

#[test]
fn a_download_cut_anywhere_resumes_to_the_same_bytes() {
    let fx = Fixture::new("cut");
    let size = 2 * MIB + 3;
    let data = pattern(size, 1);
    std::fs::write(fx.store.join("c.bin"), &data).unwrap();
    let mut cuts: Vec<u64> = (0..70).collect();
    for b in boundaries(size, MIB) {
        cuts.extend([b.saturating_sub(1), b, b + 1, b + 13, b + 17]);
    }
    cuts.extend((0..(size as u64)).step_by(97 * 1024));
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let dest = fx.dir.join(format!("c.{cut}"));
        let out = fetch(&fx, relay(fx.port, Harm::Cut(cut)), "c.bin", &dest);
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "cut at {cut}: other bytes"
        );
        assert_eq!(out.crc32, crc32fast::hash(&data), "cut at {cut}");
        assert_eq!(
            out.bytes_received, size as u64,
            "cut at {cut}: a block came twice"
        );
        assert!(
            out.attempts >= 2 || cut >= boundaries(size, MIB)[4],
            "cut at {cut}"
        );
        std::fs::remove_file(&dest).unwrap();
    }
}

#[test]
fn a_block_damaged_in_transit_is_asked_for_again_alone() {
    let fx = Fixture::new("flip");
    let size = 3 * MIB + 10;
    let data = pattern(size, 2);
    std::fs::write(fx.store.join("d.bin"), &data).unwrap();
    // A byte in the middle of block 1's payload.
    let at = boundaries(size, MIB)[2] + 13 + 1000;
    let dest = fx.dir.join("d.got");
    let out = fetch(&fx, relay(fx.port, Harm::Flip(at)), "d.bin", &dest);
    assert!(std::fs::read(&dest).unwrap() == data);
    assert_eq!((out.attempts, out.blocks_repaired), (1, 1));
    assert_eq!(
        out.bytes_received,
        (size + MIB) as u64,
        "only block 1 again"
    );
}

#[test]
fn a_file_rewritten_on_the_server_mid_download_is_fetched_anew() {
    let fx = Fixture::new("changed");
    let size = 24 * MIB;
    let old = pattern(size, 3);
    let path = fx.store.join("m.bin");
    std::fs::write(&path, &old).unwrap();
    let mut new = old.clone();
    new[size - 10..].fill(0xEE);
    let mut o = fx.opts(fx.port);
    o.limit_rate = Some(16 << 20);
    let mut edited = false;
    let dest = fx.dir.join("m.got");
    let out = get_file("m.bin", &dest, &o, false, &mut |p| {
        if let (Progress::Sending { .. }, false) = (p, edited) {
            edited = true;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &new[size - 10..], (size - 10) as u64)
                .unwrap();
        }
        Control::Continue
    })
    .expect("fetched anew");
    assert!(out.restarted, "{out:?}");
    assert!(std::fs::read(&dest).unwrap() == new, "a mix of versions");
    assert_eq!(out.crc32, crc32fast::hash(&new));
}

/// Bytes of the server's answer before block 1's packed payload in a
/// download of `data` (blocks of 1 MiB) compressed at zstd `level`: magic,
/// the codec frame, the reference, block 0's `P` frame and block 1's head.
fn packed_block_1_at(data: &[u8], level: i32) -> u64 {
    let blocks = data.len().div_ceil(MIB) as u64;
    let wire0 = BlockCompressor::new(level)
        .unwrap()
        .pack(&data[..MIB])
        .unwrap()
        .len() as u64;
    8 + (5 + 4) + (5 + 28 + 4 * blocks) + (17 + wire0 + 4) + 17
}

#[test]
fn a_compressed_download_cut_anywhere_resumes_to_the_same_bytes() {
    let fx = Fixture::new("zcut");
    let size = 3 * MIB + 5;
    let data = pattern(size, 4);
    std::fs::write(fx.store.join("z.bin"), &data).unwrap();
    let block1 = packed_block_1_at(&data, 1);
    let mut cuts: Vec<u64> = (0..70).step_by(3).collect();
    cuts.extend((block1 - 40..block1 + 40).step_by(7));
    cuts.extend((0..block1 + 3000).step_by(331));
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let dest = fx.dir.join(format!("z.{cut}"));
        let mut o = fx.opts(relay(fx.port, Harm::Cut(cut)));
        o.compress = Compress::Zstd(1);
        let out = get_file("z.bin", &dest, &o, false, &mut |_| Control::Continue)
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "cut at {cut}: other bytes"
        );
        assert_eq!(
            out.bytes_received, size as u64,
            "cut at {cut}: a block came twice"
        );
        assert!(
            out.compress_agreed && out.compressed_blocks >= 3,
            "cut at {cut}: {out:?}"
        );
        assert!(out.wire_bytes < size as u64 / 10, "cut at {cut}: {out:?}");
        std::fs::remove_file(&dest).unwrap();
    }
}

#[test]
fn a_compressed_block_damaged_in_transit_is_asked_for_again_alone() {
    let fx = Fixture::new("zflip");
    let size = 3 * MIB + 10;
    let data = pattern(size, 5);
    std::fs::write(fx.store.join("e.bin"), &data).unwrap();
    // Bytes inside block 1's packed payload: its chunk length, its zstd
    // frame's header, and further into the compressed data.
    let at = packed_block_1_at(&data, 1);
    for flip in [at + 1, at + 9, at + 40] {
        let dest = fx.dir.join(format!("e.{flip}"));
        let mut o = fx.opts(relay(fx.port, Harm::Flip(flip)));
        o.compress = Compress::Zstd(1);
        let out = get_file("e.bin", &dest, &o, false, &mut |_| Control::Continue)
            .unwrap_or_else(|e| panic!("flip at {flip}: {e}"));
        assert!(std::fs::read(&dest).unwrap() == data, "flip at {flip}");
        assert_eq!(
            (out.attempts, out.blocks_repaired),
            (1, 1),
            "flip at {flip}"
        );
        assert_eq!(
            out.bytes_received,
            (size + MIB) as u64,
            "only block 1 again"
        );
        std::fs::remove_file(&dest).unwrap();
    }
}
