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
    assert!(
        f["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("gocache-warden cacheprog")
    );
    assert_eq!((code, &f["severity"]), (0, &Value::from("info")), "{v}");
    let text = stdout(&run(["--policy", p.to_str().unwrap(), "check"], &[]));
    assert!(
        text.contains("every member can alter every member's builds"),
        "{text}"
    );

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
    assert_eq!(
        code, 0,
        "r-x with trusted writers is the recommended design: {v}"
    );
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
    assert!(
        fix.contains("trusted_writers") && fix.contains("cacheprog"),
        "{f}"
    );
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
        assert!(
            err.contains(want) && err.contains("bad.toml:"),
            "{body}: {err}"
        );
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
        [
            "--policy",
            p.to_str().expect("utf-8"),
            "policy",
            "cat",
            "--effective",
        ],
        &[],
    );
    let v = json(&o);
    let c = v["caches"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "t"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(c["trusted_writers"][0]["kind"], "user");
    assert_eq!(c["trusted_writers"][1]["kind"], "group");
    assert_eq!(
        v["units"][0]["gocacheprog"],
        "/usr/bin/gocache-warden cacheprog"
    );
}

// --- check --verify and enforce --verify ----------------------------------------------------

use base64::Engine as _;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn sha256(b: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `cache` with `n` entries through `gocache-warden cacheprog` itself (real SHA-256
/// names, Go's layout); returns each entry's (action record path, output path, body).
/// One entry [`populate`] wrote: its action record, its output and the output's bytes.
type Written = (PathBuf, PathBuf, Vec<u8>);

/// A fresh directory holding a cache of `n` entries written by the cache program
/// ([`populate`]): (the directory, the cache, the entries).
fn populated(n: u32) -> (tempfile::TempDir, PathBuf, Vec<Written>) {
    let d = tempdir();
    let cache = d.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    let e = populate(&cache, n);
    (d, cache, e)
}

/// Tampers with an entry's output as an attacker would: same size, one byte flipped, used an
/// hour ago (past any settle time).
fn tamper(x: &Written) {
    let mut b = x.2.clone();
    b[1] ^= 0x40;
    std::fs::write(&x.1, &b).expect("tamper");
    support::age(&x.1, 3600);
}

fn populate(cache: &Path, n: u32) -> Vec<Written> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut input = String::new();
    let mut out = Vec::new();
    for i in 0..n {
        let body: Vec<u8> = (0..(1000 + i * 977)).map(|j| (j * 7 + i) as u8).collect();
        let a = sha256(&i.to_le_bytes());
        let o = sha256(&body);
        input.push_str(&format!(
            "{{\"ID\":{},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{}}}\n\n\"{}\"\n",
            i + 1,
            b64.encode(a),
            b64.encode(o),
            body.len(),
            b64.encode(&body)
        ));
        out.push((
            cache.join(format!("{:02x}/{}-a", a[0], hex(&a))),
            cache.join(format!("{:02x}/{}-d", o[0], hex(&o))),
            body,
        ));
    }
    input.push_str(&format!("{{\"ID\":{},\"Command\":\"close\"}}\n\n", n + 1));
    let mut child = std::process::Command::new(support::bin())
        .args(["cacheprog", "--own", cache.to_str().expect("utf-8")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cacheprog");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut resp = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut resp)
        .expect("read");
    writer.join().expect("writer").expect("write requests");
    assert!(child.wait().expect("wait").success());
    assert_eq!(
        resp.lines().filter(|l| l.contains("DiskPath")).count(),
        n as usize,
        "{resp}"
    );
    out
}

fn verify_policy(d: &Path, cache: &Path, untrusted: &str) -> PathBuf {
    policy(
        d,
        "v.toml",
        &format!(
            "[cache.v]\npath = \"{}\"\ntrusted_writers = [\"root\"]\nuntrusted = \"{untrusted}\"\n",
            cache.display()
        ),
    )
}

fn verify_run(p: &Path, cmd: &str) -> (i32, Value) {
    let o = run(
        [
            "--policy",
            p.to_str().expect("utf-8"),
            cmd,
            "--verify",
            "--json",
        ],
        &[],
    );
    (o.status.code().unwrap_or(-1), json(&o))
}

#[test]
fn verify_finds_tampered_untrusted_and_symlinked_entries_and_enforce_evicts_or_quarantines() {
    support::require_root();
    let writer = support::ensure_user(WRITER, &[]);
    let (d, cache, e) = populated(12);
    // 0: same size, other bytes. 1: output owned by someone outside trusted_writers.
    // 2: action record of an untrusted owner. 3: a symlink under an output's name.
    // 4: a good executable (Go ≥ 1.24's `-d/` directory holding one file). 5: a tampered one.
    let mut b = e[0].2.clone();
    b[10] ^= 0xff;
    std::fs::write(&e[0].1, &b).expect("tamper");
    std::os::unix::fs::lchown(&e[1].1, Some(writer), None).expect("chown");
    std::os::unix::fs::lchown(&e[2].0, Some(writer), None).expect("chown");
    let passwd = support::sentinel(Path::new("/etc/passwd"));
    std::fs::remove_file(&e[3].1).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", &e[3].1).expect("symlink");
    for (i, content) in [(4, e[4].2.clone()), (5, b"not the program".to_vec())] {
        std::fs::remove_file(&e[i].1).expect("rm");
        std::fs::create_dir(&e[i].1).expect("mkdir exec");
        std::fs::write(e[i].1.join("prog"), content).expect("write exec");
    }
    let p = verify_policy(d.path(), &cache, "evict");
    let (code, v) = verify_run(&p, "check");
    assert_eq!(code, 1, "{v}");
    let tampered = finding(&v, "tampered-output").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        tampered["count"], 3,
        "0, the symlink 3 and the executable 5: {tampered}"
    );
    assert_eq!(tampered["auto_fix"], true);
    let untrusted = finding(&v, "untrusted-entry").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(untrusted["count"], 2, "{untrusted}");
    let verified = finding(&v, "verified").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        verified["count"], 10,
        "12 outputs, less the untrusted and the symlink"
    );
    assert_eq!(
        support::sentinel(Path::new("/etc/passwd")),
        passwd,
        "never followed"
    );

    // Evict: exactly the five bad entries go; the good executable and the rest stay.
    let (code, v) = verify_run(&p, "enforce");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["verify"][0]["verified"]["evicted"], 5, "{v}");
    assert!(!e[0].1.exists() && !e[1].1.exists() && !e[2].0.exists());
    assert!(std::fs::symlink_metadata(&e[3].1).is_err() && !e[5].1.exists());
    assert!(e[4].1.join("prog").is_file(), "the good executable stays");
    for x in &e[6..] {
        assert_eq!(std::fs::read(&x.1).expect("kept"), x.2);
        assert!(x.0.is_file());
    }
    assert_eq!(support::sentinel(Path::new("/etc/passwd")), passwd);
    let (code, v) = verify_run(&p, "check");
    assert_eq!(code, 0, "clean after enforce: {v}");

    // Quarantine: moved inside the cache, content kept for inspection, not served any more.
    let mut b = e[6].2.clone();
    b[0] ^= 1;
    std::fs::write(&e[6].1, &b).expect("tamper");
    let ino = std::fs::metadata(&e[6].1).expect("stat").ino();
    let p = verify_policy(d.path(), &cache, "quarantine");
    let (code, v) = verify_run(&p, "enforce");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["verify"][0]["verified"]["quarantined"], 1, "{v}");
    let name = e[6]
        .1
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let q = cache
        .join("gocache-warden-quarantine")
        .join(format!("{}-{name}", &name[..2]));
    assert_eq!(std::fs::read(&q).expect("in quarantine"), b);
    assert_eq!(
        std::fs::metadata(&q).expect("stat").ino(),
        ino,
        "moved, not copied"
    );
    assert!(!e[6].1.exists());
    let qmode = std::fs::metadata(cache.join("gocache-warden-quarantine"))
        .expect("q")
        .mode();
    assert_eq!(qmode & 0o777, 0o700, "the quarantine is private");
}

/// Issue #22: Go's own leftovers are not tampering. A zero-length output (what cmd/go
/// truncates a failed write to) and one cut short (not the size its action record gives:
/// cmd/go misses on both) are `incomplete-output`, a warning, and are evicted rather than
/// quarantined; an output met mid-write (cmd/go writes all but the last byte, then the last
/// one) is looked at again once still and then found fine; only a same-size output with
/// other bytes is `tampered-output`.
#[test]
fn verify_tells_gos_own_leftovers_from_tampering() {
    support::require_root();
    let (d, cache, e) = populated(6);
    std::fs::write(&e[0].1, b"").expect("truncate to 0");
    std::fs::write(&e[1].1, &e[1].2[..e[1].2.len() / 2]).expect("cut short");
    let mut b = e[2].2.clone();
    b[3] ^= 0x20;
    std::fs::write(&e[2].1, &b).expect("tamper");
    // Mid-write: all but the last byte now, the last byte a second later.
    let (path, body) = (e[3].1.clone(), e[3].2.clone());
    std::fs::write(&path, &body[..body.len() - 1]).expect("all but the last byte");
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&body[body.len() - 1..]).expect("last byte");
    });
    let p = verify_policy(d.path(), &cache, "quarantine");
    let (code, v) = verify_run(&p, "check");
    finisher.join().expect("finisher");
    assert_eq!(code, 1, "the tampered output is an error: {v}");
    let tampered = finding(&v, "tampered-output").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(tampered["count"], 1, "only the same-size one: {tampered}");
    let incomplete = finding(&v, "incomplete-output").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(incomplete["count"], 2, "{incomplete}");
    assert_eq!(incomplete["severity"], "warning", "{incomplete}");
    assert!(
        std::fs::read(&e[3].1).expect("mid-write one") == e[3].2,
        "the mid-write output was finished by its writer"
    );

    // Enforce: the tampered one into the quarantine, Go's leftovers evicted.
    let (code, v) = verify_run(&p, "enforce");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["verify"][0]["verified"]["quarantined"], 1, "{v}");
    assert_eq!(v["verify"][0]["verified"]["evicted"], 2, "{v}");
    assert!(!e[0].1.exists() && !e[1].1.exists() && !e[2].1.exists());
    for x in &e[3..] {
        assert_eq!(std::fs::read(&x.1).expect("kept"), x.2);
    }
    let (code, v) = verify_run(&p, "check");
    assert_eq!(code, 0, "clean after enforce: {v}");
}

/// Issue #22: an entry quarantined under a name an earlier one already has (the same output
/// tampered twice) is kept beside it, never renamed over it.
#[test]
fn quarantine_never_renames_over_earlier_evidence() {
    support::require_root();
    let (d, cache, e) = populated(2);
    let p = verify_policy(d.path(), &cache, "quarantine");
    let mut bodies = Vec::new();
    for round in 0..2u8 {
        let mut b = e[0].2.clone();
        b[7] ^= 1 + round;
        std::fs::write(&e[0].1, &b).expect("tamper");
        support::age(&e[0].1, 3600);
        bodies.push(b);
        let (code, v) = verify_run(&p, "enforce");
        assert_eq!(code, 0, "{v}");
        assert_eq!(
            v["verify"][0]["verified"]["quarantined"], 1,
            "round {round}: {v}"
        );
    }
    let q = cache.join("gocache-warden-quarantine");
    let mut kept: Vec<Vec<u8>> = std::fs::read_dir(&q)
        .expect("quarantine")
        .map(|f| std::fs::read(f.expect("entry").path()).expect("read"))
        .collect();
    kept.sort();
    bodies.sort();
    assert_eq!(kept, bodies, "both tampered versions are kept");
}

/// Issue #22: an entry owned by a trusted writer that someone else can write (group write
/// by mode, a named user's ACL entry) is untrusted, and `check --verify` says who can write.
#[test]
fn verify_calls_entries_others_can_write_untrusted_and_names_the_writers() {
    support::require_root();
    let writer = support::ensure_user(WRITER, &[]);
    let (d, cache, e) = populated(4);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&e[0].1, std::fs::Permissions::from_mode(0o664)).expect("g+w");
    let o = std::process::Command::new("setfacl")
        .args(["-m", &format!("u:{writer}:rw")])
        .arg(&e[1].0)
        .output()
        .expect("setfacl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = verify_policy(d.path(), &cache, "report");
    let (code, v) = verify_run(&p, "check");
    assert_eq!(code, 1, "{v}");
    let untrusted = finding(&v, "untrusted-entry").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(untrusted["count"], 2, "{untrusted}");
    let examples = untrusted["examples"].to_string();
    assert!(
        examples.contains("writable by group root (0)")
            && examples.contains(&format!("writable by user {WRITER} ({writer})")),
        "the writers are named: {examples}"
    );
    assert!(finding(&v, "tampered-output").is_none(), "{v}");
}

/// Issue #22: the quarantine is bounded in time: an entry quarantined longer ago than the
/// policy's `quarantine_retention` is removed by the next pass that quarantines; a newer one
/// stays.
#[test]
fn quarantined_entries_expire_after_the_policys_retention() {
    support::require_root();
    let (d, cache, e) = populated(2);
    let p = policy(
        d.path(),
        "r.toml",
        &format!(
            "[cache.v]\npath = \"{}\"\ntrusted_writers = [\"root\"]\nuntrusted = \"quarantine\"\nquarantine_retention = \"3s\"\n",
            cache.display()
        ),
    );
    let q = cache.join("gocache-warden-quarantine");
    let count = || std::fs::read_dir(&q).map_or(0, |r| r.count());
    for (i, x) in e.iter().enumerate() {
        tamper(x);
        let (code, v) = verify_run(&p, "enforce");
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["verify"][0]["verified"]["quarantined"], 1, "{v}");
        assert_eq!(
            count(),
            1,
            "round {i}: the earlier one expired, this one is kept"
        );
        std::thread::sleep(std::time::Duration::from_secs(4));
    }
    let o = run(
        ["--policy", p.to_str().expect("utf-8"), "policy", "validate"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue #22: the quarantine is bounded in size: a pass that quarantines first removes the
/// oldest quarantined entries until what is left fits `quarantine_max_size`; the newest
/// evidence stays.
#[test]
fn the_quarantine_keeps_within_its_size_oldest_out_first() {
    use std::os::unix::fs::MetadataExt;
    support::require_root();
    let (d, cache, e) = populated(6);
    let max = 24 << 10;
    let p = policy(
        d.path(),
        "q.toml",
        &format!(
            "[cache.v]\npath = \"{}\"\ntrusted_writers = [\"root\"]\nuntrusted = \"quarantine\"\nquarantine_max_size = \"24KiB\"\n",
            cache.display()
        ),
    );
    let q = cache.join("gocache-warden-quarantine");
    let listing = || -> Vec<(String, u64)> {
        std::fs::read_dir(&q)
            .map(|r| {
                r.flatten()
                    .map(|f| {
                        let m = f.metadata().expect("stat");
                        (
                            f.file_name().to_string_lossy().into_owned(),
                            m.blocks() * 512,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = |x: &(PathBuf, PathBuf, Vec<u8>)| {
        x.1.file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()
    };
    // Two rounds of tampering, a second apart, each quarantined by its own pass.
    for round in e.chunks(3) {
        round.iter().for_each(tamper);
        let (code, v) = verify_run(&p, "enforce");
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["verify"][0]["verified"]["quarantined"], 3, "{v}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let before = listing();
    assert_eq!(before.len(), 6, "{before:?}");
    let total = |l: &[(String, u64)]| l.iter().map(|(_, b)| b).sum::<u64>();
    assert!(total(&before) > max, "the test overfills it: {before:?}");
    // The next pass that may quarantine trims it first.
    let (code, v) = verify_run(&p, "enforce");
    assert_eq!(code, 0, "{v}");
    let after = listing();
    assert!(
        total(&after) <= max,
        "within quarantine_max_size: {after:?}"
    );
    for x in &e[3..] {
        assert!(
            after.iter().any(|(n, _)| n.contains(&name(x))),
            "the newest evidence stays: {after:?}"
        );
    }
    assert!(
        e[..3]
            .iter()
            .any(|x| !after.iter().any(|(n, _)| n.contains(&name(x)))),
        "the oldest went first: {after:?}"
    );
}
