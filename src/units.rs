//! Service units and GOCACHE: the bridge between the policy's `[units.*]` rules and the
//! `systemd` subsystem (which alone speaks D-Bus).
//!
//! It turns rules into `systemd::UnitRule`s (the policy's cache paths are what a unit may
//! point at), gives the subsystem go's own resolution (`goenv`) for units that set nothing,
//! and runs inspections and drop-in remediations for the CLI (`units`) and the daemon.

use crate::goenv::{self, GoEnv};
use crate::policy::{CacheKind, CachePath, Managers, Policy, Remediation, Scope};
use crate::systemd::{self, ManagerConn, RemediationMode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc::UnboundedSender;

/// The policy's unit rules for the subsystem. A unit may point GOCACHE at any fixed build
/// cache of the policy, or at the rule's own value.
pub fn rules(policy: &Policy, scope: Scope) -> Vec<systemd::UnitRule> {
    let allowed: Vec<PathBuf> = policy
        .caches
        .iter()
        .filter(|c| c.kind == CacheKind::Build)
        .filter_map(|c| match &c.path {
            CachePath::Fixed(p) => Some(p.clone()),
            CachePath::Auto => None,
        })
        .collect();
    policy
        .units
        .iter()
        // The user instance sees only its own manager: system-only rules do not apply there.
        .filter(|u| !(u.managers == Managers::System && scope == Scope::User))
        .map(|u| {
            let mut allowed = allowed.clone();
            if let Some(v) = u.gocache.as_deref().filter(|v| !v.contains('%')) {
                allowed.push(PathBuf::from(v));
            }
            systemd::UnitRule {
                patterns: u.patterns.clone(),
                require_gocache: u.require_gocache,
                value: u.gocache.clone(),
                gocacheprog: u.gocacheprog.clone(),
                allowed,
                mode: match u.remediation {
                    Remediation::Report => RemediationMode::Report,
                    Remediation::DropIn => RemediationMode::DropIn,
                },
            }
        })
        .collect()
}

/// What GOCACHE `go` would use with a unit's environment and home: go's own resolution,
/// with the GOROOT of whatever `go` the unit's PATH finds.
pub fn resolve_gocache(env: &BTreeMap<String, String>, home: &Path) -> Option<PathBuf> {
    let mut vars = env.clone();
    vars.entry("HOME".into())
        .or_insert_with(|| home.display().to_string());
    let goroot = match goenv::find_goroot(vars.get("PATH").map(String::as_str), None) {
        goenv::GorootLookup::Found(p) => Some(p),
        _ => None,
    };
    goenv::resolve(&GoEnv::new(vars, goroot))
        .gocache
        .path()
        .map(Path::to_path_buf)
}

fn dbus_scope(scope: Scope) -> systemd::Scope {
    match scope {
        Scope::System => systemd::Scope::System,
        Scope::User => systemd::Scope::User,
    }
}

pub use crate::systemd::dbus::run_user_dir;

/// One inspection (and, with `remediate`, the drop-ins of `drop-in` rules).
pub struct Report {
    pub inspection: systemd::Inspection,
    pub plan: systemd::Plan,
    pub remediations: Vec<systemd::Remediation>,
}

pub async fn inspect(policy: &Policy, scope: Scope, remediate: bool) -> Report {
    let rules = rules(policy, scope);
    let which: Vec<Managers> = policy
        .units
        .iter()
        .filter(|u| !(u.managers == Managers::System && scope == Scope::User))
        .map(|u| u.managers)
        .collect();
    if rules.is_empty() {
        return Report {
            inspection: Default::default(),
            plan: Default::default(),
            remediations: vec![],
        };
    }
    let (conns, errors) = systemd::connect_scope(dbus_scope(scope), &run_user_dir()).await;
    let resolver: systemd::Resolver<'_> = &resolve_gocache;
    let mut inspection = systemd::inspect(&conns, &rules, resolver).await;
    inspection.manager_errors.extend(errors);
    // A rule for `system` (or `user`) managers only judges units of those managers.
    inspection.units.retain(|u| {
        !matches!(
            (which.get(u.rule), &u.unit.manager),
            (Some(Managers::System), systemd::ManagerId::User { .. })
                | (Some(Managers::User), systemd::ManagerId::System)
        )
    });
    let plan = systemd::plan(&inspection, &rules);
    let remediations = if remediate && !plan.dropins.is_empty() {
        systemd::apply(&plan, &conns, &inspection, &rules, resolver).await
    } else {
        vec![]
    };
    for f in inspection.findings() {
        if f.kind.is_gocache() {
            let uid = match &f.unit.manager {
                systemd::ManagerId::User { uid, .. } => *uid,
                systemd::ManagerId::System => 0,
            };
            tracing::warn!(gocache_warden_action = crate::logging::action::UNIT_MISSING_GOCACHE, unit = %f.unit.unit, target_uid = uid, "{f}");
        }
    }
    for r in &remediations {
        tracing::info!(gocache_warden_action = crate::logging::action::UNIT_DROP_IN, unit = %r.unit.unit, "{r}");
    }
    Report {
        inspection,
        plan,
        remediations,
    }
}

/// Units lacking a policy GOCACHE, as alert references (after remediating `drop-in` rules).
pub async fn missing_refs(policy: &Policy, scope: Scope) -> Vec<crate::alert::UnitRef> {
    let r = inspect(policy, scope, true).await;
    let fixed: Vec<_> = r
        .remediations
        .iter()
        .filter(|m| matches!(m.outcome, systemd::Outcome::Fixed { .. }))
        .map(|m| m.unit.clone())
        .collect();
    r.inspection
        .findings()
        .into_iter()
        .filter(|f| f.kind.is_gocache() && !fixed.contains(&f.unit))
        .map(|f| {
            let (uid, user) = match &f.unit.manager {
                systemd::ManagerId::User { uid, name } => (*uid, name.clone()),
                systemd::ManagerId::System => (0, "root".to_string()),
            };
            crate::alert::UnitRef {
                unit: f.unit.unit.clone(),
                uid,
                user,
            }
        })
        .collect()
}

/// Subscribes to every manager's `UnitNew`/`Reloading` and sends `event()` on `tx` for each
/// change, coalescing bursts (a `daemon-reload` announces every unit) into one. The caller
/// chooses the message, so this module does not know the daemon's event type.
/// `None` when the policy has no unit rules. The daemon aborts and respawns it on reload, so
/// rules added by a reload are watched too (and managers that appeared since).
pub fn spawn_watch<E: Send + 'static>(
    policy: &Policy,
    scope: Scope,
    tx: UnboundedSender<E>,
    event: impl Fn() -> E + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    if rules(policy, scope).is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let (conns, _) = systemd::connect_scope(dbus_scope(scope), &run_user_dir()).await;
        let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
        for c in conns {
            spawn_one(c, etx.clone());
        }
        drop(etx);
        while erx.recv().await.is_some() {
            // Let the burst settle, then one sweep for all of it.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            while erx.try_recv().is_ok() {}
            if tx.send(event()).is_err() {
                break;
            }
        }
    }))
}

fn spawn_one(c: ManagerConn, tx: UnboundedSender<()>) {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let Ok(stream) = systemd::watch(&c).await else {
            return;
        };
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let relevant = match ev {
                systemd::ManagerEvent::UnitNew { unit, .. } => unit.ends_with(".service"),
                systemd::ManagerEvent::Reloading { active, .. } => !active,
            };
            if relevant && tx.send(()).is_err() {
                break;
            }
        }
    });
}
