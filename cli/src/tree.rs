//! `bigtransfer client` with a directory or several paths: the tree is sent
//! in one session (core `send_tree`), with a line per file on a terminal
//! (or per verdict that is not plain success), warnings for what is left
//! out, and a summary line or `--json` object.
//!
//! Not for single files (`send`), whose progress bar and resume command
//! stay as they were.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use bigtransfer_core::{send_tree, Control, SendOptions, TreeOutcome, TreeProgress};

use crate::exit;
use crate::msg::Lang;
use crate::prompt::json_string;
use crate::send::{exit_code_for, json_failure};

/// Whether these paths are sent as a tree: several, or one directory.
pub fn is_tree(paths: &[PathBuf]) -> bool {
    paths.len() > 1 || paths.first().is_some_and(|p| p.is_dir())
}

/// Sends `paths` as a tree and reports as `json`/`quiet` say.
pub fn run(paths: &[PathBuf], opts: &SendOptions, json: bool, quiet: bool, lang: Lang) -> ExitCode {
    let show = !quiet && std::io::stderr().is_terminal();
    let mut cb = |p: &TreeProgress| {
        on_progress(p, show, quiet);
        if crate::send::interrupted() {
            Control::Cancel
        } else {
            Control::Continue
        }
    };
    match send_tree(paths, opts, &mut cb) {
        Ok(o) => {
            let code = if o.failed > 0 {
                exit::CRC_MISMATCH
            } else if o.not_stored > 0 {
                exit::REFUSED
            } else {
                exit::OK
            };
            if json {
                println!("{}", json_ok(&o, code));
            } else {
                println!("{}", summary(&o));
            }
            ExitCode::from(code)
        }
        Err(e) => {
            let code = exit_code_for(e.kind());
            eprintln!(
                "{}",
                lang.describe(&e, &format!("{}:{}", opts.host, opts.port))
            );
            if json {
                println!("{}", json_failure(code, e.kind(), &e.to_string(), None));
            }
            ExitCode::from(code)
        }
    }
}

fn on_progress(p: &TreeProgress, show: bool, quiet: bool) {
    match p {
        TreeProgress::Skipped { source, reason } => {
            eprintln!("warning: skipped {}: {reason}", source.display());
        }
        TreeProgress::Verdict {
            path,
            ok: false,
            text,
        } => {
            eprintln!("not stored: {path}: {text}");
        }
        // A stored file kept as a numbered version, or replaced: always said.
        TreeProgress::Verdict {
            path,
            ok: true,
            text,
        } if *text != "stored and verified" => {
            eprintln!("{path}: {text}");
        }
        TreeProgress::Verdict { path, ok: true, .. } if show => {
            eprintln!("stored {path}");
        }
        TreeProgress::File { path, done, total } if show => {
            eprint!("\r{path}: {done} of {total} bytes\x1b[K");
        }
        TreeProgress::Overall { entries, sent, .. } if show => {
            eprintln!("{entries} entries listed, {sent} bytes sent");
        }
        TreeProgress::Retrying {
            attempt,
            delay,
            error,
        } if !quiet => {
            eprintln!("{error}; attempt {attempt} in {:.1} s", delay.as_secs_f64());
        }
        _ => {}
    }
}

fn summary(o: &TreeOutcome) -> String {
    format!(
        "TREE_OK: {} files ({} bytes), {} directories, {} symlinks; {} stored, {} held already, {} skipped, {} failed, {} not stored; sent {} bytes in {:.2} s, {} attempt(s){}{}",
        o.files, o.bytes, o.dirs, o.symlinks, o.stored, o.held, o.skipped, o.failed, o.not_stored, o.sent,
        o.elapsed.as_secs_f64(), o.attempts, if o.encrypted { ", over TLS" } else { "" }, quiet_changes(o)
    )
}

/// Files whose content changed under the same size and mtime: sent
/// (the server's verdicts say what became of the stored ones).
fn quiet_changes(o: &TreeOutcome) -> String {
    match o.changed_quietly {
        0 => String::new(),
        n => format!("; {n} file(s) had the same size and mtime as the stored ones but another content: sent"),
    }
}

fn json_ok(o: &TreeOutcome, code: u8) -> String {
    let result = if code == exit::OK {
        "TREE_OK"
    } else {
        "TREE_INCOMPLETE"
    };
    format!(
        "{{\"result\": {}, \"exit_code\": {code}, \"files\": {}, \"dirs\": {}, \"symlinks\": {}, \"bytes\": {}, \"bytes_sent\": {}, \"stored\": {}, \"held\": {}, \"changed_same_mtime\": {}, \"skipped\": {}, \"failed\": {}, \"not_stored\": {}, \"attempts\": {}, \"encrypted\": {}, \"seconds\": {:.3}}}",
        json_string(result), o.files, o.dirs, o.symlinks, o.bytes, o.sent, o.stored, o.held, o.changed_quietly, o.skipped, o.failed, o.not_stored, o.attempts, o.encrypted, o.elapsed.as_secs_f64()
    )
}
