//! The background verification's series (`integrity::background` in the agent): bytes and
//! outputs hashed, problems found, what was done about them, and when a pass last ended.

use prometheus::{GaugeVec, IntCounterVec, Registry};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CacheKind, counter, gauge};

pub const NAMES: &[&str] = &[
    "gocache_warden_integrity_hashed_bytes_total",
    "gocache_warden_integrity_verified_outputs_total",
    "gocache_warden_integrity_problems_total",
    "gocache_warden_integrity_actions_total",
    "gocache_warden_integrity_last_pass_timestamp_seconds",
];

pub const PROBLEMS: [&str; 4] = ["tampered", "untrusted", "unverifiable", "incomplete"];
pub const ACTIONS: [&str; 3] = ["evicted", "quarantined", "failed"];

/// What one slice of background verification did in one cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntegritySlice {
    pub path: PathBuf,
    pub kind: CacheKind,
    pub bytes: u64,
    pub outputs: u64,
    /// By problem ([`PROBLEMS`]).
    pub problems: [u64; 4],
    /// By action ([`ACTIONS`]).
    pub actions: [u64; 3],
    /// Unix time the pass ended, if this slice ended it.
    pub pass_ended: Option<f64>,
}

pub struct Families {
    bytes: IntCounterVec,
    outputs: IntCounterVec,
    problems: IntCounterVec,
    actions: IntCounterVec,
    last_pass: GaugeVec,
    kinds: HashMap<PathBuf, &'static str>,
}

impl Families {
    pub fn new(r: &Registry) -> anyhow::Result<Families> {
        let cache = &["cache", "kind"];
        Ok(Families {
            bytes: counter(
                r,
                NAMES[0],
                "Bytes of outputs hashed by background verification",
                cache,
            )?,
            outputs: counter(
                r,
                NAMES[1],
                "Outputs hashed by background verification",
                cache,
            )?,
            problems: counter(
                r,
                NAMES[2],
                "Entries that failed background verification, by problem",
                &["cache", "kind", "problem"],
            )?,
            actions: counter(
                r,
                NAMES[3],
                "What background verification did with what failed (as the policy's untrusted says), by action",
                &["cache", "kind", "action"],
            )?,
            last_pass: gauge(
                r,
                NAMES[4],
                "Unix time the last complete background verification pass ended; 0 before the first",
                cache,
            )?,
            kinds: HashMap::new(),
        })
    }

    /// Declares the verified caches: new ones get every series at zero, others lose theirs.
    pub fn declare(&mut self, caches: &[(PathBuf, CacheKind)]) {
        let gone: Vec<PathBuf> = self
            .kinds
            .keys()
            .filter(|p| !caches.iter().any(|(c, _)| c == *p))
            .cloned()
            .collect();
        for p in gone {
            self.remove(&p);
        }
        for (path, kind) in caches {
            self.zero(path, *kind);
        }
    }

    /// Creates one cache's series at zero, unless it has them.
    fn zero(&mut self, path: &Path, kind: CacheKind) {
        if self.kinds.contains_key(path) {
            return;
        }
        let c = path.to_string_lossy().into_owned();
        let k = kind.as_str();
        self.bytes.with_label_values(&[&c, k]).reset();
        self.outputs.with_label_values(&[&c, k]).reset();
        for p in PROBLEMS {
            self.problems.with_label_values(&[&c, k, p]).reset();
        }
        for a in ACTIONS {
            self.actions.with_label_values(&[&c, k, a]).reset();
        }
        self.last_pass.with_label_values(&[&c, k]).set(0.0);
        self.kinds.insert(path.to_path_buf(), k);
    }

    pub fn observe(&mut self, s: &IntegritySlice) {
        self.zero(&s.path, s.kind);
        let c = s.path.to_string_lossy().into_owned();
        let k = s.kind.as_str();
        self.bytes.with_label_values(&[&c, k]).inc_by(s.bytes);
        self.outputs.with_label_values(&[&c, k]).inc_by(s.outputs);
        for (p, n) in PROBLEMS.iter().zip(s.problems) {
            self.problems.with_label_values(&[&c, k, p]).inc_by(n);
        }
        for (a, n) in ACTIONS.iter().zip(s.actions) {
            self.actions.with_label_values(&[&c, k, a]).inc_by(n);
        }
        if let Some(t) = s.pass_ended {
            self.last_pass.with_label_values(&[&c, k]).set(t);
        }
    }

    pub fn remove(&mut self, path: &Path) {
        let Some(k) = self.kinds.remove(path) else {
            return;
        };
        let c = path.to_string_lossy().into_owned();
        // Removal errors only mean the series was never created; nothing to undo.
        let _ = self.bytes.remove_label_values(&[&c, k]);
        let _ = self.outputs.remove_label_values(&[&c, k]);
        for p in PROBLEMS {
            let _ = self.problems.remove_label_values(&[&c, k, p]);
        }
        for a in ACTIONS {
            let _ = self.actions.remove_label_values(&[&c, k, a]);
        }
        let _ = self.last_pass.remove_label_values(&[&c, k]);
    }
}
