//! Policy loading through the real binary: every invalid policy names FILE:LINE:COL and exits
//! 2; valid drop-ins merge in filename order; `policy cat` shows the sources.

mod support;

use support::{run, stderr, stdout, tempdir};

/// (file name, contents, expected "LINE:COL: message start")
const INVALID: &[(&str, &str, &str)] = &[
    (
        "verify-rate.toml",
        "[agent]\nverify_rate = \"fast\"\n",
        "2:15: verify_rate \"fast\" must be bytes per second",
    ),
    (
        "syntax.toml",
        "[cache.x\npath = \"/a\"\n",
        "1:9: unclosed table",
    ),
    (
        "unknown-key.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_sise = \"1G\"\n",
        "3:1: unknown field `max_sise`",
    ),
    (
        "unknown-table.toml",
        "[caches.x]\npath = \"/srv/c\"\n",
        "1:2: unknown field `caches`",
    ),
    (
        "bad-size.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_size = \"ten\"\n",
        "3:12: invalid size \"ten\"",
    ),
    (
        "zero-size.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_size = 0\n",
        "3:12: max_size must be greater than zero",
    ),
    (
        "bad-percent.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_size = \"150%\"\n",
        "3:12: percentage \"150%\" must be above 0% and at most 100%",
    ),
    (
        "bad-duration.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_age = \"soon\"\n",
        "3:11: invalid duration \"soon\"",
    ),
    (
        "relative.toml",
        "[cache.x]\npath = \"rel/c\"\n",
        "2:8: path \"rel/c\" must be an absolute path",
    ),
    (
        "dotdot.toml",
        "[cache.x]\npath = \"/srv/../c\"\n",
        "2:8: path \"/srv/../c\" must not contain \"..\"",
    ),
    (
        "no-path.toml",
        "[cache.x]\nmax_size = \"1G\"\n",
        "2:12: cache \"x\" has no path",
    ),
    (
        "unknown-group.toml",
        "[cache.x]\npath = \"/srv/c\"\ngroup = \"gwt-no-such-group\"\n",
        "3:9: unknown group \"gwt-no-such-group\"",
    ),
    (
        "unknown-owner.toml",
        "[cache.x]\npath = \"/srv/c\"\nowner = \"gwt-no-such-user\"\n",
        "3:9: unknown user \"gwt-no-such-user\"",
    ),
    (
        "low-water.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_size = \"1G\"\nlow_water = \"120%\"\n",
        "4:13: percentage \"120%\" must be above 0% and at most 100%",
    ),
    (
        "low-water-alone.toml",
        "[cache.x]\npath = \"/srv/c\"\nlow_water = \"80%\"\n",
        "3:13: low_water has no effect without max_size",
    ),
    (
        "ages.toml",
        "[cache.x]\npath = \"/srv/c\"\nmax_age = \"1d\"\nmin_age = \"2d\"\n",
        "4:11: min_age (2days) is longer than max_age (1day)",
    ),
    (
        "access-no-group.toml",
        "[cache.x]\npath = \"/srv/c\"\ngroup_access = \"rwx\"\n",
        "3:16: group_access needs `group`",
    ),
    (
        "setgid-no-group.toml",
        "[cache.x]\npath = \"/srv/c\"\nsetgid = true\n",
        "3:10: setgid needs a group",
    ),
    (
        "bad-access.toml",
        "[cache.x]\npath = \"/srv/c\"\nother = \"rw\"\n",
        "3:9: invalid access \"rw\"",
    ),
    (
        "bad-kind.toml",
        "[cache.x]\npath = \"/srv/c\"\nkind = \"go\"\n",
        "3:8: unknown cache kind \"go\"",
    ),
    (
        "dup-path.toml",
        "[cache.a]\npath = \"/srv/c\"\n[cache.b]\npath = \"/srv/c\"\n",
        "4:8: cache \"b\" has the same path as cache \"a\"",
    ),
    (
        "trim-module.toml",
        "[cache.m]\npath = \"/srv/m\"\nkind = \"module\"\nrewrite_trim = true\n",
        "4:16: rewrite_trim applies to build caches only",
    ),
    (
        "create-auto.toml",
        "[cache.build]\ncreate = true\n",
        "2:10: create is for fixed paths",
    ),
    (
        "dropin-no-value.toml",
        "[units.svc]\nremediation = \"drop-in\"\n",
        "2:15: remediation \"drop-in\" needs `gocache`",
    ),
    (
        "bad-glob.toml",
        "[units.svc]\nmatch = [\"[x.service\"]\n",
        "2:9: invalid unit pattern \"[x.service\"",
    ),
    (
        "bad-unit-value.toml",
        "[units.svc]\ngocache = \"cache/go\"\n",
        "2:11: gocache \"cache/go\" must be an absolute path",
    ),
    (
        "bad-listen.toml",
        "[metrics]\nlisten = \"localhost\"\n",
        "2:10: invalid listen address \"localhost\"",
    ),
    (
        "alert-inline-url.toml",
        "[alert.ops]\nkind = \"slack\"\n",
        "2:8: alert \"ops\" needs `url_file` or `credential`",
    ),
    (
        "type.toml",
        "[cache.x]\npath = \"/srv/c\"\nsetgid = \"yes\"\n",
        "3:10: invalid type",
    ),
];

#[test]
fn every_invalid_policy_names_file_line_col_and_exits_2() {
    let d = tempdir();
    let mut failures = Vec::new();
    for (name, text, want) in INVALID {
        let p = d.path().join(name);
        std::fs::write(&p, text).expect("write policy");
        let o = run(
            ["policy", "validate"]
                .iter()
                .map(|s| s.to_string())
                .chain([p.display().to_string()]),
            &[],
        );
        let err = stderr(&o);
        let expect = format!("error: {}:{want}", p.display());
        if o.status.code() != Some(2) || !err.lines().any(|l| l.starts_with(&expect)) {
            failures.push(format!(
                "{name}: exit {:?}\n  want prefix: {expect}\n  got: {err}",
                o.status.code()
            ));
        }
        // The same file through `check` is the same error, same exit code.
        let c = run(
            [
                "--policy".to_string(),
                p.display().to_string(),
                "check".into(),
            ],
            &[],
        );
        if c.status.code() != Some(2) || !stderr(&c).contains(&expect) {
            failures.push(format!(
                "{name} via check: exit {:?}: {}",
                c.status.code(),
                stderr(&c)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn errors_in_a_drop_in_directory_name_the_right_file_and_all_are_reported() {
    let d = tempdir();
    std::fs::write(
        d.path().join("10-ok.toml"),
        "[cache.x]\npath = \"/srv/c\"\n",
    )
    .expect("write");
    std::fs::write(
        d.path().join("20-bad.toml"),
        "# comment\n[cache.x]\nmax_age = \"5 parsecs\"\nmin_age = \"1z\"\n",
    )
    .expect("write");
    let o = run(
        [
            "policy".to_string(),
            "validate".into(),
            d.path().display().to_string(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let bad = d.path().join("20-bad.toml");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:3:11: invalid duration", bad.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:4:11: invalid duration", bad.display())),
        "both errors at once: {err}"
    );
}

#[test]
fn drop_ins_merge_in_filename_order_and_cat_shows_sources() {
    let d = tempdir();
    std::fs::write(
        d.path().join("20-later.toml"),
        "[cache.build]\nmax_size = \"20GiB\"\n",
    )
    .expect("write");
    std::fs::write(
        d.path().join("10-first.toml"),
        "[cache.build]\nmax_size = \"5GiB\"\nmax_age = \"7d\"\n",
    )
    .expect("write");
    std::fs::write(d.path().join("ignored.conf"), "not toml at all [").expect("write");
    let o = run(
        [
            "--policy".to_string(),
            d.path().display().to_string(),
            "policy".into(),
            "cat".into(),
            "--effective".into(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let build = v["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .find(|c| c["name"] == "build")
        .expect("build cache")
        .clone();
    assert_eq!(
        build["max_size"]["bytes"],
        20u64 << 30,
        "the later file wins per field"
    );
    assert_eq!(
        build["max_age"], "7days",
        "fields the later file does not set are kept"
    );
    assert_eq!(build["min_age"], "1day", "embedded default fills the rest");

    let o = run(
        [
            "--policy".to_string(),
            d.path().display().to_string(),
            "policy".into(),
            "cat".into(),
        ],
        &[],
    );
    let text = stdout(&o);
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# ") && (l.contains(".toml")))
        .collect();
    assert_eq!(headers.len(), 3, "{text}");
    assert!(headers[0].contains("<embedded>/policy/default.toml"));
    assert!(
        headers[1].ends_with("10-first.toml") && headers[2].ends_with("20-later.toml"),
        "{headers:?}"
    );
}

#[test]
fn shipped_example_policies_validate() {
    support::require_root();
    support::ensure_group("builders");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy");
    for f in [
        "default.toml",
        "single-user.toml",
        "shared-build-server.toml",
    ] {
        let p = root.join(f);
        let o = run(
            [
                "policy".to_string(),
                "validate".into(),
                p.display().to_string(),
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{f}: {}", stderr(&o));
    }
}

#[test]
fn user_scope_reads_xdg_config_drop_ins() {
    let d = tempdir();
    let dir = d.path().join("gocache-warden/policy.d");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("50-me.toml"),
        "[cache.build]\nmax_size = \"3GiB\"\n",
    )
    .expect("write");
    let o = run(
        ["--scope", "user", "policy", "cat", "--effective"],
        &[("XDG_CONFIG_HOME", d.path().to_str().expect("utf8"))],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["caches"][0]["max_size"]["bytes"], 3u64 << 30);
    assert!(
        v["sources"][1]
            .as_str()
            .expect("source")
            .ends_with("50-me.toml")
    );
}
