//! Sending whole trees (`bigtransfer client PATH...` with a directory or
//! several paths) over one connection: the manifest a page at a time,
//! then the data of that page's files back to back with no round trip per
//! file, the server's verdicts read as they come. An interrupted send is
//! retried; the server says per file what it holds already, so a resumed
//! send re-sends only the files (and the tail of the file) not yet
//! verified. "Held already" is verified: for a file of the same size and
//! mtime the server gives its stored whole CRC-32 and this side compares
//! its own (read locally), sending the file when they differ. See `docs/PROTOCOL.md`, "Tree sessions".
//!
//! Memory is one page of entries (at most 4096) and the walk's open
//! directories, whatever the tree's size. Not for single files (`send_file`
//! keeps doing those, with block-level repair), nor for the server side
//! (`server::tree`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{secure, shell, Control, SendOptions, Upload};
use crate::cache::{SourceStamp, SumCache, Sums};
use crate::sparse::{segments, zeros_crc, SegmentKind};
use crate::transport::Transport;
use crate::tree::wire::{self, be64};
use crate::tree::{Entry, EntryKind, PageBuilder, Walked, Walker};
use crate::{Error, ErrorKind, Result};

/// What [`send_tree`] is doing, reported to its callback.
#[derive(Debug)]
#[non_exhaustive]
pub enum TreeProgress<'a> {
    /// Connected (attempt `attempt`), encrypted or not.
    Connected {
        /// 1 for the first connection.
        attempt: u32,
        /// TLS in force.
        encrypted: bool,
    },
    /// Left out of the manifest, with the reason (a symlink pointing
    /// outside the tree, a special file, an unreadable name).
    Skipped {
        /// The local path.
        source: &'a Path,
        /// Why, in words.
        reason: &'a str,
    },
    /// The bytes of one file are being sent.
    File {
        /// Its path in the tree.
        path: &'a str,
        /// Bytes of it handed to the connection (from its resume point).
        done: u64,
        /// Its size.
        total: u64,
    },
    /// The server's verdict on one entry (stored, failed, not stored).
    Verdict {
        /// Its path in the tree.
        path: &'a str,
        /// Stored and verified.
        ok: bool,
        /// The server's words.
        text: &'a str,
    },
    /// Overall: entries listed and file bytes sent so far.
    Overall {
        /// Entries listed in the manifest so far.
        entries: u64,
        /// File bytes sent on this run (all attempts).
        sent: u64,
        /// Regular files listed so far.
        files: u64,
        /// Sum of their sizes.
        bytes: u64,
    },
    /// The attempt failed; the next starts after `delay`.
    Retrying {
        /// The attempt about to start.
        attempt: u32,
        /// The pause before it.
        delay: Duration,
        /// What went wrong.
        error: &'a Error,
    },
}

/// The result of a tree send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeOutcome {
    /// Regular files in the manifest.
    pub files: u64,
    /// Directories in the manifest.
    pub dirs: u64,
    /// Symlinks in the manifest.
    pub symlinks: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// File bytes sent (all attempts; holes are not counted).
    pub sent: u64,
    /// Files stored and verified by this run.
    pub stored: u64,
    /// Files the server held already (nothing sent): the same size and
    /// whole CRC-32 (or, from a server before verified holds, the same
    /// size and mtime).
    pub held: u64,
    /// Files sent because their content differs from the stored file's
    /// though their size and mtime are the same (a server with verified
    /// holds found them; each has a verdict in words).
    pub changed_quietly: u64,
    /// Local entries left out (with a warning each).
    pub skipped: u64,
    /// Files whose data did not verify (after the last attempt).
    pub failed: u64,
    /// Entries the server did not store (a different one holds the name).
    pub not_stored: u64,
    /// Connections made.
    pub attempts: u32,
    /// TLS in force on the last connection.
    pub encrypted: bool,
    /// Time taken.
    pub elapsed: Duration,
}

type Report<'r> = &'r mut dyn FnMut(&TreeProgress) -> Control;

/// Sends the files and directories at `paths` (each under its base name)
/// to the server of `opts` in one tree session, retrying as `opts` says.
/// `Ok` when every entry was dealt with; the outcome counts what was
/// stored, held, left out and refused (the caller decides whether a
/// refusal is a failure).
pub fn send_tree(
    paths: &[PathBuf],
    opts: &SendOptions,
    mut progress: Report,
) -> Result<TreeOutcome> {
    let started = Instant::now();
    Walker::for_roots(paths)?; // usage errors before any connection
    let first = paths
        .first()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "no path to send"))?;
    let mut noop = |_: &super::Progress| Control::Continue;
    let mut up = Upload::new(first, String::new(), opts, &mut noop, started);
    let mut sent = 0;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut run = Run::new(&mut progress, sent, opts.limit_rate);
        let res = run.attempt(&mut up, paths, attempts);
        sent = run.sent;
        let mut out = run.out;
        out.sent = sent;
        out.attempts = attempts;
        out.elapsed = started.elapsed();
        let err = match res {
            Ok(()) if out.failed == 0 || attempts > opts.retries => return Ok(out),
            Ok(()) => Error::new(
                ErrorKind::CrcMismatch,
                format!("{} files did not verify", out.failed),
            ),
            Err(e) if !retryable(e.kind()) || attempts > opts.retries => return Err(e),
            Err(e) => e,
        };
        let delay = up.delay;
        let p = TreeProgress::Retrying {
            attempt: attempts + 1,
            delay,
            error: &err,
        };
        if let Control::Cancel = progress(&p) {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
        }
        std::thread::sleep(delay);
        up.delay = (delay * 2).min(opts.backoff_max);
    }
}

fn retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionLost
            | ErrorKind::TimedOut
            | ErrorKind::Unreachable
            | ErrorKind::CrcMismatch
    )
}

/// Bytes written to the connection are gathered up to this many before a
/// write: small files go out many to one TLS record and one syscall.
const OUT_BUFFER: usize = 256 << 10;

/// One attempt's state.
struct Run<'p, 'r> {
    progress: &'p mut Report<'r>,
    out: TreeOutcome,
    sent: u64,
    entries: u64,
    buf: Vec<u8>,
    reader: wire::FrameReader,
    pending: Vec<u8>,
    /// Bytes written on this connection, and since when (for pacing).
    written: u64,
    started: Instant,
    limit_rate: Option<u64>,
    /// The token that answers a server's challenge (see `tree_token`).
    token: Option<crate::auth::Token>,
    /// The client's checksum cache: the whole CRC-32 of large files sent
    /// or checked, so a re-send does not read them again.
    cache: Option<SumCache>,
    /// Per-directory CRC-32 records (in the same cache directory): what
    /// makes a re-send open no unchanged file.
    sums: Option<super::tree_sums::LocalSums>,
}

/// A file of the page being sent, with where it is.
struct PageFile {
    entry: Entry,
    source: PathBuf,
    /// What the walk's `lstat` saw (the records' key).
    stamp: SourceStamp,
}

impl<'p, 'r> Run<'p, 'r> {
    fn new(progress: &'p mut Report<'r>, sent: u64, limit_rate: Option<u64>) -> Self {
        Run {
            written: 0,
            started: Instant::now(),
            limit_rate,
            token: None,
            cache: None,
            sums: None,
            progress,
            out: TreeOutcome::default(),
            sent,
            entries: 0,
            buf: Vec::new(),
            reader: wire::FrameReader::new(),
            pending: Vec::with_capacity(OUT_BUFFER + wire::MAX_DATA + 16),
        }
    }

    fn ask(&mut self, p: &TreeProgress) -> Result<()> {
        match (self.progress)(p) {
            Control::Continue => Ok(()),
            Control::Cancel => Err(Error::new(ErrorKind::Cancelled, "cancelled")),
        }
    }

    fn attempt(&mut self, up: &mut Upload, paths: &[PathBuf], attempt: u32) -> Result<()> {
        self.token = up.opts.token.clone();
        self.cache = up.opts.cache_dir.as_ref().map(SumCache::new);
        self.sums = self.cache.clone().map(super::tree_sums::LocalSums::new);
        let res = self.pages(up, paths, attempt);
        if let Some(sums) = self.sums.as_mut() {
            sums.flush();
        }
        res
    }

    /// The attempt's pages, then its end.
    fn pages(&mut self, up: &mut Upload, paths: &[PathBuf], attempt: u32) -> Result<()> {
        let mut stream = open(up)?;
        let encrypted = stream.is_encrypted();
        self.out.encrypted = encrypted;
        self.ask(&TreeProgress::Connected { attempt, encrypted })?;
        let mut walk = Walker::for_roots(paths)?.into_iter().flatten();
        let mut carry: Option<Walked> = None;
        let mut checks_expected = false;
        loop {
            let (page, files) = self.next_page(&mut walk, &mut carry)?;
            if page.is_empty() {
                break;
            }
            self.frame(stream.as_mut(), wire::PAGE, &page.finish())?;
            self.flush(stream.as_mut())?;
            let early = self.early_crcs(&files, checks_expected);
            let state = self.await_state(stream.as_mut(), files.len())?;
            let checks = state.iter().filter(|s| s.0 == wire::CHECK_CRC).count();
            checks_expected = checks * 2 > state.len();
            self.send_files(stream.as_mut(), &files, &state, &early)?;
        }
        self.frame(stream.as_mut(), wire::END, &[])?;
        self.flush(stream.as_mut())?;
        loop {
            match self.read(stream.as_mut())? {
                wire::FINISHED => return Ok(()),
                wire::VERDICT => self.on_verdict()?,
                other => return Err(unexpected(other)),
            }
        }
    }

    /// The next page of the manifest and its files; `carry` holds the
    /// entry that did not fit the last one.
    fn next_page(
        &mut self,
        walk: &mut dyn Iterator<Item = Walked>,
        carry: &mut Option<Walked>,
    ) -> Result<(PageBuilder, Vec<PageFile>)> {
        let mut page = PageBuilder::new();
        let mut files = Vec::new();
        while let Some(w) = carry.take().or_else(|| walk.next()) {
            match w {
                Walked::Skipped { source, reason } => {
                    self.out.skipped += 1;
                    self.ask(&TreeProgress::Skipped {
                        source: &source,
                        reason: &reason,
                    })?;
                }
                Walked::Entry {
                    entry,
                    source,
                    stamp,
                } => {
                    if !page.try_push(&entry) {
                        *carry = Some(Walked::Entry {
                            entry,
                            source,
                            stamp,
                        });
                        break;
                    }
                    self.entries += 1;
                    match &entry.kind {
                        EntryKind::File { size, .. } => {
                            self.out.files += 1;
                            self.out.bytes += size;
                            files.push(PageFile {
                                entry,
                                source,
                                stamp,
                            });
                        }
                        EntryKind::Dir { .. } => self.out.dirs += 1,
                        EntryKind::Symlink { .. } => self.out.symlinks += 1,
                    }
                }
            }
        }
        Ok((page, files))
    }

    /// Verdicts until the state of the page just sent: `(status, offset,
    /// crc32)` per file (`crc32` 0 from a server without verified holds).
    fn await_state(
        &mut self,
        stream: &mut dyn Transport,
        files: usize,
    ) -> Result<Vec<(u8, u64, u32)>> {
        loop {
            match self.read(stream)? {
                wire::STATE => break,
                wire::VERDICT => self.on_verdict()?,
                other => return Err(unexpected(other)),
            }
        }
        // The record's length says whether the server verifies holds (a
        // server from before them answers 9 bytes a file).
        let rec = if self.buf.len() == files * wire::STATE_RECORD {
            wire::STATE_RECORD
        } else {
            wire::STATE_RECORD_CRC
        };
        let state = self
            .buf
            .chunks(rec)
            .map(|c| {
                let crc = wire::be32(c, 9).unwrap_or(0);
                (c[0], be64(c, 1).unwrap_or(u64::MAX), crc)
            })
            .collect();
        Ok(state)
    }

    fn send_files(
        &mut self,
        stream: &mut dyn Transport,
        files: &[PageFile],
        state: &[(u8, u64, u32)],
        early: &[Option<u32>],
    ) -> Result<()> {
        if state.len() != files.len() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "the server answered for {} files of a page of {}",
                    state.len(),
                    files.len()
                ),
            ));
        }
        for (i, (f, &(status, offset, crc))) in files.iter().zip(state).enumerate() {
            match status {
                wire::HELD => self.out.held += 1,
                wire::SEND => self.send_one(stream, i as u32, f, offset)?,
                wire::CHECK_CRC if self.crc_of(f, early.get(i))? == crc => self.out.held += 1,
                wire::CHECK_CRC => {
                    self.out.changed_quietly += 1;
                    self.send_one(stream, i as u32, f, offset)?
                }
                _ => {} // refused: its verdict came before the state
            }
        }
        let p = TreeProgress::Overall {
            entries: self.entries,
            sent: self.sent,
            files: self.out.files,
            bytes: self.out.bytes,
        };
        self.ask(&p)
    }

    /// The CRC-32s of the page's files known before the server's state
    /// comes: from the records (no file opened), and on a re-send (the
    /// last page was mostly checks) the small files' others hashed while
    /// the server looks at its own.
    fn early_crcs(&mut self, files: &[PageFile], re_send: bool) -> Vec<Option<u32>> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let sums = self.sums.as_mut();
            let mut crc = sums.and_then(|s| s.get(&f.source, &f.stamp));
            if crc.is_none() && re_send {
                crc = early_crc(f);
                if let (Some(c), Some(s)) = (crc, self.sums.as_mut()) {
                    s.put(&f.source, f.stamp, c);
                }
            }
            out.push(crc);
        }
        out
    }

    /// The whole CRC-32 of `f`: known early, cached, or read now.
    fn crc_of(&mut self, f: &PageFile, early: Option<&Option<u32>>) -> Result<u32> {
        if let Some(crc) = early.copied().flatten() {
            return Ok(crc);
        }
        let crc = local_crc(f, self.cache.as_ref())?;
        if let Some(s) = self.sums.as_mut() {
            s.put(&f.source, f.stamp, crc);
        }
        Ok(crc)
    }

    /// One file from `offset`: its data (holes as hole frames), then the
    /// CRC-32 of all of it (read locally from 0: never sent twice).
    fn send_one(
        &mut self,
        stream: &mut dyn Transport,
        idx: u32,
        f: &PageFile,
        offset: u64,
    ) -> Result<()> {
        let EntryKind::File { size, sparse, .. } = f.entry.kind else {
            return Ok(());
        };
        let path = f.entry.path.as_str();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&f.source)
            .map_err(|e| {
                Error::io(
                    ErrorKind::SourceFile,
                    format!("cannot read {}", f.source.display()),
                    e,
                )
            })?;
        let mut begin = idx.to_be_bytes().to_vec();
        begin.extend_from_slice(&offset.to_be_bytes());
        self.frame(stream, wire::BEGIN, &begin)?;
        let mut h = crc32fast::Hasher::new();
        // Taken before reading: a change while reading moves the ctime,
        // so the CRC-32 remembered below is never used for it.
        let stamp = file.metadata().map(|m| SourceStamp::of(&m)).ok();
        let len = stamp.map(|s| s.size.min(size)).unwrap_or(0);
        let segs: Vec<(SegmentKind, u64, u64)> = if sparse {
            segments(&file, len)
                .map(|s| s.map(|s| (s.kind, s.offset, s.len)))
                .collect::<io::Result<_>>()
                .map_err(|e| {
                    Error::io(
                        ErrorKind::SourceFile,
                        format!("cannot map {}", f.source.display()),
                        e,
                    )
                })?
        } else {
            vec![(SegmentKind::Data, 0, len)]
        };
        for (kind, start, n) in segs {
            let end = start + n;
            if kind == SegmentKind::Hole {
                h.combine(&zeros_crc(n));
                if end > offset {
                    let hole = end - start.max(offset);
                    self.frame(stream, wire::HOLE, &hole.to_be_bytes())?;
                }
                continue;
            }
            self.send_data(stream, &file, &mut h, (start, end), offset, (path, size))?;
        }
        let whole = h.finalize();
        if let Some(stamp) = stamp.filter(|s| s.size == len) {
            remember(self.cache.as_ref(), &f.source, stamp, whole);
            if let Some(s) = self.sums.as_mut() {
                s.put(&f.source, stamp, whole);
            }
        }
        self.frame(stream, wire::CHECK, &whole.to_be_bytes())?;
        Ok(())
    }

    fn send_data(
        &mut self,
        stream: &mut dyn Transport,
        file: &File,
        h: &mut crc32fast::Hasher,
        (start, end): (u64, u64),
        offset: u64,
        (path, size): (&str, u64),
    ) -> Result<()> {
        let mut chunk = vec![0u8; wire::MAX_DATA.min((end - start) as usize)];
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(chunk.len());
            file.read_exact_at(&mut chunk[..n], at)
                .map_err(|e| Error::io(ErrorKind::SourceFile, format!("cannot read {path}"), e))?;
            h.update(&chunk[..n]);
            if at + n as u64 > offset {
                let from = offset.saturating_sub(at) as usize;
                self.frame(stream, wire::DATA, &chunk[from..n])?;
                self.sent += (n - from) as u64;
            }
            at += n as u64;
            if n == wire::MAX_DATA {
                let p = TreeProgress::File {
                    path,
                    done: at,
                    total: size,
                };
                self.ask(&p)?;
            }
        }
        Ok(())
    }

    /// Queues a frame; writes the queue when it is full (then takes any
    /// verdicts already waiting, so the server never blocks on them).
    fn frame(&mut self, stream: &mut dyn Transport, tag: u8, payload: &[u8]) -> Result<()> {
        wire::write_frame(&mut self.pending, tag, payload).map_err(|e| cut(e, "queueing"))?;
        if self.pending.len() >= OUT_BUFFER {
            self.flush(stream)?;
            while self.reader.has_frame() || readable(stream) {
                match self.read(stream)? {
                    wire::VERDICT => self.on_verdict()?,
                    other => return Err(unexpected(other)),
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self, stream: &mut dyn Transport) -> Result<()> {
        stream
            .write_all(&self.pending)
            .map_err(|e| cut(e, "sending"))?;
        stream.flush().map_err(|e| cut(e, "sending"))?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        self.pace();
        Ok(())
    }

    /// Under `--limit-rate`, waits until what was written fits the rate.
    fn pace(&self) {
        let Some(rate) = self.limit_rate.filter(|&r| r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(self.written as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    /// The next frame from the server (a fault becomes an error).
    fn read(&mut self, stream: &mut dyn Transport) -> Result<u8> {
        let mut tag = self.reader.read_frame(stream, &mut self.buf)?;
        if tag == wire::CHALLENGE {
            let header = super::tree::tree_header();
            super::tree_token::answer(self.token.as_ref(), stream, &self.buf, &header[4..])?;
            tag = self.reader.read_frame(stream, &mut self.buf)?;
        }
        if tag == wire::FAULT {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            let kind = if text.starts_with("refused") || text.starts_with("authentication") {
                ErrorKind::Refused
            } else {
                ErrorKind::Protocol
            };
            return Err(Error::new(kind, format!("the server: {text}")));
        }
        Ok(tag)
    }

    fn on_verdict(&mut self) -> Result<()> {
        let (status, path, text) = wire::parse_verdict(&self.buf)?;
        match status {
            wire::OK => self.out.stored += 1,
            wire::FAILED => self.out.failed += 1,
            wire::SKIPPED => self.out.skipped += 1,
            _ => self.out.not_stored += 1,
        }
        let p = TreeProgress::Verdict {
            path: &path,
            ok: status == wire::OK,
            text: &text,
        };
        self.ask(&p)
    }
}

/// The CRC-32 of a small file of the page, hashed before the server's
/// state comes (None for a large one, which the cache mostly knows, or an
/// unreadable one, which is dealt with when its state is known).
fn early_crc(f: &PageFile) -> Option<u32> {
    match f.entry.kind {
        EntryKind::File { size, .. } if size < CACHE_MIN => local_crc(f, None).ok(),
        _ => None,
    }
}

/// Files of at least this size have their whole CRC-32 kept in the
/// client's checksum cache (a small file costs less to read than its
/// entry).
const CACHE_MIN: u64 = 1 << 20;

/// Keeps `whole` as the CRC-32 of this version of `source` (large files
/// only; the blocks an upload cached for it are kept).
fn remember(cache: Option<&SumCache>, source: &Path, stamp: SourceStamp, whole: u32) {
    let Some(cache) = cache.filter(|_| stamp.size >= CACHE_MIN) else {
        return;
    };
    let mut sums = cache.load(source, stamp).unwrap_or(Sums {
        block: crate::v2::block_size_for(stamp.size),
        blocks: Vec::new(),
        whole: None,
    });
    if sums.whole != Some(whole) {
        sums.whole = Some(whole);
        cache.store(source, stamp, &sums);
    }
}

/// The whole CRC-32 of a file of the tree, from the checksum cache or
/// read here (no network): what the server's [`wire::CHECK_CRC`] is
/// compared with. Holes read as zeros.
fn local_crc(f: &PageFile, cache: Option<&SumCache>) -> Result<u32> {
    let unreadable = |e| {
        Error::io(
            ErrorKind::SourceFile,
            format!("cannot read {}", f.source.display()),
            e,
        )
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&f.source)
        .map_err(unreadable)?;
    let stamp = file
        .metadata()
        .map(|m| SourceStamp::of(&m))
        .map_err(unreadable)?;
    let large = cache.filter(|_| stamp.size >= CACHE_MIN);
    if let Some(whole) = large.and_then(|c| c.load(&f.source, stamp)?.whole) {
        return Ok(whole);
    }
    let mut buf = vec![0u8; (stamp.size as usize).clamp(4096, 1 << 20)];
    let mut h = crc32fast::Hasher::new();
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                let whole = h.finalize();
                remember(cache, &f.source, stamp, whole);
                return Ok(whole);
            }
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
}

/// Connects (TLS as for a single upload) and opens a tree session.
fn open(up: &mut Upload) -> Result<Box<dyn Transport>> {
    let words = OldServer {
        closed: "the server closed a tree session: it is a legacy server or an older bigtransfer; send the files one by one",
        legacy: "the server does not speak tree sessions (a legacy server); send the files one by one",
    };
    open_session(up, &tree_header(), &words)
}

/// What to tell the user when the server does not take a tree request:
/// it closed on the header (an older bigtransfer), or answered as a
/// legacy server.
pub(super) struct OldServer {
    pub(super) closed: &'static str,
    pub(super) legacy: &'static str,
}

/// Connects (TLS as for any transfer), sends the tree request `header`
/// (a tree session's or a tree download's) and reads the server's
/// `MAGIC`: the connection, ready for the session's frames.
pub(super) fn open_session(
    up: &mut Upload,
    header: &[u8],
    words: &OldServer,
) -> Result<Box<dyn Transport>> {
    let (sock, _addr) = shell::connect(up)?;
    up.ever_connected = true;
    shell::tune(&sock);
    let reconnect = |up: &Upload| -> Result<std::net::TcpStream> {
        let (s, _) = shell::connect(up)?;
        shell::tune(&s);
        Ok(s)
    };
    let mut stream = secure::open(up, sock, &reconnect)?;
    let t = Some(up.opts.io_timeout);
    let _ = stream.set_write_timeout(t);
    let _ = stream.set_read_timeout(Some(up.opts.handshake_timeout));
    stream
        .write_all(header)
        .map_err(|e| cut(e, "sending the header"))?;
    let mut reply = [0u8; 8];
    stream
        .read_exact(&mut reply)
        .map_err(|e| Error::io(ErrorKind::Refused, words.closed, e))?;
    if reply != crate::v2::MAGIC {
        return Err(Error::new(ErrorKind::Refused, words.legacy));
    }
    let _ = stream.set_read_timeout(t);
    Ok(stream)
}

/// The header of a tree session. The empty filename makes a server that
/// does not know `"op"` refuse it in words, storing nothing. `"held":
/// "crc"` asks for verified holds ([`wire::CHECK_CRC`]).
pub fn tree_header() -> Vec<u8> {
    let json = br#"{"filename": "", "filesize": 0, "crc32": 0, "bt": {"v": 2, "op": "tree", "block": 1048576, "held": "crc"}}"#;
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json);
    out
}

fn readable(stream: &dyn Transport) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let fd = stream.fd();
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

fn cut(e: io::Error, during: &str) -> Error {
    Error::io(
        ErrorKind::ConnectionLost,
        format!("the connection was cut while {during}"),
        e,
    )
}

fn unexpected(tag: u8) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("unexpected frame {tag:#04x} from the server in a tree session"),
    )
}
