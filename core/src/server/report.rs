//! How a connection's end is told: the machine's [`Ending`] as the log
//! line and counters operators (and the e2e tests) know, and wrong token
//! answers counted by the throttle. Not for deciding how it ends.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::conn::Shell;
use super::{lock, Failed};
use crate::machine::{Ending, Timer};
use crate::throttle::Note;
use crate::v2::FaultCode;
use crate::{Error, ErrorKind};

impl Shell<'_> {
    /// Logs and counts how the connection ended; an error (logged by the
    /// caller with the peer's address) unless the upload reached a verdict.
    pub(super) fn report(&mut self) -> std::result::Result<(), Failed> {
        self.count_auth_failure();
        let ending = self.rx.ending().cloned().unwrap_or(Ending::Lost("?"));
        let (kind, what) = match ending {
            Ending::Stored if self.rx.is_join() => return Ok(()),
            Ending::Stored => {
                self.stored();
                return Ok(());
            }
            Ending::Listed => {
                (self.sh.logger)(&format!("{}: answered a list request", self.conn.peer));
                return Ok(());
            }
            Ending::Mismatch(words) => {
                self.mismatch(&words);
                return Ok(());
            }
            Ending::Refused(_) if self.auth_failure.is_some() => {
                return Err(self
                    .auth_failure
                    .take()
                    .unwrap_or(Failed::Quiet(ErrorKind::Refused)))
            }
            Ending::Refused(f) => (ErrorKind::Refused, f.logged().to_string()),
            Ending::Lost(during) => (ErrorKind::ConnectionLost, self.lost(during)),
            Ending::TimedOut(t) => (ErrorKind::TimedOut, timed_out(t)),
            Ending::Download => return super::get::serve(self),
        };
        if self.quiet {
            return Err(Failed::Quiet(kind));
        }
        Err(Failed::Logged(Error::new(kind, self.kept(what))))
    }

    fn stored(&self) {
        let (size, v2) = self.geometry();
        if let (Some(name), Some((block, crcs))) = (self.rx.name(), self.rx.block_crcs()) {
            super::get::remember_upload(self.sh, name, size, block, crcs);
        }
        self.sh.counters.completed.fetch_add(1, Ordering::Relaxed);
        let proto = if v2 { ", protocol 2" } else { "" };
        (self.sh.logger)(&format!(
            "{}: {}: CRC32_OK ({size} bytes{proto}, stored)",
            self.conn.peer,
            self.name()
        ));
    }

    fn mismatch(&self, words: &str) {
        let c = &self.sh.counters;
        c.crc_errors.fetch_add(1, Ordering::Relaxed);
        let words = if words.starts_with("CRC32_ERROR") {
            c.failed.fetch_add(1, Ordering::Relaxed);
            words.to_string()
        } else {
            format!("CRC32_ERROR: {words}")
        };
        (self.sh.logger)(&format!(
            "{}: {}: {words}; received bytes discarded",
            self.conn.peer,
            self.name()
        ));
    }

    /// A wrong or missing answer to the challenge: counted per address
    /// once the machine refused it; only the first few are logged.
    pub(super) fn count_auth_failure(&mut self) {
        if self.auth_failure.is_some() || self.quiet {
            return;
        }
        let words = match self.rx.ending() {
            Some(Ending::Refused(f)) if f.code == FaultCode::AuthFailed => f.words.clone(),
            _ => return,
        };
        if !words.starts_with("authentication failed") {
            return;
        }
        let note = lock(&self.sh.throttle).failed(self.conn.peer.ip(), Instant::now());
        self.auth_failure = Some(match note {
            Note::Log => Failed::Logged(Error::new(ErrorKind::Refused, words)),
            Note::LogLast => Failed::Logged(Error::new(
                ErrorKind::Refused,
                format!("{words} (further failures from this address are counted, and summarised once a minute)"),
            )),
            Note::Quiet => Failed::Quiet(ErrorKind::Refused),
        });
    }

    fn lost(&self, during: &str) -> String {
        let during = match during {
            "ReadLen" => "reading the header length",
            "ReadHeader" => "reading the header",
            "AwaitAnswer" => "waiting for the answer to the challenge",
            "Receiving" | "DataFrames" => "receiving",
            other => other,
        };
        match &self.part {
            Some(_) if during == "receiving" => "client disconnected".into(),
            _ => format!("client disconnected while {during}"),
        }
    }

    /// With a held part open: what happened and what is kept for a resume.
    fn kept(&self, what: String) -> String {
        let Some(part) = &self.part else {
            return what;
        };
        let (size, v2) = self.geometry();
        let (name, at) = (self.name(), part.held_bytes());
        if v2 {
            format!("{name}: {what}; held part kept: {at} bytes for resume")
        } else {
            format!("{name}: {what} at byte {at} of {size}; held part kept for resume")
        }
    }

    fn geometry(&self) -> (u64, bool) {
        let size = self.rx.header().map_or(0, |h| h.filesize);
        (size, self.rx.offer().is_some())
    }

    fn name(&self) -> String {
        self.rx.name().map(|n| n.to_string()).unwrap_or_default()
    }
}

fn timed_out(t: Timer) -> String {
    match t {
        Timer::Header => "deadline passed while reading the header".into(),
        Timer::Answer => "deadline passed while waiting for the answer to the challenge".into(),
        Timer::Idle => "idle timeout while receiving data".into(),
        Timer::Block => "too slow: a block took longer than the minimum rate allows".into(),
        Timer::Reply | Timer::Drain => "timed out".into(),
    }
}
