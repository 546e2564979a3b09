//! Loopback throughput of the transports: the same bytes through plain TCP
//! and through TLS 1.3 (TlsTransport), with the CPU time of each side.
//! A measurement to read, not a test: nothing is asserted. Runs with the
//! line-aligned allocator the binaries should install
//! ([`bigtransfer_core::alloc`]); BT_SYSTEM_ALLOC=1 compares without it.
//!
//! cargo run --release -p bigtransfer-core --example tls_throughput [MiB [tls|plain]]

use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use bigtransfer_core::alloc::LineAligned;
use bigtransfer_core::tls::{client_config, server_config, PinPolicy, ServerKey};
use bigtransfer_core::transport::{TcpTransport, TlsTransport, Transport};

const CHUNK: usize = 1024 * 1024;

/// The line-aligned allocator, or the system's when BT_SYSTEM_ALLOC is set
/// (decided once, before the first large block).
struct Switch;

static SYSTEM: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards every call to one of two allocators; which one never
// changes after main's first line, before any block crosses over.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        unsafe { pick().alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { pick().dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        unsafe { pick().realloc(p, l, n) }
    }
}

fn pick() -> &'static dyn GlobalAlloc {
    if SYSTEM.load(Ordering::Relaxed) {
        &System
    } else {
        &LineAligned
    }
}

#[global_allocator]
static A: Switch = Switch;

/// CPU seconds (user + system) used so far by the calling thread.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

fn send(mut t: impl Transport, total: u64) -> std::io::Result<f64> {
    let c0 = thread_cpu();
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        t.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    t.flush()?;
    t.close_write()?;
    Ok(thread_cpu() - c0)
}

fn receive(mut t: impl Transport) -> std::io::Result<(u64, f64)> {
    let c0 = thread_cpu();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        match t.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    Ok((got, thread_cpu() - c0))
}

fn run(tls: bool, total: u64) -> Result<(), Box<dyn std::error::Error>> {
    let key = ServerKey::generate()?;
    let (scfg, ccfg) = (
        server_config(&key)?,
        client_config(PinPolicy::Expect(key.fingerprint()))?,
    );
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let rx = thread::spawn(move || -> std::io::Result<(u64, f64)> {
        let (s, _) = l.accept()?;
        if tls {
            let t = TlsTransport::accept(s, scfg, Duration::from_secs(10))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            receive(t)
        } else {
            receive(TcpTransport::new(s)?)
        }
    });
    let c = TcpStream::connect(addr)?;
    let t0 = Instant::now();
    let send_cpu = if tls {
        send(
            TlsTransport::connect(c, ccfg, Duration::from_secs(10))?,
            total,
        )?
    } else {
        send(TcpTransport::new(c)?, total)?
    };
    let (got, recv_cpu) = rx.join().map_err(|_| "receiver panicked")??;
    let secs = t0.elapsed().as_secs_f64();
    let gb = got as f64 / 1e9;
    println!(
        "{:<5} {:>6} MiB  {:>7.0} MB/s  sender {:.2} CPU-s/GB  receiver {:.2} CPU-s/GB",
        if tls { "tls" } else { "plain" },
        got >> 20,
        got as f64 / 1e6 / secs,
        send_cpu / gb,
        recv_cpu / gb
    );
    if got != total {
        return Err(format!("received {got} of {total} bytes").into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("BT_SYSTEM_ALLOC").is_some() {
        SYSTEM.store(true, Ordering::Relaxed);
    }
    let mib: u64 = std::env::args().nth(1).map_or(Ok(1024), |a| a.parse())?;
    let modes: &[bool] = match std::env::args().nth(2).as_deref() {
        Some("tls") => &[true],
        Some("plain") => &[false],
        _ => &[false, true, false, true],
    };
    for &tls in modes {
        run(tls, mib << 20)?;
    }
    Ok(())
}
