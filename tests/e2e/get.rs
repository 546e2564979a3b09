//! `bigtransfer get`: a stored file comes back byte for byte; a download
//! killed mid-way resumes with only the rest and is never visible under
//! its final name; a file replaced on the server between attempts is
//! detected and fetched anew; hostile names, missing files, tokens and
//! pinned keys are refused in words with the client's exit codes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::*;

const MIB: u64 = 1 << 20;

/// `bigtransfer get --host 127.0.0.1 --port P --quiet --json EXTRA... REMOTE`
/// with a known-hosts file of its own unless `extra` names one.
fn get(srv: &ServerProc, remote: &str, extra: &[&str]) -> Output {
    output_within(&mut get_cmd(srv, remote, extra), LONG, "get")
}

fn get_cmd(srv: &ServerProc, remote: &str, extra: &[&str]) -> Command {
    let mut cmd = crate::harness::get_cmd(&srv.port(), &[&["--json"], extra].concat());
    cmd.arg(remote);
    cmd
}

#[track_caller]
fn assert_got(out: &Output) {
    assert_exit(out, 0);
    assert!(
        stdout(out).contains("\"result\": \"OK\""),
        "{}",
        stdout(out)
    );
}

/// Bytes of the partial download written so far (it is sparse until then).
fn written(part: &Path) -> u64 {
    std::fs::metadata(part).map_or(0, |m| m.blocks() * 512)
}

#[test]
fn an_uploaded_file_comes_back_byte_identical_over_tls() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("f.bin");
    let crc = write_random(&src, 3 * MIB + 12_345, 151);
    assert_ok(&send(&srv, &src, &[]));
    let outdir = t.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = get(&srv, "f.bin", &["-o", outdir.to_str().unwrap()]);
    assert_got(&out);
    let got = outdir.join("f.bin");
    assert_same_file(&src, &got);
    assert_eq!(crc_of(&got), crc);
    assert_eq!(field(&out, "crc32"), u64::from(crc));
    assert_eq!(field(&out, "bytes_received"), 3 * MIB + 12_345);
    assert!(
        stdout(&out).contains("\"encrypted\": true"),
        "{}",
        stdout(&out)
    );
    let names: Vec<_> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("f.bin")],
        "no part or record left"
    );
    // The target exists now: not replaced without --force.
    let again = get(&srv, "f.bin", &["-o", outdir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    // An empty file and -o FILE.
    let empty = t.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_ok(&send(&srv, &empty, &[]));
    let e_out = t.path().join("e2");
    assert_got(&get(&srv, "empty", &["-o", e_out.to_str().unwrap()]));
    assert_eq!(std::fs::read(&e_out).unwrap(), b"");
}

/// Starts a slow get of `remote` into `dest`, waits until part of it is
/// written, checks the final name is not there, and SIGKILLs it.
fn kill_midway(srv: &ServerProc, remote: &str, dest: &Path) {
    let (part, _) = bigtransfer_core::client::part_paths(dest);
    let mut cmd = get_cmd(
        srv,
        remote,
        &["--limit-rate", "6M", "-o", dest.to_str().unwrap()],
    );
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_until(LONG, || written(&part) >= 4 * MIB);
    assert!(
        !dest.exists(),
        "the partial download is visible under its final name"
    );
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = wait_child(&mut child, LONG);
    assert!(started, "the download never got going");
    assert!(!dest.exists(), "a killed download left its final name");
    assert!(part.exists());
}

#[test]
fn a_killed_download_resumes_with_only_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("big.bin");
    let size = 24 * MIB + 7;
    let crc = write_random(&src, size, 152);
    assert_ok(&send(&srv, &src, &[]));
    let dest = t.path().join("got.bin");
    kill_midway(&srv, "big.bin", &dest);
    let out = get(&srv, "big.bin", &["-o", dest.to_str().unwrap()]);
    assert_got(&out);
    let (held, got) = (field(&out, "resumed_from"), field(&out, "bytes_received"));
    assert!(held >= 4 * MIB, "resumed from {held}");
    assert_eq!(held + got, size, "only the rest travelled");
    assert_eq!(crc_of(&dest), crc);
    assert_same_file(&src, &dest);
    let (part, record) = bigtransfer_core::client::part_paths(&dest);
    assert!(!part.exists() && !record.exists());
}

#[test]
fn a_file_replaced_on_the_server_between_attempts_is_fetched_anew() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let src = t.path().join("v.bin");
    let size = 16 * MIB;
    write_random(&src, size, 153);
    assert_ok(&send(&srv, &src, &[]));
    let dest = t.path().join("v.got");
    kill_midway(&srv, "v.bin", &dest);
    // Same size, new content, put in place as an upload would.
    let new = t.path().join("new.bin");
    let new_crc = write_random(&new, size, 154);
    std::fs::copy(&new, store.join(".v.tmp")).unwrap();
    std::fs::rename(store.join(".v.tmp"), store.join("v.bin")).unwrap();
    let out = get(&srv, "v.bin", &["-o", dest.to_str().unwrap()]);
    assert_got(&out);
    assert!(
        stderr(&out).contains("changed on the server"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("\"restarted\": true"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        field(&out, "bytes_received"),
        size,
        "nothing of the old version kept"
    );
    assert_eq!(crc_of(&dest), new_crc);
    assert_same_file(&new, &dest);
}

#[test]
fn hostile_names_and_missing_files_are_refused_in_words() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let outside = t.path().join("secret");
    std::fs::write(&outside, b"outside the storage directory").unwrap();
    std::os::unix::fs::symlink(&outside, store.join("link")).unwrap();
    let outdir = t.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let o = outdir.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        // A path is a tree get's (checked on both sides as tree paths).
        ("../secret", "refused file name \"..\""),
        ("/etc/passwd", "absolute"),
        ("a/b", "no \"a/b\" on the server"),
        ("..", "refused"),
        (".bigtransfer", "reserved"),
        ("x\u{1}y", "control"),
        ("link", "symlink"),
        ("missing.bin", "no file \"missing.bin\" on the server"),
    ];
    for (name, words) in cases {
        let out = get(&srv, name, &["-o", o]);
        assert_eq!(out.status.code(), Some(6), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(words), "{name}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("\"reason\": \"refused\""),
            "{}",
            stdout(&out)
        );
    }
    assert_eq!(
        std::fs::read_dir(&outdir).unwrap().count(),
        0,
        "nothing written"
    );
    assert!(!srv.log.text().contains(": sent ("), "{}", srv.log.text());
}

#[test]
fn a_token_server_sends_only_to_clients_with_the_token() {
    let t = tempfile::tempdir().unwrap();
    let tok = |name: &str, text: &str| {
        let p = t.path().join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = tok("good", "correct horse battery staple 42");
    let bad = tok("bad", "not the right token at all, no");
    let srv = ServerProc::start(&t.path().join("store"), &["--token-file", &good]);
    let src = t.path().join("s.bin");
    write_random(&src, MIB + 1, 155);
    assert_ok(&send(&srv, &src, &["--token-file", &good]));
    let dest = t.path().join("s.got");
    let d = dest.to_str().unwrap();
    let none = get(&srv, "s.bin", &["-o", d]);
    assert_eq!(none.status.code(), Some(6), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("requires a token"),
        "{}",
        stderr(&none)
    );
    let wrong = get(&srv, "s.bin", &["-o", d, "--token-file", &bad]);
    assert_eq!(wrong.status.code(), Some(6), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("authentication failed"),
        "{}",
        stderr(&wrong)
    );
    assert!(!dest.exists());
    assert_got(&get(&srv, "s.bin", &["-o", d, "--token-file", &good]));
    assert_same_file(&src, &dest);
}

#[test]
fn a_pinned_key_that_does_not_match_stops_the_download_with_exit_7() {
    let t = tempfile::tempdir().unwrap();
    let a = ServerProc::start(&t.path().join("a"), &[]);
    let b = ServerProc::start(&t.path().join("b"), &[]);
    let src = t.path().join("p.bin");
    write_random(&src, MIB, 156);
    assert_ok(&send(&b, &src, &[]));
    assert!(a.out.wait_for("fingerprint ", LONG));
    let fp_a = a
        .out
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint ").map(str::to_string))
        .unwrap();
    let dest = t.path().join("p.got");
    let d = dest.to_str().unwrap();
    let out = get(&b, "p.bin", &["-o", d, "--fingerprint", &fp_a]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(!dest.exists());
    // A known-hosts pin of another key for this address: refused too.
    let kh = t.path().join("kh");
    std::fs::write(&kh, format!("127.0.0.1:{} {fp_a}\n", b.port())).unwrap();
    let out = get(
        &b,
        "p.bin",
        &["-o", d, "--known-hosts", kh.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("CHANGED"), "{}", stderr(&out));
    assert!(!dest.exists());
}

#[test]
fn a_download_survives_the_server_killed_and_restarted() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let srv = ServerProc::start(&store, &[]);
    let src = t.path().join("k.bin");
    let size = 20 * MIB + 3;
    let crc = write_random(&src, size, 157);
    assert_ok(&send(&srv, &src, &[]));
    let dest = t.path().join("k.got");
    let (part, _) = bigtransfer_core::client::part_paths(&dest);
    let mut cmd = get_cmd(
        &srv,
        "k.bin",
        &[
            "--limit-rate",
            "6M",
            "--retries",
            "0",
            "-o",
            dest.to_str().unwrap(),
        ],
    );
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || written(&part) >= 4 * MIB),
        "the download never got going"
    );
    srv.kill9();
    let status = wait_child(&mut child, LONG).expect("the client noticed the server's death");
    assert_eq!(status.code(), Some(4), "connection lost, retries exhausted");
    assert!(!dest.exists());
    let again = ServerProc::start(&store, &[]);
    let out = get(&again, "k.bin", &["-o", dest.to_str().unwrap()]);
    assert_got(&out);
    let (held, got) = (field(&out, "resumed_from"), field(&out, "bytes_received"));
    assert!(
        held >= 4 * MIB && held + got == size,
        "held {held}, received {got}"
    );
    assert_eq!(crc_of(&dest), crc);
}

/// The client's disk fills mid-download (its output directory on a small
/// tmpfs in a private mount namespace; skipped without root and
/// `unshare`): the get fails in words as a local-disk error, nothing is
/// under the final name, the part and its record stay, and once space is
/// freed the next get resumes from what was written and completes.
#[test]
fn a_full_disk_on_the_client_keeps_the_partial_download_for_a_resume() {
    if !can_unshare() {
        eprintln!("skipping: cannot mount a tmpfs in a private mount namespace");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--tls", "off"]);
    let src = t.path().join("f.bin");
    let crc = write_random(&src, 16 * MIB + 7, 77);
    assert_ok(&send(&srv, &src, &[]));
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let get = format!(
        "'{BIN}' get --host 127.0.0.1 --port {} --quiet --json --retries 0 -o '{o}' f.bin",
        srv.port(),
        o = out.display()
    );
    let script = format!(
        "mount -t tmpfs -o size=20M tmpfs '{o}' && head -c 10M /dev/zero > '{o}/filler' && \
         {get}; echo \"rc1=$?\"; ls -a '{o}'; rm '{o}/filler'; {get}; echo \"rc2=$?\"; \
         cmp '{o}/f.bin' '{s}' && echo same",
        o = out.display(),
        s = src.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("BIGTRANSFER_KNOWN_HOSTS", fresh_known_hosts())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    wait_child(&mut child, LONG).expect("the gets hung");
    let (mut so, mut se) = (String::new(), String::new());
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut so);
    let _ = child.stderr.take().unwrap().read_to_string(&mut se);
    let (first, second) = so.split_once("rc1=").expect("no first get");
    assert!(
        second.starts_with("1\n"),
        "exit code 1 (a local error): {so}"
    );
    assert!(first.contains("\"reason\": \"storage\""), "{so}");
    assert!(
        se.contains("cannot write") && se.contains("No space left on device"),
        "{se}"
    );
    assert!(
        se.contains("the partial download is kept for a resume"),
        "{se}"
    );
    assert!(!first.contains("\"result\": \"OK\""), "{so}");
    let listing: Vec<&str> = second
        .lines()
        .skip(1)
        .take_while(|l| !l.contains('{'))
        .collect();
    assert!(listing.contains(&".f.bin.bigtransfer-part"), "{so}");
    assert!(listing.contains(&".f.bin.bigtransfer-get"), "{so}");
    assert!(!listing.contains(&"f.bin"), "{so}");
    assert!(
        second.contains("rc2=0") && second.ends_with("same\n"),
        "{so}\n{se}"
    );
    let resumed = second
        .split("\"resumed_from\": ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("no resumed_from");
    assert!((4 * MIB..16 * MIB).contains(&resumed), "{so}");
    assert!(second.contains(&format!("\"crc32\": {crc}")), "{so}");
}
