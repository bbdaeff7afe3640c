//! Who holds a lock on a cache's directory, and whether eviction waits for it.
//!
//! cmd/go locks nothing in a build cache but `trim.txt` (and, in a module cache, each
//! version's `.lock`). A `flock` on a shard or an executable's directory can only come from
//! another copy of this agent, an operator's tool, or a user who wants eviction to stop —
//! and any member of a shared cache's group can open a shard and lock it. So eviction skips
//! a locked directory only when root holds the lock; a lock anyone else holds is ignored
//! (eviction goes on, each file re-checked as always) and reported with its holder: pid,
//! uid and command.
//!
//! A module version's `.lock` is different: cmd/go holds it while it downloads or extracts
//! that version, so a module eviction waits for it — once. [`outwaited`] says when a lock
//! anyone but root holds has kept eviction away long enough: an earlier sweep of this
//! process met it held [`PATIENCE`] or more ago (whoever holds it now: a holder can hand
//! the lock on), or every holder has been running for that long (what a one-shot `enforce`,
//! which remembers no earlier sweep, can tell). A `go` holds a version's lock for the
//! seconds a download or an extraction takes, on a version it is using now, which is never
//! one old enough to evict; a lock held across sweeps on an old version is someone keeping
//! eviction away.
//!
//! Holders are the processes whose open files carry the lock (`lock:` lines of
//! `/proc/PID/fdinfo/FD`), not the pid `/proc/locks` prints: that is whoever called `flock`,
//! often a `flock(1)` that has exited while the shell it ran under keeps the descriptor.
//! One scan of every process's descriptors serves every lookup for [`TABLE_TTL`] (a member
//! can lock all 256 shards of a cache; a lookup that finds nothing in a scan older than
//! 100 ms scans again), and reads at most [`MAX_FDINFO`] of them.
//! Hand-written: the `procfs` crate reads these files too, but one at a time into owned
//! structures with a dozen dependencies; this needs one line format and two bounds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many `/proc/PID/fdinfo/FD` files are read per scan.
pub const MAX_FDINFO: usize = 200_000;

/// How long one scan answers lookups.
pub const TABLE_TTL: Duration = Duration::from_secs(5);

/// A lookup that finds nothing scans again when the scan is older than this.
const MISS_RESCAN: Duration = Duration::from_millis(100);

/// A process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// Its effective uid (`None`: it has gone, or is not visible from here).
    pub uid: Option<u32>,
    /// Its command name (`/proc/PID/comm`), escaped for display.
    pub comm: String,
    /// How long it has been running, in seconds (`None`: unknown).
    pub running: Option<i64>,
}

impl Holder {
    /// E.g. "pid 4242 (sleep, uid 1001)".
    pub fn describe(&self) -> String {
        let uid = self
            .uid
            .map_or_else(|| "uid ?".to_string(), |u| format!("uid {u}"));
        format!("pid {} ({}, {uid})", self.pid, self.comm)
    }
}

/// (major, minor, inode) → the pids whose descriptors hold a lock on it.
type Table = HashMap<(u64, u64, u64), Vec<i32>>;

static TABLE: Mutex<Option<(Instant, Table)>> = Mutex::new(None);

/// Everyone holding a lock on inode `ino` of device `dev` (not those waiting for one).
pub fn holders(dev: u64, ino: u64) -> Vec<Holder> {
    let want = (libc::major(dev) as u64, libc::minor(dev) as u64, ino);
    let pids = {
        let mut t = match TABLE.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let age = |t: &Option<(Instant, Table)>| t.as_ref().map(|(at, _)| at.elapsed());
        let lookup = |t: &Option<(Instant, Table)>| {
            t.as_ref().and_then(|(_, table)| table.get(&want).cloned())
        };
        // A miss may be a lock taken since the scan: scan again, at most ten times a second
        // (holders the agent cannot see, in another pid namespace or hidden by
        // `ProtectProc=`, miss every time).
        let stale = |t: &Option<(Instant, Table)>, max| age(t).is_none_or(|a| a > max);
        if stale(&t, TABLE_TTL) || (lookup(&t).is_none() && stale(&t, MISS_RESCAN)) {
            *t = Some((Instant::now(), scan()));
        }
        lookup(&t).unwrap_or_default()
    };
    pids.into_iter().map(holder).collect()
}

/// Every lock held through an open descriptor, by the process holding that descriptor.
fn scan() -> Table {
    let mut table = Table::new();
    let mut budget = MAX_FDINFO;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return table;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            if budget == 0 {
                return table;
            }
            budget -= 1;
            let Some(text) = read_small(&fd.path()) else {
                continue;
            };
            for l in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
                if let Some((_, id)) = parse_line(l) {
                    let pids = table.entry(id).or_default();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    table
}

/// A file of `/proc`, at most 64 KiB (a descriptor with very many locks says more; the
/// first ones are enough).
fn read_small(path: &std::path::Path) -> Option<String> {
    let mut buf = Vec::new();
    let f = std::fs::File::open(path).ok()?;
    std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 << 10), &mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A lock these holders hold stops eviction: one of them is root.
pub fn honoured(holders: &[Holder]) -> bool {
    holders.iter().any(|h| h.uid == Some(0))
}

/// "pid 4242 (sleep, uid 1001), pid …", or "an unknown process" when none could be named.
pub fn describe(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "an unknown process".to_string();
    }
    holders
        .iter()
        .map(Holder::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One lock line (as `/proc/locks` and fdinfo's `lock:` lines print it) of a held lock:
/// `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO START END` (major and minor in hex); waiters
/// (`N: -> FLOCK …`) and malformed lines give `None`.
fn parse_line(line: &str) -> Option<(i32, (u64, u64, u64))> {
    let mut f = line.split_ascii_whitespace();
    let _n = f.next()?;
    let kind = f.next()?;
    if kind == "->" {
        return None;
    }
    let (_mandatory, _access) = (f.next()?, f.next()?);
    let pid: i32 = f.next()?.parse().ok()?;
    let mut id = f.next()?.split(':');
    let major = u64::from_str_radix(id.next()?, 16).ok()?;
    let minor = u64::from_str_radix(id.next()?, 16).ok()?;
    let ino: u64 = id.next()?.parse().ok()?;
    Some((pid, (major, minor, ino)))
}

fn holder(pid: i32) -> Holder {
    let read = |what: &str| read_small(std::path::Path::new(&format!("/proc/{pid}/{what}")));
    let uid = read("status").and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_ascii_whitespace().nth(1)?.parse().ok())
    });
    let comm = read("comm").map_or_else(
        || "?".to_string(),
        |c| c.trim_end().escape_debug().to_string(),
    );
    let running = read("stat").and_then(|s| running_secs(&s));
    Holder {
        pid,
        uid,
        comm,
        running,
    }
}

/// Seconds since the process of `/proc/PID/stat` text `stat` started: its field 22
/// (`starttime`, clock ticks after boot) against the boot-time clock. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn running_secs(stat: &str) -> Option<i64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: i64 = after.split_ascii_whitespace().nth(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)?;
    let up = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(up.tv_sec() - ticks / hz)
}

/// How long a lock anyone but root holds on a module version keeps eviction away.
pub const PATIENCE: i64 = 60;

/// At most this many locks are remembered ([`outwaited`]).
const MAX_REMEMBERED: usize = 65_536;

/// (dev, ino) of a lock file → when a sweep first met it held by someone other than root.
static WAITED: Mutex<Option<HashMap<(u64, u64), i64>>> = Mutex::new(None);

/// A lock `holders` hold on inode `ino` of device `dev`, met by a sweep at `now` (seconds):
/// `true` once it has kept eviction away long enough (see the module documentation). Never
/// for root's locks.
pub fn outwaited(dev: u64, ino: u64, holders: &[Holder], now: i64) -> bool {
    if honoured(holders) {
        return false;
    }
    let mut m = WAITED.lock().unwrap_or_else(|p| p.into_inner());
    let m = m.get_or_insert_with(HashMap::new);
    if m.len() >= MAX_REMEMBERED {
        // Forget what is a day old; a flood of locks otherwise starts the count again.
        m.retain(|_, first| now - *first < 86_400);
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
    }
    let first = *m.entry((dev, ino)).or_insert(now);
    let all_old = !holders.is_empty()
        && holders
            .iter()
            .all(|h| h.running.is_some_and(|r| r >= PATIENCE));
    now - first >= PATIENCE || all_old
}

/// The lock on (dev, ino) was found free: whoever holds it next starts the wait again.
pub fn released(dev: u64, ino: u64) {
    let mut m = WAITED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = m.as_mut() {
        m.remove(&(dev, ino));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// `/proc/self/stat` gives this process a running time; a command name with spaces and
    /// parentheses does not shift the fields.
    #[test]
    fn running_time_comes_from_the_fields_after_the_command_name() {
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let r = running_secs(&own).expect("own stat");
        assert!((0..86_400 * 365).contains(&r), "{r}");
        let i = own.rfind(')').unwrap();
        let odd = format!(
            "{} (a b) c){}",
            own.split(' ').next().unwrap(),
            &own[i + 1..]
        );
        // The boot-time clock may tick between the two readings.
        assert!(running_secs(&odd).is_some_and(|o| (o - r).abs() <= 1));
        assert_eq!(running_secs("1 (x) S 0"), None);
    }

    #[test]
    fn parses_held_locks_and_skips_waiters() {
        assert_eq!(
            parse_line("1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"),
            Some((4242, (0xfd, 1, 1_234_567)))
        );
        assert_eq!(
            parse_line("7: POSIX  ADVISORY  READ 17 00:2b:99 0 EOF"),
            Some((17, (0, 0x2b, 99)))
        );
        assert_eq!(
            parse_line("1: -> FLOCK  ADVISORY  WRITE 4243 fd:01:1234567 0 EOF"),
            None
        );
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("1: FLOCK ADVISORY WRITE x fd:01:1 0 EOF"), None);
    }

    /// This test process (root under CI, anyone here) locks a directory: it is found as its
    /// holder, with its uid and command.
    #[test]
    fn finds_this_process_holding_a_flock_on_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(d.path()).unwrap();
        // SAFETY: flock on an fd we own; released when `f` drops.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
        let m = std::fs::metadata(d.path()).unwrap();
        // Past the window in which a miss is answered from another test's scan.
        std::thread::sleep(MISS_RESCAN * 2);
        let hs = holders(m.dev(), m.ino());
        let me = std::process::id() as i32;
        let h = hs
            .iter()
            .find(|h| h.pid == me)
            .expect("this process holds it");
        assert_eq!(h.uid, Some(nix::unistd::geteuid().as_raw()));
        assert!(!h.comm.is_empty() && h.comm != "?", "{h:?}");
        assert_eq!(honoured(&hs), nix::unistd::geteuid().is_root());
        drop(f);
    }
}
