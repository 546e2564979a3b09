//! Per-directory records of files' whole CRC-32: one small file per
//! directory holding, for each file name, the file's stamp (size, mtime,
//! inode, ctime) and its CRC-32, so checking a re-sent tree costs one
//! record read per directory instead of one file read per file. Used by
//! the client's checksum cache (`cache`) and the server's tree records
//! (`server::tree_sums`).
//!
//! An entry is believed only while the file's stamp is exactly the one
//! recorded: every write to a file (even one whose mtime is then set
//! back) moves its ctime, which no user call can restore, and a file
//! replaced by another has another inode. Decoding checks everything and
//! treats any damage (a torn write, a hostile or foreign file) as an empty
//! record: names are only ever compared, never used to open anything, so
//! a record cannot point outside the directory it describes. Not for block
//! checksums (`cache::Sums`) nor for anything sent on the wire.

use std::collections::HashMap;

use crate::cache::SourceStamp;

const MAGIC: &[u8; 8] = b"BTDIRS01";
/// Bytes of an entry after its name: size, mtime s/ns, inode, ctime
/// s/ns (8 bytes each), CRC-32.
const FIXED: usize = 6 * 8 + 4;
/// Entries a record holds at most: a larger directory has its first
/// ones recorded and the rest read each time. It bounds the memory of the
/// record in use and what rewriting it costs (a flat directory of a
/// million files would otherwise rewrite a growing record every page).
pub const MAX_ENTRIES: usize = 50_000;
/// A record larger than this is not read (`MAX_ENTRIES` entries of the
/// longest names fit): it bounds what a damaged or hostile record costs.
pub const MAX_RECORD: u64 = 16 << 20;

/// The known CRC-32s of one directory's files, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirSums {
    entries: HashMap<String, (SourceStamp, u32)>,
    /// Changed since decoded: worth writing back.
    dirty: bool,
}

impl DirSums {
    /// The CRC-32 of `name` if its recorded stamp is exactly `stamp`.
    pub fn get(&self, name: &str, stamp: &SourceStamp) -> Option<u32> {
        match self.entries.get(name) {
            Some((st, crc)) if st == stamp => Some(*crc),
            _ => None,
        }
    }

    /// Records `crc` for `name` at `stamp` (marks the record changed
    /// unless it said exactly that already).
    pub fn put(&mut self, name: &str, stamp: SourceStamp, crc: u32) {
        if self.get(name, &stamp) == Some(crc) || !valid_name(name.as_bytes()) {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(name) {
            return;
        }
        self.entries.insert(name.to_owned(), (stamp, crc));
        self.dirty = true;
    }

    /// Changed since it was decoded.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Written back: not changed since.
    pub fn saved(&mut self) {
        self.dirty = false;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The record's bytes; `key` (the directory's identity: its path)
    /// is written in, so a record read under another key is refused.
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&(key.len() as u32).to_be_bytes());
        v.extend_from_slice(key);
        let mut names: Vec<&String> = self.entries.keys().collect();
        names.sort_unstable();
        for name in names {
            let (st, crc) = self.entries[name];
            v.extend_from_slice(&(name.len() as u16).to_be_bytes());
            v.extend_from_slice(name.as_bytes());
            for x in [st.size, st.mtime as u64, st.mtime_nsec as u64, st.ino] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            for x in [st.ctime as u64, st.ctime_nsec as u64] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            v.extend_from_slice(&crc.to_be_bytes());
        }
        v
    }

    /// The record in `bytes` if it is whole, well formed and made for
    /// `key`; an empty one otherwise (everything is then read afresh).
    pub fn decode(bytes: &[u8], key: &[u8]) -> DirSums {
        decode_entries(bytes, key)
            .map(|entries| DirSums {
                entries,
                dirty: false,
            })
            .unwrap_or_default()
    }
}

fn decode_entries(bytes: &[u8], key: &[u8]) -> Option<HashMap<String, (SourceStamp, u32)>> {
    let mut r = Reader(bytes);
    if r.take(8)? != MAGIC {
        return None;
    }
    let klen = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
    if r.take(klen)? != key {
        return None;
    }
    let mut entries = HashMap::new();
    while !r.0.is_empty() {
        let nlen = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
        let name = r.take(nlen)?;
        if !valid_name(name) {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?.to_owned();
        let f = r.take(FIXED)?;
        let n = |i: usize| u64::from_be_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let stamp = SourceStamp {
            size: n(0),
            mtime: n(1) as i64,
            mtime_nsec: n(2) as i64,
            ino: n(3),
            ctime: n(4) as i64,
            ctime_nsec: n(5) as i64,
        };
        let crc = u32::from_be_bytes(f[48..52].try_into().expect("4 bytes"));
        entries.insert(name, (stamp, crc));
        if entries.len() > MAX_ENTRIES {
            return None;
        }
    }
    Some(entries)
}

/// Whether a CRC-32 just read from a file at `stamp` may be recorded:
/// its ctime is over a second old. The kernel's timestamps advance in
/// clock ticks, so a write in the same tick as the `stat` taken before
/// reading could leave the ctime unchanged; a settled file has no such
/// write pending unseen (git's "racily clean" rule).
pub fn settled(stamp: &SourceStamp) -> bool {
    let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    stamp.ctime.saturating_add(1) < now.as_secs() as i64
}

/// A file name as a directory holds it: not empty, no `/` nor NUL, not
/// `.` or `..`, at most 255 bytes.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64, ctime_nsec: i64) -> SourceStamp {
        SourceStamp {
            size,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            ino: 42,
            ctime: 1_700_000_001,
            ctime_nsec,
        }
    }

    #[test]
    fn round_trips_and_believes_only_the_exact_stamp() {
        let mut d = DirSums::default();
        d.put("a", stamp(4096, 7), 0xdead_beef);
        d.put("b.bin", stamp(1 << 30, 9), 1);
        assert!(d.is_dirty());
        let back = DirSums::decode(&d.encode(b"dir/x"), b"dir/x");
        assert!(!back.is_dirty());
        assert_eq!(back.len(), 2);
        assert_eq!(back.get("a", &stamp(4096, 7)), Some(0xdead_beef));
        assert_eq!(back.get("b.bin", &stamp(1 << 30, 9)), Some(1));
        // A rewrite moves the ctime; a changed size; another name.
        assert_eq!(back.get("a", &stamp(4096, 8)), None);
        assert_eq!(back.get("a", &stamp(4097, 7)), None);
        assert_eq!(back.get("c", &stamp(4096, 7)), None);
        let mut other_inode = stamp(4096, 7);
        other_inode.ino = 43;
        assert_eq!(back.get("a", &other_inode), None);
    }

    #[test]
    fn a_record_of_another_directory_or_damaged_is_empty() {
        let mut d = DirSums::default();
        d.put("a", stamp(1, 1), 2);
        let bytes = d.encode(b"one");
        assert!(DirSums::decode(&bytes, b"two").is_empty());
        for cut in 0..bytes.len() {
            let got = DirSums::decode(&bytes[..cut], b"one");
            assert!(got.is_empty(), "a record cut at {cut} was believed");
        }
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(DirSums::decode(&bad, b"one").is_empty());
    }

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for name in ["", ".", "..", "x/y", "../../etc/passwd", "nul\0"] {
            let mut d = DirSums::default();
            d.put(name, stamp(1, 1), 2);
            assert!(d.is_empty(), "{name:?} was recorded");
            // Written by hand into a record: the whole record is refused.
            let mut bytes = DirSums::default().encode(b"k");
            bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&[0u8; FIXED]);
            assert!(DirSums::decode(&bytes, b"k").is_empty(), "{name:?}");
        }
    }

    #[test]
    fn an_unchanged_put_does_not_dirty_the_record() {
        let mut d = DirSums::default();
        d.put("a", stamp(1, 1), 2);
        let mut back = DirSums::decode(&d.encode(b"k"), b"k");
        back.put("a", stamp(1, 1), 2);
        assert!(!back.is_dirty());
        back.put("a", stamp(1, 1), 3);
        assert!(back.is_dirty());
    }

    #[test]
    fn a_record_stops_growing_at_its_bound() {
        let mut d = DirSums::default();
        for i in 0..MAX_ENTRIES + 10 {
            d.put(&format!("f{i}"), stamp(1, 1), 2);
        }
        assert_eq!(d.len(), MAX_ENTRIES);
        // A recorded name is still updated.
        d.put("f0", stamp(1, 2), 3);
        assert_eq!(d.get("f0", &stamp(1, 2)), Some(3));
        let longest = "x".repeat(255);
        let worst = MAX_ENTRIES as u64 * (2 + longest.len() + FIXED) as u64 + 8 + 4 + 4096;
        assert!(worst <= MAX_RECORD, "{worst}");
        let bytes = d.encode(b"k");
        assert_eq!(DirSums::decode(&bytes, b"k").len(), MAX_ENTRIES);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = DirSums::decode(&b, b"k");
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&[0, 0, 0, 1, b'k']);
            with_magic.extend_from_slice(&b);
            let _ = DirSums::decode(&with_magic, b"k");
        }
    }
}
