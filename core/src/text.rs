//! Making text from a peer or from a file name safe to show.
//!
//! A server's error message, a file name in a log line or a path in a
//! prompt can carry terminal escape sequences, carriage returns, bidi
//! overrides (U+202E turns `txt.exe` into `exe.txt` on screen) or line
//! separators (U+2028 forges a second log line). [`printable`] escapes
//! every such character as `\u{…}` so what a person reads is what the
//! bytes say. Not for: validating names (see [`crate::name`]).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal or a log as it is: control
/// characters (C0, DEL, C1), bidirectional formatting characters, and the
/// Unicode line and paragraph separators.
pub fn is_unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `s` with every character that [`is_unsafe_to_show`] escaped as
/// `\u{hex}`, and backslashes doubled only where they would make an escape
/// ambiguous (a literal `\u{` in the input becomes `\\u{`). Borrowed when
/// nothing needed escaping.
///
/// ```
/// use bigtransfer_core::text::printable;
/// assert_eq!(printable("plain name.bin"), "plain name.bin");
/// assert_eq!(printable("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe");
/// assert_eq!(printable("red\x1b[31m\r\n"), "red\\u{1b}[31m\\u{d}\\u{a}");
/// ```
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_to_show) && !s.contains("\\u{") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if is_unsafe_to_show(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else if rest.starts_with("\\u{") {
            out.push('\\');
            out.push('\\');
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_dangerous_class_and_nothing_else() {
        assert_eq!(printable("héllo wörld 日本"), "héllo wörld 日本");
        assert_eq!(printable("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(printable("a\u{2066}b\u{2069}"), "a\\u{2066}b\\u{2069}");
        assert_eq!(printable("\u{9b}c"), "\\u{9b}c");
        assert_eq!(printable("nul\0"), "nul\\u{0}");
        // A literal escape in the input cannot pass for one we made.
        assert_eq!(printable("x\\u{202e}"), "x\\\\u{202e}");
    }
}
