//! What the end of one attempt means to [`super::send_file`]: the
//! machine's [`Outcome`] with what the shell saw (the server's first bytes,
//! the socket error) turned into a [`Reply`] or an [`Error`] a user can act
//! on. Peers that are not bigtransfer servers are named here, and the
//! server's words are escaped before they reach a message.
//!
//! Not for I/O or decisions about retrying (the parent module's loop).

use std::io;
use std::path::Path;
use std::time::Duration;

use super::SendOptions;
use crate::machine::{Failure, Outcome};
use crate::v2;
use crate::{Error, ErrorKind, Result};

/// How one attempt ended, short of an error.
pub(super) enum Reply {
    /// `CRC32_OK`.
    Stored,
    /// `CRC32_ERROR`, with what is known of why.
    Mismatch(String),
    /// The server turned out to be legacy and we lacked the CRC-32 for it.
    LegacyServer,
    /// The source changed (its stamp moved) before the final CRC-32 was
    /// combined: start again from what it holds now.
    SourceChanged,
    /// A failure no retry can cure (the peer is not a bigtransfer server).
    GiveUp(Error),
}

/// What the shell saw of an attempt, besides the machine's outcome.
pub(super) struct Ending<'a> {
    pub opts: &'a SendOptions,
    pub path: &'a Path,
    pub legacy: bool,
    /// The server's first bytes (at most 8).
    pub greeting: &'a [u8],
    /// The socket error that broke the connection, if one did.
    pub cut: Option<io::Error>,
}

impl Ending<'_> {
    /// The reply or error for the machine's `outcome`.
    pub fn judge(self, outcome: Option<Outcome>) -> Result<Reply> {
        match outcome {
            Some(Outcome::Stored) => Ok(Reply::Stored),
            Some(Outcome::Mismatch(m)) => {
                Ok(Reply::Mismatch(crate::text::printable(&m).into_owned()))
            }
            Some(Outcome::Fault { code, words }) => Err(server_fault(code, &words)),
            Some(Outcome::Failed(f)) => self.failed(f),
            None => Err(Error::new(
                ErrorKind::Protocol,
                "internal: the attempt ended without an outcome",
            )),
        }
    }

    fn failed(self, f: Failure) -> Result<Reply> {
        let kind_err = |kind, words: String| Err(Error::new(kind, words));
        match f {
            Failure::LegacyNeedsCrc => Ok(Reply::LegacyServer),
            Failure::SourceChanged(_) => Ok(Reply::SourceChanged),
            Failure::NotBigtransfer(_) | Failure::Lost("AwaitReply") => self.greeted(false),
            Failure::TimedOut("AwaitReply") => self.greeted(true),
            Failure::Lost("AwaitVerdict1") if self.cut.is_none() => kind_err(
                ErrorKind::ConnectionLost,
                "server closed the connection without a verdict (it may be out of space: see the server's log)".into(),
            ),
            Failure::Lost(state) => {
                let e = self.cut.unwrap_or(io::ErrorKind::UnexpectedEof.into());
                Err(lost(e, during(state)))
            }
            Failure::TimedOut(state) => Err(lost(io::ErrorKind::TimedOut.into(), during(state))),
            Failure::TokenRequired => kind_err(
                ErrorKind::Refused,
                "the server requires a token and none was given".into(),
            ),
            Failure::ServerProof => kind_err(
                ErrorKind::Refused,
                "the server did not prove it knows the token on this connection: it has another token, or a man in the middle is relaying it (the token was not sent)".into(),
            ),
            Failure::Protocol(w) => kind_err(ErrorKind::Protocol, w),
            Failure::Source(w) => kind_err(ErrorKind::SourceFile, w),
            Failure::SourceUnstable(list) => kind_err(
                ErrorKind::SourceFile,
                format!(
                    "the source is unstable: re-reading block(s) {list:?} of {} gave different data",
                    self.path.display()
                ),
            ),
            Failure::Invalid(w) => kind_err(ErrorKind::InvalidInput, w),
        }
    }

    /// The attempt ended waiting for the server's first 8 bytes: what they
    /// (or the silence) say about the peer.
    fn greeted(self, timed_out: bool) -> Result<Reply> {
        let limit = if self.legacy {
            self.opts.io_timeout
        } else {
            self.opts.handshake_timeout
        };
        let during = "waiting for the resume offset";
        match classify_greeting(self.opts, self.greeting, timed_out, self.legacy, limit) {
            Greeting::Foreign(e) => Ok(Reply::GiveUp(e)),
            Greeting::Stalled => Err(lost(io::ErrorKind::TimedOut.into(), during)),
            Greeting::Closed => Err(lost(
                self.cut.unwrap_or(io::ErrorKind::UnexpectedEof.into()),
                during,
            )),
        }
    }
}

/// What a state of the machine was doing, for a message.
fn during(state: &str) -> &'static str {
    match state {
        "SendHeader" => "sending the header",
        "AwaitReply" => "waiting for the resume offset",
        "SendAnswer" => "answering the challenge",
        "AwaitChallenge" | "AwaitHeld" => "waiting for the server's block list",
        "Recheck" | "SendEnd" => "sending the end of the file",
        "AwaitVerdict" | "AwaitVerdict1" => "waiting for the verdict",
        _ => "sending data",
    }
}

/// The error for a broken or stalled connection `during` a phase.
pub(super) fn lost(e: io::Error, during: &str) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::new(
            ErrorKind::ConnectionLost,
            format!("connection stalled while {during} (no progress within the I/O timeout)"),
        ),
        io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::ConnectionLost,
            format!("server closed the connection while {during} (it may have refused the upload: see the server's log)"),
        ),
        _ => Error::io(ErrorKind::ConnectionLost, format!("connection lost while {during}"), e),
    }
}

/// The error for a server's error frame, its words escaped: a fault the
/// server calls temporary is retried like a lost connection; a permanent
/// one, or bare text from a revision-1 server, is a refusal.
pub(super) fn server_fault(code: Option<v2::FaultCode>, text: &str) -> Error {
    let words = crate::text::printable(text);
    match code {
        Some(c) if c.is_transient() => Error::new(
            ErrorKind::ConnectionLost,
            format!("server: {words} (a temporary fault)"),
        ),
        _ => Error::new(ErrorKind::Refused, format!("server: {words}")),
    }
}

/// What the server's first bytes (or their absence) turned out to be.
enum Greeting {
    /// Closed (or broken) before 8 bytes came, none of them foreign.
    Closed,
    /// Speaking version 1 only, nothing in `io_timeout`: a stall.
    Stalled,
    /// Not a bigtransfer server: the error that says so.
    Foreign(Error),
}

/// Greetings of other protocols a wrong port commonly reaches. None of them
/// can be a resume offset: each starts with a byte of 0x15 or more, an
/// offset of over 1.5 EB, and only an offset past the file's size is
/// matched against them.
const FOREIGN: &[(&[u8], &str)] = &[
    (b"HTTP/", "an HTTP server"),
    (b"SSH-", "an SSH server"),
    (b"220 ", "an FTP or SMTP server"),
    (b"220-", "an FTP or SMTP server"),
    (b"+OK", "a POP3 server"),
    (b"* OK", "an IMAP server"),
    (b"RFB ", "a VNC server"),
    (b"\x15\x03", "a TLS server"),
    (b"\x16\x03", "a TLS server"),
];

/// `host:port` as the user would type it (brackets around an IPv6 address).
fn target_name(opts: &SendOptions) -> String {
    if opts.host.contains(':') {
        format!("[{}]:{}", opts.host, opts.port)
    } else {
        format!("{}:{}", opts.host, opts.port)
    }
}

fn not_ours(opts: &SendOptions, why: &str) -> Greeting {
    Greeting::Foreign(Error::new(
        ErrorKind::Protocol,
        format!(
            "{} is not a bigtransfer server ({why}): check the host and port",
            target_name(opts)
        ),
    ))
}

/// Seconds as a person writes them: 10, 0.3.
fn secs(d: Duration) -> String {
    format!("{}", d.as_millis() as f64 / 1000.0)
}

/// What the first bytes (`got`, all that came, at most 8) say about a peer
/// the machine did not take for a bigtransfer server. Offering version 2,
/// silence within `limit` names it as foreign too (a bigtransfer server
/// greets at once); speaking version 1 only it is a stall.
fn classify_greeting(
    opts: &SendOptions,
    got: &[u8],
    timed_out: bool,
    legacy: bool,
    limit: Duration,
) -> Greeting {
    if let Some((_, what)) = FOREIGN.iter().find(|(p, _)| got.starts_with(p)) {
        return not_ours(opts, &format!("it answered like {what}"));
    }
    if got.len() == 8 {
        let shown: String = got
            .iter()
            .flat_map(|&b| std::ascii::escape_default(b))
            .map(char::from)
            .collect();
        return not_ours(
            opts,
            &format!(
                "its first reply \"{shown}\" is neither a bigtransfer greeting nor a resume offset"
            ),
        );
    }
    match (timed_out, got.len()) {
        (true, _) if legacy => Greeting::Stalled,
        (true, 0) => not_ours(
            opts,
            &format!("it sent nothing within {} s of our header", secs(limit)),
        ),
        (true, k) => not_ours(
            opts,
            &format!(
                "it sent only {k} bytes within {} s of our header",
                secs(limit)
            ),
        ),
        (false, _) => Greeting::Closed,
    }
}
