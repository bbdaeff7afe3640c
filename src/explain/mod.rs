//! `gocache-warden explain PID`: what a running process really uses, for the operator who
//! today reads `/proc/PID/environ` and `/proc/PID/fd` by hand. From the process's own
//! environment (`/proc/PID/environ`: the variables it started with, which is what its `go`
//! sees) and working directory, `GOCACHE`, `GOMODCACHE`, `GOFLAGS` and `GOCACHEPROG` are
//! resolved exactly as cmd/go would for it (`goenv::resolve`, its `go env` file included),
//! with that user's file-system credentials (`untrusted::with_creds`): the env files, `PATH`
//! and `GOROOT` are the user's to point anywhere. Then: its systemd unit (`/proc/PID/cgroup`),
//! whether each cache is one the policy covers and that cache's state as `check` reports it,
//! and the cache files the process holds open.
//!
//! Only root or the process's owner may ask (the kernel lets no one else read `environ`
//! either; the check here says so plainly). Everything read from `/proc` is bounded
//! (`procfs`).

pub mod procfs;

use crate::goenv;
use crate::policy::{Policy, Scope};
use crate::report::CacheReport;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

pub const SCHEMA: &str = "gocache-warden.explain/v1";

/// The variables shown as the process has them in its environment.
pub const VARS: [&str; 5] = ["GOCACHE", "GOMODCACHE", "GOENV", "GOFLAGS", "GOCACHEPROG"];

/// Everything `explain` found out about one process.
#[derive(Debug, Serialize)]
pub struct Explained {
    pub schema: &'static str,
    pub pid: i32,
    /// `/proc/PID/status` `Name:`.
    pub command: String,
    pub cmdline: Vec<String>,
    /// The process's effective uid (whose files it reads and writes) and that user's name.
    pub uid: u32,
    pub user: String,
    /// Its systemd unit (`builder.service`, `session-4.scope`), when it runs in one.
    pub unit: Option<String>,
    /// The uid whose user manager runs that unit (`user@UID.service`); `None` for the
    /// system manager's units.
    pub user_manager: Option<u32>,
    /// [`VARS`] as set in its environment (`None`: not set).
    pub environment: BTreeMap<String, Option<String>>,
    /// `/proc/PID/environ` was longer than `procfs::MAX_ENVIRON`: a variable may be missing.
    pub environ_truncated: bool,
    /// What its `go` would use.
    pub go: GoView,
    /// Its build and module cache, each with the policy's view of it.
    pub caches: Vec<UsedCache>,
    /// Files under those caches (or its `go env` file) it holds open.
    pub open_files: Vec<OpenFile>,
    pub open_files_truncated: bool,
}

/// cmd/go's view of the process's environment (`goenv::resolve`).
#[derive(Debug, Serialize)]
pub struct GoView {
    pub gocache: goenv::Resolved,
    pub gomodcache: goenv::Resolved,
    /// The user env file `go` reads (`go env GOENV`), whether or not it exists.
    pub env_file: Option<PathBuf>,
    pub goflags: Option<goenv::Value>,
    pub gocacheprog: Option<goenv::Value>,
    /// cmd/go refuses to run at all in this environment: its message.
    pub fatal: Option<String>,
    /// Lines of its env files that go ignores, or files it cannot read.
    pub warnings: Vec<String>,
}

/// One cache the process uses.
#[derive(Debug, Serialize)]
pub struct UsedCache {
    /// `GOCACHE` or `GOMODCACHE`.
    pub var: &'static str,
    pub path: PathBuf,
    /// The policy's cache that covers it (by name), when one does.
    pub policy: Option<String>,
    /// That cache as `check` reports it.
    pub report: Option<CacheReport>,
}

/// A file the process holds open.
#[derive(Debug, Serialize)]
pub struct OpenFile {
    /// What it belongs to: `GOCACHE`, `GOMODCACHE` or `GOENV`.
    pub var: &'static str,
    pub path: PathBuf,
}

/// Why a process could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Read(String),
}

/// Explains process `pid` for the calling user, against `policy`.
pub fn explain(pid: i32, policy: &Policy, scope: Scope) -> Result<Explained, Error> {
    let p = procfs::Proc::open(pid).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => {
            Error::NotFound(e.to_string())
        }
        _ => Error::Read(format!("/proc/{pid}: {e}")),
    })?;
    let read = |what: &str, e: std::io::Error| Error::Read(format!("/proc/{pid}/{what}: {e}"));
    let st = p.status().map_err(|e| read("status", e))?;
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 && (me != st.uid || me != st.euid) {
        return Err(Error::Refused(format!(
            "process {pid} belongs to {} (uid {}): only root or its owner may explain it",
            crate::check::user_name(st.euid),
            st.euid
        )));
    }
    let (vars, environ_truncated) = p.environ().map_err(|e| read("environ", e))?;
    let cmdline = p.cmdline().map_err(|e| read("cmdline", e))?;
    let cwd = p.cwd().ok();
    let (unit, user_manager) = p
        .cgroup()
        .map(|c| procfs::unit_of(&c))
        .unwrap_or((None, None));
    let environment = VARS
        .iter()
        .map(|v| (v.to_string(), vars.get(*v).cloned()))
        .collect();
    let res = resolve_as(st.euid, vars, cwd)?;
    let go = GoView {
        gocache: res.gocache.clone(),
        gomodcache: res.gomodcache.clone(),
        env_file: res.env_file.clone(),
        goflags: res.goflags.clone(),
        gocacheprog: res.gocacheprog.clone(),
        fatal: res.fatal.clone(),
        warnings: res.warnings.iter().map(ToString::to_string).collect(),
    };
    let used: Vec<(&'static str, PathBuf)> =
        [("GOCACHE", &go.gocache), ("GOMODCACHE", &go.gomodcache)]
            .into_iter()
            .filter_map(|(v, r)| r.path().map(|p| (v, p.to_path_buf())))
            .collect();
    let caches = under_policy(&used, policy, scope);
    let (fds, open_files_truncated) = p.open_files().unwrap_or_default();
    let open_files = fds
        .into_iter()
        .filter_map(|f| {
            if go.env_file.as_deref() == Some(f.as_path()) {
                return Some(OpenFile {
                    var: "GOENV",
                    path: f,
                });
            }
            used.iter()
                .find(|(_, c)| f.starts_with(c))
                .map(|(v, _)| OpenFile { var: v, path: f })
        })
        .collect();
    Ok(Explained {
        schema: SCHEMA,
        pid,
        command: st.name,
        cmdline,
        uid: st.euid,
        user: crate::check::user_name(st.euid),
        unit,
        user_manager,
        environment,
        environ_truncated,
        go,
        caches,
        open_files,
        open_files_truncated,
    })
}

/// `goenv::resolve` for the process's variables and working directory, with the
/// file-system credentials of `uid`: its env files and its `PATH` (where the `go` whose
/// GOROOT gives `go.env` is found) are that user's to choose.
fn resolve_as(
    uid: u32,
    vars: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
) -> Result<goenv::Resolution, Error> {
    let creds =
        crate::untrusted::Creds::of_uid(uid).map_err(|e| Error::Read(format!("uid {uid}: {e}")))?;
    crate::untrusted::with_creds(&creds, move || {
        let goroot = match goenv::find_goroot(vars.get("PATH").map(String::as_str), cwd.as_deref())
        {
            goenv::GorootLookup::Found(p) => Some(p),
            _ => None,
        };
        let mut env = goenv::GoEnv::new(vars, goroot);
        if let Some(c) = cwd {
            env = env.with_cwd(c);
        }
        goenv::resolve(&env)
    })
    .map_err(|e| Error::Read(format!("go env as uid {uid}: {e}")))
}

/// Each cache with the policy's cache that covers it (the same directory, or one it lies
/// in) and that cache's `check` report.
fn under_policy(used: &[(&'static str, PathBuf)], policy: &Policy, scope: Scope) -> Vec<UsedCache> {
    use crate::policy::paths::{Overlap, overlap};
    let (targets, _) = crate::check::targets(policy, scope, &goenv::GoEnv::from_process());
    let now = crate::check::now();
    used.iter()
        .map(|(var, path)| {
            let t = targets.iter().find(|t| {
                t.path.as_ref().is_ok_and(|q| {
                    matches!(overlap(path, q), Some(Overlap::Same | Overlap::Inside))
                })
            });
            UsedCache {
                var,
                path: path.clone(),
                policy: t.map(|t| t.policy.name.clone()),
                report: t.map(|t| crate::check::inspect_target(t, now)),
            }
        })
        .collect()
}

/// The human text of [`Explained`].
pub fn render(x: &Explained) -> String {
    let mut o = String::new();
    let unit = match (&x.unit, x.user_manager) {
        (Some(u), Some(m)) => format!(
            ", unit {u} of user {}'s manager",
            crate::check::user_name(m)
        ),
        (Some(u), None) => format!(", unit {u}"),
        (None, _) => ", in no systemd unit".to_string(),
    };
    let _ = writeln!(
        o,
        "process {} ({}) of {} (uid {}){unit}",
        x.pid, x.command, x.user, x.uid
    );
    if !x.cmdline.is_empty() {
        let _ = writeln!(o, "  command line: {}", x.cmdline.join(" "));
    }
    let env: Vec<String> = x
        .environment
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => format!("{k} unset"),
        })
        .collect();
    let _ = writeln!(o, "  its environment: {}", env.join(", "));
    if x.environ_truncated {
        let _ = writeln!(
            o,
            "  (its environment is longer than was read: a variable may be missing)"
        );
    }
    if let Some(f) = &x.go.env_file {
        let _ = writeln!(o, "  its go env file: {}", f.display());
    }
    if let Some(f) = &x.go.fatal {
        let _ = writeln!(o, "  go refuses to run here: {f}");
    }
    let _ = writeln!(o, "  what its go uses:");
    for (name, r) in [("GOCACHE", &x.go.gocache), ("GOMODCACHE", &x.go.gomodcache)] {
        let _ = writeln!(o, "    {name:<11} {} ({})", r.printed, r.source);
    }
    for (name, v) in [
        ("GOFLAGS", &x.go.goflags),
        ("GOCACHEPROG", &x.go.gocacheprog),
    ] {
        match v {
            Some(v) => {
                let _ = writeln!(o, "    {name:<11} {} ({})", v.value, v.source);
            }
            None => {
                let _ = writeln!(o, "    {name:<11} unset");
            }
        }
    }
    for w in &x.go.warnings {
        let _ = writeln!(o, "    warning: {w}");
    }
    for c in &x.caches {
        match (&c.policy, &c.report) {
            (Some(name), Some(r)) => {
                let _ = writeln!(
                    o,
                    "  {} {} is under the policy's cache \"{name}\"{}",
                    c.var,
                    c.path.display(),
                    state(r)
                );
                for f in r
                    .findings
                    .iter()
                    .filter(|f| f.severity != crate::report::Severity::Info)
                {
                    let _ = writeln!(o, "    {:?} {}: {}", f.severity, f.kind, f.message);
                }
            }
            _ => {
                let _ = writeln!(o, "  {} {} is not under policy", c.var, c.path.display());
            }
        }
    }
    if x.open_files.is_empty() {
        let _ = writeln!(o, "  it holds no cache file open");
    } else {
        let _ = writeln!(o, "  cache files it holds open ({}):", x.open_files.len());
        for f in &x.open_files {
            let _ = writeln!(o, "    {} {}", f.var, f.path.display());
        }
    }
    o
}

/// ": 1.2 GiB of 10 GiB" and what stops it, from a cache's `check` report.
fn state(r: &CacheReport) -> String {
    let human = crate::policy::value::human_bytes;
    if let Some(e) = &r.inspect_error {
        return format!(": not inspected ({e})");
    }
    if let Some(why) = &r.refused {
        return format!(": refused ({why})");
    }
    let Some(obs) = &r.observed else {
        return if r.exists {
            String::new()
        } else {
            ": does not exist yet".to_string()
        };
    };
    let size = human(obs.allocated_bytes);
    match r.limit_bytes {
        Some(l) => format!(": {size} of {}", human(l)),
        None => format!(": {size}, no size limit"),
    }
}
