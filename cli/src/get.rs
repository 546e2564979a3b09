//! `bigtransfer get`: download one stored file from a server's storage
//! directory (resumable, every block verified against the server's
//! reference). Its flags, where the file lands (`-o DIR|FILE`), the
//! progress bar, the result line or JSON object, exit codes (the client's
//! table) and the command that resumes.
//!
//! Not for: the transfer itself (the core's `get_file`), nor directories
//! and several remotes (`tree_get`).

mod tree_get;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigtransfer_core::client::{get_file, GetOutcome};
use bigtransfer_core::{Control, Error, ErrorKind, Progress, SafeName, SendOptions};

use crate::prompt;
use crate::send::{
    exit_code_for, install_interrupt, json_failure, make_bar, shell_word, PinArgs, RunStart,
    INTERRUPTED,
};
use crate::{exit, parse, AuthArgs};

#[derive(clap::Args)]
pub struct GetArgs {
    /// Server host name or IP address, optionally with the port
    /// (HOST:PORT, [IPv6]:PORT).
    #[arg(long)]
    host: String,
    /// Server port.
    #[arg(long)]
    port: Option<u16>,
    /// The stored file's or directory's name on the server (a path in its
    /// storage directory; a directory is downloaded whole, under its base
    /// name, into -o DIR).
    remote: String,
    /// More remotes: each is downloaded into -o DIR under its base name.
    more: Vec<String>,
    /// Where to put it: an existing directory (the file keeps its name),
    /// or a file path [default: the current directory].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Replace the target if it exists (else that is refused).
    #[arg(long)]
    force: bool,
    /// Attempts after a failure before giving up (each reconnect that
    /// brought new verified blocks starts the count afresh).
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Give up a connection on which nothing moves for this long.
    #[arg(long, default_value = "60s", value_parser = parse::duration)]
    timeout: Duration,
    /// Time allowed for each connect.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    connect_timeout: Duration,
    /// Receive at most this many bytes per second (e.g. 10M).
    #[arg(long, value_parser = parse::size)]
    limit_rate: Option<u64>,
    /// Connections for one download: N (1-8) joining one session on the
    /// server, or auto (one on a short path; on a long one start with one
    /// and add while throughput rises, up to 8). 1 is a single connection.
    #[arg(long, default_value = "auto", value_parser = bigtransfer_core::client::Streams::parse)]
    streams: bigtransfer_core::client::Streams,
    /// Compression of the blocks the server sends: auto (zstd while it
    /// pays: the link, not the server's CPU, is the bottleneck and the
    /// data shrinks), zstd or zstd:LEVEL (every block tried; the server
    /// caps the level at 9), or off. An older server sends raw blocks.
    #[arg(long, default_value = "auto", value_parser = parse::compress)]
    compress: bigtransfer_core::compress::Compress,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    pin: PinArgs,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    /// Print the result as one JSON object on standard output (on failure too).
    #[arg(long)]
    json: bool,
}

/// The local path for `remote`: `-o FILE`, `-o DIR/NAME`, or `./NAME`
/// (NAME the remote's base name; a name the server will refuse anyway
/// gets a placeholder, and nothing is written under it).
fn target(a: &GetArgs) -> PathBuf {
    let name = SafeName::from_wire(&a.remote)
        .map(|n| n.as_str().to_owned())
        .unwrap_or_else(|_| "bigtransfer-download".into());
    match &a.output {
        Some(o) if o.is_dir() => o.join(name),
        Some(o) => o.clone(),
        None => PathBuf::from(name),
    }
}

fn options(a: &GetArgs) -> Result<SendOptions, String> {
    let (host, port_txt) = prompt::split_host_port(&a.host);
    let port = match (a.port, port_txt) {
        (Some(p), _) => p,
        (None, Some(p)) => p.parse().map_err(|_| format!("bad port in --host: {p}"))?,
        (None, None) => return Err("--port (or --host HOST:PORT) is required".into()),
    };
    let mut opts = SendOptions::new(host, port);
    opts.token = a.auth.load().map_err(|e| e.to_string())?;
    opts.retries = a.retries;
    opts.io_timeout = a.timeout;
    opts.connect_timeout = a.connect_timeout;
    opts.limit_rate = a.limit_rate;
    opts.streams = a.streams;
    opts.compress = a.compress;
    opts.cache_dir = None;
    a.pin.apply(&mut opts);
    Ok(opts)
}

pub fn run(a: GetArgs) -> ExitCode {
    let opts = match options(&a) {
        Ok(o) => o,
        Err(m) => {
            eprintln!("error: {m}");
            if a.json {
                println!(
                    "{}",
                    json_failure(exit::USAGE, ErrorKind::InvalidInput, &m, None)
                );
            }
            return ExitCode::from(exit::USAGE);
        }
    };
    let dest = target(&a);
    // A directory here by that name: a tree get made it (and resumes it).
    if !a.more.is_empty() || a.remote.contains('/') || dest.is_dir() {
        return tree_get::run(&a, &opts);
    }
    install_interrupt();
    let start = RunStart(Arc::new(Mutex::new((0, Instant::now()))));
    let bar = make_bar(!a.quiet && std::io::stderr().is_terminal(), &start);
    let mut cb = |p: &Progress| on_progress(p, &a, &bar, &start);
    let res = get_file(&a.remote, &dest, &opts, a.force, &mut cb);
    bar.finish_and_clear();
    match res {
        Ok(o) => {
            println!(
                "{}",
                if a.json {
                    json_ok(&a.remote, &o)
                } else {
                    result_line(&a.remote, &o)
                }
            );
            if !a.json && !a.quiet {
                eprintln!(
                    "{}",
                    crate::send::streams_line(o.streams, o.congestion.as_deref(), &o.stream_notes)
                );
            }
            ExitCode::from(exit::OK)
        }
        Err(e) if is_a_directory(&e) && !a.output.as_ref().is_some_and(|o| o.is_file()) => {
            tree_get::run(&a, &opts)
        }
        Err(e) => failure(&a, &e, &opts, &dest),
    }
}

/// The server's refusal of a single-file get of something that is not a
/// regular file: a directory, which a tree get downloads.
fn is_a_directory(e: &Error) -> bool {
    e.kind() == ErrorKind::Refused && e.to_string().contains("(not a regular file)")
}

fn on_progress(
    p: &Progress,
    a: &GetArgs,
    bar: &indicatif::ProgressBar,
    start: &RunStart,
) -> Control {
    match p {
        Progress::Connected {
            offset,
            total,
            addr,
        } => {
            start.set(*offset);
            bar.set_length(*total);
            bar.set_position(*offset);
            bar.set_message("receiving");
            if *offset > 0 && !a.quiet {
                bar.suspend(|| {
                    eprintln!(
                        "resuming from {addr}: {offset} of {total} bytes already here, verified"
                    )
                });
            }
        }
        Progress::Sending { done, .. } => bar.set_position(*done),
        Progress::ServerChanged { remote } => bar.suspend(|| {
            eprintln!(
                "{remote} changed on the server since the partial download began; starting over"
            )
        }),
        Progress::FirstContact {
            server,
            fingerprint,
            pinned_in,
        } => bar.suspend(|| match pinned_in {
            Some(f) => eprintln!(
                "first contact with {server}: its key {fingerprint} is now pinned in {}",
                f.display()
            ),
            None => eprintln!("first contact with {server}: its key is {fingerprint} (not stored)"),
        }),
        Progress::Plaintext { server } => {
            bar.suspend(|| eprintln!("{server} speaks no TLS: this download goes in plaintext"))
        }
        Progress::Retrying { delay, error, .. } if !a.quiet => {
            bar.suspend(|| eprintln!("{error}; retrying in {:.1} s", delay.as_secs_f64()))
        }
        _ => {}
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Control::Cancel;
    }
    Control::Continue
}

fn result_line(remote: &str, o: &GetOutcome) -> String {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let rate = indicatif::BinaryBytes((o.bytes_received as f64 / secs) as u64);
    let wire = if o.compressed_blocks > 0 {
        format!(
            " as {} bytes on the wire ({} block(s) compressed)",
            o.wire_bytes, o.compressed_blocks
        )
    } else {
        String::new()
    };
    format!(
        "OK: {remote} -> {} ({} bytes, CRC-32 {:08x}; {} bytes were here already, {} received{wire} in {} attempt(s), {} block(s) repaired, {rate}/s)",
        o.path.display(), o.filesize, o.crc32, o.resumed_from, o.bytes_received, o.attempts, o.blocks_repaired
    )
}

fn json_ok(remote: &str, o: &GetOutcome) -> String {
    let j = prompt::json_string;
    format!(
        "{{\"result\": \"OK\", \"exit_code\": 0, \"remote\": {}, \"path\": {}, \"filesize\": {}, \"crc32\": {}, \"resumed_from\": {}, \"bytes_received\": {}, \"bytes_hashed\": {}, \"blocks_repaired\": {}, \"restarted\": {}, \"encrypted\": {}, \"attempts\": {}, \"seconds\": {:.3}, \"streams\": {}, \"congestion\": {}, \"stream_notes\": {}, \"compress\": {}, \"compress_agreed\": {}, \"compressed_blocks\": {}, \"wire_bytes\": {}}}",
        j(remote), j(&o.path.display().to_string()), o.filesize, o.crc32, o.resumed_from, o.bytes_received, o.bytes_hashed, o.blocks_repaired, o.restarted, o.encrypted, o.attempts, o.elapsed.as_secs_f64(),
        o.streams, o.congestion.as_deref().map_or("null".to_string(), j), crate::send::json_notes(&o.stream_notes),
        j(&o.compress.to_string()), o.compress_agreed, o.compressed_blocks, o.wire_bytes
    )
}

fn failure(a: &GetArgs, e: &Error, opts: &SendOptions, dest: &Path) -> ExitCode {
    let code = exit_code_for(e.kind());
    let resume = matches!(
        code,
        exit::CONNECTION_LOST | exit::UNREACHABLE | exit::INTERRUPTED
    )
    .then(|| resume_command(a, opts, dest));
    eprintln!("error: {e}");
    if let Some(r) = &resume {
        eprintln!("to resume: {r}");
    }
    if a.json {
        println!(
            "{}",
            json_failure(code, e.kind(), &e.to_string(), resume.as_deref())
        );
    }
    ExitCode::from(code)
}

/// The command that resumes this download.
fn resume_command(a: &GetArgs, opts: &SendOptions, dest: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut w: Vec<String> = vec!["bigtransfer".into(), "get".into(), "--host".into()];
    w.extend([opts.host.clone(), "--port".into(), opts.port.to_string()]);
    if let Some(t) = &a.auth.token_file {
        w.extend(["--token-file".into(), abs(t).display().to_string()]);
    }
    for (name, value) in a.pin.resume_flags() {
        w.push(name.into());
        w.extend(value);
    }
    if a.streams != bigtransfer_core::client::Streams::Auto {
        w.extend(["--streams".into(), a.streams.to_string()]);
    }
    if a.compress != bigtransfer_core::compress::Compress::Auto {
        w.extend(["--compress".into(), a.compress.to_string()]);
    }
    w.extend([
        "-o".into(),
        abs(dest).display().to_string(),
        a.remote.clone(),
    ]);
    w.iter()
        .map(|s| shell_word(s))
        .collect::<Vec<_>>()
        .join(" ")
}
