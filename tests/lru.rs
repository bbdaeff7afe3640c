//! Exact LRU through the real binary: a synthetic cache of known eviction units (an action
//! record with the output it names, an output two actions name, orphan outputs, executables,
//! an action whose output is gone) and known ages; `enforce` with a size limit must remove
//! exactly the oldest units that bring the evictable bytes to low_water, whole, and nothing
//! that is never evicted (a large `fuzz/`) may push it to the floor.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use support::cachegen::{Cache, Unit, build, file, oldest_prefix};
use support::{json, policy, run, stderr, tempdir};

/// Runs `enforce --json` with `max_size = limit` (low_water 90%, min_age 1 h); returns the
/// ages of the units that went and the JSON.
fn enforce(d: &Path, c: &Cache, limit: u64) -> (BTreeSet<i64>, serde_json::Value) {
    let p = policy(
        d,
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = {limit}\nmin_age = \"1h\"\n",
            c.root.display()
        ),
    );
    let o = run(
        [
            "--policy".as_ref(),
            p.as_os_str(),
            "enforce".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
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
    let limit = evictable * 6 / 10;
    let low = (limit as f64 * 0.9) as u64;
    let want = oldest_prefix(&c.units, low);
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
    // The size reported after the sweep is measured.
    let after = v["outcome"]["caches"][0]["size_after"].as_u64();
    assert_eq!(after, Some(support::du_bytes(&c.root)), "{v}");
}

#[test]
fn a_large_fuzz_directory_does_not_make_the_sweep_floor_limited() {
    support::require_root();
    let d = tempdir();
    let c = build(&d.path().join("cache"));
    let evictable: u64 = c.units.iter().map(|u| u.bytes).sum();
    // A fuzzing corpus larger than every unit together: never evicted, so never counted.
    for i in 0..64 {
        file(
            &c.root.join("fuzz/FuzzParse").join(format!("{i:04}")),
            64 * 1024,
            2,
        );
    }
    assert!(support::du_bytes(&c.root.join("fuzz")) > evictable);
    let limit = evictable * 8 / 10;
    let want = oldest_prefix(&c.units, (limit as f64 * 0.9) as u64);
    assert!(want.len() < c.units.len() / 2, "{want:?}");
    let (gone, v) = enforce(d.path(), &c, limit);
    let ev = &v["plan"]["caches"][0]["eviction"];
    assert_eq!(ev["floor_limited"], false, "{ev}");
    assert_prefix(&c.units, &gone, &want);
    assert_eq!(
        std::fs::read_dir(c.root.join("fuzz/FuzzParse"))
            .expect("fuzz")
            .count(),
        64
    );
}
