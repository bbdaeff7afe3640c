//! Go builds that failed because of a cache, recognised in the journal: a service whose
//! `go build` cannot initialise or write its build cache or its module cache logs cmd/go's
//! message on stderr, which systemd puts in the journal with the unit and uid (fields only
//! journald sets, `_UID` and `_SYSTEMD_UNIT`, so a user cannot blame someone else). The agent
//! follows the journal (`follow.rs`), and [`classify`] turns one message into a [`Failure`]
//! with a [`Reason`] from a closed set, or nothing: a message is counted only when cmd/go
//! names a cache in it (its own "build cache" and "module cache" wording), or when the path
//! it failed on lies in a cache the policy covers. `go: updating go.sum: … permission denied`
//! is a failed build, and not a cache's doing: never counted.
//!
//! The wording comes from cmd/go (Go 1.27; `tests/build_failures.rs` produces every one with
//! the real toolchain):
//! - `build cache is required, but could not be located: GOCACHE is not defined and neither
//!   $XDG_CACHE_HOME nor $HOME are defined` → `cache-undefined`;
//! - `… could not be located: GOCACHE is not an absolute path`, `build cache is disabled by
//!   GOCACHE=off, but required as of Go 1.12` → `cache-invalid`;
//! - `failed to initialize build cache at DIR: mkdir DIR/00: permission denied` →
//!   `cache-permission` (`no space left on device`, `disk quota exceeded`: `cache-full`;
//!   anything else: `cache-init`);
//! - `go: could not create module cache: mkdir DIR: permission denied`, `go: writing go.mod
//!   cache: …`, `unzip …: mkdir DIR/…: no space left on device` under a module cache →
//!   `modcache-permission` / `modcache-full`;
//! - `go: module cache not found: neither GOMODCACHE nor GOPATH is set` →
//!   `modcache-undefined`.

pub mod follow;

use crate::policy::CacheKind;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Why a build failed, as far as caches go. A closed set: the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The build cache (or a directory in it) is not writable by the build's user.
    CachePermission,
    /// The build cache's filesystem is out of space or inodes, or the user's quota is.
    CacheFull,
    /// No `GOCACHE`, `XDG_CACHE_HOME` or `HOME`: go cannot locate a build cache.
    CacheUndefined,
    /// `GOCACHE=off` or a relative `GOCACHE`.
    CacheInvalid,
    /// The build cache could not be initialised for another reason.
    CacheInit,
    /// The module cache (or a directory in it) is not writable by the build's user.
    ModcachePermission,
    /// The module cache's filesystem is out of space or inodes.
    ModcacheFull,
    /// No `GOMODCACHE`, `GOPATH` or `HOME`: go cannot locate a module cache.
    ModcacheUndefined,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::CachePermission,
        Reason::CacheFull,
        Reason::CacheUndefined,
        Reason::CacheInvalid,
        Reason::CacheInit,
        Reason::ModcachePermission,
        Reason::ModcacheFull,
        Reason::ModcacheUndefined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CachePermission => "cache-permission",
            Reason::CacheFull => "cache-full",
            Reason::CacheUndefined => "cache-undefined",
            Reason::CacheInvalid => "cache-invalid",
            Reason::CacheInit => "cache-init",
            Reason::ModcachePermission => "modcache-permission",
            Reason::ModcacheFull => "modcache-full",
            Reason::ModcacheUndefined => "modcache-undefined",
        }
    }
}

/// A cache the policy covers, as the last sweep resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCache {
    pub path: PathBuf,
    pub kind: CacheKind,
}

/// What [`classify`] makes of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub reason: Reason,
    /// The policy's cache it concerns; else the directory cmd/go named as its cache;
    /// `None` when there is none (`cache-undefined`).
    pub cache: Option<PathBuf>,
}

/// One build failure, with who and where (from journald's own fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub reason: Reason,
    pub cache: Option<PathBuf>,
    /// `_UID`: the build's user.
    pub uid: Option<u32>,
    /// `_SYSTEMD_UNIT` (or `_SYSTEMD_USER_UNIT` for a user's service).
    pub unit: Option<String>,
    pub pid: Option<i32>,
    /// `_COMM`, `_CMDLINE` (bounded).
    pub comm: Option<String>,
    pub cmdline: Option<String>,
    /// The message itself (at most [`MAX_MESSAGE`] bytes of it).
    pub message: String,
}

impl Failure {
    /// The `cache` and `unit` label values: empty when there is none.
    pub fn labels(&self) -> (String, String) {
        (
            self.cache
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.unit.clone().unwrap_or_default(),
        )
    }
}

/// Build failures logged per minute for one unit and user: a unit failing in a loop (or a
/// user writing cmd/go's words into the journal) is counted in full, logged in part.
pub const LOGGED_PER_MINUTE: u32 = 5;

/// The agent's log of build failures, at most [`LOGGED_PER_MINUTE`] a minute per unit and
/// user (one line says when the rest are only counted).
#[derive(Debug, Default)]
pub struct Log {
    minute: i64,
    logged: std::collections::BTreeMap<(String, Option<u32>), u32>,
}

impl Log {
    /// Logs one failure of `user` (its name, or empty when unknown).
    pub fn log(&mut self, f: &Failure, user: &str) {
        let minute = crate::check::now() / 60;
        if self.minute != minute {
            self.minute = minute;
            self.logged.clear();
        }
        let (cache, unit) = f.labels();
        let n = self.logged.entry((unit.clone(), f.uid)).or_insert(0);
        *n += 1;
        if *n > LOGGED_PER_MINUTE {
            return;
        }
        let more = if *n == LOGGED_PER_MINUTE {
            " (further failures of this unit and user this minute are counted, not logged)"
        } else {
            ""
        };
        tracing::warn!(
            gocache_warden_action = crate::logging::action::BUILD_FAILURE,
            reason = f.reason.as_str(),
            cache_path = %cache,
            unit = %unit,
            target_uid = f.uid.map_or(-1, i64::from),
            "a go build of {} failed because of a cache ({}){}{}: pid {} ({}): {}{more}",
            if user.is_empty() { "an unknown user" } else { user },
            f.reason.as_str(),
            if cache.is_empty() { String::new() } else { format!(" {cache}") },
            if unit.is_empty() { String::new() } else { format!(" in {unit}") },
            f.pid.map_or_else(|| "?".to_string(), |p| p.to_string()),
            f.cmdline.as_deref().or(f.comm.as_deref()).unwrap_or("?"),
            f.message
        );
    }
}

/// Messages longer than this are cut before they are kept or logged.
pub const MAX_MESSAGE: usize = 4096;

const PERMISSION: [&str; 3] = [
    "permission denied",
    "read-only file system",
    "operation not permitted",
];
const FULL: [&str; 2] = ["no space left on device", "disk quota exceeded"];

/// Whether a message can be a cache failure at all: cheap, for every journal entry.
pub fn candidate(msg: &str) -> bool {
    msg.contains("cache")
        || PERMISSION
            .iter()
            .chain(FULL.iter())
            .any(|e| msg.contains(e))
}

/// The failure one journal message reports, if it is a cache's (see the module docs).
pub fn classify(msg: &str, caches: &[KnownCache]) -> Option<Classified> {
    if msg.contains("GOCACHE is not defined and neither") {
        return Some(Classified {
            reason: Reason::CacheUndefined,
            cache: None,
        });
    }
    if msg.contains("module cache not found: neither GOMODCACHE nor GOPATH is set") {
        return Some(Classified {
            reason: Reason::ModcacheUndefined,
            cache: None,
        });
    }
    if msg.contains("build cache is disabled by GOCACHE=off")
        || msg.contains("could not be located: GOCACHE is not an absolute path")
    {
        return Some(Classified {
            reason: Reason::CacheInvalid,
            cache: None,
        });
    }
    let errno = errno_of(msg);
    // The path the failing operation named: `op PATH: errno` (Go's PathError).
    let failed = errno.and_then(|(_, at)| path_before(&msg[..at]));
    let covering = |p: &Path, kind: CacheKind| {
        caches
            .iter()
            .filter(|c| c.kind == kind && p.starts_with(&c.path))
            .max_by_key(|c| c.path.as_os_str().len())
            .map(|c| c.path.clone())
    };
    if let Some(rest) = msg
        .split_once("failed to initialize build cache at ")
        .map(|(_, r)| r)
    {
        let dir = rest.split_once(": ").map_or(rest, |(d, _)| d);
        let dir = PathBuf::from(dir);
        let reason = match errno {
            Some((Errno::Permission, _)) => Reason::CachePermission,
            Some((Errno::Full, _)) => Reason::CacheFull,
            None => Reason::CacheInit,
        };
        let cache = covering(&dir, CacheKind::Build).unwrap_or(dir);
        return Some(Classified {
            reason,
            cache: Some(cache),
        });
    }
    let (kind, _) = errno?;
    let failed = failed?;
    let module_words =
        msg.contains("could not create module cache") || msg.contains("writing go.mod cache");
    if let Some(c) = covering(&failed, CacheKind::Build) {
        return Some(Classified {
            reason: match kind {
                Errno::Permission => Reason::CachePermission,
                Errno::Full => Reason::CacheFull,
            },
            cache: Some(c),
        });
    }
    let module = covering(&failed, CacheKind::Module);
    if module.is_some() || module_words {
        return Some(Classified {
            reason: match kind {
                Errno::Permission => Reason::ModcachePermission,
                Errno::Full => Reason::ModcacheFull,
            },
            cache: module.or(Some(failed)),
        });
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Errno {
    Permission,
    Full,
}

/// The first errno text in `msg` that makes a cache failure, and where it starts.
fn errno_of(msg: &str) -> Option<(Errno, usize)> {
    let find = |set: &[&str]| set.iter().filter_map(|e| msg.find(e)).min();
    match (find(&PERMISSION), find(&FULL)) {
        (Some(p), Some(f)) if f < p => Some((Errno::Full, f)),
        (Some(p), _) => Some((Errno::Permission, p)),
        (None, Some(f)) => Some((Errno::Full, f)),
        (None, None) => None,
    }
}

/// The absolute path that ends `before` (which ends with `": "`): `mkdir /x/y: ` → `/x/y`.
fn path_before(before: &str) -> Option<PathBuf> {
    let s = before.strip_suffix(": ")?;
    let p = s.rsplit(' ').next()?;
    p.starts_with('/').then(|| PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches() -> Vec<KnownCache> {
        vec![
            KnownCache {
                path: "/srv/gocache".into(),
                kind: CacheKind::Build,
            },
            KnownCache {
                path: "/srv/gomodcache".into(),
                kind: CacheKind::Module,
            },
        ]
    }

    fn c(msg: &str) -> Option<(Reason, Option<PathBuf>)> {
        classify(msg, &caches()).map(|c| (c.reason, c.cache))
    }

    #[test]
    fn cmd_gos_cache_messages_and_nothing_else() {
        assert_eq!(
            c(
                "failed to initialize build cache at /srv/gocache: mkdir /srv/gocache/00: permission denied"
            ),
            Some((Reason::CachePermission, Some("/srv/gocache".into())))
        );
        assert_eq!(
            c(
                "failed to initialize build cache at /home/a/.cache/go-build: mkdir /home/a/.cache/go-build/25: no space left on device"
            ),
            Some((Reason::CacheFull, Some("/home/a/.cache/go-build".into())))
        );
        assert_eq!(
            c("failed to initialize build cache at /x: open /x/README: is a directory"),
            Some((Reason::CacheInit, Some("/x".into())))
        );
        assert_eq!(
            c(
                "build cache is required, but could not be located: GOCACHE is not defined and neither $XDG_CACHE_HOME nor $HOME are defined"
            ),
            Some((Reason::CacheUndefined, None))
        );
        assert_eq!(
            c("go: module cache not found: neither GOMODCACHE nor GOPATH is set"),
            Some((Reason::ModcacheUndefined, None))
        );
        assert_eq!(
            c("build cache is disabled by GOCACHE=off, but required as of Go 1.12"),
            Some((Reason::CacheInvalid, None))
        );
        assert_eq!(
            c("go: could not create module cache: mkdir /home/a/go/pkg/mod: permission denied"),
            Some((
                Reason::ModcachePermission,
                Some("/home/a/go/pkg/mod".into())
            ))
        );
        assert_eq!(
            c(
                "-> unzip /srv/gomodcache/cache/download/x/@v/v1.0.0.zip: mkdir /srv/gomodcache/x@v1.0.0: no space left on device"
            ),
            Some((Reason::ModcacheFull, Some("/srv/gomodcache".into())))
        );
        // Under a covered build cache, whatever cmd/go was doing.
        assert_eq!(
            c("open /srv/gocache/ab/abcd-d: permission denied"),
            Some((Reason::CachePermission, Some("/srv/gocache".into())))
        );
        // Failed builds that are not a cache's doing, and messages that only look alike.
        for m in [
            "go: updating go.sum: open /tmp/app/go.sum: permission denied",
            "open /etc/shadow: permission denied",
            "ssh: connect to host x: permission denied (publickey)",
            "apt: the package cache is locked",
            "write /srv/other/x: no space left on device",
            "",
        ] {
            assert_eq!(c(m), None, "{m}");
        }
    }
}
