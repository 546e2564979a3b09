//! Measures zstd block compression as the wire would use it: 1 MiB blocks,
//! each its own frame, at levels 1 and 3, on a file (or stdin) and on random
//! data. Prints throughput and ratio; asserts nothing.
//!
//! ```text
//! tar cf - /usr/share 2>/dev/null | head -c 268435456 > /tmp/share.tar
//! cargo run --release -p bigtransfer-core --example compress_probe -- /tmp/share.tar
//! ```

use bigtransfer_core::compress::{decompress_block, BlockCompressor};
use std::io::Read;
use std::time::Instant;

const BLOCK: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data = Vec::new();
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::File::open(path)?.read_to_end(&mut data)?,
        None => std::io::stdin().read_to_end(&mut data)?,
    };
    let random = random_bytes(data.len().clamp(BLOCK, 64 * BLOCK));
    for (what, bytes) in [("input", &data), ("random", &random)] {
        for level in [1, 3] {
            probe(what, bytes, level)?;
        }
    }
    Ok(())
}

fn probe(what: &str, data: &[u8], level: i32) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = BlockCompressor::new(level)?;
    let start = Instant::now();
    let frames: Vec<Option<Vec<u8>>> = data.chunks(BLOCK).map(|b| c.compress(b)).collect();
    let secs = start.elapsed().as_secs_f64();
    let wire: usize = frames
        .iter()
        .zip(data.chunks(BLOCK))
        .map(|(f, raw)| f.as_ref().map_or(raw.len(), Vec::len))
        .sum();
    let raw_blocks = frames.iter().filter(|f| f.is_none()).count();
    let start = Instant::now();
    for (f, raw) in frames.iter().zip(data.chunks(BLOCK)) {
        if let Some(f) = f {
            assert_eq!(decompress_block(f, raw.len())?, raw);
        }
    }
    let dsecs = start.elapsed().as_secs_f64();
    let mib = data.len() as f64 / BLOCK as f64;
    let decoded = (frames.len() - raw_blocks) as f64; // MiB: blocks are 1 MiB
    let decode = if decoded > 0.0 {
        format!("{:.0} MiB/s", decoded / dsecs.max(1e-9))
    } else {
        "n/a".to_owned()
    };
    println!(
        "{what:6} level {level}: {mib:.0} MiB, compress {:.0} MiB/s, ratio {:.2} (raw/wire), \
         {raw_blocks} of {} blocks sent raw, decompress+compare {decode}",
        mib / secs,
        data.len() as f64 / wire as f64,
        frames.len(),
    );
    Ok(())
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
