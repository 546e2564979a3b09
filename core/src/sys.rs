//! The few OS calls that `std` does not offer, over `rustix` (safe
//! bindings to the system calls), and the crate's only `unsafe`: the calls
//! `rustix` lacks (`sync_file_range`, `TCP_INFO`) and the page-aligned buffer.
//!
//! Each function here is one system call (or a portable fallback for it)
//! with its error turned into `io::Error`; policy lives in the callers. Not
//! for anything that `std` already does well.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};

/// Flushes a file's data (not necessarily its metadata) to stable storage.
/// Retried when a signal interrupts it: an `EINTR` says nothing about the
/// data, and reporting it as a failure would fail an upload for no reason.
pub(crate) fn fdatasync(file: &File) -> io::Result<()> {
    loop {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let res = rustix::fs::fdatasync(file).map_err(io::Error::from);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let res = file.sync_data();
        match res {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Raises the soft limit on open files to the hard limit (a server needs
/// several descriptors per connection) and returns the soft limit now in
/// force (`u64::MAX`: unlimited).
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let raise = match (lim.current, lim.maximum) {
        (Some(cur), Some(max)) => cur < max,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if raise {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Ok(lim.maximum.unwrap_or(u64::MAX));
        }
    }
    Ok(lim.current.unwrap_or(u64::MAX))
}

/// Tells the kernel the file will be read sequentially (bigger read-ahead).
pub(crate) fn advise_sequential(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = file;
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub(crate) fn available_space(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Takes an exclusive advisory lock on `file`, failing at once if it is held.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    Ok(flock(file, FlockOperation::NonBlockingLockExclusive)?)
}

/// A non-blocking, close-on-exec pipe: (read end, write end). Both flags
/// are set atomically by `pipe2`, so a `fork`+`exec` in another thread (the
/// C API's host program may do that) can never inherit the pipe.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::{pipe_with, PipeFlags};
    Ok(pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?)
}

/// Writes one byte to `fd`, ignoring every error. Async-signal-safe (one
/// `write(2)`, no allocation): it is how a signal handler wakes the
/// server's accept loop.
pub(crate) fn wake(fd: BorrowedFd<'_>) {
    // A full pipe already means "woken".
    let _ = rustix::io::write(fd, &[1]);
}

/// Reads and discards everything pending in the non-blocking `fd`.
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Waits until one of `fds` is readable or `timeout` passes (None: forever).
/// Returns, for each fd, whether it is readable.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(|d| Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    });
    loop {
        match poll(&mut pfds, ts.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect())
}

/// `name` as a single path component.
fn component(name: &str) -> io::Result<&str> {
    if name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a name inside a directory cannot contain '/'",
        ));
    }
    Ok(name)
}

/// Opens a directory (following symlinks in `path`: it is the operator's).
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?.into())
}

/// Opens the directory `name` inside `dir`, refusing a symlink.
pub(crate) fn open_dir_at(dir: &File, name: &str) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, component(name)?, flags, Mode::empty())?.into())
}

/// Opens `name` inside `dir` read-write (creating it if asked), never
/// through a symlink (`ELOOP` if it is one).
pub(crate) fn open_at(dir: &File, name: &str, create: bool) -> io::Result<File> {
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if create {
        flags |= OFlags::CREATE;
    }
    let mode = Mode::from_raw_mode(0o644);
    Ok(rustix::fs::openat(dir, component(name)?, flags, mode)?.into())
}

/// Opens `name` inside `dir` read-only, never through a symlink.
pub(crate) fn open_read_at(dir: &File, name: &str) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, component(name)?, flags, Mode::empty())?.into())
}

/// Renames `from` in `from_dir` to `to` in `to_dir` (replacing `to`, even a
/// symlink, rather than following it).
pub(crate) fn rename_at(from_dir: &File, from: &str, to_dir: &File, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat(
        from_dir,
        component(from)?,
        to_dir,
        component(to)?,
    )?)
}

/// Makes `to` in `dir` a hard link to `from` in `dir`, failing with
/// `AlreadyExists` rather than replacing anything at `to`.
pub(crate) fn link_at(dir: &File, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        dir,
        component(from)?,
        dir,
        component(to)?,
        AtFlags::empty(),
    )?)
}

/// Removes `name` from `dir` (a symlink itself, never its target).
pub(crate) fn unlink_at(dir: &File, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(
        dir,
        component(name)?,
        AtFlags::empty(),
    )?)
}

/// Whether allocating a file's blocks just before writing them saves work
/// on the filesystem that holds `file`. On ext4 and XFS a write into
/// unallocated space reserves delayed-allocation room page by page
/// (measured on ext4: a third of the kernel's cost of a page-cache write);
/// on tmpfs an allocation zeroes pages the write then overwrites, so it
/// costs more, and elsewhere the gain is unknown.
pub(crate) fn preallocation_pays(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
        // `f_type` is an i64 on x86-64 and a u32 on some other targets.
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::fstatfs(file)
            .is_ok_and(|s| matches!(s.f_type as i64, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Allocates `[offset, offset + len)` of `file` without changing its size
/// (`FALLOC_FL_KEEP_SIZE`): only the range about to be written, so a part
/// with holes stays sparse. `Ok(false)` when the filesystem cannot (the
/// write then allocates as usual); an error only when it has no room.
pub(crate) fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::FallocateFlags;
        match rustix::fs::fallocate(file, FallocateFlags::KEEP_SIZE, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT => {
                Err(e.into())
            }
            Err(_) => Ok(false),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Ok(false)
    }
}

/// Allocates each range of one file just before it is written, where that
/// pays ([`preallocation_pays`]), and stops trying once the filesystem
/// turns out not to support it. Every writer of received bytes (an
/// upload's part, a download's) goes through one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Preallocator {
    on: bool,
}

impl Preallocator {
    /// For writes into `file`.
    pub(crate) fn for_file(file: &File) -> Preallocator {
        Preallocator {
            on: preallocation_pays(file),
        }
    }

    /// Call before writing `len` bytes at `offset`; an error only when the
    /// disk (or the quota) has no room for them.
    pub(crate) fn before_write(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        if self.on && len > 0 {
            self.on = preallocate(file, offset, len)?;
        }
        Ok(())
    }
}

/// Starts writing back `[offset, offset + len)` of `file` without waiting,
/// so that the next `fdatasync` has little left to do and the disk works
/// while the network keeps delivering. A hint: errors are ignored (the
/// checkpoint's `fdatasync` reports real ones). `rustix` has no
/// `sync_file_range`, so this is the one call made through `libc`.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: an advisory call on an fd owned by `file`, open for the
        // whole call; no memory is passed.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Gives a sending socket the largest send buffer this host allows, when
/// that is larger than what the kernel's autotuning would ever reach.
///
/// On a long link a single TCP stream is capped by its send buffer, which
/// holds every byte not yet acknowledged: at most `tcp_wmem`'s maximum (4 MiB
/// by default, about 40 MB/s at 100 ms round trip). An explicit `SO_SNDBUF`
/// may go up to `net.core.wmem_max`, which the kernel doubles for its
/// bookkeeping; where that doubled figure exceeds `tcp_wmem`'s maximum we set
/// it. That switches autotuning off for this socket, so we never set a
/// buffer smaller than autotuning's ceiling (a pinned small buffer is the
/// classic way to make a fast link slow). Measured on a 100 ms, 1 Gbit/s
/// emulated link with both limits at 4 MiB: 26 MB/s before, 50 MB/s after.
///
/// Returns the new size in bytes, or `None` if the buffer was left to
/// autotuning (not Linux, limits unreadable, or nothing to gain).
pub(crate) fn widen_send_buffer(sock: &impl AsFd) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let core_max: usize = read("/proc/sys/net/core/wmem_max")?.trim().parse().ok()?;
        let auto_max: usize = read("/proc/sys/net/ipv4/tcp_wmem")?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()?;
        let want = send_buffer_request(core_max, auto_max)?;
        rustix::net::sockopt::set_socket_send_buffer_size(sock, want).ok()?;
        Some(want.saturating_mul(2))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = sock;
        None
    }
}

/// What the kernel says of a sending socket's recent life, cumulative
/// since it opened (Linux `TCP_INFO`): for deciding whether more streams
/// would help.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PathSample {
    /// Microseconds with data in flight.
    pub busy_us: u64,
    /// Of those, microseconds limited by a window: the send buffer (all
    /// of it unacknowledged) or the receiver's.
    pub window_limited_us: u64,
    /// Bytes sent, and of those sent again.
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    /// The smallest round trip seen, in microseconds (0: none yet):
    /// unlike the smoothed one, not inflated by a queue.
    pub min_rtt_us: u32,
}

/// A [`PathSample`] of a connected TCP socket; `None` where the kernel
/// does not report these (before Linux 4.19, other systems).
pub(crate) fn tcp_sample(socket: BorrowedFd<'_>) -> Option<PathSample> {
    #[cfg(target_os = "linux")]
    {
        // The fields read here end at tcpi_bytes_retrans.
        let need = std::mem::offset_of!(libc::tcp_info, tcpi_dsack_dups);
        let info = tcp_info(socket, need)?;
        Some(PathSample {
            busy_us: info.tcpi_busy_time,
            window_limited_us: info
                .tcpi_rwnd_limited
                .saturating_add(info.tcpi_sndbuf_limited),
            bytes_sent: info.tcpi_bytes_sent,
            bytes_retrans: info.tcpi_bytes_retrans,
            min_rtt_us: info.tcpi_min_rtt,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// The kernel's `TCP_INFO` of a connected TCP socket, when it filled at
/// least the first `need` bytes (older kernels fill fewer fields), else
/// `None`. `rustix` has no `TCP_INFO`, so this is read through `libc`.
#[cfg(target_os = "linux")]
fn tcp_info(socket: BorrowedFd<'_>, need: usize) -> Option<libc::tcp_info> {
    use std::os::fd::AsRawFd;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes for the whole
    // call, and the kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < need {
        return None;
    }
    // SAFETY: zero-initialised, then (partly) filled by the kernel:
    // every field is a plain integer, valid at any value.
    Some(unsafe { info.assume_init() })
}

/// How many bytes one TCP stream of `sock` may have in flight at most:
/// its send buffer as the kernel reports it (doubled for bookkeeping)
/// or, under autotuning, `tcp_wmem`'s maximum if larger. `None` where
/// unknown.
pub(crate) fn send_window_ceiling(sock: BorrowedFd<'_>) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let now = rustix::net::sockopt::socket_send_buffer_size(sock).ok()?;
        let auto_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .ok()
            .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(0);
        Some(now.max(auto_max))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = sock;
        None
    }
}

/// The `SO_SNDBUF` value worth requesting given `net.core.wmem_max` and
/// `tcp_wmem`'s maximum, or `None` when autotuning reaches at least as far
/// (Linux doubles the request, capped at `wmem_max`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn send_buffer_request(core_max: usize, auto_max: usize) -> Option<usize> {
    // Past a point a bigger buffer only costs memory: 64 MiB in flight is
    // 5 Gbit/s at 100 ms.
    const CEILING: usize = 32 << 20;
    let want = core_max.min(CEILING);
    (want.saturating_mul(2) > auto_max).then_some(want)
}

/// A zeroed byte buffer aligned to a page. Large I/O into a buffer that
/// starts mid-page is several times slower on some machines (measured:
/// 2.2 GB/s against 10 GB/s for `read()` into 1 MiB), so every bulk I/O
/// buffer of the engine is one of these.
pub(crate) struct PageBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

pub(crate) const PAGE: usize = 4096;

impl PageBuf {
    pub(crate) fn new(len: usize) -> PageBuf {
        let len = len.max(1);
        let layout = match std::alloc::Layout::from_size_align(len, PAGE) {
            Ok(l) => l,
            // Only for absurd lengths, which no caller asks for.
            Err(_) => std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()),
        };
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        match std::ptr::NonNull::new(raw) {
            Some(ptr) => PageBuf { ptr, len },
            None => std::alloc::handle_alloc_error(layout),
        }
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(self.len, PAGE),
            );
        }
    }
}

// SAFETY: PageBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for PageBuf {}

/// The kernel's smoothed round-trip time of a connected TCP socket
/// (`TCP_INFO`), `None` where the OS does not say.
pub(crate) fn tcp_rtt(socket: BorrowedFd<'_>) -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let info = tcp_info(socket, std::mem::size_of::<libc::tcp_info>() / 2)?;
        Some(Duration::from_micros(u64::from(info.tcpi_rtt)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::send_buffer_request;

    #[test]
    fn the_wake_pipe_is_close_on_exec_and_non_blocking_from_birth() {
        use std::os::fd::AsRawFd;
        let (r, w) = super::pipe().unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd()] {
            // SAFETY: fcntl queries on fds we own.
            let (fl, fdfl) = unsafe {
                (
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                )
            };
            assert!(fl & libc::O_NONBLOCK != 0);
            assert!(fdfl & libc::FD_CLOEXEC != 0);
        }
    }

    #[test]
    fn send_buffer_is_widened_only_past_autotuning() {
        // This machine's netns defaults: both 4 MiB; doubling gives 8 MiB.
        assert_eq!(send_buffer_request(4 << 20, 4 << 20), Some(4 << 20));
        // Common distro defaults: wmem_max 208 KiB, tcp_wmem max 4 MiB:
        // pinning would shrink the buffer, so autotuning keeps it.
        assert_eq!(send_buffer_request(212_992, 4 << 20), None);
        // Tuned hosts: autotuning already reaches 32 MiB.
        assert_eq!(send_buffer_request(16 << 20, 32 << 20), None);
        // A huge wmem_max is capped.
        assert_eq!(send_buffer_request(1 << 30, 4 << 20), Some(32 << 20));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn widening_sets_what_it_says_on_a_real_socket() {
        use std::os::fd::AsRawFd;
        let read = |p: &str, i: usize| -> Option<usize> {
            std::fs::read_to_string(p)
                .ok()?
                .split_whitespace()
                .nth(i)?
                .parse()
                .ok()
        };
        let expect = match (
            read("/proc/sys/net/core/wmem_max", 0),
            read("/proc/sys/net/ipv4/tcp_wmem", 2),
        ) {
            (Some(core), Some(auto)) => send_buffer_request(core, auto).map(|w| 2 * w),
            _ => None,
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let size = || {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `v` and `len` outlive the call and describe `v`.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            v as usize
        };
        let before = size();
        let got = super::widen_send_buffer(&s);
        assert_eq!(got, expect);
        assert_eq!(size(), got.unwrap_or(before));
    }
}
