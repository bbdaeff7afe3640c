//! The watcher thread: marks each cache's shard directories, reads the group's events,
//! resolves each to a cache and a writer, and hands the daemon a [`Batch`] a second while
//! writes come in (and sleeps without a timer while none do).
//!
//! Users hold a hand in every step, so: a shard is opened beneath the cache root as the sweep
//! opens it (`safefs`: no symlink, no mount crossing) and marked through that descriptor; an
//! event's directory is matched by file handle against the shards marked at the last sync,
//! never by a path; the written file is `statx`ed beneath its shard, re-opened by the
//! identity it had when marked, and never opened itself. A shard renamed out of its cache
//! still has its mark, but no longer its key after the next sync, so its events are dropped.

use super::fanotify::{self, DirKey, Event, Group};
use super::{Batch, FOREIGN_PER_MINUTE, Foreign, MAX_CMDLINE, ProcInfo, Spec, Writers, Written};
use crate::cacheprog::store::Trust;
use crate::safefs::{Dir, Kind, Stat};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How often the thread hands over what it saw while writes come in. With nothing counted
/// and nothing due, it sleeps in `poll` without a timeout: an idle server's agent has no
/// wakeups of its own (a 1 s timer here was 60 context switches in a quiet minute).
const FLUSH: Duration = Duration::from_secs(1);
/// What `/proc` said of a pid is reused this long: a build writes thousands of files.
const PROC_TTL: Duration = Duration::from_secs(5);
/// A writer gone by the time its last events are read (`go` exits right after its last
/// write) keeps what `/proc` said of it this long. Pids are reused only after the kernel
/// has gone round `pid_max` (4 million by default), not within a minute.
const PROC_KEEP: Duration = Duration::from_secs(60);
/// Shard descriptors kept open between events (the rest are opened per event).
const OPEN_SHARDS: usize = 512;

/// The running watcher; stops when dropped (the drop wakes the thread).
pub struct Watcher {
    tx: mpsc::Sender<(Vec<Spec>, bool)>,
    /// A byte written here wakes the thread out of its wait for events: new caches are
    /// marked at once, not after the wait (writes in between would go unseen).
    wake: std::os::unix::net::UnixStream,
    stop: Arc<AtomicBool>,
    pub mode: fanotify::Mode,
}

impl Watcher {
    /// Marks these caches (again); with `all`, forgets the caches not among them.
    pub fn watch(&self, specs: Vec<Spec>, all: bool) {
        let _ = self.tx.send((specs, all));
        self.wake();
    }

    fn wake(&self) {
        use std::io::Write;
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
    }
}

/// Starts the thread on `group`; each batch goes to `sink`, on that thread.
pub fn start(group: Group, sink: impl Fn(Batch) + Send + 'static) -> std::io::Result<Watcher> {
    let (tx, rx) = mpsc::channel();
    let (wake, woken) = std::os::unix::net::UnixStream::pair()?;
    // Never block the daemon's loop: a full buffer already means "wake up".
    wake.set_nonblocking(true)?;
    woken.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mode = group.mode;
    let stopping = stop.clone();
    std::thread::Builder::new()
        .name("writers".into())
        .spawn(move || {
            let mut w = State::new(group, woken);
            let mut last_write: Option<Instant> = None;
            while !stopping.load(Ordering::Relaxed) {
                while let Ok((specs, all)) = rx.try_recv() {
                    w.sync(specs, all);
                }
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                w.wait_and_read(w.deadline(last_write));
                if w.since_flush.elapsed() >= FLUSH {
                    let mut b = w.flush();
                    if !b.is_empty() {
                        last_write = Some(Instant::now());
                    } else if last_write.is_some_and(|t| t.elapsed() >= super::QUIET) {
                        last_write = None;
                        b.quiet = true;
                    }
                    if !b.is_empty() {
                        sink(b);
                    }
                }
            }
        })?;
    Ok(Watcher {
        tx,
        wake,
        stop,
        mode,
    })
}

struct Cache {
    root: Dir,
    /// Whose files are not foreign.
    trust: Trust,
}

/// A marked shard: its cache, name and identity.
struct Shard {
    cache: PathBuf,
    name: CString,
    st: Stat,
}

struct State {
    group: Group,
    woken: std::os::unix::net::UnixStream,
    caches: HashMap<PathBuf, Cache>,
    shards: HashMap<DirKey, Shard>,
    open: HashMap<DirKey, Dir>,
    /// What `/proc` said of each writer, and when it last said it.
    procs: HashMap<i32, (Instant, ProcInfo)>,
    /// Caches said once to be unattributable (and why), so a sync does not repeat it.
    told: HashMap<PathBuf, String>,
    /// Bytes and entries per (cache, owner uid, unit) since the last batch: the uid is
    /// named once per batch, not once per file (a name lookup may go to NSS).
    totals: BTreeMap<(PathBuf, u32, String), (u64, u64)>,
    foreign: Vec<Foreign>,
    /// Foreign entries per (cache, pid) this minute.
    foreign_count: HashMap<(PathBuf, i32), u64>,
    minute: Instant,
    lost: bool,
    since_flush: Instant,
    buf: Vec<u8>,
    events: Vec<Event>,
}

impl State {
    fn new(group: Group, woken: std::os::unix::net::UnixStream) -> State {
        State {
            group,
            woken,
            caches: HashMap::new(),
            shards: HashMap::new(),
            open: HashMap::new(),
            procs: HashMap::new(),
            told: HashMap::new(),
            totals: BTreeMap::new(),
            foreign: Vec::new(),
            foreign_count: HashMap::new(),
            minute: Instant::now(),
            lost: false,
            since_flush: Instant::now(),
            buf: vec![0; 64 << 10],
            events: Vec::new(),
        }
    }

    fn sync(&mut self, specs: Vec<Spec>, all: bool) {
        if all {
            self.caches
                .retain(|p, _| specs.iter().any(|s| &s.path == p));
        }
        // Each synced cache's shards are found again: one pass over the map for all of them.
        let synced: std::collections::HashSet<&PathBuf> = specs.iter().map(|s| &s.path).collect();
        self.shards.retain(|_, sh| !synced.contains(&sh.cache));
        for s in specs {
            let known = self.caches.remove(&s.path).is_some();
            match self.mark(&s, known) {
                Ok(c) => {
                    self.told.remove(&s.path);
                    self.caches.insert(s.path, c);
                }
                // Not there (yet): go creates it at its first build, and the sweep that
                // follows finds it. Nothing to say.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.told.remove(&s.path);
                }
                Err(e) => {
                    let why = e.to_string();
                    if self.told.get(&s.path) != Some(&why) {
                        tracing::warn!(
                            cache = %s.path.display(),
                            "writes into {} are not attributed: {why}",
                            s.path.display()
                        );
                        self.told.insert(s.path, why);
                    }
                }
            }
        }
        let caches = &self.caches;
        self.shards.retain(|_, s| caches.contains_key(&s.cache));
        self.open.retain(|k, _| self.shards.contains_key(k));
    }

    /// Marks every shard of one cache (`known`: marked before); the cache with whom it
    /// trusts.
    fn mark(&mut self, s: &Spec, known: bool) -> std::io::Result<Cache> {
        let root = Dir::open_root(&s.path)?;
        let trust = trust(&s.writers, root.st.uid);
        let mut marked = 0;
        for name in root.list()? {
            let n = name.as_bytes();
            if n.len() != 2 || !n.iter().all(u8::is_ascii_hexdigit) {
                continue;
            }
            let Ok(st) = root.stat(&name) else { continue };
            if st.kind() != Kind::Dir || st.mount_root {
                continue;
            }
            let Ok(d) = root.open_dir(&name, &st) else {
                continue;
            };
            self.group.mark_dir(d.as_fd())?;
            let key = fanotify::dir_key(d.as_fd())?;
            self.shards.insert(
                key,
                Shard {
                    cache: s.path.clone(),
                    name,
                    st,
                },
            );
            marked += 1;
        }
        if known {
            tracing::debug!(cache = %s.path.display(), shards = marked, "marked again");
        } else {
            tracing::info!(
                cache = %s.path.display(),
                "writes into {} are attributed ({marked} shards)",
                s.path.display()
            );
        }
        Ok(Cache { root, trust })
    }

    /// When the thread must wake with no event: to hand over what it counted, to send the
    /// `quiet` batch after the last write, or to say how many foreign entries went unlogged
    /// this minute. `None`: nothing is due, wait for an event (or a sync, or the drop).
    fn deadline(&self, last_write: Option<Instant>) -> Option<Instant> {
        if !self.totals.is_empty() || !self.foreign.is_empty() || self.lost {
            return Some(self.since_flush + FLUSH);
        }
        let unlogged = self.foreign_count.values().any(|n| *n > FOREIGN_PER_MINUTE);
        let minute_end = unlogged.then(|| self.minute + Duration::from_secs(60));
        let quiet = last_write.map(|t| t + super::QUIET);
        let due = minute_end.into_iter().chain(quiet).min();
        // Batches go at most once a second (the loop flushes only then): waking earlier
        // would spin until that second is up.
        due.map(|at| at.max(self.since_flush + FLUSH))
    }

    fn wait_and_read(&mut self, deadline: Option<Instant>) {
        use std::os::fd::AsFd;
        let mut fds = [
            nix::poll::PollFd::new(self.group.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(self.woken.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        let timeout = match deadline {
            // Rounded up: a wait cut short by rounding would wake once more for nothing.
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                let ms = left.as_micros().div_ceil(1000);
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX)
            }
            None => nix::poll::PollTimeout::NONE,
        };
        if !matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0) {
            return;
        }
        if fds[1].any() == Some(true) {
            use std::io::Read;
            let mut drain = [0u8; 64];
            while matches!((&self.woken).read(&mut drain), Ok(n) if n > 0) {}
        }
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.group.read(&mut self.buf, &mut events) {
            tracing::warn!("cannot read write events: {e}");
            std::thread::sleep(FLUSH);
        }
        for e in events.drain(..) {
            match e {
                Event::Overflow => self.lost = true,
                Event::ClosedWrite { dir, name, pid } => self.written(&dir, name, pid),
            }
        }
        self.events = events;
    }

    fn written(&mut self, dir: &DirKey, name: Vec<u8>, pid: i32) {
        let Some(shard) = self.shards.get(dir) else {
            return;
        };
        let Some(cache) = self.caches.get(&shard.cache) else {
            return;
        };
        if !self.open.contains_key(dir) {
            if self.open.len() >= OPEN_SHARDS {
                self.open.clear();
            }
            match cache.root.open_dir(&shard.name, &shard.st) {
                Ok(d) => {
                    self.open.insert(dir.clone(), d);
                }
                Err(_) => return,
            }
        }
        let (Some(d), Ok(cname)) = (self.open.get(dir), CString::new(name)) else {
            return;
        };
        // Gone already (trimmed, or a temp file renamed): nothing stays in the cache.
        let Ok(st) = d.stat(&cname) else { return };
        if st.kind() != Kind::File {
            return;
        }
        let cache_path = shard.cache.clone();
        let is_entry = cname.as_bytes().ends_with(b"-a");
        let foreign = !cache.trust.allows(st.uid);
        // The entry is named only in a foreign-write line: no string per file otherwise.
        let shard_name = foreign.then(|| shard.name.to_string_lossy().into_owned());
        let proc = self.proc_info(pid);
        let unit = proc.as_ref().map(|p| p.unit.clone()).unwrap_or_default();
        let t = self
            .totals
            .entry((cache_path.clone(), st.uid, unit))
            .or_default();
        t.0 += st.alloc;
        t.1 += u64::from(is_entry);
        if foreign {
            if self.minute.elapsed() >= Duration::from_secs(60) {
                self.minute = Instant::now();
                self.foreign_count.clear();
            }
            let n = self
                .foreign_count
                .entry((cache_path.clone(), pid))
                .or_default();
            *n += 1;
            if *n <= FOREIGN_PER_MINUTE {
                let entry = format!(
                    "{}/{}",
                    shard_name.unwrap_or_default(),
                    cname.to_string_lossy()
                );
                self.foreign.push(Foreign {
                    cache: cache_path,
                    entry,
                    owner_uid: st.uid,
                    pid,
                    proc,
                    more: 0,
                });
            }
        }
    }

    /// What `/proc` says of `pid`, read again after a few seconds; once the process is
    /// gone, what it said last (`None`: never seen while it ran).
    fn proc_info(&mut self, pid: i32) -> Option<ProcInfo> {
        if pid <= 0 {
            return None;
        }
        if let Some((at, p)) = self.procs.get(&pid)
            && at.elapsed() < PROC_TTL
        {
            return Some(p.clone());
        }
        if self.procs.len() > 4096 {
            self.procs.retain(|_, (at, _)| at.elapsed() < PROC_KEEP);
        }
        match read_proc(pid) {
            Some(p) => {
                self.procs.insert(pid, (Instant::now(), p.clone()));
                Some(p)
            }
            None => self
                .procs
                .get(&pid)
                .filter(|(at, _)| at.elapsed() < PROC_KEEP)
                .map(|(_, p)| p.clone()),
        }
    }

    fn flush(&mut self) -> Batch {
        self.since_flush = Instant::now();
        let written = std::mem::take(&mut self.totals)
            .into_iter()
            .map(|((cache, uid, unit), (bytes, entries))| Written {
                cache,
                user: crate::check::user_name(uid),
                unit,
                bytes,
                entries,
            })
            .collect();
        let mut foreign = std::mem::take(&mut self.foreign);
        // Past the per-minute allowance: one line per process and cache, with the count,
        // when its minute ends.
        if self.minute.elapsed() >= Duration::from_secs(60) {
            for ((cache, pid), n) in self.foreign_count.drain() {
                if n > FOREIGN_PER_MINUTE {
                    foreign.push(Foreign {
                        cache,
                        entry: String::new(),
                        owner_uid: u32::MAX,
                        pid,
                        proc: self.procs.get(&pid).map(|(_, p)| p.clone()),
                        more: n - FOREIGN_PER_MINUTE,
                    });
                }
            }
            self.minute = Instant::now();
        }
        Batch {
            written,
            foreign,
            lost: std::mem::take(&mut self.lost),
            quiet: false,
        }
    }
}

/// The writers a cache trusts: its spec's, or its root's owner (and group members).
fn trust(w: &Writers, root_owner: u32) -> Trust {
    let names = match w {
        Writers::Uid(u) => vec![u.to_string()],
        Writers::Trusted(names) => names.clone(),
        Writers::RootOwner { group } => {
            let mut v = vec![root_owner.to_string()];
            v.extend(group.iter().map(|g| format!("@{g}")));
            v
        }
    };
    // A name that no longer resolves (a user removed since the sweep): the root's owner
    // alone, so nothing is called foreign on a guess about whom the policy meant.
    Trust::parse(&names)
        .unwrap_or_else(|_| Trust::parse(&[root_owner.to_string()]).unwrap_or_default())
}

fn read_proc(pid: i32) -> Option<ProcInfo> {
    let p = crate::explain::procfs::Proc::open(pid).ok()?;
    let status = p.status().ok()?;
    let (unit, _) = crate::explain::procfs::unit_of(&p.cgroup().unwrap_or_default());
    let mut cmdline = p.cmdline().unwrap_or_default().join(" ");
    if cmdline.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE;
        while !cmdline.is_char_boundary(cut) {
            cut -= 1;
        }
        cmdline.truncate(cut);
        cmdline.push('…');
    }
    Some(ProcInfo {
        comm: status.name,
        cmdline,
        uid: status.euid,
        unit: unit.unwrap_or_default(),
    })
}
