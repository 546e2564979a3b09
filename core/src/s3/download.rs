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
        let not_found = || {
            Fault::new(
                FaultCode::NotFound,
                format!("no file \"{name}\" on the server"),
            )
        };
        if name == STATE_DIR || name == DONE_DIR || name.contains('/') {
            return Err(not_found());
        }
        self.reference_of(name, v2::MAX_BLOCK)
    }

    /// The reference of a tree file's object `key` (a relative path whose
    /// components were checked, so it may hold '/'; only the server's own
    /// folders at the top are refused), in blocks of at most `max_block`
    /// (a tree download's). A record in larger blocks cannot be split: the
    /// object is then read once for its blocks' CRC-32s, and its whole
    /// CRC-32 checked against the record's before anything is sent.
    pub fn tree_reference(&self, key: &str, max_block: u64) -> Result<Reference, Fault> {
        let top = key.split('/').next().unwrap_or("");
        if top == STATE_DIR || top == DONE_DIR {
            return Err(Fault::new(
                FaultCode::NotFound,
                format!("no file \"{key}\" on the server"),
            ));
        }
        self.reference_of(key, max_block)
    }

    fn reference_of(&self, name: &str, max_block: u64) -> Result<Reference, Fault> {
        let client = self.client();
        let not_found = || {
            Fault::new(
                FaultCode::NotFound,
                format!("no file \"{name}\" on the server"),
            )
        };
        let info = finished::head(client, name)
            .map_err(|e| storage(name, &e))?
            .ok_or_else(not_found)?;
        let rec = finished::read_record(client, name).map_err(|e| storage(name, &e))?;
        let rec = rec.filter(|r| r.size == info.size);
        if let Some(r) = rec
            .clone()
            .filter(|r| r.block <= max_block && usable(r.size, r.block, r.crcs.len()))
        {
            return Ok(Reference {
                size: r.size,
                block: r.block,
                mtime_ns: (r.mtime.max(0) as u64).saturating_mul(1_000_000_000),
                crcs: r.crcs,
            });
        }
        let block = v2::block_size_for(info.size).min(max_block);
        let r = self.compute(name, info.size, block, info.modified)?;
        let recorded = rec.map(|r| r.crc32);
        match recorded.or(full_object_crc(&info)) {
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
    fn compute(
        &self,
        name: &str,
        size: u64,
        block: u64,
        modified: i64,
    ) -> Result<Reference, Fault> {
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

/// How a run of blocks read with one ranged GET ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Every block of the run was checked and handed to the sink.
    Done,
    /// Block `.0` did not match (or the answer broke off before it): the
    /// blocks before it were handed out; read it alone
    /// ([`S3Storage::read_block`], which reads again and refuses), then
    /// go on after it.
    Again(u64),
    /// The sink failed (the client's connection): stop.
    Sink(std::io::Error),
}

/// Cuts a ranged GET's body into blocks, checks each against the
/// reference and hands the good ones to the sink.
struct Splitter<'a, F: FnMut(u64, &[u8], u32) -> std::io::Result<()>> {
    r: &'a Reference,
    next: u64,
    buf: Vec<u8>,
    sink: F,
    end: Option<RunEnd>,
}

impl<F: FnMut(u64, &[u8], u32) -> std::io::Result<()>> std::io::Write for Splitter<'_, F> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let want = self.r.range(self.next).1 as usize;
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < want {
                break;
            }
            let crc = crc32fast::hash(&self.buf);
            if crc != self.r.crcs[self.next as usize] {
                self.end = Some(RunEnd::Again(self.next));
                return Err(std::io::Error::other("block mismatch"));
            }
            if let Err(e) = (self.sink)(self.next, &self.buf, crc) {
                self.end = Some(RunEnd::Sink(e));
                return Err(std::io::Error::other("sink failed"));
            }
            self.buf.clear();
            self.next += 1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl S3Storage {
    /// Blocks `first..first + count` of the stored object `name` with one
    /// ranged GET, streamed: each block checked against `r` as it arrives
    /// and handed to `sink` (index, bytes, CRC-32) when good. Memory: one
    /// block.
    pub fn read_run(
        &self,
        name: &str,
        r: &Reference,
        first: u64,
        count: u64,
        sink: impl FnMut(u64, &[u8], u32) -> std::io::Result<()>,
    ) -> Result<RunEnd, Fault> {
        if count == 0 {
            return Ok(RunEnd::Done);
        }
        let (off, _) = r.range(first);
        let (last_off, last_len) = r.range(first + count - 1);
        let mut s = Splitter {
            r,
            next: first,
            buf: Vec::with_capacity(r.block as usize),
            sink,
            end: None,
        };
        let got = self
            .client()
            .get_range(name, off, last_off + last_len - off, &mut s);
        if let Some(end) = s.end {
            return Ok(end);
        }
        match got {
            Ok(_) => Ok(RunEnd::Done),
            Err(e) if e.kind == S3ErrorKind::NotFound => Err(Fault::new(
                FaultCode::Changed,
                format!("\"{name}\" was removed from the server during the download"),
            )),
            // Broken off (retries of a body under way are not made): the
            // next block alone, with the retries of a request of its own.
            Err(_) => Ok(RunEnd::Again(s.next)),
        }
    }
}
