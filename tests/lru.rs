//! Exact LRU through the real binary: a synthetic cache of known eviction units (an action
//! record with the output it names, an output two actions name, orphan outputs, executables,
//! an action whose output is gone) and known ages; `enforce` with a size limit must remove
//! exactly the oldest units that bring the whole cache (what `du -sB1` says) to low_water,
//! whole; what is never evicted (a large `fuzz/`) counts, and when it keeps the cache over
//! its limit the cache is held over it, said with the cause.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use support::cachegen::{Cache, Unit, build, file, oldest_prefix};
use support::{json, policy, run, stderr, tempdir};

/// The test's policy: cache `c` with `max_size = limit` (low_water 90%, min_age 1 h).
fn limit_policy(d: &Path, c: &Cache, limit: u64) -> std::path::PathBuf {
    policy(
        d,
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = {limit}\nmin_age = \"1h\"\n",
            c.root.display()
        ),
    )
}

/// `enforce --json` under policy file `p`.
fn enforce_json(p: &Path) -> std::process::Output {
    run(
        [
            "--policy".as_ref(),
            p.as_os_str(),
            "enforce".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    )
}

/// Runs `enforce --json` with `max_size = limit` (low_water 90%, min_age 1 h); returns the
/// ages of the units that went and the JSON.
fn enforce(d: &Path, c: &Cache, limit: u64) -> (BTreeSet<i64>, serde_json::Value) {
    let p = limit_policy(d, c, limit);
    let o = enforce_json(&p);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut gone = BTreeSet::new();
    for u in &c.units {
        let present: Vec<bool> = u.paths.iter().map(|p| p.exists()).collect();
        assert!(
            present.iter().all(|x| *x == present[0]),
            "a unit goes whole or not at all: {u:?} {present:?}"
        );
        if !present[0] {
            gone.insert(u.age_h);
        }
    }
    (gone, json(&o))
}

/// Within one unit: the evicted set is the expected oldest-first prefix, or that prefix and
/// the next-oldest unit.
fn assert_prefix(units: &[Unit], gone: &BTreeSet<i64>, want: &BTreeSet<i64>) {
    let extra: Vec<_> = gone.difference(want).collect();
    let missing: Vec<_> = want.difference(gone).collect();
    let youngest_wanted = want.iter().min().copied().unwrap_or(i64::MAX);
    let next = units
        .iter()
        .map(|u| u.age_h)
        .filter(|a| *a < youngest_wanted)
        .max();
    assert!(
        missing.is_empty() && (extra.is_empty() || extra == [&next.unwrap_or(-1)]),
        "evicted {gone:?}, expected the oldest-first prefix {want:?} (missing {missing:?}, extra {extra:?})"
    );
}

#[test]
fn size_eviction_removes_exactly_the_oldest_units_that_reach_low_water() {
    support::require_root();
    let d = tempdir();
    let c = build(&d.path().join("cache"));
    let evictable: u64 = c.units.iter().map(|u| u.bytes).sum();
    // The root, the shards, README and trim.txt never go, yet count towards the limit.
    let fixed = support::du_bytes(&c.root) - evictable;
    let limit = fixed + evictable * 6 / 10;
    let low = (limit as f64 * 0.9) as u64;
    let want = oldest_prefix(&c.units, low - fixed);
    assert!(want.len() > 5 && want.len() < c.units.len() - 5, "{want:?}");
    let (gone, v) = enforce(d.path(), &c, limit);
    assert_prefix(&c.units, &gone, &want);
    let ev = &v["plan"]["caches"][0]["eviction"];
    assert_eq!(ev["floor_limited"], false, "{ev}");
    // The plan counted the same units: its expectation is what went.
    assert_eq!(
        ev["expected"]["size"]["entries"].as_u64(),
        Some(gone.len() as u64),
        "{ev}"
    );
    // The shared output stays while its younger action does.
    assert_eq!(c.shared.exists(), !gone.contains(&251));
    // The size reported after the sweep is measured, and is what the limit means.
    let after = v["outcome"]["caches"][0]["size_after"].as_u64();
    assert_eq!(after, Some(support::du_bytes(&c.root)), "{v}");
    assert!(
        support::du_bytes(&c.root) <= low,
        "du {} over low_water {low}",
        support::du_bytes(&c.root)
    );
}

/// A fuzzing corpus larger than every unit together counts (`du` counts it), so eviction
/// takes every unit past the floor and the cache is still over its limit: held over it by
/// `fuzz/`, which `check` and the plan say, and the corpus itself is never touched.
#[test]
fn a_large_fuzz_directory_counts_and_holds_the_cache_over_its_limit() {
    support::require_root();
    let d = tempdir();
    let c = build(&d.path().join("cache"));
    let evictable: u64 = c.units.iter().map(|u| u.bytes).sum();
    for i in 0..64 {
        file(
            &c.root.join("fuzz/FuzzParse").join(format!("{i:04}")),
            64 * 1024,
            2,
        );
    }
    let fuzz = support::du_bytes(&c.root.join("fuzz"));
    assert!(fuzz > evictable);
    let limit = evictable * 8 / 10;
    let p = limit_policy(d.path(), &c, limit);
    let o = run(
        [
            "--policy".as_ref(),
            p.as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    let v = json(&o);
    let f = v["caches"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "held-over-limit")
        .unwrap_or_else(|| panic!("no held-over-limit finding: {v}"))
        .clone();
    let msg = f["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("fuzz/") && msg.contains("go clean -fuzzcache"),
        "{msg}"
    );
    assert_eq!(f["auto_fix"], false, "{f}");

    let (gone, v) = enforce(d.path(), &c, limit);
    let ev = &v["plan"]["caches"][0]["eviction"];
    assert_eq!(ev["floor_limited"], true, "{ev}");
    assert_eq!(ev["held"]["fuzz"].as_u64(), Some(fuzz), "{ev}");
    // Every unit past the floor (1 h) went: all the cache can give.
    let past_floor: BTreeSet<i64> = c
        .units
        .iter()
        .map(|u| u.age_h)
        .filter(|a| *a >= 1)
        .collect();
    assert_eq!(gone, past_floor);
    assert_eq!(
        std::fs::read_dir(c.root.join("fuzz/FuzzParse"))
            .expect("fuzz")
            .count(),
        64
    );
    assert!(support::du_bytes(&c.root) > limit);
    let text = support::stdout(&run(
        [
            "--policy".as_ref(),
            p.as_os_str(),
            "enforce".as_ref(),
            "--dry-run".as_ref(),
        ],
        &[],
    ));
    assert!(text.contains("fuzz/"), "{text}");
}

/// What a sweep reports as the cache's size after eviction is what `du -sB1` says, with
/// everything eviction treats differently in the cache: a stray file at the root, a foreign
/// directory in a shard (never entered), a symlink, a hardlinked action record (never
/// evicted), `fuzz/`; once with a group policy (apply's second phase then sees the action
/// records too), once without.
#[test]
fn the_size_after_eviction_is_what_du_says_with_strays_links_and_foreign_dirs() {
    support::require_root();
    for with_group in [false, true] {
        let d = tempdir();
        let c = build(&d.path().join("cache"));
        let shard = c.units[0].paths[0].parent().expect("a shard").to_path_buf();
        file(&c.root.join("stray.txt"), 5000, 500);
        file(&shard.join("notes/one"), 9000, 500);
        file(&shard.join("notes/deeper/two"), 70000, 500);
        file(&c.root.join("fuzz/FuzzX/0001"), 20000, 500);
        std::os::unix::fs::symlink("/etc/hostname", shard.join("link")).expect("symlink");
        let first = &c.units[c.units.len() / 2].paths[0];
        std::fs::hard_link(first, d.path().join("outside-link")).expect("hard link");
        let evictable: u64 = c.units.iter().map(|u| u.bytes).sum();
        let limit = support::du_bytes(&c.root) - evictable / 2;
        let group = if with_group {
            "group = \"root\"\nsetgid = true\n"
        } else {
            ""
        };
        let p = policy(
            d.path(),
            "p.toml",
            &format!(
                "[cache.t]\npath = \"{}\"\nmax_size = {limit}\nmin_age = \"1h\"\n{group}",
                c.root.display()
            ),
        );
        let o = enforce_json(&p);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = json(&o);
        let out = &v["outcome"]["caches"][0];
        assert!(
            out["evicted"].as_object().is_some_and(|e| !e.is_empty()),
            "nothing evicted (group: {with_group}): {v}"
        );
        assert_eq!(
            out["size_after"].as_u64(),
            Some(support::du_bytes(&c.root)),
            "group: {with_group}: {v}"
        );
        assert!(first.exists(), "a hardlinked record is never evicted");
    }
}
