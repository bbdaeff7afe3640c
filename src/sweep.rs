//! One sweep: inspect every cache of the policy, plan, apply. Shared by `enforce` (once) and
//! the daemon (on its timer, on growth, on demand), so both do exactly the same thing.

use crate::apply::{self, Outcome};
use crate::check::{self, CacheReport};
use crate::goenv::GoEnv;
use crate::plan::{self, Plan};
use crate::policy::{Policy, Scope};
use crate::report::Target;
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
    /// (`daemon::counters::read_cacheprog`); `enforce` leaves it empty.
    pub cacheprog: Vec<crate::metrics::CacheprogSnapshot>,
    /// The caches this sweep covered, resolved (what a later sweep of some of them reuses).
    pub targets: Vec<Target>,
    /// A sweep of some caches only ([`run_targets`]): its reports say nothing about the
    /// others, which keep what the last full sweep said.
    pub partial: bool,
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

    /// A cache this sweep left over its size limit although eviction took everything it may:
    /// the plan was floor-limited, what inspection found eviction may not take is itself
    /// over the limit, and the size measured after the sweep is still over. What holds it,
    /// with the floor the plan used. `None` for a cache at or under its limit, or one that
    /// merely grew while it was being swept (a build or a copy writing meanwhile: the
    /// growth it saw triggers the next sweep).
    pub fn held_over(&self, path: &std::path::Path) -> Option<HeldOver> {
        let c = self.plan.caches.iter().find(|c| c.path == path)?;
        let ev = c.eviction.as_ref()?;
        let limit = c.limit_bytes?;
        let size = self.size_after(path)?;
        if !ev.floor_limited || size <= limit {
            return None;
        }
        let r = self
            .reports
            .iter()
            .find(|r| r.path.as_deref() == Some(path))?;
        let held = crate::report::Held::of(r.observed.as_ref()?, ev.floor_secs);
        if held.total() <= limit {
            return None;
        }
        Some(HeldOver {
            size,
            limit,
            held,
            floor: Duration::from_secs(ev.floor_secs.max(0) as u64),
        })
    }

    /// Is the cache over its limit after the sweep for a reason the sweep could not take
    /// away: held over it (see [`Sweep::held_over`]), or over it with nothing applied (a
    /// dry run, a read-only mount, a refused root, a stop). A cache whose eviction reached
    /// its target and that grew past the limit again while being swept is not: the growth
    /// it saw triggers the next sweep.
    pub fn still_over(&self, path: &std::path::Path) -> bool {
        let Some(c) = self.plan.caches.iter().find(|c| c.path == path) else {
            return false;
        };
        let (Some(limit), Some(size)) = (c.limit_bytes, self.size_after(path)) else {
            return false;
        };
        if size <= limit {
            return false;
        }
        let applied = self
            .outcome
            .as_ref()
            .and_then(|o| o.caches.iter().find(|oc| oc.path == path))
            .is_some_and(|oc| oc.failed.count == 0 && oc.locked_skipped == 0);
        match &c.eviction {
            Some(_) if applied && c.skipped.is_none() => self.held_over(path).is_some(),
            _ => true,
        }
    }

    /// Per-entry violations as they are after the sweep: a fixable one remains only where
    /// apply failed to fix it, the others as inspection found them (apply never changes
    /// them), with `past-max-age` gone once its eviction ran without a failure. Before any
    /// change (no outcome, as in a dry run) it is what inspection found.
    pub fn violations_after(&self, r: &CacheReport) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        let Some(obs) = &r.observed else {
            return out;
        };
        let path = r.path.as_deref();
        let oc = self
            .outcome
            .as_ref()
            .and_then(|o| o.caches.iter().find(|c| Some(c.path.as_path()) == path));
        let planned = self
            .plan
            .caches
            .iter()
            .find(|c| Some(c.path.as_path()) == path && c.skipped.is_none());
        for (v, t) in &obs.violations {
            let oc = oc.filter(|_| planned.is_some_and(|p| p.fixes.contains_key(v)));
            let left = match oc {
                // Apply's fix phase visits every entry eviction left (and any made since)
                // and fixes each that deviates: what remains is at most what it failed to
                // fix. Entries eviction removed took their violations with them.
                Some(c) if v.fixable() => {
                    let fixed = c.fixed.get(v).copied().unwrap_or(0);
                    let failed = c.failed_by_kind.get("fix").copied().unwrap_or(0);
                    t.count.saturating_sub(fixed).min(failed)
                }
                _ => t.count,
            };
            out.insert(v.as_str().to_string(), left);
        }
        // `over-size` is not carried over: eviction takes it, and a cache it cannot bring
        // under its limit is the over-limit alert's (`still_over`), with the held bytes.
        for f in r.findings.iter().filter(|f| f.kind == "past-max-age") {
            let done = oc.is_some_and(|c| {
                c.failed.count == 0 && c.locked_skipped == 0 && !c.evicted.is_empty()
            });
            out.insert(f.kind.clone(), if done { 0 } else { f.count });
        }
        // Being held over the limit is the over-limit alert's and the held-bytes gauge's
        // to say, not a violation: one problem, one alert.
        out
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
            "{} cache(s){}, {} in use; last sweep: {} in {:.1}s",
            self.reports.len(),
            if self.partial { " that grew" } else { "" },
            crate::policy::value::human_bytes(total),
            outcome,
            self.duration.as_secs_f64()
        )
    }
}

/// A cache held over its size limit after a sweep (see [`Sweep::held_over`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldOver {
    /// Measured after the sweep (what `du -sB1` says).
    pub size: u64,
    pub limit: u64,
    pub held: crate::report::Held,
    /// The cache's `min_age`.
    pub floor: Duration,
}

impl HeldOver {
    /// E.g. "10.4 GiB of its 10.0 GiB limit, held by 1.2 GiB used in the last 1d 0h (min_age), …".
    pub fn describe(&self) -> String {
        format!(
            "{} of its {} limit, held by {}",
            crate::policy::value::human_bytes(self.size),
            crate::policy::value::human_bytes(self.limit),
            self.held.describe(self.floor)
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
        c.locks_ignored.merge(l.locks_ignored);
        c.trim_rewritten |= l.trim_rewritten;
        c.size_after = l.size_after.or(c.size_after);
    }
}

/// Inspects, plans and applies some caches only, as an earlier sweep resolved them: no user
/// is resolved again, no manager asked, no other cache walked, no headroom planned across a
/// filesystem (the daemon's headroom probes ask for a full sweep when that is needed). The
/// daemon runs this when a watched cache grows past its limit or its watches change; `over`
/// are the caches it saw pass their limit (their units are paired from the first walk).
pub fn run_targets(
    targets: Vec<Target>,
    over: &std::collections::BTreeSet<std::path::PathBuf>,
    scope: Scope,
    dry_run: bool,
) -> Sweep {
    let start = Instant::now();
    let mut sweep = sweep_targets(targets, Some(over), scope, dry_run);
    sweep.partial = true;
    sweep.duration = start.elapsed();
    sweep
}

/// One round: resolve every cache of the policy, inspect, plan, apply.
fn once(policy: &Policy, scope: Scope, env: &GoEnv, dry_run: bool) -> Sweep {
    let (targets, _) = check::targets(policy, scope, env);
    sweep_targets(targets, None, scope, dry_run)
}

/// Inspects, plans and, unless `dry_run`, applies. A full sweep (`over` is `None`) plans
/// headroom across the targets' filesystems; a growth sweep of some caches does not, and
/// pairs units at once in the caches `over` names.
fn sweep_targets(
    targets: Vec<Target>,
    over: Option<&std::collections::BTreeSet<std::path::PathBuf>>,
    scope: Scope,
    dry_run: bool,
) -> Sweep {
    let headroom = over.is_none();
    let start = Instant::now();
    let now = check::now();
    let mut reports: Vec<CacheReport> = targets
        .iter()
        .map(|t| {
            let grew = over.is_some_and(|o| t.path.as_ref().is_ok_and(|p| o.contains(p)));
            check::inspect_target_paired(t, now, grew)
        })
        .collect();
    if headroom {
        crate::headroom::explain(&targets, &mut reports);
    }
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
    if headroom {
        // Filesystems short of headroom: evict across all their Go caches, oldest first.
        let short = crate::headroom::shortages(&targets, &reports);
        crate::headroom::plan(&short, &targets, &reports, &mut plan.caches);
    }
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
        targets,
        partial: false,
    }
}
