//! The daemon's side of write attribution (`crate::writers`): tells the watcher which caches
//! the last sweep resolved, and turns its batches into counters, foreign-write journal
//! events and the last day's tally that `check` reads from the state directory.

use super::observe::Observability;
use crate::logging::action;
use crate::writers::{Batch, Foreign, Spec, Watcher, tally};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The textfile and the tally file are rewritten at most this often for writes alone (a
/// build writes thousands of files a minute; a sweep writes the textfile anyway).
const WRITE_EVERY: Duration = Duration::from_secs(10);

pub struct Writes {
    watcher: Option<Watcher>,
    tally: tally::Tally,
    dir: Option<PathBuf>,
    written_at: Option<Instant>,
    dirty: bool,
    /// Lost events are said once per agent.
    told_lost: bool,
}

impl Writes {
    /// Starts the watcher on the group `writers::open` made (or says once why there is none).
    pub fn start(
        group: Result<crate::writers::Group, String>,
        dir: Option<PathBuf>,
        send: impl Fn(Batch) + Send + 'static,
    ) -> Writes {
        let watcher = group.and_then(|g| {
            crate::writers::start(g, send).map_err(|e| format!("cannot start its thread: {e}"))
        });
        let mode = match &watcher {
            Ok(w) => {
                tracing::info!(mode = ?w.mode, "writes into build caches are attributed (fanotify, {:?})", w.mode);
                Ok(w.mode)
            }
            Err(e) => {
                tracing::warn!("writes into build caches are not attributed: {e}");
                Err(e.clone())
            }
        };
        let mut w = Writes {
            watcher: watcher.ok(),
            tally: tally::Tally::new(mode),
            dir,
            written_at: None,
            dirty: true,
            told_lost: false,
        };
        // `check` learns at once whether writes are attributed, before any is.
        w.save();
        w
    }

    /// Watches the build caches a sweep resolved; a full sweep's list replaces the last.
    pub fn after_sweep(&self, sweep: &crate::sweep::Sweep) {
        if let Some(w) = &self.watcher {
            w.watch(
                sweep.targets.iter().filter_map(Spec::of).collect(),
                !sweep.partial,
            );
        }
    }

    pub fn on_batch(&mut self, b: Batch, obs: &mut Observability) {
        let now = crate::check::now();
        for w in &b.written {
            let cache = w.cache.to_string_lossy();
            obs.metrics
                .observe_written(&cache, &w.user, &w.unit, w.bytes, w.entries);
            self.tally.add(
                now,
                tally::Row {
                    cache: cache.into_owned(),
                    user: w.user.clone(),
                    unit: w.unit.clone(),
                    bytes: w.bytes,
                    entries: w.entries,
                },
            );
        }
        self.dirty |= !b.written.is_empty();
        for f in &b.foreign {
            log_foreign(f);
        }
        if b.lost && !self.told_lost {
            self.told_lost = true;
            tracing::warn!(
                "the kernel dropped write events (queue overflow): some writes are not attributed"
            );
        }
        let due = b.quiet || self.written_at.is_none_or(|t| t.elapsed() >= WRITE_EVERY);
        if due && self.dirty {
            obs.write_textfile();
            self.save();
        }
    }

    /// Replaces the tally file in the state directory (when there is one).
    pub fn save(&mut self) {
        self.written_at = Some(Instant::now());
        self.dirty = false;
        let Some(dir) = &self.dir else { return };
        let res = serde_json::to_vec(&self.tally)
            .map_err(anyhow::Error::from)
            .and_then(|b| super::state::write(dir, tally::FILE, &b));
        if let Err(e) = res {
            tracing::warn!("cannot save the writers' tally: {e:#}");
        }
    }
}

fn log_foreign(f: &Foreign) {
    let cache = f.cache.display();
    let p = f.proc.clone().unwrap_or_default();
    let writer = if f.pid > 0 {
        format!(
            "pid {} ({}, uid {}{}): {}",
            f.pid,
            if p.comm.is_empty() { "gone" } else { &p.comm },
            if f.proc.is_some() {
                p.uid.to_string()
            } else {
                "?".into()
            },
            if p.unit.is_empty() {
                String::new()
            } else {
                format!(", {}", p.unit)
            },
            p.cmdline
        )
    } else {
        "a process the kernel did not name (fanotify without CAP_SYS_ADMIN)".to_string()
    };
    let (msg, owner_uid) = if f.more > 0 {
        let msg = format!(
            "{} more entries written into {cache} by someone but its owner this minute: {writer}",
            f.more
        );
        (msg, -1)
    } else {
        let owner = crate::check::user_name(f.owner_uid);
        let msg = format!(
            "{owner} wrote {} into {cache}, a cache that is not theirs: {writer}",
            f.entry
        );
        (msg, i64::from(f.owner_uid))
    };
    tracing::warn!(
        gocache_warden_action = action::FOREIGN_WRITE,
        cache_path = %cache,
        unit = %p.unit,
        pid = f.pid,
        target_uid = owner_uid,
        entry = %f.entry,
        entries = f.more.max(1),
        comm = %p.comm,
        cmdline = %p.cmdline,
        "{msg}"
    );
}
