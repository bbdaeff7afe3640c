//! A disk that never fills: `min_free` and `min_free_inodes` per cache, enforced across every
//! Go cache of the policy on the same filesystem.
//!
//! When the filesystem holding a cache has less available space (`f_bavail`, what users'
//! builds can use) or fewer free inodes than the strictest `min_free` / `min_free_inodes` of
//! the caches on it, whatever filled it, the sweep lowers the eviction cutoff of **all** Go
//! caches on that filesystem to one common age: least recently used first, whoever owns the
//! entries, never past a cache's own `min_age` floor (`lru::joint_cutoff`). It cleans to a
//! low-water mark of [`LOW_WATER_FACTOR`] × the threshold (10% free → 12.5% free), as the
//! kubelet's image GC cleans from its high to its low threshold, so eviction does not run on
//! every write. The plan says so with reason `free`; `check` says what limits the
//! filesystem. Between sweeps the daemon polls the filesystems (see [`Probe`]).
//! This module plans and measures; only `apply` removes anything.

use crate::plan::{CachePlan, Eviction};
use crate::policy::CachePolicy;
use crate::policy::value::human_bytes;
use crate::report::{CacheReport, Finding, Severity, Target};
use crate::safefs::FsStat;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::policy::LOW_WATER_FACTOR;
/// How often the daemon looks at the filesystems of caches with headroom settings.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// While a filesystem stays short after a sweep (filled by something that is not a Go
/// cache, or the floors keep what is left), the poll asks for another sweep at most this
/// often, as BuildKit throttles its GC, instead of walking every cache every 5 s.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// `min_free` in bytes and `min_free_inodes` in inodes for the filesystem `fs`.
pub fn thresholds(p: &CachePolicy, fs: &FsStat) -> (Option<u64>, Option<u64>) {
    (
        p.min_free.map(|m| m.resolve(fs.size_bytes)),
        p.min_free_inodes_percent
            .map(|pct| (fs.inodes_total as f64 * pct / 100.0).ceil() as u64),
    )
}

fn low_water(threshold: u64, total: u64) -> u64 {
    ((threshold as f64 * LOW_WATER_FACTOR) as u64).min(total)
}

/// One filesystem below its headroom, and what it takes to get back to the low-water mark.
#[derive(Debug, Clone)]
pub struct Shortage {
    /// The least free space and inodes any inspection of it saw in this sweep.
    pub fs: FsStat,
    pub min_free_bytes: Option<u64>,
    pub min_free_inodes: Option<u64>,
    pub need_bytes: u64,
    pub need_inodes: u64,
    /// Indices (into the sweep's targets and reports) of the Go caches on it.
    pub members: Vec<usize>,
    /// What the members can free past their floors, oldest first.
    pub cutoff: crate::scan::lru::Cutoff,
}

impl Shortage {
    pub fn short_of_bytes(&self) -> bool {
        self.min_free_bytes.is_some_and(|m| self.fs.avail_bytes < m)
    }
    pub fn short_of_inodes(&self) -> bool {
        self.min_free_inodes
            .is_some_and(|m| self.fs.inodes_free < m)
    }
}

/// The filesystems below the headroom of some cache on them. `targets` and `reports` are
/// index-aligned (as `check` and `sweep` build them).
pub fn shortages(targets: &[Target], reports: &[CacheReport]) -> Vec<Shortage> {
    let mut by_dev: BTreeMap<u64, Shortage> = BTreeMap::new();
    for (i, r) in reports.iter().enumerate() {
        let Some(fs) = r.filesystem else { continue };
        if r.refused.is_some() {
            continue;
        }
        let s = by_dev.entry(fs.dev).or_insert_with(|| Shortage {
            fs,
            min_free_bytes: None,
            min_free_inodes: None,
            need_bytes: 0,
            need_inodes: 0,
            members: Vec::new(),
            cutoff: crate::scan::lru::Cutoff {
                min_age_secs: 0,
                entries: 0,
                bytes: 0,
                floor_limited: false,
            },
        });
        s.fs.avail_bytes = s.fs.avail_bytes.min(fs.avail_bytes);
        s.fs.inodes_free = s.fs.inodes_free.min(fs.inodes_free);
        s.min_free_bytes = s.min_free_bytes.max(r.min_free_bytes);
        s.min_free_inodes = s.min_free_inodes.max(r.min_free_inodes);
        if r.observed.as_ref().is_some_and(|o| o.histogram.is_some()) {
            s.members.push(i);
        }
    }
    by_dev
        .into_values()
        .filter_map(|mut s| {
            if !s.short_of_bytes() && !s.short_of_inodes() {
                return None;
            }
            if s.short_of_bytes() {
                let low = low_water(s.min_free_bytes.unwrap_or(0), s.fs.size_bytes);
                s.need_bytes = low.saturating_sub(s.fs.avail_bytes);
            }
            if s.short_of_inodes() {
                let low = low_water(s.min_free_inodes.unwrap_or(0), s.fs.inodes_total);
                s.need_inodes = low.saturating_sub(s.fs.inodes_free);
            }
            let hs: Vec<_> = s
                .members
                .iter()
                .filter_map(|&i| {
                    let h = reports[i].observed.as_ref()?.histogram.as_ref()?;
                    Some((h.as_ref(), floor(&targets[i].policy)))
                })
                .collect();
            s.cutoff = crate::scan::lru::joint_cutoff(&hs, s.need_bytes, s.need_inodes);
            Some(s)
        })
        .collect()
}

fn floor(p: &CachePolicy) -> i64 {
    p.min_age.as_secs() as i64
}

/// Lowers the eviction cutoff of every member of every shortage to the common one (never
/// below its floor), adding the units that go for headroom to the plan with reason `free`.
pub fn plan(
    shortages: &[Shortage],
    targets: &[Target],
    reports: &[CacheReport],
    plans: &mut [CachePlan],
) {
    for s in shortages {
        for &i in &s.members {
            let r = &reports[i];
            let Some(h) = r.observed.as_ref().and_then(|o| o.histogram.as_ref()) else {
                continue;
            };
            let Some(plan) = plans
                .iter_mut()
                .find(|p| Some(&p.path) == r.path.as_ref() && p.skipped.is_none())
            else {
                continue;
            };
            let p = &targets[i].policy;
            let cut = s.cutoff.min_age_secs.max(floor(p));
            let own = plan.eviction.as_ref().map(|e| e.cutoff_age_secs);
            if own.is_some_and(|o| o <= cut) {
                continue;
            }
            if h.at_least(cut).0 <= own.map_or(0, |o| h.at_least(o).0) {
                continue;
            }
            let ev = plan.eviction.get_or_insert_with(|| Eviction {
                cutoff_age_secs: cut,
                floor_secs: floor(p),
                max_age_secs: p.max_age.map(|m| m.as_secs() as i64),
                expected: BTreeMap::new(),
                target_bytes: None,
                floor_limited: false,
                held: None,
                free_cutoff_secs: None,
                own_cutoff_secs: None,
            });
            ev.own_cutoff_secs = own;
            ev.cutoff_age_secs = cut;
            ev.free_cutoff_secs = Some(cut);
            ev.floor_limited |= s.cutoff.floor_limited;
            ev.expected = ev.expect(h);
        }
    }
}

/// Adds to each cache on a short filesystem a finding saying what limits it and what
/// `enforce` would do about it.
pub fn explain(targets: &[Target], reports: &mut [CacheReport]) {
    let short = shortages(targets, reports);
    for s in &short {
        let n = s.members.len();
        let mut what = Vec::new();
        if s.short_of_bytes() {
            let m = s.min_free_bytes.unwrap_or(0);
            what.push((
                "low-free-space",
                format!(
                    "the filesystem holding it has {} available of {}, below min_free {}",
                    human_bytes(s.fs.avail_bytes),
                    human_bytes(s.fs.size_bytes),
                    human_bytes(m)
                ),
                format!("{} available", human_bytes(low_water(m, s.fs.size_bytes))),
            ));
        }
        if s.short_of_inodes() {
            let m = s.min_free_inodes.unwrap_or(0);
            what.push((
                "low-free-inodes",
                format!(
                    "the filesystem holding it has {} of {} inodes free, below min_free_inodes ({m})",
                    s.fs.inodes_free, s.fs.inodes_total
                ),
                format!("{} inodes free", low_water(m, s.fs.inodes_total)),
            ));
        }
        for (kind, msg, goal) in what {
            let mut fix = format!(
                "evict the least recently used entries of the {n} Go cache(s) of the policy on it (oldest first, whoever owns them, never past min_age) until {goal}: {} entries ({})",
                s.cutoff.entries,
                human_bytes(s.cutoff.bytes)
            );
            if s.cutoff.floor_limited {
                fix.push_str(", which is not enough: the rest is held by the min_age floors or by something that is not a Go cache");
            }
            for r in reports.iter_mut() {
                if r.refused.is_none() && r.filesystem.is_some_and(|f| f.dev == s.fs.dev) {
                    r.findings.push(Finding {
                        kind: kind.into(),
                        severity: Severity::Warning,
                        count: 1,
                        bytes: None,
                        message: msg.clone(),
                        fix: fix.clone(),
                        auto_fix: true,
                        examples: vec![],
                    });
                }
            }
        }
    }
}

/// The headroom part of `check`'s filesystem line.
pub fn describe_limits(r: &CacheReport) -> String {
    let mut parts = Vec::new();
    if let Some(b) = r.min_free_bytes {
        parts.push(format!("keep {} free", human_bytes(b)));
    }
    if let Some(i) = r.min_free_inodes {
        parts.push(format!("keep {i} inodes free"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" (policy: {})", parts.join(", "))
    }
}

/// One filesystem the daemon polls between sweeps: `statvfs` of a cache root on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub path: PathBuf,
    pub dev: u64,
    pub min_free_bytes: Option<u64>,
    pub min_free_inodes: Option<u64>,
}

/// The probes for the filesystems of a sweep's caches with headroom settings: one per
/// filesystem, with the strictest thresholds on it.
pub fn probes(reports: &[CacheReport]) -> Vec<Probe> {
    let mut by_dev: BTreeMap<u64, Probe> = BTreeMap::new();
    for r in reports {
        let (Some(fs), Some(path)) = (r.filesystem, &r.path) else {
            continue;
        };
        if r.refused.is_some() || (r.min_free_bytes.is_none() && r.min_free_inodes.is_none()) {
            continue;
        }
        let p = by_dev.entry(fs.dev).or_insert_with(|| Probe {
            path: path.clone(),
            dev: fs.dev,
            min_free_bytes: None,
            min_free_inodes: None,
        });
        p.min_free_bytes = p.min_free_bytes.max(r.min_free_bytes);
        p.min_free_inodes = p.min_free_inodes.max(r.min_free_inodes);
    }
    by_dev.into_values().collect()
}

/// Is the probed filesystem below its headroom now? Costs an `open(O_PATH)` of the root (no
/// symlink followed), an `fstat`, an `fstatvfs` and a `close`. `false` when the root is gone
/// or is now on another filesystem: the next sweep finds out what happened.
pub fn is_short(p: &Probe) -> bool {
    use nix::fcntl::OFlag;
    let Ok(fd) = nix::fcntl::open(
        &p.path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    use std::os::fd::AsFd;
    let Ok(st) = crate::safefs::fstat(fd.as_fd()) else {
        return false;
    };
    if st.dev != p.dev {
        return false;
    }
    let Ok(fs) = crate::safefs::fs_stat_fd(fd.as_fd(), st.dev) else {
        return false;
    };
    p.min_free_bytes.is_some_and(|m| fs.avail_bytes < m)
        || p.min_free_inodes.is_some_and(|m| fs.inodes_free < m)
}

/// Does any cache of the policy ask for headroom? (No poll otherwise.)
pub fn wanted(policy: &crate::policy::Policy) -> bool {
    policy
        .caches
        .iter()
        .any(|c| c.min_free.is_some() || c.min_free_inodes_percent.is_some())
}
