//! Thin wrappers over the few OS calls that `std` does not offer.
//!
//! Each function here is one system call (or a portable fallback for it) with
//! its error turned into `io::Error`; policy lives in the callers. Not for
//! anything that `std` already does well.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Flushes a file's data (not necessarily its metadata) to stable storage.
/// Retried when a signal interrupts it: an `EINTR` says nothing about the
/// data, and reporting it as a failure would fail an upload for no reason.
pub(crate) fn fdatasync(file: &File) -> io::Result<()> {
    loop {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: the fd is owned by `file` and open for the whole call.
        let res = cvt(unsafe { libc::fdatasync(file.as_raw_fd()) }).map(|_| ());
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
/// force.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }).is_ok() {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok(lim.rlim_cur as u64)
}

/// Tells the kernel the file will be read sequentially (bigger read-ahead).
pub(crate) fn advise_sequential(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: plain advisory call on an fd owned by `file`; failure is harmless.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = file;
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub(crate) fn available_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statvfs writes into the zeroed struct; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Takes an exclusive advisory lock on `file`, failing at once if it is held.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock on an fd owned by `file`.
    cvt(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(|_| ())
}

/// A non-blocking, close-on-exec pipe: (read end, write end). Both flags
/// are set atomically by `pipe2`, so a `fork`+`exec` in another thread (the
/// C API's host program may do that) can never inherit the pipe.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, w))
}

/// Writes one byte to `fd`, ignoring every error. Async-signal-safe: it is
/// how a signal handler wakes the server's accept loop.
pub(crate) fn wake(fd: RawFd) {
    let b = 1u8;
    // SAFETY: write(2) is async-signal-safe; a full pipe already means "woken".
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// Reads and discards everything pending in the non-blocking `fd`.
pub(crate) fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (None: forever).
/// Returns, for each fd, whether it is readable.
pub(crate) fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

fn c_name(name: &str) -> io::Result<std::ffi::CString> {
    if name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a name inside a directory cannot contain '/'",
        ));
    }
    std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn fd_file(fd: libc::c_int) -> io::Result<File> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens a directory (following symlinks in `path`: it is the operator's).
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: a NUL-terminated path; the result is checked.
    fd_file(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// Opens the directory `name` inside `dir`, refusing a symlink.
pub(crate) fn open_dir_at(dir: &File, name: &str) -> io::Result<File> {
    let c = c_name(name)?;
    // SAFETY: as above, relative to an open directory fd.
    fd_file(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
}

/// Opens `name` inside `dir` read-write (creating it if asked), never
/// through a symlink (`ELOOP` if it is one).
pub(crate) fn open_at(dir: &File, name: &str, create: bool) -> io::Result<File> {
    let c = c_name(name)?;
    let mut flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if create {
        flags |= libc::O_CREAT;
    }
    // SAFETY: as above; mode applies only when creating.
    fd_file(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o644 as libc::c_uint) })
}

/// Opens `name` inside `dir` read-only, never through a symlink.
pub(crate) fn open_read_at(dir: &File, name: &str) -> io::Result<File> {
    let c = c_name(name)?;
    // SAFETY: as above.
    fd_file(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
}

/// Renames `from` in `from_dir` to `to` in `to_dir` (replacing `to`, even a
/// symlink, rather than following it).
pub(crate) fn rename_at(from_dir: &File, from: &str, to_dir: &File, to: &str) -> io::Result<()> {
    let (f, t) = (c_name(from)?, c_name(to)?);
    // SAFETY: two NUL-terminated names relative to open directory fds.
    cvt(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
        )
    })
    .map(|_| ())
}

/// Removes `name` from `dir` (a symlink itself, never its target).
pub(crate) fn unlink_at(dir: &File, name: &str) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: as above.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
}

/// Starts writing back `[offset, offset + len)` of `file` without waiting,
/// so that the next `fdatasync` has little left to do and the disk works
/// while the network keeps delivering. A hint: errors are ignored (the
/// checkpoint's `fdatasync` reports real ones).
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    // SAFETY: an advisory call on an fd owned by `file`.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
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
pub(crate) fn widen_send_buffer(sock: &impl AsRawFd) -> Option<usize> {
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
        let v = libc::c_int::try_from(want).ok()?;
        // SAFETY: `v` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        (rc == 0).then_some(want.saturating_mul(2))
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

const PAGE: usize = 4096;

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
