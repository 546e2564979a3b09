//! `bigtransfer get` of a directory, or of several remotes: the core's
//! `get_tree` into `-o DIR` (default: the current directory), a line per
//! file that is not plainly downloaded (and per file on a terminal), a
//! summary line or `--json` object, exit codes from the client's table.
//!
//! Not for one file named alone (the parent module keeps doing those,
//! with `-o FILE` and its progress bar).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bigtransfer_core::client::{get_tree, FileStatus, TreeGetOutcome, TreeGetProgress};
use bigtransfer_core::{Control, SendOptions};

use super::GetArgs;
use crate::exit;
use crate::prompt::json_string;
use crate::send::{exit_code_for, install_interrupt, interrupted, json_failure, shell_word};

/// Downloads every remote of `a` as a tree (a file remote lands as a file).
pub(super) fn run(a: &GetArgs, opts: &SendOptions) -> ExitCode {
    install_interrupt();
    let dest = a.output.clone().unwrap_or_else(|| PathBuf::from("."));
    let remotes: Vec<String> = std::iter::once(a.remote.clone())
        .chain(a.more.iter().cloned())
        .collect();
    let show = !a.quiet && std::io::stderr().is_terminal();
    let mut cb = |p: &TreeGetProgress| {
        on_progress(p, show, a.quiet);
        if interrupted() {
            Control::Cancel
        } else {
            Control::Continue
        }
    };
    match get_tree(&remotes, &dest, opts, a.force, &mut cb) {
        Ok(o) => {
            let code = if o.failed > 0 || o.not_replaced > 0 {
                exit::REFUSED
            } else {
                exit::OK
            };
            if a.json {
                println!("{}", json_ok(&o, code));
            } else {
                println!("{}", summary(&o, &dest));
            }
            ExitCode::from(code)
        }
        Err(e) => {
            let code = exit_code_for(e.kind());
            eprintln!("error: {e}");
            let resume = matches!(
                code,
                exit::CONNECTION_LOST | exit::UNREACHABLE | exit::INTERRUPTED
            )
            .then(|| resume_command(a, opts, &dest, &remotes));
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
    }
}

fn on_progress(p: &TreeGetProgress, show: bool, quiet: bool) {
    match p {
        TreeGetProgress::Done {
            path, status, text, ..
        } => match status {
            FileStatus::Failed => eprintln!("failed: {path}: {text}"),
            FileStatus::NotReplaced => eprintln!("not replaced: {path}: {text}"),
            _ if show => eprintln!("\r{path}: {text}\x1b[K"),
            _ => {}
        },
        TreeGetProgress::File { path, done, total } if show => {
            eprint!("\r{path}: {done} of {total} bytes\x1b[K");
        }
        TreeGetProgress::Retrying {
            attempt,
            delay,
            error,
        } if !quiet => {
            eprintln!("{error}; attempt {attempt} in {:.1} s", delay.as_secs_f64());
        }
        _ => {}
    }
}

fn summary(o: &TreeGetOutcome, dest: &Path) -> String {
    format!(
        "TREE_OK: -> {}: {} files ({} bytes), {} directories, {} symlinks; {} downloaded, {} here already, {} failed, {} not replaced; received {} bytes in {:.2} s, {} attempt(s){}",
        dest.display(), o.files, o.bytes, o.dirs, o.symlinks, o.fetched, o.held, o.failed, o.not_replaced,
        o.received, o.elapsed.as_secs_f64(), o.attempts, if o.encrypted { ", over TLS" } else { "" }
    )
}

fn json_ok(o: &TreeGetOutcome, code: u8) -> String {
    let result = if code == exit::OK {
        "TREE_OK"
    } else {
        "TREE_INCOMPLETE"
    };
    format!(
        "{{\"result\": {}, \"exit_code\": {code}, \"files\": {}, \"dirs\": {}, \"symlinks\": {}, \"bytes\": {}, \"bytes_received\": {}, \"downloaded\": {}, \"held\": {}, \"failed\": {}, \"not_replaced\": {}, \"attempts\": {}, \"encrypted\": {}, \"seconds\": {:.3}}}",
        json_string(result), o.files, o.dirs, o.symlinks, o.bytes, o.received, o.fetched, o.held, o.failed, o.not_replaced, o.attempts, o.encrypted, o.elapsed.as_secs_f64()
    )
}

/// The command that resumes this download.
fn resume_command(a: &GetArgs, opts: &SendOptions, dest: &Path, remotes: &[String]) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut w: Vec<String> = vec!["bigtransfer".into(), "get".into(), "--host".into()];
    w.extend([opts.host.clone(), "--port".into(), opts.port.to_string()]);
    for (name, value) in a.pin.resume_flags() {
        w.push(name.into());
        w.extend(value);
    }
    w.extend(["-o".into(), abs(dest).display().to_string()]);
    w.extend(remotes.iter().cloned());
    w.iter()
        .map(|s| shell_word(s))
        .collect::<Vec<_>>()
        .join(" ")
}
