//! The real monitoring stack, end to end (issue #23, point 5): Debian's Prometheus,
//! node_exporter (textfile collector) and Alertmanager, started here on loopback with the
//! shipped rules (`monitoring/gocache-warden.rules.yml`, every `for:` shortened to 1 s, and
//! 1 s scrape and evaluation intervals: test-only timing, the expressions as shipped). The
//! agent runs beside a real journald (the journald fixture) and writes its textfile; a cache
//! held over its limit (everything in it used within `min_age`) raises `GoCacheOverLimit`,
//! which reaches a local webhook receiver through Alertmanager with the cache's labels, and
//! resolves once the cause is gone; a real `go build` of user `nobody` that fails on an
//! unwritable GOCACHE raises `GoBuildsFailingOnCache` the same way. Every query of the
//! shipped Grafana dashboard is then evaluated by that Prometheus: no errors, and series
//! where the test produced data.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::journald::JournaldCommand;

fn spawn(program: &str, args: &[String], log: &Path) -> support::KillOnDrop {
    let out = std::fs::File::create(log).expect("log");
    support::KillOnDrop(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (Debian's package, installed by .ci/test): {e}")),
    )
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    // HTTP/1.0: the whole body, never chunked.
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_string())
}

fn wait_for(what: &str, limit: Duration, logs: &[&Path], mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            let mut text = String::new();
            for l in logs {
                text += &format!(
                    "--- {}\n{}\n",
                    l.display(),
                    std::fs::read_to_string(l).unwrap_or_default()
                );
            }
            panic!("{what}: not within {limit:?}\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The notifications for alert `name` of `cache` with this status.
fn notified(got: &Mutex<Vec<Value>>, name: &str, cache: &str, status: &str) -> Vec<Value> {
    got.lock()
        .expect("lock")
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| {
            a["labels"]["alertname"] == name
                && a["labels"]["cache"] == cache
                && a["status"] == status
        })
        .collect()
}

/// The agent, in the journald fixture's namespaces beside a real journald: it starts, then
/// does what the test asks through marker files in `out` (`build`: a `go build` as nobody
/// that fails on an unwritable GOCACHE, its stderr a journal stream; `hup`: SIGHUP; `done`:
/// stop).
const AGENT: &str = r#"
set -u
STATE_DIRECTORY="$OUT/state" INVOCATION_ID=0123456789abcdef0123456789abcdef "$BIN" --policy "$POLICY" run 2>"$OUT/agent.log" &
agent=$!
wait_for() {
    i=0
    while [ ! -e "$OUT/$1" ]; do
        i=$((i + 1)); [ "$i" -gt 2400 ] && { echo "no $1 marker" >&2; kill "$agent"; exit 70; }
        sleep 0.1
    done
}
wait_for build
(cd "$D/plain" && setpriv --reuid=65534 --regid=65534 --clear-groups \
    systemd-cat -t gobuild env -i PATH=/usr/bin:/bin GOTOOLCHAIN=local HOME="$D/home" \
    GOCACHE="$D/ro/gc" "$GO" build -o /dev/null .)
# A write into the watched cache, for the top-writers panel (any writer is attributed).
head -c 65536 /dev/urandom > "$D/cache/00/00$(printf '%062d' 7)-d"
wait_for hup
kill -HUP "$agent"
wait_for done
kill "$agent"; wait "$agent"
exit 0
"#;

/// `s` as a URL query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of the shipped dashboard, with Grafana's variables as a dashboard showing
/// everything would set them: (panel title, query).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/grafana-dashboard.json"),
    )
    .expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(e) = t["expr"].as_str() {
                let q = e
                    .replace("$instance", ".*")
                    .replace("$cache", ".*")
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m");
                out.push((title.clone(), q));
            }
        }
    }
    out
}

#[test]
fn alerts_reach_a_webhook_through_prometheus_and_alertmanager_and_the_dashboard_queries_work() {
    support::require_root();
    let go = support::gobuild::goroot().join("bin/go");
    let d = support::tempdir();
    let dir = d.path();
    let cache = dir.join("cache");
    // 600 entries (about 5 MiB), every one used within the last quarter hour: min_age
    // keeps them all, so the cache stays over its 2 MiB limit whatever the agent does.
    let o = Command::new("python3")
        .arg(support::mkcache_script())
        .arg(&cache)
        .args(["--entries", "600", "--seed", "7", "--days", "0.01"])
        .output()
        .expect("mkcache");
    assert!(o.status.success(), "{}", support::stderr(&o));
    for sub in ["textfile", "ro", "home", "plain", "out"] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
    }
    std::fs::write(
        dir.join("plain/go.mod"),
        "module example.com/plain\n\ngo 1.22\n",
    )
    .expect("go.mod");
    std::fs::write(
        dir.join("plain/main.go"),
        "package main\n\nfunc main() {}\n",
    )
    .expect("main");
    let o = Command::new("sh")
        .arg("-ec")
        .arg("chmod a+rX \"$0\" \"$0/plain\" \"$0/plain\"/* && chmod 0555 \"$0/ro\" && chown 65534:65534 \"$0/home\"")
        .arg(dir)
        .output()
        .expect("sh");
    assert!(o.status.success(), "{}", support::stderr(&o));
    let textdir = dir.join("textfile");
    let failing = dir.join("ro/gc");
    let p = support::policy(
        dir,
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"2MiB\"\nmin_age = \"1d\"\n[cache.svc]\npath = \"{}\"\n[agent]\ninterval = \"1h\"\n[metrics]\ntextfile = \"{}\"\n",
            cache.display(),
            failing.display(),
            textdir.join("gocache-warden.prom").display()
        ),
    );
    let out = dir.join("out");
    let agent = {
        let (p, out, dir, go) = (p.clone(), out.clone(), dir.to_path_buf(), go.clone());
        std::thread::spawn(move || {
            JournaldCommand::new("/bin/sh")
                .args(["-c", AGENT])
                .env("BIN", support::bin())
                .env("POLICY", &p)
                .env("OUT", &out)
                .env("D", &dir)
                .env("GO", &go)
                .timeout(Duration::from_secs(600))
                .run()
        })
    };
    // Whatever fails below, the agent's script ends (it waits for this marker).
    struct Done(PathBuf);
    impl Drop for Done {
        fn drop(&mut self) {
            for m in ["build", "hup", "done"] {
                let _ = std::fs::write(self.0.join(m), "");
            }
        }
    }
    let done = Done(out.clone());

    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/gocache-warden.rules.yml"),
    )
    .expect("shipped rules");
    let fast: String = rules
        .lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 1s\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("rules.yml"), fast).expect("rules");

    // Every webhook body Alertmanager posts, as JSON.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (recv, got) = support::observe::receiver(stop.clone());
    let (ne, am, prom) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    std::fs::write(
        dir.join("am.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: ['alertname', 'cache']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{recv}/\n        send_resolved: true\n"
        ),
    )
    .expect("am config");
    std::fs::write(
        dir.join("prom.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am}']\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne}']\n",
            dir.join("rules.yml").display()
        ),
    )
    .expect("prometheus config");
    let s = |p: &Path| p.display().to_string();
    let (ne_log, am_log, prom_log) = (dir.join("ne.log"), dir.join("am.log"), dir.join("prom.log"));
    let _ne = spawn(
        "prometheus-node-exporter",
        &[
            format!("--web.listen-address=127.0.0.1:{ne}"),
            "--collector.disable-defaults".into(),
            "--collector.textfile".into(),
            format!("--collector.textfile.directory={}", s(&textdir)),
        ],
        &ne_log,
    );
    let _am = spawn(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", s(&dir.join("am.yml"))),
            format!("--storage.path={}", s(&dir.join("am-data"))),
            format!("--web.listen-address=127.0.0.1:{am}"),
            "--cluster.listen-address=".into(),
        ],
        &am_log,
    );
    let _prom = spawn(
        "prometheus",
        &[
            format!("--config.file={}", s(&dir.join("prom.yml"))),
            format!("--storage.tsdb.path={}", s(&dir.join("prom-data"))),
            format!("--web.listen-address=127.0.0.1:{prom}"),
        ],
        &prom_log,
    );
    let agent_log = out.join("agent.log");
    let logs = [
        agent_log.as_path(),
        ne_log.as_path(),
        am_log.as_path(),
        prom_log.as_path(),
    ];
    let cache_label = s(&cache);

    // node_exporter serves the agent's textfile, and Prometheus scrapes it.
    wait_for(
        "the agent's series in node_exporter",
        Duration::from_secs(90),
        &logs,
        || {
            http_get(ne, "/metrics").is_some_and(|b| {
                b.contains("gocache_warden_cache_allocated_bytes{") && b.contains(&cache_label)
            })
        },
    );
    wait_for(
        "Prometheus holding the series",
        Duration::from_secs(60),
        &logs,
        || {
            http_get(prom, "/api/v1/query?query=gocache_warden_cache_limit_bytes")
                .is_some_and(|b| b.contains(&cache_label))
        },
    );

    // Over its limit and held there: the alert reaches the receiver through Alertmanager.
    wait_for(
        "GoCacheOverLimit firing at the receiver",
        Duration::from_secs(90),
        &logs,
        || !notified(&got, "GoCacheOverLimit", &cache_label, "firing").is_empty(),
    );
    let a = notified(&got, "GoCacheOverLimit", &cache_label, "firing").remove(0);
    assert_eq!(a["labels"]["kind"], "build", "{a}");
    assert_eq!(a["labels"]["severity"], "critical", "{a}");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .is_some_and(|t| t.contains(&cache_label)),
        "{a}"
    );

    // A service-like build of nobody fails on its unwritable GOCACHE: the agent reads it in
    // the journal, and the build-failure alert arrives the same way, naming reason and user.
    std::fs::write(out.join("build"), "").expect("marker");
    let failing_label = s(&failing);
    wait_for(
        "GoBuildsFailingOnCache firing at the receiver",
        Duration::from_secs(90),
        &logs,
        || !notified(&got, "GoBuildsFailingOnCache", &failing_label, "firing").is_empty(),
    );
    let b = notified(&got, "GoBuildsFailingOnCache", &failing_label, "firing").remove(0);
    assert_eq!(b["labels"]["reason"], "cache-permission", "{b}");
    assert_eq!(b["labels"]["user"], "nobody", "{b}");
    wait_for(
        "the write into the cache in Prometheus",
        Duration::from_secs(60),
        &logs,
        || {
            http_get(
                prom,
                "/api/v1/query?query=gocache_warden_cache_written_bytes_total",
            )
            .is_some_and(|b| b.contains(&cache_label))
        },
    );

    // The cause removed (the entries gone, the agent sweeps again on SIGHUP): resolved.
    for shard in std::fs::read_dir(&cache).expect("cache").flatten() {
        if shard.path().is_dir() {
            for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    std::fs::write(out.join("hup"), "").expect("marker");
    wait_for(
        "GoCacheOverLimit resolved at the receiver",
        Duration::from_secs(90),
        &logs,
        || !notified(&got, "GoCacheOverLimit", &cache_label, "resolved").is_empty(),
    );

    // Every dashboard query, evaluated by this Prometheus over the data above.
    let with_data = [
        "Cache size and limit",
        "Files and directories",
        "Filesystem free space",
        "Units running Go without GOCACHE",
        "Time since last successful sweep",
        "Build failures by cause, last 72 hours",
        "Build failures by unit and user, last 24 hours",
        "Top writers, last 24 hours",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (title, q) in dashboard_queries() {
        let body = http_get(prom, &format!("/api/v1/query?query={}", encode(&q)))
            .unwrap_or_else(|| panic!("panel {title}: query failed: {q}"));
        let v: Value = serde_json::from_str(&body).expect("Prometheus answer");
        assert_eq!(v["status"], "success", "panel {title}: {q}: {v}");
        if with_data.contains(&title.as_str()) {
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(
                n > 0,
                "panel {title} shows nothing where there is data: {q}: {v}"
            );
            seen.insert(title);
        }
    }
    assert_eq!(
        seen.len(),
        with_data.len(),
        "panels missing from the dashboard: {seen:?}"
    );

    drop(done);
    let run = agent
        .join()
        .expect("agent thread")
        .expect("journald fixture");
    assert!(run.status.success(), "{}\n{}", run.stderr, run.diagnostics);
}
