//! Metrics from the real agent on a real cache: the textfile and the HTTP listener both pass
//! `promtool check metrics`, carry the cache's figures, and the textfile is never seen
//! half-written while the agent rewrites it (each SIGHUP reloads and sweeps again).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn agent_metrics_pass_promtool_and_the_textfile_is_always_whole() {
    let d = support::tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 2000, 21);
    let prom = d.path().join("textfile/gocache-warden.prom");
    std::fs::create_dir_all(prom.parent().expect("dir")).expect("mkdir");
    let port = support::free_port();
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"1GiB\"\nmax_age = \"30d\"\nmin_age = \"1h\"\n[agent]\ninterval = \"1h\"\n[metrics]\ntextfile = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n",
            cache.display(),
            prom.display()
        ),
    );
    let log = d.path().join("log");
    let mut child = support::spawn_agent(&p, &log);
    let start = Instant::now();
    while !prom.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no textfile: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&prom).expect("textfile");
    support::promtool_check(&text);
    let cache_label = format!("cache=\"{}\"", cache.display());
    let allocated = text
        .lines()
        .find(|l| {
            l.starts_with("gocache_warden_cache_allocated_bytes{") && l.contains(&cache_label)
        })
        .expect("allocated series");
    let value: f64 = allocated
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert_eq!(
        value as u64,
        support::du_bytes(&cache),
        "the cache's allocated bytes after the sweep"
    );
    for name in [
        "gocache_warden_build_info",
        "gocache_warden_last_successful_sweep_timestamp_seconds",
        "gocache_warden_evicted_bytes_total",
        "gocache_warden_cache_limit_bytes",
        "gocache_warden_units_missing_gocache",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let body = support::scrape_metrics(port);
    support::promtool_check(&body);
    assert!(body.contains(&cache_label));

    // Rewrites under a reader: every read must be a whole exposition.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, prom) = (stop.clone(), prom.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let t = std::fs::read_to_string(&prom).expect("read textfile");
                assert!(
                    t.ends_with('\n')
                        && t.contains("gocache_warden_build_info")
                        && t.contains("gocache_warden_units_missing_gocache"),
                    "partial textfile ({} bytes)",
                    t.len()
                );
                reads += 1;
            }
            reads
        })
    };
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("in use; last sweep")
        .count();
    for _ in 0..20 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("hup");
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw only whole files");
    let after = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("in use; last sweep")
        .count();
    assert!(
        after >= before + 5,
        "the agent rewrote the file several times ({before} → {after} sweeps)"
    );
    assert!(
        reads > 20,
        "the reader read while it was rewritten ({reads} reads)"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("term");
    assert!(child.0.wait().expect("wait").success());
    // Stopped, the agent's figures are not current any more: the textfile goes with it.
    assert!(
        !prom.exists(),
        "the textfile outlived the agent: node_exporter would export stale figures"
    );
}
