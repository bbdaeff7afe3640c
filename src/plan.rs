//! The plan: what `enforce` will change, as a value.
//!
//! `plan(&CachePolicy, &CacheReport)` is pure: it reads only the observation `check` made.
//! A plan is a set of *rules with expectations* rather than a list of every entry (a cache
//! of a million entries must not be held in memory): "evict every unit last used at least
//! N seconds before `now`", "bring every entry to group G / ACL A". Apply re-checks each entry
//! against the rule at the moment it acts. The JSON form (`schema:
//! "gocache-warden.plan/v1"`) is a stable interface; `Display` is the human form, one
//! "would …" line per change.

use crate::acl::Want;
use crate::policy::value::Perm;
use crate::policy::value::{human_bytes, human_duration};
use crate::policy::{CacheKind, CachePolicy, Scope};
use crate::report::CacheReport;
use crate::scan::{Tally, Usage, Violation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SCHEMA: &str = "gocache-warden.plan/v1";

/// Go skips its own trim while trim.txt is younger than 24 h; rewriting it when it is older
/// than this keeps every user's `go` off the (since Go 1.21 fatal) trim path.
pub const TRIM_REWRITE_AFTER_SECS: i64 = 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub schema: String,
    pub host: String,
    pub scope: Scope,
    /// The reference time (Unix seconds) all ages in the plan are measured from.
    pub now: i64,
    pub caches: Vec<CachePlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachePlan {
    pub name: String,
    pub kind: CacheKind,
    pub path: PathBuf,
    /// Create the missing root with this owner, group and mode (then ACLs as below).
    pub create: Option<CreateRoot>,
    pub eviction: Option<Eviction>,
    /// Deviations `enforce` will fix, by kind (counts and examples from the scan).
    pub fixes: BTreeMap<Violation, Tally>,
    /// Deviations `enforce` will not touch (symlinks, hardlinks, mounts…): for a person.
    pub refused: BTreeMap<Violation, Tally>,
    pub rewrite_trim: bool,
    /// The permissions entries are brought to, if the policy sets any.
    pub permissions: Option<Permissions>,
    pub size_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// Nothing was inspected: the cache could not be opened.
    pub skipped: Option<String>,
    /// A per-user cache: apply opens its root as `check` did, beneath this user's home
    /// (nothing the user controls followed) and owned by this uid.
    pub user: Option<crate::users::CacheUser>,
    /// Which time is an entry's last use: apply re-reads it by the same signal inspection
    /// planned with (the policy's `last_use`).
    #[serde(default)]
    pub last_use: crate::safefs::LastUse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRoot {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Permissions {
    pub group: Option<String>,
    pub gid: Option<u32>,
    pub setgid: bool,
    pub group_access: Option<Perm>,
    pub other: Option<Perm>,
}

impl Permissions {
    /// What apply brings every entry to (and inspection judged against).
    pub fn grant(&self) -> crate::scan::perms::Grant {
        crate::scan::perms::Grant {
            gid: self.gid,
            setgid: self.setgid,
            group_access: self.group_access,
            other: self.other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Age,
    Size,
    /// The filesystem holding the cache had less free space or inodes than `min_free` or
    /// `min_free_inodes` (see `headroom`).
    Free,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Size => "size",
            Reason::Free => "free",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Eviction {
    /// Evict every unit (action, output, executable directory) at least this old.
    pub cutoff_age_secs: i64,
    /// Never evict anything younger than this, whatever the cutoff says.
    pub floor_secs: i64,
    /// Units at least this old go for reason "age"; younger ones above the cutoff for "size".
    pub max_age_secs: Option<i64>,
    /// What the scan expects to go, by reason.
    pub expected: BTreeMap<Reason, Usage>,
    /// The cleaning goal for size (low_water), when over the limit.
    pub target_bytes: Option<u64>,
    /// The floor keeps the cache above its target.
    pub floor_limited: bool,
    /// With `floor_limited`: what eviction may not take, by cause (see `scan::Held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<crate::report::Held>,
    /// Set when the filesystem's headroom lowered `cutoff_age_secs` (to this).
    pub free_cutoff_secs: Option<i64>,
    /// The cutoff the cache's own limits would have had (none: only headroom evicts).
    pub own_cutoff_secs: Option<i64>,
}

impl Eviction {
    /// What goes by this eviction according to `h`, by reason: every unit past the cutoff,
    /// each under [`Eviction::reason`] (the one rule; apply asks it per unit).
    pub fn expect(&self, h: &crate::scan::lru::Histogram) -> BTreeMap<Reason, Usage> {
        let mut out: BTreeMap<Reason, Usage> = BTreeMap::new();
        for (age, n, bytes) in h.buckets_from(self.cutoff_age_secs.max(self.floor_secs)) {
            out.entry(self.reason(age)).or_default().add(n, bytes);
        }
        out
    }

    /// Why a unit `age` seconds old (past the cutoff and the floor) goes.
    pub fn reason(&self, age: i64) -> Reason {
        if self.max_age_secs.is_some_and(|m| age >= m) {
            Reason::Age
        } else if self.free_cutoff_secs.is_some() && self.own_cutoff_secs.is_none_or(|o| age < o) {
            Reason::Free
        } else {
            Reason::Size
        }
    }
}

impl CachePlan {
    pub fn is_empty(&self) -> bool {
        let evicts = self
            .eviction
            .as_ref()
            .is_some_and(|e| !e.expected.is_empty());
        self.create.is_none() && !evicts && self.fixes.is_empty() && !self.rewrite_trim
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.caches.iter().all(CachePlan::is_empty)
    }

    /// One line: what the plan amounts to.
    pub fn summary(&self) -> String {
        let mut evict = Usage::default();
        let mut fixes = 0;
        let mut creates = 0;
        for c in &self.caches {
            if let Some(e) = &c.eviction {
                for u in e.expected.values() {
                    evict.add(u.entries, u.bytes);
                }
            }
            fixes += c.fixes.values().map(|t| t.count).sum::<u64>();
            creates += usize::from(c.create.is_some());
        }
        if self.is_empty() {
            return format!("nothing to do in {} cache(s)", self.caches.len());
        }
        format!(
            "{} cache(s): evict ~{} entries ({}), fix {} entries, create {}",
            self.caches.len(),
            evict.entries,
            human_bytes(evict.bytes),
            fixes,
            creates
        )
    }
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

/// Plans one cache from what `check` saw. Pure.
/// `user`: whose cache it is, for a per-user cache (apply opens its root as theirs).
pub fn plan_cache(
    p: &CachePolicy,
    r: &CacheReport,
    user: Option<&crate::users::CacheUser>,
) -> Option<CachePlan> {
    let path = r.path.clone()?;
    let want_any = Want::for_entry(p, true, 0o777);
    let permissions = (p.group.is_some() || p.other.is_some()).then(|| Permissions {
        group: p.group.as_ref().map(|g| g.name.clone()),
        gid: p.group.as_ref().map(|g| g.gid),
        setgid: p.setgid,
        group_access: p.group_access,
        other: p.other,
    });
    let mut plan = CachePlan {
        name: p.name.clone(),
        kind: p.kind,
        path,
        create: None,
        eviction: None,
        fixes: BTreeMap::new(),
        refused: BTreeMap::new(),
        rewrite_trim: false,
        permissions,
        size_bytes: 0,
        limit_bytes: r.limit_bytes,
        skipped: r
            .inspect_error
            .clone()
            .or_else(|| r.refused.clone())
            .or_else(|| {
                r.read_only.then(|| {
                    format!(
                        "{} is on a read-only mount",
                        r.path.as_deref().unwrap_or(Path::new("")).display()
                    )
                })
            }),
        user: user.cloned(),
        last_use: p.last_use,
    };
    if r.read_only {
        // Nothing can change there: a plan that says so, not one that fails entry by entry.
        return Some(plan);
    }
    let Some(obs) = &r.observed else {
        if !r.exists && p.create && r.inspect_error.is_none() && r.refused.is_none() {
            let uid = p.owner.as_ref().map_or(0, |o| o.uid);
            let gid = p.group.as_ref().map_or(0, |g| g.gid);
            let other = p.other.map_or(0, |o| u32::from(o.bits()));
            let group = want_any.map_or(7, |w| u32::from(w.group.bits()));
            let mode = 0o700 | group << 3 | other | if p.setgid { libc::S_ISGID } else { 0 };
            plan.create = Some(CreateRoot { uid, gid, mode });
            // Written at creation, under the default ACL, so it is group-writable from the start.
            plan.rewrite_trim = p.kind == CacheKind::Build && p.rewrite_trim;
        }
        return Some(plan);
    };
    plan.size_bytes = obs.allocated_bytes;
    for (v, t) in &obs.violations {
        if v.fixable() {
            plan.fixes.insert(*v, t.clone());
        } else {
            plan.refused.insert(*v, t.clone());
        }
    }
    if p.kind == CacheKind::Build {
        plan.rewrite_trim = p.rewrite_trim
            && obs
                .trim_age_secs
                .is_none_or(|a| !(0..TRIM_REWRITE_AFTER_SECS).contains(&a));
    }
    plan.eviction = plan_eviction(p, r, obs);
    Some(plan)
}

fn plan_eviction(
    p: &CachePolicy,
    r: &CacheReport,
    obs: &crate::scan::Observed,
) -> Option<Eviction> {
    let h = obs.histogram.as_ref()?;
    let floor = secs(p.min_age);
    let max_age = p.max_age.map(secs);
    let mut cutoff: Option<i64> = max_age.map(|m| m.max(floor));
    let (mut target, mut floor_limited) = (None, false);
    // The limit is on the whole cache, as `du` measures it: what never goes (fuzz/, young
    // units, foreign entries, the shards) counts, and when it keeps the cache above low
    // water the cutoff stops at the floor (`floor_limited`: the cache is held over it).
    if let (Some(limit), Some(low)) = (r.limit_bytes, r.low_water_bytes)
        && let Some(c) = h.size_cutoff(obs.allocated_bytes, limit, low, floor)
    {
        cutoff = Some(cutoff.map_or(c.min_age_secs, |a| a.min(c.min_age_secs)));
        target = Some(low);
        floor_limited = c.floor_limited;
    }
    let mut ev = Eviction {
        cutoff_age_secs: cutoff?,
        floor_secs: floor,
        max_age_secs: max_age,
        expected: BTreeMap::new(),
        target_bytes: target,
        floor_limited,
        held: floor_limited.then(|| crate::report::Held::of(obs, floor)),
        free_cutoff_secs: None,
        own_cutoff_secs: None,
    };
    ev.expected = ev.expect(h);
    if ev.expected.is_empty() && target.is_none() {
        return None;
    }
    Some(ev)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan: {}", self.summary())?;
        for c in &self.caches {
            writeln!(
                f,
                "\n{} cache \"{}\": {}",
                c.kind,
                c.name,
                crate::scan::display_path(&c.path)
            )?;
            if let Some(s) = &c.skipped {
                writeln!(f, "  skipped: {s}")?;
            }
            if let Some(cr) = &c.create {
                writeln!(
                    f,
                    "  would create it: owner {} group {} mode {:o}, then apply its ACLs",
                    cr.uid, cr.gid, cr.mode
                )?;
            }
            if let Some(e) = &c.eviction {
                let ago = |s: i64| human_duration(Duration::from_secs(s.max(0) as u64));
                for (reason, u) in &e.expected {
                    writeln!(
                        f,
                        "  would evict ~{} entries ({}) for {}: unused for {} or more",
                        u.entries,
                        human_bytes(u.bytes),
                        reason.as_str(),
                        ago(e.cutoff_age_secs.max(if *reason == Reason::Age {
                            e.max_age_secs.unwrap_or(0)
                        } else {
                            0
                        }))
                    )?;
                }
                if let Some(t) = e.target_bytes {
                    writeln!(
                        f,
                        "  size {} of limit {}, cleaning to {}",
                        human_bytes(c.size_bytes),
                        human_bytes(c.limit_bytes.unwrap_or(0)),
                        human_bytes(t)
                    )?;
                }
                if e.floor_limited {
                    writeln!(
                        f,
                        "  note: what may not be evicted keeps the cache above its target{}",
                        e.held.map_or(String::new(), |h| format!(
                            ": {}",
                            h.describe(Duration::from_secs(e.floor_secs.max(0) as u64))
                        ))
                    )?;
                }
            }
            for (v, t) in &c.fixes {
                writeln!(f, "  would fix {} entries: {}", t.count, v.as_str())?;
                for ex in t.examples.iter().take(3) {
                    writeln!(f, "      e.g. {}", crate::scan::display_path(ex))?;
                }
            }
            for (v, t) in &c.refused {
                writeln!(
                    f,
                    "  will not touch {} entries: {} (see `check`)",
                    t.count,
                    v.as_str()
                )?;
            }
            if c.rewrite_trim {
                writeln!(
                    f,
                    "  would rewrite trim.txt (keeps users' go from running its own trim)"
                )?;
            }
            if c.is_empty() && c.skipped.is_none() {
                writeln!(f, "  nothing to do")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(own: Option<i64>, free: Option<i64>) -> Eviction {
        Eviction {
            cutoff_age_secs: free.or(own).unwrap_or(0),
            floor_secs: 3600,
            max_age_secs: Some(30 * 86400),
            expected: BTreeMap::new(),
            target_bytes: None,
            floor_limited: false,
            held: None,
            free_cutoff_secs: free,
            own_cutoff_secs: own,
        }
    }

    /// The plan's expectation by reason is the per-unit rule apply uses, summed.
    #[test]
    fn expected_by_reason_is_the_per_unit_rule() {
        let day = 86400;
        let h = crate::scan::lru::Histogram::default();
        let ages: Vec<i64> = (1..=50).map(|d| d * day + 7).collect();
        for a in &ages {
            h.add(*a, 1000);
        }
        let e = ev(Some(10 * day), Some(2 * day));
        let mut want: BTreeMap<Reason, Usage> = BTreeMap::new();
        for a in ages.iter().filter(|a| **a >= e.cutoff_age_secs) {
            want.entry(e.reason(*a)).or_default().add(1, 1000);
        }
        assert_eq!(e.expect(&h), want);
        assert_eq!(want.len(), 3);
    }

    #[test]
    fn reasons_age_then_the_caches_own_cutoff_then_headroom() {
        let day = 86400;
        // Over its size limit (own cutoff 10 days) on a filesystem short of space (2 days).
        let e = ev(Some(10 * day), Some(2 * day));
        assert_eq!(e.reason(40 * day), Reason::Age);
        assert_eq!(e.reason(12 * day), Reason::Size);
        assert_eq!(e.reason(3 * day), Reason::Free);
        // Only headroom evicts.
        assert_eq!(ev(None, Some(day)).reason(5 * day), Reason::Free);
        // No headroom: as before.
        assert_eq!(ev(Some(day), None).reason(5 * day), Reason::Size);
    }
}
