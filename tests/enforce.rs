//! `enforce` through the real binary on real trees: LRU order and size goal (property test),
//! age eviction, the floor, idempotence, dry-run, failure isolation, trim.txt, locked shards,
//! creating a shared cache from the policy alone.

mod support;

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::cachegen::hex;
use support::{age, json, mkcache, policy, run, stderr, stdout, tempdir};

fn enforce(p: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--policy".to_string(),
        p.display().to_string(),
        "enforce".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run(args, &[])
}

/// One unit of the synthetic cache: an action and its output (possibly in another shard),
/// or an executable output directory.
#[derive(Debug, Clone)]
struct Unit {
    age_hours: i64,
    size: usize,
    exec: bool,
    other_shard: bool,
}

/// Writes the units; returns, per unit, the paths that make it up.
fn build(root: &Path, units: &[Unit]) -> Vec<Vec<PathBuf>> {
    std::fs::create_dir_all(root).expect("mkdir");
    std::fs::write(
        root.join("README"),
        "This directory holds cached build artifacts from the Go build system.\n",
    )
    .expect("write");
    std::fs::write(root.join("trim.txt"), support::now().to_string()).expect("write");
    let mut out = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let secs = u.age_hours * 3600;
        if u.exec {
            let h = hex(i, 1);
            let d = root.join(&h[..2]).join(format!("{h}-d"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("prog"), vec![1u8; u.size]).expect("write");
            age(&d.join("prog"), secs);
            age(&d, secs);
            out.push(vec![d]);
            continue;
        }
        let a = hex(i, 2);
        let o = if u.other_shard { hex(i, 3) } else { a.clone() };
        for s in [&a[..2], &o[..2]] {
            std::fs::create_dir_all(root.join(s)).expect("mkdir");
        }
        let ap = root.join(&a[..2]).join(format!("{a}-a"));
        let dp = root.join(&o[..2]).join(format!("{o}-d"));
        std::fs::write(&ap, format!("v1 {a} {o} {:20} {:20}\n", u.size, 0)).expect("write");
        std::fs::write(&dp, vec![2u8; u.size]).expect("write");
        age(&ap, secs);
        age(&dp, secs);
        out.push(vec![ap, dp]);
    }
    out
}

fn units_strategy() -> impl Strategy<Value = Vec<Unit>> {
    prop::collection::vec(
        (
            1i64..2000,
            1usize..48 * 1024,
            prop::bool::weighted(0.15),
            prop::bool::ANY,
        )
            .prop_map(|(age_hours, size, exec, other_shard)| Unit {
                age_hours,
                size,
                exec,
                other_shard,
            }),
        8..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// After enforce: no remaining evictable unit is older than any removed one, nothing
    /// younger than the floor went, nothing older than max_age stayed, and the whole cache
    /// (`du -sB1`, what the limit means) is at or under low_water unless what may not be
    /// evicted held it, in which case the plan says so.
    #[test]
    fn eviction_is_lru_and_reaches_low_water(units in units_strategy(), limit_share in 0.1f64..0.9, floor_h in 0i64..300, max_age_h in prop::option::of(500i64..2500)) {
        let d = tempdir();
        let root = d.path().join("cache");
        let paths = build(&root, &units);
        let total = support::du_bytes(&root);
        // The root, the shards, README and trim.txt never go, yet count: the limit is on
        // the whole cache. Keep it above them, so it can be reached.
        let alloc = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::symlink_metadata(p).expect("stat")) * 512;
        let evictable: u64 = paths.iter().flatten().map(|p| if p.is_dir() { alloc(p) + alloc(&p.join("prog")) } else { alloc(p) }).sum();
        let fixed = total - evictable;
        let limit = fixed + (evictable as f64 * limit_share) as u64;
        let max_age = max_age_h.map_or(String::new(), |h| format!("max_age = \"{h}h\"\n"));
        let p = policy(d.path(), "p.toml", &format!("[cache.t]\npath = \"{}\"\nmax_size = {limit}\nmin_age = \"{floor_h}h\"\n{max_age}", root.display()));
        let o = enforce(&p, &["--json"]);
        prop_assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = json(&o);
        let removed: Vec<bool> = paths.iter().map(|ps| !ps[0].exists()).collect();
        for (u, ps) in units.iter().zip(&paths) {
            let gone: Vec<bool> = ps.iter().map(|p| !p.exists()).collect();
            prop_assert!(gone.iter().all(|g| *g == gone[0]), "an action and its output go together: {u:?} {gone:?}");
        }
        let min_removed = units.iter().zip(&removed).filter(|(_, r)| **r).map(|(u, _)| u.age_hours).min();
        let max_kept = units.iter().zip(&removed).filter(|(u, r)| !**r && u.age_hours >= floor_h).map(|(u, _)| u.age_hours).max();
        if let (Some(mr), Some(mk)) = (min_removed, max_kept) {
            prop_assert!(mk <= mr, "kept a unit aged {mk}h while removing one aged {mr}h");
        }
        for (u, r) in units.iter().zip(&removed) {
            prop_assert!(!(*r && u.age_hours < floor_h), "removed a unit younger than the floor: {u:?}");
            if let Some(m) = max_age_h {
                prop_assert!(!(!*r && u.age_hours >= m && u.age_hours >= floor_h), "kept a unit past max_age: {u:?}");
            }
        }
        let after = support::du_bytes(&root);
        let low_water = (limit as f64 * 0.9) as u64;
        let ev = &v["plan"]["caches"][0]["eviction"];
        if total > limit {
            if ev["floor_limited"] == true {
                prop_assert!(units.iter().zip(&removed).all(|(u, r)| *r || u.age_hours < floor_h), "floor-limited: everything past the floor goes");
                let text = stdout(&enforce(&p, &["--dry-run"]));
                // Still above the limit: the plan must say what holds it. (Between low_water
                // and the limit there is simply nothing left to do.)
                prop_assert!(after <= limit || text.contains("may not be evicted") || removed.iter().all(|r| *r), "{}", text);
            } else {
                prop_assert!(after <= low_water, "du {after} above low_water {low_water} (limit {limit}, was {total})");
            }
        }
        for keep in ["README", "trim.txt"] {
            prop_assert!(root.join(keep).exists());
        }
        prop_assert!(root.exists());
    }
}

#[test]
fn second_run_plans_nothing_and_detailed_exitcode_says_changed_once() {
    let d = tempdir();
    let root = d.path().join("cache");
    let units: Vec<Unit> = (0..40)
        .map(|i| Unit {
            age_hours: 24 * (i % 20 + 2) + 5,
            size: 8000,
            exec: i % 9 == 0,
            other_shard: i % 2 == 0,
        })
        .collect();
    build(&root, &units);
    std::fs::write(root.join("trim.txt"), "1").expect("stale trim.txt");
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"500KiB\"\nmax_age = \"15d\"\n",
            root.display()
        ),
    );
    let first = enforce(&p, &["--detailed-exitcode"]);
    assert_eq!(
        first.status.code(),
        Some(2),
        "changed: {}{}",
        stdout(&first),
        stderr(&first)
    );
    let trim: i64 = std::fs::read_to_string(root.join("trim.txt"))
        .expect("trim")
        .parse()
        .expect("unix seconds, as go writes");
    assert!(
        (support::now() - trim).abs() < 60,
        "trim.txt rewritten with now"
    );
    let second = enforce(&p, &["--detailed-exitcode", "--json"]);
    assert_eq!(
        second.status.code(),
        Some(0),
        "no change: {}",
        stdout(&second)
    );
    let v = json(&second);
    assert_eq!(v["changed"], false);
    assert!(
        v["plan"]["caches"][0]["eviction"].is_null(),
        "{}",
        v["plan"]
    );
    let dry = enforce(&p, &["--dry-run", "--detailed-exitcode"]);
    assert_eq!(dry.status.code(), Some(0));
    assert!(stdout(&dry).contains("nothing to do"), "{}", stdout(&dry));
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u32, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("stat");
        m.insert(p.clone(), (md.mode(), md.gid(), md.mtime(), md.size()));
        if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    m
}

#[test]
fn dry_run_changes_nothing_and_prints_the_plan() {
    support::require_root();
    support::ensure_group("gwt-enf");
    let d = tempdir();
    let root = d.path().join("cache");
    mkcache(&root, 500, 11);
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"1MiB\"\nmax_age = \"10d\"\ngroup = \"gwt-enf\"\ngroup_access = \"rwx\"\nother = \"---\"\n",
            root.display()
        ),
    );
    let before = snapshot(&root);
    let o = enforce(&p, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("would evict") && text.contains("would fix") && text.contains("acl"),
        "{text}"
    );
    assert_eq!(snapshot(&root), before, "dry-run changed the tree");
    let j = enforce(&p, &["--dry-run", "--json"]);
    let v = json(&j);
    assert_eq!(v["schema"], "gocache-warden.enforce/v1");
    assert_eq!(v["dry_run"], true);
    assert!(
        v["plan"]["caches"][0]["fixes"]["group"]["count"]
            .as_u64()
            .expect("group fixes")
            > 500
    );
    assert_eq!(snapshot(&root), before, "dry-run --json changed the tree");
}

#[test]
fn an_entry_that_cannot_be_removed_is_reported_and_the_sweep_goes_on() {
    support::require_root();
    let d = tempdir();
    let root = d.path().join("cache");
    let units: Vec<Unit> = (0..30)
        .map(|i| Unit {
            age_hours: 24 * 40 + i,
            size: 5000,
            exec: false,
            other_shard: false,
        })
        .collect();
    let paths = build(&root, &units);
    // An immutable file cannot be unlinked, even by root (EPERM).
    let stuck = &paths[3][1];
    let st = std::process::Command::new("chattr")
        .arg("+i")
        .arg(stuck)
        .status()
        .expect("chattr (e2fsprogs)");
    assert!(st.success(), "chattr +i needs ext4/xfs/btrfs under /tmp");
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_age = \"30d\"\n",
            root.display()
        ),
    );
    let o = enforce(&p, &["--json"]);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(stuck)
        .status();
    assert_eq!(o.status.code(), Some(1), "some actions failed → exit 1");
    let v = json(&o);
    let c = &v["outcome"]["caches"][0];
    assert_eq!(c["failed"]["count"], 1);
    assert!(
        c["failed"]["examples"][0]
            .as_str()
            .expect("example")
            .contains("Operation not permitted"),
        "{c}"
    );
    let gone = paths.iter().flatten().filter(|p| !p.exists()).count();
    assert_eq!(gone, 59, "everything else was evicted");
}

#[test]
fn a_locked_shard_is_skipped() {
    use std::os::fd::AsRawFd;
    let d = tempdir();
    let root = d.path().join("cache");
    let units: Vec<Unit> = (0..20)
        .map(|i| Unit {
            age_hours: 24 * 60 + i,
            size: 100,
            exec: false,
            other_shard: false,
        })
        .collect();
    let paths = build(&root, &units);
    let locked = paths[0][0].parent().expect("shard").to_path_buf();
    let f = std::fs::File::open(&locked).expect("open shard");
    // SAFETY: flock on an fd we own; released when `f` drops.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_age = \"30d\"\n",
            root.display()
        ),
    );
    let o = enforce(&p, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("locked shard"), "{}", stdout(&o));
    for ps in &paths {
        let in_locked = ps[0].parent() == Some(locked.as_path());
        assert_eq!(ps[0].exists(), in_locked, "{}", ps[0].display());
    }
    drop(f);
}

#[test]
fn creates_a_shared_cache_from_the_policy_alone() {
    support::require_root();
    let gid = support::ensure_group("gwt-create");
    let d = tempdir();
    let root = d.path().join("srv-gocache");
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.s]\npath = \"{}\"\ncreate = true\nowner = \"root\"\ngroup = \"gwt-create\"\nsetgid = true\ngroup_access = \"rwx\"\nother = \"---\"\n",
            root.display()
        ),
    );
    let o = enforce(&p, &["--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&root).expect("created");
    assert_eq!(md.gid(), gid);
    assert_eq!(md.mode() & 0o7777, 0o2770, "rwxrws---");
    let acl = std::process::Command::new("getfacl")
        .args(["-p", "-n"])
        .arg(&root)
        .output()
        .expect("getfacl");
    let acl = String::from_utf8_lossy(&acl.stdout);
    for want in [
        format!("group:{gid}:rwx"),
        "mask::rwx".into(),
        format!("default:group:{gid}:rwx"),
        "default:mask::rwx".into(),
        "default:other::---".into(),
        "other::---".into(),
    ] {
        assert!(acl.lines().any(|l| l == want), "missing {want} in\n{acl}");
    }
    let again = enforce(&p, &["--detailed-exitcode"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "idempotent: {}",
        stdout(&again)
    );
}

/// Configuration management maps `--detailed-exitcode`'s 2 to "changed": neither a usage error
/// nor a policy error may ever exit 2 there, while without the flag both keep exit 2.
#[test]
fn detailed_exitcode_never_reports_an_error_as_changed() {
    let d = tempdir();
    let good = policy(d.path(), "good.toml", "");
    let bad = policy(
        d.path(),
        "bad.toml",
        "[cache.t]\npath = \"/nonexistent\"\nmax_size = \"lots\"\n",
    );
    let cases: [(&Path, &[&str], i32, i32); 3] = [
        // (policy, extra args, exit without the flag, exit with it)
        (&good, &["--no-such-option"], 2, 1),
        (&good, &["--dry-run", "--json", "surplus-argument"], 2, 1),
        (&bad, &["--dry-run"], 2, 1),
    ];
    for (p, extra, plain, detailed) in cases {
        let o = enforce(p, extra);
        assert_eq!(o.status.code(), Some(plain), "{extra:?}: {}", stderr(&o));
        let mut with = extra.to_vec();
        with.push("--detailed-exitcode");
        let o = enforce(p, &with);
        assert_eq!(o.status.code(), Some(detailed), "{with:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{with:?}: the error is explained");
    }
    // And a clean run with nothing to do is 0, not 2.
    let o = enforce(&good, &["--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}
