//! Walk-free eviction in the daemon: a cache that grows past its limit is answered from the
//! list of oldest files its last walk kept ([`crate::scan::oldest`]), evicted by
//! [`crate::apply::known`] on the blocking pool, with no walk of it or of any other cache.
//! A cache without such a list, held over its limit, whose watches changed, or whose list
//! ran out before low water is swept with a walk instead (`sched`), which keeps a new list.

use crate::apply::known::{KnownOutcome, KnownPlan, evict_known};
use crate::scan::oldest::Candidate;
use crate::sweep::Sweep;
use std::path::PathBuf;
use std::sync::Arc;

/// What the last walk of one cache left to evict without walking it again.
#[derive(Debug, Clone)]
pub(super) struct Known {
    candidates: Arc<Vec<Candidate>>,
    /// The list's prefix already used (evicted, skipped or found gone).
    next: usize,
    /// A template: `need` and `now` are filled in when it runs.
    plan: KnownPlan,
    low_water: u64,
    /// Listed outputs already removed with their action record.
    taken: Arc<std::collections::HashSet<[u8; 32]>>,
}

impl Known {
    /// The eviction that brings `estimate` down to low water, if there is anything to
    /// evict and anything listed to evict it with.
    pub(super) fn job(&self, estimate: u64, now: i64) -> Option<Job> {
        let need = estimate.saturating_sub(self.low_water);
        if need == 0 || self.next >= self.candidates.len() {
            return None;
        }
        let mut plan = self.plan.clone();
        plan.need = need;
        plan.now = now;
        Some(Job {
            plan,
            candidates: self.candidates.clone(),
            from: self.next,
            taken: self.taken.clone(),
        })
    }

    /// What a run of its job did: `consumed` more candidates were looked at, and these
    /// outputs went with their records.
    pub(super) fn advance(&mut self, o: &KnownOutcome) {
        self.next = self.next.saturating_add(o.consumed);
        if !o.taken.is_empty() {
            Arc::make_mut(&mut self.taken).extend(o.taken.iter().copied());
        }
    }
}

/// One cache's walk-free eviction, ready for the blocking pool.
pub(super) struct Job {
    plan: KnownPlan,
    candidates: Arc<Vec<Candidate>>,
    from: usize,
    taken: Arc<std::collections::HashSet<[u8; 32]>>,
}

impl Job {
    pub(super) fn path(&self) -> &std::path::Path {
        &self.plan.path
    }

    pub(super) fn run(self) -> KnownOutcome {
        let listed = self.candidates.get(self.from..).unwrap_or(&[]);
        evict_known(&self.plan, listed, &self.taken)
    }
}

/// The lists a sweep's walks kept, past what the sweep evicted itself: the candidates at
/// least as old as a cutoff the sweep applied went with it (they are a prefix, oldest first).
pub(super) fn from_sweep(sweep: &Sweep) -> Vec<(PathBuf, Known)> {
    let mut out = Vec::new();
    for (t, r) in sweep.targets.iter().zip(&sweep.reports) {
        let (Some(path), Some(obs), Some(low)) = (&r.path, &r.observed, r.low_water_bytes) else {
            continue;
        };
        let Some(candidates) = obs.oldest.clone() else {
            continue;
        };
        if t.path.as_ref().ok() != Some(path) {
            continue;
        }
        let applied = sweep.outcome.as_ref().is_some_and(|o| {
            o.caches
                .iter()
                .any(|c| &c.path == path && !c.evicted.is_empty())
        });
        let cutoff = sweep
            .plan
            .caches
            .iter()
            .find(|c| &c.path == path)
            .and_then(|c| c.eviction.as_ref())
            .map(|e| e.cutoff_age_secs.max(e.floor_secs));
        let next = match cutoff {
            Some(age) if applied => {
                candidates.partition_point(|c| sweep.plan.now - c.last_use >= age)
            }
            _ => 0,
        };
        out.push((
            path.clone(),
            Known {
                candidates,
                next,
                plan: KnownPlan {
                    path: path.clone(),
                    user: t.user.clone(),
                    floor_secs: t.policy.min_age.as_secs() as i64,
                    last_use: t.policy.last_use,
                    need: 0,
                    now: 0,
                },
                low_water: low,
                taken: Default::default(),
            },
        ));
    }
    out
}
