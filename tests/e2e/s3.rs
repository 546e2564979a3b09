//! Servers over an S3 object store (`--store s3://...`): two server
//! processes over one bucket act as two stateless nodes. Needs a real
//! store, started by `tests/s3/run.sh` (BT_S3_* and AWS_* variables);
//! without one each test prints "skipped: no store" and passes.

use std::path::Path;
use std::time::SystemTime;

use bigtransfer_core::s3::{Client, Config, STATE_DIR};

use crate::harness::*;

/// The store's endpoints (the second gateway if there is one), the bucket
/// and a prefix of this test's own; `None` without a store.
struct Store {
    endpoints: [String; 2],
    bucket: String,
    prefix: String,
}

impl Store {
    fn get(test: &str) -> Option<Store> {
        let Ok(e1) = std::env::var("BT_S3_ENDPOINT") else {
            eprintln!("{test}: skipped: no store (run tests/s3/run.sh)");
            return None;
        };
        let e2 = std::env::var("BT_S3_ENDPOINT2").unwrap_or_else(|_| e1.clone());
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Some(Store {
            endpoints: [e1, e2],
            bucket: std::env::var("BT_S3_BUCKET").unwrap_or_else(|_| "bt-test".into()),
            prefix: format!("e2e/{test}-{}-{nanos}", std::process::id()),
        })
    }

    /// A server (node 0 or 1) storing into the bucket.
    fn server(&self, node: usize, dir: &Path, extra: &[&str]) -> ServerProc {
        let url = format!("s3://{}/{}", self.bucket, self.prefix);
        let mut args = vec!["--store", &url, "--s3-endpoint", &self.endpoints[node]];
        args.extend_from_slice(extra);
        ServerProc::start(&dir.join(format!("node{node}")), &args)
    }

    fn client(&self) -> Client {
        let cfg = Config::from_env(
            &self.endpoints[0],
            "us-east-1",
            &self.bucket,
            &format!("{}/", self.prefix),
        )
        .expect("credentials in the environment");
        Client::new(cfg).expect("client")
    }

    /// Parts recorded in the upload's state object (0 if none).
    fn parts_recorded(&self, name: &str) -> usize {
        match self
            .client()
            .get_small(&format!("{STATE_DIR}/{name}"), 1 << 20)
        {
            Ok((b, _)) => String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| l.starts_with("part "))
                .count(),
            Err(_) => 0,
        }
    }

    /// The stored object, read back whole, and its stored CRC-32.
    fn object(&self, name: &str) -> (Vec<u8>, Option<u32>) {
        let c = self.client();
        let info = c.head_object(name).expect("the object exists");
        let mut got = Vec::new();
        c.get_range(name, 0, info.size, &mut got)
            .expect("read back");
        (got, info.crc32)
    }
}

fn assert_object_is(store: &Store, name: &str, src: &Path) {
    let want = std::fs::read(src).unwrap();
    let (got, crc) = store.object(name);
    assert_eq!(got.len(), want.len(), "object size");
    assert!(got == want, "object bytes differ from the source");
    assert_eq!(
        crc,
        Some(crc32fast::hash(&want)),
        "stored FULL_OBJECT CRC-32"
    );
}

fn slow_client(srv: &ServerProc, file: &Path, rate: &str) -> std::process::Child {
    spawn_client(srv, file, &["--limit-rate", rate])
}

#[test]
fn an_upload_through_the_server_lands_as_the_object() {
    let Some(store) = Store::get("lands") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("land.bin");
    write_random(&src, 21 * 1024 * 1024 + 77, 31);
    let srv = store.server(0, t.path(), &[]);
    assert_ok(&send(&srv, &src, &[]));
    assert_object_is(&store, "land.bin", &src);
    assert_eq!(
        store.parts_recorded("land.bin"),
        0,
        "state object left behind"
    );
    assert!(
        srv.log.wait_for("storing into s3://", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn an_upload_killed_on_node_a_resumes_on_node_b_sending_only_the_rest() {
    let Some(store) = Store::get("resume") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("resume.bin");
    let size = 64 * 1024 * 1024 + 333;
    write_random(&src, size, 2);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &[]);
    let mut slow = slow_client(&a, &src, "20M");
    assert!(
        wait_until(LONG, || store.parts_recorded("resume.bin") >= 2),
        "no parts recorded; A's log:\n{}",
        a.log.text()
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    assert!(a.log.wait_for("held part kept", LONG), "{}", a.log.text());
    let recorded = store.parts_recorded("resume.bin") as u64;

    let out = send(&b, &src, &[]);
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    // Whole parts of 8 MiB are what the store holds.
    assert!(
        from >= recorded * (8 << 20) && from % (8 << 20) == 0 && from > 0,
        "resumed from {from}, {recorded} parts recorded"
    );
    assert_eq!(
        field(&out, "bytes_sent"),
        size - from,
        "only the rest is sent"
    );
    assert!(b.log.wait_for("holds", LONG), "{}", b.log.text());
    assert_object_is(&store, "resume.bin", &src);
}

#[test]
fn a_node_killed_mid_upload_is_taken_over_once_its_lease_is_stale() {
    let Some(store) = Store::get("stale") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("stale.bin");
    let size = 40 * 1024 * 1024;
    write_random(&src, size, 5);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &["--s3-lease-stale", "2s"]);
    let mut slow = slow_client(&a, &src, "20M");
    assert!(
        wait_until(LONG, || store.parts_recorded("stale.bin") >= 1),
        "no parts recorded; A's log:\n{}",
        a.log.text()
    );
    a.kill9();
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    // B refuses while A's lease is fresh, then takes over; the client retries.
    let out = send(&b, &src, &[]);
    assert_ok(&out);
    assert!(field(&out, "resumed_from") >= 8 << 20, "{}", stdout(&out));
    assert!(
        b.log.wait_for("another server node", LONG),
        "B never refused while A's lease was fresh:\n{}",
        b.log.text()
    );
    assert_object_is(&store, "stale.bin", &src);
}

#[test]
fn two_clients_racing_on_one_name_across_two_nodes_never_mix() {
    let Some(store) = Store::get("race") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    std::fs::create_dir_all(&x).unwrap();
    std::fs::create_dir_all(&y).unwrap();
    let (fx, fy) = (x.join("same.bin"), y.join("same.bin"));
    let size = 24 * 1024 * 1024;
    write_random(&fx, size, 7);
    write_random(&fy, size, 8);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &[]);
    let cx = slow_client(&a, &fx, "8M");
    assert!(
        a.log.wait_for("receiving same.bin", LONG),
        "{}",
        a.log.text()
    );
    let cy = slow_client(&b, &fy, "8M");
    let (code_x, err_x) = finish_client(cx);
    let (code_y, err_y) = finish_client(cy);
    assert_eq!(code_x, Some(0), "{err_x}");
    assert_eq!(code_y, Some(0), "{err_y}");
    assert!(
        b.log
            .text()
            .contains("being uploaded through another server node"),
        "B never refused the racing upload:\n{}",
        b.log.text()
    );
    // Y waited for X's lease, so Y's upload was the last: its bytes alone.
    assert_object_is(&store, "same.bin", &fy);
}

#[test]
fn wrong_credentials_stop_the_server_with_the_stores_words() {
    let Some(store) = Store::get("creds") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let mut srv = std::process::Command::new(BIN)
        .args(["server", "--port", "0", "--bind", "127.0.0.1", "--dir"])
        .arg(t.path().join("d"))
        .args(["--store", &format!("s3://{}/x", store.bucket)])
        .args(["--s3-endpoint", &store.endpoints[0]])
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut srv, LONG);
    if status.is_none() {
        let _ = srv.kill();
        let _ = srv.wait();
    }
    let mut err = String::new();
    if let Some(mut e) = srv.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let status = status.expect("the server must refuse to start, not serve");
    assert_ne!(status.code(), Some(0));
    assert!(err.contains("refused the credentials"), "{err}");
}

#[test]
fn a_legacy_upload_killed_on_node_a_resumes_on_node_b_from_whole_parts() {
    let Some(store) = Store::get("legacy") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("old.bin");
    let size = 40 * 1024 * 1024 + 5;
    write_random(&src, size, 21);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &[]);
    let mut slow = spawn_client(&a, &src, &["--legacy", "--limit-rate", "20M"]);
    assert!(
        wait_until(LONG, || store.parts_recorded("old.bin") >= 2),
        "no parts recorded; A's log:\n{}",
        a.log.text()
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    assert!(a.log.wait_for("held part kept", LONG), "{}", a.log.text());

    let out = send(&b, &src, &["--legacy"]);
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    assert!(
        from >= 16 << 20 && from % (8 << 20) == 0,
        "resumed from {from}"
    );
    assert_eq!(
        field(&out, "bytes_sent"),
        size - from,
        "only the rest is sent"
    );
    assert_eq!(field(&out, "protocol"), 1);
    assert_object_is(&store, "old.bin", &src);
}

#[test]
fn a_bit_flipped_on_the_wire_never_reaches_the_object() {
    let Some(store) = Store::get("flip") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("flip.bin");
    let mib = 1024 * 1024;
    let size = 20 * mib + 3;
    write_random(&src, size, 74);
    // Plaintext: inside TLS a flipped bit ends the connection instead.
    let srv = store.server(0, t.path(), &["--tls", "off"]);
    for legacy in [false, true] {
        // Each round must store the object itself.
        let _ = store.client().delete_object("flip.bin");
        let proxy = crate::verified::flip_proxy(srv.addr, 5 * mib + mib / 2, 4);
        let port = proxy.port().to_string();
        let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--json", "--quiet"];
        args.push("--no-cache");
        if legacy {
            args.push("--legacy");
        }
        args.push(src.to_str().unwrap());
        let out = client(&args, b"", &[]);
        assert_ok(&out);
        if legacy {
            // Protocol 1 can only start over; the store never saw a
            // completion of the damaged stream.
            assert_eq!(field(&out, "attempts"), 2, "{}", stdout(&out));
        } else {
            assert_eq!(field(&out, "repairs"), 1, "{}", stdout(&out));
            assert_eq!(
                field(&out, "bytes_sent"),
                size + mib,
                "only the block again"
            );
        }
        assert_object_is(&store, "flip.bin", &src);
    }
    assert!(
        srv.log.wait_for("arrived damaged", LONG),
        "{}",
        srv.log.text()
    );
}

/// A store of a test's own (tests/s3/start.sh on ports from
/// BT_S3_RESTART_BASE, default 18380, state in `dir`), stopped by PID on
/// drop.
struct PrivateStore {
    dir: std::path::PathBuf,
    base: String,
    endpoint: String,
}

impl PrivateStore {
    fn script(name: &str) -> String {
        format!("{}/../tests/s3/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn run(&self, script: &str, arg: &str) -> std::process::Output {
        std::process::Command::new("bash")
            .arg(Self::script(script))
            .arg(arg)
            .env("BT_S3_DIR", &self.dir)
            .env("BT_S3_BASE", &self.base)
            .output()
            .expect("bash")
    }

    /// Starts it, or says why not (ports in use) and gives `None`.
    fn start(dir: &Path) -> Option<PrivateStore> {
        let base = std::env::var("BT_S3_RESTART_BASE").unwrap_or_else(|_| "18380".into());
        let mut s = PrivateStore {
            dir: dir.to_path_buf(),
            base,
            endpoint: String::new(),
        };
        let out = s.run("start.sh", "");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some(e) = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("BT_S3_ENDPOINT="))
        else {
            eprintln!(
                "skipped: a private store could not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        };
        s.endpoint = e.to_string();
        Some(s)
    }
}

impl Drop for PrivateStore {
    fn drop(&mut self) {
        let _ = self.run("stop.sh", "");
    }
}

#[test]
fn the_store_stopped_mid_upload_and_restarted_the_upload_goes_on() {
    let Some(shared) = Store::get("restart") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let Some(private) = PrivateStore::start(&t.path().join("store")) else {
        return;
    };
    let store = Store {
        endpoints: [private.endpoint.clone(), private.endpoint.clone()],
        bucket: shared.bucket.clone(),
        prefix: shared.prefix.clone(),
    };
    let src = t.path().join("survive.bin");
    write_random(&src, 48 * 1024 * 1024, 41);
    let srv = store.server(0, t.path(), &[]);
    let slow = spawn_client(&srv, &src, &["--limit-rate", "10M", "--retries", "20"]);
    assert!(
        wait_until(LONG, || store.parts_recorded("survive.bin") >= 1),
        "no parts recorded; log:\n{}",
        srv.log.text()
    );
    let stopped = private.run("stop.sh", "--keep");
    assert!(stopped.status.success(), "{stopped:?}");
    let restarted = private.run("start.sh", "--keep-data");
    assert!(restarted.status.success(), "{restarted:?}");
    let (code, err) = finish_client(slow);
    assert_eq!(code, Some(0), "{err}\nserver log:\n{}", srv.log.text());
    // (Usually a part upload ran out of retries while the store was down:
    // the connection ended with "unreachable", the held part kept, and the
    // client's retry resumed from the parts stored.)
    let log = srv.log.text();
    if log.contains("unreachable") {
        assert!(log.contains("held part kept"), "{log}");
    }
    assert_object_is(&store, "survive.bin", &src);
}

#[test]
fn list_shows_the_objects_of_the_store_and_a_held_partial_upload() {
    let Some(store) = Store::get("list") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let srv = store.server(0, t.path(), &[]);
    let mut crcs = Vec::new();
    for (name, size) in [("l1.bin", 6000u64), ("l2.bin", 7000)] {
        let src = t.path().join(name);
        crcs.push(write_random(&src, size, size));
        assert_ok(&send(&srv, &src, &[]));
    }
    // A tree: a directory of the listing (a common prefix of the store's).
    let tree = t.path().join("src/t");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/c.txt"), b"c").unwrap();
    std::fs::write(tree.join("d.txt"), b"d").unwrap();
    let out = crate::tree::send_tree(&srv, &[&tree], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A partial upload: a slow client killed once a part is in the store.
    let big = t.path().join("part.bin");
    write_random(&big, 40 * 1024 * 1024, 10);
    let c = slow_client(&srv, &big, "20M");
    assert!(
        wait_until(LONG, || store.parts_recorded("part.bin") >= 1),
        "no part stored"
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
    let _ = finish_client(c);
    let out = crate::keep::list(&srv, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<(&str, u64, u64)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap(),
                f["size"].as_u64().unwrap(),
                f["crc32"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("l1.bin", 6000, u64::from(crcs[0])),
            ("l2.bin", 7000, u64::from(crcs[1]))
        ],
        "{v}"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for f in v["files"].as_array().unwrap() {
        let mtime = f["mtime"].as_u64().unwrap_or(0);
        assert!(mtime + 3600 > now && mtime < now + 3600, "{v}");
    }
    let p = &v["partial"][0];
    assert_eq!(
        (p["name"].as_str(), p["size"].as_u64()),
        (Some("part.bin"), Some(40 << 20)),
        "{v}"
    );
    let held = p["held"].as_u64().unwrap();
    assert!((8 << 20..40 << 20).contains(&held), "{v}");
    // The tree is a directory, not counted (the store would list it
    // whole), and the server's own records are none.
    assert_eq!(
        v["dirs"],
        serde_json::json!([{"kind": "dir", "name": "t", "size": null, "mtime": 0, "files": null}]),
        "{v}"
    );
    assert_eq!(v["tree_parts"], serde_json::Value::Null, "{v}");
    // One name: itself only.
    let out = crate::keep::list(&srv, &["--json", "l2.bin"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["files"][0]["crc32"], u64::from(crcs[1]), "{v}");
    assert!(v["partial"].as_array().unwrap().is_empty(), "{v}");
}

/// The object's ETag (changes whenever the object is written).
fn etag_of(store: &Store, name: &str) -> String {
    store.client().head_object(name).expect("the object").etag
}

/// The numbered versions of `name` in the store.
fn store_versions(store: &Store, name: &str) -> Vec<String> {
    let c = store.client();
    let mut v: Vec<String> = c
        .list_objects(&format!("{name}.~"))
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

#[test]
fn a_resend_of_stored_content_costs_no_data_bytes_on_any_node() {
    let Some(store) = Store::get("resend") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("same.bin");
    write_random(&src, 21 * 1024 * 1024 + 77, 41);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &[]);
    let first = send(&a, &src, &[]);
    assert_ok(&first);
    assert!(
        stdout(&first).contains("\"stored\": \"new\""),
        "{}",
        stdout(&first)
    );
    let before = etag_of(&store, "same.bin");
    for srv in [&a, &b] {
        let again = send(srv, &src, &[]);
        assert_ok(&again);
        assert_eq!(field(&again, "bytes_sent"), 0, "{}", stdout(&again));
        assert!(
            stdout(&again).contains("\"stored\": \"unchanged\", \"kept_as\": null"),
            "{}",
            stdout(&again)
        );
        assert!(
            srv.log.wait_for("same content; left untouched", LONG),
            "{}",
            srv.log.text()
        );
    }
    assert_eq!(
        etag_of(&store, "same.bin"),
        before,
        "the object was rewritten"
    );
    assert!(store_versions(&store, "same.bin").is_empty());
    assert_eq!(
        store.parts_recorded("same.bin"),
        0,
        "state object left behind"
    );
    assert_object_is(&store, "same.bin", &src);
}

#[test]
fn a_different_content_keeps_the_old_object_as_a_version_unless_overwrite() {
    let Some(store) = Store::get("versions") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("doc.bin");
    let size = 17 * 1024 * 1024 + 5;
    write_random(&src, size, 42);
    let original = std::fs::read(&src).unwrap();
    let a = store.server(0, t.path(), &[]);
    assert_ok(&send(&a, &src, &[]));
    // One byte changed: the old object is kept, the client told so.
    let mut changed = original.clone();
    changed[size as usize / 2] ^= 0x5a;
    std::fs::write(&src, &changed).unwrap();
    let out = send(&a, &src, &[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("\"stored\": \"kept\", \"kept_as\": \"doc.bin.~1~\""),
        "{}",
        stdout(&out)
    );
    assert!(field(&out, "bytes_sent") > 0);
    assert_object_is(&store, "doc.bin", &src);
    assert_eq!(store.object("doc.bin.~1~").0, original, "the kept version");
    assert!(
        a.log.wait_for("kept it as doc.bin.~1~", LONG),
        "{}",
        a.log.text()
    );
    // Through the other node, with --overwrite: replaced, no new version.
    let b = store.server(1, t.path(), &["--overwrite"]);
    write_random(&src, 3000, 43);
    let out = send(&b, &src, &[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("\"stored\": \"replaced\", \"kept_as\": null"),
        "{}",
        stdout(&out)
    );
    assert_object_is(&store, "doc.bin", &src);
    assert_eq!(store_versions(&store, "doc.bin"), ["doc.bin.~1~"]);
    // And without: the next number, in words.
    write_random(&src, 5000, 44);
    let out = send(&a, &src, &[]);
    assert_ok(&out);
    assert_eq!(
        store_versions(&store, "doc.bin"),
        ["doc.bin.~1~", "doc.bin.~2~"]
    );
    assert!(
        a.log.wait_for("kept it as doc.bin.~2~", LONG),
        "{}",
        a.log.text()
    );
}

/// `bigtransfer get --json -o OUT REMOTE` against `srv`.
fn get_from(srv: &ServerProc, remote: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = get_cmd(&srv.port(), &[&["--json"], extra].concat());
    cmd.arg("-o").arg(out).arg(remote);
    output_within(&mut cmd, LONG, "get")
}

#[test]
fn get_serves_from_the_store_on_any_node_and_refuses_a_damaged_object() {
    let Some(store) = Store::get("get") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("g.bin");
    let size = 19 * 1024 * 1024 + 333;
    let crc = write_random(&src, size, 51);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &[]);
    assert_ok(&send(&a, &src, &[]));
    // Uploaded through A, served by B: identical.
    let got = t.path().join("got.bin");
    let out = get_from(&b, "g.bin", &got, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_file(&src, &got);
    assert_eq!(field(&out, "crc32"), u64::from(crc));
    assert!(b.log.wait_for("g.bin: sent (", LONG), "{}", b.log.text());
    // An object put there by other means (no record): read once for its
    // reference, checked against the store's CRC-32, then served.
    let plain = b"written straight into the store".repeat(1000);
    store
        .client()
        .put_small("plain.bin", &plain, &bigtransfer_core::s3::Condition::None)
        .unwrap();
    let got_plain = t.path().join("plain.bin");
    let out = get_from(&b, "plain.bin", &got_plain, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&got_plain).unwrap(), plain);
    // The object overwritten in the store with other bytes of the same
    // length: refused in words, nothing left under the final name.
    let mut bad = std::fs::read(&src).unwrap();
    bad[size as usize / 2] ^= 0xff;
    store
        .client()
        .put_small("g.bin", &bad, &bigtransfer_core::s3::Condition::None)
        .unwrap();
    let dest = t.path().join("bad.bin");
    let out = get_from(&b, "g.bin", &dest, &["--retries", "1"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("does not match what was stored"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists(), "a damaged object was delivered");
    // A missing one: not found, in words.
    let out = get_from(&a, "nothing.bin", &t.path().join("n.bin"), &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("no file \"nothing.bin\" on the server"),
        "{}",
        stderr(&out)
    );
}

/// A tree for the store: nested directories, an empty one, a symlink,
/// an empty file, small files and one of several parts.
fn s3_tree(base: &Path, big: u64) -> (std::path::PathBuf, Vec<&'static str>) {
    let root = base.join("set");
    std::fs::create_dir_all(root.join("a/b c")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    write_random(&root.join("a/b c/big.bin"), big, 61);
    std::fs::write(root.join("a/small.txt"), "small\n").unwrap();
    std::fs::write(root.join("zero"), "").unwrap();
    write_random(&root.join("a/mid.bin"), 300_001, 62);
    std::os::unix::fs::symlink("small.txt", root.join("a/link")).unwrap();
    let files = vec![
        "set/a/b c/big.bin",
        "set/a/mid.bin",
        "set/a/small.txt",
        "set/zero",
    ];
    (root, files)
}

fn tree_to(srv: &ServerProc, root: &Path) -> std::process::Output {
    let port = srv.port();
    let args = [
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--json",
        "--quiet",
        root.to_str().unwrap(),
    ];
    client(&args, b"", &[])
}

#[test]
fn a_tree_lands_as_objects_under_its_paths_and_a_resend_is_free() {
    let Some(store) = Store::get("tree") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (root, files) = s3_tree(t.path(), 21 * 1024 * 1024 + 5);
    let srv = store.server(0, t.path(), &[]);
    let out = tree_to(&srv, &root);
    assert_exit(&out, 0);
    assert_eq!(field(&out, "stored"), 4, "{}", stdout(&out));
    // The symlink and the empty directory: skipped, in words.
    assert_eq!(field(&out, "skipped"), 2, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("set/a/link") && err.contains("keeps no symlinks"),
        "{err}"
    );
    assert!(
        err.contains("set/empty") && err.contains("no empty directories"),
        "{err}"
    );
    for f in &files {
        assert_object_is(&store, f, &t.path().join(f));
        assert_eq!(store.parts_recorded(f), 0, "state of {f} left behind");
    }
    assert!(
        srv.log
            .wait_for("received a tree into the object store: 4 files", LONG),
        "{}",
        srv.log.text()
    );

    let again = tree_to(&srv, &root);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(field(&again, "held"), 4, "{}", stdout(&again));
    assert_eq!(field(&again, "bytes_sent"), 0);

    // A changed file: stored, the old object kept as a numbered version.
    let small = root.join("a/small.txt");
    std::fs::write(&small, "changed, and longer\n").unwrap();
    let third = tree_to(&srv, &root);
    assert_eq!(third.status.code(), Some(0), "{}", stderr(&third));
    assert_eq!(field(&third, "stored"), 1, "{}", stdout(&third));
    assert_eq!(field(&third, "held"), 3, "{}", stdout(&third));
    assert_object_is(&store, "set/a/small.txt", &small);
    assert_eq!(
        store_versions(&store, "set/a/small.txt"),
        vec!["set/a/small.txt.~1~"]
    );
    assert_eq!(store.object("set/a/small.txt.~1~").0, b"small\n");

    // New content under the same size and mtime: sent, not taken for held.
    let mid = root.join("a/mid.bin");
    let mtime = std::fs::metadata(&mid).unwrap().modified().unwrap();
    let mut body = std::fs::read(&mid).unwrap();
    body[1000] ^= 0xff;
    std::fs::write(&mid, &body).unwrap();
    std::fs::File::open(&mid)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let fourth = tree_to(&srv, &root);
    assert_eq!(fourth.status.code(), Some(0), "{}", stderr(&fourth));
    assert_eq!(
        field(&fourth, "changed_same_mtime"),
        1,
        "{}",
        stdout(&fourth)
    );
    assert_eq!(field(&fourth, "stored"), 1, "{}", stdout(&fourth));
    assert_eq!(field(&fourth, "held"), 3, "{}", stdout(&fourth));
    assert_eq!(field(&fourth, "bytes_sent"), 300_001);
    let err = stderr(&fourth);
    assert!(
        err.contains("set/a/mid.bin.~1~") && err.contains("its size and mtime are the same"),
        "{err}"
    );
    assert_object_is(&store, "set/a/mid.bin", &mid);
    assert_eq!(
        store_versions(&store, "set/a/mid.bin"),
        vec!["set/a/mid.bin.~1~"]
    );
}

#[test]
fn an_interrupted_tree_resumes_on_another_node_with_only_what_is_missing() {
    let Some(store) = Store::get("tree-resume") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let big = 48 * 1024 * 1024 + 9;
    let (root, files) = s3_tree(t.path(), big);
    let a = store.server(0, t.path(), &[]);
    let b = store.server(1, t.path(), &[]);
    let mut slow = spawn_client(&a, &root, &["--limit-rate", "20M"]);
    assert!(
        wait_until(LONG, || store.parts_recorded("set/a/b c/big.bin") >= 2),
        "no parts recorded; A's log:\n{}",
        a.log.text()
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    let recorded = store.parts_recorded("set/a/b c/big.bin") as u64;
    // The node lets go of the upload's lease once it sees the cut.
    assert!(
        wait_until(LONG, || {
            let s = store
                .client()
                .get_small(&format!("{STATE_DIR}/set/a/b c/big.bin"), 1 << 20);
            s.is_ok_and(|(b, _)| String::from_utf8_lossy(&b).contains("\nholder -\n"))
        }),
        "the lease was not released; A's log:\n{}",
        a.log.text()
    );
    let out = tree_to(&b, &root);
    assert_exit(&out, 0);
    let sent = field(&out, "bytes_sent");
    assert!(
        sent <= big + 400_000 - recorded * (8 << 20) && recorded > 0,
        "sent {sent} with {recorded} parts of the big file held"
    );
    for f in &files {
        assert_object_is(&store, f, &t.path().join(f));
    }
}

/// A multi-node operator on the internet: S3 and a token. A wrong token
/// stores nothing in the store; the right one stores the tree; a tree
/// named like the server's own records is refused for its files.
#[test]
fn a_tree_into_the_store_needs_the_token_and_never_touches_the_servers_records() {
    let Some(store) = Store::get("tree-token") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    std::fs::write(&good, "0123456789abcdef0123456789abcdef-s3-tree").unwrap();
    let bad = t.path().join("bad");
    std::fs::write(&bad, "fedcba9876543210fedcba9876543210-not-it").unwrap();
    let (root, files) = s3_tree(t.path(), 9 * 1024 * 1024);
    let srv = store.server(0, t.path(), &["--token-file", good.to_str().unwrap()]);
    let port = srv.port();
    let with = |tok: &Path, dir: &Path| {
        let args = [
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--json",
            "--quiet",
            "--token-file",
            tok.to_str().unwrap(),
            dir.to_str().unwrap(),
        ];
        client(&args, b"", &[])
    };
    let out = with(&bad, &root);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("authentication failed: wrong token"),
        "{}",
        stderr(&out)
    );
    let c = store.client();
    assert!(
        c.list_objects("").expect("list").is_empty(),
        "something was stored"
    );

    let out = with(&good, &root);
    assert_exit(&out, 0);
    for f in &files {
        assert_object_is(&store, f, &t.path().join(f));
    }

    let own = t.path().join("own/.bigtransfer-done");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("set"), "not a record").unwrap();
    let out = with(&good, &own);
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));
    assert_eq!(field(&out, "not_stored"), 1, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the server's own"),
        "{}",
        stderr(&out)
    );
    assert!(
        c.head_object(".bigtransfer-done/set").is_err(),
        "stored among the records"
    );
}

#[test]
fn get_from_the_store_sends_compressed_blocks_that_come_back_identical() {
    let Some(store) = Store::get("getz") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("z.log");
    let line = b"2026-11-30T14:00:00Z node-a GET /api/items/42 status=200 ms=3\n";
    let text: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(5 * 1024 * 1024 + 77)
        .collect();
    std::fs::write(&src, &text).unwrap();
    let a = store.server(0, t.path(), &[]);
    assert_ok(&send(&a, &src, &["--compress", "off"]));
    for (mode, streams) in [("zstd:3", "1"), ("auto", "2")] {
        let got = t.path().join(format!("got-{streams}.log"));
        let args = ["--compress", mode, "--streams", streams];
        let out = get_from(&a, "z.log", &got, &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_same_file(&src, &got);
        assert!(field(&out, "compressed_blocks") >= 1, "{}", stdout(&out));
        assert!(
            field(&out, "wire_bytes") < field(&out, "bytes_received"),
            "{}",
            stdout(&out)
        );
    }
    assert!(a.log.wait_for("z.log: sent (", LONG), "{}", a.log.text());
    assert!(
        a.log
            .wait_for("compress zstd:3: 5 block(s) of 5242880 bytes", LONG),
        "{}",
        a.log.text()
    );
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_tree_in_the_store_comes_back_identical_and_a_damaged_object_is_refused() {
    let Some(store) = Store::get("treeget") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (root, mut files) = s3_tree(t.path(), 9 * 1024 * 1024 + 7);
    // Names that sort before "a/" in the store's byte order but after the
    // directory "a" in the manifest's order.
    std::fs::write(root.join("a.txt"), "dot\n").unwrap();
    std::fs::write(root.join("a-b"), "dash\n").unwrap();
    files.extend(["set/a-b", "set/a.txt"]);
    // Listings of 2 entries a page: the manifest follows continuation
    // tokens at every level.
    let url = format!("s3://{}/{}?page=2", store.bucket, store.prefix);
    let args = ["--store", &url, "--s3-endpoint", &store.endpoints[0]];
    let srv = ServerProc::start(&t.path().join("node0"), &args);
    let out = tree_to(&srv, &root);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A changed file keeps its old content as a version: left out of a get.
    let small = root.join("a/small.txt");
    let first_small = std::fs::read(&small).unwrap();
    std::fs::write(&small, "changed\n").unwrap();
    assert_eq!(tree_to(&srv, &root).status.code(), Some(0));
    assert_eq!(store.object("set/a/small.txt.~1~").0, first_small);

    let dest = t.path().join("got");
    let out = get_from(&srv, "set", &dest, &[]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("\"result\": \"TREE_OK\""),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        field(&out, "downloaded"),
        files.len() as u64,
        "{}",
        stdout(&out)
    );
    let mut want: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    want.sort();
    let got = files_under(&dest);
    assert_eq!(
        got, want,
        "exactly the tree's files, no versions, no records"
    );
    for f in &files {
        assert_same_file(&t.path().join(f), &dest.join(f));
    }
    // The client's mtime, kept in the record, comes back.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let big = "set/a/b c/big.bin";
    assert_eq!(mtime(&t.path().join(big)), mtime(&dest.join(big)));
    assert!(
        srv.log.wait_for("sent a tree from the object store", LONG),
        "{}",
        srv.log.text()
    );

    // A second get fetches nothing.
    let again = get_from(&srv, "set", &dest, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(field(&again, "downloaded"), 0, "{}", stdout(&again));
    assert_eq!(field(&again, "bytes_received"), 0);
    assert_eq!(field(&again, "held"), files.len() as u64);

    // An object changed in the store behind the server's back (same
    // length): refused in words for that file, the others delivered.
    let mid = "set/a/mid.bin";
    let mut bad = std::fs::read(t.path().join(mid)).unwrap();
    bad[1000] ^= 0x5a;
    store
        .client()
        .put_small(mid, &bad, &bigtransfer_core::s3::Condition::None)
        .unwrap();
    let other = t.path().join("other");
    let out = get_from(&srv, "set", &other, &["--retries", "0"]);
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(
        err.contains("set/a/mid.bin") && err.contains("does not match what was stored"),
        "{err}"
    );
    assert!(!other.join(mid).exists(), "a damaged object was delivered");
    assert_same_file(&t.path().join(big), &other.join(big));
    let leftovers: Vec<String> = files_under(&other)
        .into_iter()
        .filter(|f| f.contains("mid.bin"))
        .collect();
    assert!(
        leftovers.iter().all(|f| f.contains("bigtransfer")),
        "only a partial file may be left: {leftovers:?}"
    );

    // A prefix with nothing under it: not found, in words (a name alone
    // is first asked for as a file; a path goes straight to the tree).
    let out = get_from(&srv, "nothing", &t.path().join("n"), &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no file \"nothing\" on the server"),
        "{}",
        stderr(&out)
    );
    let out = get_from(&srv, "set/nothing", &t.path().join("n"), &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no \"set/nothing\" on the server (not found"),
        "{}",
        stderr(&out)
    );
    assert!(!t.path().join("n/nothing").exists());
}

#[test]
fn a_tree_file_over_the_limit_comes_alone_from_the_store_identical() {
    let Some(store) = Store::get("treealone") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let big = 9 * 1024 * 1024 + 7;
    let (root, files) = s3_tree(t.path(), big);
    let srv = store.server(0, t.path(), &["--tree-get-file-limit", "4M"]);
    let out = tree_to(&srv, &root);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dest = t.path().join("got");
    let out = get_from(&srv, "set", &dest, &[]);
    assert_exit(&out, 0);
    assert_eq!(
        field(&out, "downloaded"),
        files.len() as u64,
        "{}",
        stdout(&out)
    );
    assert_eq!(field(&out, "failed"), 0);
    for f in &files {
        assert_same_file(&t.path().join(f), &dest.join(f));
    }
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let big_file = "set/a/b c/big.bin";
    assert_eq!(mtime(&t.path().join(big_file)), mtime(&dest.join(big_file)));
    // The big file came over a single-file get by path, from the store.
    let sent = format!("set/a/b c/big.bin: sent ({big} bytes, get by path");
    assert!(srv.log.wait_for(&sent, LONG), "{}", srv.log.text());
}
