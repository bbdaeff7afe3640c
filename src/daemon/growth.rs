//! Growth between sweeps: inotify on each build cache's root and shards, with an estimate of
//! the cache's size kept up to date from the events.
//!
//! The estimate starts from the last sweep's measurement and grows by the allocated size of
//! every file closed after writing or moved in (how `go` adds entries). Deletions are not
//! subtracted (the file is gone before we could stat it), so the estimate only errs high,
//! and the sweep it triggers measures exactly. Lost watches (a shard removed by `go clean
//! -cache`) or a queue overflow ask for a rescan. This is an estimate for *when* to sweep,
//! never an input to *what* to evict.
//!
//! Members of a shared cache can write its root and shards, so everything goes through
//! directory fds ([`crate::safefs`]): the root is opened as the sweep opens it (component by
//! component, see [`crate::safefs::chase`]), shards are found by streaming the root's listing and
//! opened beneath it (no symlink, no mount crossing), watches are added through
//! `/proc/self/fd` (the very inode opened), and a new file is stat'ed beneath the shard it was
//! reported in, reopened by the identity it had when watched. A shard swapped for a symlink
//! (to `/etc`, say) or another directory is never listed or stat'ed through; it only asks for a
//! rescan.

use crate::safefs::{Dir, Kind, Stat};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One watched cache.
#[derive(Debug, Clone)]
pub struct Watched {
    pub path: PathBuf,
    /// Sweep when the estimate passes this (the limit, or the alert threshold if lower).
    pub trigger_bytes: u64,
    pub estimate: u64,
}

/// What the events amounted to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Caches whose estimate crossed their trigger.
    pub crossed: Vec<PathBuf>,
    /// Caches whose watches were lost or changed (a shard removed, replaced or new): measure
    /// them again. Only these: one user renaming a shard of their cache costs a walk of
    /// that cache, not of every cache.
    pub rescan: Vec<PathBuf>,
    /// The kernel dropped events (`IN_Q_OVERFLOW`): no one knows which caches grew, so
    /// measure them all.
    pub overflow: bool,
}

impl Verdict {
    pub fn is_empty(&self) -> bool {
        self.crossed.is_empty() && self.rescan.is_empty() && !self.overflow
    }

    fn rescan(&mut self, path: &Path) {
        if !self.rescan.iter().any(|p| p == path) {
            self.rescan.push(path.to_path_buf());
        }
    }
}

pub struct Growth {
    ino: Inotify,
    caches: Vec<Watched>,
    /// The root of each cache, opened when it was watched (`None`: it could not be).
    roots: Vec<Option<Dir>>,
    /// Watch → (cache index, the shard's name and identity; `None` for the root).
    wds: HashMap<WatchDescriptor, (usize, Option<(CString, Stat)>)>,
}

// No IN_DONT_FOLLOW: watches are added through `/proc/self/fd/N`, a link to follow.
const ROOT_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);
const SHARD_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

impl Growth {
    pub fn new() -> nix::Result<Growth> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Growth {
            ino,
            caches: Vec::new(),
            roots: Vec::new(),
            wds: HashMap::new(),
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ino.as_fd()
    }

    pub fn caches(&self) -> &[Watched] {
        &self.caches
    }

    /// Replaces the watched set (after a sweep or a reload). Returns how many directories
    /// could not be watched.
    pub fn set(&mut self, caches: Vec<Watched>) -> usize {
        let same = caches.len() == self.caches.len()
            && caches
                .iter()
                .zip(&self.caches)
                .all(|(a, b)| a.path == b.path);
        if same && !self.wds.is_empty() {
            // Same caches: keep the watches (re-adding them would queue IN_IGNORED for the
            // old ones), take the new measurements and triggers.
            self.caches = caches;
            return 0;
        }
        for wd in self.wds.keys() {
            let _ = self.ino.rm_watch(*wd);
        }
        self.wds.clear();
        self.roots.clear();
        self.caches = caches;
        let mut failed = 0;
        for i in 0..self.caches.len() {
            let Ok(root) = Dir::open_root(&self.caches[i].path) else {
                self.roots.push(None);
                failed += 1;
                continue;
            };
            if !self.watch(&root, i, None) {
                self.roots.push(None);
                failed += 1;
                continue;
            }
            let mut shards = Vec::new();
            // Streamed: a root that members filled with names costs no memory per name.
            let _ = root.for_each_name(|n| {
                if crate::scan::layout::is_shard(n.to_bytes()) {
                    shards.push(n.to_owned());
                }
            });
            for n in shards {
                if !self.watch_shard(&root, i, &n) {
                    failed += 1;
                }
            }
            self.roots.push(Some(root));
        }
        failed
    }

    /// Watches shard `name` of cache `cache` if it is a directory of the root's filesystem;
    /// false when such a directory could not be watched. Anything else under a shard's name (a
    /// symlink, a file, a mount) is left alone on purpose: the sweep does not enter it either.
    fn watch_shard(&mut self, root: &Dir, cache: usize, name: &CStr) -> bool {
        let Ok(st) = root.stat(name) else {
            return false;
        };
        if st.kind() != Kind::Dir || st.mount_root {
            return true;
        }
        let Ok(shard) = root.open_dir(name, &st) else {
            return false;
        };
        self.watch(&shard, cache, Some((name.to_owned(), st)))
    }

    fn watch(&mut self, dir: &Dir, cache: usize, shard: Option<(CString, Stat)>) -> bool {
        let mask = if shard.is_none() {
            ROOT_MASK
        } else {
            SHARD_MASK
        };
        // The magic link names the inode we opened; following it is the point.
        match self.ino.add_watch(dir.proc_path().as_str(), mask) {
            Ok(wd) => {
                self.wds.insert(wd, (cache, shard));
                true
            }
            Err(_) => false,
        }
    }

    /// Takes new measurements and triggers for some of the watched caches (after a sweep of
    /// those caches only); the watches and the other caches stay as they are.
    pub fn update(&mut self, caches: Vec<Watched>) {
        for w in caches {
            if let Some(c) = self.caches.iter_mut().find(|c| c.path == w.path) {
                *c = w;
            }
        }
    }

    /// A cache's estimate, as it stands.
    pub fn estimate(&self, path: &Path) -> Option<u64> {
        self.caches
            .iter()
            .find(|c| c.path == path)
            .map(|c| c.estimate)
    }

    /// Takes `bytes` a walk-free eviction removed off a cache's estimate; the new estimate.
    /// Writes meanwhile are in it already, so it stays an upper bound of `du`.
    pub fn freed(&mut self, path: &Path, bytes: u64) -> Option<u64> {
        let c = self.caches.iter_mut().find(|c| c.path == path)?;
        c.estimate = c.estimate.saturating_sub(bytes);
        Some(c.estimate)
    }

    /// Resets a cache's estimate to a measured size.
    pub fn measured(&mut self, path: &Path, bytes: u64) {
        if let Some(c) = self.caches.iter_mut().find(|c| c.path == path) {
            c.estimate = bytes;
        }
    }

    /// Reads whatever events are queued and updates the estimates.
    pub fn drain(&mut self) -> Verdict {
        let mut v = Verdict::default();
        loop {
            let events = match self.ino.read_events() {
                Ok(e) if !e.is_empty() => e,
                _ => break,
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    v.overflow = true;
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // A watch we still hold went away (its directory was removed): measure
                    // that cache again. Watches we removed ourselves are no longer in the map.
                    if let Some((cache, _)) = self.wds.remove(&ev.wd)
                        && let Some(c) = self.caches.get(cache)
                    {
                        v.rescan(&c.path);
                    }
                    continue;
                }
                let Some((cache, shard)) = self.wds.get(&ev.wd).cloned() else {
                    continue;
                };
                if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                {
                    v.rescan(&self.caches[cache].path);
                    continue;
                }
                let Some(name) = ev.name.as_ref() else {
                    continue;
                };
                let Ok(name) = CString::new(name.as_bytes()) else {
                    continue;
                };
                let Some((shard_name, shard_st)) = shard else {
                    // A new shard (go creates all 256 on each run; after `go clean -cache`
                    // they come back one by one): watch it too.
                    if crate::scan::layout::is_shard(name.to_bytes()) {
                        if let Some(root) = self.roots.get_mut(cache).and_then(Option::take) {
                            self.watch_shard(&root, cache, &name);
                            self.roots[cache] = Some(root);
                        }
                        // Entries written into it before the watch took hold were not seen
                        // (a restore with `cp -a` creates shards and fills them at once):
                        // measure again.
                        v.rescan(&self.caches[cache].path);
                    }
                    continue;
                };
                if !ev
                    .mask
                    .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO)
                {
                    continue;
                }
                let Some(Some(root)) = self.roots.get(cache) else {
                    continue;
                };
                // The shard as it was watched, beneath the root: renamed, replaced or turned
                // into a symlink, it is not followed, its watch is dropped (a directory moved
                // back under the name is watched when the root reports it), and a sweep
                // measures.
                let Ok(dir) = root.open_dir(&shard_name, &shard_st) else {
                    let _ = self.ino.rm_watch(ev.wd);
                    self.wds.remove(&ev.wd);
                    v.rescan(&self.caches[cache].path);
                    continue;
                };
                if let Ok(st) = dir.stat(&name) {
                    let c = &mut self.caches[cache];
                    c.estimate += st.alloc;
                    // Any growth above the trigger counts, not only the upward crossing: a
                    // cache left above it (entries within min_age, a sweep that saw a copy
                    // half done) must not grow unseen until the next tick. The daemon spaces
                    // growth-triggered sweeps out.
                    if c.estimate > c.trigger_bytes && !v.crossed.contains(&c.path) {
                        v.crossed.push(c.path.clone());
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, bytes: usize) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(&vec![7u8; bytes]).unwrap();
        f.sync_all().unwrap();
    }

    /// A member swaps a watched shard for a symlink to a directory outside the cache (as
    /// `/etc` would be): files reported in the shard are never stat'ed through the link, and
    /// a symlinked shard is never watched.
    #[test]
    fn a_shard_swapped_for_a_symlink_leads_nowhere() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("cache");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(root.join("00")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("01")).unwrap();
        write(&outside.join("x"), 1 << 20);

        let mut g = Growth::new().unwrap();
        let failed = g.set(vec![Watched {
            path: root.clone(),
            trigger_bytes: u64::MAX,
            estimate: 0,
        }]);
        assert_eq!(
            failed, 0,
            "the symlinked shard 01 is skipped, not a failure"
        );
        // Through the watched shard: counted.
        write(&root.join("00/a"), 8192);
        let v = g.drain();
        assert!(v.rescan.is_empty());
        let grown = g.caches()[0].estimate;
        assert!((8192..1 << 20).contains(&grown), "{grown}");
        // Into the symlinked shard (the outside directory): nothing is watched there.
        write(&outside.join("y"), 1 << 20);
        g.drain();
        assert_eq!(g.caches()[0].estimate, grown);

        // The member moves 00 away, links 00 to the outside and writes `x` into the moved
        // shard, whose watch still reports it as 00/x.
        std::fs::rename(root.join("00"), root.join("00.old")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("00")).unwrap();
        write(&root.join("00.old/x"), 4096);
        let v = g.drain();
        assert_eq!(
            v.rescan,
            std::slice::from_ref(&root),
            "a replaced shard asks for a measurement of its cache"
        );
        assert_eq!(
            g.caches()[0].estimate,
            grown,
            "outside/x (1 MiB) was stat'ed through the symlink"
        );
    }
}
