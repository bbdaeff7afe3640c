//! Plain-data inputs that the scanner and sweeper hand to observability: one
//! [`CacheSnapshot`] per cache per scan and one [`SweepOutcome`] per cache per sweep.
//!
//! These types carry facts only. They do not compute anything and do no I/O; the
//! exporter (`metrics`) and the alert evaluator (`alert`) both read them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Which kind of Go cache a path holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// A build cache (`GOCACHE`).
    #[default]
    Build,
    /// A module cache (`GOMODCACHE`).
    Module,
}

impl CacheKind {
    /// The label value used in metrics and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::Build => "build",
            CacheKind::Module => "module",
        }
    }
}

/// Bytes one user owns inside a cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerUsage {
    pub uid: u32,
    /// The user name; empty when the uid has no passwd entry (the uid is shown instead).
    pub name: String,
    pub bytes: u64,
}

impl OwnerUsage {
    /// The name to show: the user name, or the numeric uid when there is none.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.uid.to_string()
        } else {
            self.name.clone()
        }
    }
}

/// What one scan of one cache found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheSnapshot {
    /// Absolute path of the cache root.
    pub path: PathBuf,
    /// The user whose own cache this is (a per-user cache of `users`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How a per-user cache was found: `go env`, `manager` or `unit:NAME` (`users::CacheUser`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub kind: CacheKind,
    /// Bytes of disk blocks the entries use (`st_blocks * 512`).
    pub allocated_bytes: u64,
    /// Sum of `st_size`.
    pub apparent_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    /// Entries the scan that produced this snapshot walked (added to a counter: 0 for a
    /// snapshot that walked nothing).
    pub inspected_entries: u64,
    /// Inodes used and total on the filesystem holding the cache (`statvfs`).
    pub fs_inodes_used: u64,
    pub fs_inodes_total: u64,
    /// Bytes available to unprivileged users and total size of that filesystem.
    pub fs_free_bytes: u64,
    pub fs_size_bytes: u64,
    /// The policy's size limit, if any.
    pub limit_bytes: Option<u64>,
    /// Age of the least recently used entry; `None` for an empty cache.
    pub oldest_age_seconds: Option<f64>,
    /// Usage per owner, in any order; the exporter keeps the top N and sums the rest.
    pub bytes_by_owner: Vec<OwnerUsage>,
    /// Compliance violations by kind (e.g. `mode`, `group`, `acl`) as they remain after the
    /// sweep (what it fixed is not counted); kinds not listed count as zero.
    pub violations: BTreeMap<String, u64>,
    /// Over its limit after the sweep for a reason the sweep could not take away (held over
    /// it, or nothing could be applied): what the over-limit alert fires on.
    pub over_limit: bool,
    /// When held over its limit: by what, e.g. "1.2 GiB used in the last 1d 0h (min_age),
    /// 2.0 GiB fuzz/ (…)" (`scan::Held::describe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_over: Option<String>,
    /// When held over its limit: the bytes each cause holds (`scan::Held::causes`); empty
    /// otherwise.
    pub held_bytes: BTreeMap<String, u64>,
}

/// Why entries were evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictReason {
    /// Unused for longer than the age limit.
    Age,
    /// Removed to bring the cache under its size limit.
    Size,
    /// Removed to restore the filesystem's free space or inodes (`min_free`).
    Free,
}

impl EvictReason {
    pub const ALL: [EvictReason; 3] = [EvictReason::Age, EvictReason::Size, EvictReason::Free];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Age => "age",
            EvictReason::Size => "size",
            EvictReason::Free => "free",
        }
    }
}

/// Bytes and entries removed for one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Evicted {
    pub bytes: u64,
    pub entries: u64,
}

/// What one sweep (evict + repair) of one cache did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepOutcome {
    pub path: PathBuf,
    pub kind: CacheKind,
    pub evicted: BTreeMap<EvictReason, Evicted>,
    /// Permission repairs made, by kind (e.g. `mode`, `group`, `setgid`, `acl`).
    pub fixes: BTreeMap<String, u64>,
    /// Errors met, by kind (e.g. `io`, `permission`, `lock`).
    pub errors: BTreeMap<String, u64>,
    pub duration: Duration,
    /// Whether the sweep finished without an error that stopped it.
    pub success: bool,
    /// When the sweep ended; the exporter publishes it as the last success time.
    pub finished_at: SystemTime,
}

impl SweepOutcome {
    /// What the sweep did, one phrase per action ("evicted 1048576 bytes in 3 entries by size").
    pub fn actions(&self) -> Vec<String> {
        let mut parts = Vec::new();
        for (reason, ev) in &self.evicted {
            if ev.entries > 0 || ev.bytes > 0 {
                parts.push(format!(
                    "evicted {} bytes in {} entries by {}",
                    ev.bytes,
                    ev.entries,
                    reason.as_str()
                ));
            }
        }
        for (kind, n) in &self.fixes {
            if *n > 0 {
                parts.push(format!("fixed {kind} on {n} paths"));
            }
        }
        for (kind, n) in &self.errors {
            if *n > 0 {
                parts.push(format!("met {n} {kind} errors"));
            }
        }
        if !self.success {
            parts.push("sweep failed".to_string());
        }
        parts
    }

    /// [`SweepOutcome::actions`] on one line, or "nothing to do".
    pub fn summary(&self) -> String {
        let parts = self.actions();
        if parts.is_empty() {
            "nothing to do".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// What `gocache-warden cacheprog` counted for the user of one (own) cache, as its counters
/// file says: totals since the file was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheprogSnapshot {
    /// The cache the program used as the user's own (where the counters live).
    pub path: PathBuf,
    pub kind: CacheKind,
    /// The user whose builds these are (the cache root's owner).
    pub user: String,
    pub shared_hits: u64,
    pub shared_hit_bytes: u64,
    pub own_hits: u64,
    pub own_hit_bytes: u64,
    pub misses: u64,
    /// Shared entries refused because their output's hash was not its name's.
    pub refused_tampered: u64,
    /// Shared entries refused because their owner was not a trusted writer.
    pub refused_untrusted: u64,
    pub puts: u64,
    pub put_bytes: u64,
    /// Builds whose `GOCACHE` was a shared cache, whose puts came to this cache instead.
    pub redirected: u64,
}
