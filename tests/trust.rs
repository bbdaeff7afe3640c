//! The trust model in the policy (issue #14): `trusted_writers` is validated with its place
//! in the file, `check` says what a writable group grant means and recommends the r-x +
//! cache program design, and unit rules carry GOCACHEPROG into their drop-ins.

mod support;

use serde_json::Value;
use support::{json, mkcache, policy, run, stderr, stdout, tempdir};

const GROUP: &str = "gwc-trust-builders";
const WRITER: &str = "gwc-writer";

fn check(p: &std::path::Path) -> (i32, Value) {
    let o = run(
        ["--policy", p.to_str().expect("utf-8"), "check", "--json"],
        &[],
    );
    (o.status.code().unwrap_or(-1), json(&o))
}

fn finding<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v["caches"][0]["findings"]
        .as_array()?
        .iter()
        .find(|f| f["kind"] == kind)
}

/// A cache whose group, setgid and ACLs already match `access`, so the only findings left
/// are about trust.
fn compliant_cache(d: &std::path::Path, access: &str) -> std::path::PathBuf {
    let cache = d.join("cache");
    mkcache(&cache, 10, 3);
    let p = policy(
        d,
        "fix.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\ngroup = \"{GROUP}\"\ngroup_access = \"{access}\"\nother = \"---\"\n",
            cache.display()
        ),
    );
    let o = run(["--policy", p.to_str().expect("utf-8"), "enforce"], &[]);
    assert!(o.status.success(), "enforce: {}", stderr(&o));
    std::fs::remove_file(&p).expect("rm fix policy");
    cache
}

#[test]
fn writable_group_is_said_to_alter_members_builds_and_read_only_with_writers_is_the_design() {
    support::require_root();
    support::ensure_group(GROUP);
    support::ensure_user(WRITER, &[]);
    let d = tempdir();
    let cache = compliant_cache(d.path(), "rwx");
    // rwx, no trusted writers: said plainly (info: existing rwx sites stay compliant).
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\ngroup = \"{GROUP}\"\ngroup_access = \"rwx\"\nother = \"---\"\n",
            cache.display()
        ),
    );
    let (code, v) = check(&p);
    let f = finding(&v, "group-can-alter-builds").unwrap_or_else(|| panic!("{v}"));
    let msg = f["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("every member can alter every member's builds"),
        "{f}"
    );
    assert!(f["fix"].as_str().unwrap_or_default().contains("gocache-warden cacheprog"));
    assert_eq!((code, &f["severity"]), (0, &Value::from("info")), "{v}");
    let text = stdout(&run(["--policy", p.to_str().unwrap(), "check"], &[]));
    assert!(text.contains("every member can alter every member's builds"), "{text}");

    // rwx although trusted writers are declared: a contradiction, a warning.
    std::fs::write(
        &p,
        format!(
            "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n[cache.t]\npath = \"{}\"\ngroup = \"{GROUP}\"\ngroup_access = \"rwx\"\nother = \"---\"\ntrusted_writers = [\"{WRITER}\"]\n",
            cache.display()
        ),
    )
    .expect("write policy");
    let (code, v) = check(&p);
    let f = finding(&v, "group-can-alter-builds").unwrap_or_else(|| panic!("{v}"));
    assert_eq!((code, &f["severity"]), (1, &Value::from("warning")), "{v}");
    assert!(f["message"].as_str().unwrap_or_default().contains(WRITER));
}

#[test]
fn read_only_group_with_trusted_writers_is_compliant_and_without_them_still_an_error() {
    support::require_root();
    support::ensure_group(GROUP);
    support::ensure_user(WRITER, &[]);
    let d = tempdir();
    let cache = compliant_cache(d.path(), "r-x");
    let body = |writers: &str| {
        format!(
            "[cache.t]\npath = \"{}\"\ngroup = \"{GROUP}\"\ngroup_access = \"r-x\"\nother = \"---\"\n{writers}",
            cache.display()
        )
    };
    let p = policy(
        d.path(),
        "p.toml",
        &body(&format!("trusted_writers = [\"{WRITER}\", \"@{GROUP}\"]\n")),
    );
    let (code, v) = check(&p);
    assert_eq!(code, 0, "r-x with trusted writers is the recommended design: {v}");
    let f = finding(&v, "read-only-shared").unwrap_or_else(|| panic!("{v}"));
    let msg = f["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("gocache-warden cacheprog") && msg.contains(&format!("@{GROUP}")),
        "{f}"
    );
    assert!(finding(&v, "read-only-group-grant").is_none(), "{v}");

    let p = policy(d.path(), "p.toml", &body(""));
    let (code, v) = check(&p);
    assert_eq!(code, 1, "{v}");
    let f = finding(&v, "read-only-group-grant").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(f["severity"], "error");
    let fix = f["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("trusted_writers") && fix.contains("cacheprog"), "{f}");
}

#[test]
fn trusted_writers_and_gocacheprog_are_validated_with_their_place() {
    let d = tempdir();
    let bad = [
        (
            "[cache.t]\npath = \"/srv/x\"\ntrusted_writers = [\"gwc-no-such-user\"]\n",
            "unknown user \"gwc-no-such-user\"",
        ),
        (
            "[cache.t]\npath = \"/srv/x\"\ntrusted_writers = [\"@gwc-no-such-group\"]\n",
            "unknown group \"gwc-no-such-group\"",
        ),
        (
            "[cache.t]\npath = \"/srv/x\"\ntrusted_writers = []\n",
            "trusted_writers is empty",
        ),
        (
            "[cache.t]\npath = \"/srv/x\"\nkind = \"module\"\ntrusted_writers = [\"root\"]\n",
            "applies to build caches",
        ),
        (
            "[units.u]\ngocacheprog = \"gocache-warden cacheprog\"\n",
            "set `gocache` too",
        ),
    ];
    for (body, want) in bad {
        let p = d.path().join("bad.toml");
        std::fs::write(&p, body).expect("write");
        let o = run(["policy", "validate", p.to_str().expect("utf-8")], &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(want) && err.contains("bad.toml:"), "{body}: {err}");
    }
    let p = d.path().join("good.toml");
    std::fs::write(
        &p,
        "[cache.t]\npath = \"/srv/x\"\ntrusted_writers = [\"root\", \"@root\"]\n\
         [units.u]\ngocache = \"%h/.cache/go-build\"\n\
         gocacheprog = \"/usr/bin/gocache-warden cacheprog\"\nremediation = \"drop-in\"\n",
    )
    .expect("write");
    let o = run(["policy", "validate", p.to_str().expect("utf-8")], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        ["--policy", p.to_str().expect("utf-8"), "policy", "cat", "--effective"],
        &[],
    );
    let v = json(&o);
    let c = v["caches"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "t"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(c["trusted_writers"][0]["kind"], "user");
    assert_eq!(c["trusted_writers"][1]["kind"], "group");
    assert_eq!(v["units"][0]["gocacheprog"], "/usr/bin/gocache-warden cacheprog");
}
