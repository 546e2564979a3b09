//! How large the server's page-cache writes are: a choice between two sizes,
//! made from how fast each has been going on this machine.
//!
//! Linux sizes a file's page-cache folios after the write that creates them,
//! and the best size depends on the machine's state:
//!
//! - Usually 256 KiB writes (256 KiB folios) are the cheapest: fewer calls,
//!   less work per byte.
//! - In a VM that hands freed memory back to its host (free page reporting),
//!   a busy host makes filling big folios slow: the host faults each page in
//!   again. 32 KiB (order-3) folios come from the allocator's per-CPU lists
//!   of recently freed pages and escape that.
//!
//! Measured on a Firecracker VM (kernel 6.18, ext4, 2 GiB uploads): in quiet
//! minutes 256 KiB took 1.19 to 1.95 s and 32 KiB 1.46 to 1.88 s; in slow
//! minutes 256 KiB took 1.8 to 5.3 s and 32 KiB 1.6 to 2.7 s. No fixed size
//! wins both, so [`PieceChooser`] times its writes, uses the faster size, and
//! tries the other one now and then.
//!
//! Pure bookkeeping over (bytes, time) observations: the caller does the
//! writes and the timing. Not for the network side, nor for reads.

use std::time::Duration;

/// The usual write size: 256 KiB folios.
pub(crate) const LARGE_PIECE: usize = 256 << 10;
/// The write size that is cheap when fresh memory is dear: 32 KiB (order-3)
/// folios.
pub(crate) const SMALL_PIECE: usize = 32 << 10;
/// Bytes written with one size before its cost is judged.
pub(crate) const STEP: u64 = 8 << 20;
/// After this many steps with one size, one step goes to the other, so a
/// change in the machine's state is noticed (1 step in 16: at most about 6 %
/// of the data goes through the slower size).
pub(crate) const PROBE_EVERY: u32 = 16;
/// The size in use is tried against the other at once when its smoothed
/// cost per byte passes this multiple of the other's last figure.
pub(crate) const EARLY_PROBE: f64 = 1.5;

/// Picks the write size from the measured cost of each.
#[derive(Debug, Clone)]
pub(crate) struct PieceChooser {
    sizes: [usize; 2],
    /// Smoothed nanoseconds per byte of each size, once measured.
    cost: [Option<f64>; 2],
    current: usize,
    probing: bool,
    steps_since_probe: u32,
    step_bytes: u64,
    step_time: Duration,
}

impl Default for PieceChooser {
    fn default() -> PieceChooser {
        PieceChooser::new(LARGE_PIECE, SMALL_PIECE)
    }
}

impl PieceChooser {
    /// A chooser between `first` (used first) and `second`.
    pub(crate) fn new(first: usize, second: usize) -> PieceChooser {
        PieceChooser {
            sizes: [first.max(1), second.max(1)],
            cost: [None, None],
            current: 0,
            probing: false,
            steps_since_probe: 0,
            step_bytes: 0,
            step_time: Duration::ZERO,
        }
    }

    /// The size to write with now.
    pub(crate) fn piece(&self) -> usize {
        self.sizes[self.current]
    }

    /// Records that `bytes` were written with [`PieceChooser::piece`] in
    /// `took`; may change the size for the next write.
    pub(crate) fn record(&mut self, bytes: usize, took: Duration) {
        self.step_bytes += bytes as u64;
        self.step_time += took;
        if self.step_bytes < STEP {
            return;
        }
        let per_byte = self.step_time.as_nanos() as f64 / self.step_bytes as f64;
        self.step_bytes = 0;
        self.step_time = Duration::ZERO;
        let (c, other) = (self.current, 1 - self.current);
        if self.probing {
            // A probed size's old figure is stale: the fresh one replaces it.
            self.cost[c] = Some(per_byte);
            self.probing = false;
            self.current = self.cheaper();
            return;
        }
        // Half old, half new: one preempted step does not trigger a probe,
        // a real change in the machine's state does within a step or two.
        let cost = match self.cost[c] {
            Some(old) => (old + per_byte) / 2.0,
            None => per_byte,
        };
        self.cost[c] = Some(cost);
        self.steps_since_probe += 1;
        let much_dearer = self.cost[other].is_some_and(|o| cost > EARLY_PROBE * o);
        if self.cost[other].is_none() || self.steps_since_probe >= PROBE_EVERY || much_dearer {
            self.current = other;
            self.probing = true;
            self.steps_since_probe = 0;
        }
    }

    fn cheaper(&self) -> usize {
        match self.cost {
            [Some(a), Some(b)] if b < a => 1,
            [Some(_), Some(_)] => 0,
            [None, _] => 0,
            [_, None] => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds whole steps written at `ns_per_byte[size]`; returns the sizes
    /// used, one per step.
    fn run(ch: &mut PieceChooser, steps: usize, ns_per_byte: impl Fn(usize) -> f64) -> Vec<usize> {
        let mut used = Vec::new();
        for _ in 0..steps {
            let p = ch.piece();
            used.push(p);
            let mut left = STEP as usize;
            while left > 0 {
                let n = left.min(1 << 20);
                ch.record(n, Duration::from_nanos((n as f64 * ns_per_byte(p)) as u64));
                left -= n;
            }
        }
        used
    }

    #[test]
    fn settles_on_the_faster_size_and_probes_the_other_rarely() {
        let mut ch = PieceChooser::default();
        // Large pieces cheap (a quiet machine).
        let used = run(&mut ch, 64, |p| if p == LARGE_PIECE { 0.25 } else { 0.35 });
        assert_eq!(used[0], LARGE_PIECE);
        assert_eq!(used[1], SMALL_PIECE, "the other size is measured early");
        let small = used.iter().filter(|&&p| p == SMALL_PIECE).count();
        assert!(
            small <= 1 + 64 / PROBE_EVERY as usize,
            "{small} small steps in 64"
        );
        assert_eq!(ch.piece(), LARGE_PIECE);
    }

    #[test]
    fn switches_when_the_machine_changes_and_back() {
        let quiet = |p: usize| if p == LARGE_PIECE { 0.25 } else { 0.35 };
        let slow = |p: usize| if p == LARGE_PIECE { 1.0 } else { 0.35 };
        let mut ch = PieceChooser::default();
        run(&mut ch, 20, quiet);
        assert_eq!(ch.piece(), LARGE_PIECE);
        // A slow minute, big folios costing 4x: one slow step, one probe,
        // then small pieces, with one large probe per period.
        let used = run(&mut ch, 3 * PROBE_EVERY as usize, slow);
        assert_eq!(
            used[..3],
            [LARGE_PIECE, SMALL_PIECE, SMALL_PIECE],
            "{used:?}"
        );
        let large = used[2..].iter().filter(|&&p| p == LARGE_PIECE).count();
        assert!(large <= 3, "{large} large steps: {used:?}");
        assert_eq!(ch.piece(), SMALL_PIECE);
        // Quiet again: back to large pieces at the next probe, and staying.
        let used = run(&mut ch, 3 * PROBE_EVERY as usize, quiet);
        let back = used
            .iter()
            .position(|&p| p == LARGE_PIECE)
            .unwrap_or(usize::MAX);
        assert!(back <= PROBE_EVERY as usize, "{used:?}");
        let small = used[back..].iter().filter(|&&p| p == SMALL_PIECE).count();
        assert!(
            small <= 3,
            "{small} small steps after the switch back: {used:?}"
        );
        assert_eq!(ch.piece(), LARGE_PIECE);
    }

    #[test]
    fn one_slow_step_does_not_flip_the_choice() {
        let quiet = |p: usize| if p == LARGE_PIECE { 0.25 } else { 0.35 };
        let mut ch = PieceChooser::default();
        run(&mut ch, 8, quiet);
        assert_eq!(ch.piece(), LARGE_PIECE);
        // One step preempted (3x slower), then normal again.
        run(&mut ch, 1, |_| 0.75);
        let used = run(&mut ch, 4, quiet);
        assert_eq!(used, [LARGE_PIECE; 4]);
    }

    #[test]
    fn partial_steps_and_zero_durations_are_harmless() {
        let mut ch = PieceChooser::new(LARGE_PIECE, SMALL_PIECE);
        for _ in 0..1000 {
            ch.record(4096, Duration::ZERO);
        }
        assert!(ch.piece() == LARGE_PIECE || ch.piece() == SMALL_PIECE);
        let mut degenerate = PieceChooser::new(0, 0);
        assert_eq!(degenerate.piece(), 1);
        degenerate.record(STEP as usize, Duration::from_millis(1));
        assert_eq!(degenerate.piece(), 1);
    }
}
