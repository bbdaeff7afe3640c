//! Who wrote how much into each cache, hour by hour over the last day: what `check` shows as
//! a cache's top writers. The running agent keeps it and replaces `writers.json` in its state
//! directory at most once a minute; `check` reads that file, bounded,
//! and only while the agent that wrote it runs (a stopped agent's figures stop being "the
//! last day").

use super::fanotify::Mode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The file in the state directory.
pub const FILE: &str = "writers.json";
/// `check` reads at most this much of it.
pub const MAX_FILE: u64 = 8 << 20;
/// Rows one hour keeps before new (cache, user, unit) triples fold into `other`.
const MAX_ROWS_PER_HOUR: usize = 2000;
/// Hours kept: the last day, and the hour under way.
const HOURS: usize = 25;

/// One writer's share of one cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub cache: String,
    /// The written files' owner (a name, or the uid when it has none).
    pub user: String,
    /// The writer's systemd unit; empty outside one or when unknown.
    pub unit: String,
    /// Allocated bytes of the files written (what `du` counts).
    pub bytes: u64,
    /// Cache entries (action records) written.
    pub entries: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Hour {
    /// Unix seconds at the start of the hour.
    start: i64,
    rows: Vec<Row>,
}

/// What the agent writes and `check` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tally {
    /// The agent that keeps it: `check` shows it only while this process runs.
    pub pid: u32,
    pub updated: i64,
    /// How writes are seen (`None`: not at all, see `unavailable`).
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    hours: VecDeque<Hour>,
}

impl Tally {
    pub fn new(mode: Result<Mode, String>) -> Tally {
        let (mode, unavailable) = match mode {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        Tally {
            pid: std::process::id(),
            updated: 0,
            mode,
            unavailable,
            hours: VecDeque::new(),
        }
    }

    /// Adds `row` to the hour holding `now`.
    pub fn add(&mut self, now: i64, mut row: Row) {
        let start = now - now.rem_euclid(3600);
        if self.hours.back().is_none_or(|h| h.start < start) {
            self.hours.push_back(Hour {
                start,
                rows: Vec::new(),
            });
        }
        while self.hours.len() > HOURS {
            self.hours.pop_front();
        }
        let Some(hour) = self.hours.iter_mut().rev().find(|h| h.start <= start) else {
            return;
        };
        let same =
            |r: &Row, row: &Row| r.cache == row.cache && r.user == row.user && r.unit == row.unit;
        if !hour.rows.iter().any(|r| same(r, &row)) && hour.rows.len() >= MAX_ROWS_PER_HOUR {
            // The word the metrics use for everyone outside their top N.
            row.user = "other".into();
            row.unit = "other".into();
        }
        match hour.rows.iter_mut().find(|r| same(r, &row)) {
            Some(r) => {
                r.bytes += row.bytes;
                r.entries += row.entries;
            }
            None => hour.rows.push(row),
        }
        self.updated = now;
    }

    /// The `n` writers of `cache` that wrote the most bytes since `since`, largest first.
    pub fn top(&self, cache: &str, since: i64, n: usize) -> Vec<Row> {
        let mut by: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
        for h in self.hours.iter().filter(|h| h.start + 3600 > since) {
            for r in h.rows.iter().filter(|r| r.cache == cache) {
                let e = by.entry((&r.user, &r.unit)).or_default();
                e.0 += r.bytes;
                e.1 += r.entries;
            }
        }
        let mut rows: Vec<Row> = by
            .into_iter()
            .map(|((user, unit), (bytes, entries))| Row {
                cache: cache.to_string(),
                user: user.to_string(),
                unit: unit.to_string(),
                bytes,
                entries,
            })
            .collect();
        rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.entries.cmp(&a.entries)));
        rows.truncate(n);
        rows
    }

    /// Whether the agent that wrote this is still running (its pid names a gocache-warden).
    pub fn agent_running(&self) -> bool {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        comm.trim_end().starts_with("gocache-warden")
    }

    /// The tally in `bytes`, read from `path` (named in the error), when the agent that
    /// wrote it is still running.
    pub fn running_from(bytes: &[u8], path: &std::path::Path) -> anyhow::Result<Option<Tally>> {
        let t: Tally = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(t.agent_running().then_some(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cache: &str, user: &str, unit: &str, bytes: u64) -> Row {
        Row {
            cache: cache.into(),
            user: user.into(),
            unit: unit.into(),
            bytes,
            entries: 1,
        }
    }

    #[test]
    fn top_writers_add_up_over_the_last_day_and_forget_older_hours() {
        let mut t = Tally::new(Ok(Mode::Privileged));
        let day = 86_400;
        let t0 = 1_000 * day;
        t.add(t0, row("/c", "alice", "ci.service", 100));
        t.add(t0 + 10, row("/c", "alice", "ci.service", 50));
        t.add(t0 + 3600, row("/c", "bob", "", 120));
        t.add(t0 + 3600, row("/other", "carol", "", 999));
        let top = t.top("/c", t0 + 3600 - day, 10);
        assert_eq!(top.len(), 2);
        assert_eq!(
            (top[0].user.as_str(), top[0].bytes, top[0].entries),
            ("alice", 150, 2)
        );
        assert_eq!((top[1].user.as_str(), top[1].bytes), ("bob", 120));
        assert_eq!(t.top("/c", t0, 1).len(), 1);
        // A day and more later alice's hour has left the window (and the ring).
        for h in 2..=30 {
            t.add(t0 + h * 3600, row("/c", "bob", "", 1));
        }
        let now = t0 + 30 * 3600;
        let top = t.top("/c", now - day, 10);
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].user, "bob");
        assert!(t.hours.len() <= HOURS);
        // What check reads back is what was kept.
        let back: Tally =
            serde_json::from_slice(&serde_json::to_vec(&t).expect("json")).expect("parse");
        assert_eq!(back.top("/c", now - day, 10), top);
    }

    #[test]
    fn an_hour_keeps_a_bounded_number_of_rows() {
        let mut t = Tally::new(Ok(Mode::Unprivileged));
        for i in 0..(MAX_ROWS_PER_HOUR + 50) {
            t.add(7200, row("/c", &format!("u{i}"), "", 1));
        }
        assert_eq!(t.hours[0].rows.len(), MAX_ROWS_PER_HOUR + 1);
        let other = t.top("/c", 0, MAX_ROWS_PER_HOUR + 10);
        assert!(other.iter().any(|r| r.user == "other" && r.bytes == 50));
    }
}
