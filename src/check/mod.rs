//! `gocache-warden check`: which caches the policy covers, what each looks like, and every
//! deviation from policy with the fix the agent would apply.
//!
//! Building the report reads the filesystem (through `scan`) but changes nothing; rendering
//! is pure. The JSON form (`schema: "gocache-warden.check/v1"`) is a stable interface:
//! fields are only ever added.

use crate::goenv::{self, GoEnv, Identity};
use crate::policy::value::{human_bytes, human_duration};
use crate::policy::{CacheKind, CachePath, CachePolicy, Policy, Scope};
use crate::safefs::{self, Dir};
use crate::scan::{self, InspectOptions, Observed, Violation};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::report::{CacheReport, CacheUser, Finding, Report, Severity, Target, recompute};

mod render;
pub use render::render;

pub const SCHEMA: &str = "gocache-warden.check/v1";

/// The finding of a cache that eviction cannot bring under its `max_size`: what may not go
/// (recent units, `fuzz/`, foreign entries…) holds it over.
pub const HELD_OVER_LIMIT: &str = "held-over-limit";

/// Resolves the policy's caches. `auto` caches are resolved as `go env` would for `env`;
/// in the system scope (as root) an `auto` cache with `users` is one cache per user.
pub fn targets(policy: &Policy, scope: Scope, env: &GoEnv) -> (Vec<Target>, goenv::Resolution) {
    let res = goenv::resolve(env);
    let uid = nix::unistd::geteuid().as_raw();
    let per_user = scope == Scope::System && uid == 0;
    let mut managers = crate::users::Managers::default();
    // Directories users' managers and units set come after every other cache: see
    // `users::targets`.
    let mut extra = Vec::new();
    let mut t: Vec<Target> = Vec::new();
    for c in &policy.caches {
        match &c.path {
            // Every listed user's own cache, as their go finds it; only root can act for
            // others (a user's own agent manages just their caches).
            CachePath::Auto if per_user && let Some(users) = &c.users => {
                let (login, more) = crate::users::targets(c, users, env, &mut managers);
                t.extend(login);
                extra.extend(more);
            }
            CachePath::Fixed(p) => t.push(Target {
                policy: c.clone(),
                path: Ok(p.clone()),
                source: "policy".into(),
                owner_uid: None,
                refused: None,
                user: None,
            }),
            CachePath::Auto => {
                let r = if c.kind == CacheKind::Build {
                    &res.gocache
                } else {
                    &res.gomodcache
                };
                let path = match &r.setting {
                    goenv::Setting::Path { path } => Ok(path.clone()),
                    goenv::Setting::Off => {
                        Err("GOCACHE=off: go has no cache (every build fails)".to_string())
                    }
                    goenv::Setting::Invalid { value, reason } => {
                        Err(format!("{value:?}: {reason}"))
                    }
                };
                t.push(Target {
                    policy: c.clone(),
                    path,
                    source: format!("auto: {}", r.source),
                    owner_uid: Some(uid),
                    refused: None,
                    user: None,
                });
            }
        }
    }
    // A unit pointing at a cache the site lists (a shared cache) adds nothing: that cache is
    // managed already, by its own policy.
    use crate::policy::paths::{Overlap, overlap};
    let listed = |p: &Path| {
        t.iter().any(|o| {
            matches!(o.policy.path, CachePath::Fixed(_))
                && o.path
                    .as_ref()
                    .is_ok_and(|q| overlap(p, q) == Some(Overlap::Same))
        })
    };
    extra.retain(|x| !x.path.as_ref().is_ok_and(|p| listed(p)));
    t.extend(extra);
    (refuse_overlaps(t), res)
}

/// Refuses resolved `auto` paths no cache may have (validation has refused such fixed
/// paths already) and any cache nested in or overlapping an earlier one.
fn refuse_overlaps(mut targets: Vec<Target>) -> Vec<Target> {
    use crate::policy::paths;
    let any_auto = targets.iter().any(|t| t.policy.path == CachePath::Auto);
    let homes = if any_auto { paths::homes() } else { Vec::new() };
    for i in 0..targets.len() {
        let Ok(p) = targets[i].path.clone() else {
            continue;
        };
        if targets[i].policy.path == CachePath::Auto && targets[i].refused.is_none() {
            targets[i].refused =
                paths::system_refusal(&p).or_else(|| paths::home_refusal(&p, &homes));
        }
        if targets[i].refused.is_some() {
            continue;
        }
        let earlier = targets[..i].iter().find_map(|o| {
            let q = o.path.as_ref().ok()?;
            paths::overlap(&p, q).map(|how| {
                format!(
                    "{} is {} cache \"{}\" ({}): caches must not nest or overlap",
                    p.display(),
                    how.describe(),
                    o.policy.name,
                    q.display()
                )
            })
        });
        targets[i].refused = earlier;
    }
    targets
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// Inspects one target and explains it.
pub fn inspect_target(t: &Target, now: i64) -> CacheReport {
    inspect_target_paired(t, now, false)
}

/// [`inspect_target`], pairing units from the first walk when `over` (the caller knows the
/// cache passed its limit, as the daemon does when inotify saw it grow past it): the walk
/// that would only find that out is saved.
pub fn inspect_target_paired(t: &Target, now: i64, over: bool) -> CacheReport {
    crate::progress::tick();
    let p = &t.policy;
    let mut r = CacheReport {
        name: p.name.clone(),
        kind: p.kind,
        path: t.path.as_ref().ok().cloned(),
        source: t.source.clone(),
        exists: false,
        limit_bytes: None,
        low_water_bytes: None,
        filesystem: None,
        min_free_bytes: None,
        min_free_inodes: None,
        observed: None,
        owner_names: Default::default(),
        findings: Vec::new(),
        inspect_error: None,
        read_only: false,
        refused: None,
        user: t.user.as_ref().map(|u| u.name.clone()),
        via: t.user.as_ref().map(|u| u.via.clone()),
        top_writers: None,
    };
    let path = match &t.path {
        Ok(p) if t.refused.is_some() => {
            refuse(&mut r, p, t.refused.as_deref().unwrap_or_default());
            return r;
        }
        Ok(p) => p,
        Err(why) => {
            r.findings.push(finding(
                "unresolved",
                Severity::Error,
                1,
                why.clone(),
                "set GOCACHE to an absolute directory (e.g. in the unit or ~/.config/go/env)"
                    .into(),
                false,
            ));
            return r;
        }
    };
    trust_findings(&mut r, p);
    let opened = match &t.user {
        Some(u) => crate::users::open_root(path, u),
        None => Dir::open_root(path),
    };
    let root = match opened {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if p.create
                && let Some(at) = read_only_ancestor(path)
            {
                r.read_only = true;
                r.findings.push(read_only_finding(path, &at));
                r.refused = Some(format!(
                    "refusing to change {}: {} is on a read-only mount",
                    path.display(),
                    at.display()
                ));
                return r;
            }
            let (sev, fix, auto) = if p.create {
                (
                    Severity::Warning,
                    "create it with the policy's owner, group, mode and ACLs".to_string(),
                    true,
                )
            } else if t.owner_uid.is_some() {
                (
                    Severity::Info,
                    "nothing to do: go creates it on first use".to_string(),
                    false,
                )
            } else {
                (
                    Severity::Warning,
                    "create it, or set create = true in the policy".to_string(),
                    false,
                )
            };
            r.findings.push(finding(
                "missing",
                sev,
                1,
                format!("{} does not exist", path.display()),
                fix,
                auto,
            ));
            return r;
        }
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            r.findings.push(finding(
                "root-not-directory",
                Severity::Error,
                1,
                format!(
                    "{} is not a directory (a symlink is never followed): {e}",
                    path.display()
                ),
                "replace it with a real directory".into(),
                false,
            ));
            // Nothing to change, and an error for enforce too (exit 1), not a silent skip.
            r.refused = Some(format!(
                "refusing to change {}: not a directory (a symlink is never followed)",
                path.display()
            ));
            return r;
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && t.user.is_some() => {
            refuse(&mut r, path, &e.to_string());
            return r;
        }
        Err(e) => {
            r.inspect_error = Some(format!("cannot open {:?}: {e}", path.display().to_string()));
            return r;
        }
    };
    r.exists = true;
    if nix::sys::statvfs::fstatvfs(root.as_fd())
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    {
        r.read_only = true;
        r.findings.push(read_only_finding(path, path));
        r.refused = Some(format!(
            "refusing to change {}: it is on a read-only mount",
            path.display()
        ));
    }
    let fs = safefs::fs_stat(&root).ok();
    r.filesystem = fs;
    if let Some(f) = fs {
        (r.min_free_bytes, r.min_free_inodes) = crate::headroom::thresholds(p, &f);
    }
    if let Err(why) = scan::recognize::recognize(&root, p.kind) {
        refuse(&mut r, path, &why);
        return r;
    }
    let limit = p
        .max_size
        .map(|l| l.resolve(fs.map_or(0, |f| f.size_bytes)));
    r.limit_bytes = limit;
    r.low_water_bytes = limit.map(|l| (l as f64 * p.low_water_percent / 100.0) as u64);
    let inspect = |pair_units| {
        scan::inspect(
            &root,
            p,
            InspectOptions {
                now,
                owner_uid: t.owner_uid,
                histogram: true,
                pair_units,
                last_use: p.last_use,
                keep_oldest: match (p.kind, limit, r.low_water_bytes) {
                    (CacheKind::Build, Some(l), Some(low)) => scan::oldest::budget(l, low),
                    _ => 0,
                },
            },
        )
    };
    let pair_first = over && p.kind == CacheKind::Build && limit.is_some();
    let mut obs = inspect(pair_first);
    if !pair_first && p.kind == CacheKind::Build && byte_target_bites(&obs, limit, &r) {
        // Exact units decide what a byte target evicts: a second walk, reading every action
        // record, only when that target will set a cutoff (then apply walks the cache anyway).
        obs = inspect(true);
    }
    if p.kind == CacheKind::Module {
        // A module cache's eviction unit is a module version, not a file: rebuild the
        // histogram and the age figures from those.
        let h = scan::lru::Histogram::default();
        (obs.oldest_use, obs.newest_use) = (None, None);
        for u in crate::modcache::units(&root, p.last_use) {
            h.add(now - u.last_use, u.bytes);
            obs.oldest_use = Some(obs.oldest_use.map_or(u.last_use, |o| o.min(u.last_use)));
            obs.newest_use = obs.newest_use.max(Some(u.last_use));
        }
        obs.past_max_age = scan::past_max_age(&h, p);
        obs.histogram = Some(std::sync::Arc::new(h));
    }
    explain(&mut r, p, &obs, now);
    for uid in obs.owners.keys() {
        r.owner_names.insert(*uid, user_name(*uid));
    }
    r.observed = Some(obs);
    r
}

/// Will a byte target set this cache's eviction cutoff? The cache (all of it, as `du`
/// counts) is over `max_size`, or its filesystem is below `min_free`/`min_free_inodes`
/// (headroom then picks one cutoff across the filesystem's caches by bytes).
fn byte_target_bites(obs: &Observed, limit: Option<u64>, r: &CacheReport) -> bool {
    let over_limit = limit.is_some_and(|l| obs.allocated_bytes > l);
    let short = r.filesystem.is_some_and(|f| {
        r.min_free_bytes.is_some_and(|m| f.avail_bytes < m)
            || r.min_free_inodes.is_some_and(|m| f.inodes_free < m)
    });
    over_limit || short
}

/// The nearest existing ancestor of `path` when it is on a read-only mount.
fn read_only_ancestor(path: &Path) -> Option<PathBuf> {
    let existing = path.ancestors().skip(1).find(|a| a.is_dir())?;
    nix::sys::statvfs::statvfs(existing)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .then(|| existing.to_path_buf())
}

/// One clear finding instead of one EROFS per entry: the usual cause is the unit's
/// `ProtectSystem=strict`, and the fix is one `systemctl edit` line.
fn read_only_finding(cache: &Path, mount_at: &Path) -> Finding {
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let why = if under_systemd {
        "outside the service's ReadWritePaths= (ProtectSystem=strict makes everything else read-only)"
    } else {
        "a read-only filesystem"
    };
    finding(
        "read-only-mount",
        Severity::Error,
        1,
        format!(
            "{} is on a read-only mount ({why}): nothing in it can be evicted, fixed or created",
            mount_at.display()
        ),
        format!(
            "`systemctl edit gocache-warden` (and gocache-warden-enforce if you use the timer), add \"[Service]\" and \"ReadWritePaths={}\", then `systemctl restart gocache-warden`",
            cache.display()
        ),
        false,
    )
}

/// Marks a cache as refused: one error finding naming the path, and nothing inspected.
fn refuse(r: &mut CacheReport, path: &std::path::Path, why: &str) {
    let msg = format!("refusing to change {}: {why}", scan::display_path(path));
    r.findings.push(finding(
        "not-a-go-cache",
        Severity::Error,
        1,
        msg.clone(),
        "point the policy at the Go cache itself (a missing directory with create = true becomes one)".into(),
        false,
    ));
    r.refused = Some(msg);
}

/// What the group grant means for who can change whose builds (issue #14): go does not
/// re-hash the outputs it uses, so write access to a shared cache is the power to put code
/// into every other user's binaries.
fn trust_findings(r: &mut CacheReport, p: &CachePolicy) {
    let Some(g) = &p.group else {
        return;
    };
    let Some(access) = p.group_access else {
        return;
    };
    let writers = p
        .trusted_writers
        .iter()
        .map(|w| w.spelled())
        .collect::<Vec<_>>()
        .join(", ");
    let cacheprog = "GOCACHEPROG=\"gocache-warden cacheprog\"";
    if access.has(crate::policy::Perm::W) {
        let declared = !p.trusted_writers.is_empty();
        r.findings.push(finding(
            "group-can-alter-builds",
            if declared { Severity::Warning } else { Severity::Info },
            1,
            format!(
                "group {} has {access}: every member can alter every member's builds (go does not re-hash a cached output before using it, so rewriting one of the same size, or adding an action record that names one's own output, injects code into the others' binaries){}",
                g.name,
                if declared {
                    format!(", although only {writers} are trusted to write")
                } else {
                    String::new()
                }
            ),
            format!(
                "give the group r-x, name the writers in trusted_writers, and let members build with {cacheprog} (README: \"Shared caches without shared trust\")"
            ),
            false,
        ));
    } else if p.trusted_writers.is_empty() {
        r.findings.push(finding(
                "read-only-group-grant",
                Severity::Error,
                1,
                format!(
                    "the policy grants group {} only {access}: members' plain go builds fail with \"permission denied\" because go must create entries and rewrite trim.txt in the cache (measured with Go 1.27: exit status 1)",
                    g.name,
                ),
                format!("keep r-x, set trusted_writers and give members {cacheprog} (the safe design), or set group_access = \"rwx\" (every member can then alter every member's builds)"),
                false,
            ));
    } else {
        r.findings.push(finding(
            "read-only-shared",
            Severity::Info,
            1,
            format!(
                "group {} reads ({access}), only {writers} write: members build with {cacheprog} --shared {} (plain go fails with \"permission denied\" on its first write)",
                g.name,
                r.path.as_ref().map_or("PATH".into(), |p| p.display().to_string())
            ),
            format!("nothing to do: roll {cacheprog} out to members (GOROOT/go.env or /etc/profile.d)"),
            false,
        ));
    }
}

fn finding(
    kind: &str,
    severity: Severity,
    count: u64,
    message: String,
    fix: String,
    auto_fix: bool,
) -> Finding {
    Finding {
        kind: kind.into(),
        severity,
        count,
        bytes: None,
        message,
        fix,
        auto_fix,
        examples: vec![],
    }
}

fn explain(r: &mut CacheReport, p: &CachePolicy, obs: &Observed, now: i64) {
    let group = p.group.as_ref().map_or("-".to_string(), |g| g.name.clone());
    let access = p.group_access.unwrap_or_default();
    let other = p.other.unwrap_or_default();
    for (v, tally) in &obs.violations {
        let (sev, msg, fix) = match v {
            Violation::Mount => (Severity::Error, "mount point inside the cache (never entered)".to_string(), "unmount it or move it out of the cache".to_string()),
            Violation::Symlink => (Severity::Error, "symlink inside the cache (never followed; go never creates one)".into(), "check where it points, then remove it by hand".into()),
            Violation::Hardlink => (Severity::Error, "regular file with more than one name (the other name may be outside the cache)".into(), "refused: remove the extra name by hand".into()),
            Violation::Special => (Severity::Error, "FIFO, socket or device node inside the cache".into(), "remove it by hand; go never creates these".into()),
            Violation::Group => (Severity::Error, format!("group is not {group}: members may not be able to read or add entries"), format!("chgrp {group}")),
            Violation::Setgid => (Severity::Error, format!("directory without setgid: new entries would not get group {group}"), "chmod g+s".into()),
            Violation::Acl => (Severity::Error, format!("access ACL does not give group {group} exactly {access} (effective, with the mask)"), format!("setfacl -m g::{access},g:{group}:{access},m::{access} (execute only where the owner has it)")),
            Violation::DefaultAcl => (Severity::Error, "directory lacks the policy's default ACL: entries go creates would not get the group grant".into(), format!("setfacl -d -m u::rwx,g::{access},g:{group}:{access},m::{access},o::{other}")),
            Violation::OtherAccess => (Severity::Warning, format!("other users' access is not {other}"), format!("chmod o={}", other.to_string().replace('-', ""))),
            Violation::ForeignOwner => (Severity::Error, format!("entry owned by another user than {} (e.g. left by `sudo go build`): go cannot refresh or trim it", user_name(r_owner(obs))), "chown it back to the cache's user (needs root)".into()),
            Violation::TooDeep => (Severity::Warning, "directory nested too deep (not entered)".into(), "remove it by hand".into()),
            Violation::Unreadable => (Severity::Warning, "entries that could not be read".into(), "check their permissions; shared caches need root".into()),
            Violation::Foreign => (Severity::Warning, "entries outside Go's cache layout: never changed or removed by the agent".into(), "look at them and move or remove them by hand".into()),
        };
        let mut f = finding(v.as_str(), sev, tally.count, msg, fix, v.fixable());
        f.examples = tally
            .examples
            .iter()
            .map(|e| scan::display_path(e))
            .collect();
        r.findings.push(f);
    }
    if let Some(limit) = r.limit_bytes {
        let low = r.low_water_bytes.unwrap_or(limit);
        let floor = p.min_age.as_secs() as i64;
        // The limit is on the whole cache, as `du -sB1` measures it, and so is every figure
        // here; eviction can free only the units past the floor.
        let used = obs.allocated_bytes;
        let cut = obs
            .histogram
            .as_ref()
            .and_then(|h| h.size_cutoff(used, limit, low, floor));
        let limit_text = format!(
            "{} limit{}",
            human_bytes(limit),
            p.max_size.map_or(String::new(), |m| format!(" ({m})"))
        );
        let left = used.saturating_sub(obs.freeable(floor));
        if cut.is_some() && left > limit {
            // Even everything eviction may take leaves it over: say what holds it, once,
            // as a finding of its own (not something `enforce` can fix).
            let held = crate::report::Held::of(obs, floor);
            let mut f = finding(
                HELD_OVER_LIMIT,
                Severity::Warning,
                1,
                format!(
                    "uses {} of its {limit_text}, and is held over it: {}",
                    human_bytes(used),
                    held.describe(p.min_age)
                ),
                format!(
                    "enforce would evict everything unused for {} or more ({}) and leave {}; raise max_size, or remove what holds it",
                    human_duration(p.min_age),
                    human_bytes(obs.freeable(floor)),
                    human_bytes(left)
                ),
                false,
            );
            f.bytes = Some(left - limit);
            r.findings.push(f);
        } else if let Some(c) = cut {
            let fix = if c.floor_limited {
                format!(
                    "evict everything unused for {} or more ({}): under the limit, though the min_age floor keeps it above low_water {}",
                    human_duration(Duration::from_secs(c.min_age_secs as u64)),
                    human_bytes(c.bytes),
                    human_bytes(low)
                )
            } else {
                format!(
                    "evict the least recently used {} entries ({}) down to low_water {}",
                    c.entries,
                    human_bytes(c.bytes),
                    human_bytes(low)
                )
            };
            let mut f = finding(
                "over-size",
                Severity::Warning,
                1,
                format!("uses {} of its {limit_text}", human_bytes(used)),
                fix,
                true,
            );
            f.bytes = Some(used - limit);
            r.findings.push(f);
        } else if used as f64 >= limit as f64 * p.alert_size_percent / 100.0 {
            r.findings.push(finding(
                "near-limit",
                Severity::Info,
                1,
                format!("uses {} of its {limit_text}", human_bytes(used)),
                "nothing yet; eviction starts above the limit".into(),
                false,
            ));
        }
    }
    if obs.past_max_age.entries > 0 {
        let max = p.max_age.unwrap_or_default();
        let mut f = finding(
            "past-max-age",
            Severity::Warning,
            obs.past_max_age.entries,
            format!(
                "{} entries ({}) unused for more than max_age {}",
                obs.past_max_age.entries,
                human_bytes(obs.past_max_age.bytes),
                human_duration(max)
            ),
            "evict them (an action record goes with its output)".into(),
            true,
        );
        f.bytes = Some(obs.past_max_age.bytes);
        r.findings.push(f);
    }
    if let Some(fs) = r.filesystem
        && fs.inodes_total > 0
    {
        let used = (fs.inodes_total - fs.inodes_free) as f64 / fs.inodes_total as f64 * 100.0;
        if used >= p.alert_inode_percent {
            r.findings.push(finding(
                "inodes",
                Severity::Warning,
                1,
                format!(
                    "filesystem inode use {used:.0}% is at or above {:.0}%",
                    p.alert_inode_percent
                ),
                "evict entries or lower max_age; small entries use inodes faster than bytes".into(),
                false,
            ));
        }
    }
    if p.kind == CacheKind::Build
        && p.rewrite_trim
        && let Some(age) = obs.trim_age_secs
        && age > 5 * 86400
    {
        r.findings.push(finding("trim-stale", Severity::Info, 1, format!("trim.txt was last written {} ago: nothing trims this cache", human_duration(Duration::from_secs(age.max(0) as u64))), "enforce rewrites trim.txt on every sweep so users' go never runs its own (possibly failing) trim".into(), true));
    }
    let _ = now;
    r.findings
        .sort_by(|a, b| a.severity.cmp(&b.severity).then(b.count.cmp(&a.count)));
}

/// The uid owning most bytes, for messages about foreign owners.
fn r_owner(obs: &Observed) -> u32 {
    obs.owners
        .iter()
        .max_by_key(|(_, u)| u.bytes)
        .map_or(0, |(uid, _)| *uid)
}

/// Environment findings as report findings.
pub fn environment(env: &GoEnv, res: &goenv::Resolution) -> Vec<Finding> {
    goenv::findings(env, res, &Identity::current())
        .into_iter()
        .map(|f| {
            let (kind, sev, fix) = match &f {
                goenv::Finding::GoRefuses { .. } => (
                    "go-refuses",
                    Severity::Error,
                    "fix the environment go complains about",
                ),
                goenv::Finding::CacheOff { .. } => (
                    "gocache-off",
                    Severity::Error,
                    "unset GOCACHE=off: since Go 1.12 builds need a cache",
                ),
                goenv::Finding::Invalid { .. } => (
                    "invalid-cache-path",
                    Severity::Error,
                    "set an absolute path",
                ),
                goenv::Finding::Unwritable { .. } => (
                    "unwritable",
                    Severity::Error,
                    "fix ownership or ACLs (enforce does for policy caches)",
                ),
                goenv::Finding::StrayCache { .. } => (
                    "stray-cache",
                    Severity::Warning,
                    "remove it once nothing uses it (or point GOCACHE at it)",
                ),
                goenv::Finding::StrayWorkDir { .. } => (
                    "stray-workdir",
                    Severity::Info,
                    "remove it if no build is running",
                ),
                goenv::Finding::EnvFile { .. } => ("env-file", Severity::Warning, "fix the line"),
                goenv::Finding::CheckFailed { .. } => {
                    ("check-failed", Severity::Warning, "check permissions")
                }
            };
            finding(kind, sev, 1, f.to_string(), fix.into(), false)
        })
        .collect()
}

/// What `gocache-warden cacheprog` counted for the user of this (own) cache: the shared
/// caches' worth to them.
fn cacheprog_finding(c: &mut CacheReport) {
    let (Some(path), true, CacheKind::Build) = (&c.path, c.exists, c.kind) else {
        return;
    };
    let Ok(crate::cacheprog::stats::Reading {
        counters: Some(s), ..
    }) = crate::cacheprog::stats::read_as_owner(path)
    else {
        return;
    };
    let gets = s.shared_hits + s.own_hits + s.misses;
    c.findings.push(Finding {
        kind: "cache-program".into(),
        severity: Severity::Info,
        count: s.shared_hits,
        bytes: Some(s.shared_hit_bytes),
        message: format!(
            "the cache program served {} of {gets} gets from shared caches ({} bytes not rebuilt), {} from this cache, {} missed; {} puts; refused {} tampered and {} untrusted shared entries{}",
            s.shared_hits, s.shared_hit_bytes, s.own_hits, s.misses, s.puts, s.shared_tampered, s.shared_untrusted,
            if s.redirected > 0 {
                format!("; {} builds had GOCACHE set to a shared cache and put here instead", s.redirected)
            } else {
                String::new()
            }
        ),
        fix: "nothing to do".into(),
        auto_fix: false,
        examples: vec![],
    });
}

/// Runs the whole check.
pub fn run(policy: &Policy, scope: Scope, env: &GoEnv) -> Report {
    let now = now();
    let (targets, res) = targets(policy, scope, env);
    let mut caches: Vec<CacheReport> = targets.iter().map(|t| inspect_target(t, now)).collect();
    crate::headroom::explain(&targets, &mut caches);
    for c in &mut caches {
        cacheprog_finding(c);
    }
    let environment = if policy.caches.iter().any(|c| c.path == CachePath::Auto) {
        environment(env, &res)
    } else {
        vec![]
    };
    let counts = |f: &Finding| f.severity != Severity::Info;
    let violations = caches
        .iter()
        .flat_map(|c| &c.findings)
        .chain(&environment)
        .any(counts);
    let failed = caches.iter().any(|c| c.inspect_error.is_some());
    let exit_code = if failed {
        3
    } else if violations {
        1
    } else {
        0
    };
    Report {
        schema: SCHEMA,
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        scope,
        generated_at: now,
        policy_sources: policy.sources.clone(),
        caches,
        environment,
        writes: None,
        compliant: !violations && !failed,
        exit_code,
    }
}
