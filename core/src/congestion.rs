//! Choosing a TCP congestion control per socket where the kernel lets an
//! unprivileged process do so.
//!
//! On long, lossy links CUBIC collapses under loss and BBR does not; Linux
//! lets any process pick, per socket, an algorithm listed in
//! `net.ipv4.tcp_allowed_congestion_control` (BBR often is not, and the
//! module may not be loaded). So this asks, never insists: on refusal the
//! socket keeps the system default, and the caller learns what is in use
//! (for `--json`).
//!
//! It is not for system-wide settings, nor for other socket options.

use std::os::fd::AsFd;

/// The algorithm asked for by default: BBR, for its behaviour under loss.
pub const PREFERRED: &str = "bbr";

/// Asks for congestion control `wanted` on `socket` (before or after
/// connecting) and returns the algorithm the socket uses afterwards, read
/// back from the kernel: `wanted` if it was allowed, else the system
/// default. `None` where the OS has no per-socket congestion control (or
/// the read-back fails); nothing is ever an error, since the transfer works
/// either way.
pub fn request(socket: impl AsFd, wanted: &str) -> Option<String> {
    imp::request(socket.as_fd(), wanted)
}

/// The congestion control `socket` uses, or `None` where the OS does not say.
pub fn current(socket: impl AsFd) -> Option<String> {
    imp::current(socket.as_fd())
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod imp {
    use rustix::net::sockopt::{set_tcp_congestion, tcp_congestion};
    use std::os::fd::BorrowedFd;

    pub fn request(fd: BorrowedFd<'_>, wanted: &str) -> Option<String> {
        // EPERM (not allowed) or ENOENT (not available) leave the default.
        let _ = set_tcp_congestion(fd, wanted);
        current(fd)
    }

    pub fn current(fd: BorrowedFd<'_>) -> Option<String> {
        let name = tcp_congestion(fd).ok()?;
        // The kernel pads the name with NULs up to its buffer size.
        let name = name.trim_end_matches('\0');
        (!name.is_empty()).then(|| name.to_owned())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
mod imp {
    use std::os::fd::BorrowedFd;

    pub fn request(_: BorrowedFd<'_>, _: &str) -> Option<String> {
        None
    }

    pub fn current(_: BorrowedFd<'_>) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn allowed() -> Vec<String> {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_socket_gets_an_allowed_algorithm() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let before = current(&client).expect("Linux reports TCP_CONGESTION");
        let used = request(&client, PREFERRED).expect("Linux reports TCP_CONGESTION");
        assert!(!used.contains('\0'), "{used:?}");
        let allowed = allowed();
        if allowed.iter().any(|a| a == PREFERRED) {
            assert_eq!(used, PREFERRED);
        } else {
            // Refused silently: the socket keeps what it had.
            assert_eq!(used, before);
        }
        eprintln!("allowed: {allowed:?}; before {before}, after asking for bbr: {used}");
        // A name no kernel knows leaves the socket as it was.
        assert_eq!(
            request(&client, "no-such-cc").as_deref(),
            Some(used.as_str())
        );
        // An allowed one (the default is always allowed) is taken.
        if let Some(other) = allowed.iter().find(|a| **a != used) {
            assert_eq!(request(&client, other).as_deref(), Some(other.as_str()));
        }
    }

    #[test]
    fn not_a_tcp_socket_gives_none() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(request(&file, PREFERRED), None);
    }
}
