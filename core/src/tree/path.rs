//! [`RelPath`]: the relative path of one entry of a tree, safe to create
//! under the storage directory, with the component-wise order manifests are
//! sorted in.
//!
//! Every component passes the same rules as a single uploaded file name
//! ([`SafeName`]), checked by that very code; the path as a
//! whole is relative, has no empty component and is bounded in depth and
//! length. It is not for resolving paths on disk (no symlink is looked at)
//! nor for symlink targets (see [`symlink_stays_inside`](super::manifest::symlink_stays_inside)).

use crate::{Error, ErrorKind, Result, SafeName};
use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

/// The most components a path may have. Deep enough for real trees
/// (node_modules nests about 20 deep), shallow enough that a validator's
/// stack and a recursive delete stay small.
pub const MAX_DEPTH: usize = 128;

/// The longest path in bytes (separators included): Linux's `PATH_MAX` of
/// 4096, less room for the storage directory the path is joined onto.
pub const MAX_PATH_BYTES: usize = 3840;

/// A relative path of 1 to [`MAX_DEPTH`] components joined by `/`, each a
/// valid [`SafeName`], at most [`MAX_PATH_BYTES`] bytes in all.
///
/// Ordered component by component (`a` < `a/x` < `a b`), which is the
/// order of a sorted depth-first walk; plain string order would put `a b`
/// before `a/x` since ' ' sorts before '/'.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Checks a path received from a peer (or built locally) and keeps it
    /// exactly as given, or refuses it ([`ErrorKind::Refused`]) saying which
    /// component broke which rule.
    ///
    /// Refused: an empty path, a leading `/` (absolute), an empty component
    /// (`a//b`, a trailing `/`), a `\` in a component (a separator to
    /// Windows and to hostile peers hoping for one), any component
    /// [`SafeName`] refuses (`.`, `..`, dots only, control characters, over
    /// 255 bytes, the reserved `.bigtransfer` at any depth), more than
    /// [`MAX_DEPTH`] components or more than [`MAX_PATH_BYTES`] bytes.
    ///
    /// ```
    /// use bigtransfer_core::tree::RelPath;
    /// assert_eq!(RelPath::from_wire("photos/2024/a b.jpg")?.depth(), 3);
    /// assert!(RelPath::from_wire("photos/../../etc").is_err());
    /// assert!(RelPath::from_wire("/etc/passwd").is_err());
    /// # Ok::<(), bigtransfer_core::Error>(())
    /// ```
    pub fn from_wire(raw: &str) -> Result<RelPath> {
        if raw.is_empty() {
            return Err(refused(raw, "it is empty"));
        }
        if raw.starts_with('/') {
            return Err(refused(raw, "it is absolute (starts with '/')"));
        }
        if raw.len() > MAX_PATH_BYTES {
            let why = format!(
                "it is {} bytes long, over the limit of {MAX_PATH_BYTES}",
                raw.len()
            );
            return Err(refused(raw, &why));
        }
        for (i, comp) in raw.split('/').enumerate() {
            if i >= MAX_DEPTH {
                let why = format!("it has more than {MAX_DEPTH} components");
                return Err(refused(raw, &why));
            }
            check_component(raw, i, comp)?;
        }
        Ok(RelPath(raw.to_owned()))
    }

    /// This path with one more component, checked like [`from_wire`](Self::from_wire).
    pub fn join(&self, name: &str) -> Result<RelPath> {
        RelPath::from_wire(&format!("{}/{name}", self.0))
    }

    /// The path as a string, components separated by `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last.
    pub fn components(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Number of components (1 for a top-level entry).
    pub fn depth(&self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path of the directory holding this entry as a string, or `None`
    /// for a top-level entry (held by the storage root itself).
    pub fn parent_str(&self) -> Option<&str> {
        self.0.rfind('/').map(|at| &self.0[..at])
    }

    /// Whether `self` is `other` or a directory above it (`a` is an
    /// ancestor of `a/b` but not of `ab`).
    pub fn is_ancestor_or_self(&self, other: &RelPath) -> bool {
        match other.0.strip_prefix(&self.0) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// The relative file system path (joined onto a root by the caller).
    pub fn to_path_buf(&self) -> PathBuf {
        Path::new(&self.0).to_path_buf()
    }

    /// The key under which a case-insensitive file system would see this
    /// path: each character upper- then lower-cased (full Unicode case
    /// folding, like [`SafeName`]'s reserved-name check). No Unicode
    /// normalisation (NFC/NFD) is applied.
    pub fn case_fold_key(&self) -> String {
        fold(&self.0)
    }
}

/// The common case, accepted without [`SafeName`]'s Unicode case folding
/// (a million-entry manifest spends most of its checking time there): 1 to
/// 255 printable ASCII bytes without `/` or `\`, not starting with a dot.
/// Every rule of `SafeName` passes for such a name: no control character,
/// not made of dots, and not the reserved name (which starts with a dot,
/// and only a dot case-folds to a dot).
fn is_plain(comp: &str) -> bool {
    let b = comp.as_bytes();
    (1..=crate::name::MAX_NAME_BYTES).contains(&b.len())
        && b[0] != b'.'
        && b.iter()
            .all(|&c| (b' '..=b'~').contains(&c) && c != b'\\' && c != b'/')
}

/// Case folds `s` as [`RelPath::case_fold_key`] does.
pub(crate) fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

fn check_component(raw: &str, index: usize, comp: &str) -> Result<()> {
    if is_plain(comp) {
        return Ok(());
    }
    let why = if comp.is_empty() {
        "it is empty".to_owned()
    } else if comp.contains('\\') {
        "it contains '\\', a path separator on Windows".to_owned()
    } else {
        match SafeName::from_wire(comp) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        }
    };
    let why = format!("component {}: {why}", index + 1);
    Err(refused(raw, &why))
}

fn refused(raw: &str, reason: &str) -> Error {
    Error::new(
        ErrorKind::Refused,
        format!("refused path \"{}\": {reason}", shown(raw)),
    )
}

/// At most 120 characters of `raw`, escaped, for messages.
pub(crate) fn shown(raw: &str) -> String {
    const SHOWN: usize = 120;
    let mut out = String::new();
    for c in raw.chars() {
        let escaped = c.escape_debug();
        if out.len() + escaped.len() > SHOWN {
            out.push_str("...");
            break;
        }
        out.extend(escaped);
    }
    out
}

impl Ord for RelPath {
    fn cmp(&self, other: &RelPath) -> Ordering {
        self.components().cmp(other.components())
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &RelPath) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_wire(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn refused_msg(s: &str) -> String {
        let e = RelPath::from_wire(s).expect_err(s);
        assert_eq!(e.kind(), ErrorKind::Refused);
        e.to_string()
    }

    #[test]
    fn accepts_ordinary_paths() {
        for s in [
            "a",
            "a/b",
            "dir/sub dir/caf\u{e9} \u{1f600}.txt",
            ".hidden/..a/a..",
        ] {
            assert_eq!(p(s).as_str(), s);
        }
        assert_eq!(p("a/b/c").depth(), 3);
        assert_eq!(p("a/b/c").file_name(), "c");
        assert_eq!(p("a/b/c").parent_str(), Some("a/b"));
        assert_eq!(p("a").parent_str(), None);
        assert_eq!(p("a").join("b c").unwrap(), p("a/b c"));
        assert_eq!(p("x/y").to_path_buf(), PathBuf::from("x/y"));
    }

    #[test]
    fn refuses_hostile_paths_in_words() {
        let cases = [
            ("", "refused path \"\": it is empty"),
            (
                "/etc/passwd",
                "refused path \"/etc/passwd\": it is absolute (starts with '/')",
            ),
            ("a//b", "refused path \"a//b\": component 2: it is empty"),
            ("a/", "component 2: it is empty"),
            (
                "../x",
                "component 1: refused file name \"..\": \".\" and \"..\" name directories",
            ),
            ("a/./b", "component 2: refused file name \".\""),
            ("a/b/..", "component 3"),
            ("a/.../b", "only of dots"),
            (
                "a\\..\\b",
                "component 1: it contains '\\', a path separator on Windows",
            ),
            ("a/x\0y", "control character U+0000"),
            ("a/\u{1b}[2J", "control character U+001B"),
            (
                "d/.BigTransfer",
                "component 2: refused file name \".BigTransfer\": \".bigtransfer\" is reserved",
            ),
            (".bigtransfer/x", "reserved"),
        ];
        for (raw, want) in cases {
            let msg = refused_msg(raw);
            assert!(msg.contains(want), "{raw:?}: {msg}");
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
        }
    }

    #[test]
    fn bounds_depth_and_length() {
        let deep = vec!["d"; MAX_DEPTH].join("/");
        assert_eq!(p(&deep).depth(), MAX_DEPTH);
        let msg = refused_msg(&format!("{deep}/d"));
        assert!(msg.contains("more than 128 components"), "{msg}");
        let long_comp = "n".repeat(255);
        assert!(refused_msg(&format!("a/{}", "n".repeat(256))).contains("256 bytes long"));
        let long = vec![long_comp.as_str(); 16].join("/");
        assert_eq!(long.len(), 16 * 256 - 1);
        let msg = refused_msg(&long);
        assert!(
            msg.contains("4095 bytes long, over the limit of 3840"),
            "{msg}"
        );
        assert!(msg.len() < 300, "message is bounded: {msg}");
    }

    #[test]
    fn orders_component_wise() {
        let mut v: Vec<RelPath> = ["a b", "a/x", "a", "a/x/y", "a-b", "a/x y", "b", "a/\u{e9}"]
            .iter()
            .map(|s| p(s))
            .collect();
        v.sort();
        let sorted: Vec<&str> = v.iter().map(RelPath::as_str).collect();
        assert_eq!(
            sorted,
            ["a", "a/x", "a/x/y", "a/x y", "a/\u{e9}", "a b", "a-b", "b"]
        );
        assert!(p("a") < p("a/x") && p("a/x") < p("a b"));
        // Plain string order would disagree here.
        assert!("a b" < "a/x");
    }

    #[test]
    fn ancestry_and_case_folding() {
        assert!(p("a").is_ancestor_or_self(&p("a/b")));
        assert!(p("a").is_ancestor_or_self(&p("a")));
        assert!(!p("a").is_ancestor_or_self(&p("ab")));
        assert!(!p("a/b").is_ancestor_or_self(&p("a")));
        assert_eq!(
            p("Dir/\u{c9}t\u{e9}.TXT").case_fold_key(),
            "dir/\u{e9}t\u{e9}.txt"
        );
        assert_eq!(p("\u{212a}").case_fold_key(), p("k").case_fold_key()); // Kelvin sign
    }

    proptest! {
        #[test]
        fn prop_accepted_paths_are_safe(raw in "[a./\\\\\u{0}\u{e9} ]{0,16}|.{0,40}") {
            if let Ok(path) = RelPath::from_wire(&raw) {
                prop_assert!(!raw.starts_with('/'));
                prop_assert_eq!(path.depth(), path.components().count());
                for c in path.components() {
                    let name = SafeName::from_wire(c).unwrap();
                    prop_assert_eq!(name.as_str(), c);
                }
            }
        }

        #[test]
        fn prop_plain_names_pass_safe_name(comp in "[ -~]{0,260}|\\.[bB][iI][gG].{0,12}") {
            if is_plain(&comp) {
                let name = SafeName::from_wire(&comp).map(|n| n.as_str().to_owned());
                prop_assert_eq!(name.ok(), Some(comp.clone()));
            }
        }

        #[test]
        fn prop_order_matches_component_vectors(
            a in proptest::collection::vec("[ab /-]{1,3}", 1..4),
            b in proptest::collection::vec("[ab /-]{1,3}", 1..4),
        ) {
            let (Ok(pa), Ok(pb)) = (RelPath::from_wire(&a.join("/")), RelPath::from_wire(&b.join("/"))) else {
                return Ok(());
            };
            let ca: Vec<&str> = pa.components().collect();
            let cb: Vec<&str> = pb.components().collect();
            prop_assert_eq!(pa.cmp(&pb), ca.cmp(&cb));
        }
    }
}
