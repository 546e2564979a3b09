//! The client's pins: which server key belongs to which `host:port`.
//!
//! One line per server, `host:port SHA256:<base64>` (an IPv6 host in
//! brackets, `[::1]:7000`), `#` comments and blank lines kept as they are.
//! The first contact stores the key ([`KnownHosts::add`], written to a
//! temporary file and renamed, mode 0600 in a 0700 directory); later
//! contacts must present the same key, and a different one is a
//! [`Lookup::Mismatch`] whose message says which line of which file to
//! change. Damaged lines are reported with their number, never a panic;
//! a damaged line that names the host being looked up is not taken as
//! "unknown" (that would let damage turn into a silent re-pin).
//!
//! Not for the TLS check itself ([`crate::tls`]) nor for the server's key.

use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::tls::{parent_dir, temp_path, write_private_file, Fingerprint};
use crate::{Error, ErrorKind, Result};

/// The environment variable naming the known-hosts file.
pub const ENV: &str = "BIGTRANSFER_KNOWN_HOSTS";

/// The default file: `$BIGTRANSFER_KNOWN_HOSTS`, else
/// `$XDG_CONFIG_HOME/bigtransfer/known_hosts`, else
/// `~/.config/bigtransfer/known_hosts`.
pub fn default_path() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = var(ENV) {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("bigtransfer").join("known_hosts"));
    }
    match var("HOME") {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("bigtransfer")
            .join("known_hosts")),
        None => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("cannot place the known-hosts file: set {ENV} or HOME"),
        )),
    }
}

/// The key a server is filed under: `host:port`, the host lowercased and
/// an IPv6 address in brackets.
///
/// ```
/// use bigtransfer_core::known_hosts::host_key;
/// assert_eq!(host_key("Example.ORG", 7000), "example.org:7000");
/// assert_eq!(host_key("::1", 7000), "[::1]:7000");
/// assert_eq!(host_key("[::1]", 7000), "[::1]:7000");
/// ```
pub fn host_key(host: &str, port: u16) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Ok(IpAddr::V4(a)) => format!("{a}:{port}"),
        Err(_) => format!("{}:{port}", bare.to_ascii_lowercase()),
    }
}

/// A line of the file that is not a comment and not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// 1-based line number.
    pub line: usize,
    /// Its first field, if any (the host it seems to be about).
    pub host: String,
    /// What is wrong with it.
    pub why: String,
}

/// A pinned key that differs from the one presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The `host:port` looked up.
    pub host: String,
    /// The pinned fingerprint.
    pub pinned: Fingerprint,
    /// The fingerprint the server presented.
    pub presented: Fingerprint,
    /// The file holding the pin.
    pub file: PathBuf,
    /// The pin's 1-based line number.
    pub line: usize,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the key of {} has CHANGED: {} line {} pins {}, but the server presented {}. \
             Someone may be intercepting the connection, or the server got a new key. \
             Check the new fingerprint with the server's operator (`bigtransfer fingerprint` \
             on the server); if it is right, delete line {} of {} and connect again",
            self.host,
            self.file.display(),
            self.line,
            self.pinned,
            self.presented,
            self.line,
            self.file.display()
        )
    }
}

impl std::error::Error for Mismatch {}

/// What the file says about a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No pin for it: a first contact.
    Unknown,
    /// Pinned to this fingerprint (line number).
    Known(Fingerprint, usize),
    /// A line about it is damaged: neither trust nor re-pin until fixed.
    Damaged(Damaged),
}

/// The result of checking a presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The presented key is the pinned one.
    Match,
    /// No pin yet (the caller stores it with [`KnownHosts::add`]).
    Unknown,
    /// The pin differs: refuse.
    Mismatch(Mismatch),
}

#[derive(Debug, Clone)]
struct Entry {
    host: String,
    fingerprint: Fingerprint,
    line: usize,
}

/// The known-hosts file, read once.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
    damaged: Vec<Damaged>,
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty one. A file other users
    /// may write is refused: they could swap a pin for their own key.
    pub fn load(path: &Path) -> Result<KnownHosts> {
        check_not_shared(path)?;
        let text = match fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(kh_io("cannot read the known-hosts file", path, e)),
        };
        let mut kh = KnownHosts {
            path: path.to_path_buf(),
            entries: Vec::new(),
            damaged: Vec::new(),
        };
        for (i, raw) in text.lines().enumerate() {
            kh.parse_line(i + 1, raw);
        }
        Ok(kh)
    }

    fn parse_line(&mut self, line: usize, raw: &str) {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            return;
        }
        let fields: Vec<&str> = t.split_whitespace().collect();
        let host = fields[0].to_string();
        let why = match fields.as_slice() {
            [h, fp] if valid_host_field(h) => match Fingerprint::parse(fp) {
                Ok(fingerprint) => {
                    let host = host.to_ascii_lowercase();
                    self.entries.push(Entry {
                        host,
                        fingerprint,
                        line,
                    });
                    return;
                }
                Err(_) => "the second field is not a SHA256: fingerprint".to_string(),
            },
            [_, _] => "the first field is not host:port".to_string(),
            _ => format!(
                "{} fields, expected 2 (host:port fingerprint)",
                fields.len()
            ),
        };
        self.damaged.push(Damaged {
            line,
            host: crate::text::printable(&host).into_owned(),
            why,
        });
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The damaged lines, for warnings.
    pub fn damaged(&self) -> &[Damaged] {
        &self.damaged
    }

    /// The pin of `host` (as made by [`host_key`]); the first line wins.
    pub fn lookup(&self, host: &str) -> Lookup {
        let host = host.to_ascii_lowercase();
        if let Some(d) = self
            .damaged
            .iter()
            .find(|d| d.host.eq_ignore_ascii_case(&host))
        {
            return Lookup::Damaged(d.clone());
        }
        match self.entries.iter().find(|e| e.host == host) {
            Some(e) => Lookup::Known(e.fingerprint, e.line),
            None => Lookup::Unknown,
        }
    }

    /// Checks the key `presented` by `host`; a damaged line about it is an
    /// error naming the line.
    pub fn check(&self, host: &str, presented: &Fingerprint) -> Result<Check> {
        match self.lookup(host) {
            Lookup::Unknown => Ok(Check::Unknown),
            Lookup::Known(pinned, _) if pinned == *presented => Ok(Check::Match),
            Lookup::Known(pinned, line) => Ok(Check::Mismatch(Mismatch {
                host: host.to_ascii_lowercase(),
                pinned,
                presented: *presented,
                file: self.path.clone(),
                line,
            })),
            Lookup::Damaged(d) => Err(damaged_error(&self.path, &d)),
        }
    }

    /// Pins `host` to `fingerprint`: the file is read again (so lines added
    /// meanwhile by another client are kept), the line appended, and the
    /// whole written to a temporary 0600 file renamed over the old one.
    pub fn add(&mut self, host: &str, fingerprint: &Fingerprint) -> Result<()> {
        if !valid_host_field(host) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("cannot pin {host:?}: not host:port"),
            ));
        }
        let mut text = match fs::read(&self.path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(kh_io("cannot read the known-hosts file", &self.path, e)),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{} {fingerprint}\n", host.to_ascii_lowercase()));
        self.replace_file(&text)?;
        *self = KnownHosts::load(&self.path)?;
        Ok(())
    }

    fn replace_file(&self, text: &str) -> Result<()> {
        let dir = parent_dir(&self.path);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| kh_io("cannot create the directory of", &self.path, e))?;
        let tmp = temp_path(&self.path);
        let r =
            write_private_file(&tmp, text.as_bytes()).and_then(|()| fs::rename(&tmp, &self.path));
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r.map_err(|e| kh_io("cannot write the known-hosts file", &self.path, e))
    }
}

fn check_not_shared(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = match fs::metadata(path) {
        Ok(m) => m.mode(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(kh_io("cannot inspect the known-hosts file", path, e)),
    };
    if mode & 0o022 == 0 {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "the known-hosts file {} is writable by other users (mode {:04o}), so its pins \
             prove nothing; check its lines, then run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ),
    ))
}

/// `host:port` with a non-empty host, a numeric port, and no spaces.
fn valid_host_field(h: &str) -> bool {
    let Some((host, port)) = h.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && !host.contains(':')
            && !host.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    host_ok && port.parse::<u16>().is_ok()
}

fn damaged_error(path: &Path, d: &Damaged) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "line {} of {} is about {} but is damaged ({}); fix or delete that line",
            d.line,
            path.display(),
            d.host,
            d.why
        ),
    )
}

fn kh_io(what: &str, path: &Path, e: io::Error) -> Error {
    Error::io(
        ErrorKind::InvalidInput,
        format!("{what} {}", path.display()),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bt-kh-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Writes a test file private to us, whatever the umask.
    fn write(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn fp(seed: &[u8]) -> Fingerprint {
        Fingerprint::of_spki(seed)
    }

    #[test]
    fn add_then_lookup_and_mismatch() {
        let dir = scratch("add");
        let path = dir.join("conf").join("known_hosts");
        let mut kh = KnownHosts::load(&path).unwrap();
        let host = host_key("::1", 7000);
        assert_eq!(kh.check(&host, &fp(b"a")).unwrap(), Check::Unknown);
        kh.add(&host, &fp(b"a")).unwrap();
        kh.add(&host_key("Example.org", 1), &fp(b"b")).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("[::1]:7000 {}\nexample.org:1 {}\n", fp(b"a"), fp(b"b"))
        );
        let kh = KnownHosts::load(&path).unwrap();
        assert_eq!(kh.lookup("[::1]:7000"), Lookup::Known(fp(b"a"), 1));
        assert_eq!(kh.check("EXAMPLE.org:1", &fp(b"b")).unwrap(), Check::Match);
        assert_eq!(kh.lookup("[::1]:7001"), Lookup::Unknown);
        let Check::Mismatch(m) = kh.check("example.org:1", &fp(b"c")).unwrap() else {
            panic!("expected a mismatch");
        };
        assert_eq!((m.pinned, m.presented, m.line), (fp(b"b"), fp(b"c"), 2));
        let msg = m.to_string();
        for part in [
            fp(b"b").to_string(),
            fp(b"c").to_string(),
            "delete line 2 of".into(),
            path.display().to_string(),
        ] {
            assert!(msg.contains(&part), "{part} missing from {msg}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn comments_and_other_lines_survive_an_add() {
        let dir = scratch("keep");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_hosts");
        let before = format!("# my servers\n\nalpha:9 {}\nbroken line here", fp(b"x"));
        write(&path, before.as_bytes());
        let mut kh = KnownHosts::load(&path).unwrap();
        kh.add("beta:9", &fp(b"y")).unwrap();
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(after, format!("{before}\nbeta:9 {}\n", fp(b"y")));
        assert_eq!(kh.lookup("beta:9"), Lookup::Known(fp(b"y"), 5));
        assert_eq!(kh.lookup("alpha:9"), Lookup::Known(fp(b"x"), 3));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_lines_are_reported_with_their_number() {
        let dir = scratch("damaged");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_hosts");
        let good = fp(b"g");
        let text = format!(
            "ok:1 {good}\nbad:2 SHA256:nope\nno-port {good}\n\u{0}\u{ff}garbage\n\
             three:3 {good} extra\n[::1:4 {good}\nbad:2x {good}\n"
        );
        write(&path, text.as_bytes());
        let kh = KnownHosts::load(&path).unwrap();
        let lines: Vec<usize> = kh.damaged().iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(kh.lookup("ok:1"), Lookup::Known(good, 1));
        let e = kh.check("bad:2", &good).unwrap_err().to_string();
        assert!(
            e.contains("line 2 of") && e.contains("fix or delete"),
            "{e}"
        );
        assert!(kh.damaged()[0].why.contains("fingerprint"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        let dir = scratch("shared");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_hosts");
        write(&path, format!("a:1 {}\n", fp(b"a")).as_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let e = KnownHosts::load(&path).unwrap_err().to_string();
        assert!(e.contains("writable by other users (mode 0666)"), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            KnownHosts::load(&path).unwrap().lookup("a:1"),
            Lookup::Known(fp(b"a"), 1)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_path_follows_the_environment_rules() {
        // Only the pure rules are checked; the environment is not touched
        // (tests run in parallel threads).
        let p = default_path().unwrap();
        if std::env::var_os(ENV).is_none() {
            assert!(p.ends_with("bigtransfer/known_hosts"), "{}", p.display());
        }
        assert_eq!(host_key("10.0.0.1", 5), "10.0.0.1:5");
        assert_eq!(host_key("[FE80::1]", 5), "[fe80::1]:5");
        assert!(!valid_host_field("::1:5"));
        assert!(valid_host_field("[::1]:5"));
        assert!(!valid_host_field("host:99999"));
    }
}
