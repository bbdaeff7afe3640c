//! Go's module cache (GOMODCACHE): its eviction unit is one module version.
//!
//! A version lives in two places: the download files `cache/download/<escaped path>/@v/
//! <version>.{info,mod,zip,ziphash,lock}` and the extracted tree `<escaped path>@<version>/`
//! (files 0444, directories 0555 unless `-modcacherw`). Its last use is the newest
//! max(atime, mtime) of the `.info`, `.mod` and `.zip` files, which `go` reads when it loads
//! the module. Evicting a version takes `go`'s own `<version>.lock` (a `flock`, as cmd/go's
//! lockedfile), removes the extracted tree (making its directories writable first: only ever
//! inside the cache), then the download files. Everything goes through `safefs`.

use crate::safefs::{Dir, Kind, Stat};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;

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
}

const EXTS: [&str; 6] = ["info", "mod", "zip", "ziphash", "lock", "partial"];
const MAX_DEPTH: usize = 64;

fn open_child(d: &Dir, name: &CStr) -> io::Result<Dir> {
    let st = d.stat(name)?;
    d.open_dir(name, &st)
}

/// Every module version of the cache at `root` (unreadable parts are skipped).
pub fn units(root: &Dir) -> Vec<ModUnit> {
    let mut out = Vec::new();
    let Ok(cache) = open_child(root, c"cache") else {
        return out;
    };
    let Ok(dl) = open_child(&cache, c"download") else {
        return out;
    };
    let mut path = Vec::new();
    visit(&dl, &mut path, &mut out);
    for u in &mut out {
        if let Some((parents, name)) = tree_location(u) {
            u.bytes += within(root, parents, &mut |d| tree_bytes(d, &name, 0)).unwrap_or(0);
        }
    }
    out
}

fn visit(dir: &Dir, path: &mut Vec<CString>, out: &mut Vec<ModUnit>) {
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
            versions(&sub, path, out);
        } else {
            path.push(n);
            visit(&sub, path, out);
            path.pop();
        }
    }
}

fn split_version(name: &[u8]) -> Option<(&[u8], &str)> {
    let dot = name.iter().rposition(|b| *b == b'.')?;
    let ext = std::str::from_utf8(&name[dot + 1..]).ok()?;
    EXTS.contains(&ext).then_some((&name[..dot], ext))
}

fn versions(v: &Dir, path: &[CString], out: &mut Vec<ModUnit>) {
    let Ok(names) = v.list() else { return };
    let mut by: BTreeMap<Vec<u8>, (i64, u64)> = BTreeMap::new();
    for n in names {
        let Some((ver, ext)) = split_version(n.as_bytes()) else {
            continue;
        };
        let Ok(st) = v.stat(&n) else { continue };
        let e = by.entry(ver.to_vec()).or_insert((i64::MIN, 0));
        e.1 += st.alloc;
        if matches!(ext, "info" | "mod" | "zip") {
            e.0 = e.0.max(st.last_use());
        }
    }
    let module: Vec<&[u8]> = path.iter().map(|c| c.as_bytes()).collect();
    for (ver, (last, bytes)) in by {
        let Ok(version) = CString::new(ver.clone()) else {
            continue;
        };
        if last == i64::MIN {
            // Only a lock or a partial download: a download in progress or abandoned; not ours.
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

fn tree_bytes(parent: &Dir, name: &CStr, depth: usize) -> u64 {
    let Ok(st) = parent.stat(name) else { return 0 };
    if st.mount_root {
        return 0;
    }
    if st.kind() != Kind::Dir || depth > MAX_DEPTH {
        return st.alloc;
    }
    let Ok(d) = parent.open_dir(name, &st) else {
        return st.alloc;
    };
    let Ok(names) = d.list() else { return st.alloc };
    st.alloc
        + names
            .iter()
            .map(|n| tree_bytes(&d, n, depth + 1))
            .sum::<u64>()
}

/// Removes a directory tree beneath `parent`, making its directories writable on the way
/// (module trees are read-only by design). Refuses symlinked, mounted or hardlinked content.
fn remove_tree(parent: &Dir, name: &CStr, st: &Stat, depth: usize) -> io::Result<()> {
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
            Kind::Dir => remove_tree(&d, &n, &cst, depth + 1)?,
            Kind::File if cst.nlink > 1 => {
                return Err(io::Error::other("hardlinked file in a module tree"));
            }
            _ => d.remove(&n, &cst)?,
        }
    }
    parent.remove(name, st)
}

/// Evicts one module version unless it was used since (`floor_age` seconds before `now`).
/// Returns the bytes freed, `None` when it was left alone; an error of kind `WouldBlock`
/// when someone (`go` extracting it, or anyone) holds its lock.
pub fn evict(
    root: &Dir,
    u: &ModUnit,
    now: i64,
    min_age: i64,
    dry: bool,
) -> io::Result<Option<u64>> {
    let mut dl = open_child(&open_child(root, c"cache")?, c"download")?;
    for p in &u.dir {
        dl = open_child(&dl, p)?;
    }
    let v = open_child(&dl, c"@v")?;
    let file = |ext: &str| {
        CString::new([u.version.as_bytes(), b".", ext.as_bytes()].concat())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let mut last = i64::MIN;
    for ext in ["info", "mod", "zip"] {
        if let Ok(st) = v.stat(&file(ext)?) {
            last = last.max(st.last_use());
        }
    }
    if now - last < min_age {
        return Ok(None);
    }
    if dry {
        return Ok(Some(u.bytes));
    }
    // Hold go's lock for this version while removing it.
    let lock_name = file("lock")?;
    let _lock = match v.stat(&lock_name) {
        Ok(st) => {
            let f = v.open_read(&lock_name, &st)?;
            // SAFETY: flock on an fd we own; released when `f` drops.
            // Never wait: anyone who can open the lock file could hold it forever. The
            // caller counts a `WouldBlock` as a locked skip, not a failure.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Some(f)
        }
        Err(_) => None,
    };
    if let Some((parents, name)) = tree_location(u) {
        let removed = within(root, parents, &mut |d| match d.stat(&name) {
            Ok(st) if st.kind() == Kind::Dir => remove_tree(d, &name, &st, 0),
            _ => Ok(()),
        });
        removed.transpose()?;
    }
    for ext in EXTS
        .iter()
        .filter(|e| **e != "lock")
        .chain(std::iter::once(&"lock"))
    {
        let n = file(ext)?;
        if let Ok(st) = v.stat(&n) {
            v.remove(&n, &st)?;
        }
    }
    Ok(Some(u.bytes))
}
