//! `check` through the real binary, against real trees: totals cross-checked with `du` and
//! `find`, a real Go toolchain's cache found with no policy file, symlinks and bind mounts
//! reported and never followed, exit codes.

mod support;

use std::path::Path;
use std::process::Command;
use support::{json, mkcache, policy, run, stderr, stdout, tempdir};

fn check_json(policy: &Path) -> (i32, serde_json::Value) {
    let o = run(
        [
            "--policy".to_string(),
            policy.display().to_string(),
            "check".into(),
            "--json".into(),
        ],
        &[],
    );
    (o.status.code().unwrap_or(-1), json(&o))
}

fn find_count(root: &Path, args: &[&str]) -> u64 {
    let o = Command::new("find")
        .arg(root)
        .args(args)
        .output()
        .expect("find");
    o.stdout.iter().filter(|b| **b == b'\n').count() as u64
}

#[test]
fn totals_match_du_and_find_on_a_mkcache_tree() {
    let d = tempdir();
    let cache = d.path().join("cache");
    mkcache(&cache, 3000, 7);
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_age = \"30d\"\n",
            cache.display()
        ),
    );
    let (code, v) = check_json(&p);
    assert_eq!(v["schema"], "gocache-warden.check/v1");
    let c = &v["caches"][0];
    let o = &c["observed"];
    assert_eq!(
        o["allocated_bytes"].as_u64(),
        Some(support::du_bytes(&cache)),
        "allocated bytes = du -sB1"
    );
    assert_eq!(
        o["files"].as_u64(),
        Some(find_count(&cache, &["-type", "f"])),
        "files = find -type f"
    );
    assert_eq!(
        o["dirs"].as_u64(),
        Some(find_count(&cache, &["-type", "d"])),
        "dirs = find -type d"
    );
    let inodes = o["files"].as_u64().unwrap_or(0) + o["dirs"].as_u64().unwrap_or(0);
    assert_eq!(
        inodes,
        find_count(&cache, &[]),
        "every entry = find | wc -l"
    );
    assert_eq!(o["classes"]["action"]["entries"], 3000);
    assert_eq!(o["classes"]["output"]["entries"], 3000);
    assert_eq!(o["classes"]["shard"]["entries"], 256);
    assert_eq!(o["classes"]["meta"]["entries"], 2, "README and trim.txt");
    let apparent: u64 = walk_sizes(&cache);
    assert_eq!(
        o["apparent_bytes"].as_u64(),
        Some(apparent),
        "apparent = sum of st_size"
    );
    // mkcache spreads last use over 60 days: some entries are past 30d, which is a violation.
    let past = c["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "past-max-age")
        .expect("past-max-age finding");
    assert!(past["count"].as_u64().expect("count") > 0);
    assert_eq!(code, 1, "violations → exit 1");
}

fn walk_sizes(p: &Path) -> u64 {
    let o = Command::new("find")
        .arg(p)
        .args(["-printf", "%s\\n"])
        .output()
        .expect("find");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.parse::<u64>().ok())
        .sum()
}

/// Whether the filesystem holding `p` has less than the embedded default's headroom left:
/// 10% of its size available to users (`f_bavail`) or 5% of its inodes free, as statvfs
/// tells the test itself.
fn short_of_headroom(p: &Path) -> bool {
    let s = nix::sys::statvfs::statvfs(p).expect("statvfs");
    let frsize = s.fragment_size() as u128;
    let (size, avail) = (
        s.blocks() as u128 * frsize,
        s.blocks_available() as u128 * frsize,
    );
    let (inodes, free_inodes) = (s.files() as u128, s.files_free() as u128);
    avail * 10 < size || free_inodes * 100 < inodes * 5
}

#[test]
fn compliant_cache_exits_0_and_says_so() {
    let d = tempdir();
    let cache = d.path().join("cache");
    mkcache(&cache, 200, 3);
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"1GiB\"\n",
            cache.display()
        ),
    );
    let o = run(
        [
            "--policy".to_string(),
            p.display().to_string(),
            "check".into(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("compliant with the policy"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn finds_the_users_real_gocache_with_no_policy_file() {
    // A real toolchain fills a cache in a fresh HOME; `check` with the embedded default
    // policy (no drop-ins: user scope, empty XDG_CONFIG_HOME) must find and measure it.
    let go = support::go_binary();
    let d = tempdir();
    let home = d.path().join("home");
    let src = d.path().join("src");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("go.mod"), "module example.com/hello\n\ngo 1.21\n").expect("write");
    std::fs::write(
        src.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }\n",
    )
    .expect("write");
    let path = format!("{}:/usr/bin:/bin", go.parent().expect("bin dir").display());
    let env = [
        ("HOME", home.to_str().expect("utf8")),
        ("PATH", path.as_str()),
        ("GOTELEMETRY", "off"),
        ("GOTOOLCHAIN", "local"),
        ("GOFLAGS", "-mod=mod"),
        ("GOPROXY", "off"),
    ];
    let b = Command::new(&go)
        .args(["build", "-o", "/dev/null", "."])
        .current_dir(&src)
        .env_clear()
        .envs(env)
        .output()
        .expect("go build");
    assert!(
        b.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    let mut c = Command::new(support::bin());
    c.args(["--scope", "user", "check", "--json"])
        .env_clear()
        .envs(env)
        .env("XDG_CONFIG_HOME", d.path().join("noconfig"));
    let o = c.output().expect("run");
    let v = json(&o);
    let build = &v["caches"][0];
    assert_eq!(build["name"], "build");
    assert_eq!(
        build["path"].as_str(),
        Some(home.join(".cache/go-build").to_str().expect("utf8"))
    );
    assert_eq!(build["source"], "auto: Go's default");
    assert!(
        build["observed"]["classes"]["action"]["entries"]
            .as_u64()
            .expect("actions")
            > 10
    );
    assert_eq!(
        build["observed"]["allocated_bytes"].as_u64(),
        Some(support::du_bytes(&home.join(".cache/go-build")))
    );
    // The embedded default also keeps 10% of each filesystem free (5% of its inodes): on a
    // test machine whose disk is fuller than that, a headroom finding is true and expected.
    // Whether it is comes from the test's own statvfs of the filesystem both caches are on,
    // before and after the run; nothing else may be found.
    let short_before = short_of_headroom(&home);
    let findings: Vec<&serde_json::Value> = v["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .flat_map(|c| c["findings"].as_array().into_iter().flatten())
        .filter(|f| f["severity"] != "info")
        .collect();
    let short_after = short_of_headroom(&home);
    let report = serde_json::to_string_pretty(&v).unwrap_or_default();
    let (headroom_findings, other): (Vec<&serde_json::Value>, Vec<_>) =
        findings.into_iter().partition(|f| {
            matches!(
                f["kind"].as_str(),
                Some("low-free-space" | "low-free-inodes")
            )
        });
    assert!(other.is_empty(), "{report}");
    // Free space that crossed the line during the run (other processes write too) leaves
    // the expected finding open; otherwise it must be exactly what the test measured.
    if short_before == short_after {
        assert_eq!(
            !headroom_findings.is_empty(),
            short_before,
            "the test measured short of headroom: {short_before}\n{report}"
        );
        let expected = i32::from(short_before);
        assert_eq!(v["exit_code"], expected, "{report}");
        assert_eq!(o.status.code(), Some(expected), "{report}");
    }
    // The human report names the path and the sizes.
    let mut c = Command::new(support::bin());
    c.args(["--scope", "user", "check"])
        .env_clear()
        .envs(env)
        .env("XDG_CONFIG_HOME", d.path().join("noconfig"));
    let text = stdout(&c.output().expect("run"));
    assert!(
        text.contains(&format!(
            "build cache \"build\": {}",
            home.join(".cache/go-build").display()
        )),
        "{text}"
    );
    assert!(text.contains("allocated"), "{text}");
}

#[test]
fn gocache_off_is_an_error_with_exit_1() {
    let d = tempdir();
    let o = Command::new(support::bin())
        .args(["--scope", "user", "check", "--json"])
        .env_clear()
        .env("HOME", d.path())
        .env("GOCACHE", "off")
        .env("XDG_CONFIG_HOME", d.path().join("noconfig"))
        .output()
        .expect("run");
    let v = json(&o);
    assert_eq!(o.status.code(), Some(1));
    let kinds: Vec<&str> = v["environment"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"gocache-off"), "{kinds:?}");
    assert_eq!(v["caches"][0]["findings"][0]["kind"], "unresolved");
}

#[test]
fn symlink_and_bind_mount_inside_are_reported_not_followed() {
    support::require_root();
    let d = tempdir();
    let cache = d.path().join("cache");
    mkcache(&cache, 100, 5);
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("big"), vec![7u8; 4 << 20]).expect("write");
    let before = support::sentinel(&outside.join("big"));
    std::os::unix::fs::symlink(&outside, cache.join("aa/link-out")).expect("symlink");
    std::os::unix::fs::symlink(
        outside.join("big"),
        cache.join("ab").join(format!("{}-d", "b".repeat(64))),
    )
    .expect("symlink");
    std::fs::create_dir_all(cache.join("ac/mnt")).expect("mkdir");
    let p = policy(
        d.path(),
        "p.toml",
        &format!("[cache.t]\npath = \"{}\"\n", cache.display()),
    );
    let script = format!(
        "mount --bind '{out}' '{cache}/ac/mnt'\n'{bin}' --policy '{p}' check --json > '{dir}/report.json' || true\n'{bin}' --policy '{p}' check > '{dir}/report.txt' || true\n",
        out = outside.display(),
        cache = cache.display(),
        bin = support::bin().display(),
        p = p.display(),
        dir = d.path().display()
    );
    let o = support::in_mount_ns(&script);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("report.json")).expect("report"))
            .expect("json");
    let c = &v["caches"][0];
    let find = |k: &str| {
        c["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["kind"] == k)
            .cloned()
    };
    let sym = find("symlink").expect("symlink finding");
    assert_eq!(sym["count"], 2);
    assert_eq!(sym["severity"], "error");
    let mnt = find("mount").expect("mount finding");
    assert_eq!(mnt["count"], 1);
    assert_eq!(mnt["examples"][0], "ac/mnt");
    assert!(
        c["observed"]["allocated_bytes"].as_u64().expect("bytes") < 4 << 20,
        "the 4 MiB file outside was not counted"
    );
    assert_eq!(v["exit_code"], 1);
    let text = std::fs::read_to_string(d.path().join("report.txt")).expect("text");
    assert!(text.contains("mount point inside the cache"), "{text}");
    assert_eq!(support::sentinel(&outside.join("big")), before);
}

#[test]
fn read_only_group_grant_is_called_out() {
    support::require_root();
    support::ensure_group("gwt-readers");
    let d = tempdir();
    let cache = d.path().join("cache");
    mkcache(&cache, 20, 1);
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\ngroup = \"gwt-readers\"\ngroup_access = \"r-x\"\n",
            cache.display()
        ),
    );
    let o = run(
        [
            "--policy".to_string(),
            p.display().to_string(),
            "check".into(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains("read-only-group-grant")
            && text.contains("permission denied")
            && text.contains("group_access = \"rwx\""),
        "{text}"
    );
}

#[test]
fn missing_fixed_cache_with_create_is_a_warning_enforce_fixes() {
    let d = tempdir();
    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}/new-cache\"\ncreate = true\n",
            d.path().display()
        ),
    );
    let (code, v) = check_json(&p);
    assert_eq!(code, 1);
    let f = &v["caches"][0]["findings"][0];
    assert_eq!(f["kind"], "missing");
    assert_eq!(f["auto_fix"], true);
}

/// A cache on a read-only mount (under the shipped unit: outside `ReadWritePaths=`) is one
/// clear error naming the fix, and enforce plans nothing there instead of failing once per
/// entry with EROFS.
#[test]
fn read_only_mount_is_one_finding_with_the_fix_and_enforce_touches_nothing() {
    support::require_root();
    let d = tempdir();
    let cache = d.path().join("cache");
    mkcache(&cache, 200, 31);
    let pol = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.ro]\npath = \"{}\"\nmax_size = \"64KiB\"\nmin_age = \"1h\"\n",
            cache.display()
        ),
    );
    let before = find_count(&cache, &["-type", "f"]);
    let script = format!(
        "mount --bind {c} {c}; mount -o remount,bind,ro {c}; \
         {bin} --policy {p} check --json > {d}/check.json || true; \
         rc=0; {bin} --policy {p} enforce --json > {d}/enforce.json || rc=$?; echo $rc > {d}/enforce.rc",
        c = cache.display(),
        bin = support::bin().display(),
        p = pol.display(),
        d = d.path().display()
    );
    let o = support::in_mount_ns(&script);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("check.json")).expect("check"))
            .expect("check json");
    let c = &check["caches"][0];
    assert_eq!(c["read_only"], true, "{c}");
    let ro: Vec<_> = c["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "read-only-mount")
        .collect();
    assert_eq!(ro.len(), 1, "{c}");
    assert_eq!(ro[0]["severity"], "error");
    assert!(
        ro[0]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("systemctl edit gocache-warden")
                && f.contains(&format!("ReadWritePaths={}", cache.display()))),
        "{}",
        ro[0]
    );
    let enforce: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("enforce.json")).expect("enforce"),
    )
    .expect("enforce json");
    let plan = &enforce["plan"]["caches"][0];
    assert!(plan["eviction"].is_null(), "nothing planned: {plan}");
    assert!(
        plan["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("read-only")),
        "{plan}"
    );
    let rc = std::fs::read_to_string(d.path().join("enforce.rc")).expect("enforce rc");
    assert_eq!(rc.trim(), "1", "a cache enforce cannot change is an error");
    // `failed` is a tally ({count, examples}) per cache the run touched; a skipped cache
    // has none, and neither may any other.
    let outcome = enforce["outcome"]["caches"]
        .as_array()
        .unwrap_or_else(|| panic!("no outcome caches: {enforce}"));
    for c in outcome {
        let failed = c["failed"]["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no failed count in {c}"));
        assert_eq!(failed, 0, "no per-entry EROFS failures: {enforce}");
    }
    assert_eq!(
        find_count(&cache, &["-type", "f"]),
        before,
        "nothing removed"
    );
}
