//! After each sweep: metrics (registry, textfile, HTTP), alerts (evaluate, track, dispatch).
//!
//! The daemon's only link to the `metrics` and `alert` subsystems; it translates what a
//! sweep saw and did into their plain input types. Nothing here blocks on the network:
//! alert delivery happens on the dispatcher's own threads.

use crate::alert::{
    self, AlertTracker, Dispatcher, ExecSink, SecretSource, SecretUrl, Sink, UnitRef,
    WebhookFormat, WebhookSink,
};
use crate::check::CacheReport;
use crate::metrics::{
    self, CacheKind as MKind, CacheSnapshot, EvictReason, Evicted, Metrics, MetricsConfig,
    OwnerUsage, SweepOutcome,
};
use crate::plan::Reason;
use crate::policy::{AlertKind, CacheKind, Policy};
use crate::scan::Violation;
use crate::sweep::Sweep;
use anyhow::Context;
use prometheus::Registry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub struct Observability {
    pub registry: Registry,
    /// Where webhooks go out through, if not directly (see `alert::relay`).
    relay: Option<PathBuf>,
    /// The alert sinks' configuration, to keep the dispatcher (and its in-flight retries)
    /// across a reload that does not change it.
    alerts_cfg: String,
    pub(super) metrics: Metrics,
    textfile: Option<metrics::textfile::TextfileWriter>,
    /// One tracker per sink, by name: each sink has its own re-notify interval, and what
    /// one sink's full queue could not take is offered to it again without re-sending to
    /// the others. Kept across reloads for sinks that keep their name.
    trackers: BTreeMap<String, AlertTracker>,
    dispatcher: Option<Dispatcher>,
    /// `gocache_warden_alert_notifications_total`, registered once and shared by every
    /// dispatcher a reload makes.
    counter: prometheus::IntCounterVec,
    thresholds: alert::Thresholds,
    /// The caches of the last completed sweep: a sweep that ends without a result is
    /// counted as a failure of each of them.
    last_caches: Vec<(std::path::PathBuf, MKind)>,
    failure_log: crate::buildfail::Log,
    /// Build failures by unit (or uid) and reason, with when the last one was seen: the
    /// `build_failure` alerts.
    build_failing: BTreeMap<String, (alert::BuildFailing, i64)>,
    /// What the last sweep saw, for alerts re-evaluated after a units-only inspection.
    last_observation: Option<alert::Observation>,
    /// Background verification, per cache: what the current pass found so far, and what
    /// the last complete pass found (the integrity alert fires while either is not clean).
    integrity: BTreeMap<PathBuf, (alert::IntegrityFound, alert::IntegrityFound)>,
}

fn mkind(k: CacheKind) -> MKind {
    match k {
        CacheKind::Build => MKind::Build,
        CacheKind::Module => MKind::Module,
    }
}

fn config(policy: &Policy) -> MetricsConfig {
    let mut violations: Vec<String> = Violation::ALL
        .iter()
        .map(|v| v.as_str().to_string())
        .collect();
    violations.extend(["over-size", "past-max-age"].map(String::from));
    MetricsConfig {
        top_users: policy.metrics.top_users,
        violation_kinds: violations,
        fix_kinds: Violation::ALL
            .iter()
            .filter(|v| v.fixable())
            .map(|v| v.as_str().to_string())
            .collect(),
        error_kinds: [
            "evict", "fix", "pin", "read", "stat", "open", "create", "rewrite", "inspect",
        ]
        .map(String::from)
        .to_vec(),
        ..MetricsConfig::default()
    }
}

/// The policy's alert sinks; webhooks go out through `relay` when given.
pub fn sinks(policy: &Policy, relay: Option<&Path>) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut out: Vec<Box<dyn Sink>> = Vec::new();
    for a in &policy.alerts {
        let timeout = Duration::from_secs(10);
        match a.kind {
            AlertKind::Slack | AlertKind::Webhook => {
                let src = secret_source(a)?;
                let url = SecretUrl::load(&src).with_context(|| format!("alert \"{}\"", a.name))?;
                let fmt = if a.kind == AlertKind::Slack {
                    WebhookFormat::Slack
                } else {
                    WebhookFormat::Json
                };
                out.push(Box::new(WebhookSink::new(
                    a.name.clone(),
                    fmt,
                    url,
                    timeout,
                    relay,
                )));
            }
            AlertKind::Exec => {
                let (prog, args) = a
                    .command
                    .split_first()
                    .with_context(|| format!("alert \"{}\" has an empty command", a.name))?;
                out.push(Box::new(ExecSink::new(
                    a.name.clone(),
                    prog,
                    args.to_vec(),
                    Duration::from_secs(60),
                )));
            }
        }
    }
    Ok(out)
}

fn thresholds(policy: &Policy) -> alert::Thresholds {
    alert::Thresholds {
        near_limit_percent: policy
            .caches
            .iter()
            .map(|c| c.alert_size_percent)
            .fold(90.0, f64::min),
        inode_percent: policy
            .caches
            .iter()
            .map(|c| c.alert_inode_percent)
            .fold(90.0, f64::min),
    }
}

/// A tracker per sink of `policy`, each with the sink's `renotify`; a sink that was there
/// before keeps its state (what is firing, when it was last sent).
fn trackers(
    policy: &Policy,
    mut old: BTreeMap<String, AlertTracker>,
) -> BTreeMap<String, AlertTracker> {
    policy
        .alerts
        .iter()
        .map(|a| {
            let mut t = old
                .remove(&a.name)
                .unwrap_or_else(|| AlertTracker::new(a.renotify));
            t.set_renotify(a.renotify);
            (a.name.clone(), t)
        })
        .collect()
}

fn secret_source(a: &crate::policy::AlertPolicy) -> anyhow::Result<SecretSource> {
    Ok(match (&a.url_file, &a.credential) {
        (Some(f), _) => SecretSource::File(f.clone()),
        (None, Some(c)) => SecretSource::Credential(c.clone()),
        (None, None) => anyhow::bail!("alert \"{}\" has no url_file or credential", a.name),
    })
}

/// The alert sinks' configuration, with a digest of each webhook URL as its file holds it
/// now: a URL rewritten in place (same file, new URL) must rebuild the sinks on reload too.
fn alerts_cfg(policy: &Policy) -> String {
    let mut cfg = serde_json::to_string(&policy.alerts).unwrap_or_default();
    for a in &policy.alerts {
        if let Ok(url) = secret_source(a).and_then(|s| SecretUrl::load(&s)) {
            cfg.push_str(&format!(" {:016x}", url.digest()));
        }
    }
    cfg
}

/// The textfile writer and the alert dispatcher a policy asks for.
fn outputs(
    policy: &Policy,
    relay: Option<&Path>,
    counter: &prometheus::IntCounterVec,
) -> anyhow::Result<(
    Option<metrics::textfile::TextfileWriter>,
    Option<Dispatcher>,
)> {
    let textfile = match &policy.metrics.textfile {
        Some(p) => Some(metrics::textfile::TextfileWriter::new(p.clone())?),
        None => None,
    };
    let sinks = sinks(policy, relay)?;
    let dispatcher = if sinks.is_empty() {
        None
    } else {
        let retry = alert::RetryPolicy::default();
        Some(Dispatcher::start_counted(
            sinks,
            retry,
            64,
            Some(counter.clone()),
        )?)
    };
    Ok((textfile, dispatcher))
}

impl Observability {
    pub fn new(policy: &Policy, relay: Option<&Path>) -> anyhow::Result<Observability> {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry, config(policy))?;
        // Registered once, whatever the sinks: shared by every dispatcher a reload makes.
        let counter = alert::register_counter(&registry)?;
        let (textfile, dispatcher) = outputs(policy, relay, &counter)?;
        Ok(Observability {
            relay: relay.map(Path::to_path_buf),
            alerts_cfg: alerts_cfg(policy),
            registry,
            metrics,
            textfile,
            trackers: trackers(policy, BTreeMap::new()),
            counter,
            dispatcher,
            thresholds: thresholds(policy),
            last_caches: Vec::new(),
            failure_log: Default::default(),
            build_failing: BTreeMap::new(),
            last_observation: None,
            integrity: BTreeMap::new(),
        })
    }

    /// Applies a reloaded policy: textfile path, alert sinks, thresholds. The metric families
    /// themselves stay registered (the HTTP listener serves the same registry); a changed
    /// `top_users` takes effect at the next restart.
    pub fn reload(&mut self, policy: &Policy) -> anyhow::Result<()> {
        let cfg = alerts_cfg(policy);
        if cfg == self.alerts_cfg {
            self.textfile = match &policy.metrics.textfile {
                Some(p) => Some(metrics::textfile::TextfileWriter::new(p.clone())?),
                None => None,
            };
        } else {
            // The old sinks get a second to finish what they are sending; what they could not
            // send (queued, or between retries) goes to the new sink of the same name.
            let (textfile, dispatcher) = outputs(policy, self.relay.as_deref(), &self.counter)?;
            self.trackers = trackers(policy, std::mem::take(&mut self.trackers));
            if let Some(old) = std::mem::replace(&mut self.dispatcher, dispatcher) {
                let (_, left) = old.stop_and_take(Duration::from_secs(1));
                if let Some(new) = &self.dispatcher {
                    for (sink, alert) in left {
                        new.enqueue_to(&sink, alert);
                    }
                }
            }
            self.textfile = textfile;
            self.alerts_cfg = cfg;
        }
        self.thresholds = thresholds(policy);
        Ok(())
    }

    /// Stops alert delivery, giving queued alerts `grace` to go out.
    pub fn shutdown(self, grace: Duration) {
        if let Some(d) = self.dispatcher {
            d.shutdown(grace);
        }
        // Only the running agent writes the textfile: left behind, node_exporter would go on
        // exporting its last figures as if they were current. Gone, the series are absent and
        // the shipped "agent absent" rule says so; a restart writes it again after its sweep.
        if let Some(t) = &self.textfile
            && let Err(e) = t.remove()
        {
            tracing::warn!(error = %e, "cannot remove the metrics textfile {}: {e}", t.path().display());
        }
    }

    /// Counts a sweep that ended without a result (it panicked) as a failed sweep of every
    /// cache, so `gocache_warden_sweeps_total{result="failure"}` and the textfile show it.
    pub fn sweep_failed(&mut self) {
        for (path, kind) in &self.last_caches {
            self.metrics.observe_sweep(&SweepOutcome {
                path: path.clone(),
                kind: *kind,
                evicted: Default::default(),
                fixes: Default::default(),
                errors: [("panic".to_string(), 1)].into_iter().collect(),
                duration: Duration::ZERO,
                success: false,
                finished_at: SystemTime::now(),
            });
        }
        self.write_textfile();
    }

    /// Publishes what a sweep saw and did. A full sweep declares the caches (series of
    /// caches no longer in it go) and brings the units it inspected; a growth sweep of some
    /// caches (`Sweep::partial`, `units_missing` `None`) replaces what is known of those
    /// caches only, and the alerts are evaluated over every cache as last seen.
    pub fn after_sweep(&mut self, sweep: &Sweep, units_missing: Option<&[UnitRef]>) {
        let mut obs = match self.last_observation.take() {
            Some(last) if sweep.partial => last,
            _ => alert::Observation {
                host: crate::sweep::hostname(),
                caches: Vec::new(),
                units_missing_gocache: Vec::new(),
            },
        };
        if !sweep.partial {
            let caches: Vec<_> = sweep
                .reports
                .iter()
                .filter_map(|r| Some((r.path.clone()?, mkind(r.kind))))
                .collect();
            self.metrics.set_caches(&caches);
            self.last_caches = caches;
        }
        if let Some(u) = units_missing {
            obs.units_missing_gocache = u.to_vec();
        }
        for c in &sweep.cacheprog {
            self.metrics.observe_cacheprog(c);
        }
        for r in &sweep.reports {
            let Some(snap) = snapshot(r, sweep) else {
                continue;
            };
            self.metrics.observe_snapshot(&snap);
            let outcome = sweep_outcome(r, sweep);
            if let Some(o) = &outcome {
                self.metrics.observe_sweep(o);
            }
            let root = alert::describe_root(&snap.path).ok();
            let seen = alert::CacheObservation {
                snapshot: snap,
                last_sweep: outcome,
                root,
                units: Vec::new(),
            };
            match obs
                .caches
                .iter_mut()
                .find(|c| c.snapshot.path == seen.snapshot.path)
            {
                Some(c) => *c = seen,
                None => obs.caches.push(seen),
            }
        }
        self.metrics
            .set_units_missing_gocache(obs.units_missing_gocache.len() as u64);
        self.write_textfile();
        self.publish(&obs);
        self.last_observation = Some(obs);
    }

    /// Publishes a walk-free eviction of one cache (`daemon::known`): its counters, its size
    /// as the growth estimate now puts it (`size`: an upper bound of `du` until the next walk
    /// measures the cache), and the alerts with it.
    pub fn after_known(
        &mut self,
        o: &crate::apply::known::KnownOutcome,
        size: Option<u64>,
        took: Duration,
    ) {
        let mut errors = std::collections::BTreeMap::new();
        if o.failed.count > 0 {
            errors.insert("evict".to_string(), o.failed.count);
        }
        let outcome = SweepOutcome {
            path: o.path.clone(),
            kind: mkind(CacheKind::Build),
            evicted: [(
                EvictReason::Size,
                Evicted {
                    bytes: o.evicted.bytes,
                    entries: o.evicted.entries,
                },
            )]
            .into_iter()
            .filter(|(_, e)| e.entries > 0)
            .collect(),
            fixes: Default::default(),
            errors,
            duration: took,
            success: o.failed.count == 0,
            finished_at: SystemTime::now(),
        };
        self.metrics.observe_sweep(&outcome);
        if let Some(obs) = &mut self.last_observation
            && let Some(c) = obs.caches.iter_mut().find(|c| c.snapshot.path == o.path)
        {
            let s = &mut c.snapshot;
            if let Some(size) = size {
                s.allocated_bytes = size;
            }
            s.files = s.files.saturating_sub(o.evicted.entries);
            // Nothing was walked; a cache brought to low water is not over its limit.
            s.inspected_entries = 0;
            if o.reached {
                s.over_limit = false;
            }
            self.metrics.observe_snapshot(s);
            c.last_sweep = Some(outcome);
        }
        self.write_textfile();
        if let Some(obs) = self.last_observation.take() {
            self.publish(&obs);
            self.last_observation = Some(obs);
        }
    }

    /// Publishes a units-only inspection: the units metric and textfile, and the alerts over
    /// the last sweep's caches with the units as they are now.
    pub fn units_checked(&mut self, units_missing: &[UnitRef]) {
        self.metrics
            .set_units_missing_gocache(units_missing.len() as u64);
        self.write_textfile();
        let Some(mut obs) = self.last_observation.take() else {
            return;
        };
        obs.units_missing_gocache = units_missing.to_vec();
        self.publish(&obs);
        self.last_observation = Some(obs);
    }

    /// Declares the caches verified in the background (zeros from the start); a cache no
    /// longer verified loses its series and its alert resolves.
    pub fn set_verified(&mut self, paths: &[PathBuf]) {
        let caches: Vec<_> = paths.iter().map(|p| (p.clone(), MKind::Build)).collect();
        self.metrics.set_verified_caches(&caches);
        self.integrity.retain(|p, _| paths.contains(p));
    }

    /// Publishes one slice of background verification: metrics, the journal, the alert.
    pub fn after_verify(&mut self, d: &super::verify::Done) {
        let path = d.path.display();
        let s = match &d.result {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(gocache_warden_action = crate::logging::action::INTEGRITY_FAILED, cache_path = %path, error = %e, "background verification of {path} failed: {e}");
                return;
            }
        };
        let v = &s.verified;
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |t| t.as_secs_f64());
        self.metrics.observe_integrity(&metrics::IntegritySlice {
            path: d.path.clone(),
            kind: MKind::Build,
            bytes: v.bytes_hashed,
            outputs: v.outputs,
            problems: [v.tampered, v.untrusted, v.unverifiable, v.incomplete],
            actions: [v.evicted, v.quarantined, v.failed],
            pass_ended: s.pass_done.then_some(now),
        });
        let (current, last) = self.integrity.entry(d.path.clone()).or_default();
        current.cache = d.path.clone();
        current.merge(&alert::IntegrityFound {
            cache: d.path.clone(),
            tampered: v.tampered,
            untrusted: v.untrusted,
            unverifiable: v.unverifiable,
            evicted: v.evicted,
            quarantined: v.quarantined,
            failed: v.failed,
            examples: v
                .examples
                .iter()
                .map(|(_, rel)| rel.display().to_string())
                .collect(),
        });
        if v.incomplete > 0 {
            // Go's own leftovers (a failed or cut-short write): worth a line, not an alarm.
            tracing::info!(
                cache_path = %path,
                entries = v.incomplete,
                "background verification of {path}: {} incomplete outputs (writes go did not finish; go misses on them)",
                v.incomplete
            );
        }
        let found = v.tampered + v.untrusted + v.unverifiable;
        if found > 0 {
            tracing::warn!(
                gocache_warden_action = crate::logging::action::INTEGRITY,
                cache_path = %path,
                entries = found,
                "background verification of {path}: {} tampered, {} untrusted, {} unverifiable entries; {} quarantined, {} evicted, {} left in place after a failure",
                v.tampered, v.untrusted, v.unverifiable, v.quarantined, v.evicted, v.failed
            );
        }
        if s.pass_done {
            tracing::info!(
                cache_path = %path,
                "background verification pass of {path} complete; this slice hashed {} outputs ({} bytes)",
                v.outputs, v.bytes_hashed
            );
            *last = std::mem::take(current);
            last.cache = d.path.clone();
        }
        self.write_textfile();
        let obs = self
            .last_observation
            .take()
            .unwrap_or_else(|| alert::Observation {
                host: crate::sweep::hostname(),
                ..Default::default()
            });
        self.publish(&obs);
        self.last_observation = Some(obs);
    }

    pub(super) fn write_textfile(&self) {
        if let Some(t) = &self.textfile
            && let Err(e) = t.write(&self.registry)
        {
            tracing::error!(error = %e, "cannot write the metrics textfile {}: {e:#}", t.path().display());
        }
    }

    fn publish(&mut self, obs: &alert::Observation) {
        let Some(d) = &self.dispatcher else {
            return;
        };
        let mut checks = alert::evaluate(obs, &self.thresholds);
        for (path, (current, last)) in &self.integrity {
            let mut f = current.clone();
            f.cache = path.clone();
            f.merge(last);
            checks.push(alert::integrity(&obs.host, &f));
        }
        // Builds failing within the last hour fire; quieter ones are left out (resolved).
        let quiet_since = crate::check::now() - BUILD_FAILURE_WINDOW;
        self.build_failing.retain(|_, (_, at)| *at >= quiet_since);
        for (f, _) in self.build_failing.values() {
            checks.push(alert::build_failure(&obs.host, f));
        }
        let now = SystemTime::now();
        for (sink, tracker) in &mut self.trackers {
            tracker.update_with(checks.clone(), now, |a| d.enqueue_to(sink, a));
        }
    }

    /// Go builds that failed because of a cache: counted
    /// (`gocache_warden_build_failures_total`), logged (bounded: `buildfail::Log`), and the
    /// textfile written at once, not at the next sweep.
    pub fn build_failed(&mut self, failures: &[crate::buildfail::Failure]) {
        for f in failures {
            let user = f.uid.map(crate::check::user_name).unwrap_or_default();
            let (cache, unit) = f.labels();
            self.metrics
                .observe_build_failure(f.reason.as_str(), &cache, &user, &unit);
            self.failure_log.log(f, &user);
            let who = f
                .unit
                .clone()
                .unwrap_or_else(|| format!("uid {}", f.uid.map_or(-1, i64::from)));
            let e = self
                .build_failing
                .entry(format!("{who}\0{}", f.reason.as_str()))
                .or_insert_with(|| {
                    let b = alert::BuildFailing {
                        who,
                        reason: f.reason.as_str(),
                        cache: f.cache.clone(),
                        uid: f.uid,
                        user: (!user.is_empty()).then(|| user.clone()),
                        count: 0,
                        message: String::new(),
                    };
                    (b, 0)
                });
            e.0.count += 1;
            e.0.message.clone_from(&f.message);
            e.1 = crate::check::now();
        }
        self.write_textfile();
        // Sent now, not at the next sweep: the tracker sends a new problem at once and a
        // persisting one only at its sink's re-notify interval.
        if let Some(obs) = self.last_observation.take() {
            self.publish(&obs);
            self.last_observation = Some(obs);
        }
    }
}

/// A unit's `build_failure` alert resolves after this long without a failure (seconds).
const BUILD_FAILURE_WINDOW: i64 = 3600;

/// The metrics view of one cache, as it is after the sweep.
pub fn snapshot(r: &CacheReport, sweep: &Sweep) -> Option<CacheSnapshot> {
    let path = r.path.clone()?;
    let o = r.observed.as_ref()?;
    let fs = r.filesystem.unwrap_or_default();
    // What remains wrong after the sweep, not what it found and fixed.
    let violations = sweep.violations_after(r);
    let held = sweep.held_over(&path);
    Some(CacheSnapshot {
        over_limit: sweep.still_over(&path),
        held_over: held.map(|h| h.held.describe(h.floor)),
        held_bytes: held.map_or_else(BTreeMap::new, |h| {
            h.held
                .causes()
                .into_iter()
                .map(|(c, b)| (c.to_string(), b))
                .collect()
        }),
        user: r.user.clone(),
        via: r.via.clone(),
        allocated_bytes: sweep.size_after(&path).unwrap_or(o.allocated_bytes),
        path,
        kind: mkind(r.kind),
        apparent_bytes: o.apparent_bytes,
        files: o.files,
        dirs: o.dirs,
        inspected_entries: o.inodes(),
        fs_inodes_used: fs.inodes_total.saturating_sub(fs.inodes_free),
        fs_inodes_total: fs.inodes_total,
        fs_free_bytes: fs.avail_bytes,
        fs_size_bytes: fs.size_bytes,
        limit_bytes: r.limit_bytes,
        oldest_age_seconds: o.oldest_use.map(|t| (sweep.started - t).max(0) as f64),
        bytes_by_owner: o
            .owners
            .iter()
            .map(|(uid, u)| OwnerUsage {
                uid: *uid,
                name: r
                    .owner_names
                    .get(uid)
                    .cloned()
                    .unwrap_or_else(|| uid.to_string()),
                bytes: u.bytes,
            })
            .collect(),
        violations,
    })
}

fn sweep_outcome(r: &CacheReport, sweep: &Sweep) -> Option<SweepOutcome> {
    let path = r.path.clone()?;
    let c = sweep
        .outcome
        .as_ref()?
        .caches
        .iter()
        .find(|c| c.path == path)?;
    let evicted = c
        .evicted
        .iter()
        .map(|(k, u)| {
            (
                match k {
                    Reason::Age => EvictReason::Age,
                    Reason::Size => EvictReason::Size,
                    Reason::Free => EvictReason::Free,
                },
                Evicted {
                    bytes: u.bytes,
                    entries: u.entries,
                },
            )
        })
        .collect();
    let fixes = c
        .fixed
        .iter()
        .map(|(v, n)| (v.as_str().to_string(), *n))
        .collect();
    let mut errors = c.failed_by_kind.clone();
    if r.inspect_error.is_some() {
        *errors.entry("inspect".into()).or_default() += 1;
    }
    Some(SweepOutcome {
        path,
        kind: mkind(r.kind),
        evicted,
        fixes,
        success: c.failed.count == 0 && r.inspect_error.is_none(),
        errors,
        duration: sweep.duration,
        finished_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Scope;

    /// A webhook URL rewritten in its file (the usual rotation: same path, new secret) changes
    /// the configuration a reload compares, so the sinks are rebuilt with the new URL.
    #[test]
    fn a_rotated_webhook_url_counts_as_a_changed_configuration() {
        let d = tempfile::tempdir().unwrap();
        let url = d.path().join("hook-url");
        std::fs::write(&url, "https://hooks.example/one\n").unwrap();
        let file = d.path().join("p.toml");
        std::fs::write(
            &file,
            format!(
                "[alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n",
                url.display()
            ),
        )
        .unwrap();
        let policy = crate::policy::load_for(Scope::User, std::slice::from_ref(&file)).unwrap();
        let before = alerts_cfg(&policy);
        assert_eq!(alerts_cfg(&policy), before, "same file, same configuration");
        std::fs::write(&url, "https://hooks.example/two\n").unwrap();
        assert_ne!(alerts_cfg(&policy), before);
        assert!(
            !before.contains("hooks.example"),
            "the URL itself is not kept: {before}"
        );
    }
}

#[cfg(test)]
mod tracker_tests {
    use super::*;
    use crate::policy::Scope;

    fn policy(body: &str) -> Policy {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("p.toml");
        std::fs::write(&file, body).unwrap();
        crate::policy::load_for(Scope::User, std::slice::from_ref(&file)).unwrap()
    }

    /// Each sink gets its own tracker with its own `renotify`; across a reload a sink that
    /// keeps its name keeps what it knows (what is firing, when it was sent), a new sink
    /// starts fresh, and a removed one is dropped.
    #[test]
    fn each_sink_tracks_with_its_own_interval_and_keeps_state_across_reloads() {
        let exec = |name: &str, renotify: &str| {
            format!(
                "[alert.{name}]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nrenotify = \"{renotify}\"\n"
            )
        };
        let p1 = policy(&(exec("fast", "10m") + &exec("slow", "6h")));
        let mut t = trackers(&p1, BTreeMap::new());
        assert_eq!(t.keys().collect::<Vec<_>>(), ["fast", "slow"]);
        // A unit lacking GOCACHE makes an alert without any cache figures.
        let observed = alert::Observation {
            host: "h".into(),
            caches: Vec::new(),
            units_missing_gocache: vec![UnitRef {
                unit: "build.service".into(),
                uid: 1000,
                user: "alice".into(),
            }],
        };
        let alert = alert::evaluate(&observed, &thresholds(&p1))
            .into_iter()
            .find(|a| a.status == alert::AlertStatus::Firing)
            .unwrap();
        let id = alert.id.clone();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for tr in t.values_mut() {
            tr.update(vec![alert.clone()], t0);
        }
        let due = |t: &mut BTreeMap<String, AlertTracker>, name: &str, after: u64| {
            t.get_mut(name)
                .unwrap()
                .update(vec![alert.clone()], t0 + Duration::from_secs(after))
                .len()
        };
        assert_eq!(
            due(&mut t, "fast", 600),
            1,
            "10m sink re-notifies after 10 min"
        );
        assert_eq!(due(&mut t, "slow", 600), 0, "6h sink stays quiet");

        let p2 = policy(&(exec("slow", "6h") + &exec("new", "1h")));
        let mut t = trackers(&p2, t);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["new", "slow"]);
        assert_eq!(t["slow"].active_ids(), [id], "state kept");
        assert!(t["new"].active_ids().is_empty());
        assert_eq!(
            due(&mut t, "new", 700),
            1,
            "a new sink hears of what is firing"
        );
        assert_eq!(due(&mut t, "slow", 700), 0);
    }
}
