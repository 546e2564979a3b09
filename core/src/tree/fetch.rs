//! The wire of a tree download (`"bt": {"v": 2, "op": "tree-get"}`),
//! shared by the client's `client::tree_get` and the server's
//! `server::tree_get`: the request header, the tags the two sides add to
//! the tree session's frames ([`super::wire`]) and the download's fixed
//! block size. See `docs/PROTOCOL.md`, "Tree downloads".
//!
//! The exchange: the server answers the header with the version-2 magic,
//! then a manifest page ([`super::wire::PAGE`]); for each file of the page
//! the client wants it sends [`REQUEST`], gets the file's reference
//! (`G`, as a single-file get) or a [`super::wire::VERDICT`] saying why
//! not, then the blocks ([`crate::getwire`] `W`/`D` frames) until it asks
//! for none; [`NEXT`] asks for the next page, [`super::wire::END`] ends.
//!
//! Not for what the frames mean to either side, nor for file I/O.

use crate::json::{self, Value};
use crate::{Error, ErrorKind, Result};

/// Client: send file `index:u32` of the page; `all:u8` 1 = and every
/// block at once (nothing is held here), 0 = the reference only.
pub const REQUEST: u8 = b'R';
/// Client: the next manifest page, please.
pub const NEXT: u8 = b'N';
/// Block size of every file of a tree download: a data frame stays well
/// within [`super::wire::MAX_FRAME`].
pub const BLOCK: u64 = 1 << 20;
/// Largest file a tree download serves: 128 GiB, [`crate::v2::MAX_BLOCKS`]
/// blocks of [`BLOCK`]. A protocol limit, not a choice of this side: every
/// reference decoder (clients already out there included) refuses more
/// than `MAX_BLOCKS` block CRC-32s (the bound on what one reference may
/// make a peer allocate), and a block must fit one tree frame
/// ([`super::wire::MAX_FRAME`], 2 MiB with its head), so neither the count
/// nor the block can grow without a new version of the wire. A larger
/// file is fetched alone, by a single-file get by path whose blocks grow
/// with the file, inside the same tree download (negotiated: [`ALONE_KEY`],
/// [`super::wire::ALONE`]).
pub const MAX_FILE: u64 = crate::v2::MAX_BLOCKS * BLOCK;

/// The key in the tree-get header's `"bt"` object by which a client says
/// it fetches a file over the server's limit by itself (`"alone": 1`):
/// such a file then gets a [`super::wire::ALONE`] verdict instead of the
/// refusal an older client gets.
pub const ALONE_KEY: &str = "alone";

/// The header asking for the tree (or file) `remote` of the server's
/// storage directory; it offers to fetch files over the server's limit
/// alone ([`ALONE_KEY`]).
pub fn encode_header(remote: &str) -> Result<Vec<u8>> {
    let json = format!(
        "{{\"filename\": {}, \"filesize\": 0, \"crc32\": 0, \"bt\": {{\"v\": 2, \"op\": \"tree-get\", \"block\": {BLOCK}, \"{ALONE_KEY}\": 1}}}}",
        json_string(remote)
    );
    if json.len() > crate::proto::MAX_HEADER_LEN {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the remote name is too long",
        ));
    }
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    Ok(out)
}

/// The remote a header asks for, when it opens a tree download.
pub fn requested_remote(json_bytes: &[u8]) -> Option<String> {
    let v = json::parse(json_bytes).ok()?;
    match v.get("bt").and_then(|bt| bt.get("op")) {
        Some(Value::String(op)) if op == "tree-get" => {}
        _ => return None,
    }
    match v.get("filename") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => Some(String::new()),
    }
}

/// Whether a tree-get header offers to fetch big files alone
/// (`"alone": 1`); an older client's does not.
pub fn offers_alone(json_bytes: &[u8]) -> bool {
    let Ok(v) = json::parse(json_bytes) else {
        return false;
    };
    matches!(
        v.get("bt").and_then(|bt| bt.get(ALONE_KEY)),
        Some(Value::Number(n)) if n.as_u64() == Some(1)
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
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

/// A [`REQUEST`] payload.
pub fn encode_request(index: u32, all: bool) -> [u8; 5] {
    let mut p = [0u8; 5];
    p[..4].copy_from_slice(&index.to_be_bytes());
    p[4] = u8::from(all);
    p
}

/// Reads a [`REQUEST`] payload: index and whether every block is wanted.
pub fn decode_request(p: &[u8]) -> Result<(u32, bool)> {
    match p {
        [a, b, c, d, all @ (0 | 1)] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), *all == 1)),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            "a malformed tree file request",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_request_round_trip() {
        let h = encode_header("photos/\"x\" é").unwrap();
        assert_eq!(requested_remote(&h[4..]).as_deref(), Some("photos/\"x\" é"));
        let tree = crate::client::tree::tree_header();
        assert_eq!(requested_remote(&tree[4..]), None);
        assert!(offers_alone(&h[4..]));
        let old = br#"{"filename": "t", "filesize": 0, "crc32": 0, "bt": {"v": 2, "op": "tree-get", "block": 1048576}}"#;
        assert!(!offers_alone(old));
        assert_eq!(decode_request(&encode_request(7, true)).unwrap(), (7, true));
        assert!(decode_request(&[0, 0, 0, 1, 2]).is_err());
        assert!(decode_request(&[0, 0, 1]).is_err());
    }

    #[test]
    fn the_largest_tree_file_is_the_largest_reference_of_1_mib_blocks() {
        use crate::getwire::Reference;
        assert_eq!(MAX_FILE, 128 << 30);
        let reference = |size: u64| Reference {
            size,
            block: BLOCK,
            mtime_ns: 0,
            crcs: vec![0; crate::v2::block_count(size, BLOCK) as usize],
        };
        let at_limit = Reference::decode(&reference(MAX_FILE).encode());
        assert_eq!(
            at_limit.map(|r| r.count()).ok(),
            Some(crate::v2::MAX_BLOCKS)
        );
        let over = Reference::decode(&reference(MAX_FILE + 1).encode());
        assert!(
            over.is_err(),
            "a reference of MAX_BLOCKS + 1 blocks decoded"
        );
        // The next block size up would not fit a tree frame with its head
        // (offset:u64, length:u32, tag): the block cannot grow instead.
        let head = 8 + 4 + 1;
        assert!(BLOCK as usize + head <= super::super::wire::MAX_FRAME);
        assert!(2 * BLOCK as usize + head > super::super::wire::MAX_FRAME);
    }
}
