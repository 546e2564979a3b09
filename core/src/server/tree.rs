//! A tree session on the server (`"bt": {"v": 2, "op": "tree"}`): manifest
//! pages checked by a [`ManifestValidator`], directories and symlinks made
//! as they come, then the files of each page received back to back, each
//! verified by its CRC-32 and renamed into place. See `docs/PROTOCOL.md`,
//! "Tree sessions".
//!
//! Everything is reached from the storage directory's descriptor with
//! `openat` and `O_NOFOLLOW` on every component, so no symlink (one the
//! manifest made, or one planted on the server) is ever followed, and
//! nothing is written outside the storage directory. A file is written in
//! `.bt-tree-parts/` under a key covering its whole path, size and mtime
//! (so `a/x` and `b/x` are two uploads, and a resumed send continues the
//! part), and appears under its final name only once verified. A stored
//! file is never lost silently: a file of the same path, size and mtime
//! is held only once the client found its own whole CRC-32 equal to the
//! stored file's (sent in the page's state, [`wire::CHECK_CRC`]), never on
//! size and mtime alone; a different file under that name (a changed
//! size or mtime, or a changed content under the same ones) is received
//! and the stored one kept as a numbered version (`NAME.~N~`, or replaced
//! under `--overwrite`), the client told which in words; anything other
//! than a file under that name is not replaced. Directories get their
//! modes and mtimes once the walk has left them and their files are in.
//! Memory: one page of files at a time.
//!
//! Not for single-file uploads (`conn`), nor for S3 storage (`tree_s3`),
//! nor for the token challenge (`tree_auth`, before anything here runs).

use super::tree_notes;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{ConnInfo, Failed, Shared};
use crate::json::{self, Value};
use crate::sys::Preallocator;
use crate::transport::Transport;
use crate::tree::at::{dir_flags, mtime_of, storage, times, DirCursor, Side};
use crate::tree::wire::{self, be32, be64};
use crate::tree::{decode_page, Accepted, EntryKind, ManifestValidator, RelPath, ValidatorConfig};
use crate::{Error, ErrorKind, Result};

/// A tree file whose first data frame is at least this big has each
/// frame's range allocated before it is written.
const PREALLOC_FRAME: u64 = 64 * 1024;

/// Where parts of tree files are kept, in the storage directory. A
/// manifest may not use this name at its top level.
pub const PARTS_DIR: &str = ".bt-tree-parts";

/// Whether a tree header asks for verified holds (`"bt": {"held": "crc"}`,
/// see [`wire::CHECK_CRC`]).
pub(super) fn wants_crc_holds(json_bytes: &[u8]) -> bool {
    let Ok(v) = json::parse(json_bytes) else {
        return false;
    };
    matches!(v.get("bt").and_then(|bt| bt.get("held")), Some(Value::String(h)) if h == wire::HELD_BY_CRC)
}

/// Whether a header opens a tree session (`"bt": {"op": "tree"}`).
pub(super) fn is_tree_header(json_bytes: &[u8]) -> bool {
    let Ok(v) = json::parse(json_bytes) else {
        return false;
    };
    matches!(v.get("bt").and_then(|bt| bt.get("op")), Some(Value::String(op)) if op == "tree")
}

/// A directory whose mode and mtime are set once its entries are in.
struct DirAttr {
    path: RelPath,
    mode: u32,
    mtime_ns: i64,
}

/// A file of the current page.
struct Slot {
    path: RelPath,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    status: u8,
    offset: u64,
    /// The whole CRC-32 of the file stored under this name with the same
    /// size and mtime (looked up when the page came).
    stored_crc: Option<u32>,
    /// The whole CRC-32 of the data received (recorded once stored).
    received_crc: u32,
    /// Its data came after a [`wire::CHECK_CRC`]: same size and mtime as
    /// the stored file, another content (said in the verdict).
    quiet_change: bool,
}

#[derive(Default)]
struct Tally {
    files: u64,
    dirs: u64,
    links: u64,
    bytes: u64,
    held: u64,
    failed: u64,
    not_stored: u64,
}

struct Session<'a> {
    sh: &'a Shared,
    peer: String,
    stream: Box<dyn Transport>,
    /// The storage directory, and the last parent directory opened.
    dirs: DirCursor,
    parts: OwnedFd,
    validator: ManifestValidator,
    open: Vec<DirAttr>,
    closed: Vec<DirAttr>,
    files: Vec<Slot>,
    buf: Vec<u8>,
    reader: wire::FrameReader,
    /// Frames to the client not written yet: verdicts go out many to a
    /// write, at the latest with the page's state or the end.
    out: Vec<u8>,
    /// The client asked for verified holds: state records carry the
    /// stored file's CRC-32 ([`wire::CHECK_CRC`]).
    crc_holds: bool,
    /// The stored files' CRC-32 records (large files).
    sums: super::tree_sums::Sums,
    t: Tally,
}

/// Serves a tree session whose header was read already.
pub(super) fn serve(
    sh: &Shared,
    conn: &ConnInfo,
    mut stream: Box<dyn Transport>,
    header: &[u8],
) -> std::result::Result<(), Failed> {
    let early = super::tree_auth::authenticate(sh, conn, &mut stream, header)?;
    #[cfg(feature = "s3")]
    if let Some(s3) = &sh.s3 {
        return super::tree_s3::serve(sh, s3, conn, stream, early, wants_crc_holds(header));
    }
    let idle = Some(sh.cfg.idle_timeout);
    let _ = stream.set_read_timeout(idle);
    let mut s = Session::open(sh, conn, stream)?;
    s.crc_holds = wants_crc_holds(header);
    let mut first = None;
    if let Some(e) = early {
        s.reader = e.reader;
        first = e.first;
    }
    match s.run(first) {
        Ok(()) => Ok(()),
        Err(e) => {
            if e.kind() != ErrorKind::ConnectionLost {
                let _ = s.send(wire::FAULT, e.to_string().as_bytes());
                let _ = s.stream.flush();
            }
            Err(e.into())
        }
    }
}

impl<'a> Session<'a> {
    fn open(sh: &'a Shared, conn: &ConnInfo, stream: Box<dyn Transport>) -> Result<Session<'a>> {
        let dir = &sh.cfg.dir;
        let root = rfs::open(dir, dir_flags(), Mode::empty())
            .map_err(storage(format!("cannot open {}", dir.display())))?;
        match rfs::mkdirat(&root, PARTS_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(storage(format!("cannot make {PARTS_DIR}"))(e)),
        }
        let parts = rfs::openat(
            &root,
            PARTS_DIR,
            dir_flags() | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(storage(format!("cannot open {PARTS_DIR}")))?;
        let config = ValidatorConfig {
            max_entries: sh.cfg.max_tree_entries,
            case_insensitive: false,
        };
        let sums = super::tree_sums::Sums::open(&parts);
        Ok(Session {
            sh,
            peer: conn.peer.to_string(),
            stream,
            dirs: DirCursor::new(root, Side::Server),
            parts,
            validator: ManifestValidator::new(config),
            open: Vec::new(),
            closed: Vec::new(),
            files: Vec::new(),
            buf: Vec::new(),
            reader: wire::FrameReader::new(),
            out: Vec::new(),
            crc_holds: false,
            sums,
            t: Tally::default(),
        })
    }

    /// The session's frames to its end; `first`, a frame read before the
    /// token's answer, comes first.
    fn run(&mut self, mut first: Option<(u8, Vec<u8>)>) -> Result<()> {
        loop {
            let tag = match first.take() {
                Some((tag, payload)) => {
                    self.buf = payload;
                    tag
                }
                None => self.reader.read_frame(&mut self.stream, &mut self.buf)?,
            };
            match tag {
                wire::PAGE => {
                    self.apply_closed()?;
                    self.page()?;
                }
                wire::BEGIN => self.receive_file()?,
                wire::END => return self.end(),
                other => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("unexpected frame {other:#04x} in a tree session"),
                    ))
                }
            }
        }
    }

    fn end(&mut self) -> Result<()> {
        self.count_confirmed();
        self.sums.flush();
        while let Some(d) = self.open.pop() {
            self.closed.push(d);
        }
        self.apply_closed()?;
        let t = &self.t;
        let text = format!(
            "received a tree: {} files ({} bytes), {} directories, {} symlinks; {} held already, {} failed, {} not stored",
            t.files, t.bytes, t.dirs, t.links, t.held, t.failed, t.not_stored
        );
        (self.sh.logger)(&format!("{}: {text}", self.peer));
        self.send(wire::FINISHED, text.as_bytes())?;
        let _ = self.stream.flush();
        let _ = self.stream.close_write();
        Ok(())
    }

    /// Queues a frame; a state, the end or a full queue writes it out.
    fn send(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        let cut = |e| Error::io(ErrorKind::ConnectionLost, "the tree session was cut", e);
        wire::write_frame(&mut self.out, tag, payload).map_err(cut)?;
        if tag != wire::VERDICT || self.out.len() >= 16 << 10 {
            self.stream.write_all(&self.out).map_err(cut)?;
            self.out.clear();
        }
        Ok(())
    }

    fn verdict(&mut self, status: u8, path: &RelPath, text: &str) -> Result<()> {
        let p = wire::verdict(status, path.as_str(), text);
        self.send(wire::VERDICT, &p)
    }

    /// One manifest page: each entry checked, made (directories,
    /// symlinks) or looked up (files); the files' states go back.
    fn page(&mut self) -> Result<()> {
        let entries = decode_page(&self.buf)?;
        self.count_confirmed();
        self.files.clear();
        let mut state = Vec::with_capacity(entries.len() * wire::STATE_RECORD_CRC);
        for e in entries {
            let acc = self.validator.check(e)?;
            if let Some(note) = acc.note() {
                (self.sh.logger)(&format!("{}: {note}", self.peer));
            }
            self.enter(acc, &mut state)?;
        }
        self.sums.flush();
        self.send(wire::STATE, &state)
    }

    /// Files of the last page offered for a CRC check whose data never
    /// came: the client found them the same, so they are held.
    fn count_confirmed(&mut self) {
        let n = self.files.iter().filter(|f| f.status == wire::CHECK_CRC);
        self.t.held += n.count() as u64;
    }

    fn enter(&mut self, acc: Accepted, state: &mut Vec<u8>) -> Result<()> {
        let path = acc.entry.path;
        if path.depth() == 1 && path.as_str() == PARTS_DIR {
            return Err(refused(&format!("\"{PARTS_DIR}\" is the server's own")));
        }
        while let Some(d) = self.open.last() {
            if d.path.is_ancestor_or_self(&path) {
                break;
            }
            let d = self.open.pop().expect("checked non-empty");
            self.closed.push(d);
        }
        match acc.entry.kind {
            EntryKind::Dir { mode, mtime_ns } => {
                self.dirs.make_dir(&path)?;
                self.t.dirs += 1;
                self.open.push(DirAttr {
                    path,
                    mode,
                    mtime_ns,
                });
            }
            EntryKind::Symlink { target } => self.make_link(&path, &target)?,
            EntryKind::File {
                size,
                mode,
                mtime_ns,
                ..
            } => {
                let mut slot = Slot {
                    path,
                    size,
                    mode,
                    mtime_ns,
                    status: wire::SEND,
                    offset: 0,
                    stored_crc: None,
                    received_crc: 0,
                    quiet_change: false,
                };
                self.file_state(&mut slot)?;
                state.push(slot.status);
                state.extend_from_slice(&slot.offset.to_be_bytes());
                if self.crc_holds {
                    state.extend_from_slice(&slot.stored_crc.unwrap_or(0).to_be_bytes());
                }
                self.files.push(slot);
            }
        }
        Ok(())
    }

    /// The directory holding `path`, opened without following symlinks.
    fn parent(&mut self, path: &RelPath) -> Result<&OwnedFd> {
        self.dirs.parent(path)
    }

    fn make_link(&mut self, path: &RelPath, target: &str) -> Result<()> {
        let name = path.file_name().to_owned();
        let dir = self.parent(path)?;
        match rfs::symlinkat(target, dir, name.as_str()) {
            Ok(()) => {
                self.t.links += 1;
                Ok(())
            }
            Err(Errno::EXIST) => {
                let same = rfs::readlinkat(dir, name.as_str(), Vec::new())
                    .is_ok_and(|t| t.as_bytes() == target.as_bytes());
                if same {
                    self.t.held += 1;
                    return Ok(());
                }
                self.t.not_stored += 1;
                let why = "a different entry is stored under this name; it is not replaced";
                self.verdict(wire::NOT_STORED, path, why)
            }
            Err(e) => Err(storage(format!("cannot make the symlink {path}"))(e)),
        }
    }

    /// Offered for a CRC check (a file of the same size and mtime is
    /// stored: its CRC-32 goes to the client, which decides), refused
    /// (something else there), or to be sent from what its part holds.
    /// Size and mtime alone never make a file held: content changed under
    /// the same size and mtime (`touch -r`, a restored backup) is caught.
    fn file_state(&mut self, slot: &mut Slot) -> Result<()> {
        let name = slot.path.file_name().to_owned();
        let dir = self.parent(&slot.path)?;
        match rfs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let same = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile
                    && st.st_size as u64 == slot.size
                    && mtime_of(&st) == slot.mtime_ns;
                if same {
                    // Unreadable: no CRC to offer; the file is sent and
                    // the stored one kept as a version.
                    slot.stored_crc = self.sums.get(&slot.path, &st);
                    if slot.stored_crc.is_none() {
                        let dir = self.parent(&slot.path)?;
                        slot.stored_crc = stored_crc(dir, &name, slot.size).ok();
                        if let Some(crc) = slot.stored_crc {
                            self.sums.put_read(&slot.path, &st, crc);
                        }
                    }
                    if self.crc_holds && slot.stored_crc.is_some() {
                        slot.status = wire::CHECK_CRC;
                    }
                }
                if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
                    slot.status = wire::REFUSED;
                    self.t.not_stored += 1;
                    let why =
                        "something other than a file is stored under this name; it is not replaced";
                    let path = slot.path.clone();
                    return self.verdict(wire::NOT_STORED, &path, why);
                }
                // A different file: received like a new one; at install the
                // stored one is kept as a numbered version (or replaced
                // under --overwrite), as for single uploads.
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(storage(format!("cannot look at {}", slot.path))(e)),
        }
        if let Some(max) = self.sh.cfg.max_file_size.filter(|&m| slot.size > m) {
            slot.status = wire::REFUSED;
            self.t.not_stored += 1;
            let why = format!(
                "it is {} bytes, over this server's limit of {max}",
                slot.size
            );
            let path = slot.path.clone();
            return self.verdict(wire::NOT_STORED, &path, &why);
        }
        // A file offered for a check is sent whole if it differs: its
        // part is not looked up (one lookup a file saved on a re-send).
        if slot.status != wire::CHECK_CRC {
            self.resume_point(slot);
        }
        Ok(())
    }

    /// Where the file's data resumes: what its part holds already.
    fn resume_point(&self, slot: &mut Slot) {
        let key = part_key(slot);
        if let Ok(st) = rfs::statat(&self.parts, key.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            let held = st.st_size as u64;
            if held <= slot.size {
                slot.offset = held;
            }
        }
    }

    /// The data of one file (after [`wire::BEGIN`]), up to its
    /// [`wire::CHECK`]; then the verdict.
    fn receive_file(&mut self) -> Result<()> {
        let bad = || Error::new(ErrorKind::Protocol, "a malformed tree file start");
        let idx = be32(&self.buf, 0).ok_or_else(bad)? as usize;
        let offset = be64(&self.buf, 4).ok_or_else(bad)?;
        let slot = self.files.get(idx).ok_or_else(bad)?;
        let wanted = slot.status == wire::SEND || slot.status == wire::CHECK_CRC;
        if !wanted || offset != slot.offset {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("data for \"{}\" that the server did not ask for", slot.path),
            ));
        }
        let key = part_key(slot);
        let (path, size) = (slot.path.clone(), slot.size);
        let part = self.open_part(&key, offset);
        // The tree's name beside a part that may outlive this connection,
        // for `list` (see `tree_notes`).
        let noted = size > tree_notes::NOTED_OVER && part.is_ok();
        if noted && offset == 0 {
            let root = path.components().next().unwrap_or_default();
            tree_notes::write(&self.parts, &key, root);
        }
        let r = self.take_part(part, &key, idx, &path, (offset, size));
        if noted {
            tree_notes::forget_if_gone(&self.parts, &key);
        }
        r
    }

    /// The data of a file into its part (from `offset`, to `size`), then
    /// the part checked and stored or dropped, and the verdict.
    fn take_part(
        &mut self,
        part: Result<(File, crc32fast::Hasher)>,
        key: &str,
        idx: usize,
        path: &RelPath,
        (offset, size): (u64, u64),
    ) -> Result<()> {
        let path = path.clone();
        let got = self.take_data(part.as_ref().ok(), offset)?;
        self.done_with(idx);
        let Ok(file) = part else {
            self.t.failed += 1;
            let why = part.err().map(|e| e.to_string()).unwrap_or_default();
            return self.verdict(wire::FAILED, &path, &why);
        };
        let crc_ok = got.crc_local == Some(got.crc_sent) && got.end == size;
        if !crc_ok {
            let _ = rfs::unlinkat(&self.parts, key, AtFlags::empty());
            self.t.failed += 1;
            let why = if got.end != size {
                format!("{} bytes arrived for a file of {size}", got.end)
            } else {
                "the data did not match its CRC-32; a new send starts it again".to_owned()
            };
            return self.verdict(wire::FAILED, &path, &why);
        }
        if self.files[idx].stored_crc == Some(got.crc_sent) {
            // Sent by a client that cannot check (or the stored file
            // changed meanwhile): the same content, no version of it.
            let _ = rfs::unlinkat(&self.parts, key, AtFlags::empty());
            self.t.held += 1;
            return self.verdict(
                wire::OK,
                &path,
                "the same content was stored already; left as it is",
            );
        }
        self.files[idx].received_crc = got.crc_sent;
        self.install(file, key, idx)
    }

    /// Records the CRC-32 of the file just stored at `path` (see
    /// `tree_sums`): its `stat` is taken after the rename, which moves
    /// its ctime.
    fn record_sum(&mut self, path: &RelPath, crc: u32) {
        let name = path.file_name().to_owned();
        let Ok(dir) = self.parent(path) else {
            return;
        };
        if let Ok(st) = rfs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            self.sums.put(path, &st, crc);
        }
    }

    /// A file's data came (whatever the verdict): it may not come again.
    fn done_with(&mut self, idx: usize) {
        if let Some(slot) = self.files.get_mut(idx) {
            if slot.status == wire::CHECK_CRC {
                // The client found its content different from the stored
                // file's though size and mtime are the same.
                slot.stored_crc = None;
                slot.quiet_change = true;
            }
            slot.status = wire::HELD;
        }
    }

    /// The part file for `key`, locked, holding exactly `offset` bytes,
    /// with a hasher over them.
    fn open_part(&self, key: &str, offset: u64) -> Result<(File, crc32fast::Hasher)> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&self.parts, key, flags, Mode::from_raw_mode(0o600))
            .map_err(storage(format!("cannot open the part {key}")))?;
        rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            Error::new(
                ErrorKind::Refused,
                "another connection is sending this file now",
            )
        })?;
        let file = File::from(fd);
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            return Err(Error::new(
                ErrorKind::Storage,
                "the part shrank while resuming",
            ));
        }
        if len > offset {
            file.set_len(offset)
                .map_err(|e| Error::io(ErrorKind::Storage, "cannot trim the part", e))?;
        }
        let mut h = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < offset {
            let n = (offset - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io(ErrorKind::Storage, "cannot read the part", e))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok((file, h))
    }
}

/// What arrived for one file.
struct Got {
    end: u64,
    crc_sent: u32,
    /// None when the part could not be written.
    crc_local: Option<u32>,
}

impl Session<'_> {
    /// Reads the file's frames to its CHECK, writing them to `part` (or
    /// only draining them when there is none).
    fn take_data(&mut self, part: Option<&(File, crc32fast::Hasher)>, offset: u64) -> Result<Got> {
        let mut h = part.map(|(_, h)| h.clone());
        let file = part.map(|(f, _)| f);
        let mut at = offset;
        let mut written = offset;
        let mut write_failed = false;
        // Decided at the file's first frame: only big files allocate each
        // range first (see `crate::sys::Preallocator`); for a small one it
        // would be one more system call for nothing.
        let mut prealloc = None;
        loop {
            let tag = self.reader.read_frame(&mut self.stream, &mut self.buf)?;
            match tag {
                wire::DATA => {
                    if let (Some(f), Some(h)) = (file, h.as_mut()) {
                        let len = self.buf.len() as u64;
                        let room = match prealloc.get_or_insert_with(|| {
                            (len >= PREALLOC_FRAME).then(|| Preallocator::for_file(f))
                        }) {
                            Some(p) => p.before_write(f, at, len),
                            None => Ok(()),
                        };
                        write_failed |= room.and_then(|()| f.write_all_at(&self.buf, at)).is_err();
                        h.update(&self.buf);
                    }
                    at += self.buf.len() as u64;
                    written = at;
                    self.t.bytes += self.buf.len() as u64;
                }
                wire::HOLE => {
                    let len = be64(&self.buf, 0).ok_or_else(|| bad_frame("hole"))?;
                    if let Some(h) = h.as_mut() {
                        h.combine(&crate::sparse::zeros_crc(len));
                    }
                    at = at.saturating_add(len);
                }
                wire::CHECK => {
                    let crc_sent = be32(&self.buf, 0).ok_or_else(|| bad_frame("check"))?;
                    // A trailing hole: the part's length is the file's.
                    if let Some(f) = file.filter(|_| at > written) {
                        write_failed |= f.set_len(at).is_err();
                    }
                    let crc_local = h.filter(|_| !write_failed).map(|h| h.finalize());
                    return Ok(Got {
                        end: at,
                        crc_sent,
                        crc_local,
                    });
                }
                other => return Err(bad_frame(&format!("{other:#04x}"))),
            }
        }
    }

    /// A verified part: its mode and mtime set, renamed to its final name
    /// unless something appeared there meanwhile.
    fn install(&mut self, part: (File, crc32fast::Hasher), key: &str, idx: usize) -> Result<()> {
        let (file, _) = part;
        let slot = &self.files[idx];
        let (path, mode, mtime_ns) = (slot.path.clone(), slot.mode, slot.mtime_ns);
        let (quiet, crc) = (slot.quiet_change, slot.received_crc);
        let _ = rfs::fchmod(&file, Mode::from_raw_mode(mode & 0o777));
        let _ = rfs::futimens(&file, &times(mtime_ns));
        drop(file);
        let name = path.file_name().to_owned();
        let parts = self
            .parts
            .try_clone()
            .map_err(|e| Error::io(ErrorKind::Storage, "dup", e))?;
        let dir = self.parent(&path)?;
        let r = rfs::renameat_with(&parts, key, dir, name.as_str(), rfs::RenameFlags::NOREPLACE);
        match r {
            Ok(()) => {
                self.t.files += 1;
                self.record_sum(&path, crc);
                self.verdict(wire::OK, &path, "stored and verified")
            }
            Err(Errno::EXIST) => self.replace(&parts, key, &path, (quiet, crc)),
            Err(e) => Err(storage(format!("cannot store {path}"))(e)),
        }
    }

    /// A verified part whose name holds a different stored file: that file
    /// is kept as its next numbered version (`NAME.~N~`) and the part
    /// takes the name, or under `--overwrite` the part simply replaces it;
    /// the client is told which in the verdict's words.
    fn replace(
        &mut self,
        parts: &OwnedFd,
        key: &str,
        path: &RelPath,
        (quiet, crc): (bool, u32),
    ) -> Result<()> {
        let name = path.file_name().to_owned();
        let overwrite = self.sh.cfg.overwrite;
        let dir = self.parent(path)?;
        let is_file = rfs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile);
        let kept = if !is_file {
            Err(
                "something other than a file appeared under this name; it is not replaced"
                    .to_owned(),
            )
        } else if overwrite {
            Ok("stored and verified; it replaced the different file stored under this name (the server runs with --overwrite)".to_owned())
        } else {
            let dup = dir.try_clone().map(File::from);
            match dup.and_then(|d| crate::keep::keep_version(&d, &name)) {
                Ok(v) => Ok(format!("stored and verified; the different file stored under this name is kept as {v}")),
                Err(e) => Err(format!("a different file is stored under this name and cannot be kept as a numbered version ({e}); it is not replaced")),
            }
        };
        let kept = kept.map(|words| match quiet {
            true => format!("{words} (its size and mtime are the same as the stored file's, its content is not)"),
            false => words,
        });
        let why = match kept {
            Ok(words) => match rfs::renameat(parts, key, dir, name.as_str()) {
                Ok(()) => {
                    self.t.files += 1;
                    self.record_sum(path, crc);
                    let line = format!("{}: {path}: {words}", self.peer);
                    (self.sh.logger)(&line);
                    return self.verdict(wire::OK, path, &words);
                }
                Err(e) => return Err(storage(format!("cannot store {path}"))(e)),
            },
            Err(why) => why,
        };
        let _ = rfs::unlinkat(parts, key, AtFlags::empty());
        self.t.not_stored += 1;
        self.verdict(wire::NOT_STORED, path, &why)
    }

    /// Modes and mtimes of the directories the walk has left (deepest
    /// first), now that everything in them is in place.
    fn apply_closed(&mut self) -> Result<()> {
        for d in std::mem::take(&mut self.closed) {
            let fd = self.dirs.open_dir(d.path.as_str())?;
            let _ = rfs::fchmod(&fd, Mode::from_raw_mode(d.mode & 0o777));
            let _ = rfs::futimens(&fd, &times(d.mtime_ns));
        }
        self.dirs.forget();
        Ok(())
    }
}

/// Deletes parts of tree files untouched for longer than `age`, unless a
/// session holds one (its lock): the `--expire-partial` of trees.
pub(super) fn sweep_parts(dir: &std::path::Path, age: Duration, logger: &super::Logger) {
    let Ok(entries) = std::fs::read_dir(dir.join(PARTS_DIR)) else {
        return;
    };
    for e in entries.flatten() {
        if super::tree_notes::is_note(e.file_name().as_bytes()) {
            super::tree_notes::sweep_orphan(&dir.join(PARTS_DIR), e.file_name().as_bytes());
            continue;
        }
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|t| t > age);
        let Ok(f) = File::open(e.path()).map(OwnedFd::from) else {
            continue;
        };
        let free = rfs::flock(&f, rfs::FlockOperation::NonBlockingLockExclusive).is_ok();
        if old && free && std::fs::remove_file(e.path()).is_ok() {
            logger(&format!(
                "expired held tree part {} (untouched for over {}s)",
                e.file_name().to_string_lossy(),
                age.as_secs()
            ));
        }
    }
}

fn bad_frame(what: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("a malformed tree frame ({what})"),
    )
}

fn refused(why: &str) -> Error {
    Error::new(ErrorKind::Refused, format!("refused manifest: {why}"))
}

/// `rel` ("" for the root itself) under the storage directory `root`,
/// never through a symlink (see [`crate::tree::at::open_dir`]).
pub(super) fn open_dir(root: &OwnedFd, rel: &str) -> Result<OwnedFd> {
    crate::tree::at::open_dir(root, rel, Side::Server)
}

/// The whole CRC-32 of the regular file `name` in `dir` (not followed if
/// a symlink), checked to be `size` bytes: what a client's file must
/// match to be held.
fn stored_crc(dir: &OwnedFd, name: &str, size: u64) -> Result<u32> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::empty())
        .map_err(storage(format!("cannot open the stored {name}")))?;
    let mut file = File::from(fd);
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (size as usize).clamp(4096, 1 << 20)];
    let mut total = 0u64;
    loop {
        match io::Read::read(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::io(
                    ErrorKind::Storage,
                    format!("cannot read the stored {name}"),
                    e,
                ))
            }
        }
    }
    if total != size {
        return Err(Error::new(
            ErrorKind::Storage,
            format!("the stored {name} changed while read"),
        ));
    }
    Ok(h.finalize())
}

/// The part's name: a digest of the whole path, size and mtime, so two
/// paths never share a part and a changed file starts afresh.
fn part_key(slot: &Slot) -> String {
    let id = crate::v2::source_id(&[
        slot.path.as_str().as_bytes(),
        &slot.size.to_be_bytes(),
        &slot.mtime_ns.to_be_bytes(),
    ]);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.part")
}

/// Reads the first header off a new connection when it is whole within
/// `wait` (a deadline for all of it, not per read): the bytes read (the
/// caller hands them to the single-upload machine when this is not a tree
/// session, and the machine's own header deadline then ends a slow one)
/// and whether it is one.
pub(super) fn peek_header(stream: &mut dyn Transport, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    let whole = fill(stream, &mut got, 4, deadline) && {
        let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
        (1..=crate::proto::MAX_HEADER_LEN).contains(&len)
            && fill(stream, &mut got, 4 + len, deadline)
    };
    let _ = stream.set_read_timeout(None);
    let tree = whole && is_tree_header(&got[4..]);
    (got, tree)
}

/// Reads until `buf` holds `want` bytes; false on end, error or deadline.
fn fill(
    stream: &mut dyn Transport,
    buf: &mut Vec<u8>,
    want: usize,
    deadline: std::time::Instant,
) -> bool {
    let mut chunk = [0u8; 4096];
    while buf.len() < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        let n = (want - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..n]) {
            Ok(0) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
