//! Every user's caches: `users = "all" | "@group" | ["alice", …]` on an `auto` cache in the
//! system scope becomes one cache per user, found exactly as that user's `go` would find it.
//!
//! Users are resolved at every sweep (new users, changed `go env` files and new homes are
//! picked up without a reload): `"all"` is every user of the user database with a UID in
//! login.defs' `UID_MIN..=UID_MAX` (default 1000..=60000), and root, each with an existing
//! home directory; `exclude_users` then leaves users and groups' members out of any
//! selection. Root is no exception below: its caches are found, opened and limited as
//! anyone's.
//! For each, `goenv::resolve` runs with the environment a login gives `go` (`HOME`, `USER`,
//! `LOGNAME`, the system `go`'s GOROOT) on a thread of its own whose filesystem credentials
//! (fsuid, fsgid, supplementary groups) are the user's, so their `go env` file is read with
//! their rights, and with a deadline, so a FIFO there cannot hold the sweep.
//! Inside a home nothing the user controls is followed: the root is opened from the home
//! directory with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and must belong to the user.
//!
//! A user whose systemd manager or services set `GOCACHE` (`GOMODCACHE` for a module cache)
//! to another directory builds there too, so each such directory is another cache of that
//! user ([`CacheUser::via`] says which: `"manager"` or `"unit:NAME"`; the login one is
//! `"go env"`), with the same limits, opened and judged exactly like the login one. The
//! values are read over the managers' private sockets by `systemd::usercaches`, once per
//! user per sweep, all users at once on a thread of its own with one deadline
//! ([`MANAGER_DEADLINE`]).

use crate::goenv::{self, GoEnv};
use crate::policy::paths::{self, PwEntry};
use crate::policy::{CacheKind, CachePolicy, Excluded, Users};
pub use crate::report::CacheUser;
use crate::report::Target;
use crate::safefs::Dir;
use crate::systemd::usercaches::{self, UserSettings};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a user's `go env` file may take to read.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(2);

/// `CacheUser::via` of the cache a login's `go` finds.
pub const VIA_GO_ENV: &str = "go env";

/// How long the users' managers, asked all at once, may take to answer what a sweep asks.
pub const MANAGER_DEADLINE: Duration = Duration::from_secs(10);

/// login.defs' `UID_MIN` and `UID_MAX` (read bounded; defaults as shadow-utils').
pub fn uid_range() -> (u32, u32) {
    let text = std::fs::File::open("/etc/login.defs")
        .and_then(|f| {
            use std::io::Read;
            let mut s = String::new();
            f.take(256 << 10).read_to_string(&mut s).map(|_| s)
        })
        .unwrap_or_default();
    let get = |key: &str, default: u32| {
        // The last setting wins, as in shadow-utils.
        text.lines()
            .rev()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.next()?.parse().ok())?
            })
            .unwrap_or(default)
    };
    (get("UID_MIN", 1000), get("UID_MAX", 60000))
}

/// The users `sel` names, less those `exclude` names, as the user database has them now.
pub fn members(sel: &Users, exclude: &[Excluded]) -> Vec<PwEntry> {
    select(paths::passwd(), sel, exclude, uid_range(), &group_of)
}

/// A group's gid and supplementary members.
type GroupEntry = (u32, Vec<String>);

/// A group as the group database has it now.
fn group_of(name: &str) -> Option<GroupEntry> {
    let gr = nix::unistd::Group::from_name(name).ok()??;
    Some((gr.gid.as_raw(), gr.mem))
}

/// [`members`] over the entries `all`, with login.defs' UID range `(lo, hi)` and `group`
/// as the group database: no I/O but a stat of each candidate's home for `"all"`.
fn select(
    all: Vec<PwEntry>,
    sel: &Users,
    exclude: &[Excluded],
    (lo, hi): (u32, u32),
    group: &dyn Fn(&str) -> Option<GroupEntry>,
) -> Vec<PwEntry> {
    // Each group is looked up once, not once per user (NSS may be LDAP).
    let wanted = match sel {
        Users::Group(g) => group(g),
        _ => None,
    };
    // By uid: leaving "root" out leaves out every name of that account.
    let left_out: Vec<u32> = exclude
        .iter()
        .filter_map(|x| match x {
            Excluded::User(u) => Some(u.uid),
            Excluded::Group(_) => None,
        })
        .collect();
    let left_out_groups: Vec<GroupEntry> = exclude
        .iter()
        .filter_map(|x| match x {
            // Gone since the policy was loaded: its primary members are still known.
            Excluded::Group(g) => Some(group(&g.name).unwrap_or((g.gid, Vec::new()))),
            Excluded::User(_) => None,
        })
        .collect();
    let in_group = |e: &PwEntry, (gid, mem): &GroupEntry| *gid == e.gid || mem.contains(&e.name);
    let mut root_seen = false;
    all.into_iter()
        .filter(|e| match sel {
            Users::All => {
                // Root builds too (`sudo go build`, root's CI jobs), into caches of its own.
                // Only the first entry of uid 0, the one getpwuid(0) returns: an alias
                // (BSD's `toor`) is the same account, and its caches would be counted twice.
                let root = e.uid == 0 && !std::mem::replace(&mut root_seen, true);
                (root || (lo..=hi).contains(&e.uid)) && e.home.is_dir()
            }
            Users::Names(names) => names.contains(&e.name),
            Users::Group(_) => wanted.as_ref().is_some_and(|g| in_group(e, g)),
        })
        .filter(|e| !left_out.contains(&e.uid) && !left_out_groups.iter().any(|g| in_group(e, g)))
        .collect()
}

/// What each user's manager says, asked at most once per user per sweep (a policy with a
/// build and a module cache for every user asks once).
#[derive(Default)]
pub struct Managers {
    by_uid: std::collections::HashMap<u32, UserSettings>,
}

impl Managers {
    /// Asks the managers of `users` not asked yet, all at once: a user whose socket stalls
    /// costs the sweep [`MANAGER_DEADLINE`] once, however many such users there are.
    fn ask(&mut self, users: &[PwEntry]) {
        let mut uids: Vec<u32> = users
            .iter()
            .map(|u| u.uid)
            .filter(|uid| !self.by_uid.contains_key(uid))
            .collect();
        uids.sort_unstable();
        uids.dedup();
        if uids.is_empty() {
            return;
        }
        let mut answers = managers_settings(&uids);
        for u in users {
            if self.by_uid.contains_key(&u.uid) {
                continue;
            }
            let s = answers.remove(&u.uid).unwrap_or_default();
            for p in &s.problems {
                tracing::warn!(target_uid = u.uid, "user manager of {}: {p}", u.name);
            }
            self.by_uid.insert(u.uid, s);
        }
    }

    fn of(&self, uid: u32) -> &[usercaches::Setting] {
        self.by_uid.get(&uid).map_or(&[], |s| s.settings.as_slice())
    }
}

/// One target per user of `c` (an `auto` cache with `users`), as their login `go` finds it,
/// and, second, one per other directory their manager or services set for `c`'s kind.
/// The second list goes after every other cache of the policy, so that a user's unit naming
/// someone else's cache is the one refused as an overlap, never the owner's.
pub fn targets(
    c: &CachePolicy,
    sel: &Users,
    process: &GoEnv,
    managers: &mut Managers,
) -> (Vec<Target>, Vec<Target>) {
    let mut v = members(sel, &c.exclude_users);
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name);
    managers.ask(&v);
    let (mut login, mut extra) = (Vec::new(), Vec::new());
    for u in v {
        let user = CacheUser {
            name: u.name.clone(),
            uid: u.uid,
            home: u.home.clone(),
            via: VIA_GO_ENV.to_string(),
        };
        let (path, source) = match resolve_as(&u, process) {
            Ok(res) => {
                let r = match c.kind {
                    CacheKind::Build => &res.gocache,
                    CacheKind::Module => &res.gomodcache,
                };
                let path = match &r.setting {
                    goenv::Setting::Path { path } => Ok(path.clone()),
                    goenv::Setting::Off => Err("GOCACHE=off: go has no cache".to_string()),
                    goenv::Setting::Invalid { value, reason } => {
                        Err(format!("{value:?}: {reason}"))
                    }
                };
                (path, format!("auto for {}: {}", u.name, r.source))
            }
            Err(e) => (Err(e), format!("auto for {}", u.name)),
        };
        let var = match c.kind {
            CacheKind::Build => "GOCACHE",
            CacheKind::Module => "GOMODCACHE",
        };
        let mut seen: Vec<PathBuf> = path.iter().cloned().collect();
        for s in managers.of(u.uid).iter().filter(|s| s.var == var) {
            let p = PathBuf::from(&s.value);
            // go itself refuses a relative value and `off` (the build fails, no cache is
            // written): nothing to manage. `[units.*]` rules report such units.
            if !p.is_absolute()
                || seen
                    .iter()
                    .any(|q| paths::overlap(q, &p) == Some(paths::Overlap::Same))
            {
                continue;
            }
            seen.push(p.clone());
            // `..` could name anything: not resolved, refused.
            let refused = p
                .components()
                .any(|c| c == std::path::Component::ParentDir)
                .then(|| "a path with \"..\" is never resolved".to_string());
            let what = match s.source.strip_prefix("unit:") {
                Some(unit) => format!("{var} of {}'s unit {unit}", u.name),
                None => format!("{var} in {}'s user manager environment", u.name),
            };
            extra.push(Target {
                policy: c.clone(),
                path: Ok(p),
                source: what,
                owner_uid: Some(u.uid),
                refused,
                user: Some(CacheUser {
                    via: s.source.clone(),
                    ..user.clone()
                }),
            });
        }
        login.push(Target {
            policy: c.clone(),
            path,
            source,
            owner_uid: Some(u.uid),
            refused: None,
            user: Some(user),
        });
    }
    (login, extra)
}

/// [`usercaches::settings`] for each of `uids`, concurrently, on a thread of its own (with
/// its own runtime: sweeps run on blocking threads of the daemon's runtime or outside any),
/// all bounded by one [`MANAGER_DEADLINE`] whatever the users' sockets do.
fn managers_settings(uids: &[u32]) -> std::collections::HashMap<u32, UserSettings> {
    let run_user = crate::systemd::dbus::run_user_dir();
    let (tx, rx) = std::sync::mpsc::channel();
    let asked = uids.to_vec();
    let spawned = std::thread::Builder::new()
        .name("user-managers".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start a runtime: {e}")));
                    return;
                }
            };
            let all = rt.block_on(futures_util::future::join_all(asked.into_iter().map(
                |uid| {
                    let run_user = run_user.clone();
                    async move {
                        let r = tokio::time::timeout(
                            MANAGER_DEADLINE,
                            usercaches::settings(uid, &run_user),
                        )
                        .await;
                        let s = match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => problem(format!("not read: {e:#}")),
                            Err(_) => problem(format!(
                                "not read: no answer within {}s",
                                MANAGER_DEADLINE.as_secs()
                            )),
                        };
                        (uid, s)
                    }
                },
            )));
            let _ = tx.send(Ok(all.into_iter().collect()));
        });
    let failed = |why: String| {
        uids.iter()
            .map(|uid| (*uid, problem(why.clone())))
            .collect()
    };
    if let Err(e) = spawned {
        return failed(format!("not read: cannot start a thread: {e}"));
    }
    match rx.recv_timeout(MANAGER_DEADLINE + Duration::from_secs(1)) {
        Ok(Ok(all)) => all,
        Ok(Err(e)) => failed(format!("not read: {e}")),
        Err(_) => failed(format!(
            "not read: no answer within {}s",
            MANAGER_DEADLINE.as_secs()
        )),
    }
}

fn problem(msg: String) -> UserSettings {
    UserSettings {
        settings: Vec::new(),
        problems: vec![msg],
    }
}

/// `goenv::resolve` for `u` with the user's filesystem credentials, on a thread of its own.
fn resolve_as(u: &PwEntry, process: &GoEnv) -> Result<goenv::Resolution, String> {
    let mut vars = std::collections::BTreeMap::new();
    let home = u.home.to_string_lossy().into_owned();
    vars.insert("HOME".to_string(), home.clone());
    vars.insert("USER".to_string(), u.name.clone());
    vars.insert("LOGNAME".to_string(), u.name.clone());
    let env = GoEnv::new(vars, process.goroot().map(Path::to_path_buf)).with_cwd(&u.home);
    let name = std::ffi::CString::new(u.name.clone()).map_err(|e| e.to_string())?;
    let groups: Vec<libc::gid_t> =
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(u.gid))
            .map_err(|e| format!("cannot list the groups of {}: {e}", u.name))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
    let (uid, gid) = (u.uid, u.gid);
    // Where go looks for it with this environment: os.UserConfigDir() is $HOME/.config.
    let env_file = u.home.join(".config/go/env");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("goenv-as-user".into())
        .spawn(move || {
            // Raw syscalls change this thread's credentials only (glibc's wrappers would
            // change every thread's); they end with the thread.
            // SAFETY: plain syscalls with a valid pointer/length pair for setgroups.
            let ok = unsafe {
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0 && {
                    libc::syscall(libc::SYS_setfsgid, gid);
                    libc::syscall(libc::SYS_setfsuid, uid);
                    // Both return the previous value: ask again to see they took.
                    libc::syscall(libc::SYS_setfsuid, u32::MAX) == i64::from(uid)
                        && libc::syscall(libc::SYS_setfsgid, u32::MAX) == i64::from(gid)
                }
            };
            let r = if !ok {
                Err("cannot take the user's credentials to read their go env file".to_string())
            } else {
                env_file_ok(&env_file).map(|()| goenv::resolve(&env))
            };
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.recv_timeout(RESOLVE_DEADLINE).unwrap_or_else(|_| {
        Err(format!(
            "reading the go env file of {} took longer than {}s (a FIFO?): skipped",
            u.name,
            RESOLVE_DEADLINE.as_secs()
        ))
    })
}

/// The largest go env file read: cmd/go's are a few lines.
const MAX_ENV_FILE: u64 = 1 << 20;

/// A user's go env file must be absent or a regular file of sane size before `resolve`
/// reads it (whole): a FIFO would block, `/dev/zero` or a huge sparse file would exhaust
/// memory. Opened non-blocking with the thread's (the user's) credentials, as go would.
/// (A swap between this check and the read is still the user's to win: `resolve` itself
/// bounds nothing; see goenv.)
fn env_file_ok(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        // Go ignores a file it cannot open; so does resolve.
        Err(_) => return Ok(()),
    };
    match f.metadata() {
        Ok(m) if m.is_file() && m.len() <= MAX_ENV_FILE => Ok(()),
        Ok(m) => Err(format!(
            "{} is not a regular file of at most 1 MiB ({} bytes, {:?}): not read, cache skipped",
            path.display(),
            m.len(),
            m.file_type()
        )),
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

/// Opens a per-user cache root without following anything the user controls: beneath the
/// home directory (opened as the administrator's path) with no symlink on the way, or from
/// `/` with no symlink at all when the cache lies outside the home. The root must belong to
/// the user.
pub fn open_root(path: &Path, user: &CacheUser) -> io::Result<Dir> {
    let dir = match path.strip_prefix(&user.home) {
        Ok(rel) if !rel.as_os_str().is_empty() => Dir::open_root(&user.home)?.open_path(rel)?,
        _ => Dir::open_root(Path::new("/"))?.open_path(path.strip_prefix("/").unwrap_or(path))?,
    };
    if dir.st.uid != user.uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to {} (uid {}): a user's cache must be theirs",
                dir.st.uid, user.name, user.uid
            ),
        ));
    }
    Ok(dir)
}

/// `check`'s per-user table: one line per user (size, limit, oldest use) and a total, for
/// every cache with `users`.
pub fn render_summary(r: &crate::report::Report) -> String {
    use crate::policy::value::{human_bytes, human_duration};
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut names: Vec<&str> = r
        .caches
        .iter()
        .filter(|c| c.user.is_some())
        .map(|c| c.name.as_str())
        .collect();
    names.dedup();
    for name in names {
        let _ = writeln!(out, "\nper-user cache \"{name}\":");
        let (mut total, mut n) = (0u64, 0);
        for c in r.caches.iter().filter(|c| c.name == name) {
            let Some(name) = &c.user else { continue };
            // A directory the user's manager or a unit of theirs set says how it was found.
            let user = match c.via.as_deref() {
                Some(via) if via != VIA_GO_ENV => format!("{name} ({via})"),
                _ => name.clone(),
            };
            let size = c.observed.as_ref().map_or(0, |o| o.allocated_bytes);
            let limit = c
                .limit_bytes
                .map_or("no limit".to_string(), |l| format!("of {}", human_bytes(l)));
            let age = c
                .observed
                .as_ref()
                .and_then(|o| o.oldest_use)
                .map_or("-".to_string(), |t| {
                    human_duration(Duration::from_secs((r.generated_at - t).max(0) as u64))
                });
            let state = if c.refused.is_some() {
                " (refused)"
            } else if !c.exists {
                " (none yet)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {user:<16} {:>10} {limit}, oldest use {age} ago{state}",
                human_bytes(size)
            );
            total += size;
            n += 1;
        }
        let users = r
            .caches
            .iter()
            .filter(|c| c.name == name)
            .filter_map(|c| c.user.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let people = if users == 1 { "user" } else { "users" };
        let of_users = if n == users {
            format!("{users} {people}")
        } else {
            format!("{n} caches of {users} {people}")
        };
        let _ = writeln!(
            out,
            "  {:<16} {:>10} ({of_users})",
            "total",
            human_bytes(total)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GroupSpec, UserSpec};

    fn entry(name: &str, uid: u32, gid: u32, home: &Path) -> PwEntry {
        PwEntry {
            name: name.to_string(),
            uid,
            gid,
            home: home.to_path_buf(),
        }
    }

    fn names(v: &[PwEntry]) -> Vec<&str> {
        v.iter().map(|e| e.name.as_str()).collect()
    }

    /// A database with root (and its alias `toor`), a system user, two humans (one without
    /// a home) and nobody; `staff` (gid 50) is alice's primary group and carol's
    /// supplementary one.
    fn db(d: &Path, root_home: bool) -> Vec<PwEntry> {
        for h in ["daemon", "alice", "carol"] {
            std::fs::create_dir(d.join(h)).expect("mkdir");
        }
        if root_home {
            std::fs::create_dir(d.join("root")).expect("mkdir");
        }
        vec![
            entry("root", 0, 0, &d.join("root")),
            entry("toor", 0, 0, &d.join("root")),
            entry("daemon", 1, 1, &d.join("daemon")),
            entry("alice", 1000, 50, &d.join("alice")),
            entry("bob", 1001, 1001, &d.join("bob")),
            entry("carol", 1002, 1002, &d.join("carol")),
            entry("nobody", 65534, 65534, Path::new("/nonexistent")),
        ]
    }

    fn staff(name: &str) -> Option<GroupEntry> {
        (name == "staff").then(|| (50, vec!["carol".to_string()]))
    }

    fn no_groups(_: &str) -> Option<GroupEntry> {
        None
    }

    const RANGE: (u32, u32) = (1000, 60000);

    #[test]
    fn all_is_every_human_with_a_home_and_root() {
        let d = tempfile::tempdir().expect("tempdir");
        let all = select(db(d.path(), true), &Users::All, &[], RANGE, &staff);
        assert_eq!(names(&all), ["root", "alice", "carol"]);
        let d = tempfile::tempdir().expect("tempdir");
        let all = select(db(d.path(), false), &Users::All, &[], RANGE, &staff);
        assert_eq!(names(&all), ["alice", "carol"], "root's home must exist");
    }

    #[test]
    fn exclude_users_leaves_out_users_by_uid_and_groups_members() {
        let root = Excluded::User(UserSpec {
            name: "root".into(),
            uid: 0,
        });
        let staff_group = Excluded::Group(GroupSpec {
            name: "staff".into(),
            gid: 50,
        });
        let pick = |sel: &Users, ex: &[Excluded], groups: &dyn Fn(&str) -> _| {
            let d = tempfile::tempdir().expect("tempdir");
            let v = select(db(d.path(), true), sel, ex, RANGE, groups);
            names(&v).iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            pick(&Users::All, std::slice::from_ref(&root), &staff),
            ["alice", "carol"]
        );
        // Primary (alice) and supplementary (carol) members alike.
        assert_eq!(
            pick(&Users::All, &[root.clone(), staff_group.clone()], &staff),
            Vec::<String>::new()
        );
        assert_eq!(
            pick(&Users::All, std::slice::from_ref(&staff_group), &staff),
            ["root"]
        );
        // Any selection: a list naming an alias of root, a group.
        let list = Users::Names(vec!["toor".into(), "alice".into(), "bob".into()]);
        assert_eq!(
            pick(&list, std::slice::from_ref(&root), &staff),
            ["alice", "bob"]
        );
        assert_eq!(
            pick(
                &Users::Group("staff".into()),
                &[Excluded::User(UserSpec {
                    name: "carol".into(),
                    uid: 1002
                })],
                &staff
            ),
            ["alice"]
        );
        // A group gone since the policy was loaded still leaves its primary members out.
        assert_eq!(
            pick(&Users::All, std::slice::from_ref(&staff_group), &no_groups),
            ["root", "carol"]
        );
    }
}
