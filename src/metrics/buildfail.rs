//! `gocache_warden_build_failures_total{reason,cache,user,unit}`: Go builds that failed
//! because of a cache, as the journal follower recognised them (`crate::buildfail`).
//!
//! Every label but `reason` comes from what users run, so the series are bounded: after
//! [`MAX_SERIES`] label sets a new one is counted with `user` and `unit` `other` (its
//! reason and cache kept: what failed matters more than who).

use prometheus::{IntCounterVec, Registry};
use std::collections::HashSet;

use super::counter;

pub const NAME: &str = "gocache_warden_build_failures_total";

/// Distinct label sets kept before new ones fold into `user="other", unit="other"`.
pub const MAX_SERIES: usize = 1000;

pub struct Family {
    failures: IntCounterVec,
    seen: HashSet<[String; 4]>,
}

impl Family {
    pub fn new(r: &Registry) -> anyhow::Result<Family> {
        Ok(Family {
            failures: counter(
                r,
                NAME,
                "Go builds that failed because of a cache, by reason (closed set), cache (empty when none was named), user and systemd unit (empty outside one), from the journal",
                &["reason", "cache", "user", "unit"],
            )?,
            seen: HashSet::new(),
        })
    }

    pub fn inc(&mut self, reason: &str, cache: &str, user: &str, unit: &str) {
        let mut l = [reason, cache, user, unit].map(str::to_string);
        if !self.seen.contains(&l) {
            if self.seen.len() >= MAX_SERIES {
                l[2] = super::OTHER_USER.to_string();
                l[3] = super::OTHER_USER.to_string();
            } else {
                self.seen.insert(l.clone());
            }
        }
        self.failures
            .with_label_values(&[&l[0], &l[1], &l[2], &l[3]])
            .inc();
    }
}
