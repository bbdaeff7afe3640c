//! The agent as systemd runs it: the real `units/user/gocache-warden.service` in a real user
//! manager (READY only after the first sweep, reload, a bad reload kept out, a stop in the
//! middle of a sweep), and growth from a real `go build` driving an eviction through inotify
//! while the sweep timer is an hour away.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::usermgr::{TestUser, UserManager};

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(p)
        .status()
        .expect("chown");
    assert!(st.success());
}

/// The shipped user unit in a fresh user's manager, running the binary under test on a
/// policy of one cache (`~/cache`, `entries` synthetic entries, 1 GiB, hourly sweeps) plus
/// `policy_extra` (`{home}` in it is the user's home), with the lines `service_extra(home)` returns in its drop-in (it may make
/// directories in the home: they are given to the user) and stderr in `~/daemon.log`.
struct Agent {
    mgr: UserManager,
    home: PathBuf,
    policy: PathBuf,
    log: PathBuf,
}

/// The policy every agent here starts from: the embedded default's caches off, one cache.
fn one_cache_policy(cache: &Path) -> String {
    format!(
        "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n[cache.t]\npath = \"{}\"\nmax_size = \"1GiB\"\n[agent]\ninterval = \"1h\"\n",
        cache.display()
    )
}

impl Agent {
    fn install(
        entries: usize,
        seed: u64,
        policy_extra: &str,
        service_extra: impl FnOnce(&Path) -> String,
    ) -> Agent {
        support::require_root();
        let user = TestUser::create().expect("test user");
        let home = user.home.clone();
        let cache = home.join("cache");
        support::mkcache(&cache, entries, seed);
        let policy = home.join("policy.toml");
        let extra = policy_extra.replace("{home}", &home.display().to_string());
        std::fs::write(&policy, one_cache_policy(&cache) + &extra).expect("policy");
        let service_extra = service_extra(&home);
        chown_r(&home, user.uid, user.gid);
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("units/user/gocache-warden.service"),
        )
        .expect("unit");
        user.install_unit("gocache-warden.service", &unit)
            .expect("install unit");
        let log = home.join("daemon.log");
        let dropin = format!(
            "[Service]\nExecStart=\nExecStart={} --scope user --policy {} run\n{service_extra}StandardError=append:{}\n",
            support::bin().display(),
            policy.display(),
            log.display()
        );
        user.write_file(
            ".config/systemd/user/gocache-warden.service.d/50-test.conf",
            dropin,
        )
        .expect("drop-in");
        let mgr = UserManager::start(user).expect("user manager");
        Agent {
            mgr,
            home,
            policy,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sweeps finished so far (each logs its status line, "… last sweep: …").
    fn sweeps_done(&self) -> usize {
        self.log().matches("last sweep: ").count()
    }

    fn state(&self) -> String {
        self.mgr
            .show("gocache-warden.service", "ActiveState")
            .unwrap_or_default()
    }
}

#[test]
fn user_unit_ready_reload_bad_reload_and_stop_mid_sweep() {
    support::require_test_hooks();
    // Failpoints: the first sweep pauses before applying (so READY can be seen not to wait
    // for it: a cold first sweep can outlast any start timeout), and so does the fourth (so a
    // stop can arrive in the middle of a sweep).
    let agent = Agent::install(300, 9, "", |home| {
        for d in ["fp1", "fp3"] {
            std::fs::create_dir_all(home.join(d)).expect("mkdir");
        }
        format!(
            "Environment=GOCACHE_WARDEN_FAILPOINT=before-apply:.:{},before-apply#4:.:{}\n",
            home.join("fp1").display(),
            home.join("fp3").display()
        )
    });
    let (fp1, fp3) = (agent.home.join("fp1"), agent.home.join("fp3"));
    let (mgr, policy) = (&agent.mgr, agent.policy.clone());
    let good = std::fs::read_to_string(&policy).expect("policy");
    let logtext = || agent.log();

    mgr.systemctl(&["start", "--no-block", "gocache-warden.service"])
        .expect("start");
    wait_for(
        "the first sweep to reach its failpoint",
        Duration::from_secs(30),
        || fp1.join("before-apply.ready").exists(),
    );
    wait_for(
        "active (READY=1) while the first sweep is still running",
        Duration::from_secs(30),
        || agent.state() == "active",
    );
    let status = mgr
        .show("gocache-warden.service", "StatusText")
        .expect("status");
    assert_eq!(
        status, "sweeping (first sweep since start)",
        "STATUS= during the first sweep"
    );
    std::fs::write(fp1.join("before-apply.go"), "").expect("release");
    wait_for(
        "STATUS= after the first sweep",
        Duration::from_secs(30),
        || {
            mgr.show("gocache-warden.service", "StatusText")
                .is_ok_and(|s| s.contains("1 cache(s)"))
        },
    );
    let pid = mgr.show("gocache-warden.service", "MainPID").expect("pid");

    // A good reload: systemctl waits for RELOADING=1 … READY=1.
    mgr.systemctl(&["reload", "gocache-warden.service"])
        .expect("reload");
    // systemd 252 finishes the reload job when ExecReload's kill exits; our RELOADING=1 …
    // READY=1 may come just after: "reloading" for a moment, then active again.
    wait_for(
        "active again after the reload",
        Duration::from_secs(15),
        || agent.state() == "active",
    );
    wait_for("the reload to be logged", Duration::from_secs(10), || {
        logtext().contains("reloaded the policy")
    });
    // Each good reload asks for a sweep; one asked for while another runs is merged into a
    // single pending one, so the next reload waits for this one's sweep (on a busy machine
    // they would overlap and sweep 4 below would never come).
    wait_for("sweep 2 (the reload's)", Duration::from_secs(30), || {
        agent.sweeps_done() >= 2
    });

    // Settings a running agent cannot take are named on reload, not silently ignored.
    std::fs::write(&policy, format!("{good}[metrics]\ntop_users = 3\n")).expect("policy");
    mgr.systemctl(&["reload", "gocache-warden.service"])
        .expect("reload");
    wait_for(
        "top_users named as needing a restart",
        Duration::from_secs(10),
        || {
            logtext().contains(
                "metrics.top_users changed from 10 to 3: it takes effect when the agent restarts",
            )
        },
    );
    wait_for("sweep 3 (the reload's)", Duration::from_secs(30), || {
        agent.sweeps_done() >= 3
    });
    wait_for(
        "active again after the reload",
        Duration::from_secs(15),
        || agent.state() == "active",
    );

    // A bad reload: logged, the running policy kept, the service untouched.
    std::fs::write(&policy, "[cache.t]\nmax_sise = 1\n").expect("break policy");
    mgr.systemctl(&["reload", "gocache-warden.service"])
        .expect("reload with a bad policy");
    wait_for(
        "the bad reload to be logged",
        Duration::from_secs(10),
        || logtext().contains("invalid policy, keeping the running one"),
    );
    assert!(
        logtext().contains("unknown field `max_sise`"),
        "{}",
        logtext()
    );
    // systemd 252 finishes the reload job when ExecReload's kill exits; our RELOADING=1 …
    // READY=1 may come just after: "reloading" for a moment, then active again.
    wait_for(
        "active again after the reload",
        Duration::from_secs(15),
        || agent.state() == "active",
    );
    assert_eq!(
        mgr.show("gocache-warden.service", "MainPID").expect("pid"),
        pid,
        "same process"
    );

    // Sweep #4 (after another good reload) pauses mid-sweep; stop must finish quickly.
    std::fs::write(&policy, &good).expect("fix policy");
    mgr.systemctl(&["reload", "gocache-warden.service"])
        .expect("reload");
    wait_for("sweep 4 to pause", Duration::from_secs(30), || {
        fp3.join("before-apply.ready").exists()
    });
    let t = Instant::now();
    mgr.systemctl(&["stop", "gocache-warden.service"])
        .expect("stop");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stop took {took:?} (TimeoutStopSec=10s)"
    );
    assert_eq!(agent.state(), "inactive", "clean stop, not failed");
    assert!(logtext().contains("stopped"), "{}", logtext());
}

fn go_env(home: &Path, cache: &Path) -> Vec<(String, String)> {
    let go = support::go_binary();
    vec![
        ("HOME".into(), home.display().to_string()),
        (
            "PATH".into(),
            format!("{}:/usr/bin:/bin", go.parent().expect("bin").display()),
        ),
        ("GOCACHE".into(), cache.display().to_string()),
        ("GOTOOLCHAIN".into(), "local".into()),
        ("GOTELEMETRY".into(), "off".into()),
        ("GOFLAGS".into(), "-mod=mod".into()),
        ("GOPROXY".into(), "off".into()),
    ]
}

fn go_build(dir: &Path, env: &[(String, String)], imports: &[&str]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("go.mod"), "module example.com/p\n\ngo 1.21\n").expect("go.mod");
    let body: String = imports
        .iter()
        .map(|i| format!("import _ \"{i}\"\n"))
        .collect();
    std::fs::write(
        dir.join("main.go"),
        format!("package main\n\n{body}\nfunc main() {{}}\n"),
    )
    .expect("main.go");
    let o = Command::new(support::go_binary())
        .args(["build", "-o", "/dev/null", "."])
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .expect("go build");
    assert!(
        o.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn all_files(p: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                all_files(&path, out);
            }
            out.push(path);
        }
    }
}

#[test]
fn growth_from_a_real_go_build_triggers_eviction_before_the_timer() {
    let d = support::tempdir();
    let home = d.path().join("home");
    let cache = d.path().join("gocache");
    std::fs::create_dir_all(&home).expect("mkdir");
    let env = go_env(&home, &cache);
    go_build(&d.path().join("p1"), &env, &["net/http"]);
    // Yesterday's entries: evictable (the floor is 1h); today's build comes next.
    let mut files = Vec::new();
    all_files(&cache, &mut files);
    for f in files.iter().filter(|f| f.is_file()) {
        support::age(f, 3 * 86400);
    }
    let size = support::du_bytes(&cache);
    let limit = size + (2 << 20);
    let policy = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.g]\npath = \"{}\"\nmax_size = {limit}\nlow_water = \"50%\"\nmin_age = \"1h\"\n[cache.g.alerts]\nsize_percent = \"100%\"\n[agent]\ninterval = \"1h\"\n",
            cache.display()
        ),
    );
    let log = d.path().join("daemon.log");
    let mut child = support::spawn_agent(&policy, &log);
    let logtext = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = Instant::now();
    wait_for("the first sweep", Duration::from_secs(60), || {
        logtext().contains("in use; last sweep")
    });
    let evicted = format!("from {} for size", cache.display());
    // Evicted by a sweep that walks the cache, or from the oldest files its first walk
    // listed (`daemon::known`), whichever the agent chose.
    let walk_free = format!("{}: evicted", cache.display());
    let evicted_any = || {
        let t = logtext();
        t.contains(&evicted) || (t.contains(&walk_free) && t.contains("without walking it"))
    };
    assert!(
        !logtext().contains(&evicted),
        "under the limit at first: {}",
        logtext()
    );
    // A new program brings new packages: the cache crosses its limit.
    go_build(
        &d.path().join("p2"),
        &env,
        &[
            "encoding/json",
            "crypto/tls",
            "text/template",
            "go/parser",
            "database/sql",
        ],
    );
    // The daemon may already have evicted while go was still writing: the log tells.
    wait_for(
        "an eviction driven by growth",
        Duration::from_secs(60),
        || logtext().contains(&format!("{} grew past its limit", cache.display())) && evicted_any(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(3000),
        "long before the 1h timer"
    );
    wait_for("the eviction to finish", Duration::from_secs(30), || {
        logtext().matches("in use; last sweep").count() >= 2
            || logtext().contains("without walking it")
    });
    let after = support::du_bytes(&cache);
    assert!(
        after <= limit,
        "evicted back under the limit: {after} > {limit}\n{}",
        logtext()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let st = child.0.wait().expect("wait");
    assert!(st.success(), "clean exit on SIGTERM: {st:?}\n{}", logtext());
}

/// A sweep stuck inside the process (here a failpoint that holds a walk for 60 s, as a hung
/// file system would hold a `getdents`) while the event loop itself keeps running: the
/// agent stops feeding the watchdog once the sweep has not moved for `WatchdogSec=`, and
/// systemd kills and restarts it. Fed from the loop alone, it would stay "healthy" for good.
#[test]
fn a_sweep_that_stops_moving_starves_the_watchdog_and_the_unit_restarts() {
    support::require_test_hooks();
    let agent = Agent::install(300, 11, "", |home| {
        std::fs::create_dir_all(home.join("fp")).expect("mkdir");
        format!(
            "WatchdogSec=3s\nRestartSec=1s\nEnvironment=GOCACHE_WARDEN_FAILPOINT=walk-open:*:{}\n",
            home.join("fp").display()
        )
    });
    let (mgr, fp) = (&agent.mgr, agent.home.join("fp"));
    mgr.systemctl(&["start", "--no-block", "gocache-warden.service"])
        .expect("start");
    wait_for("the sweep to hang", Duration::from_secs(30), || {
        fp.join("walk-open.ready").exists()
    });
    let hung_at = Instant::now();
    let restarts = |m: &UserManager| {
        m.show("gocache-warden.service", "NRestarts")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    // Starved after 3 s without progress, killed at most 3 s later, restarted after 1 s:
    // well inside the failpoint's 60 s.
    wait_for("a restart by the watchdog", Duration::from_secs(30), || {
        restarts(mgr) >= 1
    });
    let took = hung_at.elapsed();
    let text = agent.log();
    assert!(
        text.contains("the sweep has made no progress for"),
        "the agent did not say why it stopped feeding the watchdog:\n{text}"
    );
    assert!(
        took < Duration::from_secs(20),
        "restarted only after {took:?}"
    );
    std::fs::write(fp.join("walk-open.go"), "").expect("release");
    mgr.systemctl(&["stop", "gocache-warden.service"])
        .expect("stop");
}

/// A new unit, or a manager's reload, makes the agent inspect units, not walk every cache:
/// the unit lacking GOCACHE is counted in the textfile within seconds, and no sweep runs.
#[test]
fn a_new_unit_is_inspected_without_a_sweep() {
    let agent = Agent::install(
        200,
        12,
        "[metrics]\ntextfile = \"{home}/metrics.prom\"\n[units.go]\nmatch = [\"gwn-*.service\"]\nmanagers = \"user\"\n",
        |_| String::new(),
    );
    let (mgr, prom) = (&agent.mgr, agent.home.join("metrics.prom"));
    let metric = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(&prom).ok()?;
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .reduce(|a, b| a + b)
    };
    let sweeps = || metric("gocache_warden_sweeps_total").unwrap_or(0.0);
    mgr.systemctl(&["start", "gocache-warden.service"])
        .expect("start");
    wait_for(
        "the first sweep's textfile",
        Duration::from_secs(60),
        || sweeps() >= 1.0 && metric("gocache_warden_units_missing_gocache") == Some(0.0),
    );
    let before = sweeps();
    let log_sweeps = || agent.log().matches("1 cache(s)").count();
    let logged_before = log_sweeps();

    let oneshot = "[Service]\nType=oneshot\nExecStart=/bin/true\n";
    mgr.user
        .install_unit("gwn-build.service", oneshot)
        .expect("unit");
    mgr.daemon_reload().expect("daemon-reload");
    wait_for(
        "the new unit to be counted",
        Duration::from_secs(30),
        || metric("gocache_warden_units_missing_gocache") == Some(1.0),
    );
    let text = agent.log();
    assert_eq!(sweeps(), before, "a units event ran a sweep:\n{text}");
    assert_eq!(
        log_sweeps(),
        logged_before,
        "a units event ran a sweep:\n{text}"
    );
    assert!(text.contains("gwn-build.service"), "{text}");
    mgr.systemctl(&["stop", "gocache-warden.service"])
        .expect("stop");
}

/// A cache root the agent creates (`create = true`) is inspected as missing by the sweep that
/// creates it; the agent sweeps again at once, so its watches are set and entries that
/// arrive later are evicted within seconds, not at the next hourly timer.
#[test]
fn a_cache_the_agent_creates_is_watched_at_once() {
    support::require_root();
    let d = support::tempdir();
    let fresh = d.path().join("fresh");
    let policy = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.fresh]\npath = \"{}\"\ncreate = true\nmax_size = \"2MiB\"\nmin_age = \"1m\"\n[agent]\ninterval = \"1h\"\n",
            fresh.display()
        ),
    );
    let log = d.path().join("agent.log");
    let _agent = support::spawn_agent(&policy, &log);
    let logtext = || std::fs::read_to_string(&log).unwrap_or_default();
    // The creating sweep, then the one that sets the watches.
    wait_for("two sweeps", Duration::from_secs(60), || {
        fresh.is_dir() && logtext().matches("in use; last sweep").count() >= 2
    });
    let src = support::tempdir();
    support::mkcache(src.path(), 400, 14);
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.path().display()))
        .arg(&fresh)
        .status()
        .expect("cp");
    assert!(st.success());
    // What was copied in is well over the limit (257 directories alone take about 1 MiB);
    // the agent may already be evicting while `cp` runs, so the source is measured.
    let copied = support::du_bytes(src.path());
    assert!(copied > 4 << 20, "copied only {copied} bytes");
    let end = Instant::now() + Duration::from_secs(60);
    // The limit counts what eviction can remove (the shards' entries, not the shards
    // themselves). The sweep logs its evictions after the last unlink: wait for both.
    while evictable_bytes(&fresh) > 2 << 20 || !logtext().contains("for size") {
        assert!(
            Instant::now() < end,
            "not evicted to the limit within 60 s (the timer is 1 h away):\n{}",
            logtext()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Allocated bytes of the entries in a build cache's shards: what a size limit counts.
fn evictable_bytes(root: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn tree(p: &std::path::Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        let own = m.blocks() * 512;
        if !m.is_dir() {
            return own;
        }
        own + std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| tree(&e.path())).sum::<u64>())
            .unwrap_or(0)
    }
    (0..256)
        .map(|s| root.join(format!("{s:02x}")))
        .filter_map(|shard| std::fs::read_dir(shard).ok())
        .flat_map(|rd| rd.flatten().map(|e| tree(&e.path())).collect::<Vec<_>>())
        .sum()
}
