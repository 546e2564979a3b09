//! The manifest of a tree: its entries, their compact binary encoding in
//! bounded pages, and a streaming validator for what a peer sends.
//!
//! A sender walks its tree in sorted depth-first order (component-wise, see
//! [`RelPath`]) and sends the entries a page at a time; the receiver decodes
//! each page ([`decode_page`]) and passes every entry through one
//! [`ManifestValidator`] for the session, whose memory is O(depth). Because
//! the order is fixed, duplicates and a name used both as a file and as a
//! directory are caught by looking at the previous entry and the open
//! directories only, never by holding the whole manifest.
//!
//! It is not the transport (the caller frames pages on the wire) and it
//! touches no file system.
//!
//! A page, all integers big-endian:
//!
//! ```text
//! page    = "BTMF" version:u8(=1) reserved:u8(=0) count:u32 body_len:u32 entry*count
//! entry   = kind:u8 path_len:u16 path:UTF-8 (a RelPath) then, by kind:
//!   1 file    size:u64 mode:u32 mtime_ns:i64 flags:u8 (bit 0: sparse; others 0)
//!   2 dir     mode:u32 mtime_ns:i64
//!   3 symlink target_len:u16 target:UTF-8
//! ```
//!
//! `body_len` is the length of the entries, so a page is self-delimiting
//! and its end is checked; modes carry only the bits of [`MODE_BITS`].

use super::path::{fold, shown, RelPath};
use crate::{Error, ErrorKind, Result};
use std::collections::HashMap;

/// Bytes that start every page, so a page is not mistaken for other data.
pub const PAGE_MAGIC: [u8; 4] = *b"BTMF";
/// The encoding version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Most entries in one page: the receiver's per-page work is bounded.
pub const MAX_PAGE_ENTRIES: usize = 4096;
/// Most bytes in one page, header included (1 MiB): what a receiver must
/// buffer per page. An entry is at most about 8 KiB, so a full page of
/// 4096 short entries and a page of long ones both fit.
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// Longest symlink target in bytes (Linux `PATH_MAX` less the NUL).
pub const MAX_TARGET_BYTES: usize = 4095;
/// The mode bits a manifest may carry: permissions, setuid, setgid, sticky.
/// File type bits belong in [`EntryKind`].
pub const MODE_BITS: u32 = 0o7777;
/// The bits the validator strips: setuid, setgid and sticky. A received
/// file must never become a set-id program of the server's user.
pub const SPECIAL_BITS: u32 = 0o7000;
/// Default cap on entries in one session: a tree of 10 million entries is
/// plausible, one of more is more likely hostile (each entry costs the
/// receiver an inode). The validator's memory does not depend on it.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;

const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 4;
const TAG_FILE: u8 = 1;
const TAG_DIR: u8 = 2;
const TAG_SYMLINK: u8 = 3;
const FILE_FLAG_SPARSE: u8 = 1;

/// What an entry is, with what is kept of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// Mode bits (within [`MODE_BITS`]).
        mode: u32,
        /// Modification time, nanoseconds since the Unix epoch.
        mtime_ns: i64,
        /// The sender found holes in it (its data comes as segments).
        sparse: bool,
    },
    /// A directory (its entries follow it).
    Dir {
        /// Mode bits (within [`MODE_BITS`]).
        mode: u32,
        /// Modification time, nanoseconds since the Unix epoch.
        mtime_ns: i64,
    },
    /// A symbolic link, stored as a link and never followed.
    Symlink {
        /// Where it points, relative to its own directory.
        target: String,
    },
}

impl EntryKind {
    fn noun(&self) -> &'static str {
        match self {
            EntryKind::File { .. } => "file",
            EntryKind::Dir { .. } => "directory",
            EntryKind::Symlink { .. } => "symlink",
        }
    }
}

/// One entry of a manifest: a path in the tree and what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where, relative to the destination directory.
    pub path: RelPath,
    /// What.
    pub kind: EntryKind,
}

/// Builds one page of encoded entries, refusing entries that would make it
/// exceed [`MAX_PAGE_ENTRIES`] or [`MAX_PAGE_BYTES`].
#[derive(Debug, Clone)]
pub struct PageBuilder {
    buf: Vec<u8>,
    count: usize,
}

impl Default for PageBuilder {
    fn default() -> PageBuilder {
        PageBuilder::new()
    }
}

impl PageBuilder {
    /// An empty page.
    pub fn new() -> PageBuilder {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&PAGE_MAGIC);
        buf.extend_from_slice(&[FORMAT_VERSION, 0]);
        buf.extend_from_slice(&[0; 8]); // count and body length, set by finish
        PageBuilder { buf, count: 0 }
    }

    /// Adds `entry` if it fits; `false` (and nothing added) if the page is
    /// full, so the caller sends this page and starts the next with it.
    pub fn try_push(&mut self, entry: &Entry) -> bool {
        let before = self.buf.len();
        encode_entry(&mut self.buf, entry);
        if self.count >= MAX_PAGE_ENTRIES || self.buf.len() > MAX_PAGE_BYTES {
            self.buf.truncate(before);
            return false;
        }
        self.count += 1;
        true
    }

    /// Entries in the page so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no entry was added yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded page.
    pub fn finish(mut self) -> Vec<u8> {
        let body = (self.buf.len() - HEADER_LEN) as u32;
        self.buf[6..10].copy_from_slice(&(self.count as u32).to_be_bytes());
        self.buf[10..14].copy_from_slice(&body.to_be_bytes());
        self.buf
    }
}

/// Encodes `entries` as one page, or refuses ([`ErrorKind::InvalidInput`])
/// if they do not fit in one.
pub fn encode_page(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut page = PageBuilder::new();
    for (i, e) in entries.iter().enumerate() {
        if !page.try_push(e) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "entry {} ({}) does not fit in one manifest page",
                    i + 1,
                    e.path
                ),
            ));
        }
    }
    Ok(page.finish())
}

fn encode_entry(buf: &mut Vec<u8>, entry: &Entry) {
    let path = entry.path.as_str().as_bytes();
    let tag = match entry.kind {
        EntryKind::File { .. } => TAG_FILE,
        EntryKind::Dir { .. } => TAG_DIR,
        EntryKind::Symlink { .. } => TAG_SYMLINK,
    };
    buf.push(tag);
    // RelPath bounds the path to MAX_PATH_BYTES, well within u16.
    buf.extend_from_slice(&(path.len() as u16).to_be_bytes());
    buf.extend_from_slice(path);
    match &entry.kind {
        EntryKind::File {
            size,
            mode,
            mtime_ns,
            sparse,
        } => {
            buf.extend_from_slice(&size.to_be_bytes());
            buf.extend_from_slice(&mode.to_be_bytes());
            buf.extend_from_slice(&mtime_ns.to_be_bytes());
            buf.push(if *sparse { FILE_FLAG_SPARSE } else { 0 });
        }
        EntryKind::Dir { mode, mtime_ns } => {
            buf.extend_from_slice(&mode.to_be_bytes());
            buf.extend_from_slice(&mtime_ns.to_be_bytes());
        }
        EntryKind::Symlink { target } => {
            // Over-long targets are written with a length that the decoder
            // refuses; the walker never produces them.
            let len = u16::try_from(target.len()).unwrap_or(u16::MAX);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&target.as_bytes()[..usize::from(len)]);
        }
    }
}

/// Decodes one page, refusing anything malformed: a wrong magic or version,
/// a non-zero reserved byte, more than [`MAX_PAGE_ENTRIES`] entries or
/// [`MAX_PAGE_BYTES`] bytes, a body length or entry count that disagrees
/// with the bytes, a truncated or unknown entry, a path [`RelPath`]
/// refuses, mode bits outside [`MODE_BITS`], unknown file flags, and a
/// symlink target that is empty, not UTF-8, too long or holds a control
/// character. Errors are [`ErrorKind::Protocol`] (a path refused is
/// [`ErrorKind::Refused`]) and say the entry and byte offset.
pub fn decode_page(bytes: &[u8]) -> Result<Vec<Entry>> {
    if bytes.len() > MAX_PAGE_BYTES {
        return Err(malformed(
            0,
            &format!(
                "the page is {} bytes, over the limit of {MAX_PAGE_BYTES}",
                bytes.len()
            ),
        ));
    }
    let mut r = Reader { bytes, pos: 0 };
    let count = read_header(&mut r)?;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let entry = decode_entry(&mut r).map_err(|e| in_entry(e, i + 1))?;
        entries.push(entry);
    }
    if r.pos != bytes.len() {
        let extra = bytes.len() - r.pos;
        return Err(malformed(
            r.pos,
            &format!("{extra} bytes follow the last of {count} entries"),
        ));
    }
    Ok(entries)
}

fn read_header(r: &mut Reader<'_>) -> Result<usize> {
    if r.take(4, "the page magic")? != PAGE_MAGIC {
        return Err(malformed(
            0,
            "it does not start with the manifest magic \"BTMF\"",
        ));
    }
    let version = r.u8("the version")?;
    if version != FORMAT_VERSION {
        return Err(malformed(
            4,
            &format!("version {version}, this side reads {FORMAT_VERSION}"),
        ));
    }
    if r.u8("the reserved byte")? != 0 {
        return Err(malformed(5, "the reserved byte is not 0"));
    }
    let count = r.u32("the entry count")? as usize;
    if count > MAX_PAGE_ENTRIES {
        return Err(malformed(
            6,
            &format!("{count} entries, over the limit of {MAX_PAGE_ENTRIES}"),
        ));
    }
    let body = r.u32("the body length")? as usize;
    if body != r.bytes.len() - HEADER_LEN {
        return Err(malformed(
            10,
            &format!(
                "the header says {body} bytes of entries, the page has {}",
                r.bytes.len() - HEADER_LEN
            ),
        ));
    }
    Ok(count)
}

fn decode_entry(r: &mut Reader<'_>) -> Result<Entry> {
    let tag_at = r.pos;
    let tag = r.u8("the entry kind")?;
    let path_len = usize::from(r.u16("the path length")?);
    let path_at = r.pos;
    let raw = r.take(path_len, "the path")?;
    let raw = std::str::from_utf8(raw).map_err(|_| malformed(path_at, "the path is not UTF-8"))?;
    let path = RelPath::from_wire(raw)?;
    let kind = match tag {
        TAG_FILE => decode_file(r)?,
        TAG_DIR => EntryKind::Dir {
            mode: read_mode(r)?,
            mtime_ns: r.u64("the mtime")? as i64,
        },
        TAG_SYMLINK => EntryKind::Symlink {
            target: read_target(r)?,
        },
        other => return Err(malformed(tag_at, &format!("unknown entry kind {other}"))),
    };
    Ok(Entry { path, kind })
}

fn decode_file(r: &mut Reader<'_>) -> Result<EntryKind> {
    let size = r.u64("the file size")?;
    let mode = read_mode(r)?;
    let mtime_ns = r.u64("the mtime")? as i64;
    let flags_at = r.pos;
    let flags = r.u8("the file flags")?;
    if flags & !FILE_FLAG_SPARSE != 0 {
        return Err(malformed(
            flags_at,
            &format!("unknown file flags {flags:#04x}"),
        ));
    }
    Ok(EntryKind::File {
        size,
        mode,
        mtime_ns,
        sparse: flags & FILE_FLAG_SPARSE != 0,
    })
}

fn read_mode(r: &mut Reader<'_>) -> Result<u32> {
    let at = r.pos;
    let mode = r.u32("the mode")?;
    if mode & !MODE_BITS != 0 {
        return Err(malformed(
            at,
            &format!("mode {mode:#o} has bits outside {MODE_BITS:#o}"),
        ));
    }
    Ok(mode)
}

fn read_target(r: &mut Reader<'_>) -> Result<String> {
    let len = usize::from(r.u16("the symlink target length")?);
    let at = r.pos;
    let raw = r.take(len, "the symlink target")?;
    let target =
        std::str::from_utf8(raw).map_err(|_| malformed(at, "the symlink target is not UTF-8"))?;
    let why = if target.is_empty() {
        "the symlink target is empty".to_owned()
    } else if len > MAX_TARGET_BYTES {
        format!("the symlink target is {len} bytes, over the limit of {MAX_TARGET_BYTES}")
    } else if let Some(c) = target.chars().find(|c| c.is_control()) {
        format!(
            "the symlink target contains the control character U+{:04X}",
            u32::from(c)
        )
    } else {
        return Ok(target.to_owned());
    };
    Err(malformed(at, &why))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            let why = format!("truncated: {what} needs {n} bytes, {left} are left");
            return Err(malformed(self.pos, &why));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
}

fn malformed(at: usize, why: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("malformed manifest page: {why} (at byte {at})"),
    )
}

fn in_entry(e: Error, n: usize) -> Error {
    Error::new(e.kind(), format!("{e} (entry {n} of the page)"))
}

/// Whether the symlink at `link` pointing to `target` stays inside the
/// tree it belongs to (the top-level directory of `link`), resolved
/// lexically; refused ([`ErrorKind::Refused`]) with the reason otherwise.
///
/// Refused: an empty or absolute target, one over [`MAX_TARGET_BYTES`] or
/// with a control character, a top-level symlink (it would point into the
/// storage directory beside the tree), more leading `..` than the link has
/// directories above it inside the tree, and `..` after a name (`a/../b`):
/// the name might be another symlink, and `..` after a symlink climbs from
/// wherever that symlink points, so only leading `..` can be checked
/// without the file system. With these rules every link, followed from
/// inside the tree, lands inside it, however links chain.
pub fn symlink_stays_inside(link: &RelPath, target: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::new(
            ErrorKind::Refused,
            format!("refused symlink \"{link}\" -> \"{}\": {why}", shown(target)),
        ))
    };
    if target.is_empty() {
        return refuse("the target is empty");
    }
    if target.starts_with('/') {
        return refuse("the target is absolute");
    }
    if target.len() > MAX_TARGET_BYTES {
        return refuse("the target is too long");
    }
    if target.chars().any(char::is_control) {
        return refuse("the target contains a control character");
    }
    if link.depth() < 2 {
        return refuse("a top-level entry cannot be a symlink");
    }
    let mut ups = 0;
    let mut seen_name = false;
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." if seen_name => {
                return refuse("\"..\" after a name (it could climb out through another symlink)")
            }
            ".." => ups += 1,
            _ => seen_name = true,
        }
    }
    let room = link.depth() - 2; // directories between the tree's top and the link
    if ups > room {
        return refuse("it points outside the tree");
    }
    Ok(())
}

/// Settings of a [`ManifestValidator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// Most entries accepted in the session.
    pub max_entries: u64,
    /// Also refuse two names of one directory that differ only in case
    /// (for a receiver on a case-insensitive file system). Costs memory
    /// per name of the open directories, unlike the rest of the validator.
    pub case_insensitive: bool,
}

impl Default for ValidatorConfig {
    fn default() -> ValidatorConfig {
        ValidatorConfig {
            max_entries: DEFAULT_MAX_ENTRIES,
            case_insensitive: false,
        }
    }
}

/// An entry the validator let through, possibly changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The entry to create (mode without [`SPECIAL_BITS`]).
    pub entry: Entry,
    /// The setuid/setgid/sticky bits that were stripped (0 if none).
    pub stripped: u32,
}

impl Accepted {
    /// A sentence for the log when bits were stripped, naming them.
    pub fn note(&self) -> Option<String> {
        if self.stripped == 0 {
            return None;
        }
        let names: Vec<&str> = [(0o4000, "setuid"), (0o2000, "setgid"), (0o1000, "sticky")]
            .iter()
            .filter(|(bit, _)| self.stripped & bit != 0)
            .map(|&(_, name)| name)
            .collect();
        Some(format!(
            "stripped the {} bit{} of \"{}\"",
            names.join(" and "),
            if names.len() > 1 { "s" } else { "" },
            self.entry.path
        ))
    }
}

struct OpenDir {
    path: RelPath,
    /// Case-folded names of the entries in it so far (case-insensitive mode).
    folded: HashMap<String, String>,
}

/// Checks the entries of one manifest session in order, in O(depth)
/// memory (plus the names of the open directories when checking case).
///
/// Each entry must come after the previous one in component-wise order
/// (so a duplicate or out-of-order entry is refused), must have as parent
/// a directory declared earlier (so `a` as a file then `a/x` is refused),
/// may not be a symlink leaving the tree ([`symlink_stays_inside`]), and
/// the session may not exceed [`ValidatorConfig::max_entries`].
pub struct ManifestValidator {
    config: ValidatorConfig,
    /// The directories containing the last entry, outermost first.
    open: Vec<OpenDir>,
    /// Top-level names (case-insensitive mode only).
    top: HashMap<String, String>,
    last: Option<(RelPath, &'static str)>,
    count: u64,
}

impl std::fmt::Debug for ManifestValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestValidator")
            .field("count", &self.count)
            .field("open_dirs", &self.open.len())
            .finish_non_exhaustive()
    }
}

impl ManifestValidator {
    /// A validator for a new session.
    pub fn new(config: ValidatorConfig) -> ManifestValidator {
        ManifestValidator {
            config,
            open: Vec::new(),
            top: HashMap::new(),
            last: None,
            count: 0,
        }
    }

    /// Checks the next entry; on success it is to be created as returned.
    pub fn check(&mut self, entry: Entry) -> Result<Accepted> {
        if self.count >= self.config.max_entries {
            let max = self.config.max_entries;
            return Err(refused(&format!(
                "the manifest has more than {max} entries"
            )));
        }
        self.check_order(&entry.path)?;
        // Close the directories the new entry is not inside.
        while let Some(dir) = self.open.last() {
            if dir.path.is_ancestor_or_self(&entry.path) {
                break;
            }
            self.open.pop();
        }
        self.check_parent(&entry)?;
        if self.config.case_insensitive {
            self.check_case(&entry.path)?;
        }
        if let EntryKind::Symlink { target } = &entry.kind {
            symlink_stays_inside(&entry.path, target)?;
        }
        let accepted = strip_special_bits(entry);
        self.count += 1;
        if let EntryKind::Dir { .. } = accepted.entry.kind {
            self.open.push(OpenDir {
                path: accepted.entry.path.clone(),
                folded: HashMap::new(),
            });
        }
        self.last = Some((accepted.entry.path.clone(), accepted.entry.kind.noun()));
        Ok(accepted)
    }

    /// Entries accepted so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Directories currently open (the depth of the last entry at most):
    /// the only state that grows, and it is bounded by the path depth.
    pub fn open_dirs(&self) -> usize {
        self.open.len()
    }

    fn check_order(&self, path: &RelPath) -> Result<()> {
        let Some((last, _)) = &self.last else {
            return Ok(());
        };
        match last.cmp(path) {
            std::cmp::Ordering::Less => Ok(()),
            std::cmp::Ordering::Equal => Err(refused(&format!("\"{path}\" appears twice"))),
            std::cmp::Ordering::Greater => Err(refused(&format!(
                "\"{path}\" comes after \"{last}\" (entries must be sorted depth-first, component by component)"
            ))),
        }
    }

    fn check_parent(&self, entry: &Entry) -> Result<()> {
        let Some(parent) = entry.path.parent_str() else {
            return Ok(()); // Top level: held by the destination itself.
        };
        if self.open.last().is_some_and(|d| d.path.as_str() == parent) {
            return Ok(());
        }
        let path = &entry.path;
        match &self.last {
            Some((last, noun)) if last.as_str() == parent => Err(refused(&format!(
                "\"{parent}\" is a {noun} in one entry and a directory in another (\"{path}\")"
            ))),
            _ => Err(refused(&format!(
                "the directory \"{parent}\" holding \"{path}\" was not declared before it"
            ))),
        }
    }

    fn check_case(&mut self, path: &RelPath) -> Result<()> {
        let names = match self.open.last_mut() {
            Some(dir) => &mut dir.folded,
            None => &mut self.top,
        };
        let name = path.file_name();
        if let Some(earlier) = names.insert(fold(name), name.to_owned()) {
            return Err(refused(&format!(
                "\"{path}\" and \"{earlier}\" in the same directory differ only in case (one file on a case-insensitive file system)"
            )));
        }
        Ok(())
    }
}

fn strip_special_bits(mut entry: Entry) -> Accepted {
    let mut stripped = 0;
    if let EntryKind::File { mode, .. } | EntryKind::Dir { mode, .. } = &mut entry.kind {
        stripped = *mode & SPECIAL_BITS;
        *mode &= !SPECIAL_BITS;
    }
    Accepted { entry, stripped }
}

fn refused(why: &str) -> Error {
    Error::new(ErrorKind::Refused, format!("refused manifest: {why}"))
}

#[cfg(test)]
mod tests;
