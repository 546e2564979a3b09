//! The local-disk [`Storage`] of the protocol machine: the held-part
//! engine [`DiskPart`] behind [`HeldPart`], its errors mapped to coded
//! faults (out of space is for good, anything else worth a retry).
//!
//! Not for durability, resume or rechecks (the engine's, see
//! [`crate::part`]) nor for policy (admission, claims) or logging: the
//! shell's.

use crate::machine::{Fault, Held, HeldPart, PartId, Recheck, Storage, StoredAs};
use crate::part::{DiskPart, Recovery};
use crate::store::Store;
use crate::v2::FaultCode;
use crate::{Error, SafeName};

/// Uploads kept in a storage directory.
pub(super) struct LocalStorage<'a> {
    pub(super) store: &'a Store,
}

/// One upload's held part on the local disk.
pub(super) struct LocalPart {
    part: DiskPart,
    /// Why the part did not resume as recorded (for the log), if it did not.
    pub(super) note: Option<String>,
}

/// A storage error as a fault a client acts on: out of space (or quota)
/// is for good until someone frees space, anything else worth a retry.
pub(super) fn storage_fault(e: &Error, words: String) -> Fault {
    let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
    let code = if full {
        FaultCode::NoSpace
    } else {
        FaultCode::Storage
    };
    Fault::new(code, words)
}

/// [`storage_fault`] for an error of the held part: the client is told
/// `what` and the operating system's reason ("No space left on device"),
/// the log also which file of the storage directory and which operation.
fn part_fault(e: &Error, what: String) -> Fault {
    let reason = match e.io_error() {
        Some(io) => io.to_string(),
        None => e.to_string(),
    };
    storage_fault(e, format!("{what}: {reason}")).with_detail(format!("{what}: {e}"))
}

impl LocalPart {
    /// Bytes held for a resume (version 2: in every held block).
    pub(super) fn held_bytes(&self) -> u64 {
        self.part.held_bytes()
    }

    /// Verified blocks held (version 1: none).
    pub(super) fn held_blocks(&self) -> usize {
        self.part.held_blocks()
    }

    fn done<T>(&self, r: crate::Result<T>) -> Result<T, Fault> {
        r.map_err(|e| match e.kind() {
            crate::ErrorKind::InvalidInput => Fault::new(FaultCode::NameRefused, e.to_string()),
            _ => part_fault(&e, format!("server cannot store {}", self.part.name())),
        })
    }
}

fn note(name: &SafeName, r: Recovery) -> Option<String> {
    match r {
        Recovery::Trusted | Recovery::Fresh => None,
        Recovery::Reread(why) => Some(format!("{name}: {why}: re-read its blocks to verify them")),
        Recovery::Discarded(why) => Some(format!(
            "{name}: held part not usable ({why}); starting over"
        )),
    }
}

impl Storage for LocalStorage<'_> {
    type Part = LocalPart;

    fn open(&self, id: &PartId) -> Result<(LocalPart, Held), Fault> {
        let name = SafeName::from_wire(&id.name)
            .map_err(|e| Fault::new(FaultCode::NameRefused, format!("refused: {e}")))?;
        let (part, recovery) = DiskPart::open(self.store, &name, id.filesize, id.layout)
            .map_err(|e| part_fault(&e, "server storage error".to_string()))?;
        let held = part.held()?;
        let note = note(&name, recovery);
        Ok((LocalPart { part, note }, held))
    }
}

impl HeldPart for LocalPart {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        let r = self.part.write_at(offset, bytes, None);
        self.done(r)
    }

    fn write_grown(&mut self, offset: u64, bytes: &[u8], crc_after: u32) -> Result<(), Fault> {
        let r = self.part.write_at(offset, bytes, Some(crc_after));
        self.done(r)
    }

    fn begin_block(&mut self, idx: u64) -> Result<(), Fault> {
        let r = self.part.begin_block(idx);
        self.done(r)
    }

    fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<(), Fault> {
        let r = self.part.record_block(idx, crc, good);
        self.done(r)
    }

    fn checkpoint(&mut self) -> Result<(), Fault> {
        let r = self.part.checkpoint();
        self.done(r)
    }

    /// Version 1: the resumed prefix and the part on disk are the bytes
    /// received; version 2: blocks changed on disk are asked for again.
    fn recheck(&mut self) -> Result<Recheck, Fault> {
        let r = self.part.recheck();
        self.done(r)
    }

    fn commit(&mut self, _whole_crc: u32) -> Result<(), Fault> {
        let r = self.part.finish();
        self.done(r)
    }

    fn discard(&mut self) -> Result<(), Fault> {
        self.part.discard();
        Ok(())
    }

    fn stored_as(&self) -> StoredAs {
        self.part.stored_as().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::machine::Layout;
    use crate::store::key_of;

    const B: u64 = 65536;

    fn store(tag: &str) -> (std::path::PathBuf, Store) {
        let d = std::env::temp_dir().join(format!("bt-local-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = Store::open(&d).unwrap();
        (d, s)
    }

    fn tamper(store: &Store, name: &str, offset: u64) {
        let key = key_of(&SafeName::from_wire(name).unwrap());
        let f = store.part_path(&key).open(false).unwrap();
        f.write_all_at(&[0xEE; 16], offset).unwrap();
    }

    #[test]
    fn full_disks_are_told_apart_from_other_storage_failures() {
        let e = |code| {
            Error::io(
                crate::ErrorKind::Storage,
                "w",
                std::io::Error::from_raw_os_error(code),
            )
        };
        assert_eq!(
            storage_fault(&e(libc::ENOSPC), "x".into()).code,
            FaultCode::NoSpace
        );
        assert_eq!(
            storage_fault(&e(libc::EDQUOT), "x".into()).code,
            FaultCode::NoSpace
        );
        assert_eq!(
            storage_fault(&e(libc::EIO), "x".into()).code,
            FaultCode::Storage
        );
    }

    #[test]
    fn a_v2_block_changed_on_disk_is_missing_again_before_the_verdict() {
        let (dir, st) = store("v2");
        let ls = LocalStorage { store: &st };
        let id = PartId {
            name: "b.bin".into(),
            filesize: 2 * B,
            layout: Layout::Blocks { block: B },
        };
        let (mut part, held) = ls.open(&id).unwrap();
        assert!(matches!(held, Held::Blocks(ref s) if s.prefix() == 0));
        let data = vec![7u8; B as usize];
        for idx in 0..2 {
            part.begin_block(idx).unwrap();
            part.write_at(idx * B, &data).unwrap();
            part.record_block(idx, crc32fast::hash(&data), true)
                .unwrap();
        }
        assert_eq!(part.recheck(), Ok(Recheck::Same));
        tamper(&st, "b.bin", B + 10);
        assert_eq!(part.recheck(), Ok(Recheck::Changed(vec![1])));
        part.discard().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_v1_part_changed_on_disk_is_disowned_and_a_clean_one_is_stored() {
        let (dir, st) = store("v1");
        let ls = LocalStorage { store: &st };
        let data = b"hello, world".to_vec();
        let id = |name: &str| PartId {
            name: name.into(),
            filesize: data.len() as u64,
            layout: Layout::Prefix {
                crc32: crc32fast::hash(&data),
            },
        };
        let (mut part, held) = ls.open(&id("a.bin")).unwrap();
        assert_eq!(
            held,
            Held::Prefix {
                offset: 0,
                crc32: 0
            }
        );
        part.write_at(0, &data).unwrap();
        tamper(&st, "a.bin", 0);
        assert!(
            matches!(part.recheck(), Ok(Recheck::Wrong(w)) if w.contains("behind the server's back"))
        );
        part.discard().unwrap();
        let (mut part, _) = ls.open(&id("c.bin")).unwrap();
        part.write_at(0, &data).unwrap();
        assert_eq!(part.recheck(), Ok(Recheck::Same));
        part.commit(crc32fast::hash(&data)).unwrap();
        assert_eq!(std::fs::read(dir.join("c.bin")).unwrap(), data);
        let _ = std::fs::remove_dir_all(dir);
    }
}
