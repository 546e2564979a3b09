//! How many connections `--streams auto` (and a fixed count) opens, and
//! when: a sans-IO decision fed with the bytes sent so far, the kernel's
//! `TCP_INFO` of the first connection ([`PathSample`]) and the time, so
//! that tests drive it with made-up samples and a virtual clock. Not for
//! opening the connections (client/streams.rs, client/get/streams.rs).
//!
//! The rule, for `auto`, on a path whose round trip is 1 ms or more:
//! - At once, as many streams as it takes for their windows not to cap a
//!   1 Gbit/s link ([`auto_start`]: about 0.6 of a send buffer is payload
//!   in flight, measured), plus one spare where more than one is needed
//!   (a stream under loss or in slow start carries less), at most 8:
//!   4 at 100 ms with 8 MiB buffers, 6 with 4 MiB, 1 at 20 ms.
//! - Then every measuring period (0.7 s, or 7 round trips on a longer
//!   path), from the first connection's counters over that period: where
//!   it resent 0.05 % of its bytes or more (loss, where each stream gets
//!   less and more streams share it), two more streams while the
//!   throughput rose by 5 % or more; where it was window-bound a fifth of
//!   its busy time or more, one more while the throughput rose by 10 %
//!   or more; where it was neither (the link or the CPU holds it back),
//!   none. Two periods in a row without that rise end the growth. The
//!   first period counts as a rise (from nothing): measured in scenario
//!   c of bench/wan.sh (100 Mbit/s, compressible), the streams this opens
//!   spread zstd over the cores (237 Mbit/s effective with 5 streams,
//!   224 with 1, whose ratio was lower: 2.41 against 2.51).
//! - Never more than [`MAX_STREAMS`] (8) in all.
//!
//! Round trips under 1 ms never reach this: `auto` keeps one connection
//! there (see `Streams::ask_on`).

use std::time::{Duration, Instant};

use crate::session::MAX_STREAMS;
use crate::sys::PathSample;

/// Round trips under this never get more than one stream from `auto`.
pub const AUTO_MIN_RTT: Duration = Duration::from_millis(1);

/// The rate `auto` opens streams for at once: as many as it takes for
/// the streams' windows not to cap a link of this rate (1 Gbit/s), before
/// measuring; growth by measurement goes on from there.
const AUTO_START_RATE: f64 = 125e6;

/// The share of a send buffer that carries payload in flight (the rest is
/// the kernel's bookkeeping): measured at 100 ms, one stream moves about
/// 0.6 of its buffer per round trip (bigtransfer --streams 1 with an
/// 8 MiB buffer: 410 Mbit/s; iperf3 with 4 MiB autotuned: 263 Mbit/s).
const WINDOW_PAYLOAD: f64 = 0.6;

/// Streams `auto` opens at once on a path of round trip `rtt` whose
/// streams may each have `window` bytes in flight: where one window is
/// what caps a stream below [`AUTO_START_RATE`] (a long path), enough
/// streams for that rate and one spare (measured on 0.5 % loss at
/// 100 ms, a stream carries 230 Mbit/s against 410 without loss), at most
/// [`MAX_STREAMS`]; 1 on a short path, or where the kernel does not say.
pub fn auto_start(rtt: Option<Duration>, window: Option<usize>) -> u32 {
    let (Some(rtt), Some(window)) = (rtt, window) else {
        return 1;
    };
    if rtt < AUTO_MIN_RTT || window == 0 {
        return 1;
    }
    let per_stream = window as f64 * WINDOW_PAYLOAD / rtt.as_secs_f64();
    let need = (AUTO_START_RATE / per_stream).ceil().max(1.0);
    let spare = if need > 1.0 { 1.0 } else { 0.0 };
    (need + spare).min(f64::from(MAX_STREAMS)) as u32
}

/// How long `auto` measures a stream count before deciding, at least.
const MEASURE: Duration = Duration::from_millis(700);

/// Round trips a measuring period lasts at least: a new stream needs
/// several to leave slow start.
const MEASURE_RTTS: u32 = 7;

/// What the first connection's counters say another stream would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// It resent 0.05 % of its bytes or more: each stream gets less on
    /// a lossy path, so streams come two at a time.
    Loss,
    /// It was window-bound a fifth of its busy time or more.
    Window,
    /// Neither: the link (or the CPU) holds it back.
    Nothing,
}

impl Need {
    /// Streams to add, and the least rise of the throughput over the
    /// last period for which they are added.
    fn step(self) -> (u32, f64) {
        match self {
            Need::Loss => (2, 0.05),
            Need::Window => (1, 0.10),
            Need::Nothing => (0, 0.10),
        }
    }
}

/// What a connection's counters between two samples say (`None`: the
/// samples do not say).
pub(super) fn need(before: Option<PathSample>, now: Option<PathSample>) -> Option<Need> {
    let (b, n) = (before.unwrap_or_default(), now?);
    let busy = n.busy_us.checked_sub(b.busy_us).filter(|&t| t > 0)?;
    let limited = n.window_limited_us.saturating_sub(b.window_limited_us);
    let sent = n.bytes_sent.saturating_sub(b.bytes_sent).max(1);
    let resent = n.bytes_retrans.saturating_sub(b.bytes_retrans);
    Some(if resent * 2000 >= sent {
        Need::Loss
    } else if limited * 5 >= busy {
        Need::Window
    } else {
        Need::Nothing
    })
}

/// When to open another stream.
pub(super) struct Grow {
    max: u32,
    auto: bool,
    opened: u32,
    /// Streams `auto` opens before it measures ([`auto_start`]).
    start: u32,
    period: Duration,
    /// The first connection's [`PathSample`] at the last decision.
    sample: Option<PathSample>,
    since: Instant,
    bytes: u64,
    /// The best throughput of a period so far, bytes a second.
    best: f64,
    /// Periods in a row whose throughput did not rise enough.
    misses: u32,
}

impl Grow {
    pub(super) fn new(mode: super::Streams) -> Grow {
        Grow::starting(mode, 1, None, Instant::now())
    }

    /// As [`Grow::new`], `auto` opening `start` streams before measuring
    /// on a path of round trip `rtt`, its clock starting at `now`.
    pub(super) fn starting(
        mode: super::Streams,
        start: u32,
        rtt: Option<Duration>,
        now: Instant,
    ) -> Grow {
        let (max, auto) = match mode {
            super::Streams::Fixed(n) => (n.clamp(1, MAX_STREAMS), false),
            super::Streams::Auto => (MAX_STREAMS, true),
        };
        let period = rtt.map_or(MEASURE, |r| MEASURE.max(r * MEASURE_RTTS));
        Grow {
            max,
            auto,
            start: start.clamp(1, MAX_STREAMS),
            period,
            sample: None,
            opened: 1,
            since: now,
            bytes: 0,
            best: 0.0,
            misses: 0,
        }
    }

    /// Streams in all so far (the first connection included).
    #[cfg(test)]
    fn opened(&self) -> u32 {
        self.opened
    }

    /// How many streams to open now, `bytes` having been sent in all and
    /// `sample` being what the kernel says of the first connection (see
    /// the module's rule). Fixed: all at once.
    pub(super) fn more(&mut self, now: Instant, bytes: u64, sample: Option<PathSample>) -> u32 {
        if self.opened >= self.max {
            return 0;
        }
        let at_once = if self.auto { self.start } else { self.max };
        if self.opened < at_once {
            let n = at_once - self.opened;
            self.opened = at_once;
            return n;
        }
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < self.period {
            return 0;
        }
        let rate = bytes.saturating_sub(self.bytes) as f64 / elapsed.as_secs_f64();
        (self.since, self.bytes) = (now, bytes);
        let before = std::mem::replace(&mut self.sample, sample);
        // Without samples (another system): as where windows bind.
        let need = need(before, sample).unwrap_or(Need::Window);
        let (step, rise) = need.step();
        if rate < self.best * (1.0 + rise) {
            self.misses += 1;
            if self.misses >= 2 {
                self.max = self.opened; // It stopped paying: no more.
            }
            return 0;
        }
        (self.misses, self.best) = (0, rate);
        let n = step.min(self.max - self.opened);
        self.opened += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::super::Streams;
    use super::*;

    const MIB: usize = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Counters after `busy` µs of which `limited` window-bound, `sent`
    /// bytes of which `resent` again.
    fn at(busy: u64, limited: u64, sent: u64, resent: u64) -> Option<PathSample> {
        Some(PathSample {
            busy_us: busy,
            window_limited_us: limited,
            bytes_sent: sent,
            bytes_retrans: resent,
            min_rtt_us: 0,
        })
    }

    #[test]
    fn auto_opens_what_the_windows_need_at_once_plus_one() {
        // 100 ms with 4 MiB: 25 MB/s a stream, five for 125 MB/s, and one.
        assert_eq!(auto_start(Some(ms(100)), Some(4 * MIB)), 6);
        // With an 8 MiB buffer (SO_SNDBUF of 4 MiB, doubled): 3 + 1.
        assert_eq!(auto_start(Some(ms(100)), Some(8 * MIB)), 4);
        // 20 ms (a 100 Mbit/s WAN of the compression scenario): one.
        assert_eq!(auto_start(Some(ms(20)), Some(8 * MIB)), 1);
        // Loopback, unknown, tiny windows on a long path: capped at 8.
        assert_eq!(
            auto_start(Some(Duration::from_micros(50)), Some(4 * MIB)),
            1
        );
        assert_eq!(auto_start(None, Some(4 * MIB)), 1);
        assert_eq!(auto_start(Some(ms(100)), None), 1);
        assert_eq!(auto_start(Some(ms(100)), Some(0)), 1);
        assert_eq!(auto_start(Some(ms(300)), Some(64 << 10)), 8);
    }

    #[test]
    fn fixed_counts_open_all_at_once_and_auto_its_start_then_measures() {
        let t0 = Instant::now();
        let mut g = Grow::starting(Streams::Auto, 4, Some(ms(100)), t0);
        assert_eq!(g.more(t0, 0, None), 3);
        assert_eq!(g.more(t0 + ms(10), 1 << 20, None), 0, "then it measures");
        assert_eq!(g.opened(), 4);
        let mut g = Grow::starting(Streams::Fixed(5), 1, None, t0);
        assert_eq!(g.more(t0, 0, None), 4);
        assert_eq!(g.more(t0 + ms(5000), 1 << 30, at(1, 1, 1, 1)), 0);
        let mut g = Grow::starting(Streams::Fixed(1), 4, None, t0);
        assert_eq!(g.more(t0, 0, None), 0);
        // Auto on a short path (start 1): one until the first period.
        let mut g = Grow::starting(Streams::Auto, 1, Some(ms(20)), t0);
        assert_eq!(g.more(t0 + ms(699), 1 << 20, None), 0);
    }

    #[test]
    fn the_counters_say_loss_before_window_before_nothing() {
        // Link-bound (a 100 Mbit/s path with room in the window).
        assert_eq!(
            need(None, at(700_000, 10_000, 8 << 20, 0)),
            Some(Need::Nothing)
        );
        // Window-bound half the time; the deltas count, not the totals.
        assert_eq!(
            need(None, at(700_000, 350_000, 8 << 20, 0)),
            Some(Need::Window)
        );
        let before = at(700_000, 350_000, 8 << 20, 0);
        assert_eq!(
            need(before, at(1_400_000, 360_000, 16 << 20, 0)),
            Some(Need::Nothing)
        );
        // Lossy (0.5 % resent), window-bound or not.
        assert_eq!(
            need(None, at(700_000, 0, 1 << 20, 5 << 10)),
            Some(Need::Loss)
        );
        assert_eq!(
            need(None, at(700_000, 700_000, 1 << 20, 5 << 10)),
            Some(Need::Loss)
        );
        // Nothing measured: the samples do not say.
        assert_eq!(need(None, None), None);
        assert_eq!(need(before, before), None);
    }

    /// A virtual path: each stream carries `per` bytes a second once out
    /// of slow start (its first 0.7 s, a linear ramp), the link caps the
    /// sum at `cap`; the first connection's counters say it was
    /// window-bound `limited` of its time and resent `resent` of its
    /// bytes. Runs `g` for `secs` in steps of 100 ms, from its start, and
    /// gives the streams open after each step.
    struct Path {
        per: f64,
        cap: f64,
        limited: f64,
        resent: f64,
    }

    impl Path {
        fn run(&self, g: &mut Grow, t0: Instant, secs: u64) -> Vec<u32> {
            let step = ms(100);
            let mut opened_at = vec![t0; g.more(t0, 0, None) as usize + 1];
            let (mut now, mut bytes, mut sent, mut busy) = (t0, 0u64, 0f64, 0u64);
            let mut counts = Vec::new();
            for _ in 0..secs * 10 {
                // Each stream's share of the step ending at now + step.
                let ramp = |at: Instant| (now + step - at).as_secs_f64().min(0.7) / 0.7;
                let own = self.per * ramp(opened_at[0]);
                let sum: f64 = opened_at.iter().map(|&at| self.per * ramp(at)).sum();
                let rate = sum.min(self.cap);
                bytes += (rate * step.as_secs_f64()) as u64;
                sent += own * rate / sum * step.as_secs_f64();
                busy += 100_000;
                now += step;
                let s = at(
                    busy,
                    (busy as f64 * self.limited) as u64,
                    sent as u64,
                    (sent * self.resent) as u64,
                );
                for _ in 0..g.more(now, bytes, s) {
                    opened_at.push(now);
                }
                counts.push(g.opened());
                assert_eq!(opened_at.len() as u32, g.opened());
            }
            counts
        }
    }

    /// Scenario b of bench/wan.sh, virtually: 1 Gbit/s at 100 ms, 0.5 %
    /// loss, a stream carries 230 Mbit/s. `auto` opens 4 at once, two
    /// more after each period: 8 (the cap) at 1.4 s, never more.
    #[test]
    fn on_a_lossy_long_path_auto_grows_two_at_a_time_to_the_cap() {
        let t0 = Instant::now();
        let lossy = Path {
            per: 230e6 / 8.0,
            cap: 125e6,
            limited: 0.5,
            resent: 0.005,
        };
        let mut g = Grow::starting(Streams::Auto, 4, Some(ms(100)), t0);
        let counts = lossy.run(&mut g, t0, 5);
        assert_eq!(counts[5], 4, "0.6 s: still measuring: {counts:?}");
        assert_eq!(counts[6], 6, "0.7 s: two more: {counts:?}");
        assert_eq!(counts[13], 8, "1.4 s: two more: {counts:?}");
        assert!(counts.iter().all(|&n| n <= MAX_STREAMS));
        assert_eq!(g.max, MAX_STREAMS);
    }

    /// Window-bound without loss (a stream carries 400 Mbit/s, the link
    /// 1 Gbit/s): one at a time, ending two periods after the rate
    /// stopped rising.
    #[test]
    fn window_bound_growth_is_one_at_a_time_and_ends_where_the_link_caps() {
        let t0 = Instant::now();
        let clean = Path {
            per: 50e6,
            cap: 125e6,
            limited: 0.6,
            resent: 0.0,
        };
        let mut g = Grow::starting(Streams::Auto, 1, Some(ms(100)), t0);
        let counts = clean.run(&mut g, t0, 10);
        assert_eq!(counts[6], 2, "0.7 s: one more: {counts:?}");
        let steps: Vec<u32> = counts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|&d| d <= 1), "one at a time: {counts:?}");
        let last = *counts.last().unwrap();
        assert!(
            (3..=4).contains(&last),
            "3 fill the link, 4 at most: {counts:?}"
        );
        assert_eq!(g.max, last, "growth is over: {counts:?}");
    }

    /// Where the link binds (no window limit, no loss: scenario c's
    /// 100 Mbit/s at 20 ms), nothing is added; on a path that drops
    /// packets but whose link one stream fills, two after the first
    /// period (a rise from nothing), then the flat throughput ends it.
    #[test]
    fn a_link_bound_path_gets_no_more_streams() {
        let t0 = Instant::now();
        let full = Path {
            per: 100e6,
            cap: 12.5e6,
            limited: 0.0,
            resent: 0.0,
        };
        let mut g = Grow::starting(Streams::Auto, 1, Some(ms(20)), t0);
        assert!(full.run(&mut g, t0, 5).iter().all(|&n| n == 1));
        let dropping = Path {
            resent: 0.01,
            ..full
        };
        let mut g = Grow::starting(Streams::Auto, 1, Some(ms(20)), t0);
        let counts = dropping.run(&mut g, t0, 5);
        assert_eq!(
            counts[6], 3,
            "the first period rose from nothing: {counts:?}"
        );
        assert_eq!(*counts.last().unwrap(), 3, "{counts:?}");
        assert_eq!(g.max, 3, "two flat periods ended the growth");
    }

    #[test]
    fn a_long_round_trip_measures_longer() {
        let t0 = Instant::now();
        let mut g = Grow::starting(Streams::Auto, 1, Some(ms(300)), t0);
        let s = at(1_000_000, 900_000, 1 << 20, 0);
        assert_eq!(g.more(t0 + ms(2000), 1 << 20, s), 0, "7 round trips: 2.1 s");
        assert_eq!(g.more(t0 + ms(2100), 1 << 20, s), 1);
    }
}
