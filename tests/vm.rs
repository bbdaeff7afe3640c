//! The system agent on a real systemd machine: a Debian 12 guest under QEMU (systemd as
//! PID 1, real D-Bus, journald, logind and user managers), the package installed from the
//! `.deb` built from this tree, every feature exercised under the shipped sandbox and
//! checked from outside the agent. The guest side is `tests/vm/system-agent.sh`; the
//! harness is `tests/support/vm.rs`. Webhooks go to a receiver on this host, which the
//! guest reaches at 10.0.2.100 (not loopback as it sees it).

mod support;

use std::path::Path;
use std::time::Duration;
use support::deb::{build_deb_with, ensure_cargo_deb, repo, target_dir};
use support::vm::{Receiver, Vm};

fn copy(from: &Path, to_dir: &Path) {
    std::fs::create_dir_all(to_dir).expect("mkdir");
    let name = from.file_name().expect("file name");
    std::fs::copy(from, to_dir.join(name))
        .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

#[test]
fn system_agent_from_the_deb_under_real_systemd() {
    support::require_root();
    let vm = Vm::new();
    ensure_cargo_deb();
    let target = target_dir();
    // Kept after the run (replaced by the next one) in this checkout's target dir: the
    // guest's evidence, journal and console are what to read when a check fails.
    let share = target.join("vm/system-agent");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).expect("mkdir share");
    let s = share.as_path();
    // Copied as soon as built: cargo deb replaces what is in target/debian.
    let deb1 = build_deb_with(&target, &[]);
    copy(&deb1, &s.join("deb1"));
    // A newer build of the same tree: what an upgrade installs.
    let deb2 = build_deb_with(&target, &["--deb-revision", "2"]);
    assert_ne!(deb1, deb2, "the upgrade package must have another version");
    copy(&deb2, &s.join("deb2"));
    copy(&repo().join("tests/vm/system-agent.sh"), s);
    copy(&support::mkcache_script(), s);
    let receiver = Receiver::start();
    std::fs::write(s.join("hook-port"), receiver.port.to_string()).expect("write port");

    eprintln!(
        "guest evidence: {}/out (results, evidence/, journal.json)",
        s.display()
    );
    let boot = vm.boot(
        s,
        "system-agent.sh",
        Duration::from_secs(1500),
        Some(receiver.port),
    );
    let (ok, failed) = boot.results();
    eprintln!(
        "system agent VM: {} checks passed, {} failed, {:.0?}",
        ok.len(),
        failed.len(),
        boot.elapsed
    );
    // Every problem is collected and reported at once: one boot takes minutes.
    let mut problems: Vec<String> = failed.iter().map(|f| format!("guest check {f}")).collect();
    if boot.rc != Some(0) {
        problems.push(format!("the guest script ended with {:?}", boot.rc));
    }
    if ok.len() < 60 {
        problems.push(format!("only {} checks passed", ok.len()));
    }

    // Webhooks: both sinks delivered to a non-loopback address, carrying the UID, the path
    // and the root's `ls -ldL` line.
    let reqs = receiver.requests();
    for path in ["/slack", "/hook"] {
        let got: Vec<_> = reqs.iter().filter(|r| r.path == path).collect();
        if got.is_empty() {
            problems.push(format!("no request to {path}"));
        } else if !got.iter().all(|r| r.method == "POST") {
            problems.push(format!("{path}: not all POST: {got:?}"));
        } else if !got.iter().any(|r| {
            r.body.contains("/srv/held")
                && r.body.contains("held over its size limit")
                && r.body.contains("(min_age)")
                && r.body.contains("drwx")
        }) {
            problems.push(format!(
                "no {path} alert says /srv/held is held over its limit, by what, with its ls -ldL line: {got:?}"
            ));
        }
    }
    let hook: Vec<serde_json::Value> = reqs
        .iter()
        .filter(|r| r.path == "/hook")
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect();
    if !hook.iter().any(|v| v.to_string().contains("\"uid\"")) {
        problems.push(format!("no generic webhook carries a uid: {hook:?}"));
    }
    // The shared cache is brought under its limit by every sweep (and its permissions fixed):
    // what a sweep fixed is never alerted.
    for v in &hook {
        if v["cache"] == "/srv/gocache"
            && v["status"] == "firing"
            && (v["kind"] == "over_limit" || v["kind"] == "violations")
        {
            problems.push(format!("an alert for what a sweep fixed: {v}"));
        }
    }

    // The journal, as journald recorded it: every event kind this deployment produces,
    // with its fields, from the agent's own unit.
    let journal = boot.journal();
    let agent: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|e| e["_SYSTEMD_UNIT"] == "gocache-warden.service")
        .collect();
    for kind in [
        "startup",
        "sweep",
        "evict",
        "group-fix",
        "acl-fix",
        "violation",
        "unit-missing-gocache",
        "unit-drop-in",
        "reload",
        "reload-failed",
    ] {
        let Some(e) = agent.iter().find(|e| e["GOCACHE_WARDEN_ACTION"] == kind) else {
            problems.push(format!(
                "no {kind} event from gocache-warden.service in the journal"
            ));
            continue;
        };
        if e["SYSLOG_IDENTIFIER"] != "gocache-warden" {
            problems.push(format!(
                "{kind}: SYSLOG_IDENTIFIER is not gocache-warden: {e}"
            ));
        }
        if ["evict", "group-fix", "acl-fix", "violation"].contains(&kind)
            && !e["CACHE_PATH"].is_string()
        {
            problems.push(format!("{kind} without CACHE_PATH: {e}"));
        }
        if kind.starts_with("unit-") && !e["UNIT"].is_string() {
            problems.push(format!("{kind} without UNIT: {e}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\n{}",
        problems.len(),
        problems.join("\n"),
        boot.diagnostics()
    );
}
