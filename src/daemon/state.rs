//! The agent's state directory: what must outlive a restart (today: where background
//! verification stands in each cache, see `verify.rs`).
//!
//! systemd's `StateDirectory=gocache-warden` passes it as `$STATE_DIRECTORY`; without it the
//! system agent uses `/var/lib/gocache-warden` and the user agent
//! `$XDG_STATE_HOME/gocache-warden` (default `~/.local/state/gocache-warden`), as the XDG
//! base directory spec says. Files are written whole (temp + rename) and read bounded, so
//! a crash leaves the old or the new file, never half of one.

use crate::policy::Scope;
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The state directory for `scope`, or `None` when none can be named (no `HOME`).
pub fn dir(scope: Scope) -> Option<PathBuf> {
    dir_from(scope, |k| std::env::var_os(k))
}

fn dir_from(scope: Scope, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    // systemd may pass several, colon-separated: ours is the first.
    if let Some(v) = env("STATE_DIRECTORY") {
        let first = v.to_string_lossy().split(':').next().map(PathBuf::from);
        if let Some(p) = first.filter(|p| p.is_absolute()) {
            return Some(p);
        }
    }
    match scope {
        Scope::System => Some(PathBuf::from("/var/lib/gocache-warden")),
        Scope::User => {
            let base = match env("XDG_STATE_HOME").map(PathBuf::from) {
                Some(p) if p.is_absolute() => p,
                _ => PathBuf::from(env("HOME")?).join(".local/state"),
            };
            Some(base.join("gocache-warden"))
        }
    }
}

/// Reads `name` in `dir`, at most `max` bytes (a longer file is an error); `None` when it
/// does not exist. No symlink is followed at the last component.
pub fn read(dir: &Path, name: &str, max: u64) -> anyhow::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() as u64 > max {
        anyhow::bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(Some(buf))
}

/// Replaces `name` in `dir` with `data`: written to a temp file, synced, renamed over it.
/// Creates `dir` (mode 0700) if missing.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let dest = dir.join(name);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn state_directory_wins_then_the_scope_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let sd = env(&[("STATE_DIRECTORY", "/var/lib/gocache-warden:/var/lib/other")]);
        assert_eq!(
            dir_from(Scope::System, sd),
            Some("/var/lib/gocache-warden".into())
        );
        assert_eq!(
            dir_from(Scope::System, env(&[])),
            Some("/var/lib/gocache-warden".into())
        );
        let xdg = env(&[("XDG_STATE_HOME", "/h/st"), ("HOME", "/h")]);
        assert_eq!(
            dir_from(Scope::User, xdg),
            Some("/h/st/gocache-warden".into())
        );
        let rel = env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(
            dir_from(Scope::User, rel),
            Some("/h/.local/state/gocache-warden".into())
        );
        assert_eq!(dir_from(Scope::User, env(&[])), None);
    }

    #[test]
    fn written_whole_read_bounded() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("state");
        assert_eq!(read(&sub, "x", 10).unwrap(), None);
        write(&sub, "x", b"hello").unwrap();
        assert_eq!(read(&sub, "x", 10).unwrap().as_deref(), Some(&b"hello"[..]));
        write(&sub, "x", b"again").unwrap();
        assert_eq!(read(&sub, "x", 5).unwrap().as_deref(), Some(&b"again"[..]));
        assert!(read(&sub, "x", 4).is_err(), "longer than the bound");
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("x")], "no temp file left");
    }
}
