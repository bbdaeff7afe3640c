//! Paths no cache may have: the root directory, the system's own directories, a home
//! directory itself, and caches nested in or overlapping each other.
//!
//! Checked when the policy is validated (fixed paths, with `FILE:LINE:COL`) and again when
//! an `auto` path is resolved (a user's `GOCACHE=$HOME`). Lexical: `..` is already refused,
//! and a symlink on the way is caught later, when the root is opened and recognised (see
//! `scan::recognize`). Only directories that are the operating system's or hold other
//! directories are refused; their subdirectories that sites really use for caches stay
//! allowed: `/var/cache/go-build`, `/srv/gocache`, `/var/lib/ci/.cache/go-build`,
//! `/opt/ci/gocache`, `/tmp/gocache`.

use std::path::{Component, Path, PathBuf};

/// The system's own trees: no cache may be one of them or lie inside one.
const SYSTEM_TREES: [&str; 21] = [
    "/etc",
    "/usr",
    "/boot",
    "/efi",
    "/bin",
    "/sbin",
    "/proc",
    "/sys",
    "/dev",
    "/snap",
    "/var/log",
    "/var/spool",
    "/var/mail",
    "/var/backups",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/lib/systemd",
    "/var/cache/apt",
    "/var/cache/debconf",
    "/run/systemd",
    "/run/lock",
];

/// Directories that hold other directories: no cache may be one of them (or contain a
/// system tree), but a directory of its own inside one is fine.
const CONTAINERS: [&str; 16] = [
    "/",
    "/var",
    "/var/lib",
    "/var/cache",
    "/var/tmp",
    "/var/local",
    "/var/opt",
    "/run",
    "/run/user",
    "/tmp",
    "/srv",
    "/opt",
    "/home",
    "/mnt",
    "/media",
    "/root",
];

/// The path with `.` and repeated slashes gone (what `Path::components` yields).
fn normal(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

/// Why `path` (absolute, without `..`) can be no cache at all, if it can't.
pub fn system_refusal(path: &Path) -> Option<String> {
    let p = normal(path);
    let first_lib = p
        .components()
        .nth(1)
        .is_some_and(|c| c.as_os_str().as_encoded_bytes().starts_with(b"lib"));
    if first_lib {
        return Some(format!(
            "{} is inside a system library directory: no cache may be there",
            p.display()
        ));
    }
    if let Some(t) = SYSTEM_TREES.iter().find(|t| p.starts_with(t)) {
        return Some(format!(
            "{} is inside the system directory {t}: no cache may be there",
            p.display()
        ));
    }
    if let Some(c) = CONTAINERS.iter().find(|c| p == Path::new(c)) {
        return Some(format!(
            "{c} is a system directory, not a cache: give the cache a directory of its own (e.g. /var/cache/go-build or /srv/gocache)"
        ));
    }
    None
}

/// One entry of the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PwEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Every entry of the user database (NSS: files, LDAP…) with an absolute home, bounded.
pub fn passwd() -> Vec<PwEntry> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    // getpwent's cursor is process-global: one enumeration at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    // SAFETY: setpwent/getpwent/endpwent under the lock above; every pointer getpwent
    // returns is checked for NULL and read before the next call overwrites it.
    unsafe {
        libc::setpwent();
        while out.len() < 1_000_000 {
            let pw = libc::getpwent();
            if pw.is_null() {
                break;
            }
            if (*pw).pw_dir.is_null() || (*pw).pw_name.is_null() {
                continue;
            }
            let dir = CStr::from_ptr((*pw).pw_dir).to_bytes();
            if dir.starts_with(b"/") {
                out.push(PwEntry {
                    name: CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned(),
                    uid: (*pw).pw_uid,
                    gid: (*pw).pw_gid,
                    home: normal(Path::new(std::ffi::OsStr::from_bytes(dir))),
                });
            }
        }
        libc::endpwent();
    }
    out
}

/// Every (user name, home directory) but `/` (a home of system users, refused anyway).
pub fn homes() -> Vec<(String, PathBuf)> {
    passwd()
        .into_iter()
        .filter(|e| e.home != Path::new("/"))
        .map(|e| (e.name, e.home))
        .collect()
}

/// Why `path` can be no cache because of a home directory: it is one, or holds one.
pub fn home_refusal(path: &Path, homes: &[(String, PathBuf)]) -> Option<String> {
    let p = normal(path);
    homes.iter().find_map(|(user, h)| {
        if &p == h {
            Some(format!(
                "{} is the home directory of user {user}, not a cache (theirs is e.g. {}/.cache/go-build)",
                p.display(),
                h.display()
            ))
        } else if h.starts_with(&p) {
            Some(format!(
                "{} holds the home directory of user {user} ({})",
                p.display(),
                h.display()
            ))
        } else {
            None
        }
    })
}

/// How one cache path lies relative to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    /// The first is inside the second.
    Inside,
    /// The second is inside the first.
    Around,
}

impl Overlap {
    pub fn describe(self) -> &'static str {
        match self {
            Overlap::Same => "the same path as",
            Overlap::Inside => "inside",
            Overlap::Around => "around",
        }
    }
}

/// How `a` lies relative to `b`, by whole components (`/srv/ab` is not inside `/srv/a`).
pub fn overlap(a: &Path, b: &Path) -> Option<Overlap> {
    let (a, b) = (normal(a), normal(b));
    if a == b {
        Some(Overlap::Same)
    } else if a.starts_with(&b) {
        Some(Overlap::Inside)
    } else if b.starts_with(&a) {
        Some(Overlap::Around)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_directories_are_refused_and_cache_directories_inside_some_are_not() {
        for bad in [
            "/",
            "/etc",
            "/etc/ssl",
            "/usr",
            "/usr/local/go",
            "/var",
            "/var/lib",
            "/var/cache",
            "/boot",
            "/bin",
            "/sbin",
            "/lib",
            "/lib64",
            "/libx32/x",
            "/proc",
            "/sys/fs",
            "/dev/shm",
            "/run",
            "/run/user",
            "/var/log/go",
            "/home",
            "/tmp",
            "/srv",
            "/root",
            "//etc/./x",
            "/var/lib/dpkg/info",
        ] {
            assert!(system_refusal(Path::new(bad)).is_some(), "{bad} allowed");
        }
        for good in [
            "/var/cache/go-build",
            "/srv/gocache",
            "/var/lib/ci/.cache/go-build",
            "/opt/ci/gocache",
            "/tmp/gocache",
            "/run/user/1000/gocache",
            "/home/alice/.cache/go-build",
            "/librarian/x",
        ] {
            // "/librarian" starts with "lib": refused like /lib*, which is the safe side.
            let r = system_refusal(Path::new(good));
            assert_eq!(r.is_some(), good.starts_with("/lib"), "{good}: {r:?}");
        }
    }

    #[test]
    fn homes_and_what_holds_them_are_refused() {
        let homes = vec![
            ("alice".to_string(), PathBuf::from("/srv/users/alice")),
            ("man".to_string(), PathBuf::from("/var/cache/man")),
        ];
        let refused = |p: &str| home_refusal(Path::new(p), &homes);
        assert!(refused("/srv/users/alice").is_some());
        assert!(refused("/srv/users/alice/").is_some());
        assert!(refused("/srv/users").is_some());
        assert!(refused("/var/cache/man").is_some());
        assert!(refused("/srv/users/alice/.cache/go-build").is_none());
        assert!(refused("/var/cache/go-build").is_none());
    }

    #[test]
    fn overlaps_are_by_component() {
        let o = |a: &str, b: &str| overlap(Path::new(a), Path::new(b));
        assert_eq!(o("/srv/a", "/srv/a/"), Some(Overlap::Same));
        assert_eq!(o("/srv/a/b", "/srv/a"), Some(Overlap::Inside));
        assert_eq!(o("/srv/a", "/srv/a/b"), Some(Overlap::Around));
        assert_eq!(o("/srv/ab", "/srv/a"), None);
    }
}
