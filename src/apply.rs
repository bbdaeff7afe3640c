//! `apply`: the only code that changes a cache.
//!
//! Phases per cache, as systemd-tmpfiles orders them: create a missing root; for a build cache
//! with eviction, a walk over the action records only (evict those at least as old as the
//! plan's cutoff, never younger than the floor; learn which outputs the evicted and the
//! surviving ones name); one walk over the rest that evicts outputs (their own age, or their
//! evicted action's, never one a survivor names) and fixes group, ACLs, setgid and other
//! access children-first; finally rewrite trim.txt.
//! Every change goes through `safefs` (fd-based, re-checked identity, no symlinks, no mounts,
//! no hardlinked files). A failing entry is counted and the walk goes on. In dry-run mode the
//! same decisions are made and logged as "would …" but no syscall that changes anything runs.

use crate::acl::Acl;
use crate::logging::{action, verb};
use crate::plan::{CachePlan, Plan, Reason};
use crate::policy::CacheKind;
use crate::safefs::{self, Dir, Kind, Stat};
use crate::scan::layout::{self, Class};
use crate::scan::perms::{Judgement, judge_entry};
use crate::scan::units::id_key;
use crate::scan::walk::{self, Entry, Skip, Visit};
use crate::scan::{Tally, Usage, Violation};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;
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
    /// Shards skipped for eviction because someone held a lock on them.
    pub locked_skipped: u64,
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
    let opened = match &c.user {
        Some(u) => crate::users::open_root(&c.path, u),
        None => Dir::open_root(&c.path),
    };
    let root = match opened {
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
        evict_modules(&mut out, &root, ev, now, dry);
    }
    let mut names = OutputNames::default();
    if c.eviction.is_some() && c.kind == CacheKind::Build {
        let none = OutputNames::default();
        let visitors = walk::walk(&root, walk::WalkOptions::default(), || {
            Applier::new(c, now, dry, Phase::Actions { then_fix: fix }, &none)
        });
        for v in visitors {
            names.absorb(v.found);
            out.merge(v.out);
        }
        names.seal();
    }
    if (c.eviction.is_some() && c.kind == CacheKind::Build) || fix {
        let visitors = walk::walk(&root, walk::WalkOptions::default(), || {
            Applier::new(c, now, dry, Phase::Rest { fix }, &names)
        });
        for v in visitors {
            out.merge(v.out);
        }
    }
    if !dry && !out.evicted.is_empty() {
        // What the cache holds now, measured: what apply freed is not what it counted when a
        // member wrote or removed entries meanwhile.
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
    out
}

/// Module caches: every module version at least as old as the cutoff goes, whole.
fn evict_modules(
    out: &mut CacheOutcome,
    root: &Dir,
    ev: &crate::plan::Eviction,
    now: i64,
    dry: bool,
) {
    let cutoff = ev.cutoff_age_secs.max(ev.floor_secs);
    for u in crate::modcache::units(root) {
        crate::progress::tick();
        let age = now - u.last_use;
        if age < cutoff {
            continue;
        }
        let reason = ev.reason(age);
        match crate::modcache::evict(root, &u, now, ev.floor_secs, dry) {
            Ok(Some(bytes)) => {
                tracing::debug!("{} module {}", verb(dry, "evicted", "would evict"), u.name);
                out.evicted.entry(reason).or_default().add(1, bytes);
            }
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.locked_skipped += 1,
            Err(e) => fail(out, std::path::Path::new(&u.name), "evict", &e),
        }
    }
}

fn fix_action(v: Violation) -> &'static str {
    match v {
        Violation::Group => action::GROUP_FIX,
        Violation::Acl | Violation::DefaultAcl => action::ACL_FIX,
        _ => action::MODE_FIX,
    }
}

fn create_root(c: &CachePlan, cr: &crate::plan::CreateRoot) -> io::Result<()> {
    let parent = c
        .path
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = c
        .path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let parent = Dir::open_root(parent)?;
    let dir = parent.mkdir(&safefs::component(name)?, 0o700)?;
    nix::unistd::fchown(dir.as_fd(), Some(cr.uid.into()), Some(cr.gid.into()))?;
    if let Some(w) = c
        .permissions
        .as_ref()
        .and_then(|p| p.grant().want(true, 0o777))
    {
        let cur = Acl::from_mode(cr.mode);
        write_acl(&dir.proc_path(), &w.access_acl(&cur), false)?;
        write_acl(&dir.proc_path(), &w.default_acl(), true)?;
    }
    nix::sys::stat::fchmod(
        dir.as_fd(),
        nix::sys::stat::Mode::from_bits_truncate(cr.mode),
    )?;
    Ok(())
}

fn write_acl(path: &str, a: &Acl, default: bool) -> io::Result<()> {
    let mut p = a.to_posix();
    let r = if default {
        p.write_default_acl(path)
    } else {
        p.write_acl(path)
    };
    r.map_err(|e| {
        e.as_io_error().map_or_else(
            || io::Error::other(e.to_string()),
            |i| io::Error::new(i.kind(), i.to_string()),
        )
    })
}

/// Why trim.txt was not rewritten although the plan said so, when that is no failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrimSkip {
    /// Someone holds a `flock` on it (a member's `go` reading it, or anyone who can open it
    /// holding it forever): waiting would let any cache user stop every later sweep.
    Locked,
}

/// Rewrites trim.txt with the current time, under the same `flock` Go's lockedfile takes,
/// never waiting for it. A trim.txt we create gets the group and the group and other
/// access of the root (Go's 0666 as the cache's directories allow it), whatever our umask:
/// members' own `go` must still be able to rewrite it when the agent no longer runs.
fn rewrite_trim(root: &Dir, now: i64) -> io::Result<Option<TrimSkip>> {
    use std::io::Write;
    let name = c"trim.txt";
    let (mut f, created) = match root.stat(name) {
        Ok(st) => (
            root.pin(name, &st)?
                .reopen(nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_NONBLOCK)?,
            false,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // What the agent creates in a cache belongs to the cache's owner (a user's own
            // go must be able to rewrite it), not to root.
            let f = root.create_file(name, 0o666)?;
            nix::unistd::fchown(&f, Some(root.st.uid.into()), Some(root.st.gid.into()))?;
            (f, true)
        }
        Err(e) => return Err(e),
    };
    if created {
        share_like_root(root, &f)?;
    }
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(Some(TrimSkip::Locked));
        }
        return Err(e);
    }
    f.set_len(0)?;
    f.write_all(now.to_string().as_bytes())?;
    Ok(None)
}

/// Gives a file we just created in `root` the root's group and Go's 0666 limited to what the
/// root grants (so 0660 in a 2770 cache), whatever the umask. With a default ACL on the root
/// the kernel already derived the mode from it (no umask applies) and nothing is changed.
fn share_like_root(root: &Dir, f: &std::fs::File) -> io::Result<()> {
    let mut buf = Vec::new();
    if root
        .get_own_xattr(c"system.posix_acl_default", &mut buf)?
        .is_some()
    {
        return Ok(());
    }
    use std::os::fd::AsFd;
    if safefs::fstat(f.as_fd())?.gid != root.st.gid {
        nix::unistd::fchown(f.as_fd(), None, Some(root.st.gid.into()))?;
    }
    let mode = root.st.mode & 0o666;
    nix::sys::stat::fchmod(f.as_fd(), nix::sys::stat::Mode::from_bits_truncate(mode))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Action records only: evict old ones (marking their outputs), note what survivors
    /// name. `then_fix`: phase 2 will look at every entry, not just outputs.
    Actions { then_fix: bool },
    /// Everything else: orphaned or unreferenced old outputs, then permission fixes.
    Rest { fix: bool },
}

/// What phase 1 learns about outputs from the action records, by [`id_key`].
#[derive(Default)]
struct OutputNames {
    /// Named by a surviving action: never evicted.
    live: Vec<u64>,
    /// Named by an action evicted for age or for size: goes the same way (if not live and
    /// past the floor), whatever its own age.
    paired_age: Vec<u64>,
    paired_size: Vec<u64>,
    paired_free: Vec<u64>,
}

impl OutputNames {
    fn absorb(&mut self, o: OutputNames) {
        self.live.extend_from_slice(&o.live);
        self.paired_age.extend_from_slice(&o.paired_age);
        self.paired_size.extend_from_slice(&o.paired_size);
        self.paired_free.extend_from_slice(&o.paired_free);
    }

    fn seal(&mut self) {
        for v in [
            &mut self.live,
            &mut self.paired_age,
            &mut self.paired_size,
            &mut self.paired_free,
        ] {
            v.sort_unstable();
            v.dedup();
        }
    }

    fn note(&mut self, record: &[u8], evicted_for: Option<Reason>) {
        let Some(p) = layout::action_output(record).and_then(|o| id_key(&o)) else {
            return;
        };
        match evicted_for {
            None => self.live.push(p),
            Some(Reason::Age) => self.paired_age.push(p),
            Some(Reason::Size) => self.paired_size.push(p),
            Some(Reason::Free) => self.paired_free.push(p),
        }
    }

    fn is_live(&self, name: &CStr) -> bool {
        id_key(name.to_bytes()).is_some_and(|p| self.live.binary_search(&p).is_ok())
    }

    fn paired(&self, name: &CStr) -> Option<Reason> {
        let p = id_key(name.to_bytes())?;
        if self.paired_age.binary_search(&p).is_ok() {
            Some(Reason::Age)
        } else if self.paired_size.binary_search(&p).is_ok() {
            Some(Reason::Size)
        } else if self.paired_free.binary_search(&p).is_ok() {
            Some(Reason::Free)
        } else {
            None
        }
    }
}

struct Applier<'a> {
    plan: &'a CachePlan,
    now: i64,
    dry: bool,
    phase: Phase,
    out: CacheOutcome,
    xbuf: Vec<u8>,
    /// The current shard is locked by someone else: evict nothing in it.
    shard_locked: bool,
    /// Phase 1: what this thread's action records name.
    found: OutputNames,
    /// Phase 2: what all of them named, sealed.
    names: &'a OutputNames,
}

impl<'a> Applier<'a> {
    fn new(plan: &'a CachePlan, now: i64, dry: bool, phase: Phase, names: &'a OutputNames) -> Self {
        let out = CacheOutcome {
            name: plan.name.clone(),
            path: plan.path.clone(),
            ..Default::default()
        };
        Applier {
            plan,
            now,
            dry,
            phase,
            out,
            xbuf: Vec::new(),
            shard_locked: false,
            found: OutputNames::default(),
            names,
        }
    }

    fn fix(&self) -> bool {
        matches!(self.phase, Phase::Rest { fix: true })
    }

    /// Should output `name` (`<hex>-d`, a file or an executable's directory) last used at
    /// `last_use` go? Never if a surviving action names it; if an evicted one does, for the
    /// same reason once past the floor; otherwise by its own age.
    fn output_verdict(&self, name: &CStr, last_use: i64) -> Option<Reason> {
        if self.plan.eviction.is_none() || self.names.is_live(name) {
            return None;
        }
        self.verdict(last_use).or_else(|| {
            if self.shard_locked || self.now - last_use < self.floor() {
                return None;
            }
            self.names.paired(name)
        })
    }

    fn class(&self, e: &Entry) -> Class {
        layout::class_of(self.plan.kind, e)
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

    /// Removes one file entry after re-checking it (same inode, same mtime, and still unused:
    /// a read since the scan moves atime and saves it); `false` if it was not removed.
    fn remove_file(&mut self, dir: &Dir, name: &CStr, st: &Stat, rel: &std::path::Path) -> bool {
        if st.kind() == Kind::File && st.nlink > 1 {
            return false;
        }
        if self.dry {
            tracing::debug!("would evict {}", crate::scan::display_path(rel));
            return true;
        }
        let (now, floor) = (self.now, self.floor());
        match dir.remove_if(name, st, |fresh| now - fresh.last_use() >= floor) {
            Ok(removed) => removed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                fail(&mut self.out, rel, "evict", &e);
                false
            }
        }
    }

    /// Removes an executable output directory (Go 1.24+): its files, then itself.
    fn remove_exec(
        &mut self,
        parent: &Dir,
        name: &CStr,
        st: &Stat,
        dir: &Dir,
        rel: &std::path::Path,
    ) -> Option<u64> {
        // Streamed: a member can put any number of names in an output directory.
        let mut listing = match dir.listing() {
            Ok(l) => l,
            Err(e) => {
                fail(&mut self.out, rel, "list", &e);
                return None;
            }
        };
        let mut bytes = st.alloc;
        let mut batch = Vec::new();
        loop {
            if let Err(e) = listing.next_batch(safefs::LIST_BATCH, &mut batch) {
                fail(&mut self.out, rel, "list", &e);
                return None;
            }
            if batch.is_empty() {
                break;
            }
            for n in &batch {
                let crel = rel.join(safefs::name_os(n));
                let cst = match dir.stat(n) {
                    Ok(s) => s,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        fail(&mut self.out, &crel, "evict", &e);
                        return None;
                    }
                };
                if cst.kind() == Kind::Dir {
                    fail(
                        &mut self.out,
                        &crel,
                        "evict",
                        &io::Error::other("unexpected directory inside an executable output"),
                    );
                    return None;
                }
                if matches!(cst.kind(), Kind::Symlink | Kind::Special) {
                    // Go puts one regular file here; anything else is for a person to look at.
                    let v = if cst.kind() == Kind::Symlink {
                        Violation::Symlink
                    } else {
                        Violation::Special
                    };
                    self.out.refused.entry(v).or_default().note(crel);
                    return None;
                }
                if cst.kind() == Kind::File && cst.nlink > 1 {
                    self.out
                        .refused
                        .entry(Violation::Hardlink)
                        .or_default()
                        .note(crel);
                    return None;
                }
                if !self.remove_file(dir, n, &cst, &crel) && !self.dry {
                    return None;
                }
                bytes += cst.alloc;
            }
        }
        if self.dry {
            return Some(bytes);
        }
        match parent.remove(name, st) {
            Ok(()) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                fail(&mut self.out, rel, "evict", &e);
                None
            }
        }
    }

    /// Phase 1 for one action record: evict it (with its output) or note what it names.
    /// An action record is opened before the unlink and read after it, so our read never
    /// refreshes what we are judging. Evicted, it marks its output to go the same way; kept
    /// (not due, hardlinked, in use again, failed), it keeps its output.
    fn visit_action(&mut self, e: &Entry) {
        let Some(parent) = e.parent else { return };
        let Ok(record) = parent.open_read(e.name, e.st) else {
            return;
        };
        let evicted = self
            .verdict(e.st.last_use())
            .filter(|&reason| self.evict_file(e, reason));
        if let Ok(r) = safefs::read_up_to(record, 512, e.st.size) {
            self.found.note(&r, evicted);
        }
    }

    /// Evicts an action record or output file for `reason`; `true` if it went (or would, in
    /// a dry run).
    fn evict_file(&mut self, e: &Entry, reason: Reason) -> bool {
        let Some(parent) = e.parent else { return false };
        if e.st.nlink > 1 {
            self.refuse(Violation::Hardlink, e);
            return false;
        }
        if !self.remove_file(parent, e.name, e.st, &e.rel()) {
            return false;
        }
        self.count_evicted(reason, e.st.alloc);
        true
    }

    /// Brings one file or directory to the policy's group, ACLs, setgid and other access.
    fn fix_entry(&mut self, e: &Entry, dir: Option<&Dir>) {
        let Some(p) = &self.plan.permissions else {
            return;
        };
        let st = *e.st;
        let is_dir = dir.is_some();
        let Some(Judgement {
            todo,
            current,
            want,
            other_want,
        }) = judge_entry(&p.grant(), e, dir, &mut self.xbuf)
        else {
            return;
        };
        if todo.is_empty() {
            return;
        }
        let rel = e.rel();
        if !is_dir && st.nlink > 1 {
            // Changing it would change the file behind the other name too.
            self.refuse(Violation::Hardlink, e);
            return;
        }
        if self.dry {
            for v in todo {
                tracing::debug!(
                    "would fix {} of {}",
                    v.as_str(),
                    crate::scan::display_path(&rel)
                );
                *self.out.fixed.entry(v).or_default() += 1;
            }
            return;
        }
        let pinned;
        let (fd, path) = match dir {
            Some(d) => (d.as_fd(), d.proc_path()),
            None => {
                let Some(parent) = e.parent else { return };
                pinned = match parent.pin(e.name, &st) {
                    Ok(p) => p,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return,
                    Err(err) => return fail(&mut self.out, &rel, "pin", &err),
                };
                (pinned.as_fd(), pinned.proc_path())
            }
        };
        let res = (|| -> io::Result<()> {
            if todo.contains(&Violation::Group) {
                let gid = p.gid.map(Into::into);
                nix::unistd::fchownat(fd, "", None, gid, nix::fcntl::AtFlags::AT_EMPTY_PATH)?;
            }
            if let Some(w) = &want {
                if todo.contains(&Violation::Acl) || todo.contains(&Violation::OtherAccess) {
                    let mut a = w.access_acl(&current);
                    if let Some(o) = other_want {
                        a.other = o;
                    }
                    write_acl(&path, &a, false)?;
                }
                if todo.contains(&Violation::DefaultAcl) {
                    write_acl(&path, &w.default_acl(), true)?;
                }
            }
            // Last, the mode: chown and ACL writes may have cleared setgid; the group bits
            // are the ACL mask now and are kept as they are.
            let now = safefs::fstat(fd)?;
            let mut mode = now.perm_bits();
            if is_dir && p.setgid {
                mode |= libc::S_ISGID;
            }
            if let (Some(o), None) = (other_want, &want) {
                mode = (mode & !0o7) | u32::from(o.bits());
            }
            if mode != now.perm_bits() {
                nix::sys::stat::fchmodat(
                    nix::fcntl::AT_FDCWD,
                    path.as_str(),
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                for v in todo {
                    *self.out.fixed.entry(v).or_default() += 1;
                }
            }
            Err(err) => fail(&mut self.out, &rel, "fix", &err),
        }
    }
}

impl Visit for Applier<'_> {
    fn wants(&self, depth: usize, name: &CStr) -> bool {
        match self.phase {
            Phase::Actions { .. } => depth == 1 || layout::may_be_action(depth, name.to_bytes()),
            // Phase 1 has seen (and refused, if need be) every action record already.
            Phase::Rest { fix: false } => !layout::may_be_action(depth, name.to_bytes()),
            Phase::Rest { fix: true } => true,
        }
    }

    fn file(&mut self, e: &Entry) {
        let class = self.class(e);
        // Each entry is refused once: in phase 2 if it sees everything, else action records
        // in phase 1.
        let sees_all_later = matches!(self.phase, Phase::Actions { then_fix: true });
        match e.st.kind() {
            Kind::Symlink if !sees_all_later => return self.refuse(Violation::Symlink, e),
            Kind::Special if !sees_all_later => return self.refuse(Violation::Special, e),
            _ => {}
        }
        if let Phase::Actions { .. } = self.phase {
            if class == Class::Action && e.st.kind() == Kind::File {
                self.visit_action(e);
            }
            return;
        }
        if class == Class::Foreign {
            // Outside Go's layout: never evicted, never given the policy's permissions.
            return self.refuse(Violation::Foreign, e);
        }
        if class == Class::Quarantine {
            // The quarantine stays as integrity left it (0700, never evicted).
            return;
        }
        if self.dry
            && class == Class::Action
            && e.st.nlink == 1
            && self.verdict(e.st.last_use()).is_some()
        {
            // Phase 1 would have removed it: a dry run must not say it would fix it too.
            return;
        }
        if class == Class::Output
            && let Some(reason) = self.output_verdict(e.name, e.st.last_use())
            && (self.evict_file(e, reason) || e.st.nlink > 1)
        {
            return;
        }
        if self.fix() {
            self.fix_entry(e, None);
        }
    }

    fn enter(&mut self, e: &Entry, dir: &Dir) -> bool {
        let class = self.class(e);
        if class == Class::Shard && self.plan.eviction.is_some() && !self.dry {
            self.shard_locked = !dir.try_lock().unwrap_or(true);
            if self.shard_locked {
                self.out.locked_skipped += 1;
            }
        }
        if matches!(self.phase, Phase::Actions { .. }) {
            return e.depth == 0 || class == Class::Shard;
        }
        if class == Class::Foreign {
            // Never entered: nothing under a foreign directory is ours to change.
            self.refuse(Violation::Foreign, e);
            return false;
        }
        if class == Class::Quarantine {
            return false;
        }
        if class == Class::Exec && self.plan.eviction.is_some() && !self.names.is_live(e.name) {
            // The directory's own atime moves whenever anyone lists it; its use is its file's.
            let mut last = e.st.mtime;
            let _ = dir.for_each_name(|n| {
                if let Ok(s) = dir.stat(n) {
                    last = last.max(s.last_use());
                }
            });
            if let (Some(reason), Some(parent)) = (self.output_verdict(e.name, last), e.parent) {
                if !dir.try_lock().unwrap_or(false) {
                    self.out.locked_skipped += 1;
                    return true;
                }
                if let Some(b) = self.remove_exec(parent, e.name, e.st, dir, &e.rel()) {
                    self.count_evicted(reason, b);
                }
                return false;
            }
        }
        true
    }

    fn leave(&mut self, e: &Entry, dir: &Dir) {
        if self.fix() {
            self.fix_entry(e, Some(dir));
        }
        if e.depth == 1 {
            self.shard_locked = false;
        }
    }

    fn skipped(&mut self, e: &Entry, why: &Skip) {
        if matches!(self.phase, Phase::Actions { .. }) {
            return;
        }
        match why {
            Skip::Mount => self.refuse(Violation::Mount, e),
            Skip::TooDeep => self.refuse(Violation::TooDeep, e),
            Skip::Unreadable(err) => fail(&mut self.out, &e.rel(), "read", err),
        }
    }

    fn error(&mut self, rel: PathBuf, err: &io::Error) {
        fail(&mut self.out, &rel, "stat", err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(shard: &str, n: u64) -> String {
        format!("{shard}{n:062x}")
    }

    fn record(output: &str) -> Vec<u8> {
        format!("v1 {} {output} {:>20} {:>20}\n", hex("00", 1), 300, 1).into_bytes()
    }

    fn name(output: &str) -> std::ffi::CString {
        std::ffi::CString::new(format!("{output}-d")).expect("no NUL")
    }

    #[test]
    fn every_threads_names_are_merged_with_their_reasons() {
        let (live, aged, sized, stranger) =
            (hex("ab", 1), hex("ab", 2), hex("cd", 3), hex("ef", 4));
        let mut per_thread = [OutputNames::default(), OutputNames::default()];
        per_thread[0].note(&record(&live), None);
        per_thread[0].note(&record(&aged), Some(Reason::Age));
        per_thread[1].note(&record(&sized), Some(Reason::Size));
        // Two actions name the same output and one survives: it is in both sets, and
        // `output_verdict` asks `is_live` first, so the output stays.
        per_thread[1].note(&record(&live), Some(Reason::Age));
        per_thread[1].note(b"v1 garbage", Some(Reason::Age));
        let mut all = OutputNames::default();
        for t in per_thread {
            all.absorb(t);
        }
        all.seal();
        assert!(all.is_live(&name(&live)));
        assert_eq!(all.paired(&name(&live)), Some(Reason::Age));
        assert_eq!(all.paired(&name(&aged)), Some(Reason::Age));
        assert_eq!(all.paired(&name(&sized)), Some(Reason::Size));
        assert!(!all.is_live(&name(&stranger)));
        assert_eq!(all.paired(&name(&stranger)), None);
    }
}
