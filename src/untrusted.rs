//! Reading files that unprivileged users control, without letting them freeze, exhaust or
//! read through the agent.
//!
//! The agent runs as root and reads, on every sweep, files local users name: their units'
//! `EnvironmentFile=`s, the `GOENV` file and `go.env` those units' `go` would read, the `go`
//! found on a unit's `PATH`. Each such read goes through [`read_bounded`] (or [`read_head`]):
//! the path is pinned with `O_PATH` (which opens nothing, so a device is never opened), the
//! pinned inode must be a regular file, and only then is it opened through its
//! `/proc/self/fd` link with `O_NONBLOCK` and read up to a bound. A FIFO, a device or
//! `/dev/zero` is therefore an error naming the file, never a blocked event loop or an
//! allocation without end. Final symlinks are followed, as systemd and `go` follow them:
//! what makes that safe is [`with_creds`], which runs such reads on a dedicated thread whose
//! file-system identity (fsuid, fsgid, supplementary groups) is the user's, so root reads
//! nothing the user could not read. A read there that blocks anyway (in a FUSE file system
//! whose server never answers) is given up after [`AS_USER_TIMEOUT`]. This module changes
//! nothing on disk.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// What the agent reads at most of a `GOENV` file or `go.env` (cmd/go's own files are a few
/// hundred bytes; anything near this bound is not a configuration file).
pub const GOENV_MAX_BYTES: usize = 64 * 1024;

/// Reads at most `max` bytes of regular file `path`; a longer file is an error (the caller
/// decides whether that means "refused" or "not inspected"). `NotFound` is passed through
/// unchanged so callers can treat a missing file as cmd/go and systemd do.
pub fn read_bounded(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let mut f = open_regular(path)?;
    let mut buf = Vec::new();
    // One byte past the bound tells "exactly at the bound" from "over it".
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    (&mut f).take(limit).read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// The first `n` bytes of regular file `path` (fewer if it is shorter).
pub fn read_head(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let mut buf = Vec::with_capacity(n);
    f.take(u64::try_from(n).unwrap_or(u64::MAX))
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Opens `path` for reading only if it is a regular file: pinned with `O_PATH` first (no
/// open side effects, no blocking on a FIFO), checked, then reopened through the pin with
/// `O_NONBLOCK` so even a swap after the check cannot make the read block.
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let pin = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    let st = crate::safefs::fstat(pin.as_fd())?;
    if st.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({}): not read", type_name(st.mode)),
        ));
    }
    let proc = format!("/proc/self/fd/{}", pin.as_raw_fd());
    let fd = nix::fcntl::open(
        proc.as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

fn type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "not a regular file",
    }
}

/// A file-system identity: the user whose permissions a read is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group included, as `getgrouplist` gives them).
    pub groups: Vec<u32>,
}

impl Creds {
    /// `uid` with the primary group and supplementary groups of its passwd/group entries.
    pub fn of_uid(uid: u32) -> io::Result<Creds> {
        let pw = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(io::Error::from)?
            .ok_or_else(|| io::Error::other(format!("uid {uid} has no passwd entry")))?;
        let name = std::ffi::CString::new(pw.name.as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let groups = nix::unistd::getgrouplist(&name, pw.gid).map_err(io::Error::from)?;
        Ok(Creds {
            uid,
            gid: pw.gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        })
    }
}

/// How long a read with a user's identity may take. Local files answer in microseconds; a
/// user can make a read wait for good with a file system they serve themselves (FUSE, through
/// `fusermount`), which `O_NONBLOCK` does not help against.
pub const AS_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader threads of one user given up on and still blocked. Such a thread cannot be
/// cancelled; past this many, that user's reads fail at once until some return, and other
/// users' reads go on.
pub const MAX_READERS_PER_USER: usize = 4;
/// Reader threads of all users given up on and still blocked.
pub const MAX_READERS: usize = 64;
/// Reader threads given up on and still blocked, by uid.
static STUCK: Mutex<BTreeMap<u32, usize>> = Mutex::new(BTreeMap::new());

fn stuck() -> std::sync::MutexGuard<'static, BTreeMap<u32, usize>> {
    STUCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where one reader thread is: the caller and the thread agree under its lock on who counts it
/// as stuck and who uncounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Running,
    GivenUp,
    Done,
}

/// Reader threads of `uid` given up on and still blocked.
#[cfg(test)]
fn readers_of(uid: u32) -> usize {
    stuck().get(&uid).copied().unwrap_or(0)
}

/// Runs `f` on a fresh thread whose fsuid, fsgid and supplementary groups are `creds`, so every
/// file it opens is checked against that user's permissions (Linux drops the file
/// capabilities `CAP_DAC_OVERRIDE`/`CAP_DAC_READ_SEARCH` of a thread whose fsuid leaves 0).
/// Credentials are per thread in the kernel: raw syscalls change only this thread, where
/// glibc's `setgroups` would broadcast to every thread of the agent. The thread ends with `f`,
/// so nothing is switched back. If the identity cannot be taken (a seccomp filter, missing
/// `CAP_SETUID`), `f` does not run: reading as root instead is exactly what must not happen.
///
/// The caller waits at most [`AS_USER_TIMEOUT`]: a thread still blocked then (in a file system
/// that does not answer) is left behind with an error of kind `TimedOut`; once
/// [`MAX_READERS_PER_USER`] threads of a user (or [`MAX_READERS`] in all) are left behind, reads
/// as that user fail at once until some return.
pub fn with_creds<T: Send + 'static>(
    creds: &Creds,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    if nix::unistd::geteuid().as_raw() == creds.uid {
        // Already this user (the per-user agent, or root for root's own units).
        return Ok(f());
    }
    {
        let r = stuck();
        let mine = r.get(&creds.uid).copied().unwrap_or(0);
        let total: usize = r.values().sum();
        if mine >= MAX_READERS_PER_USER || total >= MAX_READERS {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{mine} reads as uid {} ({total} in all) are still blocked (a file system \
                     that does not answer?): not read",
                    creds.uid
                ),
            ));
        }
    }
    let state = std::sync::Arc::new(Mutex::new(Reader::Running));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (c, st) = (creds.clone(), state.clone());
    std::thread::Builder::new()
        .name("gcw-as-user".to_owned())
        .spawn(move || {
            let r = become_fs(&c).map(|()| f());
            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
            if *s == Reader::GivenUp {
                let mut stuck = stuck();
                if let Some(n) = stuck.get_mut(&c.uid) {
                    *n -= 1;
                    if *n == 0 {
                        stuck.remove(&c.uid);
                    }
                }
            }
            *s = Reader::Done;
            drop(s);
            // The caller may have stopped waiting; then the result is dropped here.
            let _ = tx.send(r);
        })?;
    match rx.recv_timeout(AS_USER_TIMEOUT) {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if *s == Reader::Done {
                // It finished just now: its result is on its way.
                drop(s);
                return rx
                    .recv()
                    .map_err(|_| io::Error::other("reader thread panicked"))?;
            }
            *s = Reader::GivenUp;
            *stuck().entry(creds.uid).or_default() += 1;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "reading as uid {} took longer than {AS_USER_TIMEOUT:?} (a file system that \
                     does not answer?): given up",
                    creds.uid
                ),
            ))
        }
        Err(RecvTimeoutError::Disconnected) => Err(io::Error::other("reader thread panicked")),
    }
}

fn become_fs(c: &Creds) -> io::Result<()> {
    let taken = |what: &str| io::Error::other(format!("cannot take the user's {what}"));
    // SAFETY: raw syscalls on this thread's credentials; the group list outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            c.groups.len() as libc::c_long,
            c.groups.as_ptr(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot take the user's groups: {e}"),
        ));
    }
    // setfsgid/setfsuid never report errors; they return the previous value. Asking again
    // with an invalid id (-1 changes nothing) tells whether the change took.
    // SAFETY: plain syscalls on this thread's credentials.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, c.gid as libc::c_long);
        if libc::syscall(libc::SYS_setfsgid, -1 as libc::c_long) != c.gid as libc::c_long {
            return Err(taken("group id"));
        }
        libc::syscall(libc::SYS_setfsuid, c.uid as libc::c_long);
        if libc::syscall(libc::SYS_setfsuid, -1 as libc::c_long) != c.uid as libc::c_long {
            return Err(taken("user id"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refuses_fifos_devices_and_directories_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o666)).unwrap();
        let e = read_bounded(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = read_bounded(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = read_head(d.path(), 2).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        // A symlink to a FIFO is judged by what it points at.
        std::os::unix::fs::symlink(&fifo, d.path().join("link")).unwrap();
        assert!(read_bounded(&d.path().join("link"), 100).is_err());
    }

    #[test]
    fn bounds_reads_and_keeps_not_found() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
        let e = read_bounded(&p, 99).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(read_head(&p, 2).unwrap(), b"xx");
        let e = read_bounded(&d.path().join("missing"), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn reads_with_the_users_permissions_only() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test must run as root (it switches file-system identity)");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "K=v\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let s = secret.clone();
        let e = with_creds(&nobody, move || read_bounded(&s, 100))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // The switch is this thread's only: root still reads it here.
        assert_eq!(read_bounded(&secret, 100).unwrap(), b"K=v\n");
        // A group grant is honoured through the supplementary groups.
        nix::unistd::chown(&secret, None, Some(nix::unistd::Gid::from_raw(4242))).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let member = Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        };
        assert!(
            with_creds(&member, move || read_bounded(&secret, 100))
                .unwrap()
                .is_ok()
        );
    }

    /// A FUSE file system whose server never answers (what a user can mount with
    /// `fusermount`): any lookup in it waits until the connection ends.
    struct DeadFuse {
        dev: Option<std::os::fd::OwnedFd>,
        mnt: std::path::PathBuf,
    }

    impl DeadFuse {
        fn mount(mnt: &Path) -> DeadFuse {
            std::fs::create_dir(mnt).unwrap();
            let dev =
                nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
                    .expect("open /dev/fuse (the test needs FUSE in the kernel)");
            let opts = format!(
                "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
                dev.as_raw_fd()
            );
            nix::mount::mount(
                Some("gcw-dead"),
                mnt,
                Some("fuse.gcw-dead"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .expect("mount the FUSE file system");
            DeadFuse {
                dev: Some(dev),
                mnt: mnt.to_path_buf(),
            }
        }
    }

    impl Drop for DeadFuse {
        fn drop(&mut self) {
            // Closing the device ends the connection: waiting requests fail with ENOTCONN.
            drop(self.dev.take());
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_read_blocked_in_a_dead_file_system_is_given_up() {
        let d = tempfile::tempdir().unwrap();
        let fuse = DeadFuse::mount(&d.path().join("mnt"));
        let file = fuse.mnt.join("env");
        // Ids of their own: the other tests here read as 65534 at the same time.
        let nobody = Creds {
            uid: 65532,
            gid: 65534,
            groups: vec![65534],
        };
        // Each call runs on its own thread so that a regression fails here instead of hanging;
        // a user gets MAX_READERS_PER_USER of them.
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..MAX_READERS_PER_USER {
            let (tx, file, nobody) = (tx.clone(), file.clone(), nobody.clone());
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                let r = with_creds(&nobody, move || read_bounded(&file, 100));
                let _ = tx.send((r.map(|inner| inner.is_ok()), start.elapsed()));
            });
        }
        for _ in 0..MAX_READERS_PER_USER {
            let (r, took) = rx
                .recv_timeout(AS_USER_TIMEOUT + Duration::from_secs(20))
                .expect("with_creds waited on the dead file system without a bound");
            let e = r.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
            assert!(e.to_string().contains("uid 65532"), "{e}");
            assert!(took >= AS_USER_TIMEOUT && took < AS_USER_TIMEOUT + Duration::from_secs(5));
        }
        // Its threads are all blocked: its next read fails at once; another user's does not.
        let f = file.clone();
        let e = with_creds(&nobody, move || read_bounded(&f, 100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        let other = Creds {
            uid: 65531,
            gid: 65534,
            groups: vec![65534],
        };
        let plain = d.path().join("plain");
        std::fs::write(&plain, "K=v\n").unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let got = with_creds(&other, move || read_bounded(&plain, 100)).unwrap();
        assert_eq!(got.unwrap(), b"K=v\n");
        drop(fuse);
        // The thread left behind returns once the file system is gone, freeing its slot.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while readers_of(65532) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(readers_of(65532), 0);
    }
}
