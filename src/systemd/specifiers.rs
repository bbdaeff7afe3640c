//! The few systemd unit specifiers a policy may use in the GOCACHE value a drop-in sets.
//!
//! A drop-in writes the value verbatim, so systemd expands the specifiers itself when it loads
//! the unit; we expand them only to know which value to expect when we read the unit's
//! `Environment` back over D-Bus. Supported: `%h` `%u` `%U` `%t` `%S` `%C` `%%`, resolved as
//! systemd 252's `unit_full_printf_full()` does — all of them describe the user running the
//! *manager*, not the unit's `User=`: for the system manager `%h` is `/root`, `%u` is `root`,
//! `%t` `/run`, `%S` `/var/lib`, `%C` `/var/cache`; for a user manager they come from its
//! environment (`HOME`, `XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME`, `XDG_CACHE_HOME`) with the passwd
//! home as fallback. Other specifiers are refused rather than guessed. This is not a general
//! specifier engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Specifiers accepted in a policy value (besides `%%`).
pub const SUPPORTED: &[char] = &['h', 'u', 'U', 't', 'S', 'C'];

/// Letters systemd treats as specifiers: `%` before any other character is kept literally.
const POSSIBLE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// What the specifiers resolve to for one manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecifierContext {
    pub home: PathBuf,
    pub user: String,
    pub uid: u32,
    /// `None` when a user manager has no absolute `XDG_RUNTIME_DIR`: `%t` then fails in systemd.
    pub runtime_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
}

impl SpecifierContext {
    /// The system manager (PID 1 runs as root and unsets the kernel's `HOME=/`).
    pub fn system() -> Self {
        SpecifierContext {
            home: PathBuf::from("/root"),
            user: "root".to_owned(),
            uid: 0,
            runtime_dir: Some(PathBuf::from("/run")),
            state_dir: PathBuf::from("/var/lib"),
            cache_dir: PathBuf::from("/var/cache"),
        }
    }

    /// A user manager, from its `Environment` property and the user's passwd entry.
    pub fn user(uid: u32, name: &str, passwd_home: &Path, env: &BTreeMap<String, String>) -> Self {
        let abs = |key: &str| env.get(key).map(PathBuf::from).filter(|p| p.is_absolute());
        let home = abs("HOME").unwrap_or_else(|| passwd_home.to_path_buf());
        SpecifierContext {
            user: name.to_owned(),
            uid,
            runtime_dir: abs("XDG_RUNTIME_DIR"),
            state_dir: abs("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config")),
            cache_dir: abs("XDG_CACHE_HOME").unwrap_or_else(|| home.join(".cache")),
            home,
        }
    }
}

/// Checks that `value` uses only supported specifiers, so that systemd accepts it and we can
/// predict its expansion.
pub fn validate(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next() {
            Some('%') => {}
            Some(s) if SUPPORTED.contains(&s) => {}
            Some(s) if POSSIBLE.contains(s) => {
                return Err(format!(
                    "specifier %{s} in \"{value}\" is not supported (use %h %u %U %t %S %C or %%)"
                ));
            }
            // systemd keeps "%" before a non-letter literally; refuse it anyway so that a
            // typo does not silently become part of a path.
            Some(s) => return Err(format!("stray % before '{s}' in \"{value}\"; write %%")),
            None => return Err(format!("\"{value}\" ends with a lone %; write %%")),
        }
    }
    Ok(())
}

/// Expands `value` the way systemd will for a unit of the manager described by `ctx`.
pub fn expand(value: &str, ctx: &SpecifierContext) -> Result<String, String> {
    validate(value)?;
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let path_str = |p: &Path| p.to_string_lossy().into_owned();
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(&path_str(&ctx.home)),
            Some('u') => out.push_str(&ctx.user),
            Some('U') => out.push_str(&ctx.uid.to_string()),
            Some('t') => match &ctx.runtime_dir {
                Some(dir) => out.push_str(&path_str(dir)),
                None => {
                    return Err(format!(
                        "%t in \"{value}\": the manager has no XDG_RUNTIME_DIR"
                    ));
                }
            },
            Some('S') => out.push_str(&path_str(&ctx.state_dir)),
            Some('C') => out.push_str(&path_str(&ctx.cache_dir)),
            // validate() rejected everything else.
            _ => return Err(format!("cannot expand \"{value}\"")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_for_system_and_user() {
        let sys = SpecifierContext::system();
        assert_eq!(
            expand("%h/go %u %U %t %S %C 100%%", &sys).unwrap(),
            "/root/go root 0 /run /var/lib /var/cache 100%"
        );
        let env = BTreeMap::from([
            ("HOME".to_owned(), "/home/a".to_owned()),
            ("XDG_RUNTIME_DIR".to_owned(), "/run/user/7".to_owned()),
            ("XDG_CACHE_HOME".to_owned(), "relative".to_owned()),
        ]);
        let user = SpecifierContext::user(7, "a", Path::new("/passwd/a"), &env);
        assert_eq!(
            expand("%C/go-build:%S:%t:%U:%u:%h", &user).unwrap(),
            "/home/a/.cache/go-build:/home/a/.config:/run/user/7:7:a:/home/a"
        );
        let bare = SpecifierContext::user(7, "a", Path::new("/passwd/a"), &BTreeMap::new());
        assert_eq!(expand("%h", &bare).unwrap(), "/passwd/a");
        assert!(expand("%t", &bare).unwrap_err().contains("XDG_RUNTIME_DIR"));
    }

    #[test]
    fn refuses_unknown_specifiers() {
        assert!(validate("/srv/%n").unwrap_err().contains("%n"));
        assert!(validate("/srv/50%").unwrap_err().contains("lone %"));
        assert!(validate("/srv/%-x").unwrap_err().contains("stray"));
        assert!(validate("/srv/%%/x").is_ok());
    }
}
