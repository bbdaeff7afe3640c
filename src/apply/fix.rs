//! Bringing one entry to the plan's permissions: group, setgid, other access, access and
//! default ACLs, as `scan::perms` judges it (the same judgement `check` reported). Called by
//! the rest walk children-first; a hardlinked file is refused, never changed.

use super::{Evictor, fail};
use crate::acl::Acl;
use crate::safefs::{self, Dir};
use crate::scan::Violation;
use crate::scan::perms::{Judgement, judge_entry};
use crate::scan::walk::Entry;
use std::io;

impl Evictor<'_> {
    /// Brings one file or directory to the policy's group, ACLs, setgid and other access.
    pub(super) fn fix_entry(&mut self, e: &Entry, dir: Option<&Dir>) {
        let Some(p) = &self.plan.permissions else {
            return;
        };
        let st = *e.st;
        let is_dir = dir.is_some();
        let Some(Judgement {
            todo,
            current,
            want,
            other_want,
        }) = judge_entry(&p.grant(), e, dir, &mut self.xbuf)
        else {
            return;
        };
        if todo.is_empty() {
            return;
        }
        let rel = e.rel();
        if !is_dir && st.nlink > 1 {
            // Changing it would change the file behind the other name too.
            self.refuse(Violation::Hardlink, e);
            return;
        }
        if self.dry {
            for v in todo {
                tracing::debug!(
                    "would fix {} of {}",
                    v.as_str(),
                    crate::scan::display_path(&rel)
                );
                *self.out.fixed.entry(v).or_default() += 1;
            }
            return;
        }
        let pinned;
        let (fd, path) = match dir {
            Some(d) => (d.as_fd(), d.proc_path()),
            None => {
                let Some(parent) = e.parent else { return };
                pinned = match parent.pin(e.name, &st) {
                    Ok(p) => p,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return,
                    Err(err) => return fail(&mut self.out, &rel, "pin", &err),
                };
                (pinned.as_fd(), pinned.proc_path())
            }
        };
        let res = (|| -> io::Result<()> {
            if todo.contains(&Violation::Group) {
                let gid = p.gid.map(Into::into);
                nix::unistd::fchownat(fd, "", None, gid, nix::fcntl::AtFlags::AT_EMPTY_PATH)?;
            }
            if let Some(w) = &want {
                if todo.contains(&Violation::Acl) || todo.contains(&Violation::OtherAccess) {
                    let mut a = w.access_acl(&current);
                    if let Some(o) = other_want {
                        a.other = o;
                    }
                    write_acl(&path, &a, false)?;
                }
                if todo.contains(&Violation::DefaultAcl) {
                    write_acl(&path, &w.default_acl(), true)?;
                }
            }
            // Last, the mode: chown and ACL writes may have cleared setgid; the group bits
            // are the ACL mask now and are kept as they are. Only a directory's setgid and
            // other access without an ACL are set through the mode: anything else (a file
            // under an ACL policy, most of a cache) needs no `statx` to learn it is done.
            let mode_wanted = (is_dir && p.setgid) || (other_want.is_some() && want.is_none());
            if !mode_wanted {
                return Ok(());
            }
            let now = safefs::fstat(fd)?;
            let mut mode = now.perm_bits();
            if is_dir && p.setgid {
                mode |= libc::S_ISGID;
            }
            if let (Some(o), None) = (other_want, &want) {
                mode = (mode & !0o7) | u32::from(o.bits());
            }
            if mode != now.perm_bits() {
                nix::sys::stat::fchmodat(
                    nix::fcntl::AT_FDCWD,
                    path.as_str(),
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                for v in todo {
                    *self.out.fixed.entry(v).or_default() += 1;
                }
            }
            Err(err) => fail(&mut self.out, &rel, "fix", &err),
        }
    }
}

pub(super) fn write_acl(path: &str, a: &Acl, default: bool) -> io::Result<()> {
    let mut p = a.to_posix();
    let r = if default {
        p.write_default_acl(path)
    } else {
        p.write_acl(path)
    };
    r.map_err(|e| {
        e.as_io_error().map_or_else(
            || io::Error::other(e.to_string()),
            |i| io::Error::new(i.kind(), i.to_string()),
        )
    })
}
