//! Phase 2: one walk over everything but the action records (all of it when permissions
//! are to be fixed). Outputs go with their evicted action (past the floor) or, orphaned, by
//! their own age, never one a surviving action names; an executable output directory goes
//! whole, under its lock; permissions are fixed children-first ([`super::fix`]). Foreign
//! entries and the quarantine are never entered or changed.

use super::actions::OutputNames;
use super::{Evictor, fail};
use crate::plan::Reason;
use crate::safefs::{self, Dir, Kind, Stat};
use crate::scan::Violation;
use crate::scan::layout::{self, Class};
use crate::scan::walk::{Entry, Skip, Visit};
use std::ffi::CStr;
use std::io;
use std::path::PathBuf;

pub(super) struct RestWalk<'a> {
    pub(super) ev: Evictor<'a>,
    /// What every action record named, sealed after phase 1.
    names: &'a OutputNames,
    /// Fix permissions too (then every entry is looked at, action records included).
    fix: bool,
}

impl<'a> RestWalk<'a> {
    pub(super) fn new(ev: Evictor<'a>, names: &'a OutputNames, fix: bool) -> Self {
        RestWalk { ev, names, fix }
    }

    /// Should output `name` (`<hex>-d`, a file or an executable's directory) last used at
    /// `last_use` go? Never if a surviving action names it; if an evicted one does, for the
    /// same reason once past the floor; otherwise by its own age.
    fn output_verdict(&self, name: &CStr, last_use: i64) -> Option<Reason> {
        if self.ev.plan.eviction.is_none() || self.names.is_live(name) {
            return None;
        }
        self.ev.verdict(last_use).or_else(|| {
            if self.ev.shard_locked || self.ev.now - last_use < self.ev.floor() {
                return None;
            }
            self.names.paired(name)
        })
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
                fail(&mut self.ev.out, rel, "list", &e);
                return None;
            }
        };
        let mut bytes = st.alloc;
        let mut batch = Vec::new();
        loop {
            if let Err(e) = listing.next_batch(safefs::LIST_BATCH, &mut batch) {
                fail(&mut self.ev.out, rel, "list", &e);
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
                        fail(&mut self.ev.out, &crel, "evict", &e);
                        return None;
                    }
                };
                if cst.kind() == Kind::Dir {
                    fail(
                        &mut self.ev.out,
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
                    self.ev.out.refused.entry(v).or_default().note(crel);
                    return None;
                }
                if cst.kind() == Kind::File && cst.nlink > 1 {
                    self.ev
                        .out
                        .refused
                        .entry(Violation::Hardlink)
                        .or_default()
                        .note(crel);
                    return None;
                }
                if !self.ev.remove_file(dir, n, &cst, &crel) && !self.ev.dry {
                    return None;
                }
                bytes += cst.alloc;
            }
        }
        if self.ev.dry {
            return Some(bytes);
        }
        match parent.remove(name, st) {
            Ok(()) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                fail(&mut self.ev.out, rel, "evict", &e);
                None
            }
        }
    }
}

impl Visit for RestWalk<'_> {
    fn wants(&self, depth: usize, name: &CStr) -> bool {
        // Phase 1 has seen (and refused, if need be) every action record already.
        self.fix || !layout::may_be_action(depth, name.to_bytes())
    }

    fn file(&mut self, e: &Entry) {
        let class = self.ev.class(e);
        match e.st.kind() {
            Kind::Symlink => return self.ev.refuse(Violation::Symlink, e),
            Kind::Special => return self.ev.refuse(Violation::Special, e),
            _ => {}
        }
        if class == Class::Foreign {
            // Outside Go's layout: never evicted, never given the policy's permissions.
            return self.ev.refuse(Violation::Foreign, e);
        }
        if class == Class::Quarantine {
            // The quarantine stays as integrity left it (0700, never evicted).
            return;
        }
        if self.ev.dry
            && class == Class::Action
            && e.st.nlink == 1
            && self.ev.verdict(self.ev.used(e.st)).is_some()
        {
            // Phase 1 would have removed it: a dry run must not say it would fix it too.
            return;
        }
        if class == Class::Output
            && let Some(reason) = self.output_verdict(e.name, self.ev.used(e.st))
            && (self.ev.evict_file(e, reason) || e.st.nlink > 1)
        {
            return;
        }
        if self.fix {
            self.ev.fix_entry(e, None);
        }
    }

    fn enter(&mut self, e: &Entry, dir: &Dir) -> bool {
        let class = self.ev.class(e);
        self.ev.enter_shard(e, class, dir);
        if class == Class::Foreign {
            // Never entered: nothing under a foreign directory is ours to change.
            self.ev.refuse(Violation::Foreign, e);
            return false;
        }
        if class == Class::Quarantine {
            return false;
        }
        if class == Class::Exec && self.ev.plan.eviction.is_some() && !self.names.is_live(e.name) {
            // The directory's own atime moves whenever anyone lists it; its use is its file's
            // and its mtime (what cmd/go's `markUsed` sets on an executable's hit).
            let mut last = e.st.mtime;
            let by = self.ev.plan.last_use;
            let _ = dir.for_each_name(|n| {
                if let Ok(s) = dir.stat(n) {
                    last = last.max(s.last_use(by));
                }
            });
            if let (Some(reason), Some(parent)) = (self.output_verdict(e.name, last), e.parent) {
                if !super::may_evict_in(&mut self.ev.out, dir, &e.rel()) {
                    return true;
                }
                if let Some(b) = self.remove_exec(parent, e.name, e.st, dir, &e.rel()) {
                    self.ev.count_evicted(reason, b);
                }
                return false;
            }
        }
        true
    }

    fn leave(&mut self, e: &Entry, dir: &Dir) {
        if self.fix {
            self.ev.fix_entry(e, Some(dir));
        }
        if e.depth == 1 {
            self.ev.shard_locked = false;
        }
    }

    fn skipped(&mut self, e: &Entry, why: &Skip) {
        match why {
            Skip::Mount => self.ev.refuse(Violation::Mount, e),
            Skip::TooDeep => self.ev.refuse(Violation::TooDeep, e),
            Skip::Unreadable(err) => fail(&mut self.ev.out, &e.rel(), "read", err),
        }
    }

    fn error(&mut self, rel: PathBuf, err: &io::Error) {
        fail(&mut self.ev.out, &rel, "stat", err);
    }
}
