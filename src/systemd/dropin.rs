//! Writing the `50-gocache-warden.conf` drop-in that sets GOCACHE for one unit.
//!
//! This is the only code in the systemd subsystem that changes files. It writes below a
//! directory the caller trusts (`/` for the system manager, the user's home for a user
//! manager) strictly through directory fds: every component below that base is opened with
//! `O_NOFOLLOW`, missing directories are created and handed to the target user, the file is
//! written to a temporary name in the same directory, fsynced and renamed into place, then the
//! directory is fsynced. It never touches a unit's own fragment and does not reload anything:
//! that is the caller's job. It does not decide *whether* a unit needs a drop-in either.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

use super::specifiers;

/// File name of our drop-in inside `<unit>.d/`. The `50-` prefix leaves room for an admin's
/// own drop-ins to override it.
pub const DROPIN_NAME: &str = "50-gocache-warden.conf";

/// Where and as whom to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropInTarget {
    /// Trusted directory, opened by path (following symlinks an admin put there).
    pub base: PathBuf,
    /// Unit search directory relative to `base`, e.g. `.config/systemd/user`; walked with
    /// `O_NOFOLLOW` and created if missing.
    pub rel: PathBuf,
    /// Owner for directories we create and for the file; `None` keeps the writer's identity.
    pub owner: Option<(u32, u32)>,
}

impl DropInTarget {
    /// `/etc/systemd/system`, for units of the system manager.
    pub fn system() -> Self {
        DropInTarget {
            base: PathBuf::from("/"),
            rel: PathBuf::from("etc/systemd/system"),
            owner: None,
        }
    }

    /// The user manager's `$XDG_CONFIG_HOME/systemd/user` (else `~/.config/systemd/user`),
    /// which must lie inside the home: the user sets their manager's environment
    /// (`systemctl --user set-environment XDG_CONFIG_HOME=/etc`), and a drop-in directory
    /// created for them elsewhere (`/etc/systemd/user/`) would be read by every user's
    /// manager. An `XDG_CONFIG_HOME` outside the home (or with `..`) is refused.
    pub fn user(
        home: &Path,
        xdg_config_home: Option<&Path>,
        uid: u32,
        gid: u32,
    ) -> Result<Self, String> {
        let config = match xdg_config_home {
            Some(dir) if dir.is_absolute() => dir.to_path_buf(),
            _ => home.join(".config"),
        };
        let unit_dir = config.join("systemd/user");
        let rel = unit_dir
            .strip_prefix(home)
            .ok()
            .filter(|rel| rel.components().all(|c| matches!(c, Component::Normal(_))))
            .ok_or_else(|| {
                format!(
                    "the manager's XDG_CONFIG_HOME puts its unit directory at \"{}\", outside \
                     the home \"{}\": drop-ins for a user are only written inside their home",
                    unit_dir.display(),
                    home.display()
                )
            })?;
        Ok(DropInTarget {
            base: home.to_path_buf(),
            rel: rel.to_path_buf(),
            owner: Some((uid, gid)),
        })
    }

    /// The full path the drop-in for `unit` will have.
    pub fn path_for(&self, unit: &str) -> PathBuf {
        self.base
            .join(&self.rel)
            .join(format!("{unit}.d"))
            .join(DROPIN_NAME)
    }
}

/// Quotes `GOCACHE=<value>` for an `Environment=` line: systemd unquotes it with
/// `EXTRACT_CUNESCAPE|EXTRACT_UNQUOTE`, so inside double quotes `\` and `"` need a backslash.
/// `%` is left alone on purpose: specifiers are part of the policy value.
pub fn environment_line(value: &str) -> Result<String> {
    env_assignment("GOCACHE", value)
}

/// `Environment="NAME=value"`, quoted as [`environment_line`] says.
fn env_assignment(name: &str, value: &str) -> Result<String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        bail!("{name} value {value:?} contains control character {c:?}");
    }
    specifiers::validate(value).map_err(anyhow::Error::msg)?;
    let mut line = format!("Environment=\"{name}=");
    for c in value.chars() {
        if c == '\\' || c == '"' {
            line.push('\\');
        }
        line.push(c);
    }
    line.push('"');
    Ok(line)
}

/// The whole drop-in file.
pub fn contents(value: &str) -> Result<String> {
    contents_with(value, None)
}

/// The drop-in, also setting GOCACHEPROG (the cache program that serves a read-only shared
/// cache) when the rule has one. `%` in it must be a valid specifier (`%%` for a literal).
pub fn contents_with(value: &str, gocacheprog: Option<&str>) -> Result<String> {
    let prog = match gocacheprog {
        Some(p) => format!("{}\n", env_assignment("GOCACHEPROG", p)?),
        None => String::new(),
    };
    Ok(format!(
        "# Written by gocache-warden to set GOCACHE for this unit; remove the file to undo.\n\
         [Service]\n{}\n{prog}",
        environment_line(value)?
    ))
}

/// What `write` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Written {
    Created,
    Replaced,
    Unchanged,
}

/// Characters systemd allows in unit names; anything else (notably `/`) is refused so a name
/// received over D-Bus cannot steer the write elsewhere.
pub fn check_unit_name(unit: &str) -> Result<()> {
    let ok = !unit.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('.')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    if !ok {
        bail!("refusing unusual unit name {unit:?}");
    }
    Ok(())
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Writes `contents` as the drop-in of `unit` under `target`, atomically.
pub fn write(target: &DropInTarget, unit: &str, contents: &str) -> Result<Written> {
    check_unit_name(unit)?;
    let final_path = target.path_for(unit);
    let base = nix::fcntl::open(
        &target.base,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open \"{}\"", target.base.display()))?;
    let owner = target
        .owner
        .map(|(u, g)| (Uid::from_raw(u), Gid::from_raw(g)));

    let mut dir = base;
    let mut walked = target.base.clone();
    let dropin_dir = format!("{unit}.d");
    let components = target
        .rel
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => bail!("unexpected component in \"{}\"", target.rel.display()),
        })
        .chain(std::iter::once(Ok(OsStr::new(&dropin_dir))));
    for name in components {
        let name = name?;
        walked.push(name);
        dir = open_or_create_dir(&dir, name, owner)
            .with_context(|| format!("cannot open directory \"{}\"", walked.display()))?;
    }

    let existing = read_existing(&dir, DROPIN_NAME)
        .with_context(|| format!("cannot read \"{}\"", final_path.display()))?;
    if existing.as_deref() == Some(contents.as_bytes()) {
        return Ok(Written::Unchanged);
    }

    let tmp = format!(
        ".#{DROPIN_NAME}{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let result = write_tmp_and_rename(&dir, &tmp, contents, owner);
    if result.is_err() {
        let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result.with_context(|| format!("cannot write \"{}\"", final_path.display()))?;
    Ok(if existing.is_some() {
        Written::Replaced
    } else {
        Written::Created
    })
}

fn write_tmp_and_rename(
    dir: &OwnedFd,
    tmp: &str,
    contents: &str,
    owner: Option<(Uid, Gid)>,
) -> Result<()> {
    let fd = openat(
        dir,
        tmp,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    if let Some((uid, gid)) = owner {
        fchown(&fd, Some(uid), Some(gid))?;
    }
    // The umask may have narrowed the mode; systemd and the user must be able to read it.
    fchmod(&fd, Mode::from_bits_truncate(0o644))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents.as_bytes())?;
    fsync(file.as_fd())?;
    renameat(dir, tmp, dir, DROPIN_NAME)?;
    fsync(dir)?;
    Ok(())
}

/// Opens `name` below `parent` without following symlinks, creating it (owned by `owner`)
/// when missing. Existing directories must belong to root or to `owner`.
fn open_or_create_dir(
    parent: &OwnedFd,
    name: &OsStr,
    owner: Option<(Uid, Gid)>,
) -> Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let name = Path::new(name);
    let (fd, created) = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => (fd, false),
        Err(Errno::ENOENT) => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).context("mkdir failed"),
            }
            (openat(parent, name, flags, Mode::empty())?, true)
        }
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            bail!("not a directory or a symlink, refusing to follow it")
        }
        Err(e) => return Err(e.into()),
    };
    let st = fstat(&fd)?;
    if created {
        // The service's UMask= (0077) would hide the drop-in from `systemctl cat` by others.
        fchmod(&fd, Mode::from_bits_truncate(0o755))?;
        if let Some((uid, gid)) = owner {
            fchown(&fd, Some(uid), Some(gid))?;
        }
    } else {
        let allowed = st.st_uid == 0 || owner.is_some_and(|(uid, _)| uid.as_raw() == st.st_uid);
        if !allowed && st.st_uid != Uid::effective().as_raw() {
            bail!(
                "owned by uid {}, neither root nor the unit's user",
                st.st_uid
            );
        }
    }
    Ok(fd)
}

/// The current contents of `name` in `dir`, `None` if absent. Symlinks are not followed.
fn read_existing(dir: &OwnedFd, name: &str) -> Result<Option<Vec<u8>>> {
    match openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut buf = Vec::new();
            std::fs::File::from(fd)
                .take(1 << 20)
                .read_to_end(&mut buf)?;
            Ok(Some(buf))
        }
        Err(Errno::ENOENT) => Ok(None),
        // A symlink in our place: treat it as "different", the rename replaces the link itself.
        Err(Errno::ELOOP) => Ok(Some(Vec::new())),
        Err(e) => Err(e.into()),
    }
}

/// Removes our drop-in for `unit` (used to undo a remediation). Absent is fine.
pub fn remove(target: &DropInTarget, unit: &str) -> Result<bool> {
    check_unit_name(unit)?;
    let path = target.path_for(unit);
    let dir_path = path.parent().unwrap_or(Path::new("/"));
    let mut dir = nix::fcntl::open(
        &target.base,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open \"{}\"", target.base.display()))?;
    let rel = dir_path.strip_prefix(&target.base).unwrap_or(dir_path);
    for c in rel.components() {
        let Component::Normal(name) = c else { continue };
        dir = match openat(
            &dir,
            name.as_bytes(),
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open \"{}\"", dir_path.display()));
            }
        };
    }
    match unlinkat(&dir, DROPIN_NAME, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove \"{}\"", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn quoting() {
        assert_eq!(
            environment_line("/srv/go cache").unwrap(),
            r#"Environment="GOCACHE=/srv/go cache""#
        );
        assert_eq!(
            environment_line(r#"/a"b\c"#).unwrap(),
            r#"Environment="GOCACHE=/a\"b\\c""#
        );
        assert_eq!(
            environment_line("%h/.cache/go").unwrap(),
            r#"Environment="GOCACHE=%h/.cache/go""#
        );
        assert!(environment_line("/a\nb").is_err());
        assert!(environment_line("/a/%n").is_err());
    }

    #[test]
    fn unit_names() {
        for ok in ["a.service", "foo@bar.service", r"x\x2dy.service"] {
            check_unit_name(ok).unwrap();
        }
        for bad in ["../x.service", "a/b.service", "", ".hidden", "a b.service"] {
            assert!(check_unit_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_atomically_and_idempotently() {
        let tmp = tempfile::tempdir().unwrap();
        let target = DropInTarget::user(
            tmp.path(),
            None,
            Uid::effective().as_raw(),
            Gid::effective().as_raw(),
        )
        .unwrap();
        let body = contents("/srv/gocache").unwrap();
        assert_eq!(
            write(&target, "a.service", &body).unwrap(),
            Written::Created
        );
        let path = tmp
            .path()
            .join(".config/systemd/user/a.service.d")
            .join(DROPIN_NAME);
        assert_eq!(target.path_for("a.service"), path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), body);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            write(&target, "a.service", &body).unwrap(),
            Written::Unchanged
        );
        let other = contents("/srv/other").unwrap();
        let with_prog = contents_with(
            "/srv/gocache",
            Some("/usr/bin/gocache-warden cacheprog --shared /srv/shared"),
        )
        .unwrap();
        assert!(
            with_prog.ends_with(
                "Environment=\"GOCACHE=/srv/gocache\"\nEnvironment=\"GOCACHEPROG=/usr/bin/gocache-warden cacheprog --shared /srv/shared\"\n"
            ),
            "{with_prog}"
        );
        assert_eq!(
            write(&target, "a.service", &other).unwrap(),
            Written::Replaced
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), other);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(DROPIN_NAME)]);
        assert!(remove(&target, "a.service").unwrap());
        assert!(!remove(&target, "a.service").unwrap());
    }

    #[test]
    fn refuses_symlinked_components() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        symlink(&elsewhere, home.join(".config")).unwrap();
        let target = DropInTarget::user(&home, None, 0, 0).unwrap();
        let err = write(&target, "a.service", "x").unwrap_err();
        assert!(format!("{err:#}").contains("symlink"), "{err:#}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn replaces_a_planted_symlink_instead_of_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let target = DropInTarget::user(tmp.path(), None, 0, 0).unwrap();
        let dir = tmp.path().join(".config/systemd/user/a.service.d");
        std::fs::create_dir_all(&dir).unwrap();
        symlink(&victim, dir.join(DROPIN_NAME)).unwrap();
        assert_eq!(
            write(&target, "a.service", "new\n").unwrap(),
            Written::Replaced
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(dir.join(DROPIN_NAME)).unwrap(),
            "new\n"
        );
    }

    #[test]
    fn user_target_outside_home_is_refused() {
        for outside in ["/cfg/a", "/etc", "/home/a/../../etc", "/home/ab"] {
            let e = DropInTarget::user(Path::new("/home/a"), Some(Path::new(outside)), 1, 1)
                .unwrap_err();
            assert!(e.contains("outside the home"), "{outside}: {e}");
        }
        let t =
            DropInTarget::user(Path::new("/home/a"), Some(Path::new("/home/a/cfg")), 1, 1).unwrap();
        assert_eq!(t.base, PathBuf::from("/home/a"));
        assert_eq!(t.rel, PathBuf::from("cfg/systemd/user"));
        let t = DropInTarget::user(Path::new("/home/a"), None, 1, 1).unwrap();
        assert_eq!(t.base, PathBuf::from("/home/a"));
        assert_eq!(t.rel, PathBuf::from(".config/systemd/user"));
    }
}
