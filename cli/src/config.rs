//! `bigtransfer server --config FILE`: the TOML file of server settings.
//!
//! The keys are the names of the command-line flags (`max_connections` or
//! `max-connections`); a flag given on the command line wins. Every error
//! names the file and the line. Not for: defaults or validation beyond the
//! value's form (the server checks the rest when it starts).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::parse;

/// The settings a config file may hold, each with where it was written.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub port: Option<Spanned<u16>>,
    pub bind: Option<Spanned<String>>,
    pub dir: Option<Spanned<PathBuf>>,
    #[serde(alias = "max-connections")]
    pub max_connections: Option<Spanned<usize>>,
    pub timeout: Option<Spanned<toml::Value>>,
    #[serde(alias = "header-timeout")]
    pub header_timeout: Option<Spanned<toml::Value>>,
    #[serde(alias = "expire-partial")]
    pub expire_partial: Option<Spanned<toml::Value>>,
    #[serde(alias = "max-file-size")]
    pub max_file_size: Option<Spanned<toml::Value>>,
    #[serde(alias = "min-free")]
    pub min_free: Option<Spanned<toml::Value>>,
    #[serde(alias = "min-rate")]
    pub min_rate: Option<Spanned<toml::Value>>,
    #[serde(alias = "token-file")]
    pub token_file: Option<Spanned<PathBuf>>,
    pub token: Option<Spanned<String>>,
    #[serde(alias = "allow-legacy")]
    pub allow_legacy: Option<Spanned<bool>>,
    pub overwrite: Option<Spanned<bool>>,
    #[serde(alias = "log-format")]
    pub log_format: Option<Spanned<String>>,
    pub metrics: Option<Spanned<toml::Value>>,
    pub store: Option<Spanned<String>>,
    #[serde(alias = "s3-endpoint")]
    pub s3_endpoint: Option<Spanned<String>>,
    #[serde(alias = "s3-region")]
    pub s3_region: Option<Spanned<String>>,
    #[serde(alias = "s3-lease-stale")]
    pub s3_lease_stale: Option<Spanned<toml::Value>>,
    pub tls: Option<Spanned<String>>,
    pub key: Option<Spanned<PathBuf>>,
}

/// A parsed config file with its text, so that values can be checked later
/// with errors that still name their line.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    text: String,
    pub cfg: FileConfig,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    parse_text(path, text)
}

/// Parses `text` as the config file `path`.
pub fn parse_text(path: &Path, text: String) -> Result<Loaded, String> {
    match toml::from_str::<FileConfig>(&text) {
        Ok(cfg) => Ok(Loaded {
            path: path.to_path_buf(),
            text,
            cfg,
        }),
        Err(e) => {
            let line = e.span().map_or(1, |s| line_of(&text, s.start));
            Err(format!(
                "{}: line {line}: {}",
                path.display(),
                e.message().trim_end()
            ))
        }
    }
}

impl Loaded {
    /// An error about the value written at `span`.
    pub fn error_at(&self, span: std::ops::Range<usize>, msg: &str) -> String {
        format!(
            "{}: line {}: {msg}",
            self.path.display(),
            line_of(&self.text, span.start)
        )
    }

    /// A value written as a string or a bare integer, as text.
    fn text_of(&self, v: &Spanned<toml::Value>, what: &str) -> Result<String, String> {
        match v.get_ref() {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            _ => Err(self.error_at(v.span(), &format!("{what} must be a string or a number"))),
        }
    }

    /// A duration setting (`"90s"`, `"7d"` or seconds as a number).
    pub fn duration(&self, v: &Option<Spanned<toml::Value>>) -> Result<Option<Duration>, String> {
        let Some(v) = v else { return Ok(None) };
        let s = self.text_of(v, "a duration")?;
        parse::duration(&s)
            .map(Some)
            .map_err(|e| self.error_at(v.span(), &e))
    }

    /// A size setting (`"10G"` or bytes as a number).
    pub fn size(&self, v: &Option<Spanned<toml::Value>>) -> Result<Option<u64>, String> {
        let Some(v) = v else { return Ok(None) };
        let s = self.text_of(v, "a size")?;
        parse::size(&s)
            .map(Some)
            .map_err(|e| self.error_at(v.span(), &e))
    }

    /// The metrics address (`"127.0.0.1:9180"` or a port number).
    pub fn metrics(&self) -> Result<Option<String>, String> {
        match &self.cfg.metrics {
            None => Ok(None),
            Some(v) => self.text_of(v, "metrics").map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, String> {
        parse_text(Path::new("server.toml"), text.to_string())
    }

    #[test]
    fn every_setting_is_read_with_flag_names() {
        let l = parse(
            "port = 9000\nbind = \"127.0.0.1\"\ndir = \"/srv/up\"\nmax-connections = 8\n\
             timeout = \"90s\"\nheader_timeout = 5\nexpire_partial = \"2d\"\nmax_file_size = \"1G\"\n\
             min_free = 1024\ntoken_file = \"/etc/t\"\nallow_legacy = true\nlog_format = \"json\"\n\
             metrics = 9180\n",
        )
        .unwrap();
        let c = &l.cfg;
        assert_eq!(*c.port.as_ref().unwrap().get_ref(), 9000);
        assert_eq!(c.bind.as_ref().unwrap().get_ref(), "127.0.0.1");
        assert_eq!(c.dir.as_ref().unwrap().get_ref(), Path::new("/srv/up"));
        assert_eq!(*c.max_connections.as_ref().unwrap().get_ref(), 8);
        assert_eq!(
            l.duration(&c.timeout).unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            l.duration(&c.header_timeout).unwrap(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            l.duration(&c.expire_partial).unwrap(),
            Some(Duration::from_secs(2 * 86400))
        );
        assert_eq!(l.size(&c.max_file_size).unwrap(), Some(1 << 30));
        assert_eq!(l.size(&c.min_free).unwrap(), Some(1024));
        assert_eq!(
            c.token_file.as_ref().unwrap().get_ref(),
            Path::new("/etc/t")
        );
        assert!(*c.allow_legacy.as_ref().unwrap().get_ref());
        assert_eq!(c.log_format.as_ref().unwrap().get_ref(), "json");
        assert_eq!(l.metrics().unwrap().as_deref(), Some("9180"));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("port = 9000\n\nportt = 1\n").unwrap_err();
        assert!(
            e.starts_with("server.toml: line 3: unknown field `portt`"),
            "{e}"
        );
        let e = parse("port = 9000\nport = \"x\"\n").unwrap_err();
        assert!(e.starts_with("server.toml: line 2:"), "{e}");
        let e = parse("# c\nport = 70000\n").unwrap_err();
        assert!(e.starts_with("server.toml: line 2:"), "{e}");
        let e = parse("port = [\n").unwrap_err();
        assert!(e.starts_with("server.toml: line "), "{e}");
        let l = parse("port = 1\n\n\ntimeout = \"7w\"\n").unwrap();
        let e = l.duration(&l.cfg.timeout).unwrap_err();
        assert_eq!(
            e,
            "server.toml: line 4: unknown unit 'w' in '7w' (use ms, s, m, h or d)"
        );
        let l = parse("min_free = true\n").unwrap();
        let e = l.size(&l.cfg.min_free).unwrap_err();
        assert_eq!(
            e,
            "server.toml: line 1: a size must be a string or a number"
        );
    }
}
