//! Checking and writing a single-connection download's blocks on a helper
//! thread, so the connection's thread goes back to receiving the next
//! block while this one's CRC-32 is computed and it is written into the
//! partial download (before, receive, check and write ran one after the
//! other and the link idled during the last two).
//!
//! Memory is bounded and does not grow with the block size: the block's
//! bytes travel in pieces of [`PIECE`] bytes, from a small pool of piece
//! buffers ([`pool_size`]) that is recycled; when every buffer is out,
//! the receiving thread waits for one to come back. The thread writes
//! each piece at its place as it comes and folds it into the block's
//! CRC-32; at the block's end ([`Writer::end`]) it compares that with
//! the frame's and the reference's, and only then is the block reported
//! held. A damaged block's pieces may already be written: harmless, it
//! is not held, so it is asked for again and written over. A write that
//! fails ends the download with a local-disk error (later pieces are not
//! written), and what was held before stays held, so the partial
//! download resumes. As an upload's part does, pieces are written in the
//! smaller pieces [`crate::pieces`] chooses, and writeback to the disk
//! is started as blocks land, so the final sync has little left to do.
//!
//! Not for reading frames (`frames`), deciding what to ask for, or the
//! record and the final sync and rename (`super::Local`). The thread
//! never touches the connection.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::frames::{Unchecked, PIECE};
use crate::sys::PageBuf;
use crate::{Error, ErrorKind, Result};

/// Piece buffers in the pool: one being received, the others queued
/// for or being checked and written.
const POOL: usize = 4;

/// Bytes written between two starts of writeback (the upload's step).
const WRITEBACK_STEP: u64 = crate::part::WRITEBACK_STEP;

/// How many piece buffers a download uses, whatever its block size.
pub(super) fn pool_size() -> usize {
    POOL
}

/// What the receiving thread hands over, in the order it was received.
enum Msg {
    /// The next piece of block `i`: `len` bytes in `buf`, at `at`.
    Piece {
        i: u64,
        at: u64,
        len: usize,
        buf: PageBuf,
    },
    /// Block `i`'s frame ended.
    End(End),
}

/// A block's frame ended: its place, its reference's CRC-32, and what
/// the frame said.
pub(super) struct End {
    pub(super) i: u64,
    pub(super) off: u64,
    pub(super) len: u64,
    /// The reference's CRC-32 of this block.
    pub(super) expect: u32,
    pub(super) frame: Unchecked,
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

/// What the thread sends back: a block's fate, or a buffer to reuse.
enum Back {
    Landed(Landed),
    Buf(PageBuf),
}

/// The helper thread and the pool of buffers.
pub(super) struct Writer {
    jobs: Option<Sender<Msg>>,
    landed: Receiver<Back>,
    thread: Option<JoinHandle<()>>,
    free: Vec<PageBuf>,
    made: usize,
    /// Blocks ended and not yet landed.
    pending: usize,
    /// Buffers handed over and not yet back.
    out: usize,
}

impl Writer {
    /// Starts the thread writing into `part` (a handle of its own),
    /// allocating each range first as `prealloc` decided for it.
    pub(super) fn start(part: &File, prealloc: crate::sys::Preallocator) -> io::Result<Writer> {
        let part = part.try_clone()?;
        let (jobs, rx) = mpsc::channel::<Msg>();
        let (tx, landed) = mpsc::channel::<Back>();
        let thread = std::thread::Builder::new()
            .name("bt-get-writer".into())
            .spawn(move || run(&part, prealloc, &rx, &tx))?;
        Ok(Writer {
            jobs: Some(jobs),
            landed,
            thread: Some(thread),
            free: Vec::new(),
            made: 0,
            pending: 0,
            out: 0,
        })
    }

    /// A buffer to receive the next piece into: a free one, a new one
    /// while the pool is not full, else the next to come back (blocks
    /// landed meanwhile are handed to `land` first).
    pub(super) fn buffer(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<PageBuf> {
        loop {
            if let Some(b) = self.free.pop() {
                return Ok(b);
            }
            // With nothing out none can come back (a buffer was lost to
            // an error): a new one, rather than wait forever.
            if self.made < pool_size() || self.out == 0 {
                self.made += 1;
                return Ok(PageBuf::new(PIECE));
            }
            self.wait_one(land)?;
        }
    }

    /// Hands the next piece of block `i` to the thread.
    pub(super) fn piece(&mut self, i: u64, buf: PageBuf, len: usize, at: u64) -> Result<()> {
        self.send(Msg::Piece { i, at, len, buf })?;
        self.out += 1;
        Ok(())
    }

    /// Says block's frame ended (every piece of it was handed over).
    pub(super) fn end(&mut self, end: End) -> Result<()> {
        self.send(Msg::End(end))?;
        self.pending += 1;
        Ok(())
    }

    fn send(&mut self, m: Msg) -> Result<()> {
        match self.jobs.as_ref().map(|j| j.send(m)) {
            Some(Ok(())) => Ok(()),
            _ => Err(thread_gone()),
        }
    }

    /// Hands what already came back to `land`, without waiting.
    pub(super) fn poll(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        while let Ok(b) = self.landed.try_recv() {
            self.back(b, land)?;
        }
        Ok(())
    }

    /// Waits until every block and buffer sent has come back, each block
    /// handed to `land`; all are collected even when `land` fails, and
    /// its first error is returned.
    pub(super) fn drain(&mut self, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        let mut first = Ok(());
        while self.pending > 0 || self.out > 0 {
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
            Ok(b) => self.back(b, land),
            Err(_) => {
                (self.pending, self.out) = (0, 0);
                Err(thread_gone())
            }
        }
    }

    fn back(&mut self, b: Back, land: &mut dyn FnMut(Landed) -> Result<()>) -> Result<()> {
        match b {
            Back::Buf(buf) => {
                self.out = self.out.saturating_sub(1);
                self.free.push(buf);
                Ok(())
            }
            Back::Landed(l) => {
                self.pending = self.pending.saturating_sub(1);
                land(l)
            }
        }
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
    prealloc: &mut crate::sys::Preallocator,
) -> io::Result<()> {
    prealloc.before_write(part, off, b.len() as u64)?;
    let started = std::time::Instant::now();
    let mut at = off;
    for piece in b.chunks(pieces.piece().max(4096)) {
        part.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    pieces.record(b.len(), started.elapsed());
    Ok(())
}

/// The thread's state between messages.
struct State {
    /// The block whose pieces are coming, and their CRC-32 so far.
    cur: Option<u64>,
    crc: crc32fast::Hasher,
    /// A write failed: nothing more is written.
    broken: bool,
    /// The failed write, to report at its block's end.
    failed: Option<io::Error>,
    pieces: crate::pieces::PieceChooser,
    prealloc: crate::sys::Preallocator,
    /// Held bytes not yet pushed to the disk.
    lo: u64,
    hi: u64,
}

/// The thread: writes each piece and folds its CRC-32, judges each block
/// at its end, starts writeback now and then; after a failed write,
/// writes nothing more.
fn run(
    part: &File,
    prealloc: crate::sys::Preallocator,
    jobs: &Receiver<Msg>,
    landed: &Sender<Back>,
) {
    let mut st = State {
        cur: None,
        crc: crc32fast::Hasher::new(),
        broken: false,
        failed: None,
        pieces: crate::pieces::PieceChooser::default(),
        prealloc,
        lo: u64::MAX,
        hi: 0,
    };
    for m in jobs.iter() {
        let back = match m {
            Msg::Piece { i, at, len, buf } => {
                st.piece(part, i, &buf[..len], at);
                Back::Buf(buf)
            }
            Msg::End(e) => Back::Landed((e.i, st.end(part, e))),
        };
        if landed.send(back).is_err() {
            return;
        }
    }
}

impl State {
    fn piece(&mut self, part: &File, i: u64, b: &[u8], at: u64) {
        if self.broken {
            return;
        }
        if self.cur != Some(i) {
            // A new block (or one begun again after a lost connection).
            self.cur = Some(i);
            self.crc = crc32fast::Hasher::new();
        }
        self.crc.update(b);
        if let Err(e) = write_pieces(part, b, at, &mut self.pieces, &mut self.prealloc) {
            self.broken = true;
            self.failed = Some(e);
        }
    }

    fn end(&mut self, part: &File, e: End) -> Outcome {
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        let whole = self.cur.take() == Some(e.i) || e.len == 0;
        if let Some(f) = self.failed.take() {
            return Outcome::Failed(f);
        }
        if self.broken {
            return Outcome::Skipped;
        }
        if let Err(why) = e.frame.check_crc(crc, e.i, e.expect) {
            return Outcome::Damaged(why);
        }
        if !whole {
            return Outcome::Damaged(format!("block {}: none of its bytes arrived", e.i));
        }
        (self.lo, self.hi) = (self.lo.min(e.off), self.hi.max(e.off + e.len));
        if self.hi - self.lo >= WRITEBACK_STEP {
            crate::sys::start_writeback(part, self.lo, self.hi - self.lo);
            (self.lo, self.hi) = (u64::MAX, 0);
        }
        Outcome::Held
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

    /// Hands the frame's pieces to a writer, as the receiving thread does.
    struct To<'a, 'b> {
        w: &'a mut Writer,
        land: &'a mut dyn FnMut(Landed) -> Result<()>,
        i: u64,
        pieces: &'b mut usize,
    }

    impl super::super::frames::Pieces for To<'_, '_> {
        fn buffer(&mut self) -> Result<PageBuf> {
            self.w.buffer(self.land)
        }
        fn piece(&mut self, buf: PageBuf, len: usize, at: u64) -> Result<()> {
            *self.pieces += 1;
            self.w.piece(self.i, buf, len, at)
        }
    }

    /// Receives frame `i` piece by piece through `w`, then ends it; how
    /// many pieces it came in.
    fn receive(
        w: &mut Writer,
        r: &Reference,
        i: u64,
        frame: &[u8],
        land: &mut dyn FnMut(Landed) -> Result<()>,
    ) -> usize {
        let (off, len) = r.range(i);
        let mut s = std::io::Cursor::new(frame);
        let mut pieces = 0;
        let mut to = To {
            w,
            land,
            i,
            pieces: &mut pieces,
        };
        let u = match super::super::frames::read_pieces(&mut s, (i, off, len), true, &mut to)
            .unwrap()
        {
            super::super::frames::Raw::Block(u) => u,
            super::super::frames::Raw::Other(h) => panic!("not a block: {h:?}"),
        };
        let expect = r.crcs[i as usize];
        w.end(End {
            i,
            off,
            len,
            expect,
            frame: u,
        })
        .unwrap();
        pieces
    }

    /// An empty part file `part` in `dir`, open for reading and writing.
    fn empty_part(dir: &std::path::Path) -> (std::path::PathBuf, File) {
        let path = dir.join("part");
        let part = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, part)
    }

    #[test]
    fn good_blocks_are_held_and_damaged_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, part) = empty_part(dir.path());
        let (r, data, frames) = blocks();
        part.set_len(r.size).unwrap();
        let mut w = Writer::start(&part, crate::sys::Preallocator::for_file(&part)).unwrap();
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
        // The damaged block's bytes may be in the part (it is not held,
        // so it is asked for again and written over); the good one is.
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..BLOCK as usize], &data[..BLOCK as usize]);
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
        let mut w = Writer::start(&part, crate::sys::Preallocator::for_file(&part)).unwrap();
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
    fn the_pool_is_a_few_pieces_whatever_the_block() {
        assert_eq!(pool_size(), 4);
        assert_eq!(PIECE, 1 << 20);
    }

    /// Blocks of 6.5 pieces (raw and compressed) go through a pool of
    /// four buffers: each is written whole and held; a damaged one, whose
    /// pieces were written, is not held, and a good copy after it is.
    #[test]
    fn blocks_larger_than_the_pool_go_in_pieces() {
        let block = (6 * PIECE + PIECE / 2) as u64;
        let data: Vec<u8> = (0..2 * block)
            .map(|x| ((x * 2_654_435_761) >> 13) as u8)
            .collect();
        let crcs: Vec<u32> = data.chunks(block as usize).map(crc32fast::hash).collect();
        let r = Reference {
            size: data.len() as u64,
            block,
            mtime_ns: 1,
            crcs,
        };
        let raw = |i: u64| {
            let b = &data[(i * block) as usize..((i + 1) * block) as usize];
            let mut f = crate::getwire::encode_data_head(i * block, block as u32).to_vec();
            f.extend_from_slice(b);
            f.extend_from_slice(&r.crcs[i as usize].to_be_bytes());
            f
        };
        let b1 = &data[block as usize..];
        let payload = crate::compress::BlockCompressor::new(1)
            .unwrap()
            .pack(b1)
            .unwrap();
        let mut packed =
            crate::getwire::encode_packed_head(block, block as u32, payload.len() as u32).to_vec();
        packed.extend_from_slice(&payload);
        packed.extend_from_slice(&r.crcs[1].to_be_bytes());
        let dir = tempfile::tempdir().unwrap();
        let (path, part) = empty_part(dir.path());
        part.set_len(r.size).unwrap();
        let mut w = Writer::start(&part, crate::sys::Preallocator::for_file(&part)).unwrap();
        let mut out = Vec::new();
        let mut land = |(i, o): Landed| {
            out.push((i, format!("{o:?}")));
            Ok(())
        };
        assert_eq!(receive(&mut w, &r, 0, &raw(0), &mut land), 7);
        let mut bad = raw(1);
        bad[13 + 5 * PIECE] ^= 1;
        assert_eq!(receive(&mut w, &r, 1, &bad, &mut land), 7);
        assert_eq!(receive(&mut w, &r, 1, &packed, &mut land), 7);
        assert!(w.made <= pool_size(), "{} buffers made", w.made);
        w.finish(&mut land).unwrap();
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], (0, "Held".to_string()));
        assert!(out[1].1.contains("block 1 arrived damaged"), "{out:?}");
        assert_eq!(out[2], (1, "Held".to_string()));
        assert!(std::fs::read(&path).unwrap() == data, "the file differs");
    }
}
