//! Deterministic pauses for race tests.
//!
//! `GOCACHE_WARDEN_FAILPOINT=NAME[#N]:REL:DIR[,…]` (one or more, comma-separated) makes the process stop at failpoint `NAME` the
//! `N`th time (default 1st) it is about to act on the cache-relative path `REL` (`*` matches
//! any), create `DIR/NAME.ready` and wait (up to 60 s) for `DIR/NAME.go` to exist. Points:
//! `before-apply` (REL `.`: after planning, before any change) and `walk-open` (a directory
//! was listed and stat'ed, and is about to be opened; every walk, inspection walks included).
//! `modcache-evict` (REL `<escaped module>@<version>`: the version's `.partial` is written and
//! the first file of its extracted tree removed). A test swaps files in that window to
//! make a scan/apply race happen every time. Without the variable this is one cached check.
//!
//! Only builds with the `test-hooks` cargo feature (the test suite's) read the variable: it
//! writes files where it is told, following symlinks, so a release build must not have it.
//! Without the feature [`active`] is `false` and [`pause`] does nothing.

use crate::cancel::Cancel;
use std::path::Path;
#[cfg(feature = "test-hooks")]
use std::path::PathBuf;
#[cfg(feature = "test-hooks")]
use std::sync::OnceLock;
#[cfg(feature = "test-hooks")]
use std::time::{Duration, Instant};

#[cfg(feature = "test-hooks")]
struct Point {
    name: String,
    nth: usize,
    hits: std::sync::atomic::AtomicUsize,
    rel: String,
    dir: PathBuf,
}

#[cfg(feature = "test-hooks")]
fn config() -> Option<&'static [Point]> {
    static CFG: OnceLock<Vec<Point>> = OnceLock::new();
    let v = CFG.get_or_init(|| {
        std::env::var("GOCACHE_WARDEN_FAILPOINT")
            .map_or_else(|_| Vec::new(), |v| v.split(',').filter_map(parse).collect())
    });
    (!v.is_empty()).then_some(v.as_slice())
}

#[cfg(feature = "test-hooks")]
fn parse(v: &str) -> Option<Point> {
    let mut it = v.splitn(3, ':');
    let head = it.next()?;
    let (name, nth) = match head.split_once('#') {
        Some((n, k)) => (n.to_string(), k.parse().ok()?),
        None => (head.to_string(), 1),
    };
    let rel = it.next()?.to_string();
    let dir = PathBuf::from(it.next()?);
    Some(Point {
        name,
        nth,
        hits: 0.into(),
        rel,
        dir,
    })
}

/// Whether any failpoint is configured (lets hot paths skip building `rel`).
#[cfg(feature = "test-hooks")]
pub fn active() -> bool {
    config().is_some()
}

/// Without the `test-hooks` feature no failpoint exists.
#[cfg(not(feature = "test-hooks"))]
pub fn active() -> bool {
    false
}

/// Without the `test-hooks` feature no failpoint exists.
#[cfg(not(feature = "test-hooks"))]
pub fn pause(_name: &str, _rel: &Path, _cancel: &Cancel) {}

/// Pauses at failpoint `name` for `rel` if so configured, until released or `cancel` is
/// cancelled (a stop request ends the pause as it ends the walk that paused).
#[cfg(feature = "test-hooks")]
pub fn pause(name: &str, rel: &Path, cancel: &Cancel) {
    let Some(points) = config() else { return };
    for p in points {
        if p.name == name && (p.rel == "*" || Path::new(&p.rel) == rel) {
            hit(p, name, rel, cancel);
        }
    }
}

#[cfg(feature = "test-hooks")]
fn hit(p: &Point, name: &str, rel: &Path, cancel: &Cancel) {
    if p.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 != p.nth {
        return;
    }
    let go = p.dir.join(format!("{name}.go"));
    let _ = std::fs::write(
        p.dir.join(format!("{name}.ready")),
        rel.as_os_str().as_encoded_bytes(),
    );
    let start = Instant::now();
    while !go.exists() && start.elapsed() < Duration::from_secs(60) && !cancel.is_cancelled() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(all(test, not(feature = "test-hooks")))]
mod tests {
    const CHILD: &str = "GOCACHE_WARDEN_HOOKS_TEST_CHILD";

    /// A build without `test-hooks` ignores both test variables: no pause, no file written
    /// where the failpoint says, user managers looked for in /run/user only. The variables are
    /// set for a child run of this same test (no other test's environment is touched).
    #[test]
    fn test_hooks_absent_variables_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        if let Some(dir) = std::env::var_os(CHILD) {
            assert!(!super::active());
            super::pause(
                "walk-open",
                std::path::Path::new("x"),
                &crate::cancel::Cancel::new(),
            );
            let dir = std::path::PathBuf::from(dir);
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
            assert_eq!(
                crate::systemd::dbus::run_user_dir(),
                std::path::Path::new("/run/user")
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "failpoint::tests::test_hooks_absent_variables_are_ignored",
            ])
            .env(CHILD, d.path())
            .env(
                "GOCACHE_WARDEN_FAILPOINT",
                format!("walk-open:*:{}", d.path().display()),
            )
            .env("GOCACHE_WARDEN_RUN_USER", d.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }
}
