//! Fixing GOCACHE findings with drop-ins: plan (pure), then apply (writes, reloads, verifies).
//!
//! `plan` turns an [`Inspection`] into a list of drop-ins to write, or reasons not to: a rule in
//! `Report` mode, no value, a GOCACHE that comes from an `EnvironmentFile=` (files override
//! `Environment=`, so a drop-in could not win), or `UnsetEnvironment=GOCACHE`. `apply` writes
//! the drop-ins through `dropin.rs`, calls each touched manager's `Reload` once, and then reads
//! every unit back over D-Bus: its `Environment` must contain the expected GOCACHE, its
//! `DropInPaths` our file, and the rebuilt effective environment must use that value. It never
//! edits a unit's own fragment and never removes anything.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::dbus::{self, ManagerConn, ManagerId};
use super::dropin::{self, DropInTarget, Written};
use super::specifiers;
use super::units::{self, Inspection, ManagerInfo, RemediationMode, UnitRef, UnitRule, is_allowed};

/// One drop-in to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedDropIn {
    pub unit: UnitRef,
    pub path: PathBuf,
    /// The value as written (specifiers unexpanded) and as systemd will expand it.
    pub value: String,
    pub expected: String,
    pub contents: String,
    #[serde(skip)]
    target: DropInTarget,
}

/// A unit with GOCACHE findings that will not get a drop-in, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedUnit {
    pub unit: UnitRef,
    pub reason: String,
}

/// What a remediation would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub dropins: Vec<PlannedDropIn>,
    pub skipped: Vec<SkippedUnit>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} drop-ins to write, {} units skipped",
            self.dropins.len(),
            self.skipped.len()
        )?;
        for d in &self.dropins {
            writeln!(
                f,
                "would write {} (GOCACHE={}) for {}",
                d.path.display(),
                d.value,
                d.unit
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "skip {}: {}", s.unit, s.reason)?;
        }
        Ok(())
    }
}

/// Decides which units get a drop-in. Pure: no I/O.
pub fn plan(inspection: &Inspection, rules: &[UnitRule]) -> Plan {
    let mut out = Plan::default();
    for u in &inspection.units {
        if !u.findings.iter().any(|f| f.is_gocache()) {
            continue;
        }
        let Some(rule) = rules.get(u.rule) else {
            continue;
        };
        let skip = |reason: String| SkippedUnit {
            unit: u.unit.clone(),
            reason,
        };
        if rule.mode == RemediationMode::Report {
            continue;
        }
        let Some(value) = &rule.value else {
            out.skipped
                .push(skip("the rule has no value to set".to_owned()));
            continue;
        };
        let Some(mgr) = inspection.managers.iter().find(|m| m.id == u.unit.manager) else {
            out.skipped
                .push(skip("manager information missing".to_owned()));
            continue;
        };
        if let Some((_, units::GocacheSource::EnvironmentFile { file, line })) = &u.gocache {
            out.skipped.push(skip(format!(
                "GOCACHE is set in {}:{line}, which overrides any drop-in; fix that file",
                file.display()
            )));
            continue;
        }
        if u.gocache_unset {
            out.skipped.push(skip(
                "UnsetEnvironment= removes GOCACHE, which overrides any drop-in".to_owned(),
            ));
            continue;
        }
        let expected = match specifiers::expand(value, &mgr.specifiers) {
            Ok(e) => e,
            Err(e) => {
                out.skipped.push(skip(e));
                continue;
            }
        };
        let allowed = units::allowed_for(rule, mgr);
        if !expected.starts_with('/')
            || (!allowed.is_empty() && !is_allowed(expected.as_ref(), &allowed))
        {
            out.skipped.push(skip(format!(
                "the rule's value {value:?} expands to {expected:?}, which the rule itself does \
                 not allow"
            )));
            continue;
        }
        let contents = match dropin::contents_with(value, rule.gocacheprog.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                out.skipped.push(skip(format!("{e:#}")));
                continue;
            }
        };
        if let Err(e) = dropin::check_unit_name(&u.unit.unit) {
            out.skipped.push(skip(format!("{e:#}")));
            continue;
        }
        let target = match target_for(mgr) {
            Ok(t) => t,
            Err(e) => {
                out.skipped.push(skip(e));
                continue;
            }
        };
        out.dropins.push(PlannedDropIn {
            unit: u.unit.clone(),
            path: target.path_for(&u.unit.unit),
            value: value.clone(),
            expected,
            contents,
            target,
        });
    }
    out
}

/// Where drop-ins for units of `mgr` go; an error when the user's manager points its
/// configuration outside the user's home.
pub fn target_for(mgr: &ManagerInfo) -> Result<DropInTarget, String> {
    match &mgr.id {
        ManagerId::System => Ok(DropInTarget::system()),
        ManagerId::User { uid, .. } => DropInTarget::user(
            &mgr.specifiers.home,
            mgr.env.get("XDG_CONFIG_HOME").map(std::path::Path::new),
            *uid,
            mgr.gid,
        ),
    }
}

/// Writes a planned drop-in; a user's drop-in with that user's file-system identity, so
/// directories and the file are created as the user, with the user's permissions, in the
/// user's home (never as root through something the user made writable only to root).
fn write_as_owner(d: &PlannedDropIn) -> anyhow::Result<Written> {
    match d.target.owner {
        Some((uid, _)) if uid != 0 => {
            let creds = crate::untrusted::Creds::of_uid(uid)?;
            let (target, unit, contents) =
                (d.target.clone(), d.unit.unit.clone(), d.contents.clone());
            crate::untrusted::with_creds(&creds, move || dropin::write(&target, &unit, &contents))?
        }
        _ => dropin::write(&d.target, &d.unit.unit, &d.contents),
    }
}

/// What happened to one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The drop-in is in place and the manager reports the expected GOCACHE.
    Fixed {
        written: Written,
    },
    /// The drop-in was written (or already there) but the manager does not show the value.
    Unverified {
        written: Written,
        msg: String,
    },
    Failed {
        msg: String,
    },
}

/// The result for one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remediation {
    #[serde(flatten)]
    pub unit: UnitRef,
    pub dropin: PathBuf,
    pub expected: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl fmt::Display for Remediation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Fixed { written } => write!(
                f,
                "{}: GOCACHE={} via {} ({written:?}, verified)",
                self.unit,
                self.expected,
                self.dropin.display()
            ),
            Outcome::Unverified { written, msg } => write!(
                f,
                "{}: wrote {} ({written:?}) but {msg}",
                self.unit,
                self.dropin.display()
            ),
            Outcome::Failed { msg } => write!(f, "{}: {msg}", self.unit),
        }
    }
}

/// Writes the planned drop-ins, reloads each touched manager once, and verifies every unit.
/// `resolve` is only used to rebuild the effective environment during verification.
pub async fn apply(
    plan: &Plan,
    conns: &[ManagerConn],
    inspection: &Inspection,
    rules: &[UnitRule],
    resolve: units::Resolver<'static>,
) -> Vec<Remediation> {
    let mut results = Vec::new();
    let mut managers: Vec<&ManagerId> = plan.dropins.iter().map(|d| &d.unit.manager).collect();
    managers.sort();
    managers.dedup();
    for id in managers {
        let dropins: Vec<&PlannedDropIn> = plan
            .dropins
            .iter()
            .filter(|d| &d.unit.manager == id)
            .collect();
        let result = |d: &PlannedDropIn, outcome| Remediation {
            unit: d.unit.clone(),
            dropin: d.path.clone(),
            expected: d.expected.clone(),
            outcome,
        };
        let Some(conn) = conns.iter().find(|c| &c.id == id) else {
            for d in dropins {
                let msg = "no connection to this manager".to_owned();
                results.push(result(d, Outcome::Failed { msg }));
            }
            continue;
        };
        let mut written = Vec::new();
        for d in dropins {
            match write_as_owner(d) {
                Ok(w) => written.push((d, w)),
                Err(e) => {
                    let msg = format!("{e:#}");
                    results.push(result(d, Outcome::Failed { msg }));
                }
            }
        }
        if written.is_empty() {
            continue;
        }
        if let Err(e) = reload(conn).await {
            for (d, _) in written {
                let msg = format!("drop-in written but reload failed: {e:#}");
                results.push(result(d, Outcome::Failed { msg }));
            }
            continue;
        }
        let mgr_info = inspection.managers.iter().find(|m| &m.id == id);
        for (d, w) in written {
            let outcome = match verify(conn, mgr_info, d, inspection, rules, resolve).await {
                Ok(()) => Outcome::Fixed { written: w },
                Err(msg) => Outcome::Unverified { written: w, msg },
            };
            results.push(result(d, outcome));
        }
    }
    results
}

async fn reload(conn: &ManagerConn) -> anyhow::Result<()> {
    use anyhow::Context;
    conn.manager()
        .await?
        .reload()
        .await
        .with_context(|| format!("{}: Reload failed", conn.id))
}

/// Reads the unit back and checks that systemd now gives it the expected GOCACHE.
async fn verify(
    conn: &ManagerConn,
    mgr: Option<&ManagerInfo>,
    d: &PlannedDropIn,
    inspection: &Inspection,
    rules: &[UnitRule],
    resolve: units::Resolver<'static>,
) -> Result<(), String> {
    let svc = dbus::service_info(conn, &d.unit.unit)
        .await
        .map_err(|e| e.to_string())?;
    let want = format!("GOCACHE={}", d.expected);
    let has = svc
        .environment
        .iter()
        .rev()
        .find(|(k, _)| k == "GOCACHE")
        .map(|(k, v)| format!("{k}={v}"));
    if has.as_deref() != Some(want.as_str()) {
        return Err(format!(
            "the manager reports Environment {} instead of {want} (another drop-in may override \
             ours: {:?})",
            has.as_deref().unwrap_or("without GOCACHE"),
            svc.drop_in_paths
        ));
    }
    if !svc.drop_in_paths.iter().any(|p| p == &d.path) {
        return Err(format!(
            "the manager does not list {} in DropInPaths {:?}",
            d.path.display(),
            svc.drop_in_paths
        ));
    }
    let Some(mgr) = mgr else {
        return Ok(());
    };
    let rule_index = inspection
        .units
        .iter()
        .find(|u| u.unit == d.unit)
        .map(|u| u.rule)
        .unwrap_or(0);
    let Some(rule) = rules.get(rule_index) else {
        return Ok(());
    };
    let checked = super::asuser::inspect_unit_off_loop(mgr, &svc, rule_index, rule, resolve)
        .await
        .map_err(|e| e.to_string())?;
    match &checked.gocache {
        Some((v, _)) if *v == d.expected => Ok(()),
        other => Err(format!(
            "the effective GOCACHE is {:?}, not {}",
            other.as_ref().map(|(v, s)| format!("{v} (from {s})")),
            d.expected
        )),
    }
}
