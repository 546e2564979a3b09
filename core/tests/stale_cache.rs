//! A resumed upload against the real server after the source was edited in
//! place and its mtime put back (`touch -r`): the client's checksum cache
//! must not vouch for the old bytes, so the server ends up with the new
//! content, not `CRC32_OK` over stale blocks. Not for the cache's encoding
//! (see the unit tests in `cache.rs`).

use std::sync::Arc;
use std::time::Duration;

use bigtransfer_core::{send_file, Control, ErrorKind, SendOptions};

const MIB: usize = 1 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

#[test]
fn an_edit_with_its_mtime_restored_is_not_resumed_over() {
    let dir = std::env::temp_dir().join(format!("bt-stale-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("store");
    let mut cfg = bigtransfer_core::ServerConfig::new(&store);
    cfg.bind = Some("127.0.0.1".parse().unwrap());
    cfg.port = 0;
    cfg.logger = Some(Arc::new(|_: &str| {}));
    let server = bigtransfer_core::Server::bind(cfg).unwrap();
    let port = server.local_addr().unwrap().port();
    let stop = server.stop_handle();
    let serving = std::thread::spawn(move || server.serve());

    let path = dir.join("edited.bin");
    let old = pattern(6 * MIB + 7);
    std::fs::write(&path, &old).unwrap();
    let mut o = SendOptions::new("127.0.0.1", port);
    o.retries = 0;
    o.known_hosts = None;
    o.backoff_initial = Duration::from_millis(5);
    o.cache_dir = Some(dir.join("cache"));
    // Send 4 blocks, then stop (as a killed client would, having cached
    // the checksums of what it sent).
    let mut blocks = 0;
    let e = send_file(&path, &o, &mut |p| {
        if let bigtransfer_core::Progress::Sending { .. } = p {
            blocks += 1;
            if blocks == 4 {
                return Control::Cancel;
            }
        }
        Control::Continue
    })
    .expect_err("cancelled");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");

    // Edit block 1 in place and put the mtime back (touch -r).
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut new = old.clone();
    new[MIB + 100..MIB + 200].fill(0xAB);
    {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &new[MIB + 100..MIB + 200],
            (MIB + 100) as u64,
        )
        .unwrap();
        f.set_modified(mtime).unwrap();
    }
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);

    let out = send_file(&path, &o, &mut |_| Control::Continue).expect("resumed");
    stop.stop();
    serving.join().unwrap().unwrap();
    assert!(out.resumed_from >= MIB as u64, "no resume: {out:?}");
    assert_eq!(out.crc32, crc32fast::hash(&new));
    let stored = std::fs::read(store.join("edited.bin")).unwrap();
    assert!(stored == new, "the server stored the old bytes of block 1");
    std::fs::remove_dir_all(&dir).unwrap();
}
