//! The oldest files of a build cache as one inspection walk saw them: what the daemon evicts,
//! without walking the cache again, when the cache grows past its limit between full walks
//! (`apply::known`). ccache keeps per-directory counters and BuildKit's GC acts on
//! thresholds for the same reason: on a cache of a million entries, a walk per limit
//! crossing is most of what an agent costs.
//!
//! Bounded twice: by bytes (a few evictions' worth, see [`budget`]) and by count
//! ([`MAX_CANDIDATES`], 64 bytes each), whatever the cache holds or a user puts in it. Only
//! Go's own entries (`<64 hex>-a`/`-d` files in their shard, one name) are candidates; each
//! is re-checked by its identity and last use before its unlink, so a stale list can only
//! make the agent skip a file, never remove one a build used since.

use std::collections::BinaryHeap;

/// At most this many candidates per cache (64 bytes each: 4 MiB).
pub const MAX_CANDIDATES: usize = 64 << 10;

/// Bytes of candidates worth keeping for a cache with limit `limit` and low water `low`:
/// three evictions from the limit to low water. The walk cannot know how much the sweep
/// that made it will evict itself; when that sweep takes most of them, the next crossing
/// finds too few and walks again, which collects anew.
pub fn budget(limit: u64, low: u64) -> u64 {
    limit.saturating_sub(low).max(1).saturating_mul(3)
}

/// One of Go's entry files, as the walk saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// By the cache's `last_use` signal, Unix seconds.
    pub last_use: i64,
    /// Allocated bytes.
    pub alloc: u64,
    pub ino: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// The 32-byte id of `<id hex>-<suffix>`; its shard is the id's first byte.
    pub id: [u8; 32],
    /// `b'a'` (action record) or `b'd'` (output).
    pub suffix: u8,
}

impl Candidate {
    /// The shard's name (`ab`) and the file's (`ab…-d`).
    pub fn names(&self) -> (std::ffi::CString, std::ffi::CString) {
        entry_names(self.id, self.suffix)
    }

    fn key(&self) -> (i64, u64) {
        (self.last_use, self.ino)
    }
}

/// The shard's name and the entry file's name of id `id` with `suffix` (`a` or `d`).
pub fn entry_names(id: [u8; 32], suffix: u8) -> (std::ffi::CString, std::ffi::CString) {
    let hex = hex::encode(id);
    let shard = hex.get(..2).unwrap_or_default().to_string();
    let name = format!("{hex}-{}", suffix as char);
    // Hex digits and '-' only: no NUL.
    (
        std::ffi::CString::new(shard).unwrap_or_default(),
        std::ffi::CString::new(name).unwrap_or_default(),
    )
}

impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// The oldest candidates seen so far: a max-heap by last use, whose youngest goes as soon as
/// the others alone cover the byte budget (or the count is over its cap).
#[derive(Debug, Default)]
pub struct Oldest {
    heap: BinaryHeap<Candidate>,
    bytes: u64,
    budget: u64,
}

impl Oldest {
    pub fn new(budget: u64) -> Oldest {
        Oldest {
            heap: BinaryHeap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Offers `<64 hex>-a`/`-d` file `name`; anything else is ignored.
    pub fn offer(&mut self, name: &[u8], st: &crate::safefs::Stat, last_use: i64) {
        if self.budget == 0 {
            return;
        }
        if self.full()
            && self
                .heap
                .peek()
                .is_some_and(|top| (last_use, st.ino) >= top.key())
        {
            return;
        }
        let Some(suffix) = super::layout::entry_suffix(name) else {
            return;
        };
        let mut id = [0u8; 32];
        if hex::decode_to_slice(&name[..64], &mut id).is_err() {
            return;
        }
        self.push(Candidate {
            last_use,
            alloc: st.alloc,
            ino: st.ino,
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
            id,
            suffix,
        });
    }

    /// The budget is covered without the youngest, or the count is at its cap.
    fn full(&self) -> bool {
        self.heap.len() >= MAX_CANDIDATES
            || self
                .heap
                .peek()
                .is_some_and(|top| self.bytes.saturating_sub(top.alloc) >= self.budget)
    }

    fn push(&mut self, c: Candidate) {
        self.bytes = self.bytes.saturating_add(c.alloc);
        self.heap.push(c);
        while self.heap.len() > MAX_CANDIDATES
            || self
                .heap
                .peek()
                .is_some_and(|top| self.bytes.saturating_sub(top.alloc) >= self.budget)
        {
            match self.heap.pop() {
                Some(top) => self.bytes -= top.alloc,
                None => break,
            }
        }
    }

    /// Another thread's candidates of the same walk.
    pub fn absorb(&mut self, o: Oldest) {
        for c in o.heap {
            self.push(c);
        }
    }

    /// Oldest first.
    pub fn into_sorted(self) -> Vec<Candidate> {
        self.heap.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ino: u64, alloc: u64) -> crate::safefs::Stat {
        crate::safefs::Stat {
            dev: 1,
            ino,
            mode: 0o100644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: alloc,
            alloc,
            atime: 0,
            mtime: 0,
            mtime_nsec: 0,
            ctime: 0,
            ctime_nsec: 0,
            mount_root: false,
        }
    }

    fn name(i: u64, suffix: char) -> String {
        format!("{i:064x}-{suffix}")
    }

    #[test]
    fn keeps_the_oldest_files_that_cover_the_budget_across_threads() {
        let mut a = Oldest::new(10_000);
        let mut b = Oldest::new(10_000);
        // 100 files of 1000 bytes, last used at 100 - i: the ten oldest cover the budget.
        for i in 0..100u64 {
            let o = if i % 2 == 0 { &mut a } else { &mut b };
            o.offer(name(i, 'd').as_bytes(), &st(i, 1000), 1000 - i as i64);
        }
        a.absorb(b);
        let got = a.into_sorted();
        let uses: Vec<i64> = got.iter().map(|c| c.last_use).collect();
        assert_eq!(uses, (901..=910).collect::<Vec<_>>());
        let (shard, file) = got[0].names();
        assert_eq!(file.to_bytes(), name(99, 'd').as_bytes());
        assert_eq!(shard.to_bytes(), b"00");
    }

    #[test]
    fn ignores_what_is_not_an_entry_and_stays_under_its_count_cap() {
        let mut o = Oldest::new(u64::MAX);
        o.offer(b"trim.txt", &st(1, 10), 0);
        o.offer(b"README", &st(2, 10), 0);
        o.offer(format!("{:064}-x", 0).as_bytes(), &st(3, 10), 0);
        assert!(o.into_sorted().is_empty());
        let mut o = Oldest::new(u64::MAX);
        for i in 0..(MAX_CANDIDATES as u64 + 500) {
            o.offer(name(i, 'a').as_bytes(), &st(i, 1), i as i64);
        }
        let got = o.into_sorted();
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(
            got.last().map(|c| c.last_use),
            Some(MAX_CANDIDATES as i64 - 1)
        );
    }

    #[test]
    fn budget_is_three_rounds_from_the_limit_to_low_water() {
        assert_eq!(budget(1000, 900), 300);
        assert_eq!(budget(1000, 1000), 3);
    }
}
