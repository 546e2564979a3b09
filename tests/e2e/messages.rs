//! What the client says and accepts: HOST:PORT and [V6]:PORT, a refused
//! connection named at once with each retry counted, the interactive retry
//! that changes the port, pasted paths, the command that resumes after a
//! failure (run here to prove it resumes), `--json` on failure, Russian
//! errors, and one unit system (binary: KiB, MiB) in the result line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn host_with_port_and_bracketed_ipv6() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("h.bin");
    write_random(&src, 70_000, 1);
    let srv = ServerProc::start(&t.path().join("s4"), &[]);
    let host = format!("127.0.0.1:{}", srv.port());
    let out = client(
        &["--host", &host, "--json", "--quiet", src.to_str().unwrap()],
        b"",
        &[],
    );
    assert_ok(&out);
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let srv6 = ServerProc::start_at("::1", &t.path().join("s6"), &[]);
        let host = format!("[::1]:{}", srv6.port());
        let out = client(
            &["--host", &host, "--quiet", src.to_str().unwrap()],
            b"",
            &[],
        );
        assert_ok(&out);
        assert_same_file(&src, &t.path().join("s6/h.bin"));
    }
    // A port in --host that --port contradicts is a usage error, in words.
    let out = client(
        &["--host", &host, "--port", "1", src.to_str().unwrap()],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("names port"), "{}", stderr(&out));
}

#[test]
fn refused_connection_is_named_at_once_and_each_retry_counted() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("r.bin");
    write_random(&src, 10, 2);
    let port = closed_port();
    let host = format!("127.0.0.1:{port}");
    let out = client(
        &[
            "--host",
            &host,
            "--retries",
            "2",
            "--json",
            src.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let se = stderr(&out);
    let refused = format!(
        "server 127.0.0.1:{port} is unreachable: connection refused, nothing listens on that port"
    );
    assert!(
        se.contains(&format!(
            "{refused} (wrong port, or the server is not running); retrying in 0.5 s, 1 of 2"
        )),
        "{se}"
    );
    assert!(se.contains("; retrying in 1 s, 2 of 2"), "{se}");
    assert!(!se.contains("to resume"), "nothing was held: {se}");
    // --json: a result object on failure too.
    let so = stdout(&out);
    assert!(so.starts_with("{\"result\": \"ERROR\", \"exit_code\": 3, \"reason\": \"unreachable\", \"message\": \"server 127.0.0.1:"), "{so}");
    assert!(so.trim_end().ends_with("\"resume_command\": null}"), "{so}");
}

#[test]
fn russian_locale_gives_russian_errors() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ru.bin");
    write_random(&src, 10, 3);
    let port = closed_port().to_string();
    let out = client(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--retries",
            "0",
            src.to_str().unwrap(),
        ],
        b"",
        &[("LANG", "ru_RU.UTF-8")],
    );
    assert_eq!(out.status.code(), Some(3));
    let se = stderr(&out);
    let want =
        format!("ошибка: сервер 127.0.0.1:{port} недоступен: соединение отклонено, на этом порту никто не слушает");
    assert!(se.contains(&want), "{se}");
    let out = client(
        &["--host", "127.0.0.1", "--port", &port, "/no/such/file"],
        b"",
        &[("LANG", "ru_RU.UTF-8")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ошибка: не удаётся открыть /no/such/file: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn interactive_retry_can_change_the_port_and_pasted_paths_work() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("my file.bin");
    write_random(&src, 50_000, 4);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    let wrong = closed_port();
    // The path pasted as a shell would quote it; then the corrected port.
    let answers = format!("127.0.0.1\n{wrong}\n'{}'\n:{}\n", src.display(), srv.port());
    let out = client(&["--retries", "0"], answers.as_bytes(), &[]);
    assert_ok(&out);
    let so = stdout(&out);
    assert_eq!(
        so.matches("Try again? [Y/n, or a new address HOST:PORT or :PORT]: ")
            .count(),
        1,
        "{so}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "server 127.0.0.1:{wrong} is unreachable: connection refused"
        )),
        "{}",
        stderr(&out)
    );
    assert_same_file(&src, &t.path().join("store/my file.bin"));
    // Backslash escapes, as a file manager pastes them.
    let escaped = src.display().to_string().replace(' ', "\\ ");
    let answers = format!("127.0.0.1\n{}\n{escaped}\n", srv.port());
    assert_ok(&client(&[], answers.as_bytes(), &[]));
}

/// Splits the printed resume command into words (it quotes with '...').
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut any) = (String::new(), false, false);
    for c in cmd.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn an_interrupted_upload_ends_with_the_command_that_resumes_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("ctrl c.bin");
    write_random(&src, 6 << 20, 5);
    let srv = ServerProc::start(&t.path().join("store"), &[]);
    isolate_cache();
    let mut child = Command::new(BIN)
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
            "--json",
            "--quiet",
            "--limit-rate",
            "4M",
        ])
        .arg(&src)
        .env_remove("LANG")
        .env_remove("LC_ALL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || held_part_len(&srv.dir) >= 1 << 20),
        "no progress"
    );
    // SAFETY: SIGINT (Ctrl-C) to the PID of the child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = wait_output(&mut child);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let se = stderr(&out);
    let hint = "the server keeps what it received; to resume, run: ";
    let cmd = se
        .lines()
        .last()
        .and_then(|l| l.strip_prefix(hint))
        .unwrap_or_else(|| panic!("{se}"));
    let so = stdout(&out);
    assert!(
        so.contains("\"exit_code\": 130, \"reason\": \"cancelled\""),
        "{so}"
    );
    assert!(
        so.contains(&format!("\"resume_command\": {}", json_str(cmd))),
        "{so}"
    );
    let w = words(cmd);
    assert_eq!(&w[..2], ["bigtransfer", "client"], "{cmd}");
    assert_eq!(w.last().map(Path::new), Some(src.as_path()), "{cmd}");
    // Run it: it resumes and finishes the file.
    let again = client(
        &w[2..].iter().map(String::as_str).collect::<Vec<_>>(),
        b"",
        &[],
    );
    assert_ok(&again);
    let resumed: u64 = stdout(&again)
        .split("resumed from ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(resumed >= 1 << 20, "{}", stdout(&again));
    assert_same_file(&src, &srv.dir.join("ctrl c.bin"));
    // One unit system: the result line's rate is in binary units, as the bar's.
    let line = stdout(&again);
    let rate = line.trim_end().rsplit(", ").next().unwrap_or("");
    assert!(rate.ends_with("iB/s") || rate.ends_with(" B/s"), "{line}");
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn wait_output(child: &mut std::process::Child) -> std::process::Output {
    let status =
        wait_child(child, Duration::from_secs(60)).expect("client did not stop after SIGINT");
    let mut so = String::new();
    let mut se = String::new();
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut so);
    let _ = child.stderr.take().unwrap().read_to_string(&mut se);
    std::process::Output {
        status,
        stdout: so.into_bytes(),
        stderr: se.into_bytes(),
    }
}
