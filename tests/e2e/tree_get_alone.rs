//! `bigtransfer get` of a tree holding a file over what the server sends
//! among a tree's blocks (128 GiB; lowered here with the server's hidden
//! `--tree-get-file-limit`): the file comes alone over a single-file get
//! by path inside the same command, into its place, identical (bytes,
//! CRC-32, mode, mtime, its directory's mtime), counted in the totals; a
//! get killed on it resumes from what it held; a file changed on the
//! server between attempts is detected and fetched anew, never appended
//! to, and one whose size changed since it was listed fails in words;
//! with parallel streams and with a token too.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::harness::*;
use crate::tree::assert_same_tree;
use crate::tree_get::get;

const LIMIT: &str = "4M";

/// `store/set`: two small files, one of 2 MiB (under the limit) and the
/// big one `sub/vm.img` of `big` bytes (over it), with modes and mtimes
/// of their own. Returns the big file's path in the store.
fn make_set(store: &Path, big: u64) -> PathBuf {
    let set = store.join("set");
    fs::create_dir_all(set.join("sub")).unwrap();
    fs::write(set.join("a.txt"), "small\n").unwrap();
    fs::write(set.join("sub/b.txt"), "also small\n").unwrap();
    write_random(&set.join("c.bin"), 2 << 20, 7);
    let vm = set.join("sub/vm.img");
    write_random(&vm, big, 11);
    fs::set_permissions(&vm, fs::Permissions::from_mode(0o640)).unwrap();
    let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    fs::File::options()
        .write(true)
        .open(&vm)
        .unwrap()
        .set_modified(t(1_600_000_000))
        .unwrap();
    for (d, s) in [
        (set.join("sub"), 1_500_000_000),
        (set.clone(), 1_400_000_000),
    ] {
        fs::File::open(&d).unwrap().set_modified(t(s)).unwrap();
    }
    vm
}

fn server(store: &Path) -> ServerProc {
    ServerProc::start(store, &["--tree-get-file-limit", LIMIT])
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n.contains("bigtransfer-") {
            out.push(n);
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(leftovers(&e.path()));
        }
    }
    out
}

#[test]
fn a_file_over_the_limit_comes_alone_in_the_same_get_identical() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let vm = make_set(&store, (9 << 20) + 4321);
    let srv = server(&store);
    let dest = t.path().join("got");
    let out = get(&srv, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("\"result\": \"TREE_OK\""),
        "{}",
        stdout(&out)
    );
    assert_eq!(field(&out, "files"), 4);
    assert_eq!(field(&out, "downloaded"), 4, "the big file counted");
    assert_eq!(field(&out, "failed"), 0);
    let got = dest.join("set/sub/vm.img");
    assert_eq!(crc_of(&vm), crc_of(&got));
    assert_eq!(fs::metadata(&got).unwrap().mode() & 0o777, 0o640);
    // Bytes, modes and mtimes of everything, directories included (the
    // big file landed after its directory's mtime was set: put back).
    assert_same_tree(&store.join("set"), &dest.join("set"), &[]);
    assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
    // It went over a single-file get by path, in blocks of that get.
    assert!(
        srv.log
            .wait_for("set/sub/vm.img: sent (9441505 bytes, get by path", LONG),
        "{}",
        srv.log.text()
    );
    assert!(field(&out, "bytes_received") >= (11 << 20) + 4321);

    // The big file named alone by its path: a one-entry tree, fetched
    // alone all the same.
    let single = t.path().join("single");
    let out = get(&srv, &["set/sub/vm.img"], &["-o", single.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(field(&out, "downloaded"), 1, "{}", stdout(&out));
    assert_same_file(&vm, &single.join("vm.img"));
    let m = fs::metadata(single.join("vm.img")).unwrap();
    assert_eq!(m.mtime(), 1_600_000_000);

    // With parallel streams, the big file's get joins them by its path.
    let streamed = t.path().join("streamed");
    let out = get(
        &srv,
        &["set"],
        &["--streams", "4", "-o", streamed.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    assert_same_tree(&store.join("set"), &streamed.join("set"), &[]);
    assert!(
        srv.log
            .wait_for("stream joined the download of set/sub/vm.img", LONG),
        "{}",
        srv.log.text()
    );

    let again = get(&srv, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_exit(&again, 0);
    assert_eq!(field(&again, "held"), 4, "{}", stdout(&again));
    assert_eq!(field(&again, "bytes_received"), 0);
}

/// Starts a paced get of `set` into `dest` and kills it (by PID) once the
/// big file's part holds at least `held` bytes.
fn get_killed_on_the_big_file(srv: &ServerProc, dest: &Path, held: u64) {
    let mut cmd = get_cmd(
        &srv.port(),
        &[
            "--json",
            "--limit-rate",
            "4M",
            "-o",
            dest.to_str().unwrap(),
            "set",
        ],
    );
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (part, _) = bigtransfer_core::client::part_paths(&dest.join("set/sub/vm.img"));
    let there = wait_until(LONG, || {
        fs::metadata(&part).is_ok_and(|m| m.blocks() * 512 >= held)
    });
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = wait_child(&mut child, LONG);
    assert!(there, "the big file's download never got {held} bytes in");
    assert!(
        !dest.join("set/sub/vm.img").exists(),
        "a partial file under its final name"
    );
}

#[test]
fn a_get_killed_on_the_big_file_resumes_and_completes_identical() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let size = 24u64 << 20;
    make_set(&store, size);
    let srv = server(&store);
    let dest = t.path().join("got");
    get_killed_on_the_big_file(&srv, &dest, 8 << 20);
    let out = get(&srv, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(field(&out, "files"), 4);
    assert_eq!(field(&out, "failed"), 0);
    let got = field(&out, "bytes_received");
    assert!(
        got <= size - (6 << 20),
        "received {got} bytes though at least 8 MiB of the {size} were here"
    );
    assert_same_tree(&store.join("set"), &dest.join("set"), &[]);
    assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
}

#[test]
fn a_big_file_changed_on_the_server_between_attempts_is_fetched_anew() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let size = 24u64 << 20;
    let vm = make_set(&store, size);
    let srv = server(&store);
    let dest = t.path().join("got");
    get_killed_on_the_big_file(&srv, &dest, 4 << 20);
    // Same size, other bytes, other mtime: the part here is of the old
    // version and must not be kept.
    let new_crc = write_random(&vm, size, 99);
    let out = get(&srv, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(field(&out, "failed"), 0);
    assert!(
        field(&out, "bytes_received") >= size,
        "the whole new version travelled: {}",
        stdout(&out)
    );
    assert_eq!(crc_of(&dest.join("set/sub/vm.img")), new_crc);
    assert_same_file(&vm, &dest.join("set/sub/vm.img"));
    assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
}

#[test]
fn on_a_server_with_a_token_the_big_file_comes_alone_with_the_token() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let vm = make_set(&store, 6 << 20);
    let token = t.path().join("token");
    fs::write(&token, "0123456789abcdef0123456789abcdef-alone-token\n").unwrap();
    let tok = token.to_str().unwrap();
    let srv = ServerProc::start(
        &store,
        &["--tree-get-file-limit", LIMIT, "--token-file", tok],
    );
    let dest = t.path().join("got");
    let out = get(
        &srv,
        &["set"],
        &["--token-file", tok, "-o", dest.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    assert_eq!(field(&out, "downloaded"), 4, "{}", stdout(&out));
    assert_same_file(&vm, &dest.join("set/sub/vm.img"));
    assert!(
        srv.log
            .wait_for("set/sub/vm.img: sent (6291456 bytes, get by path", LONG),
        "{}",
        srv.log.text()
    );
}

#[test]
fn a_big_file_whose_size_changed_after_it_was_listed_fails_in_words_and_comes_next_time() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let vm = make_set(&store, 6 << 20);
    let srv = server(&store);
    let dest = t.path().join("got");
    let mut cmd = get_cmd(
        &srv.port(),
        &["--limit-rate", "1M", "-o", dest.to_str().unwrap(), "set"],
    );
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // c.bin (2 MiB at 1 MiB/s) is on its way: the manifest was sent, the
    // big file's get comes after the tree's session.
    let (part, _) = bigtransfer_core::client::part_paths(&dest.join("set/c.bin"));
    assert!(wait_until(LONG, || part.exists()), "the get never began");
    let new_crc = write_random(&vm, (7 << 20) + 5, 77);
    let status = wait_child(&mut child, LONG).expect("the get hung");
    let (mut o, mut e) = (Vec::new(), Vec::new());
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_end(&mut o);
    let _ = child.stderr.take().unwrap().read_to_end(&mut e);
    let out = std::process::Output {
        status,
        stdout: o,
        stderr: e,
    };
    assert_exit(&out, 6);
    assert!(
        stderr(&out).contains(
            "failed: set/sub/vm.img: it changed on the server since it was listed (6291456 bytes then, 7340037 now); get it again"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!dest.join("set/sub/vm.img").exists());
    let out = get(&srv, &["set"], &["-o", dest.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(crc_of(&dest.join("set/sub/vm.img")), new_crc);
}
