//! Write attribution (issue #23, point 1): the agent, as root, watches a user's build cache
//! through fanotify while real `go build`s write into it, each in a cgroup named like a
//! systemd service (what `/proc/PID/cgroup` says of a service's processes). What the owner's
//! build wrote is counted to the byte and entry under the owner and the unit
//! (`gocache_warden_cache_written_*_total`), with no foreign-write event; a `sudo go build`
//! (root, into the owner's cache) is counted under root and its unit and logged as a foreign
//! write naming the pid, command, uid, unit and command line; and `check` shows both as the
//! cache's top writers while the agent runs, and none once it has stopped.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const OWNER: &str = "gwt-writes-owner";

/// The cgroup v2 hierarchy's mount point.
fn cgroup2() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount (for a unit-like cgroup)")
}

/// A cgroup named like a service, removed (once empty) when dropped.
struct Unit(PathBuf);

impl Unit {
    fn new(name: &str) -> Unit {
        let p = cgroup2().join(format!("{name}-{}.service", std::process::id()));
        std::fs::create_dir_all(&p).expect("mkdir cgroup");
        Unit(p)
    }
    fn name(&self) -> String {
        self.0
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `go build FLAGS -o /dev/null .` in `src` as `uid`, in cgroup `unit`, writing `cache`.
fn build(unit: &Unit, uid: u32, gid: u32, home: &Path, src: &Path, cache: &Path, flags: &str) {
    let go = support::gobuild::goroot().join("bin/go");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec setpriv --reuid {uid} --regid {gid} --init-groups \
         env -i HOME={} PATH=/usr/bin:/bin GOCACHE={} GOTOOLCHAIN=local GOFLAGS=-mod=mod \
         GOTELEMETRY=off CGO_ENABLED=0 {} build {flags} -o /dev/null .",
        unit.0.display(),
        home.display(),
        cache.display(),
        go.display()
    );
    let mut c = Command::new("sh");
    c.args(["-c", &script]).current_dir(src);
    let o = support::gobuild::run_bounded(c, Duration::from_secs(600));
    assert!(
        o.status.success(),
        "go build {flags}: {}",
        support::stderr(&o)
    );
}

/// Allocated bytes of the files in `cache`'s shards owned by `uid` and last written at
/// `since` (Unix nanoseconds) or later.
fn owned(cache: &Path, uid: u32, since: i128) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    for shard in std::fs::read_dir(cache).expect("cache") {
        let shard = shard.expect("entry").path();
        // Not through a symlink: what a shard swapped for one leads to is not the cache.
        let m = std::fs::symlink_metadata(&shard).expect("stat shard");
        if !m.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).expect("shard") {
            let f = f.expect("entry").path();
            let m = std::fs::symlink_metadata(&f).expect("stat");
            let written = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            if m.is_file() && m.uid() == uid && written >= since {
                out.insert(f, m.blocks() * 512);
            }
        }
    }
    out
}

/// The value of the series of `name` with these label values, 0 when absent.
fn value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// As root: user `name`, created if missing, with its uid and primary gid.
fn test_user(name: &str) -> (nix::unistd::User, u32, u32) {
    support::require_root();
    let uid = support::ensure_user(name, &[]);
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no user {name}"));
    let gid = user.gid.as_raw();
    (user, uid, gid)
}

/// `setpriv` taking `uid:gid` and that user's groups, for the command given after it.
fn setpriv(uid: u32, gid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        &uid.to_string(),
        "--regid",
        &gid.to_string(),
        "--init-groups",
    ]);
    c
}

/// `sh -c SCRIPT` as `uid:gid` (with that user's groups); fails the test if it fails.
fn as_user(uid: u32, gid: u32, script: &str) {
    let o = setpriv(uid, gid)
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv");
    assert!(o.status.success(), "{script}: {}", support::stderr(&o));
}

/// A policy of `cache` alone, with `/metrics` on `port`.
fn cache_policy(d: &Path, cache: &Path, port: u16) -> PathBuf {
    support::policy(
        d,
        "policy.toml",
        &format!(
            "[cache.gc]\npath = \"{}\"\n[agent]\ninterval = \"1h\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            cache.display()
        ),
    )
}

/// What the agent's `/metrics` says now (empty while it does not listen yet).
fn scrape(port: u16) -> String {
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        support::scrape_metrics(port)
    } else {
        String::new()
    }
}

/// Waits until the agent logging to `log` has marked `shards` shards of `cache`, and checks
/// the fanotify mode it said it runs in.
fn wait_for_marks(log: &Path, cache: &str, shards: usize, mode: &str) {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    wait_for("the cache's marks", Duration::from_secs(60), || {
        text().contains(&format!(
            "writes into {cache} are attributed ({shards} shards)"
        ))
    });
    let said = format!("writes into build caches are attributed (fanotify, {mode})");
    assert!(text().contains(&said), "{}", text());
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn writes_are_attributed_to_their_owner_and_unit_and_foreign_entries_are_logged() {
    let (user, uid, gid) = test_user(OWNER);
    let tmp = support::tempdir();
    let d = tmp.path();
    support::gobuild::sh("chmod", &["755", &d.display().to_string()]);
    let src = d.join("src");
    std::fs::create_dir(&src).expect("mkdir src");
    std::fs::write(src.join("go.mod"), "module example.com/w\n\ngo 1.22\n").expect("go.mod");
    std::fs::write(
        src.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(1) }\n",
    )
    .expect("main.go");
    let cache = d.join("gc");
    std::fs::create_dir(&cache).expect("mkdir cache");
    nix::unistd::chown(&cache, Some(user.uid), Some(user.gid)).expect("chown");
    // The cache exists (shards and all) before the agent's first sweep, as on a server.
    let owner_unit = Unit::new("gwt-writes-owner");
    build(&owner_unit, uid, gid, &user.dir, &src, &cache, "");
    // The owner swaps shards f0 to ff for symlinks to directories of theirs: what go writes
    // through them lands outside the cache, and must not be counted as the cache's. (Sixteen
    // shards, so that a build of a few hundred files surely writes through one.)
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir elsewhere");
    nix::unistd::chown(&elsewhere, Some(user.uid), Some(user.gid)).expect("chown");
    let script = format!(
        "for s in f0 f1 f2 f3 f4 f5 f6 f7 f8 f9 fa fb fc fd fe ff; do \
         mkdir {e}/$s && rm -rf {gc}/$s && ln -s {e}/$s {gc}/$s || exit 1; done",
        gc = cache.display(),
        e = elsewhere.display()
    );
    as_user(uid, gid, &script);

    let port = support::free_port();
    let policy = cache_policy(d, &cache, port);
    let log = d.join("agent.log");
    let agent = support::spawn_agent(&policy, &log);
    let scrape = || scrape(port);
    wait_for("the first sweep", Duration::from_secs(60), || {
        value(&scrape(), "gocache_warden_sweeps_total", &[]) >= 1
    });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let gc = cache.display().to_string();
    // The shards are marked (the kernel reports from this point on).
    wait_for_marks(&log, &gc, 240, "Privileged");

    // The owner's build in its unit: every byte and entry it wrote (new files, and the few
    // action records go writes again), under owner and unit. (Entries the build only used
    // keep their times: go refreshes a used entry's mtime once an hour.)
    let start = now_ns();
    build(
        &owner_unit,
        uid,
        gid,
        &user.dir,
        &src,
        &cache,
        "-gcflags=all=-N",
    );
    let written = owned(&cache, uid, start);
    let new: Vec<(&PathBuf, &u64)> = written.iter().collect();
    let bytes: u64 = new.iter().map(|(_, b)| **b).sum();
    let entries = new
        .iter()
        .filter(|(p, _)| p.to_string_lossy().ends_with("-a"))
        .count() as u64;
    assert!(entries > 100, "a rebuild of fmt writes entries: {entries}");
    let own_unit = owner_unit.name();
    let labels = [
        ("cache", gc.as_str()),
        ("user", OWNER),
        ("unit", own_unit.as_str()),
    ];
    let waited = Instant::now();
    while value(
        &scrape(),
        "gocache_warden_cache_written_entries_total",
        &labels,
    ) < entries
    {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the owner's {entries} entries ({bytes} bytes) as {labels:?}:\n{}\n{}",
            scrape(),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = scrape();
    assert_eq!(
        (
            value(&m, "gocache_warden_cache_written_bytes_total", &labels),
            value(&m, "gocache_warden_cache_written_entries_total", &labels)
        ),
        (bytes, entries),
        "what du and find say the build added\n{m}"
    );
    assert!(
        !log_text().contains("not theirs"),
        "no false alarm: {}",
        log_text()
    );
    assert!(
        std::fs::read_dir(&elsewhere)
            .expect("elsewhere")
            .filter_map(|s| std::fs::read_dir(s.ok()?.path()).ok())
            .flatten()
            .count()
            > 0,
        "the build wrote through the symlinked shard (and none of it was counted)"
    );

    // `sudo go build` into the owner's cache: root's files, counted and logged as foreign.
    let sudo_unit = Unit::new("gwt-writes-sudo");
    build(
        &sudo_unit,
        0,
        0,
        Path::new("/root"),
        &src,
        &cache,
        "-gcflags=all=-l",
    );
    let root_files = owned(&cache, 0, 0);
    assert!(!root_files.is_empty(), "root's build wrote into the cache");
    let root_bytes: u64 = root_files.values().sum();
    let sudo = sudo_unit.name();
    let root_labels = [
        ("cache", gc.as_str()),
        ("user", "root"),
        ("unit", sudo.as_str()),
    ];
    wait_for("root's writes", Duration::from_secs(30), || {
        value(
            &scrape(),
            "gocache_warden_cache_written_bytes_total",
            &root_labels,
        ) >= root_bytes
    });
    wait_for("the foreign-write events", Duration::from_secs(30), || {
        log_text().contains("root wrote ")
    });
    let text = log_text();
    let foreign: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("a cache that is not theirs"))
        .collect();
    // One by one up to the per-minute allowance (the build may straddle two minutes).
    let cap = 2 * gocache_warden::writers::FOREIGN_PER_MINUTE;
    assert!(
        !foreign.is_empty() && foreign.len() as u64 <= cap,
        "{foreign:#?}"
    );
    assert!(
        foreign
            .iter()
            .all(|l| l.contains(&format!("into {gc}")) && l.contains(&format!(", uid 0, {sudo})"))),
        "every line names the cache, the writer's uid and its unit: {foreign:#?}"
    );
    // The kernel names the process whose close was the last: now and then a child `go` forks
    // (compile, asm) just as it closes an entry holds a copy of that fd until its exec. Most
    // lines name `go` itself.
    let first = foreign
        .iter()
        .find(|l| l.contains(&format!("(go, uid 0, {sudo})")))
        .unwrap_or_else(|| panic!("pid, command, uid, unit: {foreign:#?}"));
    assert!(
        first.contains("build -gcflags=all=-l -o /dev/null ."),
        "command line: {first}"
    );
    assert!(
        foreign.iter().all(|l| l.contains(" root wrote ")),
        "only root's entries are foreign: {foreign:#?}"
    );

    // check, with the agent running: both writers of the last day, biggest first.
    let check = |json: bool| {
        let mut c = Command::new(support::bin());
        c.args(["--policy".as_ref(), policy.as_os_str(), "check".as_ref()]);
        if json {
            c.arg("--json");
        }
        c.env("STATE_DIRECTORY", policy.with_extension("state"));
        c.output().expect("check")
    };
    // Saved when writes have been quiet for 10 s (or every 10 s while they go on).
    wait_for("the tally file", Duration::from_secs(30), || {
        support::json(&check(true))["caches"][0]["top_writers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["bytes"].as_u64() == Some(root_bytes)))
    });
    let j = support::json(&check(true));
    let top = j["caches"][0]["top_writers"]
        .as_array()
        .expect("top writers")
        .clone();
    let row = |u: &str, unit: &str| {
        top.iter()
            .find(|w| w["user"] == u && w["unit"] == unit)
            .cloned()
            .unwrap_or_else(|| panic!("no writer {u} ({unit}): {top:#?}"))
    };
    assert!(
        row(OWNER, &own_unit)["bytes"].as_u64() >= Some(bytes),
        "{top:#?}"
    );
    assert_eq!(
        row("root", &sudo)["bytes"].as_u64(),
        Some(root_bytes),
        "{top:#?}"
    );
    let human = support::stdout(&check(false));
    assert!(
        human.contains("writes: attributed by the running agent"),
        "{human}"
    );
    let line = human
        .lines()
        .find(|l| l.trim_start().starts_with("writers"))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(
        line.contains(&format!("{OWNER} ({own_unit})")) && line.contains(&format!("root ({sudo})")),
        "{line}"
    );

    // Nothing is written now and the quiet batch has gone (the tally was saved): the
    // watcher sleeps until the next write. A timer there wakes it every second, all day, on
    // every idle server; at most one wakeup is its own (the line for this minute's foreign
    // entries past the allowance, when the minute ends).
    let before = writers_thread_switches(agent.0.id());
    std::thread::sleep(Duration::from_secs(4));
    let after = writers_thread_switches(agent.0.id());
    assert!(
        after <= before + 1,
        "the writers thread woke {} times in 4 s with nothing written",
        after - before
    );

    // Once the agent is gone, its figures are not "the last day" any more.
    drop(agent);
    let j = support::json(&check(true));
    assert!(j["caches"][0].get("top_writers").is_none(), "{j}");
    assert!(j.get("writes").is_none(), "{j}");
}

/// Voluntary context switches of the agent's `writers` thread (`/proc/PID/task/*/status`).
fn writers_thread_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != "writers" {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).expect("task status");
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in\n{status}"));
    }
    panic!("the agent has no writers thread")
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The user agent has no `CAP_SYS_ADMIN`: its fanotify group is unprivileged (Linux ≥ 5.13),
/// the kernel names no writer, so what is written into the user's cache is counted under the
/// files' owner with no unit, and the agent says which mode it runs in.
#[test]
fn a_user_agent_without_cap_sys_admin_counts_writes_under_their_owner() {
    let name = "gwt-writes-user";
    let (user, uid, gid) = test_user(name);
    let tmp = support::tempdir();
    let d = tmp.path();
    nix::unistd::chown(d, Some(user.uid), Some(user.gid)).expect("chown");
    let cache = d.join("gc");
    let as_user = |script: &str| as_user(uid, gid, script);
    // A cache of theirs with go's 256 shards.
    as_user(&format!(
        "mkdir {gc} && cd {gc} && for a in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do \
         for b in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do mkdir $a$b || exit 1; done; done",
        gc = cache.display()
    ));
    let port = support::free_port();
    let policy = cache_policy(d, &cache, port);
    let log = d.join("agent.log");
    let stderr = std::fs::File::create(&log).expect("log");
    let _agent = support::KillOnDrop(
        setpriv(uid, gid)
            .args(["env", "-i", "PATH=/usr/bin:/bin"])
            .arg(format!("HOME={}", user.dir.display()))
            .arg(format!("XDG_STATE_HOME={}", d.join("state").display()))
            .arg(support::bin())
            .args(["--scope", "user", "--policy"])
            .arg(&policy)
            .arg("run")
            .stderr(stderr)
            .spawn()
            .expect("spawn the user agent"),
    );
    let gc = cache.display().to_string();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for_marks(&log, &gc, 256, "Unprivileged");
    let entry = cache.join("00").join(format!("00{}-a", "7".repeat(62)));
    as_user(&format!("head -c 5000 /dev/urandom > {}", entry.display()));
    let alloc = std::fs::symlink_metadata(&entry).expect("stat").blocks() * 512;
    let labels = [("cache", gc.as_str()), ("user", name), ("unit", "")];
    let scrape = || scrape(port);
    wait_for("the user's write", Duration::from_secs(30), || {
        value(
            &scrape(),
            "gocache_warden_cache_written_entries_total",
            &labels,
        ) == 1
    });
    assert_eq!(
        value(
            &scrape(),
            "gocache_warden_cache_written_bytes_total",
            &labels
        ),
        alloc
    );
    assert!(!log_text().contains("not theirs"), "{}", log_text());
}
