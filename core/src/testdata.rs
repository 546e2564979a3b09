//! Test data shared by unit tests: bytes that never compress. Not for
//! anything but tests (the generator is fast and repeatable, not random).

/// `len` bytes of xorshift noise, the same every call: zstd cannot shrink
/// them.
pub(crate) fn noise(len: usize) -> Vec<u8> {
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
