//! Compression end to end: `--compress auto|zstd[:LEVEL]|off` against the
//! real server over loopback, what `--json` reports about it, and a hostile
//! client's compressed frames (a lie and a bomb) never stored but asked
//! for again, and a bit flipped in transit repaired; inside TLS one zstd
//! stream per connection (blocks refer back to earlier ones), plaintext
//! per-block frames.
//! Not for the policy's arithmetic or the frame parser (core unit tests).

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use bigtransfer_core::compress::{compress_block, BlockCompressor, CODEC};
use bigtransfer_core::{proto, v2};

use crate::harness::*;

/// Realistic compressible data: web-server log lines with varying numbers
/// (about 6 : 1 with zstd), not zeros.
fn write_logs(path: &Path, size: usize) {
    let mut out = Vec::with_capacity(size + 128);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut i = 0u64;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = format!(
            "2026-11-30T{:02}:{:02}:{:02}Z host{} GET /api/v1/items/{} status={} bytes={} ms={}\n",
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            x % 7,
            (x >> 8) % 100_000,
            [200, 200, 200, 304, 404, 500][((x >> 30) % 6) as usize],
            (x >> 20) % 65_536,
            (x >> 40) % 900
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(size);
    std::fs::write(path, out).unwrap();
}

fn text_field(out: &std::process::Output, key: &str) -> String {
    let s = stdout(out);
    let pat = format!("\"{key}\": ");
    let i = s.find(&pat).unwrap_or_else(|| panic!("no {key} in {s}"));
    s[i + pat.len()..]
        .chars()
        .take_while(|&c| c != ',' && c != '}')
        .collect()
}

#[test]
fn a_compressible_file_travels_compressed_and_is_stored_identical() {
    isolate_cache();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("app.log");
    let size = 24 << 20;
    write_logs(&src, size);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    // auto: the first blocks are tried before anything is measured, so
    // some go compressed even where the CPU turns out to be the bottleneck.
    let out = send(&srv, &src, &["--name", "auto.log"]);
    assert_ok(&out);
    assert_same_file(&src, &t.path().join("store/auto.log"));
    assert_eq!(text_field(&out, "compress"), "\"auto\"");
    assert_eq!(text_field(&out, "compress_agreed"), "true");
    assert!(field(&out, "compressed_blocks") >= 1, "{}", stdout(&out));
    assert!(field(&out, "wire_bytes") < size as u64, "{}", stdout(&out));
    assert_eq!(field(&out, "bytes_sent"), size as u64);
    // zstd: every block, and the wire carries a fraction of the file.
    let out = send(&srv, &src, &["--name", "zstd.log", "--compress", "zstd:3"]);
    assert_ok(&out);
    assert_same_file(&src, &t.path().join("store/zstd.log"));
    assert_eq!(text_field(&out, "compress"), "\"zstd:3\"");
    assert_eq!(field(&out, "compressed_blocks"), 24);
    let wire = field(&out, "wire_bytes");
    assert!(wire * 3 < size as u64, "{wire} of {size}");
    assert!(
        srv.log.wait_for("zstd.log: CRC32_OK", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn auto_compresses_when_the_link_is_the_bottleneck() {
    // --limit-rate makes the link slow: auto then compresses every block
    // (the first before anything is measured, the rest because they pay).
    isolate_cache();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("slow.log");
    let size = 8 << 20;
    write_logs(&src, size);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let out = send(&srv, &src, &["--limit-rate", "4M"]);
    assert_ok(&out);
    assert_same_file(&src, &t.path().join("store/slow.log"));
    assert!(field(&out, "compressed_blocks") >= 7, "{}", stdout(&out));
    assert!(
        field(&out, "wire_bytes") * 3 < size as u64,
        "{}",
        stdout(&out)
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn random_data_goes_raw_with_auto_and_off_and_legacy_never_compress() {
    isolate_cache();
    let t = tempfile::tempdir().unwrap();
    let rnd = t.path().join("random.bin");
    let size = 12 << 20;
    write_random(&rnd, size, 5);
    let logs = t.path().join("app.log");
    write_logs(&logs, 4 << 20);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let out = send(&srv, &rnd, &[]);
    assert_ok(&out);
    assert_same_file(&rnd, &t.path().join("store/random.bin"));
    assert_eq!(field(&out, "compressed_blocks"), 0);
    assert_eq!(field(&out, "wire_bytes"), size);
    for (name, flags, proto, agreed) in [
        ("off.log", &["--compress", "off"][..], 2, "false"),
        ("legacy.log", &["--legacy"][..], 1, "false"),
    ] {
        let mut args = vec!["--name", name];
        args.extend_from_slice(flags);
        let out = send(&srv, &logs, &args);
        assert_ok(&out);
        assert_same_file(&logs, &t.path().join("store").join(name));
        assert_eq!(field(&out, "protocol"), proto, "{name}");
        assert_eq!(text_field(&out, "compress"), "\"off\"", "{name}");
        assert_eq!(text_field(&out, "compress_agreed"), agreed, "{name}");
        assert_eq!(field(&out, "wire_bytes"), 4 << 20, "{name}");
    }
    // The congestion control is reported as the kernel has it.
    assert!(!text_field(&out, "congestion").is_empty());
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn a_bad_compress_value_is_a_usage_error_with_words() {
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9",
            "--compress",
            "gzip",
            "x",
        ],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expected auto, off, zstd or zstd:LEVEL"),
        "{}",
        stderr(&out)
    );
}

/// Connects as a client that offers zstd for `size` bytes, and reads the
/// server's codec and held frames.
fn hostile_client(srv: &ServerProc, name: &str, size: u64) -> TcpStream {
    let h = proto::Header {
        filename: name.into(),
        filesize: size,
        crc32: 0,
    };
    let offer = v2::Offer {
        version: 2,
        block_size: 1 << 20,
        rev: v2::REVISION,
        source: None,
    };
    let frame = v2::encode_header_with_codecs(&h, None, offer, &[CODEC]).unwrap();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&frame).unwrap();
    assert_eq!(
        server_frame(&mut s, true),
        v2::ServerMsg::Codec(CODEC.into())
    );
    assert!(matches!(
        server_frame(&mut s, false),
        v2::ServerMsg::Held { .. }
    ));
    s
}

fn packed_frame(len: u64, payload: &[u8], crc: u32) -> Vec<u8> {
    let mut f = v2::encode_packed_head(0, len as u32, payload.len() as u32).to_vec();
    f.extend_from_slice(payload);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

/// A compressed block that lies about its bytes or explodes is never
/// taken (nor expanded past its chunk): it is asked for again, as a raw
/// block with a wrong CRC-32 is, and the upload ends with the true bytes.
#[test]
fn a_compressed_block_that_lies_or_explodes_is_never_stored_and_is_asked_again() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let block = 1u64 << 20;
    let logs = t.path().join("a.log");
    write_logs(&logs, block as usize);
    let raw = std::fs::read(&logs).unwrap();
    let good = BlockCompressor::new(3).unwrap().pack(&raw).unwrap();
    // 1 GiB of zeros in one zstd frame of about 40 KiB, for a 1 MiB chunk.
    let bomb = compress_block(&vec![0u8; 1 << 30], 1).unwrap();
    let mut bomb_payload = (bomb.len() as u32).to_be_bytes().to_vec();
    bomb_payload.extend_from_slice(&bomb);
    let cases = [
        (
            "lie",
            packed_frame(block, &good, crc32fast::hash(b"other bytes")),
        ),
        (
            "bomb",
            packed_frame(block, &bomb_payload, crc32fast::hash(&raw)),
        ),
    ];
    for (what, frame) in cases {
        let name = format!("{what}.log");
        let mut s = hostile_client(&srv, &name, block);
        s.write_all(&frame).unwrap();
        s.write_all(&v2::encode_end(crc32fast::hash(&raw))).unwrap();
        assert_eq!(
            server_frame(&mut s, false),
            v2::ServerMsg::Verdict(v2::Verdict::Repair(vec![0])),
            "{what}"
        );
        assert!(!store.join(&name).exists(), "{what}: stored before repair");
        s.write_all(&packed_frame(block, &good, crc32fast::hash(&raw)))
            .unwrap();
        s.write_all(&v2::encode_end(crc32fast::hash(&raw))).unwrap();
        assert_eq!(
            server_frame(&mut s, false),
            v2::ServerMsg::Verdict(v2::Verdict::Ok),
            "{what}"
        );
        assert_eq!(std::fs::read(store.join(&name)).unwrap(), raw, "{what}");
    }
    assert_eq!(srv.terminate().code(), Some(0));
}

/// On a plaintext link a bit flipped inside a compressed block costs that
/// block alone: it is repaired, not refused.
#[test]
fn a_bit_flipped_inside_a_compressed_block_is_repaired() {
    isolate_cache();
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let src = t.path().join("flip.log");
    let size = 8 << 20;
    write_logs(&src, size);
    // Far enough in to land inside a compressed block's payload.
    let proxy = crate::verified::flip_proxy(srv.addr, 300 << 10, 4);
    let port = proxy.port().to_string();
    let args = [
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--json",
        "--quiet",
        "--no-cache",
        "--compress",
        "zstd:3",
    ];
    let mut args: Vec<&str> = args.to_vec();
    args.push(src.to_str().unwrap());
    let out = client(&args, b"", &[]);
    assert_ok(&out);
    assert_eq!(field(&out, "attempts"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "repairs"), 1, "{}", stdout(&out));
    assert_eq!(field(&out, "blocks_resent"), 1, "{}", stdout(&out));
    assert_same_file(&src, &t.path().join("store/flip.log"));
    assert_eq!(srv.terminate().code(), Some(0));
}

/// A file whose 1 MiB blocks repeat one another (one 512 KiB random
/// pattern, a byte changed in each copy): a block alone compresses about
/// 2 : 1, a block that may refer back to the ones before it to almost
/// nothing.
fn write_repeats(path: &Path, size: usize) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let pattern: Vec<u8> = (0..512 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut out = Vec::with_capacity(size);
    let mut i = 0usize;
    while out.len() < size {
        let at = out.len();
        out.extend_from_slice(&pattern);
        out[at + (i * 7919) % pattern.len()] ^= 0x5a;
        i += 1;
    }
    out.truncate(size);
    std::fs::write(path, out).unwrap();
}

#[test]
fn inside_tls_blocks_refer_back_across_the_connection_and_plaintext_keeps_per_block_frames() {
    isolate_cache();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("rep.bin");
    let size = 16 << 20;
    write_repeats(&src, size);
    let mut wire = Vec::new();
    for (store, server_args) in [("tls", &[][..]), ("plain", &["--tls", "off"][..])] {
        let srv = ServerProc::start(&t.path().join(store), server_args);
        let out = send(&srv, &src, &["--compress", "zstd:3", "--streams", "1"]);
        assert_ok(&out);
        assert_same_file(&src, &t.path().join(store).join("rep.bin"));
        assert_eq!(
            field(&out, "compressed_blocks"),
            16,
            "{store}: {}",
            stdout(&out)
        );
        wire.push(field(&out, "wire_bytes"));
        assert_eq!(srv.terminate().code(), Some(0));
    }
    // Per-block frames hold two copies of the pattern's half a MiB each;
    // the stream sends it about once.
    let (stream, blocks) = (wire[0], wire[1]);
    assert!(blocks > 6 << 20, "per-block frames: {blocks} bytes");
    assert!(
        stream * 4 < blocks,
        "stream {stream} bytes, per-block {blocks}"
    );
    assert!(stream < 2 << 20, "stream {stream} bytes");
}

// ---- Downloads (`bigtransfer get --compress`) ----

/// `bigtransfer get --json -o DEST EXTRA... REMOTE` against `srv`, which
/// must succeed.
fn get_to(srv: &ServerProc, remote: &str, dest: &Path, extra: &[&str]) -> std::process::Output {
    let out = get_at(&srv.port(), remote, dest, &[&["--json"], extra].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    out
}

/// `bigtransfer get --quiet EXTRA... -o DEST REMOTE` against loopback `port`.
fn get_at(port: &str, remote: &str, dest: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = get_cmd(port, extra);
    cmd.arg("-o").arg(dest).arg(remote);
    output_within(&mut cmd, LONG, "get")
}

#[test]
fn a_compressible_file_downloads_compressed_and_identical_over_one_or_three_streams() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let size = 24u64 << 20;
    write_logs(&store.join("app.log"), size as usize);
    let srv = ServerProc::start(&store, &[]);
    // Paced, so that the joined streams take blocks too.
    for (i, streams) in ["1", "3"].into_iter().enumerate() {
        let dest = t.path().join(format!("got{i}.log"));
        let args = ["--compress", "zstd:3", "--streams", streams];
        let out = get_to(
            &srv,
            "app.log",
            &dest,
            &[&args[..], &["--limit-rate", "64M"]].concat(),
        );
        assert_same_file(&store.join("app.log"), &dest);
        assert_eq!(text_field(&out, "compress"), "\"zstd:3\"");
        assert_eq!(text_field(&out, "compress_agreed"), "true");
        assert_eq!(field(&out, "streams"), i as u64 * 2 + 1, "{}", stdout(&out));
        // Every block that arrived came compressed (a straggler's block
        // may arrive twice over several streams).
        let received = field(&out, "bytes_received");
        assert!(received >= size, "{}", stdout(&out));
        assert_eq!(
            field(&out, "compressed_blocks"),
            received >> 20,
            "{}",
            stdout(&out)
        );
        let wire = field(&out, "wire_bytes");
        assert!(wire * 3 < size, "{wire} of {size} on {streams} stream(s)");
    }
    // Every connection compressed blocks on its own: the first download's
    // one, and on the second at least the first and one joined stream.
    let lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("app.log: sent (") && l.contains("compress zstd:3: "))
            .filter(|l| !l.contains("no block compressed"))
            .count()
    };
    assert!(
        srv.log
            .wait_for("compress zstd:3: 24 block(s) of 25165824 bytes", LONG),
        "{}",
        srv.log.text()
    );
    assert!(
        wait_until(LONG, || lines(&srv.log.text()) >= 3),
        "{}",
        srv.log.text()
    );
    // auto (the default): agreed, and the first blocks are tried before
    // anything is measured.
    let dest = t.path().join("auto.log");
    let out = get_to(&srv, "app.log", &dest, &[]);
    assert_same_file(&store.join("app.log"), &dest);
    assert_eq!(text_field(&out, "compress"), "\"auto\"");
    assert_eq!(text_field(&out, "compress_agreed"), "true");
    assert!(field(&out, "compressed_blocks") >= 1, "{}", stdout(&out));
    assert!(field(&out, "wire_bytes") < size, "{}", stdout(&out));
    // Without --json the result line says what compression saved.
    let dest = t.path().join("line.log");
    let out = get_at(&srv.port(), "app.log", &dest, &["--compress", "zstd"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(line.contains("25165824 received as "), "{line}");
    assert!(
        line.contains(" bytes on the wire (24 block(s) compressed)"),
        "{line}"
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

#[test]
fn random_data_downloads_raw_with_auto_and_off_compresses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let size = 12u64 << 20;
    write_random(&store.join("random.bin"), size, 8);
    write_logs(&store.join("app.log"), 4 << 20);
    let srv = ServerProc::start(&store, &[]);
    let dest = t.path().join("random.bin");
    let out = get_to(&srv, "random.bin", &dest, &["--compress", "auto"]);
    assert_same_file(&store.join("random.bin"), &dest);
    assert_eq!(text_field(&out, "compress_agreed"), "true");
    assert_eq!(field(&out, "compressed_blocks"), 0, "{}", stdout(&out));
    assert_eq!(field(&out, "wire_bytes"), size);
    // off: nothing offered, so nothing agreed, on compressible data too.
    let dest = t.path().join("off.log");
    let out = get_to(&srv, "app.log", &dest, &["--compress", "off"]);
    assert_same_file(&store.join("app.log"), &dest);
    assert_eq!(text_field(&out, "compress"), "\"off\"");
    assert_eq!(text_field(&out, "compress_agreed"), "false");
    assert_eq!(field(&out, "compressed_blocks"), 0);
    assert_eq!(field(&out, "wire_bytes"), 4 << 20);
    assert_eq!(srv.terminate().code(), Some(0));
}

/// Speaks the download protocol by hand: the request (with or without
/// the compression offer), the frames before the reference, one want of
/// every block; returns the codec the server agreed to (if any) and the
/// tag of each block's frame, after checking the blocks' bytes.
fn raw_download(srv: &ServerProc, header: &[u8], file: &[u8]) -> (Option<String>, Vec<u8>) {
    use bigtransfer_core::getwire;
    use std::io::Read;
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(header).unwrap();
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).unwrap();
    assert_eq!(magic, v2::MAGIC);
    let mut codec = None;
    let reference = loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let mut p = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize];
        s.read_exact(&mut p).unwrap();
        if head[0] == getwire::TAG_REFERENCE {
            break getwire::Reference::decode(&p).unwrap();
        }
        match v2::parse_server_msg(head[0], &p).unwrap() {
            v2::ServerMsg::Codec(name) => codec = Some(name),
            other => panic!("unexpected {other:?} before the reference"),
        }
    };
    let all: Vec<u64> = (0..reference.count()).collect();
    s.write_all(&getwire::encode_want(&all)).unwrap();
    let mut tags = Vec::new();
    for i in all {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let mut p = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize];
        s.read_exact(&mut p).unwrap();
        let (off, len) = reference.range(i);
        let block = &file[off as usize..(off + len) as usize];
        let crc = u32::from_be_bytes(p[p.len() - 4..].try_into().unwrap());
        assert_eq!(
            crc,
            crc32fast::hash(block),
            "block {i}: the raw bytes' CRC-32"
        );
        let body = &p[..p.len() - 4];
        if head[0] == getwire::TAG_DATA {
            assert_eq!(&body[8..], block, "block {i}");
        } else {
            assert_eq!(body[8..12], (len as u32).to_be_bytes(), "block {i}");
            assert_eq!(unpack(&body[12..], len), block, "block {i}");
        }
        tags.push(head[0]);
    }
    s.write_all(&getwire::encode_want(&[])).unwrap();
    (codec, tags)
}

/// The raw bytes of a packed payload of `len` raw bytes.
fn unpack(payload: &[u8], len: u64) -> Vec<u8> {
    let mut u = bigtransfer_core::compress::Unpacker::new(len);
    let (mut out, mut at) = (Vec::new(), 0);
    while u.want() > 0 {
        let n = u.want();
        out.extend(u.feed(&payload[at..at + n]).unwrap().unwrap_or_default());
        at += n;
    }
    assert_eq!(at, payload.len(), "bytes after the last chunk");
    out
}

#[test]
fn an_old_client_without_the_offer_gets_raw_blocks_and_no_codec_frame() {
    use bigtransfer_core::compress::Compress;
    use bigtransfer_core::getwire;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    write_logs(&store.join("app.log"), (3 << 20) + 4321);
    let file = std::fs::read(store.join("app.log")).unwrap();
    let srv = ServerProc::start(&store, &[]);
    // The request of a client from before compression.
    let old = getwire::encode_get_header_ext("app.log", None, None).unwrap();
    let (codec, tags) = raw_download(&srv, &old, &file);
    assert_eq!(codec, None);
    assert_eq!(tags, b"DDDD");
    // The same request with the offer: agreed, and every block packed.
    let new = getwire::encode_get_header_with("app.log", None, None, Compress::Zstd(1)).unwrap();
    let (codec, tags) = raw_download(&srv, &new, &file);
    assert_eq!(codec.as_deref(), Some(CODEC));
    assert_eq!(tags, b"PPPP");
    assert!(
        srv.log.wait_for("compress zstd:1: 4 block(s)", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));
}

/// What a hostile download server sends for every block asked for.
#[derive(Clone, Copy)]
enum Hostile {
    /// A packed frame that decompresses to 64 MiB (the block is 1 MiB).
    Bomb,
    /// A well-formed packed frame of other bytes, with their own CRC-32.
    Lie,
    /// A packed frame without having agreed to compression first.
    Unagreed,
}

/// The one block of the hostile server's file (and its reference).
fn hostile_block() -> (Vec<u8>, bigtransfer_core::getwire::Reference) {
    let block: Vec<u8> = b"the true bytes of the file\n"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    let r = bigtransfer_core::getwire::Reference {
        size: block.len() as u64,
        block: 1 << 20,
        mtime_ns: 1,
        crcs: vec![crc32fast::hash(&block)],
    };
    (block, r)
}

/// A plaintext "server" that answers a get with a reference of one block,
/// then answers every want with a `how` frame, until the client goes.
fn hostile_server(how: Hostile) -> String {
    use bigtransfer_core::getwire;
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            if crate::peers::is_tls_hello(&c) {
                continue; // The client then comes back in plaintext.
            }
            let mut len = [0u8; 4];
            let _ = c.read_exact(&mut len);
            let _ = c.read_exact(&mut vec![0u8; u32::from_be_bytes(len) as usize]);
            let (block, r) = hostile_block();
            let mut out = v2::MAGIC.to_vec();
            if !matches!(how, Hostile::Unagreed) {
                out.extend(v2::encode_server_msg(&v2::ServerMsg::Codec(CODEC.into())));
            }
            out.extend(getwire::encode_frame(getwire::TAG_REFERENCE, &r.encode()));
            let _ = c.write_all(&out);
            let payload = match how {
                Hostile::Bomb => {
                    let bomb = compress_block(&vec![0u8; 64 << 20], 1).unwrap();
                    [(bomb.len() as u32).to_be_bytes().to_vec(), bomb].concat()
                }
                Hostile::Lie => {
                    let other: Vec<u8> = block.iter().map(|b| b.to_ascii_uppercase()).collect();
                    BlockCompressor::new(1).unwrap().pack(&other).unwrap()
                }
                Hostile::Unagreed => BlockCompressor::new(1).unwrap().pack(&block).unwrap(),
            };
            let crc = match how {
                Hostile::Lie => crc32fast::hash(&block.to_ascii_uppercase()),
                _ => r.crcs[0],
            };
            let mut frame = getwire::encode_packed_head(0, 1 << 20, payload.len() as u32).to_vec();
            frame.extend_from_slice(&payload);
            frame.extend_from_slice(&crc.to_be_bytes());
            loop {
                let mut head = [0u8; 5];
                if c.read_exact(&mut head).is_err() {
                    break;
                }
                let mut p = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize];
                if c.read_exact(&mut p).is_err() || p[..4] == [0, 0, 0, 0] {
                    break;
                }
                if c.write_all(&frame).is_err() {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn a_hostile_servers_compressed_blocks_are_refused_in_words_and_never_kept() {
    let t = tempfile::tempdir().unwrap();
    let cases = [
        (
            Hostile::Bomb,
            "blocks kept arriving damaged after 8 rounds of repair (the last: block 0: refused a compressed block from the peer: the frame declares 67108864 bytes but the block is 1048576 bytes)",
        ),
        (
            Hostile::Lie,
            "blocks kept arriving damaged after 8 rounds of repair (the last: block 0 arrived as other bytes than the reference's",
        ),
        (
            Hostile::Unagreed,
            "the server sent a compressed block, but no compression was agreed on this connection",
        ),
    ];
    for (how, words) in cases {
        let port = hostile_server(how);
        let dest = t.path().join("got.txt");
        let out = get_at(
            &port,
            "file.txt",
            &dest,
            &["--streams", "1", "--retries", "0"],
        );
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).contains(words), "{words}\n{}", stderr(&out));
        assert!(!dest.exists(), "a refused block was delivered");
        // The client writes a block's pieces as they come and counts it
        // held only once its CRC-32 matched: refused bytes may sit in the
        // part (never counted: a resume checks each block's CRC-32), but
        // never past the block's size nor under the final name.
        let (part, _) = bigtransfer_core::client::part_paths(&dest);
        if part.exists() {
            let held = std::fs::read(&part).unwrap();
            assert_eq!(held.len(), 1 << 20, "the part grew past the file");
            assert_ne!(crc32fast::hash(&held), hostile_block().1.crcs[0]);
        }
    }
}

#[test]
fn auto_compresses_a_download_when_the_link_is_the_bottleneck() {
    // The client reads at 4 MB/s (--limit-rate): the server's socket
    // fills and its writes take the link's pace, so compressing pays.
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let size = 24u64 << 20;
    write_logs(&store.join("slow.log"), size as usize);
    let srv = ServerProc::start(&store, &[]);
    let dest = t.path().join("slow.log");
    let args = ["--limit-rate", "4M", "--streams", "1"];
    let out = get_to(&srv, "slow.log", &dest, &args);
    assert_same_file(&store.join("slow.log"), &dest);
    // Raw, that is 6 s; the first blocks fill the socket buffers raw
    // before the writes show the link's pace.
    let packed = field(&out, "compressed_blocks");
    assert!(packed >= 12, "{}", stdout(&out));
    // These logs shrink about 4.75 : 1: each compressed block saves well
    // over half of its MiB on the wire.
    assert!(
        field(&out, "wire_bytes") < size - packed * (1 << 19),
        "{}",
        stdout(&out)
    );
    assert_eq!(srv.terminate().code(), Some(0));
}
