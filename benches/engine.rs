//! In-process benchmarks of the engine's parts, with divan: the policy pipeline, the last-use
//! histogram, action-record parsing, and inspection, planning and a dry-run apply of
//! synthetic caches. Whole-command comparisons with `du`, `find`, `setfacl` and `chgrp` are in
//! `compare.sh`; these are for watching the parts between changes.
//!
//! `cargo bench --bench engine` measures; `cargo test --all-targets` runs each once, as a test
//! that the parts still work (the tree benches assert what they find).

use gocache_warden::check::{self, Target};
use gocache_warden::plan::{self, Plan};
use gocache_warden::policy::{self, Policy, Scope, Source};
use gocache_warden::scan::layout;
use gocache_warden::scan::lru::Histogram;
use std::collections::HashMap;
use std::fs::{File, FileTimes};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

fn main() {
    divan::main();
}

const DAY: i64 = 86_400;

/// A deterministic xorshift generator: the same tree every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn hex64(&mut self) -> String {
        (0..4).map(|_| format!("{:016x}", self.next())).collect()
    }
}

fn now() -> i64 {
    check::now()
}

fn policy_text(name: &str, path: &Path, extra: &str) -> Source {
    Source {
        name: name.into(),
        text: format!(
            "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n\
             [cache.t]\npath = \"{}\"\nkind = \"build\"\nmin_age = \"1h\"\n{extra}",
            path.display()
        ),
    }
}

fn load(sources: &[Source]) -> Policy {
    match policy::load(sources) {
        Ok(p) => p,
        Err(e) => panic!("policy: {e}"),
    }
}

// ---- policy pipeline: fragments -> merged -> validated

#[divan::bench]
fn policy_shipped_shared_build_server() -> Policy {
    load(&[Source {
        name: "shared-build-server.toml".into(),
        text: include_str!("../policy/shared-build-server.toml").into(),
    }])
}

#[divan::bench]
fn policy_default_plus_two_dropins() -> Policy {
    load(&[
        Source {
            name: "default.toml".into(),
            text: include_str!("../policy/default.toml").into(),
        },
        Source {
            name: "10-size.toml".into(),
            text: "[cache.build]\nmax_size = \"20%\"\nmax_age = \"14d\"\n".into(),
        },
        Source {
            name: "20-group.toml".into(),
            text: "[cache.build]\ngroup = \"root\"\ngroup_access = \"rwx\"\n".into(),
        },
    ])
}

// ---- last-use histogram

#[divan::bench(args = [10_000, 1_000_000])]
fn histogram_add_and_cutoff(bencher: divan::Bencher, n: u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let ages: Vec<(i64, u64)> = (0..n)
        .map(|_| {
            (
                (rng.next() % (60 * DAY as u64)) as i64,
                512 + rng.next() % 65_536,
            )
        })
        .collect();
    let total: u64 = ages.iter().map(|a| a.1).sum();
    bencher.bench(|| {
        let h = Histogram::default();
        for &(age, bytes) in &ages {
            h.add(age, bytes);
        }
        let c = h.cutoff(total / 2, 3600);
        assert!(c.bytes >= total / 2 && !c.floor_limited);
        c
    });
}

#[divan::bench]
fn action_record_parse(bencher: divan::Bencher) {
    let mut rng = Rng(7);
    let records: Vec<Vec<u8>> = (0..1000)
        .map(|_| {
            format!(
                "v1 {} {} {:>20} {:>20}\n",
                rng.hex64(),
                rng.hex64(),
                rng.next() % 100_000,
                rng.next() % (1 << 62)
            )
            .into_bytes()
        })
        .collect();
    bencher.bench(|| {
        records
            .iter()
            .filter(|r| layout::action_output(divan::black_box(r)).is_some())
            .count()
    });
}

// ---- whole caches, in process

/// A Go-shaped cache of `entries` action/output pairs in 256 shards, last used uniformly
/// over 60 days; made once per size and kept for the process's life.
fn tree(entries: usize) -> &'static Path {
    static TREES: OnceLock<Mutex<HashMap<usize, &'static tempfile::TempDir>>> = OnceLock::new();
    let mut trees = TREES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = trees.entry(entries).or_insert_with(|| {
        let d = tempfile::Builder::new()
            .prefix("gcw-bench-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        make_tree(d.path(), entries);
        Box::leak(Box::new(d))
    });
    dir.path()
}

fn make_tree(root: &Path, entries: usize) {
    let write = |p: &Path, data: &[u8], age: i64| {
        std::fs::write(p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let t = SystemTime::now() - Duration::from_secs(age as u64);
        let f = File::options()
            .write(true)
            .open(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        f.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    for s in 0..256 {
        std::fs::create_dir_all(root.join(format!("{s:02x}")))
            .unwrap_or_else(|e| panic!("mkdir: {e}"));
    }
    write(
        &root.join("README"),
        b"This directory holds cached build artifacts from the Go build system.\n",
        0,
    );
    write(&root.join("trim.txt"), now().to_string().as_bytes(), 0);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let data = vec![b'o'; 8192];
    for _ in 0..entries {
        let (a, o) = (rng.hex64(), rng.hex64());
        let age = (rng.next() % (60 * DAY as u64)) as i64;
        let size = (rng.next() % 8192) as usize;
        let rec = format!(
            "v1 {a} {o} {size:>20} {:>20}\n",
            (now() - age) * 1_000_000_000
        );
        write(
            &root.join(&a[..2]).join(format!("{a}-a")),
            rec.as_bytes(),
            age,
        );
        write(
            &root.join(&o[..2]).join(format!("{o}-d")),
            &data[..size],
            age,
        );
    }
}

fn target(policy: &Policy, path: &Path) -> Target {
    Target {
        policy: policy.caches[0].clone(),
        path: Ok(PathBuf::from(path)),
        source: "policy".into(),
        owner_uid: None,
        refused: None,
        user: None,
    }
}

const SIZES: [usize; 2] = [2_000, 20_000];

#[divan::bench(args = SIZES)]
fn inspect(bencher: divan::Bencher, entries: usize) {
    let root = tree(entries);
    let p = load(&[policy_text("bench.toml", root, "max_age = \"30d\"\n")]);
    let t = target(&p, root);
    bencher.bench(|| {
        let r = check::inspect_target(&t, now());
        let obs = r
            .observed
            .as_ref()
            .unwrap_or_else(|| panic!("not inspected: {r:?}"));
        // Every action and output, README and trim.txt; the root and the shards.
        assert_eq!(obs.files, 2 * entries as u64 + 2);
        assert_eq!(obs.dirs, 257);
        r
    });
}

/// Inspection, the eviction plan (half the bytes by LRU) and both apply walks in dry-run
/// mode: everything `enforce` does except the unlinks.
#[divan::bench(args = SIZES)]
fn plan_and_dry_run_apply(bencher: divan::Bencher, entries: usize) {
    let root = tree(entries);
    let total: u64 = 2 * entries as u64 * 4096;
    let extra = format!("max_size = {}\nlow_water = \"100%\"\n", total / 2);
    let p = load(&[policy_text("bench.toml", root, &extra)]);
    let t = target(&p, root);
    bencher.bench(|| {
        let now = now();
        let r = check::inspect_target(&t, now);
        let cp = plan::plan_cache(&p.caches[0], &r, None)
            .unwrap_or_else(|| panic!("nothing planned: {r:?}"));
        let plan = Plan {
            schema: plan::SCHEMA.into(),
            host: "bench".into(),
            scope: Scope::System,
            now,
            caches: vec![cp],
        };
        let out = gocache_warden::apply::apply(&plan, true);
        let evicted: u64 = out.caches[0].evicted.values().map(|u| u.entries).sum();
        assert!(evicted > 0, "a dry run over the limit evicts something");
        out
    });
}
