//! What inspection found, as plain data: the `check` report (caches, findings, the verdict)
//! and the snapshots and sweep outcomes that metrics and alerts both read ([`snapshot`]).
//!
//! This module sits below every subsystem that produces or consumes those facts (`check`,
//! `headroom`, `plan`, `integrity`, `users`, `metrics`, `alert`), so none of them has to
//! import another to share a type: the module graph stays acyclic.

pub mod snapshot;

use crate::policy::{CacheKind, CachePolicy, Scope};
use crate::safefs::FsStat;
use crate::scan::Observed;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Builds fail or the cache is unsafe.
    Error,
    /// The cache deviates from policy.
    Warning,
    /// Worth knowing; not a violation.
    Info,
}

/// One problem with a cache or the environment, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: String,
    pub severity: Severity,
    /// Entries affected (1 for cache-level findings).
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    pub message: String,
    /// The change `enforce` would make, or what a person must do.
    pub fix: String,
    /// Can `enforce` fix it by itself?
    pub auto_fix: bool,
    pub examples: Vec<String>,
}

/// A cache the policy covers, resolved to a path.
#[derive(Debug, Clone)]
pub struct Target {
    pub policy: CachePolicy,
    /// The directory, or why there is none (GOCACHE=off, relative, no HOME…).
    pub path: Result<PathBuf, String>,
    /// How the path was found: "policy", or cmd/go's source ("set by ~/.config/go/env").
    pub source: String,
    /// Every entry should belong to this uid (single-user caches found by `auto`).
    pub owner_uid: Option<u32>,
    /// The resolved path is one no cache may have (a system or home directory, or another
    /// cache's): the cache is reported and left alone.
    pub refused: Option<String>,
    /// A per-user cache (`users`): whose, and where their home is.
    pub user: Option<CacheUser>,
}

/// The user a per-user cache belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
    /// How this directory was found: `"go env"` (as the user's login `go` resolves it),
    /// `"manager"` (their user manager's environment) or `"unit:NAME"` (a service of theirs).
    pub via: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub name: String,
    pub kind: CacheKind,
    pub path: Option<PathBuf>,
    pub source: String,
    pub exists: bool,
    pub limit_bytes: Option<u64>,
    pub low_water_bytes: Option<u64>,
    pub filesystem: Option<FsStat>,
    /// `min_free` and `min_free_inodes` resolved for the filesystem (bytes, inodes).
    pub min_free_bytes: Option<u64>,
    pub min_free_inodes: Option<u64>,
    pub observed: Option<Observed>,
    /// Owner uid → user name for `observed.owners`.
    pub owner_names: std::collections::BTreeMap<u32, String>,
    pub findings: Vec<Finding>,
    /// The cache could not be inspected (exit code 3).
    pub inspect_error: Option<String>,
    /// The cache (or, when it is to be created, the directory it goes in) is on a read-only
    /// mount: nothing is planned for it. Under the shipped unit this means its path is not in
    /// `ReadWritePaths=`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The root does not look like a Go cache of its kind (or the path is one no cache may
    /// have): nothing in it is inspected or changed, and `enforce` exits 1.
    pub refused: Option<String>,
    /// The user a per-user cache (`users`) belongs to.
    pub user: Option<String>,
    /// How a per-user cache was found: `"go env"` (the user's login `go`), `"manager"` (their
    /// user manager's environment) or `"unit:NAME"` (a service of theirs sets it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Who wrote into the cache over the last day, biggest first, as the running agent
    /// counted it (the `writers` module); `None` when no agent is counting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_writers: Option<Vec<TopWriter>>,
}

/// One of a cache's top writers (`check` with the agent running).
#[derive(Debug, Clone, Serialize)]
pub struct TopWriter {
    /// The written files' owner.
    pub user: String,
    /// The writer's systemd unit (empty outside one, or unknown).
    pub unit: String,
    pub bytes: u64,
    pub entries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub host: String,
    pub scope: Scope,
    pub generated_at: i64,
    pub policy_sources: Vec<String>,
    pub caches: Vec<CacheReport>,
    /// Problems of the Go environment itself (GOCACHE=off, stray caches, env files).
    pub environment: Vec<Finding>,
    /// How the running agent attributes writes (`check` only; `None`: no agent running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    pub compliant: bool,
    pub exit_code: i32,
}

/// Recomputes the verdict after findings were added (e.g. by `--verify`).
pub fn recompute(r: &mut Report) {
    let counts = |f: &&Finding| f.severity != Severity::Info;
    let violations = r
        .caches
        .iter()
        .flat_map(|c| &c.findings)
        .chain(&r.environment)
        .any(|f| counts(&f));
    let failed = r.caches.iter().any(|c| c.inspect_error.is_some());
    r.exit_code = if failed {
        3
    } else if violations {
        1
    } else {
        0
    };
    r.compliant = !violations && !failed;
}

/// What keeps a cache's bytes from eviction, by cause (allocated bytes). A size limit counts
/// all of a cache, as `du` does; when these keep it above its limit after eviction, the
/// cache is *held over its limit*, and reports say by what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Eviction units used more recently than `min_age` (and the few a sweep may not take,
    /// such as hardlinked records): the floor protects them.
    pub recent: u64,
    /// `fuzz/`: Go's fuzzing corpus, which `go` never trims; `go clean -fuzzcache` removes it.
    pub fuzz: u64,
    /// Entries outside Go's layout: never removed by the agent.
    pub foreign: u64,
    /// `gocache-warden-quarantine/`: evidence kept by `untrusted = "quarantine"`.
    pub quarantine: u64,
    /// The root, the shard directories, README, trim.txt and the like: Go's own layout.
    pub layout: u64,
}

impl Held {
    /// The causes' stable names (metric label values), in report order.
    pub const CAUSES: [&'static str; 5] = ["recent", "fuzz", "foreign", "quarantine", "layout"];

    /// What eviction may not take from the cache `obs` saw with floor `floor_secs`: units
    /// of the histogram older than the floor are what eviction can free; the rest of the
    /// units' bytes are held by the floor, and every other class is never evicted.
    pub fn of(obs: &crate::scan::Observed, floor_secs: i64) -> Held {
        use crate::scan::layout::Class;
        let class = |c: Class| obs.classes.get(&c).map_or(0, |u| u.bytes);
        let units = class(Class::Action)
            + class(Class::Output)
            + class(Class::Exec)
            + class(Class::ExecContent)
            + class(Class::Module);
        Held {
            recent: units.saturating_sub(obs.freeable(floor_secs)),
            fuzz: class(Class::Fuzz),
            foreign: class(Class::Foreign),
            quarantine: class(Class::Quarantine),
            layout: class(Class::Root) + class(Class::Shard) + class(Class::Meta),
        }
    }

    /// The causes with their names ([`Held::CAUSES`]) and bytes, in report order.
    pub fn causes(&self) -> [(&'static str, u64); 5] {
        [
            ("recent", self.recent),
            ("fuzz", self.fuzz),
            ("foreign", self.foreign),
            ("quarantine", self.quarantine),
            ("layout", self.layout),
        ]
    }

    pub fn total(&self) -> u64 {
        self.causes().iter().map(|(_, b)| b).sum()
    }

    /// E.g. "1.2 GiB used in the last 1d 0h (min_age), 2.0 GiB fuzz/ (go clean -fuzzcache)":
    /// the causes that hold at least 1% of what is held, largest first.
    pub fn describe(&self, floor: std::time::Duration) -> String {
        use crate::policy::value::{human_bytes, human_duration};
        let mut c: Vec<(&str, u64)> = self.causes().into_iter().filter(|(_, b)| *b > 0).collect();
        c.sort_by_key(|x| std::cmp::Reverse(x.1));
        let total = self.total().max(1);
        let parts: Vec<String> = c
            .iter()
            .enumerate()
            .filter(|(i, (_, b))| *i == 0 || b * 100 >= total)
            .map(|(_, (cause, b))| {
                let what = match *cause {
                    "recent" => format!("used in the last {} (min_age)", human_duration(floor)),
                    "fuzz" => "fuzz/ (Go's fuzzing corpus: go clean -fuzzcache)".to_string(),
                    "foreign" => "outside Go's layout (foreign entries)".to_string(),
                    "quarantine" => "quarantined (gocache-warden-quarantine/)".to_string(),
                    _ => "Go's layout (root, shards, README, trim.txt)".to_string(),
                };
                format!("{} {what}", human_bytes(*b))
            })
            .collect();
        parts.join(", ")
    }
}
