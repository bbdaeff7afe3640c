//! Payloads built from a real cache root (Slack, JSON, compared with `ls`/`getfacl`), and
//! undelivered alerts handed to the dispatcher that replaces the old one.

use super::*;
// ---- payloads built from a real cache root ----

/// A setgid shared-cache root owned by nobody:nogroup with an extended and default ACL
/// whose mask limits a grant (so getfacl prints `#effective:`).
fn shared_root() -> tempfile::TempDir {
    let setfacl = tool("setfacl", "acl");
    let dir = tempfile::Builder::new()
        .prefix("gocache-root-")
        .tempdir()
        .unwrap();
    let p = dir.path();
    std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let (ok, out, err) = run(Command::new(&setfacl)
        .args([
            "-m",
            "u:daemon:rwx,g::rwx,m::r-x,d:u::rwx,d:g::rwx,d:u:daemon:rwx,d:m::rwx,d:o::---",
        ])
        .arg(p));
    assert!(ok, "setfacl: {out}{err}");
    dir
}

fn root_alert(root: &Path) -> Alert {
    let desc = describe_root(root).unwrap();
    let mut snap = snapshot(root.to_str().unwrap(), CacheKind::Build, 3);
    snap.violations.clear();
    let obs = Observation {
        host: "build01".into(),
        caches: vec![CacheObservation {
            snapshot: snap,
            last_sweep: Some(sweep(root.to_str().unwrap(), CacheKind::Build, true)),
            root: Some(desc),
            units: vec![UnitRef {
                unit: "ci-runner.service".into(),
                uid: 65534,
                user: "nobody".into(),
            }],
        }],
        units_missing_gocache: vec![],
    };
    let mut tracker = AlertTracker::new(Duration::from_secs(3600));
    let sent = tracker.update(
        evaluate(&obs, &Thresholds::default()),
        std::time::SystemTime::now(),
    );
    sent.into_iter()
        .find(|a| a.kind == AlertKind::OverLimit)
        .unwrap()
}

#[test]
fn root_description_matches_ls_and_getfacl() {
    let dir = shared_root();
    let p = dir.path();
    let desc = describe_root(p).unwrap();
    let ls = tool("ls", "coreutils");
    let (ok, out, err) = run(Command::new(ls)
        .args(["-ldL", "--time-style=long-iso"])
        .arg(p));
    assert!(ok, "{err}");
    assert_eq!(desc.ls_line, out.trim_end());
    assert!(desc.ls_line.starts_with("drwxr-s---+ "), "{}", desc.ls_line);
    let (ok, out, err) = run(Command::new(tool("getfacl", "acl")).arg("-p").arg(p));
    assert!(ok, "{err}");
    assert_eq!(desc.acl_text, out);
    assert!(
        desc.acl_text.contains("#effective:r-x"),
        "{}",
        desc.acl_text
    );
    assert_eq!(
        (desc.uid, desc.user.as_str(), desc.group.as_str(), desc.mode),
        (65534, "nobody", "nogroup", 0o2750)
    );

    // A plain directory: no `+`, no flags line, no default ACL.
    let plain = tempfile::tempdir().unwrap();
    let d = describe_root(plain.path()).unwrap();
    let (_, out, _) = run(Command::new(tool("ls", "coreutils"))
        .args(["-ldL", "--time-style=long-iso"])
        .arg(plain.path()));
    assert_eq!(d.ls_line, out.trim_end());
    let (_, out, _) = run(Command::new(tool("getfacl", "acl"))
        .arg("-p")
        .arg(plain.path()));
    assert_eq!(d.acl_text, out);
}

#[test]
fn slack_payload_carries_every_field() {
    let dir = shared_root();
    let path = dir.path().to_str().unwrap().to_string();
    let a = root_alert(dir.path());
    let root = a.root.clone().unwrap();
    let p = slack_payload(&a);

    let text = p["text"].as_str().unwrap();
    assert!(
        text.starts_with("[FIRING] Go cache over its size limit on build01: "),
        "{text}"
    );
    let blocks = p["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(
        blocks[0]["text"]["text"],
        "FIRING: Go cache over its size limit"
    );
    assert!(
        blocks[1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "{path} is held over its size limit: 12.0 GiB of 10.0 GiB (120%); held by 2.0 GiB used in the last 1d 0h (min_age)"
            ))
    );
    let fields: Vec<&str> = blocks[2]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(fields[0], "*Host*\nbuild01");
    assert_eq!(fields[1], format!("*Cache*\n`{path}` (build)"));
    assert_eq!(fields[2], "*User*\nnobody (uid 65534)");
    assert_eq!(fields[3], "*Size / limit*\n12.0 GiB / 10.0 GiB (120%)");
    assert!(fields[4].starts_with("*Since*\n20"), "{}", fields[4]);
    assert_eq!(fields.len(), 5, "{fields:?}");
    let section = |title: &str| {
        blocks
            .iter()
            .filter_map(|b| b["text"]["text"].as_str())
            .find(|t| t.starts_with(&format!("*{title}*\n")))
            .unwrap_or_else(|| panic!("no {title} block in {p:#}"))
            .to_string()
    };
    assert_eq!(
        section("Cache root"),
        format!("*Cache root*\n```{}```", root.ls_line)
    );
    assert!(
        root.ls_line.starts_with("drwxr-s---+ ") && root.ls_line.contains(" nobody nogroup "),
        "{}",
        root.ls_line
    );
    let acl = section("ACL");
    assert_eq!(acl, format!("*ACL*\n```{}```", root.acl_text.trim_end()));
    for line in [
        &format!("# file: {path}"),
        "# owner: nobody",
        "# flags: -s-",
        "user:daemon:rwx",
        "#effective:r-x",
        "default:user:daemon:rwx",
        "default:mask::rwx",
    ] {
        assert!(acl.contains(line), "ACL block lacks {line:?}: {acl}");
    }
    assert!(section("Top users").contains("• user2 (uid 1002): 2.9 MiB"));
    assert_eq!(
        section("Units"),
        "*Units*\n• `ci-runner.service` (nobody, uid 65534)"
    );
    let did = section("What the agent did");
    assert!(
        did.contains("evicted 3221225472 bytes in 900 entries by size")
            && did.contains("fixed mode on 4 paths"),
        "{did}"
    );
    let context = blocks.last().unwrap();
    assert_eq!(context["type"], "context");
    assert!(
        context["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("over_limit:{path}"))
    );

    let mut resolved = a.clone();
    resolved.status = AlertStatus::Resolved;
    let r = slack_payload(&resolved);
    assert_eq!(
        r["blocks"][0]["text"]["text"],
        "RESOLVED: Go cache over its size limit"
    );
}

#[test]
fn json_webhook_posts_the_alert_document() {
    let _ = logs();
    let dir = shared_root();
    let a = root_alert(dir.path());
    let srv = server(vec![]);
    let sink = WebhookSink::new(
        "json",
        WebhookFormat::Json,
        secret_url(srv.addr),
        Duration::from_secs(2),
        None,
    );
    let d = Dispatcher::start(vec![Box::new(sink)], fast_policy(), 4, None).unwrap();
    d.enqueue(a.clone());
    let seen = srv.wait_for(1, Duration::from_secs(5));
    assert!(d.shutdown(Duration::from_secs(5)));
    let v: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(v["kind"], "over_limit");
    assert_eq!(v["status"], "firing");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["host"], "build01");
    assert_eq!(v["cache"], dir.path().to_str().unwrap());
    assert_eq!(v["cache_kind"], "build");
    assert_eq!(v["uid"], 65534);
    assert_eq!(v["user"], "nobody");
    assert_eq!(v["size_bytes"], 12 * GIB);
    assert_eq!(v["limit_bytes"], 10 * GIB);
    assert_eq!(
        v["root"]["ls_line"],
        a.root.as_ref().unwrap().ls_line.as_str()
    );
    assert_eq!(
        v["root"]["acl_text"],
        a.root.as_ref().unwrap().acl_text.as_str()
    );
    assert_eq!(v["units"][0]["unit"], "ci-runner.service");
    assert_eq!(v["actions"][0], "evicted 1000 bytes in 2 entries by age");
    assert_eq!(v["id"], format!("over_limit:{}", dir.path().display()));
}

/// Stopping a dispatcher (a reload that changes the sinks) hands back what it had not
/// delivered — an alert waiting between retries and one still queued behind it — with the
/// sink's name, and the replacement delivers both.
#[test]
fn undelivered_alerts_survive_a_dispatcher_replacement() {
    let _ = logs();
    let old_srv = server(vec![Reply::Fail500]);
    let slow_retry = RetryPolicy {
        initial_backoff: Duration::from_secs(30),
        ..fast_policy()
    };
    let sink = |addr| {
        WebhookSink::new(
            "handover",
            WebhookFormat::Json,
            secret_url(addr),
            Duration::from_secs(2),
            None,
        )
    };
    let d = Dispatcher::start(vec![Box::new(sink(old_srv.addr))], slow_retry, 4, None).unwrap();
    d.enqueue(test_alert("retrying"));
    d.enqueue(test_alert("queued"));
    assert_eq!(old_srv.wait_for(1, Duration::from_secs(10)).len(), 1);
    let (ended, left) = d.stop_and_take(Duration::from_secs(5));
    assert!(ended, "the worker waiting in its backoff did not end");
    let ids: Vec<&str> = left
        .iter()
        .map(|(s, a)| {
            assert_eq!(s, "handover");
            a.id.as_str()
        })
        .collect();
    assert_eq!(ids, ["over_limit:/srv/retrying", "over_limit:/srv/queued"]);

    let new_srv = server(vec![]);
    let d = Dispatcher::start(vec![Box::new(sink(new_srv.addr))], fast_policy(), 4, None).unwrap();
    for (s, a) in left {
        assert!(d.enqueue_to(&s, a));
    }
    let seen = new_srv.wait_for(2, Duration::from_secs(10));
    assert!(d.shutdown(Duration::from_secs(5)));
    let paths: Vec<bool> = seen
        .iter()
        .map(|s| s.body.contains("/srv/retrying") || s.body.contains("/srv/queued"))
        .collect();
    assert_eq!(paths, [true, true], "{seen:?}");
    assert_eq!(old_srv.seen().len(), 1, "the old server was tried again");
}
