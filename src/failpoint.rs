//! Deterministic pauses for race tests.
//!
//! `GOCACHE_WARDEN_FAILPOINT=NAME[#N]:REL:DIR` makes the process stop at failpoint `NAME` the
//! `N`th time (default 1st) it is about to act on the cache-relative path `REL` (`*` matches
//! any), create `DIR/NAME.ready` and wait (up to 60 s) for `DIR/NAME.go` to exist. Points:
//! `before-apply` (REL `.`: after planning, before any change) and `walk-open` (a directory
//! was listed and stat'ed, and is about to be opened; every walk, inspection walks included). A test swaps files in that window to
//! make a scan/apply race happen every time. Without the variable this is one cached check.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Point {
    name: String,
    nth: usize,
    hits: std::sync::atomic::AtomicUsize,
    rel: String,
    dir: PathBuf,
}

fn config() -> Option<&'static Point> {
    static CFG: OnceLock<Option<Point>> = OnceLock::new();
    CFG.get_or_init(|| {
        let v = std::env::var("GOCACHE_WARDEN_FAILPOINT").ok()?;
        let mut it = v.splitn(3, ':');
        let (name, nth) = match it.next()?.split_once('#') {
            Some((n, k)) => (n.to_string(), k.parse().ok()?),
            None => (v.split(':').next()?.to_string(), 1),
        };
        Some(Point {
            name,
            nth,
            hits: 0.into(),
            rel: it.next()?.to_string(),
            dir: PathBuf::from(it.next()?),
        })
    })
    .as_ref()
}

/// Whether any failpoint is configured (lets hot paths skip building `rel`).
pub fn active() -> bool {
    config().is_some()
}

/// Pauses at failpoint `name` for `rel` if so configured.
pub fn pause(name: &str, rel: &Path) {
    let Some(p) = config() else { return };
    if p.name != name || (p.rel != "*" && Path::new(&p.rel) != rel) {
        return;
    }
    if p.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 != p.nth {
        return;
    }
    let go = p.dir.join(format!("{name}.go"));
    let _ = std::fs::write(
        p.dir.join(format!("{name}.ready")),
        rel.as_os_str().as_encoded_bytes(),
    );
    let start = Instant::now();
    while !go.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
}
