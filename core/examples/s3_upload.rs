//! Uploads one file to an S3-compatible store through the `s3` module's
//! multipart path, with a CRC-32 per part and over the full object checked
//! by the store: the client side of `bench/s3.sh`. Not a user tool (the CLI
//! will have `--store s3://...`).
//!
//!   s3_upload FILE NAME [PART_MIB] [THREADS]
//!
//! Store from BT_S3_ENDPOINT, BT_S3_BUCKET, BT_S3_REGION; keys from AWS_*.
//! Memory: THREADS buffers of PART_MIB each (default 16 MiB x 4).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bigtransfer_core::s3::{combine, Client, Config, Part};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("s3_upload: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: s3_upload FILE NAME [PART_MIB] [THREADS]".into());
    }
    let part: u64 = args.get(3).map_or(Ok(16), |s| s.parse())? << 20;
    let threads: usize = args.get(4).map_or(Ok(4), |s| s.parse())?;
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let cfg = Config::from_env(
        &env("BT_S3_ENDPOINT", "http://127.0.0.1:18333"),
        &env("BT_S3_REGION", "us-east-1"),
        &env("BT_S3_BUCKET", "bt-test"),
        "",
    )?;
    let client = Client::new(cfg)?;
    let file = File::open(&args[1])?;
    let size = file.metadata()?.len();
    let count = size.div_ceil(part).max(1) as usize;
    let name = &args[2];
    let id = client.create_multipart(name)?;
    let parts = upload_all(&client, &file, name, &id, size, part, count, threads);
    let parts = match parts {
        Ok(p) => p,
        Err(e) => {
            let _ = client.abort_multipart(name, &id);
            return Err(e);
        }
    };
    let whole = combine(parts.iter().map(|(p, len)| (p.crc, *len)));
    let parts: Vec<Part> = parts.into_iter().map(|(p, _)| p).collect();
    client.complete_multipart(name, &id, &parts, whole)?;
    println!("uploaded {size} bytes in {count} parts, crc32 {whole:08x}");
    Ok(())
}

/// Sends every part, `threads` at a time, each thread reading its next part
/// into its own buffer; returns the parts in order with their lengths.
#[allow(clippy::too_many_arguments)]
fn upload_all(
    client: &Client,
    file: &File,
    name: &str,
    id: &str,
    size: u64,
    part: u64,
    count: usize,
    threads: usize,
) -> Res<Vec<(Part, u64)>> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<(Part, u64)>>> = Mutex::new(vec![None; count]);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![0u8; part as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let start = i as u64 * part;
                    let len = part.min(size - start);
                    let data = &mut buf[..len as usize];
                    let sent = file
                        .read_exact_at(data, start)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            let crc = crc32fast::hash(data);
                            let n = i as u16 + 1;
                            let etag = client
                                .upload_part(name, id, n, data, crc)
                                .map_err(|e| e.to_string())?;
                            Ok(Part {
                                number: n,
                                etag,
                                crc,
                            })
                        });
                    match sent {
                        Ok(p) => {
                            if let Ok(mut d) = done.lock() {
                                d[i] = Some((p, len));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().map_err(|_| "a thread panicked")? {
        return Err(e.into());
    }
    let done = done.into_inner().map_err(|_| "a thread panicked")?;
    done.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "a part was not sent".into())
}
