//! The interactive side of `bigtransfer client`: the original script's three
//! questions (server IP, port, file path), in Russian under a Russian locale,
//! re-asked when an answer is unusable, answerable from a pipe; the address
//! forms people type (`HOST:PORT`, `[V6]:PORT`) and the path forms they
//! paste (quoted, with backslash escapes, starting with `~`).
//!
//! Not for: validating anything beyond what a person typed: the engine
//! checks the file again when it opens it.

use std::io::Write;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::msg::{self, Lang};

/// Where answers come from: a terminal or a pipe, line by line. Reading
/// standard input takes its lock per line only, so several `Input`s (the
/// questions, then "try again?") can take turns.
pub struct Input {
    read_line: Box<ReadLine>,
}

/// Reads one line into the buffer, returning its length (0 at the end).
type ReadLine = dyn FnMut(&mut String) -> std::io::Result<usize>;

impl Input {
    pub fn stdin() -> Self {
        Input {
            read_line: Box::new(|line| std::io::stdin().read_line(line)),
        }
    }

    #[cfg(test)]
    pub fn new(mut reader: impl std::io::BufRead + 'static) -> Self {
        Input {
            read_line: Box::new(move |line| reader.read_line(line)),
        }
    }

    /// Shows `prompt` and reads one line; `None` at end of input.
    fn ask(&mut self, prompt: &str) -> Option<String> {
        let mut out = std::io::stdout();
        let _ = out.write_all(prompt.as_bytes());
        let _ = out.flush();
        let mut line = String::new();
        match (self.read_line)(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\n', '\r']).trim().to_string()),
        }
    }
}

/// The three answers of the original script.
#[derive(Debug)]
pub struct Answers {
    pub host: String,
    pub port: u16,
    pub path: PathBuf,
}

/// Splits `HOST:PORT`, `[V6]:PORT`, `[V6]`, a bare IPv6 address or a bare
/// host into the host and the port, if one was given.
pub fn split_host_port(s: &str) -> (String, Option<String>) {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').map(str::to_string);
            return (h.to_string(), port);
        }
    }
    match s.rsplit_once(':') {
        // One colon: HOST:PORT. More: a bare IPv6 address.
        Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p.to_string())),
        _ => (s.to_string(), None),
    }
}

/// A host (with an optional port after it), checked: an IP address or a
/// name that resolves.
pub fn check_host(lang: Lang, s: &str) -> Result<(String, Option<u16>), String> {
    let (h, port) = split_host_port(s);
    if h.is_empty() {
        return Err(lang.s(&msg::EMPTY_ADDRESS).into());
    }
    let port = port.map(|p| check_port(lang, &p)).transpose()?;
    if h.parse::<IpAddr>().is_ok() {
        return Ok((h, port));
    }
    match (h.as_str(), 0u16).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => Ok((h, port)),
        _ => Err(lang.f(&msg::BAD_HOST, &[&h])),
    }
}

pub fn check_port(lang: Lang, s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(lang.f(&msg::BAD_PORT, &[&s.trim()])),
    }
}

/// What a pasted path most likely meant: surrounding quotes removed, or
/// else backslash escapes undone (`my\ file` is `my file`), then a leading
/// `~` or `~/` replaced by the home directory.
pub fn unpaste(s: &str) -> String {
    let s = s.trim();
    let quoted = s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')));
    let mut p = if quoted {
        s[1..s.len() - 1].to_string()
    } else {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out
    };
    if p == "~" || p.starts_with("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            p = format!("{}{}", home.to_string_lossy(), &p[1..]);
        }
    }
    p
}

/// A readable regular file or directory: the path as typed, or else as [`unpaste`]
/// reads it.
pub fn check_path(lang: Lang, s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err(lang.s(&msg::EMPTY_PATH).into());
    }
    let as_typed = std::path::Path::new(s);
    let p = if as_typed.exists() {
        as_typed.to_path_buf()
    } else {
        PathBuf::from(unpaste(s))
    };
    let shown = p.display().to_string();
    match std::fs::metadata(&p) {
        // A directory is sent as a tree.
        Ok(m) if m.is_dir() => match std::fs::read_dir(&p) {
            Ok(_) => Ok(p),
            Err(e) => Err(lang.f(&msg::CANNOT_READ, &[&shown, &e])),
        },
        Ok(m) if m.is_file() => match std::fs::File::open(&p) {
            Ok(_) => Ok(p),
            Err(e) => Err(lang.f(&msg::CANNOT_READ, &[&shown, &e])),
        },
        Ok(_) => Err(lang.f(&msg::NOT_REGULAR, &[&shown])),
        Err(e) => Err(lang.f(&msg::CANNOT_OPEN, &[&shown, &e])),
    }
}

fn ask_until<T>(
    input: &mut Input,
    lang: Lang,
    prompt: &str,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    loop {
        let Some(answer) = input.ask(prompt) else {
            let q = prompt.trim_end_matches([':', ' ']);
            return Err(lang.f(&msg::END_OF_INPUT, &[&q]));
        };
        match check(&answer) {
            Ok(v) => return Ok(v),
            Err(why) => eprintln!("{why}"),
        }
    }
}

/// Asks, in the original order, for what the command line did not give.
/// Values given as flags are checked too (and fail rather than prompt). A
/// port given with the host (`HOST:PORT`) is not asked for.
pub fn ask_missing(
    input: &mut Input,
    lang: Lang,
    host: Option<String>,
    port: Option<u16>,
    file: Option<PathBuf>,
) -> Result<Answers, String> {
    let (host, host_port) = match host {
        Some(h) => check_host(lang, &h)?,
        None => ask_until(input, lang, lang.s(&msg::ASK_HOST), |a| check_host(lang, a))?,
    };
    let port = match (port, host_port) {
        (Some(0), _) => return Err(lang.s(&msg::PORT_ZERO).into()),
        (Some(p), Some(hp)) if p != hp => {
            return Err(lang.f(&msg::TWO_PORTS, &[&host, &hp, &p]));
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => ask_until(input, lang, lang.s(&msg::ASK_PORT), |a| check_port(lang, a))?,
    };
    let path = match file {
        Some(f) => check_path(lang, &f.to_string_lossy())?,
        None => ask_until(input, lang, lang.s(&msg::ASK_PATH), |a| check_path(lang, a))?,
    };
    Ok(Answers { host, port, path })
}

/// The answer to "try again?" after a failed connect.
#[derive(Debug, PartialEq, Eq)]
pub enum Retry {
    /// The same address again.
    Same,
    /// Another address (a new host, port, or both).
    To(String, u16),
    /// Give up.
    GiveUp,
}

/// Asks whether to try again, and where: yes (or an empty answer) keeps
/// the address, no (or end of input) gives up, `HOST:PORT`, `HOST` or
/// `:PORT` / `PORT` changes it.
pub fn ask_retry(input: &mut Input, lang: Lang, host: &str, port: u16) -> Retry {
    for _ in 0..5 {
        let Some(a) = input.ask(lang.s(&msg::TRY_AGAIN)) else {
            return Retry::GiveUp;
        };
        let low = a.to_lowercase();
        if low.is_empty() || ["y", "yes", "д", "да"].contains(&low.as_str()) {
            return Retry::Same;
        }
        if ["n", "no", "н", "нет"].contains(&low.as_str()) {
            return Retry::GiveUp;
        }
        let only_port = a.strip_prefix(':').unwrap_or(&a);
        if only_port.chars().all(|c| c.is_ascii_digit()) {
            match check_port(lang, only_port) {
                Ok(p) => return Retry::To(host.to_string(), p),
                Err(why) => eprintln!("{why}"),
            }
            continue;
        }
        match check_host(lang, &a) {
            Ok((h, p)) => return Retry::To(h, p.unwrap_or(port)),
            Err(why) => eprintln!("{why}"),
        }
    }
    Retry::GiveUp
}

/// A JSON string literal (for `--json` output and JSON log lines).
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_answers_are_asked_again() {
        let dir = std::env::temp_dir().join(format!("bt-prompt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f.bin");
        std::fs::write(&f, b"x").unwrap();
        let text = format!(
            "\n127.0.0.1\n70000\nabc\n9000\n{}/missing\n{}\n",
            dir.display(),
            f.display()
        );
        let mut input = Input::new(std::io::Cursor::new(text.into_bytes()));
        let a = ask_missing(&mut input, Lang::En, None, None, None).unwrap();
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 9000);
        assert_eq!(a.path, f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn end_of_input_is_an_error_not_a_loop() {
        let mut input = Input::new(&b"127.0.0.1\n"[..]);
        let e = ask_missing(&mut input, Lang::En, None, None, None).unwrap_err();
        assert_eq!(e, "no answer to 'Server port' (end of input)");
        let mut input = Input::new(&b"127.0.0.1\n"[..]);
        let e = ask_missing(&mut input, Lang::Ru, None, None, None).unwrap_err();
        assert_eq!(e, "нет ответа на «Введите порт сервера» (ввод закончился)");
    }

    #[test]
    fn host_and_port_forms() {
        let split = |s: &str| split_host_port(s);
        assert_eq!(
            split("10.0.0.5:8080"),
            ("10.0.0.5".into(), Some("8080".into()))
        );
        assert_eq!(split("[::1]:9"), ("::1".into(), Some("9".into())));
        assert_eq!(split("[::1]"), ("::1".into(), None));
        assert_eq!(split("::1"), ("::1".into(), None));
        assert_eq!(split("fe80::1:2"), ("fe80::1:2".into(), None));
        assert_eq!(split("localhost"), ("localhost".into(), None));
        assert_eq!(
            check_host(Lang::En, "127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), Some(8080))
        );
        assert_eq!(
            check_host(Lang::En, "[::1]:7").unwrap(),
            ("::1".into(), Some(7))
        );
        assert_eq!(check_host(Lang::En, "[::1]").unwrap(), ("::1".into(), None));
        assert_eq!(
            check_host(Lang::En, "127.0.0.1:0").unwrap_err(),
            "'0' is not a port number (1-65535)"
        );
        assert_eq!(check_host(Lang::Ru, "").unwrap_err(), "адрес пуст");
        // The port comes with the host: it is not asked for.
        let mut input = Input::new(&b""[..]);
        let f = std::env::current_exe().unwrap();
        let a = ask_missing(
            &mut input,
            Lang::En,
            Some("127.0.0.1:7000".into()),
            None,
            Some(f.clone()),
        )
        .unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 7000));
        let e = ask_missing(
            &mut input,
            Lang::En,
            Some("127.0.0.1:7000".into()),
            Some(7001),
            Some(f),
        )
        .unwrap_err();
        assert_eq!(e, "--host 127.0.0.1 names port 7000 but --port says 7001");
    }

    #[test]
    fn pasted_paths() {
        std::env::set_var("HOME", "/home/u");
        assert_eq!(unpaste("'/tmp/my file.iso'"), "/tmp/my file.iso");
        assert_eq!(unpaste("\"/tmp/a b\" "), "/tmp/a b");
        assert_eq!(unpaste("/tmp/my\\ file\\'s.iso"), "/tmp/my file's.iso");
        assert_eq!(unpaste("~/big.iso"), "/home/u/big.iso");
        assert_eq!(unpaste("~"), "/home/u");
        assert_eq!(unpaste("~other/x"), "~other/x");
        let dir = std::env::temp_dir().join(format!("bt-paste-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("my file.bin");
        std::fs::write(&f, b"x").unwrap();
        let d = dir.display();
        assert_eq!(
            check_path(Lang::En, &format!("'{d}/my file.bin'")).unwrap(),
            f
        );
        assert_eq!(
            check_path(Lang::En, &format!("{d}/my\\ file.bin")).unwrap(),
            f
        );
        // A directory is accepted: it is sent as a tree.
        assert_eq!(check_path(Lang::En, &d.to_string()).unwrap(), dir);
        let e = check_path(Lang::Ru, &format!("{d}/nope")).unwrap_err();
        assert!(
            e.starts_with(&format!("не удаётся открыть {d}/nope: ")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retry_answers() {
        let ask = |text: &'static [u8]| ask_retry(&mut Input::new(text), Lang::En, "h", 1);
        assert_eq!(ask(b""), Retry::GiveUp);
        assert_eq!(ask(b"\n"), Retry::Same);
        assert_eq!(ask("да\n".as_bytes()), Retry::Same);
        assert_eq!(ask(b"n\n"), Retry::GiveUp);
        assert_eq!(ask(b":8081\n"), Retry::To("h".into(), 8081));
        assert_eq!(ask(b"8082\n"), Retry::To("h".into(), 8082));
        assert_eq!(
            ask(b"127.0.0.1:8083\n"),
            Retry::To("127.0.0.1".into(), 8083)
        );
        assert_eq!(ask(b"99999\n:5\n"), Retry::To("h".into(), 5));
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
