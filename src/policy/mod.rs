//! The policy: what each Go cache should look like and how the agent may act on it.
//!
//! Loading is a pipeline, as in zincati: *sources* (the embedded default, then drop-in files
//! in filename order) → *fragments* (one per file, every field optional and located) → one
//! merged fragment (later files win per field) → a validated [`Policy`] of domain types.
//! Every rejection names `FILE:LINE:COL`. This module never touches a cache; it only reads
//! policy files and the user/group database (to resolve names given in the policy).

pub mod fragment;
pub mod paths;
mod validate;
pub mod value;

use anyhow::Context;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::safefs::LastUse;
pub use value::{Perm, SizeLimit};

/// The policy compiled into the binary: what runs when no file says otherwise.
pub const DEFAULT_POLICY: &str = include_str!("../../policy/default.toml");
/// The name the embedded default goes by in messages and `policy cat`.
pub const DEFAULT_NAME: &str = "<embedded>/policy/default.toml";

/// System drop-in directories, lowest priority first: a file in a later directory replaces a
/// file of the same name in an earlier one (`/etc` overrides `/run` overrides `/usr/lib`).
/// Headroom eviction cleans until this many times a `min_free` threshold is free (a low-water
/// mark, so eviction does not run on every write). Here rather than in `headroom` because
/// validation turns percentages into thresholds with it, and policy sits below headroom.
pub const LOW_WATER_FACTOR: f64 = 1.25;

pub const SYSTEM_DIRS: [&str; 3] = [
    "/usr/lib/gocache-warden/policy.d",
    "/run/gocache-warden/policy.d",
    "/etc/gocache-warden/policy.d",
];

/// Which instance the agent is: the system one (root, shared caches, all managers) or a
/// user's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    System,
    User,
}

impl Scope {
    /// System when running as root, user otherwise.
    pub fn detect() -> Scope {
        if nix::unistd::geteuid().is_root() {
            Scope::System
        } else {
            Scope::User
        }
    }
}

/// One policy source: a file's name and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// A policy that could not be loaded. Its kind decides exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Located>),
    #[error("cannot read policy {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A message with the place in a policy file it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.msg)
    }
}

/// Where the drop-ins of the user instance live: `$XDG_CONFIG_HOME` if absolute, else
/// `$HOME/.config`, as the XDG spec and Go's `os.UserConfigDir` agree.
pub fn user_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let base = match xdg {
        Some(p) if p.is_absolute() => p,
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("gocache-warden/policy.d"))
}

/// Collects the sources for `scope`: the embedded default, then either the explicit
/// `--policy` files/directories (which replace the drop-in directories, so tests and
/// `policy validate` see exactly what they name), or the scope's drop-in directories.
pub fn collect(scope: Scope, explicit: &[PathBuf]) -> Result<Vec<Source>, PolicyError> {
    let mut out = vec![Source {
        name: DEFAULT_NAME.into(),
        text: DEFAULT_POLICY.into(),
    }];
    let mut files: Vec<PathBuf> = Vec::new();
    if explicit.is_empty() {
        let dirs: Vec<PathBuf> = match scope {
            Scope::System => SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
            Scope::User => user_dir().into_iter().collect(),
        };
        // Same file name in a higher-priority directory masks the lower one (systemd rule).
        let mut by_name = std::collections::BTreeMap::new();
        for d in &dirs {
            for f in toml_files_in(d, false)? {
                if let Some(n) = f.file_name() {
                    by_name.insert(n.to_os_string(), f);
                }
            }
        }
        files.extend(by_name.into_values());
    } else {
        for p in explicit {
            if p.is_dir() {
                files.extend(toml_files_in(p, true)?);
            } else {
                files.push(p.clone());
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| PolicyError::Io {
            path: f.clone(),
            source,
        })?;
        out.push(Source {
            name: f.display().to_string(),
            text,
        });
    }
    Ok(out)
}

fn toml_files_in(dir: &Path, must_exist: bool) -> Result<Vec<PathBuf>, PolicyError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(vec![]),
        Err(source) => {
            return Err(PolicyError::Io {
                path: dir.into(),
                source,
            });
        }
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|source| PolicyError::Io {
            path: dir.into(),
            source,
        })?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Parses, merges and validates `sources` into a policy.
pub fn load(sources: &[Source]) -> Result<Policy, PolicyError> {
    validate::load(sources)
}

/// Collects and loads in one step; the error keeps its kind for the exit code.
pub fn load_for(scope: Scope, explicit: &[PathBuf]) -> Result<Policy, PolicyError> {
    let sources = collect(scope, explicit)?;
    load(&sources)
}

/// `policy cat`: every source with a header naming it, as `systemd-tmpfiles --cat-config`.
pub fn cat(sources: &[Source]) -> String {
    let mut s = String::new();
    for src in sources {
        s.push_str(&format!("# {}\n", src.name));
        s.push_str(&src.text);
        if !src.text.ends_with('\n') {
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// The validated policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub caches: Vec<CachePolicy>,
    pub units: Vec<UnitPolicy>,
    pub agent: AgentPolicy,
    pub metrics: MetricsPolicy,
    pub alerts: Vec<AlertPolicy>,
    /// The files this policy was built from, in merge order.
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePath {
    /// Resolved as `go env GOCACHE` / `GOMODCACHE` would for the user (or unit).
    Auto,
    Fixed(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    Build,
    Module,
}

impl fmt::Display for CacheKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheKind::Build => "build",
            CacheKind::Module => "module",
        })
    }
}

/// A group named in the policy, resolved when the policy was loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSpec {
    pub name: String,
    pub gid: u32,
}

/// Whose `auto` caches a system-scope cache covers, resolved to users at every sweep (so new
/// users are picked up without a reload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Users {
    /// Every human user (a UID in login.defs' `UID_MIN..=UID_MAX`) and root, each with a
    /// home directory: `sudo go build` and root's CI jobs fill root's own caches.
    All,
    /// Members of the group (supplementary or primary).
    Group(String),
    Names(Vec<String>),
}

/// Someone `exclude_users` leaves out of a cache's `users`: a user (by UID, so every name of
/// that account) or every member of a group (primary or supplementary, as at each sweep).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Excluded {
    User(UserSpec),
    Group(GroupSpec),
}

/// `quarantine_retention` when the policy does not set it.
pub const DEFAULT_QUARANTINE_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 86400);

/// `quarantine_max_size` when the policy does not set it.
pub const DEFAULT_QUARANTINE_MAX_SIZE: u64 = 1 << 30;

/// What `enforce --verify` does with a tampered output or an entry of an untrusted owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Untrusted {
    #[default]
    Report,
    Evict,
    Quarantine,
}

/// A trusted writer of a cache: a user, or every member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Writer {
    User(UserSpec),
    Group(GroupSpec),
}

impl Writer {
    /// As written in the policy: `name` or `@group`.
    pub fn spelled(&self) -> String {
        match self {
            Writer::User(u) => u.name.clone(),
            Writer::Group(g) => format!("@{}", g.name),
        }
    }
}

/// A user named in the policy, resolved when the policy was loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CachePolicy {
    pub name: String,
    pub path: CachePath,
    pub kind: CacheKind,
    pub max_size: Option<SizeLimit>,
    /// Eviction for size cleans down to this share of `max_size`.
    pub low_water_percent: f64,
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_age: Option<Duration>,
    /// Nothing used more recently than this is ever evicted.
    #[serde(serialize_with = "ser_duration")]
    pub min_age: Duration,
    pub owner: Option<UserSpec>,
    pub group: Option<GroupSpec>,
    pub setgid: bool,
    pub group_access: Option<Perm>,
    pub other: Option<Perm>,
    pub create: bool,
    pub rewrite_trim: bool,
    /// `auto` caches of these users instead of the invoking one's (see `users`).
    pub users: Option<Users>,
    /// Left out of `users` (e.g. root, service accounts); empty when `users` is `None`.
    pub exclude_users: Vec<Excluded>,
    /// Keep at least this much of the filesystem holding the cache free (see `headroom`).
    pub min_free: Option<SizeLimit>,
    /// Keep at least this share of the filesystem's inodes free.
    pub min_free_inodes_percent: Option<f64>,
    /// Who may write the cache; empty: not declared (anyone with write access).
    pub trusted_writers: Vec<Writer>,
    pub untrusted: Untrusted,
    /// How long an entry moved into the quarantine is kept (evidence), then removed.
    pub quarantine_retention: std::time::Duration,
    /// At most this many bytes (allocated) stay in the quarantine: the oldest go first.
    pub quarantine_max_size: u64,
    /// Which of an entry's times is its last use, for inspection, eviction and its re-check
    /// alike: the policy's `last_use`, or with "auto" (unset) what [`auto_last_use`] picks.
    pub last_use: LastUse,
    /// `last_use` was "auto": picked by what the cache is (`check` says why).
    pub last_use_auto: bool,
    pub alert_size_percent: f64,
    pub alert_inode_percent: f64,
}

/// `last_use = "auto"`: the signal only builds produce, as far as the cache allows.
///
/// - A build cache one user writes (an `auto` path, whether the invoking user's or each of
///   `users`', or a fixed path no `group`, `trusted_writers` or `other` opens to anyone
///   else): **mtime**. cmd/go sets it on every hit (`markUsed`, at most once an hour) and
///   trims by it alone; a backup, a virus scanner or `grep -r` reading the cache moves only
///   atime, and `cp -a` carries both along, so neither makes an entry look used.
/// - A build cache others read or write (`group`, `trusted_writers`, `other`): **atime**, i.e.
///   the newer of atime and mtime. The owner's hits set mtime, but Linux lets only a file's
///   owner set explicit times, so another user's hit (plain `go` in a group cache, or a
///   member's through `gocache-warden cacheprog`, which reads shared entries without
///   `O_NOATIME`) leaves only an atime behind. Reads by other programs count as use too;
///   `check` says so, and `last_use = "mtime"` makes only the owner's builds count.
/// - A module cache: **atime**. cmd/go never sets times there, it only reads (a download or
///   extraction sets mtime once); evidence of use by builds alone (the opens of Go
///   toolchain processes, through fanotify) is future work.
pub fn auto_last_use(
    kind: CacheKind,
    path: &CachePath,
    group: bool,
    trusted_writers: &[Writer],
    other: Option<Perm>,
) -> LastUse {
    let shared = matches!(path, CachePath::Fixed(_))
        && (group || !trusted_writers.is_empty() || other.is_some_and(|o| o.bits() != 0));
    if kind == CacheKind::Build && !shared {
        LastUse::Mtime
    } else {
        LastUse::Atime
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remediation {
    Report,
    DropIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Managers {
    All,
    System,
    User,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitPolicy {
    pub name: String,
    pub patterns: Vec<String>,
    pub managers: Managers,
    pub require_gocache: bool,
    /// The value a remediation sets; systemd specifiers such as `%h` allowed.
    pub gocache: Option<String>,
    /// GOCACHEPROG a drop-in sets along with GOCACHE (e.g. the cache program).
    pub gocacheprog: Option<String>,
    pub remediation: Remediation,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentPolicy {
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    pub watch: bool,
    /// Bytes per second the agent hashes in the background to verify build caches with
    /// `trusted_writers`; 0: no background verification.
    pub verify_rate: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricsPolicy {
    pub textfile: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
    pub top_users: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Slack,
    Webhook,
    Exec,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertPolicy {
    pub name: String,
    pub kind: AlertKind,
    pub url_file: Option<PathBuf>,
    pub credential: Option<String>,
    pub command: Vec<String>,
    #[serde(serialize_with = "ser_duration")]
    pub renotify: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

impl Policy {
    /// The merged policy as TOML-ish JSON for `policy cat --effective`.
    pub fn to_json(&self) -> anyhow::Result<String> {
        serde_json::to_string_pretty(self).context("cannot serialize policy")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(text: &str) -> Result<Policy, PolicyError> {
        load(&[
            Source {
                name: DEFAULT_NAME.into(),
                text: DEFAULT_POLICY.into(),
            },
            Source {
                name: "10.toml".into(),
                text: text.into(),
            },
        ])
    }

    fn signal(p: &Policy, name: &str) -> (LastUse, bool) {
        let c = p.caches.iter().find(|c| c.name == name).expect("cache");
        (c.last_use, c.last_use_auto)
    }

    #[test]
    fn last_use_is_mtime_where_builds_set_it_and_atime_only_as_a_last_resort() {
        let p = load_with(
            "[cache.one]\npath = \"/srv/one\"\n\
             [cache.grp]\npath = \"/srv/grp\"\ngroup = \"root\"\n\
             [cache.trust]\npath = \"/srv/trust\"\ntrusted_writers = [\"root\"]\n\
             [cache.world]\npath = \"/srv/world\"\nother = \"r-x\"\n\
             [cache.closed]\npath = \"/srv/closed\"\nother = \"---\"\n\
             [cache.mine]\npath = \"/srv/mine\"\ngroup = \"root\"\nlast_use = \"mtime\"\n\
             [cache.reads]\npath = \"/srv/reads\"\nlast_use = \"atime\"\n\
             [cache.said]\npath = \"/srv/said\"\nlast_use = \"auto\"\n",
        )
        .expect("valid");
        // The embedded default's per-user caches: each user's own go sets mtime on a hit.
        assert_eq!(signal(&p, "build"), (LastUse::Mtime, true));
        // go never sets times in a module cache.
        assert_eq!(signal(&p, "modules"), (LastUse::Atime, true));
        assert_eq!(signal(&p, "one"), (LastUse::Mtime, true));
        assert_eq!(signal(&p, "closed"), (LastUse::Mtime, true));
        for shared in ["grp", "trust", "world"] {
            assert_eq!(signal(&p, shared), (LastUse::Atime, true), "{shared}");
        }
        assert_eq!(signal(&p, "mine"), (LastUse::Mtime, false));
        assert_eq!(signal(&p, "reads"), (LastUse::Atime, false));
        assert_eq!(signal(&p, "said"), (LastUse::Mtime, true));
    }

    #[test]
    fn an_unknown_last_use_is_an_error_at_its_place() {
        match load_with("[cache.x]\npath = \"/srv/x\"\nlast_use = \"ctime\"\n") {
            Err(PolicyError::Invalid(v)) => assert_eq!(
                v.iter().map(ToString::to_string).collect::<Vec<_>>(),
                [
                    "10.toml:3:12: unknown last_use \"ctime\": expected \"auto\", \"mtime\" or \"atime\""
                ]
            ),
            other => panic!("not rejected: {other:?}"),
        }
    }
}
