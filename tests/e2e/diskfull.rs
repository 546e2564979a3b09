//! A full disk: the storage directory on a small tmpfs, or a small ext4
//! image (where the server allocates each write's range first, so the
//! allocation meets the full disk), mounted in a private mount namespace
//! (needs root and `unshare`; skipped with a message otherwise). The upload
//! fails cleanly, the held part stays resumable, and once space is freed
//! the resume completes.

use std::process::{Command, Stdio};

use crate::harness::*;

#[test]
fn disk_full_keeps_the_held_part_resumable_and_says_so() {
    disk_full(false, Fs::Tmpfs);
}

#[test]
fn disk_full_with_a_legacy_client_keeps_the_held_part_resumable() {
    disk_full(true, Fs::Tmpfs);
}

#[test]
fn disk_full_on_ext4_is_met_by_the_allocation_and_the_part_stays_resumable() {
    disk_full(false, Fs::Ext4);
}

#[test]
fn disk_full_on_ext4_with_a_legacy_client() {
    disk_full(true, Fs::Ext4);
}

enum Fs {
    Tmpfs,
    Ext4,
}

fn disk_full(legacy: bool, fs: Fs) {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let on = match fs {
        Fs::Tmpfs => server_on_tmpfs(&store, "24M", &[]),
        // ext4 keeps some of it for itself: about 22 MiB are free.
        Fs::Ext4 => server_on_ext4(&store, "28M", &[]),
    };
    let Some((srv, view)) = on else {
        return;
    };
    let src = t.path().join("full.bin");
    let size = 16 * 1024 * 1024 + 5;
    write_random(&src, size, 50);
    let mut slow = Command::new(BIN)
        .env(
            "BIGTRANSFER_KNOWN_HOSTS",
            crate::harness::fresh_known_hosts(),
        )
        .args([
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            &srv.port(),
            "--quiet",
            "--retries",
            "1",
            "--limit-rate",
            "8M",
        ])
        .args(legacy.then_some("--legacy"))
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || held_part_len(&view) >= 2 << 20),
        "no progress"
    );
    // Fill the file system behind the server's back.
    let filler = view.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 24 << 20]);
    let status = wait_child(&mut slow, LONG).expect("client hung on a full disk");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut slow.stderr.take().unwrap(), &mut err).unwrap();
    if legacy {
        // Protocol 1 has no words for it: the connection just ends.
        assert_eq!(status.code(), Some(4), "{err}");
    } else {
        assert_eq!(status.code(), Some(6), "{err}");
        assert!(
            err.contains("server: server cannot store full.bin")
                && err.contains("No space left on device"),
            "{err}"
        );
        // The reason, not where in the server's storage it happened.
        assert!(
            !err.contains(".bigtransfer") && !err.contains(&*store.to_string_lossy()),
            "{err}"
        );
    }
    assert!(
        srv.log.wait_for("No space left on device", LONG),
        "{}",
        srv.log.text()
    );
    if matches!(fs, Fs::Ext4) {
        // Met by the allocation before the write, not by the write.
        assert!(
            srv.log.text().contains("cannot make room in"),
            "{}",
            srv.log.text()
        );
    }
    assert!(!view.join("full.bin").exists());

    std::fs::remove_file(&filler).unwrap();
    let out = send(&srv, &src, if legacy { &["--legacy"] } else { &[] });
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    // Protocol 2 keeps whole verified blocks (1 MiB): at most one of the
    // 2 MiB seen on disk may be sent again.
    assert!(from >= 1 << 20, "held part not kept: resumed from {from}");
    assert_eq!(field(&out, "bytes_sent"), size - from);
    assert_same_file(&src, &view.join("full.bin"));
}
