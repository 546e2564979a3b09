//! `bigtransfer client`: its flags, the progress bar, retry messages, the
//! interactive "try again?" (which may change the address), Ctrl-C, the
//! result line or JSON object, and the command that resumes a failed
//! upload. Sizes and rates are in binary units (KiB, MiB, GiB: powers of
//! 1024) everywhere: the bar, the result line, the messages.
//!
//! Not for: the transfer itself (the core's `send_file`).

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigtransfer_core::compress::Compress;
use bigtransfer_core::text::printable;
use bigtransfer_core::v2::StoredAs;
use bigtransfer_core::{send_file, Control, Error, ErrorKind, Outcome, Progress, SendOptions};

use crate::msg::{self, Lang};
use crate::prompt::{self, Retry};
use crate::{exit, parse, AuthArgs};

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Server host name or IP address, optionally with the port
    /// (HOST:PORT, [IPv6]:PORT; IPv6 with or without brackets).
    #[arg(long)]
    host: Option<String>,
    /// Server port.
    #[arg(long)]
    port: Option<u16>,
    /// File to upload; a directory, or several paths, are sent as a tree
    /// (each under its base name, like `scp -r`).
    file: Option<PathBuf>,
    /// More files or directories to send in the same tree.
    more: Vec<PathBuf>,
    /// Attempts after a failure before giving up (each reconnect on which
    /// the server confirms it holds more starts the count afresh).
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Give up a connection on which nothing moves for this long.
    #[arg(long, default_value = "60s", value_parser = parse::duration)]
    timeout: Duration,
    /// Time allowed for each connect.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    connect_timeout: Duration,
    /// Send at most this many bytes per second (e.g. 10M).
    #[arg(long, value_parser = parse::size)]
    limit_rate: Option<u64>,
    /// Store the file under this name on the server [default: its base name].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Speak only the legacy protocol (version 1) in plaintext, as the
    /// original client did.
    #[arg(long, conflicts_with_all = ["require_tls", "fingerprint"])]
    legacy: bool,
    /// Compress blocks with zstd where the server accepts it: auto (only
    /// while it pays: the link, not the CPU, is the bottleneck and the data
    /// shrinks), zstd[:LEVEL] (try every block, LEVEL 1-19, default 3), off.
    #[arg(long, default_value = "auto", value_parser = parse::compress)]
    compress: Compress,
    /// Connections for one upload: N (1-8) joining one session on the
    /// server, or auto (one on a short path; on a long one start with one
    /// and add while throughput rises, up to 8). 1 is a single connection.
    #[arg(long, default_value = "auto", value_parser = bigtransfer_core::client::Streams::parse)]
    streams: bigtransfer_core::client::Streams,
    #[command(flatten)]
    pin: PinArgs,
    /// Do not read or write the cache of block checksums.
    #[arg(long)]
    no_cache: bool,
    /// Cache directory for block checksums [default: $BIGTRANSFER_CACHE_DIR,
    /// $XDG_CACHE_HOME/bigtransfer or ~/.cache/bigtransfer].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    /// Print the result as one JSON object on standard output (on failure
    /// too: the exit code, the reason and the command that resumes).
    #[arg(long)]
    json: bool,
}

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_interrupt(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM cancel the upload at the next progress report, so the
/// client can say how to resume and exit 130 instead of dying mid-line.
pub(crate) fn install_interrupt() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn exit_code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::SourceFile => exit::USAGE,
        ErrorKind::Unreachable => exit::UNREACHABLE,
        ErrorKind::ConnectionLost | ErrorKind::TimedOut => exit::CONNECTION_LOST,
        ErrorKind::Refused => exit::REFUSED,
        ErrorKind::CrcMismatch => exit::CRC_MISMATCH,
        ErrorKind::Cancelled => exit::INTERRUPTED,
        ErrorKind::HostKey => exit::HOST_KEY,
        _ => exit::OTHER,
    }
}

pub(crate) fn parse_fingerprint(s: &str) -> Result<bigtransfer_core::tls::Fingerprint, String> {
    bigtransfer_core::tls::Fingerprint::parse(s).map_err(|e| e.to_string())
}

/// How the server's key is checked, the same for `client`, `get` and
/// `list`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PinArgs {
    /// Demand the server's key to have this fingerprint (SHA256:..., as
    /// the server prints it), even on first contact.
    #[arg(long, value_parser = parse_fingerprint)]
    pub fingerprint: Option<bigtransfer_core::tls::Fingerprint>,
    /// The file of pinned server keys [default: $BIGTRANSFER_KNOWN_HOSTS,
    /// $XDG_CONFIG_HOME/bigtransfer/known_hosts or ~/.config/bigtransfer/known_hosts].
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Refuse plaintext even with a server never seen before.
    #[arg(long)]
    pub require_tls: bool,
}

impl PinArgs {
    /// Puts these settings into `opts` (the known-hosts file only when
    /// given, else the engine's default stays).
    pub fn apply(&self, opts: &mut SendOptions) {
        opts.fingerprint = self.fingerprint;
        opts.require_tls = self.require_tls;
        if let Some(k) = &self.known_hosts {
            opts.known_hosts = Some(k.clone());
        }
    }

    /// The flags that repeat these settings in a resume command.
    pub fn resume_flags(&self) -> Vec<(&'static str, Option<String>)> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = Vec::new();
        if let Some(f) = &self.fingerprint {
            out.push(("--fingerprint", Some(f.to_string())));
        }
        if let Some(k) = &self.known_hosts {
            out.push(("--known-hosts", Some(abs(k).display().to_string())));
        }
        if self.require_tls {
            out.push(("--require-tls", None));
        }
        out
    }
}

/// A word safe to paste into a POSIX shell.
pub(crate) fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./:@%+=,-[]".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command that resumes this upload: the same server, file and the
/// flags that decide where and how it is stored.
pub fn resume_command(a: &ClientArgs, host: &str, port: u16, path: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut w: Vec<String> = ["bigtransfer", "client", "--host", host, "--port"]
        .map(String::from)
        .into();
    w.push(port.to_string());
    let mut flag = |f: &str, v: Option<String>| {
        w.push(f.to_string());
        w.extend(v);
    };
    if let Some(n) = &a.name {
        flag("--name", Some(n.clone()));
    }
    if let Some(t) = &a.auth.token_file {
        flag("--token-file", Some(abs(t).display().to_string()));
    } else if let Some(t) = &a.auth.token {
        flag("--token", Some(t.clone()));
    }
    if a.legacy {
        flag("--legacy", None);
    }
    if a.compress != Compress::Auto {
        flag("--compress", Some(a.compress.to_string()));
    }
    if a.streams != bigtransfer_core::client::Streams::Auto {
        flag("--streams", Some(a.streams.to_string()));
    }
    for (name, value) in a.pin.resume_flags() {
        flag(name, value);
    }
    if let Some(r) = a.limit_rate {
        flag("--limit-rate", Some(r.to_string()));
    }
    if a.no_cache {
        flag("--no-cache", None);
    } else if let Some(d) = &a.cache_dir {
        flag("--cache-dir", Some(abs(d).display().to_string()));
    }
    w.push(abs(path).display().to_string());
    w.iter()
        .map(|s| shell_word(s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where this run's bytes started: the bar's rate and ETA count only what
/// moved since (not what the server already held).
#[derive(Clone)]
pub(crate) struct RunStart(pub(crate) Arc<Mutex<(u64, Instant)>>);

impl RunStart {
    pub(crate) fn set(&self, pos: u64) {
        if let Ok(mut g) = self.0.lock() {
            *g = (pos, Instant::now());
        }
    }
    fn get(&self) -> (u64, Instant) {
        self.0.lock().map(|g| *g).unwrap_or((0, Instant::now()))
    }
}

/// Bytes per second of this run: what moved since `start` over the time since.
pub fn run_rate(start_pos: u64, pos: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs < 0.2 {
        return 0.0;
    }
    pos.saturating_sub(start_pos) as f64 / secs
}

/// `1:05`, `12:00:03`, or `-` when nothing moves yet.
pub fn eta_text(remaining: u64, rate: f64) -> String {
    if rate <= 0.0 {
        return "-".into();
    }
    let s = (remaining as f64 / rate).ceil() as u64;
    match s {
        0..3600 => format!("{}:{:02}", s / 60, s % 60),
        _ => format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60),
    }
}

pub(crate) fn make_bar(show: bool, start: &RunStart) -> indicatif::ProgressBar {
    use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    let (s1, s2) = (start.clone(), start.clone());
    let style = ProgressStyle::with_template(
        "{msg:10} [{bar:30}] {binary_bytes}/{binary_total_bytes} {percent}% {run_rate} ETA {run_eta}",
    )
    .map(|s| {
        s.progress_chars("=> ")
            .with_key("run_rate", move |st: &ProgressState, w: &mut dyn std::fmt::Write| {
                let (p0, t0) = s1.get();
                let r = run_rate(p0, st.pos(), t0.elapsed());
                let _ = write!(w, "{}/s", BinaryBytes(r as u64));
            })
            .with_key("run_eta", move |st: &ProgressState, w: &mut dyn std::fmt::Write| {
                let (p0, t0) = s2.get();
                let r = run_rate(p0, st.pos(), t0.elapsed());
                let left = st.len().unwrap_or(0).saturating_sub(st.pos());
                let _ = write!(w, "{}", eta_text(left, r));
            })
    })
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// The result line: sizes in bytes, the rate in binary units like the bar.
pub fn result_line(lang: Lang, o: &Outcome) -> String {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let rate = indicatif::BinaryBytes((o.bytes_sent as f64 / secs) as u64);
    let line = done_line(lang, o, &rate);
    match stored_words(lang, &o.stored_as) {
        Some(w) => format!("{line}; {w}"),
        None => line,
    }
}

/// One short line on the connections used: how many streams, what `auto`
/// decided or why joins ended, and the congestion control.
pub fn streams_line(streams: u32, congestion: Option<&str>, notes: &[String]) -> String {
    let mut line = format!("streams: {streams}");
    if !notes.is_empty() {
        line.push_str(&format!(" ({})", notes.join("; ")));
    }
    line.push_str(&format!(
        ", congestion control: {}",
        congestion.unwrap_or("unknown")
    ));
    line
}

/// The `--json` array of stream notes.
pub fn json_notes(notes: &[String]) -> String {
    let items: Vec<String> = notes.iter().map(|n| prompt::json_string(n)).collect();
    format!("[{}]", items.join(", "))
}

/// What the server said storing did to the name, in words (nothing for a
/// new name, or a server that does not say).
fn stored_words(lang: Lang, how: &StoredAs) -> Option<String> {
    match how {
        StoredAs::New => None,
        StoredAs::Unchanged => Some(lang.s(&msg::STORED_UNCHANGED).to_string()),
        StoredAs::Kept(v) => Some(lang.f(&msg::STORED_KEPT, &[&printable(v)])),
        StoredAs::Replaced => Some(lang.s(&msg::STORED_REPLACED).to_string()),
    }
}

fn done_line(lang: Lang, o: &Outcome, rate: &dyn std::fmt::Display) -> String {
    lang.f(
        &msg::DONE,
        &[
            &o.filename,
            &o.filesize,
            &format!("{:08x}", o.crc32),
            &o.resumed_from,
            &o.bytes_sent,
            &o.attempts,
            &o.protocol,
            &o.blocks_resent,
            rate,
        ],
    )
}

/// The `--json` keys on what storing did to the name: `"stored"` (new,
/// unchanged, kept, replaced) and `"kept_as"`, the numbered version the
/// server kept the previous file as (or null).
fn json_stored(how: &StoredAs) -> String {
    let (word, kept) = match how {
        StoredAs::Unchanged => ("unchanged", None),
        StoredAs::Kept(v) => ("kept", Some(v.as_str())),
        StoredAs::Replaced => ("replaced", None),
        _ => ("new", None),
    };
    let kept = kept.map_or("null".to_string(), prompt::json_string);
    format!("\"stored\": \"{word}\", \"kept_as\": {kept}")
}

fn json_ok(o: &Outcome) -> String {
    format!(
        "{{\"result\": \"CRC32_OK\", \"exit_code\": 0, \"filename\": {}, \"filesize\": {}, \"crc32\": {}, \"resumed_from\": {}, \"bytes_sent\": {}, \"bytes_hashed\": {}, \"bytes_read\": {}, \"blocks_resent\": {}, \"repairs\": {}, \"protocol\": {}, \"encrypted\": {}, \"attempts\": {}, \"first_byte_seconds\": {:.3}, \"seconds\": {:.3}, {}, {}}}",
        prompt::json_string(&o.filename), o.filesize, o.crc32, o.resumed_from, o.bytes_sent, o.bytes_hashed, o.bytes_read, o.blocks_resent, o.repairs, o.protocol, o.encrypted, o.attempts, o.time_to_first_byte.as_secs_f64(), o.elapsed.as_secs_f64(), json_wire(o), json_stored(&o.stored_as)
    )
}

/// The `--json` keys on compression and congestion control: what was
/// asked, what the server agreed to, and the bytes on the wire.
fn json_wire(o: &Outcome) -> String {
    let cc = o
        .congestion
        .as_deref()
        .map_or("null".to_string(), prompt::json_string);
    format!(
        "\"compress\": {}, \"compress_agreed\": {}, \"compressed_blocks\": {}, \"wire_bytes\": {}, \"congestion\": {cc}, \"streams\": {}, \"stream_notes\": {}",
        prompt::json_string(&o.compress.to_string()),
        o.compress_agreed,
        o.compressed_blocks,
        o.wire_bytes,
        o.streams,
        json_notes(&o.stream_notes)
    )
}

/// The `--json` object of a failure.
pub fn json_failure(code: u8, kind: ErrorKind, message: &str, resume: Option<&str>) -> String {
    let result = if kind == ErrorKind::CrcMismatch {
        "CRC32_ERROR"
    } else {
        "ERROR"
    };
    format!(
        "{{\"result\": \"{result}\", \"exit_code\": {code}, \"reason\": \"{}\", \"message\": {}, \"resume_command\": {}}}",
        kind.as_str(),
        prompt::json_string(message),
        resume.map_or("null".to_string(), prompt::json_string)
    )
}

/// What one `send_file` call saw, for the messages after it.
#[derive(Default)]
struct Seen {
    /// The most bytes the server was known to hold, and whether a server
    /// ever accepted the header (it then holds a part, maybe still empty).
    held: Cell<u64>,
    connected: Cell<bool>,
    /// This attempt's starting offset, and whether it moved past it.
    attempt_start: Cell<u64>,
    moved: Cell<bool>,
    /// Failed attempts in a row without progress (the engine's count).
    in_a_row: Cell<u32>,
    /// The user gave up at "try again?", or typed another address.
    declined: Cell<bool>,
    redirect: RefCell<Option<(String, u16)>>,
}

pub fn run(a: ClientArgs) -> ExitCode {
    let lang = Lang::from_env();
    let port_in_host = a
        .host
        .as_deref()
        .is_some_and(|h| prompt::split_host_port(h).1.is_some());
    let interactive = a.host.is_none() || a.file.is_none() || (a.port.is_none() && !port_in_host);
    let answers = match prompt::ask_missing(
        &mut prompt::Input::stdin(),
        lang,
        a.host.clone(),
        a.port,
        a.file.clone(),
    ) {
        Ok(x) => x,
        Err(m) => return fail_usage(&a, lang, &m),
    };
    let mut opts = SendOptions::new(answers.host.clone(), answers.port);
    opts.token = match a.auth.load() {
        Ok(t) => t,
        Err(e) => return fail_usage(&a, lang, &e.to_string()),
    };
    opts.retries = a.retries;
    opts.io_timeout = a.timeout;
    opts.connect_timeout = a.connect_timeout;
    opts.limit_rate = a.limit_rate;
    opts.remote_name = a.name.clone();
    opts.compress = a.compress;
    opts.streams = a.streams;
    if a.legacy {
        opts.protocol = bigtransfer_core::Protocol::Legacy;
    }
    a.pin.apply(&mut opts);
    if let Some(d) = &a.cache_dir {
        opts.cache_dir = Some(d.clone());
    }
    if a.no_cache {
        opts.cache_dir = None;
    }
    install_interrupt();
    let mut paths = vec![answers.path.clone()];
    paths.extend(a.more.iter().cloned());
    if crate::tree::is_tree(&paths) {
        return crate::tree::run(&paths, &opts, a.json, a.quiet, lang);
    }
    send_loop(&a, lang, interactive, &answers.path, opts)
}

fn fail_usage(a: &ClientArgs, lang: Lang, m: &str) -> ExitCode {
    eprintln!("{}", lang.f(&msg::ERROR, &[&m]));
    if a.json {
        println!(
            "{}",
            json_failure(exit::USAGE, ErrorKind::InvalidInput, m, None)
        );
    }
    ExitCode::from(exit::USAGE)
}

fn send_loop(
    a: &ClientArgs,
    lang: Lang,
    interactive: bool,
    path: &Path,
    mut opts: SendOptions,
) -> ExitCode {
    let start = RunStart(Arc::new(Mutex::new((0, Instant::now()))));
    let seen = Seen::default();
    loop {
        // A fresh bar per try: a finished one draws no more.
        let bar = make_bar(!a.quiet && std::io::stderr().is_terminal(), &start);
        let target = format!("{}:{}", opts.host, opts.port);
        let mut cb = |p: &Progress| {
            on_progress(p, a, lang, interactive, &opts, &target, &bar, &start, &seen)
        };
        let res = send_file(path, &opts, &mut cb);
        bar.finish_and_clear();
        match res {
            Ok(o) => {
                println!(
                    "{}",
                    if a.json {
                        json_ok(&o)
                    } else {
                        result_line(lang, &o)
                    }
                );
                if !a.json && !a.quiet {
                    eprintln!(
                        "{}",
                        streams_line(o.streams, o.congestion.as_deref(), &o.stream_notes)
                    );
                }
                return ExitCode::from(exit::OK);
            }
            Err(e) => {
                if let Some((h, p)) = seen.redirect.borrow_mut().take() {
                    (opts.host, opts.port) = (h, p);
                    seen.declined.set(false);
                    continue;
                }
                let retry_here =
                    interactive && !seen.declined.get() && e.kind() == ErrorKind::Unreachable;
                if retry_here {
                    eprintln!("{}", lang.describe(&e, &target));
                    match prompt::ask_retry(
                        &mut prompt::Input::stdin(),
                        lang,
                        &opts.host,
                        opts.port,
                    ) {
                        Retry::Same => continue,
                        Retry::To(h, p) => {
                            (opts.host, opts.port) = (h, p);
                            continue;
                        }
                        Retry::GiveUp => seen.declined.set(true),
                    }
                }
                return report_failure(a, lang, &e, &opts, path, &seen);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn on_progress(
    p: &Progress,
    a: &ClientArgs,
    lang: Lang,
    interactive: bool,
    opts: &SendOptions,
    target: &str,
    bar: &indicatif::ProgressBar,
    start: &RunStart,
    seen: &Seen,
) -> Control {
    match p {
        Progress::Hashing { done, total } => {
            if *done == 0 {
                start.set(0);
            }
            bar.set_length(*total);
            bar.set_position(*done);
            bar.set_message(lang.s(&msg::HASHING));
        }
        Progress::Connected {
            offset,
            total,
            addr,
        } => {
            start.set(*offset);
            bar.set_length(*total);
            bar.set_position(*offset);
            bar.set_message(lang.s(&msg::SENDING));
            seen.attempt_start.set(*offset);
            seen.moved.set(false);
            seen.held.set(seen.held.get().max(*offset));
            seen.connected.set(true);
            if *offset > 0 && !a.quiet {
                bar.suspend(|| eprintln!("{}", lang.f(&msg::RESUMING, &[addr, offset, total])));
            }
        }
        Progress::Sending { done, .. } => {
            bar.set_position(*done);
            seen.held.set(seen.held.get().max(*done));
            if *done > seen.attempt_start.get() {
                seen.moved.set(true);
            }
        }
        Progress::Verifying => bar.set_message(lang.s(&msg::VERIFYING)),
        // Security notices: shown even with --quiet (as ssh's
        // "Permanently added"), on standard error.
        Progress::FirstContact {
            server,
            fingerprint,
            pinned_in,
        } => bar.suspend(|| {
            let line = match pinned_in {
                Some(f) => lang.f(&msg::FIRST_CONTACT, &[server, fingerprint, &f.display()]),
                None => lang.f(&msg::FIRST_CONTACT_UNSTORED, &[server, fingerprint]),
            };
            eprintln!("{line}");
        }),
        Progress::Plaintext { server } => {
            bar.suspend(|| eprintln!("{}", lang.f(&msg::PLAINTEXT, &[server])))
        }
        Progress::Retrying { delay, error, .. }
            if on_retry(*delay, error, a, lang, interactive, opts, target, bar, seen)
                == Control::Cancel =>
        {
            return Control::Cancel;
        }
        _ => {}
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Control::Cancel;
    }
    Control::Continue
}

/// A failed attempt: count it, then ask (interactive, unreachable) whether
/// and where to try again, or say when the next attempt comes.
#[allow(clippy::too_many_arguments)]
fn on_retry(
    delay: Duration,
    error: &Error,
    a: &ClientArgs,
    lang: Lang,
    interactive: bool,
    opts: &SendOptions,
    target: &str,
    bar: &indicatif::ProgressBar,
    seen: &Seen,
) -> Control {
    let n = if seen.moved.get() {
        1
    } else {
        seen.in_a_row.get() + 1
    };
    seen.in_a_row.set(n);
    seen.moved.set(false);
    if interactive && error.kind() == ErrorKind::Unreachable {
        let answer = bar.suspend(|| {
            eprintln!("{}", lang.describe(error, target));
            prompt::ask_retry(&mut prompt::Input::stdin(), lang, &opts.host, opts.port)
        });
        match answer {
            Retry::Same => {}
            Retry::To(h, port) => {
                *seen.redirect.borrow_mut() = Some((h, port));
                return Control::Cancel;
            }
            Retry::GiveUp => {
                seen.declined.set(true);
                return Control::Cancel;
            }
        }
    } else if !a.quiet {
        let why = lang.describe(error, target);
        let line = lang.f(
            &msg::RETRYING,
            &[&why, &msg::secs(delay), &n, &opts.retries],
        );
        bar.suspend(|| eprintln!("{line}"));
    }
    Control::Continue
}

fn report_failure(
    a: &ClientArgs,
    lang: Lang,
    e: &Error,
    opts: &SendOptions,
    path: &Path,
    seen: &Seen,
) -> ExitCode {
    let target = format!("{}:{}", opts.host, opts.port);
    let (kind, text) = if seen.declined.get() {
        (
            ErrorKind::Unreachable,
            lang.f(&msg::UNREACHABLE_GAVE_UP, &[&target]),
        )
    } else {
        (e.kind(), lang.describe(e, &target))
    };
    let code = exit_code_for(kind);
    if kind == ErrorKind::CrcMismatch && !a.json {
        println!("CRC32_ERROR");
    }
    eprintln!("{}", lang.f(&msg::ERROR, &[&text]));
    if e.to_string().contains("requires a token") {
        eprintln!("{}", lang.f(&msg::HINT, &[&lang.s(&msg::TOKEN_HINT)]));
    }
    // The server keeps what it received unless the upload itself was bad.
    let resumable = (seen.connected.get() || seen.held.get() > 0)
        && !matches!(
            kind,
            ErrorKind::CrcMismatch | ErrorKind::SourceFile | ErrorKind::InvalidInput
        );
    let resume = resumable.then(|| resume_command(a, &opts.host, opts.port, path));
    if let Some(cmd) = &resume {
        eprintln!("{}", lang.f(&msg::RESUME_HINT, &[cmd]));
    }
    if a.json {
        println!("{}", json_failure(code, kind, &text, resume.as_deref()));
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_count_only_this_run() {
        // 10 GiB held before, 100 MiB sent in 2 s: 50 MiB/s, not 5 GiB/s.
        let r = run_rate(10 << 30, (10 << 30) + (100 << 20), Duration::from_secs(2));
        assert_eq!(r, (50 << 20) as f64);
        assert_eq!(
            format!("{}/s", indicatif::BinaryBytes(r as u64)),
            "50.00 MiB/s"
        );
        assert_eq!(eta_text(150 << 20, r), "0:03");
        assert_eq!(eta_text(50 << 30, r), "17:04");
        assert_eq!(eta_text(200 << 30, r), "1:08:16");
        assert_eq!(eta_text(1, 0.0), "-");
        assert_eq!(run_rate(5, 10, Duration::from_millis(10)), 0.0);
    }

    #[test]
    fn shell_words_paste_back() {
        assert_eq!(shell_word("/tmp/a.bin"), "/tmp/a.bin");
        assert_eq!(shell_word("my file"), "'my file'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word("::1"), "::1");
    }

    #[test]
    fn failure_json_has_code_and_reason() {
        let j = json_failure(3, ErrorKind::Unreachable, "server x is \"down\"", None);
        assert_eq!(
            j,
            "{\"result\": \"ERROR\", \"exit_code\": 3, \"reason\": \"unreachable\", \"message\": \"server x is \\\"down\\\"\", \"resume_command\": null}"
        );
        let j = json_failure(5, ErrorKind::CrcMismatch, "m", Some("bigtransfer client x"));
        assert!(
            j.starts_with("{\"result\": \"CRC32_ERROR\", \"exit_code\": 5,"),
            "{j}"
        );
        assert!(
            j.ends_with("\"resume_command\": \"bigtransfer client x\"}"),
            "{j}"
        );
    }
}
