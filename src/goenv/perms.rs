//! Could user X write to a cache directory? Answered for any uid/gid set by evaluating
//! mode bits and the POSIX access ACL the way the kernel does (`posix_acl_permission`),
//! plus search permission on every ancestor and a read-only mount check, so that root can
//! judge another user's cache without switching identity.
//!
//! Not covered: capabilities other than root's, immutable/append-only attributes, LSMs
//! (SELinux/AppArmor), symlinks met on the way (the canonical path is checked), and
//! NFS/FUSE servers that decide on their own.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::unistd::{Gid, Uid, User};
use posix_acl::{ACL_EXECUTE, ACL_WRITE, PosixACL, Qualifier};
use serde::Serialize;

/// The uid and every gid (primary and supplementary) a check is made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Identity {
    /// The current process's effective uid, effective gid and supplementary groups.
    pub fn current() -> Self {
        let mut gids = vec![nix::unistd::getegid().as_raw()];
        if let Ok(groups) = nix::unistd::getgroups() {
            gids.extend(groups.into_iter().map(Gid::as_raw));
        }
        gids.sort_unstable();
        gids.dedup();
        Identity {
            uid: nix::unistd::geteuid().as_raw(),
            gids,
        }
    }

    /// A user as a login would set them up: primary group plus the groups of the group
    /// database (`getgrouplist`).
    pub fn of_user(uid: u32) -> anyhow::Result<Self> {
        let user = User::from_uid(Uid::from_raw(uid))
            .with_context(|| format!("looking up uid {uid}"))?
            .with_context(|| format!("no user with uid {uid}"))?;
        let name = std::ffi::CString::new(user.name.clone())
            .with_context(|| format!("user name of uid {uid} contains a nul byte"))?;
        let mut gids: Vec<u32> = nix::unistd::getgrouplist(&name, user.gid)
            .with_context(|| format!("listing the groups of \"{}\"", user.name))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        gids.sort_unstable();
        gids.dedup();
        Ok(Identity { uid, gids })
    }
}

/// Why a write would fail: the first path on the way that denies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub path: PathBuf,
    /// What was needed there, e.g. `search (x)` or `write and search (wx)`.
    pub need: String,
    pub reason: String,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs {}: {}",
            self.path.display(),
            self.need,
            self.reason
        )
    }
}

/// Whether `uid` with groups `gids` could create entries in directory `path` (or write
/// file `path`); a missing `path` is judged by its deepest existing ancestor, which Go's
/// `MkdirAll` would have to write into.
pub fn can_write(path: &Path, uid: u32, gids: &[u32]) -> anyhow::Result<bool> {
    Ok(write_blocker(path, uid, gids)?.is_none())
}

/// Like [`can_write`] but says what blocks the write.
pub fn write_blocker(path: &Path, uid: u32, gids: &[u32]) -> anyhow::Result<Option<Blocker>> {
    if !path.is_absolute() {
        bail!("path \"{}\" is not absolute", path.display());
    }
    let mut existing = path;
    loop {
        match std::fs::metadata(existing) {
            Ok(_) => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                existing = existing
                    .parent()
                    .with_context(|| format!("no existing ancestor of \"{}\"", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("inspecting \"{}\"", existing.display()));
            }
        }
    }
    let real = std::fs::canonicalize(existing)
        .with_context(|| format!("resolving \"{}\"", existing.display()))?;
    let mut ancestors: Vec<&Path> = real.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        if let Err(reason) = allowed(dir, uid, gids, ACL_EXECUTE)? {
            return Ok(Some(Blocker {
                path: dir.to_path_buf(),
                need: "search (x)".to_string(),
                reason,
            }));
        }
    }
    let meta =
        std::fs::metadata(&real).with_context(|| format!("inspecting \"{}\"", real.display()))?;
    if existing != path && !meta.is_dir() {
        return Ok(Some(Blocker {
            path: real,
            need: "to be a directory".to_string(),
            reason: format!("it is not, so \"{}\" cannot be created", path.display()),
        }));
    }
    let (want, need) = if meta.is_dir() {
        (ACL_WRITE | ACL_EXECUTE, "write and search (wx)")
    } else {
        (ACL_WRITE, "write (w)")
    };
    if let Err(reason) = allowed(&real, uid, gids, want)? {
        return Ok(Some(Blocker {
            path: real,
            need: need.to_string(),
            reason,
        }));
    }
    let vfs = nix::sys::statvfs::statvfs(&real)
        .with_context(|| format!("statvfs \"{}\"", real.display()))?;
    if vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Ok(Some(Blocker {
            path: real,
            need: need.to_string(),
            reason: "the file system is mounted read-only".to_string(),
        }));
    }
    Ok(None)
}

/// The kernel's access decision for `want` (ACL_* bits) on `path`: `Ok(Ok(()))` when
/// granted, `Ok(Err(reason))` when denied.
fn allowed(path: &Path, uid: u32, gids: &[u32], want: u32) -> anyhow::Result<Result<(), String>> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("inspecting \"{}\"", path.display()))?;
    if uid == 0 {
        // CAP_DAC_OVERRIDE: everything on directories, and writes; exec needs some x bit.
        let exec_denied = want & ACL_EXECUTE != 0 && !meta.is_dir() && meta.mode() & 0o111 == 0;
        return Ok(if exec_denied {
            Err("no execute bit is set, not even for root".to_string())
        } else {
            Ok(())
        });
    }
    // Without an extended ACL libacl synthesises the minimal one from the mode bits.
    let acl = PosixACL::read_acl(path)
        .with_context(|| format!("reading the ACL of \"{}\"", path.display()))?;
    let entries = acl.entries();
    let mask = acl.get(Qualifier::Mask);
    let masked = |perm: u32| mask.map_or(perm, |m| perm & m);
    let grants = |perm: u32| perm & want == want;

    if uid == meta.uid() {
        let perm = acl.get(Qualifier::UserObj).unwrap_or(0);
        return Ok(verdict(grants(perm), || {
            format!("owner (uid {uid}) has {}", rwx(perm))
        }));
    }
    if let Some(perm) = acl.get(Qualifier::User(uid)) {
        return Ok(verdict(grants(masked(perm)), || {
            format!("ACL entry user:{uid} has {}{}", rwx(perm), mask_note(mask))
        }));
    }
    let mut matched = Vec::new();
    for e in &entries {
        let gid = match e.qual {
            Qualifier::GroupObj => meta.gid(),
            Qualifier::Group(g) => g,
            _ => continue,
        };
        if !gids.contains(&gid) {
            continue;
        }
        // The kernel stops at the first group entry that grants `want`, then applies the mask.
        if grants(e.perm) {
            return Ok(verdict(grants(masked(e.perm)), || {
                format!("group {gid} has {},{}", rwx(e.perm), mask_note(mask))
            }));
        }
        matched.push(format!("group {gid} has {}", rwx(e.perm)));
    }
    if !matched.is_empty() {
        return Ok(Err(format!(
            "{} (other is not consulted for group members)",
            matched.join(", ")
        )));
    }
    let perm = acl.get(Qualifier::Other).unwrap_or(0);
    Ok(verdict(grants(perm), || {
        format!(
            "uid {uid} is neither owner nor in a granted group, and other has {}",
            rwx(perm)
        )
    }))
}

fn verdict(ok: bool, reason: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(reason()) }
}

fn mask_note(mask: Option<u32>) -> String {
    mask.map_or(String::new(), |m| format!(" limited by mask {}", rwx(m)))
}

fn rwx(perm: u32) -> String {
    let bit = |b: u32, c: char| if perm & b != 0 { c } else { '-' };
    [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn setfacl(args: &[&str], path: &Path) {
        let out = Command::new("setfacl")
            .args(args)
            .arg(path)
            .output()
            .expect("setfacl missing: apt-get install acl");
        assert!(out.status.success(), "setfacl {args:?}: {out:?}");
    }

    fn chown(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }

    fn mode(path: &Path, m: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
    }

    /// A 0755 root-owned base under the system temp dir, so ancestors never block.
    fn base() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        mode(t.path(), 0o755);
        t
    }

    const ALICE: u32 = 61001;
    const BOB: u32 = 61002;
    const BUILDERS: u32 = 61100;

    #[test]
    fn mode_bits_owner_group_other() {
        let t = base();
        let d = t.path().join("cache");
        std::fs::create_dir(&d).unwrap();
        chown(&d, ALICE, BUILDERS);
        mode(&d, 0o750);
        assert!(can_write(&d, ALICE, &[ALICE]).unwrap());
        // Group r-x only: group members cannot write.
        let b = write_blocker(&d, BOB, &[BOB, BUILDERS]).unwrap().unwrap();
        assert_eq!(b.path, std::fs::canonicalize(&d).unwrap());
        assert!(b.reason.contains("group 61100 has r-x"), "{b}");
        mode(&d, 0o770);
        assert!(can_write(&d, BOB, &[BOB, BUILDERS]).unwrap());
        assert!(!can_write(&d, BOB, &[BOB]).unwrap());
        mode(&d, 0o707);
        // Group members are judged by the group class, never by other.
        assert!(!can_write(&d, BOB, &[BUILDERS]).unwrap());
        assert!(can_write(&d, BOB, &[BOB]).unwrap());
        assert!(can_write(&d, 0, &[0]).unwrap());
    }

    #[test]
    fn acl_entries_and_mask() {
        let t = base();
        let d = t.path().join("shared");
        std::fs::create_dir(&d).unwrap();
        chown(&d, ALICE, ALICE);
        mode(&d, 0o700);
        assert!(!can_write(&d, BOB, &[BOB, BUILDERS]).unwrap());

        setfacl(&["-m", &format!("g:{BUILDERS}:rwx")], &d);
        assert!(can_write(&d, BOB, &[BOB, BUILDERS]).unwrap());
        assert!(!can_write(&d, BOB, &[BOB]).unwrap());

        // The mask caps named entries.
        setfacl(&["-m", "m::r-x"], &d);
        let b = write_blocker(&d, BOB, &[BOB, BUILDERS]).unwrap().unwrap();
        assert!(b.reason.contains("mask r-x"), "{b}");

        setfacl(&["-m", &format!("u:{BOB}:rwx,m::rwx")], &d);
        assert!(can_write(&d, BOB, &[BOB]).unwrap());
        // A named user entry decides alone, groups are not consulted.
        setfacl(&["-m", &format!("u:{BOB}:r-x")], &d);
        assert!(!can_write(&d, BOB, &[BOB, BUILDERS]).unwrap());
    }

    #[test]
    fn ancestors_need_search_and_missing_paths_use_parent() {
        let t = base();
        let top = t.path().join("top");
        let cache = top.join("home/alice/.cache");
        std::fs::create_dir_all(&cache).unwrap();
        for p in [top.join("home/alice"), cache.clone()] {
            chown(&p, ALICE, ALICE);
        }
        mode(&top.join("home/alice"), 0o700);
        let missing = cache.join("go-build");
        assert!(can_write(&missing, ALICE, &[ALICE]).unwrap());
        let b = write_blocker(&missing, BOB, &[BOB]).unwrap().unwrap();
        assert_eq!(b.need, "search (x)");
        assert!(b.path.ends_with("home/alice"), "{b}");
        // An ACL granting search lets bob through to the (0755) .cache, which he cannot write.
        setfacl(&["-m", &format!("u:{BOB}:--x")], &top.join("home/alice"));
        let b = write_blocker(&missing, BOB, &[BOB]).unwrap().unwrap();
        assert!(b.path.ends_with(".cache"), "{b}");
        assert_eq!(b.need, "write and search (wx)");
        // A file where a directory is needed.
        let f = cache.join("file");
        std::fs::write(&f, "x").unwrap();
        chown(&f, ALICE, ALICE);
        let b = write_blocker(&f.join("sub"), ALICE, &[ALICE])
            .unwrap()
            .unwrap();
        assert_eq!(b.need, "to be a directory");
        assert!(write_blocker(Path::new("relative"), ALICE, &[]).is_err());
    }

    #[test]
    fn identity_of_user() {
        let root = Identity::of_user(0).unwrap();
        assert_eq!(root.uid, 0);
        assert!(root.gids.contains(&0));
        assert!(Identity::of_user(4_000_000_000).is_err());
        assert_eq!(Identity::current().uid, nix::unistd::geteuid().as_raw());
    }
}
