//! ACLs the running agent has seen compliant, so that its next inspection of the same cache
//! reads only the ACLs that can have changed since (issue #24: the ACL read is half the
//! syscalls of inspecting a cache under a group policy, and `statx` cannot say whether an
//! inode has one).
//!
//! The proof is the inode's `ctime`: every change of an ACL, the mode, the owner or the
//! group sets it to the current time, and so does a `rename` or `link` that brings an inode
//! into a directory; no user can set it back. So after a walk that started at `T` and found
//! every entry's ACLs as the policy wants them (nothing unreadable, nothing left out: no
//! mount, no directory too deep), an entry whose `ctime` is before `T` (less a second, for
//! filesystems whose clock is coarse) still has the ACLs that walk judged. Except where the
//! entry came in with a directory: renaming a directory into the cache moves its children
//! without touching their `ctime`. So the skip also needs the entry's directory to be proven
//! unchanged the same way: the cache root by its identity (dev, inode), a shard by being
//! the very inode that walk entered, an executable output directory (depth 2) by its own
//! `ctime`. Deeper than that Go never writes, and nothing is skipped there.
//!
//! The proof leans on the wall clock, which can be stepped back (an NTP step at boot, an
//! administrator): a change made after such a step gets a `ctime` that looks older than it
//! is. So a proof is dropped when the wall clock has moved less than the monotonic clock
//! since it was recorded (by more than a second): stepped back, it proves nothing.
//!
//! Kept in memory only, per cache root and per [`Grant`]: a policy change, another process
//! or a restart starts from a full read; a one-shot `check` never benefits (and never
//! needs to be trusted on what another process saw).

use super::perms::Grant;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// One cache's proof: what a compliant walk saw.
#[derive(Debug)]
pub struct Seen {
    grant: Grant,
    /// Entries whose ctime is before this (seconds, nanoseconds) are unchanged since.
    before: (i64, i64),
    /// Inodes of the shards that walk entered.
    shards: HashSet<u64>,
    /// The wall clock (seconds, nanoseconds) and the monotonic clock when it was recorded.
    wall: (i64, i64),
    mono: std::time::Instant,
}

impl Seen {
    /// Whether an entry at `depth` with `ctime` may skip its ACL read. `shard_known`: the
    /// shard it is in (depth ≥ 2) is one this proof's walk entered; `parent_ctime`: its
    /// directory's, for depth 3.
    pub fn unchanged(
        &self,
        depth: usize,
        ctime: (i64, i64),
        shard_known: bool,
        parent_ctime: (i64, i64),
    ) -> bool {
        if ctime >= self.before {
            return false;
        }
        match depth {
            0 | 1 => true,
            2 => shard_known,
            3 => shard_known && parent_ctime < self.before,
            _ => false,
        }
    }

    pub fn knows_shard(&self, ino: u64) -> bool {
        self.shards.contains(&ino)
    }
}

type Key = (u64, u64);

static SEEN: Mutex<Option<HashMap<Key, Arc<Seen>>>> = Mutex::new(None);

/// The proof for the cache whose root is `root` (dev, inode), if one was recorded under the
/// same grant.
pub fn lookup(root: Key, grant: &Grant) -> Option<Arc<Seen>> {
    let m = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    m.as_ref()?
        .get(&root)
        .filter(|s| s.grant == *grant && !stepped_back(s.wall, s.mono, now()))
        .cloned()
}

/// Whether the wall clock, now `wall_now`, has moved more than a second less than the
/// monotonic clock since (`wall`, `mono`) were read together.
fn stepped_back(wall: (i64, i64), mono: std::time::Instant, wall_now: (i64, i64)) -> bool {
    let ns = |t: (i64, i64)| i128::from(t.0) * 1_000_000_000 + i128::from(t.1);
    let wall_moved = ns(wall_now) - ns(wall);
    let mono_moved = i128::try_from(mono.elapsed().as_nanos()).unwrap_or(i128::MAX);
    wall_moved < mono_moved - 1_000_000_000
}

/// Records that a walk of `root` started at `started` (seconds, nanoseconds) found every
/// entry's ACLs compliant, having entered `shards`.
pub fn record(root: Key, grant: Grant, started: (i64, i64), shards: HashSet<u64>) {
    let before = (started.0 - 1, started.1);
    let mut m = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    m.get_or_insert_with(HashMap::new).insert(
        root,
        Arc::new(Seen {
            grant,
            before,
            shards,
            wall: now(),
            mono: std::time::Instant::now(),
        }),
    );
}

/// The wall clock as (seconds, nanoseconds) since the epoch, as `ctime` is kept.
pub fn now() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_nanos()),
    )
}

#[cfg(test)]
mod tests {
    use crate::acl::Acl;
    use crate::policy::{CachePolicy, Source};
    use crate::scan::{InspectOptions, Observed, Violation, perms::Grant};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn policy(root: &Path) -> CachePolicy {
        let gid = nix::unistd::getgid();
        let group = nix::unistd::Group::from_gid(gid)
            .ok()
            .flatten()
            .expect("our group has a name");
        let text = format!(
            "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n\
             [cache.t]\npath = \"{}\"\nkind = \"build\"\ngroup = \"{}\"\ngroup_access = \"rwx\"\n",
            root.display(),
            group.name
        );
        let p = crate::policy::load(&[Source {
            name: "t.toml".into(),
            text,
        }])
        .expect("policy");
        p.caches
            .into_iter()
            .find(|c| c.name == "t")
            .expect("cache t")
    }

    /// Gives `p` the ACLs (and setgid) the grant wants, as apply would.
    fn comply(g: &Grant, p: &Path) {
        let md = std::fs::symlink_metadata(p).expect("stat");
        let is_dir = md.is_dir();
        if is_dir && g.setgid {
            let mode = md.permissions().mode() | libc::S_ISGID;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let mode = std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode();
        let want = g.want(is_dir, mode).expect("an ACL policy");
        want.access_acl(&Acl::from_mode(mode))
            .to_posix()
            .write_acl(p)
            .expect("ACL");
        if is_dir {
            want.default_acl()
                .to_posix()
                .write_default_acl(p)
                .expect("default ACL");
        }
    }

    fn inspect(root: &Path, p: &CachePolicy) -> Observed {
        let dir = crate::safefs::Dir::open_root(root).expect("open");
        crate::scan::inspect(
            &dir,
            p,
            InspectOptions {
                now: super::now().0,
                owner_uid: None,
                histogram: false,
                pair_units: false,
                last_use: p.last_use,
                keep_oldest: 0,
            },
        )
    }

    fn acl_flags(o: &Observed) -> u64 {
        o.violations.get(&Violation::Acl).map_or(0, |t| t.count)
    }

    /// A wall clock stepped back since the proof was recorded voids it; one that moved
    /// with the monotonic clock, or ahead of it, does not.
    #[test]
    fn a_wall_clock_stepped_back_voids_the_proof() {
        let mono = std::time::Instant::now() - std::time::Duration::from_secs(10);
        let wall = (1_000_000, 0);
        assert!(!super::stepped_back(wall, mono, (1_000_010, 0)));
        assert!(!super::stepped_back(wall, mono, (1_000_500, 0)));
        assert!(super::stepped_back(wall, mono, (1_000_005, 0)));
        assert!(super::stepped_back(wall, mono, (999_000, 0)));
    }

    fn hex(i: usize) -> String {
        format!("ab{i:062x}")
    }

    /// A second walk reads no ACL its `ctime` proves unchanged; an ACL changed since is read
    /// and flagged; and what came in with a directory (an executable output directory, a
    /// whole shard, renamed in with old children) is read, though its children's `ctime` is
    /// older than the first walk.
    #[test]
    fn only_what_can_have_changed_since_a_compliant_walk_is_read_again() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("cache");
        let shard = root.join("ab");
        std::fs::create_dir_all(&shard).expect("mkdir");
        for i in 0..20 {
            std::fs::write(shard.join(format!("{}-a", hex(i))), b"v1").expect("write");
        }
        // Made now, moved in later: children with a `ctime` older than the first walk.
        let outside = d.path().join("outside");
        let exec = outside.join(format!("{}-d", hex(99)));
        std::fs::create_dir_all(&exec).expect("mkdir");
        std::fs::write(exec.join("a.out"), b"x").expect("write");
        let other_shard = outside.join("ab");
        std::fs::create_dir_all(&other_shard).expect("mkdir");
        std::fs::write(other_shard.join(format!("{}-a", hex(50))), b"v1").expect("write");
        let p = policy(&root);
        let g = Grant::from_policy(&p);
        for e in [root.clone(), shard.clone()]
            .into_iter()
            .chain((0..20).map(|i| shard.join(format!("{}-a", hex(i)))))
        {
            comply(&g, &e);
        }
        // Past the margin: everything above is older than the first walk less a second.
        std::thread::sleep(std::time::Duration::from_millis(1200));

        let first = inspect(&root, &p);
        assert!(first.violations.is_empty(), "{:?}", first.violations);
        assert_eq!(first.acl_unchanged, 0);
        let second = inspect(&root, &p);
        assert!(second.violations.is_empty(), "{:?}", second.violations);
        assert_eq!(
            second.acl_unchanged, 22,
            "the root, the shard and 20 records"
        );

        // A changed ACL moves its ctime: read again, and flagged.
        let changed = shard.join(format!("{}-a", hex(3)));
        std::fs::set_permissions(&changed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        posix_acl::PosixACL::new(0o600)
            .write_acl(&changed)
            .expect("minimal ACL");
        let third = inspect(&root, &p);
        assert_eq!(acl_flags(&third), 1, "{:?}", third.violations);
        assert_eq!(third.acl_unchanged, 21, "all but the changed record");
        comply(&g, &changed);

        // An executable output directory renamed in: its file is older than the proof,
        // the directory is not.
        std::fs::rename(&exec, shard.join(format!("{}-d", hex(99)))).expect("rename");
        let fourth = inspect(&root, &p);
        assert!(
            acl_flags(&fourth) >= 2,
            "the moved-in directory and its file were not both read: {:?}",
            fourth.violations
        );

        // A whole shard swapped for one made earlier: its entries are read.
        std::fs::remove_dir_all(shard.join(format!("{}-d", hex(99)))).expect("rm");
        let fifth = inspect(&root, &p);
        assert!(fifth.violations.is_empty(), "{:?}", fifth.violations);
        std::fs::rename(&shard, d.path().join("old-shard")).expect("rename");
        std::fs::rename(&other_shard, &shard).expect("rename");
        let sixth = inspect(&root, &p);
        assert!(
            acl_flags(&sixth) >= 2,
            "the swapped-in shard's entries were not read: {:?}",
            sixth.violations
        );
    }
}
