//! Serving a download (`"op": "get"`, see [`crate::getwire`]): after the
//! receiver machine read the header and, with a token, checked the answer
//! to its challenge, this sends the file's reference (size, block size,
//! mtime, block CRC-32s), then the blocks the client asks for, round after
//! round, until it asks for none.
//!
//! The file is opened under the storage directory's descriptor, never
//! through a symlink, by a name that passed [`crate::SafeName`] unchanged
//! (so never `..`, a path, or the server's own state). Every block sent is
//! checked against the reference first: a file that changed since is
//! never sent as a mix of versions (the client is told, and starts over).
//!
//! Not for uploads (the machine and `conn`), nor the client's side.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::conn::Shell;
use super::{Failed, Shared};
use crate::getwire::{self, Reference, TAG_REFERENCE, TAG_WANT};
use crate::machine::Fault;
use crate::v2::{self, FaultCode};
use crate::{Error, ErrorKind, SafeName};

/// Most references kept in memory (keyed by the file's full stamp, so a
/// file changed in any way is never answered from here).
const CACHED_REFERENCES: usize = 64;

/// How long a refused client is read from so the refusal is not lost to a
/// reset.
const DRAIN: Duration = Duration::from_secs(2);

/// Why serving stopped early.
pub(super) enum Stop {
    /// Told to the client (code and words).
    Fault(Fault),
    /// The connection broke or stalled.
    Lost(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Lost(e)
    }
}

/// The connection: the client's bytes (what the machine read past the
/// header, then the socket), and how blocks go back to it.
pub(super) struct Input<'a> {
    pub(super) stream: &'a mut Box<dyn crate::transport::Transport>,
    early: Vec<u8>,
    /// Raw or compressed, as the client offered (see `get_pack`).
    pub(super) pack: super::get_pack::BlockSender,
}

impl Input<'_> {
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let n = self.early.len().min(out.len());
        out[..n].copy_from_slice(&self.early[..n]);
        self.early.drain(..n);
        self.stream.read_exact(&mut out[n..])
    }
}

/// Serves the download the machine handed over, to its end, and logs it.
pub(super) fn serve(shell: &mut Shell) -> std::result::Result<(), Failed> {
    let Some(name) = shell.rx.name().cloned() else {
        return Err(Failed::Logged(Error::new(
            ErrorKind::Protocol,
            "get without a name",
        )));
    };
    let rev = shell.rx.offer().map_or(1, |o| o.rev);
    let path = shell.rx.get_path().map(str::to_owned);
    // Admitted now (a running download is never evicted to make room),
    // unless it was evicted while it waited.
    if !shell
        .conn
        .unadmitted
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        return Err(Failed::Logged(Error::new(
            ErrorKind::Refused,
            format!("{name}: get: evicted before it was admitted"),
        )));
    }
    let early = shell.take_leftover();
    let pack = super::get_pack::BlockSender::new(shell.rx.download_compress());
    let sh = shell.sh;
    let peer = shell.conn.peer;
    let plan = super::getjoin::Plan {
        streams: shell.rx.streams_asked(),
        join: shell.rx.join_asked().cloned(),
        binding: shell.stream.channel_binding(),
        peer,
    };
    let mut input = Input {
        stream: &mut shell.stream,
        early,
        pack,
    };
    let asked = Asked {
        name: &name,
        path: path.as_deref(),
    };
    // A get by path is logged by its path (checked: printable).
    let shown = asked.path.unwrap_or(name.as_str());
    match run(sh, &asked, &mut input, &plan) {
        Ok((size, sent)) => {
            let by = if asked.path.is_some() {
                "get by path"
            } else {
                "get"
            };
            (sh.logger)(&format!(
                "{peer}: {shown}: sent ({size} bytes, {by}, {sent} bytes on this connection{})",
                input.pack.summary()
            ));
            Ok(())
        }
        Err(Stop::Fault(f)) => {
            let stream = &mut *input.stream;
            let _ = stream.write_all(&f.frame(rev));
            let _ = stream.close_write();
            drain(stream.as_mut());
            let kind = match f.code {
                FaultCode::NotFound | FaultCode::NameRefused => ErrorKind::Refused,
                _ => ErrorKind::Storage,
            };
            Err(Failed::Logged(Error::new(
                kind,
                format!("{name}: get: {}", f.words),
            )))
        }
        Err(Stop::Lost(e)) => Err(Failed::Logged(Error::io(
            ErrorKind::ConnectionLost,
            format!("{name}: get: connection lost"),
            e,
        ))),
    }
}

/// Reads what the client still sends until it closes (bounded).
fn drain(stream: &mut dyn crate::transport::Transport) {
    let _ = stream.set_read_timeout(Some(DRAIN));
    let mut sink = [0u8; 4096];
    let until = std::time::Instant::now() + DRAIN;
    while std::time::Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// What a download asks for: a stored name, or (a get by path, `"path":
/// 1`) a file below the storage directory by its checked tree path, whose
/// base name is `name`.
pub(super) struct Asked<'a> {
    pub(super) name: &'a SafeName,
    pub(super) path: Option<&'a str>,
}

/// The exchange: reference, then rounds of wanted blocks. Returns the file
/// size and the bytes of file sent.
fn run(
    sh: &Shared,
    asked: &Asked,
    input: &mut Input,
    plan: &super::getjoin::Plan,
) -> Result<(u64, u64), Stop> {
    #[cfg(feature = "s3")]
    if let Some(s3) = &sh.s3 {
        return super::get_store::run(sh, s3, asked, input, plan);
    }
    let name = asked.name;
    let (file, reference) = match asked.path {
        None => {
            let file = open(sh, name)?;
            let r = reference(sh, &file, name).map_err(Stop::Fault)?;
            (file, r)
        }
        Some(p) => {
            let file = open_path(sh, p)?;
            let r = reference_of(sh, &file, name, false).map_err(Stop::Fault)?;
            (file, r)
        }
    };
    // A get by path's streams are a session of that path.
    let key = asked.path.unwrap_or(name.as_str());
    let (_session, rounds) = begin(sh, key, &reference, plan, input)?;
    let mut buf = super::get_pack::FrameBuf::new(reference.block as usize);
    let mut sent = 0u64;
    for _ in 0..=rounds {
        let wanted = read_want(input, reference.count())?;
        if wanted.is_empty() {
            return Ok((reference.size, sent));
        }
        for i in wanted {
            sent += send_block(sh, &file, name, &reference, i, &mut buf, input)?;
        }
    }
    Err(Stop::Fault(Fault::bad(
        "refused: too many rounds of blocks asked for on one connection",
    )))
}

/// What every download does before its rounds, from a directory or a
/// store: enter the session its client asks for (a joined stream is
/// checked here), send the session's ticket and the reference. Returns the
/// session's guard (held for the connection) and how many rounds of
/// wanted blocks the connection may ask for.
pub(super) fn begin<'a>(
    sh: &'a Shared,
    name: &str,
    reference: &Reference,
    plan: &super::getjoin::Plan,
    input: &mut Input,
) -> Result<(super::getjoin::Guard<'a>, u32), Stop> {
    let (session, ticket) =
        super::getjoin::enter(sh, name, reference, plan).map_err(Stop::Fault)?;
    // Compression is agreed on each connection of a session alike,
    // before the reference (the client then takes `P` frames).
    if let Some(z) = input.pack.codec_frame() {
        input.stream.write_all(&z)?;
    }
    if let Some(j) = ticket {
        input.stream.write_all(&j)?;
    }
    let payload = reference.encode();
    input
        .stream
        .write_all(&getwire::encode_frame(TAG_REFERENCE, &payload))?;
    input.stream.set_read_timeout(Some(sh.cfg.idle_timeout))?;
    // One round more than the client may ask: the last "want nothing". A
    // stream of a session asks for a block or a few per round: each block
    // about twice (re-issued stragglers, repairs), and the rounds of one.
    let mut rounds = super::MAX_REPAIR_ROUNDS + crate::client::MAX_REPAIR_ROUNDS;
    if session.in_session() {
        let blocks = u32::try_from(reference.count()).unwrap_or(u32::MAX);
        rounds = rounds.saturating_add(blocks.saturating_mul(2).saturating_add(64));
    }
    Ok((session, rounds))
}

/// Opens the stored file `name` for reading, under the storage directory.
fn open(sh: &Shared, name: &SafeName) -> Result<File, Stop> {
    served(
        crate::sys::open_read_at(sh.store.dir_file(), name.as_str()),
        name.as_str(),
    )
}

/// Opens the file at the tree path `path` below the storage directory,
/// without following a symlink anywhere on the way (every directory is
/// opened `O_NOFOLLOW` from the storage directory's descriptor).
fn open_path(sh: &Shared, path: &str) -> Result<File, Stop> {
    let root = rustix::fs::open(
        &sh.cfg.dir,
        crate::tree::at::dir_flags(),
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| {
        Stop::Fault(Fault::new(
            FaultCode::Storage,
            format!("cannot open the storage directory: {e}"),
        ))
    })?;
    let (dir_rel, base) = path.rsplit_once('/').unwrap_or(("", path));
    let Ok(dir) = super::tree::open_dir(&root, dir_rel) else {
        return Err(not_found(path, ""));
    };
    served(crate::sys::open_read_at(&File::from(dir), base), path)
}

fn not_found(what: &str, why: &str) -> Stop {
    Stop::Fault(Fault::new(
        FaultCode::NotFound,
        format!("no file \"{what}\" on the server{why}"),
    ))
}

/// What an open of `what` (a stored name or a tree path) comes to: a
/// regular file, or the fault a client is told.
fn served(opened: io::Result<File>, what: &str) -> Result<File, Stop> {
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(what, "")),
        // ELOOP: a symlink, which is never followed (it may lead anywhere).
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_found(what, " (a symlink there is not served)"))
        }
        Err(e) => {
            return Err(Stop::Fault(Fault::new(
                FaultCode::Storage,
                format!("cannot open \"{what}\": {e}"),
            )))
        }
    };
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(not_found(what, " (not a regular file)")),
        Err(e) => Err(Stop::Fault(Fault::new(
            FaultCode::Storage,
            format!("cannot inspect \"{what}\": {e}"),
        ))),
    }
}

/// Everything that changes when a file's content may have: identity,
/// size, mtime and ctime to the nanosecond.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(file: &File) -> io::Result<Stamp> {
    let m = file.metadata()?;
    Ok((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// The references a server computed or learnt from uploads, by the whole
/// stamp of the file (one per server, at most [`CACHED_REFERENCES`]).
pub(super) type RefCache = Mutex<HashMap<Stamp, Arc<Reference>>>;

/// The reference of a stored file: its size, block size, mtime and the
/// CRC-32 of every block. Computed by reading the file (the stored-file
/// record, once there, can feed this instead), kept only when the file's
/// stamp was the same before and after the read, and found again only by
/// that whole stamp.
pub(super) fn reference(sh: &Shared, file: &File, name: &SafeName) -> Result<Reference, Fault> {
    reference_of(sh, file, name, true)
}

/// [`reference`], looking in the stored-file records only when `stored`
/// (the file is the stored name `name`, not a tree file of that base
/// name).
fn reference_of(
    sh: &Shared,
    file: &File,
    name: &SafeName,
    stored: bool,
) -> Result<Reference, Fault> {
    let storage =
        |e: io::Error| Fault::new(FaultCode::Storage, format!("cannot read \"{name}\": {e}"));
    let before = stamp(file).map_err(storage)?;
    if let Some(r) = sh.refs.lock().ok().and_then(|c| c.get(&before).cloned()) {
        return Ok((*r).clone());
    }
    if let Some(r) = recorded(sh, name, before).filter(|_| stored) {
        keep(sh, before, r.clone());
        return Ok(r);
    }
    let r = compute(file, before).map_err(storage)?;
    if stamp(file).map_err(storage)? != before {
        return Err(Fault::new(
            FaultCode::Changed,
            format!("\"{name}\" changed on the server while it was being read; try again"),
        ));
    }
    keep(sh, before, r.clone());
    Ok(r)
}

/// The reference kept since the upload (the stored-file record, which
/// survives restarts), when it vouches for this very file (the store
/// checks its stamp) with the block size a download uses. A file changed
/// after that check is still caught block by block when sent.
fn recorded(sh: &Shared, name: &SafeName, st: Stamp) -> Option<Reference> {
    if sh.remote_storage() {
        return None;
    }
    let rec = sh.store.finished(name)?;
    let block = v2::block_size_for(rec.size);
    let whole = rec.crcs.len() as u64 == v2::block_count(rec.size, block);
    if rec.size != st.2 || rec.block != block || !whole {
        return None;
    }
    Some(Reference {
        size: rec.size,
        block,
        mtime_ns: mtime_ns(st),
        crcs: rec.crcs,
    })
}

/// A file just stored by an upload: its verified block CRC-32s are the
/// reference of a download, kept under the stamp the stored file has now
/// (so a later `get` needs no read of it). Only for the block size a
/// download uses; a wrong entry (the file written to between the rename
/// and this stamp) is caught block by block when sent, and dropped.
pub(super) fn remember_upload(sh: &Shared, name: &SafeName, size: u64, block: u64, crcs: Vec<u32>) {
    if sh.remote_storage() || block != v2::block_size_for(size) {
        return;
    }
    let Ok(file) = crate::sys::open_read_at(sh.store.dir_file(), name.as_str()) else {
        return;
    };
    let Ok(st) = stamp(&file) else { return };
    if st.2 != size {
        return;
    }
    let r = Reference {
        size,
        block,
        mtime_ns: mtime_ns(st),
        crcs,
    };
    keep(sh, st, r);
}

fn keep(sh: &Shared, st: Stamp, r: Reference) {
    if let Ok(mut c) = sh.refs.lock() {
        if c.len() >= CACHED_REFERENCES {
            c.clear();
        }
        c.insert(st, Arc::new(r));
    }
}

/// Drops what is cached for the file open as `file` (it no longer matches).
fn forget(sh: &Shared, file: &File) {
    if let (Ok(st), Ok(mut c)) = (stamp(file), sh.refs.lock()) {
        c.remove(&st);
    }
}

fn mtime_ns(st: Stamp) -> u64 {
    (st.3 as i128 * 1_000_000_000 + st.4 as i128).max(0) as u64
}

fn compute(file: &File, st: Stamp) -> io::Result<Reference> {
    let size = st.2;
    let block = v2::block_size_for(size);
    crate::sys::advise_sequential(file);
    let mut buf = crate::sys::PageBuf::new(block as usize);
    let count = v2::block_count(size, block);
    let mut crcs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (off, len) = v2::block_range(size, block, i);
        let b = &mut buf[..len as usize];
        file.read_exact_at(b, off)?;
        crcs.push(crc32fast::hash(b));
    }
    Ok(Reference {
        size,
        block,
        mtime_ns: mtime_ns(st),
        crcs,
    })
}

/// Reads one `W` frame: the blocks wanted next.
pub(super) fn read_want(input: &mut Input, total: u64) -> Result<Vec<u64>, Stop> {
    let mut head = [0u8; 5];
    input.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as u64;
    if head[0] != TAG_WANT || len > 4 + 16 * getwire::MAX_RUNS {
        return Err(Stop::Fault(Fault::bad(format!(
            "refused: expected a want frame, got tag 0x{:02x} of {len} bytes",
            head[0]
        ))));
    }
    let mut p = vec![0u8; len as usize];
    input.read_exact(&mut p)?;
    getwire::decode_want(&p, total).map_err(|e| Stop::Fault(Fault::bad(format!("refused: {e}"))))
}

/// Sends block `i` as a data frame (compressed when that was agreed and
/// pays), after checking it still has the reference's CRC-32. Returns its
/// length.
fn send_block(
    sh: &Shared,
    file: &File,
    name: &SafeName,
    r: &Reference,
    i: u64,
    buf: &mut super::get_pack::FrameBuf,
    out: &mut Input,
) -> Result<u64, Stop> {
    let (off, len) = r.range(i);
    let b = buf.block_mut(len as usize);
    file.read_exact_at(b, off).map_err(|e| {
        Stop::Fault(Fault::new(
            FaultCode::Changed,
            format!("cannot read block {i} of \"{name}\" (did it shrink?): {e}"),
        ))
    })?;
    let crc = crc32fast::hash(b);
    if crc != r.crcs[i as usize] {
        forget(sh, file);
        return Err(Stop::Fault(Fault::new(
            FaultCode::Changed,
            format!("\"{name}\" changed on the server during the download (block {i}); the next attempt starts over with the new version"),
        )));
    }
    out.pack
        .send_framed(out.stream.as_mut(), off, buf, len as usize, crc)?;
    Ok(len)
}
