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
use serde::Serialize;
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
