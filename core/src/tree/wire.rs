//! The frames of a tree session (`"bt": {"v": 2, "op": "tree"}`), shared by
//! the client's sender and the server's receiver: tags, the frame head and
//! blocking read/write of whole frames. See `docs/PROTOCOL.md`, "Tree
//! sessions".
//!
//! Not for what the frames mean (the client's `client::tree` and the
//! server's `server::tree` decide) nor for the manifest page encoding
//! ([`super::manifest`]).

use std::io::{self, Read, Write};

use crate::{Error, ErrorKind, Result};

/// Client: one manifest page ([`super::encode_page`] bytes).
pub const PAGE: u8 = b'M';
/// Client: the manifest ended (empty payload); the server finishes.
pub const END: u8 = b'E';
/// Client: the data of the next file of the page starts: `index:u32`
/// (among the page's files) and `offset:u64` (where the data resumes).
pub const BEGIN: u8 = b'B';
/// Client: file bytes, in order.
pub const DATA: u8 = b'D';
/// Client: `len:u64` zero bytes (a hole) in place of data.
pub const HOLE: u8 = b'Z';
/// Client: the file's data ended; `crc32:u32` of the whole file.
pub const CHECK: u8 = b'C';
/// Client: the answer to the server's token challenge (32 bytes), sent
/// when a `C` challenge came after `MAGIC` (see `docs/PROTOCOL.md`).
pub const ANSWER: u8 = b'A';
/// Server: the token challenge, right after `MAGIC` on a server with a
/// token: the version-2 challenge frame, byte for byte.
pub const CHALLENGE: u8 = b'C';
/// Server: the state of each file of the last page, in order:
/// `status:u8 offset:u64` per file (see [`SEND`], [`HELD`], [`REFUSED`]),
/// or `status:u8 offset:u64 crc32:u32` when the client's header asked for
/// verified holds ([`HELD_BY_CRC`]; see [`CHECK_CRC`]).
pub const STATE: u8 = b'S';
/// Server: a verdict on one entry: `status:u8 path_len:u16 path text`.
pub const VERDICT: u8 = b'V';
/// Server: the session ended; `text` (a summary for the log) follows.
pub const FINISHED: u8 = b'F';
/// Server: the session is refused or failed; `text` says why.
pub const FAULT: u8 = b'X';

/// File state: send the data from `offset`.
pub const SEND: u8 = 0;
/// File state: the server already holds this file: nothing to send. Only
/// a server answering a client that did not ask for [`HELD_BY_CRC`] says
/// it from size and mtime alone (tree sessions of before verified holds).
pub const HELD: u8 = 1;
/// File state: refused (a verdict frame before the state said why).
pub const REFUSED: u8 = 2;
/// File state (only with [`HELD_BY_CRC`]): the server holds a file of
/// this path, size and mtime whose whole CRC-32 is the record's `crc32`.
/// The client hashes its own file: the same CRC-32 means held (nothing
/// sent, no frame); another means the content changed though size and
/// mtime did not, and the client sends it from `offset` like [`SEND`].
pub const CHECK_CRC: u8 = 3;

/// The key in the tree header's `"bt"` object by which a client asks for
/// verified holds: `"held": "crc"` (state records of 13 bytes, with
/// [`CHECK_CRC`] in place of [`HELD`]).
pub const HELD_BY_CRC: &str = "crc";
/// Bytes of one file's record in a [`STATE`] frame without verified holds.
pub const STATE_RECORD: usize = 9;
/// Bytes of one file's record in a [`STATE`] frame with verified holds.
pub const STATE_RECORD_CRC: usize = 13;

/// Verdict: stored and verified.
pub const OK: u8 = 0;
/// Verdict: the data did not match its CRC-32 (the part is dropped; a
/// new send starts it again).
pub const FAILED: u8 = 1;
/// Verdict: not stored (a conflict, a name in use); the text says why.
pub const NOT_STORED: u8 = 2;
/// Verdict: left out on purpose, not an error: a symlink or an empty
/// directory on a server that stores in S3 (objects cannot be either).
pub const SKIPPED: u8 = 3;
/// Verdict of a tree download, only to a client whose header offered
/// `"alone": 1` ([`crate::tree::fetch::ALONE_KEY`]): the file is over what
/// this server serves inside a tree; the client fetches it by itself with
/// a single-file get by path (`"path": 1`, see [`crate::getwire`]).
pub const ALONE: u8 = 4;

/// Most payload bytes in one frame (a data frame carries at most 1 MiB;
/// a manifest page at most [`super::manifest::MAX_PAGE_BYTES`]).
pub const MAX_FRAME: usize = 2 << 20;
/// Most file bytes in one [`DATA`] frame.
pub const MAX_DATA: usize = 1 << 20;

/// Writes one frame (`tag:u8 len:u32 payload`).
pub fn write_frame(w: &mut dyn Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&len.to_be_bytes());
    if payload.len() < 64 * 1024 {
        // One write for a small frame: no partial TLS record per head.
        let mut all = Vec::with_capacity(5 + payload.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(payload);
        return w.write_all(&all);
    }
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Reads one frame into `buf` (resized to the payload); its tag.
pub fn read_frame(r: &mut dyn Read, buf: &mut Vec<u8>) -> Result<u8> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(lost)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("a tree frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf).map_err(lost)?;
    Ok(head[0])
}

/// Reads frames through a buffer of its own: many small frames (a verdict
/// per file, a few frames per small file) cost one read, not two each.
/// A payload larger than the buffer is read straight into its place.
#[derive(Debug)]
pub struct FrameReader {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> FrameReader {
        FrameReader::new()
    }
}

impl FrameReader {
    /// An empty reader with a 256 KiB buffer.
    pub fn new() -> FrameReader {
        FrameReader {
            data: vec![0; 256 << 10],
            start: 0,
            end: 0,
        }
    }

    /// Whether a whole frame is buffered already (it reads without
    /// waiting, though the socket may have nothing).
    pub fn has_frame(&self) -> bool {
        let have = &self.data[self.start..self.end];
        have.len() >= 5 && be32(have, 1).is_some_and(|n| have.len() >= 5 + n as usize)
    }

    /// Reads one frame into `out` (resized to the payload); its tag.
    pub fn read_frame(&mut self, r: &mut dyn Read, out: &mut Vec<u8>) -> Result<u8> {
        self.fill(r, 5)?;
        let head = &self.data[self.start..self.start + 5];
        let tag = head[0];
        let len = be32(head, 1).unwrap_or(u32::MAX) as usize;
        if len > MAX_FRAME {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("a tree frame of {len} bytes is over the limit of {MAX_FRAME}"),
            ));
        }
        self.start += 5;
        if len + 5 <= self.data.len() {
            self.fill(r, len)?;
            out.clear();
            out.extend_from_slice(&self.data[self.start..self.start + len]);
            self.start += len;
            return Ok(tag);
        }
        let have = self.end - self.start;
        out.resize(len, 0);
        out[..have].copy_from_slice(&self.data[self.start..self.end]);
        (self.start, self.end) = (0, 0);
        r.read_exact(&mut out[have..]).map_err(lost)?;
        Ok(tag)
    }

    /// Buffers at least `need` bytes.
    fn fill(&mut self, r: &mut dyn Read, need: usize) -> Result<()> {
        if self.end - self.start >= need {
            return Ok(());
        }
        if self.start + need > self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        while self.end - self.start < need {
            match r.read(&mut self.data[self.end..]) {
                Ok(0) => return Err(lost(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(e)),
            }
        }
        Ok(())
    }
}

fn lost(e: io::Error) -> Error {
    Error::io(ErrorKind::ConnectionLost, "the tree session was cut", e)
}

/// A verdict payload.
pub fn verdict(status: u8, path: &str, text: &str) -> Vec<u8> {
    let path = &path.as_bytes()[..path.len().min(u16::MAX as usize)];
    let text = cut(text, crate::v2::MAX_TEXT);
    let mut p = Vec::with_capacity(3 + path.len() + text.len());
    p.push(status);
    p.extend_from_slice(&(path.len() as u16).to_be_bytes());
    p.extend_from_slice(path);
    p.extend_from_slice(text.as_bytes());
    p
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads a verdict payload: status, path, text.
pub fn parse_verdict(p: &[u8]) -> Result<(u8, String, String)> {
    let bad = || Error::new(ErrorKind::Protocol, "a malformed verdict frame");
    if p.len() < 3 {
        return Err(bad());
    }
    let n = u16::from_be_bytes([p[1], p[2]]) as usize;
    let path = p.get(3..3 + n).ok_or_else(bad)?;
    let text = &p[3 + n..];
    Ok((
        p[0],
        String::from_utf8_lossy(path).into_owned(),
        String::from_utf8_lossy(text).into_owned(),
    ))
}

/// Big-endian u64 at `at` (None past the end).
pub fn be64(p: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = p.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Big-endian u32 at `at` (None past the end).
pub fn be32(p: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = p.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_verdicts_round_trip() {
        let mut out = Vec::new();
        write_frame(&mut out, DATA, b"abc").unwrap();
        write_frame(&mut out, VERDICT, &verdict(NOT_STORED, "a/b c", "exists")).unwrap();
        let mut r = &out[..];
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), DATA);
        assert_eq!(buf, b"abc");
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), VERDICT);
        let (s, p, t) = parse_verdict(&buf).unwrap();
        assert_eq!((s, p.as_str(), t.as_str()), (NOT_STORED, "a/b c", "exists"));
        assert!(parse_verdict(&[0, 0, 9]).is_err());
        // The buffered reader gives the same frames, big or small.
        let big = vec![7u8; 300 << 10];
        write_frame(&mut out, DATA, &big).unwrap();
        write_frame(&mut out, END, &[]).unwrap();
        let mut fr = FrameReader::new();
        let mut r = &out[..];
        assert_eq!(fr.read_frame(&mut r, &mut buf).unwrap(), DATA);
        assert_eq!(buf, b"abc");
        assert!(fr.has_frame());
        assert_eq!(fr.read_frame(&mut r, &mut buf).unwrap(), VERDICT);
        assert_eq!(fr.read_frame(&mut r, &mut buf).unwrap(), DATA);
        assert_eq!(buf, big);
        assert_eq!(fr.read_frame(&mut r, &mut buf).unwrap(), END);
        assert!(buf.is_empty() && !fr.has_frame());
        assert!(fr.read_frame(&mut r, &mut buf).is_err());
        let huge = [DATA, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..], &mut buf).is_err());
    }
}
