//! `bigtransfer list`: what a server holds, one line per entry (or one
//! JSON object with `--json`). Names are the server's raw bytes: escaped
//! before they reach a terminal, so a hostile name cannot move the cursor
//! or fake another line.
//!
//! Not for the request itself (see `bigtransfer_core::client::list_remote`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bigtransfer_core::client::list_remote_with;
use bigtransfer_core::listing::{EntryKind, ListEntry};
use bigtransfer_core::{ErrorKind, SendOptions};

use crate::send::{exit_code_for, PinArgs};
use crate::{exit, parse, prompt, AuthArgs};

#[derive(clap::Args)]
pub struct ListArgs {
    /// Server host name or IP address, optionally with the port.
    #[arg(long)]
    host: String,
    /// Server port [default: the one in --host, else 8080].
    #[arg(long)]
    port: Option<u16>,
    /// List only this name, its numbered versions (NAME.~N~) and its
    /// partial upload [default: everything].
    remote: Option<String>,
    /// Give up when nothing moves for this long.
    #[arg(long, default_value = "60s", value_parser = parse::duration)]
    timeout: Duration,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    pin: PinArgs,
    /// Print one JSON object: {"files": [...], "partial": [...], "dirs":
    /// [...], "tree_parts": {...} or null}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ListArgs) -> ExitCode {
    let (host, in_host) = prompt::split_host_port(&a.host);
    let in_host = match in_host.map(|p| p.parse::<u16>()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            let m = format!("{} has no valid port", a.host);
            return fail(&a, exit::USAGE, ErrorKind::InvalidInput, &m);
        }
    };
    let port = a.port.or(in_host).unwrap_or(8080);
    let mut opts = SendOptions::new(host, port);
    opts.token = match a.auth.load() {
        Ok(t) => t,
        Err(e) => return fail(&a, exit::USAGE, ErrorKind::InvalidInput, &e.to_string()),
    };
    opts.io_timeout = a.timeout;
    a.pin.apply(&mut opts);
    match list_remote_with(&opts, a.remote.as_deref(), true) {
        Ok(l) => {
            let mut entries = l.entries;
            // Tree uploads in progress come last, the unnamed summary
            // (parts whose tree is not noted) after the named ones.
            entries.sort_by(|x, y| {
                let key = |e: &ListEntry| {
                    let tree = e.kind == EntryKind::TreeParts;
                    (tree, tree && e.name.is_empty())
                };
                (key(x), &x.name).cmp(&(key(y), &y.name))
            });
            if a.json {
                println!("{}", json(&entries, l.encrypted));
            } else {
                for e in &entries {
                    println!("{}", line(e));
                }
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(&a, exit_code_for(e.kind()), e.kind(), &e.to_string()),
    }
}

fn fail(a: &ListArgs, code: u8, kind: ErrorKind, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    if a.json {
        println!(
            "{{\"exit_code\": {code}, \"reason\": \"{}\", \"message\": {}}}",
            kind.as_str(),
            prompt::json_string(message)
        );
    }
    ExitCode::from(code)
}

/// A name as it may be shown: UTF-8 with dangerous characters escaped,
/// other bytes as `\xNN`.
fn shown(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) => bigtransfer_core::text::printable(s).into_owned(),
        Err(_) => name
            .iter()
            .map(|&b| match b {
                b' '..=b'~' if b != b'\\' => (b as char).to_string(),
                _ => format!("\\x{b:02x}"),
            })
            .collect(),
    }
}

fn time(mtime: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `file SIZE MTIME crc32 HEX|unknown NAME`,
/// `partial SIZE MTIME held N (P%) NAME`, `dir SIZE MTIME files N NAME/`
/// (`-` and `?` when the server did not count or has no mtime) or the
/// tree parts summary in words: the name last, so spaces in it leave the
/// columns alone.
fn line(e: &ListEntry) -> String {
    match e.kind {
        EntryKind::File => format!(
            "file     {:>15}  {}  crc32 {}  {}",
            e.size,
            time(e.mtime),
            e.crc32
                .map_or("unknown ".to_string(), |c| format!("{c:08x}")),
            shown(&e.name)
        ),
        EntryKind::Partial => format!(
            "partial  {:>15}  {}  held {} ({}%)  {}",
            e.size,
            time(e.mtime),
            e.held,
            percent(e.held, e.size),
            shown(&e.name)
        ),
        EntryKind::Dir => format!(
            "dir      {:>15}  {:<20}  files {}  {}/",
            e.files.map_or("-".to_string(), |_| e.size.to_string()),
            if e.mtime == 0 {
                "-".to_string()
            } else {
                time(e.mtime)
            },
            e.files.map_or("?".to_string(), |n| n.to_string()),
            shown(&e.name)
        ),
        EntryKind::TreeParts if !e.name.is_empty() => format!(
            "tree upload in progress: {}/: {} file{}, {} bytes held, last written {}",
            shown(&e.name),
            e.files.unwrap_or(0),
            if e.files == Some(1) { "" } else { "s" },
            e.size,
            time(e.mtime)
        ),
        EntryKind::TreeParts => format!(
            "tree uploads in progress: {} file{}, {} bytes held, last written {} \
             (their names are not kept on the server: digests name them)",
            e.files.unwrap_or(0),
            if e.files == Some(1) { "" } else { "s" },
            e.size,
            time(e.mtime)
        ),
    }
}

fn percent(held: u64, size: u64) -> u64 {
    match size {
        0 => 100,
        s => (held as u128 * 100 / s as u128) as u64,
    }
}

fn json(entries: &[ListEntry], encrypted: bool) -> String {
    let obj = |e: &ListEntry| {
        let crc = e.crc32.map_or("null".to_string(), |c| c.to_string());
        let base = format!(
            "{{\"name\": {}, \"size\": {}, \"mtime\": {}",
            prompt::json_string(&shown(&e.name)),
            e.size,
            e.mtime
        );
        match e.kind {
            EntryKind::File => format!("{base}, \"crc32\": {crc}}}"),
            EntryKind::Partial => format!("{base}, \"held\": {}}}", e.held),
            EntryKind::Dir | EntryKind::TreeParts => dir_json(e),
        }
    };
    let of = |k: EntryKind| {
        entries
            .iter()
            .filter(|e| e.kind == k)
            .map(obj)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{\"files\": [{}], \"partial\": [{}], \"dirs\": [{}], \"tree_parts\": {}, \"tree_uploads\": [{}], \"encrypted\": {encrypted}}}",
        of(EntryKind::File),
        of(EntryKind::Partial),
        of(EntryKind::Dir),
        tree_parts_total(entries),
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::TreeParts)
            .map(tree_upload_json)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// All tree uploads in progress summed up (`null`: none), as older
/// versions gave it.
fn tree_parts_total(entries: &[ListEntry]) -> String {
    let trees: Vec<&ListEntry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::TreeParts)
        .collect();
    if trees.is_empty() {
        return "null".into();
    }
    let files: u64 = trees.iter().map(|e| e.files.unwrap_or(0)).sum();
    let held: u64 = trees.iter().map(|e| e.size).sum();
    let mtime = trees.iter().map(|e| e.mtime).max().unwrap_or(0);
    format!("{{\"files\": {files}, \"held\": {held}, \"mtime\": {mtime}}}")
}

/// One tree upload in progress: its root's name (`null`: not noted on the
/// server), files, bytes held, newest part's mtime.
fn tree_upload_json(e: &ListEntry) -> String {
    let name = match e.name.is_empty() {
        true => "null".to_string(),
        false => prompt::json_string(&shown(&e.name)),
    };
    format!(
        "{{\"name\": {name}, \"files\": {}, \"held\": {}, \"mtime\": {}}}",
        e.files.unwrap_or(0),
        e.size,
        e.mtime
    )
}

/// A directory (`size` and `files` null when not counted) or the tree
/// parts summary (`files` in progress, `held` bytes).
fn dir_json(e: &ListEntry) -> String {
    let files = e.files.map_or("null".to_string(), |n| n.to_string());
    match e.kind {
        EntryKind::TreeParts => format!(
            "{{\"files\": {files}, \"held\": {}, \"mtime\": {}}}",
            e.size, e.mtime
        ),
        _ => format!(
            "{{\"kind\": \"dir\", \"name\": {}, \"size\": {}, \"mtime\": {}, \"files\": {files}}}",
            prompt::json_string(&shown(&e.name)),
            e.files.map_or("null".to_string(), |_| e.size.to_string()),
            e.mtime
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped_and_lines_keep_their_shape() {
        assert_eq!(shown(b"a b.bin"), "a b.bin");
        assert_eq!(shown(b"x\n\x1b[2J"), "x\\u{a}\\u{1b}[2J");
        assert_eq!(shown(b"\xff\\n"), "\\xff\\x5cn");
        let e = ListEntry {
            kind: EntryKind::Partial,
            name: b"p\r".to_vec(),
            size: 200,
            mtime: 0,
            crc32: None,
            held: 50,
            files: None,
        };
        assert_eq!(
            line(&e),
            "partial              200  1970-01-01T00:00:00Z  held 50 (25%)  p\\u{d}"
        );
        let d = ListEntry {
            kind: EntryKind::Dir,
            name: b"t\n\x1b[2J".to_vec(),
            size: 300,
            mtime: 60,
            files: Some(3),
            ..e.clone()
        };
        assert_eq!(
            line(&d),
            "dir                  300  1970-01-01T00:01:00Z  files 3  t\\u{a}\\u{1b}[2J/"
        );
        let uncounted = ListEntry {
            files: None,
            mtime: 0,
            ..d.clone()
        };
        assert_eq!(
            line(&uncounted),
            "dir                    -  -                     files ?  t\\u{a}\\u{1b}[2J/"
        );
        assert_eq!(
            dir_json(&d),
            r#"{"kind": "dir", "name": "t\\u{a}\\u{1b}[2J", "size": 300, "mtime": 60, "files": 3}"#
        );
    }
}
