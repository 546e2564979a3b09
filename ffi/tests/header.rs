//! Checks that the committed C header `include/bigtransfer.h` is exactly what
//! cbindgen generates from the ffi crate with `ffi/cbindgen.toml`, so CI fails
//! when someone changes the C API without regenerating it.
//!
//! With `BIGTRANSFER_BLESS=1` it rewrites the header instead of comparing.
//! Not for: checking that the header compiles (tests/c/run.sh does that).

use std::path::{Path, PathBuf};

const BLESS: &str = "BIGTRANSFER_BLESS=1 cargo test -p bigtransfer-ffi --test header";

fn generate(crate_dir: &Path) -> Vec<u8> {
    let config = match cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")) {
        Ok(c) => c,
        Err(e) => panic!("cannot read ffi/cbindgen.toml: {e}"),
    };
    let bindings = match cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(b) => b,
        Err(e) => panic!("cbindgen failed on the ffi crate: {e}"),
    };
    let mut out = Vec::new();
    bindings.write(&mut out);
    out
}

#[test]
fn header_is_up_to_date() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let header = crate_dir.join("..").join("include").join("bigtransfer.h");
    let fresh = generate(&crate_dir);
    if std::env::var_os("BIGTRANSFER_BLESS").is_some_and(|v| v == "1") {
        if let Err(e) = std::fs::write(&header, &fresh) {
            panic!("cannot write {}: {e}", header.display());
        }
        eprintln!("rewrote {}", header.display());
        return;
    }
    let committed = std::fs::read(&header).unwrap_or_default();
    if committed != fresh {
        let first_diff = committed
            .split(|b| *b == b'\n')
            .zip(fresh.split(|b| *b == b'\n'))
            .position(|(a, b)| a != b)
            .map_or_else(
                || "at the end".to_string(),
                |i| format!("first at line {}", i + 1),
            );
        panic!(
            "include/bigtransfer.h is stale: it differs from what cbindgen generates from ffi/src \
             ({first_diff}; {} bytes committed, {} generated).\nRegenerate it with:\n    {BLESS}\n\
             and commit the result.",
            committed.len(),
            fresh.len()
        );
    }
}
