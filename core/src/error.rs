//! The one error type of `bigtransfer-core`.
//!
//! Every fallible function of the crate returns [`Error`]. It carries an
//! [`ErrorKind`] that callers branch on (the CLI maps kinds to exit codes, the
//! FFI layer to error codes, the Python module to exception classes) and a
//! message written for the person who has to act on it. It is not meant for
//! control flow inside the engine beyond that.

use std::fmt;
use std::io;

/// What went wrong, coarsely: the part of an error that code branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller asked for something invalid (a bad option, a bad address).
    InvalidInput,
    /// The local file to send cannot be opened or read.
    SourceFile,
    /// No connection to the server could be made.
    Unreachable,
    /// An established connection broke before the transfer finished.
    ConnectionLost,
    /// The peer broke the wire protocol (malformed header, bad offset, ...).
    Protocol,
    /// The server refused the upload (bad name, too large, no space, ...).
    Refused,
    /// The server compared CRC-32s and they did not match (after all retries).
    CrcMismatch,
    /// The storage directory or a file in it could not be used.
    Storage,
    /// The operation was cancelled (progress callback or stop request).
    Cancelled,
    /// The peer did not send anything within the idle timeout.
    TimedOut,
    /// The server's TLS key is not the pinned (or given) one, or a server
    /// whose key is pinned, or that had to speak TLS, offered plaintext.
    /// Never retried: someone may be intercepting the connection.
    HostKey,
}

impl ErrorKind {
    /// A short, stable, lowercase name for logs and bindings.
    ///
    /// ```
    /// assert_eq!(bigtransfer_core::ErrorKind::CrcMismatch.as_str(), "crc-mismatch");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::SourceFile => "source-file",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::ConnectionLost => "connection-lost",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Refused => "refused",
            ErrorKind::CrcMismatch => "crc-mismatch",
            ErrorKind::Storage => "storage",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::TimedOut => "timed-out",
            ErrorKind::HostKey => "host-key",
        }
    }
}

/// An error of the engine: a kind, a message a user can act on, and the
/// underlying I/O error where there is one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with `message`.
    ///
    /// ```
    /// use bigtransfer_core::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::Refused, "file too large");
    /// assert_eq!(e.kind(), ErrorKind::Refused);
    /// assert_eq!(e.to_string(), "file too large");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by the I/O error `source`; the message is
    /// `context` followed by the I/O error's text.
    pub fn io(kind: ErrorKind, context: impl Into<String>, source: io::Error) -> Error {
        Error {
            kind,
            message: context.into(),
            source: Some(source),
        }
    }

    /// What went wrong, coarsely.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The underlying I/O error, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }

    /// The OS error number behind this error, if any (e.g. `ENOSPC`).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(|e| e.raw_os_error())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {}", self.message, e),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
