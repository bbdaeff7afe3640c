//! The exporter's text checked by the real promtool, series lifecycle (zeros present,
//! vanished caches removed, bounded user cardinality), and the atomic textfile.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gocache_warden::alert::{Dispatcher, ExecSink, RetryPolicy};
use gocache_warden::metrics::textfile::TextfileWriter;
use gocache_warden::metrics::{
    CacheKind, CacheprogSnapshot, IntegritySlice, METRIC_NAMES, Metrics, MetricsConfig, encode_text,
};
use prometheus::Registry;
use support::observe::*;

/// A registry with every family populated, as the daemon would have it.
fn full_registry() -> (Registry, Metrics) {
    let reg = Registry::new();
    let m = Metrics::new(&reg, MetricsConfig::default()).unwrap();
    m.set_caches(&[
        (PathBuf::from("/srv/gocache"), CacheKind::Build),
        (PathBuf::from("/srv/gomodcache"), CacheKind::Module),
    ]);
    m.observe_snapshot(&snapshot("/srv/gocache", CacheKind::Build, 14));
    // A per-user cache (policy `users`): the only kind with an owner_info series.
    let mut own = snapshot("/home/alice/.cache/go-build", CacheKind::Build, 1);
    own.user = Some("alice".into());
    m.observe_snapshot(&own);
    m.observe_sweep(&sweep("/srv/gocache", CacheKind::Build, true));
    m.observe_sweep(&sweep("/srv/gomodcache", CacheKind::Module, false));
    m.set_units_missing_gocache(3);
    // A build that failed because of a cache, as the journal follower saw it.
    m.observe_build_failure("cache-permission", "/srv/gocache", "alice", "ci.service");
    // What alice's CI service wrote into the shared cache, as fanotify reported it.
    m.observe_written("/srv/gocache", "alice", "ci.service", 8 << 20, 120);
    // What the cache program served alice, read from her own cache.
    m.observe_cacheprog(&CacheprogSnapshot {
        path: PathBuf::from("/home/alice/.cache/go-build"),
        kind: CacheKind::Build,
        user: "alice".into(),
        shared_hits: 40,
        shared_hit_bytes: 4 << 20,
        own_hits: 3,
        misses: 2,
        ..Default::default()
    });
    // Background verification of the shared cache: zeros, then a slice that found one.
    m.set_verified_caches(&[(PathBuf::from("/srv/gocache"), CacheKind::Build)]);
    m.observe_integrity(&IntegritySlice {
        path: PathBuf::from("/srv/gocache"),
        kind: CacheKind::Build,
        bytes: 1 << 20,
        outputs: 10,
        problems: [1, 0, 0, 0],
        actions: [0, 1, 0],
        pass_ended: Some(1.7e9),
    });
    // The alert dispatcher registers its delivery counter in the same registry.
    let sink = ExecSink::new(
        "exec",
        "/bin/true",
        vec![],
        std::time::Duration::from_secs(5),
    );
    Dispatcher::start(vec![Box::new(sink)], RetryPolicy::default(), 4, Some(&reg))
        .unwrap()
        .shutdown(std::time::Duration::from_secs(1));
    (reg, m)
}

fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

#[test]
fn promtool_accepts_the_exposition_without_lint_findings() {
    let (reg, _m) = full_registry();
    let text = encode_text(&reg).unwrap();
    let (ok, msg) = promtool_check_metrics(&text);
    assert!(
        ok && msg.trim().is_empty(),
        "promtool check metrics: {msg}\n---\n{text}"
    );

    // Control: promtool really lints (a gauge named like a counter is flagged).
    let (ok, msg) =
        promtool_check_metrics("# HELP bad_total x\n# TYPE bad_total gauge\nbad_total 1\n");
    assert!(
        !ok && msg.contains("_total"),
        "promtool did not flag a bad metric: {msg}"
    );
}

#[test]
fn exposition_has_every_family_base_units_and_no_timestamps() {
    let (reg, _m) = full_registry();
    let text = encode_text(&reg).unwrap();
    let parsed = parse_exposition(&text).unwrap();
    let emitted: BTreeSet<&str> = parsed.keys().map(String::as_str).collect();
    let declared: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    assert_eq!(
        emitted, declared,
        "emitted families differ from METRIC_NAMES"
    );
    for (name, samples) in &parsed {
        assert!(name.starts_with("gocache_warden_"), "{name}");
        for (labels, _) in samples {
            assert!(!labels.contains('\n'));
        }
    }
    // Sample lines are exactly "series value": a timestamp would be a third field.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let after_labels = line.rsplit_once('}').map_or(line, |(_, rest)| rest);
        assert_eq!(
            after_labels.split_whitespace().count(),
            if line.contains('}') { 1 } else { 2 },
            "{line}"
        );
    }
    let c = "cache=\"/srv/gocache\"";
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_build_info",
            &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&parsed, "gocache_warden_cache_allocated_bytes", &[c]),
        Some(12.0 * GIB as f64)
    );
    assert_eq!(
        value(&parsed, "gocache_warden_cache_limit_bytes", &[c]),
        Some(10.0 * GIB as f64)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_cache_oldest_entry_age_seconds",
            &[c]
        ),
        Some(86_400.5)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_evicted_bytes_total",
            &[c, "reason=\"size\""]
        ),
        Some(3.0 * GIB as f64)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_permission_fixes_total",
            &[c, "fix=\"mode\""]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_last_successful_sweep_timestamp_seconds",
            &[c]
        ),
        Some(1.7e9)
    );
    assert_eq!(
        value(&parsed, "gocache_warden_last_sweep_duration_seconds", &[c]),
        Some(1.5)
    );
    assert_eq!(
        value(&parsed, "gocache_warden_units_missing_gocache", &[]),
        Some(3.0)
    );
    // Failed sweep: counted as failure, errors counted, last success stays 0.
    let mc = "cache=\"/srv/gomodcache\"";
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_sweeps_total",
            &[mc, "result=\"failure\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_errors_total",
            &[mc, "error=\"io\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_last_successful_sweep_timestamp_seconds",
            &[mc]
        ),
        Some(0.0)
    );
}

#[test]
fn known_kinds_are_zero_users_are_bounded_and_removed_caches_vanish() {
    let reg = Registry::new();
    let cfg = MetricsConfig {
        top_users: 3,
        ..MetricsConfig::default()
    };
    let m = Metrics::new(&reg, cfg.clone()).unwrap();
    m.set_caches(&[
        (PathBuf::from("/srv/a"), CacheKind::Build),
        (PathBuf::from("/srv/b"), CacheKind::Module),
    ]);

    // Declared but not yet scanned or swept: every kinded series exists at 0.
    let p = parse_exposition(&encode_text(&reg).unwrap()).unwrap();
    let b = "cache=\"/srv/b\"";
    for v in &cfg.violation_kinds {
        assert_eq!(
            value(
                &p,
                "gocache_warden_cache_violations",
                &[b, &format!("violation=\"{v}\"")]
            ),
            Some(0.0),
            "{v}"
        );
    }
    for f in &cfg.fix_kinds {
        assert_eq!(
            value(
                &p,
                "gocache_warden_permission_fixes_total",
                &[b, &format!("fix=\"{f}\"")]
            ),
            Some(0.0)
        );
    }
    for e in &cfg.error_kinds {
        assert_eq!(
            value(
                &p,
                "gocache_warden_errors_total",
                &[b, &format!("error=\"{e}\"")]
            ),
            Some(0.0)
        );
    }
    for r in ["age", "size"] {
        assert_eq!(
            value(
                &p,
                "gocache_warden_evicted_entries_total",
                &[b, &format!("reason=\"{r}\"")]
            ),
            Some(0.0)
        );
    }
    for r in ["success", "failure"] {
        assert_eq!(
            value(
                &p,
                "gocache_warden_sweeps_total",
                &[b, &format!("result=\"{r}\"")]
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        value(
            &p,
            "gocache_warden_cache_user_bytes",
            &[b, "user=\"other\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&p, "gocache_warden_cache_limit_bytes", &[b]),
        None,
        "no limit known yet"
    );

    // Ten users, top 3 kept: user9, user8, user7 by bytes; the rest summed.
    m.observe_snapshot(&snapshot("/srv/a", CacheKind::Build, 10));
    let p = parse_exposition(&encode_text(&reg).unwrap()).unwrap();
    let a = "cache=\"/srv/a\"";
    let users: Vec<&String> = p["gocache_warden_cache_user_bytes"]
        .iter()
        .map(|(l, _)| l)
        .filter(|l| l.contains(a))
        .collect();
    assert_eq!(users.len(), 4, "{users:?}");
    assert_eq!(
        value(
            &p,
            "gocache_warden_cache_user_bytes",
            &[a, "user=\"user9\""]
        ),
        Some(10e6)
    );
    assert_eq!(
        value(
            &p,
            "gocache_warden_cache_user_bytes",
            &[a, "user=\"other\""]
        ),
        Some((1..=7).sum::<u64>() as f64 * 1e6)
    );

    // The top users change: the old names disappear instead of going stale.
    let mut s = snapshot("/srv/a", CacheKind::Build, 2);
    s.violations.clear();
    s.limit_bytes = None;
    m.observe_snapshot(&s);
    let p = parse_exposition(&encode_text(&reg).unwrap()).unwrap();
    assert_eq!(
        value(
            &p,
            "gocache_warden_cache_user_bytes",
            &[a, "user=\"user9\""]
        ),
        None
    );
    assert_eq!(
        value(
            &p,
            "gocache_warden_cache_user_bytes",
            &[a, "user=\"user1\""]
        ),
        Some(2e6)
    );
    assert_eq!(
        value(
            &p,
            "gocache_warden_cache_violations",
            &[a, "violation=\"mode\""]
        ),
        Some(0.0),
        "cleared kinds go back to 0"
    );
    assert_eq!(
        value(&p, "gocache_warden_cache_limit_bytes", &[a]),
        None,
        "a removed limit is not left behind"
    );

    // /srv/b leaves the policy: none of its series remain; /srv/a is untouched.
    m.set_caches(&[(PathBuf::from("/srv/a"), CacheKind::Build)]);
    let text = encode_text(&reg).unwrap();
    assert!(
        !text.contains("/srv/b"),
        "series of a removed cache remain:\n{text}"
    );
    assert!(text.contains("cache=\"/srv/a\""));
    m.remove_cache(std::path::Path::new("/srv/a"));
    assert!(
        !encode_text(&reg).unwrap().contains("cache="),
        "remove_cache left series"
    );
}

#[test]
fn textfile_is_never_seen_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("gocache_warden.prom");
    let writer = TextfileWriter::new(&target).unwrap();
    let reg = Registry::new();
    let m = Metrics::new(
        &reg,
        MetricsConfig {
            top_users: 25,
            ..MetricsConfig::default()
        },
    )
    .unwrap();
    // Fifty caches make each file a few hundred KiB, so a torn write would be visible.
    let caches: Vec<String> = (0..50).map(|i| format!("/srv/cache{i:02}")).collect();
    // No alert dispatcher in this registry, no per-user cache (owner_info), no cache program
    // counters, no background verification, no build failure and no write attribution: those
    // families have no series here.
    let families = METRIC_NAMES
        .iter()
        .filter(|n| {
            !n.starts_with("gocache_warden_cacheprog_")
                && !n.starts_with("gocache_warden_integrity_")
                && !n.starts_with("gocache_warden_build_failures_")
                && !n.starts_with("gocache_warden_cache_written_")
        })
        .count()
        - 2;
    let write_generation = |g: u64| {
        for c in &caches {
            m.observe_snapshot(&snapshot(c, CacheKind::Build, (g % 20 + 1) as usize));
        }
        m.set_units_missing_gocache(g);
        writer.write(&reg).unwrap();
    };
    write_generation(0);

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, target) = (done.clone(), target.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::Relaxed) || reads < 50 {
                let text = std::fs::read_to_string(&target)
                    .expect("the .prom file vanished during a rewrite");
                let parsed =
                    parse_exposition(&text).unwrap_or_else(|e| panic!("torn read #{reads}: {e}"));
                let help = text.lines().filter(|l| l.starts_with("# HELP ")).count();
                assert_eq!(help, families, "read #{reads} lacks families");
                // Generation g writes units_missing=g and g%20+1 users per cache.
                let g =
                    value(&parsed, "gocache_warden_units_missing_gocache", &[]).unwrap() as usize;
                let user_series = parsed
                    .get("gocache_warden_cache_user_bytes")
                    .map_or(0, |v| v.len());
                let want = caches_len() * (g % 20 + 2);
                assert_eq!(
                    user_series, want,
                    "read #{reads} of generation {g} is incomplete"
                );
                reads += 1;
            }
            reads
        })
    };
    fn caches_len() -> usize {
        50
    }
    for g in 1..=300u64 {
        write_generation(g);
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw a bad file");
    assert!(reads >= 50, "reader only managed {reads} reads");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("gocache_warden.prom")],
        "temporary file left behind"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let (ok, msg) = promtool_check_metrics(&std::fs::read_to_string(&target).unwrap());
    assert!(ok, "{msg}");
}
