//! Whether to feed systemd's watchdog: the loop being alive is not enough, a running sweep
//! must also be moving (see `crate::progress`).
//!
//! Fed at every watchdog event (half the interval) unless a sweep is running and its
//! progress count has not changed for `stall` (one whole watchdog interval). Then the
//! agent stops feeding, says so once, and systemd kills and restarts it within one more
//! interval: a hung sweep ends after at most twice `WatchdogSec=`.

use std::time::{Duration, Instant};

pub struct Liveness {
    stall: Duration,
    seen: u64,
    since: Instant,
    reported: bool,
}

/// What to do at a watchdog event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Feed,
    /// The sweep has been stuck this long: do not feed; log (only the first time).
    Starve {
        stuck: Duration,
        first: bool,
    },
}

impl Liveness {
    pub fn new(stall: Duration, count: u64) -> Liveness {
        Liveness {
            stall,
            seen: count,
            since: Instant::now(),
            reported: false,
        }
    }

    /// `running`: a sweep is in progress; `count`: the progress count now.
    pub fn check(&mut self, running: bool, count: u64, now: Instant) -> Verdict {
        if !running || count != self.seen {
            // Idle time and moving sweeps both restart the clock.
            self.seen = count;
            self.since = now;
            self.reported = false;
            return Verdict::Feed;
        }
        let stuck = now.saturating_duration_since(self.since);
        if stuck < self.stall {
            return Verdict::Feed;
        }
        let first = !self.reported;
        self.reported = true;
        Verdict::Starve { stuck, first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_while_idle_or_moving_and_starves_a_stuck_sweep() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let stall = Duration::from_secs(10);
        let mut l = Liveness::new(stall, 0);
        // Idle for a long time: fed, and the clock restarts.
        assert_eq!(l.check(false, 0, at(600)), Verdict::Feed);
        // A sweep starts and moves.
        assert_eq!(l.check(true, 5, at(601)), Verdict::Feed);
        assert_eq!(l.check(true, 9, at(610)), Verdict::Feed);
        // Stuck, but not yet for a whole interval.
        assert_eq!(l.check(true, 9, at(615)), Verdict::Feed);
        // Stuck for the interval: starved, reported once.
        assert_eq!(
            l.check(true, 9, at(620)),
            Verdict::Starve {
                stuck: stall,
                first: true
            }
        );
        assert!(matches!(
            l.check(true, 9, at(625)),
            Verdict::Starve { first: false, .. }
        ));
        // It moves again: fed again.
        assert_eq!(l.check(true, 10, at(626)), Verdict::Feed);
    }
}
