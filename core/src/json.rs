//! A small, strict JSON (RFC 8259) parser for the wire header, and a
//! writer of just the header's shape (an object of strings, integers,
//! `null` and one nested object).
//!
//! The core may depend only on `crc32fast` and `libc`, so it cannot use
//! serde; the header is a tiny JSON object, and this module is just enough
//! to read it strictly from a hostile peer and to write it byte for byte the
//! way the legacy Python client does (`json.dumps` with its defaults).
//!
//! It is not a general-purpose JSON library: numbers are kept as their
//! literal text (no floating point), there is no streaming, no pretty
//! printing and no serde-like mapping to Rust types. The meaning of the
//! header's keys lives in `proto`, not here.

use crate::{Error, ErrorKind, Result};
use std::fmt::Write as _;

/// How deeply arrays and objects may nest. The header is flat; the limit
/// exists so that hostile input such as 100 000 `[` fails cleanly instead
/// of overflowing the stack of the recursive parser.
const MAX_DEPTH: usize = 64;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, kept as its literal text.
    Number(Number),
    /// A string, unescaped.
    String(String),
    /// An array, in order.
    Array(Vec<Value>),
    /// An object's members in the order they appeared, duplicates included:
    /// the order matters for writing the header exactly as Python does.
    Object(Vec<(String, Value)>),
}

/// A JSON number, kept as the literal text it was written with.
///
/// Keeping the text (rather than converting to `f64`) means that
/// `1073741824`, `1.0` and `1e3` stay distinguishable, which the header's
/// strict integer rules need, and that no precision is ever lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Number {
    /// Always a valid RFC 8259 number literal.
    text: String,
}

impl Number {
    /// The literal text of the number, exactly as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the literal is a plain integer: an optional `-`, then
    /// digits, with no fraction and no exponent.
    pub(crate) fn is_integer(&self) -> bool {
        !self.text.contains(['.', 'e', 'E'])
    }

    /// The value as a `u64`, only if the literal is a plain non-negative
    /// integer (no `-`, no fraction, no exponent) that fits in a `u64`.
    ///
    /// `1.0` and `1e3` are refused even though they are mathematically
    /// integers: the legacy client always writes sizes as plain integers, so
    /// anything else comes from a peer that does not follow the format.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        if self.text.starts_with('-') || !self.is_integer() {
            return None;
        }
        self.text.parse().ok()
    }

    /// The value as an `i64`, only if the literal is a plain integer (an
    /// optional `-`, no fraction, no exponent) that fits in an `i64`.
    // No header field is signed today; kept so that an extension with a
    // signed field does not have to reinvent the strict rules.
    #[allow(dead_code)]
    pub(crate) fn as_i64(&self) -> Option<i64> {
        if !self.is_integer() {
            return None;
        }
        self.text.parse().ok()
    }
}

impl Value {
    /// The value of `key` if `self` is an object that has it.
    ///
    /// With duplicate keys the last one wins, as with Python's `json.loads`
    /// into a dict: the legacy server sees the last one, so we must too, or
    /// a crafted header could mean one thing to it and another to us.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The JSON type name of the value, for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

/// A member value of what the wire writes: the header's strings,
/// integers and `null`, the one nested object of the version-2 offer and
/// its list of codec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    /// A string.
    Str(&'a str),
    /// A non-negative integer.
    Int(u64),
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An object of these members, in order.
    Object(Vec<(&'a str, Field<'a>)>),
    /// An array of strings (the codecs a version-2 offer names).
    StrList(&'a [&'a str]),
}

/// The JSON text of an object of `members`, in order, as Python's
/// `json.dumps` writes it with its default settings: separators `", "`
/// and `": "`, strings ASCII-only (see [`write_string`]). The only shapes
/// written are the headers' (see `proto` and `v2`); the reader takes any
/// JSON.
pub(crate) fn write_object(members: &[(&str, Field<'_>)]) -> String {
    let mut out = String::new();
    write_members(&mut out, members);
    out
}

fn write_members(out: &mut String, members: &[(&str, Field<'_>)]) {
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(out, key);
        out.push_str(": ");
        match value {
            Field::Str(s) => write_string(out, s),
            // Writing to a String cannot fail.
            Field::Int(n) => drop(write!(out, "{n}")),
            Field::Null => out.push_str("null"),
            Field::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Field::Object(inner) => write_members(out, inner),
            Field::StrList(items) => {
                out.push('[');
                for (j, item) in items.iter().enumerate() {
                    if j > 0 {
                        out.push_str(", ");
                    }
                    write_string(out, item);
                }
                out.push(']');
            }
        }
    }
    out.push('}');
}

/// Appends `s` to `out` as a JSON string literal, exactly as Python's
/// `json.dumps` writes it by default (`ensure_ascii=True`).
///
/// `"` and `\` are backslash-escaped; `\n`, `\r`, `\t`, `\b`, `\f` use their
/// short escapes; every other character outside printable ASCII (the other
/// C0 controls, DEL and all non-ASCII) becomes `\uXXXX` with lowercase hex,
/// astral characters as a UTF-16 surrogate pair. `/` is not escaped. Being
/// byte-identical to Python matters because the header's length prefix is
/// the length of these bytes.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
        }
    }
    out.push('"');
}

/// Parses `bytes` as one JSON text (RFC 8259), strictly.
///
/// The input must be valid UTF-8, hold exactly one value surrounded only by
/// JSON whitespace, nest at most 64 levels deep, and contain no lone
/// surrogate escapes and no raw control characters inside strings. Errors
/// are [`ErrorKind::Protocol`], since the bytes come from the peer, and
/// name the 0-based byte position where parsing failed.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| malformed(e.valid_up_to(), "invalid UTF-8"))?;
    let mut parser = Parser { text, pos: 0 };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(malformed(
            parser.pos,
            "unexpected data after the JSON value",
        ));
    }
    Ok(value)
}

fn malformed(pos: usize, what: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("malformed JSON at byte {pos}: {what}"),
    )
}

/// A recursive-descent parser over text already known to be valid UTF-8, so
/// that string contents can be copied as `&str` slices between ASCII
/// delimiters without re-validating.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn err(&self, what: &str) -> Error {
        if self.pos >= self.text.len() {
            malformed(self.pos, &format!("unexpected end of input, {what}"))
        } else {
            malformed(self.pos, what)
        }
    }

    /// Parses a value starting at `pos` (whitespace already skipped);
    /// `depth` is the number of arrays and objects around it.
    fn value(&mut self, depth: usize) -> Result<Value> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => Ok(Value::Number(self.number()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            _ => Err(self.err("expected a value")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.err(&format!("expected '{word}'")))
        }
    }

    /// Refuses to go deeper than [`MAX_DEPTH`], before recursing.
    fn enter(&self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// Parses an array starting at its `[`; `depth` counts this array.
    fn array(&mut self, depth: usize) -> Result<Value> {
        self.enter(depth)?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// Parses an object starting at its `{`; `depth` counts this object.
    fn object(&mut self, depth: usize) -> Result<Value> {
        self.enter(depth)?;
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            // RFC 8259 forbids leading zeros: "0" may not be followed by digits.
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.err("leading zeros are not allowed in numbers"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
        }
        Ok(Number {
            text: self.text[start..self.pos].to_owned(),
        })
    }

    /// Parses a string literal starting at the opening quote.
    fn string(&mut self) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters up to the next delimiter in
            // one go; delimiters are ASCII, so the slice is on char
            // boundaries.
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(b) => {
                    return Err(
                        self.err(&format!("unescaped control character U+{b:04X} in string"))
                    )
                }
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// Parses one escape sequence starting at the backslash.
    fn escape(&mut self, out: &mut String) -> Result<()> {
        let at = self.pos;
        self.pos += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                let c = match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate is only meaningful followed by a
                        // low one; Rust strings cannot hold it alone.
                        if !self.text[self.pos..].starts_with("\\u") {
                            return Err(malformed(at, "lone surrogate in \\u escape"));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(malformed(at, "lone surrogate in \\u escape"));
                        }
                        let code = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code)
                    }
                    0xDC00..=0xDFFF => return Err(malformed(at, "lone surrogate in \\u escape")),
                    _ => char::from_u32(u32::from(unit)),
                };
                // Every non-surrogate code unit and every valid pair is a
                // char; the None arm is unreachable but costs nothing.
                let c = c.ok_or_else(|| malformed(at, "invalid \\u escape"))?;
                out.push(c);
                return Ok(());
            }
            _ => return Err(self.err("invalid escape sequence")),
        };
        self.pos += 1;
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut unit: u16 = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.err("expected 4 hex digits after \\u")),
            };
            unit = unit << 4 | u16::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn num(text: &str) -> Number {
        Number {
            text: text.to_owned(),
        }
    }

    fn s(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    fn err_msg(input: &[u8]) -> String {
        let e = parse(input).expect_err("input should be rejected");
        assert_eq!(e.kind(), ErrorKind::Protocol);
        e.to_string()
    }

    #[test]
    fn parses_scalars() {
        assert_eq!(parse(b"null").unwrap(), Value::Null);
        assert_eq!(parse(b"true").unwrap(), Value::Bool(true));
        assert_eq!(parse(b"false").unwrap(), Value::Bool(false));
        assert_eq!(parse(b"0").unwrap(), Value::Number(num("0")));
        assert_eq!(parse(b"-12.5e+3").unwrap(), Value::Number(num("-12.5e+3")));
        assert_eq!(parse(b"\"hi\"").unwrap(), s("hi"));
    }

    #[test]
    fn parses_nested_containers_in_order() {
        let v = parse(br#"{"b": [1, {"c": null}], "a": {}, "z": []}"#).unwrap();
        assert_eq!(
            v,
            Value::Object(vec![
                (
                    "b".to_owned(),
                    Value::Array(vec![
                        Value::Number(num("1")),
                        Value::Object(vec![("c".to_owned(), Value::Null)]),
                    ])
                ),
                ("a".to_owned(), Value::Object(vec![])),
                ("z".to_owned(), Value::Array(vec![])),
            ])
        );
    }

    #[test]
    fn accepts_all_rfc_whitespace_and_nothing_else() {
        let v = parse(b" \t\r\n{ \t\r\n\"a\" \n: \r[ 1 ,\t2 ] \n} \r\n").unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::Array(vec![
                Value::Number(num("1")),
                Value::Number(num("2"))
            ]))
        );
        // Form feed, vertical tab and non-breaking space are not JSON whitespace.
        assert!(parse(b"\x0c1").is_err());
        assert!(parse(b"\x0b1").is_err());
        assert!(parse("\u{a0}1".as_bytes()).is_err());
    }

    #[test]
    fn get_returns_last_duplicate_like_python() {
        let v = parse(br#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Number(num("3"))));
        assert_eq!(v.get("b"), Some(&Value::Number(num("2"))));
        assert_eq!(v.get("c"), None);
        assert_eq!(Value::Array(vec![]).get("a"), None);
        assert_eq!(s("a").get("a"), None);
    }

    #[test]
    fn string_escapes() {
        let v = parse(br#""\" \\ \/ \b \f \n \r \t \u0041 \u00e9 \u20AC \ud83d\ude00""#).unwrap();
        assert_eq!(
            v,
            s("\" \\ / \u{8} \u{c} \n \r \t A \u{e9} \u{20ac} \u{1f600}")
        );
        assert_eq!(parse(br#""\u0000""#).unwrap(), s("\0"));
        assert_eq!(
            parse("\"caf\u{e9} \u{1f600}\"".as_bytes()).unwrap(),
            s("caf\u{e9} \u{1f600}")
        );
    }

    #[test]
    fn rejects_lone_surrogates() {
        for input in [
            &br#""\ud800""#[..],
            br#""\ud800x""#,
            br#""\ud800\u0041""#,
            br#""\udc00""#,
            br#""\ude00\ud83d""#,
            br#""\ud800\ud800""#,
            br#""\ud800\n""#,
        ] {
            let msg = err_msg(input);
            assert!(msg.contains("surrogate"), "{msg}");
        }
    }

    #[test]
    fn rejects_bad_escapes() {
        for input in [
            &br#""\x""#[..],
            br#""\u12""#,
            br#""\u12G4""#,
            br#""\U0041""#,
            br#""\'""#,
            b"\"\\",
            b"\"\\u",
        ] {
            err_msg(input);
        }
    }

    #[test]
    fn rejects_control_characters_in_strings() {
        for b in (0u8..0x20).chain([0x7f]) {
            let input = [b'"', b'a', b, b'"'];
            if b == 0x7f {
                // DEL is not a JSON control character: RFC 8259 allows it raw.
                assert_eq!(parse(&input).unwrap(), s("a\u{7f}"));
            } else {
                let msg = err_msg(&input);
                assert!(msg.contains("control character"), "{msg}");
                assert!(msg.contains("at byte 2"), "{msg}");
            }
        }
    }

    #[test]
    fn rejects_bad_numbers() {
        for input in [
            "01",
            "-01",
            "00",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "1e+",
            "1.e5",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
            "1_000",
            "--1",
        ] {
            err_msg(input.as_bytes());
        }
    }

    #[test]
    fn accepts_valid_numbers() {
        for input in [
            "0",
            "-0",
            "10",
            "1.5",
            "-0.0",
            "1e5",
            "1E-5",
            "1.25e+10",
            "123456789012345678901234567890",
        ] {
            assert_eq!(parse(input.as_bytes()).unwrap(), Value::Number(num(input)));
        }
    }

    #[test]
    fn number_as_u64() {
        let cases: [(&str, Option<u64>); 11] = [
            ("0", Some(0)),
            ("42", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("-0", None),
            ("-1", None),
            ("1.0", None),
            ("1e3", None),
            ("1E3", None),
            ("10.5", None),
            ("99999999999999999999999999", None),
        ];
        for (text, want) in cases {
            assert_eq!(num(text).as_u64(), want, "{text}");
        }
    }

    #[test]
    fn number_as_i64() {
        let cases: [(&str, Option<i64>); 9] = [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("-42", Some(-42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("-1.0", None),
            ("-1e3", None),
        ];
        for (text, want) in cases {
            assert_eq!(num(text).as_i64(), want, "{text}");
        }
    }

    #[test]
    fn number_kinds() {
        assert!(num("7").is_integer());
        assert!(!num("7.0").is_integer());
    }

    #[test]
    fn error_messages_name_the_position() {
        assert_eq!(
            err_msg(br#"{"filename" "x"}"#),
            "malformed JSON at byte 12: expected ':'"
        );
        assert_eq!(
            err_msg(b"[1 2]"),
            "malformed JSON at byte 3: expected ',' or ']'"
        );
        assert_eq!(
            err_msg(b"{\"a\": 1 x"),
            "malformed JSON at byte 8: expected ',' or '}'"
        );
        assert_eq!(
            err_msg(b"{1: 2}"),
            "malformed JSON at byte 1: expected a string key"
        );
        assert_eq!(
            err_msg(b"{} x"),
            "malformed JSON at byte 3: unexpected data after the JSON value"
        );
        assert_eq!(
            err_msg(b"[1,"),
            "malformed JSON at byte 3: unexpected end of input, expected a value"
        );
        assert_eq!(
            err_msg(b"\"abc"),
            "malformed JSON at byte 4: unexpected end of input, unterminated string"
        );
        assert_eq!(
            err_msg(b"{\"a\xff\": 1}"),
            "malformed JSON at byte 3: invalid UTF-8"
        );
        assert_eq!(err_msg(b"tru"), "malformed JSON at byte 0: expected 'true'");
    }

    #[test]
    fn rejects_malformed_documents() {
        for input in [
            &b""[..],
            b"   ",
            b"[",
            b"]",
            b"{",
            b"}",
            b"[1,]",
            b"[,1]",
            b"{\"a\":1,}",
            b"{\"a\"}",
            b"{,}",
            b"{'a': 1}",
            b"[1] [2]",
            b"nul",
            b"True",
            b"None",
            b"\"a\" \"b\"",
            b"\xef\xbb\xbf{}", // a BOM is not whitespace
            b"{} \0",
            b"\xc3\x28",
            b"\xed\xa0\x80", // a UTF-8-encoded surrogate is invalid UTF-8
        ] {
            err_msg(input);
        }
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let msg = err_msg(too_deep.as_bytes());
        assert!(msg.contains("nesting deeper than 64"), "{msg}");
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(parse(objects.as_bytes()).is_err());
        let objects = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(parse(objects.as_bytes()).is_ok());
    }

    #[test]
    fn hostile_nesting_does_not_overflow_the_stack() {
        err_msg("[".repeat(100_000).as_bytes());
        err_msg("{\"a\":".repeat(100_000).as_bytes());
        err_msg("[{\"a\":".repeat(50_000).as_bytes());
    }

    #[test]
    fn write_string_matches_python_json_dumps() {
        // Expected outputs produced by CPython's json.dumps.
        let cases = [
            ("", r#""""#),
            ("large_file.txt", r#""large_file.txt""#),
            ("a/b", r#""a/b""#),
            (
                "a\"b\\c\n\r\t\u{8}\u{c}\0\u{1f}\u{7f}\u{80}\u{85}\u{e9}\u{20ac}\u{1f600}/",
                r#""a\"b\\c\n\r\t\b\f\u0000\u001f\u007f\u0080\u0085\u00e9\u20ac\ud83d\ude00/""#,
            ),
            ("\u{10ffff}", r#""\udbff\udfff""#),
            ("\u{fffd}\u{feff}", r#""\ufffd\ufeff""#),
            (" ~", r#"" ~""#),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            write_string(&mut out, input);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn write_string_appends() {
        let mut out = String::from("x=");
        write_string(&mut out, "y");
        assert_eq!(out, "x=\"y\"");
    }

    #[test]
    fn the_header_shapes_are_written_as_python_does() {
        let offer = Field::Object(vec![("v", Field::Int(2)), ("sid", Field::Str("\u{e9}"))]);
        let members = [
            ("filename", Field::Str("a\"b")),
            ("filesize", Field::Int(u64::MAX)),
            ("crc32", Field::Null),
            ("bt", offer),
        ];
        let text = write_object(&members);
        assert_eq!(
            text,
            r#"{"filename": "a\"b", "filesize": 18446744073709551615, "crc32": null, "bt": {"v": 2, "sid": "\u00e9"}}"#
        );
        assert_eq!(parse(text.as_bytes()).unwrap().type_name(), "object");
        assert_eq!(write_object(&[]), "{}");
    }

    /// Any value as Python's `json.dumps` writes it: the reader's round
    /// trip needs a writer of every shape, which the wire does not.
    fn to_json(v: &Value, out: &mut String) {
        let list = |out: &mut String, n: usize, each: &mut dyn FnMut(&mut String, usize)| {
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                each(out, i);
            }
        };
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(n.as_str()),
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push('[');
                list(out, items.len(), &mut |out, i| to_json(&items[i], out));
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                list(out, members.len(), &mut |out, i| {
                    write_string(out, &members[i].0);
                    out.push_str(": ");
                    to_json(&members[i].1, out);
                });
                out.push('}');
            }
        }
    }

    #[test]
    fn the_test_writer_uses_python_separators() {
        let v = parse(br#"[1,{"a":[],"b":{}},null,true,false,"x",-1.5e3]"#).unwrap();
        let mut out = String::new();
        to_json(&v, &mut out);
        assert_eq!(
            out,
            r#"[1, {"a": [], "b": {}}, null, true, false, "x", -1.5e3]"#
        );
    }

    #[test]
    fn type_names() {
        let v = parse(br#"[null, true, 1, "s", [], {}]"#).unwrap();
        let Value::Array(items) = v else {
            panic!("not an array")
        };
        let names: Vec<_> = items.iter().map(Value::type_name).collect();
        assert_eq!(
            names,
            ["null", "boolean", "number", "string", "array", "object"]
        );
    }

    fn arb_number() -> impl Strategy<Value = Number> {
        "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,4})?"
            .prop_map(|text| Number { text })
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            arb_number().prop_map(Value::Number),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..8).prop_map(Value::Object),
            ]
        })
    }

    proptest! {
        #[test]
        fn prop_round_trip(v in arb_value()) {
            let mut text = String::new();
            to_json(&v, &mut text);
            prop_assert!(text.is_ascii());
            prop_assert_eq!(parse(text.as_bytes()).unwrap(), v);
        }

        #[test]
        fn prop_string_round_trip(input in any::<String>()) {
            let mut out = String::new();
            write_string(&mut out, &input);
            prop_assert!(out.is_ascii());
            prop_assert_eq!(parse(out.as_bytes()).unwrap(), Value::String(input));
        }

        #[test]
        fn prop_number_literals_parse_to_themselves(n in arb_number()) {
            prop_assert_eq!(parse(n.as_str().as_bytes()).unwrap(), Value::Number(n));
        }

        #[test]
        fn prop_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse(&bytes) {
                prop_assert_eq!(e.kind(), ErrorKind::Protocol);
                prop_assert!(e.to_string().starts_with("malformed JSON at byte "));
            }
        }

        #[test]
        fn prop_parse_never_panics_on_json_like_text(
            text in "[\\[\\]{}\":,\\\\u0-9a-fA-FeEtrunlsx .+\\-\\t\\n\u{e9}\u{1f600}]{0,64}"
        ) {
            if let Err(e) = parse(text.as_bytes()) {
                prop_assert_eq!(e.kind(), ErrorKind::Protocol);
            }
        }

        #[test]
        fn prop_error_position_is_within_input(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Err(e) = parse(&bytes) {
                let msg = e.to_string();
                let pos: usize = msg["malformed JSON at byte ".len()..]
                    .split(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                prop_assert!(pos <= bytes.len());
            }
        }
    }
}
