//! Where cmd/go (Go 1.2x) puts its build cache (GOCACHE) and module cache (GOMODCACHE) for
//! a given environment, and what is wrong with that setup ("seed problems").
//!
//! [`GoEnv`] is the input: the variables of a process (this one, or any other such as a
//! systemd unit's), the GOROOT of the `go` binary that process would run, and its working
//! directory. [`resolve`] mirrors cmd/go's lookup order (process environment → user env file
//! → `$GOROOT/go.env` → built-in default) using only reads of those two files; it never runs
//! `go`. [`findings`] turns a [`Resolution`] plus a user [`Identity`] into problems worth
//! reporting: a disabled or invalid cache, stray fallback caches, left-over `go-build*` work
//! directories, and cache directories the user could not write ([`can_write`] evaluates mode
//! bits and POSIX ACLs for any uid/gid set without switching identity).
//!
//! Not here: changing anything (fixing permissions, removing strays) and Go's other
//! variables (GOCACHEPROG, GOFLAGS, …). The only function that runs `go` is
//! [`goroot_from_go_command`], an explicit fallback for `go` wrappers that are scripts.

/// The `go env` file format, parsed from bytes (fuzzed on its own).
pub mod envfile;
mod findings;
mod perms;
mod resolve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub use findings::{CacheVar, Finding, findings};
pub use perms::{Blocker, Identity, can_write, write_blocker};
pub use resolve::{
    EnvFileWarning, Resolution, Resolved, Setting, Source, Value, default_gocache, resolve,
};

/// The environment cmd/go would run in: variables, the GOROOT its binary sits in, and the
/// working directory (needed only for relative `GOENV`/`GOROOT` values, which Go reads
/// relative to its working directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoEnv {
    vars: BTreeMap<String, String>,
    goroot: Option<PathBuf>,
    cwd: Option<PathBuf>,
}

impl GoEnv {
    /// `goroot` is the GOROOT cmd/go derives from its own executable (see [`find_goroot`]);
    /// it is used only when neither a `GOROOT` variable nor the user env file names one.
    pub fn new(vars: BTreeMap<String, String>, goroot: Option<PathBuf>) -> Self {
        GoEnv {
            vars,
            goroot,
            cwd: None,
        }
    }

    /// Sets the working directory relative `GOENV`/`GOROOT` values are read against;
    /// without one such values are treated as unreadable (with a warning).
    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// The current process: its variables (non-UTF-8 ones are skipped, and as in Go the first
    /// of duplicated names wins), its working directory, and the GOROOT of the `go` found on
    /// its PATH when that is a binary or a symlink to one (not a script wrapper).
    pub fn from_process() -> Self {
        let mut vars = BTreeMap::new();
        for (k, v) in std::env::vars_os() {
            if let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) {
                vars.entry(k).or_insert(v);
            }
        }
        let cwd = std::env::current_dir().ok();
        let goroot = match find_goroot(vars.get("PATH").map(String::as_str), cwd.as_deref()) {
            GorootLookup::Found(p) => Some(p),
            _ => None,
        };
        GoEnv { vars, goroot, cwd }
    }

    /// The value of a variable as Go's `os.Getenv` sees it: empty counts as unset.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    pub fn goroot(&self) -> Option<&Path> {
        self.goroot.as_deref()
    }

    pub fn cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// A path Go would open as given: absolute as is, relative against the working directory.
    fn locate(&self, p: &str) -> Option<PathBuf> {
        if is_abs(p) {
            Some(PathBuf::from(p))
        } else {
            self.cwd.as_ref().map(|c| c.join(p))
        }
    }
}

/// What looking for `go` on a PATH found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GorootLookup {
    /// `go` is (or links to) a binary inside a GOROOT (`GOROOT/bin/go` or
    /// `GOROOT/bin/GOOS_GOARCH/go`, recognised by `GOROOT/pkg/tool` as cmd/go does).
    Found(PathBuf),
    /// `go` is a script (e.g. a pyenv or pip shim); only running it can tell its GOROOT,
    /// see [`goroot_from_go_command`].
    Script(PathBuf),
    /// `go` is a binary outside any recognisable GOROOT (cmd/go would then fall back to the
    /// GOROOT it was built with, which cannot be known without running it).
    NotInGoroot(PathBuf),
    /// No executable `go` on the PATH.
    NoGo,
}

/// Finds `go` on `path_var` like a shell does (an empty element means the working
/// directory) and derives its GOROOT the way cmd/go's `findGOROOT` does from
/// `os.Executable()`, which on Linux is the symlink-resolved binary. Only reads.
pub fn find_goroot(path_var: Option<&str>, cwd: Option<&Path>) -> GorootLookup {
    let Some(go) = find_go_binary(path_var, cwd) else {
        return GorootLookup::NoGo;
    };
    if is_script(&go) {
        return GorootLookup::Script(go);
    }
    let Ok(exe) = std::fs::canonicalize(&go) else {
        return GorootLookup::NotInGoroot(go);
    };
    // cmd/go checks exe/../.. and exe/../../.. (a cross-compiled go lives in bin/GOOS_GOARCH).
    for up in [2usize, 3] {
        if let Some(dir) = exe.ancestors().nth(up)
            && dir.join("pkg").join("tool").is_dir()
        {
            return GorootLookup::Found(dir.to_path_buf());
        }
    }
    GorootLookup::NotInGoroot(go)
}

/// The first executable regular file named `go` on `path_var`.
pub fn find_go_binary(path_var: Option<&str>, cwd: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in path_var?.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = if is_abs(dir) {
            Path::new(dir).join("go")
        } else {
            cwd?.join(dir).join("go")
        };
        if let Ok(m) = std::fs::metadata(&candidate)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Some(candidate);
        }
    }
    None
}

/// Whether `path` starts with `#!`. The file is whatever a unit's PATH finds first: read
/// without blocking and only if it is (still) a regular file.
fn is_script(path: &Path) -> bool {
    crate::untrusted::read_head(path, 2).is_ok_and(|h| h == b"#!")
}

/// Fallback for script wrappers: runs `go env GOROOT` with exactly `env`'s variables (and
/// its working directory, if set). This executes code; [`resolve`] never calls it.
pub fn goroot_from_go_command(go: &Path, env: &GoEnv) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(go);
    cmd.args(["env", "GOROOT"]).env_clear().envs(&env.vars);
    if let Some(cwd) = &env.cwd {
        cmd.current_dir(cwd);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running \"{}\" env GOROOT", go.display()))?;
    if !out.status.success() {
        bail!(
            "\"{}\" env GOROOT failed ({}): {}",
            go.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if root.is_empty() {
        bail!("\"{}\" env GOROOT printed nothing", go.display());
    }
    Ok(PathBuf::from(root))
}

/// Go's `filepath.IsAbs` on Unix.
fn is_abs(p: &str) -> bool {
    p.starts_with('/')
}

/// Go's `filepath.Clean` on Unix: lexical, so results match what `go env` prints.
fn go_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for elem in p.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            e => out.push(e),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// Go's `filepath.Join` on Unix: empty elements are dropped, the result is cleaned.
fn go_join(parts: &[&str]) -> String {
    let kept: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if kept.is_empty() {
        return String::new();
    }
    go_clean(&kept.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("a/./b/..", "a"),
            ("/../x", "/x"),
            ("../../x/..", "../.."),
            ("./", "."),
            ("/a/../c/", "/c"),
        ] {
            assert_eq!(go_clean(input), want, "clean({input:?})");
        }
        assert_eq!(go_join(&["", "x", "go-build"]), "x/go-build");
        assert_eq!(go_join(&["/h/", "go"]), "/h/go");
        assert_eq!(go_join(&["", ""]), "");
    }

    #[test]
    fn goroot_lookup_layouts() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("goroot");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("pkg/tool")).unwrap();
        let go = root.join("bin/go");
        std::fs::write(&go, b"\x7fELF").unwrap();
        std::fs::set_permissions(&go, std::fs::Permissions::from_mode(0o755)).unwrap();
        let links = t.path().join("links");
        std::fs::create_dir(&links).unwrap();
        symlink(&go, links.join("go")).unwrap();
        let shims = t.path().join("shims");
        std::fs::create_dir(&shims).unwrap();
        std::fs::write(shims.join("go"), "#!/bin/sh\nexec real-go \"$@\"\n").unwrap();
        std::fs::set_permissions(shims.join("go"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let canon = std::fs::canonicalize(&root).unwrap();

        let p = format!("/nonexistent:{}", root.join("bin").display());
        assert_eq!(
            find_goroot(Some(&p), None),
            GorootLookup::Found(canon.clone())
        );
        let p = links.display().to_string();
        assert_eq!(find_goroot(Some(&p), None), GorootLookup::Found(canon));
        let p = format!("{}:{}", shims.display(), links.display());
        assert_eq!(
            find_goroot(Some(&p), None),
            GorootLookup::Script(shims.join("go"))
        );
        assert_eq!(find_goroot(Some("/nonexistent"), None), GorootLookup::NoGo);
        // An empty PATH element is the working directory.
        assert_eq!(
            find_go_binary(Some(":/x"), Some(&shims)),
            Some(shims.join(".").join("go"))
        );
    }
}
