//! A parallel, fd-based walk of one cache.
//!
//! The root's children are shared out among threads (a Go build cache has 256 shards, so all
//! threads stay busy; there are more threads than cores because a cold walk waits on the
//! disk); each thread descends depth-first through [`Dir`] handles. Symlinks are
//! reported, never followed; mount points (bind mounts of the same filesystem included) are
//! reported, never entered; anything that vanishes mid-walk (go's own trim, a concurrent
//! `go clean`) is silently passed over. Visitors see files as they come, directories before
//! (`enter`) and after (`leave`) their children, so fixes can run children-first.

use crate::safefs::{Dir, Kind, Stat};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// One entry seen by the walk.
pub struct Entry<'a> {
    /// The directory holding the entry; `None` for the cache root itself.
    pub parent: Option<&'a Dir>,
    pub name: &'a CStr,
    pub st: &'a Stat,
    /// 0 for the root, 1 for its children (the shards), and so on.
    pub depth: usize,
    /// Names of the directories from the root (exclusive) down to the parent.
    pub stack: &'a [CString],
}

impl Entry<'_> {
    /// Path relative to the cache root (`.` for the root).
    pub fn rel(&self) -> PathBuf {
        if self.parent.is_none() {
            return PathBuf::from(".");
        }
        let mut p = PathBuf::new();
        for s in self.stack {
            p.push(OsStr::from_bytes(s.to_bytes()));
        }
        p.push(OsStr::from_bytes(self.name.to_bytes()));
        p
    }

    /// The name of the shard (first-level directory) this entry is in, if any.
    pub fn shard(&self) -> Option<&CStr> {
        self.stack.first().map(CString::as_c_str)
    }
}

/// Why a directory was not walked into.
#[derive(Debug)]
pub enum Skip {
    Mount,
    TooDeep,
    Unreadable(io::Error),
}

pub trait Visit {
    /// Whether to look at child `name` at `depth` at all (before any syscall on it); lets a
    /// pass that needs only some entries skip the `statx` of the rest.
    fn wants(&self, _depth: usize, _name: &CStr) -> bool {
        true
    }
    /// Every non-directory: regular files, symlinks, FIFOs, sockets, devices.
    fn file(&mut self, e: &Entry);
    /// A directory before its children; `false` skips them.
    fn enter(&mut self, _e: &Entry, _dir: &Dir) -> bool {
        true
    }
    /// A directory after its children, with its still-open handle.
    fn leave(&mut self, _e: &Entry, _dir: &Dir) {}
    /// A directory that was not walked into.
    fn skipped(&mut self, _e: &Entry, _why: &Skip) {}
    /// An entry that could not be examined at all.
    fn error(&mut self, _rel: PathBuf, _err: &io::Error) {}
}

#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub threads: usize,
    pub max_depth: usize,
    /// Stops the walk at the next entry once cancelled (and any failpoint pause in it).
    pub cancel: crate::cancel::Cancel,
}

impl Default for WalkOptions {
    fn default() -> Self {
        // A walk over a cold cache waits on the disk, not the CPU: more threads than cores
        // keep more metadata reads and unlinks in flight. Measured on 2 cores with 400k files
        // (benches/): eviction 27 s with 2 threads, 19 s with 8, no better with 16; a warm
        // `check` is the same at 2, 8 and 16.
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .saturating_mul(4)
            .clamp(4, 16);
        WalkOptions {
            threads,
            max_depth: 1024,
            cancel: crate::cancel::Cancel::process(),
        }
    }
}

/// Root children a walking thread takes at a time.
const ROOT_BATCH: usize = 4;
/// Stack of each walking thread.
const WORKER_STACK: usize = 8 << 20;
/// How deep a walk goes on the caller's own stack when no thread could be started.
const INLINE_DEPTH: usize = 64;

/// Whether the process token (every walk's default, cancelled on SIGTERM) is cancelled:
/// `Cancel::process().is_cancelled()`, for loops that are not walks.
pub fn stop_requested() -> bool {
    crate::cancel::Cancel::process().is_cancelled()
}

fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Walks `root`. `make` builds one visitor per thread (the first one also sees the root);
/// the visitors are returned for the caller to merge.
pub fn walk<V, F>(root: &Dir, opts: WalkOptions, make: F) -> Vec<V>
where
    V: Visit + Send,
    F: Fn() -> V + Sync,
{
    let mut first = make();
    let root_entry = Entry {
        parent: None,
        name: c".",
        st: &root.st,
        depth: 0,
        stack: &[],
    };
    if !first.enter(&root_entry, root) {
        return vec![first];
    }
    // The root's children are handed out a few at a time from one streamed listing: members
    // can put any number of names in the root, and none of them is held longer than needed.
    let listing = match root.listing() {
        Ok(l) => std::sync::Mutex::new(l),
        Err(e) => {
            first.skipped(&root_entry, &Skip::Unreadable(e));
            return vec![first];
        }
    };
    let take = |batch: &mut Vec<CString>| -> io::Result<()> {
        let mut l = listing
            .lock()
            .map_err(|_| io::Error::other("listing lock poisoned"))?;
        l.next_batch(ROOT_BATCH, batch)
    };
    let work = |v: &mut V| {
        let mut stack = Vec::new();
        let mut batch = Vec::new();
        while !opts.cancel.is_cancelled() {
            if let Err(e) = take(&mut batch) {
                v.error(PathBuf::from("."), &e);
                break;
            }
            if batch.is_empty() {
                break;
            }
            for n in &batch {
                visit_child(v, root, n, &mut stack, 1, &opts);
            }
        }
    };
    let mut out = Vec::with_capacity(opts.threads);
    // Every descent runs on a thread of ours with a known stack, never on the caller's: the
    // daemon calls this from a 2 MiB tokio blocking thread, and users choose how deep the
    // trees under fuzz/ and the shards go (up to `max_depth` frames).
    let spawn = || {
        std::thread::Builder::new()
            // Deep trees recurse; give them room (1024 levels × about 1 KiB in a debug build).
            .stack_size(WORKER_STACK)
    };
    let mut inline = false;
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..opts.threads.max(1))
            .map(|_| {
                spawn().spawn_scoped(s, || {
                    let mut v = make();
                    work(&mut v);
                    v
                })
            })
            .collect();
        let first_ref = &mut first;
        match spawn().spawn_scoped(s, || work(first_ref)) {
            Ok(h) => {
                if let Err(p) = h.join() {
                    std::panic::resume_unwind(p)
                }
            }
            Err(_) => inline = true,
        }
        // A thread that could not start left its share to the others.
        for h in handles.into_iter().flatten() {
            match h.join() {
                Ok(v) => out.push(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    if inline {
        // Not even that thread started: what is left is walked here, but only as deep as any
        // stack allows (deeper directories are reported as too deep).
        let mut stack = Vec::new();
        let mut batch = Vec::new();
        let shallow = WalkOptions {
            max_depth: opts.max_depth.min(INLINE_DEPTH),
            ..opts.clone()
        };
        while !opts.cancel.is_cancelled() && take(&mut batch).is_ok() && !batch.is_empty() {
            for n in &batch {
                visit_child(&mut first, root, n, &mut stack, 1, &shallow);
            }
        }
    }
    first.leave(&root_entry, root);
    out.insert(0, first);
    out
}

fn visit_child<V: Visit>(
    v: &mut V,
    parent: &Dir,
    name: &CStr,
    stack: &mut Vec<CString>,
    depth: usize,
    opts: &WalkOptions,
) {
    if !v.wants(depth, name) {
        return;
    }
    let st = match parent.stat(name) {
        Ok(s) => s,
        Err(e) if vanished(&e) => return,
        Err(e) => {
            let e2 = Entry {
                parent: Some(parent),
                name,
                st: &Stat::default(),
                depth,
                stack,
            };
            v.error(e2.rel(), &e);
            return;
        }
    };
    let e = Entry {
        parent: Some(parent),
        name,
        st: &st,
        depth,
        stack,
    };
    // Before anything else: a file can be a mount point too (a bind mount of one file).
    if st.mount_root || st.dev != parent.st.dev {
        v.skipped(&e, &Skip::Mount);
        return;
    }
    if st.kind() != Kind::Dir {
        v.file(&e);
        return;
    }
    if depth >= opts.max_depth {
        v.skipped(&e, &Skip::TooDeep);
        return;
    }
    if crate::failpoint::active() {
        crate::failpoint::pause("walk-open", &e.rel(), &opts.cancel);
    }
    crate::progress::tick();
    let dir = match parent.open_dir(name, &st) {
        Ok(d) => d,
        Err(err) if vanished(&err) => return,
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            v.skipped(&e, &Skip::Mount);
            return;
        }
        Err(err) => {
            v.skipped(&e, &Skip::Unreadable(err));
            return;
        }
    };
    if !v.enter(&e, &dir) {
        return;
    }
    // Streamed in batches: a shard with millions of names costs one batch of memory, and a
    // directory that fits in one batch holds no listing fd while its children are visited.
    let mut listing = match dir.listing() {
        Ok(l) => l,
        Err(err) => {
            v.skipped(&e, &Skip::Unreadable(err));
            return;
        }
    };
    let mut batch = Vec::new();
    stack.push(name.to_owned());
    'listing: loop {
        if let Err(err) = listing.next_batch(crate::safefs::LIST_BATCH, &mut batch) {
            let mut rel = PathBuf::new();
            for s in stack.iter() {
                rel.push(OsStr::from_bytes(s.to_bytes()));
            }
            v.error(rel, &err);
            break;
        }
        if batch.is_empty() {
            break;
        }
        crate::progress::tick();
        for n in &batch {
            if opts.cancel.is_cancelled() {
                break 'listing;
            }
            visit_child(v, &dir, n, stack, depth + 1, opts);
        }
    }
    let name = stack.pop().unwrap_or_default();
    let e = Entry {
        parent: Some(parent),
        name: &name,
        st: &st,
        depth,
        stack,
    };
    v.leave(&e, &dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A walk stops at the next entry once its own token is cancelled, and nothing else's
    /// token stops it: the process token is untouched here.
    #[test]
    fn a_walk_stops_when_its_token_is_cancelled() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("00")).unwrap();
        for i in 0..50 {
            std::fs::write(t.path().join("00").join(i.to_string()), "x").unwrap();
        }
        struct StopAfterOne(usize, crate::cancel::Cancel);
        impl Visit for StopAfterOne {
            fn file(&mut self, _e: &Entry) {
                self.0 += 1;
                self.1.cancel();
            }
        }
        let root = Dir::open_root(t.path()).unwrap();
        let cancel = crate::cancel::Cancel::new();
        let opts = WalkOptions {
            threads: 1,
            max_depth: 8,
            cancel: cancel.clone(),
        };
        let seen: usize = walk(&root, opts, || StopAfterOne(0, cancel.clone()))
            .iter()
            .map(|v| v.0)
            .sum();
        assert_eq!(seen, 1);
        assert!(!crate::cancel::Cancel::process().is_cancelled());
        let fresh = WalkOptions {
            cancel: crate::cancel::Cancel::new(),
            ..WalkOptions::default()
        };
        let seen: usize = walk(&root, fresh, || {
            StopAfterOne(0, crate::cancel::Cancel::new())
        })
        .iter()
        .map(|v| v.0)
        .sum();
        assert_eq!(seen, 50);
    }

    /// A member can make a chain as deep as they like under fuzz/; the daemon's first walk is
    /// called from a 2 MiB tokio blocking thread. Called from a 1 MiB thread (a debug build
    /// needs more than that for 1000 levels), the walk still reaches the bottom.
    #[test]
    fn a_thousand_deep_chain_does_not_need_the_callers_stack() {
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::{Mode, mkdirat};
        let t = tempfile::tempdir().unwrap();
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let mut fd = nix::fcntl::open(t.path(), flags, Mode::empty()).unwrap();
        for _ in 0..1000 {
            mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).unwrap();
            fd = openat(&fd, "d", flags, Mode::empty()).unwrap();
        }
        struct Deepest(usize);
        impl Visit for Deepest {
            fn file(&mut self, _e: &Entry) {}
            fn enter(&mut self, e: &Entry, _d: &Dir) -> bool {
                self.0 = self.0.max(e.depth);
                true
            }
        }
        let root = Dir::open_root(t.path()).unwrap();
        let opts = WalkOptions {
            threads: 1,
            max_depth: 1024,
            cancel: crate::cancel::Cancel::new(),
        };
        let deepest = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || walk(&root, opts, || Deepest(0))[0].0)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(deepest, 1000);
    }

    /// A walk with openat2 unavailable still refuses symlinks (to a directory or a file) and
    /// sees every real entry.
    #[test]
    fn walk_with_the_fallback_forced_refuses_symlinks() {
        struct Seen(Vec<(PathBuf, Kind)>, Vec<PathBuf>);
        impl Visit for Seen {
            fn file(&mut self, e: &Entry) {
                self.0.push((e.rel(), e.st.kind()));
                if e.st.kind() == crate::safefs::Kind::File
                    && let Some(p) = e.parent
                {
                    let b = p.read_small(e.name, e.st, 64).unwrap();
                    assert_eq!(b, b"data");
                }
            }
            fn enter(&mut self, e: &Entry, _d: &Dir) -> bool {
                self.1.push(e.rel());
                true
            }
        }
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "data").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("00/sub")).unwrap();
        std::fs::write(root.join("00/sub/f"), "data").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("00/dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root.join("00/filelink")).unwrap();

        crate::safefs::tests::FORCE_FALLBACK.store(true, std::sync::atomic::Ordering::Relaxed);
        let dir = Dir::open_root(&root).unwrap();
        let seen = walk(&dir, Default::default(), || Seen(Vec::new(), Vec::new()));
        // The fallback refuses a symlink swapped in where a directory was listed.
        let sub = dir.open_dir(c"00", &dir.stat(c"00").unwrap()).unwrap();
        let listed = sub.stat(c"sub").unwrap();
        std::fs::remove_file(root.join("00/sub/f")).unwrap();
        std::fs::remove_dir(root.join("00/sub")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("00/sub")).unwrap();
        let swapped = sub.open_dir(c"sub", &listed).unwrap_err();
        let created = sub.create_file(c"new", 0o600);
        crate::safefs::tests::FORCE_FALLBACK.store(false, std::sync::atomic::Ordering::Relaxed);

        let mut files: Vec<_> = seen.iter().flat_map(|s| s.0.clone()).collect();
        files.sort();
        assert_eq!(
            files,
            [
                (PathBuf::from("00/dirlink"), crate::safefs::Kind::Symlink),
                (PathBuf::from("00/filelink"), crate::safefs::Kind::Symlink),
                (PathBuf::from("00/sub/f"), crate::safefs::Kind::File),
            ]
        );
        let mut dirs: Vec<_> = seen.iter().flat_map(|s| s.1.clone()).collect();
        dirs.sort();
        assert_eq!(dirs, [".", "00", "00/sub"].map(PathBuf::from));
        assert!(
            matches!(swapped.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{swapped}"
        );
        assert!(created.is_ok());
        assert!(root.join("00/new").is_file());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }
}
