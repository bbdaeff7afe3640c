//! `gocache_warden_cache_written_bytes_total{cache,user,unit}` and
//! `gocache_warden_cache_written_entries_total{…}`: what each user and systemd unit wrote
//! into each build cache, as fanotify reported it (the `writers` module).
//!
//! Bounded like the per-user gauges: per cache, the first `top_users` (user, unit) pairs
//! that write get their own series, and every later pair adds to `user="other",
//! unit="other"`. First rather than biggest, because these are counters: a pair moving
//! between its own series and `other` would make both go backwards, which Prometheus reads
//! as a reset. The pairs that write first are, in practice, the cache's regular writers.

use prometheus::{IntCounterVec, Registry};
use std::collections::{HashMap, HashSet};

use super::counter;

pub const BYTES: &str = "gocache_warden_cache_written_bytes_total";
pub const ENTRIES: &str = "gocache_warden_cache_written_entries_total";

pub struct Families {
    bytes: IntCounterVec,
    entries: IntCounterVec,
    /// Per cache, the (user, unit) pairs that have their own series.
    own: HashMap<String, HashSet<(String, String)>>,
}

impl Families {
    pub fn new(r: &Registry) -> anyhow::Result<Families> {
        let labels = &["cache", "user", "unit"];
        Ok(Families {
            bytes: counter(
                r,
                BYTES,
                "Allocated bytes of files written into a build cache, by the files' owner and the writer's systemd unit (empty outside one); the first top_users pairs per cache, the rest as other",
                labels,
            )?,
            entries: counter(
                r,
                ENTRIES,
                "Cache entries (action records) written into a build cache, labelled like gocache_warden_cache_written_bytes_total",
                labels,
            )?,
            own: HashMap::new(),
        })
    }

    pub fn add(
        &mut self,
        top: usize,
        cache: &str,
        user: &str,
        unit: &str,
        bytes: u64,
        entries: u64,
    ) {
        let own = self.own.entry(cache.to_string()).or_default();
        let key = (user.to_string(), unit.to_string());
        let (user, unit) = if own.contains(&key) || own.len() < top {
            own.insert(key);
            (user, unit)
        } else {
            (super::OTHER_USER, super::OTHER_USER)
        };
        self.bytes
            .with_label_values(&[cache, user, unit])
            .inc_by(bytes);
        self.entries
            .with_label_values(&[cache, user, unit])
            .inc_by(entries);
    }

    /// Forgets a cache that left the policy.
    pub fn remove(&mut self, cache: &str) {
        if let Some(own) = self.own.remove(cache) {
            for (user, unit) in own
                .iter()
                .map(|(u, n)| (u.as_str(), n.as_str()))
                .chain([(super::OTHER_USER, super::OTHER_USER)])
            {
                let _ = self.bytes.remove_label_values(&[cache, user, unit]);
                let _ = self.entries.remove_label_values(&[cache, user, unit]);
            }
        }
    }
}
