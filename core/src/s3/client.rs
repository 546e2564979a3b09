//! The S3 operations: each builds a request, signs it (a presigned URL that
//! also signs the checksum and condition headers), sends it with retries of
//! transient failures, and reads the answer.
//!
//! Not for: deciding part sizes, keeping upload state, or verifying data
//! read back (a ranged GET carries no checksum; the caller checks its own
//! block CRCs).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rusty_s3::{Bucket, Method, UrlStyle};
use url::Url;

use super::error::{S3Error, S3ErrorKind};
use super::xml;
use super::{crc32_header, parse_crc32_header, Config};

/// How long a signature stays valid: a request starts well within it.
const SIGNATURE_SECONDS: u64 = 900;
/// The most bytes one `CopyObject` copies (S3's limit).
pub const MAX_COPY: u64 = 5 << 30;
/// The most of an error or listing body read into memory.
const SMALL_BODY: u64 = 4 << 20;

/// A blocking S3 client for one bucket (and key prefix).
pub struct Client {
    cfg: Config,
    bucket: Bucket,
    agent: ureq::Agent,
}

/// A part to name in `CompleteMultipartUpload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part number, 1 to 10,000.
    pub number: u16,
    /// The ETag the store gave for it.
    pub etag: String,
    /// Its CRC-32.
    pub crc: u32,
}

/// A part the store holds for an unfinished upload (`ListParts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// The part number.
    pub number: u16,
    /// Its ETag.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What `HeadObject` says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag (with the quotes the store sent).
    pub etag: String,
    /// The CRC-32 the store keeps for it, if any.
    pub crc32: Option<u32>,
    /// `FULL_OBJECT` or `COMPOSITE`, if the store says.
    pub checksum_type: Option<String>,
    /// When it was last written, seconds since the Unix epoch (0: unknown).
    pub modified: i64,
}

/// An object found by `ListObjectsV2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Its name, without the client's prefix.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag.
    pub etag: String,
    /// When it was last written, seconds since the Unix epoch (0: unknown).
    pub modified: i64,
}

/// One page of a listing, and the token of the next one if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPage {
    /// The objects of the page, in key order.
    pub entries: Vec<ObjectEntry>,
    /// The continuation token of the next page (`None`: the last page).
    pub next: Option<String>,
    /// With the delimiter: the "folders" of the page (`CommonPrefixes`),
    /// without the client's prefix, each ending in `/`, in key order.
    pub prefixes: Vec<String>,
}

/// The condition of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Write whatever is there.
    None,
    /// Write only if no object has the name (`If-None-Match: *`).
    Absent,
    /// Write only if the object still has this ETag (`If-Match`).
    Matches(String),
}

/// An answer read whole (its body; no caller needs more).
struct Answer {
    body: String,
}

/// One request to send (and re-send on a transient failure).
struct Request<'a> {
    op: String,
    method: Method,
    key: Option<String>,
    query: Vec<(&'a str, String)>,
    headers: Vec<(&'a str, String)>,
    body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    fn new(op: String, method: Method, key: Option<String>) -> Request<'a> {
        Request {
            op,
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
        }
    }
    fn query(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn body(mut self, b: &'a [u8]) -> Self {
        self.body = Some(b);
        self
    }
}

impl Client {
    /// A client for `cfg`. Checks the endpoint (http, or https with the
    /// `s3-https` feature) but does not contact the store.
    pub fn new(cfg: Config) -> Result<Client, S3Error> {
        let bad = |m: String| S3Error::other("configuration", m);
        let endpoint: Url = cfg
            .endpoint
            .parse()
            .map_err(|e| bad(format!("endpoint {:?} is not a URL: {e}", cfg.endpoint)))?;
        match endpoint.scheme() {
            "http" => {}
            "https" if cfg!(feature = "s3-https") => {}
            "https" => return Err(bad("https endpoints need the `s3-https` feature".into())),
            s => return Err(bad(format!("endpoint scheme {s:?}: use http or https"))),
        }
        let style = if cfg.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket =
            Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone()).map_err(|e| {
                bad(format!(
                    "bucket {:?} at {:?}: {e}",
                    cfg.bucket, cfg.endpoint
                ))
            })?;
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                // Parts go out from several threads at once: keep their
                // connections for reuse rather than reconnecting.
                .max_idle_connections(32)
                .max_idle_connections_per_host(32)
                .timeout_connect(Some(cfg.timeout))
                .timeout_recv_response(Some(cfg.timeout))
                .build(),
        );
        Ok(Client { cfg, bucket, agent })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn page(&self) -> String {
        self.cfg.page_size.clamp(1, 1000).to_string()
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.cfg.prefix, name)
    }

    /// Starts a multipart upload checked with CRC-32 over the full object;
    /// returns its upload id.
    pub fn create_multipart(&self, name: &str) -> Result<String, S3Error> {
        let op = format!("CreateMultipartUpload {name}");
        let req = Request::new(op.clone(), Method::Post, Some(self.key(name)))
            .query("uploads", "")
            .header("x-amz-checksum-algorithm", "CRC32")
            .header("x-amz-checksum-type", "FULL_OBJECT")
            .body(&[]);
        let a = self.call_read(&req)?;
        xml::text(&a.body, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                S3Error::other(
                    op,
                    format!("no UploadId in the answer: {}", snippet(&a.body)),
                )
            })
    }

    /// Uploads part `number` (1 to 10,000) of an upload from memory with its
    /// CRC-32, which the store checks (a mismatch is
    /// [`S3ErrorKind::BadDigest`]); returns the part's ETag.
    pub fn upload_part(
        &self,
        name: &str,
        upload_id: &str,
        number: u16,
        data: &[u8],
        crc: u32,
    ) -> Result<String, S3Error> {
        let op = format!("UploadPart {name}#{number}");
        let req = Request::new(op.clone(), Method::Put, Some(self.key(name)))
            .query("partNumber", number.to_string())
            .query("uploadId", upload_id)
            .header("x-amz-checksum-crc32", crc32_header(crc))
            .body(data);
        let resp = self.call(&req)?;
        etag_of(resp.headers(), &op)
    }

    /// Completes an upload from its parts (in order), giving the whole
    /// object's CRC-32 so that the store checks it against the CRC it
    /// combines from the parts (a mismatch is refused); returns the ETag.
    ///
    /// Retried on transient failures like every request, so an attempt
    /// whose answer was lost may have completed the upload: a `NotFound`
    /// (`NoSuchUpload`) after more than one attempt calls for a
    /// [`Client::head_object`] to see whether the object is there.
    pub fn complete_multipart(
        &self,
        name: &str,
        upload_id: &str,
        parts: &[Part],
        crc: u32,
    ) -> Result<String, S3Error> {
        let op = format!("CompleteMultipartUpload {name}");
        let mut body = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for p in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumCRC32>{}</ChecksumCRC32></Part>",
                p.number,
                xml::escape(&p.etag),
                crc32_header(p.crc)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let req = Request::new(op.clone(), Method::Post, Some(self.key(name)))
            .query("uploadId", upload_id)
            .header("x-amz-checksum-crc32", crc32_header(crc))
            .header("x-amz-checksum-type", "FULL_OBJECT")
            .body(body.as_bytes());
        let a = self.call_read(&req)?;
        Ok(xml::text(&a.body, "ETag").unwrap_or_default())
    }

    /// Aborts an upload: the store drops its parts.
    pub fn abort_multipart(&self, name: &str, upload_id: &str) -> Result<(), S3Error> {
        let op = format!("AbortMultipartUpload {name}");
        let req =
            Request::new(op, Method::Delete, Some(self.key(name))).query("uploadId", upload_id);
        self.call(&req).map(drop)
    }

    /// The parts the store holds for an unfinished upload, in order (all
    /// pages). Part CRCs are not read: some stores (SeaweedFS) omit them.
    pub fn list_parts(&self, name: &str, upload_id: &str) -> Result<Vec<PartInfo>, S3Error> {
        let op = format!("ListParts {name}");
        let mut out = Vec::new();
        let mut marker = String::from("0");
        loop {
            let req = Request::new(op.clone(), Method::Get, Some(self.key(name)))
                .query("max-parts", self.page())
                .query("part-number-marker", marker.clone())
                .query("uploadId", upload_id);
            let a = self.call_read(&req)?;
            for p in xml::elements(&a.body, "Part") {
                out.push(PartInfo {
                    number: number(p, "PartNumber", &op)?,
                    etag: xml::text(p, "ETag").unwrap_or_default(),
                    size: number(p, "Size", &op)?,
                });
            }
            match next_page(&a.body, "NextPartNumberMarker") {
                Some(m) if m != marker => marker = m,
                _ => return Ok(out),
            }
        }
    }

    /// Size, ETag and stored CRC-32 of an object (`x-amz-checksum-mode`).
    pub fn head_object(&self, name: &str) -> Result<ObjectInfo, S3Error> {
        let op = format!("HeadObject {name}");
        let req = Request::new(op.clone(), Method::Head, Some(self.key(name)))
            .header("x-amz-checksum-mode", "ENABLED");
        let resp = self.call(&req)?;
        let h = resp.headers();
        let size = header(h, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| S3Error::other(op.clone(), "no Content-Length in the answer"))?;
        Ok(ObjectInfo {
            size,
            etag: etag_of(h, &op)?,
            crc32: header(h, "x-amz-checksum-crc32").and_then(|v| parse_crc32_header(&v)),
            checksum_type: header(h, "x-amz-checksum-type"),
            modified: header(h, "last-modified")
                .and_then(|v| {
                    jiff::fmt::rfc2822::DateTimeParser::new()
                        .parse_timestamp(v.trim())
                        .ok()
                })
                .map_or(0, |t| t.as_second()),
        })
    }

    /// Writes `len` bytes of an object from offset `start` into `out`,
    /// streamed (a ranged GET); returns the count written, always `len`.
    /// A failure before the body starts is retried; one during it is not
    /// (`out` has then received part of the range).
    pub fn get_range(
        &self,
        name: &str,
        start: u64,
        len: u64,
        out: &mut dyn Write,
    ) -> Result<u64, S3Error> {
        let op = format!("GetObject {name} bytes {start}+{len}");
        if len == 0 {
            return Ok(0);
        }
        let range = format!("bytes={}-{}", start, start + len - 1);
        let req =
            Request::new(op.clone(), Method::Get, Some(self.key(name))).header("range", range);
        let resp = self.call(&req)?;
        if resp.status().as_u16() != 206 {
            return Err(S3Error::other(
                op,
                format!("expected 206 Partial Content, got {}", resp.status()),
            ));
        }
        let mut body = resp.into_body().into_reader().take(len);
        let n = std::io::copy(&mut body, out).map_err(|e| unreachable_err(&op, e.to_string()))?;
        if n != len {
            return Err(unreachable_err(
                &op,
                format!("the answer ended after {n} of {len} bytes"),
            ));
        }
        Ok(n)
    }

    /// Reads a small object whole (at most `limit` bytes) with its ETag.
    pub fn get_small(&self, name: &str, limit: u64) -> Result<(Vec<u8>, String), S3Error> {
        let op = format!("GetObject {name}");
        let req = Request::new(op.clone(), Method::Get, Some(self.key(name)));
        let resp = self.call(&req)?;
        let etag = etag_of(resp.headers(), &op)?;
        let data = resp
            .into_body()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| {
                S3Error::other(op, format!("reading the object (limit {limit} bytes): {e}"))
            })?;
        Ok((data, etag))
    }

    /// Writes a small object from memory, with its CRC-32 checked by the
    /// store, under `cond`; returns the new ETag. A lost condition is
    /// [`S3ErrorKind::PreconditionFailed`]: the base of a lease.
    ///
    /// A `PreconditionFailed` after more than one attempt
    /// ([`S3Error::attempts`]) may be our own earlier attempt having won
    /// with its answer lost: read the object back to tell.
    pub fn put_small(&self, name: &str, data: &[u8], cond: &Condition) -> Result<String, S3Error> {
        let op = format!("PutObject {name}");
        let mut req = Request::new(op.clone(), Method::Put, Some(self.key(name)))
            .header("x-amz-checksum-crc32", crc32_header(crc32fast::hash(data)))
            .body(data);
        match cond {
            Condition::None => {}
            Condition::Absent => req = req.header("if-none-match", "*"),
            Condition::Matches(etag) => req = req.header("if-match", etag.clone()),
        }
        let resp = self.call(&req)?;
        etag_of(resp.headers(), &op)
    }

    /// Deletes an object (no error if it does not exist, as S3 answers).
    pub fn delete_object(&self, name: &str) -> Result<(), S3Error> {
        let req = Request::new(
            format!("DeleteObject {name}"),
            Method::Delete,
            Some(self.key(name)),
        );
        self.call(&req).map(drop)
    }

    /// Every object whose name starts with `prefix` (after the client's
    /// own prefix), in key order, all pages.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectEntry>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, false, token.as_deref())?;
            out.extend(page.entries);
            match page.next {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// One page of `ListObjectsV2` (at most the configured page size):
    /// objects whose name starts with `prefix`, in key order, from the
    /// continuation token `token`; with `flat`, none whose name has a `/`
    /// after the prefix (the delimiter: such keys are summed up as common
    /// prefixes and not returned), so a listing of the stored names skips
    /// the server's own records under `.bigtransfer-*/`.
    pub fn list_page(
        &self,
        prefix: &str,
        flat: bool,
        token: Option<&str>,
    ) -> Result<ObjectPage, S3Error> {
        let op = format!("ListObjectsV2 {prefix}");
        let mut req = Request::new(op.clone(), Method::Get, None)
            .query("list-type", "2")
            .query("max-keys", self.page())
            .query("prefix", self.key(prefix));
        if flat {
            req = req.query("delimiter", "/");
        }
        if let Some(t) = token {
            req = req.query("continuation-token", t);
        }
        let a = self.call_read(&req)?;
        let mut entries = Vec::new();
        for c in xml::elements(&a.body, "Contents") {
            let key = xml::text(c, "Key").unwrap_or_default();
            entries.push(ObjectEntry {
                name: key
                    .strip_prefix(&self.cfg.prefix)
                    .unwrap_or(&key)
                    .to_string(),
                size: number(c, "Size", &op)?,
                etag: xml::text(c, "ETag").unwrap_or_default(),
                modified: xml::text(c, "LastModified")
                    .and_then(|t| t.trim().parse::<jiff::Timestamp>().ok())
                    .map_or(0, |t| t.as_second()),
            });
        }
        let prefixes = xml::elements(&a.body, "CommonPrefixes")
            .into_iter()
            .filter_map(|c| xml::text(c, "Prefix"))
            .map(|p| p.strip_prefix(&self.cfg.prefix).unwrap_or(&p).to_string())
            .collect();
        let next =
            next_page(&a.body, "NextContinuationToken").filter(|t| Some(t.as_str()) != token);
        Ok(ObjectPage {
            entries,
            next,
            prefixes,
        })
    }

    /// Copies object `from` (of `size` bytes) to `to` inside the bucket:
    /// the store copies, nothing passes through this node. One `CopyObject`
    /// up to `part` bytes (S3 copies at most [`MAX_COPY`] at once), else a
    /// multipart upload of `UploadPartCopy` ranges of `part` bytes.
    pub fn copy_object(&self, from: &str, to: &str, size: u64, part: u64) -> Result<(), S3Error> {
        if size <= part {
            let req = Request::new(
                format!("CopyObject {from} -> {to}"),
                Method::Put,
                Some(self.key(to)),
            )
            .header("x-amz-copy-source", self.copy_source(from))
            .body(&[]);
            return self.call_read(&req).map(drop);
        }
        let op = format!("CreateMultipartUpload {to} (copy)");
        let req = Request::new(op.clone(), Method::Post, Some(self.key(to)))
            .query("uploads", "")
            .body(&[]);
        let a = self.call_read(&req)?;
        let id = xml::text(&a.body, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| S3Error::other(op, "no UploadId in the answer"))?;
        let r = self.copy_parts(from, to, &id, size, part);
        if r.is_err() {
            let _ = self.abort_multipart(to, &id);
        }
        r
    }

    /// The parts of a multipart copy, then its completion.
    fn copy_parts(
        &self,
        from: &str,
        to: &str,
        id: &str,
        size: u64,
        part: u64,
    ) -> Result<(), S3Error> {
        let mut body = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (i, start) in (0..size).step_by(part.max(1) as usize).enumerate() {
            let number = i + 1;
            let end = (start + part).min(size) - 1;
            let op = format!("UploadPartCopy {from} -> {to}#{number}");
            let req = Request::new(op.clone(), Method::Put, Some(self.key(to)))
                .query("partNumber", number.to_string())
                .query("uploadId", id)
                .header("x-amz-copy-source", self.copy_source(from))
                .header("x-amz-copy-source-range", format!("bytes={start}-{end}"))
                .body(&[]);
            let a = self.call_read(&req)?;
            let etag = xml::text(&a.body, "ETag")
                .ok_or_else(|| S3Error::other(op, "no ETag in the answer"))?;
            body.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml::escape(&etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let req = Request::new(
            format!("CompleteMultipartUpload {to} (copy)"),
            Method::Post,
            Some(self.key(to)),
        )
        .query("uploadId", id)
        .body(body.as_bytes());
        self.call_read(&req).map(drop)
    }

    /// The `x-amz-copy-source` of object `name`: percent-encoded, the
    /// slashes kept.
    fn copy_source(&self, name: &str) -> String {
        let source = format!("/{}/{}", self.cfg.bucket, self.key(name));
        let mut out = String::with_capacity(source.len());
        for b in source.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// Signs `req` now: a presigned URL whose signature also covers the
    /// request's headers (which must then be sent exactly as signed).
    fn sign(&self, req: &Request) -> Result<Url, S3Error> {
        let url = match &req.key {
            Some(k) => self
                .bucket
                .object_url(k)
                .map_err(|e| S3Error::other(req.op.clone(), format!("object name {k:?}: {e}")))?,
            None => self.bucket.base_url().clone(),
        };
        let mut query: Vec<(&str, &str)> =
            req.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        query.sort_unstable();
        let mut headers: Vec<(&str, &str)> =
            req.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.sort_unstable();
        let c = &self.cfg.credentials;
        Ok(rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            req.method,
            url,
            &c.key,
            &c.secret,
            c.token.as_deref(),
            &self.cfg.region,
            SIGNATURE_SECONDS,
            query.into_iter(),
            headers.into_iter(),
        ))
    }

    fn send_once(&self, req: &Request) -> Result<ureq::http::Response<ureq::Body>, S3Error> {
        let url = self.sign(req)?;
        let method = match req.method {
            Method::Head => "HEAD",
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        };
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(url.as_str());
        for (k, v) in &req.headers {
            b = b.header(*k, v.as_str());
        }
        let sent = match req.body {
            Some(body) => b.body(body).map(|r| self.agent.run(r)),
            None => b.body(()).map(|r| self.agent.run(r)),
        };
        let resp = sent
            .map_err(|e| S3Error::other(req.op.clone(), format!("building the request: {e}")))?
            .map_err(|e| transport_err(&req.op, &self.cfg.endpoint, e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_answer(&req.op, resp))
    }

    /// Sends `req`, retrying transient failures per the configured policy;
    /// returns a 2xx response with its body unread.
    fn call(&self, req: &Request) -> Result<ureq::http::Response<ureq::Body>, S3Error> {
        self.retrying(|| self.send_once(req))
    }

    /// Like [`Client::call`], reading the body (at most 4 MiB) too. A 200
    /// answer whose body is an `<Error>` (as `CompleteMultipartUpload` may
    /// give) is an error, and retried if transient.
    fn call_read(&self, req: &Request) -> Result<Answer, S3Error> {
        self.retrying(|| {
            let resp = self.send_once(req)?;
            let (parts, body) = resp.into_parts();
            let body = body
                .into_with_config()
                .limit(SMALL_BODY)
                .read_to_string()
                .map_err(|e| unreachable_err(&req.op, format!("reading the answer: {e}")))?;
            if body.contains("<Error>") {
                return Err(error_from_xml(&req.op, parts.status.as_u16(), &body));
            }
            Ok(Answer { body })
        })
    }

    fn retrying<T>(&self, mut once: impl FnMut() -> Result<T, S3Error>) -> Result<T, S3Error> {
        let policy = self.cfg.retry;
        let started = Instant::now();
        let mut delay = policy.base;
        let mut attempt = 1;
        loop {
            let mut err = match once() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            err.attempts = attempt;
            let wait = jitter(delay);
            if !err.kind.is_transient()
                || attempt >= policy.attempts.max(1)
                || started.elapsed() + wait > policy.max_total
            {
                return Err(err);
            }
            std::thread::sleep(wait);
            delay = (delay * 2).min(policy.max_delay);
            attempt += 1;
        }
    }
}

/// A wait drawn at random in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(0);
    // xorshift over a shared counter mixed with the clock: enough to spread
    // retries, no cryptographic use.
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let half = d / 2;
    half + Duration::from_nanos(x % (half.as_nanos() as u64 + 1))
}

fn unreachable_err(op: &str, message: String) -> S3Error {
    S3Error {
        kind: S3ErrorKind::Unreachable,
        op: op.to_string(),
        status: None,
        code: String::new(),
        message,
        attempts: 1,
    }
}

fn transport_err(op: &str, endpoint: &str, e: ureq::Error) -> S3Error {
    match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
            S3Error::other(op, e.to_string())
        }
        e => unreachable_err(op, format!("{e} at {endpoint}")),
    }
}

/// The error of a non-2xx answer, with the store's Code and Message.
fn error_answer(op: &str, resp: ureq::http::Response<ureq::Body>) -> S3Error {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .into_with_config()
        .limit(64 << 10)
        .read_to_string()
        .unwrap_or_default();
    error_from_xml(op, status, &body)
}

fn error_from_xml(op: &str, status: u16, body: &str) -> S3Error {
    let code = xml::text(body, "Code").unwrap_or_default();
    let mut message = xml::text(body, "Message").unwrap_or_default();
    if code.is_empty() && message.is_empty() && !body.trim().is_empty() {
        message = snippet(body);
    }
    S3Error::from_status(op, status, code, message)
}

fn snippet(s: &str) -> String {
    s.chars().take(200).collect()
}

fn header(h: &ureq::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn etag_of(h: &ureq::http::HeaderMap, op: &str) -> Result<String, S3Error> {
    header(h, "etag").ok_or_else(|| S3Error::other(op, "no ETag in the answer"))
}

fn number<T: std::str::FromStr>(xml_text: &str, tag: &str, op: &str) -> Result<T, S3Error> {
    xml::text(xml_text, tag)
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| S3Error::other(op, format!("no readable <{tag}> in the answer")))
}

/// The marker of the next page, if the answer says it is truncated.
fn next_page(body: &str, tag: &str) -> Option<String> {
    let truncated = xml::text(body, "IsTruncated").is_some_and(|t| t.trim() == "true");
    truncated
        .then(|| xml::text(body, tag))
        .flatten()
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let d = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..200).map(|_| jitter(d)).collect();
        assert!(waits.iter().all(|w| *w >= d / 2 && *w <= d));
        // Not all the same: retries of many clients spread out.
        assert!(waits.iter().any(|w| *w != waits[0]));
    }

    #[test]
    fn next_page_only_when_truncated() {
        let t =
            "<R><IsTruncated>true</IsTruncated><NextPartNumberMarker>7</NextPartNumberMarker></R>";
        assert_eq!(next_page(t, "NextPartNumberMarker").as_deref(), Some("7"));
        let f =
            "<R><IsTruncated>false</IsTruncated><NextPartNumberMarker>7</NextPartNumberMarker></R>";
        assert_eq!(next_page(f, "NextPartNumberMarker"), None);
    }
}
