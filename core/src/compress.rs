//! Block compression for the wire: zstd frames that must pay for themselves,
//! a bounded decompressor, and the `auto` policy that decides when to try.
//!
//! A block is compressed on its own (one zstd frame that records its
//! content size), so blocks stay independent for resume, repair and
//! parallel streams. CRC-32s are always of the uncompressed bytes; this
//! module does not compute them.
//!
//! It is not the wire format (the caller frames the block and says whether
//! it is compressed) and it does not measure time itself: [`AutoCompressor`]
//! is given durations, so it is pure and testable.

use crate::{Error, ErrorKind, Result};
use std::time::Duration;

/// A compressed block is sent only if it is at least this many percent
/// smaller than the raw block. Below that, the receiver's decompression
/// work and the sender's framing buy almost nothing on the link, and a
/// frame that is about as large as its input (random or already compressed
/// data) would even be slightly larger once framed.
pub const MIN_SAVING_PERCENT: usize = 3;

/// The zstd level `auto` uses: level 1 compresses several hundred MB/s per
/// core with most of level 3's ratio on typical data (see BENCHMARKS).
pub const AUTO_LEVEL: i32 = 1;

/// The largest compressed size that is worth sending for a raw block of
/// `raw_len` bytes.
pub fn max_worthwhile_len(raw_len: usize) -> usize {
    // In u128 so that no length overflows; the saving is at most raw_len.
    let saving = (raw_len as u128 * MIN_SAVING_PERCENT as u128).div_ceil(100);
    raw_len - saving as usize
}

/// A reusable zstd compressor for blocks (the context is kept between
/// blocks, which matters at a few hundred blocks per second).
pub struct BlockCompressor {
    inner: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for BlockCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCompressor").finish_non_exhaustive()
    }
}

impl BlockCompressor {
    /// A compressor at zstd `level` (1 to 22; negative levels are faster).
    pub fn new(level: i32) -> Result<BlockCompressor> {
        let inner = zstd::bulk::Compressor::new(level).map_err(|e| {
            Error::io(
                ErrorKind::InvalidInput,
                format!("cannot set up zstd at level {level}"),
                e,
            )
        })?;
        Ok(BlockCompressor { inner })
    }

    /// One zstd frame of `raw` (with its content size recorded), or `None`
    /// when it would not be at least [`MIN_SAVING_PERCENT`] smaller.
    ///
    /// The output buffer is only as large as a worthwhile frame, so zstd
    /// gives up as soon as the frame would be too large; an error of zstd
    /// also gives `None` (the block then goes raw, which is always correct).
    pub fn compress(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        if raw.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(max_worthwhile_len(raw.len()));
        // compress2 records the content size by default; the decompressor
        // below insists on it.
        self.inner.compress_to_buffer(raw, &mut out).ok()?;
        (out.len() <= max_worthwhile_len(raw.len())).then_some(out)
    }
}

/// [`BlockCompressor::compress`] with a fresh compressor (for one-off use;
/// keep a [`BlockCompressor`] for a stream of blocks).
pub fn compress_block(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    BlockCompressor::new(level).ok()?.compress(raw)
}

/// Decompresses one block's frame that must produce exactly `expected_len`
/// bytes, never allocating or writing more than that.
///
/// Refused (as [`ErrorKind::Protocol`], naming what was wrong): input that
/// is not one whole zstd frame, a frame that does not record its content
/// size or records one other than `expected_len`, bytes after the frame,
/// corrupt data, and output of any other length. A "bomb" (a small frame
/// claiming or producing more) is thus refused before or while decoding
/// into a buffer of `expected_len` bytes.
pub fn decompress_block(frame: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(bad_frame("the frame does not record its content size")),
        Err(_) => return Err(bad_frame("it does not start with a zstd frame header")),
    };
    if declared != expected_len as u64 {
        return Err(bad_frame(&format!(
            "the frame declares {declared} bytes but the block is {expected_len} bytes"
        )));
    }
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        Ok(n) => {
            return Err(bad_frame(&format!(
                "{} bytes follow the {n}-byte frame",
                frame.len() - n
            )))
        }
        Err(_) => return Err(bad_frame("the frame is truncated or corrupt")),
    }
    let mut out = Vec::with_capacity(expected_len);
    let mut dctx = zstd::bulk::Decompressor::new()
        .map_err(|e| Error::io(ErrorKind::Protocol, "cannot set up zstd", e))?;
    // The Vec is never grown: zstd writes into its spare capacity only.
    let n = dctx
        .decompress_to_buffer(frame, &mut out)
        .map_err(|e| bad_frame(&format!("zstd could not decode it ({e})")))?;
    if n != expected_len {
        return Err(bad_frame(&format!(
            "it decoded to {n} bytes, not the block's {expected_len}"
        )));
    }
    Ok(out)
}

fn bad_frame(reason: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("refused a compressed block from the peer: {reason}"),
    )
}

/// Tuning of [`AutoCompressor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoConfig {
    /// Consecutive blocks that did not shrink before `auto` stops trying.
    pub give_up_after: u32,
    /// While not trying, one block in this many is still compressed as a
    /// probe (data and links change; a probe costs 1/N of the CPU).
    pub probe_every: u32,
    /// Compression must promise at least this factor over sending raw to be
    /// chosen (1.1 = 10 % faster), so that noise in the measurements does
    /// not flip the choice on a link where it hardly matters.
    pub min_gain: f64,
}

impl Default for AutoConfig {
    fn default() -> AutoConfig {
        AutoConfig {
            give_up_after: 8,
            probe_every: 256,
            min_gain: 1.1,
        }
    }
}

/// The `auto` compression policy, fed with measurements.
///
/// The sender compresses on one thread while the socket sends, so the
/// transfer runs at `min(compression rate, link rate / ratio)` with
/// compression and at the link rate without. Compressing is chosen when
/// that promises at least [`AutoConfig::min_gain`]; that is, when the link
/// rather than the CPU is the bottleneck *and* the data shrinks.
/// Separately, after [`AutoConfig::give_up_after`] consecutive blocks that
/// did not shrink, it stops trying; in both "raw" states one block in
/// [`AutoConfig::probe_every`] is a probe, so a change is noticed.
#[derive(Debug, Clone)]
pub struct AutoCompressor {
    config: AutoConfig,
    misses: u32,
    since_probe: u32,
    /// Raw bytes per second of compression, smoothed.
    compress_rate: Option<f64>,
    /// Wire bytes per second of sending, smoothed.
    link_rate: Option<f64>,
    /// Compressed size / raw size of the blocks that shrank, smoothed.
    ratio: Option<f64>,
}

/// Weight of a new measurement in the moving averages: recent enough to
/// follow a change within a few dozen blocks, smooth enough to ignore one
/// block stalled by the scheduler.
const SMOOTHING: f64 = 0.2;

fn smooth(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + SMOOTHING * (new - o)))
}

fn rate(bytes: usize, elapsed: Duration) -> f64 {
    // A zero duration (coarse clock) counts as one microsecond.
    bytes as f64 / elapsed.as_secs_f64().max(1e-6)
}

impl AutoCompressor {
    /// A policy with `config`, trying compression until measurements say no.
    pub fn new(config: AutoConfig) -> AutoCompressor {
        AutoCompressor {
            config,
            misses: 0,
            since_probe: 0,
            compress_rate: None,
            link_rate: None,
            ratio: None,
        }
    }

    /// Whether to try compressing the next block. Counts the block, so call
    /// it once per block.
    pub fn should_compress(&mut self) -> bool {
        if self.worth_it() {
            self.since_probe = 0;
            return true;
        }
        self.since_probe += 1;
        if self.since_probe >= self.config.probe_every {
            self.since_probe = 0;
            return true;
        }
        false
    }

    /// Whether compressing is the current choice, probes aside.
    pub fn worth_it(&self) -> bool {
        if self.misses >= self.config.give_up_after {
            return false;
        }
        let (Some(c), Some(l), Some(r)) = (self.compress_rate, self.link_rate, self.ratio) else {
            return true; // Not measured yet: try, and measure.
        };
        let with = c.min(l / r.max(1e-3));
        with >= l * self.config.min_gain
    }

    /// Reports a compression attempt: `raw_len` bytes took `elapsed`, and
    /// gave `compressed_len` bytes (`None`: not worthwhile, sent raw).
    pub fn record_compression(
        &mut self,
        raw_len: usize,
        compressed_len: Option<usize>,
        elapsed: Duration,
    ) {
        if raw_len == 0 {
            return;
        }
        self.compress_rate = smooth(self.compress_rate, rate(raw_len, elapsed));
        // The ratio is of blocks that shrank; those that did not are counted
        // as misses instead, so one incompressible block (an embedded JPEG)
        // does not switch compression off for the compressible rest.
        match compressed_len {
            Some(c) => {
                self.ratio = smooth(self.ratio, c as f64 / raw_len as f64);
                self.misses = 0;
            }
            None => self.misses = self.misses.saturating_add(1),
        }
    }

    /// Reports that `wire_bytes` went into the socket in `elapsed` (time
    /// blocked in send, so a full socket buffer shows the link's rate).
    pub fn record_send(&mut self, wire_bytes: usize, elapsed: Duration) {
        if wire_bytes > 0 {
            self.link_rate = smooth(self.link_rate, rate(wire_bytes, elapsed));
        }
    }

    /// The smoothed compressed/raw ratio of the blocks that shrank (for
    /// `--json` reports).
    pub fn ratio(&self) -> Option<f64> {
        self.ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn text(len: usize) -> Vec<u8> {
        let words = ["alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta "];
        let mut out = Vec::with_capacity(len + 8);
        let mut i = 7u32;
        while out.len() < len {
            i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(words[(i >> 16) as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    fn random(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_of_compressible_data() {
        let raw = text(MIB);
        let frame = compress_block(&raw, 3).expect("text shrinks");
        assert!(frame.len() < raw.len() / 2, "{}", frame.len());
        assert_eq!(decompress_block(&frame, raw.len()).unwrap(), raw);
    }

    #[test]
    fn incompressible_and_empty_blocks_go_raw() {
        assert_eq!(compress_block(&random(MIB), 1), None);
        assert_eq!(compress_block(&[], 1), None);
        // 100 bytes can lose at most 97 to be worthwhile.
        assert_eq!(max_worthwhile_len(100), 97);
        assert_eq!(max_worthwhile_len(MIB), MIB - (3 * MIB).div_ceil(100));
        // Tiny blocks (found by fuzzing: this once underflowed).
        let small: Vec<usize> = [0, 1, 2, 33, 34, 35].map(max_worthwhile_len).to_vec();
        assert_eq!(small, [0, 0, 1, 32, 32, 33]);
        let huge = max_worthwhile_len(usize::MAX);
        assert!(huge > usize::MAX / 100 * 96 && huge < usize::MAX / 100 * 98);
        for n in 0..300 {
            let raw = vec![0u8; n];
            if let Some(frame) = compress_block(&raw, 1) {
                assert!(frame.len() <= max_worthwhile_len(n));
                assert_eq!(decompress_block(&frame, n).unwrap(), raw);
            }
        }
        assert!(compress_block(&[0u8; 299], 1).is_some());
        // Half random, half zeros: shrinks by about half, so it is sent.
        let mut half = random(MIB / 2);
        half.resize(MIB, 0);
        let frame = compress_block(&half, 1).unwrap();
        assert!(frame.len() < MIB * 6 / 10);
    }

    #[test]
    fn bomb_claiming_more_than_the_block_is_refused() {
        // 64 MiB of zeros compress to a few KiB; the block is said to be 1 MiB.
        let frame = compress_block(&vec![0u8; 64 * MIB], 1).unwrap();
        assert!(frame.len() < 64 * 1024);
        let e = decompress_block(&frame, MIB).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(
            e.to_string(),
            "refused a compressed block from the peer: the frame declares 67108864 bytes but the block is 1048576 bytes"
        );
    }

    #[test]
    fn bomb_without_content_size_is_refused() {
        // A streaming encoder that is not told the size records none.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0u8; 64 * MIB]).unwrap();
        let frame = enc.finish().unwrap();
        let e = decompress_block(&frame, MIB).unwrap_err();
        assert!(
            e.to_string().contains("does not record its content size"),
            "{e}"
        );
    }

    /// A frame whose header lies about its size: the decoder would produce
    /// more than declared; it must stop at the buffer, not grow it.
    #[test]
    fn frame_producing_more_than_it_declares_is_refused() {
        let raw = vec![7u8; 256 * 1024];
        let frame = compress_block(&raw, 1).unwrap();
        let forged = forge_content_size(&frame, 4096);
        let e = decompress_block(&forged, 4096).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("zstd could not decode it"), "{e}");
    }

    /// Rewrites the frame content size of a zstd frame whose header has a
    /// 4-byte content size field (FCS flag 2), as level 1 writes for
    /// blocks of 64 KiB to 4 GiB.
    fn forge_content_size(frame: &[u8], size: u32) -> Vec<u8> {
        let descriptor = frame[4];
        assert_eq!(descriptor >> 6, 2, "expected a 4-byte content size field");
        let single_segment = descriptor & 0x20 != 0;
        let dict_id_len = [0, 1, 2, 4][(descriptor & 3) as usize];
        let at = 5 + usize::from(!single_segment) + dict_id_len;
        let mut forged = frame.to_vec();
        forged[at..at + 4].copy_from_slice(&size.to_le_bytes());
        forged
    }

    #[test]
    fn corrupt_and_foreign_frames_are_refused() {
        let raw = text(256 * 1024);
        let frame = compress_block(&raw, 3).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"not zstd at all".to_vec(),
                "does not start with a zstd frame header",
            ),
            (Vec::new(), "does not start with a zstd frame header"),
            (frame[..frame.len() / 2].to_vec(), "truncated or corrupt"),
            ([frame.clone(), vec![0]].concat(), "1 bytes follow the"),
            ([frame.clone(), frame.clone()].concat(), "follow the"),
        ];
        for (input, want) in cases {
            let e = decompress_block(&input, raw.len()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol);
            assert!(e.to_string().contains(want), "{want:?}: {e}");
        }
        // Flipped bits in the compressed body: refused or, if zstd cannot
        // tell, never a different length. (No checksum in block frames: the
        // block's CRC-32 of the uncompressed bytes catches the rest.)
        for i in (20..frame.len()).step_by(97) {
            let mut bad = frame.clone();
            bad[i] ^= 0x40;
            if let Ok(out) = decompress_block(&bad, raw.len()) {
                assert_eq!(out.len(), raw.len());
            }
        }
        assert_eq!(decompress_block(&frame, raw.len()).unwrap(), raw);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn policy_compresses_on_a_slow_link() {
        // 100 Mbit/s link (12.5 MB/s), compression at 400 MB/s, ratio 0.4.
        let mut p = AutoCompressor::new(AutoConfig::default());
        for _ in 0..50 {
            assert!(p.should_compress());
            p.record_compression(MIB, Some(MIB * 4 / 10), Duration::from_micros(2621));
            p.record_send(MIB * 4 / 10, ms(34));
        }
        assert!(p.worth_it());
        assert!((p.ratio().unwrap() - 0.4).abs() < 0.01);
    }

    #[test]
    fn policy_sends_raw_when_the_cpu_is_the_bottleneck() {
        // Loopback at 2 GB/s, compression at 400 MB/s: raw is faster.
        let mut p = AutoCompressor::new(AutoConfig::default());
        assert!(p.should_compress());
        p.record_compression(MIB, Some(MIB * 4 / 10), Duration::from_micros(2621));
        p.record_send(MIB, Duration::from_micros(524));
        assert!(!p.worth_it());
        let tried = (0..1024).filter(|_| p.should_compress()).count();
        assert_eq!(tried, 4, "only probes, one in 256");
    }

    #[test]
    fn policy_gives_up_on_incompressible_data_and_reprobes() {
        let cfg = AutoConfig::default();
        let mut p = AutoCompressor::new(cfg);
        // Slow link: only the data decides.
        for i in 0..cfg.give_up_after {
            assert!(p.should_compress(), "block {i}");
            p.record_compression(MIB, None, ms(3));
            p.record_send(MIB, ms(80));
        }
        assert!(!p.worth_it());
        let tried: Vec<usize> = (0..1000).filter(|_| p.should_compress()).collect();
        assert_eq!(tried, vec![255, 511, 767]);
        // A probe that shrinks resumes compression at once.
        p.record_compression(MIB, Some(MIB / 3), ms(3));
        assert_eq!(p.misses, 0);
        assert!(p.should_compress());
    }

    #[test]
    fn policy_ignores_a_few_misses_in_compressible_data() {
        let mut p = AutoCompressor::new(AutoConfig::default());
        for i in 0..100 {
            assert!(p.should_compress(), "block {i}");
            // One block in 4 is an embedded JPEG that does not shrink.
            let out = (i % 4 != 0).then_some(MIB / 4);
            p.record_compression(MIB, out, ms(3));
            p.record_send(out.unwrap_or(MIB), ms(80));
        }
    }
}
