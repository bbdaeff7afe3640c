//! Cancellation tokens: how a walk, a failpoint pause or a sweep learns that it should stop.
//!
//! A [`Cancel`] is a shared flag, cheap to clone, carried in a walk's options
//! (`scan::walk::WalkOptions::cancel`) and handed to whatever waits on the walk's behalf. The
//! agent's SIGTERM cancels the process token ([`Cancel::process`], every walk's default), so
//! each walk in flight stops at its next entry; a test or a caller that wants to stop one
//! walk alone gives it a token of its own ([`Cancel::new`]). Nothing here knows who reads it.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token nobody else holds.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// The process's token: cancelled when the agent is asked to stop (SIGTERM).
    pub fn process() -> Cancel {
        static PROCESS: OnceLock<Cancel> = OnceLock::new();
        PROCESS.get_or_init(Cancel::new).clone()
    }

    /// Asks everything holding this token to stop at its next step. Each change a walk's
    /// visitor makes is a single syscall on one entry, so stopping between entries leaves
    /// nothing half-done.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
