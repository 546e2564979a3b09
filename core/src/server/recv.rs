//! Receiving an admitted upload: protocol 1 into a [`HeldPart`], protocol
//! 2 block by block into a [`BlockPart`], with repair rounds, and the
//! verdict. Every way out of the data phase checkpoints what is good and
//! says (in protocol 2) why it ended. Not for admission (see `conn`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::claims::Claim;
use super::conn::{net_err, Reservation};
use super::fault::{Fault, Voice};
use super::{Shared, RATE_WINDOW, RECV_BUFFER};
use crate::blocks::{BlockPart, Recovery};
use crate::proto::{self, Header, Verdict};
use crate::store::{Fresh, Identity};
use crate::v2::{self, FaultCode};
use crate::{Error, ErrorKind, Result};

/// Most rounds of block repair before an upload is declared failed.
pub const MAX_REPAIR_ROUNDS: u32 = 5;

/// One admitted upload being received.
pub(super) struct Receive<'a, 'c> {
    pub(super) sh: &'a Shared,
    pub(super) stream: &'a mut TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) claim: &'a Claim<'c>,
    pub(super) reservation: &'a Reservation<'a>,
    pub(super) voice: Voice,
}

/// The minimum data rate, checked window by window.
struct RateFloor {
    min: u64,
    window: std::time::Duration,
    start: Instant,
    bytes: u64,
}

impl RateFloor {
    /// A floor of `min` bytes/s over windows of the idle timeout, at most
    /// [`RATE_WINDOW`] (so a test with a short timeout sees it act soon).
    fn new(sh: &Shared) -> RateFloor {
        RateFloor {
            min: sh.cfg.min_rate,
            window: sh.cfg.idle_timeout.min(RATE_WINDOW),
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes; an error when a whole window passed below the floor.
    fn count(&mut self, n: usize) -> Result<()> {
        self.bytes += n as u64;
        let elapsed = self.start.elapsed();
        if elapsed < self.window {
            return Ok(());
        }
        let need = (self.min as f64 * elapsed.as_secs_f64()) as u64;
        if self.min > 0 && self.bytes < need {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "too slow: {} bytes in {} s, under the server's minimum of {} bytes/s",
                    self.bytes,
                    elapsed.as_secs(),
                    self.min
                ),
            ));
        }
        self.start = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

impl Receive<'_, '_> {
    /// Reads until `buf` is full, so that the disk sees large writes whatever
    /// sizes the socket delivers. Returns the bytes read and, if it stopped
    /// early, why: end of stream, a socket error, a takeover, or a rate
    /// under the floor.
    fn fill(
        &mut self,
        buf: &mut [u8],
        floor: &mut RateFloor,
        during: &str,
    ) -> (usize, Option<Error>) {
        let mut filled = 0;
        while filled < buf.len() {
            let err = match self.stream.read(&mut buf[filled..]) {
                Ok(0) => io::ErrorKind::UnexpectedEof.into(),
                Ok(n) => {
                    filled += n;
                    self.claim.received();
                    match floor.count(n) {
                        Ok(()) => continue,
                        Err(e) => return (filled, Some(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            return (filled, Some(self.why_stopped(err, during)));
        }
        (filled, None)
    }

    fn why_stopped(&self, e: io::Error, during: &str) -> Error {
        if self.claim.taken_over() {
            return Error::new(
                ErrorKind::Refused,
                format!(
                    "another connection of the same source took over the upload of {}",
                    self.claim.name
                ),
            );
        }
        net_err(e, during)
    }

    fn fault_for(&self, e: &Error) -> FaultCode {
        if self.claim.taken_over() {
            FaultCode::TakenOver
        } else if e.kind() == ErrorKind::TimedOut {
            FaultCode::TooSlow
        } else {
            FaultCode::BadRequest
        }
    }

    fn arrived(&self, n: usize) {
        self.sh
            .counters
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        self.reservation.arrived(n as u64);
    }

    /// A version-1 upload: offset, bytes, verdict.
    pub(super) fn serve_v1(&mut self, header: &Header) -> Result<()> {
        let (sh, peer, name) = (self.sh, self.peer, &self.claim.name);
        let id = Identity {
            name: name.clone(),
            filesize: header.filesize,
            crc32: header.crc32,
        };
        let (mut held, fresh) = sh.store.begin(id)?;
        if let Some(Fresh::OtherSource) = fresh {
            (sh.logger)(&format!("{peer}: {name}: held part was of another source (size or CRC-32 differ); starting over"));
        } else if let Some(Fresh::Damaged(why)) = &fresh {
            (sh.logger)(&format!(
                "{peer}: {name}: held part not resumable ({why}); starting over"
            ));
        }
        let offset = held.offset();
        (sh.logger)(&format!(
            "{peer}: receiving {name} ({} bytes) from offset {offset}",
            header.filesize
        ));
        self.stream
            .write_all(&proto::encode_offset(offset))
            .map_err(|e| net_err(e, "sending the offset"))?;
        let mut buf = crate::sys::PageBuf::new(RECV_BUFFER);
        let mut floor = RateFloor::new(sh);
        while held.offset() < header.filesize {
            let want = ((header.filesize - held.offset()) as usize).min(buf.len());
            let (n, stop) = self.fill(&mut buf[..want], &mut floor, "receiving data");
            // What arrived before a failure was received: keep it too.
            if let Err(e) = held.write(&buf[..n]) {
                self.claim.ending();
                let at = held.offset();
                let kept = match held.checkpoint() {
                    Ok(()) => format!("held part kept at byte {at} for resume"),
                    Err(c) => format!(
                        "checkpoint also failed ({c}); resume from byte {}",
                        held.durable().offset
                    ),
                };
                return Err(Error::new(e.kind(), format!("{name}: {e}; {kept}")));
            }
            self.arrived(n);
            if let Some(e) = stop {
                self.claim.ending();
                held.checkpoint()?;
                let (at, size) = (held.offset(), header.filesize);
                let what = if e.kind() == ErrorKind::ConnectionLost && e.io_error().is_none() {
                    "client disconnected".to_string()
                } else {
                    e.to_string()
                };
                return Err(Error::new(
                    e.kind(),
                    format!("{name}: {what} at byte {at} of {size}; held part kept for resume"),
                ));
            }
        }
        self.claim.ending();
        let verdict = held.finish()?;
        self.count_verdict(
            verdict == Verdict::Ok,
            header.filesize,
            1,
            held.prefix_problem(),
        );
        self.stream
            .write_all(verdict.as_bytes())
            .map_err(|e| net_err(e, "sending the verdict"))?;
        let _ = self.stream.shutdown(Shutdown::Write);
        Ok(())
    }

    fn count_verdict(&self, ok: bool, size: u64, version: u8, problem: Option<&str>) {
        let (sh, peer, name) = (self.sh, self.peer, &self.claim.name);
        if ok {
            sh.counters.completed.fetch_add(1, Ordering::Relaxed);
            let proto = if version == 2 { ", protocol 2" } else { "" };
            (sh.logger)(&format!(
                "{peer}: {name}: CRC32_OK ({size} bytes{proto}, stored)"
            ));
        } else {
            sh.counters.crc_errors.fetch_add(1, Ordering::Relaxed);
            let why = problem.unwrap_or("CRC-32 of the received file differs from the header's");
            (sh.logger)(&format!(
                "{peer}: {name}: CRC32_ERROR: {why}; received bytes discarded"
            ));
        }
    }

    /// A version-2 upload: held list, data frames, end, repair or verdict.
    pub(super) fn serve_v2(&mut self, filesize: u64, offer: v2::Offer) -> Result<()> {
        let mut bp = self.open_v2(filesize, offer.block_size)?;
        let mut buf = crate::sys::PageBuf::new(RECV_BUFFER);
        let mut floor = RateFloor::new(self.sh);
        let mut rounds = 0u32;
        loop {
            let mut tag = [0u8; 1];
            let (_, stop) = self.fill(&mut tag, &mut floor, "waiting for the next block");
            if let Some(e) = stop {
                return Err(self.cut_off(&mut bp, e));
            }
            let mut rest = [0u8; v2::MAX_CLIENT_HEAD];
            let len = v2::client_head_len(tag[0]).map_err(|e| self.fail_v2(&mut bp, e))?;
            let (_, stop) = self.fill(&mut rest[..len], &mut floor, "reading a frame head");
            if let Some(e) = stop {
                return Err(self.cut_off(&mut bp, e));
            }
            let (frame, idx) =
                v2::parse_client_head(tag[0], &rest[..len], filesize, offer.block_size)
                    .map_err(|e| self.fail_v2(&mut bp, e))?;
            match frame {
                v2::ClientFrame::Data { offset, len } => {
                    self.receive_block(&mut bp, &mut buf, &mut floor, idx, offset, len)?
                }
                v2::ClientFrame::Answer(_) => {
                    let e = Error::new(ErrorKind::Protocol, "unexpected answer frame");
                    return Err(self.fail_v2(&mut bp, e));
                }
                v2::ClientFrame::End { crc32 } => {
                    if self.end_v2(&mut bp, crc32, &mut rounds)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Opens the held blocks and tells the client what is held.
    fn open_v2(&mut self, filesize: u64, block: u64) -> Result<BlockPart> {
        let (sh, peer, name) = (self.sh, self.peer, &self.claim.name);
        let (bp, recovery) = match BlockPart::begin(&sh.store, name, filesize, block) {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("server storage error: {e}");
                let f = Fault::storage(Error::new(e.kind(), msg));
                return Err(self.voice.refuse(self.stream, f));
            }
        };
        match &recovery {
            Recovery::Reread(why) => (sh.logger)(&format!(
                "{peer}: {name}: {why}: re-read its blocks to verify them"
            )),
            Recovery::Discarded(why) => (sh.logger)(&format!(
                "{peer}: {name}: held part not usable ({why}); starting over"
            )),
            _ => {}
        }
        let held = bp.held();
        (sh.logger)(&format!(
            "{peer}: receiving {name} ({filesize} bytes, protocol 2, blocks of {block}); holds {held} bytes in {} verified blocks",
            bp.held_crcs().len()
        ));
        let hello = v2::encode_server_msg(&v2::ServerMsg::Held {
            held,
            block_size: block,
            crcs: bp.held_crcs().to_vec(),
        });
        self.stream
            .write_all(&hello)
            .map_err(|e| net_err(e, "sending the held block list"))?;
        Ok(bp)
    }

    fn receive_block(
        &mut self,
        bp: &mut BlockPart,
        buf: &mut [u8],
        floor: &mut RateFloor,
        idx: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if let Err(e) = bp.begin_block(idx) {
            return Err(self.storage_failed(bp, e));
        }
        let mut h = crc32fast::Hasher::new();
        let mut pos = 0u64;
        while pos < len {
            let want = ((len - pos) as usize).min(buf.len());
            let (n, stop) = self.fill(&mut buf[..want], floor, &format!("receiving block {idx}"));
            if let Some(e) = stop {
                // An incomplete block is worth nothing: it stays missing.
                return Err(self.cut_off(bp, e));
            }
            h.update(&buf[..n]);
            if let Err(e) = bp.write_at(offset + pos, &buf[..n]) {
                // The block is incomplete: it stays missing.
                let _ = bp.record_block(idx, 0, false);
                return Err(self.storage_failed(bp, e));
            }
            pos += n as u64;
            self.arrived(n);
        }
        let mut trailer = [0u8; 4];
        let (_, stop) = self.fill(&mut trailer, floor, "reading a block checksum");
        if let Some(e) = stop {
            return Err(self.cut_off(bp, e));
        }
        let got = h.finalize();
        let good = got == u32::from_be_bytes(trailer);
        if !good {
            (self.sh.logger)(&format!(
                "{}: {}: block {idx} arrived damaged; will ask for it again",
                self.peer, self.claim.name
            ));
        }
        bp.record_block(idx, got, good)
    }

    /// The client's end frame: ask for repairs, or verify and store.
    /// Returns whether the upload ended.
    fn end_v2(&mut self, bp: &mut BlockPart, crc32: u32, rounds: &mut u32) -> Result<bool> {
        let (sh, peer, name) = (self.sh, self.peer, &self.claim.name);
        // The verdict is taken over the bytes on disk: blocks that changed
        // there behind our back are asked for again.
        match bp.recheck_on_disk() {
            Ok(bad) if !bad.is_empty() => (sh.logger)(&format!(
                "{peer}: {name}: {} held block(s) changed on disk behind the server's back; asking for them again",
                bad.len()
            )),
            Ok(_) => {}
            Err(e) => return Err(self.storage_failed(bp, e)),
        }
        let missing = bp.missing();
        if !missing.is_empty() {
            *rounds += 1;
            if *rounds > MAX_REPAIR_ROUNDS {
                let msg = format!(
                    "CRC32_ERROR: {} block(s) still damaged after {MAX_REPAIR_ROUNDS} repair rounds (first: block {}); the link keeps corrupting data or the source keeps changing",
                    missing.len(), missing[0]);
                return Err(self.finish_failed(bp, msg));
            }
            bp.checkpoint()?;
            (sh.logger)(&format!(
                "{peer}: {name}: asking again for {} block(s), round {rounds}",
                missing.len()
            ));
            let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Repair(missing)));
            self.stream
                .write_all(&f)
                .map_err(|e| net_err(e, "asking for a repair"))?;
            return Ok(false);
        }
        self.claim.ending();
        if bp.whole_crc() != crc32 {
            let msg = format!(
                "CRC32_ERROR: every block matched its checksum but the whole-file CRC-32 is {:08x}, the client says {crc32:08x}; the client's block list is inconsistent",
                bp.whole_crc());
            return Err(self.finish_failed(bp, msg));
        }
        if let Err(e) = bp.finish() {
            let msg = format!("server cannot store {name}: {e}");
            let f = Fault::storage(Error::new(e.kind(), msg));
            return Err(self.voice.refuse(self.stream, f));
        }
        self.count_verdict(true, bp.size(), 2, None);
        let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Ok));
        self.stream
            .write_all(&f)
            .map_err(|e| net_err(e, "sending the verdict"))?;
        let _ = self.stream.shutdown(Shutdown::Write);
        Ok(true)
    }

    /// The connection broke, stalled, was too slow or was taken over in
    /// the data phase: checkpoint the good blocks and say what is kept.
    fn cut_off(&mut self, bp: &mut BlockPart, e: Error) -> Error {
        self.claim.ending();
        let _ = bp.checkpoint();
        let code = self.fault_for(&e);
        let e = Error::new(
            e.kind(),
            format!(
                "{}: {e}; held part kept: {} bytes for resume",
                bp.name(),
                bp.held()
            ),
        );
        if code == FaultCode::BadRequest {
            // A disconnect: nobody is left to tell.
            return e;
        }
        self.voice.refuse(self.stream, Fault { code, error: e })
    }

    /// The server could not write: keep what is good, say why.
    fn storage_failed(&mut self, bp: &mut BlockPart, e: Error) -> Error {
        self.claim.ending();
        let cp = bp.checkpoint();
        let msg = format!(
            "server cannot store {}: {e}; {} bytes held for resume{}",
            bp.name(),
            bp.held(),
            cp.err()
                .map(|c| format!(" (checkpoint failed too: {c})"))
                .unwrap_or_default()
        );
        let full = e
            .raw_os_error()
            .is_some_and(|c| c == libc::ENOSPC || c == libc::EDQUOT);
        let code = if full {
            FaultCode::NoSpace
        } else {
            FaultCode::Storage
        };
        let fault = Fault {
            code,
            error: Error::new(ErrorKind::Storage, msg),
        };
        self.voice.refuse(self.stream, fault)
    }

    /// A protocol violation in the data phase: keep what is good, say why.
    fn fail_v2(&mut self, bp: &mut BlockPart, e: Error) -> Error {
        self.claim.ending();
        let _ = bp.checkpoint();
        let f = Fault {
            code: FaultCode::BadRequest,
            error: Error::new(e.kind(), format!("protocol error: {e}")),
        };
        let _ = self.voice.refuse(self.stream, f);
        e
    }

    fn finish_failed(&mut self, bp: &mut BlockPart, msg: String) -> Error {
        self.sh.counters.crc_errors.fetch_add(1, Ordering::Relaxed);
        (self.sh.logger)(&format!(
            "{}: {}: {msg}; received bytes discarded",
            self.peer,
            bp.name()
        ));
        bp.discard();
        let f = v2::encode_server_msg(&v2::ServerMsg::Verdict(v2::Verdict::Failed(msg.clone())));
        let _ = self.stream.write_all(&f);
        Error::new(ErrorKind::CrcMismatch, msg)
    }
}
