//! Issue #13, part 1 ("metrics and alerts name the user"), end to end: the real agent with
//! `users = "all"` and two real users whose real Go caches are over the per-user limit. Its
//! textfile and its HTTP `/metrics` pass `promtool check metrics` and carry each user's cache
//! with the user's name (`gocache_warden_cache_owner_info{user=…,via="go env"}`) and size,
//! and the generic webhook, a local HTTP server, receives one `over_limit` alert per user
//! naming the user (name and uid) and the cache's path.
//!
//! This test's agent covers every human user of the machine (other tests' users included),
//! so it must change nothing: `min_age` is ten years (nothing is evicted) and `rewrite_trim`
//! is off (no `trim.txt` is written). Root, whom `"all"` covers too, is left out
//! (`exclude_users`): root's caches are this suite's own, and measuring them is not this
//! test's business.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct User {
    name: &'static str,
    uid: u32,
    home: PathBuf,
}

/// A real user who built a tiny program with the real go: their cache is a few MiB.
fn user_with_a_build(name: &'static str) -> User {
    let uid = support::ensure_user(name, &[]);
    let pw = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .expect("passwd entry");
    let dir = pw.dir.join("hello");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("go.mod"), "module example.com/hello\n\ngo 1.24\n").expect("go.mod");
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }\n",
    )
    .expect("main.go");
    support::gobuild::sh(
        "chown",
        &["-R", &format!("{name}:"), &dir.display().to_string()],
    );
    let o = support::gobuild::go_as(
        uid,
        pw.gid.as_raw(),
        &pw.dir,
        &dir,
        &[],
        &["build", "-o", "hello", "."],
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    User {
        name,
        uid,
        home: pw.dir,
    }
}

fn value_of(text: &str, metric: &str, cache: &Path) -> Option<f64> {
    let label = format!("cache=\"{}\"", cache.display());
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_and_alerts_name_each_user_whose_cache_is_over_its_limit() {
    support::require_root();
    let users = [
        user_with_a_build("gwt-pu-mone"),
        user_with_a_build("gwt-pu-mtwo"),
    ];
    let d = support::tempdir();
    let prom = d.path().join("textfile/gocache-warden.prom");
    std::fs::create_dir_all(prom.parent().expect("dir")).expect("mkdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let stop = Arc::new(AtomicBool::new(false));
    let (hook_port, alerts) = support::observe::receiver(stop.clone());
    let url = d.path().join("url");
    std::fs::write(&url, format!("http://127.0.0.1:{hook_port}/hook\n")).expect("url");
    let limit = 64u64 << 10;
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.pu]\npath = \"auto\"\nusers = \"all\"\nexclude_users = [\"root\"]\nmax_size = \"64KiB\"\nmin_age = \"3650d\"\nrewrite_trim = false\n\
             [agent]\ninterval = \"1h\"\nwatch = false\n\
             [metrics]\ntextfile = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\
             [alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n",
            prom.display(),
            url.display()
        ),
    );
    let log = d.path().join("log");
    let _agent = support::spawn_agent(&p, &log);
    let caches: Vec<PathBuf> = users
        .iter()
        .map(|u| u.home.join(".cache/go-build"))
        .collect();
    let named = |a: &serde_json::Value, u: &User, cache: &Path| {
        a["kind"] == "over_limit"
            && a["status"] == "firing"
            && a["user"] == u.name
            && a["uid"] == u.uid
            && a["cache"] == cache.display().to_string()
    };
    let start = Instant::now();
    loop {
        let got = alerts.lock().expect("lock").clone();
        let all_alerted = users
            .iter()
            .zip(&caches)
            .all(|(u, c)| got.iter().any(|a| named(a, u, c)));
        if prom.exists() && all_alerted {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "textfile: {}, alerts: {got:?}\n{}",
            prom.exists(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = alerts.lock().expect("lock").clone();
    for (u, c) in users.iter().zip(&caches) {
        let a = got.iter().find(|a| named(a, u, c)).expect("alert");
        let summary = a["summary"].as_str().unwrap_or_default();
        assert!(summary.contains(&c.display().to_string()), "{a}");
        assert!(a["size_bytes"].as_u64().unwrap_or(0) > limit, "{a}");
        assert_eq!(a["limit_bytes"].as_u64(), Some(limit), "{a}");
    }

    let text = std::fs::read_to_string(&prom).expect("textfile");
    let body = support::scrape_metrics(port);
    for (what, t) in [("textfile", &text), ("HTTP", &body)] {
        support::promtool_check(t);
        assert!(
            !t.lines()
                .any(|l| l.starts_with("gocache_warden_cache_owner_info{")
                    && l.contains("user=\"root\"")),
            "{what}: root was left out"
        );
        for (u, c) in users.iter().zip(&caches) {
            let owner = format!(
                "gocache_warden_cache_owner_info{{cache=\"{}\",kind=\"build\",user=\"{}\",via=\"go env\"}} 1",
                c.display(),
                u.name
            );
            assert!(t.contains(&owner), "{what}: no {owner}");
            let size = value_of(t, "gocache_warden_cache_allocated_bytes", c)
                .unwrap_or_else(|| panic!("{what}: no size of {}", c.display()));
            assert!(size as u64 > limit, "{what}: {size}");
            assert_eq!(
                value_of(t, "gocache_warden_cache_limit_bytes", c),
                Some(limit as f64),
                "{what}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
}
