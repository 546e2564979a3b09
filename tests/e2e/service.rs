//! Running the server as a service: the config file (`--config`, flags win,
//! errors name the line), `--log-format` with RFC 3339 times, the readiness
//! lines, `--metrics` scraped over loopback, and SIGTERM.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::hostile::send_header;

fn server_cmd(args: &[&str]) -> Output2 {
    let out = Command::new(BIN)
        .arg("server")
        .args(args)
        .output()
        .expect("run bigtransfer server");
    Output2 {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Output2 {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

#[test]
fn config_file_is_read_and_flags_win() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("server.toml");
    std::fs::write(
        &cfg,
        "# settings\nport = 9000\nmax-connections = 7\ntimeout = \"90s\"\nmin_free = \"1G\"\nlog_format = \"json\"\nmetrics = 9180\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let o = server_cmd(&["--config", c, "--port", "9100", "--check-config"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for line in [
        "configuration OK",
        "port = 9100",
        "max_connections = 7",
        "timeout = 90s",
        "min_free = 1073741824",
        "log_format = Json",
        "metrics = 127.0.0.1:9180",
    ] {
        assert!(
            o.stdout.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            o.stdout
        );
    }
}

#[test]
fn config_errors_name_the_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("bad.toml");
    let c = cfg.to_str().unwrap();
    for (text, want) in [
        (
            "port = 9000\n\nprot = 1\n",
            "bad.toml: line 3: unknown field `prot`",
        ),
        (
            "port = 9000\ntimeout = \"5x\"\n",
            "bad.toml: line 2: unknown unit 'x' in '5x'",
        ),
        (
            "\nbind = \"nowhere\"\n",
            "bad.toml: line 2: 'nowhere' is not an IP address",
        ),
        (
            "log_format = \"xml\"\n",
            "bad.toml: line 1: log_format is 'text' or 'json', not 'xml'",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let o = server_cmd(&["--config", c, "--check-config"]);
        assert_eq!(o.code, Some(2), "{text:?}: {}", o.stderr);
        assert!(
            o.stderr.contains(want),
            "{text:?}: want {want:?} in {}",
            o.stderr
        );
    }
    let o = server_cmd(&["--config", &format!("{c}.missing")]);
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr.contains("cannot read the config file"),
        "{}",
        o.stderr
    );
}

/// GET /metrics over loopback; the samples by name (with labels).
fn scrape(addr: SocketAddr) -> HashMap<String, u64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut m = HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.rsplit_once(' ').expect("NAME VALUE");
        assert!(k.starts_with("bigtransfer_"), "{line}");
        m.insert(
            k.to_string(),
            v.parse().unwrap_or_else(|_| panic!("{line}")),
        );
    }
    m
}

fn metrics_addr(srv: &ServerProc) -> SocketAddr {
    assert!(
        srv.out.wait_for("metrics at http://", LONG),
        "{}",
        srv.out.text()
    );
    let text = srv.out.text();
    let line = text.lines().find(|l| l.starts_with("metrics at")).unwrap();
    line.trim_start_matches("metrics at http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap()
}

fn failed_total(m: &HashMap<String, u64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("bigtransfer_uploads_failed_total{"))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_are_served_on_loopback_and_count_what_happened() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("store"), &["--metrics", "0"]);
    let maddr = metrics_addr(&srv);
    assert!(maddr.ip().is_loopback(), "{maddr}");
    let m = scrape(maddr);
    assert_eq!(m["bigtransfer_uploads_completed_total"], 0);
    assert_eq!(m["bigtransfer_held_parts"], 0);
    assert!(m["bigtransfer_free_bytes"] > 0);

    let f = t.path().join("a.bin");
    write_random(&f, 300_000, 1);
    assert_ok(&send(&srv, &f, &[]));
    // A broken header (refused) and an upload cut at byte 1234 (held).
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&5u32.to_be_bytes()).unwrap();
    s.write_all(b"hello").unwrap();
    let _ = s.read(&mut [0u8; 8]);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "cut.bin", 5000, 0);
    s.read_exact(&mut [0u8; 8]).unwrap();
    s.write_all(&[7u8; 1234]).unwrap();
    drop(s);
    assert!(
        srv.log.wait_for("client disconnected at byte 1234", LONG),
        "{}",
        srv.log.text()
    );

    let mut m = HashMap::new();
    assert!(
        wait_until(LONG, || {
            m = scrape(maddr);
            m["bigtransfer_held_parts"] == 1 && failed_total(&m) >= 2
        }),
        "{m:?}"
    );
    assert_eq!(m["bigtransfer_uploads_completed_total"], 1);
    // The bad header is refused; the cut upload lost its connection.
    let reason = |r: &str| m[&format!("bigtransfer_uploads_failed_total{{reason=\"{r}\"}}")];
    assert_eq!(
        (reason("refused"), reason("connection-lost")),
        (1, 1),
        "{m:?}"
    );
    assert_eq!(m["bigtransfer_received_bytes_total"], 300_000 + 1234);
    assert!(m["bigtransfer_held_part_bytes"] >= 1234, "{m:?}");
    assert_eq!(m["bigtransfer_uploads_running"], 0);
    assert_eq!(m["bigtransfer_connections_refused_total"], 0);
    assert!(m["bigtransfer_connections_total"] >= 3);
    // Anything but GET /metrics is a 404.
    let mut s = TcpStream::connect(maddr).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.contains(" 404 "), "{r}");
}

fn is_rfc3339_millis(ts: &str) -> bool {
    // 2026-11-30T06:56:32.581Z
    let b = ts.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && ts.chars().filter(char::is_ascii_digit).count() == 17
}

#[test]
fn log_lines_carry_rfc3339_times_in_text_and_json() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("s1"), &[]);
    assert!(srv.log.wait_for("storing into", LONG), "{}", srv.log.text());
    let first = srv.log.text().lines().next().unwrap().to_string();
    let ts = first
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .map(|x| x.0);
    assert!(ts.is_some_and(is_rfc3339_millis), "{first}");
    // The readiness lines: the address a client can use comes after it.
    assert!(
        srv.out
            .wait_for(&format!("reachable at {}", srv.addr), LONG),
        "{}",
        srv.out.text()
    );
    assert_eq!(srv.terminate().code(), Some(0));

    let srv = ServerProc::start(&t.path().join("s2"), &["--log-format", "json"]);
    assert!(srv.log.wait_for("storing into", LONG), "{}", srv.log.text());
    let log = srv.log.text();
    assert_eq!(srv.terminate().code(), Some(0));
    for line in log.lines() {
        let rest = line
            .strip_prefix("{\"time\": \"")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(is_rfc3339_millis(&rest[..24]), "{line}");
        assert!(
            rest[24..].starts_with("\", \"msg\": \"") && line.ends_with("\"}"),
            "{line}"
        );
    }
}

#[test]
fn every_interface_lists_the_loopback_address_to_use() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start_at("0.0.0.0", &t.path().join("s"), &[]);
    let want = format!("reachable at 127.0.0.1:{}", srv.port());
    assert!(srv.out.wait_for(&want, LONG), "{}", srv.out.text());
    assert_eq!(
        srv.out.text().lines().next().unwrap(),
        format!("listening on 0.0.0.0:{}", srv.port())
    );
}

#[test]
fn sigterm_checkpoints_and_exits_zero() {
    let t = tempfile::tempdir().unwrap();
    let srv = ServerProc::start(&t.path().join("s"), &[]);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    send_header(&mut s, "held.bin", 100_000, 0);
    s.read_exact(&mut [0u8; 8]).unwrap();
    s.write_all(&[1u8; 4096]).unwrap();
    let dir = srv.dir.clone();
    let log = srv.log.clone();
    assert_eq!(srv.terminate().code(), Some(0), "{}", log.text());
    assert!(log.wait_for("stopped:", LONG), "{}", log.text());
    assert_eq!(held_parts(Path::new(&dir)).len(), 1);
}
