//! Eviction without a walk: when a watched cache grows past its limit again, remove the
//! oldest entry files its last inspection listed ([`crate::scan::oldest`]), oldest first,
//! until the bytes the growth estimate puts above low water are gone. What a full apply
//! costs (two walks of the cache and a third to measure it) becomes one `statx` and one
//! `unlinkat` per file removed.
//!
//! Files go one by one by their own last use, as `go`'s own trim removes them; an action
//! record whose output stays (or the reverse) is a miss for `go`, never a wrong build, and
//! the next full sweep evicts the orphan. Each file is re-checked beneath its shard, opened
//! like apply opens it (no symlink, no mount, the shard's lock tried, never waited for):
//! the same inode with the same mtime, one name, the same last use, still past the floor.
//! Anything else (used again, replaced, hardlinked, gone) is skipped, so a stale list can
//! only leave a file, never remove one a build has used since it was listed.

use super::fail;
use crate::safefs::{Dir, Kind, LastUse};
use crate::scan::Usage;
use crate::scan::oldest::{Candidate, entry_names as names};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// One walk-free eviction: a value, like [`crate::plan::Plan`], so what runs is what was
/// decided.
#[derive(Debug, Clone)]
pub struct KnownPlan {
    pub path: PathBuf,
    /// The cache's user, for a per-user cache (its root is opened as apply opens it).
    pub user: Option<crate::report::CacheUser>,
    /// The `min_age` floor, seconds.
    pub floor_secs: i64,
    pub last_use: LastUse,
    /// Bytes to free (the estimate above low water).
    pub need: u64,
    pub now: i64,
}

#[derive(Debug, Clone, Default)]
pub struct KnownOutcome {
    pub path: PathBuf,
    pub evicted: Usage,
    /// Bytes of listed files someone else removed meanwhile (`go clean`, `go`'s trim): no
    /// longer on disk, so no longer in the cache's size either.
    pub gone: u64,
    /// Listed files left because they changed (used again, replaced, a second name).
    pub changed: u64,
    /// How many candidates were looked at (the list's consumed prefix).
    pub consumed: usize,
    /// Shards skipped because root held their lock, and locks others held, ignored
    /// (`crate::locks`).
    pub locked_skipped: u64,
    pub locks_ignored: crate::scan::Tally,
    pub failed: crate::scan::Tally,
    /// `evicted + gone` reached `need`.
    pub reached: bool,
    /// Outputs removed with their action record (see [`evict_known`]).
    pub taken: HashSet<[u8; 32]>,
}

/// Evicts from `candidates` (oldest first) as `plan` says. Stops at `need`, at the end of
/// the list, or when the agent is asked to stop. `taken`: outputs earlier runs removed with
/// their action record (listed too, they are neither gone nor evicted again); this run's
/// are in [`KnownOutcome::taken`].
pub fn evict_known(
    plan: &KnownPlan,
    candidates: &[Candidate],
    taken: &HashSet<[u8; 32]>,
) -> KnownOutcome {
    let mut out = KnownOutcome {
        path: plan.path.clone(),
        ..Default::default()
    };
    let root = match super::open_cache_root(&plan.path, plan.user.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            note_failure(&mut out, Path::new("."), "open", &e);
            return out;
        }
    };
    let cancel = crate::cancel::Cancel::process();
    let mut ev = Run {
        plan,
        root: &root,
        shards: HashMap::new(),
        out,
    };
    for c in candidates {
        if ev.out.evicted.bytes.saturating_add(ev.out.gone) >= plan.need || cancel.is_cancelled() {
            break;
        }
        ev.out.consumed += 1;
        if c.suffix == b'd' && (taken.contains(&c.id) || ev.out.taken.contains(&c.id)) {
            continue;
        }
        let Some(fresh) = ev.check(c.id, c.suffix, Some(c)) else {
            continue;
        };
        if c.suffix == b'd' {
            ev.remove(c.id, b'd', &fresh, c.alloc);
            continue;
        }
        // An action record: opened before its unlink and read after it (our read never
        // looks like use), then the output it names follows, past the floor by its own
        // last use, as apply's action phase lets it.
        let record = ev
            .dir(c.id)
            .and_then(|d| d.open_read(&c.names().1, &fresh).ok());
        if !ev.remove(c.id, b'a', &fresh, c.alloc) {
            continue;
        }
        let named = record
            .and_then(|f| crate::safefs::read_up_to(f, 512, fresh.size).ok())
            .and_then(|r| crate::scan::layout::action_output(&r))
            .and_then(|hex| {
                let mut id = [0u8; 32];
                hex::decode_to_slice(hex, &mut id).ok().map(|()| id)
            });
        if let Some(id) = named
            && let Some(st) = ev.check(id, b'd', None)
            && ev.remove(id, b'd', &st, 0)
        {
            ev.out.taken.insert(id);
        }
    }
    let mut out = ev.out;
    out.reached = out.evicted.bytes.saturating_add(out.gone) >= plan.need;
    super::warn_ignored(&out.path, &out.locks_ignored);
    out
}

/// One run's state: the root, the shards it opened (and locked), what it did.
struct Run<'a> {
    plan: &'a KnownPlan,
    root: &'a Dir,
    /// `None`: locked by someone else, or not a directory of the root's filesystem.
    shards: HashMap<u8, Option<Dir>>,
    out: KnownOutcome,
}

impl Run<'_> {
    fn dir(&mut self, id: [u8; 32]) -> Option<&Dir> {
        let (shard_name, _) = names(id, b'a');
        let (root, out) = (self.root, &mut self.out);
        self.shards
            .entry(id[0])
            .or_insert_with(|| open_shard(root, &shard_name, out))
            .as_ref()
    }

    /// The entry file as it is now, if it may go: a regular file of the root's filesystem
    /// with one name, past the floor, and, for a listed candidate, the very inode listed,
    /// unchanged and not used since. A listed file found missing counts as gone.
    fn check(
        &mut self,
        id: [u8; 32],
        suffix: u8,
        listed: Option<&Candidate>,
    ) -> Option<crate::safefs::Stat> {
        let (plan, dev) = (self.plan, self.root.st.dev);
        let (_, name) = names(id, suffix);
        let rel = rel(id, suffix);
        let fresh = match self.dir(id)?.stat(&name) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(c) = listed {
                    self.out.gone += c.alloc;
                }
                return None;
            }
            Err(e) => {
                note_failure(&mut self.out, &rel, "stat", &e);
                return None;
            }
        };
        let ok = fresh.kind() == Kind::File
            && fresh.nlink == 1
            && fresh.dev == dev
            && plan.now - fresh.last_use(plan.last_use) >= plan.floor_secs
            && listed.is_none_or(|c| {
                fresh.ino == c.ino
                    && fresh.mtime == c.mtime
                    && fresh.mtime_nsec == c.mtime_nsec
                    && fresh.last_use(plan.last_use) == c.last_use
            });
        if !ok {
            if listed.is_some() {
                self.out.changed += 1;
            }
            return None;
        }
        Some(fresh)
    }

    /// Removes the file `check` returned if it is still that inode, unused since;
    /// `listed_alloc`: what a listed file counts as gone with if it vanished meanwhile.
    fn remove(
        &mut self,
        id: [u8; 32],
        suffix: u8,
        fresh: &crate::safefs::Stat,
        listed_alloc: u64,
    ) -> bool {
        let (plan, (_, name)) = (self.plan, names(id, suffix));
        let by = plan.last_use;
        let Some(dir) = self.dir(id) else {
            return false;
        };
        let r = dir.remove_if(&name, fresh, |f| {
            f.last_use(by) == fresh.last_use(by) && f.nlink == 1
        });
        match r {
            Ok(true) => {
                self.out.evicted.add(1, fresh.alloc);
                true
            }
            Ok(false) => {
                self.out.changed += 1;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.out.gone += listed_alloc;
                false
            }
            Err(e) => {
                note_failure(&mut self.out, &rel(id, suffix), "evict", &e);
                false
            }
        }
    }
}

fn rel(id: [u8; 32], suffix: u8) -> PathBuf {
    let (s, n) = names(id, suffix);
    Path::new(crate::safefs::name_os(&s)).join(crate::safefs::name_os(&n))
}

/// A shard beneath the root: a directory of the root's filesystem, not a mount, whose lock
/// nobody holds (tried, never waited for).
fn open_shard(root: &Dir, name: &std::ffi::CStr, out: &mut KnownOutcome) -> Option<Dir> {
    let st = root.stat(name).ok()?;
    if st.kind() != Kind::Dir || st.mount_root || st.dev != root.st.dev {
        return None;
    }
    let dir = root.open_dir(name, &st).ok()?;
    let rel = Path::new(crate::safefs::name_os(name));
    let (path, skipped, ignored) = (&out.path, &mut out.locked_skipped, &mut out.locks_ignored);
    super::may_evict(path, skipped, ignored, &dir, rel).then_some(dir)
}

fn note_failure(out: &mut KnownOutcome, rel: &Path, what: &str, e: &io::Error) {
    let mut tmp = super::CacheOutcome {
        path: out.path.clone(),
        ..Default::default()
    };
    fail(&mut tmp, rel, what, e);
    out.failed.merge(tmp.failed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::oldest::Oldest;
    use std::time::{Duration, SystemTime};

    const DAY: i64 = 86400;

    fn entry(root: &Path, i: u64, suffix: char, bytes: usize, age: i64) -> PathBuf {
        let name = format!("{i:064x}-{suffix}");
        let p = root.join(&name[..2]).join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![1u8; bytes]).unwrap();
        set_age(&p, age);
        p
    }

    fn set_age(p: &Path, age: i64) {
        let t = SystemTime::now() - Duration::from_secs(age as u64);
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn list(paths: &[PathBuf]) -> Vec<Candidate> {
        let mut o = Oldest::new(u64::MAX);
        for p in paths {
            let dir = Dir::open_root(p.parent().unwrap()).unwrap();
            let name = std::ffi::CString::new(p.file_name().unwrap().as_encoded_bytes()).unwrap();
            let st = dir.stat(&name).unwrap();
            o.offer(name.as_bytes(), &st, st.mtime);
        }
        o.into_sorted()
    }

    fn plan(root: &Path, need: u64) -> KnownPlan {
        KnownPlan {
            path: root.to_path_buf(),
            user: None,
            floor_secs: DAY,
            last_use: LastUse::Mtime,
            need,
            now: crate::check::now(),
        }
    }

    /// Oldest first until `need`; a file used again, replaced, given a second name or still
    /// within the floor since it was listed stays; one removed meanwhile counts as gone.
    #[test]
    fn evicts_the_listed_files_oldest_first_and_leaves_what_changed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let files: Vec<PathBuf> = (0..8u64)
            .map(|i| {
                entry(
                    &root,
                    i << 56 | i,
                    if i % 2 == 0 { 'd' } else { 'a' },
                    8192,
                    (20 - i as i64) * DAY,
                )
            })
            .collect();
        let young = entry(&root, 99, 'd', 8192, 3600);
        let mut all = files.clone();
        all.push(young.clone());
        let cands = list(&all);
        assert_eq!(cands.len(), 9);
        // After listing: 1 used again by a build, 2 removed by someone, 3 replaced by another
        // inode of the same age, 4 given a second name.
        set_age(&files[1], 60);
        std::fs::remove_file(&files[2]).unwrap();
        std::fs::remove_file(&files[3]).unwrap();
        std::fs::write(&files[3], vec![2u8; 8192]).unwrap();
        set_age(&files[3], 17 * DAY);
        std::fs::hard_link(&files[4], d.path().join("second-name")).unwrap();

        let out = evict_known(&plan(&root, u64::MAX), &cands, &Default::default());
        assert!(!out.reached, "{out:?}");
        assert_eq!(out.consumed, 9);
        assert_eq!(out.evicted.entries, 4, "{out:?}");
        assert_eq!(
            out.changed, 4,
            "used again, replaced, hardlinked, within the floor: {out:?}"
        );
        assert!(out.gone >= 8192, "{out:?}");
        assert_eq!(out.failed.count, 0);
        for (i, f) in files.iter().enumerate() {
            let kept = matches!(i, 1 | 3 | 4);
            assert_eq!(f.exists(), kept, "file {i}");
        }
        assert!(young.exists(), "within the floor");
    }

    #[test]
    fn stops_once_need_is_freed_and_at_a_symlinked_shard() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let files: Vec<PathBuf> = (0..6u64)
            .map(|i| entry(&root, i, 'd', 8192, (10 + i as i64) * DAY))
            .collect();
        let cands = list(&files);
        // The two oldest are enough.
        let need = 2 * std::fs::metadata(&files[5])
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .unwrap();
        let out = evict_known(&plan(&root, need), &cands, &Default::default());
        assert!(out.reached);
        assert_eq!(out.evicted.entries, 2);
        assert_eq!(out.consumed, 2);
        assert!(!files[5].exists() && !files[4].exists() && files[3].exists());

        // A member swaps the shard for a symlink to a directory holding the same names:
        // nothing is removed through it.
        let outside = d.path().join("outside");
        std::fs::rename(root.join("00"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("00")).unwrap();
        let out = evict_known(&plan(&root, u64::MAX), &cands[2..], &Default::default());
        assert_eq!(out.evicted.entries, 0, "{out:?}");
        for f in &files[..4] {
            assert!(outside.join(f.file_name().unwrap()).exists());
        }
    }

    fn record(root: &Path, action: u64, output: u64, age: i64) -> PathBuf {
        let (a, o) = (format!("{action:064x}"), format!("{output:064x}"));
        let p = root.join(&a[..2]).join(format!("{a}-a"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("v1 {a} {o} {:20} {:20}\n", 8192, 0)).unwrap();
        set_age(&p, age);
        p
    }

    /// An action record takes the output it names along (past the floor by its own last
    /// use, whatever its place in the list), as apply's action phase does; that output,
    /// listed later, is then neither evicted again nor counted as gone. An output within
    /// the floor stays with its record gone.
    #[test]
    fn an_action_record_takes_its_output_along() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let (a1, o1, a2, o2) = (1u64 << 60, 2u64 << 60, 3u64 << 60, 4u64 << 60);
        let r1 = record(&root, a1, o1, 30 * DAY);
        let out1 = entry(&root, o1, 'd', 8192, 2 * DAY);
        let r2 = record(&root, a2, o2, 29 * DAY);
        let out2 = entry(&root, o2, 'd', 8192, 60);
        let cands = list(&[r1.clone(), out1.clone(), r2.clone(), out2.clone()]);
        let mut taken = HashSet::new();
        // Enough for the first record alone: its output goes with it.
        let first = evict_known(&plan(&root, 1), &cands, &taken);
        assert!(first.reached);
        assert_eq!(first.consumed, 1);
        assert_eq!(first.evicted.entries, 2, "{first:?}");
        assert!(!r1.exists() && !out1.exists() && r2.exists());
        taken.extend(first.taken);
        let rest = evict_known(&plan(&root, u64::MAX), &cands[1..], &taken);
        assert_eq!(rest.gone, 0, "o1 went with its record: {rest:?}");
        assert_eq!(rest.evicted.entries, 1, "r2 only: {rest:?}");
        assert!(!r2.exists() && out2.exists(), "o2 is within the floor");
    }
}
