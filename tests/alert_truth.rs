//! Issue #21, point 3: alerts and violation metrics describe the state after the sweep.
//! The real agent, a local webhook receiver and the metrics textfile:
//!
//! - a cache that one sweep brings fully to policy (past `max_age`, over `max_size`, wrong
//!   group, no ACLs) sends no `over_limit` and no `violations` alert, and its violation
//!   gauges read 0 after the sweep;
//! - a cache held over its limit by entries younger than `min_age` fires `over_limit` once,
//!   saying what holds it, logs it once however many sweeps follow, exports the held bytes,
//!   and resolves when what held it is gone.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use support::cachegen::{file, record};

const GROUP: &str = "gwt-truth";

/// `n` units (an action record and the output it names, `len` bytes) aged `age_h` hours,
/// named from `seed` so that calls do not collide.
fn units(root: &Path, seed: u32, n: u32, len: usize, age_h: i64) -> u64 {
    let mut bytes = 0;
    for i in 0..n {
        let a = format!("{:08x}{:056x}", seed, u64::from(i) * 2 + 1);
        let o = format!("{:08x}{:056x}", seed, u64::from(i) * 2 + 2);
        record(root, &a, &o, age_h);
        let d = root.join(&o[..2]).join(format!("{o}-d"));
        file(&d, len, age_h);
        bytes += len as u64;
    }
    bytes
}

fn skeleton(root: &Path) {
    std::fs::create_dir_all(root).expect("mkdir");
    std::fs::write(
        root.join("README"),
        "This directory holds cached build artifacts from the Go build system.\n",
    )
    .expect("README");
    for s in 0..256 {
        std::fs::create_dir_all(root.join(format!("{s:02x}"))).expect("shard");
    }
}

/// Sweeps that ended, by the agent's own status line.
fn sweeps(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("in use; last sweep")
        .count()
}

fn wait_for(what: &str, log: &Path, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

struct World {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    prom: std::path::PathBuf,
    log: std::path::PathBuf,
    alerts: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    stop: Arc<AtomicBool>,
}

impl World {
    fn new() -> World {
        support::require_root();
        let dir = support::tempdir();
        let root = dir.path().join("cache");
        skeleton(&root);
        let prom = dir.path().join("textfile/gocache-warden.prom");
        std::fs::create_dir_all(prom.parent().expect("dir")).expect("mkdir");
        let stop = Arc::new(AtomicBool::new(false));
        let (port, alerts) = support::observe::receiver(stop.clone());
        std::fs::write(
            dir.path().join("url"),
            format!("http://127.0.0.1:{port}/hook\n"),
        )
        .expect("url");
        World {
            log: dir.path().join("agent.log"),
            dir,
            root,
            prom,
            alerts,
            stop,
        }
    }

    /// The agent with `cache` (the `[cache.t]` keys after `path`) and a webhook sink.
    fn agent(&self, cache: &str) -> support::KillOnDrop {
        let p = support::policy(
            self.dir.path(),
            "p.toml",
            &format!(
                "[cache.t]\npath = \"{}\"\n{cache}\n[agent]\ninterval = \"1h\"\nwatch = false\n\
                 [metrics]\ntextfile = \"{}\"\n\
                 [alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n",
                self.root.display(),
                self.prom.display(),
                self.dir.path().join("url").display()
            ),
        );
        support::spawn_agent(&p, &self.log)
    }

    fn got(&self, kind: &str, status: &str) -> Vec<serde_json::Value> {
        self.alerts
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a["kind"] == kind && a["status"] == status)
            .cloned()
            .collect()
    }

    fn textfile(&self) -> String {
        std::fs::read_to_string(&self.prom).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn reload(agent: &support::KillOnDrop) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
}

#[test]
fn a_cache_one_sweep_brings_to_policy_sends_no_alert() {
    let w = World::new();
    support::ensure_group(GROUP);
    // 2000 entries: half unused for 40 days (past max_age), all of it over the limit, none
    // with the policy's group or ACLs.
    let old = units(&w.root, 1, 500, 8192, 40 * 24);
    let recent = units(&w.root, 2, 500, 8192, 48);
    let before = support::du_bytes(&w.root);
    let limit = before - old - recent / 4;
    let agent = w.agent(&format!(
        "max_size = {limit}\nmax_age = \"30d\"\nmin_age = \"1h\"\ngroup = \"{GROUP}\"\ngroup_access = \"rwx\"\nrewrite_trim = false"
    ));
    wait_for("the first sweep", &w.log, Duration::from_secs(120), || {
        sweeps(&w.log) >= 1 && w.prom.exists()
    });
    // Deliveries are asynchronous: give the sink time to send anything it was handed.
    std::thread::sleep(Duration::from_secs(3));
    let after = support::du_bytes(&w.root);
    assert!(after <= limit, "du {after} over the limit {limit}");
    let text = w.textfile();
    for v in ["group", "acl", "past-max-age", "held-over-limit"] {
        let n = metric(
            &text,
            "gocache_warden_cache_violations",
            &[&format!("violation=\"{v}\"")],
        );
        assert!(
            n.is_none_or(|n| n == 0.0),
            "{v} after the sweep: {n:?}\n{text}"
        );
    }
    // Before the sweep there were group and ACL violations: the sweep fixed them.
    let fixes = metric(
        &text,
        "gocache_warden_permission_fixes_total",
        &["fix=\"group\""],
    );
    assert!(fixes.is_some_and(|n| n > 0.0), "{text}");
    for kind in ["over_limit", "violations"] {
        let fired = w.got(kind, "firing");
        assert!(
            fired.is_empty(),
            "{kind} fired for what the sweep fixed: {fired:#?}"
        );
    }
    drop(agent);
}

#[test]
fn a_cache_held_over_its_limit_fires_once_says_why_and_resolves() {
    let w = World::new();
    units(&w.root, 3, 200, 8192, 72);
    // Used an hour ago: the 1-day floor keeps them, and they alone are over the limit.
    let held = units(&w.root, 4, 300, 8192, 1);
    let limit = held / 2;
    let agent = w.agent(&format!(
        "max_size = {limit}\nmin_age = \"24h\"\nrewrite_trim = false"
    ));
    wait_for("the first sweep", &w.log, Duration::from_secs(120), || {
        sweeps(&w.log) >= 1
    });
    for n in 2..=3 {
        reload(&agent);
        wait_for("another sweep", &w.log, Duration::from_secs(120), || {
            sweeps(&w.log) >= n
        });
    }
    let log = std::fs::read_to_string(&w.log).unwrap_or_default();
    let said = log
        .matches("held over its size limit after eviction")
        .count();
    assert_eq!(said, 1, "said once over three sweeps:\n{log}");
    assert!(log.contains("(min_age)"), "{log}");
    wait_for(
        "the over_limit alert",
        &w.log,
        Duration::from_secs(30),
        || !w.got("over_limit", "firing").is_empty(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let fired = w.got("over_limit", "firing");
    assert_eq!(fired.len(), 1, "{fired:#?}");
    let summary = fired[0]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("held over its size limit") && summary.contains("(min_age)"),
        "{summary}"
    );
    // Every unit past the floor went; what is left is held.
    assert!(support::du_bytes(&w.root) > limit);
    let recent = metric(
        &w.textfile(),
        "gocache_warden_cache_held_bytes",
        &["cause=\"recent\""],
    );
    assert!(recent.is_some_and(|b| b as u64 >= held), "{recent:?}");

    // What held it goes (say, a user's `go clean -cache`): resolved, and said.
    for s in 0..256 {
        let shard = w.root.join(format!("{s:02x}"));
        for f in std::fs::read_dir(&shard).expect("shard") {
            std::fs::remove_file(f.expect("entry").path()).expect("rm");
        }
    }
    reload(&agent);
    wait_for(
        "the resolved alert",
        &w.log,
        Duration::from_secs(60),
        || !w.got("over_limit", "resolved").is_empty(),
    );
    let log = std::fs::read_to_string(&w.log).unwrap_or_default();
    assert!(log.contains("no longer held over its size limit"), "{log}");
    let recent = metric(
        &w.textfile(),
        "gocache_warden_cache_held_bytes",
        &["cause=\"recent\""],
    );
    assert_eq!(recent, Some(0.0));
}
