//! Inspecting a unit with its user's file permissions.
//!
//! A unit's `EnvironmentFile=`s, its `GOENV` file and the `go` on its `PATH` are named by
//! whoever wrote the unit, and for a user manager that is an unprivileged user. Root reading
//! them would let that user point the agent at `/root/secret` and read fragments of it back
//! in findings (parser warnings quote lines). So [`inspect_unit`] runs the whole inspection
//! of one unit (glob expansion, file reads, go's resolution) on a thread whose file-system
//! identity is the unit's user: the user of a user manager, or a system unit's `User=`.
//! Units that run as root are read as root. Nothing here speaks D-Bus or writes.

use super::dbus::{ManagerId, ServiceInfo, UnitError};
use super::units::{self, InspectedUnit, ManagerInfo, Resolver, UnitRule};
use crate::untrusted::{self, Creds};

/// Whose permissions the files of `svc` on `mgr` are read with; `None` for root.
fn reader(mgr: &ManagerInfo, svc: &ServiceInfo) -> Result<Option<Creds>, String> {
    let uid = match &mgr.id {
        ManagerId::User { uid, .. } => *uid,
        ManagerId::System if svc.user.is_empty() => return Ok(None),
        ManagerId::System => super::environ::lookup_user(&svc.user)?.uid.as_raw(),
    };
    if uid == 0 {
        return Ok(None);
    }
    Creds::of_uid(uid)
        .map(Some)
        .map_err(|e| format!("cannot look up the groups of uid {uid}: {e}"))
}

/// [`inspect_unit`] on tokio's blocking pool: reading a user's files may wait (up to
/// [`untrusted::AS_USER_TIMEOUT`]), which must not hold up the async loop (the daemon's runs
/// on one thread, beside its watchdog pings).
pub async fn inspect_unit_off_loop(
    mgr: &ManagerInfo,
    svc: &ServiceInfo,
    rule_index: usize,
    rule: &UnitRule,
    resolve: Resolver<'static>,
) -> Result<InspectedUnit, UnitError> {
    let (m, s, r) = (mgr.clone(), svc.clone(), rule.clone());
    match tokio::task::spawn_blocking(move || inspect_unit(&m, &s, rule_index, &r, resolve)).await {
        Ok(result) => result,
        Err(e) => Err(UnitError {
            manager: mgr.id.clone(),
            unit: svc.id.clone(),
            property: None,
            msg: format!("not inspected: the inspection task failed: {e}"),
        }),
    }
}

/// [`units::inspect_unit`], reading the unit's files as the unit's user. If that identity
/// cannot be taken, the unit is an error and none of its files are read.
pub fn inspect_unit(
    mgr: &ManagerInfo,
    svc: &ServiceInfo,
    rule_index: usize,
    rule: &UnitRule,
    resolve: Resolver<'static>,
) -> Result<InspectedUnit, UnitError> {
    let error = |msg: String| UnitError {
        manager: mgr.id.clone(),
        unit: svc.id.clone(),
        property: None,
        msg,
    };
    match reader(mgr, svc).map_err(&error)? {
        None => units::inspect_unit(mgr, svc, rule_index, rule, resolve),
        Some(creds) => {
            let (m, s, r) = (mgr.clone(), svc.clone(), rule.clone());
            untrusted::with_creds(&creds, move || {
                units::inspect_unit(&m, &s, rule_index, &r, resolve)
            })
        }
        .map_err(|e| {
            error(format!(
                "not inspected: cannot read the unit's files as uid {}: {e}",
                creds.uid
            ))
        })?,
    }
}
