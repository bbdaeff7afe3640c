//! Inspecting which service units would run `go` without an acceptable GOCACHE.
//!
//! For every service unit matching a [`UnitRule`] on every connected manager, this rebuilds
//! the environment systemd 252 would give the service — manager `Environment`, then `HOME`
//! and `USER` for a system unit's `User=`, then the unit's `Environment=`, then its
//! `EnvironmentFile=`s (which override `Environment=`), minus `UnsetEnvironment=` — and judges
//! GOCACHE against the rule. It reads over D-Bus and reads environment files; it changes
//! nothing (see `remediate.rs`) and does not know how `go` resolves its defaults: the caller
//! passes a [`Resolver`] for that. `PassEnvironment=` is not modelled (it copies from the
//! manager's own process environment, which D-Bus does not expose).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::dbus::{self, ManagerConn, ManagerError, ManagerId, ServiceInfo, UnitError};
pub use super::environ::{EffectiveEnv, effective_env};
use super::specifiers::SpecifierContext;

/// How a rule fixes what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemediationMode {
    /// Only report.
    Report,
    /// Write a `50-gocache-warden.conf` drop-in setting GOCACHE to the rule's `value`.
    DropIn,
}

/// Which units to check and what counts as acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRule {
    /// Globs on unit names, e.g. `"*.service"`; only service units are inspected.
    pub patterns: Vec<String>,
    /// A unit must set GOCACHE explicitly; otherwise `go`'s fallback is judged instead.
    pub require_gocache: bool,
    /// GOCACHE a remediation sets; `%h %u %U %t %S %C %%` allowed (see `specifiers.rs`).
    pub value: Option<String>,
    /// GOCACHEPROG a remediation's drop-in sets along with GOCACHE.
    pub gocacheprog: Option<String>,
    /// GOCACHE paths the policy accepts; empty accepts any absolute path.
    pub allowed: Vec<PathBuf>,
    pub mode: RemediationMode,
}

/// Resolves the GOCACHE `go` would use for an environment and home directory (the lead wires
/// this to the project's go-env resolution); `None` when `go` could not locate a cache.
pub type Resolver<'a> = &'a (dyn Fn(&BTreeMap<String, String>, &Path) -> Option<PathBuf> + Sync);

/// Where the effective GOCACHE came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum GocacheSource {
    /// The manager's environment block.
    Manager,
    /// The unit's `Environment=` (fragment or drop-ins).
    Unit,
    EnvironmentFile {
        file: PathBuf,
        line: u32,
    },
    /// Not set: what `go` falls back to (per the resolver).
    GoDefault,
}

impl fmt::Display for GocacheSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GocacheSource::Manager => f.write_str("manager environment"),
            GocacheSource::Unit => f.write_str("Environment="),
            GocacheSource::EnvironmentFile { file, line } => {
                write!(f, "EnvironmentFile {}:{}", file.display(), line)
            }
            GocacheSource::GoDefault => f.write_str("go's default"),
        }
    }
}

/// What is wrong with one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FindingKind {
    /// No explicit GOCACHE; `fallback` is what `go` would use (`None`: it could not find one
    /// and builds fail).
    MissingGocache { fallback: Option<PathBuf> },
    /// GOCACHE (explicit, or go's fallback when not required) is not an allowed path.
    OutsidePolicy {
        value: PathBuf,
        source: GocacheSource,
    },
    /// `GOCACHE=off`, fatal for builds since Go 1.12.
    Off { source: GocacheSource },
    /// A relative GOCACHE, which `go` rejects.
    Relative {
        value: String,
        source: GocacheSource,
    },
    /// An `EnvironmentFile=` problem. `fatal`: systemd refuses to start the unit because of it;
    /// otherwise the assignment (or optional file) is ignored.
    EnvFileError {
        file: PathBuf,
        line: Option<u32>,
        msg: String,
        fatal: bool,
    },
}

impl FindingKind {
    /// Whether a GOCACHE drop-in can address this finding.
    pub fn is_gocache(&self) -> bool {
        !matches!(self, FindingKind::EnvFileError { .. })
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindingKind::MissingGocache { fallback: Some(p) } => {
                write!(f, "GOCACHE not set; go falls back to {}", p.display())
            }
            FindingKind::MissingGocache { fallback: None } => {
                f.write_str("GOCACHE not set and go cannot locate a cache (builds fail)")
            }
            FindingKind::OutsidePolicy { value, source } => {
                write!(
                    f,
                    "GOCACHE {} (from {source}) is outside the policy",
                    value.display()
                )
            }
            FindingKind::Off { source } => write!(f, "GOCACHE=off (from {source}) breaks builds"),
            FindingKind::Relative { value, source } => {
                write!(
                    f,
                    "GOCACHE {value:?} (from {source}) is relative; go rejects it"
                )
            }
            FindingKind::EnvFileError {
                file,
                line,
                msg,
                fatal,
            } => {
                let level = if *fatal { "error" } else { "warning" };
                match line {
                    Some(l) => write!(f, "{level}: {}:{l}: {msg}", file.display()),
                    None => write!(f, "{level}: {}: {msg}", file.display()),
                }
            }
        }
    }
}

/// Identifies a unit in findings and remediation results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRef {
    pub manager: ManagerId,
    pub unit: String,
    pub fragment_path: Option<PathBuf>,
    /// Program of the first `ExecStart=`.
    pub exec_start: Option<String>,
}

impl fmt::Display for UnitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.manager, self.unit)
    }
}

/// One finding about one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub unit: UnitRef,
    #[serde(flatten)]
    pub kind: FindingKind,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.unit, self.kind)?;
        let mut extra = Vec::new();
        if let Some(p) = &self.unit.exec_start {
            extra.push(format!("runs {p}"));
        }
        if let Some(p) = &self.unit.fragment_path {
            extra.push(format!("defined in {}", p.display()));
        }
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        Ok(())
    }
}

/// Everything learned about one inspected unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectedUnit {
    #[serde(flatten)]
    pub unit: UnitRef,
    /// Index of the first rule whose patterns matched.
    pub rule: usize,
    /// Effective GOCACHE and where it came from (`GoDefault` when not set).
    pub gocache: Option<(String, GocacheSource)>,
    /// `UnsetEnvironment=` removes GOCACHE, so a drop-in cannot set it.
    pub gocache_unset: bool,
    pub drop_in_paths: Vec<PathBuf>,
    pub findings: Vec<FindingKind>,
}

/// Per-manager facts needed to judge and fix its units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerInfo {
    pub id: ManagerId,
    pub env: BTreeMap<String, String>,
    pub specifiers: SpecifierContext,
    /// Primary group of the manager's user (0 for the system manager).
    pub gid: u32,
}

/// The result of a sweep: inspected units (with their findings) and what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub managers: Vec<ManagerInfo>,
    pub units: Vec<InspectedUnit>,
    pub manager_errors: Vec<ManagerError>,
    pub unit_errors: Vec<UnitError>,
}

impl Inspection {
    pub fn findings(&self) -> Vec<Finding> {
        self.units
            .iter()
            .flat_map(|u| {
                u.findings.iter().map(|k| Finding {
                    unit: u.unit.clone(),
                    kind: k.clone(),
                })
            })
            .collect()
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let findings = self.findings();
        writeln!(
            f,
            "{} managers, {} units inspected, {} findings, {} errors",
            self.managers.len(),
            self.units.len(),
            findings.len(),
            self.manager_errors.len() + self.unit_errors.len()
        )?;
        for x in &findings {
            writeln!(f, "{x}")?;
        }
        for e in &self.manager_errors {
            writeln!(f, "error: {e}")?;
        }
        for e in &self.unit_errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

/// Inspects every unit matching `rules` on every manager in `conns`.
///
/// Managers are inspected side by side, and a user manager gets
/// [`dbus::USER_MANAGER_TIMEOUT`] for all of it: its user may serve the socket themselves and
/// answer slowly or never, which must cost the other users nothing. A manager that fails or runs
/// out of time is one manager error and contributes no units, so nothing later (remediation)
/// acts on half an answer.
pub async fn inspect(
    conns: &[ManagerConn],
    rules: &[UnitRule],
    resolve: Resolver<'static>,
) -> Inspection {
    let patterns: Vec<String> = rules.iter().flat_map(|r| r.patterns.clone()).collect();
    let compiled: Vec<Vec<glob::Pattern>> = rules
        .iter()
        .map(|r| {
            r.patterns
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect()
        })
        .collect();
    let each = conns.iter().map(|mgr| {
        let one = inspect_manager(mgr, rules, &patterns, &compiled, resolve);
        async move {
            match &mgr.id {
                ManagerId::System => one.await,
                ManagerId::User { .. } => {
                    match tokio::time::timeout(dbus::USER_MANAGER_TIMEOUT, one).await {
                        Ok(r) => r,
                        Err(_) => Err(ManagerError {
                            target: mgr.id.to_string(),
                            msg: format!(
                                "the user manager did not answer the inspection within {:?}; \
                                 its units were not inspected",
                                dbus::USER_MANAGER_TIMEOUT
                            ),
                        }),
                    }
                }
            }
        }
    });
    let mut out = Inspection::default();
    for result in futures_util::future::join_all(each).await {
        match result {
            Ok(one) => {
                out.managers.extend(one.managers);
                out.units.extend(one.units);
                out.unit_errors.extend(one.unit_errors);
            }
            Err(e) => out.manager_errors.push(e),
        }
    }
    out
}

/// Inspects the units of one manager; an error when the manager itself could not be read.
async fn inspect_manager(
    mgr: &ManagerConn,
    rules: &[UnitRule],
    patterns: &[String],
    compiled: &[Vec<glob::Pattern>],
    resolve: Resolver<'static>,
) -> Result<Inspection, ManagerError> {
    let mut out = Inspection::default();
    let manager_error = |e: anyhow::Error| ManagerError {
        target: mgr.id.to_string(),
        msg: format!("{e:#}"),
    };
    let info = manager_info(mgr).await.map_err(manager_error)?;
    let names = dbus::list_services(mgr, patterns)
        .await
        .map_err(manager_error)?;
    for name in names {
        let Some(rule) = compiled
            .iter()
            .position(|pats| pats.iter().any(|p| p.matches(&name)))
        else {
            continue;
        };
        match dbus::service_info(mgr, &name).await {
            Ok(svc) if svc.load_state == "loaded" => {
                // Aliases list the same unit twice; keep the first.
                if out
                    .units
                    .iter()
                    .any(|u| u.unit.manager == mgr.id && u.unit.unit == svc.id)
                {
                    continue;
                }
                let inspected =
                    super::asuser::inspect_unit_off_loop(&info, &svc, rule, &rules[rule], resolve);
                match inspected.await {
                    Ok(u) => out.units.push(u),
                    Err(e) => out.unit_errors.push(e),
                }
            }
            // A unit file systemd could not parse is worth reporting; masked and
            // not-found units are not.
            Ok(svc) if matches!(svc.load_state.as_str(), "bad-setting" | "error") => {
                out.unit_errors.push(UnitError {
                    manager: mgr.id.clone(),
                    unit: svc.id,
                    property: Some("Unit.LoadState".to_owned()),
                    msg: format!("systemd could not load the unit ({})", svc.load_state),
                });
            }
            Ok(_) => {}
            Err(e) => out.unit_errors.push(e),
        }
    }
    out.managers.push(info);
    Ok(out)
}

/// Reads the manager's environment and who it runs as.
pub async fn manager_info(mgr: &ManagerConn) -> anyhow::Result<ManagerInfo> {
    let env = mgr.environment().await?;
    match &mgr.id {
        ManagerId::System => Ok(ManagerInfo {
            id: mgr.id.clone(),
            env,
            specifiers: SpecifierContext::system(),
            gid: 0,
        }),
        ManagerId::User { uid, name } => {
            let pw = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
                .map_err(|e| anyhow::anyhow!("cannot look up uid {uid}: {e}"))?
                .ok_or_else(|| anyhow::anyhow!("uid {uid} has no passwd entry"))?;
            Ok(ManagerInfo {
                id: mgr.id.clone(),
                specifiers: SpecifierContext::user(*uid, name, &pw.dir, &env),
                env,
                gid: pw.gid.as_raw(),
            })
        }
    }
}

/// Judges one unit against its rule.
pub fn inspect_unit(
    mgr: &ManagerInfo,
    svc: &ServiceInfo,
    rule_index: usize,
    rule: &UnitRule,
    resolve: Resolver<'_>,
) -> Result<InspectedUnit, UnitError> {
    let env = effective_env(mgr, svc)?;
    let allowed = allowed_for(rule, mgr);
    let mut findings = env.env_file_findings.clone();
    let explicit = env.vars.get("GOCACHE").filter(|v| !v.is_empty()).map(|v| {
        (
            v.clone(),
            env.gocache_source.clone().unwrap_or(GocacheSource::Unit),
        )
    });
    let gocache = match &explicit {
        Some(x) => Some(x.clone()),
        None => resolve(&env.vars, &env.home)
            .map(|p| (p.to_string_lossy().into_owned(), GocacheSource::GoDefault)),
    };
    match &explicit {
        Some((value, source)) => {
            if let Some(kind) = judge_value(value, source.clone(), &allowed) {
                findings.push(kind);
            }
        }
        None if rule.require_gocache => findings.push(FindingKind::MissingGocache {
            fallback: gocache.as_ref().map(|(p, _)| PathBuf::from(p)),
        }),
        None => match &gocache {
            Some((value, source)) => {
                if let Some(kind) = judge_value(value, source.clone(), &allowed) {
                    findings.push(kind);
                }
            }
            None => findings.push(FindingKind::MissingGocache { fallback: None }),
        },
    }
    Ok(InspectedUnit {
        unit: UnitRef {
            manager: mgr.id.clone(),
            unit: svc.id.clone(),
            fragment_path: svc.fragment_path.clone(),
            exec_start: svc.exec_start.clone(),
        },
        rule: rule_index,
        gocache,
        gocache_unset: env.gocache_unset,
        drop_in_paths: svc.drop_in_paths.clone(),
        findings,
    })
}

fn judge_value(value: &str, source: GocacheSource, allowed: &[PathBuf]) -> Option<FindingKind> {
    if value == "off" {
        return Some(FindingKind::Off { source });
    }
    if !value.starts_with('/') {
        return Some(FindingKind::Relative {
            value: value.to_owned(),
            source,
        });
    }
    if !allowed.is_empty() && !is_allowed(Path::new(value), allowed) {
        return Some(FindingKind::OutsidePolicy {
            value: PathBuf::from(value),
            source,
        });
    }
    None
}

/// The paths a unit of `mgr` may point GOCACHE at: the rule's list plus the rule's own value
/// as this manager expands it (`%h/gocache` is a different path for every user). An empty
/// list stays empty: no allow-list means any absolute path is fine.
pub fn allowed_for(rule: &UnitRule, mgr: &ManagerInfo) -> Vec<PathBuf> {
    let mut allowed = rule.allowed.clone();
    if allowed.is_empty() {
        return allowed;
    }
    if let Some(Ok(v)) = rule
        .value
        .as_ref()
        .map(|v| super::specifiers::expand(v, &mgr.specifiers))
    {
        allowed.push(PathBuf::from(v));
    }
    allowed
}

/// Whether `path` equals one of `allowed` after lexical normalisation (`//`, `.` and a trailing
/// `/` do not matter; symlinks are not resolved).
pub fn is_allowed(path: &Path, allowed: &[PathBuf]) -> bool {
    fn norm(p: &Path) -> Vec<Component<'_>> {
        p.components().filter(|c| *c != Component::CurDir).collect()
    }
    let want = norm(path);
    allowed.iter().any(|a| norm(a) == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(env: &[(&str, &str)], files: Vec<(PathBuf, bool)>, unset: &[&str]) -> ServiceInfo {
        ServiceInfo {
            id: "t.service".into(),
            path: "/org/freedesktop/systemd1/unit/t_2eservice".into(),
            load_state: "loaded".into(),
            active_state: "inactive".into(),
            fragment_path: Some("/etc/systemd/system/t.service".into()),
            drop_in_paths: vec![],
            environment: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            environment_files: files,
            unset_environment: unset.iter().map(|s| s.to_string()).collect(),
            exec_start: Some("/usr/bin/go".into()),
            user: String::new(),
        }
    }

    fn user_mgr(env: &[(&str, &str)]) -> ManagerInfo {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ManagerInfo {
            id: ManagerId::User {
                uid: 4242,
                name: "u".into(),
            },
            specifiers: SpecifierContext::user(4242, "u", Path::new("/home/u"), &env),
            env,
            gid: 4242,
        }
    }

    fn stand_in(env: &BTreeMap<String, String>, home: &Path) -> Option<PathBuf> {
        env.get("GOCACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| Some(home.join(".cache/go-build")))
    }

    fn rule(require: bool, allowed: &[&str]) -> UnitRule {
        UnitRule {
            patterns: vec!["*.service".into()],
            require_gocache: require,
            value: Some("/srv/gocache".into()),
            gocacheprog: None,
            allowed: allowed.iter().map(PathBuf::from).collect(),
            mode: RemediationMode::Report,
        }
    }

    #[test]
    fn judges_sources_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("go.env");
        std::fs::write(&file, "# go\nGOCACHE=/from/file\n").unwrap();
        let mgr = user_mgr(&[("HOME", "/home/u"), ("GOCACHE", "/from/manager")]);
        let r = rule(true, &["/srv/gocache"]);

        let u = inspect_unit(&mgr, &svc(&[], vec![], &[]), 0, &r, &stand_in).unwrap();
        assert_eq!(
            u.gocache,
            Some(("/from/manager".into(), GocacheSource::Manager))
        );
        assert!(matches!(
            &u.findings[..],
            [FindingKind::OutsidePolicy { .. }]
        ));

        let s = svc(
            &[("GOCACHE", "/srv/gocache/")],
            vec![(file.clone(), false)],
            &[],
        );
        let u = inspect_unit(&mgr, &s, 0, &r, &stand_in).unwrap();
        let src = GocacheSource::EnvironmentFile {
            file: file.clone(),
            line: 2,
        };
        assert_eq!(u.gocache, Some(("/from/file".into(), src)));

        let s = svc(&[("GOCACHE", "/srv/gocache/")], vec![], &[]);
        let u = inspect_unit(&mgr, &s, 0, &r, &stand_in).unwrap();
        assert!(u.findings.is_empty(), "{:?}", u.findings);

        let s = svc(&[], vec![], &["GOCACHE"]);
        let u = inspect_unit(&mgr, &s, 0, &r, &stand_in).unwrap();
        assert!(u.gocache_unset);
        assert_eq!(
            u.findings,
            vec![FindingKind::MissingGocache {
                fallback: Some("/home/u/.cache/go-build".into())
            }]
        );
    }

    #[test]
    fn off_relative_missing_files() {
        let mgr = user_mgr(&[("HOME", "/home/u")]);
        let r = rule(false, &[]);
        let u = inspect_unit(
            &mgr,
            &svc(&[("GOCACHE", "off")], vec![], &[]),
            0,
            &r,
            &stand_in,
        )
        .unwrap();
        assert_eq!(
            u.findings,
            vec![FindingKind::Off {
                source: GocacheSource::Unit
            }]
        );
        let u = inspect_unit(
            &mgr,
            &svc(&[("GOCACHE", "c")], vec![], &[]),
            0,
            &r,
            &stand_in,
        )
        .unwrap();
        assert!(matches!(&u.findings[..], [FindingKind::Relative { .. }]));
        // Not required, no allow-list: go's default is fine.
        let u = inspect_unit(&mgr, &svc(&[], vec![], &[]), 0, &r, &stand_in).unwrap();
        assert!(u.findings.is_empty());
        let files = vec![
            ("/nonexistent/a.env".into(), false),
            ("/nonexistent/b*.env".into(), true),
        ];
        let u = inspect_unit(&mgr, &svc(&[], files, &[]), 0, &r, &stand_in).unwrap();
        assert_eq!(u.findings.len(), 1, "{:?}", u.findings);
        assert!(matches!(
            &u.findings[0],
            FindingKind::EnvFileError {
                fatal: true,
                line: None,
                ..
            }
        ));
    }

    #[test]
    fn finding_display_and_json() {
        let f = Finding {
            unit: UnitRef {
                manager: ManagerId::User {
                    uid: 7,
                    name: "a".into(),
                },
                unit: "x.service".into(),
                fragment_path: Some("/h/x.service".into()),
                exec_start: Some("/bin/go".into()),
            },
            kind: FindingKind::MissingGocache {
                fallback: Some("/h/.cache/go-build".into()),
            },
        };
        assert_eq!(
            f.to_string(),
            "user 7 (a) x.service: GOCACHE not set; go falls back to /h/.cache/go-build (runs /bin/go, defined in /h/x.service)"
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["kind"], "missing_gocache");
        assert_eq!(json["manager"]["scope"], "user");
        assert_eq!(json["unit"], "x.service");
    }

    #[test]
    fn allowed_is_lexical() {
        let allowed = vec![PathBuf::from("/srv/gocache")];
        assert!(is_allowed(Path::new("/srv//gocache/"), &allowed));
        assert!(is_allowed(Path::new("/srv/./gocache"), &allowed));
        assert!(!is_allowed(Path::new("/srv/gocache/sub"), &allowed));
    }
}
