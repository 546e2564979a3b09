//! A small blocking S3 client (feature `s3`) for an object-store backend:
//! multipart uploads checked by the store itself with CRC-32 (per part and
//! `FULL_OBJECT`), `HeadObject` with the stored CRC-32, ranged GETs, small
//! state objects with conditional writes (a lease), listing and deletion.
//!
//! Requests are signed with `rusty-s3` (SigV4, presigned URLs, the checksum
//! and condition headers signed too) and sent with `ureq` on the calling
//! thread: no async runtime. Transient failures (unreachable, 5xx,
//! `SlowDown`) are retried with exponential backoff and jitter, bounded
//! in count and in time ([`Retry`]); other 4xx answers are not.
//!
//! Memory: a part is sent from the caller's slice (the caller holds it, up
//! to its part size, e.g. 8-64 MiB); ranged GETs stream into the caller's
//! writer; small objects (state, listings, errors) are read whole with a
//! bound.
//!
//! The storage seam of the server over it ([`S3Storage`]: blocks onto
//! parts, upload state and leases in a state object) is in `storage`.
//!
//! Not for: bucket administration, or other checksums.

mod client;
mod download;
mod error;
pub mod finished;
mod lister;
mod storage;
mod url;
mod xml;

pub use client::{
    Client, Condition, ObjectEntry, ObjectInfo, ObjectPage, Part, PartInfo, MAX_COPY,
};
pub use download::RunEnd;
pub use error::{S3Error, S3ErrorKind};
pub use lister::S3Lister;
pub use storage::{
    blocks_per_part, S3Part, S3Storage, MAX_BUFFERED, MAX_INFLIGHT, MIN_PART, STATE_DIR,
};
pub use url::{store_config, StoreUrl};

use std::fmt;
use std::time::Duration;

/// Credentials for SigV4 signing.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id.
    pub key: String,
    /// The secret access key.
    pub secret: String,
    /// A session token (temporary credentials), if any.
    pub token: Option<String>,
}

impl Credentials {
    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the optional
    /// `AWS_SESSION_TOKEN` (never from the command line, where other users
    /// could read them).
    pub fn from_env() -> Result<Credentials, S3Error> {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(key), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(S3Error::other(
                "credentials",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment",
            ));
        };
        Ok(Credentials {
            key,
            secret,
            token: get("AWS_SESSION_TOKEN"),
        })
    }
}

impl fmt::Debug for Credentials {
    // Never print the secret or the token, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How transient failures are retried: at most `attempts` attempts in all,
/// waits doubling from `base` up to `max_delay`, each drawn at random in
/// its upper half (jitter, so that many clients do not retry in step), and
/// no new attempt once `max_total` has passed since the first.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// The time budget for all attempts of one request.
    pub max_total: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_total: Duration::from_secs(30),
        }
    }
}

/// Where the store is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The endpoint, e.g. `http://127.0.0.1:8333` or
    /// `https://s3.eu-west-1.amazonaws.com` (https needs feature `s3-https`).
    pub endpoint: String,
    /// The signing region, e.g. `us-east-1`.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// A key prefix for every object, e.g. `uploads/` (may be empty).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as self-hosted stores
    /// need; otherwise virtual-host style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// The credentials.
    pub credentials: Credentials,
    /// Retries of transient failures.
    pub retry: Retry,
    /// Timeout to connect, and to wait for the head of an answer. (No
    /// timeout on a body in transit, which may be large on a slow link.)
    pub timeout: Duration,
    /// Entries per page of `ListParts` and `ListObjectsV2` (1 to 1000,
    /// S3's maximum; smaller only to test paging).
    pub page_size: u16,
}

impl Config {
    /// A configuration with credentials from the environment
    /// ([`Credentials::from_env`]), path-style addressing, default retries,
    /// a 30 s timeout and pages of 1000.
    pub fn from_env(
        endpoint: &str,
        region: &str,
        bucket: &str,
        prefix: &str,
    ) -> Result<Config, S3Error> {
        Ok(Config {
            endpoint: endpoint.to_string(),
            region: region.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            path_style: true,
            credentials: Credentials::from_env()?,
            retry: Retry::default(),
            timeout: Duration::from_secs(30),
            page_size: 1000,
        })
    }
}

/// The CRC-32 of a concatenation, from the CRC-32 and length of each piece,
/// in order, without reading the data: a part's CRC from its blocks' CRCs,
/// or the whole object's from its parts'.
///
/// ```
/// use bigtransfer_core::s3::combine;
/// let data = b"one part, then another part, then a short one";
/// let pieces: Vec<(u32, u64)> = data.chunks(16).map(|c| (crc32fast::hash(c), c.len() as u64)).collect();
/// assert_eq!(combine(pieces), crc32fast::hash(data));
/// ```
pub fn combine(pieces: impl IntoIterator<Item = (u32, u64)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (crc, len) in pieces {
        h.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
    }
    h.finalize()
}

/// The value of an `x-amz-checksum-crc32` header: base64 of the CRC-32's
/// four big-endian bytes.
///
/// ```
/// assert_eq!(bigtransfer_core::s3::crc32_header(crc32fast::hash(b"hello")), "NhCmhg==");
/// ```
pub fn crc32_header(crc: u32) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// The CRC-32 in an `x-amz-checksum-crc32` header, if it is one.
pub fn parse_crc32_header(value: &str) -> Option<u32> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_header_round_trips() {
        for crc in [0u32, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(parse_crc32_header(&crc32_header(crc)), Some(crc));
        }
        assert_eq!(parse_crc32_header("AAA="), None);
        assert_eq!(parse_crc32_header("not base64"), None);
    }

    #[test]
    fn combine_of_nothing_is_the_empty_crc() {
        assert_eq!(combine([]), crc32fast::hash(b""));
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = Credentials {
            key: "AK".into(),
            secret: "s3cr3t".into(),
            token: Some("tok".into()),
        };
        let d = format!("{c:?}");
        assert!(d.contains("AK") && !d.contains("s3cr3t") && !d.contains("tok\""));
    }
}
