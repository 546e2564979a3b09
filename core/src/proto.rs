//! The legacy wire format (version 1), as pure functions over bytes.
//!
//! Everything a connection exchanges (the length-prefixed JSON header, the
//! resume offset and the final `CRC32_OK` / `CRC32_ERROR` verdict) is
//! encoded and decoded here, byte-compatible with the original Python
//! `client.py` / `server.py`, so that it can be tested and fuzzed without
//! sockets. The contract is `LEGACY-PROTOCOL.md`.
//!
//! It is not for I/O (reading exactly N bytes, timeouts and EOF handling
//! belong to `client` and `server`), nor for deciding whether a header is
//! acceptable beyond its format: the file name is returned raw (see
//! [`crate::name`] for sanitising it) and whether the server has room for
//! `filesize` bytes is the server's call.

use crate::json::{self, Field, Number, Value};
use crate::{Error, ErrorKind, Result};

/// The largest header, in bytes of JSON, that either side accepts.
///
/// A real header is well under 2 KiB even for a 255-byte name of
/// non-ASCII characters; the limit keeps a hostile length prefix from
/// making the server allocate gigabytes.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// The header a client sends first: which file, how big, and its CRC-32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The file name as the client sent it, unsanitised.
    pub filename: String,
    /// The whole file's size in bytes.
    pub filesize: u64,
    /// The CRC-32 (zlib / ISO-HDLC) of the whole file.
    pub crc32: u32,
}

/// Decodes the 4-byte big-endian header length that opens a connection.
///
/// A length of 0 (no header at all) or over [`MAX_HEADER_LEN`] is an
/// [`ErrorKind::Protocol`] error, checked before anything is allocated.
///
/// ```
/// use bigtransfer_core::proto::parse_header_len;
/// assert_eq!(parse_header_len([0, 0, 0, 75])?, 75);
/// assert!(parse_header_len([0, 0, 0, 0]).is_err());
/// assert!(parse_header_len([0xff, 0xff, 0xff, 0xff]).is_err());
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn parse_header_len(prefix: [u8; 4]) -> Result<usize> {
    let len = u32::from_be_bytes(prefix);
    if len == 0 {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("header length is 0; it must be 1 to {MAX_HEADER_LEN} bytes"),
        ));
    }
    if u64::from(len) > MAX_HEADER_LEN as u64 {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("header length {len} bytes is over the limit of {MAX_HEADER_LEN} bytes"),
        ));
    }
    // Lossless: len <= MAX_HEADER_LEN, which is a usize.
    Ok(len as usize)
}

/// Decodes the header JSON (the bytes after the length prefix).
///
/// The bytes must be one UTF-8 JSON object with the keys `filename` (a
/// string), `filesize` (a plain integer literal, 0 to `i64::MAX`) and
/// `crc32` (a plain integer literal, 0 to 4294967295). Unknown keys are
/// ignored whatever their value, so that extensions can add keys; with a
/// duplicated key the last one counts, as for the legacy Python server.
/// Anything else is an [`ErrorKind::Protocol`] error saying what is wrong.
///
/// `filesize` must fit in an `i64` because files are sized and seeked with
/// `off_t`; anything larger is no real file.
///
/// ```
/// use bigtransfer_core::proto::parse_header;
/// let h = parse_header(br#"{"crc32": 7, "filename": "a.bin", "filesize": 10, "x": [1]}"#)?;
/// assert_eq!((h.filename.as_str(), h.filesize, h.crc32), ("a.bin", 10, 7));
///
/// let e = parse_header(br#"{"filename": "a.bin", "filesize": 1.0, "crc32": 7}"#).unwrap_err();
/// assert_eq!(e.to_string(), "filesize must be a non-negative integer, got 1.0");
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn parse_header(json: &[u8]) -> Result<Header> {
    parse_header_value(&json::parse(json)?, false)
}

/// [`parse_header`] on an already parsed value. With `crc_may_be_null`, a
/// `"crc32": null` reads as 0: a protocol-2 client that does not know the
/// CRC-32 yet sends null, which a legacy server refuses without touching
/// what it holds (see `docs/PROTOCOL.md`).
pub(crate) fn parse_header_value(value: &Value, crc_may_be_null: bool) -> Result<Header> {
    if !matches!(value, Value::Object(_)) {
        return Err(protocol(format!(
            "header must be a JSON object, got {}",
            value.type_name()
        )));
    }
    let filename = match required(value, "filename")? {
        Value::String(s) => s.clone(),
        other => {
            return Err(protocol(format!(
                "filename must be a string, got {}",
                other.type_name()
            )))
        }
    };
    let filesize = parse_filesize(required(value, "filesize")?)?;
    let crc32 = match required(value, "crc32")? {
        Value::Null if crc_may_be_null => 0,
        v => parse_crc32(v)?,
    };
    Ok(Header {
        filename,
        filesize,
        crc32,
    })
}

fn protocol(message: String) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

fn required<'v>(header: &'v Value, key: &str) -> Result<&'v Value> {
    header
        .get(key)
        .ok_or_else(|| protocol(format!("header is missing the \"{key}\" key")))
}

/// Describes a wrong value for an error message: numbers by their literal
/// (truncated, since a hostile one can be 64 KiB of digits), other values by
/// their type.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => truncate_literal(n),
        other => other.type_name().to_owned(),
    }
}

fn truncate_literal(n: &Number) -> String {
    const MAX: usize = 32;
    let text = n.as_str();
    // Number literals are ASCII, so any byte index is a char boundary.
    match text.get(..MAX) {
        Some(head) if text.len() > MAX => format!("{head}..."),
        _ => text.to_owned(),
    }
}

fn parse_filesize(value: &Value) -> Result<u64> {
    let size = match value {
        Value::Number(n) => match n.as_u64() {
            Some(size) => size,
            // A plain non-negative integer that does not fit a u64 is well
            // formed, just too big: say so rather than "not an integer".
            None if n.is_integer() && !n.as_str().starts_with('-') => {
                return Err(absurd_size(&truncate_literal(n)))
            }
            None => return Err(not_a_size(value)),
        },
        _ => return Err(not_a_size(value)),
    };
    if size > i64::MAX as u64 {
        return Err(absurd_size(&size.to_string()));
    }
    Ok(size)
}

fn not_a_size(value: &Value) -> Error {
    protocol(format!(
        "filesize must be a non-negative integer, got {}",
        describe(value)
    ))
}

fn absurd_size(shown: &str) -> Error {
    protocol(format!(
        "filesize {shown} is absurd: more than {} bytes",
        i64::MAX
    ))
}

fn parse_crc32(value: &Value) -> Result<u32> {
    let crc = match value {
        Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        _ => None,
    };
    crc.ok_or_else(|| {
        protocol(format!(
            "crc32 must be an integer in 0..={}, got {}",
            u32::MAX,
            describe(value)
        ))
    })
}

/// Encodes a header as the full frame a client sends: the 4-byte
/// big-endian length, then the JSON.
///
/// The JSON is byte for byte what the legacy Python client sends,
/// `json.dumps({"filename": ..., "filesize": ..., "crc32": ...}).encode()`:
/// keys in that order, separators `", "` and `": "`, and every non-ASCII
/// character of the name escaped as `\uXXXX`. The only failure is a header
/// longer than [`MAX_HEADER_LEN`] (a name of tens of kilobytes), an
/// [`ErrorKind::InvalidInput`] error since it is the caller's data.
///
/// A peer refuses a `filesize` over `i64::MAX`; this function does not
/// check it, so that a caller can still produce such frames for tests.
///
/// ```
/// use bigtransfer_core::proto::{encode_header, parse_header, parse_header_len, Header};
/// let h = Header {
///     filename: "large_file.txt".to_owned(),
///     filesize: 1073741824,
///     crc32: 3735928559,
/// };
/// let frame = encode_header(&h)?;
/// assert_eq!(
///     &frame[4..],
///     br#"{"filename": "large_file.txt", "filesize": 1073741824, "crc32": 3735928559}"#
/// );
/// assert_eq!(parse_header_len([frame[0], frame[1], frame[2], frame[3]])?, 75);
/// assert_eq!(parse_header(&frame[4..])?, h);
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn encode_header(h: &Header) -> Result<Vec<u8>> {
    let json = json::write_object(&[
        ("filename", Field::Str(&h.filename)),
        ("filesize", Field::Int(h.filesize)),
        ("crc32", Field::Int(u64::from(h.crc32))),
    ]);
    let len = match u32::try_from(json.len()) {
        Ok(len) if json.len() <= MAX_HEADER_LEN => len,
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the header would be {} bytes, over the limit of {MAX_HEADER_LEN} bytes \
                     (is the file name absurdly long?)",
                    json.len()
                ),
            ))
        }
    };
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(json.as_bytes());
    Ok(frame)
}

/// Encodes the resume offset the server answers with: 8 bytes, big-endian.
///
/// ```
/// use bigtransfer_core::proto::{encode_offset, parse_offset};
/// assert_eq!(encode_offset(258), [0, 0, 0, 0, 0, 0, 1, 2]);
/// assert_eq!(parse_offset(encode_offset(258)), 258);
/// ```
pub fn encode_offset(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// Decodes the resume offset the server answers with: 8 bytes, big-endian.
///
/// Any value decodes; whether it is plausible (at most the file's size) is
/// the client's check, since only it knows the size.
///
/// ```
/// use bigtransfer_core::proto::parse_offset;
/// assert_eq!(parse_offset([0, 0, 0, 0, 0x40, 0, 0, 0]), 1 << 30);
/// ```
pub fn parse_offset(bytes: [u8; 8]) -> u64 {
    u64::from_be_bytes(bytes)
}

/// The server's final answer: whether the CRC-32 of the whole received
/// file matched the header's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `CRC32_OK`: the file is stored under its name.
    Ok,
    /// `CRC32_ERROR`: the data was discarded; a retry starts from 0.
    Mismatch,
}

impl Verdict {
    /// The exact bytes the server sends for this verdict (no terminator).
    ///
    /// ```
    /// use bigtransfer_core::proto::Verdict;
    /// assert_eq!(Verdict::Ok.as_bytes(), b"CRC32_OK");
    /// assert_eq!(Verdict::Mismatch.as_bytes(), b"CRC32_ERROR");
    /// ```
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Verdict::Ok => b"CRC32_OK",
            Verdict::Mismatch => b"CRC32_ERROR",
        }
    }
}

/// Decodes everything the server sent after the file data, up to EOF.
///
/// It must be exactly `CRC32_OK` or `CRC32_ERROR`: the legacy protocol has
/// no terminator, so a prefix or extra bytes mean the peer is not speaking
/// it. Anything else is an [`ErrorKind::Protocol`] error showing what was
/// received (escaped, at most 64 bytes of it).
///
/// ```
/// use bigtransfer_core::proto::{parse_verdict, Verdict};
/// assert_eq!(parse_verdict(b"CRC32_OK")?, Verdict::Ok);
/// assert_eq!(parse_verdict(b"CRC32_ERROR")?, Verdict::Mismatch);
/// assert_eq!(
///     parse_verdict(b"").unwrap_err().to_string(),
///     "server closed the connection without a result"
/// );
/// assert!(parse_verdict(b"CRC32_OK\n").is_err());
/// # Ok::<(), bigtransfer_core::Error>(())
/// ```
pub fn parse_verdict(bytes: &[u8]) -> Result<Verdict> {
    for verdict in [Verdict::Ok, Verdict::Mismatch] {
        if bytes == verdict.as_bytes() {
            return Ok(verdict);
        }
    }
    if bytes.is_empty() {
        return Err(protocol(
            "server closed the connection without a result".to_owned(),
        ));
    }
    const SHOWN: usize = 64;
    let shown: String = bytes
        .iter()
        .take(SHOWN)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    let more = if bytes.len() > SHOWN {
        format!("... ({} bytes in all)", bytes.len())
    } else {
        String::new()
    };
    Err(protocol(format!(
        "server sent an unexpected result \"{shown}\"{more} instead of CRC32_OK or CRC32_ERROR"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &[u8] =
        br#"{"filename": "large_file.txt", "filesize": 1073741824, "crc32": 3735928559}"#;

    fn example() -> Header {
        Header {
            filename: "large_file.txt".to_owned(),
            filesize: 1073741824,
            crc32: 3735928559,
        }
    }

    fn header(filename: &str, filesize: u64, crc32: u32) -> Header {
        Header {
            filename: filename.to_owned(),
            filesize,
            crc32,
        }
    }

    fn protocol_error(json: &[u8]) -> String {
        let e = parse_header(json).expect_err("header should be rejected");
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        e.to_string()
    }

    #[test]
    fn header_len_bounds() {
        assert_eq!(parse_header_len([0, 0, 0, 1]).unwrap(), 1);
        assert_eq!(parse_header_len([0, 0, 0, 75]).unwrap(), 75);
        assert_eq!(parse_header_len([0, 1, 0, 0]).unwrap(), MAX_HEADER_LEN);
        for prefix in [[0, 0, 0, 0], [0, 1, 0, 1], [0x80, 0, 0, 0], [0xff; 4]] {
            let e = parse_header_len(prefix).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(e.to_string().contains("65536"), "{e}");
        }
        let e = parse_header_len([0, 1, 0, 1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "header length 65537 bytes is over the limit of 65536 bytes"
        );
        let e = parse_header_len([0; 4]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "header length is 0; it must be 1 to 65536 bytes"
        );
    }

    #[test]
    fn encode_example_exact_bytes() {
        let frame = encode_header(&example()).unwrap();
        // struct.pack("!I", 75) + the json.dumps output, from CPython.
        assert_eq!(&frame[..4], b"\x00\x00\x00K");
        assert_eq!(&frame[4..], EXAMPLE);
        assert_eq!(frame.len(), 4 + 75);
        assert_eq!(parse_header(&frame[4..]).unwrap(), example());
    }

    #[test]
    fn encode_escapes_like_python() {
        // From CPython: json.dumps({"filename": "caf\u00e9 \U0001F600\n.bin",
        // "filesize": 0, "crc32": 0}).encode()
        let frame = encode_header(&header("caf\u{e9} \u{1f600}\n.bin", 0, 0)).unwrap();
        assert_eq!(
            &frame[4..],
            br#"{"filename": "caf\u00e9 \ud83d\ude00\n.bin", "filesize": 0, "crc32": 0}"#
        );
        assert_eq!(&frame[..4], &71u32.to_be_bytes());
        let frame = encode_header(&header("a\"b\\c/d", u64::MAX, u32::MAX)).unwrap();
        assert_eq!(
            &frame[4..],
            br#"{"filename": "a\"b\\c/d", "filesize": 18446744073709551615, "crc32": 4294967295}"#
        );
    }

    #[test]
    fn encode_refuses_oversized_header() {
        let overhead = encode_header(&header("", 0, 0)).unwrap().len() - 4;
        let fits = "x".repeat(MAX_HEADER_LEN - overhead);
        let frame = encode_header(&header(&fits, 0, 0)).unwrap();
        assert_eq!(frame.len(), 4 + MAX_HEADER_LEN);
        assert_eq!(
            parse_header_len([frame[0], frame[1], frame[2], frame[3]]).unwrap(),
            MAX_HEADER_LEN
        );
        let too_long = "x".repeat(MAX_HEADER_LEN - overhead + 1);
        let e = encode_header(&header(&too_long, 0, 0)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("65537 bytes"), "{e}");
        // Escaping counts: 11 000 'é' are 66 000 bytes of \u00e9.
        let e = encode_header(&header(&"\u{e9}".repeat(11_000), 0, 0)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn parse_ignores_extra_keys_of_any_type() {
        let h = parse_header(
            br#"{"v": 2, "filename": "a.bin", "n": null, "o": {"x": [1, {"y": 1e9}]},
                 "filesize": 10, "b": true, "crc32": 123, "s": "\u00e9", "f": -1.5}"#,
        )
        .unwrap();
        assert_eq!(h, header("a.bin", 10, 123));
    }

    #[test]
    fn parse_accepts_any_key_order_and_whitespace() {
        let h =
            parse_header(b" \r\n\t{\n\t\"crc32\" :0 ,\"filesize\":\r\n5,\"filename\":\"x\"\n}\n ")
                .unwrap();
        assert_eq!(h, header("x", 5, 0));
        let compact = br#"{"filename":"a","filesize":1,"crc32":2}"#;
        assert_eq!(parse_header(compact).unwrap(), header("a", 1, 2));
    }

    #[test]
    fn parse_unescapes_names_and_keeps_them_raw() {
        let h = parse_header(
            br#"{"filename": "..\/etc\\passwd\n\u0000\"q\"", "filesize": 0, "crc32": 0}"#,
        )
        .unwrap();
        assert_eq!(h.filename, "../etc\\passwd\n\0\"q\"");
    }

    #[test]
    fn parse_unicode_names_escaped_or_raw() {
        let escaped = parse_header(
            br#"{"filename": "\u65e5\u672c\ud83d\ude00.txt", "filesize": 1, "crc32": 1}"#,
        )
        .unwrap();
        let raw = parse_header(
            "{\"filename\": \"\u{65e5}\u{672c}\u{1f600}.txt\", \"filesize\": 1, \"crc32\": 1}"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(escaped.filename, "\u{65e5}\u{672c}\u{1f600}.txt");
        assert_eq!(escaped, raw);
    }

    #[test]
    fn parse_duplicate_keys_last_wins() {
        let h = parse_header(
            br#"{"filename": "a", "filesize": 1, "crc32": 2, "filename": "b", "filesize": 3}"#,
        )
        .unwrap();
        assert_eq!(h, header("b", 3, 2));
        // The last one counts even when an earlier one was valid.
        let msg = protocol_error(br#"{"filename": "a", "filesize": 1, "crc32": 2, "crc32": "x"}"#);
        assert!(msg.starts_with("crc32 must be"), "{msg}");
    }

    #[test]
    fn parse_limits() {
        let h = parse_header(
            br#"{"filename": "", "filesize": 9223372036854775807, "crc32": 4294967295}"#,
        )
        .unwrap();
        assert_eq!(h, header("", i64::MAX as u64, u32::MAX));
        let h = parse_header(br#"{"filename": "a", "filesize": 0, "crc32": 0}"#).unwrap();
        assert_eq!(h, header("a", 0, 0));
    }

    #[test]
    fn rejects_non_json() {
        for input in [
            &b""[..],
            b"hello",
            b"{",
            b"{\"filename\": \"a\", \"filesize\": 1, \"crc32\": 2",
            b"{'filename': 'a', 'filesize': 1, 'crc32': 2}",
            b"{\"filename\": \"a\", \"filesize\": 1, \"crc32\": 2,}",
            b"{\"filename\": \"a\", \"filesize\": NaN, \"crc32\": 2}",
            b"{\"filename\": \"a\", \"filesize\": 01, \"crc32\": 2}",
            b"{\"filename\": \"a\", \"filesize\": 1, \"crc32\": +2}",
        ] {
            let msg = protocol_error(input);
            assert!(msg.starts_with("malformed JSON at byte "), "{msg}");
        }
    }

    #[test]
    fn rejects_trailing_garbage() {
        let msg = protocol_error(br#"{"filename": "a", "filesize": 1, "crc32": 2} x"#);
        assert_eq!(
            msg,
            "malformed JSON at byte 45: unexpected data after the JSON value"
        );
        protocol_error(br#"{"filename": "a", "filesize": 1, "crc32": 2}{}"#);
        protocol_error(b"{\"filename\": \"a\", \"filesize\": 1, \"crc32\": 2}\0");
    }

    #[test]
    fn rejects_invalid_utf8() {
        let msg = protocol_error(b"{\"filename\": \"a\xff\", \"filesize\": 1, \"crc32\": 2}");
        assert_eq!(msg, "malformed JSON at byte 15: invalid UTF-8");
        // Latin-1 as a legacy client on a misconfigured system might send it.
        protocol_error(b"{\"filename\": \"caf\xe9\", \"filesize\": 1, \"crc32\": 2}");
        // A UTF-8-encoded lone surrogate (CESU / WTF-8) is not UTF-8.
        protocol_error(b"{\"filename\": \"\xed\xa0\x80\", \"filesize\": 1, \"crc32\": 2}");
    }

    #[test]
    fn rejects_lone_surrogate_in_name() {
        let msg = protocol_error(br#"{"filename": "\ud800", "filesize": 1, "crc32": 2}"#);
        assert!(msg.contains("surrogate"), "{msg}");
    }

    #[test]
    fn rejects_non_objects() {
        let cases: [(&[u8], &str); 6] = [
            (b"[]", "array"),
            (br#"["filename", "a"]"#, "array"),
            (b"null", "null"),
            (b"1", "number"),
            (br#""a""#, "string"),
            (b"true", "boolean"),
        ];
        for (input, kind) in cases {
            assert_eq!(
                protocol_error(input),
                format!("header must be a JSON object, got {kind}")
            );
        }
    }

    #[test]
    fn rejects_missing_keys() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"filesize": 1, "crc32": 2}"#, "filename"),
            (br#"{"filename": "a", "crc32": 2}"#, "filesize"),
            (br#"{"filename": "a", "filesize": 1}"#, "crc32"),
            (b"{}", "filename"),
            (
                br#"{"Filename": "a", "filesize": 1, "crc32": 2}"#,
                "filename",
            ),
        ];
        for (input, key) in cases {
            assert_eq!(
                protocol_error(input),
                format!("header is missing the \"{key}\" key")
            );
        }
    }

    #[test]
    fn rejects_wrong_filename_types() {
        for (value, kind) in [
            ("1", "number"),
            ("null", "null"),
            ("true", "boolean"),
            ("[\"a\"]", "array"),
            ("{}", "object"),
        ] {
            let json = format!(r#"{{"filename": {value}, "filesize": 1, "crc32": 2}}"#);
            assert_eq!(
                protocol_error(json.as_bytes()),
                format!("filename must be a string, got {kind}")
            );
        }
    }

    #[test]
    fn rejects_bad_filesizes() {
        for (value, got) in [
            ("1.0", "1.0"),
            ("0.5", "0.5"),
            ("1e3", "1e3"),
            ("1E3", "1E3"),
            ("10e0", "10e0"),
            ("-1", "-1"),
            ("-0", "-0"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("true", "boolean"),
            ("false", "boolean"),
            ("null", "null"),
            ("\"10\"", "string"),
            ("[10]", "array"),
            ("{}", "object"),
        ] {
            let json = format!(r#"{{"filename": "a", "filesize": {value}, "crc32": 2}}"#);
            assert_eq!(
                protocol_error(json.as_bytes()),
                format!("filesize must be a non-negative integer, got {got}")
            );
        }
    }

    #[test]
    fn rejects_absurd_filesizes() {
        for value in [
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890123456789012345678901234567890",
        ] {
            let json = format!(r#"{{"filename": "a", "filesize": {value}, "crc32": 2}}"#);
            let msg = protocol_error(json.as_bytes());
            assert!(msg.contains("absurd"), "{msg}");
            assert!(msg.len() < 120, "{msg}");
        }
        let json = br#"{"filename": "a", "filesize": 9223372036854775808, "crc32": 2}"#;
        assert_eq!(
            protocol_error(json),
            "filesize 9223372036854775808 is absurd: more than 9223372036854775807 bytes"
        );
    }

    #[test]
    fn rejects_bad_crcs() {
        for (value, got) in [
            ("4294967296", "4294967296"),
            ("18446744073709551616", "18446744073709551616"),
            ("-1", "-1"),
            ("1.0", "1.0"),
            ("1e2", "1e2"),
            ("\"deadbeef\"", "string"),
            ("null", "null"),
            ("false", "boolean"),
        ] {
            let json = format!(r#"{{"filename": "a", "filesize": 1, "crc32": {value}}}"#);
            assert_eq!(
                protocol_error(json.as_bytes()),
                format!("crc32 must be an integer in 0..=4294967295, got {got}")
            );
        }
    }

    #[test]
    fn long_number_literals_are_truncated_in_messages() {
        let digits = "9".repeat(10_000);
        let json = format!(r#"{{"filename": "a", "filesize": 1, "crc32": {digits}}}"#);
        let msg = protocol_error(json.as_bytes());
        assert!(
            msg.ends_with(&format!("got {}...", "9".repeat(32))),
            "{msg}"
        );
    }

    #[test]
    fn offsets_are_big_endian() {
        assert_eq!(encode_offset(0), [0; 8]);
        assert_eq!(encode_offset(1), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            encode_offset(0x0102_0304_0506_0708),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(parse_offset([0xff; 8]), u64::MAX);
        assert_eq!(
            parse_offset([1, 2, 3, 4, 5, 6, 7, 8]),
            0x0102_0304_0506_0708
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict(b"CRC32_OK").unwrap(), Verdict::Ok);
        assert_eq!(parse_verdict(b"CRC32_ERROR").unwrap(), Verdict::Mismatch);
        for v in [Verdict::Ok, Verdict::Mismatch] {
            assert_eq!(parse_verdict(v.as_bytes()).unwrap(), v);
        }
    }

    #[test]
    fn rejects_anything_but_an_exact_verdict() {
        for input in [
            &b"CRC32_O"[..],
            b"CRC32_OK\n",
            b"CRC32_OK\0",
            b" CRC32_OK",
            b"crc32_ok",
            b"CRC32_ERRORS",
            b"CRC32_OKCRC32_OK",
            b"OK",
        ] {
            let e = parse_verdict(input).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(
                e.to_string()
                    .starts_with("server sent an unexpected result"),
                "{e}"
            );
        }
        let e = parse_verdict(b"").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(
            e.to_string(),
            "server closed the connection without a result"
        );
    }

    #[test]
    fn verdict_errors_are_escaped_and_truncated() {
        let e = parse_verdict(b"CRC32_OK\r\n\x00\xff\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"server sent an unexpected result "CRC32_OK\r\n\x00\xff\"" instead of CRC32_OK or CRC32_ERROR"#
        );
        let long = vec![b'A'; 1000];
        let e = parse_verdict(&long).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "server sent an unexpected result \"{}\"... (1000 bytes in all) instead of CRC32_OK or CRC32_ERROR",
                "A".repeat(64)
            )
        );
        let e = parse_verdict(&[b'A'; 64]).unwrap_err();
        assert!(!e.to_string().contains("in all"), "{e}");
    }

    proptest! {
        #[test]
        fn prop_header_round_trip(
            filename in any::<String>(),
            filesize in 0..=i64::MAX as u64,
            crc32 in any::<u32>(),
        ) {
            let h = Header { filename, filesize, crc32 };
            let frame = encode_header(&h).unwrap();
            let len = parse_header_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
            prop_assert_eq!(len, frame.len() - 4);
            prop_assert!(frame[4..].is_ascii());
            prop_assert_eq!(parse_header(&frame[4..]).unwrap(), h);
        }

        #[test]
        fn prop_header_round_trip_edge_sizes(
            filename in "[a-z./\\\\]{0,20}",
            filesize in prop_oneof![Just(0u64), Just(i64::MAX as u64), 0..1024u64],
        ) {
            let h = Header { filename, filesize, crc32: 0 };
            prop_assert_eq!(parse_header(&encode_header(&h).unwrap()[4..]).unwrap(), h);
        }

        #[test]
        fn prop_sizes_over_i64_max_are_refused(filesize in (i64::MAX as u64 + 1)..=u64::MAX) {
            let h = Header { filename: "a".to_owned(), filesize, crc32: 0 };
            let e = parse_header(&encode_header(&h).unwrap()[4..]).unwrap_err();
            prop_assert_eq!(e.kind(), ErrorKind::Protocol);
            prop_assert!(e.to_string().contains("absurd"));
        }

        #[test]
        fn prop_parse_header_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse_header(&bytes) {
                prop_assert_eq!(e.kind(), ErrorKind::Protocol);
            }
        }

        #[test]
        fn prop_parse_header_never_panics_on_near_headers(
            filename in any::<String>(),
            filesize in any::<u64>(),
            crc32 in any::<u32>(),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let h = Header { filename, filesize, crc32 };
            let mut frame = encode_header(&h).unwrap();
            let i = cut.index(frame.len() - 4) + 4;
            frame[i] = byte;
            if let Err(e) = parse_header(&frame[4..]) {
                prop_assert_eq!(e.kind(), ErrorKind::Protocol);
            }
            frame.truncate(i);
            if let Err(e) = parse_header(&frame[4..]) {
                prop_assert_eq!(e.kind(), ErrorKind::Protocol);
            }
        }

        #[test]
        fn prop_header_len(prefix in any::<[u8; 4]>()) {
            let n = u32::from_be_bytes(prefix) as usize;
            match parse_header_len(prefix) {
                Ok(len) => prop_assert!(len == n && (1..=MAX_HEADER_LEN).contains(&n)),
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::Protocol);
                    prop_assert!(n == 0 || n > MAX_HEADER_LEN);
                }
            }
        }

        #[test]
        fn prop_offset_round_trip(offset in any::<u64>()) {
            prop_assert_eq!(parse_offset(encode_offset(offset)), offset);
            prop_assert_eq!(encode_offset(offset), offset.to_be_bytes());
        }

        #[test]
        fn prop_parse_verdict_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            match parse_verdict(&bytes) {
                Ok(v) => prop_assert_eq!(v.as_bytes(), &bytes[..]),
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::Protocol);
                    prop_assert!(e.to_string().is_ascii());
                }
            }
        }
    }
}
