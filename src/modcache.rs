//! Go's module cache (GOMODCACHE): its eviction unit is one module version, removed the way
//! cmd/go itself would tolerate.
//!
//! A version lives in two places: the download files `cache/download/<escaped path>/@v/
//! <version>.{info,mod,zip,ziphash,lock,partial}` and the extracted tree
//! `<escaped path>@<version>/` (files 0444, directories 0555 unless `-modcacherw`). The rules
//! come from cmd/go's `modfetch` (`fetch.go`, `cache.go`, Go 1.27):
//!
//! - `<version>.lock` is cmd/go's per-version mutex (`lockedfile.MutexAt`, a `flock` on Linux),
//!   held while it downloads the zip and while it extracts the tree. cmd/go never deletes it:
//!   a `go` blocked on the old inode would wake up holding a lock on a file no one else uses
//!   any more. So an eviction takes that lock (`LOCK_EX | LOCK_NB`: whoever holds it, a `go`
//!   or a user holding it forever, the version is skipped this sweep, never waited for), and
//!   never removes the lock file. A missing lock file is created as `go` would create it.
//! - `<version>.partial` marks an extraction in progress: cmd/go's `DownloadDir` treats a tree
//!   beside a `.partial` as incomplete and `unzip` removes and re-extracts it from the zip. An
//!   eviction therefore writes `.partial` before it removes the first file of the tree and
//!   removes it only after the tree and the download files are gone: a sweep interrupted
//!   anywhere leaves either a complete version or one `go` re-extracts (or downloads again).
//!   Without the marker a `go` would use the incomplete tree and record its listing in the
//!   build cache's module index, keyed by the directory alone: builds of that user keep
//!   failing even after the tree is restored (measured with Go 1.27.3).
//! - Last use: `go` never sets times on the module cache, it only reads. Where reads move
//!   atime (relatime, the default; measured here: a `go build` reads `.info`, `.mod`,
//!   `.ziphash` and the package files of the tree), the newest max(atime, mtime) of those
//!   files is the last use; a tool that reads only the tree (gopls, an editor jumping to a
//!   definition) moves only the tree's atimes. Where reads move nothing (`noatime`), the
//!   newest mtime left is the tree's own: a tree `go` re-extracted (after an interrupted
//!   eviction, or one removed by hand) is new while its zip is old. So a version's last use
//!   is the newest last use of its `.info`, `.mod`, `.zip`, `.ziphash` and of every
//!   regular file of its tree, each read by the cache's signal (`last_use`, atime by
//!   default: the last resort, since a backup's reads move it as a build's do; with
//!   `"mtime"`, when `go` downloaded or extracted it). Directories do not count: listing
//!   them (which the agent does itself to measure the tree) moves their atime.
//!
//! The agent runs as root: everything goes through `safefs` (by fd, no symlink followed, no
//! mount crossed, hardlinked files refused), the lock file is opened `O_NONBLOCK | O_NOATIME`
//! only after it was pinned and found to be a regular file with one name (never read, only
//! locked), and a file the agent creates (`.lock`, `.partial`) is created `O_EXCL` and given
//! to the owner and group of its directory with the directory's write bits, so the user's own
//! `go` can rewrite or remove it later exactly as if it had made it.

use crate::plan::{Eviction, Reason};
use crate::safefs::{Dir, Kind, LastUse, Stat};
use crate::scan::Usage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// One module version in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct ModUnit {
    /// `<escaped module path>@<version>`, as the extracted directory is named.
    pub name: String,
    #[serde(skip)]
    dir: Vec<CString>,
    #[serde(skip)]
    version: CString,
    pub last_use: i64,
    pub bytes: u64,
    /// The signal `last_use` was read by, and the re-check under the lock reads again.
    #[serde(skip)]
    by: LastUse,
}

/// Every suffix cmd/go gives a version's files in the download directory.
const EXTS: [&str; 6] = ["info", "mod", "zip", "ziphash", "lock", "partial"];
/// The download files `go` reads when it resolves a version: their times say when it was used.
const USE_EXTS: [&str; 4] = ["info", "mod", "zip", "ziphash"];
/// The download files an eviction removes, in this order (`.lock` never; `.partial` last).
/// The zip goes first: without it `go` fetches the version again whatever else is left.
const REMOVE_EXTS: [&str; 4] = ["zip", "ziphash", "info", "mod"];
const MAX_DEPTH: usize = 64;

fn open_child(d: &Dir, name: &CStr) -> io::Result<Dir> {
    let st = d.stat(name)?;
    d.open_dir(name, &st)
}

/// Every module version of the cache at `root` (unreadable parts are skipped), last used as
/// `by` reads the times of its files.
pub fn units(root: &Dir, by: LastUse) -> Vec<ModUnit> {
    let mut out = Vec::new();
    let Ok(cache) = open_child(root, c"cache") else {
        return out;
    };
    let Ok(dl) = open_child(&cache, c"download") else {
        return out;
    };
    let mut path = Vec::new();
    visit(&dl, &mut path, by, &mut out);
    for u in &mut out {
        let t = tree_usage(root, u);
        u.bytes += t.bytes;
        u.last_use = u.last_use.max(t.newest);
    }
    out
}

fn visit(dir: &Dir, path: &mut Vec<CString>, by: LastUse, out: &mut Vec<ModUnit>) {
    let Ok(names) = dir.list() else { return };
    for n in names {
        let Ok(st) = dir.stat(&n) else { continue };
        if st.kind() != Kind::Dir || st.mount_root || path.len() >= MAX_DEPTH {
            continue;
        }
        let Ok(sub) = dir.open_dir(&n, &st) else {
            continue;
        };
        if n.as_bytes() == b"@v" {
            versions(&sub, path, by, out);
        } else {
            path.push(n);
            visit(&sub, path, by, out);
            path.pop();
        }
    }
}

fn split_version(name: &[u8]) -> Option<(&[u8], &str)> {
    let dot = name.iter().rposition(|b| *b == b'.')?;
    let ext = std::str::from_utf8(&name[dot + 1..]).ok()?;
    EXTS.contains(&ext).then_some((&name[..dot], ext))
}

fn versions(v: &Dir, path: &[CString], by: LastUse, out: &mut Vec<ModUnit>) {
    let Ok(names) = v.list() else { return };
    let mut found: BTreeMap<Vec<u8>, (i64, u64)> = BTreeMap::new();
    for n in names {
        let Some((ver, ext)) = split_version(n.as_bytes()) else {
            continue;
        };
        let Ok(st) = v.stat(&n) else { continue };
        let e = found.entry(ver.to_vec()).or_insert((i64::MIN, 0));
        if ext != "lock" {
            // The lock file stays: it is not part of what an eviction frees.
            e.1 += st.alloc;
        }
        if USE_EXTS.contains(&ext) {
            e.0 = e.0.max(st.last_use(by));
        }
    }
    let module: Vec<&[u8]> = path.iter().map(|c| c.as_bytes()).collect();
    for (ver, (last, bytes)) in found {
        let Ok(version) = CString::new(ver.clone()) else {
            continue;
        };
        if last == i64::MIN {
            // Only a lock or a partial marker: a download in progress, abandoned, or what an
            // eviction leaves behind (the lock). Nothing to evict.
            continue;
        }
        let name = format!(
            "{}@{}",
            String::from_utf8_lossy(&module.join(&b"/"[..])),
            String::from_utf8_lossy(&ver)
        );
        out.push(ModUnit {
            name,
            dir: path.to_vec(),
            version,
            last_use: last,
            bytes,
            by,
        });
    }
}

/// Runs `f` on the directory `comps` names beneath `d` (None if any part is missing).
fn within<R>(d: &Dir, comps: &[CString], f: &mut dyn FnMut(&Dir) -> R) -> Option<R> {
    match comps.split_first() {
        None => Some(f(d)),
        Some((c, rest)) => within(&open_child(d, c).ok()?, rest, f),
    }
}

/// The extracted tree's parent directory (as components under the root) and its name.
fn tree_location(u: &ModUnit) -> Option<(&[CString], CString)> {
    let (last, parents) = u.dir.split_last()?;
    let name = CString::new([last.as_bytes(), b"@", u.version.as_bytes()].concat()).ok()?;
    Some((parents, name))
}

/// What an extracted tree holds: allocated bytes, and the newest use of its regular files.
#[derive(Debug, Clone, Copy)]
struct TreeUsage {
    bytes: u64,
    newest: i64,
}

fn tree_usage(root: &Dir, u: &ModUnit) -> TreeUsage {
    let mut t = TreeUsage {
        bytes: 0,
        newest: i64::MIN,
    };
    if let Some((parents, name)) = tree_location(u) {
        within(root, parents, &mut |d| tree_walk(d, &name, 0, u.by, &mut t));
    }
    t
}

fn tree_walk(parent: &Dir, name: &CStr, depth: usize, by: LastUse, t: &mut TreeUsage) {
    let Ok(st) = parent.stat(name) else { return };
    if st.mount_root {
        return;
    }
    t.bytes += st.alloc;
    match st.kind() {
        Kind::File => t.newest = t.newest.max(st.last_use(by)),
        Kind::Dir if depth <= MAX_DEPTH => {
            let Ok(d) = parent.open_dir(name, &st) else {
                return;
            };
            let Ok(names) = d.list() else { return };
            for n in names {
                tree_walk(&d, &n, depth + 1, by, t);
            }
        }
        _ => {}
    }
}

/// Removes a directory tree beneath `parent`, making its directories writable on the way
/// (module trees are read-only by design). Refuses symlinked, mounted or hardlinked content.
/// `removed` runs after each file is unlinked.
fn remove_tree(
    parent: &Dir,
    name: &CStr,
    st: &Stat,
    depth: usize,
    removed: &mut dyn FnMut(),
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other("module tree too deep"));
    }
    let d = parent.open_dir(name, st)?;
    if d.st.mode & 0o200 == 0 {
        nix::sys::stat::fchmod(
            d.as_fd(),
            nix::sys::stat::Mode::from_bits_truncate((d.st.mode & 0o7777) | 0o700),
        )?;
    }
    for n in d.list()? {
        let cst = d.stat(&n)?;
        match cst.kind() {
            Kind::Dir => remove_tree(&d, &n, &cst, depth + 1, removed)?,
            Kind::File if cst.nlink > 1 => {
                return Err(io::Error::other("hardlinked file in a module tree"));
            }
            _ => {
                d.remove(&n, &cst)?;
                removed();
            }
        }
    }
    parent.remove(name, st)
}

/// Creates `name` in download directory `v` (`O_EXCL`, no symlink followed) and gives it to
/// the directory's owner and group with the directory's read and write bits (so 0644 in a
/// user's 0755 directory, 0664 in a group's 2775 one), as that user's `go` would have made it
/// under a usual umask; with a default ACL on the directory the kernel already derived the
/// mode from it and it is left alone.
fn create_owned(v: &Dir, name: &CStr) -> io::Result<std::fs::File> {
    let f = v.create_file(name, 0o666)?;
    nix::unistd::fchown(&f, Some(v.st.uid.into()), Some(v.st.gid.into()))?;
    let mut buf = Vec::new();
    if v.get_own_xattr(c"system.posix_acl_default", &mut buf)?
        .is_none()
    {
        nix::sys::stat::fchmod(
            f.as_fd(),
            nix::sys::stat::Mode::from_bits_truncate(v.st.mode & 0o666),
        )?;
    }
    Ok(f)
}

/// A version's lock as an eviction found it.
enum Lock {
    /// Taken: the open file holds it until dropped.
    Taken(#[allow(dead_code)] std::fs::File),
    /// Held by someone who has kept eviction away long enough (`crate::locks::outwaited`):
    /// eviction goes on without it; who holds it, for the log.
    Ignored(String),
}

/// Takes cmd/go's lock on one version without waiting. Held by someone: `Ignored` when they
/// have held it long enough, else an error of kind `WouldBlock` naming them. The file is
/// created if missing, as `lockedfile` does.
fn lock_version(v: &Dir, name: &CStr, now: i64) -> io::Result<Lock> {
    let (f, st) = match v.stat(name) {
        Ok(st) => (v.open_read(name, &st)?, st),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create_owned(v, name) {
            Ok(f) => (f, v.stat(name)?),
            // A `go` created it in between: lock that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let st = v.stat(name)?;
                (v.open_read(name, &st)?, st)
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    // SAFETY: flock on an fd we own; released when `f` drops. Never wait: anyone who can open
    // the lock file could hold it forever.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        crate::locks::released(st.dev, st.ino);
        return Ok(Lock::Taken(f));
    }
    let e = io::Error::last_os_error();
    if e.kind() != io::ErrorKind::WouldBlock {
        return Err(e);
    }
    let holders = crate::locks::holders(st.dev, st.ino);
    let who = crate::locks::describe(&holders);
    if crate::locks::outwaited(st.dev, st.ino, &holders, now) {
        return Ok(Lock::Ignored(who));
    }
    Err(io::Error::new(io::ErrorKind::WouldBlock, who))
}

fn version_file(u: &ModUnit, ext: &str) -> io::Result<CString> {
    CString::new([u.version.as_bytes(), b".", ext.as_bytes()].concat())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn download_dir(root: &Dir, u: &ModUnit) -> io::Result<Dir> {
    let mut dl = open_child(&open_child(root, c"cache")?, c"download")?;
    for p in &u.dir {
        dl = open_child(&dl, p)?;
    }
    open_child(&dl, c"@v")
}

/// The version's last use as it is now (see the module documentation).
fn last_use_now(root: &Dir, v: &Dir, u: &ModUnit) -> io::Result<i64> {
    let mut last = i64::MIN;
    for ext in USE_EXTS {
        if let Ok(st) = v.stat(&version_file(u, ext)?) {
            last = last.max(st.last_use(u.by));
        }
    }
    Ok(last.max(tree_usage(root, u).newest))
}

/// One version an eviction removed.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted {
    pub bytes: u64,
    /// Removed without its lock: who held it (`crate::locks::outwaited`).
    pub lock_ignored: Option<String>,
}

/// Evicts one module version unless it was used since (`floor_age` seconds before `now`).
/// Returns what it freed, `None` when it was left alone; an error of kind `WouldBlock`
/// (its message names the holders) when someone holds its lock and eviction still waits
/// for them (`go` downloading or extracting it holds it for seconds; root always).
///
/// Under the lock: re-check the last use, write `.partial`, remove the tree, the download
/// files, then `.partial`. The lock file stays. An error after `.partial` was written leaves
/// it there on purpose: the tree may be incomplete, and `go` must re-extract it.
pub fn evict(
    root: &Dir,
    u: &ModUnit,
    now: i64,
    min_age: i64,
    dry: bool,
) -> io::Result<Option<Evicted>> {
    let v = download_dir(root, u)?;
    if dry {
        return Ok(
            (now - last_use_now(root, &v, u)? >= min_age).then_some(Evicted {
                bytes: u.bytes,
                lock_ignored: None,
            }),
        );
    }
    let lock = lock_version(&v, &version_file(u, "lock")?, now)?;
    // Planned from an earlier look: a build may have used it since.
    if now - last_use_now(root, &v, u)? < min_age {
        return Ok(None);
    }
    let partial = version_file(u, "partial")?;
    match create_owned(&v, &partial) {
        // Left by an interrupted extraction or eviction: it already says "incomplete".
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        r => {
            r?;
        }
    }
    if let Some((parents, name)) = tree_location(u) {
        let mut first = true;
        let mut removed = || {
            if std::mem::take(&mut first) {
                // Tests stop here: the tree is partly gone, `.partial` is on disk.
                crate::failpoint::pause(
                    "modcache-evict",
                    Path::new(&u.name),
                    &crate::cancel::Cancel::process(),
                );
            }
        };
        let r = within(root, parents, &mut |d| match d.stat(&name) {
            Ok(st) if st.kind() == Kind::Dir => remove_tree(d, &name, &st, 0, &mut removed),
            _ => Ok(()),
        });
        r.transpose()?;
    }
    for ext in REMOVE_EXTS {
        let n = version_file(u, ext)?;
        if let Ok(st) = v.stat(&n) {
            v.remove(&n, &st)?;
        }
    }
    if let Ok(st) = v.stat(&partial) {
        v.remove(&partial, &st)?;
    }
    Ok(Some(Evicted {
        bytes: u.bytes,
        lock_ignored: match lock {
            Lock::Taken(_) => None,
            Lock::Ignored(who) => Some(who),
        },
    }))
}

/// What one sweep of a module cache did.
#[derive(Debug, Default)]
pub struct Swept {
    pub evicted: BTreeMap<Reason, Usage>,
    /// Versions skipped because someone held their lock (`<module>@<version>`).
    pub locked: Vec<String>,
    /// Versions evicted although someone held their lock, past [`crate::locks::PATIENCE`]:
    /// `<module>@<version>: locked by <holders>`.
    pub lock_ignored: Vec<String>,
    /// Versions whose eviction failed, with the error.
    pub failed: Vec<(String, io::Error)>,
}

/// Evicts every module version at least as old as the plan's cutoff (never one used within
/// the floor), whole, each under its lock; a locked version is skipped and logged with its
/// holders, until they have held it too long (then it goes, and is logged too).
pub fn evict_old(
    root: &Dir,
    cache: &Path,
    ev: &Eviction,
    by: LastUse,
    now: i64,
    dry: bool,
) -> Swept {
    let mut out = Swept::default();
    let cutoff = ev.cutoff_age_secs.max(ev.floor_secs);
    for u in units(root, by) {
        crate::progress::tick();
        let age = now - u.last_use;
        if age < cutoff {
            continue;
        }
        let reason = ev.reason(age);
        match evict(root, &u, now, ev.floor_secs, dry) {
            Ok(Some(ev)) => {
                tracing::debug!(
                    "{} module {}",
                    crate::logging::verb(dry, "evicted", "would evict"),
                    u.name
                );
                out.evicted.entry(reason).or_default().add(1, ev.bytes);
                if let Some(who) = ev.lock_ignored {
                    out.lock_ignored
                        .push(format!("{}: locked by {who}", u.name));
                }
            }
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::warn!(cache_path = %cache.display(), module = %u.name,
                    "module {} not evicted: {e} holds its lock (a go command downloading or extracting it?); skipped, not waited for: unless root holds it, the version goes at a sweep {}s or more from now if it is still held", u.name, crate::locks::PATIENCE);
                out.locked.push(u.name);
            }
            Err(e) => out.failed.push((u.name, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    const DAY: i64 = 86400;

    fn set_times(p: &Path, atime: i64, mtime: i64) {
        let (a, m) = (
            nix::sys::time::TimeSpec::new(atime, 0),
            nix::sys::time::TimeSpec::new(mtime, 0),
        );
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &a,
            &m,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// A module cache with `example.com/m@v1.0.0` as go leaves it (read-only tree), every
    /// time `age` seconds before `now`. Returns (root, download dir, tree).
    fn cache(d: &Path, now: i64, age: i64) -> (PathBuf, PathBuf, PathBuf) {
        let v = d.join("cache/download/example.com/m/@v");
        std::fs::create_dir_all(&v).unwrap();
        for ext in ["info", "mod", "zip", "ziphash", "lock"] {
            let p = v.join(format!("v1.0.0.{ext}"));
            std::fs::write(&p, if ext == "lock" { "" } else { "x" }).unwrap();
            set_times(&p, now - age, now - age);
        }
        let t = d.join("example.com/m@v1.0.0");
        std::fs::create_dir_all(t.join("sub")).unwrap();
        for f in ["go.mod", "sub/a.go"] {
            std::fs::write(t.join(f), "package a\n").unwrap();
            set_times(&t.join(f), now - age, now - age);
        }
        for dir in [t.join("sub"), t.clone()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        (d.to_path_buf(), v, t)
    }

    fn now() -> i64 {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .unwrap()
            .tv_sec()
    }

    #[test]
    fn eviction_keeps_the_lock_and_leaves_no_partial() {
        let d = tempfile::tempdir().unwrap();
        let now = now();
        let (root, v, t) = cache(d.path(), now, 100 * DAY);
        let r = Dir::open_root(&root).unwrap();
        let us = units(&r, LastUse::Atime);
        assert_eq!(us.len(), 1);
        assert_eq!(us[0].name, "example.com/m@v1.0.0");
        assert!(evict(&r, &us[0], now, DAY, false).unwrap().is_some());
        assert!(!t.exists());
        assert!(v.join("v1.0.0.lock").exists(), "the lock stays");
        for ext in ["info", "mod", "zip", "ziphash", "partial"] {
            assert!(!v.join(format!("v1.0.0.{ext}")).exists(), "{ext} removed");
        }
        // What is left (the lock alone) is no unit: nothing to evict again.
        assert!(units(&r, LastUse::Atime).is_empty());
    }

    #[test]
    fn a_held_lock_is_would_block_and_nothing_changes() {
        let d = tempfile::tempdir().unwrap();
        let now = now();
        let (root, v, t) = cache(d.path(), now, 100 * DAY);
        let held = std::fs::File::open(v.join("v1.0.0.lock")).unwrap();
        // SAFETY: flock on an fd we own; released when `held` drops.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        let r = Dir::open_root(&root).unwrap();
        let u = units(&r, LastUse::Atime).remove(0);
        let e = evict(&r, &u, now, DAY, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(t.join("sub/a.go").exists() && v.join("v1.0.0.zip").exists());
        assert!(!v.join("v1.0.0.partial").exists());
    }

    /// Issue #22: a lock someone other than root holds (here `nobody`, on a descriptor it
    /// was handed, as any user who can open a lock file could) keeps a version for one
    /// sweep, named; a sweep `PATIENCE` later evicts it anyway and says whose lock it ignored.
    #[test]
    fn a_lock_someone_but_root_holds_keeps_a_version_for_one_sweep_only() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let d = tempfile::tempdir().unwrap();
        let now = now();
        let (root, v, t) = cache(d.path(), now, 100 * DAY);
        let lock = std::fs::File::open(v.join("v1.0.0.lock")).unwrap();
        let fd = lock.as_raw_fd();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "flock -x 9 && echo locked && exec sleep 300"])
            .stdout(std::process::Stdio::piped())
            .uid(65534)
            .gid(65534);
        // SAFETY: dup2 is async-signal-safe; the child gets the lock file as its fd 9.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 9) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("sh as nobody");
        drop(lock);
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        // Holders come from a table of every process's locks that a miss made within the
        // last 100 ms reuses (`locks::holders`): one another test made may predate this lock.
        std::thread::sleep(std::time::Duration::from_millis(300));

        let r = Dir::open_root(&root).unwrap();
        let u = units(&r, LastUse::Atime).remove(0);
        let e = evict(&r, &u, now, DAY, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("uid 65534"), "holder named: {e}");
        assert!(t.join("sub/a.go").exists(), "kept this sweep");
        // Still held a sweep later, PATIENCE on: evicted, the holder named.
        let later = now + crate::locks::PATIENCE;
        let ev = evict(&r, &u, later, DAY, false).unwrap().expect("evicted");
        assert!(
            ev.lock_ignored
                .as_deref()
                .is_some_and(|w| w.contains("uid 65534")),
            "{ev:?}"
        );
        assert!(!t.exists() && !v.join("v1.0.0.zip").exists());
        assert!(v.join("v1.0.0.lock").exists(), "the lock file stays");
        assert!(!v.join("v1.0.0.partial").exists());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn tree_files_count_toward_last_use_directories_do_not() {
        let d = tempfile::tempdir().unwrap();
        let now = now();
        let (root, _, t) = cache(d.path(), now, 100 * DAY);
        let r = Dir::open_root(&root).unwrap();
        // A directory's atime moves when anyone lists it (our own walk included).
        set_times(&t.join("sub"), now, now - 100 * DAY);
        assert!(now - units(&r, LastUse::Atime)[0].last_use >= 100 * DAY);
        // A source file read an hour ago (its atime) is use.
        set_times(&t.join("sub/a.go"), now - 3600, now - 100 * DAY);
        assert_eq!(units(&r, LastUse::Atime)[0].last_use, now - 3600);
        // Unless the policy says only mtime counts: then a read is no use, and the re-check
        // under the lock reads the same signal.
        let u = units(&r, LastUse::Mtime).remove(0);
        assert!(now - u.last_use >= 100 * DAY);
        assert!(evict(&r, &u, now, DAY, true).unwrap().is_some());
        // And it is re-checked under the lock: planned as old, used since, kept.
        let mut u = units(&r, LastUse::Atime).remove(0);
        u.last_use = now - 100 * DAY;
        assert!(evict(&r, &u, now, DAY, false).unwrap().is_none());
        assert!(t.join("go.mod").exists());
    }

    #[test]
    fn an_eviction_stopped_half_way_leaves_the_partial_marker() {
        let d = tempfile::tempdir().unwrap();
        let now = now();
        let (root, v, t) = cache(d.path(), now, 100 * DAY);
        // A hardlinked file in the tree is refused: the eviction stops in the middle.
        std::fs::set_permissions(t.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::hard_link(t.join("sub/a.go"), d.path().join("elsewhere")).unwrap();
        let r = Dir::open_root(&root).unwrap();
        let u = units(&r, LastUse::Atime).remove(0);
        assert!(evict(&r, &u, now, DAY, false).is_err());
        // go sees the version as not extracted and extracts it again from the zip.
        assert!(v.join("v1.0.0.partial").exists(), ".partial stays");
        assert!(v.join("v1.0.0.zip").exists() && v.join("v1.0.0.lock").exists());
    }

    #[test]
    fn a_lock_the_agent_creates_belongs_to_the_directorys_owner() {
        let d = tempfile::tempdir().unwrap();
        let now = now();
        let (root, v, _) = cache(d.path(), now, 100 * DAY);
        std::fs::remove_file(v.join("v1.0.0.lock")).unwrap();
        nix::unistd::chown(&v, Some(4242.into()), Some(4243.into())).unwrap();
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o775)).unwrap();
        let r = Dir::open_root(&root).unwrap();
        let u = units(&r, LastUse::Atime).remove(0);
        assert!(evict(&r, &u, now, DAY, false).unwrap().is_some());
        let md = std::fs::metadata(v.join("v1.0.0.lock")).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (4242, 4243, 0o664)
        );
    }
}
