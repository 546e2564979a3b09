//! Refusing or failing a connection in words, as its protocol allows.
//!
//! A version-2 client of revision 2 gets a [`FaultCode`] and words, one of
//! revision 1 the words alone, a legacy client nothing (version 1 has no
//! way to carry a reason: the server logs it and closes). Not for deciding
//! *whether* to refuse: that is the caller's.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::v2::{self, FaultCode};
use crate::{Error, ErrorKind};

/// Why a connection ends: the code a client acts on and the error for
/// the log (whose message is also the words sent).
#[derive(Debug)]
pub(super) struct Fault {
    pub(super) code: FaultCode,
    pub(super) error: Error,
}

impl Fault {
    pub(super) fn new(code: FaultCode, kind: ErrorKind, msg: impl Into<String>) -> Fault {
        Fault {
            code,
            error: Error::new(kind, msg),
        }
    }

    /// A storage failure: out of space is for good (until someone frees
    /// space), anything else worth a retry.
    pub(super) fn storage(error: Error) -> Fault {
        let full = matches!(
            error.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        );
        let code = if full {
            FaultCode::NoSpace
        } else {
            FaultCode::Storage
        };
        Fault { code, error }
    }
}

/// How the client on a connection can be told things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Voice {
    /// Version 1: no words; the server closes.
    Legacy,
    /// Version 2 before the magic went out.
    V2Unopened { rev: u64 },
    /// Version 2, the magic sent: frames follow.
    V2 { rev: u64 },
}

impl Voice {
    /// Sends the version-2 magic if it has not gone out yet.
    pub(super) fn open(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if let Voice::V2Unopened { rev } = *self {
            stream.write_all(&v2::MAGIC)?;
            *self = Voice::V2 { rev };
        }
        Ok(())
    }

    /// Says why the connection ends (if the protocol can), lets the client
    /// read it, and returns the error for the log.
    pub(super) fn refuse(mut self, stream: &mut TcpStream, fault: Fault) -> Error {
        if self == Voice::Legacy {
            return fault.error;
        }
        let text = fault.error.to_string();
        let msg = match self {
            Voice::V2Unopened { rev } | Voice::V2 { rev } if rev >= v2::REVISION => {
                v2::ServerMsg::Fault(fault.code, text)
            }
            _ => v2::ServerMsg::Error(text),
        };
        if self.open(stream).is_ok() && stream.write_all(&v2::encode_server_msg(&msg)).is_ok() {
            drain(stream);
        }
        fault.error
    }
}

/// Lets the client read what we said: it may still be sending, and
/// closing with unread data would reset the connection and lose the
/// message. Bounded to 3 s.
fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut sink = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        }
    }
}
