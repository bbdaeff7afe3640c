//! Growth between sweeps: inotify on each build cache's root and shards, with an estimate of
//! the cache's size kept up to date from the events.
//!
//! The estimate starts from the last sweep's measurement and grows by the allocated size of
//! every file closed after writing or moved in (how `go` adds entries). Deletions are not
//! subtracted (the file is gone before we could stat it), so the estimate only errs high,
//! and the sweep it triggers measures exactly. Lost watches (a shard removed by `go clean
//! -cache`) or a queue overflow ask for a rescan. This is an estimate for *when* to sweep,
//! never an input to *what* to evict.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
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
    /// Caches (by index) whose estimate crossed their trigger.
    pub crossed: Vec<usize>,
    /// Watches were lost or events dropped: measure again.
    pub rescan: bool,
}

pub struct Growth {
    ino: Inotify,
    caches: Vec<Watched>,
    /// Watch → (cache index, is the root).
    wds: HashMap<WatchDescriptor, (usize, bool)>,
    /// Watch → directory path, to stat new entries.
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

const ROOT_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR)
    .union(AddWatchFlags::IN_DONT_FOLLOW);
const SHARD_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR)
    .union(AddWatchFlags::IN_DONT_FOLLOW);

impl Growth {
    pub fn new() -> nix::Result<Growth> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Growth {
            ino,
            caches: Vec::new(),
            wds: HashMap::new(),
            dirs: HashMap::new(),
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
        self.dirs.clear();
        self.caches = caches;
        let mut failed = 0;
        for i in 0..self.caches.len() {
            let root = self.caches[i].path.clone();
            if !self.watch(&root, i, true) {
                failed += 1;
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&root) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    if crate::scan::layout::is_shard(n.as_bytes())
                        && e.file_type().is_ok_and(|t| t.is_dir())
                        && !self.watch(&e.path(), i, false)
                    {
                        failed += 1;
                    }
                }
            }
        }
        failed
    }

    fn watch(&mut self, dir: &Path, cache: usize, root: bool) -> bool {
        match self
            .ino
            .add_watch(dir, if root { ROOT_MASK } else { SHARD_MASK })
        {
            Ok(wd) => {
                self.wds.insert(wd, (cache, root));
                self.dirs.insert(wd, dir.to_path_buf());
                true
            }
            Err(_) => false,
        }
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
                    v.rescan = true;
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // A watch we still hold went away (its directory was removed): measure
                    // again. Watches we removed ourselves are no longer in the map.
                    if self.wds.remove(&ev.wd).is_some() {
                        self.dirs.remove(&ev.wd);
                        v.rescan = true;
                    }
                    continue;
                }
                let Some(&(cache, is_root)) = self.wds.get(&ev.wd) else {
                    continue;
                };
                if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                {
                    v.rescan = true;
                    continue;
                }
                let Some(name) = ev.name.as_ref() else {
                    continue;
                };
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                let path = dir.join(name);
                if is_root {
                    // A new shard (go creates all 256 on each run; after `go clean -cache`
                    // they come back one by one): watch it too.
                    if crate::scan::layout::is_shard(name.as_bytes()) {
                        self.watch(&path, cache, false);
                        // Entries written into it before the watch took hold were not seen
                        // (a restore with `cp -a` creates shards and fills them at once):
                        // measure again.
                        v.rescan = true;
                    }
                    continue;
                }
                if ev
                    .mask
                    .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO)
                    && let Ok(md) = std::fs::symlink_metadata(&path)
                {
                    use std::os::unix::fs::MetadataExt;
                    let c = &mut self.caches[cache];
                    c.estimate += md.blocks() * 512;
                    // Any growth above the trigger counts, not only the upward crossing: a
                    // cache left above it (entries within min_age, a sweep that saw a copy
                    // half done) must not grow unseen until the next tick. The daemon spaces
                    // growth-triggered sweeps out.
                    if c.estimate > c.trigger_bytes && !v.crossed.contains(&cache) {
                        v.crossed.push(cache);
                    }
                }
            }
        }
        v
    }
}
