//! The one judgement of an entry's group, setgid, other access and ACLs against what is
//! wanted: inspection reports what it says, apply fixes what it says, so `check`, the plan
//! and `enforce` never disagree about an entry.
//!
//! An ACL that is there but cannot be read or decoded is judged not to be the wanted one (a
//! wanted ACL is a handful of entries): it is a deviation `enforce` rewrites from the mode's
//! owner bits, not something to leave alone nor to guess about. An entry that vanished is
//! not judged at all.

use super::Violation;
use super::walk::Entry;
use crate::acl::{self, Acl, Want};
use crate::policy::{CachePolicy, Perm};
use crate::safefs::Dir;

/// What the policy (through the plan) wants of every entry's permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grant {
    pub gid: Option<u32>,
    pub setgid: bool,
    pub group_access: Option<Perm>,
    pub other: Option<Perm>,
}

impl Grant {
    pub fn from_policy(p: &CachePolicy) -> Grant {
        Grant {
            gid: p.group.as_ref().map(|g| g.gid),
            setgid: p.setgid,
            group_access: p.group_access,
            other: p.other,
        }
    }

    /// The ACL an entry with `mode` must carry, if the grant sets a group and its access.
    pub fn want(&self, is_dir: bool, mode: u32) -> Option<Want> {
        Some(Want::for_grant(
            self.gid?,
            self.group_access?,
            self.other,
            is_dir,
            mode,
        ))
    }
}

/// One ACL as read from an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRead {
    Absent,
    Present(Acl),
    /// There, but the read failed or the bytes are not an ACL.
    Unreadable,
}

impl AclRead {
    fn from_xattr(r: std::io::Result<Option<usize>>, buf: &[u8]) -> Option<AclRead> {
        match r {
            Ok(None) => Some(AclRead::Absent),
            Ok(Some(n)) => Some(
                buf.get(..n)
                    .and_then(Acl::decode)
                    .map_or(AclRead::Unreadable, AclRead::Present),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => Some(AclRead::Unreadable),
        }
    }
}

/// What is wrong with an entry, and what fixing it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Deviations, in the order apply fixes them (group, setgid, other, ACL, default ACL).
    pub todo: Vec<Violation>,
    /// The access ACL as it is (from the mode when absent or unreadable).
    pub current: Acl,
    pub want: Option<Want>,
    /// The other-access bits wanted (execute only where the owner has it, for files).
    pub other_want: Option<Perm>,
}

/// Judges an entry of `gid`/`mode` from its ACLs as read (`default` for directories only).
pub fn judge(
    g: &Grant,
    gid: u32,
    mode: u32,
    is_dir: bool,
    access: &AclRead,
    default: Option<&AclRead>,
) -> Judgement {
    let mut todo = Vec::new();
    if g.gid.is_some_and(|w| w != gid) {
        todo.push(Violation::Group);
    }
    if is_dir && g.setgid && mode & libc::S_ISGID == 0 {
        todo.push(Violation::Setgid);
    }
    let other_want = g.other.map(|o| {
        if is_dir || mode & 0o100 != 0 {
            o
        } else {
            o.without_x()
        }
    });
    if other_want.is_some_and(|o| (mode & 7) as u8 != o.bits()) {
        todo.push(Violation::OtherAccess);
    }
    let want = g.want(is_dir, mode);
    let current = match access {
        AclRead::Present(a) => a.clone(),
        AclRead::Absent | AclRead::Unreadable => Acl::from_mode(mode),
    };
    if let Some(w) = &want {
        if *access == AclRead::Unreadable || !w.access_ok(&current) {
            todo.push(Violation::Acl);
        }
        let def_ok = match default {
            None => true,
            Some(AclRead::Present(d)) => w.default_ok(Some(d)),
            Some(AclRead::Absent) => w.default_ok(None),
            Some(AclRead::Unreadable) => false,
        };
        if !def_ok {
            todo.push(Violation::DefaultAcl);
        }
    }
    Judgement {
        todo,
        current,
        want,
        other_want,
    }
}

/// [`judge`] for an entry whose ACLs cannot have changed since a walk judged them compliant
/// (the `seen` module): nothing is read; group, setgid and other access, which the walk's
/// `statx` gives, are judged as ever.
pub fn judge_unchanged(g: &Grant, st: &crate::safefs::Stat, is_dir: bool) -> Judgement {
    let default = is_dir.then_some(&AclRead::Absent);
    let mut j = judge(g, st.gid, st.mode, is_dir, &AclRead::Absent, default);
    j.todo
        .retain(|v| !matches!(v, Violation::Acl | Violation::DefaultAcl));
    j
}

/// Reads the ACLs of walk entry `e` (`dir`: its handle, for a directory) and judges it;
/// `None` if it vanished meanwhile.
pub fn judge_entry(
    g: &Grant,
    e: &Entry,
    dir: Option<&Dir>,
    xbuf: &mut Vec<u8>,
) -> Option<Judgement> {
    let st = e.st;
    let is_dir = dir.is_some();
    let needs_acl = g.want(is_dir, st.mode).is_some();
    let (access, default) = if needs_acl {
        let r = match (dir, e.parent) {
            (Some(d), _) => d.get_own_xattr(acl::XATTR_ACCESS, xbuf),
            (None, Some(p)) => p.get_xattr(e.name, acl::XATTR_ACCESS, xbuf),
            (None, None) => return None,
        };
        let access = AclRead::from_xattr(r, xbuf)?;
        let default = match dir {
            Some(d) => {
                let r = d.get_own_xattr(acl::XATTR_DEFAULT, xbuf);
                Some(AclRead::from_xattr(r, xbuf)?)
            }
            None => None,
        };
        (access, default)
    } else {
        (AclRead::Absent, None)
    };
    Some(judge(g, st.gid, st.mode, is_dir, &access, default.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            gid: Some(1234),
            setgid: true,
            group_access: Some(Perm(7)),
            other: Some(Perm(0)),
        }
    }

    /// An ACL that cannot be read is not the wanted one: one verdict (rewrite it) for
    /// inspection and apply alike. (Inspection used to call it unreadable and leave it,
    /// apply to rewrite it unplanned.)
    #[test]
    fn an_unreadable_acl_is_a_deviation_to_rewrite() {
        let g = grant();
        let mode = 0o2770 | libc::S_IFDIR;
        let good = Want::for_grant(1234, Perm(7), Some(Perm(0)), true, mode);
        let acc = AclRead::Present(good.access_acl(&Acl::from_mode(mode)));
        let def = AclRead::Present(good.default_acl());
        let ok = judge(&g, 1234, mode, true, &acc, Some(&def));
        assert_eq!(ok.todo, vec![]);
        let bad = judge(&g, 1234, mode, true, &AclRead::Unreadable, Some(&def));
        assert_eq!(bad.todo, vec![Violation::Acl]);
        assert_eq!(bad.current, Acl::from_mode(mode));
        let bad = judge(&g, 1234, mode, true, &acc, Some(&AclRead::Unreadable));
        assert_eq!(bad.todo, vec![Violation::DefaultAcl]);
        // A read that failed is unreadable; one that found nothing is absent.
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(
            AclRead::from_xattr(Err(eio), &[]),
            Some(AclRead::Unreadable)
        );
        assert_eq!(
            AclRead::from_xattr(Ok(Some(3)), b"xyz"),
            Some(AclRead::Unreadable)
        );
        assert_eq!(AclRead::from_xattr(Ok(None), &[]), Some(AclRead::Absent));
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(AclRead::from_xattr(Err(gone), &[]), None);
    }
}
