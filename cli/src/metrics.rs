//! `bigtransfer server --metrics ADDR`: the server's counters as Prometheus
//! text at `GET /metrics`, served by tiny_http on a thread of its own.
//!
//! Not for: control of the server (it is read-only), nor anything the
//! public port should expose: it listens on loopback unless told otherwise.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bigtransfer_core::server::{ServerStats, FAILURE_REASONS};
use bigtransfer_core::Server;

/// `PORT` (loopback), `HOST:PORT` or `[V6]:PORT` as a socket address.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("'{s}' is not a metrics address (use a port, IP:PORT or [IPv6]:PORT)"))
}

/// Held parts in the storage directory: how many, and their bytes.
pub fn held_parts(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir.join(".bigtransfer")) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// What one scrape shows, gathered before rendering.
pub struct Snapshot {
    pub stats: ServerStats,
    pub held: (u64, u64),
    pub free: Option<u64>,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    out.push_str(&format!(
        "# HELP bigtransfer_{name} {help}\n# TYPE bigtransfer_{name} {kind}\n"
    ));
    for (labels, v) in samples {
        out.push_str(&format!("bigtransfer_{name}{labels} {v}\n"));
    }
}

/// The Prometheus text exposition (version 0.0.4) of `s`.
pub fn render(s: &Snapshot) -> String {
    let st = &s.stats;
    let mut o = String::new();
    metric(
        &mut o,
        "uploads_running",
        "gauge",
        "Uploads being received now.",
        &[("", st.uploads_running)],
    );
    metric(
        &mut o,
        "uploads_completed_total",
        "counter",
        "Uploads verified (CRC32_OK).",
        &[("", st.completed)],
    );
    let labels: Vec<String> = std::iter::once("crc-mismatch")
        .chain(FAILURE_REASONS)
        .map(|r| format!("{{reason=\"{r}\"}}"))
        .collect();
    let values = std::iter::once(st.crc_errors).chain(st.failed_by_reason);
    let failed: Vec<(&str, u64)> = labels.iter().map(String::as_str).zip(values).collect();
    metric(
        &mut o,
        "uploads_failed_total",
        "counter",
        "Uploads and connections that failed, by reason.",
        &failed,
    );
    metric(
        &mut o,
        "received_bytes_total",
        "counter",
        "File bytes received.",
        &[("", st.bytes_received)],
    );
    metric(
        &mut o,
        "held_parts",
        "gauge",
        "Interrupted uploads held for resuming.",
        &[("", s.held.0)],
    );
    metric(
        &mut o,
        "held_part_bytes",
        "gauge",
        "Bytes of the held parts.",
        &[("", s.held.1)],
    );
    metric(
        &mut o,
        "connections_total",
        "counter",
        "Connections accepted.",
        &[("", st.connections)],
    );
    metric(
        &mut o,
        "connections_open",
        "gauge",
        "Connections open now.",
        &[("", st.live_connections)],
    );
    metric(
        &mut o,
        "connections_refused_total",
        "counter",
        "Connections closed at once (server full).",
        &[("", st.refused)],
    );
    if let Some(free) = s.free {
        metric(
            &mut o,
            "free_bytes",
            "gauge",
            "Free bytes on the storage file system.",
            &[("", free)],
        );
    }
    o
}

/// Binds `addr` and answers scrapes on a background thread for as long as
/// the process runs. Returns the address actually bound.
pub fn spawn(addr: SocketAddr, server: Arc<Server>, dir: &Path) -> Result<SocketAddr, String> {
    let http = tiny_http::Server::http(addr)
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let bound = http
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("metrics: {addr} is not an IP address"))?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("bt-metrics".into())
        .spawn(move || {
            for req in http.incoming_requests() {
                let _ = answer(req, &server, &dir);
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

fn answer(req: tiny_http::Request, server: &Server, dir: &Path) -> std::io::Result<()> {
    use tiny_http::{Header, Method, Response};
    if *req.method() != Method::Get || req.url().split('?').next() != Some("/metrics") {
        return req
            .respond(Response::from_string("not found: try GET /metrics\n").with_status_code(404));
    }
    let snap = Snapshot {
        stats: server.stats(),
        held: held_parts(dir),
        free: server.available_space().ok(),
    };
    let mut resp = Response::from_string(render(&snap));
    if let Ok(h) = Header::from_bytes("Content-Type", "text/plain; version=0.0.4; charset=utf-8") {
        resp.add_header(h);
    }
    req.respond(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("9180").unwrap().to_string(), "127.0.0.1:9180");
        assert_eq!(parse_addr("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
        assert_eq!(parse_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_addr("localhost")
            .unwrap_err()
            .contains("not a metrics address"));
    }

    #[test]
    fn rendering_names_every_metric() {
        let mut stats = ServerStats {
            completed: 3,
            crc_errors: 1,
            uploads_running: 2,
            ..Default::default()
        };
        stats.failed_by_reason[9] = 4; // timed-out
        let text = render(&Snapshot {
            stats,
            held: (1, 500),
            free: Some(7),
        });
        for line in [
            "bigtransfer_uploads_running 2",
            "bigtransfer_uploads_completed_total 3",
            "bigtransfer_uploads_failed_total{reason=\"crc-mismatch\"} 1",
            "bigtransfer_uploads_failed_total{reason=\"timed-out\"} 4",
            "bigtransfer_held_parts 1",
            "bigtransfer_held_part_bytes 500",
            "bigtransfer_free_bytes 7",
            "# TYPE bigtransfer_received_bytes_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
