//! Every user's caches (issue #13, part 1): `users = [...] | "@group" | "all"` on an `auto`
//! cache in the system scope. Real users build with the real `go` in their homes; the agent
//! finds each cache as that user's `go env GOCACHE` does (their go env file read with their
//! credentials), applies the limits per user, shows one line per user and a total, creates
//! `trim.txt` as the user, and follows no link a user controls.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{
    check_json, ensure_group, ensure_user, gobuild, json, require_root, run, stderr, stdout,
    tempdir,
};

/// A `go` command that takes longer than this is hung: its process group is killed.
const GO_LIMIT: Duration = Duration::from_secs(300);

struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn user(name: &'static str, groups: &[&str]) -> User {
    let uid = ensure_user(name, groups);
    let u = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .expect("user");
    User {
        name,
        uid,
        gid: u.gid.as_raw(),
        home: u.dir,
    }
}

/// `go ARGS` as `u` in `dir`, with a login's environment (no GOCACHE: go finds its own), from
/// the toolchain copy every user can run (support/gobuild.rs).
fn go(u: &User, dir: &Path, args: &[&str]) -> Output {
    gobuild::go_as(u.uid, u.gid, &u.home, dir, &[], args, GO_LIMIT)
}

/// A tiny module in `u`'s home, built as `u`: fills their cache.
fn build(u: &User) {
    let d = u.home.join("hello");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("go.mod"), "module example.com/hello\n\ngo 1.24\n").expect("go.mod");
    std::fs::write(
        d.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }\n",
    )
    .expect("main.go");
    Command::new("chown")
        .args(["-R", &format!("{}:", u.name)])
        .arg(&d)
        .output()
        .expect("chown");
    let o = go(u, &d, &["build", "-o", "hello", "."]);
    assert!(
        o.status.success(),
        "go build as {}: {}",
        u.name,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `go env GOCACHE` as `u`: the oracle.
fn go_env_gocache(u: &User) -> PathBuf {
    let o = go(u, &u.home, &["env", "GOCACHE"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// Two users, each with a real Go cache: one at go's default place (and a go env file only
/// root could read, which their go ignores), one moved by `go env -w GOCACHE=`. Both found
/// as their go finds them, aged entries evicted per user, trim.txt created as the user,
/// builds still work, and `check` prints one line per user and a total.
#[test]
fn each_users_cache_is_found_as_their_go_finds_it_and_managed_as_theirs() {
    require_root();
    let u1 = user("gwt-pu-one", &[]);
    let u2 = user("gwt-pu-two", &[]);
    // u2 moves their cache with their own go.
    let custom = u2.home.join("gocache-custom");
    let o = go(
        &u2,
        &u2.home,
        &["env", "-w", &format!("GOCACHE={}", custom.display())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // u1 has a go env file they cannot read (root's, 0600): their go ignores it, and so must
    // the agent, which reads it with u1's credentials.
    let envdir = u1.home.join(".config/go");
    std::fs::create_dir_all(&envdir).expect("mkdir");
    let envfile = envdir.join("env");
    std::fs::write(
        &envfile,
        format!("GOCACHE={}/not-this\n", u1.home.display()),
    )
    .expect("env");
    std::fs::set_permissions(
        &envfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    for u in [&u1, &u2] {
        build(u);
    }
    let want1 = go_env_gocache(&u1);
    let want2 = go_env_gocache(&u2);
    assert_eq!(want1, u1.home.join(".cache/go-build"));
    assert_eq!(want2, custom);
    for p in [&want1, &want2] {
        support::age_tree(p);
    }
    std::fs::remove_file(want2.join("trim.txt")).expect("rm trim.txt");
    let d = tempdir();
    let pol = support::policy(
        d.path(),
        "users.toml",
        &format!(
            "[cache.pu]\npath = \"auto\"\nusers = [\"{}\", \"{}\"]\nmax_size = \"100MiB\"\nmax_age = \"1d\"\nmin_age = \"1h\"\n",
            u1.name, u2.name
        ),
    );
    let pol = pol.to_str().expect("utf-8");
    let chk = run(["--policy", pol, "check", "--json"], &[]);
    let r = json(&chk);
    let caches = r["caches"].as_array().expect("caches");
    assert_eq!(caches.len(), 2, "{r}");
    for (c, (u, want)) in caches.iter().zip([(&u1, &want1), (&u2, &want2)]) {
        assert_eq!(c["user"], u.name, "{c}");
        assert_eq!(c["path"], want.display().to_string(), "{c}");
        assert!(
            c["observed"]["allocated_bytes"].as_u64().unwrap_or(0) > 0,
            "{c}"
        );
        assert_eq!(c["limit_bytes"], 100u64 << 20);
    }
    let text = stdout(&run(["--policy", pol, "check"], &[]));
    assert!(text.contains("per-user cache \"pu\":"), "{text}");
    for u in [&u1, &u2] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(u.name) && l.contains("of 100.0 MiB")),
            "{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("total") && l.contains("(2 users)")),
        "{text}"
    );

    let e = run(["--policy", pol, "enforce", "--json"], &[]);
    assert_eq!(e.status.code(), Some(0), "{}{}", stdout(&e), stderr(&e));
    let e = json(&e);
    for c in e["outcome"]["caches"].as_array().expect("outcome") {
        assert!(
            c["evicted"]["age"]["entries"].as_u64().unwrap_or(0) > 0,
            "{c}"
        );
    }
    let trim = std::fs::metadata(want2.join("trim.txt")).expect("trim.txt created");
    assert_eq!(
        (trim.uid(), trim.gid()),
        (u2.uid, u2.gid),
        "trim.txt belongs to the user"
    );
    assert_eq!(
        std::fs::metadata(&envfile).expect("env").uid(),
        0,
        "env file untouched"
    );
    for u in [&u1, &u2] {
        build(u);
    }
}

/// `"@group"` selects the group's members; a member whose `~/.cache` is a symlink to a Go
/// cache elsewhere is refused (nothing followed, nothing changed there); `exclude_users`
/// leaves a group's members and root out of `users = "all"`, which covers no system user.
#[test]
fn group_selection_and_a_symlink_in_a_home_is_never_followed() {
    require_root();
    ensure_group("gwt-pu-group");
    let good = user("gwt-pu-three", &["gwt-pu-group"]);
    let evil = user("gwt-pu-evil", &["gwt-pu-group"]);
    let outsider = user("gwt-pu-out", &[]);
    build(&good);
    build(&outsider);
    let d = tempdir();
    // A Go cache that is not evil's: root's, old, at the end of evil's symlink.
    let victim = d.path().join("victim");
    support::mkcache(&victim.join("go-build"), 50, 3);
    support::age_tree(&victim);
    let before = Command::new("find")
        .arg(&victim)
        .args(["-printf", "%p %m %U %G %T@ %C@\n"])
        .output()
        .expect("find")
        .stdout;
    let cache_dir = evil.home.join(".cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let _ = std::fs::remove_file(&cache_dir);
    std::os::unix::fs::symlink(&victim, &cache_dir).expect("symlink");
    support::age_tree(&good.home.join(".cache/go-build"));
    let pol = support::policy(
        d.path(),
        "group.toml",
        "[cache.pu]\npath = \"auto\"\nusers = \"@gwt-pu-group\"\nmax_age = \"1d\"\nmin_age = \"1h\"\n",
    );
    let pol = pol.to_str().expect("utf-8");
    let r = json(&run(["--policy", pol, "check", "--json"], &[]));
    let users: Vec<&str> = r["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .filter_map(|c| c["user"].as_str())
        .collect();
    assert!(
        users.contains(&good.name) && users.contains(&evil.name),
        "{users:?}"
    );
    assert!(!users.contains(&outsider.name), "{users:?}");
    let e = run(["--policy", pol, "enforce", "--json"], &[]);
    let doc = json(&e);
    let after = Command::new("find")
        .arg(&victim)
        .args(["-printf", "%p %m %U %G %T@ %C@\n"])
        .output()
        .expect("find")
        .stdout;
    assert_eq!(
        String::from_utf8_lossy(&after),
        String::from_utf8_lossy(&before),
        "the symlinked cache changed"
    );
    let evil_c = r["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .find(|c| c["user"] == evil.name)
        .expect("evil's");
    assert!(
        evil_c["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["kind"] == "root-not-directory"),
        "{evil_c}"
    );
    let good_out = doc["outcome"]["caches"]
        .as_array()
        .expect("outcome")
        .iter()
        .find(|c| c["path"] == good.home.join(".cache/go-build").display().to_string())
        .unwrap_or_else(|| panic!("good's cache in {doc}"));
    assert!(
        good_out["evicted"]["age"]["entries"].as_u64().unwrap_or(0) > 0,
        "{good_out}"
    );

    // Root is left out too: its real caches are this suite's own (tests/root_cache.rs covers
    // root's, with a scratch home).
    let all = support::policy(
        d.path(),
        "all.toml",
        "[cache.pu]\npath = \"auto\"\nusers = \"all\"\nexclude_users = [\"root\", \"@gwt-pu-group\"]\n",
    );
    let r = check_json(&all);
    let users: Vec<&str> = r["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .filter_map(|c| c["user"].as_str())
        .collect();
    assert!(users.contains(&outsider.name), "{users:?}");
    assert!(
        !users.contains(&good.name) && !users.contains(&evil.name),
        "members of an excluded group: {users:?}"
    );
    assert!(
        !users.contains(&"root") && !users.contains(&"nobody"),
        "{users:?}"
    );
}

#[test]
fn users_is_validated_with_its_location() {
    let d = tempdir();
    for (body, want) in [
        (
            "[cache.x]\npath = \"/srv/gocache\"\nusers = \"all\"\n",
            "3:9: users needs path = \"auto\"",
        ),
        (
            "[cache.x]\npath = \"auto\"\nusers = [\"gwt-no-such-user\"]\n",
            "3:9: unknown user \"gwt-no-such-user\"",
        ),
        (
            "[cache.x]\npath = \"auto\"\nusers = \"@gwt-no-such-group\"\n",
            "3:9: unknown group \"gwt-no-such-group\"",
        ),
        (
            "[cache.x]\npath = \"auto\"\nusers = \"everyone\"\n",
            "3:9: users \"everyone\": expected",
        ),
        (
            "[cache.x]\npath = \"auto\"\nusers = []\n",
            "3:9: users needs at least one name",
        ),
        (
            "[cache.x]\npath = \"auto\"\nusers = \"all\"\nexclude_users = [\"@gwt-no-such-group\"]\n",
            "4:17: unknown group \"gwt-no-such-group\" in exclude_users",
        ),
        (
            "[cache.x]\npath = \"auto\"\nexclude_users = [\"root\"]\n",
            "3:17: exclude_users needs `users`",
        ),
    ] {
        let f = d.path().join("p.toml");
        std::fs::write(&f, body).expect("write");
        let o = run(["policy".as_ref(), "validate".as_ref(), f.as_os_str()], &[]);
        assert_eq!(o.status.code(), Some(2), "{body}");
        assert!(
            stderr(&o).contains(&format!("{}:{want}", f.display())),
            "{body}: {}",
            stderr(&o)
        );
    }
}

/// `check --json` under `policy` in a private mount namespace where root's home `/root` is
/// `home`: root's real caches, this suite's own, are never read.
fn check_json_with_root_home(policy: &Path, home: &Path) -> serde_json::Value {
    json(&support::in_mount_ns(&format!(
        "mount --bind '{}' /root\nPATH='{}/bin:/usr/bin:/bin' exec '{}' --policy '{}' check --json",
        home.display(),
        gobuild::goroot().display(),
        support::bin().display(),
        policy.display()
    )))
}

/// The embedded default alone (an empty drop-in directory) covers every human user's and
/// root's build and module caches with per-user limits and headroom; a drop-in that gives
/// `[cache.build]` a fixed path makes it one shared cache instead.
#[test]
fn the_default_policy_covers_every_human_users_caches() {
    require_root();
    let u = user("gwt-pu-default", &[]);
    build(&u);
    let d = tempdir();
    let empty = d.path().join("policy.d");
    std::fs::create_dir(&empty).expect("mkdir");
    let root_home = d.path().join("root-home");
    std::fs::create_dir(&root_home).expect("mkdir");
    let r = check_json_with_root_home(&empty, &root_home);
    let caches = r["caches"].as_array().expect("caches");
    let mine: Vec<_> = caches.iter().filter(|c| c["user"] == u.name).collect();
    assert_eq!(mine.len(), 2, "build and module cache of {}: {r}", u.name);
    let b = mine.iter().find(|c| c["kind"] == "build").expect("build");
    assert_eq!(
        b["path"],
        u.home.join(".cache/go-build").display().to_string()
    );
    assert_eq!(b["limit_bytes"], 10u64 << 30);
    let size = b["filesystem"]["size_bytes"].as_u64().expect("fs");
    assert_eq!(
        b["min_free_bytes"].as_u64(),
        Some((size as f64 * 0.1) as u64),
        "{b}"
    );
    let m = mine.iter().find(|c| c["kind"] == "module").expect("module");
    assert_eq!(m["path"], u.home.join("go/pkg/mod").display().to_string());
    let roots: Vec<_> = caches
        .iter()
        .filter(|c| c["user"] == "root")
        .map(|c| (c["kind"].as_str(), c["path"].as_str()))
        .collect();
    assert_eq!(
        roots,
        [
            (Some("build"), Some("/root/.cache/go-build")),
            (Some("module"), Some("/root/go/pkg/mod"))
        ],
        "root's own caches: {r}"
    );

    let shared = d.path().join("shared.d");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::write(
        shared.join("50-shared.toml"),
        "[cache.build]\npath = \"/srv/gwt-pu-shared\"\n[cache.modules]\nenabled = false\n",
    )
    .expect("write");
    let o = run(
        [
            "--policy".as_ref(),
            shared.as_os_str(),
            "policy".as_ref(),
            "cat".as_ref(),
            "--effective".as_ref(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(p["caches"][0]["users"], serde_json::Value::Null, "{p}");
}

/// A go env file that is a FIFO or a link to /dev/zero neither blocks nor exhausts the
/// agent: that user's caches are skipped with the reason, everyone else's are managed.
#[test]
fn a_hostile_go_env_file_never_blocks_or_exhausts_the_agent() {
    require_root();
    let fifo_user = user("gwt-pu-fifo", &[]);
    let zero_user = user("gwt-pu-zero", &[]);
    let ok_user = user("gwt-pu-fine", &[]);
    build(&ok_user);
    for u in [&fifo_user, &zero_user] {
        let dir = u.home.join(".config/go");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let env = dir.join("env");
        let _ = std::fs::remove_file(&env);
        if u.name == fifo_user.name {
            nix::unistd::mkfifo(&env, nix::sys::stat::Mode::from_bits_truncate(0o644))
                .expect("mkfifo");
        } else {
            std::os::unix::fs::symlink("/dev/zero", &env).expect("symlink");
        }
        Command::new("chown")
            .args(["-R", &format!("{}:", u.name)])
            .arg(u.home.join(".config"))
            .output()
            .expect("chown");
    }
    let d = tempdir();
    let pol = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.pu]\npath = \"auto\"\nusers = [\"{}\", \"{}\", \"{}\"]\n",
            fifo_user.name, zero_user.name, ok_user.name
        ),
    );
    let start = std::time::Instant::now();
    let r = check_json(&pol);
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    let by = |n: &str| {
        r["caches"]
            .as_array()
            .expect("caches")
            .iter()
            .find(|c| c["user"] == n)
            .unwrap_or_else(|| panic!("{n} in {r}"))
            .clone()
    };
    for u in [&fifo_user, &zero_user] {
        let c = by(u.name);
        assert!(c["path"].is_null(), "{c}");
        let f = &c["findings"][0];
        assert_eq!(f["kind"], "unresolved", "{c}");
        assert!(
            f["message"]
                .as_str()
                .unwrap_or("")
                .contains("not a regular file"),
            "{c}"
        );
    }
    assert_eq!(
        by(ok_user.name)["path"],
        ok_user.home.join(".cache/go-build").display().to_string()
    );
}
