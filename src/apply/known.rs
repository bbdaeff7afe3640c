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
use crate::scan::oldest::Candidate;
use std::collections::HashMap;
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
    /// Shards skipped because someone held their lock.
    pub locked_skipped: u64,
    pub failed: crate::scan::Tally,
    /// `evicted + gone` reached `need`.
    pub reached: bool,
}

/// Evicts from `candidates` (oldest first) as `plan` says. Stops at `need`, at the end of
/// the list, or when the agent is asked to stop.
pub fn evict_known(plan: &KnownPlan, candidates: &[Candidate]) -> KnownOutcome {
    let mut out = KnownOutcome {
        path: plan.path.clone(),
        ..Default::default()
    };
    let opened = match &plan.user {
        Some(u) => crate::users::open_root(&plan.path, u),
        None => Dir::open_root(&plan.path),
    };
    let root = match opened {
        Ok(r) => r,
        Err(e) => {
            note_failure(&mut out, Path::new("."), "open", &e);
            return out;
        }
    };
    let cancel = crate::cancel::Cancel::process();
    // Shard dirs opened (and locked) once each; `None`: locked by someone or unusable.
    let mut shards: HashMap<u8, Option<Dir>> = HashMap::new();
    for c in candidates {
        if out.evicted.bytes.saturating_add(out.gone) >= plan.need {
            out.reached = true;
            break;
        }
        if cancel.is_cancelled() {
            break;
        }
        out.consumed += 1;
        let (shard_name, name) = c.names();
        let shard = shards
            .entry(c.id[0])
            .or_insert_with(|| open_shard(&root, &shard_name, &mut out));
        let Some(dir) = shard else { continue };
        let rel =
            Path::new(crate::safefs::name_os(&shard_name)).join(crate::safefs::name_os(&name));
        let fresh = match dir.stat(&name) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                out.gone += c.alloc;
                continue;
            }
            Err(e) => {
                note_failure(&mut out, &rel, "stat", &e);
                continue;
            }
        };
        let by = plan.last_use;
        let unchanged = |f: &crate::safefs::Stat| {
            f.kind() == Kind::File
                && f.nlink == 1
                && f.dev == root.st.dev
                && f.ino == c.ino
                && f.mtime == c.mtime
                && f.mtime_nsec == c.mtime_nsec
                && f.last_use(by) == c.last_use
                && plan.now - c.last_use >= plan.floor_secs
        };
        if !unchanged(&fresh) {
            out.changed += 1;
            continue;
        }
        match dir.remove_if(&name, &fresh, unchanged) {
            Ok(true) => out.evicted.add(1, fresh.alloc),
            Ok(false) => out.changed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => out.gone += c.alloc,
            Err(e) => note_failure(&mut out, &rel, "evict", &e),
        }
    }
    if out.evicted.bytes.saturating_add(out.gone) >= plan.need {
        out.reached = true;
    }
    out
}

/// A shard beneath the root: a directory of the root's filesystem, not a mount, whose lock
/// nobody holds (tried, never waited for).
fn open_shard(root: &Dir, name: &std::ffi::CStr, out: &mut KnownOutcome) -> Option<Dir> {
    let st = root.stat(name).ok()?;
    if st.kind() != Kind::Dir || st.mount_root || st.dev != root.st.dev {
        return None;
    }
    let dir = root.open_dir(name, &st).ok()?;
    match dir.try_lock() {
        Ok(true) => Some(dir),
        _ => {
            out.locked_skipped += 1;
            None
        }
    }
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

        let out = evict_known(&plan(&root, u64::MAX), &cands);
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
        let out = evict_known(&plan(&root, need), &cands);
        assert!(out.reached);
        assert_eq!(out.evicted.entries, 2);
        assert_eq!(out.consumed, 2);
        assert!(!files[5].exists() && !files[4].exists() && files[3].exists());

        // A member swaps the shard for a symlink to a directory holding the same names:
        // nothing is removed through it.
        let outside = d.path().join("outside");
        std::fs::rename(root.join("00"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("00")).unwrap();
        let out = evict_known(&plan(&root, u64::MAX), &cands[2..]);
        assert_eq!(out.evicted.entries, 0, "{out:?}");
        for f in &files[..4] {
            assert!(outside.join(f.file_name().unwrap()).exists());
        }
    }
}
