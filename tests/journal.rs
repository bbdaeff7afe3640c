//! The journal, for real: a private systemd-journald (tests/support/journald.rs) records what
//! the real binary logs while it enforces, inspects units of a real user manager, runs as the
//! agent, reloads well and badly, and stops. Every kind of event must carry its structured
//! fields and a meaningful priority.

mod support;

use std::time::Duration;
use support::journald::{JournaldCommand, field};
use support::usermgr::{TestUser, UserManager};

#[test]
fn every_kind_of_event_reaches_the_journal_with_its_fields() {
    support::require_root();
    let gid = support::ensure_group("gwt-journal");
    let d = support::tempdir();
    // Cache "a": old entries (evict), wrong group and ACLs (group-fix, acl-fix, mode-fix),
    // one immutable entry (evict-failed).
    let a = d.path().join("a");
    support::mkcache(&a, 200, 4);
    let stuck = std::fs::read_dir(a.join("00"))
        .expect("shard")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-d"))
        .expect("an output");
    support::age(&stuck, 50 * 86400);
    assert!(
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(&stuck)
            .status()
            .expect("chattr")
            .success()
    );
    // Cache "b": a symlink the agent must leave alone and report (violation).
    let b = d.path().join("b");
    support::mkcache(&b, 20, 5);
    std::os::unix::fs::symlink("/etc", b.join("ab/escape")).expect("symlink");
    // A service without GOCACHE in a real user manager (unit-missing-gocache, unit-drop-in).
    let user = TestUser::create().expect("user");
    user.install_unit("gwt-jsvc.service", "[Service]\nExecStart=/bin/true\n")
        .expect("unit");
    let mgr = UserManager::start(user).expect("manager");
    // A webhook that fails its first request: the retry must be journaled, the URL never.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 65536];
                        let _ = s.read(&mut buf);
                        n += 1;
                        let reply: &[u8] = if n == 1 {
                            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        };
                        let _ = s.write_all(reply);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            n
        })
    };
    let url_file = d.path().join("hook-url");
    std::fs::write(
        &url_file,
        format!("http://127.0.0.1:{port}/secret-hook-path\n"),
    )
    .expect("url");
    let pdir = d.path().join("policy.d");
    std::fs::create_dir_all(&pdir).expect("mkdir");
    let body = format!(
        "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n\
         [cache.a]\npath = \"{}\"\nmax_age = \"30d\"\nmin_age = \"1h\"\ngroup = \"gwt-journal\"\ngroup_access = \"rwx\"\nother = \"---\"\n\
         [cache.b]\npath = \"{}\"\n\
         [units.svc]\nmatch = [\"gwt-*.service\"]\ngocache = \"%h/gocache\"\nremediation = \"drop-in\"\n\
         [alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n\
         [agent]\ninterval = \"1h\"\n",
        a.display(),
        b.display(),
        url_file.display()
    );
    std::fs::write(pdir.join("50-test.toml"), body).expect("policy");
    let bin = support::bin();
    let script = format!(
        r#"B='{bin}'; P='{pdir}'
"$B" --policy "$P" enforce >/dev/null || true
"$B" --scope system --policy "$P" units --fix >/dev/null || true
STATE_DIRECTORY="$P.state" "$B" --policy "$P" run & pid=$!
for i in $(seq 1 100); do journalctl -D /run/log/journal -t gocache-warden GOCACHE_WARDEN_ACTION=sweep -q -o cat 2>/dev/null | grep -q . && break; sleep 0.1; done
kill -HUP $pid; sleep 1
printf 'not = [valid toml\n' > "$P/90-broken.toml"
kill -HUP $pid; sleep 1
for i in $(seq 1 100); do journalctl -D /run/log/journal -t gocache-warden -q -o cat 2>/dev/null | grep -q "alert delivered" && break; sleep 0.1; done
kill -TERM $pid; wait $pid
"#,
        bin = bin.display(),
        pdir = pdir.display()
    );
    let out = JournaldCommand::new("/bin/sh")
        .args(["-c", &script])
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .env("GOCACHE_WARDEN_RUN_USER", "/run/user")
        .timeout(Duration::from_secs(120))
        .run()
        .expect("journald run");
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&stuck)
        .status();
    drop(mgr);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let requests = server.join().expect("server");
    let ours = out.entries_from("gocache-warden");
    assert!(
        !ours.is_empty(),
        "no entries: {}\n{}",
        out.stderr,
        out.diagnostics
    );
    let of = |action: &str| {
        ours.iter()
            .filter(|e| field(e, "GOCACHE_WARDEN_ACTION") == Some(action))
            .copied()
            .collect::<Vec<_>>()
    };
    // (action, priority, fields every such entry must carry)
    let expect: &[(&str, &str, &[&str])] = &[
        ("startup", "6", &[]),
        ("sweep", "6", &["ENTRIES"]),
        (
            "evict",
            "6",
            &["CACHE_PATH", "BYTES", "ENTRIES", "REASON", "DRY_RUN"],
        ),
        ("evict-failed", "3", &["CACHE_PATH", "ERROR"]),
        ("group-fix", "6", &["CACHE_PATH", "ENTRIES"]),
        ("acl-fix", "6", &["CACHE_PATH", "ENTRIES"]),
        ("mode-fix", "6", &["CACHE_PATH", "ENTRIES"]),
        ("violation", "4", &["CACHE_PATH", "REASON", "ENTRIES"]),
        ("unit-missing-gocache", "4", &["UNIT", "TARGET_UID"]),
        ("unit-drop-in", "6", &["UNIT"]),
        ("reload", "6", &[]),
        ("reload-failed", "3", &["ERROR"]),
    ];
    let mut missing = Vec::new();
    for (action, prio, fields) in expect {
        let es = of(action);
        if es.is_empty() {
            missing.push(format!("no {action} entry"));
            continue;
        }
        for e in &es {
            if field(e, "PRIORITY") != Some(*prio) {
                missing.push(format!(
                    "{action}: PRIORITY {:?}, want {prio}",
                    field(e, "PRIORITY")
                ));
            }
            for f in *fields {
                if field(e, f).is_none() {
                    missing.push(format!("{action}: no {f} in {:?}", field(e, "MESSAGE")));
                }
            }
            if field(e, "MESSAGE").is_none_or(str::is_empty) {
                missing.push(format!("{action}: no MESSAGE"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\nentries:\n{}",
        missing.join("\n"),
        ours.iter()
            .map(|e| format!(
                "{} {}",
                field(e, "GOCACHE_WARDEN_ACTION").unwrap_or("-"),
                field(e, "MESSAGE").unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let v = of("violation");
    assert!(
        v.iter().any(|e| field(e, "REASON") == Some("symlink")
            && field(e, "CACHE_PATH") == Some(b.to_str().expect("utf8"))),
        "symlink violation for cache b"
    );
    let u = of("unit-missing-gocache");
    assert!(
        u.iter()
            .any(|e| field(e, "UNIT") == Some("gwt-jsvc.service")),
        "the unit is named"
    );
    let _ = gid;
    // The alert retry: failed once (500), then delivered; the secret URL appears nowhere.
    assert!(
        requests >= 2,
        "the webhook was retried ({requests} requests)"
    );
    let hook = |msg: &str| {
        ours.iter().any(|e| {
            field(e, "SINK") == Some("hook") && field(e, "MESSAGE").is_some_and(|m| m.contains(msg))
        })
    };
    assert!(
        hook("alert delivery failed") || hook("retry"),
        "a journaled retry of sink hook"
    );
    assert!(hook("alert delivered"), "a journaled delivery of sink hook");
    for e in &ours {
        let text = serde_json::to_string(e).unwrap_or_default();
        assert!(
            !text.contains("secret-hook-path") && !text.contains(&format!(":{port}")),
            "the URL leaked into the journal: {text}"
        );
    }
    // Nothing went to stderr as well (the journal was chosen; no double logging).
    assert!(
        !out.stderr.contains("evicted"),
        "double logging on stderr: {}",
        out.stderr
    );
}
