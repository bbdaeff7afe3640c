//! Merging fragments and turning them into validated domain types.
//!
//! All checks that need more than one field (contradictions) live here too, and every error
//! points at the value that is wrong. Errors are collected rather than returned at the first
//! one so an operator fixes a policy in one round.

use super::fragment::{self, Fragment, L, SizeValue};
use super::value::{self, parse_duration, parse_percent, parse_perm};

/// `agent.verify_rate` when unset: 32 MiB/s, a few percent of a disk's read bandwidth (see
/// README, "Shared caches without shared trust").
pub const DEFAULT_VERIFY_RATE: u64 = 32 << 20;
use super::*;

struct Ctx<'a> {
    sources: &'a [Source],
    errors: Vec<Located>,
}

impl Ctx<'_> {
    fn locate(&self, file: usize, offset: usize) -> Located {
        let src = &self.sources[file];
        let before = &src.text[..offset.min(src.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Located {
            file: src.name.clone(),
            line,
            col,
            msg: String::new(),
        }
    }

    fn err<T>(&mut self, at: &L<T>, msg: impl Into<String>) {
        let mut l = self.locate(at.file, at.span.start);
        l.msg = msg.into();
        self.errors.push(l);
    }

    /// Applies `parse` to a located value, recording its error at the value's location.
    fn parse<T, U>(
        &mut self,
        v: &Option<L<T>>,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        let l = v.as_ref()?;
        match parse(&l.value) {
            Ok(u) => Some(u),
            Err(m) => {
                self.err(l, m);
                None
            }
        }
    }
}

pub(super) fn load(sources: &[Source]) -> Result<Policy, PolicyError> {
    let mut ctx = Ctx {
        sources,
        errors: Vec::new(),
    };
    let mut merged = Fragment::default();
    for (i, src) in sources.iter().enumerate() {
        match fragment::parse(&src.text, i) {
            Ok(f) => merged.merge(f),
            Err(e) => {
                let mut l = ctx.locate(i, e.span().map_or(0, |s| s.start));
                l.msg = e.message().trim().to_string();
                ctx.errors.push(l);
            }
        }
    }
    if !ctx.errors.is_empty() {
        return Err(PolicyError::Invalid(ctx.errors));
    }
    let policy = build(&mut ctx, merged);
    if ctx.errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyError::Invalid(ctx.errors))
    }
}

fn build(ctx: &mut Ctx, m: Fragment) -> Policy {
    let mut caches = Vec::new();
    let mut fixed: Vec<(&str, PathBuf, &L<String>)> = Vec::new();
    for (name, c) in &m.cache {
        if c.enabled.as_ref().is_some_and(|e| !e.value) {
            continue;
        }
        if let Some(cp) = cache(ctx, name, c) {
            if let (CachePath::Fixed(p), Some(at)) = (&cp.path, &c.path) {
                fixed.push((name, p.clone(), at));
            }
            caches.push(cp);
        }
    }
    check_paths(ctx, &fixed);
    let units = m
        .units
        .iter()
        .filter_map(|(n, u)| units(ctx, n, u))
        .collect();
    let alerts = m
        .alert
        .iter()
        .filter_map(|(n, a)| alert(ctx, n, a))
        .collect();
    let a = m.agent.unwrap_or_default();
    let interval = ctx
        .parse(&a.interval, |s| parse_duration(s))
        .unwrap_or(Duration::from_secs(3600));
    if let Some(at) = &a.interval
        && interval < Duration::from_secs(1)
    {
        ctx.err(at, "interval must be at least 1s");
    }
    let verify_rate = ctx
        .parse(&a.verify_rate, |s| match s.trim() {
            // "0" turns it off; parse_bytes refuses zero as a size limit.
            "0" => Ok(0),
            s => value::parse_bytes(s).map_err(|_| {
                format!(
                    "verify_rate {s:?} must be bytes per second (e.g. \"32MiB\") or \"0\" for off"
                )
            }),
        })
        .unwrap_or(DEFAULT_VERIFY_RATE);
    let agent = AgentPolicy {
        interval,
        watch: a.watch.is_none_or(|w| w.value),
        verify_rate,
    };
    let mf = m.metrics.unwrap_or_default();
    let metrics = MetricsPolicy {
        textfile: ctx.parse(&mf.textfile, |s| absolute(s, "textfile")),
        listen: ctx.parse(&mf.listen, |s| {
            s.parse().map_err(|_| {
                format!("invalid listen address {s:?}: expected e.g. \"127.0.0.1:9731\"")
            })
        }),
        top_users: ctx
            .parse(&mf.top_users, |n| {
                usize::try_from(*n)
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| format!("top_users must be between 1 and 1000, not {n}"))
            })
            .unwrap_or(10),
    };
    Policy {
        caches,
        units,
        agent,
        metrics,
        alerts,
        sources: ctx.sources.iter().map(|s| s.name.clone()).collect(),
    }
}

/// Refuses fixed cache paths that are system directories, home directories (or hold one),
/// or overlap another cache (see `policy::paths`).
fn check_paths(ctx: &mut Ctx, fixed: &[(&str, PathBuf, &L<String>)]) {
    let homes = if fixed.is_empty() {
        Vec::new()
    } else {
        paths::homes()
    };
    for (i, (name, p, at)) in fixed.iter().enumerate() {
        if let Some(why) = paths::system_refusal(p).or_else(|| paths::home_refusal(p, &homes)) {
            ctx.err(at, format!("cache \"{name}\": {why}"));
            continue;
        }
        for (other, q, _) in &fixed[..i] {
            match paths::overlap(p, q) {
                Some(paths::Overlap::Same) => ctx.err(
                    at,
                    format!("cache \"{name}\" has the same path as cache \"{other}\""),
                ),
                Some(how) => ctx.err(
                    at,
                    format!(
                        "cache \"{name}\" ({}) is {} cache \"{other}\" ({}): caches must not nest or overlap",
                        p.display(),
                        how.describe(),
                        q.display()
                    ),
                ),
                None => {}
            }
        }
    }
}

fn absolute(s: &str, what: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(format!("{what} {s:?} must be an absolute path"));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{what} {s:?} must not contain \"..\""));
    }
    Ok(p.to_path_buf())
}

/// The first located field of a table, to point at when the table as a whole is wrong.
fn anchor<'a>(fields: &[Option<&'a L<()>>]) -> Option<&'a L<()>> {
    fields.iter().flatten().next().copied()
}

fn unit_anchor<T>(l: &Option<L<T>>) -> Option<L<()>> {
    l.as_ref().map(|l| L {
        value: (),
        file: l.file,
        span: l.span.clone(),
    })
}

fn cache(ctx: &mut Ctx, name: &str, c: &fragment::CacheFragment) -> Option<CachePolicy> {
    let before = ctx.errors.len();
    let kind = ctx
        .parse(&c.kind, |k| match k.as_str() {
            "build" => Ok(CacheKind::Build),
            "module" => Ok(CacheKind::Module),
            _ => Err(format!(
                "unknown cache kind {k:?}: expected \"build\" or \"module\""
            )),
        })
        .unwrap_or(CacheKind::Build);
    let path = match &c.path {
        Some(p) if p.value == "auto" => Some(CachePath::Auto),
        Some(_) => ctx.parse(&c.path, |s| absolute(s, "path").map(CachePath::Fixed)),
        None => {
            let anchors = [
                unit_anchor(&c.kind),
                unit_anchor(&c.max_size),
                unit_anchor(&c.group),
                unit_anchor(&c.max_age),
                unit_anchor(&c.enabled),
            ];
            let refs: Vec<Option<&L<()>>> = anchors.iter().map(Option::as_ref).collect();
            if let Some(a) = anchor(&refs) {
                ctx.err(
                    a,
                    format!("cache \"{name}\" has no path (an absolute path or \"auto\")"),
                );
            }
            None
        }
    };
    let max_size = ctx.parse(&c.max_size, |v| match v {
        SizeValue::Int(n) if *n > 0 => Ok(SizeLimit::Bytes(*n as u64)),
        SizeValue::Int(n) => Err(format!("max_size must be greater than zero, not {n}")),
        SizeValue::Str(s) => value::parse_size_limit(s),
    });
    let low_water_percent = ctx
        .parse(&c.low_water, |s| parse_percent(s))
        .unwrap_or(90.0);
    let max_age = ctx.parse(&c.max_age, |s| parse_duration(s));
    let min_age = ctx
        .parse(&c.min_age, |s| parse_duration(s))
        .unwrap_or(Duration::from_secs(86400));
    if let (Some(max), Some(at)) = (max_age, &c.min_age)
        && min_age > max
    {
        ctx.err(
            at,
            format!(
                "min_age ({}) is longer than max_age ({}): entries could never be evicted by age",
                humantime::format_duration(min_age),
                humantime::format_duration(max)
            ),
        );
    }
    if let (None, Some(at)) = (max_size, &c.low_water) {
        ctx.err(at, "low_water has no effect without max_size");
    }
    let group = ctx.parse(&c.group, |g| match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(GroupSpec {
            name: g.clone(),
            gid: gr.gid.as_raw(),
        }),
        Ok(None) => Err(format!("unknown group {g:?}")),
        Err(e) => Err(format!("cannot look up group {g:?}: {e}")),
    });
    let owner = ctx.parse(&c.owner, |u| match nix::unistd::User::from_name(u) {
        Ok(Some(us)) => Ok(UserSpec {
            name: u.clone(),
            uid: us.uid.as_raw(),
        }),
        Ok(None) => Err(format!("unknown user {u:?}")),
        Err(e) => Err(format!("cannot look up user {u:?}: {e}")),
    });
    let setgid = c.setgid.as_ref().map_or(c.group.is_some(), |s| s.value);
    if let (Some(at), None) = (&c.setgid, &c.group)
        && at.value
    {
        ctx.err(at, "setgid needs a group to inherit: set `group`");
    }
    let group_access = ctx.parse(&c.group_access, |s| parse_perm(s));
    if let (Some(at), None) = (&c.group_access, &c.group) {
        ctx.err(at, "group_access needs `group`: whose access is it?");
    }
    let other = ctx.parse(&c.other, |s| parse_perm(s));
    let create = c.create.as_ref().is_some_and(|c| c.value);
    if let (Some(at), Some(CachePath::Auto)) = (&c.create, &path)
        && at.value
    {
        ctx.err(
            at,
            "create is for fixed paths; an \"auto\" cache is created by go itself",
        );
    }
    let rewrite_trim = c
        .rewrite_trim
        .as_ref()
        .map_or(kind == CacheKind::Build, |r| r.value);
    if let (Some(at), CacheKind::Module) = (&c.rewrite_trim, kind)
        && at.value
    {
        ctx.err(
            at,
            "rewrite_trim applies to build caches only (module caches have no trim.txt)",
        );
    }
    let (min_free, min_free_inodes_percent) = headroom(ctx, c);
    let mut users = ctx.parse(&c.users, parse_users);
    if let (Some(at), Some(CachePath::Fixed(_)), Some(p)) = (&c.users, &path, &c.path) {
        if at.file < p.file {
            // A later file gave the cache (e.g. the embedded default's) a fixed path: the
            // users of the earlier `auto` cache go with it.
            users = None;
        } else {
            ctx.err(
                at,
                "users needs path = \"auto\": each user's cache is found as their go finds it",
            );
        }
    }
    let mut exclude_users = ctx
        .parse(&c.exclude_users, |l| {
            l.iter()
                .map(|n| parse_excluded(n))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
    if let Some(at) = &c.exclude_users {
        match (&c.users, &path, &c.path) {
            (None, ..) => ctx.err(
                at,
                "exclude_users needs `users`: it leaves users out of that selection",
            ),
            // As `users` above: an earlier file's exclusions go with the `auto` cache a
            // later file replaced by a fixed path.
            (Some(_), Some(CachePath::Fixed(_)), Some(p)) if at.file < p.file => {
                exclude_users.clear();
            }
            (Some(_), Some(CachePath::Fixed(_)), _) => ctx.err(
                at,
                "exclude_users needs path = \"auto\": a fixed path is one cache, of no user",
            ),
            _ => {}
        }
    }
    let trusted_writers = ctx
        .parse(&c.trusted_writers, |ws| {
            if ws.is_empty() {
                return Err("trusted_writers is empty: name at least one user or @group".into());
            }
            if kind == CacheKind::Module {
                return Err(
                    "trusted_writers applies to build caches (the cache program serves GOCACHE)"
                        .into(),
                );
            }
            ws.iter()
                .map(|w| parse_writer(w))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
    let untrusted = ctx
        .parse(&c.untrusted, |u| match u.as_str() {
            "report" => Ok(Untrusted::Report),
            "evict" => Ok(Untrusted::Evict),
            "quarantine" => Ok(Untrusted::Quarantine),
            _ => Err(format!(
                "unknown untrusted {u:?}: expected \"report\", \"evict\" or \"quarantine\""
            )),
        })
        .unwrap_or_default();
    if let (Some(at), CacheKind::Module) = (&c.untrusted, kind) {
        ctx.err(
            at,
            "untrusted applies to build caches (their outputs are hashed)",
        );
    }
    let quarantine_retention = ctx
        .parse(&c.quarantine_retention, |s| parse_duration(s))
        .unwrap_or(super::DEFAULT_QUARANTINE_RETENTION);
    let quarantine_max_size = ctx
        .parse(&c.quarantine_max_size, |s| value::parse_bytes(s))
        .unwrap_or(super::DEFAULT_QUARANTINE_MAX_SIZE);
    for (v, key) in [
        (&c.quarantine_retention, "quarantine_retention"),
        (&c.quarantine_max_size, "quarantine_max_size"),
    ] {
        if let (Some(at), CacheKind::Module) = (v, kind) {
            ctx.err(
                at,
                format!("{key} applies to build caches (their outputs are hashed)"),
            );
        }
    }
    let last_use = ctx
        .parse(&c.last_use, |s| match s.as_str() {
            "auto" => Ok(None),
            "mtime" => Ok(Some(LastUse::Mtime)),
            "atime" => Ok(Some(LastUse::Atime)),
            _ => Err(format!(
                "unknown last_use {s:?}: expected \"auto\", \"mtime\" or \"atime\""
            )),
        })
        .flatten();
    let alerts = c.alerts.clone().unwrap_or_default();
    let alert_size_percent = ctx
        .parse(&alerts.size_percent, |s| parse_percent(s))
        .unwrap_or(90.0);
    let alert_inode_percent = ctx
        .parse(&alerts.inode_percent, |s| parse_percent(s))
        .unwrap_or(90.0);
    if ctx.errors.len() != before {
        return None;
    }
    let path = path?;
    let auto = auto_last_use(kind, &path, group.is_some(), &trusted_writers, other);
    Some(CachePolicy {
        name: name.to_string(),
        path,
        kind,
        max_size,
        low_water_percent,
        max_age,
        min_age,
        owner,
        group,
        setgid,
        group_access,
        other,
        create,
        rewrite_trim,
        users,
        exclude_users,
        min_free,
        min_free_inodes_percent,
        trusted_writers,
        untrusted,
        quarantine_retention,
        quarantine_max_size,
        last_use: last_use.unwrap_or(auto),
        last_use_auto: last_use.is_none(),
        alert_size_percent,
        alert_inode_percent,
    })
}

fn parse_users(v: &fragment::UsersValue) -> Result<Users, String> {
    let known = |n: &str| match nix::unistd::User::from_name(n) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("unknown user {n:?}")),
        Err(e) => Err(format!("cannot look up user {n:?}: {e}")),
    };
    match v {
        fragment::UsersValue::One(s) if s == "all" => Ok(Users::All),
        fragment::UsersValue::One(s) if s.starts_with('@') => {
            let g = &s[1..];
            match nix::unistd::Group::from_name(g) {
                Ok(Some(_)) => Ok(Users::Group(g.to_string())),
                Ok(None) => Err(format!("unknown group {g:?}")),
                Err(e) => Err(format!("cannot look up group {g:?}: {e}")),
            }
        }
        fragment::UsersValue::One(s) => Err(format!(
            "users {s:?}: expected \"all\", \"@group\" or a list of user names"
        )),
        fragment::UsersValue::List(l) if l.is_empty() => {
            Err("users needs at least one name".to_string())
        }
        fragment::UsersValue::List(l) => {
            for n in l {
                known(n)?;
            }
            Ok(Users::Names(l.clone()))
        }
    }
}

/// One name of `exclude_users`: a user (`name`) or a group (`@name`), resolved now so a typo
/// is an error with its place.
fn parse_excluded(n: &str) -> Result<Excluded, String> {
    if let Some(g) = n.strip_prefix('@') {
        match nix::unistd::Group::from_name(g) {
            Ok(Some(gr)) => Ok(Excluded::Group(GroupSpec {
                name: g.to_string(),
                gid: gr.gid.as_raw(),
            })),
            Ok(None) => Err(format!("unknown group {g:?} in exclude_users")),
            Err(e) => Err(format!("cannot look up group {g:?}: {e}")),
        }
    } else {
        match nix::unistd::User::from_name(n) {
            Ok(Some(u)) => Ok(Excluded::User(UserSpec {
                name: n.to_string(),
                uid: u.uid.as_raw(),
            })),
            Ok(None) => Err(format!(
                "unknown user {n:?} in exclude_users (a group is \"@name\")"
            )),
            Err(e) => Err(format!("cannot look up user {n:?}: {e}")),
        }
    }
}

/// `min_free` and `min_free_inodes`. Eviction cleans to 1.25 times them, so above 50% the
/// agent would keep most of a filesystem empty: refused as a likely typo.
fn headroom(ctx: &mut Ctx, c: &fragment::CacheFragment) -> (Option<SizeLimit>, Option<f64>) {
    let at_most_half = |pct: f64| {
        if pct > 50.0 {
            Err(format!(
                "{pct}% is more than half of the filesystem: eviction would clean to {}%",
                pct * super::LOW_WATER_FACTOR
            ))
        } else {
            Ok(pct)
        }
    };
    let min_free = ctx.parse(&c.min_free, |v| match v {
        SizeValue::Int(n) if *n > 0 => Ok(SizeLimit::Bytes(*n as u64)),
        SizeValue::Int(n) => Err(format!("min_free must be greater than zero, not {n}")),
        SizeValue::Str(s) => match value::parse_size_limit(s)? {
            SizeLimit::Percent(p) => at_most_half(p).map(SizeLimit::Percent),
            b => Ok(b),
        },
    });
    let inodes = ctx.parse(&c.min_free_inodes, |s| {
        parse_percent(s).and_then(at_most_half)
    });
    (min_free, inodes)
}

fn units(ctx: &mut Ctx, name: &str, u: &fragment::UnitsFragment) -> Option<UnitPolicy> {
    if u.enabled.as_ref().is_some_and(|e| !e.value) {
        return None;
    }
    let before = ctx.errors.len();
    let patterns = ctx
        .parse(&u.patterns, |ps| {
            if ps.is_empty() {
                return Err("match needs at least one unit name pattern".into());
            }
            for p in ps {
                glob::Pattern::new(p).map_err(|e| format!("invalid unit pattern {p:?}: {e}"))?;
            }
            Ok(ps.clone())
        })
        .unwrap_or_else(|| vec!["*.service".into()]);
    let managers = ctx
        .parse(&u.managers, |m| match m.as_str() {
            "all" => Ok(Managers::All),
            "system" => Ok(Managers::System),
            "user" => Ok(Managers::User),
            _ => Err(format!(
                "unknown managers {m:?}: expected \"all\", \"system\" or \"user\""
            )),
        })
        .unwrap_or(Managers::All);
    let remediation = ctx
        .parse(&u.remediation, |m| match m.as_str() {
            "report" => Ok(Remediation::Report),
            "drop-in" => Ok(Remediation::DropIn),
            _ => Err(format!(
                "unknown remediation {m:?}: expected \"report\" or \"drop-in\""
            )),
        })
        .unwrap_or(Remediation::Report);
    let gocache = ctx.parse(&u.gocache, |v| {
        if v.starts_with('/') || v.starts_with('%') {
            Ok(v.clone())
        } else {
            Err(format!(
                "gocache {v:?} must be an absolute path (specifiers such as %h allowed)"
            ))
        }
    });
    let gocacheprog = ctx.parse(&u.gocacheprog, |v| {
        if v.trim().is_empty() || v.chars().any(char::is_control) {
            Err(format!("gocacheprog {v:?} must be a command line"))
        } else {
            Ok(v.clone())
        }
    });
    if let (Some(at), None) = (&u.gocacheprog, &gocache) {
        ctx.err(at, "gocacheprog is written with gocache: set `gocache` too");
    }
    if let (Some(at), None) = (&u.remediation, &gocache)
        && remediation == Remediation::DropIn
    {
        ctx.err(
            at,
            "remediation \"drop-in\" needs `gocache`, the value to set",
        );
    }
    if ctx.errors.len() != before {
        return None;
    }
    Some(UnitPolicy {
        name: name.to_string(),
        patterns,
        managers,
        require_gocache: u.require_gocache.as_ref().is_none_or(|r| r.value),
        gocache,
        gocacheprog,
        remediation,
    })
}

fn alert(ctx: &mut Ctx, name: &str, a: &fragment::AlertFragment) -> Option<AlertPolicy> {
    if a.enabled.as_ref().is_some_and(|e| !e.value) {
        return None;
    }
    let before = ctx.errors.len();
    let kind = ctx.parse(&a.kind, |k| match k.as_str() {
        "slack" => Ok(AlertKind::Slack),
        "webhook" => Ok(AlertKind::Webhook),
        "exec" => Ok(AlertKind::Exec),
        _ => Err(format!(
            "unknown alert kind {k:?}: expected \"slack\", \"webhook\" or \"exec\""
        )),
    });
    let url_file = ctx.parse(&a.url_file, |s| absolute(s, "url_file"));
    let renotify = ctx
        .parse(&a.renotify, |s| parse_duration(s))
        .unwrap_or(Duration::from_secs(6 * 3600));
    let command = a
        .command
        .as_ref()
        .map(|c| c.value.clone())
        .unwrap_or_default();
    let anchor = unit_anchor(&a.kind)
        .or_else(|| unit_anchor(&a.url_file))
        .or_else(|| unit_anchor(&a.command));
    match (kind, &anchor) {
        (None, Some(at)) if a.kind.is_none() => ctx.err(at, format!("alert \"{name}\" needs a kind")),
        (Some(AlertKind::Exec), Some(at)) if command.is_empty() => {
            ctx.err(at, format!("alert \"{name}\" of kind \"exec\" needs `command`"))
        }
        (Some(AlertKind::Slack | AlertKind::Webhook), Some(at)) if url_file.is_none() && a.credential.is_none() => {
            ctx.err(at, format!("alert \"{name}\" needs `url_file` or `credential` (the URL is a secret, never inline)"))
        }
        _ => {}
    }
    if ctx.errors.len() != before {
        return None;
    }
    Some(AlertPolicy {
        name: name.to_string(),
        kind: kind?,
        url_file,
        credential: a.credential.as_ref().map(|c| c.value.clone()),
        command,
        renotify,
    })
}

/// `name` (a user) or `@name` (a group), resolved now so a typo is an error with its place.
fn parse_writer(w: &str) -> Result<Writer, String> {
    if let Some(g) = w.strip_prefix('@') {
        match nix::unistd::Group::from_name(g) {
            Ok(Some(gr)) => Ok(Writer::Group(GroupSpec {
                name: g.to_string(),
                gid: gr.gid.as_raw(),
            })),
            Ok(None) => Err(format!("unknown group {g:?} in trusted_writers")),
            Err(e) => Err(format!("cannot look up group {g:?}: {e}")),
        }
    } else {
        match nix::unistd::User::from_name(w) {
            Ok(Some(u)) => Ok(Writer::User(UserSpec {
                name: w.to_string(),
                uid: u.uid.as_raw(),
            })),
            Ok(None) => Err(format!(
                "unknown user {w:?} in trusted_writers (a group is \"@name\")"
            )),
            Err(e) => Err(format!("cannot look up user {w:?}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default, then `files` as drop-ins named `NN.toml` in order.
    fn load_with(files: &[&str]) -> Result<Policy, PolicyError> {
        let mut sources = vec![Source {
            name: DEFAULT_NAME.into(),
            text: DEFAULT_POLICY.into(),
        }];
        for (i, text) in files.iter().enumerate() {
            sources.push(Source {
                name: format!("{}.toml", 10 * (i + 1)),
                text: text.to_string(),
            });
        }
        load(&sources)
    }

    fn errors(r: Result<Policy, PolicyError>) -> Vec<String> {
        match r {
            Err(PolicyError::Invalid(v)) => v.iter().map(ToString::to_string).collect(),
            other => panic!("not rejected: {other:?}"),
        }
    }

    fn build(p: &Policy) -> &CachePolicy {
        p.caches.iter().find(|c| c.name == "build").expect("build")
    }

    #[test]
    fn exclude_users_names_users_and_groups_of_the_database() {
        let p =
            load_with(&["[cache.build]\nexclude_users = [\"root\", \"@root\"]\n"]).expect("valid");
        assert_eq!(build(&p).users, Some(Users::All));
        assert_eq!(
            build(&p).exclude_users,
            [
                Excluded::User(UserSpec {
                    name: "root".into(),
                    uid: 0
                }),
                Excluded::Group(GroupSpec {
                    name: "root".into(),
                    gid: 0
                }),
            ]
        );
        // A later file takes an earlier one's list back with an empty one.
        let p = load_with(&[
            "[cache.build]\nexclude_users = [\"root\"]\n",
            "[cache.build]\nexclude_users = []\n",
        ])
        .expect("valid");
        assert!(build(&p).exclude_users.is_empty());
    }

    #[test]
    fn exclude_users_is_rejected_with_its_location() {
        assert_eq!(
            errors(load_with(&[
                "[cache.build]\nexclude_users = [\"root\", \"gwt-no-such-user\"]\n"
            ])),
            [
                "10.toml:2:17: unknown user \"gwt-no-such-user\" in exclude_users (a group is \"@name\")"
            ]
        );
        assert_eq!(
            errors(load_with(&[
                "[cache.build]\nexclude_users = [\"@gwt-no-such-group\"]\n"
            ])),
            ["10.toml:2:17: unknown group \"gwt-no-such-group\" in exclude_users"]
        );
        assert_eq!(
            errors(load_with(&[
                "[cache.x]\npath = \"auto\"\nexclude_users = [\"root\"]\n"
            ])),
            ["10.toml:3:17: exclude_users needs `users`: it leaves users out of that selection"]
        );
        assert_eq!(
            errors(load_with(&[
                "[cache.build]\npath = \"/srv/gocache\"\nexclude_users = [\"root\"]\n"
            ])),
            [
                "10.toml:3:17: exclude_users needs path = \"auto\": a fixed path is one cache, of no user"
            ]
        );
    }

    #[test]
    fn exclude_users_goes_with_users_when_a_later_file_fixes_the_path() {
        let p = load_with(&[
            "[cache.build]\nexclude_users = [\"root\"]\n",
            "[cache.build]\npath = \"/srv/gocache\"\n",
        ])
        .expect("valid");
        assert_eq!(build(&p).users, None);
        assert!(build(&p).exclude_users.is_empty());
    }
}
