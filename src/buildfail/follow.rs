//! Following the journal for build failures: one thread tails every journal file of the
//! machine (`/run/log/journal`, `/var/log/journal`) from the moment the agent starts, reads
//! each new entry's `MESSAGE`, and hands what [`super::classify`] recognises to the daemon.
//!
//! The reader is `sdjournal`, a pure-Rust reader of journald's files (read-only, memory
//! mapped, with bounds on object sizes, decompression and chain lengths), chosen over
//! libsystemd's `sd_journal` through the `systemd` crate because that needs libsystemd's
//! headers at build time and C code parsing files inside the agent that runs as root; the
//! files are journald's, written by root. Only new entries are read (no replay after a
//! restart: a failure is counted once, by the agent that saw it happen). The agent's own
//! entries are skipped: its log repeats the messages it recognised.

use super::{Failure, KnownCache, MAX_MESSAGE, candidate, classify};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The caches the policy covers, as sweeps resolved them: the daemon adds what each sweep
/// measured (a growth sweep measures some caches only, so nothing is dropped), the follower
/// reads the list per candidate message.
#[derive(Debug, Clone, Default)]
pub struct Caches(Arc<RwLock<Vec<KnownCache>>>);

impl Caches {
    pub fn note(&self, caches: impl IntoIterator<Item = KnownCache>) {
        let mut all = self.0.write().unwrap_or_else(|p| p.into_inner());
        for c in caches {
            match all.iter_mut().find(|k| k.path == c.path) {
                Some(k) => *k = c,
                None => all.push(c),
            }
        }
    }

    /// [`classify`] against the list as it is, without copying it per message.
    fn classify(&self, msg: &str) -> Option<super::Classified> {
        classify(msg, &self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The running follower; stops (within one poll interval) when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long the follower waits for journal changes before it checks whether to stop.
const POLL: Duration = Duration::from_millis(500);

/// Starts following the journal; the failures of each poll (at most two a second, however
/// many) go to `sink` together, on the follower's thread. An error when there is no journal
/// to follow (no journald on this machine).
pub fn start(
    caches: Caches,
    sink: impl Fn(Vec<Failure>) + Send + 'static,
) -> Result<Follower, String> {
    let config = sdjournal::JournalConfig {
        poll_interval: POLL,
        ..Default::default()
    };
    let journal = sdjournal::Journal::open_default_with_config(config).map_err(|e| {
        format!("cannot open the journal (/run/log/journal, /var/log/journal): {e}")
    })?;
    let mut live = journal
        .live()
        .map_err(|e| format!("cannot follow the journal: {e}"))?;
    let mut filter = live.filter();
    filter.match_present("MESSAGE");
    let sub = live
        .subscribe(filter)
        .map_err(|e| format!("cannot follow the journal: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let me = std::process::id().to_string();
    std::thread::Builder::new()
        .name("gcw-journal".into())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                if let Err(e) = live.poll_once() {
                    tracing::warn!("following the journal: {e}; trying again");
                    std::thread::sleep(Duration::from_secs(5));
                }
                let mut found = Vec::new();
                while let Ok(r) = sub.try_recv() {
                    let Ok(entry) = r else { continue };
                    found.extend(failure(&entry, &me, &caches));
                }
                if !found.is_empty() {
                    sink(found);
                }
            }
        })
        .map_err(|e| format!("cannot start the journal follower: {e}"))?;
    Ok(Follower { stop })
}

/// The failure one journal entry reports, if any.
fn failure(e: &sdjournal::EntryRef, me: &str, caches: &Caches) -> Option<Failure> {
    let text = |k: &str| {
        e.get(k).map(|v| {
            let v = &v[..v.len().min(MAX_MESSAGE)];
            String::from_utf8_lossy(v).into_owned()
        })
    };
    let msg = text("MESSAGE")?;
    let pid = text("_PID");
    if !candidate(&msg) || pid.as_deref() == Some(me) {
        return None;
    }
    let c = caches.classify(&msg)?;
    Some(Failure {
        reason: c.reason,
        cache: c.cache,
        uid: text("_UID").and_then(|u| u.parse().ok()),
        unit: text("_SYSTEMD_USER_UNIT").or_else(|| text("_SYSTEMD_UNIT")),
        pid: pid.and_then(|p| p.parse().ok()),
        comm: text("_COMM"),
        cmdline: text("_CMDLINE"),
        message: msg,
    })
}
