//! `apply`: the only code that changes a cache.
//!
//! Phases per cache, as systemd-tmpfiles orders them, each its own walk with its own visitor:
//! create a missing root ([`root`]); for a module cache, whole module versions
//! (`modcache`); for a build cache with eviction, a walk over the action records only
//! ([`actions`]: evict those at least as old as the plan's cutoff, never younger than the
//! floor; learn which outputs the evicted and the surviving ones name); one walk over the
//! rest ([`rest`]) that evicts outputs (with their evicted action, or orphans by their own
//! age, never one a survivor names) and fixes group, ACLs, setgid and other access
//! children-first ([`fix`]); finally rewrite trim.txt ([`root`]) and re-measure the cache.
//! Apply reads nothing but the [`Plan`]: what `enforce --json` prints is what runs.
//! Every change goes through `safefs` (fd-based, re-checked identity, no symlinks, no mounts,
//! no hardlinked files). A failing entry is counted and the walk goes on. In dry-run mode the
//! same decisions are made and logged as "would …" but no syscall that changes anything runs.

mod actions;
mod fix;
pub mod known;
mod rest;
mod root;

use crate::logging::{action, verb};
use crate::plan::{CachePlan, Plan, Reason};
use crate::policy::CacheKind;
use crate::safefs::{Dir, Kind, Stat};
use crate::scan::layout::{self, Class};
use crate::scan::walk::{self, Entry};
use crate::scan::{Tally, Usage, Violation};
use actions::{ActionWalk, OutputNames};
use rest::RestWalk;
use root::{TrimSkip, create_root, rewrite_trim};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::path::PathBuf;

pub const SCHEMA: &str = "gocache-warden.outcome/v1";

#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheOutcome {
    pub name: String,
    pub path: PathBuf,
    pub created: bool,
    pub evicted: BTreeMap<Reason, Usage>,
    pub fixed: BTreeMap<Violation, u64>,
    /// Entries left alone on purpose (hardlinks, symlinks, mounts…).
    pub refused: BTreeMap<Violation, Tally>,
    /// Actions that failed ("path: error" examples).
    pub failed: Tally,
    /// Failures by what was being done (evict, fix, read, stat, …).
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Shards (or executables' directories) skipped for eviction because root held a lock
    /// on them (another agent, an operator's tool).
    pub locked_skipped: u64,
    /// Locks on shards or executables' directories, or module versions held past
    /// [`crate::locks::PATIENCE`], that someone other than root held: ignored, eviction went
    /// on; examples name the directory or version and the holders.
    pub locks_ignored: Tally,
    pub trim_rewritten: bool,
    /// Allocated bytes of the cache measured after eviction (a walk that only counts), when
    /// anything was evicted; `None` in a dry run or when nothing went.
    pub size_after: Option<u64>,
    /// trim.txt was due but someone held a lock on it: skipped rather than waited for.
    pub trim_skipped_locked: bool,
}

impl CacheOutcome {
    fn merge(&mut self, o: CacheOutcome) {
        for (k, v) in o.evicted {
            self.evicted.entry(k).or_default().add(v.entries, v.bytes);
        }
        for (k, v) in o.fixed {
            *self.fixed.entry(k).or_default() += v;
        }
        for (k, v) in o.refused {
            self.refused.entry(k).or_default().merge(v);
        }
        self.failed.merge(o.failed);
        for (k, v) in o.failed_by_kind {
            *self.failed_by_kind.entry(k).or_default() += v;
        }
        self.locked_skipped += o.locked_skipped;
        self.locks_ignored.merge(o.locks_ignored);
    }

    pub fn changed(&self) -> bool {
        self.created || self.trim_rewritten || !self.evicted.is_empty() || !self.fixed.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub schema: &'static str,
    pub dry_run: bool,
    pub caches: Vec<CacheOutcome>,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        self.caches.iter().any(CacheOutcome::changed)
    }
    pub fn failures(&self) -> u64 {
        self.caches.iter().map(|c| c.failed.count).sum()
    }
    pub fn summary(&self) -> String {
        let mut ev = Usage::default();
        let mut fixed = 0;
        for c in &self.caches {
            for u in c.evicted.values() {
                ev.add(u.entries, u.bytes);
            }
            fixed += c.fixed.values().sum::<u64>();
        }
        format!(
            "{} {} entries ({}), {} {} entries, {} failure(s)",
            verb(self.dry_run, "evicted", "would evict"),
            ev.entries,
            crate::policy::value::human_bytes(ev.bytes),
            verb(self.dry_run, "fixed", "would fix"),
            fixed,
            self.failures()
        )
    }
}

pub fn apply(plan: &Plan, dry_run: bool) -> Outcome {
    let caches = plan
        .caches
        .iter()
        .filter(|c| c.skipped.is_none())
        .map(|c| apply_cache(c, plan.now, dry_run))
        .collect();
    Outcome {
        schema: SCHEMA,
        dry_run,
        caches,
    }
}

/// Opens a cache's root as apply does: a per-user cache's beneath its user's home without
/// following their links ([`crate::users::open_root`]), any other from `/`.
fn open_cache_root(
    path: &std::path::Path,
    user: Option<&crate::report::CacheUser>,
) -> io::Result<Dir> {
    match user {
        Some(u) => crate::users::open_root(path, u),
        None => Dir::open_root(path),
    }
}

/// Takes `dir`'s lock for eviction without waiting; `true` to go on evicting in it. A lock
/// someone else holds stops eviction there, for this sweep, only when root holds it: cmd/go
/// never locks these directories, so any other holder is a user keeping eviction away
/// (`crate::locks`). That one is named in the log and the outcome, and eviction goes on,
/// each file re-checked before its unlink as always.
fn may_evict_in(out: &mut CacheOutcome, dir: &Dir, rel: &std::path::Path) -> bool {
    let (path, skipped, ignored) = (&out.path, &mut out.locked_skipped, &mut out.locks_ignored);
    may_evict(path, skipped, ignored, dir, rel)
}

/// [`may_evict_in`] for any outcome: `skipped` and `ignored` are its lock counters.
pub(crate) fn may_evict(
    cache: &std::path::Path,
    skipped: &mut u64,
    ignored: &mut Tally,
    dir: &Dir,
    rel: &std::path::Path,
) -> bool {
    if dir.try_lock().unwrap_or(true) {
        return true;
    }
    let holders = crate::locks::holders(dir.st.dev, dir.st.ino);
    let who = crate::locks::describe(&holders);
    let shown = crate::scan::display_path(rel);
    if crate::locks::honoured(&holders) {
        tracing::info!(cache_path = %cache.display(), "{shown}: locked by {who}: skipped this sweep");
        *skipped += 1;
        return false;
    }
    // Said once per cache and apply, with examples (`apply_cache`): a member can lock all
    // 256 shards, and each walk meets each one.
    ignored.count += 1;
    let example = PathBuf::from(format!("{shown}: locked by {who}"));
    if ignored.examples.len() < crate::scan::MAX_EXAMPLES && !ignored.examples.contains(&example) {
        ignored.examples.push(example);
    }
    true
}

fn fail(out: &mut CacheOutcome, rel: &std::path::Path, what: &str, e: &io::Error) {
    tracing::error!(gocache_warden_action = action::EVICT_FAILED, cache_path = %out.path.display(), error = %e, "{what} {} failed: {e}", crate::scan::display_path(rel));
    out.failed.count += 1;
    *out.failed_by_kind.entry(what.to_string()).or_default() += 1;
    if out.failed.examples.len() < crate::scan::MAX_EXAMPLES {
        out.failed.examples.push(PathBuf::from(format!(
            "{}: {what}: {e}",
            crate::scan::display_path(rel)
        )));
    }
}

fn apply_cache(c: &CachePlan, now: i64, dry: bool) -> CacheOutcome {
    crate::progress::tick();
    let mut out = CacheOutcome {
        name: c.name.clone(),
        path: c.path.clone(),
        ..Default::default()
    };
    if let Some(cr) = &c.create {
        if dry {
            tracing::info!(cache_path = %c.path.display(), "would create {}", c.path.display());
            out.created = true;
            return out;
        }
        match create_root(c, cr) {
            Ok(()) => {
                tracing::info!(gocache_warden_action = action::MODE_FIX, cache_path = %c.path.display(), "created {} (owner {}, group {}, mode {:o})", c.path.display(), cr.uid, cr.gid, cr.mode);
                out.created = true;
            }
            Err(e) => {
                fail(&mut out, std::path::Path::new("."), "create", &e);
                return out;
            }
        }
    }
    if c.eviction.is_none() && c.fixes.is_empty() && !c.rewrite_trim && !out.created {
        // Nothing planned (e.g. a cache go has not created yet): nothing to open.
        return out;
    }
    let root = match open_cache_root(&c.path, c.user.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            fail(&mut out, std::path::Path::new("."), "open", &e);
            return out;
        }
    };
    let fix = !c.fixes.is_empty() || out.created;
    // Phase 1 (build caches with eviction): action records. Evicted actions mark their
    // outputs to go too; surviving ones say which outputs are still referenced, so phase 2
    // never evicts an output a live action names (a build may have resolved it already:
    // golang/go#31948) and does evict orphans. Phase 2 meets every output in its own shard
    // anyway, so pairing costs no extra open, stat or lock there.
    if let (CacheKind::Module, Some(ev)) = (c.kind, &c.eviction) {
        evict_modules(&mut out, &root, ev, c.last_use, now, dry);
    }
    let mut names = OutputNames::default();
    if c.eviction.is_some() && c.kind == CacheKind::Build {
        let visitors = walk::walk(&root, walk::WalkOptions::default(), || {
            ActionWalk::new(Evictor::new(c, now, dry), fix)
        });
        for v in visitors {
            names.absorb(v.found);
            out.merge(v.ev.out);
        }
        names.seal();
    }
    if (c.eviction.is_some() && c.kind == CacheKind::Build) || fix {
        let visitors = walk::walk(&root, walk::WalkOptions::default(), || {
            RestWalk::new(Evictor::new(c, now, dry), &names, fix)
        });
        for v in visitors {
            out.merge(v.ev.out);
        }
    }
    if !dry && !out.evicted.is_empty() {
        // What the cache holds now, measured by a walk of its own: what apply freed is not
        // what it counted when a member wrote or removed entries meanwhile. (Adding up what
        // the two phases left was tried for issue #24 and undercounts: an action record
        // written after phase 1 passed its shard is seen by neither phase, and under a
        // stream of builds and copies that was most of the cache: the VM test caught it.)
        out.size_after = Some(crate::scan::allocated_bytes(&root));
    }
    if c.rewrite_trim {
        if dry {
            out.trim_rewritten = true;
        } else {
            match rewrite_trim(&root, now) {
                Ok(None) => out.trim_rewritten = true,
                Ok(Some(TrimSkip::Locked)) => {
                    tracing::warn!(cache_path = %c.path.display(), "trim.txt not rewritten: someone holds a lock on it (skipped, not waited for)");
                    out.trim_skipped_locked = true;
                }
                Err(e) => fail(&mut out, std::path::Path::new("trim.txt"), "rewrite", &e),
            }
        }
    }
    for (reason, u) in &out.evicted {
        let r = reason.as_str();
        tracing::info!(gocache_warden_action = action::EVICT, cache_path = %c.path.display(), entries = u.entries, bytes = u.bytes, reason = r, dry_run = dry,
            "{} {} entries ({}) from {} for {r}", verb(dry, "evicted", "would evict"), u.entries, crate::policy::value::human_bytes(u.bytes), c.path.display());
    }
    for (v, n) in &out.fixed {
        tracing::info!(gocache_warden_action = fix_action(*v), cache_path = %c.path.display(), entries = *n, dry_run = dry,
            "{} {} of {n} entries in {}", verb(dry, "fixed", "would fix"), v.as_str(), c.path.display());
    }
    warn_locks_ignored(&out);
    out
}

/// One line per cache for the locks eviction ignored ([`may_evict_in`]).
fn warn_locks_ignored(out: &CacheOutcome) {
    warn_ignored(&out.path, &out.locks_ignored);
}

/// [`warn_locks_ignored`] for any outcome.
pub(crate) fn warn_ignored(path: &std::path::Path, l: &Tally) {
    if l.count == 0 {
        return;
    }
    let examples: Vec<String> = l.examples.iter().map(|p| p.display().to_string()).collect();
    tracing::warn!(gocache_warden_action = action::LOCK_IGNORED, cache_path = %path.display(), entries = l.count,
        "{}: evicted in {} place{} someone other than root held locked (only root's locks stop eviction; a module version's after {}s): {}", path.display(), l.count, if l.count == 1 { "" } else { "s" }, crate::locks::PATIENCE, examples.join("; "));
}

/// Module caches: every module version at least as old as the cutoff goes, whole, under
/// cmd/go's own lock (see `modcache`).
fn evict_modules(
    out: &mut CacheOutcome,
    root: &Dir,
    ev: &crate::plan::Eviction,
    by: crate::safefs::LastUse,
    now: i64,
    dry: bool,
) {
    let swept = crate::modcache::evict_old(root, &out.path, ev, by, now, dry);
    for (reason, u) in swept.evicted {
        out.evicted
            .entry(reason)
            .or_default()
            .add(u.entries, u.bytes);
    }
    out.locked_skipped += swept.locked.len() as u64;
    for l in swept.lock_ignored {
        out.locks_ignored.count += 1;
        if out.locks_ignored.examples.len() < crate::scan::MAX_EXAMPLES {
            out.locks_ignored.examples.push(PathBuf::from(l));
        }
    }
    for (name, e) in &swept.failed {
        fail(out, std::path::Path::new(name), "evict", e);
    }
}

fn fix_action(v: Violation) -> &'static str {
    match v {
        Violation::Group => action::GROUP_FIX,
        Violation::Acl | Violation::DefaultAcl => action::ACL_FIX,
        _ => action::MODE_FIX,
    }
}

/// What both eviction walks share, one per walking thread: the plan's rules for one entry,
/// the removal of one file, and what this thread did.
struct Evictor<'a> {
    plan: &'a CachePlan,
    now: i64,
    dry: bool,
    out: CacheOutcome,
    xbuf: Vec<u8>,
    /// The current shard is locked by someone else: evict nothing in it.
    shard_locked: bool,
}

impl<'a> Evictor<'a> {
    fn new(plan: &'a CachePlan, now: i64, dry: bool) -> Self {
        let out = CacheOutcome {
            name: plan.name.clone(),
            path: plan.path.clone(),
            ..Default::default()
        };
        Evictor {
            plan,
            now,
            dry,
            out,
            xbuf: Vec::new(),
            shard_locked: false,
        }
    }

    fn class(&self, e: &Entry) -> Class {
        layout::class_of(self.plan.kind, e)
    }

    /// Entering a shard: evict nothing in it while root holds its lock ([`may_evict_in`]).
    fn enter_shard(&mut self, e: &Entry, class: Class, dir: &Dir) {
        if class == Class::Shard && self.plan.eviction.is_some() && !self.dry {
            self.shard_locked = !may_evict_in(&mut self.out, dir, &e.rel());
        }
    }

    /// Should a unit last used at `last_use` go, and for which reason?
    fn verdict(&self, last_use: i64) -> Option<Reason> {
        let ev = self.plan.eviction.as_ref()?;
        let age = self.now - last_use;
        if age < ev.floor_secs || age < ev.cutoff_age_secs || self.shard_locked {
            return None;
        }
        Some(ev.reason(age))
    }

    /// An entry's last use, by the signal the plan was made with.
    fn used(&self, st: &Stat) -> i64 {
        st.last_use(self.plan.last_use)
    }

    fn floor(&self) -> i64 {
        self.plan
            .eviction
            .as_ref()
            .map_or(i64::MAX, |e| e.floor_secs)
    }

    fn refuse(&mut self, v: Violation, e: &Entry) {
        self.out.refused.entry(v).or_default().note(e.rel());
    }

    fn count_evicted(&mut self, reason: Reason, bytes: u64) {
        self.out.evicted.entry(reason).or_default().add(1, bytes);
    }

    /// Removes one file entry after re-checking it (same inode, same mtime, and still unused
    /// by the plan's signal: a hit since the scan moves mtime, and with the atime signal any
    /// read moves atime, and saves it); `false` if it was not removed.
    fn remove_file(&mut self, dir: &Dir, name: &CStr, st: &Stat, rel: &std::path::Path) -> bool {
        self.remove_file_fresh(dir, name, st, None, rel)
    }

    /// [`Self::remove_file`]; `fresh`: the entry's state taken a moment ago through a pinned
    /// fd (it is the re-check then, instead of one more `statx`).
    fn remove_file_fresh(
        &mut self,
        dir: &Dir,
        name: &CStr,
        st: &Stat,
        fresh: Option<&Stat>,
        rel: &std::path::Path,
    ) -> bool {
        if st.kind() == Kind::File && st.nlink > 1 {
            return false;
        }
        if self.dry {
            tracing::debug!("would evict {}", crate::scan::display_path(rel));
            return true;
        }
        let (now, floor, by) = (self.now, self.floor(), self.plan.last_use);
        let due = |s: &Stat| now - s.last_use(by) >= floor;
        let r = match fresh {
            Some(f) => dir.remove_if_fresh(name, st, f, due),
            None => dir.remove_if(name, st, due),
        };
        match r {
            Ok(removed) => removed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                fail(&mut self.out, rel, "evict", &e);
                false
            }
        }
    }

    /// Evicts an action record or output file for `reason`; `true` if it went (or would, in
    /// a dry run).
    fn evict_file(&mut self, e: &Entry, reason: Reason) -> bool {
        self.evict_file_fresh(e, reason, None)
    }

    /// [`Self::evict_file`] with the entry's state just taken (see [`Self::remove_file_fresh`]).
    fn evict_file_fresh(&mut self, e: &Entry, reason: Reason, fresh: Option<&Stat>) -> bool {
        let Some(parent) = e.parent else { return false };
        if e.st.nlink > 1 {
            self.refuse(Violation::Hardlink, e);
            return false;
        }
        if !self.remove_file_fresh(parent, e.name, e.st, fresh, &e.rel()) {
            return false;
        }
        self.count_evicted(reason, e.st.alloc);
        true
    }
}
