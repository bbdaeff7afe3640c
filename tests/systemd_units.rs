//! The systemd subsystem against real `systemd --user` managers (see tests/support/usermgr.rs).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use gocache_warden::systemd::dbus::{self, ManagerConn, ManagerEvent, ManagerId, Scope};
use gocache_warden::systemd::envfile;
use gocache_warden::systemd::remediate::{self, Outcome};
use gocache_warden::systemd::units::{self, FindingKind, GocacheSource, RemediationMode, UnitRule};
use support::usermgr::{TestUser, UserManager};

/// Stand-in for the project's go-env resolution: GOCACHE if set, else HOME/.cache/go-build.
fn resolve(env: &BTreeMap<String, String>, home: &Path) -> Option<PathBuf> {
    env.get("GOCACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| Some(home.join(".cache/go-build")))
}

fn oneshot(extra: &str) -> String {
    format!("[Service]\nType=oneshot\n{extra}\nExecStart=/usr/bin/env\n")
}

/// Findings per (uid, unit), each rendered as its kind tag.
fn kinds_by_unit(ins: &units::Inspection, uid: u32) -> BTreeMap<String, Vec<FindingKind>> {
    let mut out: BTreeMap<String, Vec<FindingKind>> = BTreeMap::new();
    for u in &ins.units {
        if matches!(&u.unit.manager, ManagerId::User { uid: x, .. } if *x == uid) {
            out.entry(u.unit.unit.clone())
                .or_default()
                .extend(u.findings.clone());
        }
    }
    out
}

const TRICKY_ENV: &[u8] = b"# comment\n\
; another comment\n\
  LEAD =  spaced value   \n\
SQ='single $x \\n \"q\"'\n\
DQ=\"a\\\"b\\\\c\\$d\\e\\`f\"\n\
CONT=one\\\n   two\n\
DQML=\"x\n  y\"\n\
MIX=\"q\" unq 'uo'\n\
TRAIL=t\\ \n\
export EXPORTED=1\n\
1BAD=x\n\
DUP=first\n\
DUP=second\n\
EMPTY=\n\
# comment continued \\\n\
SWALLOWED=yes\n\
NOEQ\n\
CRLF=crlf\r\n\
HASH=a#b ;c\n\
LAST=end";

#[tokio::test]
async fn envfile_parser_matches_real_systemd() {
    let user = TestUser::create().unwrap();
    let env_path = user.write_file("tricky.env", TRICKY_ENV).unwrap();
    user.install_unit(
        "w-dump.service",
        "[Service]\nType=oneshot\nEnvironmentFile=%h/tricky.env\n\
         ExecStart=/bin/sh -c 'env -0 > %h/env.out'\n",
    )
    .unwrap();
    let mgr = UserManager::start(user).unwrap();
    mgr.systemctl(&["start", "w-dump.service"]).unwrap();

    let dump = std::fs::read(mgr.user.home.join("env.out")).unwrap();
    let real: BTreeMap<String, String> = dump
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let s = String::from_utf8(e.to_vec()).unwrap();
            let (k, v) = s.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let ours = envfile::parse(TRICKY_ENV, &env_path).unwrap();
    for a in &ours.vars {
        assert_eq!(real.get(&a.key), Some(&a.value), "variable {}", a.key);
    }
    let names: Vec<&str> = ours.vars.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        names,
        [
            "LEAD", "SQ", "DQ", "CONT", "DQML", "MIX", "TRAIL", "DUP", "EMPTY", "CRLF", "HASH",
            "LAST"
        ]
    );
    for ignored in ["EXPORTED", "export EXPORTED", "1BAD", "SWALLOWED", "NOEQ"] {
        assert!(!real.contains_key(ignored), "systemd set {ignored}");
    }
    let warned: Vec<Option<u32>> = ours.warnings.iter().map(|w| w.line).collect();
    assert_eq!(
        warned,
        [Some(12), Some(13), Some(17), Some(19)],
        "{:#?}",
        ours.warnings
    );
}

#[tokio::test]
async fn system_scope_lists_units_of_both_users_over_private_sockets() {
    let a = TestUser::create().unwrap();
    a.install_unit(
        "w-explicit.service",
        &oneshot("Environment=GOCACHE=/srv/gocache"),
    )
    .unwrap();
    a.install_unit("w-missing.service", &oneshot("")).unwrap();
    a.write_file("good.env", "GOCACHE=/srv/gocache\n").unwrap();
    a.install_unit("w-envfile.service", &oneshot("EnvironmentFile=%h/good.env"))
        .unwrap();
    let bad = a
        .write_file("bad.env", b"A=1\nB=2\nGOCACHE=\xff\n")
        .unwrap();
    a.install_unit("w-badfile.service", &oneshot("EnvironmentFile=%h/bad.env"))
        .unwrap();
    let warn = a
        .write_file("warn.env", "# set the cache\nexport GOCACHE=/srv/gocache\n")
        .unwrap();
    a.install_unit(
        "w-warnfile.service",
        &oneshot("EnvironmentFile=-%h/warn.env"),
    )
    .unwrap();
    let b = TestUser::create().unwrap();
    b.install_unit("w-missing.service", &oneshot("")).unwrap();
    b.install_unit(
        "w-outside.service",
        &oneshot("Environment=GOCACHE=/tmp/elsewhere"),
    )
    .unwrap();
    b.install_unit("w-off.service", &oneshot("Environment=GOCACHE=off"))
        .unwrap();
    // No ExecStart=: systemd refuses to load it ("bad-setting").
    b.install_unit("w-broken.service", "[Service]\nType=oneshot\n")
        .unwrap();
    let (a, b) = (
        UserManager::start(a).unwrap(),
        UserManager::start(b).unwrap(),
    );

    let (conns, errors) = dbus::connect_scope(Scope::System, Path::new("/run/user")).await;
    for uid in [a.uid(), b.uid()] {
        assert!(
            conns
                .iter()
                .any(|c| matches!(&c.id, ManagerId::User { uid: x, .. } if *x == uid)),
            "no connection to uid {uid}: {errors:?}"
        );
    }
    let rules = [UnitRule {
        patterns: vec!["w-*.service".into()],
        require_gocache: true,
        value: None,
        gocacheprog: None,
        allowed: vec!["/srv/gocache".into()],
        mode: RemediationMode::Report,
    }];
    let ins = units::inspect(&conns, &rules, &resolve).await;
    let ours = |target: &str| {
        target.contains(&format!("/{}/", a.uid())) || target.contains(&format!("/{}/", b.uid()))
    };
    assert!(!ins.manager_errors.iter().any(|e| ours(&e.target)), "{ins}");
    let our_unit_errors: Vec<String> = ins
        .unit_errors
        .iter()
        .filter(|e| matches!(&e.manager, ManagerId::User { uid, .. } if *uid == a.uid() || *uid == b.uid()))
        .map(|e| e.to_string())
        .collect();
    assert_eq!(our_unit_errors.len(), 1, "{ins}");
    assert!(
        our_unit_errors[0].contains("w-broken.service: Unit.LoadState"),
        "{ins}"
    );

    let ka = kinds_by_unit(&ins, a.uid());
    assert_eq!(
        ka.keys().collect::<Vec<_>>(),
        [
            "w-badfile.service",
            "w-envfile.service",
            "w-explicit.service",
            "w-missing.service",
            "w-warnfile.service"
        ]
    );
    assert!(ka["w-explicit.service"].is_empty(), "{ins}");
    assert!(ka["w-envfile.service"].is_empty(), "{ins}");
    let fallback_a = Some(a.user.home.join(".cache/go-build"));
    assert_eq!(
        ka["w-missing.service"],
        [FindingKind::MissingGocache {
            fallback: fallback_a.clone()
        }]
    );
    match &ka["w-badfile.service"][..] {
        [
            FindingKind::EnvFileError {
                file,
                line,
                msg,
                fatal,
            },
            FindingKind::MissingGocache { .. },
        ] => {
            assert_eq!((file, *line, *fatal), (&bad, Some(3), true), "{msg}");
            assert!(msg.contains("invalid UTF-8"), "{msg}");
        }
        other => panic!("w-badfile: {other:?}"),
    }
    match &ka["w-warnfile.service"][..] {
        [
            FindingKind::EnvFileError {
                file,
                line,
                fatal: false,
                ..
            },
            FindingKind::MissingGocache { .. },
        ] => {
            assert_eq!((file, *line), (&warn, Some(2)));
        }
        other => panic!("w-warnfile: {other:?}"),
    }

    let kb = kinds_by_unit(&ins, b.uid());
    assert_eq!(
        kb["w-missing.service"],
        [FindingKind::MissingGocache {
            fallback: Some(b.user.home.join(".cache/go-build"))
        }]
    );
    assert_eq!(
        kb["w-outside.service"],
        [FindingKind::OutsidePolicy {
            value: "/tmp/elsewhere".into(),
            source: GocacheSource::Unit
        }]
    );
    assert_eq!(
        kb["w-off.service"],
        [FindingKind::Off {
            source: GocacheSource::Unit
        }]
    );

    // Findings name the manager, unit, fragment and program, in text and JSON.
    let f = ins
        .findings()
        .into_iter()
        .find(|f| {
            f.unit.unit == "w-missing.service"
                && matches!(&f.unit.manager, ManagerId::User { uid, .. } if *uid == b.uid())
        })
        .unwrap();
    assert_eq!(f.unit.exec_start.as_deref(), Some("/usr/bin/env"));
    assert_eq!(
        f.unit.fragment_path,
        Some(b.user.home.join(".config/systemd/user/w-missing.service"))
    );
    let text = f.to_string();
    assert!(
        text.starts_with(&format!(
            "user {} ({}) w-missing.service: GOCACHE not set",
            b.uid(),
            b.user.name
        )),
        "{text}"
    );
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["kind"], "missing_gocache");
    assert_eq!(json["manager"]["uid"], b.uid());
}

#[tokio::test]
async fn dropin_remediation_is_applied_reloaded_and_verified() {
    let a = TestUser::create().unwrap();
    let probe =
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'printenv GOCACHE > %h/gocache.out'\n";
    let fragment = a.install_unit("w-missing.service", probe).unwrap();
    a.install_unit(
        "w-outside.service",
        &oneshot("Environment=GOCACHE=/tmp/elsewhere"),
    )
    .unwrap();
    a.write_file("wrong.env", "GOCACHE=/tmp/wrong\n").unwrap();
    a.install_unit(
        "w-fromfile.service",
        &oneshot("EnvironmentFile=%h/wrong.env"),
    )
    .unwrap();
    a.install_unit("w-ok.service", &oneshot("Environment=GOCACHE=%h/gocache"))
        .unwrap();
    let b = TestUser::create().unwrap();
    b.install_unit("w-off.service", &oneshot("Environment=\"GOCACHE=off\""))
        .unwrap();
    b.install_unit("w-missing.service", &oneshot("")).unwrap();
    let (a, b) = (
        UserManager::start(a).unwrap(),
        UserManager::start(b).unwrap(),
    );
    let fragment_before = std::fs::read(&fragment).unwrap();

    let mut conns: Vec<ManagerConn> = Vec::new();
    for m in [&a, &b] {
        conns.push(
            dbus::connect_private(&m.private_socket(), m.uid())
                .await
                .unwrap(),
        );
    }
    let rules = [UnitRule {
        patterns: vec!["w-*.service".into()],
        require_gocache: true,
        value: Some("%h/gocache".into()),
        gocacheprog: None,
        allowed: vec![a.user.home.join("gocache"), b.user.home.join("gocache")],
        mode: RemediationMode::DropIn,
    }];
    let ins = units::inspect(&conns, &rules, &resolve).await;
    assert!(
        ins.manager_errors.is_empty() && ins.unit_errors.is_empty(),
        "{ins}"
    );
    let plan = remediate::plan(&ins, &rules);
    assert_eq!(plan.dropins.len(), 4, "{plan}");
    assert_eq!(plan.skipped.len(), 1, "{plan}");
    assert_eq!(plan.skipped[0].unit.unit, "w-fromfile.service");
    assert!(plan.skipped[0].reason.contains("wrong.env:1"), "{plan}");

    let results = remediate::apply(&plan, &conns, &ins, &rules, &resolve).await;
    assert_eq!(results.len(), 4);
    for r in &results {
        assert!(matches!(r.outcome, Outcome::Fixed { .. }), "{r}");
    }

    for (m, unit) in [
        (&a, "w-missing.service"),
        (&a, "w-outside.service"),
        (&b, "w-off.service"),
        (&b, "w-missing.service"),
    ] {
        let want = format!("GOCACHE={}", m.user.home.join("gocache").display());
        let env = m.show(unit, "Environment").unwrap();
        assert!(env.split(' ').any(|e| e == want), "{unit}: {env}");
        let dropin = m.user.home.join(format!(
            ".config/systemd/user/{unit}.d/50-gocache-warden.conf"
        ));
        let meta = std::fs::metadata(&dropin).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (m.uid(), m.user.gid));
        assert_eq!(
            std::fs::metadata(dropin.parent().unwrap()).unwrap().uid(),
            m.uid()
        );
        assert!(
            m.show(unit, "DropInPaths")
                .unwrap()
                .contains(&dropin.display().to_string())
        );
    }
    assert_eq!(std::fs::read(&fragment).unwrap(), fragment_before);

    // The service really runs with the value.
    a.systemctl(&["start", "w-missing.service"]).unwrap();
    let seen = std::fs::read_to_string(a.user.home.join("gocache.out")).unwrap();
    assert_eq!(
        seen.trim_end(),
        a.user.home.join("gocache").display().to_string()
    );

    // A second sweep finds nothing left to fix except the env-file unit.
    let again = units::inspect(&conns, &rules, &resolve).await;
    let left: Vec<String> = again
        .findings()
        .iter()
        .map(|f| f.unit.unit.clone())
        .collect();
    assert_eq!(left, ["w-fromfile.service"], "{again}");
    let plan2 = remediate::plan(&again, &rules);
    assert!(plan2.dropins.is_empty(), "{plan2}");
    assert!(
        remediate::apply(&plan2, &conns, &again, &rules, &resolve)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn watch_reports_reloads_and_new_units() {
    let user = TestUser::create().unwrap();
    let mgr = UserManager::start(user).unwrap();
    let conn = dbus::connect_private(&mgr.private_socket(), mgr.uid())
        .await
        .unwrap();
    let events = dbus::watch(&conn).await.unwrap();
    let mut events = Box::pin(events);

    mgr.user
        .install_unit("w-new.service", &oneshot(""))
        .unwrap();
    mgr.daemon_reload().unwrap();
    mgr.systemctl(&["start", "w-new.service"]).unwrap();

    let mut seen = Vec::new();
    let wanted = |seen: &[ManagerEvent]| {
        seen.iter()
            .any(|e| matches!(e, ManagerEvent::Reloading { active: true, .. }))
            && seen
                .iter()
                .any(|e| matches!(e, ManagerEvent::Reloading { active: false, .. }))
            && seen
                .iter()
                .any(|e| matches!(e, ManagerEvent::UnitNew { unit, .. } if unit == "w-new.service"))
    };
    let collect = async {
        while let Some(e) = events.next().await {
            seen.push(e);
            if wanted(&seen) {
                break;
            }
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .is_err();
    assert!(!timed_out, "events seen: {seen:?}");
    assert!(seen.iter().all(|e| match e {
        ManagerEvent::UnitNew { manager, .. } | ManagerEvent::Reloading { manager, .. } =>
            manager == &conn.id,
    }));
}

#[tokio::test]
async fn a_missing_system_bus_or_stale_socket_does_not_stop_the_sweep() {
    let user = TestUser::create().unwrap();
    user.install_unit("w-missing.service", &oneshot(""))
        .unwrap();
    let mgr = UserManager::start(user).unwrap();
    let run_user = tempfile::tempdir().unwrap();
    // A fake runtime dir whose socket is not served, next to a symlink to the real one.
    let stale = run_user.path().join("4000000000/systemd");
    std::fs::create_dir_all(&stale).unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.join("private")).unwrap());
    std::os::unix::fs::chown(stale.join("private"), Some(4000000000), None).unwrap();
    std::os::unix::fs::symlink(
        mgr.user.runtime_dir(),
        run_user.path().join(mgr.uid().to_string()),
    )
    .unwrap();

    let (conns, errors) = dbus::connect_scope(Scope::System, run_user.path()).await;
    assert_eq!(conns.len() + errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.target.contains("4000000000")),
        "{errors:?}"
    );
    let rules = [UnitRule {
        patterns: vec!["w-*.service".into()],
        require_gocache: true,
        value: None,
        gocacheprog: None,
        allowed: vec![],
        mode: RemediationMode::Report,
    }];
    let ins = units::inspect(&conns, &rules, &resolve).await;
    assert_eq!(kinds_by_unit(&ins, mgr.uid()).len(), 1, "{ins}");
}
