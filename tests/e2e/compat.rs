//! Wire compatibility with the stdlib Python scripts (`python/server.py`,
//! `python/client.py`, forced to pure Python), both ways, including an
//! upload interrupted on one implementation and resumed on the other.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::harness::*;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../python")
        .join(name)
}

pub(crate) fn python() -> Option<&'static str> {
    Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3")
}

pub(crate) struct PyServer {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl PyServer {
    pub(crate) fn start(dir: &Path) -> PyServer {
        let mut child = Command::new("python3")
            .arg(script("server.py"))
            .args(["--port", "0", "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
            .env("BIGTRANSFER_PURE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(LONG)
            .expect("python server printed no address");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in listening line");
        PyServer { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the PID of the child we started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if wait_child(&mut self.child, LONG).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn python_client_to_rust_server() {
    if python().is_none() {
        eprintln!("skipping: python3 not found");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let src = t.path().join("py2rs.bin");
    write_random(&src, 5 * 1024 * 1024 + 3, 20);
    let out = legacy_py_client(&srv.addr.port().to_string(), &src, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CRC32_OK"));
    assert_same_file(&src, &t.path().join("store/py2rs.bin"));

    // Interrupted on the Python client, resumed by the Rust client.
    let src2 = t.path().join("cross.bin");
    let size = 40 * 1024 * 1024;
    write_random(&src2, size, 21);
    let mut slow = Command::new("python3")
        .arg(script("client.py"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &srv.port(),
            "--limit-rate",
            "20000000",
        ])
        .arg(&src2)
        .env("BIGTRANSFER_PURE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(LONG, || held_part_len(&srv.dir) >= 4 << 20));
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    assert!(srv.log.wait_for("held part kept", LONG));
    let out = send(&srv, &src2, &[]);
    assert_ok(&out);
    let from = field(&out, "resumed_from");
    assert!(from >= 4 << 20);
    assert_eq!(field(&out, "bytes_sent"), size - from);
    assert_same_file(&src2, &t.path().join("store/cross.bin"));
}

#[test]
fn rust_client_to_python_server() {
    if python().is_none() {
        eprintln!("skipping: python3 not found");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("pystore");
    let srv = PyServer::start(&store);
    let port = srv.port.to_string();
    for (i, size) in [0u64, 1, 3 * 1024 * 1024 + 17].into_iter().enumerate() {
        let src = t.path().join(format!("rs2py{i}.bin"));
        write_random(&src, size, 30 + i as u64);
        let out = client(
            &[
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--json",
                "--quiet",
                src.to_str().unwrap(),
            ],
            b"",
            &[],
        );
        assert_ok(&out);
        assert_eq!(
            field(&out, "protocol"),
            1,
            "a legacy server gets protocol 1"
        );
        assert_same_file(&src, &store.join(format!("rs2py{i}.bin")));
    }

    // Interrupted Rust client, resumed against the Python server.
    let src = t.path().join("resume-py.bin");
    let size = 40 * 1024 * 1024;
    write_random(&src, size, 40);
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
            &port,
            "--quiet",
            "--limit-rate",
            "20M",
        ])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let py_parts = |d: &Path| -> u64 {
        std::fs::read_dir(d.join(".bigtransfer"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(LONG, || py_parts(&store) >= 4 << 20),
        "no progress on the python server"
    );
    // SAFETY: SIGKILL to the PID of the child we started.
    unsafe { libc::kill(slow.id() as libc::pid_t, libc::SIGKILL) };
    wait_child(&mut slow, LONG).unwrap();
    let mut out = None;
    // The Python server notices the disconnect on its own schedule; poll.
    assert!(wait_until(LONG, || {
        let o = client(
            &[
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--json",
                "--quiet",
                // No cached CRC-32: the client must learn the server is
                // legacy without making it drop what it holds.
                "--no-cache",
                src.to_str().unwrap(),
            ],
            b"",
            &[],
        );
        let ok = o.status.success();
        out = Some(o);
        ok
    }));
    let out = out.unwrap();
    assert!(field(&out, "resumed_from") > 0, "{}", stdout(&out));
    assert_eq!(
        field(&out, "bytes_sent"),
        size - field(&out, "resumed_from")
    );
    assert_same_file(&src, &store.join("resume-py.bin"));
}
