//! Background verification in the agent: which caches, which slice next, and when the next
//! pass starts. The hashing itself is `integrity::background`, on the blocking pool.
//!
//! Every build cache at a fixed path with `trusted_writers` is verified while
//! `agent.verify_rate` is above 0: one slice (at most `verify_rate × SLICE` bytes, paced at
//! `verify_rate`) at a time, for one cache at a time, each slice ending in an
//! [`Event::Verified`] that the loop publishes (metrics, journal, alert) before asking for the
//! next. A cache's cursor survives sweeps, reloads and restarts: after each slice the
//! cursors are written to `verify-cursors.json` in the agent's state directory
//! ([`super::state`]), and read back at start (a corrupt or foreign file is ignored with a
//! warning: the pass starts over, which costs time, never coverage). When every cache's
//! pass is complete, the next pass starts `agent.interval` later, so between passes the
//! agent has no wakeups of its own.

use super::Event;
use crate::integrity::background::{self, Cursor, Pacer, SLICE};
use crate::integrity::{Act, trust_of};
use crate::policy::{CacheKind, CachePath, Policy};
use std::collections::HashMap;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// The end of one slice.
#[derive(Debug)]
pub struct Done {
    pub path: PathBuf,
    pub cursor: Cursor,
    pub result: Result<background::Slice, String>,
}

#[derive(Default)]
pub struct Verifier {
    cursors: HashMap<PathBuf, Cursor>,
    pub running: bool,
    /// A pass ended; the next one is due then (a timer sends [`Event::VerifyDue`]).
    next_pass: Option<Instant>,
    /// Where the cursors are kept across restarts (`None`: not kept).
    state: Option<PathBuf>,
    /// A failed save is logged once, not after every slice.
    save_failed: bool,
}

/// The cursors' file in the state directory.
const CURSORS_FILE: &str = "verify-cursors.json";
const CURSORS_SCHEMA: &str = "gocache-warden.verify-cursors/1";
/// Bounds on what is read back: a real file holds one short line per verified cache.
const CURSORS_MAX_BYTES: u64 = 256 * 1024;
const CURSORS_MAX_CACHES: usize = 1024;

#[derive(serde::Serialize, serde::Deserialize)]
struct CursorsFile {
    schema: String,
    caches: Vec<SavedCursor>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCursor {
    path: PathBuf,
    shard: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

/// Parses a cursors file; any deviation from what [`Verifier::save`] writes is an error.
fn parse_cursors(buf: &[u8]) -> anyhow::Result<HashMap<PathBuf, Cursor>> {
    let f: CursorsFile = serde_json::from_slice(buf)?;
    anyhow::ensure!(
        f.schema == CURSORS_SCHEMA,
        "schema {:?} is not ours",
        f.schema
    );
    anyhow::ensure!(
        f.caches.len() <= CURSORS_MAX_CACHES,
        "more than {CURSORS_MAX_CACHES} caches"
    );
    let mut out = HashMap::new();
    for c in f.caches {
        anyhow::ensure!(
            c.path.is_absolute(),
            "cache path {:?} is not absolute",
            c.path
        );
        anyhow::ensure!(c.shard <= 256, "shard {} out of range", c.shard);
        let after = match c.after {
            None => None,
            Some(name) => {
                // An entry's name in a shard: one component, as the slice listed it.
                anyhow::ensure!(
                    !name.is_empty()
                        && name.len() <= 255
                        && !name.contains('/')
                        && name != "."
                        && name != "..",
                    "entry name {name:?} is not a file name"
                );
                Some(std::ffi::CString::new(name)?)
            }
        };
        out.insert(
            c.path,
            Cursor {
                shard: c.shard,
                after,
            },
        );
    }
    Ok(out)
}

/// The caches to verify and how: path, act, the policy entry.
fn targets(policy: &Policy) -> Vec<(PathBuf, &crate::policy::CachePolicy)> {
    if policy.agent.verify_rate == 0 {
        return Vec::new();
    }
    policy
        .caches
        .iter()
        .filter(|c| c.kind == CacheKind::Build && !c.trusted_writers.is_empty())
        .filter_map(|c| match &c.path {
            CachePath::Fixed(p) => Some((p.clone(), c)),
            CachePath::Auto => None,
        })
        .collect()
}

/// The paths background verification covers under `policy`.
pub fn verified_paths(policy: &Policy) -> Vec<PathBuf> {
    targets(policy).into_iter().map(|(p, _)| p).collect()
}

impl Verifier {
    /// A verifier that resumes from, and keeps its cursors in, `state` (the agent's state
    /// directory).
    pub fn load(state: Option<PathBuf>) -> Verifier {
        let mut v = Verifier {
            state,
            ..Default::default()
        };
        let Some(dir) = &v.state else {
            return v;
        };
        let file = dir.join(CURSORS_FILE);
        match super::state::read(dir, CURSORS_FILE, CURSORS_MAX_BYTES)
            .and_then(|b| b.map(|b| parse_cursors(&b)).transpose())
        {
            Ok(Some(c)) => {
                for (path, cur) in &c {
                    tracing::info!(cache_path = %path.display(), "background verification of {} resumes at shard {}", path.display(), cur.shard);
                }
                v.cursors = c;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %file.display(), error = %format!("{e:#}"), "ignoring {}: {e:#}; background verification starts a new pass", file.display());
            }
        }
        v
    }

    /// Writes the cursors to the state directory (best effort: a failure costs a restarted
    /// agent a pass from the start, logged once).
    fn save(&mut self) {
        let Some(dir) = &self.state else {
            return;
        };
        let mut caches: Vec<SavedCursor> = self
            .cursors
            .iter()
            .map(|(path, c)| SavedCursor {
                path: path.clone(),
                shard: c.shard,
                // Go's entry names are ASCII; another name resumes at its shard's start.
                after: c
                    .after
                    .as_ref()
                    .and_then(|a| a.to_str().ok())
                    .map(str::to_owned),
            })
            .collect();
        caches.sort_by(|a, b| a.path.cmp(&b.path));
        let f = CursorsFile {
            schema: CURSORS_SCHEMA.into(),
            caches,
        };
        let res = serde_json::to_vec(&f)
            .map_err(anyhow::Error::from)
            .and_then(|b| super::state::write(dir, CURSORS_FILE, &b));
        match res {
            Ok(()) => self.save_failed = false,
            Err(e) if !self.save_failed => {
                self.save_failed = true;
                tracing::warn!(error = %format!("{e:#}"), "cannot keep background verification's position across restarts: {e:#}");
            }
            Err(_) => {}
        }
    }

    /// Starts the next slice unless one runs, none is wanted, or the next pass is not due.
    pub fn request(&mut self, policy: &Policy, tx: &UnboundedSender<Event>) {
        if self.running || crate::cancel::Cancel::process().is_cancelled() {
            return;
        }
        let targets = targets(policy);
        self.cursors
            .retain(|p, _| targets.iter().any(|(t, _)| t == p));
        if targets.is_empty() || self.next_pass.is_some() {
            return;
        }
        let next = targets
            .iter()
            .find(|(p, _)| !self.cursors.get(p).is_some_and(Cursor::done));
        let Some((path, cache)) = next else {
            // Every cache's pass is complete: the next one after the sweep interval.
            let wait = policy.agent.interval;
            self.next_pass = Some(Instant::now() + wait);
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Event::VerifyDue);
            });
            return;
        };
        let trust = match trust_of(cache) {
            Ok(t) => t,
            Err(e) => {
                // The policy was validated; a writer's group vanished since. Verifying with
                // no owner check would pass untrusted entries: skip this cache's pass.
                tracing::warn!(cache_path = %path.display(), error = %format!("{e:#}"), "not verifying {}: {e:#}", path.display());
                self.cursors.insert(
                    path.clone(),
                    Cursor {
                        shard: u16::MAX,
                        after: None,
                    },
                );
                return self.request(policy, tx);
            }
        };
        let act = Act::from_policy(cache.untrusted, true);
        let keep = crate::integrity::Keep::of(cache);
        let rate = policy.agent.verify_rate;
        let mut cursor = self.cursors.remove(path).unwrap_or_default();
        let (path, tx) = (path.clone(), tx.clone());
        self.running = true;
        tokio::spawn(async move {
            let p = path.clone();
            let done = tokio::task::spawn_blocking(move || {
                let pacer = Pacer::new(rate, rate.saturating_mul(SLICE.as_secs()));
                let result = background::slice(&p, trust.as_ref(), act, keep, &mut cursor, &pacer)
                    .map_err(|e| format!("{e:#}"));
                Done {
                    path: p,
                    cursor,
                    result,
                }
            })
            .await
            .unwrap_or_else(|e| Done {
                // A slice that panicked starts this cache's pass over.
                path,
                cursor: Cursor::default(),
                result: Err(format!("verification panicked: {e}")),
            });
            let _ = tx.send(Event::Verified(Box::new(done)));
        });
    }

    /// Takes a slice's cursor back; the loop then publishes it and asks for the next.
    pub fn finish(&mut self, d: &Done) {
        self.running = false;
        let mut cursor = d.cursor.clone();
        if d.result.is_err() {
            // A cache that cannot be opened now is tried again in the next pass, not in a
            // loop of failing slices.
            cursor.shard = u16::MAX;
        }
        self.cursors.insert(d.path.clone(), cursor);
        self.save();
    }

    /// The next pass is due: every cache starts over.
    pub fn new_pass(&mut self) {
        self.next_pass = None;
        self.cursors.clear();
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_a_restart_and_a_bad_file_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut v = Verifier::load(Some(d.path().to_path_buf()));
        assert!(v.cursors.is_empty());
        let cur = Cursor {
            shard: 0x42,
            after: Some(c"42ab-d".to_owned()),
        };
        v.finish(&Done {
            path: "/srv/gocache".into(),
            cursor: cur.clone(),
            result: Ok(Default::default()),
        });
        let again = Verifier::load(Some(d.path().to_path_buf()));
        assert_eq!(again.cursors.get(Path::new("/srv/gocache")), Some(&cur));
        for bad in [
            &b"{not json"[..],
            br#"{"schema":"other/1","caches":[]}"#,
            br#"{"schema":"gocache-warden.verify-cursors/1","caches":[{"path":"rel","shard":1}]}"#,
            br#"{"schema":"gocache-warden.verify-cursors/1","caches":[{"path":"/x","shard":999}]}"#,
            br#"{"schema":"gocache-warden.verify-cursors/1","caches":[{"path":"/x","shard":1,"after":"../y"}]}"#,
        ] {
            std::fs::write(d.path().join(CURSORS_FILE), bad).unwrap();
            assert!(Verifier::load(Some(d.path().to_path_buf())).cursors.is_empty(), "{}", String::from_utf8_lossy(bad));
        }
        std::fs::write(d.path().join(CURSORS_FILE), vec![b' '; 300 * 1024]).unwrap();
        assert!(
            Verifier::load(Some(d.path().to_path_buf()))
                .cursors
                .is_empty(),
            "too large"
        );
    }
}
