//! The `exec` sink with real commands, and the full alert path (evaluate → tracker →
//! dispatcher → sink) stepping a fake clock: first message, quiet repeats, re-notify
//! after the interval, one resolved message.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gocache_warden::alert::{
    AlertTracker, CacheObservation, Dispatcher, ExecSink, Observation, RetryPolicy, Thresholds,
    UnitRef, evaluate,
};
use gocache_warden::metrics::{CacheKind, encode_text};
use prometheus::Registry;
use support::observe::*;

fn sh(script: &str, args: &[&Path]) -> (String, Vec<String>) {
    let mut a = vec!["-c".to_string(), script.to_string(), "sh".to_string()];
    a.extend(args.iter().map(|p| p.display().to_string()));
    (tool("sh", "dash").display().to_string(), a)
}

fn policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(1),
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_lines(p: &Path, n: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(10);
    while lines(p).len() < n && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    lines(p)
}

fn observation(size_gib: u64, missing: bool) -> Observation {
    let mut snap = snapshot("/srv/gocache", CacheKind::Build, 2);
    snap.allocated_bytes = size_gib * GIB;
    snap.violations.clear();
    Observation {
        host: "build01".into(),
        caches: vec![CacheObservation {
            snapshot: snap,
            last_sweep: None,
            root: None,
            units: vec![],
        }],
        units_missing_gocache: if missing {
            vec![UnitRef {
                unit: "nightly.service".into(),
                uid: 1001,
                user: "bob".into(),
            }]
        } else {
            vec![]
        },
    }
}

#[test]
fn renotify_interval_and_resolved_message_reach_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let env = dir.path().join("env.txt");
    let (prog, args) = sh(
        "cat >> \"$1\" && echo \"$GOCACHE_WARDEN_ALERT_STATUS $GOCACHE_WARDEN_ALERT_KIND $GOCACHE_WARDEN_ALERT_ID\" >> \"$2\"",
        &[&out, &env],
    );
    let reg = Registry::new();
    let sink = ExecSink::new("script", prog, args, Duration::from_secs(10));
    let d = Dispatcher::start(vec![Box::new(sink)], policy(3), 16, Some(&reg)).unwrap();
    let mut tracker = AlertTracker::new(Duration::from_secs(4 * 3600));
    let th = Thresholds::default();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut step = |obs: Observation, at: SystemTime| {
        for a in tracker.update(evaluate(&obs, &th), at) {
            assert_eq!(d.enqueue(a), 1);
        }
    };

    step(observation(12, true), t0); // over limit + units missing: 2 messages
    step(observation(12, true), t0 + Duration::from_secs(600)); // persisting: quiet
    step(observation(12, true), t0 + Duration::from_secs(3 * 3600)); // still inside the interval
    let got = wait_lines(&out, 2);
    assert_eq!(got.len(), 2);
    step(observation(13, false), t0 + Duration::from_secs(4 * 3600)); // re-notify + units resolved
    let got = wait_lines(&out, 4);
    assert_eq!(got.len(), 4);
    step(
        observation(5, false),
        t0 + Duration::from_secs(4 * 3600 + 60),
    ); // size resolved
    step(observation(5, false), t0 + Duration::from_secs(5 * 3600)); // nothing more
    let got = wait_lines(&out, 5);
    assert!(d.shutdown(Duration::from_secs(10)));
    let got_after = lines(&out);
    assert_eq!(got_after.len(), 5, "{got_after:#?}");
    assert_eq!(got, got_after);

    let docs: Vec<serde_json::Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut first_two = summary[..2].to_vec();
    first_two.sort();
    assert_eq!(
        first_two,
        [
            ("over_limit:/srv/gocache".to_string(), "firing".to_string()),
            (
                "units_missing_gocache:uid:1001".to_string(),
                "firing".to_string()
            ),
        ]
    );
    let mut middle = summary[2..4].to_vec();
    middle.sort();
    assert_eq!(
        middle,
        [
            ("over_limit:/srv/gocache".to_string(), "firing".to_string()),
            (
                "units_missing_gocache:uid:1001".to_string(),
                "resolved".to_string()
            ),
        ]
    );
    assert_eq!(
        summary[4],
        (
            "over_limit:/srv/gocache".to_string(),
            "resolved".to_string()
        )
    );

    // The re-notification carries fresh numbers and the original start time.
    let renotify = docs
        .iter()
        .filter(|d| d["id"] == "over_limit:/srv/gocache")
        .nth(1)
        .unwrap();
    assert_eq!(renotify["size_bytes"], 13 * GIB);
    assert_eq!(renotify["since"], "2027-01-15T08:00:00Z");
    assert_eq!(renotify["sent_at"], "2027-01-15T12:00:00Z");
    let resolved = &docs[4];
    assert_eq!(resolved["size_bytes"], 5 * GIB);
    assert!(
        resolved["summary"]
            .as_str()
            .unwrap()
            .contains("within its size limit"),
        "{resolved}"
    );
    let units = docs
        .iter()
        .find(|d| d["kind"] == "units_missing_gocache" && d["status"] == "firing")
        .unwrap();
    assert_eq!(
        (units["uid"].as_u64(), units["user"].as_str()),
        (Some(1001), Some("bob"))
    );
    assert_eq!(units["units"][0]["unit"], "nightly.service");

    let env_lines = lines(&env);
    assert!(
        env_lines.contains(&"firing over_limit over_limit:/srv/gocache".to_string()),
        "{env_lines:?}"
    );
    assert!(
        env_lines
            .contains(&"resolved units_missing_gocache units_missing_gocache:uid:1001".to_string())
    );
    let parsed = parse_exposition(&encode_text(&reg).unwrap()).unwrap();
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_alert_notifications_total",
            &["sink=\"script\"", "outcome=\"delivered\""]
        ),
        Some(5.0)
    );
}

#[test]
fn failing_command_is_retried_then_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (prog, args) = sh(
        "cat > /dev/null; echo run >> \"$1\"; echo 'mailer exploded' >&2; exit 3",
        &[&runs],
    );
    let reg = Registry::new();
    let d = Dispatcher::start(
        vec![Box::new(ExecSink::new(
            "failing",
            prog,
            args,
            Duration::from_secs(10),
        ))],
        policy(3),
        4,
        Some(&reg),
    )
    .unwrap();
    d.enqueue(evaluate(&observation(12, false), &Thresholds::default()).remove(0));
    wait_lines(&runs, 3);
    assert!(d.shutdown(Duration::from_secs(10)));
    assert_eq!(lines(&runs).len(), 3, "not exactly max_attempts runs");
    let parsed = parse_exposition(&encode_text(&reg).unwrap()).unwrap();
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_alert_notifications_total",
            &["sink=\"failing\"", "outcome=\"failed\""]
        ),
        Some(1.0)
    );
}

#[test]
fn overrunning_command_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let (prog, args) = sh("echo $$ > \"$1\"; exec sleep 30", &[&pidfile]);
    let d = Dispatcher::start(
        vec![Box::new(ExecSink::new(
            "slow",
            prog,
            args,
            Duration::from_millis(300),
        ))],
        policy(1),
        4,
        None,
    )
    .unwrap();
    let t = Instant::now();
    d.enqueue(evaluate(&observation(12, false), &Thresholds::default()).remove(0));
    assert!(t.elapsed() < Duration::from_millis(10));
    let pid = wait_lines(&pidfile, 1)[0].clone();
    assert!(
        d.shutdown(Duration::from_secs(10)),
        "worker stuck on a hung command"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "timeout not enforced: {:?}",
        t.elapsed()
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the timed-out command {pid} is still running"
    );
}
