//! Nothing but Go caches touched (issue #13, part 3): a root that does not look like a Go
//! cache of its kind is refused for every change; entries outside Go's layout inside a real
//! cache are reported and never changed or removed; policy validation refuses `/`, system
//! directories, home directories and nested or overlapping caches with `FILE:LINE:COL`.

mod support;

use std::path::Path;
use std::process::Command;
use support::{
    age, ensure_group, json, policy, require_root, run, sentinel, stderr, stdout, tempdir,
};

const GROUP: &str = "gwt-guard";
const OLD: i64 = 40 * 86400;

/// Everything about a tree that a change of group, mode, ACL, content or name would move:
/// every entry's type, mode, owner, group, size, mtime and ctime (`find -printf`), and every
/// ACL (`getfacl -R`). Reading moves none of these.
fn listing(root: &Path) -> String {
    let find = Command::new("find")
        .arg(root)
        .args(["-printf", "%P %y %m %U %G %s %T@ %C@\n"])
        .output()
        .expect("find");
    assert!(
        find.status.success(),
        "find: {}",
        String::from_utf8_lossy(&find.stderr)
    );
    let acl = Command::new("getfacl")
        .args(["-R", "-P", "-n", "-p"])
        .arg(root)
        .output()
        .expect("getfacl (apt-get install acl)");
    let mut lines: Vec<String> = String::from_utf8_lossy(&find.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    format!(
        "{}\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&acl.stdout)
    )
}

fn shared_policy(dir: &Path, path: &Path, kind: &str, extra: &str) -> std::path::PathBuf {
    ensure_group(GROUP);
    policy(
        dir,
        &format!("{kind}.toml"),
        &format!(
            "[cache.t]\npath = \"{}\"\nkind = \"{kind}\"\nmax_size = \"1KiB\"\nmax_age = \"1d\"\nmin_age = \"1h\"\n\
             group = \"{GROUP}\"\ngroup_access = \"rwx\"\nother = \"---\"\n{extra}",
            path.display()
        ),
    )
}

/// The measurement in the issue: a copy of /etc with a group. Refused by check, enforce
/// (with and without --json, --dry-run, --detailed-exitcode) for both kinds, with the path
/// in the message, exit 1, and not one mode, owner, ACL, time or entry changed.
#[test]
fn a_copy_of_etc_is_refused_for_every_change_and_left_exactly_as_it_was() {
    require_root();
    let d = tempdir();
    let copy = d.path().join("etc");
    // Not while another test adds a user or a group: cp would meet their temporary files.
    let o = support::with_db_lock(|| {
        Command::new("cp")
            .args(["-a", "/etc"])
            .arg(&copy)
            .output()
            .expect("cp")
    });
    assert!(
        o.status.success(),
        "cp -a /etc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Old enough for max_age to want all of it, were it a cache.
    Command::new("find")
        .arg(&copy)
        .args(["-exec", "touch", "-h", "-d", "@1000000000", "{}", "+"])
        .output()
        .expect("touch");
    let before = listing(&copy);
    assert!(before.lines().count() > 500, "a real /etc copy");
    for kind in ["build", "module"] {
        let p = shared_policy(d.path(), &copy, kind, "");
        let pol = p.to_str().expect("utf-8");
        for args in [
            vec!["enforce"],
            vec!["enforce", "--json"],
            vec!["enforce", "--detailed-exitcode"],
            vec!["enforce", "--dry-run", "--json"],
        ] {
            let o = run(["--policy", pol].iter().chain(&args), &[]);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{kind} {args:?}: {}{}",
                stdout(&o),
                stderr(&o)
            );
            let err = stderr(&o);
            assert!(
                err.contains(&format!("refusing to change {}", copy.display()))
                    && err.contains(&format!("does not look like a Go {kind} cache")),
                "{kind} {args:?}: {err}"
            );
            if args.contains(&"--json") {
                let doc = json(&o);
                let c = &doc["plan"]["caches"][0];
                assert!(
                    c["skipped"]
                        .as_str()
                        .is_some_and(|s| s.contains("refusing")),
                    "{c}"
                );
                assert!(c["fixes"].as_object().is_some_and(|f| f.is_empty()), "{c}");
            }
        }
        let chk = run(["--policy", pol, "check", "--json"], &[]);
        assert_eq!(chk.status.code(), Some(1), "{}", stderr(&chk));
        let r = json(&chk);
        // Other findings (what a group grant means) may come first: find it by kind.
        let f = r["caches"][0]["findings"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["kind"] == "not-a-go-cache"))
            .unwrap_or_else(|| panic!("no not-a-go-cache finding: {r}"));
        assert_eq!(f["kind"], "not-a-go-cache", "{r}");
        assert_eq!(f["severity"], "error");
        assert!(r["caches"][0]["observed"].is_null(), "not even walked: {r}");
        assert_eq!(listing(&copy), before, "{kind}: the copy of /etc changed");
    }
}

/// `create = true` makes a missing root the agent's; it never makes an existing foreign
/// directory one. An empty directory, or one holding only Go's layout (no README), is a
/// cache go would use as it is.
#[test]
fn create_shapes_only_a_new_root_and_empty_or_layout_only_roots_are_accepted() {
    require_root();
    let d = tempdir();
    let notes = d.path().join("notes");
    std::fs::create_dir(&notes).expect("mkdir");
    std::fs::write(notes.join("todo.txt"), "mine\n").expect("write");
    let before = listing(&notes);
    let p = shared_policy(
        d.path(),
        &notes,
        "build",
        "create = true\nowner = \"root\"\n",
    );
    let o = run(
        ["--policy".as_ref(), p.as_os_str(), "enforce".as_ref()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("\"todo.txt\"") || stderr(&o).contains("todo.txt"),
        "{}",
        stderr(&o)
    );
    assert_eq!(listing(&notes), before);

    for (name, setup) in [
        ("empty", &[][..]),
        ("layout-only", &["00", "ff", "trim.txt"][..]),
    ] {
        let root = d.path().join(name);
        std::fs::create_dir(&root).expect("mkdir");
        for e in setup {
            if e.ends_with(".txt") {
                std::fs::write(root.join(e), "1\n").expect("write");
            } else {
                std::fs::create_dir(root.join(e)).expect("mkdir");
            }
        }
        let p = shared_policy(d.path(), &root, "build", "");
        let o = run(
            ["--policy".as_ref(), p.as_os_str(), "enforce".as_ref()],
            &[],
        );
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let gid = nix::unistd::Group::from_name(GROUP)
            .ok()
            .flatten()
            .expect("group")
            .gid;
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&root).expect("root").gid(),
            gid.as_raw(),
            "{name}"
        );
    }
}

/// Foreign entries in a real (synthetic, Go-shaped) build cache: a file and a directory tree
/// at the top, a stray file in a shard, all old and off-policy. `check` reports them as
/// foreign; `enforce` evicts old Go entries and fixes Go's own, and leaves every foreign
/// entry exactly as it was (group, mode, ACL, content, times).
#[test]
fn foreign_entries_in_a_build_cache_are_reported_and_never_touched() {
    require_root();
    let d = tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 300, 7);
    let foreign = [
        cache.join("notes.txt"),
        cache.join("stash"),
        cache.join("stash/secret.key"),
        cache.join("stash/deeper"),
        cache.join("stash/deeper/x"),
        cache.join("ab/readme-of-mine.txt"),
    ];
    std::fs::create_dir_all(cache.join("stash/deeper")).expect("mkdir");
    for f in foreign
        .iter()
        .filter(|f| f.extension().is_some() || f.ends_with("x"))
    {
        std::fs::write(f, b"not go's").expect("write");
    }
    for f in foreign.iter().rev() {
        age(f, OLD);
    }
    let snaps: Vec<_> = foreign.iter().map(|f| (f.clone(), sentinel(f))).collect();
    // Reading a sentinel moves its atime: age again so the files look as old as before.
    for f in foreign.iter().rev() {
        age(f, OLD);
    }
    let p = shared_policy(d.path(), &cache, "build", "");
    let pol = p.to_str().expect("utf-8");
    let chk = json(&run(["--policy", pol, "check", "--json"], &[]));
    let f = chk["caches"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "foreign")
        .unwrap_or_else(|| panic!("no foreign finding: {chk}"))
        .clone();
    assert_eq!(f["count"], foreign.len() as u64, "{f}");
    assert_eq!(f["auto_fix"], false);
    let o = run(["--policy", pol, "enforce", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = json(&o);
    let out = &e["outcome"]["caches"][0];
    assert!(
        out["evicted"]["age"]["entries"].as_u64().unwrap_or(0) > 0,
        "{out}"
    );
    assert!(out["fixed"]["group"].as_u64().unwrap_or(0) > 0, "{out}");
    assert!(
        out["refused"]["foreign"]["count"].as_u64().unwrap_or(0) >= 3,
        "{out}"
    );
    for (f, s) in &snaps {
        assert_eq!(&sentinel(f), s, "{} changed", f.display());
    }
}

/// The same in a module cache filled by hand in Go's layout: the old module version goes,
/// a stray file and directory at the top stay exactly as they were.
#[test]
fn foreign_entries_in_a_module_cache_are_never_touched() {
    require_root();
    let d = tempdir();
    let mc = d.path().join("mod");
    let v = mc.join("cache/download/example.com/m/@v");
    std::fs::create_dir_all(&v).expect("mkdir");
    for ext in ["info", "mod", "zip"] {
        std::fs::write(v.join(format!("v1.0.0.{ext}")), b"x").expect("write");
    }
    let tree = mc.join("example.com/m@v1.0.0");
    std::fs::create_dir_all(&tree).expect("mkdir");
    std::fs::write(tree.join("go.mod"), b"module example.com/m\n").expect("write");
    let stray = [
        mc.join("NOTES"),
        mc.join("Backup"),
        mc.join("Backup/old.tar"),
    ];
    std::fs::create_dir(&stray[1]).expect("mkdir");
    std::fs::write(&stray[0], b"mine").expect("write");
    std::fs::write(&stray[2], b"mine").expect("write");
    let out = Command::new("find")
        .arg(&mc)
        .args(["-exec", "touch", "-h", "-d", "@1000000000", "{}", "+"])
        .output()
        .expect("touch");
    assert!(out.status.success());
    let snaps: Vec<_> = stray.iter().map(|f| (f.clone(), sentinel(f))).collect();
    let p = shared_policy(d.path(), &mc, "module", "");
    let o = run(
        [
            "--policy".as_ref(),
            p.as_os_str(),
            "enforce".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = json(&o);
    assert_eq!(
        e["outcome"]["caches"][0]["evicted"]["age"]["entries"], 1,
        "{e}"
    );
    assert!(!tree.exists(), "the old module version is evicted");
    for (f, s) in &snaps {
        assert_eq!(&sentinel(f), s, "{} changed", f.display());
    }
}

/// Validation: `/`, system directories, a home directory (or what holds one) and nested or
/// overlapping caches are refused with FILE:LINE:COL; caches in directories of their own
/// under /var/cache, /srv, /tmp and a home are fine.
#[test]
fn policy_refuses_system_and_home_directories_and_overlapping_caches() {
    require_root();
    support::ensure_user("gwt-guard-home", &[]);
    let d = tempdir();
    let bad: &[(&str, &str)] = &[
        ("/", "/ is a system directory, not a cache"),
        ("/etc", "/etc is inside the system directory /etc"),
        ("/etc/ssl/private", "is inside the system directory /etc"),
        ("/usr/local/gocache", "is inside the system directory /usr"),
        ("/var", "/var is a system directory"),
        ("/var/lib", "/var/lib is a system directory"),
        ("/var/cache", "/var/cache is a system directory"),
        ("/boot", "inside the system directory /boot"),
        ("/lib64", "inside a system library directory"),
        ("/proc/self", "inside the system directory /proc"),
        ("/run", "/run is a system directory"),
        ("/home", "/home is a system directory"),
        ("/root", "/root is a system directory"),
        (
            "/home/gwt-guard-home",
            "is the home directory of user gwt-guard-home",
        ),
    ];
    for (path, want) in bad {
        let f = d.path().join("bad.toml");
        std::fs::write(
            &f,
            format!("[cache.x]\nkind = \"build\"\npath = \"{path}\"\n"),
        )
        .expect("write");
        let o = run(["policy".as_ref(), "validate".as_ref(), f.as_os_str()], &[]);
        assert_eq!(o.status.code(), Some(2), "{path} accepted");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{}:3:8: cache \"x\": ", f.display())) && err.contains(want),
            "{path}: {err}"
        );
    }
    let cases: &[(&str, &str)] = &[
        (
            "[cache.a]\npath = \"/srv/gocache\"\n[cache.b]\npath = \"/srv/gocache/team\"\n",
            "4:8: cache \"b\" (/srv/gocache/team) is inside cache \"a\" (/srv/gocache): caches must not nest or overlap",
        ),
        (
            "[cache.a]\npath = \"/srv/gocache/team\"\n[cache.b]\npath = \"/srv/gocache\"\n",
            "4:8: cache \"b\" (/srv/gocache) is around cache \"a\" (/srv/gocache/team)",
        ),
        (
            "[cache.a]\npath = \"/srv/go\"\n[cache.b]\npath = \"/srv/go/\"\nkind = \"module\"\n",
            "4:8: cache \"b\" has the same path as cache \"a\"",
        ),
    ];
    for (text, want) in cases {
        let f = d.path().join("nest.toml");
        std::fs::write(&f, text).expect("write");
        let o = run(["policy".as_ref(), "validate".as_ref(), f.as_os_str()], &[]);
        assert_eq!(o.status.code(), Some(2), "{text} accepted");
        assert!(
            stderr(&o).contains(&format!("{}:{want}", f.display())),
            "{}",
            stderr(&o)
        );
    }
    let ok = d.path().join("ok.toml");
    std::fs::write(
        &ok,
        "[cache.a]\npath = \"/var/cache/go-build\"\n[cache.b]\npath = \"/srv/gocache\"\n\
         [cache.c]\npath = \"/srv/gocache-modules\"\nkind = \"module\"\n\
         [cache.d]\npath = \"/home/gwt-guard-home/.cache/go-build\"\n[cache.e]\npath = \"/tmp/gocache\"\n",
    )
    .expect("write");
    let o = run(
        ["policy".as_ref(), "validate".as_ref(), ok.as_os_str()],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `auto` paths are checked when resolved: GOCACHE=/etc is refused (nothing changed), and a
/// GOMODCACHE inside GOCACHE is refused as overlapping while GOCACHE itself is managed.
#[test]
fn auto_paths_that_are_system_directories_or_overlap_are_refused() {
    require_root();
    let d = tempdir();
    let p = policy(
        d.path(),
        "auto.toml",
        "[cache.b]\npath = \"auto\"\nmax_age = \"30d\"\n[cache.m]\npath = \"auto\"\nkind = \"module\"\nmax_age = \"30d\"\n",
    );
    let etc_before = listing(Path::new("/etc/ssl"));
    let gocache = d.path().join("gocache");
    let modcache = gocache.join("mod");
    std::fs::create_dir_all(&modcache).expect("mkdir");
    std::fs::write(
        gocache.join("README"),
        "This directory holds cached build artifacts from the Go build system.\n",
    )
    .expect("README");
    for (gc, want) in [
        ("/etc/ssl", "/etc/ssl is inside the system directory /etc"),
        (gocache.to_str().expect("utf-8"), "is inside cache \"b\""),
    ] {
        let env = [
            ("GOCACHE", gc),
            ("GOMODCACHE", modcache.to_str().expect("utf-8")),
            ("GOENV", "off"),
        ];
        let o = run(
            ["--policy".as_ref(), p.as_os_str(), "enforce".as_ref()],
            &env,
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "{gc}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stderr(&o).contains(want), "{gc}: {}", stderr(&o));
    }
    assert_eq!(listing(Path::new("/etc/ssl")), etc_before);
    assert!(modcache.exists());
}
