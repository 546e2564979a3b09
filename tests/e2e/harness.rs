//! Test harness: starts the real `bigtransfer` binary as a server or client,
//! reads its output with deadlines, and makes and compares test files.
//! Every wait here is bounded; every process is stopped by its PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bigtransfer");
pub const LONG: Duration = Duration::from_secs(60);

/// Points every client this test process starts at a private checksum
/// cache, so tests never share one with each other or with the user.
pub fn isolate_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::temp_dir().join(format!("bt-e2e-cache-{}", std::process::id()));
        std::env::set_var("BIGTRANSFER_CACHE_DIR", dir);
        // Clients the harness does not start itself must not pin test
        // keys in the user's home either (theirs get a fresh file each).
        let kh = std::env::temp_dir().join(format!("bt-e2e-kh-{}.shared", std::process::id()));
        std::env::set_var("BIGTRANSFER_KNOWN_HOSTS", kh);
    });
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `size` pseudo-random bytes (seeded) to `path`; returns the CRC-32.
pub fn write_random(path: &Path, size: u64, seed: u64) -> u32 {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    h.finalize()
}

pub fn crc_of(path: &Path) -> u32 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}

/// Asserts two files have the same bytes (size first, then block by block).
pub fn assert_same_file(a: &Path, b: &Path) {
    let (ma, mb) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    assert_eq!(
        ma.len(),
        mb.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                pos + i as u64
            );
        }
        pos += n as u64;
    }
}

/// Size of the largest held part in a Rust server's storage directory.
pub fn held_part_len(dir: &Path) -> u64 {
    largest_part_len(&dir.join(".bigtransfer"))
}

/// Size of the largest `*.part` file directly in `parts`.
pub fn largest_part_len(parts: &Path) -> u64 {
    std::fs::read_dir(parts)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

pub fn held_parts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join(".bigtransfer"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "part"))
                .collect()
        })
        .unwrap_or_default()
}

/// Lines a child process printed on one stream, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn spawn_reader(r: impl Read + Send + 'static, tx: Option<mpsc::Sender<String>>) -> Lines {
        let lines = Lines::default();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &tx {
                    let _ = tx.send(line.clone());
                }
                l2.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Waits until a line containing `needle` appears.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || {
            self.0.lock().unwrap().iter().any(|l| l.contains(needle))
        })
    }
}

/// A running `bigtransfer server` on 127.0.0.1 with a free port.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log: Lines,
    /// Standard output (the first line is `listening on ADDR`).
    pub out: Lines,
}

impl ServerProc {
    pub fn start(dir: &Path, extra: &[&str]) -> ServerProc {
        Self::start_at("127.0.0.1", dir, extra)
    }

    pub fn start_at(bind: &str, dir: &Path, extra: &[&str]) -> ServerProc {
        isolate_cache();
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--port", "0", "--bind", bind, "--dir"])
            .arg(dir)
            .args(extra);
        Self::spawn(&mut cmd, dir)
    }

    /// Starts `cmd`, which must run a server that prints its address first.
    pub fn spawn(cmd: &mut Command, dir: &Path) -> ServerProc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let (tx, rx) = mpsc::channel();
        let out = Lines::spawn_reader(child.stdout.take().unwrap(), Some(tx));
        let log = Lines::spawn_reader(child.stderr.take().unwrap(), None);
        let line = rx.recv_timeout(LONG).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "server printed no 'listening on' line; log:\n{}",
                log.text()
            )
        });
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        ServerProc {
            child,
            addr,
            dir: dir.to_path_buf(),
            log,
            out,
        }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        wait_child(&mut self.child, LONG).expect("server did not exit after SIGTERM")
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = wait_child(&mut self.child, LONG);
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Runs `cmd` with no input and its output collected, bounded in time.
/// The output is read while the child runs, so a chatty child never
/// blocks on a full pipe; one still running at `limit` is killed by its
/// PID and the test fails, naming `what`.
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = read_to_end_in_thread(child.stdout.take());
    let err = read_to_end_in_thread(child.stderr.take());
    let Some(status) = wait_child(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}");
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn read_to_end_in_thread(
    r: Option<impl Read + Send + 'static>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// `bigtransfer get --host 127.0.0.1 --port PORT --quiet ARGS...`, with a
/// known-hosts file of its own unless `args` names one.
pub fn get_cmd(port: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["get", "--host", "127.0.0.1", "--port", port, "--quiet"])
        .args(args);
    if !args.contains(&"--known-hosts") {
        cmd.env("BIGTRANSFER_KNOWN_HOSTS", fresh_known_hosts());
    }
    cmd
}

/// The original stdlib `python/client.py` (forced onto its pure-Python
/// path) uploading `file` to loopback `port`.
pub fn legacy_py_client(port: &str, file: &Path, extra: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--host", "127.0.0.1", "--port", port])
        .args(extra)
        .arg(file)
        .env("BIGTRANSFER_PURE", "1");
    output_within(&mut cmd, Duration::from_secs(120), "python client.py")
}

/// A known-hosts file of its own for one client run (unless the test
/// chose one), so no test pins keys in the user's home and no two tests
/// share pins (a port reused by another test's server has another key).
fn private_known_hosts(cmd: &mut Command, args: &[&str], env: &[(&str, &str)]) {
    if args.contains(&"--known-hosts") || env.iter().any(|(k, _)| *k == "BIGTRANSFER_KNOWN_HOSTS") {
        return;
    }
    cmd.env("BIGTRANSFER_KNOWN_HOSTS", fresh_known_hosts());
}

/// A path for a known-hosts file no other client run uses.
pub fn fresh_known_hosts() -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("bt-e2e-kh-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("known_hosts.{n}"))
}

/// Runs `bigtransfer client ARGS` with `stdin` fed in, bounded in time.
pub fn client(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("client").args(args);
    private_known_hosts(&mut cmd, args, env);
    for k in ["LANG", "LC_ALL", "LC_MESSAGES"] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start client");
    let mut si = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = si.write_all(&data);
    });
    let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (out, err) = (Lines::spawn_reader(o, None), Lines::spawn_reader(e, None));
    let status = wait_child(&mut child, Duration::from_secs(180)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("client did not finish; stderr:\n{}", err.text())
    });
    // Readers end at EOF once the child has exited.
    wait_until(Duration::from_secs(5), || {
        Arc::strong_count(&out.0) == 1 && Arc::strong_count(&err.0) == 1
    });
    Output {
        status,
        stdout: out.text().into_bytes(),
        stderr: err.text().into_bytes(),
    }
}

/// `client --host 127.0.0.1 --port P --json --quiet FILE EXTRA...`.
pub fn send(server: &ServerProc, file: &Path, extra: &[&str]) -> Output {
    let port = server.port();
    let f = file.to_str().unwrap();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--json", "--quiet"];
    args.extend_from_slice(extra);
    args.push(f);
    client(&args, b"", &[])
}

/// A numeric field of the client's `--json` line.
pub fn field(out: &Output, key: &str) -> u64 {
    let s = String::from_utf8_lossy(&out.stdout);
    let pat = format!("\"{key}\": ");
    let i = s.find(&pat).unwrap_or_else(|| {
        panic!(
            "no {key} in {s:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    s[i + pat.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "client failed; stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    assert!(stdout(out).contains("CRC32_OK"), "{}", stdout(out));
}

/// Fails the test, with both output streams, unless `out` exited `code`.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// Starts `bigtransfer client --quiet --no-cache` against `srv` in the
/// background with `extra` flags, for `file`, stderr piped (stdout
/// discarded): for tests that act while an upload runs.
pub fn spawn_client(srv: &ServerProc, file: &Path, extra: &[&str]) -> Child {
    let mut cmd = Command::new(BIN);
    private_known_hosts(&mut cmd, extra, &[]);
    cmd.args([
        "client",
        "--host",
        "127.0.0.1",
        "--port",
        &srv.port(),
        "--quiet",
        "--no-cache",
    ])
    .args(extra)
    .arg(file)
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits for a background client; returns its exit code and stderr.
pub fn finish_client(mut c: Child) -> (Option<i32>, String) {
    let status = wait_child(&mut c, LONG).expect("client hung");
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

/// Whether this process may mount a tmpfs in a private mount namespace
/// (root and `unshare`): the full-disk tests need it and say so otherwise.
pub fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1M tmpfs /mnt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Reads one version-2 server frame (after the magic when `magic`).
pub fn server_frame(s: &mut std::net::TcpStream, magic: bool) -> bigtransfer_core::v2::ServerMsg {
    s.set_read_timeout(Some(LONG)).unwrap();
    server_frame_from(s, magic)
}

/// [`server_frame`] from any stream (a TLS connection too); the caller
/// bounds its reads.
pub fn server_frame_from(s: &mut impl Read, magic: bool) -> bigtransfer_core::v2::ServerMsg {
    use bigtransfer_core::v2;
    if magic {
        let mut m = [0u8; 8];
        s.read_exact(&mut m).unwrap();
        assert_eq!(m, v2::MAGIC);
    }
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let (tag, len) = v2::parse_server_head(head).unwrap();
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    v2::parse_server_msg(tag, &p).unwrap()
}

/// A protocol 2 header frame offering a 10-byte file `name` (the length
/// prefix, then the JSON that a token answer covers: `frame[4..]`).
pub fn v2_header(name: &str) -> Vec<u8> {
    use bigtransfer_core::v2;
    let h = bigtransfer_core::proto::Header {
        filename: name.into(),
        filesize: 10,
        crc32: 0,
    };
    v2::encode_header(
        &h,
        v2::Offer {
            version: 2,
            block_size: 1 << 20,
            rev: 1,
            source: None,
        },
    )
    .unwrap()
}

/// A server whose storage directory `store` is a tmpfs of `size` (`24M`)
/// mounted in a private mount namespace, and the path under which the test
/// sees that tmpfs (through the server's `/proc/PID/root`). `None` (with a
/// message) where this process may not mount one (needs root and unshare).
pub fn server_on_tmpfs(store: &Path, size: &str, extra: &[&str]) -> Option<(ServerProc, PathBuf)> {
    if !can_unshare() {
        eprintln!(
            "skipping: cannot mount a tmpfs in a private mount namespace (needs root and unshare)"
        );
        return None;
    }
    let mount = format!("mount -t tmpfs -o size={size} tmpfs '{}'", store.display());
    Some(server_on_mount(store, &mount, extra))
}

/// As [`server_on_tmpfs`], on an ext4 file system of `size` in an image
/// file beside `store`, loop-mounted: the server's writes allocate their
/// range first there, so a full disk is met by that allocation. `None`
/// (with a message) where this process may not make and mount one (needs
/// root, unshare, mkfs.ext4 and a loop device).
pub fn server_on_ext4(store: &Path, size: &str, extra: &[&str]) -> Option<(ServerProc, PathBuf)> {
    let img = store.with_extension("ext4.img");
    let make = format!(
        "truncate -s {size} '{img}' && mkfs.ext4 -q -F '{img}' >/dev/null 2>&1",
        img = img.display()
    );
    let probe = format!("{make} && mount -o loop '{}' /mnt", img.display());
    let can = Command::new("unshare")
        .args(["-m", "sh", "-c", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        eprintln!("skipping: cannot loop-mount an ext4 image in a private mount namespace (needs root, unshare, mkfs.ext4, a loop device)");
        return None;
    }
    let mount = format!(
        "{make} && mount -o loop '{}' '{}'",
        img.display(),
        store.display()
    );
    Some(server_on_mount(store, &mount, extra))
}

/// A server on `store` after `mount` ran in a private mount namespace, and
/// the path under which the test sees that file system.
fn server_on_mount(store: &Path, mount: &str, extra: &[&str]) -> (ServerProc, PathBuf) {
    std::fs::create_dir_all(store).unwrap();
    let script = format!(
        "{mount} && exec '{}' server --port 0 --bind 127.0.0.1 --dir '{}' {}",
        BIN,
        store.display(),
        extra.join(" ")
    );
    let srv = ServerProc::spawn(
        Command::new("unshare").args(["-m", "sh", "-c", &script]),
        store,
    );
    let view = Path::new("/proc")
        .join(srv.child.id().to_string())
        .join("root")
        .join(store.strip_prefix("/").unwrap());
    (srv, view)
}

/// Writes `bytes` at `offset` into the one held part in `dir` behind the
/// server's back (as another process with access to the disk could).
pub fn scribble_on_held_part(dir: &Path, offset: u64, bytes: &[u8]) {
    let parts = held_parts(dir);
    assert_eq!(parts.len(), 1, "{parts:?}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&parts[0])
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, offset).unwrap();
}
