//! Phase 1 of a build cache's eviction: a walk over the action records only (the shards'
//! `<hex>-a` files, nothing else is even `statx`ed). A record at least as old as the cutoff
//! goes; evicted, it marks the output it names to go the same way; kept (not due, hardlinked,
//! in use again, failed), it keeps its output. Apply keeps 8 bytes per record for that.

use super::{Evictor, fail};
use crate::plan::Reason;
use crate::safefs::{self, Dir, Kind};
use crate::scan::Violation;
use crate::scan::layout::{self, Class};
use crate::scan::units::id_key;
use crate::scan::walk::{Entry, Visit};
use std::ffi::CStr;
use std::io;
use std::path::PathBuf;

/// What phase 1 learns about outputs from the action records, by [`id_key`].
#[derive(Default)]
pub(super) struct OutputNames {
    /// Named by a surviving action: never evicted.
    live: Vec<u64>,
    /// Named by an action evicted for age or for size: goes the same way (if not live and
    /// past the floor), whatever its own age.
    paired_age: Vec<u64>,
    paired_size: Vec<u64>,
    paired_free: Vec<u64>,
}

impl OutputNames {
    pub(super) fn absorb(&mut self, o: OutputNames) {
        self.live.extend_from_slice(&o.live);
        self.paired_age.extend_from_slice(&o.paired_age);
        self.paired_size.extend_from_slice(&o.paired_size);
        self.paired_free.extend_from_slice(&o.paired_free);
    }

    pub(super) fn seal(&mut self) {
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

    pub(super) fn is_live(&self, name: &CStr) -> bool {
        id_key(name.to_bytes()).is_some_and(|p| self.live.binary_search(&p).is_ok())
    }

    pub(super) fn paired(&self, name: &CStr) -> Option<Reason> {
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

pub(super) struct ActionWalk<'a> {
    pub(super) ev: Evictor<'a>,
    /// What this thread's action records name.
    pub(super) found: OutputNames,
    /// The rest walk will look at every entry (it fixes permissions) and refuse symlinks and
    /// special files itself: each is refused once.
    rest_sees_all: bool,
}

impl<'a> ActionWalk<'a> {
    pub(super) fn new(ev: Evictor<'a>, rest_sees_all: bool) -> Self {
        ActionWalk {
            ev,
            found: OutputNames::default(),
            rest_sees_all,
        }
    }

    /// Phase 1 for one action record: evict it (with its output) or note what it names.
    /// An action record is opened before the unlink and read after it, so our read never
    /// refreshes what we are judging. Evicted, it marks its output to go the same way; kept
    /// (not due, hardlinked, in use again, failed), it keeps its output.
    fn visit_action(&mut self, e: &Entry) {
        let Some(parent) = e.parent else { return };
        let Ok((record, fresh)) = parent.open_read_stat(e.name, e.st) else {
            return;
        };
        // The pin's `statx` of the inode just opened is the re-check before the unlink.
        let evicted = self
            .ev
            .verdict(self.ev.used(e.st))
            .filter(|&reason| self.ev.evict_file_fresh(e, reason, Some(&fresh)));
        if let Ok(r) = safefs::read_up_to(record, 512, e.st.size) {
            self.found.note(&r, evicted);
        }
    }
}

impl Visit for ActionWalk<'_> {
    fn wants(&self, depth: usize, name: &CStr) -> bool {
        depth == 1 || layout::may_be_action(depth, name.to_bytes())
    }

    fn file(&mut self, e: &Entry) {
        match e.st.kind() {
            Kind::Symlink if !self.rest_sees_all => return self.ev.refuse(Violation::Symlink, e),
            Kind::Special if !self.rest_sees_all => return self.ev.refuse(Violation::Special, e),
            _ => {}
        }
        if self.ev.class(e) == Class::Action && e.st.kind() == Kind::File {
            self.visit_action(e);
        }
    }

    fn enter(&mut self, e: &Entry, dir: &Dir) -> bool {
        let class = self.ev.class(e);
        self.ev.enter_shard(e, class, dir);
        e.depth == 0 || class == Class::Shard
    }

    fn leave(&mut self, e: &Entry, _dir: &Dir) {
        if e.depth == 1 {
            self.ev.shard_locked = false;
        }
    }

    fn error(&mut self, rel: PathBuf, err: &io::Error) {
        fail(&mut self.ev.out, &rel, "stat", err);
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
