//! Downloading whole trees (`bigtransfer get REMOTE... -o DIR` with a
//! directory, or several remotes) over one connection per remote: the
//! server's manifest a page at a time, every entry checked exactly as the
//! server checks a tree sent to it ([`ManifestValidator`]: no `..`, no
//! absolute path, no control characters, no collisions, no name that is a
//! file in one entry and a directory in another, symlinks only relative and
//! inside the tree), and nothing outside `DIR/BASE` ever touched: every
//! directory on the way is opened with `O_NOFOLLOW`, symlinks are made as
//! symlinks and never followed.
//!
//! Each file not already here (same size and mtime) is downloaded as a
//! single-file get is ([`super::get`]'s part and record beside it, blocks
//! verified against the server's CRC-32s, renamed into place only when
//! whole), so an interrupted download resumes block by block, and a file
//! already here is not asked for again. Modes (never setuid/setgid) and
//! mtimes are applied, directories' once their contents are in; blocks of
//! zeros of a new file are not written (its holes stay holes).
//!
//! A file over what the server sends among the tree's blocks (its
//! [`wire::ALONE`] verdict) is fetched alone after the tree's session
//! (`alone`), with the same guarantees.
//!
//! A file here that differs from the server's is not replaced unless
//! `force`. Not for single files named alone (`get_file`), nor the
//! server's side (`server::tree_get`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::get::{part_paths, Local};
use super::{Control, SendOptions, Upload};
use crate::getwire::{self, Reference, TAG_DATA, TAG_REFERENCE};
use crate::transport::Transport;
use crate::tree::fetch::{self, BLOCK, NEXT, REQUEST};
use crate::tree::wire::{self, be64, FrameReader};
use crate::tree::{EntryKind, RelPath};
use crate::{Error, ErrorKind, Result};

/// What happened to one file (or symlink) of a tree download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Downloaded and verified against the server's CRC-32s.
    Fetched,
    /// Here already (same size and mtime): nothing asked for.
    Held,
    /// Not downloaded: the server could not serve it, or it changed there.
    Failed,
    /// Something different is here under that name; it was not replaced.
    NotReplaced,
}

/// What [`get_tree`] is doing, reported to its callback.
#[derive(Debug)]
#[non_exhaustive]
pub enum TreeGetProgress<'a> {
    /// Connected for `remote` (attempt `attempt`), encrypted or not.
    Connected {
        /// The remote path asked for.
        remote: &'a str,
        /// 1 for the first connection.
        attempt: u32,
        /// TLS in force.
        encrypted: bool,
    },
    /// Bytes of one file are arriving.
    File {
        /// Its path (starting with the remote's base name).
        path: &'a str,
        /// Bytes of it here and verified.
        done: u64,
        /// Its size.
        total: u64,
    },
    /// One file or symlink is done with.
    Done {
        /// Its path.
        path: &'a str,
        /// What happened.
        status: FileStatus,
        /// Why, in words.
        text: &'a str,
    },
    /// Overall, after each file.
    Overall {
        /// Files done with (any status).
        files_done: u64,
        /// Files in the manifests read so far.
        files_listed: u64,
        /// Bytes of the files done with.
        bytes_done: u64,
        /// Bytes of the files listed so far.
        bytes_listed: u64,
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

/// The result of a tree download.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeGetOutcome {
    /// Regular files in the manifests.
    pub files: u64,
    /// Directories in the manifests.
    pub dirs: u64,
    /// Symlinks in the manifests.
    pub symlinks: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// Files downloaded and verified by this run.
    pub fetched: u64,
    /// Files (and symlinks) here already.
    pub held: u64,
    /// Files the server could not serve (after the last attempt).
    pub failed: u64,
    /// Entries not replaced (something different is here).
    pub not_replaced: u64,
    /// File bytes received (all attempts).
    pub received: u64,
    /// Connections made.
    pub attempts: u32,
    /// TLS in force on the last connection.
    pub encrypted: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// Whole-file requests sent ahead of the answers: enough that the server
/// never waits for the client between small files.
const WINDOW: usize = 64;

fn cut(e: std::io::Error) -> Error {
    Error::io(ErrorKind::ConnectionLost, "the tree get was cut", e)
}

type Report<'r> = dyn FnMut(&TreeGetProgress) -> Control + 'r;

/// Downloads each of `remotes` (a directory or a file of the server's
/// storage directory, `a/b` allowed) into `dest` (made if missing) under
/// its base name, retrying as `opts` allows; a run after an interrupted
/// one fetches only what is not here yet. Errors: a refused remote or
/// manifest ([`ErrorKind::Refused`], in words), the connection, the local
/// disk ([`ErrorKind::Storage`]); per-file failures are counted in the
/// outcome instead.
pub fn get_tree(
    remotes: &[String],
    dest: &Path,
    opts: &SendOptions,
    force: bool,
    progress: &mut Report<'_>,
) -> Result<TreeGetOutcome> {
    let started = Instant::now();
    let rels = check_remotes(remotes)?;
    fs::create_dir_all(dest).map_err(|e| {
        Error::io(
            ErrorKind::Storage,
            format!("cannot make {}", dest.display()),
            e,
        )
    })?;
    let mut noop = |_: &super::Progress| Control::Continue;
    let mut up = Upload::new(dest, String::new(), opts, &mut noop, started);
    let mut received = 0;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut out = TreeGetOutcome::default();
        let mut counts = (0u64, 0u64);
        let res = rels.iter().try_for_each(|rel| {
            let mut s = Session::open(&mut up, opts, rel, dest, force, &mut out, progress)?;
            s.done_so_far = counts;
            s.out.received = received;
            let r = s.run(attempts);
            received = s.out.received;
            counts = s.done_so_far;
            r
        });
        out.received = received;
        out.attempts = attempts;
        out.elapsed = started.elapsed();
        let err = match res {
            Ok(()) => return Ok(out),
            Err(e) if !retryable(e.kind()) || attempts > opts.retries => return Err(e),
            Err(e) => e,
        };
        let delay = up.delay;
        let p = TreeGetProgress::Retrying {
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

/// The remotes as tree paths, refusing two with the same base name (they
/// would land on each other here).
fn check_remotes(remotes: &[String]) -> Result<Vec<RelPath>> {
    let mut rels = Vec::with_capacity(remotes.len());
    for r in remotes {
        let rel = RelPath::from_wire(r.trim_end_matches('/'))
            .map_err(|e| Error::new(ErrorKind::Refused, format!("cannot get \"{r}\": {e}")))?;
        if rels
            .iter()
            .any(|o: &RelPath| o.file_name() == rel.file_name())
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "two of the remotes given would both land as \"{}\"; get them separately into different directories",
                    rel.file_name()
                ),
            ));
        }
        rels.push(rel);
    }
    if rels.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "no remote to get"));
    }
    Ok(rels)
}

fn retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionLost | ErrorKind::TimedOut | ErrorKind::Unreachable
    )
}

/// One remote's session over one connection.
struct Session<'a, 'r> {
    stream: Box<dyn Transport>,
    remote: String,
    /// The token that answers a server's challenge (see `tree_token`).
    token: Option<crate::auth::Token>,
    reader: FrameReader,
    buf: Vec<u8>,
    dest: Dest,
    out: &'a mut TreeGetOutcome,
    progress: &'a mut Report<'r>,
    /// Files and their bytes done with, all remotes of this attempt.
    done_so_far: (u64, u64),
    /// `--limit-rate`, and when this connection started and what it got.
    limit_rate: Option<u64>,
    paced: (Instant, u64),
    /// Files the server said to fetch alone ([`wire::ALONE`]), fetched
    /// once the tree's session is over; and the options to fetch them.
    alone: Vec<Todo>,
    opts: &'a SendOptions,
}

impl<'a, 'r> Session<'a, 'r> {
    fn open(
        up: &mut Upload,
        opts: &'a SendOptions,
        rel: &RelPath,
        dir: &Path,
        force: bool,
        out: &'a mut TreeGetOutcome,
        progress: &'a mut Report<'r>,
    ) -> Result<Session<'a, 'r>> {
        let dest = Dest::new(dir, rel.file_name(), force)?;
        let stream = connect(up, rel.as_str())?;
        out.encrypted = stream.is_encrypted();
        Ok(Session {
            stream,
            remote: rel.as_str().to_owned(),
            token: up.opts.token.clone(),
            reader: FrameReader::new(),
            buf: Vec::new(),
            dest,
            out,
            progress,
            done_so_far: (0, 0),
            limit_rate: up.opts.limit_rate.filter(|&r| r > 0),
            paced: (Instant::now(), 0),
            alone: Vec::new(),
            opts,
        })
    }

    fn ask(&mut self, p: &TreeGetProgress) -> Result<()> {
        match (self.progress)(p) {
            Control::Continue => Ok(()),
            Control::Cancel => Err(Error::new(
                ErrorKind::Cancelled,
                "cancelled; what is here is kept for a resume",
            )),
        }
    }

    fn run(&mut self, attempt: u32) -> Result<()> {
        let (remote, encrypted) = (self.remote.clone(), self.out.encrypted);
        self.ask(&TreeGetProgress::Connected {
            remote: &remote,
            attempt,
            encrypted,
        })?;
        loop {
            match self.read()? {
                wire::PAGE => {
                    self.page()?;
                    self.send(NEXT, &[])?;
                }
                wire::END => {
                    let _ = self.send(wire::END, &[]);
                    for t in std::mem::take(&mut self.alone) {
                        self.fetch_alone(t)?;
                    }
                    self.dest.apply_closed(true)?;
                    return Ok(());
                }
                other => return Err(self.unexpected(other, "a manifest page")),
            }
        }
    }

    /// The next frame; a token challenge (the server's first frame, on a
    /// server with a token) is answered on the way.
    fn read(&mut self) -> Result<u8> {
        let tag = self.reader.read_frame(&mut self.stream, &mut self.buf)?;
        if tag != wire::CHALLENGE {
            return Ok(tag);
        }
        let header = fetch::encode_header(&self.remote)?;
        let token = self.token.as_ref();
        super::tree_token::answer(token, self.stream.as_mut(), &self.buf, &header[4..])?;
        self.reader.read_frame(&mut self.stream, &mut self.buf)
    }

    fn send(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        wire::write_frame(&mut self.stream, tag, payload)
            .map_err(|e| Error::io(ErrorKind::ConnectionLost, "the tree get was cut", e))
    }

    /// A frame other than the one due: the server's fault in words, or a
    /// protocol error.
    fn unexpected(&self, tag: u8, due: &str) -> Error {
        if tag == wire::FAULT {
            let words = String::from_utf8_lossy(&self.buf);
            return Error::new(
                ErrorKind::Refused,
                format!("server: {}", crate::text::printable(&words)),
            );
        }
        Error::new(
            ErrorKind::Protocol,
            format!("unexpected frame {tag:#04x} from the server where {due} was due"),
        )
    }

    /// One page: entries made or looked up, then its files downloaded.
    fn page(&mut self) -> Result<()> {
        let bytes = std::mem::take(&mut self.buf);
        let steps = self.dest.page(&bytes)?;
        let mut todo = Vec::new();
        for (entry, step) in steps {
            match &entry.kind {
                EntryKind::File { size, .. } => {
                    self.out.files += 1;
                    self.out.bytes += size;
                }
                EntryKind::Dir { .. } => self.out.dirs += 1,
                EntryKind::Symlink { .. } => self.out.symlinks += 1,
            }
            // Symlinks are counted in the outcome, not as files done.
            let size = match entry.kind {
                EntryKind::File { size, .. } => Some(size),
                _ => None,
            };
            match step {
                Step::Made => {}
                Step::Held(p) => self.done(&p, size, FileStatus::Held, "here already")?,
                Step::NotReplaced(p, why) => self.done(&p, size, FileStatus::NotReplaced, &why)?,
                Step::Fetch(t) => todo.push(t),
            }
        }
        self.fetch_all(todo)?;
        self.dest.apply_closed(false)
    }

    /// One entry done with; `size` is the size of a file (`None`: a
    /// symlink, not counted among the files).
    fn done(
        &mut self,
        path: &RelPath,
        size: Option<u64>,
        status: FileStatus,
        text: &str,
    ) -> Result<()> {
        match status {
            FileStatus::Fetched => self.out.fetched += 1,
            FileStatus::Held => self.out.held += 1,
            FileStatus::Failed => self.out.failed += 1,
            FileStatus::NotReplaced => self.out.not_replaced += 1,
        }
        if let Some(size) = size {
            self.done_so_far.0 += 1;
            self.done_so_far.1 += size;
        }
        self.ask(&TreeGetProgress::Done {
            path: path.as_str(),
            status,
            text,
        })?;
        let (files_done, bytes_done) = self.done_so_far;
        let (files_listed, bytes_listed) = (self.out.files, self.out.bytes);
        self.ask(&TreeGetProgress::Overall {
            files_done,
            files_listed,
            bytes_done,
            bytes_listed,
        })
    }

    /// The files of a page: those with nothing here are asked for whole,
    /// [`WINDOW`] requests ahead (no round trip per file); those with a
    /// partial download here, and any that arrived damaged, then one by one
    /// with only their missing blocks asked for.
    fn fetch_all(&mut self, todo: Vec<Todo>) -> Result<()> {
        let mut fresh = std::collections::VecDeque::new();
        let mut resume = Vec::new();
        for t in todo {
            let target = self.dest.dir.join(t.path.to_path_buf());
            if part_paths(&target).1.exists() {
                resume.push(t);
            } else {
                fresh.push_back(t);
            }
        }
        let mut asked = std::collections::VecDeque::new();
        while !fresh.is_empty() || !asked.is_empty() {
            if asked.len() <= WINDOW / 2 && !fresh.is_empty() {
                let mut batch = Vec::new();
                while asked.len() < WINDOW {
                    let Some(t) = fresh.pop_front() else { break };
                    let req = fetch::encode_request(t.index, true);
                    wire::write_frame(&mut batch, REQUEST, &req).map_err(cut)?;
                    asked.push_back(t);
                }
                self.stream.write_all(&batch).map_err(cut)?;
            }
            let Some(t) = asked.pop_front() else { break };
            if let Some(t) = self.take_whole(t)? {
                resume.push(t);
            }
        }
        for t in resume {
            self.fetch(t)?;
        }
        Ok(())
    }

    /// The server's answer to a request for a whole file: the file put in
    /// place, or a failure counted; `Some` when blocks arrived damaged (it
    /// is asked for again by [`Self::fetch`]).
    fn take_whole(&mut self, t: Todo) -> Result<Option<Todo>> {
        let Some(r) = self.reference(&t)? else {
            self.not_sent(t)?;
            return Ok(None);
        };
        if r.size != t.size {
            self.changed(&t, &r, true)?;
            return Ok(None);
        }
        if r.count() <= 1 {
            return self.take_small(t, r);
        }
        let target = self.dest.dir.join(t.path.to_path_buf());
        let mut local = Local::new(&target, true)?;
        local.adopt(r)?;
        for i in local.missing() {
            if !self.receive(&mut local, &t, i, true)? {
                self.failed(&t)?;
                return Ok(None);
            }
        }
        if !local.missing().is_empty() {
            return Ok(Some(t));
        }
        self.install(local, &t)?;
        Ok(None)
    }

    /// A file of at most one block: into memory, checked, written beside
    /// its name and renamed into place. Not synced one by one (as a tree
    /// send's server does not); no record (a cut one is simply fetched
    /// again).
    fn take_small(&mut self, t: Todo, r: Reference) -> Result<Option<Todo>> {
        let mut data = Vec::new();
        if r.count() == 1 {
            match self.read()? {
                TAG_DATA => {}
                wire::VERDICT => {
                    self.failed(&t)?;
                    return Ok(None);
                }
                other => return Err(self.unexpected(other, "file data")),
            }
            let (off, len) = r.range(0);
            let p = &self.buf;
            if p.len() as u64 != 12 + len || be64(p, 0) != Some(off) {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("the server sent other data where \"{}\" was due", t.path),
                ));
            }
            data.extend_from_slice(&p[8..p.len() - 4]);
            self.out.received += len;
            self.pace(len);
            if crc32fast::hash(&data) != r.crcs[0] {
                return Ok(Some(t));
            }
        }
        let target = self.dest.dir.join(t.path.to_path_buf());
        let (part, _) = part_paths(&target);
        let err = |e| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot write {}", part.display()),
                e,
            )
        };
        let f = fs::File::create(&part).map_err(err)?;
        if data.iter().any(|&b| b != 0) {
            f.write_all_at(&data, 0).map_err(err)?;
        }
        f.set_len(r.size).map_err(err)?;
        drop(f);
        fs::rename(&part, &target).map_err(|e| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot rename into {}", target.display()),
                e,
            )
        })?;
        self.dest.set_attrs(&t)?;
        let text = format!("downloaded and verified (CRC-32 {:08x})", r.whole());
        self.done(&t.path, Some(t.size), FileStatus::Fetched, &text)?;
        Ok(None)
    }

    /// The file's reference, or `None` when the server sent its verdict
    /// instead (the verdict is in the buffer).
    fn reference(&mut self, t: &Todo) -> Result<Option<Reference>> {
        let r = match self.read()? {
            TAG_REFERENCE => Reference::decode(&self.buf)?,
            wire::VERDICT => return Ok(None),
            other => return Err(self.unexpected(other, "a file's reference")),
        };
        if r.block > BLOCK {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "the server's reference of \"{}\" is in blocks of {}, over {BLOCK}",
                    t.path, r.block
                ),
            ));
        }
        Ok(Some(r))
    }

    /// A file whose size on the server is no longer its manifest's (it
    /// changed since it was listed): its data, if it comes, is read and
    /// dropped, and the file counted failed in words (a new get fetches
    /// the new version whole).
    fn changed(&mut self, t: &Todo, r: &Reference, all: bool) -> Result<()> {
        if all {
            for _ in 0..r.count() {
                match self.read()? {
                    TAG_DATA => {}
                    wire::VERDICT => break,
                    other => return Err(self.unexpected(other, "file data")),
                }
            }
        } else {
            self.stream
                .write_all(&getwire::encode_want(&[]))
                .map_err(cut)?;
        }
        let text = format!(
            "it changed on the server since it was listed ({} bytes then, {} now); get it again",
            t.size, r.size
        );
        self.done(&t.path, Some(t.size), FileStatus::Failed, &text)
    }

    /// A whole file: synced, renamed into place, its mode and mtime set.
    fn install(&mut self, mut local: Local, t: &Todo) -> Result<()> {
        let crc = local.finish()?;
        self.dest.set_attrs(t)?;
        let text = format!("downloaded and verified (CRC-32 {crc:08x})");
        self.done(&t.path, Some(t.size), FileStatus::Fetched, &text)
    }

    /// One file with a partial download here (or that arrived damaged):
    /// its reference, then only the blocks not held, round after round,
    /// then into place with its mode and mtime.
    fn fetch(&mut self, t: Todo) -> Result<()> {
        let target = self.dest.dir.join(t.path.to_path_buf());
        let mut local = Local::new(&target, true)?;
        self.send(REQUEST, &fetch::encode_request(t.index, false))?;
        let Some(r) = self.reference(&t)? else {
            return self.not_sent(t);
        };
        if r.size != t.size {
            return self.changed(&t, &r, false);
        }
        let hashed = local.hashed;
        local.adopt(r)?;
        let fresh = local.hashed == hashed;
        let mut want: Vec<u64> = Vec::new();
        for round in 0..=super::MAX_REPAIR_ROUNDS {
            for i in want {
                if !self.receive(&mut local, &t, i, fresh)? {
                    return self.failed(&t);
                }
            }
            let missing = local.missing();
            if !missing.is_empty() && round == super::MAX_REPAIR_ROUNDS {
                break;
            }
            self.stream
                .write_all(&getwire::encode_want(&missing))
                .map_err(|e| Error::io(ErrorKind::ConnectionLost, "the tree get was cut", e))?;
            if missing.is_empty() {
                return self.install(local, &t);
            }
            want = missing;
        }
        Err(Error::new(
            ErrorKind::CrcMismatch,
            format!("blocks of \"{}\" kept arriving damaged", t.path),
        ))
    }

    /// Sleeps as long as `--limit-rate` wants for `len` more bytes.
    fn pace(&mut self, len: u64) {
        let Some(rate) = self.limit_rate else { return };
        self.paced.1 += len;
        let due = Duration::from_secs_f64(self.paced.1 as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(self.paced.0.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    /// The server's verdict instead of the file's reference: fetch it
    /// alone later ([`wire::ALONE`]), or it failed.
    fn not_sent(&mut self, t: Todo) -> Result<()> {
        if matches!(wire::parse_verdict(&self.buf), Ok((wire::ALONE, _, _))) {
            self.alone.push(t);
            return Ok(());
        }
        self.failed(&t)
    }

    /// The server's verdict instead of the file (or of its data).
    fn failed(&mut self, t: &Todo) -> Result<()> {
        let text = wire::parse_verdict(&self.buf)
            .map(|(_, _, text)| text)
            .unwrap_or_else(|_| "the server could not send it".into());
        let text = crate::text::printable(&text).into_owned();
        self.done(&t.path, Some(t.size), FileStatus::Failed, &text)
    }

    /// Block `i` of the file: checked, written unless it is zeros of a
    /// fresh part (a hole stays a hole). False: the server gave up on the
    /// file (its verdict is in the buffer).
    fn receive(&mut self, local: &mut Local, t: &Todo, i: u64, fresh: bool) -> Result<bool> {
        let tag = self.read()?;
        if tag == wire::VERDICT {
            return Ok(false);
        }
        if tag != TAG_DATA {
            return Err(self.unexpected(tag, "file data"));
        }
        let r = local
            .reference
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "no reference"))?;
        let (off, len) = r.range(i);
        let p = &self.buf;
        if p.len() as u64 != 12 + len || be64(p, 0) != Some(off) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "the server sent other data where block {i} of \"{}\" was due",
                    t.path
                ),
            ));
        }
        let data = &p[8..p.len() - 4];
        let trailer = crate::tree::wire::be32(p, p.len() - 4);
        let crc = crc32fast::hash(data);
        self.out.received += len;
        if Some(crc) != trailer || crc != r.crcs[i as usize] {
            return Ok(true); // damaged in transit: asked for again
        }
        let zeros = fresh && data.iter().all(|&b| b == 0);
        if let (Some(f), false) = (&local.part, zeros) {
            let room = match local.prealloc.as_mut() {
                Some(p) => p.before_write(f, off, data.len() as u64),
                None => Ok(()),
            };
            room.and_then(|()| f.write_all_at(data, off)).map_err(|e| {
                Error::io(
                    ErrorKind::Storage,
                    format!("cannot write {}", local.part_path.display()),
                    e,
                )
            })?;
        }
        local.held[i as usize] = true;
        self.pace(len);
        let (done, total) = (local.held_bytes(), t.size);
        self.ask(&TreeGetProgress::File {
            path: t.path.as_str(),
            done,
            total,
        })?;
        Ok(true)
    }
}

/// Connects (TLS as for any transfer) and asks for the tree `remote`.
fn connect(up: &mut Upload, remote: &str) -> Result<Box<dyn Transport>> {
    let words = super::tree::OldServer {
        closed: "the server closed the tree get: it is a legacy server or an older bigtransfer, which cannot send trees",
        legacy: "the server does not speak tree downloads (a legacy server)",
    };
    super::tree::open_session(up, &fetch::encode_header(remote)?, &words)
}

mod alone;
mod dest;
use dest::{Dest, Step, Todo};

#[cfg(test)]
mod tests;
