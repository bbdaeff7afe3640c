//! Write attribution: who writes into each build cache, how much, from which systemd unit,
//! and every entry written by someone other than the cache's owner (the `sudo go build` that
//! leaves root-owned files in a user's cache, which then fails that user's builds).
//!
//! The kernel reports each file closed after writing in a cache's shard directories
//! ([`fanotify`]: inode marks, so nothing outside the caches reaches the agent). The watcher
//! thread ([`watch`]) resolves the event's directory to a cache it marked, stats the file
//! beneath that shard (fd-based, never following a link), takes its owner as the `user`
//! (what fills the cache, and what breaks other users' builds), and the writing pid's
//! `/proc/PID/cgroup` as the `unit`. Every second it hands the daemon a [`Batch`]: totals per
//! (cache, user, unit) and the foreign entries, bounded per process ([`FOREIGN_PER_MINUTE`]).
//! The daemon counts them (`gocache_warden_cache_written_*_total`), logs the foreign ones and
//! keeps the last day per hour for `check` ([`tally`]).
//!
//! Build caches only: Go writes a build cache's files into its 256 shard directories, which
//! inode marks cover; a module cache is a deep tree extracted from zips, which only a
//! filesystem-wide mark would, at a cost to every other write on that file system.
//!
//! Where fanotify is unavailable (no `CAP_SYS_ADMIN` and a kernel before 5.13, or a syscall
//! filter) the agent does everything else and says once why writes are not attributed.

pub mod fanotify;
pub mod tally;
mod watch;

pub use fanotify::{Group, Mode};
pub use watch::{Watcher, start};

use std::path::PathBuf;

/// Foreign entries logged one by one per process and cache each minute; the rest of that
/// minute's are logged as one line with their count.
pub const FOREIGN_PER_MINUTE: u64 = 10;

/// One cache to attribute writes in, as the last sweep resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub path: PathBuf,
    /// Who may write it without an entry being called foreign.
    pub writers: Writers,
}

/// Whose entries in a cache are its owner's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writers {
    /// A per-user cache (`users`): that user's.
    Uid(u32),
    /// The policy's `trusted_writers` (`user` and `@group` names).
    Trusted(Vec<String>),
    /// A cache at a fixed path: the owner of its root, and members of its `group` if any.
    RootOwner { group: Option<String> },
}

impl Spec {
    /// The spec of a resolved build cache target; `None` for module caches and targets
    /// without a path.
    pub fn of(t: &crate::report::Target) -> Option<Spec> {
        if t.policy.kind != crate::policy::CacheKind::Build || t.refused.is_some() {
            return None;
        }
        let path = t.path.clone().ok()?;
        let writers = if !t.policy.trusted_writers.is_empty() {
            Writers::Trusted(
                t.policy
                    .trusted_writers
                    .iter()
                    .map(|w| w.spelled())
                    .collect(),
            )
        } else if let Some(uid) = t.owner_uid {
            Writers::Uid(uid)
        } else {
            Writers::RootOwner {
                group: t.policy.group.as_ref().map(|g| g.name.clone()),
            }
        };
        Some(Spec { path, writers })
    }
}

/// What the watcher saw since its last batch.
#[derive(Debug, Default)]
pub struct Batch {
    pub written: Vec<Written>,
    pub foreign: Vec<Foreign>,
    /// The kernel's queue overflowed: some writes were not seen.
    pub lost: bool,
    /// Nothing was written for [`QUIET`] after something was: the time to save what was
    /// counted, rather than waiting for the next write.
    pub quiet: bool,
}

/// After writes, this long without one sends a `quiet` batch.
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(10);

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.foreign.is_empty() && !self.lost && !self.quiet
    }
}

/// One writer's writes into one cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cache: PathBuf,
    /// The files' owner, by name (uid when it has none).
    pub user: String,
    /// The writer's unit; empty outside one, or when the pid is not known.
    pub unit: String,
    pub bytes: u64,
    pub entries: u64,
}

/// An entry written into a cache by someone other than its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub cache: PathBuf,
    /// The file, beneath the cache (`ab/abcd…-d`).
    pub entry: String,
    /// Its owner.
    pub owner_uid: u32,
    /// The writer (0 when the kernel does not say), with what `/proc` said of it while it ran.
    pub pid: i32,
    pub proc: Option<ProcInfo>,
    /// More foreign entries of the same process and cache this minute, not logged one by one.
    pub more: u64,
}

/// What `/proc/PID` said about a writer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcInfo {
    pub comm: String,
    /// NUL-separated arguments joined by spaces, at most [`MAX_CMDLINE`] bytes.
    pub cmdline: String,
    pub uid: u32,
    pub unit: String,
}

/// Command lines are cut here in logs.
pub const MAX_CMDLINE: usize = 512;

/// Creates the fanotify group, then gives up `CAP_SYS_ADMIN` for good: only
/// `fanotify_init` needs it (for the writers' pids), and the agent never needs it again
/// (marks on directories and reading events do not). Call it before any thread starts:
/// capabilities belong to threads, and later threads inherit the creator's.
pub fn open() -> Result<Group, String> {
    let g = Group::init().map_err(|e| format!("fanotify is unavailable: {e}"));
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        if let Err(e) = caps::drop(None, set, caps::Capability::CAP_SYS_ADMIN) {
            tracing::error!("cannot drop CAP_SYS_ADMIN: {e}");
        }
    }
    g
}

/// Adds the running agent's figures to a `check` report: how writes are seen, and each build
/// cache's top writers of the last day.
pub fn attach(report: &mut crate::report::Report, t: &tally::Tally) {
    report.writes = Some(match (t.mode, &t.unavailable) {
        (Some(Mode::Privileged), _) => {
            format!("attributed by the running agent (pid {}, fanotify)", t.pid)
        }
        (Some(Mode::Unprivileged), _) => format!(
            "attributed by the running agent (pid {}, fanotify without CAP_SYS_ADMIN: units unknown)",
            t.pid
        ),
        (None, why) => format!(
            "not attributed by the running agent (pid {}): {}",
            t.pid,
            why.as_deref().unwrap_or("fanotify is unavailable")
        ),
    });
    if t.mode.is_none() {
        return;
    }
    let since = report.generated_at - 86_400;
    for c in &mut report.caches {
        let (Some(path), crate::policy::CacheKind::Build, true) = (&c.path, c.kind, c.exists)
        else {
            continue;
        };
        let rows = t.top(&path.to_string_lossy(), since, TOP_WRITERS);
        c.top_writers = Some(
            rows.into_iter()
                .map(|r| crate::report::TopWriter {
                    user: r.user,
                    unit: r.unit,
                    bytes: r.bytes,
                    entries: r.entries,
                })
                .collect(),
        );
    }
}

/// Writers `check` shows per cache.
pub const TOP_WRITERS: usize = 5;
