//! Alerts sent by the agent itself: what is checked ([`evaluate`]), when a check turns
//! into a message ([`AlertTracker`]: first firing, re-notify interval, resolved), and
//! delivery to sinks ([`Dispatcher`]: Slack or JSON webhooks, an `exec` command)
//! through bounded queues drained by worker threads, so the caller never waits on
//! the network. Webhooks go out directly or, from the system agent, which has no
//! network, through a relay process ([`relay`]).
//!
//! This module does not scan or repair anything; it reads the same plain data the
//! metrics exporter gets ([`CacheSnapshot`], [`SweepOutcome`]) plus a description of
//! each cache root. Prometheus-side alerting (rules over the exported metrics) lives
//! in `monitoring/`, not here.

mod dispatch;
mod exec;
pub mod relay;
mod root;
mod tracker;
mod webhook;

pub use dispatch::{DeliveryError, Dispatcher, RetryPolicy, Sink, register_counter};
pub use exec::ExecSink;
pub use root::{RootDescription, describe_root, format_ls_line};
pub use tracker::AlertTracker;
pub use webhook::{SecretSource, SecretUrl, WebhookFormat, WebhookSink, slack_payload};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::report::snapshot::{CacheKind, CacheSnapshot, OwnerUsage, SweepOutcome};

/// Counter of alert deliveries per sink and outcome (`delivered`, `failed`, `dropped`).
pub const NOTIFICATIONS_METRIC: &str = "gocache_warden_alert_notifications_total";

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    OverLimit,
    NearLimit,
    InodesHigh,
    Violations,
    UnitsMissingGocache,
    SweepFailed,
    /// Background verification found tampered or untrusted entries in a cache.
    Integrity,
    /// Go builds of a unit (or user) failed because of a cache, as the journal said.
    BuildFailure,
    /// Sent by `gocache-warden alert test` to check delivery.
    Test,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::OverLimit => "over_limit",
            AlertKind::NearLimit => "near_limit",
            AlertKind::InodesHigh => "inodes_high",
            AlertKind::Violations => "violations",
            AlertKind::UnitsMissingGocache => "units_missing_gocache",
            AlertKind::SweepFailed => "sweep_failed",
            AlertKind::Integrity => "integrity",
            AlertKind::BuildFailure => "build_failure",
            AlertKind::Test => "test",
        }
    }

    /// Human title used in message headers.
    pub fn title(self) -> &'static str {
        match self {
            AlertKind::OverLimit => "Go cache over its size limit",
            AlertKind::NearLimit => "Go cache near its size limit",
            AlertKind::InodesHigh => "Filesystem inodes nearly exhausted",
            AlertKind::Violations => "Go cache compliance violations",
            AlertKind::UnitsMissingGocache => "Units run Go without GOCACHE",
            AlertKind::SweepFailed => "Go cache sweep failed",
            AlertKind::Integrity => "Go cache entries failed verification",
            AlertKind::BuildFailure => "Go builds fail because of a cache",
            AlertKind::Test => "gocache-warden test alert",
        }
    }
}

/// Whether the problem is present (`firing`) or has cleared (`resolved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// A systemd unit involved in an alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UnitRef {
    /// Unit name, e.g. `ci-runner.service`.
    pub unit: String,
    /// The user the unit runs as (for user managers: the manager's user).
    pub uid: u32,
    pub user: String,
}

/// One alert message. Its JSON is what the JSON webhook and `exec` sinks receive, so
/// field names are a stable interface.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Stable identity of the problem, e.g. `over_limit:/srv/gocache`.
    pub id: String,
    pub kind: AlertKind,
    pub status: AlertStatus,
    pub severity: Severity,
    pub host: String,
    /// One sentence describing the current state.
    pub summary: String,
    /// Absolute path of the cache root (absent for unit alerts).
    pub cache: Option<PathBuf>,
    pub cache_kind: Option<CacheKind>,
    /// The affected user: the cache root's owner, or the units' user.
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub size_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Size as a percentage of the limit.
    pub percent_of_limit: Option<f64>,
    pub inodes_used: Option<u64>,
    pub inodes_total: Option<u64>,
    /// Largest owners in the cache, largest first (at most 5).
    pub top_users: Vec<OwnerUsage>,
    pub violations: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// `ls -ldL` line and `getfacl` text of the cache root.
    pub root: Option<RootDescription>,
    /// Units that caused or are hit by the problem.
    pub units: Vec<UnitRef>,
    /// What the agent did about it (from the last sweep).
    pub actions: Vec<String>,
    /// RFC 3339 time the problem was first seen firing (set by the tracker).
    pub since: Option<String>,
    /// RFC 3339 time of this message (set by the tracker).
    pub sent_at: Option<String>,
}

/// Alert thresholds from the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `near_limit` fires at this share of the limit, in percent.
    pub near_limit_percent: f64,
    /// `inodes_high` fires at this share of the filesystem's inodes, in percent.
    pub inode_percent: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            near_limit_percent: 90.0,
            inode_percent: 90.0,
        }
    }
}

/// Everything known about one cache at evaluation time.
#[derive(Debug, Clone)]
pub struct CacheObservation {
    pub snapshot: CacheSnapshot,
    /// The most recent sweep of this cache, if any has run.
    pub last_sweep: Option<SweepOutcome>,
    /// From [`describe_root`]; `None` if the root could not be described.
    pub root: Option<RootDescription>,
    /// Units that use this cache (listed in its alerts).
    pub units: Vec<UnitRef>,
}

/// The full picture for one evaluation: every cache in the policy, not just those
/// scanned since the last call (an absent cache's alerts are resolved).
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub host: String,
    pub caches: Vec<CacheObservation>,
    /// Units running Go without an explicit GOCACHE.
    pub units_missing_gocache: Vec<UnitRef>,
}

/// Runs every check that applies and returns one alert per check, `firing` or
/// `resolved` (meaning "fine now"). Pure: no I/O, no clock.
pub fn evaluate(obs: &Observation, th: &Thresholds) -> Vec<Alert> {
    let mut out = Vec::new();
    for c in &obs.caches {
        cache_checks(&obs.host, c, th, &mut out);
    }
    let mut by_uid: BTreeMap<u32, Vec<UnitRef>> = BTreeMap::new();
    for u in &obs.units_missing_gocache {
        by_uid.entry(u.uid).or_default().push(u.clone());
    }
    for (uid, mut units) in by_uid {
        units.sort();
        units.dedup();
        let user = units.first().map(|u| u.user.clone()).unwrap_or_default();
        let names: Vec<&str> = units.iter().map(|u| u.unit.as_str()).collect();
        out.push(Alert {
            summary: format!(
                "{} unit(s) of {user} (uid {uid}) run Go without an explicit GOCACHE: {}",
                units.len(),
                names.join(", ")
            ),
            uid: Some(uid),
            user: Some(user),
            units,
            actions: vec!["reported only: units are not changed by the agent".to_string()],
            ..blank(
                &obs.host,
                AlertKind::UnitsMissingGocache,
                format!("units_missing_gocache:uid:{uid}"),
            )
        });
    }
    out
}

fn blank(host: &str, kind: AlertKind, id: String) -> Alert {
    Alert {
        id,
        kind,
        status: AlertStatus::Firing,
        severity: match kind {
            AlertKind::OverLimit | AlertKind::SweepFailed | AlertKind::Integrity => {
                Severity::Critical
            }
            _ => Severity::Warning,
        },
        host: host.to_string(),
        summary: String::new(),
        cache: None,
        cache_kind: None,
        uid: None,
        user: None,
        size_bytes: None,
        limit_bytes: None,
        percent_of_limit: None,
        inodes_used: None,
        inodes_total: None,
        top_users: Vec::new(),
        violations: BTreeMap::new(),
        errors: BTreeMap::new(),
        root: None,
        units: Vec::new(),
        actions: Vec::new(),
        since: None,
        sent_at: None,
    }
}

fn status(firing: bool) -> AlertStatus {
    if firing {
        AlertStatus::Firing
    } else {
        AlertStatus::Resolved
    }
}

fn cache_checks(host: &str, c: &CacheObservation, th: &Thresholds, out: &mut Vec<Alert>) {
    let s = &c.snapshot;
    let path = s.path.display().to_string();
    let size = s.allocated_bytes;
    let mut top = s.bytes_by_owner.clone();
    top.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.uid.cmp(&b.uid)));
    top.truncate(5);
    let base = |kind: AlertKind| Alert {
        cache: Some(s.path.clone()),
        cache_kind: Some(s.kind),
        uid: c.root.as_ref().map(|r| r.uid),
        user: c.root.as_ref().map(|r| r.user.clone()),
        size_bytes: Some(size),
        limit_bytes: s.limit_bytes,
        percent_of_limit: s
            .limit_bytes
            .filter(|l| *l > 0)
            .map(|l| size as f64 * 100.0 / l as f64),
        top_users: top.clone(),
        root: c.root.clone(),
        units: c.units.clone(),
        actions: c
            .last_sweep
            .as_ref()
            .map(|o| o.actions())
            .unwrap_or_default(),
        ..blank(host, kind, format!("{}:{path}", kind.as_str()))
    };

    if let Some(limit) = s.limit_bytes {
        // Over-limit is about what the sweep left: a cache it brought under its limit, or
        // one that grew past it again while being swept (the next sweep takes that), does
        // not fire; one held over it does, saying by what.
        let over = s.over_limit && size > limit;
        let pct = if limit > 0 {
            size as f64 * 100.0 / limit as f64
        } else {
            f64::INFINITY
        };
        let sizes = format!(
            "{} of {} ({pct:.0}%)",
            human_bytes(size),
            human_bytes(limit)
        );
        out.push(Alert {
            status: status(over),
            summary: if over {
                match &s.held_over {
                    Some(h) => {
                        format!("{path} is held over its size limit: {sizes}; held by {h}")
                    }
                    None => format!("{path} is over its size limit: {sizes}"),
                }
            } else {
                format!("{path} is within its size limit: {sizes}")
            },
            ..base(AlertKind::OverLimit)
        });
        let near = !over && pct >= th.near_limit_percent;
        out.push(Alert {
            status: status(near),
            summary: if near {
                format!(
                    "{path} is near its size limit: {sizes}, threshold {:.0}%",
                    th.near_limit_percent
                )
            } else {
                format!("{path} is not near its size limit: {sizes}")
            },
            ..base(AlertKind::NearLimit)
        });
    }

    if s.fs_inodes_total > 0 {
        let pct = s.fs_inodes_used as f64 * 100.0 / s.fs_inodes_total as f64;
        let high = pct >= th.inode_percent;
        out.push(Alert {
            status: status(high),
            summary: format!(
                "the filesystem holding {path} uses {pct:.1}% of its inodes ({} of {}){}",
                s.fs_inodes_used,
                s.fs_inodes_total,
                if high {
                    format!(", threshold {:.0}%", th.inode_percent)
                } else {
                    String::new()
                }
            ),
            inodes_used: Some(s.fs_inodes_used),
            inodes_total: Some(s.fs_inodes_total),
            ..base(AlertKind::InodesHigh)
        });
    }

    let violations: BTreeMap<String, u64> = s
        .violations
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    let total: u64 = violations.values().sum();
    out.push(Alert {
        status: status(total > 0),
        summary: if total > 0 {
            let list: Vec<String> = violations.iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!(
                "{path} has {total} compliance violation(s): {}",
                list.join(", ")
            )
        } else {
            format!("{path} has no compliance violations")
        },
        violations,
        ..base(AlertKind::Violations)
    });

    if let Some(sweep) = &c.last_sweep {
        out.push(Alert {
            status: status(!sweep.success),
            summary: if sweep.success {
                format!("the last sweep of {path} succeeded")
            } else {
                format!("the last sweep of {path} failed: {}", sweep.summary())
            },
            errors: sweep
                .errors
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
            ..base(AlertKind::SweepFailed)
        });
    }
}

/// What background verification found in one cache since its last clean pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityFound {
    pub cache: PathBuf,
    pub tampered: u64,
    pub untrusted: u64,
    pub unverifiable: u64,
    /// What was done about them (`untrusted` in the policy).
    pub evicted: u64,
    pub quarantined: u64,
    pub failed: u64,
    /// A few of the entries, relative to the cache root.
    pub examples: Vec<String>,
}

impl IntegrityFound {
    /// At most this many example entries are kept.
    const MAX_EXAMPLES: usize = 5;

    /// Adds what `o` found and did; examples are kept up to the cap, without repeats.
    pub fn merge(&mut self, o: &IntegrityFound) {
        self.tampered += o.tampered;
        self.untrusted += o.untrusted;
        self.unverifiable += o.unverifiable;
        self.evicted += o.evicted;
        self.quarantined += o.quarantined;
        self.failed += o.failed;
        for e in &o.examples {
            if self.examples.len() < Self::MAX_EXAMPLES && !self.examples.contains(e) {
                self.examples.push(e.clone());
            }
        }
    }
}

/// The integrity alert of one verified cache: firing while anything failed verification
/// in the current pass or the last complete one, resolved after a clean pass. Pure.
pub fn integrity(host: &str, f: &IntegrityFound) -> Alert {
    let path = f.cache.display().to_string();
    let total = f.tampered + f.untrusted + f.unverifiable;
    let mut actions = Vec::new();
    for (n, what) in [
        (f.quarantined, "quarantined"),
        (f.evicted, "evicted"),
        (f.failed, "could not be evicted or quarantined"),
    ] {
        if n > 0 {
            actions.push(format!("{n} entries {what}"));
        }
    }
    if total > 0 && actions.is_empty() {
        actions.push("reported only (untrusted = \"report\")".to_string());
    }
    Alert {
        status: status(total > 0),
        summary: if total > 0 {
            format!(
                "{total} entries of {path} failed verification: {} tampered, {} untrusted, {} unverifiable{}",
                f.tampered,
                f.untrusted,
                f.unverifiable,
                if f.examples.is_empty() {
                    String::new()
                } else {
                    format!(" (e.g. {})", f.examples.join(", "))
                }
            )
        } else {
            format!("every entry of {path} passed verification")
        },
        cache: Some(f.cache.clone()),
        cache_kind: Some(CacheKind::Build),
        actions,
        ..blank(host, AlertKind::Integrity, format!("integrity:{path}"))
    }
}

/// Go builds of one unit (or, outside units, one user) failing for one reason: what the
/// daemon remembers of the journal's build failures, for [`build_failure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailing {
    /// The unit, or `uid N` outside units.
    pub who: String,
    pub reason: &'static str,
    pub cache: Option<PathBuf>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    /// Failures seen since the alert started firing, and the last message.
    pub count: u64,
    pub message: String,
}

/// The alert for builds failing because of a cache: one per unit and reason, so a unit
/// failing in a loop is one problem, re-notified at the sink's interval, not a message per
/// build.
pub fn build_failure(host: &str, f: &BuildFailing) -> Alert {
    Alert {
        summary: format!(
            "go builds of {} ({}) failed {} time{} because of {} ({}): {}",
            f.who,
            f.user.as_deref().unwrap_or("unknown user"),
            f.count,
            if f.count == 1 { "" } else { "s" },
            f.cache.as_ref().map_or_else(
                || "a missing cache setting".to_string(),
                |c| c.display().to_string()
            ),
            f.reason,
            f.message
        ),
        cache: f.cache.clone(),
        uid: f.uid,
        user: f.user.clone(),
        ..blank(
            host,
            AlertKind::BuildFailure,
            format!("build_failure:{}:{}", f.who, f.reason),
        )
    }
}

/// Formats bytes with binary units, e.g. `1.5 GiB` (the same wording as every report).
pub use crate::policy::value::human_bytes;

#[cfg(test)]
mod tests;
