//! What `/proc/PID` says about one process, read through a descriptor of that directory:
//! once the process is gone, a reused pid reads as gone (`ESRCH`), never as someone else's
//! process. Every file is bounded, and no link is followed: descriptors and `cwd` are read
//! as link text (`readlinkat`), never opened.
//!
//! Hand-written over the `procfs` crate: that crate follows `/proc/PID` by path on every
//! read (the reuse race above) and reads whole files; this needs five files, bounded.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// At most this much of `environ` is read (the kernel allows a few MiB of environment; a
/// build's is a few KiB).
pub const MAX_ENVIRON: u64 = 1 << 20;
/// At most this much of `cmdline`, `status` and `cgroup`.
const MAX_SMALL: u64 = 64 << 10;
/// At most this many open descriptors are looked at.
pub const MAX_FDS: usize = 65_536;

pub struct Proc {
    pub pid: i32,
    dir: OwnedFd,
}

/// The identity lines of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `Name:` (the command, at most 15 bytes).
    pub name: String,
    /// Real and effective uid.
    pub uid: u32,
    pub euid: u32,
}

impl Proc {
    pub fn open(pid: i32) -> io::Result<Proc> {
        if pid <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{pid} is not a process id"),
            ));
        }
        let dir = nix::fcntl::open(
            format!("/proc/{pid}").as_str(),
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| match e {
            nix::errno::Errno::ENOENT => {
                io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}"))
            }
            e => io::Error::from(e),
        })?;
        Ok(Proc { pid, dir })
    }

    /// At most `max` bytes of file `name` of this process's directory.
    fn read(&self, name: &str, max: u64) -> io::Result<(Vec<u8>, bool)> {
        let fd = nix::fcntl::openat(
            &self.dir,
            name,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let f = std::fs::File::from(fd);
        let mut buf = Vec::new();
        f.take(max + 1).read_to_end(&mut buf)?;
        let cut = buf.len() as u64 > max;
        buf.truncate(max as usize);
        Ok((buf, cut))
    }

    fn link(&self, name: &str) -> io::Result<PathBuf> {
        nix::fcntl::readlinkat(&self.dir, name)
            .map(PathBuf::from)
            .map_err(io::Error::from)
    }

    pub fn status(&self) -> io::Result<Status> {
        let (b, _) = self.read("status", MAX_SMALL)?;
        let text = String::from_utf8_lossy(&b);
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        let uids: Vec<u32> = field("Uid:")
            .unwrap_or("")
            .split_ascii_whitespace()
            .filter_map(|u| u.parse().ok())
            .collect();
        let (Some(&uid), Some(&euid)) = (uids.first(), uids.get(1)) else {
            return Err(io::Error::other(format!(
                "/proc/{}/status has no Uid line",
                self.pid
            )));
        };
        Ok(Status {
            name: field("Name:").unwrap_or("?").to_string(),
            uid,
            euid,
        })
    }

    /// The environment as the process started with it (`NAME=value`, NUL-separated; as in
    /// Go, the first of duplicated names wins and non-UTF-8 entries are skipped), and whether
    /// [`MAX_ENVIRON`] cut it short.
    pub fn environ(&self) -> io::Result<(std::collections::BTreeMap<String, String>, bool)> {
        let (b, cut) = self.read("environ", MAX_ENVIRON)?;
        let mut vars = std::collections::BTreeMap::new();
        for kv in b.split(|c| *c == 0).filter(|kv| !kv.is_empty()) {
            let Ok(kv) = std::str::from_utf8(kv) else {
                continue;
            };
            if let Some((k, v)) = kv.split_once('=') {
                vars.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        Ok((vars, cut))
    }

    pub fn cmdline(&self) -> io::Result<Vec<String>> {
        let (b, _) = self.read("cmdline", MAX_SMALL)?;
        Ok(b.split(|c| *c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect())
    }

    pub fn cwd(&self) -> io::Result<PathBuf> {
        self.link("cwd")
    }

    pub fn cgroup(&self) -> io::Result<String> {
        let (b, _) = self.read("cgroup", MAX_SMALL)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// What the process's descriptors name (as link text: `/path`, `socket:[…]`, …), at most
    /// [`MAX_FDS`] of them, and whether that bound cut the list.
    pub fn open_files(&self) -> io::Result<(Vec<PathBuf>, bool)> {
        let fds = nix::fcntl::openat(
            &self.dir,
            "fd",
            nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let dir = nix::dir::Dir::from_fd(fds).map_err(io::Error::from)?;
        let raw = dir.as_raw_fd();
        let mut names = Vec::new();
        let mut cut = false;
        let mut dir = dir;
        for e in dir.iter() {
            let e = e.map_err(io::Error::from)?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if names.len() >= MAX_FDS {
                cut = true;
                break;
            }
            names.push(n.to_vec());
        }
        let mut out = Vec::new();
        for n in names {
            // SAFETY: `raw` stays open while `dir` lives, which is until the end of this
            // function.
            let at = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
            if let Ok(t) = nix::fcntl::readlinkat(at, OsStr::from_bytes(&n)) {
                out.push(PathBuf::from(t));
            }
        }
        Ok((out, cut))
    }
}

/// The systemd unit a process runs in, from its `/proc/PID/cgroup` text (cgroup v2 line
/// `0::/PATH`, or systemd's named v1 hierarchy): the deepest path component that is a unit
/// name (a service, scope, socket, mount or swap), and the uid whose user manager
/// (`user@UID.service`) it runs under, when it does.
pub fn unit_of(cgroup: &str) -> (Option<String>, Option<u32>) {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            cgroup
                .lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        })
        .unwrap_or("");
    let mut unit = None;
    let mut manager = None;
    for c in path.split('/') {
        if let Some(uid) = c
            .strip_prefix("user@")
            .and_then(|r| r.strip_suffix(".service"))
            .and_then(|u| u.parse().ok())
        {
            manager = Some(uid);
        }
        if [".service", ".scope", ".socket", ".mount", ".swap"]
            .iter()
            .any(|s| c.ends_with(s))
        {
            unit = Some(c.to_string());
        }
    }
    (unit, manager)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_from_the_deepest_unit_in_the_cgroup_path() {
        assert_eq!(
            unit_of("0::/system.slice/builder.service\n"),
            (Some("builder.service".into()), None)
        );
        assert_eq!(
            unit_of("0::/user.slice/user-1001.slice/user@1001.service/app.slice/ci.service\n"),
            (Some("ci.service".into()), Some(1001))
        );
        assert_eq!(
            unit_of("0::/user.slice/user-1001.slice/session-4.scope\n"),
            (Some("session-4.scope".into()), None)
        );
        assert_eq!(
            unit_of("12:pids:/x\n1:name=systemd:/system.slice/cron.service\n"),
            (Some("cron.service".into()), None)
        );
        assert_eq!(unit_of("0::/\n"), (None, None));
        assert_eq!(unit_of(""), (None, None));
    }

    #[test]
    fn this_process_reads_as_itself() {
        let p = Proc::open(std::process::id() as i32).expect("own /proc");
        let st = p.status().expect("status");
        assert_eq!(st.euid, nix::unistd::geteuid().as_raw());
        let (env, cut) = p.environ().expect("environ");
        assert!(!cut);
        // The environment as the process started: PATH is there in any test run.
        assert!(env.contains_key("PATH") || env.is_empty());
        assert_eq!(p.cwd().expect("cwd"), std::env::current_dir().expect("cwd"));
        let f = std::fs::File::open("/proc/self/status").expect("open");
        let (files, _) = p.open_files().expect("fds");
        assert!(files.iter().any(|x| x.ends_with("status")), "{files:?}");
        drop(f);
        assert!(Proc::open(0).is_err());
        assert_eq!(
            Proc::open(i32::MAX).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
    }
}
