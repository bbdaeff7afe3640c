//! Background verification in the agent: which caches, which slice next, and when the next
//! pass starts. The hashing itself is `integrity::background`, on the blocking pool.
//!
//! Every build cache at a fixed path with `trusted_writers` is verified while
//! `agent.verify_rate` is above 0: one slice (at most `verify_rate × SLICE` bytes, paced at
//! `verify_rate`) at a time, for one cache at a time, each slice ending in an
//! [`Event::Verified`] that the loop publishes (metrics, journal, alert) before asking for the
//! next. A cache's cursor survives sweeps and reloads (not restarts). When every cache's
//! pass is complete, the next pass starts `agent.interval` later, so between passes the
//! agent has no wakeups of its own.

use super::Event;
use crate::integrity::background::{self, Cursor, Pacer, SLICE};
use crate::integrity::{Act, trust_of};
use crate::policy::{CacheKind, CachePath, Policy};
use std::collections::HashMap;
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
        let rate = policy.agent.verify_rate;
        let mut cursor = self.cursors.remove(path).unwrap_or_default();
        let (path, tx) = (path.clone(), tx.clone());
        self.running = true;
        tokio::spawn(async move {
            let p = path.clone();
            let done = tokio::task::spawn_blocking(move || {
                let pacer = Pacer::new(rate, rate.saturating_mul(SLICE.as_secs()));
                let result = background::slice(&p, trust.as_ref(), act, &mut cursor, &pacer)
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
    }

    /// The next pass is due: every cache starts over.
    pub fn new_pass(&mut self) {
        self.next_pass = None;
        self.cursors.clear();
    }
}
