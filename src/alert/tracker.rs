//! Turns each evaluation into the messages worth sending: a new problem is sent at
//! once, a persisting one again only after the re-notify interval, and a cleared one
//! gets a single "resolved" message.
//!
//! The tracker holds no clock and does no I/O: callers pass `now`, so tests step time
//! without sleeping. A message counts as sent only once the caller's `send` accepted it
//! (its sink's queue had room): one that was not is offered again at the next evaluation,
//! so a "resolved" is never lost to a full queue. The daemon keeps one tracker per sink,
//! each with that sink's own re-notify interval. State is in memory only; after a
//! restart, problems still present are announced again, which is the safe direction.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};

use super::{Alert, AlertKind, AlertStatus};

#[derive(Debug, Clone)]
struct Active {
    since: SystemTime,
    last_sent: SystemTime,
    last: Alert,
}

/// Remembers which alerts are firing and when each was last sent.
#[derive(Debug)]
pub struct AlertTracker {
    renotify: Duration,
    active: HashMap<String, Active>,
}

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl AlertTracker {
    /// `renotify` is how long a persisting problem stays quiet after a message.
    pub fn new(renotify: Duration) -> AlertTracker {
        AlertTracker {
            renotify,
            active: HashMap::new(),
        }
    }

    /// A reloaded policy's interval for this sink.
    pub fn set_renotify(&mut self, renotify: Duration) {
        self.renotify = renotify;
    }

    /// Ids of the alerts currently firing, sorted.
    pub fn active_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.active.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Takes the full result of [`super::evaluate`] and returns the messages to send
    /// now, each taken as sent. An active alert missing from `checks` (its cache left the
    /// policy, its units are gone) is resolved with its last known content.
    pub fn update(&mut self, checks: Vec<Alert>, now: SystemTime) -> Vec<Alert> {
        let mut out = Vec::new();
        self.update_with(checks, now, |a| {
            out.push(a);
            true
        });
        out
    }

    /// As [`update`](Self::update), handing each message to `send`, which says whether it
    /// was taken; a message not taken leaves the state as if it had not been due, so the
    /// next evaluation offers it again.
    pub fn update_with(
        &mut self,
        checks: Vec<Alert>,
        now: SystemTime,
        mut send: impl FnMut(Alert) -> bool,
    ) {
        let over_limit_firing: Vec<Option<std::path::PathBuf>> = checks
            .iter()
            .filter(|a| a.kind == AlertKind::OverLimit && a.status == AlertStatus::Firing)
            .map(|a| a.cache.clone())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for mut alert in checks {
            seen.insert(alert.id.clone());
            match (alert.status, self.active.get_mut(&alert.id)) {
                (AlertStatus::Firing, None) => {
                    alert.since = Some(rfc3339(now));
                    alert.sent_at = Some(rfc3339(now));
                    if send(alert.clone()) {
                        self.active.insert(
                            alert.id.clone(),
                            Active {
                                since: now,
                                last_sent: now,
                                last: alert,
                            },
                        );
                    }
                }
                (AlertStatus::Firing, Some(active)) => {
                    alert.since = Some(rfc3339(active.since));
                    let due =
                        now.duration_since(active.last_sent).unwrap_or_default() >= self.renotify;
                    if due {
                        alert.sent_at = Some(rfc3339(now));
                        if send(alert.clone()) {
                            active.last_sent = now;
                        }
                    }
                    active.last = alert;
                }
                (AlertStatus::Resolved, Some(active)) => {
                    // Going from "near" to "over" the limit is an escalation, not a recovery.
                    if alert.kind == AlertKind::NearLimit
                        && over_limit_firing.contains(&alert.cache)
                    {
                        self.active.remove(&alert.id);
                        continue;
                    }
                    alert.since = Some(rfc3339(active.since));
                    alert.sent_at = Some(rfc3339(now));
                    let id = alert.id.clone();
                    if send(alert) {
                        self.active.remove(&id);
                    }
                }
                (AlertStatus::Resolved, None) => {}
            }
        }
        let vanished: Vec<String> = self
            .active
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in vanished {
            if let Some(active) = self.active.get(&id) {
                let mut alert = active.last.clone();
                alert.status = AlertStatus::Resolved;
                if !alert.summary.starts_with("no longer observed: ") {
                    alert.summary = format!("no longer observed: {}", alert.summary);
                }
                alert.sent_at = Some(rfc3339(now));
                if send(alert) {
                    self.active.remove(&id);
                }
            }
        }
    }
}
