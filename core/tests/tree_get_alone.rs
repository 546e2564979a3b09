//! The negotiation of big files in a tree download, on the wire against
//! the in-process server with its tree limit lowered: a client that does
//! not offer `"alone": 1` (every older one) gets the refusal it always
//! got; one that offers it gets an `ALONE` verdict; the single-file get by
//! path (`"path": 1`) serves a tree file (streams too) and refuses
//! hostile paths (`..`, the server's own state, a symlink on the way) in
//! words.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bigtransfer_core::compress::Compress;
use bigtransfer_core::getwire;
use bigtransfer_core::tree::fetch::{self, REQUEST};
use bigtransfer_core::tree::wire;
use bigtransfer_core::v2::{self, FaultCode, ServerMsg};

struct Fixture {
    served: common::Served,
}

impl Fixture {
    /// A server whose store holds `set/big.bin` (3 MiB, over its 1 MiB
    /// tree limit) and `set/link`, a symlink to `set`.
    fn new(tag: &str) -> Fixture {
        let served = common::Served::start(&format!("alone-{tag}"), |cfg| {
            cfg.tree_get_file_limit = 1 << 20;
        });
        let set = served.store.join("set");
        std::fs::create_dir_all(&set).unwrap();
        std::fs::write(set.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
        std::os::unix::fs::symlink(".", set.join("link")).unwrap();
        Fixture { served }
    }

    fn connect(&self, header: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", self.served.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(header).unwrap();
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).unwrap();
        assert_eq!(magic, v2::MAGIC);
        s
    }
}

fn framed(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// The verdict on the first file of `set` (big.bin) asked for whole.
fn verdict_on_big(fx: &Fixture, header: &[u8]) -> (u8, String, String) {
    let mut s = fx.connect(header);
    let mut buf = Vec::new();
    assert_eq!(wire::read_frame(&mut s, &mut buf).unwrap(), wire::PAGE);
    wire::write_frame(&mut s, REQUEST, &fetch::encode_request(0, true)).unwrap();
    assert_eq!(wire::read_frame(&mut s, &mut buf).unwrap(), wire::VERDICT);
    let v = wire::parse_verdict(&buf).unwrap();
    let _ = wire::write_frame(&mut s, wire::END, &[]);
    v
}

#[test]
fn an_older_client_gets_the_old_refusal_a_new_one_is_told_to_fetch_it_alone() {
    let fx = Fixture::new("verdict");
    let old = framed(
        r#"{"filename": "set", "filesize": 0, "crc32": 0, "bt": {"v": 2, "op": "tree-get", "block": 1048576}}"#,
    );
    let (status, path, text) = verdict_on_big(&fx, &old);
    assert_eq!((status, path.as_str()), (wire::FAILED, "set/big.bin"));
    assert_eq!(
        text,
        "\"set/big.bin\" is 3145728 bytes, over the 1048576 bytes this server's tree get serves; get it alone (bigtransfer get)"
    );
    let new = fetch::encode_header("set").unwrap();
    let (status, path, text) = verdict_on_big(&fx, &new);
    assert_eq!((status, path.as_str()), (wire::ALONE, "set/big.bin"));
    assert!(text.contains("3145728 bytes, over the 1048576"), "{text}");
}

/// The server's first frame after the magic to a get by path.
fn get_by_path(fx: &Fixture, header: &[u8]) -> (u8, Vec<u8>) {
    let mut s = fx.connect(header);
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (head[0], p)
}

fn refused_with(fx: &Fixture, header: &[u8]) -> (FaultCode, String) {
    let (tag, p) = get_by_path(fx, header);
    match v2::parse_server_msg(tag, &p) {
        Ok(ServerMsg::Fault(code, words)) => (code, words),
        other => panic!("not a fault: {other:?}"),
    }
}

#[test]
fn a_get_by_path_serves_a_tree_file_and_refuses_hostile_paths() {
    let fx = Fixture::new("path");
    let h = getwire::encode_get_path_header("set/big.bin", Compress::Off).unwrap();
    let (tag, p) = get_by_path(&fx, &h);
    assert_eq!(tag, getwire::TAG_REFERENCE);
    let r = getwire::Reference::decode(&p).unwrap();
    assert_eq!(r.size, 3 << 20);
    let path = |p: &str| getwire::encode_get_path_header(p, Compress::Off).unwrap();
    let (code, words) = refused_with(&fx, &path("set/link/big.bin"));
    assert_eq!(code, FaultCode::NotFound, "{words}");
    for hostile in [
        "set/../set/big.bin",
        "/etc/passwd",
        ".bt-tree-parts/x",
        ".bigtransfer/x",
    ] {
        let (code, words) = refused_with(&fx, &path(hostile));
        assert_eq!(code, FaultCode::NameRefused, "{hostile}: {words}");
    }
    let streams = framed(
        r#"{"filename": "set/big.bin", "filesize": 0, "crc32": null, "bt": {"v": 2, "block": 65536, "rev": 2, "op": "get", "path": 1, "streams": 4}}"#,
    );
    // Its streams are a session of that path: the ticket comes first.
    let (tag, p) = get_by_path(&fx, &streams);
    assert!(
        matches!(v2::parse_server_msg(tag, &p), Ok(ServerMsg::Join(_))),
        "{tag:#04x}"
    );
    // Without "path": 1 a path is refused, as it always was.
    let plain = getwire::encode_get_header("set/big.bin").unwrap();
    assert_eq!(refused_with(&fx, &plain).0, FaultCode::NameRefused);
}
