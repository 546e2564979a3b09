//! Hostile and broken clients: each is refused or cut off, logged with the
//! peer address and reason, nothing outside the storage directory is
//! touched, and the server goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;

pub fn send_header(s: &mut TcpStream, name: &str, size: u64, crc: u32) {
    let mut json = String::from("{\"filename\": ");
    // Enough JSON escaping for the names used here.
    json.push('"');
    for c in name.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            c if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
            c => json.push(c),
        }
    }
    json.push_str(&format!("\", \"filesize\": {size}, \"crc32\": {crc}}}"));
    send_raw_header(s, json.as_bytes());
}

fn send_raw_header(s: &mut TcpStream, json: &[u8]) {
    s.write_all(&(json.len() as u32).to_be_bytes()).unwrap();
    s.write_all(json).unwrap();
}

/// Reads until EOF (bounded): what the server sent before closing.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

/// Lists every path under `root` (to prove nothing appeared outside).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn upload_raw(srv: &ServerProc, name: &str, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, name, data.len() as u64, crc32fast::hash(data));
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    assert_eq!(u64::from_be_bytes(off), 0);
    s.write_all(data).unwrap();
    read_to_close(&mut s)
}

#[test]
fn hostile_names_stay_inside_the_storage_directory() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("sub/store");
    let srv = ServerProc::start(&store, &[]);
    let before = tree(t.path());
    // Reduced to their base name and stored inside.
    for (name, stored) in [
        ("../x", "x"),
        ("/etc/passwd", "passwd"),
        ("a\\b", "b"),
        ("../../sub/y", "y"),
    ] {
        let data = format!("content of {name}");
        assert_eq!(
            upload_raw(&srv, name, data.as_bytes()),
            b"CRC32_OK",
            "{name}"
        );
        assert_eq!(
            std::fs::read(store.join(stored)).unwrap(),
            data.as_bytes(),
            "{name}"
        );
    }
    // Refused outright: the connection closes with no offset.
    let long = "n".repeat(300);
    for name in [
        "x\0y",
        "",
        ".",
        "..",
        "dir/",
        "tab\tname",
        long.as_str(),
        ".bigtransfer",
        ".BIGTRANSFER",
    ] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        send_header(&mut s, name, 3, 0);
        assert_eq!(
            read_to_close(&mut s),
            b"",
            "name {name:?} should be refused"
        );
    }
    assert!(srv.log.wait_for("refused file name", LONG));
    assert!(
        srv.log.wait_for("127.0.0.1:", LONG),
        "log lines carry the peer address"
    );
    let after = tree(t.path());
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    for p in &new {
        assert!(
            p.starts_with("sub/store/"),
            "created outside the storage directory: {p}"
        );
    }
    assert!(!Path::new("/etc/passwd.part").exists());
    // Still serving.
    assert_eq!(upload_raw(&srv, "after.bin", b"still here"), b"CRC32_OK");
}

#[test]
fn malformed_headers_are_refused_and_logged() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"hello".to_vec()),
        ("array", b"[1, 2]".to_vec()),
        (
            "missing key",
            br#"{"filename": "a", "filesize": 1}"#.to_vec(),
        ),
        (
            "negative size",
            br#"{"filename": "a", "filesize": -1, "crc32": 0}"#.to_vec(),
        ),
        (
            "float size",
            br#"{"filename": "a", "filesize": 1.5, "crc32": 0}"#.to_vec(),
        ),
        (
            "absurd size",
            br#"{"filename": "a", "filesize": 99999999999999999999, "crc32": 0}"#.to_vec(),
        ),
        (
            "crc too big",
            br#"{"filename": "a", "filesize": 1, "crc32": 4294967296}"#.to_vec(),
        ),
        (
            "string size",
            br#"{"filename": "a", "filesize": "1", "crc32": 0}"#.to_vec(),
        ),
        (
            "bad utf8",
            b"{\"filename\": \"\xff\", \"filesize\": 1, \"crc32\": 0}".to_vec(),
        ),
        (
            "deep nesting",
            [b"{\"x\": ".to_vec(), vec![b'['; 10000]].concat(),
        ),
    ];
    for (what, json) in &cases {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        send_raw_header(&mut s, json);
        assert_eq!(
            read_to_close(&mut s),
            b"",
            "{what}: expected the connection to close with no reply"
        );
    }
    // Header length 0 and over 64 KiB.
    for len in [0u32, 64 * 1024 + 1, u32::MAX] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(&len.to_be_bytes()).unwrap();
        assert_eq!(read_to_close(&mut s), b"", "header length {len}");
    }
    assert!(
        srv.log.wait_for("is over the limit", LONG) || srv.log.wait_for("header length", LONG),
        "{}",
        srv.log.text()
    );
    assert!(srv.log.wait_for("absurd", LONG), "{}", srv.log.text());
    // A size larger than the free space is refused before any byte is stored.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "huge.bin", i64::MAX as u64, 0);
    assert_eq!(read_to_close(&mut s), b"");
    assert!(
        srv.log.wait_for("free on the server", LONG),
        "{}",
        srv.log.text()
    );
    assert!(!store.join("huge.bin").exists() && !store.join("a").exists());
    assert_eq!(upload_raw(&srv, "fine.bin", b"fine"), b"CRC32_OK");
}

#[test]
fn max_file_size_is_enforced() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--max-file-size", "1K"]);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "big.bin", 1025, 0);
    assert_eq!(read_to_close(&mut s), b"");
    assert!(
        srv.log.wait_for("over the limit of 1024", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(upload_raw(&srv, "small.bin", &[1u8; 1024]), b"CRC32_OK");
}

#[test]
fn stalled_client_is_cut_off_by_the_idle_timeout() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--timeout", "1s"]);
    // Silent from the start.
    let mut silent = TcpStream::connect(srv.addr).unwrap();
    // Stalls in the middle of the data.
    let mut mid = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut mid, "stall.bin", 1000, 0);
    let mut off = [0u8; 8];
    mid.read_exact(&mut off).unwrap();
    mid.write_all(&[1u8; 10]).unwrap();
    assert_eq!(read_to_close(&mut silent), b"");
    assert_eq!(read_to_close(&mut mid), b"");
    assert!(srv.log.wait_for("idle timeout", LONG), "{}", srv.log.text());
    // The stalled upload is resumable from what arrived.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "stall.bin", 1000, 0);
    s.read_exact(&mut off).unwrap();
    assert_eq!(u64::from_be_bytes(off), 10);
}

#[test]
fn disconnect_at_every_stage_leaves_the_server_serving() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let data = vec![5u8; 5000];
    let crc = crc32fast::hash(&data);
    let header = {
        let json = format!("{{\"filename\": \"cut.bin\", \"filesize\": 5000, \"crc32\": {crc}}}");
        [
            (json.len() as u32).to_be_bytes().to_vec(),
            json.into_bytes(),
        ]
        .concat()
    };
    // Cut inside the length, inside the JSON, right after it, inside the data.
    for cut in [1, 3, 4, 10, header.len()] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(&header[..cut]).unwrap();
        drop(s);
    }
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&header).unwrap();
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    s.write_all(&data[..1234]).unwrap();
    drop(s);
    assert!(
        srv.log.wait_for("client disconnected at byte 1234", LONG),
        "{}",
        srv.log.text()
    );
    // Resume exactly where it broke.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&header).unwrap();
    s.read_exact(&mut off).unwrap();
    assert_eq!(u64::from_be_bytes(off), 1234);
    s.write_all(&data[1234..]).unwrap();
    assert_eq!(read_to_close(&mut s), b"CRC32_OK");
    assert_eq!(std::fs::read(srv.dir.join("cut.bin")).unwrap(), data);
}

#[test]
fn a_new_connection_for_the_same_name_takes_over_a_stale_one() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let crc = crc32fast::hash(&data);
    // A connection that looks alive but sends nothing more (a dead client
    // whose FIN never arrived).
    let mut stale = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut stale, "same.bin", data.len() as u64, crc);
    let mut off = [0u8; 8];
    stale.read_exact(&mut off).unwrap();
    // On loopback these bytes are in the server's socket (or its buffer)
    // once write_all returns; the takeover makes the old connection store
    // them before it lets go.
    stale.write_all(&data[..50_000]).unwrap();
    // The reconnecting client takes over and resumes where the stale one was.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "same.bin", data.len() as u64, crc);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.read_exact(&mut off).unwrap();
    assert_eq!(u64::from_be_bytes(off), 50_000);
    s.write_all(&data[50_000..]).unwrap();
    assert_eq!(read_to_close(&mut s), b"CRC32_OK");
    assert_eq!(std::fs::read(srv.dir.join("same.bin")).unwrap(), data);
    assert!(srv.log.wait_for("taking over", LONG));
    // The stale connection was ended.
    assert_eq!(read_to_close(&mut stale), b"");
}

#[test]
fn when_full_idle_connections_are_evicted_but_uploads_are_not() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--max-connections", "2"]);
    // Two connections that never send a header fill the server...
    let mut idle1 = TcpStream::connect(srv.addr).unwrap();
    let _idle2 = TcpStream::connect(srv.addr).unwrap();
    // ...yet a real client is served at once: the oldest idle one makes room.
    assert_eq!(upload_raw(&srv, "cap.bin", b"abc"), b"CRC32_OK");
    assert!(
        srv.log.wait_for("evicted: server full", LONG),
        "{}",
        srv.log.text()
    );
    assert_eq!(
        read_to_close(&mut idle1),
        b"",
        "the oldest idle connection was evicted"
    );

    // Two uploads in progress are never evicted: a third client is refused.
    let mut ups = Vec::new();
    for name in ["u1.bin", "u2.bin"] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        send_header(&mut s, name, 100, 0);
        let mut off = [0u8; 8];
        s.read_exact(&mut off).unwrap();
        s.write_all(&[1u8; 10]).unwrap();
        ups.push(s);
    }
    let mut third = TcpStream::connect(srv.addr).unwrap();
    assert_eq!(read_to_close(&mut third), b"");
    assert!(
        srv.log.wait_for("uploads already running", LONG),
        "{}",
        srv.log.text()
    );
    for s in &mut ups {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err(), "a running upload was cut off");
    }
}

#[test]
fn a_flood_of_idle_connections_does_not_lock_out_a_real_client() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(srv.addr).ok())
        .collect();
    assert!(
        flood.len() >= 200,
        "could open only {} connections",
        flood.len()
    );
    let src = t.path().join("real.bin");
    write_random(&src, 2 << 20, 60);
    let out = send(&srv, &src, &["--retries", "0"]);
    assert_ok(&out);
    assert_same_file(&src, &t.path().join("store/real.bin"));
    drop(flood);
}

#[test]
fn symlinks_planted_in_the_storage_directory_are_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let srv = ServerProc::start(&store, &[]);

    // 1. The final name is a symlink to a file outside: it is replaced, the
    //    target untouched.
    std::os::unix::fs::symlink(&victim, store.join("a.bin")).unwrap();
    assert_eq!(upload_raw(&srv, "a.bin", b"new content"), b"CRC32_OK");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(store.join("a.bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(store.join("a.bin")).unwrap(), b"new content");

    // 2. A held part replaced by a symlink to a file outside: removed, never
    //    written through; the upload starts over and completes.
    let data = vec![3u8; 10_000];
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "b.bin", data.len() as u64, crc32fast::hash(&data));
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    s.write_all(&data[..4000]).unwrap();
    drop(s);
    assert!(srv.log.wait_for("held part kept", LONG));
    let part = held_parts(&store).pop().unwrap();
    std::fs::remove_file(&part).unwrap();
    std::os::unix::fs::symlink(&victim, &part).unwrap();
    assert_eq!(upload_raw(&srv, "b.bin", &data), b"CRC32_OK");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(store.join("b.bin")).unwrap(), data);

    // 3. The state directory swapped for a symlink to a directory outside
    //    while the server runs: the server keeps using the directory it opened.
    std::fs::rename(store.join(".bigtransfer"), store.join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&outside, store.join(".bigtransfer")).unwrap();
    assert_eq!(upload_raw(&srv, "c.bin", b"third"), b"CRC32_OK");
    assert_eq!(std::fs::read(store.join("c.bin")).unwrap(), b"third");
    let mut names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("victim.txt")],
        "nothing written outside"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_damaged_checkpoint_record_is_never_trusted() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let data = vec![9u8; 50_000];
    let crc = crc32fast::hash(&data);
    for (damage, legacy) in [("truncate", true), ("flip", true), ("truncate", false)] {
        let srv = ServerProc::start(&store, &[]);
        let mut s = TcpStream::connect(srv.addr).unwrap();
        send_header(&mut s, "d.bin", data.len() as u64, crc);
        let mut off = [0u8; 8];
        s.read_exact(&mut off).unwrap();
        s.write_all(&data[..20_000]).unwrap();
        drop(s);
        assert!(srv.log.wait_for("held part kept", LONG));
        assert_eq!(srv.terminate().code(), Some(0));
        let meta = std::fs::read_dir(store.join(".bigtransfer"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "meta"))
            .unwrap();
        let mut bytes = std::fs::read(&meta).unwrap();
        match damage {
            "truncate" => bytes.truncate(100),
            _ => bytes[40] ^= 0xff,
        }
        std::fs::write(&meta, &bytes).unwrap();
        // The server starts, says so, and resumes nothing it cannot vouch for.
        let srv = ServerProc::start(&store, &[]);
        let src = t.path().join("d.bin");
        std::fs::write(&src, &data).unwrap();
        let out = send(&srv, &src, if legacy { &["--legacy"] } else { &[] });
        assert_ok(&out);
        assert_eq!(field(&out, "resumed_from"), 0, "{damage}");
        assert!(
            srv.log.wait_for("checkpoint record", LONG),
            "{}",
            srv.log.text()
        );
        assert_eq!(std::fs::read(store.join("d.bin")).unwrap(), data);
        std::fs::remove_file(store.join("d.bin")).unwrap();
    }
}

#[test]
fn a_held_part_deleted_under_the_server_is_started_over_not_trusted() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(
        &mut s,
        "gone.bin",
        data.len() as u64,
        crc32fast::hash(&data),
    );
    let mut off = [0u8; 8];
    s.read_exact(&mut off).unwrap();
    s.write_all(&data[..12_000]).unwrap();
    drop(s);
    assert!(srv.log.wait_for("held part kept", LONG));
    for p in held_parts(&store) {
        std::fs::remove_file(p).unwrap();
    }
    // The checkpoint record still claims 12000 bytes; the server must not
    // believe it without the bytes.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(
        &mut s,
        "gone.bin",
        data.len() as u64,
        crc32fast::hash(&data),
    );
    s.read_exact(&mut off).unwrap();
    assert_eq!(u64::from_be_bytes(off), 0);
    s.write_all(&data).unwrap();
    assert_eq!(read_to_close(&mut s), b"CRC32_OK");
    assert_eq!(std::fs::read(store.join("gone.bin")).unwrap(), data);
    assert!(srv.log.wait_for("part missing", LONG), "{}", srv.log.text());
}
