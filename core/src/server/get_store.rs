//! Serving a download from the object store (feature `s3`): the same
//! exchange as `get` (reference, then rounds of wanted blocks), with the
//! reference and the blocks from [`crate::s3::S3Storage`], every block
//! checked against the reference before it is sent.
//!
//! Not for the local directory (`get`) nor the store's reads themselves.

use std::io::Write;

use super::get::{read_want, Input, Stop};
use super::Shared;
use crate::getwire::{self, TAG_REFERENCE};
use crate::machine::Fault;
use crate::s3::S3Storage;
use crate::SafeName;

/// The exchange: reference, then rounds of wanted blocks. Returns the
/// object's size and the bytes of it sent.
pub(super) fn run(
    sh: &Shared,
    s3: &S3Storage,
    name: &SafeName,
    input: &mut Input,
) -> Result<(u64, u64), Stop> {
    let reference = s3.reference(name.as_str()).map_err(Stop::Fault)?;
    let payload = reference.encode();
    input
        .stream
        .write_all(&getwire::encode_frame(TAG_REFERENCE, &payload))?;
    input.stream.set_read_timeout(Some(sh.cfg.idle_timeout))?;
    let mut buf = Vec::with_capacity(reference.block as usize);
    let mut sent = 0u64;
    for _ in 0..=super::MAX_REPAIR_ROUNDS + crate::client::MAX_REPAIR_ROUNDS {
        let wanted = read_want(input, reference.count())?;
        if wanted.is_empty() {
            return Ok((reference.size, sent));
        }
        for i in wanted {
            let crc = s3
                .read_block(name.as_str(), &reference, i, &mut buf)
                .map_err(Stop::Fault)?;
            let (off, len) = reference.range(i);
            input
                .stream
                .write_all(&getwire::encode_data_head(off, len as u32))?;
            input.stream.write_all(&buf)?;
            input.stream.write_all(&crc.to_be_bytes())?;
            sent += len;
        }
    }
    Err(Stop::Fault(Fault::bad(
        "refused: too many rounds of blocks asked for on one connection",
    )))
}
