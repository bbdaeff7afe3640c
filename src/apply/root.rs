//! The cache root itself: creating a missing one with the plan's owner, group, mode and
//! ACLs, and rewriting `trim.txt` (never waiting for a lock a user holds).

use super::fix::write_acl;
use crate::acl::Acl;
use crate::plan::CachePlan;
use crate::safefs::{self, Dir};
use std::io;
use std::os::fd::AsRawFd;

pub(super) fn create_root(c: &CachePlan, cr: &crate::plan::CreateRoot) -> io::Result<()> {
    let parent = c
        .path
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = c
        .path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let parent = Dir::open_root(parent)?;
    let dir = parent.mkdir(&safefs::component(name)?, 0o700)?;
    nix::unistd::fchown(dir.as_fd(), Some(cr.uid.into()), Some(cr.gid.into()))?;
    if let Some(w) = c
        .permissions
        .as_ref()
        .and_then(|p| p.grant().want(true, 0o777))
    {
        let cur = Acl::from_mode(cr.mode);
        write_acl(&dir.proc_path(), &w.access_acl(&cur), false)?;
        write_acl(&dir.proc_path(), &w.default_acl(), true)?;
    }
    nix::sys::stat::fchmod(
        dir.as_fd(),
        nix::sys::stat::Mode::from_bits_truncate(cr.mode),
    )?;
    Ok(())
}

/// Why trim.txt was not rewritten although the plan said so, when that is no failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TrimSkip {
    /// Someone holds a `flock` on it (a member's `go` reading it, or anyone who can open it
    /// holding it forever): waiting would let any cache user stop every later sweep.
    Locked,
}

/// Rewrites trim.txt with the current time, under the same `flock` Go's lockedfile takes,
/// never waiting for it. A trim.txt we create gets the group and the group and other
/// access of the root (Go's 0666 as the cache's directories allow it), whatever our umask:
/// members' own `go` must still be able to rewrite it when the agent no longer runs.
pub(super) fn rewrite_trim(root: &Dir, now: i64) -> io::Result<Option<TrimSkip>> {
    use std::io::Write;
    let name = c"trim.txt";
    let (mut f, created) = match root.stat(name) {
        Ok(st) => (
            root.pin(name, &st)?
                .reopen(nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_NONBLOCK)?,
            false,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // What the agent creates in a cache belongs to the cache's owner (a user's own
            // go must be able to rewrite it), not to root.
            let f = root.create_file(name, 0o666)?;
            nix::unistd::fchown(&f, Some(root.st.uid.into()), Some(root.st.gid.into()))?;
            (f, true)
        }
        Err(e) => return Err(e),
    };
    if created {
        share_like_root(root, &f)?;
    }
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(Some(TrimSkip::Locked));
        }
        return Err(e);
    }
    f.set_len(0)?;
    f.write_all(now.to_string().as_bytes())?;
    Ok(None)
}

/// Gives a file we just created in `root` the root's group and Go's 0666 limited to what the
/// root grants (so 0660 in a 2770 cache), whatever the umask. With a default ACL on the root
/// the kernel already derived the mode from it (no umask applies) and nothing is changed.
fn share_like_root(root: &Dir, f: &std::fs::File) -> io::Result<()> {
    let mut buf = Vec::new();
    if root
        .get_own_xattr(c"system.posix_acl_default", &mut buf)?
        .is_some()
    {
        return Ok(());
    }
    use std::os::fd::AsFd;
    if safefs::fstat(f.as_fd())?.gid != root.st.gid {
        nix::unistd::fchown(f.as_fd(), None, Some(root.st.gid.into()))?;
    }
    let mode = root.st.mode & 0o666;
    nix::sys::stat::fchmod(f.as_fd(), nix::sys::stat::Mode::from_bits_truncate(mode))?;
    Ok(())
}
