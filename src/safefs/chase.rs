//! Opening a cache root by an absolute path without letting a user's symlink or directory on
//! the way lead root elsewhere (systemd's `chase()` with `CHASE_SAFE`, for directories).
//!
//! A policy path like `/home/alice/.cache/go-build`, or one `go env` resolved for a user,
//! passes through directories users own: alice can make `.cache` a symlink to `/etc`, and
//! root would then evict and chmod in `/etc`. [`open_dir`] therefore walks the path from `/`
//! one component at a time through directory fds, never resolving more than one name per
//! syscall, and refuses:
//! - a symlink unless both it and the directory holding it belong to root (an
//!   administrator's link such as `/home -> /data/home` is followed); the final component is
//!   never followed;
//! - a step from a directory of an unprivileged user into a directory owned by someone else
//!   ("unsafe transition": alice's directory holding root's or bob's);
//! - a mount point inside a directory of an unprivileged user (a FUSE mount the user made).
//!
//! It only opens; [`super`] (`safefs`) takes over from the directory it returns.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{Kind, Stat, fstat};

/// Symlinks followed at most in one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;

fn refused(path: &Path, msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("\"{}\": {msg}", path.display()),
    )
}

fn open_child(parent: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(nix::fcntl::openat(
        parent.as_fd(),
        name.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens directory `path` (absolute) as described in the module documentation; returns its
/// fd (opened `O_RDONLY | O_DIRECTORY`) and what `fstat` says about it.
pub fn open_dir(path: &Path) -> io::Result<(OwnedFd, Stat)> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("\"{}\": not an absolute path", path.display()),
        ));
    }
    let root = nix::fcntl::open(
        "/",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let root_st = fstat(root.as_fd())?;
    let mut todo: VecDeque<OsString> = components(path);
    // The directories walked so far, `/` first; `..` in an administrator's link pops.
    let mut stack: Vec<(OwnedFd, Stat)> = vec![(root, root_st)];
    let mut walked = std::path::PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
                walked.pop();
            }
            continue;
        }
        let (parent, pst) = stack.last().ok_or_else(|| io::Error::other("empty walk"))?;
        walked.push(&name);
        let cname = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let st = super::stat_at(parent.as_fd(), &cname)?;
        match st.kind() {
            // ELOOP, as O_NOFOLLOW says it: callers report "not a directory".
            Kind::Symlink if todo.is_empty() => {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            Kind::Symlink => {
                if st.uid != 0 || pst.uid != 0 {
                    return Err(refused(
                        &walked,
                        format!(
                            "symlink of uid {} in a directory of uid {}: only root's links in \
                             root's directories are followed",
                            st.uid, pst.uid
                        ),
                    ));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = nix::fcntl::readlinkat(parent.as_fd(), cname.as_c_str())?;
                let target = Path::new(&target);
                walked.pop();
                if target.is_absolute() {
                    stack.truncate(1);
                    walked = std::path::PathBuf::from("/");
                }
                for c in components(target).into_iter().rev() {
                    todo.push_front(c);
                }
            }
            Kind::Dir => {
                let fd = open_child(parent, &name)?;
                let now = fstat(fd.as_fd())?;
                if now.dev != st.dev || now.ino != st.ino {
                    return Err(refused(&walked, "replaced while being opened".into()));
                }
                if pst.uid != 0 && (now.dev != pst.dev || now.mount_root) {
                    return Err(refused(
                        &walked,
                        format!("a mount point in a directory of uid {}", pst.uid),
                    ));
                }
                if pst.uid != 0 && now.uid != pst.uid {
                    return Err(refused(
                        &walked,
                        format!(
                            "owned by uid {} inside a directory of uid {}: not entered",
                            now.uid, pst.uid
                        ),
                    ));
                }
                stack.push((fd, now));
            }
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    stack.pop().ok_or_else(|| io::Error::other("empty walk"))
}

/// The names of `p` without `/` and `.` (`..` is kept: only a root-owned link's target may
/// hold one; policy paths are validated without).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, lchown, symlink};

    const ALICE: u32 = 64_001;
    const BOB: u32 = 64_002;

    fn dir(p: &Path, uid: u32) {
        std::fs::create_dir(p).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        lchown(p, Some(uid), Some(uid)).unwrap();
    }

    #[test]
    fn users_links_and_dirs_cannot_redirect_root() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        let victim = base.join("victim");
        dir(&victim, 0);
        dir(&victim.join("go-build"), 0);
        let alice = base.join("alice");
        dir(&alice, ALICE);
        dir(&alice.join("real"), ALICE);
        dir(&alice.join("real/go-build"), ALICE);

        // Her own directories: fine.
        let (_, st) = open_dir(&alice.join("real/go-build")).unwrap();
        assert_eq!(st.uid, ALICE);

        // Her symlink to root's directory: refused, whoever the target belongs to.
        symlink(&victim, alice.join("cache")).unwrap();
        lchown(alice.join("cache"), Some(ALICE), Some(ALICE)).unwrap();
        let e = open_dir(&alice.join("cache/go-build")).unwrap_err();
        assert!(e.to_string().contains("symlink of uid 64001"), "{e}");
        // Even root's symlink in her directory (she can rename it).
        symlink(&victim, alice.join("rootlink")).unwrap();
        let e = open_dir(&alice.join("rootlink/go-build")).unwrap_err();
        assert!(e.to_string().contains("directory of uid 64001"), "{e}");

        // Root's or bob's directory inside hers: an unsafe transition.
        dir(&alice.join("roots"), 0);
        let e = open_dir(&alice.join("roots")).unwrap_err();
        assert!(e.to_string().contains("owned by uid 0 inside"), "{e}");
        dir(&alice.join("bobs"), BOB);
        assert!(open_dir(&alice.join("bobs")).is_err());

        // The final component is never followed; root's links in root's directories are.
        let e = open_dir(&alice.join("cache")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        symlink("victim", base.join("admin")).unwrap();
        let (_, st) = open_dir(&base.join("admin/go-build")).unwrap();
        let want = std::fs::metadata(victim.join("go-build")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(st.ino, want.ino());
        symlink("../victim", alice.join("real/up")).unwrap();
        assert!(open_dir(&alice.join("real/up/go-build")).is_err());
    }
}
