//! Which storage the server's connections use: the local directory, or
//! (feature `s3`) an S3 bucket. One enum of held parts, so the shell and
//! its policy stay the same for both.
//!
//! Not for the storages themselves (`local`, [`crate::s3::S3Storage`]).

use super::local::LocalPart;
use crate::machine::{Fault, HeldPart, Recheck, StoredAs};

/// A held part of either storage. (One per connection, made once and
/// never moved in a loop: the size difference of the variants costs nothing.)
#[allow(clippy::large_enum_variant)]
pub(super) enum ServerPart {
    Local(LocalPart),
    #[cfg(feature = "s3")]
    S3(crate::s3::S3Part),
}

impl ServerPart {
    /// Why the part did not resume as recorded (for the log), if it did not.
    pub(super) fn note(&self) -> Option<&str> {
        match self {
            ServerPart::Local(p) => p.note.as_deref(),
            #[cfg(feature = "s3")]
            ServerPart::S3(_) => None,
        }
    }

    /// Bytes held for a resume.
    pub(super) fn held_bytes(&self) -> u64 {
        match self {
            ServerPart::Local(p) => p.held_bytes(),
            #[cfg(feature = "s3")]
            ServerPart::S3(p) => p.held_bytes(),
        }
    }

    /// Verified blocks held.
    pub(super) fn held_blocks(&self) -> usize {
        match self {
            ServerPart::Local(p) => p.held_blocks(),
            #[cfg(feature = "s3")]
            ServerPart::S3(p) => p.held_blocks(),
        }
    }

    fn inner(&mut self) -> &mut dyn HeldPart {
        match self {
            ServerPart::Local(p) => p,
            #[cfg(feature = "s3")]
            ServerPart::S3(p) => p,
        }
    }
}

impl HeldPart for ServerPart {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        self.inner().write_at(offset, bytes)
    }
    fn begin_block(&mut self, idx: u64) -> Result<(), Fault> {
        self.inner().begin_block(idx)
    }
    fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<(), Fault> {
        self.inner().record_block(idx, crc, good)
    }
    fn checkpoint(&mut self) -> Result<(), Fault> {
        self.inner().checkpoint()
    }
    fn recheck(&mut self) -> Result<Recheck, Fault> {
        self.inner().recheck()
    }
    fn commit(&mut self, whole_crc: u32) -> Result<(), Fault> {
        self.inner().commit(whole_crc)
    }
    fn discard(&mut self) -> Result<(), Fault> {
        self.inner().discard()
    }
    fn stored_as(&self) -> StoredAs {
        match self {
            ServerPart::Local(p) => p.stored_as(),
            #[cfg(feature = "s3")]
            ServerPart::S3(p) => p.stored_as(),
        }
    }
}
