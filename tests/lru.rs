//! Exact LRU through the real binary: a synthetic cache of known eviction units (an action
//! record with the output it names, an output two actions name, orphan outputs, executables,
//! an action whose output is gone) and known ages; `enforce` with a size limit must remove
//! exactly the oldest units that bring the evictable bytes to low_water, whole, and nothing
//! that is never evicted (a large `fuzz/`) may push it to the floor.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use support::{age, json, policy, run, stderr, tempdir};

/// 64 hex digits that differ early, like Go's SHA-256 names.
fn hex(i: usize, salt: u64) -> String {
    let mut x = (i as u64) << 8 | salt;
    (0..4)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

fn alloc(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("stat").blocks() * 512
}

/// One eviction unit as the test expects apply to remove it: its age (its action record's,
/// or the orphan's own), the paths that go with it, and the bytes they hold.
#[derive(Debug, Clone)]
struct Unit {
    age_h: i64,
    paths: Vec<PathBuf>,
    bytes: u64,
}

struct Cache {
    root: PathBuf,
    units: Vec<Unit>,
    /// An output two actions name: it goes with the younger one.
    shared: PathBuf,
}

fn file(p: &Path, len: usize, age_h: i64) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, vec![7u8; len]).expect("write");
    age(p, age_h * 3600);
}

fn record(root: &Path, action: &str, output: &str, age_h: i64) -> PathBuf {
    let p = root.join(&action[..2]).join(format!("{action}-a"));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, format!("v1 {action} {output} {:20} {:20}\n", 0, 0)).expect("write");
    age(&p, age_h * 3600);
    p
}

/// Builds the cache: every unit a distinct age (hours), sizes from 4 to 60 KiB.
fn build(root: &Path) -> Cache {
    std::fs::create_dir_all(root).expect("mkdir");
    std::fs::write(
        root.join("README"),
        "This directory holds cached build artifacts from the Go build system.\n",
    )
    .expect("write");
    std::fs::write(root.join("trim.txt"), support::now().to_string()).expect("write");
    // Go creates every shard up front: 256 directories that are never evicted.
    for s in 0..256 {
        std::fs::create_dir_all(root.join(format!("{s:02x}"))).expect("mkdir");
    }
    let mut units = Vec::new();
    let size = |i: usize| (4 + (i * 7919) % 57) * 1024;
    for i in 0..48 {
        let age_h = 30 + 11 * i as i64;
        let (a, o) = (hex(i, 2), hex(i, 3));
        let dp = root.join(&o[..2]).join(format!("{o}-d"));
        let mut paths = vec![record(root, &a, &o, age_h)];
        match i % 6 {
            // An executable (Go 1.24+: a directory holding one file), named by its action.
            0 => {
                file(&dp.join("a.out"), size(i), age_h);
                age(&dp, age_h * 3600);
                paths.push(dp);
            }
            // The action's output is gone (removed by hand, or never written).
            1 => {}
            // The output was used more recently than its record (still past the floor): it
            // goes with its action all the same.
            2 => {
                file(&dp, size(i), age_h - 20);
                paths.push(dp);
            }
            _ => {
                file(&dp, size(i), age_h);
                paths.push(dp);
            }
        }
        let bytes = paths
            .iter()
            .map(|p| {
                if p.is_dir() {
                    alloc(p) + alloc(&p.join("a.out"))
                } else {
                    alloc(p)
                }
            })
            .sum();
        units.push(Unit {
            age_h,
            paths,
            bytes,
        });
    }
    // Orphan outputs (their actions went with go's own trim): units of their own.
    for i in 100..110 {
        let age_h = 35 + 23 * (i - 100) as i64;
        let o = hex(i, 3);
        let dp = root.join(&o[..2]).join(format!("{o}-d"));
        file(&dp, size(i), age_h);
        units.push(Unit {
            age_h,
            bytes: alloc(&dp),
            paths: vec![dp],
        });
    }
    // One output named by two actions (400 h and 250 h old): it goes with the younger.
    let o = hex(200, 3);
    let shared = root.join(&o[..2]).join(format!("{o}-d"));
    file(&shared, 40 * 1024, 400);
    let old = record(root, &hex(200, 2), &o, 403);
    let young = record(root, &hex(201, 2), &o, 251);
    units.push(Unit {
        age_h: 403,
        bytes: alloc(&old),
        paths: vec![old],
    });
    units.push(Unit {
        age_h: 251,
        bytes: alloc(&young) + alloc(&shared),
        paths: vec![young, shared.clone()],
    });
    Cache {
        root: root.to_path_buf(),
        units,
        shared,
    }
}

/// The units the test expects to go: oldest first until the evictable bytes are at most
/// `low`.
fn oldest_prefix(units: &[Unit], low: u64) -> BTreeSet<i64> {
    let mut by_age: Vec<&Unit> = units.iter().collect();
    by_age.sort_by_key(|u| std::cmp::Reverse(u.age_h));
    let mut left: u64 = units.iter().map(|u| u.bytes).sum();
    let mut out = BTreeSet::new();
    for u in by_age {
        if left <= low {
            break;
        }
        left -= u.bytes;
        out.insert(u.age_h);
    }
    out
}

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
    assert_eq!(std::fs::read_dir(c.root.join("fuzz/FuzzParse")).expect("fuzz").count(), 64);
}
