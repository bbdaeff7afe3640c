//! Delivery of alert messages without blocking the caller: each sink has a bounded
//! queue and a worker thread that delivers with retries (exponential backoff with
//! jitter, `Retry-After` honoured) and gives up after a fixed number of attempts.
//!
//! The dispatcher knows nothing about message formats or transports; sinks do. A full
//! queue drops the new alert (counted and logged) rather than blocking: the tracker
//! sends it again after the re-notify interval if the problem persists.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus::{IntCounterVec, Opts, Registry};

use super::{Alert, NOTIFICATIONS_METRIC};

/// A destination for alerts. `deliver` runs on the sink's own worker thread and may
/// block up to its own per-request timeout.
pub trait Sink: Send + 'static {
    /// Short name for logs and metrics (never a URL or secret).
    fn name(&self) -> &str;
    fn deliver(&mut self, alert: &Alert) -> std::result::Result<(), DeliveryError>;
}

/// Why one delivery attempt failed. `reason` must not contain secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryError {
    /// Transport errors, timeouts, 5xx and 429 are worth retrying; other 4xx are not.
    pub retryable: bool,
    /// HTTP status, if the server answered.
    pub status: Option<u16>,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    pub reason: String,
}

impl DeliveryError {
    pub fn transient(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            retryable: true,
            status: None,
            retry_after: None,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            retryable: false,
            status: None,
            retry_after: None,
            reason: reason.into(),
        }
    }
}

/// How hard to try each alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per alert per sink, including the first.
    pub max_attempts: u32,
    /// Backoff after the first failure; doubles each time up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` obeyed; longer values are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(900),
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt after failed attempt number `attempt` (1-based):
    /// "equal jitter" (half the exponential step plus a random part of the other half),
    /// but never sooner than the server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, random: u64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        let step = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let half = step / 2;
        let half_ms = half.as_millis() as u64;
        let jitter = if half_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(random % (half_ms + 1))
        };
        let backoff = half + jitter;
        match retry_after {
            Some(ra) => backoff.max(ra.min(self.max_retry_after)),
            None => backoff,
        }
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded per process and varies per instance: enough for jitter,
    // without pulling in a random number crate.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Registers `gocache_warden_alert_notifications_total{sink,outcome}` in `registry`. Once per
/// registry: dispatchers that replace each other on reload share it through
/// [`Dispatcher::start_counted`].
pub fn register_counter(registry: &Registry) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(
        Opts::new(
            NOTIFICATIONS_METRIC,
            "Alert notifications by sink and outcome (delivered, failed, dropped)",
        ),
        &["sink", "outcome"],
    )
    .context("invalid alert notification counter")?;
    registry
        .register(Box::new(c.clone()))
        .with_context(|| format!("cannot register metric \"{NOTIFICATIONS_METRIC}\""))?;
    Ok(c)
}

/// Shutdown signal that also wakes workers sleeping in a backoff.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`; returns true if shutdown was requested meanwhile.
    fn wait(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }
}

struct Queue {
    sink: String,
    tx: SyncSender<Arc<Alert>>,
}

/// Owns the per-sink queues and worker threads.
pub struct Dispatcher {
    queues: Vec<Queue>,
    stop: Arc<Stop>,
    /// Alerts not delivered because of the stop: still queued, or between retries.
    left: Arc<Mutex<Vec<(String, Alert)>>>,
    workers: Vec<JoinHandle<()>>,
    done: Receiver<()>,
    counter: Option<IntCounterVec>,
}

impl Dispatcher {
    /// Starts one worker thread per sink, each with a queue of `capacity` alerts.
    /// With a registry, delivery outcomes are counted in
    /// `gocache_warden_alert_notifications_total{sink,outcome}`. Workers log through
    /// the tracing dispatcher current at this call.
    pub fn start(
        sinks: Vec<Box<dyn Sink>>,
        policy: RetryPolicy,
        capacity: usize,
        registry: Option<&Registry>,
    ) -> Result<Dispatcher> {
        let counter = registry.map(register_counter).transpose()?;
        Dispatcher::start_counted(sinks, policy, capacity, counter)
    }

    /// As [`start`](Self::start), counting in a notification counter already registered
    /// (see [`register_counter`]).
    pub fn start_counted(
        sinks: Vec<Box<dyn Sink>>,
        policy: RetryPolicy,
        capacity: usize,
        counter: Option<IntCounterVec>,
    ) -> Result<Dispatcher> {
        let stop = Arc::new(Stop::default());
        let left = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel();
        let log = tracing::dispatcher::get_default(|d| d.clone());
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for mut sink in sinks {
            let name = sink.name().to_string();
            if let Some(c) = &counter {
                for outcome in ["delivered", "failed", "dropped"] {
                    c.with_label_values(&[name.as_str(), outcome]).reset();
                }
            }
            let (tx, rx) = mpsc::sync_channel::<Arc<Alert>>(capacity.max(1));
            let (stop, counter, done_tx, log, left) = (
                stop.clone(),
                counter.clone(),
                done_tx.clone(),
                log.clone(),
                left.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("alert-{name}"))
                .spawn(move || {
                    tracing::dispatcher::with_default(&log, || {
                        while let Ok(alert) = rx.recv() {
                            let mut outcome = if stop.is_stopped() {
                                "dropped"
                            } else {
                                deliver(sink.as_mut(), &alert, &policy, &stop)
                            };
                            if outcome == "dropped" || outcome == INTERRUPTED {
                                // Undelivered because of the stop: the owner may hand it on.
                                outcome = "dropped";
                                if let Ok(mut l) = left.lock() {
                                    l.push((sink.name().to_string(), (*alert).clone()));
                                }
                            }
                            if let Some(c) = &counter {
                                c.with_label_values(&[sink.name(), outcome]).inc();
                            }
                        }
                    });
                    let _ = done_tx.send(());
                })
                .with_context(|| format!("cannot start the alert worker for sink \"{name}\""))?;
            queues.push(Queue { sink: name, tx });
            workers.push(handle);
        }
        Ok(Dispatcher {
            queues,
            stop,
            left,
            workers,
            done,
            counter,
        })
    }

    /// Queues `alert` for every sink and returns at once; returns how many sinks
    /// accepted it. A sink whose queue is full drops it (logged and counted).
    pub fn enqueue(&self, alert: Alert) -> usize {
        let alert = Arc::new(alert);
        self.queues
            .iter()
            .filter(|q| self.offer(q, alert.clone()))
            .count()
    }

    /// Queues `alert` for the sink named `sink` only; whether its queue took it (a full
    /// queue drops it, logged and counted: the caller offers it again later).
    pub fn enqueue_to(&self, sink: &str, alert: Alert) -> bool {
        let alert = Arc::new(alert);
        self.queues
            .iter()
            .filter(|q| q.sink == sink)
            .any(|q| self.offer(q, alert.clone()))
    }

    /// The sinks' names, in the order they were given.
    pub fn sink_names(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.sink.clone()).collect()
    }

    fn offer(&self, q: &Queue, alert: Arc<Alert>) -> bool {
        match q.tx.try_send(alert.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(sink = %q.sink, alert = %alert.id, "alert queue full, dropping alert");
                if let Some(c) = &self.counter {
                    c.with_label_values(&[q.sink.as_str(), "dropped"]).inc();
                }
                false
            }
        }
    }

    /// Stops the workers: attempts in flight finish (bounded by the sinks' timeouts),
    /// pending retries and queued alerts are abandoned. Waits at most `grace`; returns
    /// whether every worker ended in time (stragglers are detached).
    pub fn shutdown(self, grace: Duration) -> bool {
        self.stop_and_take(grace).0
    }

    /// As [`shutdown`](Self::shutdown), also returning the alerts that were not delivered
    /// because of it (queued, or waiting between retries), each with its sink's name, so
    /// that a reload can hand them to the new sinks instead of losing them.
    pub fn stop_and_take(self, grace: Duration) -> (bool, Vec<(String, Alert)>) {
        let Dispatcher {
            queues,
            stop,
            workers,
            done,
            left,
            ..
        } = self;
        stop.stop();
        drop(queues);
        let deadline = Instant::now() + grace;
        let mut ended = 0;
        while ended < workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match done.recv_timeout(left) {
                Ok(()) => ended += 1,
                Err(_) => break,
            }
        }
        let all = ended == workers.len();
        if all {
            for w in workers {
                let _ = w.join();
            }
        }
        let left = left
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        (all, left)
    }
}

/// What [`deliver`] returns when a stop came between two attempts (never a metric label).
const INTERRUPTED: &str = "interrupted";

/// Delivers one alert to one sink with retries; returns the outcome label.
fn deliver(sink: &mut dyn Sink, alert: &Alert, policy: &RetryPolicy, stop: &Stop) -> &'static str {
    let attempts = policy.max_attempts.max(1);
    for attempt in 1..=attempts {
        let err = match sink.deliver(alert) {
            Ok(()) => {
                tracing::info!(sink = sink.name(), alert = %alert.id, status = ?alert.status, attempt, "alert delivered");
                return "delivered";
            }
            Err(e) => e,
        };
        if !err.retryable {
            tracing::warn!(sink = sink.name(), alert = %alert.id, attempt, status = err.status, error = %err.reason, "alert delivery failed permanently");
            return "failed";
        }
        if attempt == attempts {
            tracing::warn!(sink = sink.name(), alert = %alert.id, attempt, status = err.status, error = %err.reason, "alert delivery failed, giving up");
            return "failed";
        }
        let delay = policy.delay(attempt, err.retry_after, random_u64());
        tracing::warn!(
            sink = sink.name(),
            alert = %alert.id,
            attempt,
            status = err.status,
            retry_in_ms = delay.as_millis() as u64,
            error = %err.reason,
            "alert delivery failed, will retry"
        );
        if stop.wait(delay) {
            tracing::warn!(sink = sink.name(), alert = %alert.id, "shutting down, alert not delivered");
            return INTERRUPTED;
        }
    }
    "failed"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        };
        for r in [0, 1, 999, u64::MAX] {
            let d1 = p.delay(1, None, r);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = p.delay(3, None, r);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d9 = p.delay(9, None, r);
            assert!(
                d9 >= Duration::from_secs(5) && d9 <= Duration::from_secs(10),
                "{d9:?}"
            );
            assert!(p.delay(1, Some(Duration::from_secs(30)), r) == Duration::from_secs(30));
            assert!(p.delay(1, Some(Duration::from_secs(3600)), r) == Duration::from_secs(60));
        }
    }
}
