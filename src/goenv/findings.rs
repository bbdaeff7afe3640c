//! Seed problems: what in a resolved Go environment will break builds or waste disk before
//! any cache policy is applied — Go refusing to run, a disabled or unusable cache, caches a
//! user cannot write, fallback caches left behind after GOCACHE/GOMODCACHE moved, and
//! left-over `go-build*` work directories.
//!
//! Only reads (stat, readdir, ACLs); deciding what to do about a finding is the caller's job.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::perms::{Blocker, Identity, write_blocker};
use super::resolve::{EnvFileWarning, Resolution, Resolved, Setting, Source};
use super::{GoEnv, go_clean, is_abs};

/// Which cache a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CacheVar {
    #[serde(rename = "GOCACHE")]
    Gocache,
    #[serde(rename = "GOMODCACHE")]
    Gomodcache,
}

impl fmt::Display for CacheVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheVar::Gocache => "GOCACHE",
            CacheVar::Gomodcache => "GOMODCACHE",
        })
    }
}

/// One problem. The JSON form (`kind` tag, snake_case) is meant to be stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// cmd/go exits 2 before running any command.
    GoRefuses { message: String },
    /// `GOCACHE=off`: every build fails.
    CacheOff { source: Source },
    /// The variable's value cannot be used (relative, or nothing to derive it from).
    Invalid {
        var: CacheVar,
        value: String,
        reason: String,
        source: Source,
    },
    /// The user could not create entries in the cache.
    Unwritable {
        var: CacheVar,
        path: PathBuf,
        uid: u32,
        blocker: Blocker,
    },
    /// A default-location cache that exists although the variable resolves elsewhere.
    /// `idle_secs` is the time since the last sign of use (newest mtime of the root and of
    /// `trim.txt` or `cache/download`).
    StrayCache {
        var: CacheVar,
        path: PathBuf,
        owner_uid: u32,
        idle_secs: u64,
        in_use: Option<PathBuf>,
    },
    /// A `go-build*` work directory; Go removes its own on exit, so old ones were left by
    /// killed builds or `-work`. Young ones may belong to running builds.
    StrayWorkDir {
        path: PathBuf,
        owner_uid: u32,
        age_secs: u64,
    },
    /// A line of an env file Go ignores or takes literally.
    EnvFile { warning: EnvFileWarning },
    /// A check could not be made.
    CheckFailed { path: PathBuf, error: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::GoRefuses { message } => write!(f, "go refuses to run: {message}"),
            Finding::CacheOff { source } => write!(
                f,
                "GOCACHE=off ({source}): every go build fails, the build cache is required since Go 1.12"
            ),
            Finding::Invalid {
                var,
                value,
                reason,
                source,
            } => write!(f, "{var} {value:?} ({source}) is unusable: {reason}"),
            Finding::Unwritable {
                var,
                path,
                uid,
                blocker,
            } => write!(
                f,
                "uid {uid} cannot write {var} {}: {blocker}",
                path.display()
            ),
            Finding::StrayCache {
                var,
                path,
                owner_uid,
                idle_secs,
                in_use,
            } => {
                write!(
                    f,
                    "stray {var} fallback {} (owner uid {owner_uid}, idle {})",
                    path.display(),
                    human(*idle_secs)
                )?;
                match in_use {
                    Some(p) => write!(f, " while {var} is {}", p.display()),
                    None => write!(f, " while {var} is unusable"),
                }
            }
            Finding::StrayWorkDir {
                path,
                owner_uid,
                age_secs,
            } => write!(
                f,
                "left-over go build work directory {} (owner uid {owner_uid}, {} old)",
                path.display(),
                human(*age_secs)
            ),
            Finding::EnvFile { warning } => write!(f, "{warning}"),
            Finding::CheckFailed { path, error } => {
                write!(f, "cannot check {}: {error}", path.display())
            }
        }
    }
}

fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Seed problems of `res` (resolved from `env`) for the user `who`.
pub fn findings(env: &GoEnv, res: &Resolution, who: &Identity) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(message) = &res.fatal {
        out.push(Finding::GoRefuses {
            message: message.clone(),
        });
    }
    for (var, r) in [
        (CacheVar::Gocache, &res.gocache),
        (CacheVar::Gomodcache, &res.gomodcache),
    ] {
        match &r.setting {
            Setting::Off => out.push(Finding::CacheOff {
                source: r.source.clone(),
            }),
            Setting::Invalid { value, reason } => out.push(Finding::Invalid {
                var,
                value: value.clone(),
                reason: reason.clone(),
                source: r.source.clone(),
            }),
            Setting::Path { path } => match write_blocker(path, who.uid, &who.gids) {
                Ok(None) => {}
                Ok(Some(blocker)) => out.push(Finding::Unwritable {
                    var,
                    path: path.clone(),
                    uid: who.uid,
                    blocker,
                }),
                Err(e) => out.push(Finding::CheckFailed {
                    path: path.clone(),
                    error: format!("{e:#}"),
                }),
            },
        }
    }
    let now = SystemTime::now();
    stray_caches(env, res, now, &mut out);
    stray_work_dirs(env, res, now, &mut out);
    out.extend(
        res.warnings
            .iter()
            .map(|w| Finding::EnvFile { warning: w.clone() }),
    );
    out
}

/// Where Go would put each cache with no variable set, for both a plain HOME and an
/// XDG_CACHE_HOME login (a user may have had either).
fn fallback_locations(env: &GoEnv) -> Vec<(CacheVar, PathBuf)> {
    let mut out = Vec::new();
    if let Some(home) = env.var("HOME").filter(|h| is_abs(h)) {
        let home = go_clean(home);
        out.push((CacheVar::Gocache, Path::new(&home).join(".cache/go-build")));
        out.push((CacheVar::Gomodcache, Path::new(&home).join("go/pkg/mod")));
    }
    if let Some(xdg) = env.var("XDG_CACHE_HOME").filter(|x| is_abs(x)) {
        let p = Path::new(&go_clean(xdg)).join("go-build");
        if !out.iter().any(|(_, q)| *q == p) {
            out.push((CacheVar::Gocache, p));
        }
    }
    out
}

fn stray_caches(env: &GoEnv, res: &Resolution, now: SystemTime, out: &mut Vec<Finding>) {
    for (var, candidate) in fallback_locations(env) {
        let resolved: &Resolved = match var {
            CacheVar::Gocache => &res.gocache,
            CacheVar::Gomodcache => &res.gomodcache,
        };
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let in_use = resolved.path().map(Path::to_path_buf);
        if let Some(p) = &in_use {
            let same_name = go_clean(&p.to_string_lossy()) == candidate.to_string_lossy();
            let same_inode =
                std::fs::metadata(p).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if same_name || same_inode {
                continue;
            }
        }
        let marker = match var {
            CacheVar::Gocache => candidate.join("trim.txt"),
            CacheVar::Gomodcache => candidate.join("cache/download"),
        };
        let newest = [Some(meta.clone()), std::fs::metadata(&marker).ok()]
            .into_iter()
            .flatten()
            .filter_map(|m| m.modified().ok())
            .max();
        out.push(Finding::StrayCache {
            var,
            path: candidate,
            owner_uid: meta.uid(),
            idle_secs: newest.map_or(0, |t| age(now, t)),
            in_use,
        });
    }
}

fn stray_work_dirs(env: &GoEnv, res: &Resolution, now: SystemTime, out: &mut Vec<Finding>) {
    let tmp = PathBuf::from(env.var("TMPDIR").unwrap_or("/tmp"));
    let mut parents = vec![res.work_parent.clone()];
    if !parents.contains(&tmp) {
        parents.push(tmp);
    }
    for parent in parents {
        if !parent.is_absolute() {
            continue;
        }
        let entries = match std::fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.push(Finding::CheckFailed {
                    path: parent,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            if !entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(b"go-build")
            {
                continue;
            }
            // DirEntry::metadata does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            found.push(Finding::StrayWorkDir {
                path: entry.path(),
                owner_uid: meta.uid(),
                age_secs: meta.modified().map_or(0, |t| age(now, t)),
            });
        }
        found.sort_by_key(|f| f.to_string());
        out.extend(found);
    }
}

fn age(now: SystemTime, then: SystemTime) -> u64 {
    now.duration_since(then).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::super::resolve;
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(pairs: &[(&str, &Path)]) -> GoEnv {
        let vars: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string()))
            .collect();
        GoEnv::new(vars, None)
    }

    fn set_mtime(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        std::fs::File::open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn stray_fallback_caches_and_work_dirs() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        let tmp = t.path().join("tmp");
        let elsewhere = t.path().join("srv/gocache");
        for d in [
            home.join(".cache/go-build"),
            home.join("go/pkg/mod/cache/download"),
            tmp.join("go-build123"),
            tmp.join("go-buildfile-parent"),
            tmp.join("other"),
            elsewhere.clone(),
        ] {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::remove_dir(tmp.join("go-buildfile-parent")).unwrap();
        std::fs::write(tmp.join("go-buildfile-parent"), "not a dir").unwrap();
        std::os::unix::fs::chown(tmp.join("go-build123"), Some(61001), None).unwrap();
        set_mtime(&tmp.join("go-build123"), 7200);
        std::fs::write(home.join(".cache/go-build/trim.txt"), "1").unwrap();
        set_mtime(&home.join(".cache/go-build/trim.txt"), 3 * 86400);
        set_mtime(&home.join(".cache/go-build"), 5 * 86400);

        let env = env_of(&[("HOME", &home), ("TMPDIR", &tmp), ("GOCACHE", &elsewhere)]);
        let res = resolve(&env);
        let f = findings(
            &env,
            &res,
            &Identity {
                uid: 0,
                gids: vec![0],
            },
        );
        let strays: Vec<&Finding> = f
            .iter()
            .filter(|x| matches!(x, Finding::StrayCache { .. }))
            .collect();
        assert_eq!(strays.len(), 1, "{f:#?}");
        let Finding::StrayCache {
            var,
            path,
            idle_secs,
            in_use,
            ..
        } = strays[0]
        else {
            unreachable!()
        };
        assert_eq!(*var, CacheVar::Gocache);
        assert_eq!(*path, home.join(".cache/go-build"));
        assert_eq!(in_use.as_deref(), Some(elsewhere.as_path()));
        // trim.txt (3 days) is newer than the root (5 days).
        assert!(
            (3 * 86400..3 * 86400 + 60).contains(idle_secs),
            "{idle_secs}"
        );
        assert!(strays[0].to_string().contains("stray GOCACHE fallback"));

        let work: Vec<&Finding> = f
            .iter()
            .filter(|x| matches!(x, Finding::StrayWorkDir { .. }))
            .collect();
        assert_eq!(work.len(), 1, "{f:#?}");
        let Finding::StrayWorkDir {
            path,
            owner_uid,
            age_secs,
        } = work[0]
        else {
            unreachable!()
        };
        assert_eq!(*path, tmp.join("go-build123"));
        assert_eq!(*owner_uid, 61001);
        assert!((7200..7260).contains(age_secs));
        let json = serde_json::to_value(work[0]).unwrap();
        assert_eq!(json["kind"], "stray_work_dir");

        // The default location in use is not a stray; a symlinked GOCACHE to it neither.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(home.join(".cache/go-build"), &link).unwrap();
        let env = env_of(&[("HOME", &home), ("TMPDIR", &tmp), ("GOCACHE", &link)]);
        let f = findings(
            &env,
            &resolve(&env),
            &Identity {
                uid: 0,
                gids: vec![0],
            },
        );
        assert!(
            !f.iter().any(|x| matches!(x, Finding::StrayCache { .. })),
            "{f:#?}"
        );
    }

    #[test]
    fn off_relative_and_unwritable() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let alice = Identity {
            uid: 61001,
            gids: vec![61001],
        };
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        vars.insert("HOME".into(), home.display().to_string());
        vars.insert("TMPDIR".into(), t.path().join("none").display().to_string());

        vars.insert("GOCACHE".into(), "off".into());
        let env = GoEnv::new(vars.clone(), None);
        let f = findings(&env, &resolve(&env), &alice);
        assert!(matches!(
            f[0],
            Finding::CacheOff {
                source: Source::Process
            }
        ));
        // HOME sits in a root-owned 0700 tempdir: alice cannot reach GOMODCACHE's parent.
        assert!(
            f.iter().any(|x| matches!(
                x,
                Finding::Unwritable {
                    var: CacheVar::Gomodcache,
                    ..
                }
            )),
            "{f:#?}"
        );

        vars.insert("GOCACHE".into(), "rel/cache".into());
        let env = GoEnv::new(vars.clone(), None);
        let f = findings(&env, &resolve(&env), &alice);
        assert!(
            f[0].to_string()
                .contains("GOCACHE \"rel/cache\" (set in the environment) is unusable: GOCACHE is not an absolute path"),
            "{}",
            f[0]
        );
        let json = serde_json::to_value(&f[0]).unwrap();
        assert_eq!(json["kind"], "invalid");
        assert_eq!(json["var"], "GOCACHE");
        assert_eq!(json["source"]["kind"], "process");
    }
}
