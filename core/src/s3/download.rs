//! Downloads from the object store (feature `s3`): the reference of a
//! stored object (size, block size, block CRC-32s) and its blocks, read
//! with ranged GETs and each checked against that reference before it is
//! handed out, since a ranged GET carries no checksum.
//!
//! The reference is the finished record written when the object was
//! stored ([`super::finished`]), believed whenever the object has the
//! recorded size: an object damaged or replaced behind the server's back
//! with the same size is then refused block by block, never sent as
//! good. Without a usable record (an object put there by other means, or
//! a protocol-1 upload) the reference is computed by reading the object
//! once, and checked against the store's own `FULL_OBJECT` CRC-32 when it
//! keeps one.
//!
//! Not for the wire (the server's `get`) nor for uploads.

use super::finished::{self, DONE_DIR};
use super::storage::full_object_crc;
use super::{S3Error, S3ErrorKind, S3Storage, STATE_DIR};
use crate::getwire::Reference;
use crate::machine::Fault;
use crate::v2::{self, FaultCode};

/// Reads of one block before it is refused (a second read tells a
/// transient fault on the way from damage in the store).
const READS: usize = 2;

fn storage(name: &str, e: &S3Error) -> Fault {
    Fault::new(
        FaultCode::Storage,
        format!("server cannot read \"{name}\" from its object store: {e}"),
    )
}

/// Whether `block` and `count` can be a download's reference.
fn usable(size: u64, block: u64, count: usize) -> bool {
    (v2::MIN_BLOCK..=v2::MAX_BLOCK).contains(&block)
        && block.is_power_of_two()
        && count as u64 <= v2::MAX_BLOCKS
        && v2::block_count(size, block) == count as u64
}

impl S3Storage {
    /// The reference of the stored object `name` (see the module comment).
    pub fn reference(&self, name: &str) -> Result<Reference, Fault> {
        let client = self.client();
        let not_found = || {
            Fault::new(
                FaultCode::NotFound,
                format!("no file \"{name}\" on the server"),
            )
        };
        if name == STATE_DIR || name == DONE_DIR || name.contains('/') {
            return Err(not_found());
        }
        let info = finished::head(client, name)
            .map_err(|e| storage(name, &e))?
            .ok_or_else(not_found)?;
        let rec = finished::read_record(client, name).map_err(|e| storage(name, &e))?;
        if let Some(r) =
            rec.filter(|r| r.size == info.size && usable(r.size, r.block, r.crcs.len()))
        {
            return Ok(Reference {
                size: r.size,
                block: r.block,
                mtime_ns: (r.mtime.max(0) as u64).saturating_mul(1_000_000_000),
                crcs: r.crcs,
            });
        }
        let r = self.compute(name, info.size, info.modified)?;
        match full_object_crc(&info) {
            Some(c) if c != r.whole() => Err(Fault::new(
                FaultCode::Storage,
                format!(
                    "\"{name}\" in the object store is damaged (its bytes have CRC-32 {:08x}, the store recorded {c:08x}); not sent",
                    r.whole()
                ),
            )),
            _ => Ok(r),
        }
    }

    /// A reference computed by reading the object once, block by block.
    fn compute(&self, name: &str, size: u64, modified: i64) -> Result<Reference, Fault> {
        let block = v2::block_size_for(size);
        let mut buf = Vec::with_capacity(block as usize);
        let mut crcs = Vec::with_capacity(v2::block_count(size, block) as usize);
        for i in 0..v2::block_count(size, block) {
            let (off, len) = v2::block_range(size, block, i);
            buf.clear();
            self.client()
                .get_range(name, off, len, &mut buf)
                .map_err(|e| storage(name, &e))?;
            crcs.push(crc32fast::hash(&buf));
        }
        Ok(Reference {
            size,
            block,
            mtime_ns: (modified.max(0) as u64).saturating_mul(1_000_000_000),
            crcs,
        })
    }

    /// Block `i` of the stored object `name` into `buf`, checked against
    /// `r`: read again once if it does not match; then refused in words.
    pub fn read_block(
        &self,
        name: &str,
        r: &Reference,
        i: u64,
        buf: &mut Vec<u8>,
    ) -> Result<u32, Fault> {
        let (off, len) = r.range(i);
        let want = r.crcs[i as usize];
        let mut got = 0;
        for _ in 0..READS {
            buf.clear();
            match self.client().get_range(name, off, len, buf) {
                Ok(_) => {}
                Err(e) if e.kind == S3ErrorKind::NotFound => {
                    return Err(Fault::new(
                        FaultCode::Changed,
                        format!("\"{name}\" was removed from the server during the download"),
                    ))
                }
                Err(e) => return Err(storage(name, &e)),
            }
            got = crc32fast::hash(buf);
            if got == want {
                return Ok(got);
            }
        }
        Err(Fault::new(
            FaultCode::Storage,
            format!(
                "\"{name}\" in the object store does not match what was stored (block {i}: CRC-32 {got:08x}, expected {want:08x}): it was damaged or changed in the store behind the server's back; not sent"
            ),
        ))
    }
}
