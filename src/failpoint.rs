//! Deterministic pauses for race tests.
//!
//! `GOCACHE_WARDEN_FAILPOINT=NAME[#N]:REL:DIR[,…]` (one or more, comma-separated) makes the process stop at failpoint `NAME` the
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

fn config() -> Option<&'static [Point]> {
    static CFG: OnceLock<Vec<Point>> = OnceLock::new();
    let v = CFG.get_or_init(|| {
        std::env::var("GOCACHE_WARDEN_FAILPOINT")
            .map_or_else(|_| Vec::new(), |v| v.split(',').filter_map(parse).collect())
    });
    (!v.is_empty()).then_some(v.as_slice())
}

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
pub fn active() -> bool {
    config().is_some()
}

/// Pauses at failpoint `name` for `rel` if so configured.
pub fn pause(name: &str, rel: &Path) {
    let Some(points) = config() else { return };
    for p in points {
        if p.name == name && (p.rel == "*" || Path::new(&p.rel) == rel) {
            hit(p, name, rel);
        }
    }
}

fn hit(p: &Point, name: &str, rel: &Path) {
    if p.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 != p.nth {
        return;
    }
    let go = p.dir.join(format!("{name}.go"));
    let _ = std::fs::write(
        p.dir.join(format!("{name}.ready")),
        rel.as_os_str().as_encoded_bytes(),
    );
    let start = Instant::now();
    // A stop request (SIGTERM to the daemon) ends the pause too, as it ends a walk.
    while !go.exists()
        && start.elapsed() < Duration::from_secs(60)
        && !crate::scan::walk::stop_requested()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}
