//! Races made deterministic with failpoints: a shard or entries swapped for symlinks after
//! planning, or between `stat` and `open` in either walk.

use super::*;

/// A case for the shard-swap races: shard `ab` holds old and fresh units and an old action
/// whose output is in `cd`; `outside/shard` holds old entry-named files.
fn swap_case(cross_shard: bool) -> (Case, PathBuf, Vec<Unit>) {
    let mut c = Case::new(&["ab", "cd"]);
    let target = c.outside_dir("shard");
    c.outside_file(
        &format!("shard/{}-a", id("ab", 1)),
        &record(&id("ab", 1), &id("ab", 2), 300, OLD).into_bytes(),
    );
    c.outside_file(&format!("shard/{}-d", id("ab", 2)), &[b'o'; 300]);
    age(&target, OLD);
    let mut units = vec![
        c.unit(&id("ab", 1), &id("ab", 2), OLD),
        c.unit(&id("ab", 3), &id("ab", 4), FRESH),
        c.unit(&id("cd", 1), &id("cd", 2), OLD),
        c.unit(&id("cd", 3), &id("cd", 4), FRESH),
    ];
    if cross_shard {
        // An old action in cd naming an output in ab: its eviction opens ab by itself, from
        // the root. (Only before-apply can order this against the swap: during a walk the
        // other thread may get to cd before or after.)
        units.push(c.unit(&id("cd", 5), &id("ab", 6), OLD));
    }
    (c, target, units)
}

/// Moves the real shard out of the cache (same filesystem) and puts a symlink to the
/// sentinel directory in its place; guards what was moved (now outside the cache).
fn swap_shard(c: &Case, target: &Path) -> Vec<(PathBuf, Sentinel)> {
    let moved = c.dir.join("moved-ab");
    std::fs::rename(c.cache.join("ab"), &moved).expect("rename shard away");
    std::os::unix::fs::symlink(target, c.cache.join("ab")).expect("symlink shard");
    let mut snaps = Vec::new();
    for e in std::fs::read_dir(&moved).expect("list moved") {
        let p = e.expect("entry").path();
        snaps.push((p.clone(), Case::snap(&p)));
    }
    snaps
}

fn assert_moved_unchanged(snaps: &[(PathBuf, Sentinel)], n: usize) {
    assert_eq!(snaps.len(), n, "moved shard entries");
    for (p, s) in snaps {
        assert_eq!(
            &Case::snap(p),
            s,
            "{} (moved out of the cache) changed",
            p.display()
        );
    }
}

// 6a. The shard becomes a symlink between planning and applying.
#[test]
fn shard_swapped_for_a_symlink_after_planning() {
    let (mut c, target, u) = swap_case(true);
    c.seal();
    let mut moved = Vec::new();
    let r = c.enforce_racing("before-apply:.", || moved = swap_shard(&c, &target));
    let e = c.enforce_done(r, 0);
    assert_moved_unchanged(&moved, 5);
    assert_refused(&e, "symlink", &["ab"]);
    assert_no_failures(&e);
    // cd's old unit went; the old action naming an output in ab went without following ab.
    for p in [&u[2].a, &u[2].d, &u[4].a] {
        assert_gone(p);
    }
    c.assert_fixed(&u[3].a);
    c.assert_fixed(&u[3].d);
}

// 6b. The shard becomes a symlink between the walk's stat and open, in the apply phase's
// first walk (action records; N = 2: the inspection walk opened `ab` first).
#[test]
fn shard_swapped_between_stat_and_open_in_the_actions_walk() {
    let (mut c, target, u) = swap_case(false);
    c.seal();
    let mut moved = Vec::new();
    let r = c.enforce_racing("walk-open#2:ab", || moved = swap_shard(&c, &target));
    let e = c.enforce_done(r, 0);
    assert_moved_unchanged(&moved, 4);
    assert_refused(&e, "symlink", &["ab"]);
    assert_no_failures(&e);
    for p in [&u[2].a, &u[2].d] {
        assert_gone(p);
    }
    c.assert_fixed(&u[3].d);
}

// 6c. The same in the apply phase's second walk (evict the rest, fix; N = 3): the open is
// refused and reported as a failure of that directory, nothing outside is touched.
#[test]
fn shard_swapped_between_stat_and_open_in_the_fix_walk() {
    let (mut c, target, u) = swap_case(false);
    c.seal();
    let mut moved = Vec::new();
    let r = c.enforce_racing("walk-open#3:ab", || moved = swap_shard(&c, &target));
    let e = c.enforce_done(r, 1);
    // The actions walk already ran on the real shard (ab's old action went; its output is
    // the second walk's to evict); what is left of it (that output and the fresh unit) is
    // outside the cache now and must stay as it is.
    assert_moved_unchanged(&moved, 3);
    let o = outcome(&e);
    assert!(
        examples(&o["failed"]).iter().any(|f| f.starts_with("ab:")),
        "failure names ab: {o}"
    );
    assert_eq!(o["failed"]["count"], 1, "{o}");
    // (`ab/...` now resolves into the sentinel directory: ab's old unit is checked by the
    // count of what was moved, above.)
    for p in [&u[2].a, &u[2].d] {
        assert_gone(p);
    }
    c.assert_fixed(&u[3].d);
}

// 6d. Entries (not directories) swapped after planning: an old output for a hard link to a
// root-owned file outside, an old action for a symlink, a fresh output (planned for a fix)
// for a FIFO. Apply judges what is there when it acts.
#[test]
fn entries_swapped_after_planning() {
    let mut c = Case::new(&["ab", "cd"]);
    // Not guarded by the case: the race links it, so it is snapshotted then.
    let secret = c.outside.join("secret");
    std::fs::write(&secret, b"root only").expect("write");
    make_unfixed(&secret, 0o600);
    age(&secret, OLD);
    let mut secret_snap = None;
    let target = c.outside_file("target-a", b"v1 not yours");
    let old = c.unit(&id("ab", 1), &id("ab", 2), OLD);
    let fresh = c.unit(&id("ab", 3), &id("ab", 4), FRESH);
    let other = c.unit(&id("cd", 1), &id("cd", 2), OLD);
    c.seal();
    let r = c.enforce_racing("before-apply:.", || {
        std::fs::remove_file(&old.d).expect("rm");
        std::fs::hard_link(&secret, &old.d).expect("link");
        secret_snap = Some(Case::snap(&secret));
        std::fs::remove_file(&old.a).expect("rm");
        std::os::unix::fs::symlink(&target, &old.a).expect("symlink");
        std::fs::remove_file(&fresh.d).expect("rm");
        nix::unistd::mkfifo(&fresh.d, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
    });
    let e = c.enforce_done(r, 0);
    assert_eq!(
        Some(Case::snap(&secret)),
        secret_snap,
        "{} changed",
        secret.display()
    );
    assert_refused(&e, "hardlink", &[rel_of(&c, &old.d)]);
    assert_refused(&e, "symlink", &[rel_of(&c, &old.a)]);
    assert_refused(&e, "special", &[rel_of(&c, &fresh.d)]);
    assert_no_failures(&e);
    assert_eq!(std::fs::read_link(&old.a).expect("symlink kept"), target);
    assert_eq!(
        std::fs::symlink_metadata(&old.d)
            .expect("link kept")
            .nlink(),
        2
    );
    assert!(
        std::fs::symlink_metadata(&fresh.d)
            .expect("fifo kept")
            .file_type()
            .is_fifo()
    );
    for p in [&other.a, &other.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
}
