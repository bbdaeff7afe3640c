//! A last-use histogram: how eviction picks what goes without holding every entry in memory.
//!
//! One pass over the cache adds each evictable unit's age and size (a unit is what apply removes
//! together: an action record with the output it names, an orphan output, an executable, a
//! module version; see `scan::units`); the histogram then gives the age cutoff that frees
//! enough bytes, oldest first. Only evictable bytes are in it: a size limit is a limit on them
//! (`fuzz/`, the shards, foreign entries are never evicted and never count towards it). A second pass removes every unit at
//! least that old. Because the decision is a single age threshold, the order is exactly LRU:
//! nothing kept is older than anything removed. Buckets are one minute wide for 60 days and
//! one hour wide up to 10 years (about 2 MiB), so over-eviction is at most one bucket. The
//! walk's threads share one histogram (relaxed atomic adds; two entries rarely land in the
//! same minute at the same instant), so memory does not grow with the thread count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

const MINUTE_BUCKETS: u64 = 60 * 24 * 60;
const HOUR_BUCKETS: u64 = 24 * 365 * 10;
const BUCKETS: usize = (MINUTE_BUCKETS + HOUR_BUCKETS) as usize;

#[derive(Debug)]
pub struct Histogram {
    bytes: Vec<AtomicU64>,
    count: Vec<AtomicU32>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bytes: std::iter::repeat_with(AtomicU64::default)
                .take(BUCKETS)
                .collect(),
            count: std::iter::repeat_with(AtomicU32::default)
                .take(BUCKETS)
                .collect(),
        }
    }
}

fn bucket(age_secs: i64) -> usize {
    let m = (age_secs.max(0) as u64) / 60;
    let b = if m < MINUTE_BUCKETS {
        m
    } else {
        MINUTE_BUCKETS + ((m - MINUTE_BUCKETS) / 60).min(HOUR_BUCKETS - 1)
    };
    b as usize
}

/// The smallest age (seconds) that falls into bucket `b`.
fn lower_bound(b: usize) -> i64 {
    let b = b as u64;
    let mins = if b < MINUTE_BUCKETS {
        b
    } else {
        MINUTE_BUCKETS + (b - MINUTE_BUCKETS) * 60
    };
    (mins * 60) as i64
}

/// The outcome of asking for a cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// Evict every unit at least this old (seconds).
    pub min_age_secs: i64,
    /// What the histogram says that frees.
    pub entries: u64,
    pub bytes: u64,
    /// The floor stopped us short of the goal.
    pub floor_limited: bool,
}

impl Histogram {
    pub fn add(&self, age_secs: i64, bytes: u64) {
        let b = bucket(age_secs);
        self.bytes[b].fetch_add(bytes, Relaxed);
        // 4 billion units of one minute would wrap; saturate instead.
        let _ = self.count[b].fetch_update(Relaxed, Relaxed, |c| c.checked_add(1));
    }

    /// Adds bytes to a unit already counted (an output freed with the action naming it).
    pub fn add_bytes(&self, age_secs: i64, bytes: u64) {
        self.bytes[bucket(age_secs)].fetch_add(bytes, Relaxed);
    }

    /// Every unit and byte in the histogram: what eviction could ever free.
    pub fn total(&self) -> (u64, u64) {
        self.at_least(0)
    }

    /// The cutoff for a size limit on a cache of `used` bytes (all of it, as `du` counts:
    /// what is never evicted counts too): `None` while `used` is within `limit`, else the
    /// oldest-first cutoff that frees `used - low` (never below `floor_secs`).
    /// `floor_limited` then says that what may not go (young units, `fuzz/`, foreign
    /// entries…) holds the cache above `low`.
    pub fn size_cutoff(&self, used: u64, limit: u64, low: u64, floor_secs: i64) -> Option<Cutoff> {
        (used > limit).then(|| self.cutoff(used - low.min(used), floor_secs))
    }

    fn bytes_at(&self, b: usize) -> u64 {
        self.bytes[b].load(Relaxed)
    }

    fn count_at(&self, b: usize) -> u64 {
        u64::from(self.count[b].load(Relaxed))
    }

    /// Each non-empty bucket from the one `age` falls in, oldest last: (the youngest age in
    /// it, but not below `age`; units; bytes).
    pub fn buckets_from(&self, age: i64) -> impl Iterator<Item = (i64, u64, u64)> + '_ {
        (bucket(age)..BUCKETS).filter_map(move |b| {
            let n = self.count_at(b);
            let bytes = self.bytes_at(b);
            (n > 0 || bytes > 0).then(|| (lower_bound(b).max(age), n, bytes))
        })
    }

    /// Units and bytes a cutoff could ever reach with floor `floor_secs`: the buckets
    /// [`Histogram::cutoff`] may take, i.e. without the floor's own bucket when part of it is
    /// younger than the floor (ages are kept per minute, so a unit in it may be).
    pub fn past_floor(&self, floor_secs: i64) -> (u64, u64) {
        let fb = bucket(floor_secs);
        let from = if lower_bound(fb) < floor_secs {
            fb + 1
        } else {
            fb
        };
        let bytes = (from..BUCKETS).map(|b| self.bytes_at(b)).sum();
        let count = (from..BUCKETS).map(|b| self.count_at(b)).sum();
        (count, bytes)
    }

    /// Units and bytes at least `age` old (whole buckets from the one `age` falls in).
    pub fn at_least(&self, age: i64) -> (u64, u64) {
        let from = bucket(age);
        let bytes = (from..BUCKETS).map(|b| self.bytes_at(b)).sum();
        let count = (from..BUCKETS).map(|b| self.count_at(b)).sum();
        (count, bytes)
    }

    /// The cutoff that frees at least `need` bytes oldest-first, never going below
    /// `floor_secs` of age.
    pub fn cutoff(&self, need: u64, floor_secs: i64) -> Cutoff {
        let floor_bucket = bucket(floor_secs);
        let (mut bytes, mut entries) = (0u64, 0u64);
        for b in (0..BUCKETS).rev() {
            if b < floor_bucket || (b == floor_bucket && lower_bound(b) < floor_secs) {
                break;
            }
            bytes += self.bytes_at(b);
            entries += self.count_at(b);
            if bytes >= need {
                return Cutoff {
                    min_age_secs: lower_bound(b),
                    entries,
                    bytes,
                    floor_limited: false,
                };
            }
        }
        // Not enough above the floor: take everything old enough to go, and say so.
        let (fe, fb) = self.at_least(floor_secs);
        Cutoff {
            min_age_secs: floor_secs,
            entries: fe,
            bytes: fb,
            floor_limited: true,
        }
    }
}

/// The one age cutoff over several caches' histograms, each with its own floor (min_age),
/// that frees at least `need_bytes` and `need_entries`: least recently used first, whichever
/// cache holds it. `floor_limited` when even everything past the floors is not enough (then
/// `min_age_secs` is 0 and each cache stops at its own floor).
pub fn joint_cutoff(hs: &[(&Histogram, i64)], need_bytes: u64, need_entries: u64) -> Cutoff {
    let allowed = |b: usize, floor: i64| {
        let fb = bucket(floor);
        b > fb || (b == fb && lower_bound(b) >= floor)
    };
    let (mut bytes, mut entries) = (0u64, 0u64);
    for b in (0..BUCKETS).rev() {
        let mut any = false;
        for (h, floor) in hs {
            if allowed(b, *floor) {
                any = true;
                bytes += h.bytes_at(b);
                entries += h.count_at(b);
            }
        }
        if !any {
            // Below every floor; older buckets were all counted.
            break;
        }
        if bytes >= need_bytes && entries >= need_entries {
            return Cutoff {
                min_age_secs: lower_bound(b),
                entries,
                bytes,
                floor_limited: false,
            };
        }
    }
    Cutoff {
        min_age_secs: 0,
        entries,
        bytes,
        floor_limited: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_cutoff_is_oldest_first_across_caches_with_their_floors() {
        let (a, b) = (Histogram::default(), Histogram::default());
        for d in 1..=10 {
            a.add(d * 86400, 100);
            b.add(d * 86400 + 3600, 10);
        }
        // 3 oldest days of both: 330 bytes, 6 entries.
        let c = joint_cutoff(&[(&a, 86400), (&b, 86400)], 300, 0);
        assert_eq!(c.min_age_secs, 8 * 86400);
        assert_eq!((c.entries, c.bytes), (6, 330));
        // Entries decide: the 7th oldest is b's at 7 days and an hour.
        let c = joint_cutoff(&[(&a, 86400), (&b, 86400)], 0, 7);
        assert_eq!(c.min_age_secs, 7 * 86400 + 3600);
        // b's floor of 9 days keeps its younger entries whatever a gives up.
        let c = joint_cutoff(&[(&a, 0), (&b, 9 * 86400)], 2000, 0);
        assert!(c.floor_limited);
        assert_eq!(c.bytes, 1000 + 20);
    }

    #[test]
    fn cutoff_oldest_first() {
        let h = Histogram::default();
        for d in 1..=10 {
            h.add(d * 86400, 100);
        }
        let c = h.cutoff(250, 86400);
        assert_eq!(c.min_age_secs, 8 * 86400);
        assert_eq!((c.entries, c.bytes), (3, 300));
        assert!(!c.floor_limited);
        let c = h.cutoff(10_000, 5 * 86400);
        assert!(c.floor_limited);
        assert_eq!(c.min_age_secs, 5 * 86400);
        assert_eq!(c.bytes, 600);
    }

    #[test]
    fn buckets_are_monotone() {
        let mut last = 0;
        for age in (0..20 * 365 * 86400i64).step_by(3607) {
            let b = bucket(age);
            assert!(b >= last);
            assert!(lower_bound(b) <= age.max(0) || b == BUCKETS - 1);
            last = b;
        }
    }
}
