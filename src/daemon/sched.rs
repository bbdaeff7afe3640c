//! When sweeps run: the agent's scheduling state, one sweep at a time, units inspections
//! beside them, and growth sweeps of just the caches that grew, spaced out
//! ([`GROWTH_SWEEP_SPACING`], [`RESCAN_SPACING`]). The loop in `daemon` owns a [`State`] and
//! calls it; work runs on the blocking pool and reports back as an [`Event`].

use super::event::Event;
use crate::goenv::GoEnv;
use crate::policy::{Policy, Scope};
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// The least time between two growth sweeps when a cache passed its limit (the first runs
/// at once). Short, so that a cache written at 20 MB/s overshoots by little; what keeps
/// eviction from running on every write is the trigger itself, which waits for the
/// cache to regrow from low water (or, held over its limit, for another such margin).
const GROWTH_SWEEP_SPACING: Duration = Duration::from_secs(1);

/// The least time between two sweeps asked for only by changed watches (a shard removed,
/// renamed or created): a user renaming shards of their own cache in a loop costs at most
/// one walk of that cache this often.
const RESCAN_SPACING: Duration = Duration::from_secs(10);

pub(super) fn notify(states: &[NotifyState]) {
    // Not under systemd (NOTIFY_SOCKET unset) this is a no-op; a send error is not fatal.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

pub(super) struct State {
    pub(super) policy: Arc<Policy>,
    pub(super) scope: Scope,
    pub(super) running: bool,
    pub(super) pending: bool,
    /// A units-only inspection is running / another was asked for meanwhile.
    pub(super) units_running: bool,
    pub(super) units_pending: bool,
    pub(super) stopping: bool,
    pub(super) last_status: Option<String>,
    /// When the last growth-triggered sweep was asked for, and whether one is waiting.
    pub(super) last_grew: Option<std::time::Instant>,
    pub(super) grew_deferred: bool,
    /// Caches that grew past their trigger since their last sweep, waiting for a sweep of
    /// their own; `rescan`: caches whose watches changed; `grew_all`: events were lost, so
    /// every cache is.
    pub(super) grew: std::collections::BTreeSet<PathBuf>,
    pub(super) rescan: std::collections::BTreeSet<PathBuf>,
    pub(super) grew_all: bool,
    /// The caches of the last full sweep, resolved: what a growth sweep of some of them
    /// reuses (no user resolved again, no manager asked).
    pub(super) targets: Vec<crate::report::Target>,
    /// Caches already reported as read-only: said once per agent, not every sweep.
    pub(super) reported_read_only: std::collections::HashSet<PathBuf>,
    /// Per-user caches a user's manager or unit set, already announced in the journal.
    pub(super) reported_via: std::collections::HashSet<(PathBuf, String)>,
    /// Directories the last growth-watch update could not watch (said when it changes).
    pub(super) unwatched: usize,
    /// Caches the last sweep of each left held over its size limit: said when a cache
    /// becomes held and when it no longer is, not at every sweep.
    pub(super) held: std::collections::HashSet<PathBuf>,
    /// What the last walk of each cache listed to evict without walking it again.
    pub(super) known: std::collections::HashMap<PathBuf, super::known::Known>,
    /// Caches a walk-free eviction is under way for.
    pub(super) evicting: std::collections::HashSet<PathBuf>,
    /// The growth estimates (what a walk-free eviction has to free).
    pub(super) growth: std::sync::Arc<std::sync::Mutex<super::growth::Growth>>,
}

impl State {
    /// Inspects (and remediates) units only: a new transient service must not cost a walk
    /// of every cache. Asked for during a sweep or another inspection, it runs after it.
    pub(super) fn request_units(&mut self, tx: &UnboundedSender<Event>) {
        if self.stopping {
            return;
        }
        if self.running || self.units_running {
            self.units_pending = true;
            return;
        }
        self.units_running = true;
        self.units_pending = false;
        let (policy, scope, tx) = (self.policy.clone(), self.scope, tx.clone());
        tokio::spawn(async move {
            let units = crate::units::missing_refs(&policy, scope).await;
            let _ = tx.send(Event::UnitsChecked(units));
        });
    }

    /// After a sweep, an eviction or an inspection ended: starts what waited for it, a full
    /// sweep first, then growth, then units.
    pub(super) fn start_next(&mut self, tx: &UnboundedSender<Event>) {
        if self.pending {
            self.request_sweep(tx);
        } else if self.growth_pending() {
            self.growth_due(tx);
        } else if self.units_pending {
            self.request_units(tx);
        }
    }

    pub(super) fn growth_pending(&self) -> bool {
        !self.grew.is_empty() || !self.rescan.is_empty() || self.grew_all
    }

    /// Starts the growth sweep that is due, or schedules it: at most one every
    /// [`GROWTH_SWEEP_SPACING`] while a cache is past its limit, every [`RESCAN_SPACING`]
    /// when only watches changed. Asked for while another sweep runs, it comes after it.
    pub(super) fn growth_due(&mut self, tx: &UnboundedSender<Event>) {
        if self.stopping || !self.growth_pending() || self.running || self.units_running {
            return;
        }
        // Not spaced out: it costs a `statx` and an `unlinkat` per file it removes, and it
        // leaves the cache at low water, far from its next trigger.
        if self.walk_free(tx) {
            return;
        }
        let spacing = if self.grew.is_empty() && !self.grew_all {
            RESCAN_SPACING
        } else {
            GROWTH_SWEEP_SPACING
        };
        if let Some(since) = self.last_grew.map(|t| t.elapsed())
            && since < spacing
        {
            if !self.grew_deferred {
                self.grew_deferred = true;
                let tx = tx.clone();
                let wait = spacing - since;
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(Event::Grew {
                        crossed: Vec::new(),
                        rescan: Vec::new(),
                        overflow: false,
                    });
                });
            }
            return;
        }
        self.last_grew = Some(std::time::Instant::now());
        self.request_growth_sweep(tx);
    }

    /// A sweep of the caches that grew or changed, or of all of them after lost events or
    /// when one is not known from the last full sweep. Caches that only grew, with a list
    /// of oldest files from their last walk, are answered from it first, without a walk
    /// ([`super::known`]); the others wait for that to end.
    pub(super) fn request_growth_sweep(&mut self, tx: &UnboundedSender<Event>) {
        if self.walk_free(tx) {
            return;
        }
        let only: Vec<_> = self
            .targets
            .iter()
            .filter(|t| {
                t.path
                    .as_ref()
                    .is_ok_and(|p| self.grew.contains(p) || self.rescan.contains(p))
            })
            .cloned()
            .collect();
        if self.grew_all || only.is_empty() {
            self.request_sweep(tx);
            return;
        }
        let over = std::mem::take(&mut self.grew);
        self.rescan.clear();
        self.running = true;
        let (scope, tx) = (self.scope, tx.clone());
        tokio::spawn(async move {
            let sweep = tokio::task::spawn_blocking(move || {
                let mut s = crate::sweep::run_targets(only, &over, scope, false);
                s.cacheprog = super::counters::read_cacheprog(&s.reports);
                s
            })
            .await;
            let _ = match sweep {
                Ok(s) => tx.send(Event::SweepDone(Box::new(s), Vec::new())),
                Err(e) => tx.send(Event::SweepFailed(e.to_string())),
            };
        });
    }

    /// Starts the walk-free evictions of the caches that grew, if any can have one; `true`
    /// if it did.
    fn walk_free(&mut self, tx: &UnboundedSender<Event>) -> bool {
        if self.grew_all {
            return false;
        }
        let now = crate::check::now();
        let jobs: Vec<_> = {
            let Ok(g) = self.growth.lock() else {
                return false;
            };
            self.grew
                .iter()
                .filter(|p| !self.rescan.contains(*p) && !self.held.contains(*p))
                .filter_map(|p| self.known.get(p)?.job(g.estimate(p)?, now))
                .collect()
        };
        if jobs.is_empty() {
            return false;
        }
        for j in &jobs {
            self.grew.remove(j.path());
            self.evicting.insert(j.path().to_path_buf());
        }
        self.running = true;
        let tx = tx.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let done = tokio::task::spawn_blocking(move || {
                jobs.into_iter().map(super::known::Job::run).collect()
            })
            .await;
            let _ = match done {
                Ok(outcomes) => tx.send(Event::Evicted(outcomes, start.elapsed())),
                Err(e) => tx.send(Event::SweepFailed(e.to_string())),
            };
        });
        true
    }

    pub(super) fn request_sweep(&mut self, tx: &UnboundedSender<Event>) {
        if self.stopping {
            return;
        }
        // One at a time, and not beside a units inspection: both may write drop-ins.
        if self.running || self.units_running {
            self.pending = true;
            return;
        }
        self.running = true;
        self.pending = false;
        // A full sweep measures every cache: what grew meanwhile is covered.
        self.grew.clear();
        self.rescan.clear();
        self.grew_all = false;
        notify(&[NotifyState::Status(&match &self.last_status {
            Some(last) => format!("sweeping; {last}"),
            None => "sweeping (first sweep since start)".to_string(),
        })]);
        let (policy, scope, tx) = (self.policy.clone(), self.scope, tx.clone());
        tokio::spawn(async move {
            let p = policy.clone();
            let sweep = tokio::task::spawn_blocking(move || {
                let mut s = crate::sweep::run(&p, scope, &GoEnv::from_process(), false);
                // Users' files, read as their owners: here on the blocking pool, not in the loop.
                s.cacheprog = super::counters::read_cacheprog(&s.reports);
                s
            })
            .await;
            let units = if crate::cancel::Cancel::process().is_cancelled() {
                Vec::new()
            } else {
                crate::units::missing_refs(&policy, scope).await
            };
            let _ = match sweep {
                Ok(s) => tx.send(Event::SweepDone(Box::new(s), units)),
                Err(e) => tx.send(Event::SweepFailed(e.to_string())),
            };
        });
    }
}
