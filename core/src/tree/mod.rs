//! Trees: sending and receiving whole directories (issue 15's building
//! blocks).
//!
//! [`path`] checks the relative path of one entry, [`manifest`] encodes and
//! validates the list of entries a peer sends, [`walk`] lists a local
//! directory in the manifest's order. None of them does network I/O or
//! writes files; the engine puts them together.

pub(crate) mod at;
pub mod fetch;
pub mod manifest;
pub mod path;
pub mod walk;
pub mod wire;

pub use manifest::{
    decode_page, encode_page, symlink_stays_inside, Accepted, Entry, EntryKind, ManifestValidator,
    PageBuilder, ValidatorConfig,
};
pub use path::RelPath;
pub use walk::{Walked, Walker};
