//! `gocache-warden run`: the long-running agent, as a `Type=notify` systemd service (system or
//! user instance).
//!
//! One event loop (tokio, current thread) over a closed set of [`Event`]s: the sweep timer,
//! growth seen by inotify, signals, systemd manager signals (which inspect units only: a new
//! transient service must not cost a walk of every cache), the watchdog, and the end of a
//! sweep or of a units inspection. Sweeps run on the blocking pool so the loop keeps answering signals and the
//! watchdog while one is in progress; at most one runs at a time, and requests that arrive
//! meanwhile collapse into one follow-up sweep. Idle, the loop wakes only for its timers.
//! systemd protocol: READY=1 as soon as the policy is valid and the watches are set up, before
//! the first sweep (a cold first sweep of millions of entries takes minutes, longer than any
//! sensible start timeout); STATUS= when a sweep starts and after every sweep; WATCHDOG=1 from
//! the loop itself, withheld once a running sweep stops making progress (`liveness`), so a
//! sweep hung in a thread gets the agent restarted too; RELOADING=1 + MONOTONIC_USEC then
//! READY=1 on SIGHUP (a bad policy is logged and the old one kept); STOPPING=1 on SIGTERM,
//! which also stops a sweep at its next entry.

mod counters;
mod event;
pub mod growth;
mod known;
mod liveness;
pub mod observe;
mod sched;
pub mod state;
mod verify;
mod writes;

pub use event::{Event, Sig};
use sched::{State, notify};

use crate::logging::action;
use crate::policy::{self, CacheKind, Policy, Scope};
use crate::sweep::Sweep;
use anyhow::Context;
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

pub struct Options {
    pub scope: Scope,
    pub policy_paths: Vec<PathBuf>,
    /// Deliver webhooks through the relay on this socket (the system unit has no network).
    pub alert_relay: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    // Before the runtime starts any thread: this gives up CAP_SYS_ADMIN.
    let writers = crate::writers::open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    rt.block_on(main_loop(opts, writers))
}

/// Watches the build caches of the last sweep, each triggering a sweep when it passes its
/// limit. The estimate starts from the size measured after the sweep (the whole cache, as
/// `du` counts it, which is what the limit counts). A cache the sweep left held over its
/// limit triggers again only after another `limit - low_water` of growth: a sweep before
/// then could free nothing more, and the timer's sweep takes what ages past the floor.
/// The alert share of the limit does not trigger a sweep: the eviction that follows the
/// limit brings the cache back to low water, so a trigger below the limit would sweep again
/// after every eviction for nothing.
fn watched(policy: &Policy, sweep: &Sweep) -> Vec<growth::Watched> {
    if !policy.agent.watch {
        return Vec::new();
    }
    sweep
        .reports
        .iter()
        .filter(|r| r.kind == CacheKind::Build && r.exists && r.refused.is_none())
        .filter_map(|r| {
            let path = r.path.clone()?;
            let limit = r.limit_bytes?;
            let size = sweep.size_after(&path).unwrap_or(0);
            let room = limit
                .saturating_sub(r.low_water_bytes.unwrap_or(limit))
                .max(1);
            let trigger_bytes = match sweep.held_over(&path) {
                Some(h) => h.size.saturating_add(room),
                None => limit,
            };
            Some(growth::Watched {
                estimate: size,
                trigger_bytes,
                path,
            })
        })
        .collect()
}

/// Settings a reload cannot apply to the running agent, with their old and new values: the
/// metrics listener is bound once, and the per-user series are registered once.
fn restart_only(old: &Policy, new: &Policy) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let listen = |p: &Policy| {
        p.metrics
            .listen
            .map_or("none".to_string(), |a| a.to_string())
    };
    if old.metrics.listen != new.metrics.listen {
        out.push(("metrics.listen", listen(old), listen(new)));
    }
    if old.metrics.top_users != new.metrics.top_users {
        out.push((
            "metrics.top_users",
            old.metrics.top_users.to_string(),
            new.metrics.top_users.to_string(),
        ));
    }
    out
}

fn spawn_signals(tx: UnboundedSender<Event>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = hup.recv() => Sig::Reload,
                _ = term.recv() => Sig::Stop,
                _ = int.recv() => Sig::Stop,
            };
            if tx.send(Event::Signal(ev)).is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn spawn_growth(g: Arc<Mutex<growth::Growth>>, tx: UnboundedSender<Event>) -> anyhow::Result<()> {
    let fd = {
        let guard = g
            .lock()
            .map_err(|_| anyhow::anyhow!("growth watcher poisoned"))?;
        guard
            .fd()
            .try_clone_to_owned()
            .context("cannot duplicate the inotify fd")?
    };
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open and names the same
    // inotify instance for the AsyncFd's whole life.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("cannot poll inotify: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = afd.readable().await else {
                break;
            };
            let verdict = match g.lock() {
                Ok(mut g) => g.drain(),
                Err(_) => break,
            };
            ready.clear_ready();
            if !verdict.is_empty()
                && tx
                    .send(Event::Grew {
                        crossed: verdict.crossed,
                        rescan: verdict.rescan,
                        overflow: verdict.overflow,
                    })
                    .is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

/// Polls the filesystems of caches with headroom settings every `headroom::POLL_INTERVAL`
/// (an `open(O_PATH)`, `fstat`, `fstatvfs` and `close` per filesystem, on the blocking pool
/// so a hung mount never stalls the loop). Wakes the loop only when one is short: at once
/// the first time, then at most every `headroom::RETRY_AFTER` while it stays short. Not
/// spawned at all when no cache has headroom settings.
fn spawn_headroom(
    probes: Arc<Mutex<Vec<crate::headroom::Probe>>>,
    tx: UnboundedSender<Event>,
) -> tokio::task::JoinHandle<()> {
    use crate::headroom::{POLL_INTERVAL, RETRY_AFTER};
    tokio::spawn(async move {
        let mut t = tokio::time::interval(POLL_INTERVAL);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent: Option<tokio::time::Instant> = None;
        loop {
            t.tick().await;
            let list = match probes.lock() {
                Ok(p) => p.clone(),
                Err(_) => break,
            };
            let short =
                tokio::task::spawn_blocking(move || list.iter().any(crate::headroom::is_short))
                    .await
                    .unwrap_or(false);
            if !short {
                last_sent = None;
                continue;
            }
            if last_sent.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                continue;
            }
            last_sent = Some(tokio::time::Instant::now());
            if tx.send(Event::LowSpace).is_err() {
                break;
            }
        }
    })
}

fn spawn_every(
    period: Duration,
    tx: UnboundedSender<Event>,
    make: fn() -> Event,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A missed tick (suspend, a long stall) fires once, not in a burst.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if tx.send(make()).is_err() {
                break;
            }
        }
    })
}

async fn main_loop(
    opts: Options,
    writers: Result<crate::writers::Group, String>,
) -> anyhow::Result<i32> {
    let policy = match policy::load_for(opts.scope, &opts.policy_paths) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(gocache_warden_action = action::RELOAD_FAILED, error = %e, "invalid policy, not starting: {e}");
            return Ok(2);
        }
    };
    let mut obs = observe::Observability::new(&policy, opts.alert_relay.as_deref())
        .context("cannot set up metrics and alerts")?;
    let (tx, mut rx) = unbounded_channel();
    spawn_signals(tx.clone())?;
    let http = match policy.metrics.listen {
        // Without its HTTP listener the agent still does its job and writes the textfile:
        // say why there is no /metrics, and go on.
        Some(addr) => match crate::metrics::http::listener(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no metrics listener: {e:#}");
                None
            }
        },
        None => crate::metrics::http::activated_listener()?
            .map(|l| (l, crate::metrics::http::ListenerOrigin::SocketActivation)),
    };
    let (stop_http_tx, stop_http) = tokio::sync::oneshot::channel::<()>();
    if let Some((l, _)) = http {
        let reg = obs.registry.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::http::serve(l, reg, async {
                let _ = stop_http.await;
            })
            .await
            {
                tracing::error!(error = %e, "metrics listener failed: {e:#}");
            }
        });
    }
    let growth = Arc::new(Mutex::new(
        growth::Growth::new().context("cannot start inotify")?,
    ));
    // Always running, idle while nothing is watched: `agent.watch` decides what the next
    // sweep watches, so a reload can turn it on or off.
    spawn_growth(growth.clone(), tx.clone())?;
    let mut timer = spawn_every(policy.agent.interval, tx.clone(), || Event::Tick);
    let mut wd_usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut wd_usec) && wd_usec > 0 {
        spawn_every(Duration::from_micros(wd_usec / 2), tx.clone(), || {
            Event::Watchdog
        });
    }
    let mut liveness = liveness::Liveness::new(
        Duration::from_micros(wd_usec.max(1)),
        crate::progress::count(),
    );
    let mut units_watch =
        crate::units::spawn_watch(&policy, opts.scope, tx.clone(), || Event::Units);
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut headroom =
        crate::headroom::wanted(&policy).then(|| spawn_headroom(probes.clone(), tx.clone()));
    tracing::info!(
        gocache_warden_action = action::STARTUP,
        "starting: {} cache(s) in policy, sweep every {}",
        policy.caches.len(),
        humantime::format_duration(policy.agent.interval)
    );
    // Build failures in the journal (`buildfail`): without a journal to read, the agent does
    // everything else and says once why it cannot attribute them.
    let failure_caches = crate::buildfail::follow::Caches::default();
    let _journal = {
        let tx = tx.clone();
        match crate::buildfail::follow::start(failure_caches.clone(), move |f| {
            let _ = tx.send(Event::BuildFailed(f));
        }) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("build failures are not attributed: {e}");
                None
            }
        }
    };
    let mut writes = writes::Writes::start(writers, state::dir(opts.scope), {
        let tx = tx.clone();
        move |b| {
            let _ = tx.send(Event::Written(b));
        }
    });
    let mut st = State {
        policy: Arc::new(policy),
        scope: opts.scope,
        running: false,
        pending: false,
        units_running: false,
        units_pending: false,
        stopping: false,
        last_status: None,
        reported_read_only: Default::default(),
        reported_via: Default::default(),
        unwatched: 0,
        last_grew: None,
        grew_deferred: false,
        grew: Default::default(),
        rescan: Default::default(),
        grew_all: false,
        targets: Vec::new(),
        held: Default::default(),
        known: Default::default(),
        evicting: Default::default(),
        growth: growth.clone(),
    };
    let mut verifier = verify::Verifier::load(state::dir(opts.scope));
    notify(&[NotifyState::Ready]);
    st.request_sweep(&tx);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Tick => st.request_sweep(&tx),
            Event::Units => st.request_units(&tx),
            Event::UnitsChecked(units) => {
                st.units_running = false;
                if st.stopping {
                    continue;
                }
                obs.units_checked(&units);
                st.start_next(&tx);
            }
            Event::Grew {
                crossed,
                rescan,
                overflow,
            } => {
                for p in &crossed {
                    if !st.grew.contains(p) && !st.evicting.contains(p) {
                        tracing::info!(
                            cache_path = %p.display(),
                            "{} grew past its limit: sweeping it",
                            p.display()
                        );
                    }
                }
                if crossed.is_empty() && rescan.is_empty() && !overflow {
                    // The deferred growth sweep is due.
                    st.grew_deferred = false;
                }
                st.grew.extend(crossed);
                st.rescan.extend(rescan);
                st.grew_all |= overflow;
                st.growth_due(&tx);
            }
            Event::Watchdog => match liveness.check(
                st.running || verifier.running,
                crate::progress::count(),
                std::time::Instant::now(),
            ) {
                liveness::Verdict::Feed => notify(&[NotifyState::Watchdog]),
                liveness::Verdict::Starve { stuck, first } => {
                    if first {
                        tracing::error!(
                            gocache_warden_action = action::SWEEP,
                            "the sweep has made no progress for {}: no longer feeding the watchdog, so that systemd restarts the agent",
                            humantime::format_duration(Duration::from_secs(stuck.as_secs()))
                        );
                    }
                }
            },
            Event::LowSpace => {
                tracing::info!("a filesystem holding caches is below min_free: sweeping now");
                st.request_sweep(&tx);
            }
            Event::Signal(Sig::Reload) => {
                let mono = NotifyState::monotonic_usec_now().ok();
                let mut states = vec![NotifyState::Reloading];
                states.extend(mono);
                notify(&states);
                match policy::load_for(opts.scope, &opts.policy_paths) {
                    Ok(p) => {
                        for (what, old, new) in restart_only(&st.policy, &p) {
                            tracing::warn!(
                                gocache_warden_action = action::RELOAD,
                                "{what} changed from {old} to {new}: it takes effect when the agent restarts"
                            );
                        }
                        if let Err(e) = obs.reload(&p) {
                            tracing::error!(gocache_warden_action = action::RELOAD_FAILED, error = %format!("{e:#}"), "reload failed, keeping the running policy: {e:#}");
                        } else {
                            timer.abort();
                            timer = spawn_every(p.agent.interval, tx.clone(), || Event::Tick);
                            if let Some(w) = units_watch.take() {
                                w.abort();
                            }
                            units_watch =
                                crate::units::spawn_watch(&p, opts.scope, tx.clone(), || {
                                    Event::Units
                                });
                            if let Some(h) = headroom.take() {
                                h.abort();
                            }
                            headroom = crate::headroom::wanted(&p)
                                .then(|| spawn_headroom(probes.clone(), tx.clone()));
                            tracing::info!(
                                gocache_warden_action = action::RELOAD,
                                "reloaded the policy from {}",
                                p.sources.join(", ")
                            );
                            st.policy = Arc::new(p);
                            st.request_sweep(&tx);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string().replace('\n', "; ");
                        tracing::error!(gocache_warden_action = action::RELOAD_FAILED, error = %msg, "invalid policy, keeping the running one: {msg}");
                    }
                }
                notify(&[NotifyState::Ready]);
            }
            Event::Signal(Sig::Stop) => {
                notify(&[NotifyState::Stopping]);
                st.stopping = true;
                crate::cancel::Cancel::process().cancel();
                if !st.running && !verifier.running {
                    break;
                }
                tracing::info!("stopping: waiting for the current sweep to reach its next entry");
            }
            Event::Evicted(outcomes, took) => {
                st.running = false;
                for o in &outcomes {
                    // Writes during the eviction are in the estimate it leaves: growth past
                    // the trigger from there is seen again, not counted twice.
                    st.grew.remove(&o.path);
                    st.evicting.remove(&o.path);
                    let size = growth
                        .lock()
                        .ok()
                        .and_then(|mut g| g.freed(&o.path, o.evicted.bytes + o.gone));
                    if let Some(k) = st.known.get_mut(&o.path) {
                        k.advance(o);
                    }
                    if !o.reached {
                        // The list ran out (or was used again) before low water: a walk
                        // measures the cache and keeps a new list.
                        st.known.remove(&o.path);
                        st.grew.insert(o.path.clone());
                    }
                    tracing::info!(
                        gocache_warden_action = action::EVICT,
                        cache_path = %o.path.display(),
                        entries = o.evicted.entries,
                        "{}: evicted {} files ({}) from the oldest its last walk listed, without walking it{}; about {} in use{}",
                        o.path.display(),
                        o.evicted.entries,
                        crate::policy::value::human_bytes(o.evicted.bytes),
                        if o.changed > 0 { format!(" ({} used again or changed, left)", o.changed) } else { String::new() },
                        size.map_or_else(|| "?".into(), crate::policy::value::human_bytes),
                        if o.reached { "" } else { "; not at low water yet: walking it" }
                    );
                    obs.after_known(o, size, took);
                }
                if st.stopping {
                    if verifier.running {
                        continue;
                    }
                    break;
                }
                st.start_next(&tx);
            }
            Event::SweepDone(sweep, units) => {
                st.running = false;
                // A cache this sweep measured after evicting is not due again for the writes
                // the watcher counted against its old estimate while the sweep ran: its new
                // estimate and trigger come from that measurement (`watched` below).
                for p in sweep.reports.iter().filter_map(|r| r.path.as_ref()) {
                    st.grew.remove(p);
                }
                writes.after_sweep(&sweep);
                failure_caches.note(sweep.reports.iter().filter_map(|r| {
                    r.path
                        .clone()
                        .map(|path| crate::buildfail::KnownCache { path, kind: r.kind })
                }));
                if st.stopping {
                    if verifier.running {
                        continue;
                    }
                    break;
                }
                let status = sweep.status_line();
                tracing::info!(
                    gocache_warden_action = action::SWEEP,
                    entries = sweep.outcome.as_ref().map_or(0, |o| o
                        .caches
                        .iter()
                        .flat_map(|c| c.evicted.values())
                        .map(|u| u.entries)
                        .sum::<u64>()),
                    "{status}"
                );
                for r in &sweep.reports {
                    announce_via(r, &mut st.reported_via);
                    announce_held(r, &sweep, &mut st.held);
                    // What the sweep acted on (evictions, permission fixes) is logged by apply
                    // as it happens; the violations to log are those it leaves, and being
                    // held over the limit is said once by `announce_held`.
                    let acted = sweep
                        .plan
                        .caches
                        .iter()
                        .any(|c| Some(&c.path) == r.path.as_ref() && c.skipped.is_none());
                    for f in r.findings.iter().filter(|f| {
                        f.severity != crate::check::Severity::Info
                            && !(acted && f.auto_fix)
                            && f.kind != crate::check::HELD_OVER_LIMIT
                    }) {
                        if f.kind == "read-only-mount"
                            && !st
                                .reported_read_only
                                .insert(r.path.clone().unwrap_or_default())
                        {
                            continue;
                        }
                        // Said once, so it carries its fix (the `systemctl edit` line).
                        let fix = if f.kind == "read-only-mount" {
                            format!("; to fix: {}", f.fix)
                        } else {
                            String::new()
                        };
                        tracing::warn!(
                            gocache_warden_action = action::VIOLATION,
                            cache_path = %r.path.as_deref().unwrap_or(std::path::Path::new("")).display(),
                            reason = %f.kind,
                            entries = f.count,
                            cache_via = r.via.as_deref(),
                            "{}: {} ({}){fix}",
                            r.path.as_deref().map_or_else(|| r.name.clone(), |p| p.display().to_string()),
                            f.message,
                            f.kind
                        );
                    }
                }
                if sweep.partial {
                    if let Ok(mut g) = growth.lock() {
                        g.update(watched(&st.policy, &sweep));
                    }
                } else if let Ok(mut g) = growth.lock() {
                    let failed = g.set(watched(&st.policy, &sweep));
                    if failed != st.unwatched && failed > 0 {
                        // Each build cache with a limit costs 257 watches (root and shards),
                        // all charged to root's fs.inotify.max_user_watches.
                        tracing::warn!(
                            "{failed} cache directories could not be watched for growth (is fs.inotify.max_user_watches too low? each cache with a limit needs 257): those caches are measured only by the periodic sweep"
                        );
                    }
                    st.unwatched = failed;
                }
                if !sweep.partial {
                    if let Ok(mut p) = probes.lock() {
                        *p = crate::headroom::probes(&sweep.reports);
                    }
                    st.targets = sweep.targets.clone();
                    st.known.clear();
                }
                // What the walks listed replaces what earlier walks of those caches did.
                st.known.extend(known::from_sweep(&sweep));
                // Before the textfile is written: verified caches have their series from the start.
                obs.set_verified(&verify::verified_paths(&st.policy));
                // A growth sweep brings no units inspection: the last one's stand.
                obs.after_sweep(&sweep, (!sweep.partial).then_some(units.as_slice()));
                verifier.request(&st.policy, &tx);
                notify(&[NotifyState::Status(&status)]);
                st.last_status = Some(status);
                // A root this sweep created was inspected as missing, so nothing watches it
                // yet: sweep it again at once, which also sets its watches (else entries
                // copied or built into it would wait for the timer).
                if sweep
                    .outcome
                    .as_ref()
                    .is_some_and(|o| o.caches.iter().any(|c| c.created))
                {
                    st.pending = true;
                }
                st.start_next(&tx);
            }
            Event::Verified(done) => {
                verifier.finish(&done);
                if st.stopping {
                    if st.running {
                        continue;
                    }
                    break;
                }
                obs.after_verify(&done);
                verifier.request(&st.policy, &tx);
            }
            Event::BuildFailed(f) => obs.build_failed(&f),
            Event::Written(b) => writes.on_batch(b, &mut obs),
            Event::VerifyDue => {
                verifier.new_pass();
                verifier.request(&st.policy, &tx);
            }
            Event::SweepFailed(why) => {
                st.running = false;
                // A walk-free eviction that died: those caches get a walk next.
                for p in std::mem::take(&mut st.evicting) {
                    st.known.remove(&p);
                    st.grew.insert(p);
                }
                if st.stopping {
                    if verifier.running {
                        continue;
                    }
                    break;
                }
                tracing::error!(
                    gocache_warden_action = action::SWEEP,
                    error = %why,
                    "sweep failed without a result: {why}"
                );
                obs.sweep_failed();
                let status = format!("last sweep failed: {why}");
                notify(&[NotifyState::Status(&status)]);
                st.last_status = Some(status);
                if st.pending {
                    st.request_sweep(&tx);
                } else if st.growth_pending() {
                    st.growth_due(&tx);
                }
            }
        }
    }
    let _ = stop_http_tx.send(());
    writes.save();
    obs.shutdown(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(0)
}

/// Says when a cache becomes held over its size limit after a sweep (with what holds it),
/// and when it no longer is; nothing while its state stays the same.
fn announce_held(
    r: &crate::check::CacheReport,
    sweep: &Sweep,
    held: &mut std::collections::HashSet<PathBuf>,
) {
    let Some(path) = &r.path else { return };
    match sweep.held_over(path) {
        Some(h) => {
            if held.insert(path.clone()) {
                tracing::warn!(
                    gocache_warden_action = action::VIOLATION,
                    cache_path = %path.display(),
                    reason = crate::check::HELD_OVER_LIMIT,
                    bytes = h.size,
                    cache_via = r.via.as_deref(),
                    "{}: held over its size limit after eviction: {}",
                    path.display(),
                    h.describe()
                );
            }
        }
        None => {
            if held.remove(path) {
                tracing::info!(
                    cache_path = %path.display(),
                    bytes = sweep.size_after(path).unwrap_or(0),
                    "{}: no longer held over its size limit",
                    path.display()
                );
            }
        }
    }
}

/// Says once per directory (and again after a restart) that a user's manager or unit made
/// it one of their caches: the journal's `CACHE_VIA` then names the manager or unit.
fn announce_via(
    r: &crate::check::CacheReport,
    seen: &mut std::collections::HashSet<(PathBuf, String)>,
) {
    let (Some(user), Some(via), Some(path)) = (&r.user, &r.via, &r.path) else {
        return;
    };
    if via == crate::users::VIA_GO_ENV || !seen.insert((path.clone(), via.clone())) {
        return;
    }
    let state = if r.refused.is_some() {
        "refused (see its violation)".to_string()
    } else {
        format!("managed with the limits of cache \"{}\"", r.name)
    };
    tracing::info!(
        cache_path = %path.display(),
        cache_via = %via,
        "{}: a cache of {user} ({}), {state}",
        path.display(),
        r.source
    );
}
