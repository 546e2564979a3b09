//! Serving a download from the object store (feature `s3`): the same
//! exchange as `get` (reference, then rounds of wanted blocks), with the
//! reference and the blocks from [`crate::s3::S3Storage`], every block
//! checked against the reference before it is sent.
//!
//! Not for the local directory (`get`) nor the store's reads themselves.

use crate::getwire::Reference;
use crate::s3::RunEnd;

use super::get::{read_want, Asked, Input, Stop};
use super::Shared;
use crate::machine::Fault;
use crate::s3::S3Storage;

/// The exchange: reference, then rounds of wanted blocks. Returns the
/// object's size and the bytes of it sent.
pub(super) fn run(
    sh: &Shared,
    s3: &S3Storage,
    asked: &Asked,
    input: &mut Input,
    plan: &super::getjoin::Plan,
) -> Result<(u64, u64), Stop> {
    let name = asked.name;
    // A get by path names a tree file's object (its components checked),
    // in blocks as large as a single-file get's.
    let key = asked.path.unwrap_or(name.as_str());
    let reference = match asked.path {
        None => s3.reference(key),
        Some(p) => s3.tree_reference(p, crate::v2::MAX_BLOCK),
    }
    .map_err(|f| Stop::Fault(folder_words(s3, key, f)))?;
    let (_session, rounds) = super::get::begin(sh, key, &reference, plan, input)?;
    let mut sent = 0u64;
    for _ in 0..=rounds {
        let wanted = read_want(input, reference.count())?;
        if wanted.is_empty() {
            return Ok((reference.size, sent));
        }
        for (first, count) in runs(&wanted) {
            let mut send = |off: u64, bytes: &[u8], crc: u32| {
                input.pack.send(input.stream.as_mut(), off, bytes, crc)
            };
            sent += send_run(s3, key, &reference, first, count, &mut send)?;
        }
    }
    Err(Stop::Fault(Fault::bad(
        "refused: too many rounds of blocks asked for on one connection",
    )))
}

/// A name not found as an object but that is a folder of the store (a
/// tree sent here) is said to be no regular file, as the local `get` says
/// of a directory: the client then asks for it as a tree.
fn folder_words(s3: &S3Storage, name: &str, f: Fault) -> Fault {
    if f.code != crate::v2::FaultCode::NotFound {
        return f;
    }
    match s3.client().list_page(&format!("{name}/"), true, None) {
        Ok(p) if !p.entries.is_empty() || !p.prefixes.is_empty() => Fault::new(
            f.code,
            format!("no file \"{name}\" on the server (not a regular file)"),
        ),
        _ => f,
    }
}

/// Where a checked block goes: its offset, bytes and CRC-32.
pub(super) type BlockOut<'a> = dyn FnMut(u64, &[u8], u32) -> std::io::Result<()> + 'a;

/// The most bytes read with one ranged GET (a run of wanted blocks is cut
/// into GETs of at most this).
const RUN_BYTES: u64 = 256 << 20;

/// Consecutive wanted blocks as (first, count) runs.
pub(super) fn runs(wanted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &i in wanted {
        match out.last_mut() {
            Some((first, count)) if *first + *count == i => *count += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

/// Sends blocks `first..first + count`, read with ranged GETs of up to
/// [`RUN_BYTES`], each block checked before it is sent (one that does not
/// match is read alone again, then refused), each through `send` (its
/// offset, bytes and CRC-32: raw or compressed as the connection agreed,
/// or a tree download's frame, [`super::tree_get_store`]). Returns the
/// bytes sent.
pub(super) fn send_run(
    s3: &S3Storage,
    name: &str,
    r: &Reference,
    first: u64,
    count: u64,
    send: &mut BlockOut<'_>,
) -> Result<u64, Stop> {
    let per_get = (RUN_BYTES / r.block).max(1);
    let (mut i, end) = (first, first + count);
    let mut sent = 0u64;
    let mut send = |idx: u64, bytes: &[u8], crc: u32| -> std::io::Result<()> {
        let (off, len) = r.range(idx);
        send(off, bytes, crc)?;
        sent += len;
        Ok(())
    };
    while i < end {
        let n = (end - i).min(per_get);
        match s3.read_run(name, r, i, n, &mut send).map_err(Stop::Fault)? {
            RunEnd::Done => i += n,
            RunEnd::Again(b) => {
                let mut buf = Vec::with_capacity(r.block as usize);
                let crc = s3.read_block(name, r, b, &mut buf).map_err(Stop::Fault)?;
                send(b, &buf, crc)?;
                i = b + 1;
            }
            RunEnd::Sink(e) => return Err(Stop::Lost(e)),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wanted_blocks_become_runs() {
        assert_eq!(super::runs(&[0, 1, 2, 5, 7, 8]), [(0, 3), (5, 1), (7, 2)]);
        assert!(super::runs(&[]).is_empty());
    }
}
