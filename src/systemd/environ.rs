//! The environment systemd gives a service, rebuilt from what the manager says over D-Bus:
//! manager `Environment`, then `HOME`/`USER`/`LOGNAME` for a system unit's `User=`, then the
//! unit's `Environment=`, then its `EnvironmentFile=`s (which override), minus
//! `UnsetEnvironment=` — as systemd 252's `exec_child()` does. Environment files are read by
//! the caller's thread, so callers that must read as the unit's user run this under
//! [`crate::untrusted::with_creds`] (see `asuser.rs`, `usercaches.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dbus::{ManagerId, ServiceInfo, UnitError};
use super::envfile;
use super::units::{FindingKind, GocacheSource, ManagerInfo};

/// The environment a service gets, with where GOCACHE came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveEnv {
    pub vars: BTreeMap<String, String>,
    pub gocache_source: Option<GocacheSource>,
    pub gocache_unset: bool,
    /// Home directory handed to the resolver.
    pub home: PathBuf,
    pub env_file_findings: Vec<FindingKind>,
}

/// Rebuilds a service's environment as systemd 252's `exec_child()` would.
pub fn effective_env(mgr: &ManagerInfo, svc: &ServiceInfo) -> Result<EffectiveEnv, UnitError> {
    let mut out = EffectiveEnv {
        vars: mgr.env.clone(),
        home: mgr.specifiers.home.clone(),
        ..Default::default()
    };
    if out.vars.contains_key("GOCACHE") {
        out.gocache_source = Some(GocacheSource::Manager);
    }
    if mgr.id == ManagerId::System && !svc.user.is_empty() {
        let pw = lookup_user(&svc.user).map_err(|msg| UnitError {
            manager: mgr.id.clone(),
            unit: svc.id.clone(),
            property: Some("Service.User".to_owned()),
            msg,
        })?;
        out.home = pw.dir.clone();
        out.vars
            .insert("HOME".to_owned(), pw.dir.to_string_lossy().into_owned());
        out.vars.insert("USER".to_owned(), pw.name.clone());
        out.vars.insert("LOGNAME".to_owned(), pw.name);
    } else if mgr.id == ManagerId::System {
        out.home = PathBuf::from("/root");
    }
    for (k, v) in &svc.environment {
        if k == "GOCACHE" {
            out.gocache_source = Some(GocacheSource::Unit);
        }
        out.vars.insert(k.clone(), v.clone());
    }
    for (pattern, optional) in &svc.environment_files {
        load_env_files(pattern, *optional, &mut out);
    }
    for entry in &svc.unset_environment {
        let remove = match entry.split_once('=') {
            Some((k, v)) => out.vars.get(k).is_some_and(|cur| cur == v).then_some(k),
            None => Some(entry.as_str()),
        };
        if let Some(k) = remove {
            if out.vars.remove(k).is_some() && k == "GOCACHE" {
                out.gocache_source = None;
            }
            if k == "GOCACHE" {
                out.gocache_unset = true;
            }
        }
    }
    Ok(out)
}

/// Expands one `EnvironmentFile=` glob and merges the files, recording problems as findings.
fn load_env_files(pattern: &Path, optional: bool, out: &mut EffectiveEnv) {
    let finding = |file: &Path, line, msg: String, fatal| FindingKind::EnvFileError {
        file: file.to_path_buf(),
        line,
        msg,
        fatal,
    };
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut matches: Vec<PathBuf> = match pattern.to_str().map(|p| glob::glob_with(p, opts)) {
        Some(Ok(paths)) => paths.filter_map(Result::ok).collect(),
        _ => Vec::new(),
    };
    matches.sort();
    if matches.is_empty() {
        if !optional {
            let msg = "no such file: systemd refuses to start the unit (prefix the path with \
                       \"-\" to make it optional)"
                .to_owned();
            out.env_file_findings
                .push(finding(pattern, None, msg, true));
        }
        return;
    }
    for file in matches {
        match envfile::read(&file) {
            Ok(parsed) => {
                for w in parsed.warnings {
                    out.env_file_findings
                        .push(finding(&w.file, w.line, w.msg, false));
                }
                for a in parsed.vars {
                    if a.key == "GOCACHE" {
                        out.gocache_source = Some(GocacheSource::EnvironmentFile {
                            file: file.clone(),
                            line: a.line,
                        });
                    }
                    out.vars.insert(a.key, a.value);
                }
            }
            Err(d) if optional => {
                let msg = format!("{}; the file is optional, so systemd skips it", d.msg);
                out.env_file_findings
                    .push(finding(&d.file, d.line, msg, false));
            }
            Err(d) => {
                let msg = format!("{}; systemd refuses to start the unit", d.msg);
                out.env_file_findings
                    .push(finding(&d.file, d.line, msg, true));
            }
        }
    }
}

/// A unit's `User=` (a name or a uid) in the user database.
pub fn lookup_user(user: &str) -> Result<nix::unistd::User, String> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(pw)) => Ok(pw),
        Ok(None) => Err(format!("user {user:?} does not exist")),
        Err(e) => Err(format!("cannot look up user {user:?}: {e}")),
    }
}
