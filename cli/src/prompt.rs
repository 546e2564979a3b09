//! The interactive side of `bigtransfer client`: the original script's three
//! questions (server IP, port, file path), in Russian under a Russian locale,
//! re-asked when an answer is unusable, and answerable from a pipe.
//!
//! Not for validating anything beyond what a person typed: the engine checks
//! the file again when it opens it.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use bigtransfer_core::Error;

/// The language of prompts and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Ru,
}

impl Lang {
    /// Russian when the locale that governs messages is Russian, as the
    /// original script's users expect; English otherwise.
    pub fn from_env() -> Lang {
        for var in ["LC_ALL", "LC_MESSAGES", "LANG"] {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    return if v.to_ascii_lowercase().starts_with("ru") {
                        Lang::Ru
                    } else {
                        Lang::En
                    };
                }
            }
        }
        Lang::En
    }

    fn pick(self, en: &'static str, ru: &'static str) -> &'static str {
        match self {
            Lang::En => en,
            Lang::Ru => ru,
        }
    }

    pub fn ask_host(self) -> &'static str {
        self.pick("Server IP address: ", "Введите IP-адрес сервера: ")
    }
    pub fn ask_port(self) -> &'static str {
        self.pick("Server port: ", "Введите порт сервера: ")
    }
    pub fn ask_path(self) -> &'static str {
        self.pick("Path to the file: ", "Введите путь к файлу: ")
    }
    pub fn try_again(self) -> &'static str {
        self.pick("Try again? [Y/n]: ", "Попробовать снова? [Д/н]: ")
    }
    pub fn hashing(self) -> String {
        self.pick("CRC-32", "CRC-32").to_string()
    }
    pub fn sending(self) -> String {
        self.pick("sending", "отправка").to_string()
    }
    pub fn verifying(self) -> String {
        self.pick("verifying", "проверка").to_string()
    }
    pub fn resuming(self, addr: SocketAddr, offset: u64, total: u64) -> String {
        match self {
            Lang::En => format!("{addr}: server already holds {offset} of {total} bytes; resuming"),
            Lang::Ru => format!("{addr}: на сервере уже есть {offset} из {total} байт; продолжаем"),
        }
    }
    pub fn retrying(self, e: &Error, delay: Duration, attempt: u32) -> String {
        match self {
            Lang::En => format!(
                "{e}; retrying in {:.1}s (attempt {attempt})",
                delay.as_secs_f64()
            ),
            Lang::Ru => format!(
                "{e}; повтор через {:.1} с (попытка {attempt})",
                delay.as_secs_f64()
            ),
        }
    }
}

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

pub fn check_host(s: &str) -> Result<String, String> {
    let h = s.trim().trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return Err("the address is empty".into());
    }
    if h.parse::<IpAddr>().is_ok() {
        return Ok(h.to_string());
    }
    match (h, 0u16).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => Ok(h.to_string()),
        _ => Err(format!(
            "'{h}' is neither an IP address nor a host name that resolves"
        )),
    }
}

pub fn check_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("'{}' is not a port number (1-65535)", s.trim())),
    }
}

pub fn check_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => match std::fs::File::open(&p) {
            Ok(_) => Ok(p),
            Err(e) => Err(format!("cannot read {s}: {e}")),
        },
        Ok(_) => Err(format!("{s} is not a regular file")),
        Err(e) => Err(format!("cannot open {s}: {e}")),
    }
}

fn ask_until<T>(
    input: &mut Input,
    prompt: &str,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    loop {
        let Some(answer) = input.ask(prompt) else {
            return Err(format!(
                "no answer to '{}' (end of input)",
                prompt.trim_end_matches([':', ' '])
            ));
        };
        match check(&answer) {
            Ok(v) => return Ok(v),
            Err(why) => eprintln!("{why}"),
        }
    }
}

/// Asks, in the original order, for what the command line did not give.
/// Values given as flags are checked too (and fail rather than prompt).
pub fn ask_missing(
    input: &mut Input,
    lang: Lang,
    host: Option<String>,
    port: Option<u16>,
    file: Option<PathBuf>,
) -> Result<Answers, String> {
    let host = match host {
        Some(h) => check_host(&h)?,
        None => ask_until(input, lang.ask_host(), check_host)?,
    };
    let port = match port {
        Some(0) => return Err("port 0 is not a server port".into()),
        Some(p) => p,
        None => ask_until(input, lang.ask_port(), check_port)?,
    };
    let path = match file {
        Some(f) => check_path(&f.to_string_lossy()).map(|_| f)?,
        None => ask_until(input, lang.ask_path(), check_path)?,
    };
    Ok(Answers { host, port, path })
}

/// Asks a yes/no question; an empty answer means yes, end of input means no.
pub fn ask_yes_no(input: &mut Input, _lang: Lang, prompt: &str) -> bool {
    for _ in 0..5 {
        match input.ask(prompt).map(|s| s.to_lowercase()) {
            None => return false,
            Some(a) if a.is_empty() || ["y", "yes", "д", "да"].contains(&a.as_str()) => {
                return true
            }
            Some(a) if ["n", "no", "н", "нет"].contains(&a.as_str()) => return false,
            Some(_) => continue,
        }
    }
    false
}

/// A JSON string literal (for `--json` output).
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
        let e = ask_missing(&mut input, Lang::Ru, None, None, None).unwrap_err();
        assert!(e.contains("end of input"), "{e}");
    }

    #[test]
    fn checks() {
        assert_eq!(check_host("[::1]").unwrap(), "::1");
        assert!(check_host("").is_err());
        assert!(check_port("0").is_err());
        assert_eq!(check_port(" 8080 ").unwrap(), 8080);
        assert!(!ask_yes_no(&mut Input::new(&b""[..]), Lang::En, "?"));
        assert!(ask_yes_no(&mut Input::new(&b"\n"[..]), Lang::En, "?"));
        assert!(ask_yes_no(
            &mut Input::new("Да\n".as_bytes()),
            Lang::Ru,
            "?"
        ));
        assert!(!ask_yes_no(&mut Input::new(&b"n\n"[..]), Lang::En, "?"));
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
