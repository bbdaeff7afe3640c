//! The real monitoring stack, end to end (issue #23, point 5): Debian's Prometheus,
//! node_exporter (textfile collector) and Alertmanager, started here on loopback with the
//! shipped rules (`monitoring/gocache-warden.rules.yml`, every `for:` shortened to 1 s, and
//! 1 s scrape and evaluation intervals: test-only timing, the expressions as shipped). The
//! agent writes its textfile; a cache held over its limit (everything in it used within
//! `min_age`) raises `GoCacheOverLimit`, which reaches a local webhook receiver through
//! Alertmanager with the cache's labels, and resolves once the cause is gone.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every webhook body Alertmanager posts, as JSON.
fn receiver() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice::<Value>(&body)
            {
                g.lock().expect("lock").push(v);
            }
            let mut s = s;
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

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
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
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

/// The notifications for `GoCacheOverLimit` of `cache` with this status.
fn notified(got: &Mutex<Vec<Value>>, cache: &str, status: &str) -> Vec<Value> {
    got.lock()
        .expect("lock")
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| {
            a["labels"]["alertname"] == "GoCacheOverLimit"
                && a["labels"]["cache"] == cache
                && a["status"] == status
        })
        .collect()
}

#[test]
fn an_over_limit_cache_alerts_through_prometheus_and_alertmanager_and_resolves() {
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
    let textdir = dir.join("textfile");
    std::fs::create_dir(&textdir).expect("mkdir");
    let p = support::policy(
        dir,
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"2MiB\"\nmin_age = \"1d\"\n[agent]\ninterval = \"1h\"\n[metrics]\ntextfile = \"{}\"\n",
            cache.display(),
            textdir.join("gocache-warden.prom").display()
        ),
    );
    let agent_log = dir.join("agent.log");
    let agent = support::spawn_agent(&p, &agent_log);

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

    let (recv, got) = receiver();
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
        || !notified(&got, &cache_label, "firing").is_empty(),
    );
    let a = notified(&got, &cache_label, "firing").remove(0);
    assert_eq!(a["labels"]["kind"], "build", "{a}");
    assert_eq!(a["labels"]["severity"], "critical", "{a}");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .is_some_and(|t| t.contains(&cache_label)),
        "{a}"
    );

    // The cause removed (the entries gone, the agent sweeps again on SIGHUP): resolved.
    for shard in std::fs::read_dir(&cache).expect("cache").flatten() {
        if shard.path().is_dir() {
            for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    wait_for(
        "GoCacheOverLimit resolved at the receiver",
        Duration::from_secs(90),
        &logs,
        || !notified(&got, &cache_label, "resolved").is_empty(),
    );
}
