//! Downloading one stored file ([`get_file`]): the roles of an upload
//! swapped. The server announces the file's reference (size, block size,
//! mtime, block CRC-32s); the client keeps its partial download beside the
//! target as `.NAME.bigtransfer-part` with the reference in
//! `.NAME.bigtransfer-get`, asks for the blocks it does not hold, checks
//! each against the reference as it arrives (on a helper thread, while
//! the next one is received: `writer`), asks again for damaged ones,
//! and only then syncs and renames the part into place. A partial download
//! is resumed only against the same reference: a file changed on the
//! server is started over, never appended to. Wire: [`crate::getwire`].
//!
//! Connecting, TLS, pinning and retries are the upload's (`shell`,
//! `secure`, [`super::Upload`]). Not for the server's side
//! (`server::get`), nor prompts and exit codes (the caller's).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod frames;
mod streams;
mod writer;

use super::{peer, secure, shell, Control, Next, Progress, SendOptions, Tally, Upload};
use crate::getwire::{self, Reference, TAG_REFERENCE};
use crate::transport::Transport;
use crate::v2::{self, ServerMsg};
use crate::{Error, ErrorKind, Result};

/// Magic of the client's record of a partial download.
const RECORD_MAGIC: &[u8; 8] = b"BTGET001";

/// The result of a finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
    /// Where the file is now.
    pub path: PathBuf,
    /// File size in bytes.
    pub filesize: u64,
    /// CRC-32 of the whole file (every block verified against the
    /// server's reference; combined from them).
    pub crc32: u32,
    /// Bytes the first attempt already held locally (verified).
    pub resumed_from: u64,
    /// File bytes received over the network in all attempts.
    pub bytes_received: u64,
    /// Bytes of the partial download read to verify what it held.
    pub bytes_hashed: u64,
    /// Blocks that arrived damaged and were asked for again.
    pub blocks_repaired: u64,
    /// The file changed on the server between attempts: the partial
    /// download was dropped and started over.
    pub restarted: bool,
    /// Connections made.
    pub attempts: u32,
    /// Whether the last connection was TLS.
    pub encrypted: bool,
    /// Wall time of the whole download.
    pub elapsed: Duration,
    /// Most connections used at once by one attempt (1 without streams).
    pub streams: u32,
    /// What `auto` decided, and why joined streams ended early.
    pub stream_notes: Vec<String>,
    /// The congestion control of the last connection, as the kernel
    /// reported it (`None` where the OS does not say).
    pub congestion: Option<String>,
    /// The compression asked for (`auto`, `zstd:LEVEL` or `off`).
    pub compress: crate::compress::Compress,
    /// Whether the server agreed to send compressed blocks (last
    /// connection; an older server never does).
    pub compress_agreed: bool,
    /// Blocks that arrived compressed, in all attempts.
    pub compressed_blocks: u64,
    /// Payload bytes on the wire in all attempts: `bytes_received` less
    /// what compression saved (frame heads and trailers not counted).
    pub wire_bytes: u64,
}

/// The partial download's data file and record beside `dest`.
pub fn part_paths(dest: &Path) -> (PathBuf, PathBuf) {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    (
        dir.join(format!(".{name}.bigtransfer-part")),
        dir.join(format!(".{name}.bigtransfer-get")),
    )
}

/// The local side: the part file, its reference and the blocks it holds.
pub(super) struct Local {
    dest: PathBuf,
    pub(super) part_path: PathBuf,
    pub(super) record_path: PathBuf,
    pub(super) part: Option<File>,
    /// Allocates each range of the part before it is written.
    pub(super) prealloc: Option<crate::sys::Preallocator>,
    pub(super) reference: Option<Reference>,
    pub(super) held: Vec<bool>,
    /// Bytes held when the first reference was adopted.
    resumed_from: Option<u64>,
    pub(super) hashed: u64,
    repaired: u64,
    restarted: bool,
    /// Why the last damaged block was damaged (said when repair gives up).
    damage: Option<String>,
    /// The remote is a tree path (`"path": 1`), on every stream.
    pub(super) by_path: bool,
}

fn local_err(what: String, e: io::Error) -> Error {
    Error::io(ErrorKind::Storage, what, e)
}

impl Local {
    pub(super) fn new(dest: &Path, force: bool) -> Result<Local> {
        if dest.exists() && !force {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} exists; remove it, choose another -o, or pass --force to replace it",
                    dest.display()
                ),
            ));
        }
        let (part_path, record_path) = part_paths(dest);
        Ok(Local {
            dest: dest.to_path_buf(),
            part_path,
            record_path,
            part: None,
            prealloc: None,
            reference: None,
            held: Vec::new(),
            resumed_from: None,
            hashed: 0,
            repaired: 0,
            restarted: false,
            damage: None,
            by_path: false,
        })
    }

    pub(super) fn held_bytes(&self) -> u64 {
        let Some(r) = &self.reference else { return 0 };
        (0..r.count())
            .filter(|&i| self.held[i as usize])
            .map(|i| r.range(i).1)
            .sum()
    }

    pub(super) fn missing(&self) -> Vec<u64> {
        (0..self.held.len() as u64)
            .filter(|&i| !self.held[i as usize])
            .collect()
    }

    /// Takes the server's reference: the same as ours keeps what we hold;
    /// another (or none recorded) starts a fresh part. Returns whether the
    /// partial download had to be dropped because the file changed.
    pub(super) fn adopt(&mut self, r: Reference) -> Result<bool> {
        if self.reference.as_ref() == Some(&r) {
            return Ok(false);
        }
        let recorded = read_record(&self.record_path);
        let same = recorded.as_ref() == Some(&r);
        let changed = recorded.is_some() && !same;
        let part = self.open_part(same, r.size)?;
        self.held = vec![false; r.count() as usize];
        if same {
            self.verify_held(&part, &r)?;
        } else {
            write_record(&self.record_path, &r)?;
        }
        self.prealloc = Some(crate::sys::Preallocator::for_file(&part));
        self.part = Some(part);
        let dropped = changed || (self.reference.is_some() && !same);
        self.restarted |= dropped;
        self.reference = Some(r);
        if self.resumed_from.is_none() {
            self.resumed_from = Some(self.held_bytes());
        }
        Ok(dropped)
    }

    fn open_part(&self, keep: bool, size: u64) -> Result<File> {
        let p = &self.part_path;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!keep)
            .open(p)
            .map_err(|e| local_err(format!("cannot open {}", p.display()), e))?;
        file.set_len(size)
            .map_err(|e| local_err(format!("cannot size {}", p.display()), e))?;
        Ok(file)
    }

    /// Reads what the part holds and keeps each block whose CRC-32 is the
    /// reference's (a block never written reads as zeros and fails, unless
    /// zeros are what it should hold).
    fn verify_held(&mut self, part: &File, r: &Reference) -> Result<()> {
        // Read in pieces, so a resume's memory does not grow with blocks.
        let mut buf = crate::sys::PageBuf::new(frames::PIECE);
        for i in 0..r.count() {
            let (off, len) = r.range(i);
            let mut crc = crc32fast::Hasher::new();
            let mut at = 0u64;
            while at < len {
                let b = &mut buf[..(len - at).min(frames::PIECE as u64) as usize];
                part.read_exact_at(b, off + at).map_err(|e| {
                    local_err(format!("cannot read {}", self.part_path.display()), e)
                })?;
                crc.update(b);
                at += b.len() as u64;
            }
            self.hashed += len;
            self.held[i as usize] = crc.finalize() == r.crcs[i as usize];
        }
        Ok(())
    }

    /// Every block is held: sync, rename into place, sync the directory,
    /// drop the record.
    pub(super) fn finish(&mut self) -> Result<u32> {
        let (Some(part), Some(r)) = (self.part.take(), &self.reference) else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "finished without a reference",
            ));
        };
        let dest = &self.dest;
        part.sync_all()
            .map_err(|e| local_err(format!("cannot sync {}", self.part_path.display()), e))?;
        fs::rename(&self.part_path, dest)
            .map_err(|e| local_err(format!("cannot rename into {}", dest.display()), e))?;
        // The rename is durable once the directory is synced ("" is ".").
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty());
        if let Ok(d) = File::open(dir.unwrap_or(Path::new("."))) {
            let _ = d.sync_all();
        }
        let _ = fs::remove_file(&self.record_path);
        Ok(r.whole())
    }
}

/// The recorded reference of a partial download, if a whole, undamaged
/// one is there (its last 4 bytes are the CRC-32 of the rest).
fn read_record(path: &Path) -> Option<Reference> {
    let bytes = fs::read(path).ok()?;
    let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
    let magic = body.get(..8)?;
    if magic != RECORD_MAGIC || crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    Reference::decode(&body[8..]).ok()
}

/// Writes the record atomically (temporary file, sync, rename), before
/// any byte of the part it vouches for.
fn write_record(path: &Path, r: &Reference) -> Result<()> {
    let mut body = RECORD_MAGIC.to_vec();
    body.extend_from_slice(&r.encode());
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    let tmp = path.with_extension("tmp");
    let err = |e| local_err(format!("cannot write {}", path.display()), e);
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Downloads the stored file `remote` from the server in `opts` to `dest`
/// (which must not exist unless `force`), resuming a partial download
/// made against the same version of the file, retrying as `opts` allows.
///
/// Progress is reported as for an upload: [`Progress::Connected`] with the
/// bytes held locally, [`Progress::Sending`] with the bytes of the file
/// here so far, [`Progress::ServerChanged`] when a partial download is
/// dropped because the file changed on the server.
///
/// Errors as [`super::send_file`]'s; a file the server does not have is
/// [`ErrorKind::Refused`] with the server's words.
pub fn get_file(
    remote: &str,
    dest: &Path,
    opts: &SendOptions,
    force: bool,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<GetOutcome> {
    get_file_as(remote, false, dest, opts, force, progress)
}

/// [`get_file`] of a file of a tree, named by its path below the storage
/// directory (`"path": 1`, on one connection): for a tree download's file
/// that is over what the server sends among the tree's blocks. Only for a
/// server that said it serves such gets.
pub(super) fn get_tree_file(
    path: &str,
    dest: &Path,
    opts: &SendOptions,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<GetOutcome> {
    get_file_as(path, true, dest, opts, true, progress)
}

fn get_file_as(
    remote: &str,
    by_path: bool,
    dest: &Path,
    opts: &SendOptions,
    force: bool,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<GetOutcome> {
    let started = Instant::now();
    let mut local = Local::new(dest, force)?;
    local.by_path = by_path;
    let mut up = Upload::new(dest, remote.to_owned(), opts, progress, started);
    loop {
        up.t.attempts += 1;
        let before = local.held_bytes();
        let err = match attempt(&mut up, &mut local) {
            Ok(()) => break,
            Err(e) => e,
        };
        if err.kind() == ErrorKind::Storage {
            return Err(err); // The local disk: retrying would not help.
        }
        let progressed = local.held_bytes() > before;
        match up.failed(err, progressed) {
            Next::Done(r) => r?,
            Next::Again => continue,
            Next::Retry(e) => up.back_off(e)?,
        }
    }
    let crc32 = local.finish()?;
    Ok(GetOutcome {
        path: dest.to_path_buf(),
        filesize: local.reference.as_ref().map_or(0, |r| r.size),
        crc32,
        resumed_from: local.resumed_from.unwrap_or(0),
        bytes_received: up.t.sent,
        bytes_hashed: local.hashed,
        blocks_repaired: local.repaired,
        restarted: local.restarted,
        attempts: up.t.attempts,
        encrypted: up.t.encrypted,
        elapsed: started.elapsed(),
        streams: up.t.streams,
        stream_notes: up.t.stream_notes.clone(),
        congestion: up.t.congestion.clone(),
        compress: opts.compress,
        compress_agreed: up.t.packed.agreed,
        compressed_blocks: up.t.packed.blocks,
        wire_bytes: wire_bytes(&up.t),
    })
}

/// File bytes received so far less what compression saved.
fn wire_bytes(t: &Tally) -> u64 {
    t.sent - t.packed.raw_bytes + t.packed.wire_bytes
}

/// One connection: connect (TLS as for uploads), ask, authenticate, take
/// the reference, then rounds of blocks until every one is held.
fn attempt(up: &mut Upload, local: &mut Local) -> Result<()> {
    let (sock, addr) = shell::connect(up)?;
    up.ever_connected = true;
    shell::tune(&sock);
    if let Some(cc) = &up.opts.congestion {
        up.t.congestion = crate::congestion::request(&sock, cc);
    }
    let reconnect = |up: &Upload| -> Result<TcpStream> {
        let (s, _) = shell::connect(up)?;
        shell::tune(&s);
        Ok(s)
    };
    let mut stream = secure::open(up, sock, &reconnect)?;
    up.t.encrypted = stream.is_encrypted();
    let (ask, why) = up
        .opts
        .streams
        .ask_on(super::streams::rtt_of(stream.as_ref()));
    if let Some(w) = why {
        up.t.note_once(w);
    }
    let io_timeout = Some(up.opts.io_timeout);
    stream
        .set_write_timeout(io_timeout)
        .map_err(|e| peer::lost(e, "configuring the socket"))?;
    let header =
        getwire::encode_get_header_by(&up.filename, local.by_path, ask, None, up.opts.compress)?;
    up.t.packed.agreed = false;
    stream
        .write_all(&header)
        .map_err(|e| peer::lost(e, "sending the request"))?;
    greet(up, stream.as_mut())?;
    let mut ticket = None;
    let r = reference(up, stream.as_mut(), &header[4..], &mut ticket)?;
    let total = r.size;
    if local.adopt(r)? {
        let remote = up.filename.clone();
        let _ = (up.progress)(&Progress::ServerChanged { remote: &remote });
    }
    let offset = local.held_bytes();
    if (up.progress)(&Progress::Connected {
        addr,
        offset,
        total,
    }) == Control::Cancel
    {
        return Err(cancelled());
    }
    match ticket {
        Some(t) if !local.missing().is_empty() => {
            streams::pull(up, stream.as_mut(), local, t, addr)
        }
        _ => rounds(up, stream.as_mut(), local),
    }
}

fn cancelled() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "cancelled; the partial download is kept for a resume",
    )
}

/// The server's first 8 bytes must be the version-2 magic.
fn greet(up: &Upload, stream: &mut dyn Transport) -> Result<()> {
    let _ = stream.set_read_timeout(Some(up.opts.handshake_timeout));
    let mut magic = [0u8; 8];
    if let Err(e) = stream.read_exact(&mut magic) {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // A legacy server closes on the request (its null CRC-32); so
            // does a connection that broke: retried, and said in words.
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "the server closed the connection before answering the download request (the connection broke, or it is a legacy server, which cannot send files)",
            ));
        }
        return Err(peer::lost(e, "waiting for the server's reply"));
    }
    if magic != v2::MAGIC {
        return Err(Error::new(
            ErrorKind::Protocol,
            "the peer did not answer as a bigtransfer server (no version-2 reply)",
        ));
    }
    let _ = stream.set_read_timeout(Some(up.opts.io_timeout));
    Ok(())
}

/// Reads one server frame (head and payload, at most `max` bytes).
fn read_frame(stream: &mut dyn Transport, max: usize, during: &str) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream
        .read_exact(&mut head)
        .map_err(|e| peer::lost(e, during))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > max {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "the server sent a frame of {len} bytes (tag 0x{:02x}), over the limit",
                head[0]
            ),
        ));
    }
    let mut p = vec![0u8; len];
    stream
        .read_exact(&mut p)
        .map_err(|e| peer::lost(e, during))?;
    Ok((head[0], p))
}

/// Until the reference: answers a challenge, keeps a session's ticket,
/// turns faults into errors.
fn reference(
    up: &mut Upload,
    stream: &mut dyn Transport,
    json: &[u8],
    ticket: &mut Option<crate::session::Ticket>,
) -> Result<Reference> {
    loop {
        let (tag, p) = read_frame(
            stream,
            v2::MAX_SERVER_FRAME,
            "waiting for the file's reference",
        )?;
        if tag == TAG_REFERENCE {
            return Reference::decode(&p);
        }
        let msg = v2::parse_server_msg(tag, &p).map_err(|_| {
            Error::new(
                ErrorKind::Protocol,
                format!("unexpected frame 0x{tag:02x} instead of the file's reference"),
            )
        })?;
        match msg {
            ServerMsg::Challenge(nonce) => answer(up, stream, json, nonce, None)?,
            ServerMsg::BoundChallenge { nonce, proof } => {
                answer(up, stream, json, nonce, Some(proof))?
            }
            ServerMsg::Join(t) => *ticket = Some(t),
            ServerMsg::Codec(name) => up.t.packed.agreed = agree(up.opts.compress, &name)?,
            other => return Err(refusal(other)),
        }
    }
}

/// The server's codec frame: compressed blocks may follow on this
/// connection, if that codec was offered.
fn agree(asked: crate::compress::Compress, name: &str) -> Result<bool> {
    if asked == crate::compress::Compress::Off || name != crate::compress::CODEC {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "the server chose codec \"{}\" for the download, which was not offered",
                crate::text::printable(name)
            ),
        ));
    }
    Ok(true)
}

/// What a server's message other than the reference means.
fn refusal(msg: ServerMsg) -> Error {
    match msg {
        ServerMsg::Fault(code, words) => {
            let words = crate::text::printable(&words).into_owned();
            if code.is_transient() {
                Error::new(ErrorKind::ConnectionLost, format!("server: {words} (a temporary fault)"))
            } else {
                Error::new(ErrorKind::Refused, format!("server: {words}"))
            }
        }
        ServerMsg::Error(words) => Error::new(
            ErrorKind::Refused,
            format!("server: {}", crate::text::printable(&words)),
        ),
        _ => Error::new(
            ErrorKind::Refused,
            "the server took the download request for an upload: it is too old to send files; update it",
        ),
    }
}

/// Answers the token challenge (inside TLS after checking the server's proof).
fn answer(
    up: &Upload,
    stream: &mut dyn Transport,
    json: &[u8],
    nonce: [u8; crate::auth::NONCE_LEN],
    proof: Option<[u8; crate::auth::ANSWER_LEN]>,
) -> Result<()> {
    let Some(token) = &up.opts.token else {
        return Err(Error::new(
            ErrorKind::Refused,
            "the server requires a token: pass --token-file (or set BIGTRANSFER_TOKEN)",
        ));
    };
    let a = match (proof, stream.channel_binding()) {
        (None, _) => token.answer(&nonce, json),
        (Some(p), Some(b)) if token.check_server_proof(&nonce, &b, json, &p) => {
            token.client_answer(&nonce, &b, json)
        }
        // A server that cannot prove the token learns nothing about ours.
        _ => [0u8; crate::auth::ANSWER_LEN],
    };
    stream
        .write_all(&v2::encode_answer(&a))
        .map_err(|e| peer::lost(e, "answering the challenge"))
}

/// Asks for the missing blocks, round after round, until all are held;
/// then says so (an empty want) so the server ends. Blocks are checked
/// and written on a helper thread ([`writer`]) while the next arrives;
/// whatever it wrote is held even when the connection breaks meanwhile.
fn rounds(up: &mut Upload, stream: &mut dyn Transport, local: &mut Local) -> Result<()> {
    let (Some(part), Some(prealloc), Some(_)) = (
        local.part.as_ref(),
        local.prealloc,
        local.reference.as_ref(),
    ) else {
        return Err(Error::new(ErrorKind::Protocol, "no reference"));
    };
    let mut w = writer::Writer::start(part, prealloc)
        .map_err(|e| local_err(format!("cannot write {}", local.part_path.display()), e))?;
    let got = rounds_with(up, stream, local, &mut w);
    let wrote = w.finish(&mut |l| land(up, local, l));
    match (got, wrote) {
        // The disk's failure says more than the connection's that followed.
        (_, Err(e)) if e.kind() == ErrorKind::Storage => Err(e),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

fn rounds_with(
    up: &mut Upload,
    stream: &mut dyn Transport,
    local: &mut Local,
    w: &mut writer::Writer,
) -> Result<()> {
    let paced = (Instant::now(), wire_bytes(&up.t));
    for round in 0..=super::MAX_REPAIR_ROUNDS {
        // What the last round brought is settled before asking again.
        w.drain(&mut |l| land(up, local, l))?;
        let want = local.missing();
        stream
            .write_all(&getwire::encode_want(&want))
            .map_err(|e| peer::lost(e, "asking for blocks"))?;
        if want.is_empty() {
            return Ok(());
        }
        if round > 0 {
            up.t.repairs += 1;
            local.repaired += want.len() as u64;
        }
        for i in want {
            receive_block(up, stream, local, i, w)?;
            pace(up, paced);
        }
    }
    w.drain(&mut |l| land(up, local, l))?;
    let last = local.damage.as_deref().unwrap_or("no reason known");
    Err(Error::new(
        ErrorKind::CrcMismatch,
        format!(
            "blocks kept arriving damaged after {} rounds of repair (the last: {last})",
            super::MAX_REPAIR_ROUNDS
        ),
    ))
}

/// Sleeps as long as `--limit-rate` wants for what arrived since `from`.
fn pace(up: &Upload, from: (Instant, u64)) {
    if let Some(rate) = up.opts.limit_rate.filter(|&r| r > 0) {
        let due = Duration::from_secs_f64((wire_bytes(&up.t) - from.1) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(from.0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Reads the data frame of block `i` (raw, or compressed when that was
/// agreed) piece by piece into buffers of the writer's, handing each over
/// to be written and its CRC-32 folded, then the frame's end to judge the
/// block; a damaged one is left missing, for the next round.
fn receive_block(
    up: &mut Upload,
    stream: &mut dyn Transport,
    local: &mut Local,
    i: u64,
    w: &mut writer::Writer,
) -> Result<()> {
    let Some(r) = &local.reference else {
        return Err(Error::new(ErrorKind::Protocol, "no reference"));
    };
    let (off, len) = r.range(i);
    let expect = r.crcs[i as usize];
    let agreed = up.t.packed.agreed;
    let mut to = ToWriter {
        w,
        land: &mut |l| land(up, local, l),
        i,
    };
    let frame = match frames::read_pieces(stream, (i, off, len), agreed, &mut to)? {
        frames::Raw::Block(u) => u,
        frames::Raw::Other(head) => return Err(fault_instead(stream, head)),
    };
    up.t.sent += len;
    if frame.packed {
        up.t.packed.blocks += 1;
        up.t.packed.raw_bytes += len;
        up.t.packed.wire_bytes += frame.wire;
    }
    w.end(writer::End {
        i,
        off,
        len,
        expect,
        frame,
    })?;
    w.poll(&mut |l| land(up, local, l))
}

/// Pieces of block `i` go to the writer; blocks it landed meanwhile to
/// `land`.
struct ToWriter<'a> {
    w: &'a mut writer::Writer,
    land: &'a mut dyn FnMut(writer::Landed) -> Result<()>,
    i: u64,
}

impl frames::Pieces for ToWriter<'_> {
    fn buffer(&mut self) -> Result<crate::sys::PageBuf> {
        self.w.buffer(self.land)
    }

    fn piece(&mut self, buf: crate::sys::PageBuf, len: usize, at: u64) -> Result<()> {
        self.w.piece(self.i, buf, len, at)
    }
}

/// A block back from the writer: held (progress is reported), damaged
/// (asked for again), or a failed write (the download ends; what was
/// written is kept for a resume).
fn land(up: &mut Upload, local: &mut Local, (i, outcome): writer::Landed) -> Result<()> {
    match outcome {
        writer::Outcome::Held => local.held[i as usize] = true,
        writer::Outcome::Damaged(why) => {
            local.damage = Some(why);
            return Ok(());
        }
        writer::Outcome::Failed(e) => {
            return Err(local_err(
                format!(
                    "cannot write {}; the partial download is kept for a resume",
                    local.part_path.display()
                ),
                e,
            ))
        }
        writer::Outcome::Skipped => return Ok(()),
    }
    let total = local.reference.as_ref().map_or(0, |r| r.size);
    let done = local.held_bytes();
    if (up.progress)(&Progress::Sending { done, total }) == Control::Cancel {
        return Err(cancelled());
    }
    Ok(())
}

/// A frame other than data where data was due: the server's fault, read
/// whole, as an error.
fn fault_instead(stream: &mut dyn Transport, head: [u8; 5]) -> Error {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > v2::MAX_TEXT + 2 {
        return Error::new(
            ErrorKind::Protocol,
            format!("unexpected frame 0x{:02x}", head[0]),
        );
    }
    let mut p = vec![0u8; len];
    if let Err(e) = stream.read_exact(&mut p) {
        return peer::lost(e, "reading the server's fault");
    }
    match v2::parse_server_msg(head[0], &p) {
        Ok(msg) => refusal(msg),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.bigtransfer-get");
        let r = Reference {
            size: 70_000,
            block: 65_536,
            mtime_ns: 9,
            crcs: vec![5, 6],
        };
        write_record(&path, &r).unwrap();
        assert_eq!(read_record(&path), Some(r));
        let mut bytes = fs::read(&path).unwrap();
        bytes[12] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_record(&path), None);
    }

    /// A write of the partial download that fails (a full or failing
    /// disk; here a part open for reading only) ends the download with a
    /// local-disk error in words, nothing counted as held, and the part
    /// and its record kept for a resume.
    #[test]
    fn a_failed_write_is_a_storage_error_and_the_part_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        const BLOCK: u64 = 1 << 16;
        let data: Vec<u8> = (0..3 * BLOCK).map(|x| (x % 253) as u8).collect();
        let r = Reference {
            size: data.len() as u64,
            block: BLOCK,
            mtime_ns: 3,
            crcs: data.chunks(BLOCK as usize).map(crc32fast::hash).collect(),
        };
        let mut local = Local::new(&dest, false).unwrap();
        local.adopt(r.clone()).unwrap();
        local.part = Some(File::open(&local.part_path).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut want = [0u8; 5 + 4 + 16];
            io::Read::read_exact(&mut s, &mut want).unwrap();
            for (i, b) in data.chunks(BLOCK as usize).enumerate() {
                let off = i as u64 * BLOCK;
                // The client may stop reading once the disk failed.
                let _ = s.write_all(&getwire::encode_data_head(off, BLOCK as u32));
                let _ = s.write_all(b);
                let _ = s.write_all(&crc32fast::hash(b).to_be_bytes());
            }
            want
        });
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut t = crate::transport::TcpTransport::new(sock).unwrap();
        let opts = SendOptions::new("127.0.0.1", addr.port());
        let mut progress = |_: &Progress| Control::Continue;
        let mut up = Upload::new(
            &dest,
            "out.bin".into(),
            &opts,
            &mut progress,
            Instant::now(),
        );
        let e = rounds(&mut up, &mut t, &mut local).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Storage, "{e}");
        let words = e.to_string();
        assert!(
            words.starts_with(&format!("cannot write {}", local.part_path.display()))
                && words.contains("the partial download is kept for a resume"),
            "{words}"
        );
        assert_eq!(local.held, vec![false; 3]);
        drop(t);
        let want = server.join().unwrap();
        assert_eq!(&want[..], &getwire::encode_want(&[0, 1, 2])[..]);
        assert!(local.part_path.exists() && local.record_path.exists());
        assert!(!dest.exists());
        assert_eq!(read_record(&local.record_path), Some(r));
    }

    #[test]
    fn part_paths_sit_beside_the_target_hidden() {
        let (p, r) = part_paths(Path::new("/d/big.img"));
        assert_eq!(p, Path::new("/d/.big.img.bigtransfer-part"));
        assert_eq!(r, Path::new("/d/.big.img.bigtransfer-get"));
    }
}
