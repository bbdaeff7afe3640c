//! Synthetic build caches of known eviction units and ages, for tests that check exactly
//! which units `enforce` removes (the random-shaped generator is `mkcache`).

use super::age;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// 64 hex digits that differ early, like Go's SHA-256 names.
pub fn hex(i: usize, salt: u64) -> String {
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

pub fn alloc(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("stat").blocks() * 512
}

/// One eviction unit as the test expects apply to remove it: its age (its action record's,
/// or the orphan's own), the paths that go with it, and the bytes they hold.
#[derive(Debug, Clone)]
pub struct Unit {
    pub age_h: i64,
    pub paths: Vec<PathBuf>,
    pub bytes: u64,
}

pub struct Cache {
    pub root: PathBuf,
    pub units: Vec<Unit>,
    /// An output two actions name: it goes with the younger one.
    pub shared: PathBuf,
}

pub fn file(p: &Path, len: usize, age_h: i64) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, vec![7u8; len]).expect("write");
    age(p, age_h * 3600);
}

pub fn record(root: &Path, action: &str, output: &str, age_h: i64) -> PathBuf {
    let p = root.join(&action[..2]).join(format!("{action}-a"));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, format!("v1 {action} {output} {:20} {:20}\n", 0, 0)).expect("write");
    age(&p, age_h * 3600);
    p
}

/// Builds the cache: every unit a distinct age (hours), sizes from 4 to 60 KiB.
pub fn build(root: &Path) -> Cache {
    std::fs::create_dir_all(root).expect("mkdir");
    std::fs::write(
        root.join("README"),
        "This directory holds cached build artifacts from the Go build system.\n",
    )
    .expect("write");
    std::fs::write(root.join("trim.txt"), super::now().to_string()).expect("write");
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
pub fn oldest_prefix(units: &[Unit], low: u64) -> BTreeSet<i64> {
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
