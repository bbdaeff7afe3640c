//! The policy's group, setgid and ACLs on every entry as the real `getfacl` shows them, and a
//! read-only group grant failing members' builds as `check` warns.

use super::*;

/// After `enforce`, `getfacl` shows exactly the policy on every directory and file of an
/// `rwx` cache: entries go wrote, entries someone damaged (enforce repairs them), and entries
/// a member's build adds after enforce (default ACLs and setgid at work, before any repair).
#[test]
fn getfacl_shows_the_policy_on_every_entry() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (alice, bob) = members();
    let lab = Lab::new("root", "rwx", "");
    lab.enforce();
    let (hello, text_prog, bigcsv) = (program("hello"), program("text"), program("bigcsv"));
    must(&lab.build(&alice, &hello, 0), "alice's build");
    must(&lab.build(&bob, &text_prog, 0), "bob's build");
    // `go run` caches the executable (Go 1.24+): a directory holding an executable file.
    let d = lab.src(&bob, &text_prog);
    must(&lab.go(&bob, &d, &["run", "."]), "bob's go run");
    let depth = lab.cache.components().count() + 2;
    let exec = walk(&lab.cache)
        .into_iter()
        .filter(|p| p.components().count() == depth);
    assert!(
        exec.filter(|p| p.is_dir()).count() > 0,
        "go run cached no executable"
    );

    // Damage entries the way people do: ACL stripped, wrong group, other given access,
    // setgid and default ACL gone from a shard.
    let files = entry_files(&lab.cache);
    assert!(files.len() > 100, "only {} files in the cache", files.len());
    let f = |i: usize| files[i].0.display().to_string();
    let shard = files[0].0.parent().expect("shard").display().to_string();
    sh("setfacl", &["-b", &f(1)]);
    sh("chgrp", &["root", &f(2)]);
    sh("chmod", &["o+r", &f(3)]);
    sh("setfacl", &["-k", &shard]);
    sh("chmod", &["g-s", &shard]);
    let fixed = lab.enforce()["fixed"].clone();
    for v in ["acl", "group", "setgid", "default-acl", "other-access"] {
        let done = fixed[v].as_u64().is_some_and(|n| n > 0);
        assert!(done, "enforce did not fix {v}: {fixed}");
    }
    let (n1, d1) = assert_policy_acls(&lab, "after enforce");

    // New entries after enforce: bob builds a new program and runs it (which caches its
    // executable too). No enforce in between: default ACLs and setgid must do it alone.
    let before: BTreeSet<PathBuf> = entry_files(&lab.cache).into_iter().map(|e| e.0).collect();
    let d = lab.program(&bob, &bigcsv, 0);
    must(
        &lab.go(&bob, &d, &["build", "-o", "bigcsv", "."]),
        "bob's new build",
    );
    let o = lab.go(&bob, &d, &["run", "."]);
    must(&o, "bob's go run of the new program");
    let out = text(&o.stdout);
    assert!(out.contains(bigcsv.prints), "go run printed {out:?}");
    let new = entry_files(&lab.cache)
        .into_iter()
        .filter(|(p, _)| !before.contains(p));
    let new: Vec<_> = new.collect();
    let by_bob = new.iter().filter(|(_, m)| m.uid() == bob.uid).count();
    assert!(
        by_bob > 10,
        "bob's new build added only {by_bob} files of his"
    );
    let (n2, d2) = assert_policy_acls(&lab, "after bob's new build, before enforce ran again");

    // Alice builds on bob's new entries; then there is nothing left for enforce to fix.
    must(
        &lab.build(&alice, &bigcsv, 0),
        "alice building on bob's entries",
    );
    let again = lab.enforce()["fixed"].clone();
    assert_eq!(
        again,
        json!({}),
        "entries go made under the default ACLs needed fixing"
    );
    let took = t0.elapsed();
    eprintln!("policy ACLs on {n1} entries ({d1} dirs) after enforce (fixed {fixed}),");
    eprintln!(
        "on {n2} ({d2} dirs) with {} new files; took {took:.1?}",
        new.len()
    );
}

/// With `group_access = "r-x"` a member's build that must add an entry (here: one of his own
/// checkout, whose dependencies the cache's owner built) fails with "permission denied";
/// `check` says so before anyone tries.
#[test]
fn read_only_group_grant_fails_members_builds_as_check_warns() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (alice, bob) = members();
    let lab = Lab::new(alice.name, "r-x", "");
    let created = lab.enforce();
    assert_eq!(created["created"], true, "{created}");
    // Sources checked out a while ago, as usual: go caches an index of such a directory (not
    // of one changed in the last seconds), and that is an entry it must write.
    let hello = program("hello");
    let d = lab.checkout(&alice, &hello);
    must(
        &lab.go(&alice, &d, &["build", "-o", "hello", "."]),
        "alice (owner) building",
    );
    assert_policy_acls(&lab, "r-x cache after alice's build");

    let d = lab.checkout(&bob, &hello);
    let o = lab.go(&bob, &d, &["build", "-o", "hello", "."]);
    let err = text(&o.stderr);
    eprintln!("bob's build in the r-x cache: {}\n{err}", o.status);
    assert_eq!(
        o.status.code(),
        Some(1),
        "bob's build must fail with exit 1"
    );
    assert!(
        err.contains("permission denied"),
        "bob's build must be denied"
    );
    let cache = lab.cache.display().to_string();
    assert!(err.contains(&cache), "the error must name a cache entry");

    let o = lab.warden(&["check"]);
    let report = support::stdout(&o);
    assert_eq!(o.status.code(), Some(1), "check must fail:\n{report}");
    let line = report.lines().find(|l| l.contains("read-only-group-grant"));
    let line = line.unwrap_or_else(|| panic!("no read-only-group-grant in:\n{report}"));
    let error = line.trim_start().starts_with("error");
    assert!(error, "not an error: {line}");
    let says = line.contains(GROUP) && line.contains("permission denied");
    assert!(says, "the finding must say members' builds fail: {line}");

    let o = lab.warden(&["check", "--json"]);
    let v = support::json(&o);
    assert_eq!(o.status.code(), Some(1), "{v}");
    let verdict = (&v["exit_code"], &v["compliant"]);
    assert_eq!(verdict, (&json!(1), &json!(false)), "{v}");
    let findings = v["caches"][0]["findings"].as_array().expect("findings");
    let f = findings
        .iter()
        .find(|f| f["kind"] == "read-only-group-grant");
    let f = f.unwrap_or_else(|| panic!("no read-only-group-grant finding: {v}"));
    let sev = (&f["severity"], &f["auto_fix"]);
    assert_eq!(sev, (&json!("error"), &json!(false)), "{f}");
    let message = f["message"].as_str().unwrap_or_default();
    assert!(message.contains("permission denied"), "{f}");
    eprintln!("r-x test took {:.1?}", t0.elapsed());
}
