//! Build-failure attribution (issue #23, point 2): the agent follows a real journald (the
//! journald fixture: a private journald in its own namespaces) while real `go` commands fail,
//! their stderr going to the journal through a journal stream as a service's would, as user
//! `nobody`. Each failure cmd/go reports about a cache is counted with its reason, cache and
//! user (`gocache_warden_build_failures_total` in the textfile) and logged; a failed build that
//! is not a cache's doing (an unwritable `go.sum`) is not.

mod support;

use std::path::Path;
use support::journald::{JournaldCommand, field};

/// A module `example.com/dep v1.0.0` served by a `file://` GOPROXY, and an app needing it.
fn module_fixture(d: &Path) {
    let v = d.join("proxy/example.com/dep/@v");
    std::fs::create_dir_all(&v).expect("mkdir");
    std::fs::write(v.join("list"), "v1.0.0\n").expect("list");
    std::fs::write(
        v.join("v1.0.0.info"),
        r#"{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}"#,
    )
    .expect("info");
    std::fs::write(v.join("v1.0.0.mod"), "module example.com/dep\n\ngo 1.22\n").expect("mod");
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nz.writestr('example.com/dep@v1.0.0/go.mod', 'module example.com/dep\\n\\ngo 1.22\\n')\nz.writestr('example.com/dep@v1.0.0/dep.go', 'package dep\\n\\nfunc F() int { return 1 }\\n')\nz.close()",
        ])
        .arg(v.join("v1.0.0.zip"))
        .output()
        .expect("python3 zip");
    assert!(o.status.success(), "{}", support::stderr(&o));
    let app = d.join("app");
    std::fs::create_dir(&app).expect("mkdir app");
    std::fs::write(
        app.join("go.mod"),
        "module example.com/app\n\ngo 1.22\n\nrequire example.com/dep v1.0.0\n",
    )
    .expect("go.mod");
    std::fs::write(
        app.join("main.go"),
        "package main\n\nimport \"example.com/dep\"\n\nfunc main() { println(dep.F()) }\n",
    )
    .expect("main.go");
    // And one that needs no module at all.
    let plain = d.join("plain");
    std::fs::create_dir(&plain).expect("mkdir plain");
    std::fs::write(
        plain.join("go.mod"),
        "module example.com/plain\n\ngo 1.22\n",
    )
    .expect("go.mod");
    std::fs::write(plain.join("main.go"), "package main\n\nfunc main() {}\n").expect("main.go");
}

const SCRIPT: &str = r#"
set -u
# As a service: INVOCATION_ID makes it log to the journal (whose entries it must not count).
STATE_DIRECTORY="$OUT/state" INVOCATION_ID=0123456789abcdef0123456789abcdef "$BIN" --policy "$POLICY" run 2>"$OUT/agent.log" &
agent=$!
i=0
while [ ! -s "$PROM" ]; do
    i=$((i + 1)); [ "$i" -gt 600 ] && { echo "no textfile" >&2; exit 71; }
    sleep 0.1
done
# As a service's stderr is: a journal stream, connected by the build's own user.
build() {
    setpriv --reuid=65534 --regid=65534 --clear-groups \
        systemd-cat -t gobuild env -i PATH=/usr/bin:/bin GOTOOLCHAIN=local GOFLAGS=-mod=mod \
        GOSUMDB=off GOPROXY="file://$D/proxy" "$@" "$GO" build -o /dev/null .
}
cd "$D/app"
build HOME="$D/home" GOCACHE="$D/ro/gc"                                # cache-permission
build HOME="$D/home" GOCACHE="$D/ro/gc"                                # again: one alert
build GOCACHE= HOME= XDG_CACHE_HOME= GOPATH= GOMODCACHE=              # modcache-undefined
(cd "$D/plain" && build GOCACHE= HOME= XDG_CACHE_HOME=)                # cache-undefined
build HOME="$D/home" GOCACHE="$D/gc-ok" GOMODCACHE="$D/ro/mc"          # modcache-permission
build HOME="$D/home" GOCACHE="$D/gc-ok" GOMODCACHE="$D/mc-ok"          # go.sum: not a cache's
i=0
while [ "$(grep -c '^gocache_warden_build_failures_total{' "$PROM")" -lt 4 ]; do
    i=$((i + 1)); [ "$i" -gt 300 ] && break
    sleep 0.1
done
i=0
while [ "$(grep -c build_failure "$OUT/alerts.jsonl" 2>/dev/null || echo 0)" -lt 4 ]; do
    i=$((i + 1)); [ "$i" -gt 300 ] && break
    sleep 0.1
done
sleep 2
cp "$PROM" "$OUT/final.prom"
kill "$agent"; wait "$agent"
exit 0
"#;

#[test]
fn go_build_failures_caused_by_caches_are_counted_from_the_journal() {
    support::require_root();
    let go = support::gobuild::goroot().join("bin/go");
    let d = support::tempdir();
    let dir = d.path();
    module_fixture(dir);
    for sub in ["ro", "home", "gc-ok", "mc-ok", "out", "prom"] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
    }
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg("chmod -R a+rX \"$0\" && chmod 0555 \"$0/ro\" && chmod 0555 \"$0/app\" \"$0/plain\" && chown 65534:65534 \"$0/home\" \"$0/gc-ok\" \"$0/mc-ok\"")
        .arg(dir)
        .output()
        .expect("sh");
    assert!(o.status.success(), "{}", support::stderr(&o));
    let prom = dir.join("prom/gocache-warden.prom");
    let p = support::policy(
        dir,
        "p.toml",
        &format!(
            "[cache.svc]\npath = \"{}\"\n[cache.mods]\npath = \"{}\"\nkind = \"module\"\n[agent]\ninterval = \"1h\"\n[metrics]\ntextfile = \"{}\"\n[alert.log]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n",
            dir.join("ro/gc").display(),
            dir.join("ro/mc").display(),
            prom.display(),
            dir.join("out/alerts.jsonl").display(),
            dir.join("out/alerts.jsonl").display()
        ),
    );
    let out = dir.join("out");
    let run = JournaldCommand::new("/bin/sh")
        .args(["-c", SCRIPT])
        .env("BIN", support::bin())
        .env("POLICY", &p)
        .env("PROM", &prom)
        .env("OUT", &out)
        .env("D", dir)
        .env("GO", &go)
        .timeout(std::time::Duration::from_secs(180))
        .run()
        .expect("journald fixture");
    let log = std::fs::read_to_string(out.join("agent.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "{}\n{log}\n{}",
        run.stderr,
        run.diagnostics
    );

    // The builds' own messages are in the journal, as nobody's.
    let builds = run.entries_from("gobuild");
    let said = |s: &str| {
        builds
            .iter()
            .any(|e| field(e, "MESSAGE").is_some_and(|m| m.contains(s)))
    };
    assert!(
        said("failed to initialize build cache at")
            && said("GOCACHE is not defined")
            && said("module cache not found")
            && said("could not create module cache")
            && said("go.sum: permission denied"),
        "go's real messages: {builds:#?}"
    );
    assert!(builds.iter().all(|e| field(e, "_UID") == Some("65534")));

    let text = std::fs::read_to_string(out.join("final.prom")).expect("textfile");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gocache_warden_build_failures_total{"))
        .collect();
    let has = |reason: &str, cache: &str| {
        series.iter().any(|l| {
            l.contains(&format!("reason=\"{reason}\""))
                && l.contains(&format!("cache=\"{cache}\""))
                && l.contains("user=\"nobody\"")
                && l.ends_with(" 1")
        })
    };
    let (gc, mc) = (
        dir.join("ro/gc").display().to_string(),
        dir.join("ro/mc").display().to_string(),
    );
    let has_n = |reason: &str, cache: &str, n: u32| {
        series.iter().any(|l| {
            l.contains(&format!("reason=\"{reason}\""))
                && l.contains(&format!("cache=\"{cache}\""))
                && l.ends_with(&format!(" {n}"))
        })
    };
    assert!(has_n("cache-permission", &gc, 2), "{series:#?}\n{log}");
    assert!(has("cache-undefined", ""), "{series:#?}");
    assert!(has("modcache-undefined", ""), "{series:#?}");
    assert!(has("modcache-permission", &mc), "{series:#?}");
    assert_eq!(
        series.len(),
        4,
        "nothing else counted (go.sum): {series:#?}"
    );
    support::promtool_check(&text);

    // Logged by the agent, with the reason and the build's uid.
    let ours = run.entries_from("gocache-warden");
    let logged: Vec<_> = ours
        .iter()
        .filter(|e| field(e, "GOCACHE_WARDEN_ACTION") == Some("build-failure"))
        .collect();
    assert_eq!(logged.len(), 5, "{logged:#?}");
    assert!(
        logged
            .iter()
            .any(|e| field(e, "REASON") == Some("cache-permission")
                && field(e, "TARGET_UID") == Some("65534")
                && field(e, "CACHE_PATH") == Some(gc.as_str())),
        "{logged:#?}"
    );

    // Alerted through the policy's sinks: one alert per unit (here: uid, outside units) and
    // reason, so the second cache-permission failure of the same builder sent nothing new.
    let alerts: Vec<serde_json::Value> = std::fs::read_to_string(out.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("alert JSON"))
        .filter(|a: &serde_json::Value| a["kind"] == "build_failure")
        .collect();
    let ids: Vec<&str> = alerts.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(
        ids.iter()
            .filter(|i| i.ends_with(":cache-permission"))
            .count(),
        1,
        "{alerts:#?}"
    );
    assert_eq!(alerts.len(), 4, "one per reason: {ids:?}");
    let perm = alerts
        .iter()
        .find(|a| a["id"] == "build_failure:uid 65534:cache-permission")
        .unwrap_or_else(|| panic!("{ids:?}"));
    assert_eq!(perm["user"], "nobody", "{perm}");
    assert_eq!(perm["cache"].as_str(), Some(gc.as_str()), "{perm}");
    assert_eq!(perm["status"], "firing", "{perm}");
}
