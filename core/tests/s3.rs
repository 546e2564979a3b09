//! Integration tests of the S3 client (feature `s3`) against a real store:
//! SeaweedFS started by `tests/s3/run.sh` (endpoint, bucket and keys in
//! BT_S3_* and AWS_* variables). Without those variables the store tests
//! print "skipped: no store" and pass; the retry tests run against a fake
//! loopback server and need no store.
#![cfg(feature = "s3")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bigtransfer_core::s3::{
    combine, Client, Condition, Config, Credentials, Part, Retry, S3Error, S3ErrorKind,
};

const MIB: usize = 1 << 20;

/// A config for the test store, with a prefix of its own per test, or
/// `None` (and a line saying so) when no store is configured.
fn store_config(test: &str) -> Option<Config> {
    let Ok(endpoint) = std::env::var("BT_S3_ENDPOINT") else {
        eprintln!("{test}: skipped: no store (run tests/s3/run.sh)");
        return None;
    };
    let bucket = std::env::var("BT_S3_BUCKET").unwrap_or_else(|_| "bt-test".into());
    let region = std::env::var("BT_S3_REGION").unwrap_or_else(|_| "us-east-1".into());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("test/{test}-{}-{nanos}/", std::process::id());
    let mut cfg = Config::from_env(&endpoint, &region, &bucket, &prefix)
        .expect("BT_S3_ENDPOINT is set, so AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY must be");
    cfg.retry = Retry {
        attempts: 3,
        base: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_total: Duration::from_secs(5),
    };
    Some(cfg)
}

fn store(test: &str) -> Option<Client> {
    store_config(test).map(|c| Client::new(c).expect("client"))
}

/// Deterministic, incompressible-looking bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A part's CRC from its 1 MiB blocks' CRCs, as the server will do it.
fn part_crc(part: &[u8]) -> u32 {
    combine(
        part.chunks(MIB)
            .map(|b| (crc32fast::hash(b), b.len() as u64)),
    )
}

fn upload_parts(c: &Client, name: &str, id: &str, parts: &[&[u8]]) -> Vec<Part> {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let number = i as u16 + 1;
            let crc = part_crc(p);
            let etag = c
                .upload_part(name, id, number, p, crc)
                .expect("upload part");
            Part { number, etag, crc }
        })
        .collect()
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, S3Error>, kind: S3ErrorKind) -> S3Error {
    match r {
        Err(e) if e.kind == kind => {
            eprintln!("refused as expected: {e}");
            e
        }
        other => panic!("expected {kind:?}, got {other:?}"),
    }
}

#[test]
fn multipart_with_crcs_completes_and_head_reports_the_full_object_crc() {
    let Some(c) = store("multipart") else { return };
    let all = data(11 * MIB + 12345, 1);
    let (a, rest) = all.split_at(5 * MIB);
    let (b, last) = rest.split_at(5 * MIB);
    let id = c.create_multipart("big.bin").expect("create");
    let parts = upload_parts(&c, "big.bin", &id, &[a, b, last]);
    let whole = combine(
        parts
            .iter()
            .zip([a, b, last])
            .map(|(p, d)| (p.crc, d.len() as u64)),
    );
    assert_eq!(whole, crc32fast::hash(&all), "combined CRC equals one pass");
    c.complete_multipart("big.bin", &id, &parts, whole)
        .expect("complete");

    let info = c.head_object("big.bin").expect("head");
    assert_eq!(info.size, all.len() as u64);
    assert_eq!(
        info.crc32,
        Some(crc32fast::hash(&all)),
        "stored CRC-32 = zlib's"
    );
    assert!(!info.etag.is_empty());

    // A range across the first part boundary comes back exactly.
    let mut got = Vec::new();
    let start = 5 * MIB as u64 - 1000;
    let n = c
        .get_range("big.bin", start, 5000, &mut got)
        .expect("range");
    assert_eq!(n, 5000);
    assert_eq!(&got[..], &all[start as usize..start as usize + 5000]);

    let listed = c.list_objects("").expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].size),
        ("big.bin", all.len() as u64)
    );
    c.delete_object("big.bin").expect("delete");
    expect_err(c.head_object("big.bin"), S3ErrorKind::NotFound);
}

#[test]
fn a_wrong_part_crc_is_refused_as_bad_digest() {
    let Some(c) = store("badpart") else { return };
    let part = data(MIB, 2);
    let id = c.create_multipart("x.bin").expect("create");
    let e = expect_err(
        c.upload_part("x.bin", &id, 1, &part, crc32fast::hash(&part) ^ 1),
        S3ErrorKind::BadDigest,
    );
    assert_eq!(e.attempts, 1, "a 4xx is not retried");
    assert!(!e.code.is_empty(), "the store's code is kept: {e}");
    assert!(c.list_parts("x.bin", &id).expect("list").is_empty());
    c.abort_multipart("x.bin", &id).expect("abort");
}

#[test]
fn a_wrong_full_object_crc_is_refused_at_completion() {
    let Some(c) = store("badwhole") else { return };
    let all = data(6 * MIB, 3);
    let (a, b) = all.split_at(5 * MIB);
    let id = c.create_multipart("w.bin").expect("create");
    let parts = upload_parts(&c, "w.bin", &id, &[a, b]);
    let e = c
        .complete_multipart("w.bin", &id, &parts, crc32fast::hash(&all) ^ 0x8000_0000)
        .expect_err("a wrong whole-object CRC must be refused");
    eprintln!("refused as expected: {e}");
    assert_eq!(e.kind, S3ErrorKind::BadDigest, "{e}");
    expect_err(c.head_object("w.bin"), S3ErrorKind::NotFound);
    // Nothing stored is lost: the right CRC still completes the upload.
    c.complete_multipart("w.bin", &id, &parts, crc32fast::hash(&all))
        .expect("complete with the right CRC");
    assert_eq!(
        c.head_object("w.bin").expect("head").crc32,
        Some(crc32fast::hash(&all))
    );
}

#[test]
fn list_parts_after_a_partial_upload_lists_exactly_those_parts() {
    let Some(mut cfg) = store_config("resume") else {
        return;
    };
    cfg.page_size = 2; // three parts: two pages
    let c = Client::new(cfg).expect("client");
    let all = data(15 * MIB + 7, 4);
    let chunks: Vec<&[u8]> = all.chunks(5 * MIB).collect();
    assert_eq!(chunks.len(), 4);
    let id = c.create_multipart("r.bin").expect("create");
    let mut parts = Vec::new();
    for i in [0usize, 1, 3] {
        let crc = part_crc(chunks[i]);
        let etag = c
            .upload_part("r.bin", &id, i as u16 + 1, chunks[i], crc)
            .expect("part");
        parts.push(Part {
            number: i as u16 + 1,
            etag,
            crc,
        });
    }
    let listed = c.list_parts("r.bin", &id).expect("list parts");
    let got: Vec<(u16, u64)> = listed.iter().map(|p| (p.number, p.size)).collect();
    assert_eq!(got, vec![(1, 5 * MIB as u64), (2, 5 * MIB as u64), (4, 7)]);
    for (l, p) in listed.iter().zip(&parts) {
        assert_eq!(l.etag.trim_matches('"'), p.etag.trim_matches('"'));
    }
    // Resume: send only the missing part, then complete.
    let crc = part_crc(chunks[2]);
    let etag = c
        .upload_part("r.bin", &id, 3, chunks[2], crc)
        .expect("part 3");
    parts.insert(
        2,
        Part {
            number: 3,
            etag,
            crc,
        },
    );
    c.complete_multipart("r.bin", &id, &parts, crc32fast::hash(&all))
        .expect("complete");
    let mut back = Vec::new();
    c.get_range("r.bin", 0, all.len() as u64, &mut back)
        .expect("get");
    assert!(back == all, "downloaded bytes differ");
}

#[test]
fn conditional_puts_give_precondition_failed() {
    let Some(c) = store("lease") else { return };
    let e1 = c
        .put_small("state.json", b"one", &Condition::Absent)
        .expect("create");
    let e = expect_err(
        c.put_small("state.json", b"two", &Condition::Absent),
        S3ErrorKind::PreconditionFailed,
    );
    assert_eq!(e.status, Some(412), "{e}");
    let (body, etag) = c.get_small("state.json", 1024).expect("get");
    assert_eq!((body.as_slice(), etag.as_str()), (&b"one"[..], e1.as_str()));

    let e2 = c
        .put_small("state.json", b"three", &Condition::Matches(e1.clone()))
        .expect("if-match current");
    assert_ne!(e1, e2);
    expect_err(
        c.put_small("state.json", b"four", &Condition::Matches(e1)),
        S3ErrorKind::PreconditionFailed,
    );
    assert_eq!(c.get_small("state.json", 1024).expect("get").0, b"three");
    c.put_small("state.json", b"five", &Condition::Matches(e2))
        .expect("if-match new");
    expect_err(c.get_small("state.json", 2), S3ErrorKind::Other);
}

#[test]
fn ranged_get_returns_exactly_the_bytes_and_listing_pages() {
    let Some(mut cfg) = store_config("range") else {
        return;
    };
    cfg.page_size = 2;
    let c = Client::new(cfg).expect("client");
    let body = data(4096, 5);
    for i in 0..5 {
        c.put_small(&format!("o{i}"), &body[..1000 + i], &Condition::None)
            .expect("put");
    }
    let mut got = Vec::new();
    c.get_range("o4", 100, 50, &mut got).expect("range");
    assert_eq!(got, &body[100..150]);
    got.clear();
    c.get_range("o4", 1003, 1, &mut got).expect("last byte");
    assert_eq!(got, &body[1003..1004]);
    let e = c
        .get_range("o4", 5000, 10, &mut Vec::new())
        .expect_err("past the end");
    assert_eq!(e.status, Some(416), "{e}");
    let names: Vec<(String, u64)> = c
        .list_objects("o")
        .expect("list")
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let want: Vec<(String, u64)> = (0..5).map(|i| (format!("o{i}"), 1000 + i as u64)).collect();
    assert_eq!(names, want);
    for i in 0..5 {
        c.delete_object(&format!("o{i}")).expect("delete");
    }
    assert!(c.list_objects("").expect("list").is_empty());
}

#[test]
fn objects_are_copied_whole_or_in_ranges_of_parts() {
    let Some(c) = store("copy") else {
        return;
    };
    let mib = 1usize << 20;
    let body = data(12 * mib + 3, 9);
    c.put_small("src name.bin", &body, &Condition::None)
        .expect("put");
    let n = body.len() as u64;
    // One CopyObject; then UploadPartCopy in 5 MiB ranges (5, 5, 2 MiB + 3).
    c.copy_object("src name.bin", "whole", n, n).expect("copy");
    c.copy_object("src name.bin", "parts", n, 5 << 20)
        .expect("copy in parts");
    for name in ["whole", "parts"] {
        let mut got = Vec::new();
        c.get_range(name, 0, n, &mut got).expect("read back");
        assert!(got == body, "{name} differs from the source");
        assert_eq!(c.head_object(name).unwrap().size, n);
    }
    let e = c
        .copy_object("missing", "x", 10, 10)
        .expect_err("no source");
    assert_eq!(e.kind, S3ErrorKind::NotFound, "{e}");
}

#[test]
fn wrong_credentials_are_refused_in_the_stores_words() {
    let Some(cfg) = store_config("creds") else {
        return;
    };
    let mut bad_secret = cfg.clone();
    bad_secret.credentials.secret.push('x');
    let e = expect_err(
        Client::new(bad_secret)
            .expect("client")
            .put_small("a", b"a", &Condition::None),
        S3ErrorKind::Credentials,
    );
    assert_eq!(
        (e.code.as_str(), e.attempts),
        ("SignatureDoesNotMatch", 1),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("refused the credentials: SignatureDoesNotMatch"),
        "{e}"
    );

    let mut bad_key = cfg;
    bad_key.credentials = Credentials {
        key: "nobody".into(),
        secret: "x".into(),
        token: None,
    };
    let e = expect_err(
        Client::new(bad_key).expect("client").head_object("a"),
        S3ErrorKind::Credentials,
    );
    assert_eq!(e.status, Some(403), "{e}");
}

#[test]
fn abort_removes_the_upload() {
    let Some(c) = store("abort") else { return };
    let id = c.create_multipart("gone.bin").expect("create");
    let p = data(1000, 6);
    c.upload_part("gone.bin", &id, 1, &p, crc32fast::hash(&p))
        .expect("part");
    assert_eq!(c.list_parts("gone.bin", &id).expect("list").len(), 1);
    c.abort_multipart("gone.bin", &id).expect("abort");
    expect_err(c.list_parts("gone.bin", &id), S3ErrorKind::NotFound);
    expect_err(c.head_object("gone.bin"), S3ErrorKind::NotFound);
}

#[test]
fn an_upload_started_on_one_gateway_finishes_on_another() {
    let Some(a) = store("twonodes") else { return };
    let Ok(endpoint2) = std::env::var("BT_S3_ENDPOINT2") else {
        eprintln!("twonodes: skipped: no second gateway (run tests/s3/run.sh)");
        return;
    };
    let mut cfg_b = a.config().clone();
    cfg_b.endpoint = endpoint2;
    let b = Client::new(cfg_b).expect("client b");
    let all = data(5 * MIB + 99, 7);
    let (p1, p2) = all.split_at(5 * MIB);
    let id = a.create_multipart("n.bin").expect("create on A");
    let mut parts = upload_parts(&a, "n.bin", &id, &[p1]);
    let listed = b.list_parts("n.bin", &id).expect("list on B");
    assert_eq!(listed.iter().map(|p| p.number).collect::<Vec<_>>(), vec![1]);
    let crc = part_crc(p2);
    let etag = b
        .upload_part("n.bin", &id, 2, p2, crc)
        .expect("part 2 on B");
    parts.push(Part {
        number: 2,
        etag,
        crc,
    });
    b.complete_multipart("n.bin", &id, &parts, crc32fast::hash(&all))
        .expect("complete on B");
    assert_eq!(
        a.head_object("n.bin").expect("head on A").crc32,
        Some(crc32fast::hash(&all))
    );
}

// ---- retries, against loopback without a store ----

fn fast_retry(attempts: u32, max_total: Duration) -> Retry {
    Retry {
        attempts,
        base: Duration::from_millis(20),
        max_delay: Duration::from_millis(80),
        max_total,
    }
}

fn config_for(endpoint: String, retry: Retry) -> Config {
    Config {
        endpoint,
        region: "us-east-1".into(),
        bucket: "b".into(),
        prefix: String::new(),
        path_style: true,
        credentials: Credentials {
            key: "k".into(),
            secret: "s".into(),
            token: None,
        },
        retry,
        timeout: Duration::from_secs(5),
        page_size: 1000,
    }
}

#[test]
fn a_stopped_store_is_unreachable_after_bounded_retries() {
    // A port that was just free: nothing listens there, as after a stop.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let c = Client::new(config_for(
        format!("http://127.0.0.1:{port}"),
        fast_retry(3, Duration::from_secs(10)),
    ))
    .expect("client");
    let t = Instant::now();
    let e = expect_err(c.head_object("a"), S3ErrorKind::Unreachable);
    assert_eq!((e.attempts, e.status), (3, None), "{e}");
    assert!(
        e.to_string().contains("unreachable") && e.to_string().contains("after 3 attempts"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // The time budget bounds retries too, whatever the count allows.
    let c = Client::new(config_for(
        format!("http://127.0.0.1:{port}"),
        fast_retry(1000, Duration::from_millis(300)),
    ))
    .expect("client");
    let t = Instant::now();
    let e = expect_err(c.head_object("a"), S3ErrorKind::Unreachable);
    assert!(e.attempts > 1 && e.attempts < 1000, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// A loopback HTTP server answering every request with `status` and an S3
/// error body of `code`; counts the requests.
fn fake_store(status: u16, code: &'static str) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = answer(s, status, code);
        }
    });
    (url, count)
}

fn answer(s: TcpStream, status: u16, code: &str) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    std::io::copy(&mut r.take(len as u64), &mut std::io::sink())?;
    let body = format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>said &quot;{code}&quot;</Message></Error>");
    let mut w = s;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn slow_down_and_5xx_are_retried_4xx_are_not() {
    for (status, code, kind, tries) in [
        (503, "SlowDown", S3ErrorKind::Throttled, 3),
        (500, "InternalError", S3ErrorKind::Server, 3),
        (400, "InvalidArgument", S3ErrorKind::Other, 1),
        (403, "AccessDenied", S3ErrorKind::Credentials, 1),
    ] {
        let (url, count) = fake_store(status, code);
        let c =
            Client::new(config_for(url, fast_retry(3, Duration::from_secs(10)))).expect("client");
        let e = expect_err(c.put_small("k", b"v", &Condition::None), kind);
        assert_eq!(
            (e.attempts, count.load(Ordering::SeqCst)),
            (tries, tries as usize),
            "{e}"
        );
        assert_eq!((e.code.as_str(), e.status), (code, Some(status)));
        assert_eq!(e.message, format!("said \"{code}\""));
    }
}

#[test]
fn bad_endpoints_are_refused_in_words_before_any_request() {
    let retry = fast_retry(1, Duration::from_secs(1));
    let e = Client::new(config_for("ftp://127.0.0.1:1".into(), retry))
        .err()
        .expect("ftp");
    assert!(e.to_string().contains("use http or https"), "{e}");
    let e = Client::new(config_for("not a url".into(), retry))
        .err()
        .expect("junk");
    assert!(e.to_string().contains("is not a URL"), "{e}");
    let https = Client::new(config_for("https://127.0.0.1:1".into(), retry));
    if cfg!(feature = "s3-https") {
        assert!(https.is_ok());
    } else {
        let e = https.err().expect("https without the feature");
        assert!(e.to_string().contains("`s3-https` feature"), "{e}");
    }
}
