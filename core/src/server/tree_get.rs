//! Serving a tree download (`"bt": {"op": "tree-get"}`, see
//! [`crate::tree::fetch`]): the named directory (or file) of the storage
//! directory is walked in manifest order and sent a page at a time; the
//! client then asks for the files of the page it does not hold, and each is
//! served as a single-file get is: its reference (size, block CRC-32s),
//! then the blocks asked for, each checked against the reference before it
//! goes out (a file changed meanwhile is refused for that file, never sent
//! as a mix of versions). A file over the limit (128 GiB, or the
//! server's lower `tree_get_file_limit`) gets an `ALONE` verdict when the
//! client offered to fetch such files alone (a single-file get by path,
//! `server::get`), else the refusal older clients always had.
//!
//! The remote path passed the tree's own name checks ([`RelPath`]); every
//! directory on the way and every file is opened with `O_NOFOLLOW` from the
//! storage directory's descriptor, so a symlink is never followed (symlinks
//! in the tree are listed as symlinks). The server's own state
//! (`.bt-tree-parts`, `.bigtransfer`) is never served.
//!
//! Not for the client's side (`client::tree_get`), single-file gets
//! (`server::get`) or S3 storage (`server::tree_get_store`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::tree::{open_dir, PARTS_DIR};
use super::{ConnInfo, Failed, Shared};
use crate::getwire::{self, Reference, TAG_REFERENCE, TAG_WANT};
use crate::transport::Transport;
use crate::tree::at::dir_flags;
use crate::tree::fetch::{self, BLOCK, MAX_FILE, NEXT, REQUEST};
use crate::tree::wire::{self, FrameReader};
use crate::tree::{EntryKind, PageBuilder, RelPath, Walked, Walker};
use crate::{Error, ErrorKind, Result};

/// Frames to the client are gathered up to this many bytes per write.
pub(super) const OUT_BUFFER: usize = 256 << 10;

/// What one session served, for the log.
#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
    entries: u64,
}

struct Session<'a> {
    sh: &'a Shared,
    io: Outbox,
    reader: FrameReader,
    buf: Vec<u8>,
    root: OwnedFd,
    /// The remote's parent ("" at the top): manifest paths start below it.
    parent: String,
    /// The files of the page last sent, by index, with their listed sizes.
    files: Vec<(RelPath, u64)>,
    /// One block, reused for every file (a fresh 1 MiB per small file
    /// would cost more than the file).
    block: Option<crate::sys::PageBuf>,
    /// Files over this are not sent among the tree's blocks.
    limit: u64,
    /// The client fetches such files alone (its header offered
    /// `"alone": 1`): they get an [`wire::ALONE`] verdict.
    alone: bool,
    t: Tally,
}

/// Serves a tree download of `remote` whose header (`header`, its JSON)
/// was read already; on a server with a token, once the client answered
/// its challenge (the same as a tree send's, covering this header).
pub(super) fn serve(
    sh: &Shared,
    conn: &ConnInfo,
    mut stream: Box<dyn Transport>,
    header: &[u8],
    remote: &str,
) -> std::result::Result<(), Failed> {
    let early = super::tree_auth::authenticate(sh, conn, &mut stream, header)?;
    if early.is_some_and(|e| e.first.is_some()) {
        let words = "refused a tree get: a request came before the manifest";
        let _ = wire::write_frame(&mut stream, wire::FAULT, words.as_bytes());
        return Err(Error::new(ErrorKind::Protocol, format!("{}: {words}", conn.peer)).into());
    }
    let _ = stream.set_read_timeout(Some(sh.cfg.idle_timeout));
    let big = BigFiles {
        limit: sh.cfg.tree_get_file_limit.min(MAX_FILE),
        alone: fetch::offers_alone(header),
    };
    #[cfg(feature = "s3")]
    if let Some(s3) = &sh.s3 {
        return super::tree_get_store::serve(sh, s3, conn, stream, remote, big);
    }
    let shown = crate::text::printable(remote).into_owned();
    let mut s = match Session::open(sh, stream, remote) {
        Ok(mut s) => {
            (s.limit, s.alone) = (big.limit, big.alone);
            s
        }
        Err((e, mut stream)) => {
            let _ = wire::write_frame(&mut stream, wire::FAULT, e.to_string().as_bytes());
            let _ = stream.close_write();
            return Err(Error::new(e.kind(), format!("{}: {shown}: get: {e}", conn.peer)).into());
        }
    };
    match s.run(remote) {
        Ok(()) => {
            let t = &s.t;
            (sh.logger)(&format!(
                "{}: {shown}: sent a tree ({} entries, {} files on request, {} bytes)",
                conn.peer, t.entries, t.files, t.bytes
            ));
            Ok(())
        }
        Err(e) => {
            if e.kind() != ErrorKind::ConnectionLost {
                let _ = s.io.flush();
                let _ = wire::write_frame(&mut s.io.stream, wire::FAULT, e.to_string().as_bytes());
            }
            Err(Error::new(e.kind(), format!("{shown}: tree get: {e}")).into())
        }
    }
}

fn refused(why: String) -> Error {
    Error::new(ErrorKind::Refused, why)
}

/// Why this server does not serve tree downloads at all, if it does not.
fn admit(sh: &Shared) -> Result<()> {
    if sh.remote_storage() {
        return Err(refused(
            "refused a tree get: this server stores in an object store; get serves only a local storage directory".into(),
        ));
    }
    Ok(())
}

/// The remote path, checked as a tree path and kept off the server's state.
fn remote_path(remote: &str) -> Result<RelPath> {
    let rel = RelPath::from_wire(remote).map_err(|e| refused(format!("cannot get it: {e}")))?;
    let top = rel.components().next().unwrap_or_default();
    if top == PARTS_DIR {
        return Err(refused(format!("no \"{rel}\" on the server")));
    }
    Ok(rel)
}

impl<'a> Session<'a> {
    fn open(
        sh: &'a Shared,
        stream: Box<dyn Transport>,
        remote: &str,
    ) -> std::result::Result<Session<'a>, (Error, Box<dyn Transport>)> {
        let found = admit(sh)
            .and_then(|()| remote_path(remote))
            .and_then(|rel| {
                let root = rfs::open(&sh.cfg.dir, dir_flags(), Mode::empty()).map_err(|e| {
                    Error::io(
                        ErrorKind::Storage,
                        "cannot open the storage directory",
                        e.into(),
                    )
                })?;
                Ok((rel, root))
            })
            .and_then(|(rel, root)| check_root(&root, &rel).map(|()| (rel, root)));
        match found {
            Ok((rel, root)) => Ok(Session {
                sh,
                io: Outbox::new(stream, OUT_BUFFER + BLOCK as usize + 64),
                reader: FrameReader::new(),
                buf: Vec::new(),
                root,
                parent: rel.parent_str().unwrap_or("").to_owned(),
                files: Vec::new(),
                block: None,
                limit: MAX_FILE,
                alone: false,
                t: Tally::default(),
            }),
            Err(e) => Err((e, stream)),
        }
    }

    fn run(&mut self, remote: &str) -> Result<()> {
        let mut walk = Walker::new(&self.sh.cfg.dir.join(remote))?;
        let mut carry: Option<Walked> = None;
        loop {
            let page = self.next_page(&mut walk, &mut carry);
            if page.is_empty() {
                self.io.send(wire::END, &[])?;
                return self.io.flush();
            }
            self.io.send(wire::PAGE, &page.finish())?;
            self.io.flush()?;
            if !self.answer_page()? {
                return Ok(());
            }
        }
    }

    /// The next page of the walk; what the walk leaves out is logged.
    fn next_page(&mut self, walk: &mut Walker, carry: &mut Option<Walked>) -> PageBuilder {
        let mut page = PageBuilder::new();
        self.files.clear();
        while let Some(w) = carry.take().or_else(|| walk.next()) {
            match w {
                Walked::Skipped { source, reason } => (self.sh.logger)(&format!(
                    "tree get: left out {}: {reason}",
                    source.display()
                )),
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
                    self.t.entries += 1;
                    if let EntryKind::File { size, .. } = entry.kind {
                        self.files.push((entry.path, size));
                    }
                }
            }
        }
        page
    }

    /// The client's requests for the page's files, until it asks for the
    /// next page (true) or ends (false).
    fn answer_page(&mut self) -> Result<bool> {
        loop {
            match next_ask(&mut self.io, &mut self.reader, &mut self.buf)? {
                Ask::File(idx, all) => self.serve_file(idx, all)?,
                Ask::Next => return Ok(true),
                Ask::End => return Ok(false),
            }
        }
    }

    /// One file: its reference (or a verdict why not), then its blocks.
    fn serve_file(&mut self, idx: usize, all: bool) -> Result<()> {
        let mut buf = self
            .block
            .take()
            .unwrap_or_else(|| crate::sys::PageBuf::new(BLOCK as usize));
        let r = self.serve_file_with(idx, all, &mut buf);
        self.block = Some(buf);
        r
    }

    fn serve_file_with(&mut self, idx: usize, all: bool, buf: &mut [u8]) -> Result<()> {
        let Some((path, listed)) = self.files.get(idx).cloned() else {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("a request for file {idx} of a page of {}", self.files.len()),
            ));
        };
        // By its listed size, before it is opened: a file that grew past
        // the limit since is caught by `compute` (at the protocol's limit)
        // and by the client (a size other than the manifest's).
        if listed > self.limit {
            let big = BigFiles {
                limit: self.limit,
                alone: self.alone,
            };
            return self.io.over_limit(&path, listed, big);
        }
        let opened = self.open_file(&path).and_then(|f| {
            let r = compute(&f, &path, buf)?;
            Ok((f, r))
        });
        let (file, r) = match opened {
            Ok(x) => x,
            Err(e) => return self.io.verdict(&path, &e.to_string()),
        };
        self.io.send(TAG_REFERENCE, &r.encode())?;
        self.t.files += 1;
        if all {
            // The whole file, and on to the next request: the client asks
            // again (not whole) for a file that arrived damaged.
            for i in 0..r.count() {
                if let Err(why) = self.send_block(&file, &path, &r, i, buf)? {
                    return self.io.verdict(&path, &why);
                }
            }
            return Ok(());
        }
        let mut want: Vec<u64> = Vec::new();
        for _ in 0..=crate::client::MAX_REPAIR_ROUNDS + 1 {
            for i in std::mem::take(&mut want) {
                if let Err(why) = self.send_block(&file, &path, &r, i, buf)? {
                    return self.io.verdict(&path, &why);
                }
            }
            self.io.flush()?;
            let tag = self.reader.read_frame(&mut self.io.stream, &mut self.buf)?;
            if tag != TAG_WANT {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("expected a want frame, got {tag:#04x}"),
                ));
            }
            want = getwire::decode_want(&self.buf, r.count())?;
            if want.is_empty() {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::Protocol,
            "too many rounds of blocks asked for one file",
        ))
    }

    /// The stored file at `path` (below the remote's parent), opened
    /// without following a symlink anywhere on the way.
    fn open_file(&self, path: &RelPath) -> Result<File> {
        let full = match self.parent.as_str() {
            "" => path.as_str().to_owned(),
            p => format!("{p}/{}", path.as_str()),
        };
        let dir_rel = full.rfind('/').map_or("", |at| &full[..at]);
        let dir = open_dir(&self.root, dir_rel)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&dir, path.file_name(), flags, Mode::empty()).map_err(|e| {
            Error::io(
                ErrorKind::Storage,
                format!("cannot open \"{path}\" on the server"),
                io::Error::from(e),
            )
        })?;
        Ok(File::from(fd))
    }

    /// Block `i`, checked against the reference first: `Err(words)` when
    /// the file no longer matches it.
    fn send_block(
        &mut self,
        file: &File,
        path: &RelPath,
        r: &Reference,
        i: u64,
        buf: &mut [u8],
    ) -> Result<std::result::Result<(), String>> {
        let (off, len) = r.range(i);
        let b = &mut buf[..len as usize];
        let crc = file.read_exact_at(b, off).map(|()| crc32fast::hash(b));
        if crc.as_ref().ok() != Some(&r.crcs[i as usize]) {
            return Ok(Err(format!(
                "\"{path}\" changed on the server during the download (block {i}); get it again"
            )));
        }
        self.io.data(off, b, r.crcs[i as usize])?;
        self.t.bytes += len;
        Ok(Ok(()))
    }
}

/// Frames to the client of a tree download, gathered up to
/// [`OUT_BUFFER`] and written together (many small files to one write),
/// from the storage directory or an object store alike.
pub(super) struct Outbox {
    pub(super) stream: Box<dyn Transport>,
    out: Vec<u8>,
}

impl Outbox {
    pub(super) fn new(stream: Box<dyn Transport>, capacity: usize) -> Outbox {
        Outbox {
            stream,
            out: Vec::with_capacity(capacity),
        }
    }

    /// A data frame: the block at `off`, then its CRC-32.
    fn data(&mut self, off: u64, bytes: &[u8], crc: u32) -> Result<()> {
        let len =
            u32::try_from(bytes.len()).map_err(|_| cut(io::ErrorKind::InvalidInput.into()))?;
        self.out
            .extend_from_slice(&getwire::encode_data_head(off, len));
        self.out.extend_from_slice(bytes);
        self.out.extend_from_slice(&crc.to_be_bytes());
        self.flush_if_full()
    }

    /// The verdict on a file of `size` bytes over the limit: fetch it
    /// alone (to a client that offered to), or the refusal an older
    /// client has always had.
    pub(super) fn over_limit(&mut self, path: &RelPath, size: u64, big: BigFiles) -> Result<()> {
        if big.alone {
            let why = format!(
                "{size} bytes, over the {} a tree get sends among its blocks: fetch it alone",
                big.limit
            );
            let p = wire::verdict(wire::ALONE, path.as_str(), &why);
            return self.send(wire::VERDICT, &p);
        }
        self.verdict(path, &too_big(path, size, big.limit))
    }

    /// A failed file's verdict, in words.
    pub(super) fn verdict(&mut self, path: &RelPath, why: &str) -> Result<()> {
        let p = wire::verdict(wire::FAILED, path.as_str(), why);
        self.send(wire::VERDICT, &p)
    }

    pub(super) fn send(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        wire::write_frame(&mut self.out, tag, payload).map_err(cut)?;
        self.flush_if_full()
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.out.len() >= OUT_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).map_err(cut)?;
            self.out.clear();
        }
        Ok(())
    }
}

/// What the client of a tree download asks next, between manifest pages.
pub(super) enum Ask {
    /// A file of the page last sent, by index; `all`: from its first block.
    File(usize, bool),
    /// The next manifest page.
    Next,
    /// Nothing more.
    End,
}

/// Reads the client's next request, writing out what was gathered first
/// when nothing more is waiting (answers to requests already here go out
/// together).
pub(super) fn next_ask(
    io: &mut Outbox,
    reader: &mut FrameReader,
    buf: &mut Vec<u8>,
) -> Result<Ask> {
    if !reader.has_frame() {
        io.flush()?;
    }
    match reader.read_frame(&mut io.stream, buf)? {
        REQUEST => {
            let (idx, all) = fetch::decode_request(buf)?;
            Ok(Ask::File(idx as usize, all))
        }
        NEXT => Ok(Ask::Next),
        wire::END => Ok(Ask::End),
        other => Err(Error::new(
            ErrorKind::Protocol,
            format!("unexpected frame {other:#04x} in a tree get"),
        )),
    }
}

pub(super) fn cut(e: io::Error) -> Error {
    Error::io(ErrorKind::ConnectionLost, "the tree get was cut", e)
}

/// How a tree download treats files over its limit (the server's
/// `tree_get_file_limit`, never over [`MAX_FILE`]).
#[derive(Clone, Copy)]
pub(super) struct BigFiles {
    pub(super) limit: u64,
    /// The client offered to fetch them alone.
    pub(super) alone: bool,
}

/// Why a file over the limit is not sent to a client that does not fetch
/// such files alone (the words an older server gave, at the protocol's
/// limit).
pub(super) fn too_big(path: &RelPath, size: u64, limit: u64) -> String {
    if limit == MAX_FILE {
        format!("\"{path}\" is {size} bytes, over the {MAX_FILE} (128 GiB) a tree get serves; get it alone (bigtransfer get)")
    } else {
        format!("\"{path}\" is {size} bytes, over the {limit} bytes this server's tree get serves; get it alone (bigtransfer get)")
    }
}

/// The remote must be a directory or a regular file reached without a
/// symlink on the way.
fn check_root(root: &OwnedFd, rel: &RelPath) -> Result<()> {
    let not_there = || refused(format!("no \"{rel}\" on the server"));
    let dir = open_dir(root, rel.parent_str().unwrap_or("")).map_err(|_| not_there())?;
    let st = rfs::statat(&dir, rel.file_name(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        if e == rustix::io::Errno::NOENT {
            not_there()
        } else {
            Error::io(
                ErrorKind::Storage,
                format!("cannot look at \"{rel}\""),
                e.into(),
            )
        }
    })?;
    match rfs::FileType::from_raw_mode(st.st_mode) {
        rfs::FileType::Directory | rfs::FileType::RegularFile => Ok(()),
        rfs::FileType::Symlink => Err(refused(format!(
            "\"{rel}\" is a symlink on the server; symlinks are not followed"
        ))),
        _ => Err(refused(format!(
            "\"{rel}\" is neither a file nor a directory"
        ))),
    }
}

/// The reference of a file of the tree, in [`BLOCK`]s, read whole; the
/// size it had when opened must be the size after the read.
fn compute(file: &File, path: &RelPath, buf: &mut [u8]) -> Result<Reference> {
    let err = |e| Error::io(ErrorKind::Storage, format!("cannot read \"{path}\""), e);
    let m = file.metadata().map_err(err)?;
    if !m.is_file() {
        return Err(refused(format!("\"{path}\" is not a regular file")));
    }
    let size = m.len();
    if size > MAX_FILE {
        return Err(refused(too_big(path, size, MAX_FILE)));
    }
    if size > BLOCK {
        crate::sys::advise_sequential(file);
    }
    let count = crate::v2::block_count(size, BLOCK);
    let mut crcs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (off, len) = crate::v2::block_range(size, BLOCK, i);
        let b = &mut buf[..len as usize];
        file.read_exact_at(b, off).map_err(err)?;
        crcs.push(crc32fast::hash(b));
    }
    let after = file.metadata().map_err(err)?;
    if after.len() != size {
        return Err(Error::new(
            ErrorKind::Storage,
            format!("\"{path}\" changed on the server while it was being read; get it again"),
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let mtime_ns = (m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128).max(0) as u64;
    Ok(Reference {
        size,
        block: BLOCK,
        mtime_ns,
        crcs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_in_words_before_it_is_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("huge");
        let file = File::create(&p).expect("create");
        // Sparse: no disk space is used, and nothing is read.
        file.set_len(MAX_FILE + 1).expect("set_len");
        let file = File::open(&p).expect("open");
        let path = RelPath::from_wire("t/huge").expect("path");
        let mut buf = vec![0u8; BLOCK as usize];
        let Err(err) = compute(&file, &path, &mut buf) else {
            panic!("a file over the limit was read");
        };
        assert_eq!(err.kind(), ErrorKind::Refused);
        let text = err.to_string();
        assert!(
            text.contains("\"t/huge\" is 137438953473 bytes, over the 137438953472 (128 GiB) a tree get serves; get it alone"),
            "{text}"
        );
    }
}
