//! The local-disk [`Storage`] of the protocol machine: an adapter over the
//! two durability engines, [`store::HeldPart`] for version 1 (a growing
//! prefix) and [`BlockPart`] for version 2 (verified blocks), mapping
//! their errors to coded faults. Their checkpoints, background syncs and
//! on-disk witnesses work as before; [`HeldPart::recheck`] is where each
//! one's check of the bytes on disk decides the verdict.
//!
//! Not for policy (admission, claims) or logging: the shell's. Merging the
//! two engines into one is left for later.

use crate::blocks::{BlockPart, Recovery};
use crate::machine::{Fault, Held, HeldPart, HeldSet, Layout, PartId, Recheck, Storage};
use crate::proto::Verdict;
use crate::store::{self, Fresh, Identity, Store};
use crate::v2::FaultCode;
use crate::{Error, SafeName};

/// Uploads kept in a storage directory.
pub(super) struct LocalStorage<'a> {
    pub(super) store: &'a Store,
}

/// One upload's held part on the local disk.
pub(super) struct LocalPart {
    name: SafeName,
    engine: Engine,
    /// Why the part did not resume as recorded (for the log), if it did not.
    pub(super) note: Option<String>,
}

enum Engine {
    Prefix(store::HeldPart),
    Blocks(BlockPart),
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

impl LocalPart {
    /// Bytes held for a resume (version 2: the verified blocks from the start).
    pub(super) fn held_bytes(&self) -> u64 {
        match &self.engine {
            Engine::Prefix(p) => p.offset(),
            Engine::Blocks(b) => b.held(),
        }
    }

    /// Verified blocks from the start (version 1: none).
    pub(super) fn held_blocks(&self) -> usize {
        match &self.engine {
            Engine::Prefix(_) => 0,
            Engine::Blocks(b) => b.held_crcs().len(),
        }
    }

    fn fault(&self, e: &Error) -> Fault {
        storage_fault(e, format!("server cannot store {}: {e}", self.name))
    }

    fn done(&self, r: crate::Result<()>) -> Result<(), Fault> {
        r.map_err(|e| self.fault(&e))
    }
}

impl Storage for LocalStorage<'_> {
    type Part = LocalPart;

    fn open(&self, id: &PartId) -> Result<(LocalPart, Held), Fault> {
        let name = SafeName::from_wire(&id.name)
            .map_err(|e| Fault::new(FaultCode::NameRefused, format!("refused: {e}")))?;
        let opened = match id.layout {
            Layout::Prefix { crc32 } => self.open_prefix(&name, id.filesize, crc32),
            Layout::Blocks { block } => self.open_blocks(&name, id.filesize, block),
        };
        opened.map_err(|e| storage_fault(&e, format!("server storage error: {e}")))
    }
}

impl LocalStorage<'_> {
    fn open_prefix(
        &self,
        name: &SafeName,
        filesize: u64,
        crc32: u32,
    ) -> crate::Result<(LocalPart, Held)> {
        let id = Identity {
            name: name.clone(),
            filesize,
            crc32,
        };
        let (part, fresh) = self.store.begin(id)?;
        let note = match fresh {
            Some(Fresh::OtherSource) => Some(format!(
                "{name}: held part was of another source (size or CRC-32 differ); starting over"
            )),
            Some(Fresh::Damaged(why)) => Some(format!(
                "{name}: held part not resumable ({why}); starting over"
            )),
            _ => None,
        };
        let held = Held::Prefix {
            offset: part.offset(),
            crc32: part.crc32(),
        };
        let part = LocalPart {
            name: name.clone(),
            engine: Engine::Prefix(part),
            note,
        };
        Ok((part, held))
    }

    fn open_blocks(
        &self,
        name: &SafeName,
        filesize: u64,
        block: u64,
    ) -> crate::Result<(LocalPart, Held)> {
        let (bp, recovery) = BlockPart::begin(self.store, name, filesize, block)?;
        let note = match recovery {
            Recovery::Reread(why) => {
                Some(format!("{name}: {why}: re-read its blocks to verify them"))
            }
            Recovery::Discarded(why) => Some(format!(
                "{name}: held part not usable ({why}); starting over"
            )),
            _ => None,
        };
        let mut set = HeldSet::new(filesize, block)
            .map_err(|f| Error::new(crate::ErrorKind::Refused, f.words))?;
        for (idx, &crc) in bp.held_crcs().iter().enumerate() {
            set.mark(idx as u64, crc);
        }
        set.make_durable();
        let part = LocalPart {
            name: name.clone(),
            engine: Engine::Blocks(bp),
            note,
        };
        Ok((part, Held::Blocks(set)))
    }
}

impl HeldPart for LocalPart {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        let r = match &mut self.engine {
            Engine::Prefix(p) if p.offset() != offset => {
                return Err(Fault::new(FaultCode::Internal, "write out of order"))
            }
            Engine::Prefix(p) => p.write(bytes),
            Engine::Blocks(b) => b.write_at(offset, bytes),
        };
        self.done(r)
    }

    fn begin_block(&mut self, idx: u64) -> Result<(), Fault> {
        let r = match &mut self.engine {
            Engine::Prefix(_) => Ok(()),
            Engine::Blocks(b) => b.begin_block(idx),
        };
        self.done(r)
    }

    fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<(), Fault> {
        let r = match &mut self.engine {
            Engine::Prefix(_) => Ok(()),
            Engine::Blocks(b) => b.record_block(idx, crc, good),
        };
        self.done(r)
    }

    fn checkpoint(&mut self) -> Result<(), Fault> {
        let r = match &mut self.engine {
            Engine::Prefix(p) => p.checkpoint(),
            Engine::Blocks(b) => b.checkpoint(),
        };
        self.done(r)
    }

    /// Version 1: the resumed prefix and the part on disk are the bytes
    /// received ([`store::HeldPart::verify`]); version 2: blocks changed on
    /// disk are asked for again ([`BlockPart::recheck_on_disk`]).
    fn recheck(&mut self) -> Result<Recheck, Fault> {
        let r = match &mut self.engine {
            Engine::Prefix(p) => p
                .verify()
                .map(|why| why.map_or(Recheck::Same, Recheck::Wrong)),
            Engine::Blocks(b) => b.recheck_on_disk().map(|bad| {
                if bad.is_empty() {
                    Recheck::Same
                } else {
                    Recheck::Changed(bad)
                }
            }),
        };
        r.map_err(|e| self.fault(&e))
    }

    fn commit(&mut self, _whole_crc: u32) -> Result<(), Fault> {
        let r = match &mut self.engine {
            Engine::Prefix(p) => match p.finish() {
                Ok(Verdict::Ok) => Ok(()),
                Ok(Verdict::Mismatch) => {
                    return Err(Fault::new(
                        FaultCode::Storage,
                        "the held part changed on disk behind the server's back",
                    ))
                }
                Err(e) => Err(e),
            },
            Engine::Blocks(b) => b.finish(),
        };
        self.done(r)
    }

    fn discard(&mut self) -> Result<(), Fault> {
        match &mut self.engine {
            Engine::Prefix(p) => p.discard(),
            Engine::Blocks(b) => b.discard(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
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
