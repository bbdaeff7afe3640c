//! The daemon's one closed set of events: everything that can make the agent act arrives on
//! one channel as an [`Event`], so the loop in `daemon` is the only place that decides.

use crate::alert::UnitRef;
use crate::sweep::Sweep;
use std::path::PathBuf;

/// Everything that can make the daemon act.
#[derive(Debug)]
pub enum Event {
    /// The periodic sweep timer fired.
    Tick,
    /// Watched caches grew past their trigger (`crossed`) or their watches changed
    /// (`rescan`): sweep those caches only. `overflow`: the kernel dropped events, so no one
    /// knows which grew: sweep them all. All empty: a deferred growth sweep is due.
    Grew {
        crossed: Vec<PathBuf>,
        rescan: Vec<PathBuf>,
        overflow: bool,
    },
    Signal(Sig),
    /// A systemd manager announced a new unit or a reload: inspect units (not caches).
    Units,
    /// A units-only inspection finished: the units lacking GOCACHE now.
    UnitsChecked(Vec<UnitRef>),
    /// Time to tell systemd we are alive.
    Watchdog,
    /// A filesystem holding caches fell below `min_free` / `min_free_inodes`.
    LowSpace,
    /// A sweep finished (on the blocking pool).
    SweepDone(Box<Sweep>, Vec<UnitRef>),
    /// Walk-free evictions finished (`daemon::known`), and how long they took.
    Evicted(Vec<crate::apply::known::KnownOutcome>, std::time::Duration),
    /// A sweep ended without a result (it panicked): the loop must not wait for it.
    SweepFailed(String),
    /// A slice of background verification finished (on the blocking pool).
    Verified(Box<super::verify::Done>),
    /// The next background verification pass is due.
    VerifyDue,
    /// The journal said Go builds failed because of a cache (`crate::buildfail`).
    BuildFailed(Vec<crate::buildfail::Failure>),
    /// What was written into the caches in the last second, and by whom (`crate::writers`).
    Written(crate::writers::Batch),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Reload,
    Stop,
}
