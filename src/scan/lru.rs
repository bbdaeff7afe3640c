//! A last-use histogram: how eviction picks what goes without holding every entry in memory.
//!
//! One pass over the cache adds each evictable unit's age and size; the histogram then gives
//! the age cutoff that frees enough bytes, oldest first. A second pass removes every unit at
//! least that old. Because the decision is a single age threshold, the order is exactly LRU:
//! nothing kept is older than anything removed. Buckets are one minute wide for 60 days and
//! one hour wide up to 10 years (about 2 MiB), so over-eviction is at most one bucket.

const MINUTE_BUCKETS: u64 = 60 * 24 * 60;
const HOUR_BUCKETS: u64 = 24 * 365 * 10;
const BUCKETS: usize = (MINUTE_BUCKETS + HOUR_BUCKETS) as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    bytes: Vec<u64>,
    count: Vec<u32>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bytes: vec![0; BUCKETS],
            count: vec![0; BUCKETS],
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
    pub fn add(&mut self, age_secs: i64, bytes: u64) {
        let b = bucket(age_secs);
        self.bytes[b] += bytes;
        self.count[b] = self.count[b].saturating_add(1);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.bytes.iter_mut().zip(&o.bytes) {
            *a += b;
        }
        for (a, b) in self.count.iter_mut().zip(&o.count) {
            *a = a.saturating_add(*b);
        }
    }

    /// Units and bytes at least `age` old (whole buckets from the one `age` falls in).
    pub fn at_least(&self, age: i64) -> (u64, u64) {
        let from = bucket(age);
        let bytes = self.bytes[from..].iter().sum();
        let count = self.count[from..].iter().map(|c| u64::from(*c)).sum();
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
            bytes += self.bytes[b];
            entries += u64::from(self.count[b]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_oldest_first() {
        let mut h = Histogram::default();
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
