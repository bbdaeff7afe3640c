//! The agent over shared caches without shared trust (issue #14): it exports what the cache
//! program served each user (read from their own caches as them), and it verifies shared
//! caches in the background within its byte budget, quarantining what fails.
//!
//! Real `go` builds by real users through the cache program, the real agent
//! (`gocache-warden run`), its textfile checked by the real `promtool check metrics`, and an
//! `exec` alert sink. Needs root, `setfacl`, `promtool` and Go ≥ 1.24 (see tests/cacheprog.rs).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};
use support::shared::*;

/// The value of the one series of `name` whose labels include every `label="value"` given.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until the textfile exists and `ready` accepts it; returns it.
fn wait_textfile(
    prom: &Path,
    log: &Path,
    limit: Duration,
    mut ready: impl FnMut(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(prom)
            && ready(&t)
        {
            return t;
        }
        assert!(
            start.elapsed() < limit,
            "textfile not as expected after {limit:?}:\n{}\nagent log:\n{}",
            std::fs::read_to_string(prom).unwrap_or_default(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn textfile_path(dir: &Path) -> PathBuf {
    let prom = dir.join("textfile/gocache-warden.prom");
    std::fs::create_dir_all(prom.parent().expect("dir")).expect("mkdir textfile dir");
    prom
}

#[test]
fn the_agent_exports_what_the_cache_program_served_each_user() {
    let _g = serial();
    let w = World::new();
    let alice = user(MEMBERS[0], &[GROUP]);
    let bob = user(MEMBERS[1], &[GROUP]);
    let (own_a, own_b) = (w.own(&alice, "m"), w.own(&bob, "m"));
    let prog = w.cacheprog("");
    let (o, ran) = w.build(&alice, &own_a, &prog);
    must(&o, "alice's build");
    assert_eq!(ran, PROGRAM_OUT);
    // Bob builds twice: the second build also hits his own cache.
    for _ in 0..2 {
        let (o, ran) = w.build(&bob, &own_b, &prog);
        must(&o, "bob's build");
        assert_eq!(ran, PROGRAM_OUT);
    }
    let prom = textfile_path(w.dir.path());
    let p = support::policy(
        w.dir.path(),
        "agent.toml",
        &format!(
            "[cache.alice]\npath = \"{}\"\n[cache.bob]\npath = \"{}\"\n[agent]\ninterval = \"1h\"\n[metrics]\ntextfile = \"{}\"\n",
            own_a.display(),
            own_b.display(),
            prom.display()
        ),
    );
    let log = w.dir.path().join("agent.log");
    let _agent = support::spawn_agent(&p, &log);
    let text = wait_textfile(&prom, &log, Duration::from_secs(60), |t| {
        t.contains("gocache_warden_cacheprog_hits_total{")
    });
    support::promtool_check(&text);
    for (own, u) in [(&own_a, &alice), (&own_b, &bob)] {
        let c = counters(own);
        let cache = own.display().to_string();
        let l = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![("cache", cache.clone()), ("user", u.name.to_string())];
            v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
            v
        };
        let get = |name: &str, extra: &[(&'static str, &'static str)]| {
            let owned = l(extra);
            let labels: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            value(&text, name, &labels)
                .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}")) as u64
        };
        let shared = [("source", "shared")];
        let own_src = [("source", "own")];
        assert_eq!(
            get("gocache_warden_cacheprog_hits_total", &shared),
            n(&c, "shared_hits"),
            "{c}"
        );
        assert_eq!(
            get("gocache_warden_cacheprog_served_bytes_total", &shared),
            n(&c, "shared_hit_bytes"),
            "{c}"
        );
        assert_eq!(
            get("gocache_warden_cacheprog_hits_total", &own_src),
            n(&c, "own_hits"),
            "{c}"
        );
        assert_eq!(
            get("gocache_warden_cacheprog_served_bytes_total", &own_src),
            n(&c, "own_hit_bytes"),
            "{c}"
        );
        assert_eq!(
            get("gocache_warden_cacheprog_misses_total", &[]),
            n(&c, "misses"),
            "{c}"
        );
        assert_eq!(
            get("gocache_warden_cacheprog_puts_total", &[]),
            n(&c, "puts"),
            "{c}"
        );
        assert_eq!(
            get(
                "gocache_warden_cacheprog_refused_total",
                &[("reason", "tampered")]
            ),
            0
        );
        assert!(n(&c, "shared_hits") >= 100, "{c}");
    }
    // Bob's second build hit his own cache too (the outputs it put are small, some empty).
    let c = counters(&own_b);
    assert!(n(&c, "own_hits") >= 1, "bob's second build: {c}");
}

/// Sum of the sizes of the output files of a cache (what a verification pass hashes).
fn output_bytes(root: &Path) -> u64 {
    snapshot(root)
        .iter()
        .filter(|(rel, (mode, ..))| {
            mode & libc::S_IFMT == libc::S_IFREG
                && rel
                    .components()
                    .any(|c| c.as_os_str().to_string_lossy().ends_with("-d"))
        })
        .map(|(_, (_, size, ..))| size)
        .sum()
}

#[test]
fn the_agent_quarantines_a_tampered_shared_output_within_its_budget() {
    let _g = serial();
    let w = World::new();
    // The largest output, rewritten with other bytes of the same size.
    let snap = snapshot(&w.shared);
    let (rel, (_, size, _, _)) = snap
        .iter()
        .filter(|(r, (m, ..))| {
            m & libc::S_IFMT == libc::S_IFREG && r.to_string_lossy().ends_with("-d")
        })
        .max_by_key(|(_, (_, s, ..))| *s)
        .expect("an output");
    let victim = w.shared.join(rel);
    let mut b = std::fs::read(&victim).expect("read output");
    let i = b.len() / 2;
    b[i] ^= 0x55;
    std::fs::write(&victim, &b).expect("tamper");
    assert_eq!(std::fs::metadata(&victim).expect("stat").len(), *size);
    let total = output_bytes(&w.shared);
    let rate: u64 = 2 << 20;
    let alerts = w.dir.path().join("alerts.json");
    let prom = textfile_path(w.dir.path());
    let p = support::policy(
        w.dir.path(),
        "agent.toml",
        &format!(
            "[cache.shared]\npath = \"{}\"\ntrusted_writers = [\"{WRITER}\"]\nuntrusted = \"quarantine\"\n[agent]\ninterval = \"1h\"\nverify_rate = \"2MiB\"\n[metrics]\ntextfile = \"{}\"\n[alert.log]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n",
            w.shared.display(),
            prom.display(),
            alerts.display(),
            alerts.display()
        ),
    );
    let log = w.dir.path().join("agent.log");
    let started = Instant::now();
    let _agent = support::spawn_agent(&p, &log);
    let cache = w.shared.display().to_string();
    let hashed = |t: &str| {
        value(
            t,
            "gocache_warden_integrity_hashed_bytes_total",
            &[("cache", &cache)],
        )
        .unwrap_or(0.0) as u64
    };
    // A full pass at the budget, plus the first sweep and a slice's worth of slack.
    let limit = Duration::from_secs_f64(total as f64 / rate as f64) + Duration::from_secs(20);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let text = wait_textfile(&prom, &log, limit, |t| {
        let bytes = hashed(t);
        let at = started.elapsed().as_secs_f64();
        // The budget holds at every point: never more than rate × time since the agent
        // started, plus the 20 ms the pacer may run ahead and one read of at most 256 KiB.
        assert!(
            bytes as f64 <= rate as f64 * (at + 0.02) + 256.0 * 1024.0,
            "{bytes} bytes hashed {at:.1} s after start, budget {rate} B/s"
        );
        if samples.last().is_none_or(|(_, b)| *b != bytes) {
            samples.push((at, bytes));
        }
        value(
            t,
            "gocache_warden_integrity_last_pass_timestamp_seconds",
            &[("cache", &cache)],
        )
        .is_some_and(|v| v > 0.0)
    });
    let took = started.elapsed();
    support::promtool_check(&text);
    assert_eq!(
        hashed(&text),
        total,
        "one whole pass hashed every output byte"
    );
    // Measured rate over the pass, from the first slice's end to the last's.
    if let (Some(a), Some(z)) = (samples.first(), samples.last())
        && z.0 - a.0 > 3.0
    {
        let r = (z.1 - a.1) as f64 / (z.0 - a.0);
        assert!(
            r <= rate as f64 * 1.05,
            "{r:.0} B/s measured, budget {rate} B/s ({samples:?})"
        );
        eprintln!(
            "background verification: {r:.0} B/s measured over {:.1} s, budget {rate} B/s; pass of {total} bytes in {took:?}",
            z.0 - a.0
        );
    }
    let problem = |what: &str| {
        value(
            &text,
            "gocache_warden_integrity_problems_total",
            &[("cache", &cache), ("problem", what)],
        )
    };
    assert_eq!(problem("tampered"), Some(1.0), "{text}");
    assert_eq!(problem("untrusted"), Some(0.0), "{text}");
    assert_eq!(
        value(
            &text,
            "gocache_warden_integrity_actions_total",
            &[("cache", &cache), ("action", "quarantined")]
        ),
        Some(1.0)
    );
    // Quarantined inside the cache, never served again from its place.
    assert!(!victim.exists(), "{victim:?} left in place");
    let shard = rel.parent().expect("shard").to_string_lossy().into_owned();
    let name = rel
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let moved = w
        .shared
        .join("gocache-warden-quarantine")
        .join(format!("{shard}-{name}"));
    assert_eq!(std::fs::read(&moved).expect("quarantined file"), b);
    // Logged and alerted.
    let l = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(l.contains("1 tampered"), "{l}");
    let start = Instant::now();
    let fired = loop {
        let a = std::fs::read_to_string(&alerts).unwrap_or_default();
        let found: Vec<Value> = serde_json::Deserializer::from_str(&a)
            .into_iter::<Value>()
            .filter_map(Result::ok)
            .filter(|v| v["kind"] == "integrity" && v["status"] == "firing")
            .collect();
        if let Some(f) = found.into_iter().next() {
            break f;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no integrity alert: {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(fired["cache"], cache.as_str(), "{fired}");
    let summary = fired["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("1 tampered") && summary.contains(&name),
        "{fired}"
    );
    assert!(took <= limit, "found within the budget's time: {took:?}");
}

/// A slice in progress does not hold the agent up: SIGTERM ends it after its current read,
/// and the agent exits (removing its textfile) at once. No `go` needed: outputs of a
/// synthetic cache are not named by their hashes, which only makes them "tampered" (and
/// `untrusted = "report"` leaves them be).
#[test]
fn sigterm_ends_a_background_verification_slice_at_once() {
    support::require_root();
    let d = support::tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 3000, 7);
    let prom = textfile_path(d.path());
    let p = support::policy(
        d.path(),
        "agent.toml",
        &format!(
            "[cache.c]\npath = \"{}\"\ntrusted_writers = [\"root\"]\nuntrusted = \"report\"\n[agent]\ninterval = \"1h\"\nverify_rate = \"256KiB\"\n[metrics]\ntextfile = \"{}\"\n",
            cache.display(),
            prom.display()
        ),
    );
    let log = d.path().join("agent.log");
    let mut agent = support::spawn_agent(&p, &log);
    let c = cache.display().to_string();
    // Mid-pass: one 5 s slice (1.25 MiB) of a cache of about 12 MiB of outputs is done.
    let text = wait_textfile(&prom, &log, Duration::from_secs(60), |t| {
        value(
            t,
            "gocache_warden_integrity_hashed_bytes_total",
            &[("cache", &c)],
        )
        .is_some_and(|b| b > 0.0)
    });
    assert_eq!(
        value(
            &text,
            "gocache_warden_integrity_last_pass_timestamp_seconds",
            &[("cache", &c)]
        ),
        Some(0.0),
        "the pass is not over yet"
    );
    let before = std::fs::read(cache.join("trim.txt")).expect("trim.txt");
    let t0 = Instant::now();
    let pid = nix::unistd::Pid::from_raw(agent.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("term");
    let status = loop {
        if let Some(s) = agent.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the agent did not stop: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!prom.exists(), "the textfile goes with the agent");
    // Report-only: nothing of the cache was changed by verifying it.
    assert!(!cache.join("gocache-warden-quarantine").exists());
    assert_eq!(
        std::fs::read(cache.join("trim.txt")).expect("trim.txt"),
        before
    );
}

/// Background verification survives a restart: an agent stopped mid-pass leaves its cursor
/// in its state directory, and the next agent goes on from there — its pass hashes only what
/// the first one had not, not the whole cache again.
#[test]
fn a_restarted_agent_resumes_background_verification_where_it_stopped() {
    support::require_root();
    let d = support::tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 3000, 7);
    let total = output_bytes(&cache);
    let prom = textfile_path(d.path());
    let p = support::policy(
        d.path(),
        "agent.toml",
        &format!(
            "[cache.c]\npath = \"{}\"\ntrusted_writers = [\"root\"]\nuntrusted = \"report\"\n[agent]\ninterval = \"1h\"\nverify_rate = \"1MiB\"\n[metrics]\ntextfile = \"{}\"\n",
            cache.display(),
            prom.display()
        ),
    );
    let c = cache.display().to_string();
    let hashed = |t: &str| {
        value(
            t,
            "gocache_warden_integrity_hashed_bytes_total",
            &[("cache", &c)],
        )
        .unwrap_or(0.0) as u64
    };
    let pass_over = |t: &str| {
        value(
            t,
            "gocache_warden_integrity_last_pass_timestamp_seconds",
            &[("cache", &c)],
        )
        .is_some_and(|v| v > 0.0)
    };
    let log1 = d.path().join("agent1.log");
    let mut agent = support::spawn_agent(&p, &log1);
    // One 5 s slice at 1 MiB/s: well under half of the cache's outputs.
    let text = wait_textfile(&prom, &log1, Duration::from_secs(60), |t| hashed(t) > 0);
    assert!(!pass_over(&text), "the pass is not over yet");
    let first = hashed(&text);
    assert!(
        first < total / 2,
        "{first} of {total} bytes in the first slice"
    );
    let pid = nix::unistd::Pid::from_raw(agent.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("term");
    let status = agent.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    let saved = std::fs::read_to_string(p.with_extension("state").join("verify-cursors.json"))
        .expect("the cursors are kept in the state directory");
    assert!(saved.contains(&c), "{saved}");

    let log2 = d.path().join("agent2.log");
    let _agent = support::spawn_agent(&p, &log2);
    let text = wait_textfile(&prom, &log2, Duration::from_secs(60), pass_over);
    let second = hashed(&text);
    let l = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(
        l.contains(&format!("background verification of {c} resumes at shard")),
        "{l}"
    );
    assert!(second > 0, "the rest of the pass was hashed");
    // Everything the first agent had published stays done (it may have hashed a little
    // more in the slice SIGTERM ended, which was kept too).
    assert!(
        second <= total - first,
        "the restarted agent hashed {second} bytes of {total}, the first had done {first}: it started over"
    );
}
