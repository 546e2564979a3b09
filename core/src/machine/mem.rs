//! An in-memory [`Storage`]: held parts and finished files in a map, with
//! checkpoints and a simulated crash (everything not checkpointed is
//! forgotten). For tests and as the reference for other storages.
//!
//! Not for real data: nothing here survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Fault, Held, HeldPart, HeldSet, Layout, PartId, Storage};
use crate::v2::{block_range, FaultCode};

#[derive(Debug, Clone)]
struct MemHeld {
    id: PartId,
    bytes: Vec<u8>,
    /// Version 2: the verified blocks.
    set: Option<HeldSet>,
    /// Version 1: bytes received, and bytes covered by a checkpoint.
    written: u64,
    durable: u64,
}

#[derive(Debug, Default)]
struct Inner {
    parts: HashMap<String, MemHeld>,
    files: HashMap<String, Vec<u8>>,
    checkpoints: u64,
    fail_writes_after: Option<u64>,
}

/// Held parts and stored files in memory, shared by every connection.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// The stored file `name`, if an upload of it was committed.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.inner).files.get(name).cloned()
    }

    /// The blocks of `name` a checkpoint vouches for (what a restarted
    /// server would offer), if it has a version-2 held part.
    pub fn durable_blocks(&self, name: &str) -> Option<HeldSet> {
        let inner = lock(&self.inner);
        let mut s = inner.parts.get(name)?.set.clone()?;
        s.keep_durable();
        Some(s)
    }

    /// Whether a held part of `name` exists.
    pub fn has_part(&self, name: &str) -> bool {
        lock(&self.inner).parts.contains_key(name)
    }

    /// Checkpoints taken so far.
    pub fn checkpoints(&self) -> u64 {
        lock(&self.inner).checkpoints
    }

    /// Makes every write fail (as a full disk) once `n` more bytes were
    /// written.
    pub fn fail_writes_after(&self, n: u64) {
        lock(&self.inner).fail_writes_after = Some(n);
    }

    /// A crash: what no checkpoint covers is forgotten (the bytes stay, as
    /// on a disk, but no longer count as held).
    pub fn crash(&self) {
        for p in lock(&self.inner).parts.values_mut() {
            if let Some(s) = &mut p.set {
                s.keep_durable();
            }
            p.written = p.durable;
        }
    }

    /// Flips one bit of the held part of `name` at `offset` (a damaged disk).
    pub fn damage(&self, name: &str, offset: usize) {
        if let Some(p) = lock(&self.inner).parts.get_mut(name) {
            if let Some(b) = p.bytes.get_mut(offset) {
                *b ^= 1;
            }
        }
    }
}

fn fresh(id: &PartId) -> Result<MemHeld, Fault> {
    let set = match id.layout {
        Layout::Blocks { block } => Some(HeldSet::new(id.filesize, block)?),
        Layout::Prefix { .. } => None,
    };
    let len = usize::try_from(id.filesize)
        .map_err(|_| Fault::new(FaultCode::NoSpace, "too large for memory"))?;
    Ok(MemHeld {
        id: id.clone(),
        bytes: vec![0; len],
        set,
        written: 0,
        durable: 0,
    })
}

impl Storage for MemStorage {
    type Part = MemPart;

    fn open(&self, id: &PartId) -> Result<(MemPart, Held), Fault> {
        let mut inner = lock(&self.inner);
        let keep = inner.parts.get(&id.name).is_some_and(|p| p.id == *id);
        if !keep {
            let p = fresh(id)?;
            inner.parts.insert(id.name.clone(), p);
        }
        let p = inner
            .parts
            .get_mut(&id.name)
            .ok_or_else(|| Fault::new(FaultCode::Internal, "part vanished"))?;
        // Only what a checkpoint vouches for is held, as on disk.
        p.written = p.durable;
        if let Some(s) = &mut p.set {
            s.keep_durable();
        }
        let held = match &p.set {
            Some(s) => Held::Blocks(s.clone()),
            None => Held::Prefix {
                offset: p.durable,
                crc32: crc32fast::hash(&p.bytes[..p.durable as usize]),
            },
        };
        let part = MemPart {
            store: Arc::clone(&self.inner),
            name: id.name.clone(),
        };
        Ok((part, held))
    }
}

/// One upload's held part in a [`MemStorage`].
#[derive(Debug)]
pub struct MemPart {
    store: Arc<Mutex<Inner>>,
    name: String,
}

impl MemPart {
    fn with<T>(&self, f: impl FnOnce(&mut MemHeld) -> Result<T, Fault>) -> Result<T, Fault> {
        let mut inner = lock(&self.store);
        let p = inner
            .parts
            .get_mut(&self.name)
            .ok_or_else(|| Fault::new(FaultCode::Storage, "held part is gone"))?;
        f(p)
    }
}

impl HeldPart for MemPart {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        {
            let mut inner = lock(&self.store);
            if let Some(left) = &mut inner.fail_writes_after {
                if (bytes.len() as u64) > *left {
                    return Err(Fault::new(FaultCode::NoSpace, "no space left on device"));
                }
                *left -= bytes.len() as u64;
            }
        }
        self.with(|p| {
            let end = offset as usize + bytes.len();
            if end > p.bytes.len() {
                return Err(Fault::new(FaultCode::Internal, "write past the end"));
            }
            p.bytes[offset as usize..end].copy_from_slice(bytes);
            if p.set.is_none() {
                p.written = end as u64;
            }
            Ok(())
        })
    }

    fn begin_block(&mut self, idx: u64) -> Result<(), Fault> {
        // Forgetting the block in the durable view too stands for the
        // checkpoint the disk storage takes before overwriting it.
        self.with(|p| {
            if let Some(s) = &mut p.set {
                s.forget(idx);
            }
            Ok(())
        })
    }

    fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<(), Fault> {
        self.with(|p| {
            if let Some(s) = &mut p.set {
                let (off, len) = block_range(s.filesize(), s.block_size(), idx);
                let real = crc32fast::hash(&p.bytes[off as usize..(off + len) as usize]);
                if good && real == crc {
                    s.mark(idx, crc);
                } else {
                    s.forget(idx);
                }
            }
            Ok(())
        })
    }

    fn checkpoint(&mut self) -> Result<(), Fault> {
        lock(&self.store).checkpoints += 1;
        self.with(|p| {
            if let Some(s) = &mut p.set {
                s.make_durable();
            }
            p.durable = p.written;
            Ok(())
        })
    }

    fn commit(&mut self, whole_crc: u32) -> Result<(), Fault> {
        let mut inner = lock(&self.store);
        let p = inner
            .parts
            .remove(&self.name)
            .ok_or_else(|| Fault::new(FaultCode::Storage, "held part is gone"))?;
        if crc32fast::hash(&p.bytes) != whole_crc {
            inner.parts.insert(self.name.clone(), p);
            return Err(Fault::new(
                FaultCode::Internal,
                "commit of bytes that do not match",
            ));
        }
        inner.files.insert(self.name.clone(), p.bytes);
        Ok(())
    }

    fn discard(&mut self) -> Result<(), Fault> {
        lock(&self.store).parts.remove(&self.name);
        Ok(())
    }
}
