//! Errors of the S3 client: one kind per cause a caller acts on (retry
//! later, fix the credentials, repair a block, lose a lease), with the
//! store's own error code and message kept in words.
//!
//! Not for retry policy itself (that is `client.rs`), only for telling
//! which failures are worth a retry.

use std::fmt;

/// What went wrong, as far as a caller needs to tell causes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3ErrorKind {
    /// No HTTP answer: connection refused, reset, DNS failure, timeout.
    Unreachable,
    /// The store asked us to slow down (HTTP 503 `SlowDown`, or 429).
    Throttled,
    /// The store failed on its side (HTTP 5xx other than `SlowDown`).
    Server,
    /// The credentials were refused (HTTP 403: `InvalidAccessKeyId`,
    /// `SignatureDoesNotMatch`, `AccessDenied`, an expired token...).
    Credentials,
    /// The object, upload or bucket does not exist (HTTP 404).
    NotFound,
    /// A conditional write lost (HTTP 412, or 409
    /// `ConditionalRequestConflict`): someone else wrote first.
    PreconditionFailed,
    /// The store computed a different checksum than the one sent
    /// (`BadDigest`, `XAmzContentChecksumMismatch`, `InvalidDigest`).
    BadDigest,
    /// Anything else: a bad request, an unreadable answer, a bad config.
    Other,
}

impl S3ErrorKind {
    /// Whether a later attempt of the same request may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            S3ErrorKind::Unreachable | S3ErrorKind::Throttled | S3ErrorKind::Server
        )
    }

    fn words(self) -> &'static str {
        match self {
            S3ErrorKind::Unreachable => "the object store is unreachable",
            S3ErrorKind::Throttled => "the object store is throttling requests",
            S3ErrorKind::Server => "the object store failed on its side",
            S3ErrorKind::Credentials => "the object store refused the credentials",
            S3ErrorKind::NotFound => "not found in the object store",
            S3ErrorKind::PreconditionFailed => "a conditional write lost (precondition failed)",
            S3ErrorKind::BadDigest => "the object store found a checksum mismatch",
            S3ErrorKind::Other => "the object store refused the request",
        }
    }
}

/// An error of one S3 operation.
#[derive(Debug, Clone)]
pub struct S3Error {
    /// The cause.
    pub kind: S3ErrorKind,
    /// The operation, e.g. `UploadPart big.iso#3`.
    pub op: String,
    /// The HTTP status, when the store answered.
    pub status: Option<u16>,
    /// The store's error `Code` (e.g. `BadDigest`), or empty.
    pub code: String,
    /// The store's error `Message`, or the transport's error, in words.
    pub message: String,
    /// How many attempts were made (more than 1 after retries).
    pub attempts: u32,
}

impl S3Error {
    /// An error made here (bad configuration, unreadable answer).
    pub fn other(op: impl Into<String>, message: impl Into<String>) -> S3Error {
        S3Error {
            kind: S3ErrorKind::Other,
            op: op.into(),
            status: None,
            code: String::new(),
            message: message.into(),
            attempts: 1,
        }
    }

    /// Classifies an HTTP error answer by its status and S3 error code.
    pub fn from_status(op: &str, status: u16, code: String, message: String) -> S3Error {
        S3Error {
            kind: classify(status, &code),
            op: op.to_string(),
            status: Some(status),
            code,
            message,
            attempts: 1,
        }
    }
}

/// The kind of an HTTP error answer. The code wins over the status where
/// stores disagree on the status (a bad checksum is 400 on AWS, some stores
/// answer 500 for `SlowDown`).
pub(crate) fn classify(status: u16, code: &str) -> S3ErrorKind {
    match code {
        "BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest" => {
            return S3ErrorKind::BadDigest
        }
        "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => {
            return S3ErrorKind::Throttled
        }
        "PreconditionFailed" | "ConditionalRequestConflict" => {
            return S3ErrorKind::PreconditionFailed
        }
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "AccessDenied"
        | "ExpiredToken"
        | "InvalidToken" => return S3ErrorKind::Credentials,
        "NoSuchKey" | "NoSuchUpload" | "NoSuchBucket" => return S3ErrorKind::NotFound,
        _ => {}
    }
    match status {
        403 => S3ErrorKind::Credentials,
        404 => S3ErrorKind::NotFound,
        412 => S3ErrorKind::PreconditionFailed,
        429 => S3ErrorKind::Throttled,
        500..=599 => S3ErrorKind::Server,
        _ => S3ErrorKind::Other,
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == S3ErrorKind::Other && self.status.is_none() {
            // Made here (bad configuration, unreadable answer): the store
            // refused nothing, so say only what is wrong.
            return write!(f, "{}: {}", self.op, self.message);
        }
        write!(f, "{}: {}", self.op, self.kind.words())?;
        if !self.code.is_empty() {
            write!(f, ": {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(s) = self.status {
            write!(f, " (HTTP {s}")?;
        } else {
            write!(f, " (no HTTP answer")?;
        }
        if self.attempts > 1 {
            write!(f, ", after {} attempts", self.attempts)?;
        }
        write!(f, ")")
    }
}

impl std::error::Error for S3Error {}

impl From<S3Error> for crate::Error {
    fn from(e: S3Error) -> crate::Error {
        use crate::ErrorKind as K;
        let kind = match e.kind {
            S3ErrorKind::Unreachable => K::Unreachable,
            S3ErrorKind::Credentials | S3ErrorKind::PreconditionFailed => K::Refused,
            S3ErrorKind::BadDigest => K::CrcMismatch,
            S3ErrorKind::Other if e.status.is_none() => K::InvalidInput,
            _ => K::Storage,
        };
        crate::Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_code_then_status() {
        assert_eq!(classify(400, "BadDigest"), S3ErrorKind::BadDigest);
        assert_eq!(classify(503, "SlowDown"), S3ErrorKind::Throttled);
        assert_eq!(classify(503, "ServiceUnavailable"), S3ErrorKind::Server);
        assert_eq!(
            classify(403, "SignatureDoesNotMatch"),
            S3ErrorKind::Credentials
        );
        assert_eq!(classify(403, ""), S3ErrorKind::Credentials);
        assert_eq!(classify(404, ""), S3ErrorKind::NotFound);
        assert_eq!(
            classify(409, "ConditionalRequestConflict"),
            S3ErrorKind::PreconditionFailed
        );
        assert_eq!(classify(412, ""), S3ErrorKind::PreconditionFailed);
        assert_eq!(classify(400, "InvalidPart"), S3ErrorKind::Other);
        assert!(S3ErrorKind::Server.is_transient());
        assert!(!S3ErrorKind::Credentials.is_transient());
    }

    #[test]
    fn display_of_a_local_error_blames_no_store() {
        let e = S3Error::other("configuration", "endpoint \"x\" is not a URL");
        assert_eq!(e.to_string(), "configuration: endpoint \"x\" is not a URL");
    }

    #[test]
    fn display_gives_code_message_and_status() {
        let mut e = S3Error::from_status("PutObject a", 403, "AccessDenied".into(), "no".into());
        e.attempts = 1;
        assert_eq!(
            e.to_string(),
            "PutObject a: the object store refused the credentials: AccessDenied: no (HTTP 403)"
        );
    }
}
