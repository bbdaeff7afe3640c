//! Prometheus metrics for gocache-warden: the metric families, how scan and sweep
//! results map onto them, and the two ways to publish them (an atomically replaced
//! node_exporter textfile and a small `/metrics` HTTP listener).
//!
//! Metrics live in a [`prometheus::Registry`] the caller passes in; nothing here is
//! global, so tests read values right after an update without sleeping. This module
//! does not scan caches or decide anything: it only records what it is told. Every
//! name starts with `gocache_warden_`, uses base units, and counters end in `_total`.
//! Each declared cache always has all its series (zeros for known kinds), and a cache
//! dropped from the policy loses all of its series.

mod buildfail;
mod cacheprog;
pub mod http;
mod integrity;
pub mod textfile;
mod written;

pub use crate::report::snapshot::{
    CacheKind, CacheSnapshot, CacheprogSnapshot, EvictReason, Evicted, OwnerUsage, SweepOutcome,
};
pub use integrity::{ACTIONS as INTEGRITY_ACTIONS, IntegritySlice, PROBLEMS as INTEGRITY_PROBLEMS};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

/// Every metric name this exporter can emit. Tests check that dashboards and alert
/// rules only query names from this list.
pub const METRIC_NAMES: &[&str] = &[
    "gocache_warden_build_info",
    "gocache_warden_cache_allocated_bytes",
    "gocache_warden_cache_apparent_bytes",
    "gocache_warden_cache_files",
    "gocache_warden_cache_dirs",
    "gocache_warden_cache_limit_bytes",
    "gocache_warden_cache_oldest_entry_age_seconds",
    "gocache_warden_cache_user_bytes",
    "gocache_warden_cache_owner_info",
    "gocache_warden_cache_violations",
    "gocache_warden_cache_held_bytes",
    "gocache_warden_cache_inspected_entries_total",
    "gocache_warden_fs_inodes_used",
    "gocache_warden_fs_inodes_capacity",
    "gocache_warden_fs_free_bytes",
    "gocache_warden_fs_size_bytes",
    "gocache_warden_evicted_bytes_total",
    "gocache_warden_evicted_entries_total",
    "gocache_warden_permission_fixes_total",
    "gocache_warden_errors_total",
    "gocache_warden_sweeps_total",
    "gocache_warden_last_sweep_duration_seconds",
    "gocache_warden_last_successful_sweep_timestamp_seconds",
    "gocache_warden_units_missing_gocache",
    crate::alert::NOTIFICATIONS_METRIC,
    "gocache_warden_cacheprog_hits_total",
    "gocache_warden_cacheprog_served_bytes_total",
    "gocache_warden_cacheprog_misses_total",
    "gocache_warden_cacheprog_refused_total",
    "gocache_warden_cacheprog_puts_total",
    "gocache_warden_cacheprog_put_bytes_total",
    "gocache_warden_cacheprog_redirected_total",
    buildfail::NAME,
    written::BYTES,
    written::ENTRIES,
    "gocache_warden_integrity_hashed_bytes_total",
    "gocache_warden_integrity_verified_outputs_total",
    "gocache_warden_integrity_problems_total",
    "gocache_warden_integrity_actions_total",
    "gocache_warden_integrity_last_pass_timestamp_seconds",
];

/// The `user` label value that sums everyone outside the top N.
pub const OTHER_USER: &str = "other";

/// Knobs for the exporter; [`MetricsConfig::default`] is what the daemon uses.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// How many users get their own `user` label per cache; the rest are `other`.
    pub top_users: usize,
    /// Violation kinds always exported (as 0 when absent from a snapshot).
    pub violation_kinds: Vec<String>,
    /// Permission fix kinds always exported.
    pub fix_kinds: Vec<String>,
    /// Error kinds always exported.
    pub error_kinds: Vec<String>,
    /// Value of `gocache_warden_build_info{version}`.
    pub version: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        let kinds = |k: &[&str]| k.iter().map(|s| s.to_string()).collect();
        MetricsConfig {
            top_users: 10,
            violation_kinds: kinds(&["owner", "group", "mode", "setgid", "acl", "default_acl"]),
            fix_kinds: kinds(&["owner", "group", "mode", "setgid", "acl", "default_acl"]),
            error_kinds: kinds(&["io", "permission", "lock", "scan"]),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Label values in use for one cache, so they can be removed when it goes away.
#[derive(Debug, Default)]
struct CacheSeries {
    kind: &'static str,
    users: BTreeSet<String>,
    violations: BTreeSet<String>,
    fixes: BTreeSet<String>,
    errors: BTreeSet<String>,
    has_limit: bool,
    /// The `user` and `via` of `gocache_warden_cache_owner_info`, for a per-user cache.
    owner: Option<(String, String)>,
}

/// The exporter: metric families registered in a caller's registry plus the label
/// bookkeeping that keeps cardinality bounded and removes vanished caches.
pub struct Metrics {
    cfg: MetricsConfig,
    allocated: GaugeVec,
    apparent: GaugeVec,
    files: GaugeVec,
    dirs: GaugeVec,
    limit: GaugeVec,
    oldest_age: GaugeVec,
    user_bytes: GaugeVec,
    violations: GaugeVec,
    held: GaugeVec,
    inspected: IntCounterVec,
    inodes_used: GaugeVec,
    inodes_capacity: GaugeVec,
    fs_free: GaugeVec,
    fs_size: GaugeVec,
    evicted_bytes: IntCounterVec,
    evicted_entries: IntCounterVec,
    fixes: IntCounterVec,
    errors: IntCounterVec,
    sweeps: IntCounterVec,
    sweep_duration: GaugeVec,
    last_success: GaugeVec,
    units_missing: GaugeVec,
    owner_info: GaugeVec,
    cacheprog: Mutex<cacheprog::Families>,
    build_failures: Mutex<buildfail::Family>,
    written: Mutex<written::Families>,
    integrity: Mutex<integrity::Families>,
    state: Mutex<HashMap<PathBuf, CacheSeries>>,
}

const CACHE: &[&str] = &["cache", "kind"];

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .with_context(|| format!("invalid metric definition \"{name}\""))?;
    reg.register(Box::new(g.clone()))
        .with_context(|| format!("cannot register metric \"{name}\""))?;
    Ok(g)
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .with_context(|| format!("invalid metric definition \"{name}\""))?;
    reg.register(Box::new(c.clone()))
        .with_context(|| format!("cannot register metric \"{name}\""))?;
    Ok(c)
}

fn label(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl Metrics {
    /// Registers every family in `registry`. Fails if they are already registered there.
    pub fn new(registry: &Registry, cfg: MetricsConfig) -> Result<Metrics> {
        let r = registry;
        let build = gauge(
            r,
            "gocache_warden_build_info",
            "Build information of the running gocache-warden; always 1",
            &["version"],
        )?;
        build.with_label_values(&[cfg.version.as_str()]).set(1.0);
        let m = Metrics {
            allocated: gauge(
                r,
                "gocache_warden_cache_allocated_bytes",
                "Disk space allocated to cache entries (st_blocks)",
                CACHE,
            )?,
            apparent: gauge(
                r,
                "gocache_warden_cache_apparent_bytes",
                "Apparent size of cache entries (st_size)",
                CACHE,
            )?,
            files: gauge(
                r,
                "gocache_warden_cache_files",
                "Regular files in the cache",
                CACHE,
            )?,
            dirs: gauge(
                r,
                "gocache_warden_cache_dirs",
                "Directories in the cache",
                CACHE,
            )?,
            limit: gauge(
                r,
                "gocache_warden_cache_limit_bytes",
                "Size limit from the policy; absent when the cache has none",
                CACHE,
            )?,
            oldest_age: gauge(
                r,
                "gocache_warden_cache_oldest_entry_age_seconds",
                "Time since the least recently used entry was last used; 0 when empty",
                CACHE,
            )?,
            user_bytes: gauge(
                r,
                "gocache_warden_cache_user_bytes",
                "Disk space owned per user: top N users, the rest as user=\"other\"",
                &["cache", "kind", "user"],
            )?,
            violations: gauge(
                r,
                "gocache_warden_cache_violations",
                "Compliance violations that remain after the last sweep, by kind",
                &["cache", "kind", "violation"],
            )?,
            held: gauge(
                r,
                "gocache_warden_cache_held_bytes",
                "While the cache is held over its size limit after a sweep: the bytes eviction may not take, by cause (recent: used within min_age; fuzz; foreign; quarantine; layout); 0 otherwise",
                &["cache", "kind", "cause"],
            )?,
            inspected: counter(
                r,
                "gocache_warden_cache_inspected_entries_total",
                "Entries (files and directories) the agent's sweeps walked in the cache: work that should follow what changed, not the size of the server",
                CACHE,
            )?,
            inodes_used: gauge(
                r,
                "gocache_warden_fs_inodes_used",
                "Inodes in use on the filesystem holding the cache",
                CACHE,
            )?,
            inodes_capacity: gauge(
                r,
                "gocache_warden_fs_inodes_capacity",
                "Total inodes of the filesystem holding the cache",
                CACHE,
            )?,
            fs_free: gauge(
                r,
                "gocache_warden_fs_free_bytes",
                "Bytes available to unprivileged users on the filesystem holding the cache",
                CACHE,
            )?,
            fs_size: gauge(
                r,
                "gocache_warden_fs_size_bytes",
                "Size of the filesystem holding the cache",
                CACHE,
            )?,
            evicted_bytes: counter(
                r,
                "gocache_warden_evicted_bytes_total",
                "Bytes evicted, by reason",
                &["cache", "kind", "reason"],
            )?,
            evicted_entries: counter(
                r,
                "gocache_warden_evicted_entries_total",
                "Entries evicted, by reason",
                &["cache", "kind", "reason"],
            )?,
            fixes: counter(
                r,
                "gocache_warden_permission_fixes_total",
                "Permission repairs made, by kind",
                &["cache", "kind", "fix"],
            )?,
            errors: counter(
                r,
                "gocache_warden_errors_total",
                "Errors met while sweeping, by kind",
                &["cache", "kind", "error"],
            )?,
            sweeps: counter(
                r,
                "gocache_warden_sweeps_total",
                "Sweeps run, by result (success or failure)",
                &["cache", "kind", "result"],
            )?,
            sweep_duration: gauge(
                r,
                "gocache_warden_last_sweep_duration_seconds",
                "Duration of the last sweep",
                CACHE,
            )?,
            last_success: gauge(
                r,
                "gocache_warden_last_successful_sweep_timestamp_seconds",
                "Unix time the last successful sweep ended; 0 before the first",
                CACHE,
            )?,
            units_missing: gauge(
                r,
                "gocache_warden_units_missing_gocache",
                "Units that run Go without an explicit GOCACHE",
                &[],
            )?,
            owner_info: gauge(
                r,
                "gocache_warden_cache_owner_info",
                "1 for a per-user cache (policy `users`), naming the user whose cache it is and how it was found (via: go env, manager, unit:NAME)",
                &["cache", "kind", "user", "via"],
            )?,
            cacheprog: Mutex::new(cacheprog::Families::new(r)?),
            build_failures: Mutex::new(buildfail::Family::new(r)?),
            written: Mutex::new(written::Families::new(r)?),
            integrity: Mutex::new(integrity::Families::new(r)?),
            cfg,
            state: Mutex::new(HashMap::new()),
        };
        m.units_missing.with_label_values::<&str>(&[]).set(0.0);
        Ok(m)
    }

    fn state(&self) -> MutexGuard<'_, HashMap<PathBuf, CacheSeries>> {
        // A panic elsewhere while holding the lock leaves label bookkeeping that is
        // still consistent enough to export; recover instead of propagating the poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares the caches of the current policy: new ones get all series at zero,
    /// caches no longer listed lose every series.
    pub fn set_caches(&self, caches: &[(PathBuf, CacheKind)]) {
        let mut state = self.state();
        let keep: HashMap<&Path, CacheKind> =
            caches.iter().map(|(p, k)| (p.as_path(), *k)).collect();
        let gone: Vec<PathBuf> = state
            .iter()
            .filter(|(p, s)| keep.get(p.as_path()).map(|k| k.as_str()) != Some(s.kind))
            .map(|(p, _)| p.clone())
            .collect();
        for path in gone {
            if let Some(series) = state.remove(&path) {
                self.remove_series(&path, &series);
            }
        }
        for (path, kind) in caches {
            self.ensure(&mut state, path, *kind);
        }
        let paths: Vec<PathBuf> = caches.iter().map(|(p, _)| p.clone()).collect();
        self.cacheprog().retain(&paths);
    }

    fn cacheprog(&self) -> MutexGuard<'_, cacheprog::Families> {
        // As for `state`: the label bookkeeping stays usable after a panic elsewhere.
        self.cacheprog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn integrity(&self) -> MutexGuard<'_, integrity::Families> {
        self.integrity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares the caches verified in the background: their series exist (zeros) from now
    /// on; caches no longer verified lose theirs.
    pub fn set_verified_caches(&self, caches: &[(PathBuf, CacheKind)]) {
        self.integrity().declare(caches);
    }

    /// Records one slice of background verification.
    pub fn observe_integrity(&self, s: &IntegritySlice) {
        self.integrity().observe(s);
    }

    /// Records what the cache program counted for the user of one cache.
    pub fn observe_cacheprog(&self, s: &CacheprogSnapshot) {
        self.cacheprog().observe(s);
    }

    /// Counts one build that failed because of a cache (`crate::buildfail`); empty strings
    /// where there is no cache or unit.
    pub fn observe_build_failure(&self, reason: &str, cache: &str, user: &str, unit: &str) {
        self.build_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .inc(reason, cache, user, unit);
    }

    /// Counts what one writer (the files' owner, and the unit it ran in) wrote into a build
    /// cache (the `writers` module).
    pub fn observe_written(&self, cache: &str, user: &str, unit: &str, bytes: u64, entries: u64) {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).add(
            self.cfg.top_users,
            cache,
            user,
            unit,
            bytes,
            entries,
        );
    }

    /// Removes every series of one cache (it left the policy).
    pub fn remove_cache(&self, path: &Path) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&path.to_string_lossy());
        let mut state = self.state();
        if let Some(series) = state.remove(path) {
            self.remove_series(path, &series);
        }
        self.cacheprog().remove(path);
    }

    fn ensure<'a>(
        &self,
        state: &'a mut HashMap<PathBuf, CacheSeries>,
        path: &Path,
        kind: CacheKind,
    ) -> &'a mut CacheSeries {
        if state.get(path).is_some_and(|s| s.kind != kind.as_str())
            && let Some(old) = state.remove(path)
        {
            self.remove_series(path, &old);
        }
        state.entry(path.to_path_buf()).or_insert_with(|| {
            let c = label(path);
            let k = kind.as_str();
            let l = [c.as_str(), k];
            for g in [
                &self.allocated,
                &self.apparent,
                &self.files,
                &self.dirs,
                &self.oldest_age,
                &self.inodes_used,
                &self.inodes_capacity,
                &self.fs_free,
                &self.fs_size,
                &self.sweep_duration,
                &self.last_success,
            ] {
                g.with_label_values(&l).set(0.0);
            }
            let mut s = CacheSeries {
                kind: k,
                ..CacheSeries::default()
            };
            self.user_bytes
                .with_label_values(&[c.as_str(), k, OTHER_USER])
                .set(0.0);
            s.users.insert(OTHER_USER.to_string());
            for v in &self.cfg.violation_kinds {
                self.violations
                    .with_label_values(&[c.as_str(), k, v])
                    .set(0.0);
                s.violations.insert(v.clone());
            }
            for cause in crate::report::Held::CAUSES {
                self.held
                    .with_label_values(&[c.as_str(), k, cause])
                    .set(0.0);
            }
            for r in EvictReason::ALL {
                self.evicted_bytes
                    .with_label_values(&[c.as_str(), k, r.as_str()])
                    .reset();
                self.evicted_entries
                    .with_label_values(&[c.as_str(), k, r.as_str()])
                    .reset();
            }
            for f in &self.cfg.fix_kinds {
                self.fixes.with_label_values(&[c.as_str(), k, f]).reset();
                s.fixes.insert(f.clone());
            }
            for e in &self.cfg.error_kinds {
                self.errors.with_label_values(&[c.as_str(), k, e]).reset();
                s.errors.insert(e.clone());
            }
            for result in ["success", "failure"] {
                self.sweeps
                    .with_label_values(&[c.as_str(), k, result])
                    .reset();
            }
            self.inspected.with_label_values(&l).reset();
            s
        })
    }

    fn remove_series(&self, path: &Path, s: &CacheSeries) {
        let c = label(path);
        let l = [c.as_str(), s.kind];
        // Removal errors only mean the series was never created; nothing to undo.
        for g in [
            &self.allocated,
            &self.apparent,
            &self.files,
            &self.dirs,
            &self.limit,
            &self.oldest_age,
            &self.inodes_used,
            &self.inodes_capacity,
            &self.fs_free,
            &self.fs_size,
            &self.sweep_duration,
            &self.last_success,
        ] {
            let _ = g.remove_label_values(&l);
        }
        let _ = self.inspected.remove_label_values(&l);
        for u in &s.users {
            let _ = self
                .user_bytes
                .remove_label_values(&[c.as_str(), s.kind, u]);
        }
        if let Some((u, via)) = &s.owner {
            let _ = self
                .owner_info
                .remove_label_values(&[c.as_str(), s.kind, u, via]);
        }
        for v in &s.violations {
            let _ = self
                .violations
                .remove_label_values(&[c.as_str(), s.kind, v]);
        }
        for cause in crate::report::Held::CAUSES {
            let _ = self.held.remove_label_values(&[c.as_str(), s.kind, cause]);
        }
        for r in EvictReason::ALL {
            let _ = self
                .evicted_bytes
                .remove_label_values(&[c.as_str(), s.kind, r.as_str()]);
            let _ = self
                .evicted_entries
                .remove_label_values(&[c.as_str(), s.kind, r.as_str()]);
        }
        for f in &s.fixes {
            let _ = self.fixes.remove_label_values(&[c.as_str(), s.kind, f]);
        }
        for e in &s.errors {
            let _ = self.errors.remove_label_values(&[c.as_str(), s.kind, e]);
        }
        for result in ["success", "failure"] {
            let _ = self
                .sweeps
                .remove_label_values(&[c.as_str(), s.kind, result]);
        }
    }

    /// Records a scan result. A cache not yet declared is declared on the fly.
    pub fn observe_snapshot(&self, snap: &CacheSnapshot) {
        let mut state = self.state();
        let series = self.ensure(&mut state, &snap.path, snap.kind);
        let c = label(&snap.path);
        let k = snap.kind.as_str();
        let l = [c.as_str(), k];
        self.allocated
            .with_label_values(&l)
            .set(snap.allocated_bytes as f64);
        self.apparent
            .with_label_values(&l)
            .set(snap.apparent_bytes as f64);
        self.files.with_label_values(&l).set(snap.files as f64);
        self.inspected
            .with_label_values(&l)
            .inc_by(snap.inspected_entries);
        self.dirs.with_label_values(&l).set(snap.dirs as f64);
        self.inodes_used
            .with_label_values(&l)
            .set(snap.fs_inodes_used as f64);
        self.inodes_capacity
            .with_label_values(&l)
            .set(snap.fs_inodes_total as f64);
        self.fs_free
            .with_label_values(&l)
            .set(snap.fs_free_bytes as f64);
        self.fs_size
            .with_label_values(&l)
            .set(snap.fs_size_bytes as f64);
        self.oldest_age
            .with_label_values(&l)
            .set(snap.oldest_age_seconds.unwrap_or(0.0));
        match snap.limit_bytes {
            Some(limit) => {
                self.limit.with_label_values(&l).set(limit as f64);
                series.has_limit = true;
            }
            None if series.has_limit => {
                let _ = self.limit.remove_label_values(&l);
                series.has_limit = false;
            }
            None => {}
        }

        // `via` is empty for a per-user cache from an older caller that does not say.
        let owner = snap
            .user
            .clone()
            .map(|u| (u, snap.via.clone().unwrap_or_default()));
        if series.owner != owner {
            if let Some((old, via)) = &series.owner {
                let _ = self
                    .owner_info
                    .remove_label_values(&[c.as_str(), k, old, via]);
            }
            if let Some((u, via)) = &owner {
                self.owner_info
                    .with_label_values(&[c.as_str(), k, u, via])
                    .set(1.0);
            }
            series.owner = owner;
        }

        let users = top_users(&snap.bytes_by_owner, self.cfg.top_users);
        for old in series.users.iter().filter(|u| !users.contains_key(*u)) {
            let _ = self.user_bytes.remove_label_values(&[c.as_str(), k, old]);
        }
        for (user, bytes) in &users {
            self.user_bytes
                .with_label_values(&[c.as_str(), k, user])
                .set(*bytes as f64);
        }
        series.users = users.into_keys().collect();

        for kind in series.violations.iter() {
            if !snap.violations.contains_key(kind) {
                self.violations
                    .with_label_values(&[c.as_str(), k, kind])
                    .set(0.0);
            }
        }
        for (kind, n) in &snap.violations {
            self.violations
                .with_label_values(&[c.as_str(), k, kind])
                .set(*n as f64);
            series.violations.insert(kind.clone());
        }
        for cause in crate::report::Held::CAUSES {
            let b = snap.held_bytes.get(cause).copied().unwrap_or(0);
            self.held
                .with_label_values(&[c.as_str(), k, cause])
                .set(b as f64);
        }
    }

    /// Records a sweep result: counters grow, the duration and (on success) the last
    /// success time are replaced.
    pub fn observe_sweep(&self, out: &SweepOutcome) {
        let mut state = self.state();
        let series = self.ensure(&mut state, &out.path, out.kind);
        let c = label(&out.path);
        let k = out.kind.as_str();
        for (reason, ev) in &out.evicted {
            let l = [c.as_str(), k, reason.as_str()];
            self.evicted_bytes.with_label_values(&l).inc_by(ev.bytes);
            self.evicted_entries
                .with_label_values(&l)
                .inc_by(ev.entries);
        }
        for (kind, n) in &out.fixes {
            self.fixes
                .with_label_values(&[c.as_str(), k, kind])
                .inc_by(*n);
            series.fixes.insert(kind.clone());
        }
        for (kind, n) in &out.errors {
            self.errors
                .with_label_values(&[c.as_str(), k, kind])
                .inc_by(*n);
            series.errors.insert(kind.clone());
        }
        let result = if out.success { "success" } else { "failure" };
        self.sweeps
            .with_label_values(&[c.as_str(), k, result])
            .inc();
        let l = [c.as_str(), k];
        self.sweep_duration
            .with_label_values(&l)
            .set(out.duration.as_secs_f64());
        if out.success {
            let ts = out
                .finished_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_success.with_label_values(&l).set(ts);
        }
    }

    /// Sets how many units currently run Go without an explicit GOCACHE.
    pub fn set_units_missing_gocache(&self, units: u64) {
        self.units_missing
            .with_label_values::<&str>(&[])
            .set(units as f64);
    }
}

/// Keeps the `n` largest users (ties broken by name) and sums the rest into `other`,
/// which is always present. Users sharing a name are merged.
fn top_users(owners: &[OwnerUsage], n: usize) -> BTreeMap<String, u64> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for o in owners {
        *merged.entry(o.label()).or_default() += o.bytes;
    }
    let mut sorted: Vec<(String, u64)> = merged.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = BTreeMap::new();
    let mut other = 0u64;
    for (i, (user, bytes)) in sorted.into_iter().enumerate() {
        if i < n && user != OTHER_USER {
            out.insert(user, bytes);
        } else {
            other = other.saturating_add(bytes);
        }
    }
    out.insert(OTHER_USER.to_string(), other);
    out
}

/// Renders the registry in the classic text exposition format (what node_exporter's
/// textfile collector and Prometheus scrapes parse). Never contains timestamps.
pub fn encode_text(registry: &Registry) -> Result<String> {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .context("cannot encode metrics in the text format")
}

#[cfg(test)]
mod tests;
