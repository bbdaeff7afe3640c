//! `getxattrat(2)` (Linux 6.13): an extended attribute of a child read through its parent's
//! fd, one path component resolved. Before it, reading a child's ACL without following it
//! and without a walk from `/` meant `lgetxattr("/proc/self/fd/N/name")`: the kernel walks
//! `/proc`, the task, its fd table and the magic link on every call, which made the ACL read
//! cost more than the entry's `statx` (issue #24: 0.62 s for `check` of a 100k-entry ACL
//! tree against 0.27 s without ACLs). Hand-written on `libc::syscall` because neither libc
//! (no `SYS_getxattrat` for x86_64 yet) nor nix wraps it; where the kernel or a seccomp
//! filter refuses it (see [`refused`]) the caller falls back to the `/proc` path for the
//! rest of the process's life.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The syscall number: new syscalls share one number on every architecture since 5.1
/// (`include/uapi/asm-generic/unistd.h` and `arch/x86/entry/syscalls/syscall_64.tbl` agree).
const SYS_GETXATTRAT: libc::c_long = 464;

/// `struct xattr_args` (include/uapi/linux/xattr.h).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Set once the kernel or a filter refused the call: every later read goes the old way at once.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Whether [`get`] may be tried at all (false once the kernel refused it).
pub fn available() -> bool {
    !UNAVAILABLE.load(Relaxed)
}

/// Reads attribute `attr` of child `name` of `dir` without following `name` if it is a
/// symlink, into `buf` (grown on `ERANGE` up to 64 KiB); `None` when absent. An error
/// [`refused`] says is the kernel's or a filter's refusal (remembered: see [`available`]).
pub fn get(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    let r = super::xattr_loop(buf, |b| {
        let mut args = XattrArgs {
            value: b.as_mut_ptr() as u64,
            size: u32::try_from(b.len()).unwrap_or(u32::MAX),
            flags: 0,
        };
        // SAFETY: `args` points at memory we own for `b.len()` bytes, both strings are
        // valid C strings, and the size passed is that of the struct.
        unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            ) as isize
        }
    });
    if let Err(e) = &r
        && refused(e)
    {
        UNAVAILABLE.store(true, Relaxed);
    }
    r
}

/// The kernel has no `getxattrat`, or a seccomp filter refuses it: systemd's filters answer
/// syscalls they do not know with `SystemCallErrorNumber=` (EPERM in our units) and
/// systemd < 257 does not know this one. A read of an xattr never fails with `EPERM`
/// otherwise (no access is `EACCES`), so neither answer can hide a real one; the worst a
/// wrong guess costs is the slower path.
pub fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `getxattrat` reads what `lgetxattr` through `/proc` reads (the fallback), and never
    /// follows a symlink: a link to a file with an ACL has none.
    #[test]
    fn reads_what_the_proc_path_reads_and_never_follows_a_symlink() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("f");
        std::fs::write(&f, b"x").expect("write");
        let mut acl = posix_acl::PosixACL::new(0o640);
        acl.set(posix_acl::Qualifier::Group(4242), 6);
        acl.write_acl(&f)
            .expect("ACLs on the temp directory's filesystem");
        std::os::unix::fs::symlink(&f, d.path().join("l")).expect("symlink");
        let dir = crate::safefs::Dir::open_root(d.path()).expect("open");
        let attr = c"system.posix_acl_access";
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let n = match get(dir.as_fd(), c"f", attr, &mut a) {
            Err(e) if refused(&e) => {
                // Linux < 6.13: the `/proc` path is what runs, and other tests cover it.
                assert!(std::env::var_os("CI").is_none(), "CI runs on Linux >= 6.13");
                return;
            }
            r => r.expect("getxattrat").expect("an ACL"),
        };
        let proc = std::ffi::CString::new(format!("/proc/self/fd/{}/f", dir.as_fd().as_raw_fd()))
            .expect("path");
        let m = super::super::get_xattr_path(&proc, attr, &mut b)
            .expect("lgetxattr")
            .expect("an ACL");
        assert_eq!(a[..n], b[..m]);
        // The kernel's format: a 4-byte version, then (tag u16, perm u16, id u32) entries; a
        // named group is tag 0x08.
        let named_group = a[4..n].chunks_exact(8).any(|e| {
            e[0..2] == 0x08u16.to_le_bytes()
                && e[2..4] == 6u16.to_le_bytes()
                && e[4..8] == 4242u32.to_le_bytes()
        });
        assert!(named_group, "{:?}", &a[..n]);
        assert_eq!(get(dir.as_fd(), c"l", attr, &mut a).expect("link"), None);
        assert!(get(dir.as_fd(), c"missing", attr, &mut a).is_err());
    }
}
