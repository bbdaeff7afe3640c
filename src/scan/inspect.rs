//! The inspection visitor: totals, ages, owners, entry classes, and every per-entry
//! deviation from the policy, gathered in one walk with bounded memory (counts plus a few
//! example paths per kind, never a list of all entries).

use super::layout::{self, Class};
use super::lru::Histogram;
use super::perms::{Grant, judge_entry, judge_unchanged};
use super::seen::Seen;
use super::units::{UnitLog, id_key};
use super::walk::{Entry, Skip, Visit};
use super::{Tally, Usage, Violation};
use crate::policy::CachePolicy;
use crate::safefs::{Dir, Kind, LastUse};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Everything one walk learned about a cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub allocated_bytes: u64,
    pub apparent_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Entries by what they are in Go's layout (build caches).
    pub classes: BTreeMap<Class, Usage>,
    /// Unix seconds of the least and most recent use of any eviction unit's entry (action
    /// records, outputs, executables; module versions), read as `last_use_signal` says: what
    /// is never evicted (the root, shards, `trim.txt` the agent rewrites) does not count.
    pub oldest_use: Option<i64>,
    pub newest_use: Option<i64>,
    /// Which time those ages and the histogram are read from (the policy's `last_use`).
    pub last_use_signal: LastUse,
    /// Evictable units older than `max_age` (and the floor): the histogram's count of them.
    pub past_max_age: Usage,
    /// Allocated bytes and entries per owner uid.
    pub owners: BTreeMap<u32, Usage>,
    pub violations: BTreeMap<Violation, Tally>,
    /// Age of trim.txt's mtime in seconds (build caches).
    pub trim_age_secs: Option<i64>,
    /// Entries whose ACLs were not read because their `ctime` proves them unchanged since
    /// an earlier walk saw them compliant (the `seen` module).
    #[serde(skip)]
    pub acl_unchanged: u64,
    /// Shared by all of one walk's inspectors.
    #[serde(skip)]
    pub histogram: Option<Arc<Histogram>>,
    /// The oldest of Go's entry files, oldest first, when asked for
    /// ([`InspectOptions::keep_oldest`]): what the daemon evicts without a walk.
    #[serde(skip)]
    pub oldest: Option<Arc<Vec<super::oldest::Candidate>>>,
}

impl Observed {
    pub fn inodes(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.specials
    }

    pub fn merge(&mut self, o: Observed) {
        self.allocated_bytes += o.allocated_bytes;
        self.apparent_bytes += o.apparent_bytes;
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.specials += o.specials;
        for (k, v) in o.classes {
            self.classes.entry(k).or_default().add(v.entries, v.bytes);
        }
        self.oldest_use = min_opt(self.oldest_use, o.oldest_use);
        self.newest_use = self.newest_use.max(o.newest_use);
        self.past_max_age
            .add(o.past_max_age.entries, o.past_max_age.bytes);
        for (k, v) in o.owners {
            self.owners.entry(k).or_default().add(v.entries, v.bytes);
        }
        for (k, v) in o.violations {
            self.violations.entry(k).or_default().merge(v);
        }
        self.trim_age_secs = self.trim_age_secs.or(o.trim_age_secs);
        self.acl_unchanged += o.acl_unchanged;
        if self.histogram.is_none() {
            self.histogram = o.histogram;
        }
    }
}

impl Observed {
    /// Bytes eviction could free at most with floor `floor_secs` (what a size cutoff can
    /// reach: [`Histogram::past_floor`]).
    pub fn freeable(&self, floor_secs: i64) -> u64 {
        self.histogram
            .as_ref()
            .map_or(0, |h| h.past_floor(floor_secs).1)
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// What the inspector should expect and gather beyond the basics.
#[derive(Debug, Clone, Copy)]
pub struct InspectOptions {
    pub now: i64,
    /// Every entry should belong to this uid (a single user's own cache).
    pub owner_uid: Option<u32>,
    /// Build the last-use histogram for eviction planning.
    pub histogram: bool,
    /// Read action records to pair each with the output it names, so the histogram counts
    /// eviction units exactly (see [`Inspector::action`]). Needed only where a byte target
    /// sets the cutoff; the histogram's total is the same either way.
    pub pair_units: bool,
    /// Which time is an entry's last use (the policy's `last_use`).
    pub last_use: LastUse,
    /// Keep the oldest entry files covering this many bytes ([`super::oldest`]); 0: none.
    pub keep_oldest: u64,
}

pub struct Inspector<'p> {
    policy: &'p CachePolicy,
    opts: InspectOptions,
    pub obs: Observed,
    xbuf: Vec<u8>,
    /// The executable output directory being walked: (allocated bytes, last use).
    exec: Option<(u64, i64)>,
    /// This thread's units, paired after the walk ([`UnitLog::fold`]).
    pub units: UnitLog,
    grant: Grant,
    /// Read action records to pair them with their outputs (see [`Inspector::action`]).
    pair: bool,
    /// Records the walk's threads may still keep for pairing, shared by all of them.
    pair_budget: Arc<AtomicUsize>,
    /// This thread's oldest entry files (see [`InspectOptions::keep_oldest`]).
    pub oldest: super::oldest::Oldest,
    /// What an earlier compliant walk saw of this cache (the `seen` module).
    seen: Option<Arc<Seen>>,
    /// The shard this thread is in was entered by that walk too.
    shard_known: bool,
    /// Inodes of the shards (root children) this thread entered, for the next proof.
    pub shards: HashSet<u64>,
}

/// At most this many records (16 bytes each: 32 MiB) are kept for pairing in one inspection.
/// Past it, entries count at their own last use, as without pairing: a user who fills a
/// cache with millions of names cannot make the agent's memory grow with them.
pub const MAX_PAIRED: usize = 2 << 20;

impl<'p> Inspector<'p> {
    /// `histogram`: where this walk's evictable units are counted, if anywhere.
    /// `pair_budget`: see [`MAX_PAIRED`]; one counter for all the walk's inspectors.
    pub fn new(
        policy: &'p CachePolicy,
        opts: InspectOptions,
        histogram: Option<Arc<Histogram>>,
        pair_budget: Arc<AtomicUsize>,
        seen: Option<Arc<Seen>>,
    ) -> Self {
        let obs = Observed {
            histogram,
            last_use_signal: opts.last_use,
            ..Observed::default()
        };
        Inspector {
            policy,
            opts,
            obs,
            xbuf: Vec::new(),
            exec: None,
            units: UnitLog::default(),
            grant: Grant::from_policy(policy),
            pair: opts.pair_units,
            pair_budget,
            oldest: super::oldest::Oldest::new(opts.keep_oldest),
            seen,
            shard_known: false,
            shards: HashSet::new(),
        }
    }

    fn class(&self, e: &Entry) -> Class {
        layout::class_of(self.policy.kind, e)
    }

    /// An entry's last use, by the cache's signal.
    fn used(&self, e: &Entry) -> i64 {
        e.st.last_use(self.opts.last_use)
    }

    /// One use of an eviction unit's entry, for the oldest and newest use.
    fn note_use(&mut self, used: i64) {
        self.obs.oldest_use = min_opt(self.obs.oldest_use, Some(used));
        self.obs.newest_use = self.obs.newest_use.max(Some(used));
    }

    fn flag(&mut self, v: Violation, e: &Entry) {
        self.obs.violations.entry(v).or_default().note(e.rel());
    }

    fn account(&mut self, e: &Entry, class: Class) {
        let st = e.st;
        self.obs.allocated_bytes += st.alloc;
        self.obs.apparent_bytes += st.size;
        match st.kind() {
            Kind::Dir => self.obs.dirs += 1,
            Kind::File => self.obs.files += 1,
            Kind::Symlink => self.obs.symlinks += 1,
            Kind::Special => self.obs.specials += 1,
        }
        self.obs.classes.entry(class).or_default().add(1, st.alloc);
        self.obs.owners.entry(st.uid).or_default().add(1, st.alloc);
        if class == Class::Meta && e.name == c"trim.txt" && st.kind() == Kind::File {
            // Go trusts the Unix seconds inside, not the mtime; so do we.
            self.obs.trim_age_secs = e
                .parent
                .and_then(|p| p.read_small(e.name, st, 64).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.trim().parse::<i64>().ok())
                .map(|t| self.opts.now - t);
        }
    }

    /// An action record: apply opens it (a file with one name only), removes it if it is old
    /// enough and reads the output it names, which then follows it; one it keeps (hardlinked)
    /// keeps its output. Read as apply reads it, so the units here are apply's.
    ///
    /// Only when asked (`pair_units`: a byte target is about to set the cutoff): reading
    /// every record through a pinned fd is most of what inspection then costs (`check` of
    /// 100k entries: 0.73 s warm and 4.1 s cold with it, 0.26 s and 0.82 s without), and an
    /// age-only cutoff does not depend on the pairing. Without it, actions and outputs count
    /// at their own last use, which `go` keeps in step (it marks both used on a hit).
    fn action(&mut self, e: &Entry) {
        if !self.pair || !self.take_pair_budget() {
            if let Some(h) = &self.obs.histogram
                && e.st.nlink == 1
            {
                self.units
                    .action(h, self.opts.now, None, self.used(e), e.st.alloc);
            }
            return;
        }
        let Some(parent) = e.parent else { return };
        let Ok(f) = parent.open_read(e.name, e.st) else {
            return;
        };
        let names = crate::safefs::read_up_to(f, 512, e.st.size)
            .ok()
            .and_then(|r| super::layout::action_output(&r))
            .and_then(|o| id_key(&o));
        if e.st.nlink > 1 {
            if let Some(k) = names {
                self.units.kept_action(k);
            }
            return;
        }
        if let Some(h) = &self.obs.histogram {
            self.units
                .action(h, self.opts.now, names, self.used(e), e.st.alloc);
        }
    }

    /// An output file or executable directory apply may evict. Unpaired, it counts at its
    /// own last use at once, so inspection keeps nothing per entry.
    fn output(&mut self, name: &std::ffi::CStr, last_use: i64, bytes: u64) {
        if self.pair
            && self.take_pair_budget()
            && let Some(k) = id_key(name.to_bytes())
        {
            return self.units.output(k, last_use, bytes);
        }
        if let Some(h) = &self.obs.histogram {
            h.add(self.opts.now - last_use, bytes);
        }
    }

    /// One more record may be kept for pairing (see [`MAX_PAIRED`]).
    fn take_pair_budget(&self) -> bool {
        self.pair_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Ownership, group, setgid, ACL and other-access checks for a file or directory.
    fn check_perms(&mut self, e: &Entry, dir: Option<&Dir>) {
        let st = e.st;
        if let Some(uid) = self.opts.owner_uid
            && st.uid != uid
        {
            self.flag(Violation::ForeignOwner, e);
        }
        let ctime = |s: &crate::safefs::Stat| (s.ctime, i64::from(s.ctime_nsec));
        let parent = e.parent.map_or((i64::MAX, 0), |p| ctime(&p.st));
        let j = match &self.seen {
            Some(s) if s.unchanged(e.depth, ctime(st), self.shard_known, parent) => {
                self.obs.acl_unchanged += 1;
                judge_unchanged(&self.grant, st, dir.is_some())
            }
            _ => match judge_entry(&self.grant, e, dir, &mut self.xbuf) {
                Some(j) => j,
                None => return,
            },
        };
        for v in j.todo {
            self.flag(v, e);
        }
    }
}

impl Visit for Inspector<'_> {
    fn file(&mut self, e: &Entry) {
        let class = self.class(e);
        self.account(e, class);
        match e.st.kind() {
            Kind::Symlink => return self.flag(Violation::Symlink, e),
            Kind::Special => return self.flag(Violation::Special, e),
            Kind::Dir => {}
            Kind::File => {}
        }
        if e.st.nlink > 1 {
            // Go never hardlinks; a second name may be a file outside the cache.
            self.flag(Violation::Hardlink, e);
        }
        if class == Class::Foreign {
            // Not Go's: counted and reported, but its permissions are none of our business.
            return self.flag(Violation::Foreign, e);
        }
        if class == Class::Quarantine {
            // Ours, private on purpose: counted, never judged by the cache's permissions.
            return;
        }
        self.check_perms(e, None);
        let file = e.st.kind() == Kind::File;
        if file && matches!(class, Class::Action | Class::Output) {
            self.note_use(self.used(e));
            if e.st.nlink == 1 && e.depth == 2 {
                self.oldest.offer(e.name.to_bytes(), e.st, self.used(e));
            }
        }
        let units = self.obs.histogram.is_some() && file;
        match class {
            Class::Action if units => self.action(e),
            // A hardlinked output is never removed: not a unit.
            Class::Output if units && e.st.nlink == 1 => {
                self.output(e.name, self.used(e), e.st.alloc)
            }
            Class::ExecContent => {
                let used = self.used(e);
                if let Some((b, t)) = &mut self.exec {
                    *b += e.st.alloc;
                    *t = (*t).max(used);
                }
            }
            _ => {}
        }
    }

    fn enter(&mut self, e: &Entry, dir: &Dir) -> bool {
        let class = self.class(e);
        self.account(e, class);
        if class == Class::Foreign {
            // Walked for its size; every entry under it is foreign too.
            self.flag(Violation::Foreign, e);
            return true;
        }
        if class == Class::Quarantine {
            return true;
        }
        if e.depth == 1 {
            self.shard_known = self.seen.as_ref().is_some_and(|s| s.knows_shard(e.st.ino));
            self.shards.insert(e.st.ino);
        }
        self.check_perms(e, Some(dir));
        if class == Class::Exec {
            // The directory's own atime moves whenever anyone lists it; its use is its file's
            // and its mtime (what cmd/go's `markUsed` sets on an executable's hit).
            self.exec = Some((e.st.alloc, e.st.mtime));
        }
        true
    }

    fn leave(&mut self, e: &Entry, _dir: &Dir) {
        if e.depth == 2
            && let Some((b, t)) = self.exec.take()
        {
            self.note_use(t);
            if self.obs.histogram.is_some() {
                self.output(e.name, t, b);
            }
        }
    }

    fn skipped(&mut self, e: &Entry, why: &Skip) {
        let v = match why {
            Skip::Mount => Violation::Mount,
            Skip::TooDeep => Violation::TooDeep,
            Skip::Unreadable(_) => Violation::Unreadable,
        };
        self.flag(v, e);
    }

    fn error(&mut self, rel: PathBuf, _err: &std::io::Error) {
        self.obs
            .violations
            .entry(Violation::Unreadable)
            .or_default()
            .note(rel);
    }
}
