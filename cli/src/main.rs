//! The `bigtransfer` command: `bigtransfer server` and `bigtransfer client`.
//!
//! This file is the user-facing shell around `bigtransfer-core`: argument
//! parsing, the interactive prompts of the original Python client, progress
//! display, signal handling and exit codes. The protocol lives in the core.

mod config;
mod get;
mod list;
mod metrics;
mod msg;
mod parse;
mod prompt;
mod send;
mod serve;
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use bigtransfer_core::StopHandle;
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
    /// The server's key is not the pinned one (or a pinned server offered
    /// no TLS, or TLS was required and the server had none).
    pub const HOST_KEY: u8 = 7;
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
    Client(send::ClientArgs),
    /// List what a server holds: files (size, mtime, CRC-32) and partial
    /// uploads (with their progress).
    List(list::ListArgs),
    /// Download a stored file from a server's storage directory
    /// (resumable, every block verified against the server's CRC-32s).
    Get(get::GetArgs),
    /// Print a new random token (256 bits, 64 hex digits) for --token-file.
    ///
    /// Save it with `bigtransfer token > token && chmod 600 token` and give
    /// the same file to the server and its clients.
    Token,
    /// Print the server's key fingerprint (as `bigtransfer server` prints
    /// it after `listening on`), to give to clients out of band.
    Fingerprint(FingerprintArgs),
}

#[derive(clap::Args)]
struct FingerprintArgs {
    /// The server's key file (as given to `server --key`).
    #[arg(long, conflicts_with = "dir")]
    key: Option<PathBuf>,
    /// The server's storage directory (its key is DIR/.bigtransfer/key) [default: received].
    #[arg(long)]
    dir: Option<PathBuf>,
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
            if let Some(warning) = Token::file_exposure(f) {
                eprintln!("{warning}");
            }
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

/// `bigtransfer token`: a fresh token from the operating system's random
/// source, on standard output alone (so it can be redirected to a file).
fn print_new_token() -> ExitCode {
    match bigtransfer_core::auth::Token::generate() {
        Ok(t) => {
            println!("{}", t.reveal());
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::OTHER)
        }
    }
}

/// `bigtransfer fingerprint`: the fingerprint of an existing server key
/// (never makes one: a typo in the path must not print a new key's).
fn print_fingerprint(a: FingerprintArgs) -> ExitCode {
    let path = a.key.unwrap_or_else(|| {
        bigtransfer_core::tls::state_key_path(&a.dir.unwrap_or_else(|| "received".into()))
    });
    match bigtransfer_core::tls::ServerKey::load(&path) {
        Ok(k) => {
            println!("fingerprint {}", k.fingerprint());
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::USAGE)
        }
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server(a) => serve::run(a),
        Cmd::Client(a) => send::run(a),
        Cmd::List(a) => list::run(a),
        Cmd::Get(a) => get::run(a),
        Cmd::Token => print_new_token(),
        Cmd::Fingerprint(a) => print_fingerprint(a),
    }
}
