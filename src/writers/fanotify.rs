//! The kernel side of write attribution: one fanotify group reporting the parent directory's
//! file handle and the child's name (`FAN_REPORT_DFID_NAME`, Linux ≥ 5.9) for every file
//! closed after writing (`FAN_CLOSE_WRITE`) in a marked directory.
//!
//! Hand-written on `libc` (with a comment per `unsafe`): nix 0.30 wraps fanotify for
//! descriptor-carrying events only and cannot read the variable-length FID info records, and
//! the one crate that parses them (`fanotify-fid`) is months old with a single maintainer; the
//! parser here is sixty lines, bounded by the lengths the kernel states, and tested.
//!
//! A group created with `CAP_SYS_ADMIN` reports the writer's pid; one created without it
//! (Linux ≥ 5.13, inode marks only) reports pid 0 for everyone but ourselves, so only the
//! file's owner is known then. Marks are inode marks on directories opened by the caller
//! (passed as descriptors, never paths): no other file system activity reaches us.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Whether the group reports writers' pids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Created with `CAP_SYS_ADMIN`: pids, hence units and command lines, are known.
    Privileged,
    /// Created without it: pids are 0, the user is the written file's owner, the unit unknown.
    Unprivileged,
}

pub struct Group {
    fd: OwnedFd,
    pub mode: Mode,
}

/// The identity of a directory as events name it: its file system's id and its file handle
/// (type and bytes), compared byte for byte.
pub type DirKey = Vec<u8>;

/// One event read from the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file named `name` in the directory `dir` was closed after writing by process `pid`
    /// (0 when not reported).
    ClosedWrite {
        dir: DirKey,
        name: Vec<u8>,
        pid: i32,
    },
    /// The kernel's queue overflowed: events were lost.
    Overflow,
}

impl Group {
    /// A new group: privileged when this thread may, else unprivileged; an error naming why
    /// neither works (kernel too old, fanotify disabled, a syscall filter).
    pub fn init() -> io::Result<Group> {
        let base = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as libc::c_uint;
        // SAFETY: fanotify_init takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::fanotify_init(base | libc::FAN_UNLIMITED_MARKS, event_flags) };
        if fd >= 0 {
            // SAFETY: fd was just returned by the kernel and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            return Ok(Group {
                fd,
                mode: Mode::Privileged,
            });
        }
        let privileged = io::Error::last_os_error();
        if privileged.raw_os_error() != Some(libc::EPERM) {
            return Err(privileged);
        }
        // SAFETY: as above.
        let fd = unsafe { libc::fanotify_init(base, event_flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("fanotify without CAP_SYS_ADMIN (Linux >= 5.13): {e}"),
            ));
        }
        // SAFETY: as above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Group {
            fd,
            mode: Mode::Unprivileged,
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Marks the directory open as `dir` (a descriptor opened for reading, not `O_PATH`):
    /// files closed after writing in it are reported. Adding a mark twice is harmless.
    pub fn mark_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let mask = libc::FAN_CLOSE_WRITE | libc::FAN_EVENT_ON_CHILD;
        // SAFETY: a null pathname makes the kernel mark `dir` itself; both fds are open.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR,
                mask,
                dir.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads what is queued (nothing when nothing is: the group is non-blocking) into `buf`
    /// and parses it.
    pub fn read(&self, buf: &mut [u8], out: &mut Vec<Event>) -> io::Result<()> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Ok(0) => return Ok(()),
                Ok(n) => parse(&buf[..n], out),
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The key events use for the directory open as `dir`: its file system id (`statfs`) and
/// its file handle (`name_to_handle_at`).
pub fn dir_key(dir: BorrowedFd<'_>) -> io::Result<DirKey> {
    let st = nix::sys::statfs::fstatfs(dir)?;
    let fsid = fsid_bytes(&st);
    // struct file_handle: handle_bytes (u32), handle_type (i32), then up to MAX_HANDLE_SZ
    // (128) bytes; u32 words keep it aligned for the kernel.
    let mut words = [0u32; 2 + 128 / 4];
    words[0] = 128;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `words` is a file_handle with room for 128 bytes as its first field says; the
    // empty path with AT_EMPTY_PATH names `dir` itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            c"".as_ptr(),
            words.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (words[0] as usize).min(128);
    let mut key = fsid.to_vec();
    key.extend_from_slice(&words[1].to_ne_bytes());
    let bytes: Vec<u8> = words[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    key.extend_from_slice(&bytes[..len]);
    Ok(key)
}

fn fsid_bytes(st: &nix::sys::statfs::Statfs) -> [u8; 8] {
    let id = st.filesystem_id();
    // SAFETY: fsid_t is two C ints (`__kernel_fsid_t`), 8 bytes with no padding; its fields
    // are private in libc, and the bytes are what fanotify reports in its info records.
    unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(id) }
}

const METADATA_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
/// info header (4) + fsid (8) + handle_bytes (4) + handle_type (4).
const FID_FIXED: usize = 4 + 8 + 8;

/// Parses a buffer of events as `read(2)` returned them. Lengths are the kernel's, but are
/// checked anyway: a malformed event ends the buffer rather than reading past it.
pub fn parse(buf: &[u8], out: &mut Vec<Event>) {
    let mut at = 0;
    while buf.len() - at >= METADATA_LEN {
        let word = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let event_len = word(at) as usize;
        let meta_len = u16::from_ne_bytes([buf[at + 6], buf[at + 7]]) as usize;
        if event_len < METADATA_LEN || event_len > buf.len() - at || meta_len > event_len {
            return;
        }
        let mask = u64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap_or([0; 8]));
        let pid = word(at + 20) as i32;
        let ev = &buf[at..at + event_len];
        at += event_len;
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(Event::Overflow);
            continue;
        }
        if mask & libc::FAN_CLOSE_WRITE == 0 {
            continue;
        }
        if let Some((dir, name)) = dfid_name(&ev[meta_len..]) {
            out.push(Event::ClosedWrite { dir, name, pid });
        }
    }
}

/// The `FAN_EVENT_INFO_TYPE_DFID_NAME` record among an event's info records: the directory's
/// key (as [`dir_key`] builds it) and the child's name.
fn dfid_name(mut info: &[u8]) -> Option<(DirKey, Vec<u8>)> {
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let rec = &info[..len];
        info = &info[len..];
        if kind != libc::FAN_EVENT_INFO_TYPE_DFID_NAME || rec.len() < FID_FIXED {
            continue;
        }
        let handle_bytes = u32::from_ne_bytes(rec[12..16].try_into().ok()?) as usize;
        let handle_end = FID_FIXED.checked_add(handle_bytes)?;
        if handle_end > rec.len() {
            return None;
        }
        let mut key = rec[4..12].to_vec();
        key.extend_from_slice(&rec[16..20]);
        key.extend_from_slice(&rec[FID_FIXED..handle_end]);
        let rest = &rec[handle_end..];
        let name = &rest[..rest.iter().position(|&b| b == 0)?];
        return Some((key, name.to_vec()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fsid: [u8; 8], htype: i32, handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut r = vec![libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 0, 0];
        r.extend_from_slice(&fsid);
        r.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        r.extend_from_slice(&htype.to_ne_bytes());
        r.extend_from_slice(handle);
        r.extend_from_slice(name);
        r.push(0);
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        r
    }

    fn event(mask: u64, pid: i32, info: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        e.extend_from_slice(&[3, 0]);
        e.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&(-1i32).to_ne_bytes());
        e.extend_from_slice(&pid.to_ne_bytes());
        e.extend_from_slice(info);
        e
    }

    #[test]
    fn events_parse_into_directory_key_name_and_pid() {
        let mut buf = event(
            libc::FAN_CLOSE_WRITE,
            42,
            &record([1; 8], 0x81, &[9, 8, 7, 6, 5, 4, 3, 2], b"0a1b-a"),
        );
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        let mut out = Vec::new();
        parse(&buf, &mut out);
        let mut key = vec![1; 8];
        key.extend_from_slice(&0x81i32.to_ne_bytes());
        key.extend_from_slice(&[9, 8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(
            out,
            vec![
                Event::ClosedWrite {
                    dir: key,
                    name: b"0a1b-a".to_vec(),
                    pid: 42
                },
                Event::Overflow
            ]
        );
    }

    #[test]
    fn malformed_lengths_end_the_buffer_instead_of_reading_past_it() {
        let good = event(libc::FAN_CLOSE_WRITE, 1, &record([2; 8], 1, &[1; 8], b"x"));
        // An event claiming to be longer than the buffer.
        let mut long = good.clone();
        long[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        let mut out = Vec::new();
        parse(&long, &mut out);
        assert!(out.is_empty());
        // A record whose handle overruns it, and one without a terminating NUL.
        let mut rec = record([2; 8], 1, &[1; 8], b"x");
        rec[12..16].copy_from_slice(&200u32.to_ne_bytes());
        parse(&event(libc::FAN_CLOSE_WRITE, 1, &rec), &mut out);
        let mut rec = record([2; 8], 1, &[1; 8], b"abc");
        let n = rec.len();
        rec[n - 4..].copy_from_slice(b"abcd");
        parse(&event(libc::FAN_CLOSE_WRITE, 1, &rec), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Truncated buffers of every length never panic.
        for cut in 0..good.len() {
            parse(&good[..cut], &mut out);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn a_marked_directory_reports_files_closed_after_writing_under_its_own_key() {
        // Privileged as root, unprivileged otherwise: either reports our own pid.
        let g = Group::init().expect("fanotify (Linux >= 5.13)");
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = nix::fcntl::open(
            tmp.path(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .expect("open");
        use std::os::fd::AsFd;
        g.mark_dir(dir.as_fd()).expect("mark");
        let key = dir_key(dir.as_fd()).expect("handle");
        std::fs::write(tmp.path().join("0123-d"), b"output").expect("write");
        let mut buf = vec![0u8; 8192];
        let mut out = Vec::new();
        for _ in 0..100 {
            g.read(&mut buf, &mut out).expect("read");
            if !out.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let me = std::process::id() as i32;
        assert_eq!(
            out,
            vec![Event::ClosedWrite {
                dir: key,
                name: b"0123-d".to_vec(),
                pid: me
            }]
        );
    }
}
