//! One sweep: inspect every cache of the policy, plan, apply. Shared by `enforce` (once) and
//! the daemon (on its timer, on growth, on demand), so both do exactly the same thing.

use crate::apply::{self, Outcome};
use crate::check::{self, CacheReport};
use crate::goenv::GoEnv;
use crate::plan::{self, Plan};
use crate::policy::{Policy, Scope};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Sweep {
    /// What each cache looked like before any change.
    pub reports: Vec<CacheReport>,
    pub plan: Plan,
    /// `None` for a plan-only (dry-run) sweep.
    pub outcome: Option<Outcome>,
    pub duration: Duration,
    /// Unix seconds when the sweep started.
    pub started: i64,
    /// The cache program's counters of each build cache, read by the agent after the sweep
    /// (`daemon::observe::read_cacheprog`); `enforce` leaves it empty.
    pub cacheprog: Vec<crate::metrics::CacheprogSnapshot>,
}

impl Sweep {
    pub fn inspect_failed(&self) -> bool {
        self.reports.iter().any(|r| r.inspect_error.is_some())
    }

    /// Why each refused cache was refused (not a Go cache, a forbidden path…).
    pub fn refused(&self) -> impl Iterator<Item = &str> {
        self.reports.iter().filter_map(|r| r.refused.as_deref())
    }

    /// Allocated bytes per cache path after the sweep: measured after eviction when anything
    /// went, else as inspected.
    pub fn size_after(&self, path: &std::path::Path) -> Option<u64> {
        let measured = self
            .outcome
            .as_ref()
            .and_then(|o| o.caches.iter().rev().find(|c| c.path == path))
            .and_then(|c| c.size_after);
        if measured.is_some() {
            return measured;
        }
        let r = self
            .reports
            .iter()
            .find(|r| r.path.as_deref() == Some(path))?;
        Some(r.observed.as_ref()?.allocated_bytes)
    }

    /// What eviction could still remove from a cache after the sweep (the bytes a size limit
    /// counts): its evictable bytes as inspected, less what went. The daemon's growth
    /// estimate starts from this, so a large `fuzz/` never keeps a cache "above its limit".
    pub fn evictable_after(&self, path: &std::path::Path) -> Option<u64> {
        let r = self
            .reports
            .iter()
            .find(|r| r.path.as_deref() == Some(path))?;
        let obs = r.observed.as_ref()?;
        let Some(h) = &obs.histogram else {
            return self.size_after(path);
        };
        let evicted: u64 = self
            .outcome
            .as_ref()
            .and_then(|o| o.caches.iter().find(|c| c.path == path))
            .map_or(0, |c| c.evicted.values().map(|u| u.bytes).sum());
        Some(h.total().1.saturating_sub(evicted))
    }

    /// A one-line summary for logs and systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let total: u64 = self
            .reports
            .iter()
            .filter_map(|r| r.path.as_ref().and_then(|p| self.size_after(p)))
            .sum();
        let outcome = self
            .outcome
            .as_ref()
            .map_or_else(|| self.plan.summary(), Outcome::summary);
        format!(
            "{} cache(s), {} in use; last sweep: {} in {:.1}s",
            self.reports.len(),
            crate::policy::value::human_bytes(total),
            outcome,
            self.duration.as_secs_f64()
        )
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Inspects, plans and (unless `dry_run`) applies. A filesystem still below its headroom
/// after applying gets up to [`HEADROOM_ROUNDS`] - 1 more rounds: statvfs cannot say how
/// much an ext4 reserve hides while `f_bavail` is 0, and something may still be filling it.
pub fn run(policy: &Policy, scope: Scope, env: &GoEnv, dry_run: bool) -> Sweep {
    let start = Instant::now();
    let mut sweep = once(policy, scope, env, dry_run);
    for _ in 1..HEADROOM_ROUNDS {
        let freed = sweep.outcome.as_ref().is_some_and(|o| {
            o.caches
                .iter()
                .any(|c| c.evicted.contains_key(&plan::Reason::Free))
        });
        let probes = crate::headroom::probes(&sweep.reports);
        if !freed
            || crate::cancel::Cancel::process().is_cancelled()
            || !probes.iter().any(crate::headroom::is_short)
        {
            break;
        }
        tracing::info!("a filesystem is still below min_free: another round");
        let more = once(policy, scope, env, dry_run);
        if let (Some(o), Some(m)) = (&mut sweep.outcome, more.outcome) {
            absorb(o, m);
        }
    }
    sweep.duration = start.elapsed();
    sweep
}

/// At most this many inspect-plan-apply rounds per sweep for headroom.
pub const HEADROOM_ROUNDS: usize = 3;

/// Adds a later round's outcome to the first one's, cache by cache.
fn absorb(o: &mut Outcome, later: Outcome) {
    for l in later.caches {
        let Some(c) = o.caches.iter_mut().find(|c| c.path == l.path) else {
            o.caches.push(l);
            continue;
        };
        for (k, v) in l.evicted {
            c.evicted.entry(k).or_default().add(v.entries, v.bytes);
        }
        for (k, v) in l.fixed {
            *c.fixed.entry(k).or_default() += v;
        }
        c.failed.merge(l.failed);
        for (k, v) in l.failed_by_kind {
            *c.failed_by_kind.entry(k).or_default() += v;
        }
        c.locked_skipped += l.locked_skipped;
        c.trim_rewritten |= l.trim_rewritten;
        c.size_after = l.size_after.or(c.size_after);
    }
}

/// One round: inspect, plan, apply.
fn once(policy: &Policy, scope: Scope, env: &GoEnv, dry_run: bool) -> Sweep {
    let start = Instant::now();
    let (targets, _) = check::targets(policy, scope, env);
    let now = check::now();
    let mut reports: Vec<CacheReport> = targets
        .iter()
        .map(|t| check::inspect_target(t, now))
        .collect();
    crate::headroom::explain(&targets, &mut reports);
    let mut plan = Plan {
        schema: plan::SCHEMA.into(),
        host: hostname(),
        scope,
        now,
        caches: targets
            .iter()
            .zip(&reports)
            .filter_map(|(t, r)| plan::plan_cache(&t.policy, r, t.user.as_ref()))
            .collect(),
    };
    // Filesystems short of headroom: evict across all their Go caches, oldest first.
    let short = crate::headroom::shortages(&targets, &reports);
    crate::headroom::plan(&short, &targets, &reports, &mut plan.caches);
    let cancel = crate::cancel::Cancel::process();
    crate::failpoint::pause("before-apply", std::path::Path::new("."), &cancel);
    // A stop during inspection leaves partial observations: plan them, apply nothing.
    let stopped = cancel.is_cancelled();
    let outcome = (!dry_run && !stopped).then(|| apply::apply(&plan, false));
    Sweep {
        reports,
        plan,
        outcome,
        duration: start.elapsed(),
        started: now,
        cacheprog: Vec::new(),
    }
}
