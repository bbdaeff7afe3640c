//! Issue #13, part 1 continued: a user whose systemd manager or services set GOCACHE to
//! another directory builds there, so that directory is that user's cache too. A real user
//! with a real `systemd --user` builds with the real `go` from units whose GOCACHE comes from
//! the manager's environment, from `Environment=` and from an `EnvironmentFile=`; the agent
//! finds each (labelled `via`: `manager`, `unit:NAME`), applies the cache's limits, and
//! refuses — reported, nothing touched — what units point at that is not theirs to have: a
//! system directory, another user's cache, a path through a symlink, a directory that is not
//! a Go cache, a path with `..`. An `EnvironmentFile=` only root can read is not read.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::journald::{JournaldCommand, field};
use support::usermgr::{TestUser, UserManager};
use support::{check_json, json, run, stderr, stdout, tempdir};

/// `find PATH -printf` of everything a refused cache must keep as it is.
fn snapshot(p: &Path) -> String {
    let o = Command::new("find")
        .arg(p)
        .args(["-printf", "%p %m %U %G %s %T@ %C@\n"])
        .output()
        .expect("find");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn chown_r(who: &str, p: &Path) {
    support::gobuild::sh("chown", &["-R", who, &p.display().to_string()]);
}

/// A oneshot unit that builds `~/hello` with the real go; `extra` adds GOCACHE settings.
fn build_unit(home: &Path, extra: &str) -> String {
    let go = support::gobuild::goroot().join("bin/go");
    format!(
        "[Service]\nType=oneshot\n{extra}Environment=PATH={}/bin:/usr/bin:/bin GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOTELEMETRY=off CGO_ENABLED=0\nWorkingDirectory={}\nExecStart={} build -o hello .\n",
        go.parent()
            .and_then(Path::parent)
            .expect("goroot")
            .display(),
        home.join("hello").display(),
        go.display()
    )
}

/// A unit that only sets GOCACHE (never started: loading it is enough for systemd to say).
fn setting_unit(gocache: &str) -> String {
    format!("[Service]\nType=oneshot\nEnvironment=GOCACHE={gocache}\nExecStart=/bin/true\n")
}

#[test]
fn gocache_of_a_users_manager_and_units_is_their_cache_and_hostile_values_are_refused() {
    support::require_root();
    let alice = TestUser::create().expect("user");
    let bob = TestUser::create().expect("second user");
    let home = alice.home.clone();
    let d = tempdir();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");

    // What alice's units may not make the agent touch.
    let bobs = bob.home.join(".cache/go-build");
    support::mkcache(&bobs, 30, 1);
    chown_r(&bob.name, &bob.home.join(".cache"));
    let victim = d.path().join("victim");
    support::mkcache(&victim.join("go-build"), 30, 2);
    let notgo = home.join("documents");
    alice
        .write_file("documents/thesis.txt", "years of work\n")
        .expect("thesis");
    // A Go cache of alice's own, named only in a file alice cannot read: root reading it
    // for her would add it.
    let secret_cache = home.join("secret-cache");
    support::mkcache(&secret_cache, 10, 3);
    chown_r(&alice.name, &secret_cache);
    let root_env = d.path().join("root-only.env");
    std::fs::write(&root_env, format!("GOCACHE={}\n", secret_cache.display())).expect("env");
    std::fs::set_permissions(
        &root_env,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    // The site's shared cache, listed in the policy: a unit using it adds no cache.
    let shared = d.path().join("shared");
    support::mkcache(&shared, 10, 4);
    for p in [&bobs, &victim, &notgo, &secret_cache] {
        support::age_tree(p);
    }
    std::os::unix::fs::symlink(&victim, home.join("link")).expect("symlink");
    let _ = nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &home.join("link"),
        Some(alice.uid.into()),
        Some(alice.gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    let before: Vec<String> = [&bobs, &victim, &notgo, &secret_cache]
        .iter()
        .map(|p| snapshot(p))
        .collect();

    alice
        .write_file("hello/go.mod", "module example.com/hello\n\ngo 1.24\n")
        .expect("go.mod");
    alice
        .write_file(
            "hello/main.go",
            "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }\n",
        )
        .expect("main.go");
    let (unit_cache, file_cache, mgr_cache) = (
        home.join("unit-cache"),
        home.join("file-cache"),
        home.join("mgr-cache"),
    );
    alice
        .write_file("ci.env", format!("GOCACHE={}\n", file_cache.display()))
        .expect("ci.env");
    let units = [
        (
            "gwt-ci.service",
            build_unit(
                &home,
                &format!("Environment=GOCACHE={}\n", unit_cache.display()),
            ),
        ),
        (
            "gwt-file.service",
            build_unit(
                &home,
                &format!("EnvironmentFile={}\n", home.join("ci.env").display()),
            ),
        ),
        ("gwt-mgr.service", build_unit(&home, "")),
        ("gwt-etc.service", setting_unit("/etc")),
        (
            "gwt-other.service",
            setting_unit(&bobs.display().to_string()),
        ),
        (
            "gwt-link.service",
            setting_unit(&home.join("link/go-build").display().to_string()),
        ),
        (
            "gwt-notgo.service",
            setting_unit(&notgo.display().to_string()),
        ),
        (
            "gwt-dots.service",
            setting_unit(&format!("{}/../{}/x", home.display(), alice.name)),
        ),
        (
            "gwt-shared.service",
            setting_unit(&shared.display().to_string()),
        ),
        (
            "gwt-mod.service",
            format!(
                "[Service]\nType=oneshot\nEnvironment=GOMODCACHE={}\nExecStart=/bin/true\n",
                home.join("unit-mod").display()
            ),
        ),
        (
            "gwt-secret.service",
            format!(
                "[Service]\nType=oneshot\nEnvironmentFile=-{}\nExecStart=/bin/true\n",
                root_env.display()
            ),
        ),
    ];
    for (name, body) in &units {
        alice.install_unit(name, body).expect("unit");
    }
    let mgr = UserManager::start(alice).expect("user manager");
    mgr.systemctl(&[
        "set-environment",
        &format!("GOCACHE={}", mgr_cache.display()),
    ])
    .expect("set-environment");
    for unit in ["gwt-ci.service", "gwt-file.service", "gwt-mgr.service"] {
        mgr.systemctl(&["start", unit])
            .unwrap_or_else(|e| panic!("{unit}: {e:#}"));
    }
    for p in [&unit_cache, &file_cache, &mgr_cache] {
        assert!(p.join("README").is_file(), "go built into {}", p.display());
        support::age_tree(p);
    }
    let alice_name = mgr.user.name.clone();

    let prom = d.path().join("metrics/gocache-warden.prom");
    std::fs::create_dir_all(prom.parent().expect("dir")).expect("mkdir");
    let pol = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.pu]\npath = \"auto\"\nusers = [\"{alice_name}\"]\nmax_size = \"1GiB\"\nmax_age = \"1d\"\nmin_age = \"1h\"\n[cache.mods]\npath = \"auto\"\nkind = \"module\"\nusers = [\"{alice_name}\"]\n[cache.shared]\npath = \"{}\"\n[agent]\ninterval = \"1h\"\n[metrics]\ntextfile = \"{}\"\n",
            shared.display(),
            prom.display()
        ),
    );
    let pol = pol.to_str().expect("utf-8");
    let start = std::time::Instant::now();
    let chk = run(["--policy", pol, "check", "--json"], &[]);
    // What asking a manager costs: well inside the 10 s budget for all managers.
    let took = start.elapsed();
    eprintln!(
        "check of a user whose manager has {} services of theirs: {took:?}",
        units.len()
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    let r = json(&chk);
    let caches = r["caches"].as_array().expect("caches");
    let by_via = |via: &str| {
        caches
            .iter()
            .find(|c| c["via"] == via && (c["kind"] == "build" || via == "unit:gwt-mod.service"))
            .unwrap_or_else(|| panic!("no cache via {via}: {r}"))
    };
    let shared_path = shared.display().to_string();
    assert!(
        caches
            .iter()
            .all(|c| c["user"] == alice_name.as_str() || c["path"] == shared_path.as_str()),
        "{r}"
    );
    assert_eq!(
        caches
            .iter()
            .filter(|c| c["path"] == shared_path.as_str())
            .count(),
        1,
        "gwt-shared.service adds nothing to the listed cache: {r}"
    );
    assert_eq!(
        by_via("go env")["path"],
        home.join(".cache/go-build").display().to_string()
    );
    for (via, path) in [
        ("manager", &mgr_cache),
        ("unit:gwt-ci.service", &unit_cache),
        ("unit:gwt-file.service", &file_cache),
    ] {
        let c = by_via(via);
        assert_eq!(c["path"], path.display().to_string(), "{c}");
        assert!(c["refused"].is_null(), "{c}");
        assert_eq!(c["limit_bytes"], 1u64 << 30, "same limits: {c}");
        assert!(
            c["observed"]["allocated_bytes"].as_u64().unwrap_or(0) > 0,
            "{c}"
        );
    }
    for (via, why) in [
        ("unit:gwt-etc.service", "system directory"),
        ("unit:gwt-other.service", &format!("uid {}", bob.uid)),
        ("unit:gwt-link.service", "symlink is never followed"),
        ("unit:gwt-notgo.service", "Go"),
        ("unit:gwt-dots.service", "\"..\""),
    ] {
        let c = by_via(via);
        let refused = c["refused"].as_str().unwrap_or_else(|| panic!("{c}"));
        assert!(refused.contains(why), "{via}: {refused}");
        assert!(c["observed"].is_null(), "nothing inspected: {c}");
    }
    // A module cache takes GOMODCACHE, not GOCACHE, from the same units.
    let m = by_via("unit:gwt-mod.service");
    assert_eq!(m["kind"], "module", "{m}");
    assert_eq!(m["path"], home.join("unit-mod").display().to_string());
    assert_eq!(
        caches.iter().filter(|c| c["kind"] == "module").count(),
        2,
        "the login one and gwt-mod's: {r}"
    );
    assert!(
        !caches
            .iter()
            .any(|c| c["path"] == secret_cache.display().to_string()),
        "a file alice cannot read was read for her: {r}"
    );
    let text = stdout(&run(["--policy", pol, "check"], &[]));
    assert!(
        text.lines().any(|l| l
            .trim_start()
            .starts_with(&format!("{alice_name} (unit:gwt-ci.service)"))),
        "{text}"
    );
    // The build caches' total: the login one, the manager's, gwt-ci's, gwt-file's and the
    // five refused ones.
    assert!(text.contains("(9 caches of 1 user)"), "{text}");

    let e = run(["--policy", pol, "enforce", "--json"], &[]);
    assert_eq!(
        e.status.code(),
        Some(1),
        "refusals make enforce fail: {}{}",
        stdout(&e),
        stderr(&e)
    );
    let doc = json(&e);
    for p in [&unit_cache, &file_cache, &mgr_cache] {
        let c = doc["outcome"]["caches"]
            .as_array()
            .expect("outcome")
            .iter()
            .find(|c| c["path"] == p.display().to_string())
            .unwrap_or_else(|| panic!("{} in {doc}", p.display()));
        assert!(
            c["evicted"]["age"]["entries"].as_u64().unwrap_or(0) > 0,
            "{c}"
        );
        let trim = std::fs::metadata(p.join("trim.txt")).expect("trim.txt");
        assert_eq!(trim.uid(), mgr.uid(), "trim.txt belongs to the user");
    }
    let after: Vec<String> = [&bobs, &victim, &notgo, &secret_cache]
        .iter()
        .map(|p| snapshot(p))
        .collect();
    assert_eq!(after, before, "a refused or unread directory changed");
    mgr.systemctl(&["start", "gwt-ci.service"])
        .expect("the unit still builds");

    // The running agent: the journal names the manager or unit (CACHE_VIA), the metrics too.
    let bin = support::bin();
    let script = format!(
        r#"B='{}'; P='{pol}'
STATE_DIRECTORY="$P.state" "$B" --policy "$P" run & pid=$!
for i in $(seq 1 300); do journalctl -D /run/log/journal -t gocache-warden GOCACHE_WARDEN_ACTION=sweep -q -o cat 2>/dev/null | grep -q . && break; sleep 0.1; done
for i in $(seq 1 100); do [ -e '{prom}' ] && break; sleep 0.1; done
cp '{prom}' '{prom}.seen'
kill -TERM $pid; wait $pid
"#,
        bin.display(),
        prom = prom.display()
    );
    let out = JournaldCommand::new("/bin/sh")
        .args(["-c", &script])
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .timeout(Duration::from_secs(120))
        .run()
        .expect("journald run");
    let ours = out.entries_from("gocache-warden");
    let found = ours
        .iter()
        .find(|e| field(e, "CACHE_VIA") == Some("unit:gwt-ci.service"))
        .unwrap_or_else(|| panic!("no CACHE_VIA=unit:gwt-ci.service entry: {ours:?}"));
    assert_eq!(
        field(found, "CACHE_PATH"),
        Some(unit_cache.to_str().expect("utf-8"))
    );
    assert!(
        ours.iter()
            .any(|e| field(e, "GOCACHE_WARDEN_ACTION") == Some("violation")
                && field(e, "CACHE_VIA") == Some("unit:gwt-etc.service")),
        "the refusal of /etc names its unit: {ours:?}"
    );
    // The agent removes its textfile when it stops: read the copy taken while it ran.
    let metrics = std::fs::read_to_string(prom.with_extension("prom.seen")).unwrap_or_else(|e| {
        panic!(
            "textfile {}: {e}\n{}\n{}\n{ours:?}",
            prom.display(),
            out.stderr,
            out.diagnostics
        )
    });
    let line = format!(
        "gocache_warden_cache_owner_info{{cache=\"{}\",kind=\"build\",user=\"{alice_name}\",via=\"unit:gwt-ci.service\"}} 1",
        unit_cache.display()
    );
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gocache_warden_cache_owner_info{")
                && l.contains(&format!("cache=\"{}\"", mgr_cache.display()))
                && l.ends_with("via=\"manager\"} 1")),
        "{metrics}"
    );
    drop(mgr);
    drop(bob);
}

/// With no user manager running the agent asks no one (and takes no time for it): the user
/// has just the cache their login's go finds.
#[test]
fn a_user_without_a_manager_has_only_their_go_env_cache() {
    support::require_root();
    let carol = TestUser::create().expect("user");
    let d = tempdir();
    let pol = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.pu]\npath = \"auto\"\nusers = [\"{}\"]\n",
            carol.name
        ),
    );
    let start = std::time::Instant::now();
    let r = check_json(&pol);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let caches = r["caches"].as_array().expect("caches");
    assert_eq!(caches.len(), 1, "{r}");
    assert_eq!(caches[0]["via"], "go env");
    assert_eq!(
        caches[0]["path"],
        carol.home.join(".cache/go-build").display().to_string()
    );
}

/// A user who serves their own "manager" socket that accepts and never answers holds no
/// sweep: `check` finishes within the one deadline for all managers, says so, and still
/// reports that user's and everyone else's login caches.
#[test]
fn a_manager_socket_that_never_answers_delays_a_sweep_once_and_adds_nothing() {
    support::require_root();
    let mallory = TestUser::create().expect("user");
    let dave = TestUser::create().expect("user");
    let rundir = mallory.runtime_dir();
    let _ = std::fs::remove_dir_all(&rundir);
    std::fs::create_dir_all(rundir.join("systemd")).expect("mkdir");
    chown_r(&format!("{}:", mallory.name), &rundir);
    let socket = rundir.join("systemd/private");
    let mut py = mallory.command("python3");
    py.args([
        "-c",
        "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(64)\nc=[]\nwhile True: c.append(s.accept())",
    ])
    .arg(&socket);
    let server = support::KillOnDrop(py.spawn().expect("python3"));
    let start = std::time::Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = tempdir();
    let pol = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.b]\npath = \"auto\"\nusers = [\"{}\", \"{}\"]\n[cache.m]\npath = \"auto\"\nkind = \"module\"\nusers = [\"{}\", \"{}\"]\n",
            mallory.name, dave.name, mallory.name, dave.name
        ),
    );
    let start = std::time::Instant::now();
    let o = run_check(&pol);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        took >= Duration::from_secs(9),
        "the deadline was not waited for: {took:?}"
    );
    let r = json(&o);
    let caches = r["caches"].as_array().expect("caches");
    assert_eq!(caches.len(), 4, "{r}");
    assert!(caches.iter().all(|c| c["via"] == "go env"), "{r}");
    assert!(
        stderr(&o).contains("no answer within 10s") && stderr(&o).contains(&mallory.name),
        "{}",
        stderr(&o)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&rundir);
}

fn run_check(pol: &Path) -> std::process::Output {
    run(
        [
            "--policy".as_ref(),
            pol.as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    )
}
