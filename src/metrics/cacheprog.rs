//! The cache program's series: what `gocache-warden cacheprog` served each user, read by the
//! agent from the counters file in that user's own cache after each sweep.
//!
//! The values are totals the program keeps, not events the agent saw, so each series is set
//! to the file's figure: it only ever grows by the difference, and goes back to the file's
//! value only when the file itself went back (a user deleted it), which Prometheus reads as
//! a counter reset. A scrape between two updates therefore never sees a false reset.

use prometheus::{IntCounterVec, Registry};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CacheprogSnapshot, counter};

pub const NAMES: &[&str] = &[
    "gocache_warden_cacheprog_hits_total",
    "gocache_warden_cacheprog_served_bytes_total",
    "gocache_warden_cacheprog_misses_total",
    "gocache_warden_cacheprog_refused_total",
    "gocache_warden_cacheprog_puts_total",
    "gocache_warden_cacheprog_put_bytes_total",
    "gocache_warden_cacheprog_redirected_total",
];

const SOURCES: [&str; 2] = ["shared", "own"];
const REFUSALS: [&str; 2] = ["tampered", "untrusted"];

pub struct Families {
    hits: IntCounterVec,
    served: IntCounterVec,
    misses: IntCounterVec,
    refused: IntCounterVec,
    puts: IntCounterVec,
    put_bytes: IntCounterVec,
    redirected: IntCounterVec,
    /// Cache path → (kind label, user label) of its series, to remove them.
    labels: HashMap<PathBuf, (&'static str, String)>,
}

/// Sets a counter to `v`: adds the difference, or resets first when the source went back.
fn set(c: &prometheus::IntCounter, v: u64) {
    let now = c.get();
    if v < now {
        c.reset();
        c.inc_by(v);
    } else {
        c.inc_by(v - now);
    }
}

impl Families {
    pub fn new(r: &Registry) -> anyhow::Result<Families> {
        let user = &["cache", "kind", "user"];
        Ok(Families {
            hits: counter(
                r,
                NAMES[0],
                "Cache program gets answered with a hit, by source (shared caches or the user's own)",
                &["cache", "kind", "user", "source"],
            )?,
            served: counter(
                r,
                NAMES[1],
                "Bytes of outputs the cache program served, by source",
                &["cache", "kind", "user", "source"],
            )?,
            misses: counter(r, NAMES[2], "Cache program gets found nowhere", user)?,
            refused: counter(
                r,
                NAMES[3],
                "Shared entries the cache program refused to serve, by reason",
                &["cache", "kind", "user", "reason"],
            )?,
            puts: counter(
                r,
                NAMES[4],
                "Outputs the cache program put into the user's own cache",
                user,
            )?,
            put_bytes: counter(
                r,
                NAMES[5],
                "Bytes the cache program put into the user's own cache",
                user,
            )?,
            redirected: counter(
                r,
                NAMES[6],
                "Builds whose GOCACHE was a shared cache: read verified, never written, their puts sent to this cache",
                user,
            )?,
            labels: HashMap::new(),
        })
    }

    /// Records one cache's counters (the user label follows the cache root's owner).
    pub fn observe(&mut self, s: &CacheprogSnapshot) {
        let c = s.path.to_string_lossy().into_owned();
        let k = s.kind.as_str();
        if let Some((ok, ou)) = self.labels.get(&s.path)
            && (*ok != k || *ou != s.user)
        {
            self.remove(&s.path);
        }
        let u = s.user.as_str();
        let l = [c.as_str(), k, u];
        for (src, hits, bytes) in [
            ("shared", s.shared_hits, s.shared_hit_bytes),
            ("own", s.own_hits, s.own_hit_bytes),
        ] {
            set(&self.hits.with_label_values(&[&c, k, u, src]), hits);
            set(&self.served.with_label_values(&[&c, k, u, src]), bytes);
        }
        set(&self.misses.with_label_values(&l), s.misses);
        set(
            &self.refused.with_label_values(&[&c, k, u, "tampered"]),
            s.refused_tampered,
        );
        set(
            &self.refused.with_label_values(&[&c, k, u, "untrusted"]),
            s.refused_untrusted,
        );
        set(&self.puts.with_label_values(&l), s.puts);
        set(&self.put_bytes.with_label_values(&l), s.put_bytes);
        set(&self.redirected.with_label_values(&l), s.redirected);
        self.labels.insert(s.path.clone(), (k, s.user.clone()));
    }

    /// Removes one cache's series (it left the policy, or its owner changed).
    pub fn remove(&mut self, path: &Path) {
        let Some((k, u)) = self.labels.remove(path) else {
            return;
        };
        let c = path.to_string_lossy().into_owned();
        let l = [c.as_str(), k, u.as_str()];
        // Removal errors only mean the series was never created; nothing to undo.
        for src in SOURCES {
            let _ = self.hits.remove_label_values(&[&c, k, &u, src]);
            let _ = self.served.remove_label_values(&[&c, k, &u, src]);
        }
        for why in REFUSALS {
            let _ = self.refused.remove_label_values(&[&c, k, &u, why]);
        }
        let _ = self.misses.remove_label_values(&l);
        let _ = self.puts.remove_label_values(&l);
        let _ = self.put_bytes.remove_label_values(&l);
        let _ = self.redirected.remove_label_values(&l);
    }

    /// Keeps only the series of `caches`.
    pub fn retain(&mut self, caches: &[PathBuf]) {
        let gone: Vec<PathBuf> = self
            .labels
            .keys()
            .filter(|p| !caches.contains(p))
            .cloned()
            .collect();
        for p in gone {
            self.remove(&p);
        }
    }
}
