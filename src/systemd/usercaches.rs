//! The cache directories a user's own systemd manager points `go` at: `GOCACHE` and
//! `GOMODCACHE` in the user manager's environment (`systemctl --user show-environment`,
//! `environment.d`, `systemctl --user set-environment`) and in their service units
//! (`Environment=`, `EnvironmentFile=`).
//!
//! A per-user cache (`users`) is found as the user's login `go` finds it; a service of theirs
//! that sets another directory builds there instead, so that directory is that user's cache
//! too. This module only reads what the manager says: it connects to the manager's private
//! socket (peer and socket owner must be the user), reads the manager's environment, lists
//! the user's services and rebuilds each one's environment as systemd would
//! ([`super::units::effective_env`]), reading `EnvironmentFile=`s with the user's
//! credentials ([`crate::untrusted::with_creds`]; bounded, non-blocking reads). Everything
//! here comes from the user and is treated as hostile: the number of units looked at and of
//! directories returned is bounded, and the values are returned as strings for the caller to
//! judge (absolute, not a system directory, the user's, a Go cache) exactly like any other
//! resolved path. It changes nothing.

use super::dbus::{self, ManagerConn};
use super::units;
use crate::untrusted::{self, Creds};
use std::path::Path;

/// At most this many of a user's services are looked at per sweep (a user can create
/// thousands of unit files to slow the agent down); the rest are reported as skipped.
pub const MAX_UNITS: usize = 256;
/// At most this many distinct directories per variable are returned for one user; the rest
/// are reported as skipped (each would be a cache to scan and watch).
pub const MAX_DIRS: usize = 16;
/// The variables looked for.
pub const VARS: [&str; 2] = ["GOCACHE", "GOMODCACHE"];

/// One directory a user's manager or unit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// `GOCACHE` or `GOMODCACHE`.
    pub var: &'static str,
    /// The value, verbatim (the caller judges it).
    pub value: String,
    /// `manager` for the manager's environment, `unit:NAME` for a service that sets it.
    pub source: String,
}

/// What the manager of one user says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSettings {
    pub settings: Vec<Setting>,
    /// Units or values that could not be read or were left out (bounds), one sentence each.
    pub problems: Vec<String>,
}

/// Reads the `GOCACHE`/`GOMODCACHE` values of `uid`'s manager and services. `Ok` with nothing
/// when the user has no running manager (no private socket under `run_user`).
pub async fn settings(uid: u32, run_user: &Path) -> anyhow::Result<UserSettings> {
    let socket = run_user.join(uid.to_string()).join("systemd/private");
    // symlink_metadata: a dangling or planted link is not a running manager either.
    if std::fs::symlink_metadata(&socket).is_err() {
        return Ok(UserSettings::default());
    }
    let conn = dbus::connect_private(&socket, uid).await?;
    let info = units::manager_info(&conn).await?;
    let mut out = UserSettings::default();
    for var in VARS {
        if let Some(v) = info.env.get(var).filter(|v| !v.is_empty()) {
            push(&mut out, var, v, "manager".to_string());
        }
    }
    let names = dbus::list_services(&conn, &["*.service".to_string()]).await?;
    if names.len() > MAX_UNITS {
        out.problems.push(format!(
            "{} has {} services: only the first {MAX_UNITS} were looked at for GOCACHE",
            conn.id,
            names.len()
        ));
    }
    let creds = Creds::of_uid(uid)?;
    for name in names.iter().take(MAX_UNITS) {
        unit_settings(&conn, &info, &creds, name, &mut out).await;
    }
    Ok(out)
}

/// The values one service sets that differ from the manager's (those are the manager's).
async fn unit_settings(
    conn: &ManagerConn,
    info: &units::ManagerInfo,
    creds: &Creds,
    name: &str,
    out: &mut UserSettings,
) {
    let svc = match dbus::service_info(conn, name).await {
        Ok(s) if s.load_state == "loaded" => s,
        Ok(_) => return,
        Err(e) => {
            out.problems.push(e.to_string());
            return;
        }
    };
    // EnvironmentFile= paths are the user's to choose: read them as the user, off the async
    // loop (such a read may wait, up to `untrusted::AS_USER_TIMEOUT`).
    let (i, s, c) = (info.clone(), svc.clone(), creds.clone());
    let read = tokio::task::spawn_blocking(move || {
        untrusted::with_creds(&c, move || units::effective_env(&i, &s))
    })
    .await;
    let env = match read {
        Ok(Ok(Ok(env))) => env,
        Ok(Ok(Err(e))) => {
            out.problems.push(e.to_string());
            return;
        }
        Ok(Err(e)) => {
            out.problems.push(format!(
                "{} {name}: not read as uid {}: {e}",
                conn.id, creds.uid
            ));
            return;
        }
        Err(e) => {
            out.problems
                .push(format!("{} {name}: not read: {e}", conn.id));
            return;
        }
    };
    for var in VARS {
        let Some(v) = env.vars.get(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        if info.env.get(var) != Some(v) {
            push(out, var, v, format!("unit:{}", svc.id));
        }
    }
}

/// Adds a value unless it is already there, keeping at most [`MAX_DIRS`] per variable.
fn push(out: &mut UserSettings, var: &'static str, value: &str, source: String) {
    if out
        .settings
        .iter()
        .any(|s| s.var == var && s.value == value)
    {
        return;
    }
    let n = out.settings.iter().filter(|s| s.var == var).count();
    if n >= MAX_DIRS {
        out.problems.push(format!(
            "{var}={value:?} ({source}) left out: at most {MAX_DIRS} directories per user"
        ));
        return;
    }
    out.settings.push(Setting {
        var,
        value: value.to_string(),
        source,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deduplicated_and_bounded_per_variable() {
        let mut out = UserSettings::default();
        push(&mut out, "GOCACHE", "/a", "manager".into());
        push(&mut out, "GOCACHE", "/a", "unit:x.service".into());
        assert_eq!(out.settings.len(), 1);
        assert_eq!(out.settings[0].source, "manager");
        for i in 0..MAX_DIRS + 3 {
            push(
                &mut out,
                "GOCACHE",
                &format!("/d{i}"),
                "unit:y.service".into(),
            );
        }
        push(&mut out, "GOMODCACHE", "/m", "manager".into());
        let n = |var| out.settings.iter().filter(|s| s.var == var).count();
        assert_eq!(n("GOCACHE"), MAX_DIRS);
        assert_eq!(n("GOMODCACHE"), 1);
        assert_eq!(out.problems.len(), 4, "{:?}", out.problems);
    }
}
