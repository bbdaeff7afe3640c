//! Eviction units of a build cache: what `apply` removes together, so that the histogram
//! planning counts exactly what apply frees.
//!
//! A unit is an action record together with the output it names (if that output is there),
//! an output no action names (an orphan: its action was evicted by `go`'s own trim, or never
//! written), or an executable output directory no action names. An output named by several
//! actions goes only with the last of them, so its bytes belong to the youngest naming
//! action's unit. Apply decides an action by its own last use and lets its output follow
//! (never one a surviving action names, never one younger than the floor); the join below
//! mirrors exactly that. An action's own bytes go into the histogram as it is seen; to pair,
//! inspection keeps 16 bytes per action record that names an output and per output
//! ([`UnitLog`]) until the walk ends, then folds them into the histogram (sorting the actions
//! in place: no second copy).

use super::lru::Histogram;

/// An 8-byte key for an output id (64 hex digits, from a record or before `-d` in a name):
/// a hash of all of it, so a set costs 8 bytes per action and ids that share a prefix (test
/// fixtures, hand-made names) still differ. A collision can only keep an output (live) or
/// let it go with an evicted action past the floor, never delete anything outside the rules.
pub fn id_key(hex_or_name: &[u8]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let id = hex_or_name.get(..64)?;
    if hex_or_name.len() > 64 && hex_or_name.get(64) != Some(&b'-') {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    Some(h.finish())
}

/// A last use as stored for pairing: seconds since the epoch in 32 bits (until 2106; times
/// before 1970 count as 1970). 16 bytes a record instead of 24 or 32 is what keeps `check`
/// of a million-entry cache within tens of MiB.
fn stored(last_use: i64) -> u32 {
    u32::try_from(last_use.max(0)).unwrap_or(u32::MAX)
}

/// What one inspection walk saw of the units, before they are paired.
#[derive(Debug, Default)]
pub struct UnitLog {
    /// Evictable action records that name an output: (key of the output, last use).
    actions: Vec<(u64, u32)>,
    /// Outputs named by an action apply will keep whatever the cutoff (hardlinked records).
    live: Vec<u64>,
    /// Evictable outputs (files or executable directories) under 4 GiB: (key, last use,
    /// bytes).
    outputs: Vec<(u64, u32, u32)>,
    /// The rare larger ones, kept exactly.
    big_outputs: Vec<(u64, u32, u64)>,
}

impl UnitLog {
    /// An action record apply can evict; `names`: the output its record names. Its own bytes
    /// are a unit (or part of one) at its own age whatever it names, so they go into `h` now.
    pub fn action(
        &mut self,
        h: &Histogram,
        now: i64,
        names: Option<u64>,
        last_use: i64,
        bytes: u64,
    ) {
        h.add(now - last_use, bytes);
        if let Some(k) = names {
            self.actions.push((k, stored(last_use)));
        }
    }

    /// An action record apply keeps (it reads it, then refuses to remove it): the output it
    /// names is live.
    pub fn kept_action(&mut self, names: u64) {
        self.live.push(names);
    }

    /// An output apply can evict (a file with one name, or an executable directory), by the
    /// key of its name.
    pub fn output(&mut self, key: u64, last_use: i64, bytes: u64) {
        match u32::try_from(bytes) {
            Ok(b) => self.outputs.push((key, stored(last_use), b)),
            Err(_) => self.big_outputs.push((key, stored(last_use), bytes)),
        }
    }

    pub fn absorb(&mut self, o: UnitLog) {
        self.actions.extend(o.actions);
        self.live.extend(o.live);
        self.outputs.extend(o.outputs);
        self.big_outputs.extend(o.big_outputs);
    }

    /// Pairs outputs with the actions naming them and adds every output to `h`, at ages from
    /// `now` (the actions are in it already). `floor_secs`: an output younger than this never
    /// follows its action.
    pub fn fold(mut self, now: i64, floor_secs: i64, h: &Histogram) {
        // The youngest naming action of each output: the last one to go.
        let named = &mut self.actions;
        named.sort_unstable();
        named.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.max(later.1);
            }
            same
        });
        named.shrink_to_fit();
        self.live.sort_unstable();
        let small = self.outputs.iter().map(|&(k, lu, b)| (k, lu, u64::from(b)));
        for (key, lu, bytes) in small.chain(self.big_outputs.iter().copied()) {
            if self.live.binary_search(&key).is_ok() {
                continue;
            }
            let lu = i64::from(lu);
            match named.binary_search_by_key(&key, |&(k, _)| k) {
                Err(_) => h.add(now - lu, bytes),
                Ok(i) if now - lu >= floor_secs => h.add_bytes(now - i64::from(named[i].1), bytes),
                // Too recently used to follow its action: it stays this time, and counts
                // as evictable at its own age (below any cutoff).
                Ok(_) => h.add_bytes(now - lu, bytes),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_go_with_their_youngest_action_and_orphans_alone() {
        let (now, day) = (100 * 86400, 86400);
        let mut log = UnitLog::default();
        let h = Histogram::default();
        let (o1, o2, orphan, kept) = (1, 2, 3, 4);
        // o1 named by actions 10 and 20 days old: it goes with the 10-day one.
        log.action(&h, now, Some(o1), now - 10 * day, 4096);
        log.action(&h, now, Some(o1), now - 20 * day, 4096);
        log.output(o1, now - 30 * day, 100_000);
        // o2 is younger than the floor: it stays whatever its action does.
        log.action(&h, now, Some(o2), now - 15 * day, 4096);
        log.output(o2, now - 3600, 50_000);
        log.output(orphan, now - 40 * day, 7_000);
        log.kept_action(kept);
        log.output(kept, now - 50 * day, 1_000_000);
        log.fold(now, day, &h);
        assert_eq!(h.total(), (4, 3 * 4096 + 100_000 + 50_000 + 7_000));
        assert_eq!(h.at_least(35 * day), (1, 7_000));
        assert_eq!(h.at_least(20 * day), (2, 7_000 + 4096));
        assert_eq!(h.at_least(10 * day), (4, 7_000 + 3 * 4096 + 100_000));
    }

    #[test]
    fn a_record_and_the_output_file_it_names_share_a_key() {
        let o = format!("ab{:062x}", 7);
        assert_eq!(id_key(o.as_bytes()), id_key(format!("{o}-d").as_bytes()));
        // Ids that share their first 16 (or 63) digits are still told apart.
        let p = format!("ab{:062x}", 8);
        assert_ne!(id_key(o.as_bytes()), id_key(p.as_bytes()));
        // Not an id: too short, or something other than `-d`/`-a` glued on.
        assert_eq!(id_key(b"ab12"), None);
        assert_eq!(id_key(format!("{o}x").as_bytes()), None);
    }
}
