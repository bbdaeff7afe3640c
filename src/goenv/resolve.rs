//! The pure resolver: GOCACHE, GOMODCACHE and GOPATH as cmd/go computes them, with where
//! each value came from. It reads the user env file and `$GOROOT/go.env` (and stats GOROOT)
//! but never runs `go` and never writes.
//!
//! Mirrors, in Go 1.27: cmd/go/internal/cfg (`EnvFile`, `initEnvCache`, `readEnvFile`,
//! `Getenv`, `findGOROOT`, `gopathDir`), cmd/go/internal/cache `DefaultDir`, go/build
//! `defaultGOPATH`, the GOPATH checks in cmd/go's `main`, and os `UserCacheDir` /
//! `UserConfigDir`. Non-Linux branches are left out.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{GoEnv, go_clean, go_join, is_abs};

/// Where a value came from, in cmd/go's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Source {
    /// The process environment.
    Process,
    /// The user env file (`$GOENV`, else `$XDG_CONFIG_HOME/go/env` or `~/.config/go/env`).
    EnvFile(PathBuf),
    /// `$GOROOT/go.env`, the toolchain's own defaults.
    GoRootEnv(PathBuf),
    /// Go's built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Process => f.write_str("set in the environment"),
            Source::EnvFile(p) => write!(f, "set by {}", p.display()),
            Source::GoRootEnv(p) => write!(f, "set by {}", p.display()),
            Source::Default => f.write_str("Go's default"),
        }
    }
}

/// What a cache variable amounts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Setting {
    /// An absolute directory Go will use (as written; not cleaned unless Go cleans it).
    Path { path: PathBuf },
    /// `GOCACHE=off`: every build fails ("build cache is disabled by GOCACHE=off").
    Off,
    /// Go cannot use the value: `value` is what was found (empty when nothing was),
    /// `reason` says why, in Go's words where Go has them.
    Invalid { value: String, reason: String },
}

/// One resolved cache variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub setting: Setting,
    pub source: Source,
    /// Exactly what `go env NAME` prints (e.g. `off` for an invalid GOCACHE).
    pub printed: String,
}

impl Resolved {
    /// The directory, when Go would use one.
    pub fn path(&self) -> Option<&Path> {
        match &self.setting {
            Setting::Path { path } => Some(path),
            _ => None,
        }
    }
}

/// A plain resolved value (GOPATH) with its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Value {
    /// What `go env` prints for it.
    pub value: String,
    pub source: Source,
}

/// A line of an env file Go silently ignores or takes in a way the author likely did not
/// mean, or a file Go could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvFileWarning {
    pub file: PathBuf,
    /// 1-based; 0 when the warning is about the whole file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EnvFileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// Everything [`resolve`] found out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    pub gocache: Resolved,
    pub gomodcache: Resolved,
    /// `cfg.BuildContext.GOPATH` as `go env GOPATH` prints it (an inferred relative GOPATH is
    /// printed as empty, though GOMODCACHE was already derived from it).
    pub gopath: Value,
    /// The user env file Go consults (`go env GOENV`), whether or not it exists; `None` with
    /// `GOENV=off` or when no config directory can be determined.
    pub env_file: Option<PathBuf>,
    /// The `go.env` of the GOROOT Go uses for defaults; `None` when that GOROOT is unknown.
    pub goroot_env_file: Option<PathBuf>,
    /// The GOROOT `go env GOROOT` would print, when known.
    pub goroot: Option<PathBuf>,
    /// Set when cmd/go refuses to run any command in this environment (Go's message).
    pub fatal: Option<String>,
    /// Parent of build work directories (`go-build*`): GOTMPDIR, else `$TMPDIR`, else /tmp.
    pub work_parent: PathBuf,
    /// `GOFLAGS` and `GOCACHEPROG` as `go` takes them (environment, else the env files);
    /// `None` when unset everywhere.
    pub goflags: Option<Value>,
    pub gocacheprog: Option<Value>,
    pub warnings: Vec<EnvFileWarning>,
}

/// Values read from the env files, with the source of each.
struct FileVars {
    vars: BTreeMap<String, (String, Source)>,
}

impl FileVars {
    /// cmd/go's `cfg.Getenv`: a non-empty process value, else the files' value; an empty
    /// result counts as unset.
    fn getenv(&self, env: &GoEnv, key: &str) -> Option<(String, Source)> {
        if let Some(v) = env.var(key) {
            return Some((v.to_string(), Source::Process));
        }
        self.vars
            .get(key)
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, s)| (v.clone(), s.clone()))
    }
}

/// Resolves GOCACHE, GOMODCACHE and GOPATH for `env` as cmd/go would. Only reads.
pub fn resolve(env: &GoEnv) -> Resolution {
    let mut warnings = Vec::new();
    let mut files = FileVars {
        vars: BTreeMap::new(),
    };

    // cfg.EnvFile: only the process GOENV counts (an env file cannot redirect itself).
    let env_file = match env.var("GOENV") {
        Some("off") => None,
        Some(f) => Some(f.to_string()),
        None => user_config_dir(env)
            .ok()
            .map(|d| go_join(&[d.as_str(), "go/env"])),
    };
    if let Some(f) = &env_file {
        read_env_file(env, f, false, &mut files, &mut warnings);
    }

    // cfg.findGOROOT(envCache.m["GOROOT"]): a GOROOT in the user file wins over the process
    // one when locating go.env (while `go env GOROOT` prefers the process one).
    let user_goroot = files
        .vars
        .get("GOROOT")
        .map(|(v, _)| v.clone())
        .filter(|v| !v.is_empty());
    let found_goroot: Option<String> = match user_goroot.or(env.var("GOROOT").map(str::to_string)) {
        Some(g) => Some(go_clean(&g)),
        None => env.goroot().map(|p| p.to_string_lossy().into_owned()),
    };
    let goroot_env_file = found_goroot.as_deref().map(|g| go_join(&[g, "go.env"]));
    if let Some(f) = &goroot_env_file {
        read_env_file(env, f, true, &mut files, &mut warnings);
    }
    // cfg.GOROOT = Getenv("GOROOT"), and initEnvCache stores the found GOROOT under that key.
    let goroot: Option<String> = env.var("GOROOT").map(str::to_string).or(found_goroot);

    let gocache = resolve_gocache(env, &files);
    let (gopath, gomodcache_default) = resolve_gopath(env, &files);
    let gomodcache = resolve_gomodcache(env, &files, gomodcache_default);
    let (gopath, fatal) = main_checks(env, &files, gopath, goroot.as_deref());

    let work_parent = files
        .getenv(env, "GOTMPDIR")
        .map(|(v, _)| v)
        .or_else(|| env.var("TMPDIR").map(str::to_string))
        .unwrap_or_else(|| "/tmp".to_string());

    Resolution {
        gocache,
        gomodcache,
        gopath,
        env_file: env_file.map(PathBuf::from),
        goroot_env_file: goroot_env_file.map(PathBuf::from),
        goroot: goroot.map(PathBuf::from),
        fatal,
        work_parent: PathBuf::from(work_parent),
        goflags: files
            .getenv(env, "GOFLAGS")
            .map(|(value, source)| Value { value, source }),
        gocacheprog: files
            .getenv(env, "GOCACHEPROG")
            .map(|(value, source)| Value { value, source }),
        warnings,
    }
}

/// os.UserCacheDir on Linux. A relative XDG_CACHE_HOME is an error (no fallback to HOME),
/// a relative HOME is not.
fn user_cache_dir(env: &GoEnv) -> Result<String, String> {
    match env.var("XDG_CACHE_HOME") {
        Some(x) if is_abs(x) => Ok(x.to_string()),
        Some(_) => Err("path in $XDG_CACHE_HOME is relative".to_string()),
        None => match env.var("HOME") {
            Some(h) => Ok(format!("{h}/.cache")),
            None => Err("neither $XDG_CACHE_HOME nor $HOME are defined".to_string()),
        },
    }
}

/// Where `go` puts its build cache when `GOCACHE` is not set: `os.UserCacheDir()/go-build`
/// for environment `env` (`None` without a usable `XDG_CACHE_HOME` or `HOME`).
pub fn default_gocache(env: &GoEnv) -> Option<std::path::PathBuf> {
    user_cache_dir(env)
        .ok()
        .map(|d| std::path::Path::new(&d).join("go-build"))
}

/// os.UserConfigDir on Linux.
fn user_config_dir(env: &GoEnv) -> Result<String, String> {
    match env.var("XDG_CONFIG_HOME") {
        Some(x) if is_abs(x) => Ok(x.to_string()),
        Some(_) => Err("path in $XDG_CONFIG_HOME is relative".to_string()),
        None => match env.var("HOME") {
            Some(h) => Ok(format!("{h}/.config")),
            None => Err("neither $XDG_CONFIG_HOME nor $HOME are defined".to_string()),
        },
    }
}

/// cache.DefaultDir.
fn resolve_gocache(env: &GoEnv, files: &FileVars) -> Resolved {
    if let Some((v, source)) = files.getenv(env, "GOCACHE") {
        if v == "off" {
            return Resolved {
                setting: Setting::Off,
                source,
                printed: "off".to_string(),
            };
        }
        if is_abs(&v) {
            return Resolved {
                setting: Setting::Path {
                    path: PathBuf::from(&v),
                },
                source,
                printed: v,
            };
        }
        return Resolved {
            setting: Setting::Invalid {
                value: v,
                reason: "GOCACHE is not an absolute path".to_string(),
            },
            source,
            printed: "off".to_string(),
        };
    }
    match user_cache_dir(env) {
        Ok(dir) => {
            let path = go_join(&[dir.as_str(), "go-build"]);
            // Go accepts a default made relative by a relative HOME; it would then use a
            // cache below whatever directory `go` runs in.
            let setting = if is_abs(&path) {
                Setting::Path {
                    path: PathBuf::from(&path),
                }
            } else {
                Setting::Invalid {
                    value: path.clone(),
                    reason: "relative to the working directory because $HOME is relative"
                        .to_string(),
                }
            };
            Resolved {
                setting,
                source: Source::Default,
                printed: path,
            }
        }
        Err(e) => Resolved {
            setting: Setting::Invalid {
                value: String::new(),
                reason: format!("GOCACHE is not defined and {e}"),
            },
            source: Source::Default,
            printed: "off".to_string(),
        },
    }
}

/// go/build's Default.GOPATH and cmd/go's `EnvOrAndChanged("GOPATH", gopath(ctxt))`;
/// also returns `gopathDir("pkg/mod")`, computed before main's checks may clear GOPATH.
fn resolve_gopath(env: &GoEnv, files: &FileVars) -> (Value, String) {
    let gopath = match files.getenv(env, "GOPATH") {
        Some((v, source)) => Value { value: v, source },
        None => Value {
            value: default_gopath(env),
            source: Source::Default,
        },
    };
    let first = gopath.value.split(':').next().unwrap_or("");
    let modcache = if gopath.value.is_empty() || first.is_empty() {
        String::new()
    } else {
        go_join(&[first, "pkg/mod"])
    };
    (gopath, modcache)
}

/// go/build.defaultGOPATH: `$HOME/go`, unless that is `runtime.GOROOT()`. That is the
/// process GOROOT variable, else the GOROOT the binary was built with, which cannot be
/// known without running it and is ignored here.
fn default_gopath(env: &GoEnv) -> String {
    let Some(home) = env.var("HOME") else {
        return String::new();
    };
    let def = go_join(&[home, "go"]);
    if env.var("GOROOT").is_some_and(|g| go_clean(g) == def) {
        return String::new();
    }
    def
}

fn resolve_gomodcache(env: &GoEnv, files: &FileVars, default: String) -> Resolved {
    let (value, source) = files
        .getenv(env, "GOMODCACHE")
        .unwrap_or((default, Source::Default));
    // modfetch.checkCacheDir's checks, hit by any command that touches modules.
    let setting = if value.is_empty() {
        Setting::Invalid {
            value: String::new(),
            reason: "module cache not found: neither GOMODCACHE nor GOPATH is set".to_string(),
        }
    } else if !is_abs(&value) {
        Setting::Invalid {
            value: value.clone(),
            reason: "GOMODCACHE entry is relative; must be absolute path".to_string(),
        }
    } else {
        Setting::Path {
            path: PathBuf::from(&value),
        }
    };
    Resolved {
        setting,
        source,
        printed: value,
    }
}

/// The GOROOT and GOPATH checks at the top of cmd/go's main: a missing GOROOT or a bad
/// GOPATH entry makes every command exit 2; a relative inferred GOPATH is silently dropped.
fn main_checks(
    env: &GoEnv,
    files: &FileVars,
    mut gopath: Value,
    goroot: Option<&str>,
) -> (Value, Option<String>) {
    if let Some(g) = goroot {
        let is_dir = env.locate(g).is_some_and(|p| p.is_dir());
        if !is_dir {
            return (
                gopath,
                Some(format!("go: cannot find GOROOT directory: {g}")),
            );
        }
        if go_clean(&gopath.value) == go_clean(g) {
            // Go only warns ("both GOPATH and GOROOT are the same directory").
            return (gopath, None);
        }
    }
    let explicit = files.getenv(env, "GOPATH").is_some();
    let entries: Vec<String> = gopath.value.split(':').map(str::to_string).collect();
    for p in entries.iter().filter(|p| !p.is_empty()) {
        if p.starts_with('~') {
            return (
                gopath,
                Some(format!(
                    "go: GOPATH entry cannot start with shell metacharacter '~': {p:?}"
                )),
            );
        }
        if !is_abs(p) {
            if explicit {
                return (
                    gopath,
                    Some(format!(
                        "go: GOPATH entry is relative; must be absolute path: {p:?}."
                    )),
                );
            }
            gopath.value.clear();
        }
    }
    (gopath, None)
}

/// cfg.readEnvFile. In the user file a later line wins; in go.env the first line wins and
/// keys present in the user file (even with an empty value) are not overridden.
fn read_env_file(
    env: &GoEnv,
    file: &str,
    is_goroot: bool,
    files: &mut FileVars,
    warnings: &mut Vec<EnvFileWarning>,
) {
    let Some(path) = env.locate(file) else {
        warnings.push(EnvFileWarning {
            file: PathBuf::from(file),
            line: 0,
            message: "relative path and no working directory known; not read".to_string(),
        });
        return;
    };
    // The file is the user's: bounded, non-blocking, regular files only (a FIFO or
    // /dev/zero named by GOENV must neither block nor exhaust the agent).
    let data = match crate::untrusted::read_bounded(&path, crate::untrusted::GOENV_MAX_BYTES) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            // Go ignores every read error; say so, since settings may be missed.
            warnings.push(EnvFileWarning {
                file: PathBuf::from(file),
                line: 0,
                message: format!("cannot be read ({e}); go ignores it"),
            });
            return;
        }
    };
    let source = if is_goroot {
        Source::GoRootEnv(PathBuf::from(file))
    } else {
        Source::EnvFile(PathBuf::from(file))
    };
    let parsed = super::envfile::parse(&data);
    warnings.extend(
        parsed
            .warnings
            .into_iter()
            .map(|(line, message)| EnvFileWarning {
                file: PathBuf::from(file),
                line,
                message,
            }),
    );
    for (key, val) in parsed.settings {
        if is_goroot && files.vars.contains_key(&key) {
            continue;
        }
        files.vars.insert(key, (val, source.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> GoEnv {
        GoEnv::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None,
        )
    }

    #[test]
    fn env_file_lines_and_warnings() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("env");
        std::fs::write(
            &f,
            "# comment\n\n GOCACHE=/lead\ngocache=/lower\nGOCACHE=/first\nGOCACHE=/second\r\nGOPATH=\"/q\"\nGOMODCACHE=/m",
        )
        .unwrap();
        let e = env(&[("HOME", "/h"), ("GOENV", f.to_str().unwrap())]);
        let r = resolve(&e);
        assert_eq!(r.gocache.printed, "/second\r");
        assert_eq!(r.gomodcache.printed, "/m");
        assert_eq!(r.gomodcache.source, Source::EnvFile(f.clone()));
        let lines: Vec<usize> = r.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![3, 4, 6, 7], "{:#?}", r.warnings);
        assert!(
            r.warnings[0]
                .to_string()
                .starts_with(&format!("{}:3: ", f.display()))
        );
    }

    /// GOENV names whatever the user likes: /dev/zero must not be read to the end, a FIFO
    /// must not block, and both are warnings naming the file while the rest resolves.
    #[test]
    fn hostile_env_files_are_skipped_with_a_warning() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let big = t.path().join("big");
        std::fs::write(&big, vec![b'#'; crate::untrusted::GOENV_MAX_BYTES + 1]).unwrap();
        for (file, says) in [
            ("/dev/zero", "character device"),
            (fifo.to_str().unwrap(), "a FIFO"),
            (big.to_str().unwrap(), "larger than"),
        ] {
            let r = resolve(&env(&[("HOME", "/h"), ("GOENV", file)]));
            assert_eq!(r.gocache.printed, "/h/.cache/go-build", "{file}");
            assert!(
                r.warnings
                    .iter()
                    .any(|w| w.file == Path::new(file) && w.message.contains(says)),
                "{file}: {:?}",
                r.warnings
            );
        }
    }

    #[test]
    fn goroot_env_first_line_wins_and_user_empty_masks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("go.env"), "GOCACHE=/one\nGOCACHE=/two\n").unwrap();
        let user = t.path().join("userenv");
        let base = [("HOME", "/h"), ("GOROOT", root.to_str().unwrap())];
        let mut with_goenv = base.to_vec();
        with_goenv.push(("GOENV", user.to_str().unwrap()));

        let r = resolve(&env(&with_goenv));
        assert_eq!(r.gocache.printed, "/one");
        assert_eq!(r.gocache.source, Source::GoRootEnv(root.join("go.env")));

        std::fs::write(&user, "GOCACHE=\n").unwrap();
        let r = resolve(&env(&with_goenv));
        assert_eq!(r.gocache.printed, "/h/.cache/go-build");
        assert_eq!(r.gocache.source, Source::Default);
    }

    #[test]
    fn gopath_rules() {
        let r = resolve(&env(&[("HOME", "/h"), ("GOPATH", ":/a")]));
        assert_eq!(r.gomodcache.printed, "");
        assert!(matches!(r.gomodcache.setting, Setting::Invalid { .. }));
        assert_eq!(r.fatal, None);
        let r = resolve(&env(&[("HOME", "/h"), ("GOPATH", "/a:~b")]));
        assert!(r.fatal.unwrap().contains("shell metacharacter"));
        let r = resolve(&env(&[("HOME", "rel")]));
        assert_eq!(r.gomodcache.printed, "rel/go/pkg/mod");
        assert_eq!(r.gopath.value, "");
        assert_eq!(r.fatal, None);
        let r = resolve(&env(&[("HOME", "/h"), ("GOPATH", "/a/../c/:/d")]));
        assert_eq!(r.gomodcache.printed, "/c/pkg/mod");
        assert_eq!(r.gopath.value, "/a/../c/:/d");
    }
}
