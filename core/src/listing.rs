//! The `list` request and its paged reply, on the wire: what a server
//! holds (finished files with their size, mtime and, when recorded, whole
//! CRC-32; held partial uploads with their progress).
//!
//! The request is a version-2 header with `"bt"."op": "list"` (an absent
//! `op` is an upload), the empty file name (so a server that knows no `op`
//! refuses it instead of storing anything) and the name to list in
//! `"bt"."name"` (absent: everything). The reply is a series of list-page
//! frames (tag `L`), at most [`PAGE_ENTRIES`] entries each, the last one
//! flagged: a huge directory never becomes one giant message.
//!
//! A request with `"bt"."dirs": true` (a server that does not know it
//! ignores it) is also sent directory entries and the summary of the tree
//! uploads in progress, kinds an older client would refuse: a server
//! sends them to no one who did not ask.
//!
//! Not for reading the directory (the server's, `server::list`) nor the
//! connection (the client's, `client::list`).

use crate::json::{self, Field, Value};
use crate::v2::Offer;
use crate::{Error, ErrorKind, Result};

/// The `"bt"."op"` of a listing.
pub const OP_LIST: &str = "list";

/// Most entries in one list-page frame (with 255-byte names, about 76 KiB).
pub const PAGE_ENTRIES: usize = 256;

/// What a listed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A finished, stored file.
    File,
    /// A partial upload the server holds for a resume.
    Partial,
    /// A directory of the storage (a stored tree); only to a request that
    /// asked for them (`"bt"."dirs"`).
    Dir,
    /// The files of tree uploads in progress, summed up: in one unnamed
    /// entry, or (to a request with [`TREE_NAMES_KEY`]) one entry per tree
    /// named by its root, and one unnamed for parts whose tree the server
    /// did not note; only to a request that asked for directories.
    TreeParts,
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// File or partial upload.
    pub kind: EntryKind,
    /// The name as stored: raw bytes (a file put in the storage directory
    /// by other means may have any name; escape it before printing).
    pub name: Vec<u8>,
    /// Size in bytes (of a partial upload: of the whole file).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch (of a partial
    /// upload: of its last checkpoint).
    pub mtime: i64,
    /// The whole file's CRC-32 when the server recorded it (files it
    /// stored itself and that nobody changed since); `None`: unknown.
    pub crc32: Option<u32>,
    /// Of a partial upload: bytes held at the start of the file (at least
    /// these; verified blocks after a hole are not counted). Of a file, a
    /// directory or tree parts: their size.
    pub held: u64,
    /// Of a directory: the number of regular files under it, recursively,
    /// when the server counted them (then `size` is their total bytes;
    /// `None`: not counted, `size` 0). Of tree parts: how many files are
    /// in progress (`size`: the bytes held). Of anything else: `None`.
    pub files: Option<u64>,
}

/// The op a version-2 header asks for (`"bt"."op"`), `None` for an upload.
/// An `op` that is not a short string is a malformed request.
pub fn requested_op(json_bytes: &[u8]) -> Result<Option<String>> {
    let value = json::parse(json_bytes)?;
    match value.get("bt").and_then(|bt| bt.get("op")) {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= 32 => Ok(Some(s.clone())),
        Some(_) => Err(protocol("\"bt\".\"op\" must be a short string")),
    }
}

/// The name a list request is about (`"bt"."name"`), `None`: everything.
pub fn requested_name(json_bytes: &[u8]) -> Result<Option<String>> {
    let value = json::parse(json_bytes)?;
    match value.get("bt").and_then(|bt| bt.get("name")) {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= crate::name::MAX_NAME_BYTES => Ok(Some(s.clone())),
        Some(_) => Err(protocol(
            "\"bt\".\"name\" must be a string of at most 255 bytes",
        )),
    }
}

/// Whether a list request asks for directory entries (`"bt"."dirs":
/// true`); anything else (absent, not `true`) is no.
pub fn requested_dirs(json_bytes: &[u8]) -> bool {
    let Ok(value) = json::parse(json_bytes) else {
        return false;
    };
    matches!(
        value.get("bt").and_then(|bt| bt.get("dirs")),
        Some(Value::Bool(true))
    )
}

/// The key in a list request's `"bt"` by which a client that asks for
/// directories also asks for the tree uploads in progress one entry per
/// tree, named by the tree's root (`"tree_names": true`); without it the
/// server sums them all up in one unnamed entry, as for older clients.
pub const TREE_NAMES_KEY: &str = "tree_names";

/// Whether a list request asks for tree uploads by name
/// ([`TREE_NAMES_KEY`]).
pub fn requested_tree_names(json_bytes: &[u8]) -> bool {
    let Ok(value) = json::parse(json_bytes) else {
        return false;
    };
    matches!(
        value.get("bt").and_then(|bt| bt.get(TREE_NAMES_KEY)),
        Some(Value::Bool(true))
    )
}

/// The header frame of a list request (see the module comment).
pub fn encode_list_request(name: Option<&str>, offer: Offer) -> Vec<u8> {
    encode_list_request_with(name, false, offer)
}

/// The header frame of a list request that, with `dirs`, also asks for
/// directory entries and the tree uploads in progress, by tree
/// ([`TREE_NAMES_KEY`]).
pub fn encode_list_request_with(name: Option<&str>, dirs: bool, offer: Offer) -> Vec<u8> {
    let mut bt = vec![
        ("v", Field::Int(offer.version)),
        ("block", Field::Int(offer.block_size)),
        ("rev", Field::Int(offer.rev)),
        ("op", Field::Str(OP_LIST)),
    ];
    if let Some(n) = name {
        bt.push(("name", Field::Str(n)));
    }
    if dirs {
        bt.push(("dirs", Field::Bool(true)));
        bt.push((TREE_NAMES_KEY, Field::Bool(true)));
    }
    let json = json::write_object(&[
        ("filename", Field::Str("")),
        ("filesize", Field::Int(0)),
        ("crc32", Field::Null),
        ("bt", Field::Object(bt)),
    ]);
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    frame
}

/// A list page's payload: a flag byte (1: the last page), a u32 count,
/// then per entry: kind (0 file, 1 partial, 2 directory, 3 tree parts),
/// u16 name length, the name, u64 size, i64 mtime, a flag byte (1: CRC-32
/// known), u32 CRC-32, u64 held. A directory's flag byte says whether it
/// was counted, its CRC-32 is 0 and its `held` the number of files; tree
/// parts have the flag 1, CRC-32 0 and `held` the number of files.
pub fn page_payload(entries: &[ListEntry], last: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + entries.len() * 64);
    p.push(u8::from(last));
    p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        p.push(kind_byte(e.kind));
        let name = &e.name[..e.name.len().min(u16::MAX as usize)];
        p.extend_from_slice(&(name.len() as u16).to_be_bytes());
        p.extend_from_slice(name);
        p.extend_from_slice(&e.size.to_be_bytes());
        p.extend_from_slice(&e.mtime.to_be_bytes());
        let (known, crc, held) = match e.kind {
            EntryKind::File | EntryKind::Partial => (e.crc32.is_some(), e.crc32, e.held),
            EntryKind::Dir | EntryKind::TreeParts => {
                (e.files.is_some(), None, e.files.unwrap_or(0))
            }
        };
        p.push(u8::from(known));
        p.extend_from_slice(&crc.unwrap_or(0).to_be_bytes());
        p.extend_from_slice(&held.to_be_bytes());
    }
    p
}

fn kind_byte(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 0,
        EntryKind::Partial => 1,
        EntryKind::Dir => 2,
        EntryKind::TreeParts => 3,
    }
}

/// Decodes a list page: its entries and whether it is the last.
pub fn parse_page(p: &[u8]) -> Result<(Vec<ListEntry>, bool)> {
    let short = || protocol("list page shorter than its entries");
    let (&flag, rest) = p.split_first().ok_or_else(short)?;
    let last = match flag {
        0 => false,
        1 => true,
        _ => return Err(protocol("malformed list page")),
    };
    let n = u32::from_be_bytes(take::<4>(rest, 0).ok_or_else(short)?) as usize;
    if n > PAGE_ENTRIES {
        return Err(protocol("list page with too many entries"));
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (e, next) = entry_at(rest, at).ok_or_else(short)?;
        out.push(e);
        at = next;
    }
    if at != rest.len() {
        return Err(protocol("list page longer than its entries"));
    }
    Ok((out, last))
}

fn take<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn entry_at(b: &[u8], at: usize) -> Option<(ListEntry, usize)> {
    let kind = match b.get(at)? {
        0 => EntryKind::File,
        1 => EntryKind::Partial,
        2 => EntryKind::Dir,
        3 => EntryKind::TreeParts,
        _ => return None,
    };
    let len = u16::from_be_bytes(take::<2>(b, at + 1)?) as usize;
    let name = b.get(at + 3..at + 3 + len)?.to_vec();
    let at = at + 3 + len;
    let size = u64::from_be_bytes(take::<8>(b, at)?);
    let mtime = i64::from_be_bytes(take::<8>(b, at + 8)?);
    let known = *b.get(at + 16)?;
    let crc = u32::from_be_bytes(take::<4>(b, at + 17)?);
    let held = u64::from_be_bytes(take::<8>(b, at + 21)?);
    // Strict: an unknown CRC-32 (or count) is sent as zeros, so each page
    // has one encoding (what the fuzzer's round trip checks).
    let (crc32, held, files) = match (kind, known, crc, held) {
        (EntryKind::File | EntryKind::Partial, 0, 0, held) => (None, held, None),
        (EntryKind::File | EntryKind::Partial, 1, crc, held) => (Some(crc), held, None),
        (EntryKind::Dir, 0, 0, 0) => (None, size, None),
        (EntryKind::Dir | EntryKind::TreeParts, 1, 0, n) => (None, size, Some(n)),
        _ => return None,
    };
    let e = ListEntry {
        kind,
        name,
        size,
        mtime,
        crc32,
        held,
        files,
    };
    Some((e, at + 29))
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, name: &[u8], crc32: Option<u32>) -> ListEntry {
        ListEntry {
            kind,
            name: name.to_vec(),
            size: 1 << 40,
            mtime: -5,
            crc32,
            held: 77,
            files: None,
        }
    }

    fn dir(name: &[u8], files: Option<u64>) -> ListEntry {
        ListEntry {
            kind: EntryKind::Dir,
            name: name.to_vec(),
            size: files.map_or(0, |n| n * 10),
            mtime: 9,
            crc32: None,
            held: files.map_or(0, |n| n * 10),
            files,
        }
    }

    #[test]
    fn pages_round_trip_and_damage_is_refused() {
        let es = vec![
            entry(EntryKind::File, b"a b\n\x1b[31m", Some(0xDEAD_BEEF)),
            entry(EntryKind::Partial, "é".as_bytes(), None),
            entry(EntryKind::File, b"\xff\xfe", None),
            dir(b"t", Some(3)),
            dir(b"d\n\x1b", None),
            ListEntry {
                kind: EntryKind::TreeParts,
                name: Vec::new(),
                ..dir(b"", Some(2))
            },
        ];
        let p = page_payload(&es, true);
        assert_eq!(parse_page(&p).unwrap(), (es.clone(), true));
        assert_eq!(
            parse_page(&page_payload(&[], false)).unwrap(),
            (vec![], false)
        );
        for cut in 0..p.len() {
            assert!(parse_page(&p[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = p.clone();
        longer.push(0);
        assert!(parse_page(&longer).is_err());
        let mut bad = p.clone();
        bad[0] = 7;
        assert!(parse_page(&bad).is_err());
        // An unknown CRC-32 with bytes in its place has a second encoding:
        // refused (found by the fuzzer's round trip).
        let one = page_payload(&[entry(EntryKind::File, b"x", None)], true);
        let crc_at = 1 + 4 + 1 + 2 + 1 + 8 + 8 + 1;
        let mut two = one.clone();
        two[crc_at] = 0xff;
        assert!(parse_page(&one).is_ok());
        assert!(parse_page(&two).is_err());
        // Unknown kinds are refused (what an old client does with kind 2).
        let mut odd = page_payload(&[dir(b"t", None)], true);
        assert_eq!(odd[5], 2);
        odd[5] = 4;
        assert!(parse_page(&odd).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_page_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok((entries, last)) = parse_page(&bytes) {
                // What parses re-encodes to the same bytes.
                proptest::prop_assert_eq!(page_payload(&entries, last), bytes);
            }
        }
    }

    #[test]
    fn the_request_names_its_op_and_no_file() {
        let offer = Offer {
            version: 2,
            block_size: 1 << 20,
            rev: crate::v2::REV_KEEP,
            source: None,
        };
        let f = encode_list_request(Some("x.bin"), offer);
        let json = &f[4..];
        assert_eq!(requested_op(json).unwrap().as_deref(), Some(OP_LIST));
        assert_eq!(requested_name(json).unwrap().as_deref(), Some("x.bin"));
        let (h, o) = crate::v2::parse_header(json).unwrap();
        assert_eq!((h.filename.as_str(), h.filesize), ("", 0));
        assert_eq!(o.map(|o| o.rev), Some(crate::v2::REV_KEEP));
        let all = encode_list_request(None, offer);
        assert_eq!(requested_name(&all[4..]).unwrap(), None);
        assert_eq!(requested_op(br#"{"bt": {"v": 2}}"#).unwrap(), None);
        assert!(requested_op(br#"{"bt": {"op": 3}}"#).is_err());
        assert!(!requested_dirs(&all[4..]));
        let dirs = encode_list_request_with(None, true, offer);
        assert!(requested_dirs(&dirs[4..]));
        assert_eq!(requested_op(&dirs[4..]).unwrap().as_deref(), Some(OP_LIST));
        assert!(!requested_dirs(br#"{"bt": {"dirs": 1}}"#));
    }
}
