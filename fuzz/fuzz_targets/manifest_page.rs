//! A page of a tree manifest from a peer: `tree::decode_page`, then every
//! entry through a `ManifestValidator` (case-insensitive on bit 0 of the
//! first byte).
//!
//! Input: a flags byte, then the page. Checks, besides "no panic": an
//! accepted page re-encodes to the same bytes (the encoding is canonical);
//! errors say "malformed manifest page" or refuse a path; every entry the
//! validator accepts has a path that `RelPath` accepts again, no
//! setuid/setgid/sticky bit left, a symlink target that stays inside, and
//! comes after the previous one in component-wise order.
#![no_main]

use bigtransfer_core::tree::manifest::SPECIAL_BITS;
use bigtransfer_core::tree::{
    decode_page, encode_page, symlink_stays_inside, EntryKind, ManifestValidator, RelPath,
    ValidatorConfig,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, page)) = data.split_first() else {
        return;
    };
    let entries = match decode_page(page) {
        Ok(entries) => entries,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("malformed manifest page: ") || msg.starts_with("refused path \""),
                "{msg}"
            );
            return;
        }
    };
    assert_eq!(
        encode_page(&entries).expect("a decoded page fits a page"),
        page
    );
    let config = ValidatorConfig {
        case_insensitive: flags & 1 != 0,
        ..ValidatorConfig::default()
    };
    let mut v = ManifestValidator::new(config);
    let mut last: Option<RelPath> = None;
    for entry in entries {
        let Ok(accepted) = v.check(entry) else {
            return; // The session ends at the first refusal.
        };
        let e = accepted.entry;
        assert_eq!(RelPath::from_wire(e.path.as_str()).unwrap(), e.path);
        assert!(last.as_ref().is_none_or(|l| *l < e.path));
        match &e.kind {
            EntryKind::File { mode, .. } | EntryKind::Dir { mode, .. } => {
                assert_eq!(mode & SPECIAL_BITS, 0)
            }
            EntryKind::Symlink { target } => symlink_stays_inside(&e.path, target).unwrap(),
        }
        assert!(v.open_dirs() <= e.path.depth());
        last = Some(e.path);
    }
});
