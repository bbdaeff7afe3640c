use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::report::snapshot::{EvictReason, Evicted};

const GIB: u64 = 1 << 30;

fn snapshot(size: u64, limit: Option<u64>) -> CacheSnapshot {
    CacheSnapshot {
        path: PathBuf::from("/srv/gocache"),
        user: None,
        via: None,
        kind: CacheKind::Build,
        allocated_bytes: size,
        apparent_bytes: size,
        files: 10,
        dirs: 257,
        inspected_entries: 267,
        fs_inodes_used: 100,
        fs_inodes_total: 1000,
        fs_free_bytes: 50 * GIB,
        fs_size_bytes: 100 * GIB,
        limit_bytes: limit,
        oldest_age_seconds: Some(3600.0),
        bytes_by_owner: vec![OwnerUsage {
            uid: 1000,
            name: "alice".into(),
            bytes: size,
        }],
        violations: BTreeMap::new(),
        over_limit: limit.is_some_and(|l| size > l),
        held_over: None,
        held_bytes: BTreeMap::new(),
    }
}

fn obs(snap: CacheSnapshot) -> Observation {
    Observation {
        host: "build01".into(),
        caches: vec![CacheObservation {
            snapshot: snap,
            last_sweep: None,
            root: None,
            units: vec![],
        }],
        units_missing_gocache: vec![],
    }
}

fn firing(alerts: &[Alert]) -> Vec<&str> {
    alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .map(|a| a.id.as_str())
        .collect()
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

#[test]
fn size_checks_fire_at_the_right_levels() {
    let th = Thresholds::default();
    assert!(firing(&evaluate(&obs(snapshot(5 * GIB, Some(10 * GIB))), &th)).is_empty());
    assert_eq!(
        firing(&evaluate(
            &obs(snapshot(9 * GIB + GIB / 2, Some(10 * GIB))),
            &th
        )),
        ["near_limit:/srv/gocache"]
    );
    let over = evaluate(&obs(snapshot(11 * GIB, Some(10 * GIB))), &th);
    assert_eq!(firing(&over), ["over_limit:/srv/gocache"]);
    let a = over
        .iter()
        .find(|a| a.kind == AlertKind::OverLimit)
        .unwrap();
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(
        (a.size_bytes, a.limit_bytes),
        (Some(11 * GIB), Some(10 * GIB))
    );
    assert!(
        a.summary.contains("11.0 GiB of 10.0 GiB (110%)"),
        "{}",
        a.summary
    );
    // No limit: the size checks do not apply at all.
    assert!(
        evaluate(&obs(snapshot(11 * GIB, None)), &th)
            .iter()
            .all(|a| a.kind != AlertKind::OverLimit)
    );
}

#[test]
fn inode_violation_sweep_and_unit_checks() {
    let mut s = snapshot(GIB, Some(10 * GIB));
    s.fs_inodes_used = 950;
    s.violations.insert("mode".into(), 3);
    s.violations.insert("acl".into(), 0);
    let mut o = obs(s);
    o.caches[0].last_sweep = Some(SweepOutcome {
        path: "/srv/gocache".into(),
        kind: CacheKind::Build,
        evicted: BTreeMap::from([(
            EvictReason::Size,
            Evicted {
                bytes: 4096,
                entries: 2,
            },
        )]),
        fixes: BTreeMap::new(),
        errors: BTreeMap::from([("io".to_string(), 1)]),
        duration: Duration::from_secs(2),
        success: false,
        finished_at: t(0),
    });
    o.units_missing_gocache = vec![
        UnitRef {
            unit: "b.service".into(),
            uid: 1001,
            user: "bob".into(),
        },
        UnitRef {
            unit: "a.service".into(),
            uid: 1001,
            user: "bob".into(),
        },
        UnitRef {
            unit: "c.service".into(),
            uid: 1002,
            user: "carol".into(),
        },
    ];
    let alerts = evaluate(&o, &Thresholds::default());
    let mut ids = firing(&alerts);
    ids.sort();
    assert_eq!(
        ids,
        [
            "inodes_high:/srv/gocache",
            "sweep_failed:/srv/gocache",
            "units_missing_gocache:uid:1001",
            "units_missing_gocache:uid:1002",
            "violations:/srv/gocache",
        ]
    );
    let v = alerts
        .iter()
        .find(|a| a.kind == AlertKind::Violations)
        .unwrap();
    assert_eq!(v.violations, BTreeMap::from([("mode".to_string(), 3)]));
    assert_eq!(
        v.actions,
        [
            "evicted 4096 bytes in 2 entries by size",
            "met 1 io errors",
            "sweep failed"
        ]
    );
    let u = alerts
        .iter()
        .find(|a| a.id == "units_missing_gocache:uid:1001")
        .unwrap();
    assert_eq!((u.uid, u.user.as_deref()), (Some(1001), Some("bob")));
    let names: Vec<&str> = u.units.iter().map(|u| u.unit.as_str()).collect();
    assert_eq!(names, ["a.service", "b.service"]);
}

#[test]
fn tracker_sends_new_renotifies_after_interval_and_resolves_once() {
    let th = Thresholds::default();
    let mut tr = AlertTracker::new(Duration::from_secs(3600));
    let over = || evaluate(&obs(snapshot(11 * GIB, Some(10 * GIB))), &th);
    let sent = tr.update(over(), t(0));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status, AlertStatus::Firing);
    assert_eq!(sent[0].since.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert!(
        tr.update(over(), t(60)).is_empty(),
        "re-sent inside the interval"
    );
    assert!(tr.update(over(), t(3599)).is_empty());
    let again = tr.update(over(), t(3600));
    assert_eq!(again.len(), 1, "not re-sent after the interval");
    assert_eq!(again[0].since.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert!(tr.update(over(), t(3700)).is_empty());

    let ok = evaluate(&obs(snapshot(5 * GIB, Some(10 * GIB))), &th);
    let resolved = tr.update(ok.clone(), t(4000));
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].status, AlertStatus::Resolved);
    assert_eq!(resolved[0].id, "over_limit:/srv/gocache");
    assert!(
        resolved[0].summary.contains("within its size limit"),
        "{}",
        resolved[0].summary
    );
    assert!(tr.update(ok, t(5000)).is_empty(), "resolved twice");
    assert!(tr.active_ids().is_empty());
}

#[test]
fn near_to_over_is_not_a_recovery_and_vanished_caches_resolve() {
    let th = Thresholds::default();
    let mut tr = AlertTracker::new(Duration::from_secs(3600));
    let near = tr.update(
        evaluate(&obs(snapshot(95 * GIB / 10, Some(10 * GIB))), &th),
        t(0),
    );
    assert_eq!(firing(&near), ["near_limit:/srv/gocache"]);
    let over = tr.update(
        evaluate(&obs(snapshot(11 * GIB, Some(10 * GIB))), &th),
        t(10),
    );
    assert_eq!(over.len(), 1, "{over:?}");
    assert_eq!(over[0].id, "over_limit:/srv/gocache");
    assert_eq!(over[0].status, AlertStatus::Firing);

    let gone = tr.update(Vec::new(), t(20));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].status, AlertStatus::Resolved);
    assert!(gone[0].summary.starts_with("no longer observed"));
}

/// A message its sink's queue could not take (full) is offered again at the next
/// evaluation, firing and resolved alike; once taken, it is not sent twice.
#[test]
fn a_message_not_taken_is_offered_again_and_resolved_is_never_lost() {
    let th = Thresholds::default();
    let mut tr = AlertTracker::new(Duration::from_secs(3600));
    let over = || evaluate(&obs(snapshot(11 * GIB, Some(10 * GIB))), &th);
    let ok = || evaluate(&obs(snapshot(5 * GIB, Some(10 * GIB))), &th);
    let offered = |tr: &mut AlertTracker, checks: Vec<Alert>, at: u64, take: bool| {
        let mut seen = Vec::new();
        tr.update_with(checks, t(at), |a| {
            seen.push((a.id.clone(), a.status));
            take
        });
        seen
    };
    let fire = ("over_limit:/srv/gocache".to_string(), AlertStatus::Firing);
    let resolve = ("over_limit:/srv/gocache".to_string(), AlertStatus::Resolved);
    assert_eq!(
        offered(&mut tr, over(), 0, false),
        std::slice::from_ref(&fire)
    );
    assert!(tr.active_ids().is_empty(), "not taken, not recorded");
    assert_eq!(
        offered(&mut tr, over(), 10, true),
        std::slice::from_ref(&fire)
    );
    assert!(offered(&mut tr, over(), 20, true).is_empty(), "sent twice");
    // Cleared while the queue is full: the resolved message waits for the next evaluation.
    assert_eq!(
        offered(&mut tr, ok(), 30, false),
        std::slice::from_ref(&resolve)
    );
    assert_eq!(tr.active_ids(), ["over_limit:/srv/gocache"]);
    assert_eq!(offered(&mut tr, ok(), 40, true), [resolve]);
    assert!(offered(&mut tr, ok(), 50, true).is_empty());
    // A re-notification not taken is due again at the next evaluation.
    assert_eq!(
        offered(&mut tr, over(), 100, true),
        std::slice::from_ref(&fire)
    );
    assert_eq!(
        offered(&mut tr, over(), 3800, false),
        std::slice::from_ref(&fire)
    );
    assert_eq!(offered(&mut tr, over(), 3810, true), [fire]);
    assert!(offered(&mut tr, over(), 3820, true).is_empty());
}
