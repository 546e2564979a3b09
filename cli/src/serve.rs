//! `bigtransfer server`: its flags, the config file merged under them, the
//! log line format, the readiness lines, and the metrics endpoint.
//!
//! Not for: serving itself (the core's `Server` does that).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bigtransfer_core::server::{Logger, TlsMode};
use bigtransfer_core::{Server, ServerConfig};

use crate::config::{self, Loaded};
use crate::{exit, parse, AuthArgs};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Read settings from this TOML file (keys are the flag names, e.g.
    /// `port = 8080`, `max_connections = 64`); flags given here win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Parse the flags and the config file, print the settings and exit.
    #[arg(long)]
    check_config: bool,
    /// TCP port to listen on (0: pick a free one; the chosen port is printed) [default: 8080].
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on [default: every interface, IPv6 and IPv4].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Storage directory (created if missing) [default: received].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Most connections served at once [default: 64].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Close a connection idle for this long (e.g. 60, 90s, 5m) [default: 60s].
    #[arg(long, value_parser = parse::duration)]
    timeout: Option<Duration>,
    /// Close a connection that has not sent its complete header within this time [default: 10s].
    #[arg(long, value_parser = parse::duration)]
    header_timeout: Option<Duration>,
    /// Delete held parts untouched for this long (e.g. 7d, 12h; 0: never) [default: 7d].
    #[arg(long, value_parser = parse::duration)]
    expire_partial: Option<Duration>,
    /// Refuse uploads larger than this (e.g. 100G) [default: no limit].
    #[arg(long, value_parser = parse::size)]
    max_file_size: Option<u64>,
    /// Refuse uploads that would leave less free space than this (e.g. 10G) [default: 0].
    #[arg(long, value_parser = parse::size)]
    min_free: Option<u64>,
    /// Close a connection whose data arrives slower than this many bytes per
    /// second, measured over windows of the idle timeout (at most 60 s); 0:
    /// no minimum [default: 1K].
    #[arg(long, value_parser = parse::size)]
    min_rate: Option<u64>,
    /// Refuse a tree whose manifest lists more entries than this
    /// (files, directories and symlinks) [default: 10000000].
    #[arg(long)]
    max_tree_entries: Option<u64>,
    /// For tests: files over this many bytes are left out of a tree get's
    /// own blocks (a new client fetches them alone; an older one is told
    /// to). At most, and by default, the protocol's limit (128 GiB).
    #[arg(long, hide = true, value_parser = parse::size)]
    tree_get_file_limit: Option<u64>,
    #[command(flatten)]
    auth: AuthArgs,
    /// With a token: also admit legacy clients, which cannot authenticate;
    /// with --tls required: also serve plaintext (legacy) connections.
    #[arg(long)]
    allow_legacy: bool,
    /// A different file uploaded under a name already stored replaces it
    /// [default: the stored file is kept as NAME.~N~ beside the new one].
    #[arg(long)]
    overwrite: bool,
    /// TLS on the port: auto (TLS and plaintext legacy clients, told apart
    /// by their first byte), required (TLS only) or off (plaintext only) [default: auto].
    #[arg(long, value_parser = ["auto", "required", "off"])]
    tls: Option<String>,
    /// The server's Ed25519 key (PKCS#8, mode 0600; made if missing) [default: DIR/.bigtransfer/key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Log lines as text (`[RFC 3339 time] message`) or one JSON object
    /// per line (`{"time": ..., "msg": ...}`) [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Serve Prometheus metrics at http://ADDR/metrics; a port alone means
    /// 127.0.0.1:PORT (e.g. 9180, 0.0.0.0:9180, [::1]:9180).
    #[arg(long)]
    metrics: Option<String>,
    /// Keep uploads in an S3-compatible object store instead of --dir:
    /// s3://BUCKET[/PREFIX]. Several servers
    /// over one bucket resume each other's uploads. Credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
    #[arg(long)]
    store: Option<String>,
    /// The object store's endpoint, e.g. http://127.0.0.1:8333 (path-style
    /// addressing) [default: https://s3.REGION.amazonaws.com].
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// The object store's signing region [default: us-east-1].
    #[arg(long)]
    s3_region: Option<String>,
    /// Another server may take over an upload whose server wrote nothing
    /// to the store for this long [default: 30s].
    #[arg(long, value_parser = parse::duration)]
    s3_lease_stale: Option<Duration>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One log line, stamped with the RFC 3339 UTC time (milliseconds). The
/// Python server (python/server.py) writes the same two shapes.
pub fn format_line(fmt: LogFormat, at: SystemTime, msg: &str) -> String {
    let ts = humantime::format_rfc3339_millis(at);
    match fmt {
        LogFormat::Text => format!("[{ts}] {msg}"),
        LogFormat::Json => format!(
            "{{\"time\": \"{ts}\", \"msg\": {}}}",
            crate::prompt::json_string(msg)
        ),
    }
}

fn logger(fmt: LogFormat) -> Logger {
    Arc::new(move |msg: &str| eprintln!("{}", format_line(fmt, SystemTime::now(), msg)))
}

/// Everything the server runs with, after flags, config file and defaults.
struct Settings {
    cfg: ServerConfig,
    log_format: LogFormat,
    metrics: Option<SocketAddr>,
}

/// `flag`, else the config file's value, else nothing.
fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

/// A config file value without its position.
fn val<T: Clone>(v: &Option<toml::Spanned<T>>) -> Option<T> {
    v.as_ref().map(|s| s.get_ref().clone())
}

fn merge(a: &ServerArgs, f: Option<&Loaded>) -> Result<Settings, String> {
    let empty = config::FileConfig::default();
    let c = f.map_or(&empty, |l| &l.cfg);
    let dur = |v| f.map_or(Ok(None), |l| l.duration(v));
    let size = |v| f.map_or(Ok(None), |l| l.size(v));
    let bind = match &c.bind {
        None => None,
        Some(b) => Some(b.get_ref().parse::<IpAddr>().map_err(|_| {
            f.map(|l| l.error_at(b.span(), &format!("'{}' is not an IP address", b.get_ref())))
                .unwrap_or_default()
        })?),
    };
    let mut cfg =
        ServerConfig::new(pick(a.dir.clone(), val(&c.dir)).unwrap_or_else(|| "received".into()));
    cfg.bind = pick(a.bind, bind);
    cfg.port = pick(a.port, val(&c.port)).unwrap_or(8080);
    cfg.max_connections = pick(a.max_connections, val(&c.max_connections)).unwrap_or(64);
    cfg.idle_timeout = pick(a.timeout, dur(&c.timeout)?).unwrap_or(Duration::from_secs(60));
    cfg.header_timeout =
        pick(a.header_timeout, dur(&c.header_timeout)?).unwrap_or(Duration::from_secs(10));
    let expire =
        pick(a.expire_partial, dur(&c.expire_partial)?).unwrap_or(Duration::from_secs(7 * 86400));
    cfg.expire_partial = (!expire.is_zero()).then_some(expire);
    cfg.max_file_size = pick(a.max_file_size, size(&c.max_file_size)?);
    cfg.min_free = pick(a.min_free, size(&c.min_free)?).unwrap_or(0);
    cfg.min_rate = pick(a.min_rate, size(&c.min_rate)?).unwrap_or(1024);
    if let Some(n) = a.max_tree_entries {
        cfg.max_tree_entries = n;
    }
    if let Some(n) = a.tree_get_file_limit {
        cfg.tree_get_file_limit = n.min(bigtransfer_core::tree::fetch::MAX_FILE);
    }
    cfg.allow_legacy = a.allow_legacy || val(&c.allow_legacy).unwrap_or(false);
    cfg.overwrite = a.overwrite || val(&c.overwrite).unwrap_or(false);
    cfg.token = token(a, c)?;
    cfg.key_file = pick(a.key.clone(), val(&c.key));
    cfg.tls = match (&a.tls, &c.tls) {
        (Some(t), _) => TlsMode::parse(t).map_err(|e| e.to_string())?,
        (None, Some(t)) => TlsMode::parse(t.get_ref()).map_err(|e| {
            f.map(|l| {
                l.error_at(
                    t.span(),
                    &format!("tls is 'auto', 'required' or 'off', not '{}'", t.get_ref()),
                )
            })
            .unwrap_or_else(|| e.to_string())
        })?,
        (None, None) => TlsMode::Auto,
    };
    let log_format = match (a.log_format, &c.log_format) {
        (Some(x), _) => x,
        (None, None) => LogFormat::Text,
        (None, Some(s)) => match s.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(f
                    .map(|l| {
                        l.error_at(
                            s.span(),
                            &format!("log_format is 'text' or 'json', not '{other}'"),
                        )
                    })
                    .unwrap_or_default())
            }
        },
    };
    store_settings(a, c, f, &mut cfg)?;
    let metrics_text = match &a.metrics {
        Some(m) => Some(m.clone()),
        None => f.map_or(Ok(None), |l| l.metrics())?,
    };
    let metrics = metrics_text
        .map(|m| crate::metrics::parse_addr(&m))
        .transpose()?;
    Ok(Settings {
        cfg,
        log_format,
        metrics,
    })
}

/// `--store` and the `--s3-*` flags (or their config keys) into `cfg`.
#[cfg(feature = "s3")]
fn store_settings(
    a: &ServerArgs,
    c: &config::FileConfig,
    f: Option<&Loaded>,
    cfg: &mut ServerConfig,
) -> Result<(), String> {
    let Some(url) = pick(a.store.clone(), val(&c.store)) else {
        return Ok(());
    };
    let endpoint = pick(a.s3_endpoint.clone(), val(&c.s3_endpoint));
    let region = pick(a.s3_region.clone(), val(&c.s3_region));
    let s3 = bigtransfer_core::s3::store_config(&url, endpoint.as_deref(), region.as_deref())
        .map_err(|e| format!("--store {url}: {}", e.message))?;
    cfg.s3 = Some(s3);
    let stale = f.map_or(Ok(None), |l| l.duration(&c.s3_lease_stale))?;
    if let Some(d) = pick(a.s3_lease_stale, stale) {
        cfg.s3_lease_stale = d;
    }
    Ok(())
}

#[cfg(not(feature = "s3"))]
fn store_settings(
    a: &ServerArgs,
    c: &config::FileConfig,
    _: Option<&Loaded>,
    _: &mut ServerConfig,
) -> Result<(), String> {
    let asked = a.store.is_some()
        || a.s3_endpoint.is_some()
        || a.s3_region.is_some()
        || a.s3_lease_stale.is_some()
        || c.store.is_some()
        || c.s3_endpoint.is_some()
        || c.s3_region.is_some()
        || c.s3_lease_stale.is_some();
    if asked {
        return Err(
            "--store and --s3-*: this bigtransfer was built without object-store support (cargo feature `s3`)"
                .into(),
        );
    }
    Ok(())
}

/// Where uploads go, for the log and `--check-config`.
fn store_words(c: &ServerConfig) -> String {
    #[cfg(feature = "s3")]
    if let Some(s3) = &c.s3 {
        return format!("s3://{}/{} at {}", s3.bucket, s3.prefix, s3.endpoint);
    }
    c.dir.display().to_string()
}

/// The token: from the flags, else the environment, else the config file.
fn token(
    a: &ServerArgs,
    c: &config::FileConfig,
) -> Result<Option<bigtransfer_core::auth::Token>, String> {
    let from_env = std::env::var_os("BIGTRANSFER_TOKEN").is_some_and(|t| !t.is_empty());
    let mut auth = AuthArgs {
        token_file: a.auth.token_file.clone(),
        token: a.auth.token.clone(),
    };
    if auth.token_file.is_none() && auth.token.is_none() && !from_env {
        auth.token_file = c.token_file.as_ref().map(|t| t.get_ref().clone());
        auth.token = c.token.as_ref().map(|t| t.get_ref().clone());
    }
    auth.load().map_err(|e| e.to_string())
}

/// The addresses a client can use to reach a server listening on `addr`:
/// `addr` itself when it is a single address, else every address of every
/// interface of the family (both, for `[::]`), link-local ones left out
/// (they need an interface name to be of use).
pub fn reachable_at(addr: SocketAddr) -> Vec<SocketAddr> {
    if !addr.ip().is_unspecified() {
        return vec![addr];
    }
    let v6 = addr.is_ipv6();
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| v6 || ip.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80))
        .map(|ip| SocketAddr::new(ip, addr.port()))
        .collect();
    out.sort_by_key(|a| (a.is_ipv6(), !a.ip().is_loopback(), *a));
    out.dedup();
    out
}

fn print_settings(s: &Settings) {
    let c = &s.cfg;
    println!("configuration OK");
    println!(
        "bind = {}",
        c.bind
            .map_or("every interface".to_string(), |b| b.to_string())
    );
    println!("port = {}", c.port);
    println!("dir = {}", c.dir.display());
    println!("store = {}", store_words(c));
    println!("max_connections = {}", c.max_connections);
    println!("timeout = {:?}", c.idle_timeout);
    println!("header_timeout = {:?}", c.header_timeout);
    println!(
        "expire_partial = {:?}",
        c.expire_partial.unwrap_or_default()
    );
    println!(
        "max_file_size = {}",
        c.max_file_size.map_or("none".into(), |m| m.to_string())
    );
    println!("min_free = {}", c.min_free);
    println!("min_rate = {}", c.min_rate);
    println!("token = {}", if c.token.is_some() { "set" } else { "none" });
    println!("allow_legacy = {}", c.allow_legacy);
    println!("overwrite = {}", c.overwrite);
    println!("tls = {}", c.tls.as_str());
    println!(
        "key = {}",
        c.key_file.as_ref().map_or_else(
            || bigtransfer_core::tls::state_key_path(&c.dir)
                .display()
                .to_string(),
            |k| k.display().to_string()
        )
    );
    println!("log_format = {:?}", s.log_format);
    println!(
        "metrics = {}",
        s.metrics.map_or("off".into(), |m| m.to_string())
    );
}

fn settings(a: &ServerArgs) -> Result<Settings, String> {
    let file = a.config.as_deref().map(config::load).transpose()?;
    merge(a, file.as_ref())
}

pub fn run(a: ServerArgs) -> ExitCode {
    let mut s = match settings(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if a.check_config {
        print_settings(&s);
        return ExitCode::from(exit::OK);
    }
    let log = logger(s.log_format);
    s.cfg.logger = Some(Arc::clone(&log));
    let fail = |e: String| {
        log(&format!("error: {e}"));
        ExitCode::from(exit::OTHER)
    };
    let (dir, auth_on, allow_legacy, tls_mode) = (
        s.cfg.dir.clone(),
        s.cfg.token.is_some(),
        s.cfg.allow_legacy,
        s.cfg.tls,
    );
    let stored_in = store_words(&s.cfg);
    let server = match Server::bind(s.cfg) {
        Ok(x) => Arc::new(x),
        Err(e) => return fail(e.to_string()),
    };
    let addr = match server.local_addr() {
        Ok(x) => x,
        Err(e) => return fail(e.to_string()),
    };
    crate::install_stop_signals(server.stop_handle());
    let metrics = match s
        .metrics
        .map(|m| crate::metrics::spawn(m, Arc::clone(&server), &dir))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    announce(addr, server.fingerprint(), metrics);
    log(&format!("storing into {stored_in}"));
    log_tls(&log, &server, tls_mode);
    if auth_on {
        let legacy = if allow_legacy {
            "admitted without authentication (--allow-legacy)"
        } else {
            "refused"
        };
        log(&format!(
            "authentication: token required; legacy clients {legacy}"
        ));
    } else {
        log("no token: anyone who can reach the port may upload and download (see --token-file)");
    }
    match server.serve() {
        Ok(()) => {
            let st = server.stats();
            log(&format!(
                "stopped: {} connections, {} uploads verified, {} CRC errors, {} failed",
                st.connections, st.completed, st.crc_errors, st.failed
            ));
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e.to_string()),
    }
}

/// One log line on what TLS does here, and where the key came from.
fn log_tls(log: &Logger, server: &Server, mode: TlsMode) {
    let what = match mode {
        TlsMode::Auto => "TLS 1.3 for new clients, plaintext for legacy ones (--tls auto)",
        TlsMode::Required => "TLS 1.3 required (--tls required)",
        TlsMode::Off => "TLS off: every byte crosses the network in the clear (--tls off)",
    };
    log(what);
    if server.key_created() {
        if let Some(f) = server.fingerprint() {
            log(&format!("made a new key, fingerprint {f}: give it to clients out of band (bigtransfer client --fingerprint {f})"));
        }
    }
}

/// The readiness lines on standard output: first `listening on ADDR`
/// (scripts and tests parse it; keep it first and as it is), then
/// `fingerprint SHA256:...` of the TLS key (unless TLS is off), then one
/// `reachable at ADDR` per address a client can use, then the metrics URL.
fn announce(
    addr: SocketAddr,
    fingerprint: Option<bigtransfer_core::tls::Fingerprint>,
    metrics: Option<SocketAddr>,
) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    if let Some(f) = fingerprint {
        let _ = writeln!(out, "fingerprint {f}");
    }
    for a in reachable_at(addr) {
        let _ = writeln!(out, "reachable at {a}");
    }
    if let Some(m) = metrics {
        let _ = writeln!(out, "metrics at http://{m}/metrics");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_have_rfc3339_times() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_021_792_581);
        assert_eq!(
            format_line(LogFormat::Text, at, "a: b"),
            "[2026-11-30T06:56:32.581Z] a: b"
        );
        assert_eq!(
            format_line(LogFormat::Json, at, "say \"hi\"\n"),
            "{\"time\": \"2026-11-30T06:56:32.581Z\", \"msg\": \"say \\\"hi\\\"\\u000a\"}"
        );
    }

    #[test]
    fn reachable_addresses() {
        let one: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(reachable_at(one), vec![one]);
        let all = reachable_at("0.0.0.0:8080".parse().unwrap());
        assert!(all.contains(&one), "{all:?}");
        assert!(
            all.iter().all(|a| a.is_ipv4() && a.port() == 8080),
            "{all:?}"
        );
        let all6 = reachable_at("[::]:8080".parse().unwrap());
        assert!(all6.contains(&one), "{all6:?}");
    }
}
