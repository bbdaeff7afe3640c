//! Issue #21: the agent under real builds, all the time. Three real users run a loop of real
//! `go build`s at once, each into their own cache (`users`, per-user limits), while the agent
//! runs with inotify on. Each cache starts just under its `max_size` with entries from two
//! days ago, and every build adds a new package archive, so each cache crosses its limit
//! again and again while old entries remain to evict. No build may fail, every size the agent
//! published after a sweep or an eviction (its allocated-bytes gauge: what the walk that
//! re-measures a cache found, or after a walk-free eviction the growth estimate, which errs
//! high) is within the limit, each cache was evicted for size on growth (not by the hourly
//! timer), and once the builds stop, `du -sB1` of every cache is within its limit.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::gobuild::{go_as, sh};

const USERS: [&str; 3] = ["gwt-loop-a", "gwt-loop-b", "gwt-loop-c"];
/// Room for a minute of one loop's writes (the floor keeps them: about 3 MiB here) besides
/// Go's layout (1 MiB), with old entries to evict.
const LIMIT: u64 = 8 << 20;
const RUN: Duration = Duration::from_secs(60);

struct User {
    uid: u32,
    gid: u32,
    home: PathBuf,
    proj: PathBuf,
}

fn user(name: &str) -> User {
    let uid = support::ensure_user(name, &[]);
    let pw = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .expect("passwd entry");
    // A fresh cache for each run: a leftover one from an earlier run would start over it.
    let _ = std::fs::remove_dir_all(pw.dir.join(".cache/go-build"));
    let proj = pw.dir.join("loop");
    let _ = std::fs::remove_dir_all(&proj);
    std::fs::create_dir_all(&proj).expect("mkdir");
    std::fs::write(proj.join("go.mod"), "module example.com/loop\n\ngo 1.24\n").expect("go.mod");
    sh(
        "chown",
        &["-R", &format!("{name}:"), &pw.dir.display().to_string()],
    );
    User {
        uid,
        gid: pw.gid.as_raw(),
        home: pw.dir,
        proj,
    }
}

/// One build of version `i`: a package whose archive is about 40 KiB and new each time.
fn build(u: &User, i: u64) -> Result<(), String> {
    let body = format!(
        "package loop\n\nconst N = {i}\n\nvar S = \"{}\" + \"{i}\"\n",
        "x".repeat(4 << 10)
    );
    let p = u.proj.join("p.go");
    std::fs::write(&p, body).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    let o = go_as(
        u.uid,
        u.gid,
        &u.home,
        &u.proj,
        &[],
        &["build", "./..."],
        Duration::from_secs(120),
    );
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// `name{…cache="PATH"…} VALUE` from the textfile.
fn gauge(text: &str, name: &str, cache: &Path, extra: &str) -> Option<f64> {
    let label = format!("cache=\"{}\"", cache.display());
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .find(|l| l.contains(extra))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn real_build_loops_of_several_users_never_fail_and_caches_stay_within_their_limits() {
    support::require_root();
    let users: Vec<User> = USERS.iter().map(|n| user(n)).collect();
    // Each cache exists (and is watched from the first sweep on).
    for (n, u) in users.iter().enumerate() {
        build(u, n as u64 * 1_000_000).unwrap_or_else(|e| panic!("first build: {e}"));
    }
    let caches: Vec<PathBuf> = users
        .iter()
        .map(|u| u.home.join(".cache/go-build"))
        .collect();
    // Yesterday's builds, up to just under the limit: what eviction takes while the loops
    // run (entries used in the last minute, the floor, never go).
    for (u, c) in USERS.iter().zip(&caches) {
        let mut n = 0u64;
        while support::du_bytes(c) < LIMIT - (512 << 10) {
            for _ in 0..16 {
                let a = format!("{:064x}", 2 * n + 1);
                let o = format!("{:064x}", 2 * n + 2);
                support::cachegen::record(c, &a, &o, 48);
                support::cachegen::file(&c.join(&o[..2]).join(format!("{o}-d")), 16 << 10, 48);
                n += 1;
            }
        }
        sh("chown", &["-R", &format!("{u}:"), &c.display().to_string()]);
    }
    let d = support::tempdir();
    let prom = d.path().join("textfile/gocache-warden.prom");
    std::fs::create_dir_all(prom.parent().expect("dir")).expect("mkdir");
    let names: Vec<String> = USERS.iter().map(|n| format!("\"{n}\"")).collect();
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.loop]\npath = \"auto\"\nusers = [{}]\nmax_size = {LIMIT}\nlow_water = \"95%\"\nmin_age = \"1m\"\n\
             [agent]\ninterval = \"1h\"\nwatch = true\n[metrics]\ntextfile = \"{}\"\n",
            names.join(", "),
            prom.display()
        ),
    );
    let log = d.path().join("agent.log");
    let agent = support::spawn_agent(&p, &log);
    let logtext = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while !prom.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no first sweep\n{}",
            logtext()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(n, u)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut i = n as u64 * 1_000_000 + 1;
                while !stop.load(Ordering::Relaxed) {
                    match build(&u, i) {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(300));
                }
                (ok, failed)
            })
        })
        .collect();
    // What the agent measured after each sweep, as it published it.
    let mut seen: Vec<Vec<f64>> = vec![Vec::new(); caches.len()];
    let begin = Instant::now();
    while begin.elapsed() < RUN {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        for (c, s) in caches.iter().zip(&mut seen) {
            if let Some(v) = gauge(&text, "gocache_warden_cache_allocated_bytes", c, "")
                && s.last() != Some(&v)
            {
                s.push(v);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut built = 0;
    for l in loops {
        let (ok, failed) = l.join().expect("build loop");
        assert!(
            failed.is_empty(),
            "{} failed builds, e.g.:\n{}",
            failed.len(),
            failed[0]
        );
        built += ok;
    }
    assert!(built >= 30, "only {built} builds in {RUN:?}");
    let text = std::fs::read_to_string(&prom).unwrap_or_default();
    for (c, s) in caches.iter().zip(&seen) {
        let over: Vec<&f64> = s.iter().filter(|v| **v > LIMIT as f64).collect();
        assert!(
            over.is_empty(),
            "{}: measured after a sweep over {LIMIT}: {over:?}\n{}",
            c.display(),
            logtext()
        );
        let evicted = gauge(
            &text,
            "gocache_warden_evicted_bytes_total",
            c,
            "reason=\"size\"",
        );
        assert!(
            evicted.is_some_and(|b| b > 0.0),
            "{}: nothing evicted for size\n{}",
            c.display(),
            logtext()
        );
        assert!(
            logtext().contains(&format!("{} grew past its limit", c.display())),
            "{}: no growth sweep\n{}",
            c.display(),
            logtext()
        );
    }
    // Quiet now: one more sweep of everything, then du is the last word.
    let sweeps = logtext().matches("in use; last sweep").count();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let t = Instant::now();
    while logtext().matches("in use; last sweep").count() <= sweeps {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no sweep after reload\n{}",
            logtext()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in &caches {
        let du = support::du_bytes(c);
        assert!(
            du <= LIMIT,
            "{}: du -sB1 {du} over {LIMIT}\n{}",
            c.display(),
            logtext()
        );
    }
    drop(agent);
}
