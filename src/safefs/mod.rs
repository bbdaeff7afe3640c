//! Directory handles that cannot be tricked into leaving the cache.
//!
//! Everything the agent does inside a cache goes through a [`Dir`]: a directory opened by
//! fd, whose children are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV)` and compared by (dev, ino) with what was listed, so a symlink or a mount
//! swapped in between listing and opening is refused rather than followed. Files are changed
//! only through `O_PATH` fds that were re-`fstat`ed (see [`Dir::pin`]). This module knows
//! nothing about Go or policy; it is the syscall boundary, kept small so it can be audited.

/// Opening a cache root by path so no user's symlink or directory on the way can redirect it.
pub mod chase;
mod xattrat;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What `statx` told us about one inode (never following a final symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Allocated bytes (`st_blocks * 512`), what fills the disk and what `du -B1` shows.
    pub alloc: u64,
    pub atime: i64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Status change time: moves with every change of the content or the inode, and only
    /// the kernel sets it (what `cacheprog::memo` relies on).
    pub ctime: i64,
    pub ctime_nsec: u32,
    /// The inode is the root of a mount (a bind mount of the same filesystem included).
    pub mount_root: bool,
}

/// Which of an inode's times say it was used: the one signal inspection, apply's re-check
/// before `unlinkat` and the module cache's units all read (`Stat::last_use`). Which one a
/// cache has is the policy's to say (`last_use`, see `policy`); this module only reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LastUse {
    /// The mtime alone: what cmd/go sets on each hit (at most once an hour) and trims by. A
    /// read by anyone, a backup's or a scanner's, does not move it, and `cp -a` keeps it.
    Mtime,
    /// The newer of atime and mtime: the last resort where builds cannot set times (other
    /// users' hits in a shared cache, the module cache). Any read moves atime (`relatime`:
    /// at most daily), by a build or by any other program; our own reads use `O_NOATIME`.
    /// The default only for a plan that names no signal (written before there was a
    /// choice): the signal that counts more as use never evicts what such a plan kept.
    #[default]
    Atime,
}

impl LastUse {
    pub fn as_str(self) -> &'static str {
        match self {
            LastUse::Mtime => "mtime",
            LastUse::Atime => "atime",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// FIFO, socket, device: never opened, never changed.
    Special,
}

impl Stat {
    pub fn kind(&self) -> Kind {
        match self.mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
    /// When this inode was last used, as `by` reads it (see [`LastUse`]).
    pub fn last_use(&self, by: LastUse) -> i64 {
        match by {
            LastUse::Mtime => self.mtime,
            LastUse::Atime => self.atime.max(self.mtime),
        }
    }
    pub fn perm_bits(&self) -> u32 {
        self.mode & 0o7777
    }
    /// Same inode, unchanged content time: safe to act on what was planned.
    pub fn same_entry(&self, other: &Stat) -> bool {
        self.dev == other.dev
            && self.ino == other.ino
            && self.mtime == other.mtime
            && self.mtime_nsec == other.mtime_nsec
            && self.kind() == other.kind()
    }
}

fn statx_raw(dirfd: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<Stat> {
    let mut sx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx writes into the buffer we own; name is a valid C string.
    let r = unsafe {
        libc::statx(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_BASIC_STATS,
            sx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded and filled the struct.
    let sx = unsafe { sx.assume_init() };
    let mount_root = sx.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
        && sx.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0;
    Ok(Stat {
        dev: libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        ino: sx.stx_ino,
        mode: u32::from(sx.stx_mode),
        nlink: sx.stx_nlink,
        uid: sx.stx_uid,
        gid: sx.stx_gid,
        size: sx.stx_size,
        alloc: sx.stx_blocks.saturating_mul(512),
        atime: sx.stx_atime.tv_sec,
        mtime: sx.stx_mtime.tv_sec,
        mtime_nsec: sx.stx_mtime.tv_nsec,
        ctime: sx.stx_ctime.tv_sec,
        ctime_nsec: sx.stx_ctime.tv_nsec,
        mount_root,
    })
}

/// `statx` of `name` in directory `dirfd`, never following it.
pub fn stat_at(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    statx_raw(dirfd, name, 0)
}

/// `fstat` of an fd (through statx, for the mount-root attribute).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    statx_raw(fd, c"", libc::AT_EMPTY_PATH)
}

/// A directory opened by fd, with the identity it had when opened.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    pub st: Stat,
}

/// A non-directory pinned by an `O_PATH` fd whose identity was re-checked.
#[derive(Debug)]
pub struct Pinned {
    fd: OwnedFd,
    pub st: Stat,
}

impl Pinned {
    /// A path naming exactly this inode, for APIs that only take paths (libacl, chmod).
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the pinned inode for I/O through its `/proc/self/fd` magic link: the same inode,
    /// already verified to be a regular file with a single name.
    pub fn reopen(&self, flags: OFlag) -> io::Result<std::fs::File> {
        if self.st.kind() != Kind::File || self.st.nlink != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file with a single name",
            ));
        }
        let fd = nix::fcntl::open(
            self.proc_path().as_str(),
            flags | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(std::fs::File::from(fd))
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Dir {
    /// Opens the cache root itself, component by component from `/` (see
    /// [`crate::safefs::chase`]): the final component must be a real directory (no symlink), and no
    /// user's symlink, directory or mount on the way can lead elsewhere.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let (fd, st) = crate::safefs::chase::open_dir(path)?;
        Ok(Dir { fd, st })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A path naming exactly this directory, for path-only APIs (libacl).
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// `statx` of a child, never following it.
    pub fn stat(&self, name: &CStr) -> io::Result<Stat> {
        statx_raw(self.fd.as_fd(), name, 0)
    }

    fn open_beneath(&self, name: &CStr, flags: OFlag) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        match openat2(self.fd.as_fd(), name, how) {
            Ok(fd) => Ok(fd),
            // No usable openat2: openat with O_NOFOLLOW on a single component; the caller's
            // (dev, ino) check and the mount-root attribute stand in for RESOLVE_NO_XDEV.
            Err(e) if openat2_unavailable(e) => Ok(nix::fcntl::openat(
                self.fd.as_fd(),
                single(name)?,
                flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens child directory `name`, which must still be the inode described by `expect`
    /// (as listed), on the same filesystem, and not a mount root.
    pub fn open_dir(&self, name: &CStr, expect: &Stat) -> io::Result<Dir> {
        let fd = self.open_beneath(name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let st = fstat(fd.as_fd())?;
        check_identity(&st, expect, self.st.dev)?;
        Ok(Dir { fd, st })
    }

    /// Pins child `name` by an `O_PATH` fd (no open side effects, even for devices) and checks
    /// it is still the inode described by `expect`.
    pub fn pin(&self, name: &CStr, expect: &Stat) -> io::Result<Pinned> {
        let fd = self.open_beneath(name, OFlag::O_PATH)?;
        let st = fstat(fd.as_fd())?;
        check_identity(&st, expect, self.st.dev)?;
        Ok(Pinned { fd, st })
    }

    /// Opens regular file `name` for reading. The file is pinned with `O_PATH` and checked to
    /// be a regular file with one name before it is opened, so a device or FIFO swapped in is
    /// never opened. `O_NOATIME` where permitted: our reads must not look like a build's use.
    pub fn open_read(&self, name: &CStr, expect: &Stat) -> io::Result<std::fs::File> {
        self.open_read_stat(name, expect).map(|(f, _)| f)
    }

    /// [`Dir::open_read`], and the inode's state as the pin found it just before (a fresh
    /// `statx` of exactly the inode opened, identity already checked against `expect`).
    pub fn open_read_stat(&self, name: &CStr, expect: &Stat) -> io::Result<(std::fs::File, Stat)> {
        let pinned = self.pin(name, expect)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let f = match pinned.reopen(flags | OFlag::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => pinned.reopen(flags),
            r => r,
        }?;
        Ok((f, pinned.st))
    }

    /// Reads up to `max` bytes of regular file `name` (e.g. an action record); see
    /// [`Dir::open_read`].
    pub fn read_small(&self, name: &CStr, expect: &Stat, max: usize) -> io::Result<Vec<u8>> {
        read_up_to(self.open_read(name, expect)?, max, expect.size)
    }

    /// Creates regular file `name` (it must not exist) beneath this directory.
    pub fn create_file(&self, name: &CStr, mode: u32) -> io::Result<std::fs::File> {
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        match openat2(self.fd.as_fd(), name, how) {
            Ok(fd) => Ok(std::fs::File::from(fd)),
            // O_CREAT | O_EXCL never follows a final symlink; a single component cannot
            // leave this directory.
            Err(e) if openat2_unavailable(e) => Ok(std::fs::File::from(nix::fcntl::openat(
                self.fd.as_fd(),
                single(name)?,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            )?)),
            Err(e) => Err(e.into()),
        }
    }

    /// `flock(LOCK_EX | LOCK_NB)` on this directory: `false` if someone else holds a lock.
    /// The lock is held until this handle is dropped.
    pub fn try_lock(&self) -> io::Result<bool> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// Lists the children's names (without `.` and `..`) through a fresh open file
    /// description, so listing never disturbs another reader's offset. Costs memory per name:
    /// for directories users fill (shards, executable outputs) use [`Dir::listing`].
    pub fn list(&self) -> io::Result<Vec<CString>> {
        let mut l = self.listing()?;
        let mut out = Vec::new();
        let mut batch = Vec::new();
        loop {
            l.next_batch(LIST_BATCH, &mut batch)?;
            if batch.is_empty() {
                return Ok(out);
            }
            out.append(&mut batch);
        }
    }

    /// The children's names in batches ([`Listing::next_batch`]), through a fresh open file
    /// description: memory stays bounded by the batch whatever the directory holds.
    pub fn listing(&self) -> io::Result<Listing> {
        // O_NOATIME where permitted: listing must not make a directory (an executable output)
        // look used.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(
            self.fd.as_fd(),
            c".",
            flags | OFlag::O_NOATIME,
            Mode::empty(),
        ) {
            Err(Errno::EPERM) => nix::fcntl::openat(self.fd.as_fd(), c".", flags, Mode::empty())?,
            r => r?,
        };
        Ok(Listing {
            it: Some(nix::dir::Dir::from_fd(fd)?.into_iter()),
        })
    }

    /// Calls `f` with every child's name, streaming: entries `f` removes meanwhile are fine
    /// (Linux `getdents` neither repeats nor skips the others).
    pub fn for_each_name(&self, mut f: impl FnMut(&CStr)) -> io::Result<()> {
        let mut l = self.listing()?;
        let mut batch = Vec::new();
        loop {
            l.next_batch(LIST_BATCH, &mut batch)?;
            if batch.is_empty() {
                return Ok(());
            }
            for n in &batch {
                f(n);
            }
        }
    }

    /// Removes child `name` (a file, or an empty directory with `dir`) after checking it is
    /// still the entry described by `expect`. `unlinkat` never follows a symlink, so the
    /// worst a race can do is make us skip.
    pub fn remove(&self, name: &CStr, expect: &Stat) -> io::Result<()> {
        self.remove_if(name, expect, |_| true).map(drop)
    }

    /// [`Dir::remove`], after asking `still_due` about the entry as it is now (one `statx`
    /// serves both questions); `Ok(false)` if it said no and nothing was removed.
    pub fn remove_if(
        &self,
        name: &CStr,
        expect: &Stat,
        still_due: impl FnOnce(&Stat) -> bool,
    ) -> io::Result<bool> {
        let now = self.stat(name)?;
        self.remove_if_fresh(name, expect, &now, still_due)
    }

    /// [`Dir::remove_if`] for an entry whose state `now` was just taken (by
    /// [`Dir::open_read_stat`] a moment before): the same re-check of identity and last use
    /// on it, one `statx` fewer. Between that `statx` and the `unlinkat` the window is the
    /// same as `remove_if`'s own.
    pub fn remove_if_fresh(
        &self,
        name: &CStr,
        expect: &Stat,
        now: &Stat,
        still_due: impl FnOnce(&Stat) -> bool,
    ) -> io::Result<bool> {
        let now = *now;
        if !still_due(&now) {
            return Ok(false);
        }
        // A directory's mtime moves when its children go; its identity is (dev, ino, type).
        let same = if now.kind() == Kind::Dir {
            now.dev == expect.dev && now.ino == expect.ino && expect.kind() == Kind::Dir
        } else {
            now.same_entry(expect)
        };
        if !same {
            return Err(io::Error::other("entry changed since it was planned"));
        }
        let flag = if now.kind() == Kind::Dir {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(self.fd.as_fd(), name, flag)?;
        Ok(true)
    }

    /// Creates a child directory with `mode` (umask applies) and opens it.
    pub fn mkdir(&self, name: &CStr, mode: u32) -> io::Result<Dir> {
        nix::sys::stat::mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(mode))?;
        let st = self.stat(name)?;
        self.open_dir(name, &st)
    }

    /// Reads an extended attribute of child `name` without following it and without a
    /// second path walk from `/` (through this directory's fd). `None` when absent.
    pub fn get_xattr(
        &self,
        name: &CStr,
        attr: &CStr,
        buf: &mut Vec<u8>,
    ) -> io::Result<Option<usize>> {
        if xattrat::available() {
            match xattrat::get(self.fd.as_fd(), name, attr, buf) {
                Err(e) if xattrat::refused(&e) => {}
                r => return r,
            }
        }
        let mut p = format!("/proc/self/fd/{}/", self.fd.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        let p = CString::new(p).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        get_xattr_path(&p, attr, buf)
    }

    /// Reads an extended attribute of this directory itself (through its fd: a
    /// `/proc/self/fd` path would name the magic link, not the directory, for `lgetxattr`).
    pub fn get_own_xattr(&self, attr: &CStr, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: buffer pointer/len describe memory we own; fd is open.
        xattr_loop(buf, |b| unsafe {
            libc::fgetxattr(fd, attr.as_ptr(), b.as_mut_ptr().cast(), b.len())
        })
    }

    /// Opens the directory `rel` (any number of components) beneath this one, refusing every
    /// symlink on the way (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): for paths a user
    /// controls, such as a cache inside their home. Needs openat2 (Linux 5.6).
    pub fn open_path(&self, rel: &Path) -> io::Result<Dir> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = nix::fcntl::openat2(self.fd.as_fd(), rel, how)?;
        let st = fstat(fd.as_fd())?;
        Ok(Dir { fd, st })
    }
}

/// Opens file `name` directly beneath `dirfd` for reading in one `openat2`: no symlink, no
/// magic link, no mount crossed, non-blocking, close-on-exec. The caller `fstat`s what it got.
/// Only for code that runs as the file's owner (the cache program in its own cache, counters
/// read with their owner's credentials): an unprivileged user cannot make a device node, and a
/// FIFO opened non-blocking reads nothing. Root uses [`Dir::open_read`], which opens only a
/// pinned, re-checked regular file.
pub fn open_beneath_as_owner(dirfd: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(
            OFlag::O_RDONLY
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
        )
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    nix::fcntl::openat2(dirfd, name, how)
}

/// Whether an `openat2` failure means the syscall itself is unusable here, so the `openat`
/// fallback must be taken: `ENOSYS` (kernels before 5.6), `EPERM` (a seccomp filter written
/// before openat2 existed denies unknown syscalls with EPERM: systemd's own `chase()` falls
/// back on it too) and `EOPNOTSUPP`. Any other error is the answer about the file.
pub fn openat2_unavailable(e: Errno) -> bool {
    matches!(e, Errno::ENOSYS | Errno::EPERM | Errno::EOPNOTSUPP)
}

/// The fallback's precondition: `name` is one path component, so `openat` cannot resolve
/// anything beyond this directory but the name itself.
fn single(name: &CStr) -> io::Result<&CStr> {
    let b = name.to_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b".." {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    Ok(name)
}

/// `openat2`, or (tests only) a pretended `ENOSYS` so every path through the fallback runs.
fn openat2(dirfd: BorrowedFd<'_>, name: &CStr, how: OpenHow) -> nix::Result<OwnedFd> {
    #[cfg(test)]
    if tests::FORCE_FALLBACK.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Errno::ENOSYS);
    }
    nix::fcntl::openat2(dirfd, name, how)
}

/// Names read per batch by [`Dir::for_each_name`], [`Dir::list`] and the walk: about 100 KiB
/// of Go-cache names, and one `getdents` buffer's worth.
pub const LIST_BATCH: usize = 1024;

/// A directory being read; see [`Dir::listing`].
pub struct Listing {
    /// `None` once the end was seen: the fd is closed then, so a directory that fits in one
    /// batch holds no fd while its children are visited (a deep tree costs one fd per level).
    it: Option<nix::dir::OwningIter>,
}

impl Listing {
    /// Replaces `out` with up to `max` more names (without `.` and `..`); empty at the end.
    pub fn next_batch(&mut self, max: usize, out: &mut Vec<CString>) -> io::Result<()> {
        out.clear();
        let Some(it) = self.it.as_mut() else {
            return Ok(());
        };
        while out.len() < max {
            match it.next() {
                Some(e) => {
                    let e = e?;
                    let n = e.file_name();
                    if n != c"." && n != c".." {
                        out.push(n.to_owned());
                    }
                }
                None => {
                    self.it = None;
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Reads at most `max` bytes from `f`, a regular file `expect_len` bytes long when it was
/// listed. Stops as soon as that many bytes are in: on the hot path (one action record per
/// entry) this saves the extra `read` that only confirms end of file.
pub fn read_up_to(mut f: std::fs::File, max: usize, expect_len: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let want = usize::try_from(expect_len).map_or(max, |n| n.min(max));
    let mut buf = vec![0; max];
    let mut got = 0;
    while got < max {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got >= want {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn get_xattr_path(p: &CStr, attr: &CStr, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    // SAFETY: buffer pointer/len describe memory we own; both strings are valid C strings.
    xattr_loop(buf, |b| unsafe {
        libc::lgetxattr(p.as_ptr(), attr.as_ptr(), b.as_mut_ptr().cast(), b.len())
    })
}

/// Calls a `getxattr`-family function, growing `buf` on ERANGE; `None` when absent.
fn xattr_loop(
    buf: &mut Vec<u8>,
    mut call: impl FnMut(&mut [u8]) -> isize,
) -> io::Result<Option<usize>> {
    if buf.len() < 256 {
        buf.resize(256, 0);
    }
    loop {
        let r = call(buf);
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 16 => {
                let n = buf.len() * 4;
                buf.resize(n, 0);
            }
            _ => return Err(e),
        }
    }
}

fn check_identity(st: &Stat, expect: &Stat, parent_dev: u64) -> io::Result<()> {
    if st.dev != expect.dev || st.ino != expect.ino || st.kind() != expect.kind() {
        return Err(io::Error::other("entry was replaced since it was listed"));
    }
    if st.dev != parent_dev || st.mount_root {
        // EXDEV, as openat2's RESOLVE_NO_XDEV says it: callers treat both the same.
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(())
}

/// Converts a child name for display: lossless bytes into a path component.
pub fn name_os(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

/// Checks `name` is a single path component (no `/`, not `.` or `..`).
pub fn component(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    cstr(name)
}

/// Free and total space and inodes of the filesystem holding `dir`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FsStat {
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    /// The device (`st_dev`) of the directory: caches with the same one share the space.
    pub dev: u64,
}

pub fn fs_stat(dir: &Dir) -> io::Result<FsStat> {
    fs_stat_fd(dir.as_fd(), dir.st.dev)
}

/// [`fs_stat`] for any fd (an `O_PATH` one will do) on device `dev`.
pub fn fs_stat_fd(fd: BorrowedFd<'_>, dev: u64) -> io::Result<FsStat> {
    let s = nix::sys::statvfs::fstatvfs(fd)?;
    let f = s.fragment_size() as u64;
    Ok(FsStat {
        dev,
        size_bytes: s.blocks() as u64 * f,
        free_bytes: s.blocks_free() as u64 * f,
        avail_bytes: s.blocks_available() as u64 * f,
        inodes_total: s.files() as u64,
        inodes_free: s.files_free() as u64,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Makes every `openat2` in this test process fail with ENOSYS. The fallback must be
    /// equivalent, so other tests running meanwhile are unaffected in outcome.
    pub(crate) static FORCE_FALLBACK: AtomicBool = AtomicBool::new(false);

    #[test]
    fn fallback_is_taken_on_enosys_eperm_eopnotsupp_only() {
        for e in [Errno::ENOSYS, Errno::EPERM, Errno::EOPNOTSUPP] {
            assert!(openat2_unavailable(e), "{e}");
        }
        for e in [
            Errno::EACCES,
            Errno::ELOOP,
            Errno::EXDEV,
            Errno::ENOENT,
            Errno::EAGAIN,
        ] {
            assert!(!openat2_unavailable(e), "{e}");
        }
        assert!(single(c"..").is_err() && single(c"a/b").is_err() && single(c"a").is_ok());
    }
}
