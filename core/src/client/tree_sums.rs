//! The client's CRC-32 records for tree sends: one record per source
//! directory in the checksum cache (see [`crate::dirsums`]), so a re-send
//! of an unchanged tree learns every file's CRC-32 from one small read per
//! directory, keyed by the `lstat` the walk made anyway, and opens no
//! file. A file whose size, mtime, inode or ctime moved is read again.
//!
//! The records of the last few directories used are in memory; one is
//! written back when dropped to make room, and all at the end of an
//! attempt. Not for
//! the block checksums of single uploads (`cache::SumCache::load`).

use std::path::{Path, PathBuf};

use crate::cache::{SourceStamp, SumCache};
use crate::dirsums::{settled, DirSums};

/// Records kept in memory at once: the walk comes back to a directory
/// after each of its subdirectories, so its ancestors' records stay
/// loaded instead of being written and read again at every turn.
const IN_MEMORY: usize = 16;

/// One loaded record: the directory as walked, its canonical path (the
/// record's key; None when it cannot be resolved) and the record.
type Loaded = (PathBuf, Option<PathBuf>, DirSums);

/// The records of one send.
pub(super) struct LocalSums {
    cache: SumCache,
    /// The records loaded, the most recently used last.
    loaded: Vec<Loaded>,
}

impl LocalSums {
    pub(super) fn new(cache: SumCache) -> LocalSums {
        LocalSums {
            cache,
            loaded: Vec::new(),
        }
    }

    /// The recorded CRC-32 of `source` if its record's stamp is `stamp`.
    pub(super) fn get(&mut self, source: &Path, stamp: &SourceStamp) -> Option<u32> {
        let name = source.file_name()?.to_str()?.to_owned();
        self.record_of(source)?.get(&name, stamp)
    }

    /// Records `crc`, read from `source` after `stamp` was taken, unless
    /// the file changed too recently for its ctime to prove it.
    pub(super) fn put(&mut self, source: &Path, stamp: SourceStamp, crc: u32) {
        let Some(name) = source.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let name = name.to_owned();
        if settled(&stamp) {
            if let Some(rec) = self.record_of(source) {
                rec.put(&name, stamp, crc);
            }
        }
    }

    /// Writes the records in memory back where they changed.
    pub(super) fn flush(&mut self) {
        for (_, canonical, rec) in self.loaded.iter_mut() {
            if let (Some(c), true) = (canonical.as_ref(), rec.is_dirty()) {
                self.cache.store_dir(c, rec);
                rec.saved();
            }
        }
    }

    /// The record of the directory holding `source`, loaded if needed
    /// (the least recently used one written back and dropped for room).
    fn record_of(&mut self, source: &Path) -> Option<&mut DirSums> {
        let dir = source.parent()?;
        match self.loaded.iter().position(|(d, _, _)| d == dir) {
            Some(i) => {
                let hit = self.loaded.remove(i);
                self.loaded.push(hit);
            }
            None => {
                if self.loaded.len() >= IN_MEMORY {
                    let (_, canonical, rec) = self.loaded.remove(0);
                    if let (Some(c), true) = (canonical, rec.is_dirty()) {
                        self.cache.store_dir(&c, &rec);
                    }
                }
                let (canonical, rec) = match self.cache.load_dir(dir) {
                    Some((c, rec)) => (Some(c), rec),
                    None => (None, DirSums::default()),
                };
                self.loaded.push((dir.to_owned(), canonical, rec));
            }
        }
        match self.loaded.last_mut() {
            Some((_, Some(_), rec)) => Some(rec),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(p: &Path) -> SourceStamp {
        SourceStamp::of(&std::fs::metadata(p).expect("stat"))
    }

    /// As if the file had been written long ago: only such stamps are
    /// recorded (see `dirsums::settled`).
    fn aged(mut st: SourceStamp) -> SourceStamp {
        st.ctime -= 10;
        st
    }

    #[test]
    fn a_record_serves_the_same_stamp_only_and_survives_the_send() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("src");
        std::fs::create_dir(&dir).expect("mkdir");
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "aaaa").expect("write");
        std::fs::write(&b, "bbbb").expect("write");
        let cache = SumCache::new(tmp.path().join("cache"));
        let (sa, sb) = (aged(stamp_of(&a)), aged(stamp_of(&b)));
        let mut sums = LocalSums::new(cache.clone());
        sums.put(&a, sa, 7);
        sums.put(&b, stamp_of(&b), 8); // just written: not recorded
        sums.flush();
        let mut again = LocalSums::new(cache);
        assert_eq!(again.get(&a, &sa), Some(7));
        assert_eq!(again.get(&b, &sb), None);
        assert_eq!(again.get(&b, &stamp_of(&b)), None);
        // Rewritten: the record no longer holds.
        std::fs::write(&a, "AAAAA").expect("write");
        assert_eq!(again.get(&a, &aged(stamp_of(&a))), None);
        let mut moved = sa;
        moved.ctime_nsec += 1;
        assert_eq!(again.get(&a, &moved), None);
    }

    #[test]
    fn records_dropped_for_room_are_written_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = SumCache::new(tmp.path().join("cache"));
        let mut sums = LocalSums::new(cache.clone());
        let mut files = Vec::new();
        for i in 0..IN_MEMORY + 4 {
            let d = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&d).expect("mkdir");
            let f = d.join("f");
            std::fs::write(&f, format!("{i}")).expect("write");
            let st = aged(stamp_of(&f));
            sums.put(&f, st, i as u32);
            files.push((f, st));
        }
        // Back to the first directory (dropped meanwhile): read again.
        assert_eq!(sums.get(&files[0].0, &files[0].1), Some(0));
        sums.flush();
        let mut again = LocalSums::new(cache);
        for (i, (f, st)) in files.iter().enumerate() {
            assert_eq!(again.get(f, st), Some(i as u32), "{}", f.display());
        }
    }
}
