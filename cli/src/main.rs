//! The `bigtransfer` command: `bigtransfer server` and `bigtransfer client`.
//!
//! This file is the user-facing shell around `bigtransfer-core`: argument
//! parsing, the interactive prompts of the original Python client, progress
//! display, signal handling and exit codes. The protocol lives in the core.

mod config;
mod metrics;
mod parse;
mod prompt;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use bigtransfer_core::{send_file, Control, ErrorKind, Progress, SendOptions, StopHandle};
use clap::{Parser, Subcommand};

/// Exit codes of `bigtransfer client` (documented in the README).
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const CONNECTION_LOST: u8 = 4;
    pub const CRC_MISMATCH: u8 = 5;
    pub const REFUSED: u8 = 6;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "bigtransfer",
    version,
    about = "Resumable, CRC-32-verified uploads of very large files over TCP"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Receive uploads into a storage directory until stopped (Ctrl-C / SIGTERM).
    Server(serve::ServerArgs),
    /// Upload a file; asks for the server and the file when not given.
    Client(ClientArgs),
}

/// The shared token, from a file, the environment, or (visible in `ps`)
/// the command line.
#[derive(clap::Args)]
pub(crate) struct AuthArgs {
    /// Read the shared token from this file (preferred: it stays out of `ps`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The shared token itself (visible to other users in `ps`; prefer
    /// --token-file or the BIGTRANSFER_TOKEN environment variable).
    #[arg(long)]
    pub token: Option<String>,
}

impl AuthArgs {
    pub fn load(&self) -> Result<Option<bigtransfer_core::auth::Token>, bigtransfer_core::Error> {
        use bigtransfer_core::auth::Token;
        if let Some(f) = &self.token_file {
            return Token::from_file(f).map(Some);
        }
        if let Some(t) = &self.token {
            return Token::new(t.clone().into_bytes()).map(Some);
        }
        match std::env::var_os("BIGTRANSFER_TOKEN") {
            Some(t) if !t.is_empty() => {
                use std::os::unix::ffi::OsStringExt;
                Token::new(t.into_vec()).map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Server host name or IP address (IPv6 with or without brackets).
    #[arg(long)]
    host: Option<String>,
    /// Server port.
    #[arg(long)]
    port: Option<u16>,
    /// File to upload.
    file: Option<PathBuf>,
    /// Attempts after a failure before giving up (each reconnect that makes
    /// progress starts the count afresh).
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
    /// Speak only the legacy protocol (version 1), as the original client did.
    #[arg(long)]
    legacy: bool,
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
    /// Print the result as one JSON object on standard output.
    #[arg(long)]
    json: bool,
}

static STOP: OnceLock<StopHandle> = OnceLock::new();

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // Only async-signal-safe work here: an atomic load and StopHandle::stop.
    if let Some(h) = STOP.get() {
        h.stop();
    }
}

pub(crate) fn install_stop_signals(h: StopHandle) {
    let _ = STOP.set(h);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn exit_code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::SourceFile => exit::USAGE,
        ErrorKind::Unreachable => exit::UNREACHABLE,
        ErrorKind::ConnectionLost | ErrorKind::TimedOut => exit::CONNECTION_LOST,
        ErrorKind::Refused => exit::REFUSED,
        ErrorKind::CrcMismatch => exit::CRC_MISMATCH,
        ErrorKind::Cancelled => exit::INTERRUPTED,
        _ => exit::OTHER,
    }
}

fn run_client(a: ClientArgs) -> ExitCode {
    let lang = prompt::Lang::from_env();
    let interactive = a.host.is_none() || a.port.is_none() || a.file.is_none();
    let mut input = prompt::Input::stdin();
    let answers =
        match prompt::ask_missing(&mut input, lang, a.host.clone(), a.port, a.file.clone()) {
            Ok(x) => x,
            Err(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(exit::USAGE);
            }
        };
    let mut opts = SendOptions::new(answers.host.clone(), answers.port);
    opts.token = match a.auth.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    opts.retries = a.retries;
    opts.io_timeout = a.timeout;
    opts.connect_timeout = a.connect_timeout;
    opts.limit_rate = a.limit_rate;
    opts.remote_name = a.name.clone();
    if a.legacy {
        opts.protocol = bigtransfer_core::Protocol::Legacy;
    }
    if let Some(d) = &a.cache_dir {
        opts.cache_dir = Some(d.clone());
    }
    if a.no_cache {
        opts.cache_dir = None;
    }

    let show_bar = !a.quiet && std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        if show_bar {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    let style = indicatif::ProgressStyle::with_template(
        "{msg:10} [{bar:30}] {bytes}/{total_bytes} {percent}% {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);

    let declined = std::cell::Cell::new(false);
    let mut cb = |p: &Progress| -> Control {
        match p {
            Progress::Hashing { done, total } => {
                bar.set_message(lang.hashing());
                bar.set_length(*total);
                bar.set_position(*done);
            }
            Progress::Connected {
                offset,
                total,
                addr,
            } => {
                bar.set_message(lang.sending());
                bar.set_length(*total);
                bar.reset_eta();
                bar.set_position(*offset);
                if *offset > 0 && !a.quiet {
                    bar.suspend(|| eprintln!("{}", lang.resuming(*addr, *offset, *total)));
                }
            }
            Progress::Sending { done, .. } => bar.set_position(*done),
            Progress::Verifying => bar.set_message(lang.verifying()),
            Progress::Retrying {
                delay,
                error,
                attempt,
            } => {
                if interactive && error.kind() == ErrorKind::Unreachable {
                    let again = bar.suspend(|| {
                        eprintln!("{error}");
                        prompt::ask_yes_no(&mut prompt::Input::stdin(), lang, lang.try_again())
                    });
                    if !again {
                        declined.set(true);
                        return Control::Cancel;
                    }
                } else if !a.quiet {
                    bar.suspend(|| eprintln!("{}", lang.retrying(error, *delay, *attempt)));
                }
            }
            _ => {}
        }
        Control::Continue
    };
    loop {
        let res = send_file(&answers.path, &opts, &mut cb);
        match res {
            Ok(o) => {
                bar.finish_and_clear();
                let secs = o.elapsed.as_secs_f64().max(1e-9);
                if a.json {
                    println!(
                        "{{\"result\": \"CRC32_OK\", \"filename\": {}, \"filesize\": {}, \"crc32\": {}, \"resumed_from\": {}, \"bytes_sent\": {}, \"bytes_hashed\": {}, \"bytes_read\": {}, \"blocks_resent\": {}, \"repairs\": {}, \"protocol\": {}, \"attempts\": {}, \"first_byte_seconds\": {:.3}, \"seconds\": {:.3}}}",
                        prompt::json_string(&o.filename), o.filesize, o.crc32, o.resumed_from, o.bytes_sent, o.bytes_hashed, o.bytes_read, o.blocks_resent, o.repairs, o.protocol, o.attempts, o.time_to_first_byte.as_secs_f64(), secs
                    );
                } else {
                    println!(
                        "CRC32_OK: {}, {} bytes, crc32 {:08x}, resumed from {}, sent {} bytes, {} attempt(s), protocol {}, {} block(s) resent, {:.1} MB/s",
                        o.filename, o.filesize, o.crc32, o.resumed_from, o.bytes_sent, o.attempts, o.protocol, o.blocks_resent,
                        o.filesize as f64 / secs / 1e6
                    );
                }
                return ExitCode::from(exit::OK);
            }
            Err(e) => {
                bar.abandon();
                if declined.get() {
                    eprintln!(
                        "error: server {}:{} is unreachable",
                        answers.host, answers.port
                    );
                    return ExitCode::from(exit::UNREACHABLE);
                }
                if interactive && e.kind() == ErrorKind::Unreachable {
                    eprintln!("{e}");
                    if prompt::ask_yes_no(&mut prompt::Input::stdin(), lang, lang.try_again()) {
                        continue;
                    }
                }
                if e.kind() == ErrorKind::CrcMismatch {
                    println!("CRC32_ERROR");
                }
                eprintln!("error: {e}");
                if e.to_string().contains("requires a token") {
                    eprintln!("hint: give the token with --token-file FILE or the BIGTRANSFER_TOKEN environment variable");
                }
                return ExitCode::from(exit_code_for(e.kind()));
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server(a) => serve::run(a),
        Cmd::Client(a) => run_client(a),
    }
}
