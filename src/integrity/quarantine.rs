//! The quarantine: where `untrusted = "quarantine"` moves what fails verification, as
//! evidence (`ROOT/gocache-warden-quarantine/`, 0700, inside the cache so that a move is a
//! rename). Names never collide (`RENAME_NOREPLACE`), and what it keeps is bounded in time
//! and size (`Keep`), trimmed by each pass that may quarantine before it moves anything.

use super::{Act, QUARANTINE, evict};
use crate::safefs::{Dir, Kind, Stat};
use std::ffi::{CStr, CString};
use std::path::Path;

/// How much the quarantine keeps: the policy's `quarantine_retention` and
/// `quarantine_max_size`.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub retention: std::time::Duration,
    pub max_bytes: u64,
}

impl Keep {
    pub fn of(p: &crate::policy::CachePolicy) -> Keep {
        Keep {
            retention: p.quarantine_retention,
            max_bytes: p.quarantine_max_size,
        }
    }
}

/// The quarantine directory when `act` needs it, trimmed first to what `keep` allows.
pub(super) fn open_quarantine(
    dir: &Dir,
    root: &Path,
    act: Act,
    keep: Keep,
) -> anyhow::Result<Option<Dir>> {
    use anyhow::Context;
    if act != Act::Quarantine {
        return Ok(None);
    }
    let q = quarantine_dir(dir)
        .with_context(|| format!("cannot open the quarantine {:?}", root.join(QUARANTINE)))?;
    let t = trim(&q, keep);
    let why = [
        (
            t.expired,
            format!(
                "moved there more than {} ago (quarantine_retention)",
                humantime::format_duration(keep.retention)
            ),
        ),
        (
            t.oversize,
            format!(
                "the oldest, while it held more than {} (quarantine_max_size)",
                crate::policy::value::human_bytes(keep.max_bytes)
            ),
        ),
    ];
    for (n, why) in why.iter().filter(|(n, _)| *n > 0) {
        tracing::info!(
            gocache_warden_action = crate::logging::action::INTEGRITY,
            cache_path = %root.display(),
            entries = *n,
            "removed {n} entries from the quarantine of {}: {why}",
            root.display()
        );
    }
    Ok(Some(q))
}

/// At most this many quarantined entries are looked at per trim: a quarantine bounded by
/// size holds far fewer (an output is at least a block), and one made bigger by hand is
/// trimmed over several passes.
const MAX_TRIMMED: usize = 65_536;

/// What [`trim`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Trimmed {
    /// Moved there more than `retention` ago.
    expired: u64,
    /// The oldest of the rest, while the quarantine held more than `max_bytes`.
    oversize: u64,
}

/// Removes the quarantined entries moved there more than `keep.retention` ago (a rename sets
/// an inode's ctime, which only the kernel sets: the time it was quarantined), then the
/// oldest others until the quarantine's allocated bytes are within `keep.max_bytes`; an
/// executable's directory goes with its file and counts with it.
fn trim(q: &Dir, keep: Keep) -> Trimmed {
    let cutoff = crate::check::now() - keep.retention.as_secs().min(i64::MAX as u64) as i64;
    let mut all: Vec<(CString, Stat, u64)> = Vec::new();
    let _ = q.for_each_name(|n| {
        if all.len() < MAX_TRIMMED
            && let Ok(st) = q.stat(n)
        {
            let bytes = st.alloc + contents(q, n, &st);
            all.push((n.to_owned(), st, bytes));
        }
    });
    all.sort_by_key(|(_, st, _)| st.ctime);
    let mut total: u64 = all.iter().map(|(_, _, b)| b).sum();
    let mut out = Trimmed::default();
    for (n, st, bytes) in &all {
        let expired = st.ctime < cutoff;
        if !expired && total <= keep.max_bytes {
            break;
        }
        if evict(q, n, st).is_ok() {
            total = total.saturating_sub(*bytes);
            if expired {
                out.expired += 1;
            } else {
                out.oversize += 1;
            }
        }
    }
    out
}

/// The allocated bytes inside a quarantined executable's directory (0 for a file).
fn contents(q: &Dir, n: &CStr, st: &Stat) -> u64 {
    if st.kind() != Kind::Dir {
        return 0;
    }
    let Ok(x) = q.open_dir(n, st) else { return 0 };
    let mut sum = 0;
    let _ = x.for_each_name(|c| {
        if let Ok(s) = x.stat(c) {
            sum += s.alloc;
        }
    });
    sum
}

/// Opens (creating it, 0700) the quarantine directory beneath the root; it must be a real
/// directory on the same filesystem.
fn quarantine_dir(root: &Dir) -> std::io::Result<Dir> {
    let name = c"gocache-warden-quarantine";
    match root.stat(name) {
        Ok(st) if st.kind() == Kind::Dir => root.open_dir(name, &st),
        Ok(_) => Err(std::io::Error::other("quarantine is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => root.mkdir(name, 0o700),
        Err(e) => Err(e),
    }
}

/// Moves an entry into the quarantine as `<shard>-<name>`, or, when an earlier one of that
/// name is there, `<shard>-<name>.<unix seconds>[-N]`: `RENAME_NOREPLACE`, so evidence is
/// never renamed over (`renameat2` never follows a symlink and never crosses a filesystem:
/// the quarantine is inside the cache).
pub(super) fn quarantine(
    d: &Dir,
    entry: &CStr,
    est: &Stat,
    q: &Dir,
    shard: &CStr,
) -> std::io::Result<()> {
    let now = d.stat(entry)?;
    let same = now.dev == est.dev && now.ino == est.ino && now.kind() == est.kind();
    if !same || now.dev != q.st.dev {
        return Err(std::io::Error::other("entry changed since it was verified"));
    }
    let base = format!(
        "{}-{}",
        String::from_utf8_lossy(shard.to_bytes()),
        String::from_utf8_lossy(entry.to_bytes())
    );
    let secs = crate::check::now();
    let names = std::iter::once(base.clone())
        .chain(std::iter::once(format!("{base}.{secs}")))
        .chain((1..100).map(|n| format!("{base}.{secs}-{n}")));
    for name in names {
        let target = CString::new(name).map_err(|_| std::io::Error::other("bad name"))?;
        match nix::fcntl::renameat2(
            d.as_fd(),
            entry,
            q.as_fd(),
            target.as_c_str(),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Err(nix::errno::Errno::EEXIST) => continue,
            r => return r.map_err(std::io::Error::from),
        }
    }
    Err(std::io::Error::other(
        "the quarantine already holds 100 entries of this name",
    ))
}
