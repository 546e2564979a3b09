//! Turning the client-supplied file name into one that is safe to create
//! inside the server's storage directory.
//!
//! The header's `filename` comes from the network and may be anything: a
//! path, `..`, a NUL, an escape sequence for the operator's terminal, or the
//! name of the server's own state directory. [`SafeName`] is the only way
//! to get from that string to a name the storage code uses, so a name that
//! exists is a name that passed every rule below.
//!
//! It is not for paths: it yields a single component that the caller joins
//! onto the storage directory. It does not check whether the file exists,
//! and it does not guard against names that only Windows treats specially
//! (`CON`, `NUL`, `a:b` streams): the server stores on Unix-like systems.

use crate::{Error, ErrorKind, Result};
use std::fmt;

/// The longest accepted name in bytes of UTF-8: `NAME_MAX` on Linux and
/// most Unix file systems, so a name that passes can always be created.
pub const MAX_NAME_BYTES: usize = 255;

/// The server's own state directory inside the storage directory (partial
/// uploads and their metadata live there). No client may upload a file of
/// that name, compared case-insensitively since some file systems fold case.
pub const RESERVED_NAME: &str = ".bigtransfer";

/// A file name that is safe to create inside the storage directory: one
/// path component, 1 to 255 bytes, no control character, not `.`, `..` or
/// made only of dots, and not [`RESERVED_NAME`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafeName(String);

impl SafeName {
    /// Sanitises the `filename` a client sent into a safe name, or refuses it.
    ///
    /// The rules, each with its reason:
    ///
    /// 1. Only the last component counts, after splitting on both `/` and
    ///    `\`: clients send base names, but a hostile or Windows client may
    ///    send a path, and only the base name keeps the file inside the
    ///    storage directory (`"/etc/passwd"` becomes `"passwd"`, `"a\\b"`
    ///    becomes `"b"`, `"../x"` becomes `"x"`).
    /// 2. An empty name is refused (as is `"dir/"`, whose last component is
    ///    empty): it would name the storage directory itself.
    /// 3. `.`, `..` and any name made only of dots are refused: the first two
    ///    name directories, and Windows strips trailing dots, so `...` is
    ///    unsafe on file systems shared with it.
    /// 4. A name containing a control character (`char::is_control`: NUL,
    ///    the other C0 controls, DEL and the C1 controls) is refused: NUL
    ///    cannot be in a path at all, and the others corrupt logs and
    ///    terminals that show the name.
    /// 5. A name longer than [`MAX_NAME_BYTES`] bytes of UTF-8 is refused,
    ///    since the file system would refuse it later, after the upload.
    /// 6. [`RESERVED_NAME`] is refused in any case (ASCII or Unicode case
    ///    folding) and with any trailing dots or spaces (which Windows
    ///    ignores): a file of that name would clash with the server's state.
    ///
    /// Leading and trailing spaces are otherwise kept: they are legal on
    /// every file system and the client may mean them.
    ///
    /// Refusals are [`ErrorKind::Refused`] errors naming the rule and
    /// showing the received name escaped (at most 80 characters of it).
    ///
    /// ```
    /// use bigtransfer_core::{ErrorKind, SafeName};
    /// assert_eq!(SafeName::from_wire("../../etc/passwd")?.as_str(), "passwd");
    /// assert_eq!(SafeName::from_wire("C:\\Users\\me\\big.iso")?.as_str(), "big.iso");
    /// assert_eq!(SafeName::from_wire("..").unwrap_err().kind(), ErrorKind::Refused);
    /// assert_eq!(SafeName::from_wire("x\0y").unwrap_err().kind(), ErrorKind::Refused);
    /// # Ok::<(), bigtransfer_core::Error>(())
    /// ```
    pub fn from_wire(raw: &str) -> Result<SafeName> {
        let name = raw.rsplit(['/', '\\']).next().unwrap_or("");
        if name.is_empty() {
            return Err(refused(
                raw,
                "it has no file name after the last '/' or '\\'",
            ));
        }
        if name == "." || name == ".." {
            return Err(refused(raw, "\".\" and \"..\" name directories"));
        }
        if name.chars().all(|c| c == '.') {
            return Err(refused(raw, "it consists only of dots"));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            let reason = format!("it contains the control character U+{:04X}", u32::from(c));
            return Err(refused(raw, &reason));
        }
        if name.len() > MAX_NAME_BYTES {
            let reason = format!(
                "it is {} bytes long, over the limit of {MAX_NAME_BYTES} bytes",
                name.len()
            );
            return Err(refused(raw, &reason));
        }
        if is_reserved(name) {
            let reason = format!("{RESERVED_NAME:?} is reserved for the server's own state");
            return Err(refused(raw, &reason));
        }
        Ok(SafeName(name.to_owned()))
    }

    /// The name as a string slice.
    ///
    /// ```
    /// use bigtransfer_core::SafeName;
    /// assert_eq!(SafeName::from_wire("dir/a.bin")?.as_str(), "a.bin");
    /// # Ok::<(), bigtransfer_core::Error>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `name` would be taken for [`RESERVED_NAME`] by some file
/// system: Unicode case folding (so that e.g. the Kelvin sign or the long s
/// also count, as they do on case-insensitive file systems) after dropping
/// the trailing dots and spaces that Windows ignores.
fn is_reserved(name: &str) -> bool {
    name.trim_end_matches(['.', ' '])
        .chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .eq(RESERVED_NAME.chars())
}

fn refused(raw: &str, reason: &str) -> Error {
    const SHOWN: usize = 80;
    let mut shown = String::new();
    let mut shown_chars = 0;
    for c in raw.chars() {
        // Whole escapes only, so that a cut never leaves half of one.
        let escaped = c.escape_debug();
        let len = escaped.len();
        if shown_chars + len > SHOWN {
            shown.push_str("...");
            break;
        }
        shown.extend(escaped);
        shown_chars += len;
    }
    Error::new(
        ErrorKind::Refused,
        format!("refused file name \"{shown}\": {reason}"),
    )
}

/// Shows the name for a person (logs, messages): characters that could
/// fool a terminal or forge a log line (bidi overrides, line separators)
/// are escaped by [`crate::text::printable`]. The name itself is
/// [`SafeName::as_str`].
impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::printable(&self.0))
    }
}

impl AsRef<str> for SafeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> String {
        SafeName::from_wire(raw)
            .unwrap_or_else(|e| panic!("{raw:?} should be accepted: {e}"))
            .as_str()
            .to_owned()
    }

    fn refused_msg(raw: &str) -> String {
        let e = SafeName::from_wire(raw).expect_err("name should be refused");
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        e.to_string()
    }

    #[test]
    fn keeps_only_the_last_component() {
        assert_eq!(ok("../x"), "x");
        assert_eq!(ok("/etc/passwd"), "passwd");
        assert_eq!(ok("a\\b"), "b");
        assert_eq!(ok("..\\..\\windows\\system32\\x.dll"), "x.dll");
        assert_eq!(ok("a/b\\c/d"), "d");
        assert_eq!(ok("//x"), "x");
        assert_eq!(ok("large_file.txt"), "large_file.txt");
        assert_eq!(ok("./a"), "a");
    }

    #[test]
    fn refuses_empty_names() {
        for raw in ["", "/", "dir/", "a\\", "../", "/\\"] {
            let msg = refused_msg(raw);
            assert!(msg.contains("no file name"), "{msg}");
        }
        assert_eq!(
            refused_msg("dir/"),
            "refused file name \"dir/\": it has no file name after the last '/' or '\\'"
        );
    }

    #[test]
    fn refuses_dot_names() {
        for raw in [".", "..", "a/..", "a\\.", "/.."] {
            let msg = refused_msg(raw);
            assert!(msg.contains("name directories"), "{msg}");
        }
        for raw in ["...", "....", "x/....."] {
            let msg = refused_msg(raw);
            assert!(msg.contains("only of dots"), "{msg}");
        }
        assert_eq!(ok(".hidden"), ".hidden");
        assert_eq!(ok("..a"), "..a");
        assert_eq!(ok("a.."), "a..");
        assert_eq!(ok(". ."), ". .");
    }

    #[test]
    fn refuses_control_characters() {
        let msg = refused_msg("x\0y");
        assert_eq!(
            msg,
            "refused file name \"x\\0y\": it contains the control character U+0000"
        );
        let msg = refused_msg("\u{85}");
        assert_eq!(
            msg,
            "refused file name \"\\u{85}\": it contains the control character U+0085"
        );
        for c in ('\0'..='\u{1f}').chain('\u{7f}'..='\u{9f}') {
            let raw = format!("a{c}b");
            let msg = refused_msg(&raw);
            assert!(msg.contains("control character"), "{msg}");
        }
        // Control characters in discarded directory parts do not matter.
        assert_eq!(ok("\0dir\n/file"), "file");
    }

    #[test]
    fn keeps_spaces_and_unicode() {
        assert_eq!(ok(" a b "), " a b ");
        assert_eq!(ok(" "), " ");
        assert_eq!(ok("caf\u{e9} \u{1f600}.txt"), "caf\u{e9} \u{1f600}.txt");
        assert_eq!(ok("\u{65e5}\u{672c}\u{8a9e}"), "\u{65e5}\u{672c}\u{8a9e}");
        // Not control characters: format chars and private use are allowed.
        assert_eq!(ok("a\u{200b}b"), "a\u{200b}b");
        assert_eq!(ok("\u{a0}"), "\u{a0}");
    }

    #[test]
    fn length_limit_in_bytes() {
        let at_limit = "a".repeat(MAX_NAME_BYTES);
        assert_eq!(ok(&at_limit), at_limit);
        assert_eq!(ok(&format!("dir/{at_limit}")), at_limit);
        let msg = refused_msg(&"a".repeat(256));
        assert!(
            msg.contains("256 bytes long, over the limit of 255"),
            "{msg}"
        );
        let msg = refused_msg(&"a".repeat(300));
        assert!(msg.contains("300 bytes long"), "{msg}");
    }

    #[test]
    fn length_limit_with_multibyte_utf8() {
        // 85 three-byte characters are exactly 255 bytes.
        let euro = "\u{20ac}".repeat(85);
        assert_eq!(euro.len(), 255);
        assert_eq!(ok(&euro), euro);
        let msg = refused_msg(&format!("{euro}a"));
        assert!(msg.contains("256 bytes"), "{msg}");
        // 63 four-byte characters are 252 bytes; one more is 256.
        let emoji = "\u{1f600}".repeat(63);
        assert_eq!(ok(&format!("{emoji}abc")).len(), 255);
        assert!(refused_msg(&format!("{emoji}\u{1f600}")).contains("256 bytes"));
        // 127 two-byte characters are 254 bytes, well under 255 characters.
        let e_acute = "\u{e9}".repeat(128);
        assert!(refused_msg(&e_acute).contains("256 bytes"));
    }

    #[test]
    fn refuses_the_reserved_name_in_any_case() {
        for raw in [
            ".bigtransfer",
            ".BigTransfer",
            ".BIGTRANSFER",
            "x/.bigtransfer",
            ".bigtransfer.",
            ".bigtransfer ",
            ".bigtransfer. .",
            ".bigtran\u{17f}fer", // long s folds to s
            ".BIGTRANSFER\u{2e}",
        ] {
            let msg = refused_msg(raw);
            assert!(msg.contains("reserved"), "{raw:?}: {msg}");
        }
        assert_eq!(
            refused_msg(".BigTransfer"),
            "refused file name \".BigTransfer\": \".bigtransfer\" is reserved for the server's own state"
        );
        assert_eq!(ok("bigtransfer"), "bigtransfer");
        assert_eq!(ok(".bigtransfer.tmp"), ".bigtransfer.tmp");
        assert_eq!(ok(" .bigtransfer"), " .bigtransfer");
        assert_eq!(ok(".bigtransfer2"), ".bigtransfer2");
    }

    #[test]
    fn messages_escape_and_truncate_the_name() {
        let msg = refused_msg("\u{1b}[31mred\u{1b}[0m");
        assert!(
            msg.starts_with("refused file name \"\\u{1b}[31mred"),
            "{msg}"
        );
        assert!(!msg.contains('\u{1b}'));
        let long = format!("{}\0", "b".repeat(1000));
        let msg = refused_msg(&long);
        assert_eq!(
            msg,
            format!(
                "refused file name \"{}...\": it contains the control character U+0000",
                "b".repeat(80)
            )
        );
        // 78 characters and "\0" escape to exactly 80 characters: shown whole.
        let msg = refused_msg(&format!("{}\0", "a".repeat(78)));
        let want = format!("refused file name \"{}\\0\": ", "a".repeat(78));
        assert!(msg.starts_with(&want), "{msg}");
        // One more and the escape would straddle the limit: it is left out.
        let msg = refused_msg(&format!("{}\0", "a".repeat(79)));
        let want = format!("refused file name \"{}...\": ", "a".repeat(79));
        assert!(msg.starts_with(&want), "{msg}");
    }

    #[test]
    fn display_and_as_ref() {
        let name = SafeName::from_wire("dir/a b.bin").unwrap();
        assert_eq!(name.to_string(), "a b.bin");
        assert_eq!(AsRef::<str>::as_ref(&name), "a b.bin");
        assert_eq!(format!("{name:?}"), "SafeName(\"a b.bin\")");
        assert_eq!(name.clone(), name);
    }

    proptest! {
        #[test]
        fn prop_result_is_safe(raw in any::<String>()) {
            check(&raw)?;
        }

        #[test]
        fn prop_result_is_safe_on_path_like_input(
            raw in "[./\\\\a\u{0}\u{85}\u{e9}\u{1f600} ]{0,12}|.{0,300}"
        ) {
            check(&raw)?;
        }

        #[test]
        fn prop_names_of_any_length(c in any::<char>(), n in 0usize..300) {
            check(&c.to_string().repeat(n))?;
        }
    }

    fn check(raw: &str) -> std::result::Result<(), TestCaseError> {
        match SafeName::from_wire(raw) {
            Ok(name) => {
                let s = name.as_str();
                prop_assert!(!s.contains('/') && !s.contains('\\'));
                prop_assert!(!s.chars().any(char::is_control));
                prop_assert!((1..=MAX_NAME_BYTES).contains(&s.len()));
                prop_assert!(s != "." && s != "..");
                prop_assert!(!s.chars().all(|c| c == '.'));
                prop_assert!(!s.eq_ignore_ascii_case(RESERVED_NAME));
                prop_assert!(raw.ends_with(s));
                // Sanitising a safe name changes nothing.
                prop_assert_eq!(SafeName::from_wire(s).unwrap(), name.clone());
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::Refused);
                let msg = e.to_string();
                prop_assert!(msg.starts_with("refused file name \""));
                prop_assert!(!msg.chars().any(char::is_control));
            }
        }
        Ok(())
    }
}
