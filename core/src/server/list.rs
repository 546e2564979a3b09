//! The server's answer to a list request: walks the storage directory
//! (finished files, with the CRC-32 of their finished record when it
//! still holds) and then the state directory (partial uploads, from
//! their checkpoint records), one page at a time, so memory stays flat
//! whatever the directory holds. Nothing is read of the files themselves:
//! a file without a record shows its CRC-32 as unknown. A name that is a
//! directory (a tree sent there) lists the files under it, recursively, a
//! page at a time. From an object store: its objects and uploads in
//! progress, a page of the store's listing at a time
//! ([`crate::s3::S3Lister`]).
//!
//! To a client that asked for them (`"bt"."dirs"`), the directories of the
//! storage directory are entries too, each with the files and bytes under
//! it when a bounded count finds them all, and the parts of tree uploads
//! in progress are summed up in one entry (they are named by a digest:
//! their names are not kept anywhere).
//!
//! Not for the wire format (see [`crate::listing`]) nor for when pages are
//! asked for (the machine's).

use std::fs::{self, ReadDir};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::conn::Shell;
use super::tree::{open_dir, PARTS_DIR};
use crate::listing::{EntryKind, ListEntry, PAGE_ENTRIES};
use crate::machine::Fault;
use crate::name::{SafeName, RESERVED_NAME};
use crate::store::{decode_meta, Store, META_LEN};
use crate::tree::{Entry, EntryKind as TreeKind, RelPath, Walked, Walker};
use crate::v2::FaultCode;

/// Where a listing is: the two directories, walked in turn (or, from an
/// object store, what is left to send of its listing).
pub(super) struct Lister {
    files: Option<ReadDir>,
    parts: Option<ReadDir>,
    #[cfg(feature = "s3")]
    s3: Option<crate::s3::S3Lister>,
    /// A directory of the storage directory walked whole (`list DIR`), and
    /// the path above it that its entries' names are prefixed with.
    tree: Option<(Walker, String)>,
    /// Whether directories and the tree parts summary are listed.
    dirs: bool,
    /// Whether the tree parts are summed up per tree, by name.
    tree_names: bool,
    /// Entries found together (the trees in progress), not sent yet.
    pending: Vec<ListEntry>,
    /// Entries the directories' counts may still visit in this listing.
    budget: u64,
}

impl Shell<'_> {
    /// [`crate::machine::Action::ListPage`]: the next page of what the
    /// server holds (of `name` alone when given: the file, its numbered
    /// versions and its partial upload).
    pub(super) fn list_page(
        &mut self,
        name: Option<String>,
        first: bool,
        dirs: bool,
    ) -> Result<(Vec<ListEntry>, bool), Fault> {
        if first {
            // A listing is served like a running upload: not evicted.
            if !self.conn.unadmitted.swap(false, Ordering::SeqCst) {
                return Err(Fault::new(
                    FaultCode::Busy,
                    "evicted before it was admitted",
                ));
            }
            let mut lister = self.open_lister(name.as_deref(), dirs)?;
            lister.tree_names = self.rx.list_tree_names();
            self.lister = Some(lister);
        }
        let lister = self
            .lister
            .as_mut()
            .ok_or_else(|| Fault::new(FaultCode::Internal, "no listing under way"))?;
        lister.page(&self.sh.store, name.as_deref())
    }

    fn open_lister(&self, name: Option<&str>, dirs: bool) -> Result<Lister, Fault> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.sh.s3 {
            return Ok(Lister {
                files: None,
                parts: None,
                s3: Some(s3.lister(name.unwrap_or(""), dirs)),
                tree: None,
                dirs,
                tree_names: false,
                pending: Vec::new(),
                budget: 0,
            });
        }
        if let Some(t) = name.and_then(|n| tree_walk(&self.sh.cfg.dir, n)) {
            return Ok(Lister {
                files: None,
                parts: None,
                #[cfg(feature = "s3")]
                s3: None,
                tree: Some(t),
                dirs,
                tree_names: false,
                pending: Vec::new(),
                budget: 0,
            });
        }
        Lister::open(&self.sh.store, dirs)
    }
}

fn cannot(what: &str, e: std::io::Error) -> Fault {
    Fault::new(
        FaultCode::Storage,
        format!("server cannot list {what}: {e}"),
    )
}

impl Lister {
    fn open(store: &Store, dirs: bool) -> Result<Lister, Fault> {
        let files = fs::read_dir(store.dir()).map_err(|e| cannot("its storage directory", e))?;
        let parts =
            fs::read_dir(store.state_path()).map_err(|e| cannot("its state directory", e))?;
        Ok(Lister {
            files: Some(files),
            parts: Some(parts),
            #[cfg(feature = "s3")]
            s3: None,
            tree: None,
            dirs,
            tree_names: false,
            pending: Vec::new(),
            budget: COUNT_BUDGET,
        })
    }

    /// Up to [`PAGE_ENTRIES`] entries, and whether the walk is over.
    fn page(&mut self, store: &Store, name: Option<&str>) -> Result<(Vec<ListEntry>, bool), Fault> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &mut self.s3 {
            return store_page(s3, name);
        }
        if let Some((walk, above)) = &mut self.tree {
            return Ok(tree_page(walk, above));
        }
        let mut out = Vec::new();
        while out.len() < PAGE_ENTRIES {
            let next = if let Some(e) = self.pending.pop() {
                Some(e)
            } else if let Some(files) = &mut self.files {
                match files.next() {
                    Some(e) => e.ok().and_then(|e| self.file_entry(store, &e, name)),
                    None => {
                        self.files = None;
                        continue;
                    }
                }
            } else if let Some(parts) = &mut self.parts {
                match parts.next() {
                    Some(e) => e.ok().and_then(|e| part_entry(&e)),
                    None => {
                        self.parts = None;
                        continue;
                    }
                }
            } else {
                return Ok((out, true));
            };
            if let Some(e) = next.filter(|e| wanted(&e.name, name)) {
                out.push(e);
            }
        }
        let done = self.files.is_none() && self.parts.is_none() && self.pending.is_empty();
        Ok((out, done))
    }
}

/// Up to [`PAGE_ENTRIES`] entries of an object store's listing, and
/// whether it is over.
#[cfg(feature = "s3")]
fn store_page(
    s3: &mut crate::s3::S3Lister,
    name: Option<&str>,
) -> Result<(Vec<ListEntry>, bool), Fault> {
    let mut out = Vec::new();
    while out.len() < PAGE_ENTRIES {
        let next = s3.next_entry().map_err(|e| {
            Fault::new(
                FaultCode::Storage,
                format!("server cannot list its store: {e}"),
            )
        })?;
        match next {
            Some(e) if wanted(&e.name, name) => out.push(e),
            Some(_) => {}
            None => return Ok((out, true)),
        }
    }
    Ok((out, false))
}

/// A walk of the directory `name` of the storage directory, when it is
/// one, reached without a symlink on the way (the server's own parts
/// directory is never walked).
fn tree_walk(dir: &Path, name: &str) -> Option<(Walker, String)> {
    let rel = RelPath::from_wire(name.trim_end_matches('/')).ok()?;
    if rel.components().next() == Some(PARTS_DIR) {
        return None;
    }
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    open_dir(&root, rel.as_str()).ok()?;
    let walk = Walker::new(&dir.join(rel.as_str())).ok()?;
    Some((
        walk,
        rel.parent_str()
            .map(|p| format!("{p}/"))
            .unwrap_or_default(),
    ))
}

/// The next page of a directory's files, recursively: each named by its
/// path in the storage directory. Directories, symlinks and what the walk
/// leaves out are not listed.
fn tree_page(walk: &mut Walker, above: &str) -> (Vec<ListEntry>, bool) {
    let mut out = Vec::new();
    while out.len() < PAGE_ENTRIES {
        let Some(w) = walk.next() else {
            return (out, true);
        };
        if let Walked::Entry {
            entry:
                Entry {
                    path,
                    kind: TreeKind::File { size, mtime_ns, .. },
                },
            ..
        } = w
        {
            out.push(ListEntry {
                kind: EntryKind::File,
                name: format!("{above}{path}").into_bytes(),
                size,
                mtime: mtime_ns.div_euclid(1_000_000_000),
                crc32: None,
                held: size,
                files: None,
            });
        }
    }
    (out, false)
}

/// Whether `entry` belongs to a listing of `name`: the name itself, its
/// numbered versions (`NAME.~N~`) and what is under it as a directory.
fn wanted(entry: &[u8], name: Option<&str>) -> bool {
    let Some(n) = name else { return true };
    let n = n.as_bytes();
    entry == n
        || entry
            .strip_prefix(n)
            .is_some_and(|rest| rest.starts_with(b".~") || rest.starts_with(b"/"))
}

impl Lister {
    /// A regular file of the storage directory (the state directory,
    /// symlinks and anything else are not listed); asked for directories,
    /// a directory too, and the tree parts summary in place of the parts
    /// directory (when the whole storage is listed).
    fn file_entry(
        &mut self,
        store: &Store,
        e: &fs::DirEntry,
        name: Option<&str>,
    ) -> Option<ListEntry> {
        let fname = e.file_name();
        if fname.as_bytes() == RESERVED_NAME.as_bytes() {
            return None;
        }
        // Not followed: a symlink is neither a file nor a directory here.
        let m = e.metadata().ok()?;
        if m.is_dir() && self.dirs {
            if fname.as_bytes() == PARTS_DIR.as_bytes() {
                if !self.tree_names {
                    return name.is_none().then(|| tree_parts_entry(&e.path()))?;
                }
                // One per tree; a name asked for keeps its own (`wanted`).
                self.pending = tree_parts_by_name(&e.path());
                return self.pending.pop();
            }
            if !wanted(fname.as_bytes(), name) {
                // Not counted for nothing.
                return None;
            }
            let limit = self.budget.min(COUNT_LIMIT);
            let counted = count_under(&e.path(), limit);
            self.budget -= counted.map_or(limit, |c| c.seen);
            return Some(dir_entry(fname.as_bytes(), &m, counted));
        }
        file_entry(store, e, &m)
    }
}

/// A regular file of the storage directory, `m` its metadata.
fn file_entry(store: &Store, e: &fs::DirEntry, m: &fs::Metadata) -> Option<ListEntry> {
    let fname = e.file_name();
    if !m.is_file() {
        return None;
    }
    // Only a name the server could have stored has a record.
    let crc32 = fname
        .to_str()
        .and_then(|s| SafeName::from_wire(s).ok())
        .filter(|n| n.as_str() == fname.to_str().unwrap_or_default())
        .and_then(|n| store.finished(&n))
        .filter(|r| r.size == m.len())
        .map(|r| r.crc32);
    Some(ListEntry {
        kind: EntryKind::File,
        name: fname.as_bytes().to_vec(),
        size: m.len(),
        mtime: m.mtime(),
        crc32,
        held: m.len(),
        files: None,
    })
}

/// Most entries one directory's count visits before giving up (its entry
/// then says "not counted"): a listing stays quick whatever a tree holds.
const COUNT_LIMIT: u64 = 100_000;

/// Most entries all the counts of one listing visit together: many large
/// directories cannot make a page late past the client's timeout.
const COUNT_BUDGET: u64 = 1_000_000;

/// What a directory holds, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    /// Regular files under it, recursively.
    files: u64,
    /// Their total bytes.
    bytes: u64,
    /// Entries visited (of any kind).
    seen: u64,
}

/// A directory of the storage directory, with the regular files under it
/// and their bytes when they were counted.
fn dir_entry(name: &[u8], m: &fs::Metadata, counted: Option<Counted>) -> ListEntry {
    let size = counted.map_or(0, |c| c.bytes);
    ListEntry {
        kind: EntryKind::Dir,
        name: name.to_vec(),
        size,
        mtime: m.mtime(),
        crc32: None,
        held: size,
        files: counted.map(|c| c.files),
    }
}

/// The regular files under `dir` and their total bytes, recursively,
/// symlinks not followed; `None` when there are more than `limit` entries
/// or a directory cannot be read (a partial count would be a lie).
fn count_under(dir: &Path, limit: u64) -> Option<Counted> {
    let (mut files, mut bytes, mut seen) = (0u64, 0u64, 0u64);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).ok()? {
            seen += 1;
            if seen > limit {
                return None;
            }
            let e = e.ok()?;
            let t = e.file_type().ok()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                files += 1;
                bytes = bytes.saturating_add(e.metadata().ok()?.len());
            }
        }
    }
    Some(Counted { files, bytes, seen })
}

/// The parts of tree uploads in progress (`KEY.part` in the parts
/// directory), summed up: how many, the bytes they hold, the newest's
/// mtime. Their names are digests of what they will be called, so no
/// name is given. `None` when there are none.
fn tree_parts_entry(parts: &Path) -> Option<ListEntry> {
    let (mut n, mut bytes, mut newest) = (0u64, 0u64, 0i64);
    for e in fs::read_dir(parts).ok()?.flatten() {
        if !e.file_name().as_bytes().ends_with(b".part") {
            continue;
        }
        let Some(m) = e.metadata().ok().filter(|m| m.is_file()) else {
            continue;
        };
        n += 1;
        bytes = bytes.saturating_add(m.len());
        newest = newest.max(m.mtime());
    }
    (n > 0).then_some(ListEntry {
        kind: EntryKind::TreeParts,
        name: Vec::new(),
        size: bytes,
        mtime: newest,
        crc32: None,
        held: bytes,
        files: Some(n),
    })
}

/// The parts of tree uploads in progress summed up per tree, by the
/// root name noted beside each part (`tree_notes`); parts without a note
/// (small files, or parts older than notes) in one unnamed entry. Last
/// first (the caller pops them).
fn tree_parts_by_name(parts: &Path) -> Vec<ListEntry> {
    let mut trees: std::collections::BTreeMap<Vec<u8>, (u64, u64, i64)> = Default::default();
    let Ok(dir) = fs::read_dir(parts) else {
        return Vec::new();
    };
    for e in dir.flatten() {
        let fname = e.file_name();
        if !fname.as_bytes().ends_with(b".part") {
            continue;
        }
        let Some(m) = e.metadata().ok().filter(|m| m.is_file()) else {
            continue;
        };
        let root = super::tree_notes::read(parts, fname.as_bytes()).unwrap_or_default();
        let t = trees.entry(root.into_bytes()).or_default();
        t.0 += 1;
        t.1 = t.1.saturating_add(m.len());
        t.2 = t.2.max(m.mtime());
    }
    let mut out: Vec<ListEntry> = trees
        .into_iter()
        .map(|(name, (n, bytes, newest))| ListEntry {
            kind: EntryKind::TreeParts,
            name,
            size: bytes,
            mtime: newest,
            crc32: None,
            held: bytes,
            files: Some(n),
        })
        .collect();
    out.reverse();
    out
}

/// A partial upload, from its checkpoint record (`KEY.meta`).
fn part_entry(e: &fs::DirEntry) -> Option<ListEntry> {
    if !e.file_name().as_bytes().ends_with(b".meta") {
        return None;
    }
    let mut bytes = Vec::with_capacity(META_LEN);
    fs::File::open(e.path())
        .ok()?
        .take(META_LEN as u64 * 2)
        .read_to_end(&mut bytes)
        .ok()?;
    let rec = decode_meta(&bytes).ok()?;
    let mtime = e.metadata().ok()?.mtime();
    Some(ListEntry {
        kind: EntryKind::Partial,
        name: rec.identity.name.as_str().as_bytes().to_vec(),
        size: rec.identity.filesize,
        mtime,
        crc32: None,
        held: rec.checkpoint.offset,
        files: None,
    })
}

#[cfg(test)]
mod tests {
    use super::{count_under, tree_parts_entry, wanted, Counted};
    use crate::listing::EntryKind;
    use std::fs;

    #[test]
    fn a_directory_is_counted_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("x"), b"12345").unwrap();
        fs::write(t.join("a/b/y"), b"123").unwrap();
        // A symlink is not followed (it would count the file twice).
        std::os::unix::fs::symlink(t.join("x"), t.join("a/l")).unwrap();
        let want = Counted {
            files: 2,
            bytes: 8,
            seen: 5,
        };
        assert_eq!(count_under(&t, 100), Some(want));
        // Entries: x, a, b, l, y = 5; fewer allowed is "not counted".
        assert_eq!(count_under(&t, 5), Some(want));
        assert_eq!(count_under(&t, 4), None);
    }

    #[test]
    fn tree_parts_are_summed_up_without_names() {
        let d = tempfile::tempdir().unwrap();
        assert!(tree_parts_entry(d.path()).is_none());
        fs::write(d.path().join("ab12.part"), vec![0u8; 10]).unwrap();
        fs::write(d.path().join("cd34.part"), vec![0u8; 7]).unwrap();
        fs::create_dir(d.path().join("sums")).unwrap();
        fs::write(d.path().join("sums/x.dir"), b"not a part").unwrap();
        let e = tree_parts_entry(d.path()).unwrap();
        assert_eq!(
            (e.kind, e.name.len(), e.files, e.size),
            (EntryKind::TreeParts, 0, Some(2), 17)
        );
    }

    #[test]
    fn a_name_lists_itself_its_versions_and_its_tree() {
        for yes in ["a.bin", "a.bin.~1~", "a.bin.~12~", "a.bin/x"] {
            assert!(wanted(yes.as_bytes(), Some("a.bin")), "{yes}");
        }
        for no in ["a.bin2", "a.bi", "b.bin", "a.bin~"] {
            assert!(!wanted(no.as_bytes(), Some("a.bin")), "{no}");
        }
        assert!(wanted(b"\xff", None));
    }
}
