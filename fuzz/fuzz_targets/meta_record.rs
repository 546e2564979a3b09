//! The server's on-disk checkpoint record (`KEY.meta`, 369 bytes): a head
//! naming the upload and two slots, each with its own CRC-32.
//!
//! Input: a flags byte, then the record. The fuzzer cannot forge CRC-32s by
//! mutation, so the flags ask the harness to fix them first: bit 0 the
//! head's, bit 1 slot A's, bit 2 slot B's (each only when the record is long
//! enough to hold it). With a flag clear the bytes are used as they are, so
//! damaged checksums are fuzzed too.
//!
//! Checks, besides "no panic": an accepted record has a version matching
//! its magic, the identity its head holds (the name sanitised), a name that
//! passes `SafeName`, a checkpoint inside the file, the highest `seq` of its
//! valid slots; and it round-trips: `encode_meta_head` + `encode_slot` of
//! the decoded record (in slot A, then in slot B) decode to the same record.
#![no_main]

use bigtransfer_core::store::{decode_meta, encode_meta_head, encode_slot, MetaRecord};
use bigtransfer_core::SafeName;
use libfuzzer_sys::fuzz_target;

const HEAD: usize = 8 + 8 + 4 + 2 + 255 + 4;
const SLOT: usize = 44;
const LEN: usize = HEAD + 2 * SLOT;

fn fix_crc(rec: &mut [u8], start: usize, body: usize) {
    if rec.len() >= start + body + 4 {
        let crc = crc32fast::hash(&rec[start..start + body]);
        rec[start + body..start + body + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn slot_ok(s: &[u8]) -> bool {
    crc32fast::hash(&s[..40]) == be_u32(&s[40..])
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rec)) = data.split_first() else {
        return;
    };
    let mut rec = rec.to_vec();
    if flags & 1 != 0 {
        fix_crc(&mut rec, 0, HEAD - 4);
    }
    if flags & 2 != 0 {
        fix_crc(&mut rec, HEAD, 40);
    }
    if flags & 4 != 0 {
        fix_crc(&mut rec, HEAD + SLOT, 40);
    }
    let r = match decode_meta(&rec) {
        Ok(r) => r,
        Err(msg) => {
            assert!(!msg.is_empty());
            return;
        }
    };
    assert!(rec.len() >= LEN);
    let magic = &rec[..8];
    match r.version {
        1 => assert_eq!(magic, b"BTHELD01"),
        2 => assert_eq!(magic, b"BTHELD02"),
        v => panic!("version {v}"),
    }
    assert_eq!(r.identity.filesize, be_u64(&rec[8..16]));
    assert_eq!(r.identity.crc32, be_u32(&rec[16..20]));
    let name = r.identity.name.as_str();
    assert!(!name.is_empty() && name.len() <= 255);
    assert_eq!(SafeName::from_wire(name).unwrap(), r.identity.name);
    assert!(r.checkpoint.offset <= r.identity.filesize);

    // The newest valid slot in the file's range was taken.
    let slots = [&rec[HEAD..HEAD + SLOT], &rec[HEAD + SLOT..LEN]];
    let valid: Vec<u64> = slots
        .iter()
        .filter(|s| slot_ok(s) && be_u64(&s[8..16]) <= r.identity.filesize)
        .map(|s| be_u64(&s[0..8]))
        .collect();
    assert_eq!(valid.iter().max(), Some(&r.seq));

    round_trip(&r);
});

fn round_trip(r: &MetaRecord) {
    let mut head = encode_meta_head(&r.identity);
    assert_eq!(head.len(), HEAD);
    if r.version == 2 {
        head[..8].copy_from_slice(b"BTHELD02");
        fix_crc(&mut head, 0, HEAD - 4);
    }
    let slot = encode_slot(r.seq, r.checkpoint, r.stamp);
    let torn = [0u8; SLOT]; // its CRC-32 does not match: an invalid slot
    for (a, b) in [(&slot, &torn), (&torn, &slot)] {
        let mut rec = head.clone();
        rec.extend_from_slice(a);
        rec.extend_from_slice(b);
        assert_eq!(rec.len(), LEN);
        let back = decode_meta(&rec).expect("a re-encoded record must decode");
        assert_eq!(&back, r);
    }
}
