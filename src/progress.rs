//! A process-wide count of work done by sweeps, for a watchdog that means "the agent is
//! making progress" rather than "its event loop is alive".
//!
//! Sweeps run on their own threads while the daemon's loop keeps answering signals and
//! pinging systemd's watchdog. A sweep stuck for good (a hung file system, a deadlock)
//! would go unnoticed by a watchdog fed from the loop alone; the loop instead stops feeding
//! it once a running sweep has not moved this counter for a whole watchdog interval, and
//! systemd restarts the agent. Ticks are coarse (a directory opened, a batch of names
//! listed, an action applied, a cache started) so counting costs nothing measurable.

use std::sync::atomic::{AtomicU64, Ordering};

static DONE: AtomicU64 = AtomicU64::new(0);

/// Records that a sweep moved forward.
pub fn tick() {
    DONE.fetch_add(1, Ordering::Relaxed);
}

/// The count so far; only its changes mean anything.
pub fn count() -> u64 {
    DONE.load(Ordering::Relaxed)
}
