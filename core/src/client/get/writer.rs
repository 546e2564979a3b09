//! Checking and writing a single-connection download's blocks on a helper
//! thread, so the connection's thread goes back to receiving the next
//! block while this one's CRC-32 is computed and it is written into the
//! partial download (before, receive, check and write ran one after the
//! other and the link idled during the last two).
//!
//! Memory is bounded: a small pool of block buffers ([`pool_size`], at
//! least two: one being received, one being checked and written) is
//! recycled; when every buffer is out, the receiving thread waits for one
//! to come back. A block is reported held only once its bytes matched
//! the reference's CRC-32 and were written; a write that fails ends the
//! download with a local-disk error (later blocks are not written), and
//! what was written before stays held, so the partial download resumes.
//! As an upload's part does, blocks are written in the pieces
//! [`crate::pieces`] chooses, and writeback to the disk is started as
//! they land, so the final sync has little left to do.
//!
//! Not for reading frames (`frames`), deciding what to ask for, or the
//! record and the final sync and rename (`super::Local`). The thread
//! never touches the connection.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::frames::Unchecked;
use crate::sys::PageBuf;
use crate::{Error, ErrorKind, Result};

/// Buffer bytes the pool aims at: four 1 MiB blocks, or two of any size
/// above 8 MiB (two is the least that overlaps anything).
const POOL_BYTES: u64 = 16 << 20;

/// Bytes written between two starts of writeback (the upload's step).
const WRITEBACK_STEP: u64 = crate::part::WRITEBACK_STEP;

/// How many block buffers a download of `block`-byte blocks uses.
pub(super) fn pool_size(block: u64) -> usize {
    (POOL_BYTES / block.max(1)).clamp(2, 4) as usize
}

/// A block received into a buffer, to be checked and written.
pub(super) struct Job {
    pub(super) i: u64,
    pub(super) off: u64,
    pub(super) len: u64,
    /// The reference's CRC-32 of this block.
    pub(super) expect: u32,
    pub(super) frame: Unchecked,
    pub(super) buf: PageBuf,
}

/// What became of a block.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Its bytes are the reference's and are in the part.
    Held,
    /// Damaged (the words say how): asked for again.
    Damaged(String),
    /// Its write failed: the download ends.
    Failed(io::Error),
    /// Not written because an earlier write failed.
    Skipped,
}

/// A block back from the thread: its index, what became of it.
pub(super) type Landed = (u64, Outcome);

/// What the thread sends back: the block, and its buffer to reuse.
struct Back {
    landed: Landed,
    buf: PageBuf,
}

/// The helper thread and the pool of buffers.
pub(super) struct Writer {
    jobs: Option<Sender<Job>>,
    landed: Receiver<Back>,
    thread: Option<JoinHandle<()>>,
    free: Vec<PageBuf>,
    made: usize,
    pool: usize,
    block: usize,
    /// Jobs sent and not yet landed.
    pending: usize,
}

impl Writer {
    /// Starts the thread writing into `part` (a handle of its own).
    pub(super) fn start(part: &File, block: u64) -> io::Result<Writer> {
        let part = part.try_clone()?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, landed) = mpsc::channel::<Back>();
        let thread = std::thread::Builder::new()
            .name("bt-get-writer".into())
            .spawn(move || run(&part, &rx, &tx))?;
        Ok(Writer {
            jobs: Some(jobs),
            landed,
            thread: Some(thread),
            free: Vec::new(),
            made: 0,
            pool: pool_size(block),
            block: block as usize,
            pending: 0,
        })
    }

    /// A buffer to receive the next block into: a free one, a new one
    /// while the pool is not full, else the next to come back (what it
    /// carried is handed to `land` first).
    pub(super) fn buffer(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<PageBuf> {
        loop {
            if let Some(b) = self.free.pop() {
                return Ok(b);
            }
            // With nothing in flight none can come back (a buffer was
            // lost to an error): a new one, rather than wait forever.
            if self.made < self.pool || self.pending == 0 {
                self.made += 1;
                return Ok(PageBuf::new(self.block));
            }
            self.wait_one(land)?;
        }
    }

    /// Hands a received block to the thread.
    pub(super) fn submit(&mut self, job: Job) -> Result<()> {
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => {
                self.pending += 1;
                Ok(())
            }
            _ => Err(thread_gone()),
        }
    }

    /// Returns a buffer that carried nothing to check (a frame that was
    /// not the block's).
    pub(super) fn give_back(&mut self, buf: PageBuf) {
        self.free.push(buf);
    }

    /// Hands what already came back to `land`, without waiting.
    pub(super) fn poll(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        while let Ok(l) = self.landed.try_recv() {
            self.landed_one(l, land)?;
        }
        Ok(())
    }

    /// Waits until every block sent has come back, each handed to `land`;
    /// all are collected even when `land` fails, and its first error is
    /// returned.
    pub(super) fn drain(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        let mut first = Ok(());
        while self.pending > 0 {
            let r = self.wait_one(land);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Drains, then stops the thread.
    pub(super) fn finish(mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        let r = self.drain(land);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && r.is_ok() {
                return Err(thread_gone());
            }
        }
        r
    }

    fn wait_one(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        match self.landed.recv() {
            Ok(l) => self.landed_one(l, land),
            Err(_) => {
                self.pending = 0;
                Err(thread_gone())
            }
        }
    }

    fn landed_one(&mut self, b: Back, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        self.pending = self.pending.saturating_sub(1);
        self.free.push(b.buf);
        land(b.landed)
    }
}

impl Drop for Writer {
    /// A writer dropped without `finish` (a panic unwinding): the thread
    /// ends once its queue is empty; nothing waits for it.
    fn drop(&mut self) {
        self.jobs = None;
    }
}

fn thread_gone() -> Error {
    Error::new(
        ErrorKind::Storage,
        "the download's writer thread stopped unexpectedly; the partial download is kept for a resume",
    )
}

/// Writes `b` at `off` in the pieces `pieces` chooses, timed for it: as
/// an upload's part does, since the size of the writes sizes the page
/// cache's folios, and whole 1 MiB writes were several times dearer to
/// fill on this class of VM (docs/BENCHMARKS.md, *Slow minutes*).
fn write_pieces(
    part: &File,
    b: &[u8],
    off: u64,
    pieces: &mut crate::pieces::PieceChooser,
) -> io::Result<()> {
    let started = std::time::Instant::now();
    let mut at = off;
    for piece in b.chunks(pieces.piece().max(4096)) {
        part.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    pieces.record(b.len(), started.elapsed());
    Ok(())
}

/// The thread: checks each block, writes the good ones, starts writeback
/// now and then; after a failed write, writes nothing more.
fn run(part: &File, jobs: &Receiver<Job>, landed: &Sender<Back>) {
    let mut broken = false;
    let mut pieces = crate::pieces::PieceChooser::default();
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for job in jobs.iter() {
        let Job {
            i,
            off,
            len,
            expect,
            frame,
            buf,
        } = job;
        let outcome = if broken {
            Outcome::Skipped
        } else {
            let b = &buf[..len as usize];
            match frame.check(b, i, expect).verdict {
                Err(why) => Outcome::Damaged(why),
                Ok(_) => match write_pieces(part, b, off, &mut pieces) {
                    Ok(()) => Outcome::Held,
                    Err(e) => {
                        broken = true;
                        Outcome::Failed(e)
                    }
                },
            }
        };
        if matches!(outcome, Outcome::Held) {
            (lo, hi) = (lo.min(off), hi.max(off + len));
            if hi - lo >= WRITEBACK_STEP {
                crate::sys::start_writeback(part, lo, hi - lo);
                (lo, hi) = (u64::MAX, 0);
            }
        }
        let back = Back {
            landed: (i, outcome),
            buf,
        };
        if landed.send(back).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::getwire::Reference;

    const BLOCK: u64 = 1 << 16;

    /// Two blocks of a file, their reference, and each block's frame as
    /// the server sends it.
    fn blocks() -> (Reference, Vec<u8>, Vec<Vec<u8>>) {
        let data: Vec<u8> = (0..2 * BLOCK).map(|x| (x * 7 % 251) as u8).collect();
        let crcs: Vec<u32> = data.chunks(BLOCK as usize).map(crc32fast::hash).collect();
        let frames = (0..2)
            .map(|i| {
                let b = &data[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize];
                let mut f = crate::getwire::encode_data_head(i * BLOCK, BLOCK as u32).to_vec();
                f.extend_from_slice(b);
                f.extend_from_slice(&crcs[i as usize].to_be_bytes());
                f
            })
            .collect();
        let r = Reference {
            size: data.len() as u64,
            block: BLOCK,
            mtime_ns: 1,
            crcs,
        };
        (r, data, frames)
    }

    /// Receives frame `i` into a buffer of `w` and submits it.
    fn receive(
        w: &mut Writer,
        r: &Reference,
        i: u64,
        frame: &[u8],
        land: &mut dyn FnMut(Landed) -> Result<()>,
    ) {
        let mut buf = w.buffer(land).unwrap();
        let mut s = std::io::Cursor::new(frame);
        let u = match super::super::frames::read_unchecked(&mut s, r, i, &mut buf, false).unwrap() {
            super::super::frames::Raw::Block(u) => u,
            super::super::frames::Raw::Other(h) => panic!("not a block: {h:?}"),
        };
        let (off, len) = r.range(i);
        let job = Job {
            i,
            off,
            len,
            expect: r.crcs[i as usize],
            frame: u,
            buf,
        };
        w.submit(job).unwrap();
    }

    #[test]
    fn good_blocks_are_written_and_damaged_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let part = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let (r, data, frames) = blocks();
        part.set_len(r.size).unwrap();
        let mut w = Writer::start(&part, BLOCK).unwrap();
        let mut out = Vec::new();
        let mut land = |(i, o): Landed| {
            out.push((i, format!("{o:?}")));
            Ok(())
        };
        receive(&mut w, &r, 0, &frames[0], &mut land);
        let mut bad = frames[1].clone();
        bad[20] ^= 1;
        receive(&mut w, &r, 1, &bad, &mut land);
        w.finish(&mut land).unwrap();
        assert_eq!(out[0], (0, "Held".to_string()));
        assert_eq!(out[1].0, 1);
        assert!(out[1].1.contains("block 1 arrived damaged"), "{:?}", out[1]);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..BLOCK as usize], &data[..BLOCK as usize]);
        assert_eq!(
            &got[BLOCK as usize..],
            &vec![0u8; BLOCK as usize][..],
            "the damaged block was written"
        );
    }

    #[test]
    fn a_failed_write_is_reported_and_nothing_after_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        std::fs::write(&path, b"").unwrap();
        // Open for reading only: every write fails (EBADF), as a full or
        // failing disk would make it.
        let part = File::open(&path).unwrap();
        let (r, _, frames) = blocks();
        let mut w = Writer::start(&part, BLOCK).unwrap();
        let mut out = Vec::new();
        let mut land = |(i, o): Landed| {
            let failed = matches!(o, Outcome::Failed(_));
            out.push((i, format!("{o:?}")));
            if failed {
                return Err(Error::new(ErrorKind::Storage, "cannot write the part"));
            }
            Ok(())
        };
        receive(&mut w, &r, 0, &frames[0], &mut land);
        receive(&mut w, &r, 1, &frames[1], &mut land);
        let e = w.finish(&mut land).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert_eq!(e.to_string(), "cannot write the part");
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].1.starts_with("Failed"), "{out:?}");
        assert_eq!(out[1], (1, "Skipped".to_string()));
    }

    #[test]
    fn the_pool_is_bounded_by_bytes_and_never_below_two() {
        assert_eq!(pool_size(1 << 20), 4);
        assert_eq!(pool_size(4 << 20), 4);
        assert_eq!(pool_size(8 << 20), 2);
        assert_eq!(pool_size(256 << 20), 2);
    }
}
