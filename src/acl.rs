//! POSIX ACLs as the policy sees them: what an entry has, what it should have, and writing
//! the difference.
//!
//! Reading decodes the kernel's `system.posix_acl_*` xattr directly (one `lgetxattr` per
//! entry through the parent's fd, the hot path of a scan). Writing goes through `posix-acl`
//! (libacl) on a `/proc/self/fd/N` path of an fd we pinned, never on a path that could be
//! swapped. Comparison is by *effective* permissions, because that is what decides whether
//! a build can write, and it is what files created under a default ACL end up with.

use crate::policy::{CachePolicy, Perm};
use std::collections::BTreeMap;
use std::fmt;

pub const XATTR_ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
pub const XATTR_DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";

const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;

/// Can anyone besides the owner (and root) write an inode with permission bits `mode`?
/// With an access ACL the group bits are its mask, which bounds the owning group and every
/// named entry, so the group and other write bits answer it with or without an ACL (a mask
/// granting write that no entry uses counts too: setfacl recomputes the mask from the
/// entries, so that takes a deliberate chmod). What "trusted" needs besides a trusted owner
/// (issue #22): a file someone else can write can change after it was hashed.
pub fn others_can_write(mode: u32) -> bool {
    mode & 0o022 != 0
}

/// Who besides the owner can write an inode, for reports: `group GID`, `user UID`, `others`,
/// by effective permissions (`acl`: its access ACL, `None` without one).
pub fn other_writers(mode: u32, gid: u32, acl: Option<&Acl>) -> Vec<String> {
    const W: u8 = 2;
    let mut out = Vec::new();
    match acl {
        Some(a) => {
            for (u, p) in &a.users {
                if a.effective(*p).0 & W != 0 {
                    out.push(format!("user {u}"));
                }
            }
            if a.effective(a.group_obj).0 & W != 0 {
                out.push(format!("group {gid}"));
            }
            for (g, p) in &a.groups {
                if a.effective(*p).0 & W != 0 {
                    out.push(format!("group {g}"));
                }
            }
        }
        None if mode & 0o020 != 0 => out.push(format!("group {gid}")),
        None => {}
    }
    if mode & 0o002 != 0 {
        out.push("others".to_string());
    }
    out
}

/// An ACL decoded into its classes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    pub user_obj: Perm,
    pub group_obj: Perm,
    pub other: Perm,
    pub mask: Option<Perm>,
    pub users: BTreeMap<u32, Perm>,
    pub groups: BTreeMap<u32, Perm>,
}

impl Acl {
    /// The minimal ACL equivalent to permission bits.
    pub fn from_mode(mode: u32) -> Acl {
        Acl {
            user_obj: Perm(((mode >> 6) & 7) as u8),
            group_obj: Perm(((mode >> 3) & 7) as u8),
            other: Perm((mode & 7) as u8),
            ..Acl::default()
        }
    }

    /// Decodes the kernel xattr format (version 2 header, then 8-byte entries).
    pub fn decode(b: &[u8]) -> Option<Acl> {
        if b.len() < 4 || u32::from_le_bytes(b[0..4].try_into().ok()?) != 2 {
            return None;
        }
        let mut a = Acl::default();
        for e in b[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = Perm((u16::from_le_bytes([e[2], e[3]]) & 7) as u8);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            match tag {
                TAG_USER_OBJ => a.user_obj = perm,
                TAG_USER => {
                    a.users.insert(id, perm);
                }
                TAG_GROUP_OBJ => a.group_obj = perm,
                TAG_GROUP => {
                    a.groups.insert(id, perm);
                }
                TAG_MASK => a.mask = Some(perm),
                TAG_OTHER => a.other = perm,
                _ => return None,
            }
        }
        Some(a)
    }

    /// Effective permissions of a group-class entry: limited by the mask when there is one.
    pub fn effective(&self, p: Perm) -> Perm {
        match self.mask {
            Some(m) => Perm(p.0 & m.0),
            None => p,
        }
    }

    /// What a member of named group `gid` effectively gets from a named entry.
    pub fn group_effective(&self, gid: u32) -> Option<Perm> {
        self.groups.get(&gid).map(|p| self.effective(*p))
    }

    /// Converts to libacl's representation for writing.
    pub fn to_posix(&self) -> posix_acl::PosixACL {
        use posix_acl::Qualifier as Q;
        let mut a = posix_acl::PosixACL::empty();
        a.set(Q::UserObj, u32::from(self.user_obj.0));
        a.set(Q::GroupObj, u32::from(self.group_obj.0));
        a.set(Q::Other, u32::from(self.other.0));
        for (u, p) in &self.users {
            a.set(Q::User(*u), u32::from(p.0));
        }
        for (g, p) in &self.groups {
            a.set(Q::Group(*g), u32::from(p.0));
        }
        if let Some(m) = self.mask {
            a.set(Q::Mask, u32::from(m.0));
        }
        a
    }
}

impl fmt::Display for Acl {
    /// `getfacl`'s short text, numeric ids: `u::rwx,g::r-x,g:1001:rwx,m::rwx,o::---`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "u::{}", self.user_obj)?;
        for (u, p) in &self.users {
            write!(f, ",u:{u}:{p}")?;
        }
        write!(f, ",g::{}", self.group_obj)?;
        for (g, p) in &self.groups {
            write!(f, ",g:{g}:{p}")?;
        }
        if let Some(m) = self.mask {
            write!(f, ",m::{m}")?;
        }
        write!(f, ",o::{}", self.other)
    }
}

/// The permissions the policy wants for one entry. Files get execute only where their
/// owner has it (`setfacl`'s `X`), so declaring `rwx` does not make data files executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub gid: u32,
    pub group: Perm,
    pub other: Option<Perm>,
}

impl Want {
    pub fn for_entry(policy: &CachePolicy, is_dir: bool, mode: u32) -> Option<Want> {
        let g = policy.group.as_ref()?;
        Some(Want::for_grant(
            g.gid,
            policy.group_access?,
            policy.other,
            is_dir,
            mode,
        ))
    }

    /// Group `gid` gets `access`, others `other`; execute only on directories and on files
    /// whose owner has it (as `setfacl`'s `X`).
    pub fn for_grant(gid: u32, access: Perm, other: Option<Perm>, is_dir: bool, mode: u32) -> Want {
        let owner_x = mode & 0o100 != 0;
        let adj = |p: Perm| if is_dir || owner_x { p } else { p.without_x() };
        Want {
            gid,
            group: adj(access),
            other: other.map(adj),
        }
    }

    /// Does `acl` (the entry's access ACL) give the group exactly what is wanted? Compared by
    /// effective permissions: named group entry, owning-group entry and mask. (`other` lives in
    /// the mode bits and is checked on its own.)
    pub fn access_ok(&self, acl: &Acl) -> bool {
        let named_ok = acl.group_effective(self.gid) == Some(self.group);
        let mask_ok = acl.mask == Some(self.group);
        let obj_ok = acl.effective(acl.group_obj) == self.group;
        let extra_ok = acl.groups.keys().all(|g| *g == self.gid) && acl.users.is_empty();
        named_ok && mask_ok && obj_ok && extra_ok
    }

    /// The access ACL to write: owner bits kept, group class and other as wanted.
    pub fn access_acl(&self, current: &Acl) -> Acl {
        Acl {
            user_obj: current.user_obj,
            group_obj: self.group,
            other: self.other.unwrap_or(current.other),
            mask: Some(self.group),
            users: BTreeMap::new(),
            groups: BTreeMap::from([(self.gid, self.group)]),
        }
    }

    /// The default ACL every directory must carry so that entries `go` creates later
    /// (mode 0666/0777 before masking) inherit the grant.
    pub fn default_acl(&self) -> Acl {
        Acl {
            user_obj: Perm(7),
            group_obj: self.group,
            other: self.other.unwrap_or(Perm(0)),
            mask: Some(self.group),
            users: BTreeMap::new(),
            groups: BTreeMap::from([(self.gid, self.group)]),
        }
    }

    pub fn default_ok(&self, acl: Option<&Acl>) -> bool {
        acl.is_some_and(|a| *a == self.default_acl())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (t, p, id) in entries {
            v.extend(t.to_le_bytes());
            v.extend(p.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn decode_and_effective() {
        let b = encode(&[
            (1, 7, u32::MAX),
            (4, 7, u32::MAX),
            (8, 7, 1001),
            (0x10, 6, u32::MAX),
            (0x20, 0, u32::MAX),
        ]);
        let a = Acl::decode(&b).expect("valid acl");
        assert_eq!(a.group_effective(1001), Some(Perm(6)));
        assert_eq!(a.to_string(), "u::rwx,g::rwx,g:1001:rwx,m::rw-,o::---");
        let want = Want {
            gid: 1001,
            group: Perm(6),
            other: Some(Perm(0)),
        };
        assert!(
            want.access_ok(&a),
            "a file made by go under a rwx default ACL is compliant"
        );
        let want_x = Want {
            gid: 1001,
            group: Perm(7),
            other: Some(Perm(0)),
        };
        assert!(!want_x.access_ok(&a));
        assert!(Acl::decode(&[1, 0, 0, 0]).is_none());
    }

    #[test]
    fn minimal_from_mode() {
        let a = Acl::from_mode(0o2750);
        assert_eq!(a.to_string(), "u::rwx,g::r-x,o::---");
        let want = Want {
            gid: 5,
            group: Perm(5),
            other: None,
        };
        assert!(!want.access_ok(&a), "no named entry");
    }
}
