//! Adversarial suite, as root: every case plants something inside a cache that points, links
//! or mounts to sentinel files and directories outside it (old, so eviction would want them;
//! group root and no ACL, so a fix would want them), and asserts that the sentinels keep their
//! content, mode, owner, nlink, mtime and ACL through `check` and a real `enforce`; that the
//! offending entry is reported (`caches[0].findings[].kind`) and left alone; that normal
//! entries around it are still evicted and fixed; that the cache root, shards, README and
//! trim.txt survive; and the exit codes. Races are made deterministic with the binary's
//! failpoints (`GOCACHE_WARDEN_FAILPOINT`). Every run of the binary has a deadline, so a FIFO
//! opened by mistake fails the test instead of hanging it.
//!
//! Needs root, `acl` (getfacl/setfacl), util-linux (`unshare`, `mount`) and coreutils.

mod support;

use serde_json::Value;
use std::cell::Cell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    Sentinel, age, bin, ensure_group, ensure_user, in_mount_ns, now, require_root, sentinel,
    tempdir,
};

const GROUP: &str = "gwt-adv";
/// Older than max_age (1d): eviction wants it.
const OLD: i64 = 3 * 86400;
/// Younger than the floor (1h): kept, but fixed.
const FRESH: i64 = 600;
/// No run of the binary on these tiny caches may take longer.
const DEADLINE: Duration = Duration::from_secs(30);

/// A cache id: two hex digits of shard, then 62 more.
fn id(shard: &str, n: u64) -> String {
    assert_eq!(shard.len(), 2);
    format!("{shard}{n:062x}")
}

/// An action record as cmd/go writes it (175 bytes).
fn record(action: &str, output: &str, size: usize, secs_ago: i64) -> String {
    let t = (now() - secs_ago) * 1_000_000_000;
    format!("v1 {action} {output} {size:>20} {t:>20}\n")
}

/// Sets atime and mtime of `p` (not following a symlink) to Unix time `t`.
fn set_time(p: &Path, t: i64) {
    let ts = nix::sys::time::TimeSpec::new(t, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

fn getfacl(p: &Path) -> String {
    let o = Command::new("getfacl")
        .args(["-P", "-n", "--absolute-names"])
        .arg(p)
        .output()
        .expect("getfacl (apt-get install acl)");
    assert!(
        o.status.success(),
        "getfacl {}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Strips an entry to root:root, mode `mode`, no ACL: everything the policy would fix.
fn make_unfixed(p: &Path, mode: u32) {
    std::os::unix::fs::lchown(p, Some(0), Some(0)).expect("chown");
    let o = Command::new("setfacl")
        .args(["-b", "-k", "-P"])
        .arg(p)
        .output()
        .expect("setfacl (apt-get install acl)");
    assert!(
        o.status.success(),
        "setfacl -b {}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Waits for `child` with a deadline; kills it (by its own handle) and fails when exceeded.
fn wait_deadline(child: &mut Child, label: &str) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s
                .code()
                .unwrap_or_else(|| panic!("{label}: killed by a signal ({s:?})"));
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{label}: no exit within {DEADLINE:?} (did it open a FIFO or a device?)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}):\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// One unit of the cache: an action record and the output it names.
struct Unit {
    a: PathBuf,
    d: PathBuf,
}

/// One adversarial case: its own temp dir holding the cache, the sentinels outside it and
/// the policy.
struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cache: PathBuf,
    outside: PathBuf,
    policy: PathBuf,
    gid: u32,
    shards: Vec<String>,
    /// Paths (outside the cache, or left-alone entries inside it) and their snapshots.
    guarded: Vec<(PathBuf, Option<Sentinel>)>,
    runs: Cell<u32>,
}

impl Case {
    /// A small Go-shaped cache (README, trim.txt written now, the given shards) and a
    /// bystander sentinel directory outside it holding old entry-named files.
    fn new(shards: &[&str]) -> Case {
        require_root();
        let gid = ensure_group(GROUP);
        let tmp = tempdir();
        let dir = tmp.path().to_path_buf();
        let cache = dir.join("cache");
        let outside = dir.join("outside");
        std::fs::create_dir(&cache).expect("mkdir cache");
        std::fs::create_dir(&outside).expect("mkdir outside");
        std::fs::write(
            cache.join("README"),
            "This directory holds cached build artifacts from the Go build system.\n",
        )
        .expect("README");
        std::fs::write(cache.join("trim.txt"), now().to_string()).expect("trim.txt");
        for s in shards {
            std::fs::create_dir(cache.join(s)).expect("mkdir shard");
        }
        let body = format!(
            "[cache.t]\npath = \"{}\"\nkind = \"build\"\nmax_size = \"1MiB\"\nmax_age = \"1d\"\nmin_age = \"1h\"\n\
             group = \"{GROUP}\"\nsetgid = true\ngroup_access = \"rwx\"\nother = \"---\"\n",
            cache.display()
        );
        let policy = support::policy(&dir, "adv.toml", &body);
        let mut c = Case {
            _tmp: tmp,
            dir,
            cache,
            outside,
            policy,
            gid,
            shards: shards.iter().map(|s| s.to_string()).collect(),
            guarded: Vec::new(),
            runs: Cell::new(0),
        };
        let by = c.outside_dir("bystander");
        c.outside_file(
            &format!("bystander/{}-a", id("ab", 0xb1)),
            b"bystander action",
        );
        c.outside_file(
            &format!("bystander/{}-d", id("ab", 0xb2)),
            b"bystander output",
        );
        age(&by, OLD);
        c
    }

    /// A sentinel file outside the cache: root:root 0640, no ACL, old.
    fn outside_file(&mut self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.outside.join(rel);
        std::fs::write(&p, content).expect("write sentinel");
        make_unfixed(&p, 0o640);
        age(&p, OLD);
        self.guard(&p);
        p
    }

    /// A sentinel directory outside the cache: root:root 0750, no ACL (aged by the caller
    /// once filled).
    fn outside_dir(&mut self, rel: &str) -> PathBuf {
        let p = self.outside.join(rel);
        std::fs::create_dir_all(&p).expect("mkdir sentinel");
        make_unfixed(&p, 0o750);
        self.guard(&p);
        p
    }

    /// Registers `p` as something no run may change (snapshotted by [`Case::seal`]).
    fn guard(&mut self, p: &Path) {
        self.guarded.push((p.to_path_buf(), None));
    }

    /// Snapshots a path, then puts its times back: reading a sentinel moves its atime,
    /// which would make it look recently used and shield it from a buggy eviction.
    fn snap(p: &Path) -> Sentinel {
        let s = sentinel(p);
        // Only regular files are read; leaving the rest alone keeps inotify watches quiet.
        if s.mode & libc::S_IFMT == libc::S_IFREG {
            set_time(p, s.mtime);
        }
        s
    }

    /// Snapshots every guarded path (after setup, before the first run).
    fn seal(&mut self) {
        for (p, s) in &mut self.guarded {
            *s = Some(Case::snap(p));
        }
    }

    fn assert_guarded_unchanged(&self, after: &str) {
        for (p, s) in &self.guarded {
            let want = s.as_ref().expect("seal() before running");
            assert!(
                std::fs::symlink_metadata(p).is_ok(),
                "after {after}: {} was removed",
                p.display()
            );
            assert_eq!(
                &Case::snap(p),
                want,
                "after {after}: {} changed",
                p.display()
            );
        }
    }

    /// The cache root, its shards, README and trim.txt are never removed.
    fn assert_skeleton(&self) {
        let md = std::fs::symlink_metadata(&self.cache).expect("cache root");
        assert!(md.is_dir(), "cache root is no longer a directory");
        for s in &self.shards {
            let p = self.cache.join(s);
            assert!(
                std::fs::symlink_metadata(&p).is_ok(),
                "shard {} was removed",
                p.display()
            );
        }
        for f in ["README", "trim.txt"] {
            let md = std::fs::symlink_metadata(self.cache.join(f))
                .unwrap_or_else(|e| panic!("{f} removed: {e}"));
            assert!(md.is_file(), "{f} is no longer a regular file");
        }
    }

    /// An action in `action`'s shard naming output `output` (in its own shard), both last
    /// used `secs_ago`.
    fn unit(&self, action: &str, output: &str, secs_ago: i64) -> Unit {
        let d = self.cache.join(&output[..2]).join(format!("{output}-d"));
        std::fs::create_dir_all(d.parent().expect("shard")).expect("mkdir shard");
        std::fs::write(&d, [b'o'; 300]).expect("write output");
        age(&d, secs_ago);
        Unit {
            a: self.action(action, output, secs_ago),
            d,
        }
    }

    /// Only the action record (its output is something else, or nothing).
    fn action(&self, action: &str, output: &str, secs_ago: i64) -> PathBuf {
        let a = self.cache.join(&action[..2]).join(format!("{action}-a"));
        std::fs::create_dir_all(a.parent().expect("shard")).expect("mkdir shard");
        std::fs::write(&a, record(action, output, 300, secs_ago)).expect("write action");
        age(&a, secs_ago);
        a
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--policy")
            .arg(&self.policy)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Starts `cmd` with stdout and stderr in files (no pipe can fill up and stall it).
    fn spawn(&self, cmd: &mut Command) -> (Child, PathBuf, PathBuf) {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let out = self.dir.join(format!("run{n}.out"));
        let err = self.dir.join(format!("run{n}.err"));
        cmd.stdout(std::fs::File::create(&out).expect("stdout file"));
        cmd.stderr(std::fs::File::create(&err).expect("stderr file"));
        (cmd.spawn().expect("spawn gocache-warden"), out, err)
    }

    fn finish(child: &mut Child, out: &Path, err: &Path, label: &str) -> Run {
        let code = wait_deadline(child, label);
        Run {
            code,
            stdout: std::fs::read(out).expect("read stdout"),
            stderr: String::from_utf8_lossy(&std::fs::read(err).expect("read stderr")).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_cmd(&mut self.command(args), &args.join(" "))
    }

    fn run_cmd(&self, cmd: &mut Command, label: &str) -> Run {
        let (mut child, out, err) = self.spawn(cmd);
        Case::finish(&mut child, &out, &err, label)
    }

    /// `check --json`: expects exit 1 (violations) and returns the report.
    fn check(&self) -> Value {
        let r = self.run(&["check", "--json"]);
        assert_eq!(
            r.code, 1,
            "check exit code (violations found)\nstderr: {}",
            r.stderr
        );
        let v = r.json();
        self.assert_guarded_unchanged("check");
        v
    }

    /// A real `enforce --json`: expects exit `code` and returns the document.
    fn enforce(&self, code: i32) -> Value {
        let r = self.run(&["enforce", "--json"]);
        self.enforce_done(r, code)
    }

    fn enforce_done(&self, r: Run, code: i32) -> Value {
        assert_eq!(
            r.code,
            code,
            "enforce exit code\nstdout: {}\nstderr: {}",
            r.text(),
            r.stderr
        );
        let v = r.json();
        assert_eq!(v["dry_run"], false);
        self.assert_guarded_unchanged("enforce");
        self.assert_skeleton();
        v
    }

    /// Runs `enforce --json` with failpoint `spec` (`NAME[#N]:REL`), runs `race` while the
    /// binary waits at the point, then lets it go on.
    fn enforce_racing(&self, spec: &str, race: impl FnOnce()) -> Run {
        support::require_test_hooks();
        let fp = self.dir.join("failpoint");
        std::fs::create_dir_all(&fp).expect("mkdir failpoint dir");
        let name = spec.split([':', '#']).next().expect("failpoint name");
        let mut cmd = self.command(&["enforce", "--json"]);
        cmd.env(
            "GOCACHE_WARDEN_FAILPOINT",
            format!("{spec}:{}", fp.display()),
        );
        let (mut child, out, err) = self.spawn(&mut cmd);
        let ready = fp.join(format!("{name}.ready"));
        let start = Instant::now();
        while !ready.exists() {
            if child.try_wait().expect("wait").is_some() || start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "failpoint {spec} never reached\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()),
                    String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        race();
        std::fs::write(fp.join(format!("{name}.go")), "").expect("write .go");
        Case::finish(&mut child, &out, &err, spec)
    }

    /// Group, access ACL (X semantics for files), default ACL and setgid (dirs) as the
    /// policy wants.
    fn assert_fixed(&self, p: &Path) {
        let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(
            md.gid(),
            self.gid,
            "{} not chgrp'ed to {GROUP}",
            p.display()
        );
        let acl = getfacl(p);
        let g = self.gid;
        if md.is_dir() {
            assert!(
                md.mode() & libc::S_ISGID != 0,
                "{} lacks setgid",
                p.display()
            );
            assert!(
                acl.contains(&format!("\ngroup:{g}:rwx")),
                "{} access ACL:\n{acl}",
                p.display()
            );
            assert!(
                acl.contains(&format!("default:group:{g}:rwx")),
                "{} default ACL:\n{acl}",
                p.display()
            );
        } else {
            assert!(
                acl.contains(&format!("\ngroup:{g}:rw-")),
                "{} access ACL:\n{acl}",
                p.display()
            );
        }
        assert_eq!(md.mode() & 0o7, 0, "{} other access", p.display());
    }
}

/// The finding of `kind` in a check report (fails listing the kinds there are).
fn finding<'a>(check: &'a Value, kind: &str) -> &'a Value {
    let fs = check["caches"][0]["findings"]
        .as_array()
        .expect("findings array");
    fs.iter().find(|f| f["kind"] == kind).unwrap_or_else(|| {
        let kinds: Vec<_> = fs.iter().map(|f| f["kind"].to_string()).collect();
        panic!("no {kind:?} finding; kinds: {}", kinds.join(", "))
    })
}

fn examples(v: &Value) -> Vec<String> {
    v["examples"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts check reported `kind` for exactly `count` entries, among them `rels`.
fn assert_finding(check: &Value, kind: &str, count: u64, rels: &[&str]) {
    let f = finding(check, kind);
    assert_eq!(f["count"], count, "{kind} count: {f}");
    let ex = examples(f);
    for r in rels {
        assert!(ex.iter().any(|e| e == r), "{kind} examples {ex:?} lack {r}");
    }
}

fn outcome(e: &Value) -> &Value {
    &e["outcome"]["caches"][0]
}

/// Asserts enforce left `rels` alone as `kind` (counted at least once each) and failed nothing.
fn assert_refused(e: &Value, kind: &str, rels: &[&str]) {
    let o = outcome(e);
    let r = &o["refused"][kind];
    assert!(
        r["count"].as_u64().unwrap_or(0) >= rels.len() as u64,
        "refused {kind}: {o}"
    );
    let ex = examples(r);
    for rel in rels {
        assert!(
            ex.iter().any(|e| e == rel),
            "refused {kind} examples {ex:?} lack {rel}"
        );
    }
}

fn assert_no_failures(e: &Value) {
    assert_eq!(
        outcome(e)["failed"]["count"],
        0,
        "failures: {}",
        outcome(e)["failed"]
    );
}

fn evicted_entries(e: &Value) -> u64 {
    let ev = &outcome(e)["evicted"];
    ["age", "size"]
        .iter()
        .map(|k| ev[k]["entries"].as_u64().unwrap_or(0))
        .sum()
}

fn assert_gone(p: &Path) {
    assert!(
        std::fs::symlink_metadata(p).is_err(),
        "{} should have been evicted",
        p.display()
    );
}

fn rel_of<'a>(c: &Case, p: &'a Path) -> &'a str {
    p.strip_prefix(&c.cache)
        .expect("inside the cache")
        .to_str()
        .expect("utf-8")
}

// 1. A symlink in place of a shard.
#[test]
fn symlinked_shard_is_reported_and_never_followed() {
    let mut c = Case::new(&["cd"]);
    let target = c.outside_dir("shard");
    let out_id = id("ab", 0x51);
    c.outside_file(&format!("shard/{out_id}-d"), b"looks like an output");
    c.outside_file(
        &format!("shard/{}-a", id("ab", 0x52)),
        &record(&id("ab", 0x52), &out_id, 20, OLD).into_bytes(),
    );
    age(&target, OLD);
    std::os::unix::fs::symlink(&target, c.cache.join("ab")).expect("symlink");
    age(&c.cache.join("ab"), OLD);
    // An old action whose output lives "in" the symlinked shard: evicting the action must not
    // take the output along through the symlink.
    let reach = c.action(&id("cd", 1), &out_id, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.guard(&c.cache.join("ab"));
    c.seal();

    let chk = c.check();
    assert_finding(&chk, "symlink", 1, &["ab"]);

    let e = c.enforce(0);
    assert_refused(&e, "symlink", &["ab"]);
    assert_no_failures(&e);
    assert_eq!(
        std::fs::read_link(c.cache.join("ab")).expect("symlink kept"),
        target
    );
    for p in [&reach, &old.a, &old.d] {
        assert_gone(p);
    }
    assert!(evicted_entries(&e) >= 3);
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
    c.assert_fixed(&c.cache.join("cd"));
    c.assert_fixed(&c.cache);
}

// 2. Symlinks named like entries (-d to a file and to a directory, -a), themselves old.
#[test]
fn symlinked_entries_are_reported_and_never_followed() {
    let mut c = Case::new(&["ab", "cd"]);
    let secret_d = c.outside_file("secret-d", b"not an output");
    let secret_a = c.outside_file(
        "secret-a",
        &record(&id("cd", 9), &id("cd", 8), 20, OLD).into_bytes(),
    );
    let exec = c.outside_dir("execdir");
    c.outside_file("execdir/prog", b"#!/bin/sh\n");
    age(&exec, OLD);
    let (h1, h2, h3) = (id("ab", 1), id("ab", 2), id("ab", 3));
    let links = [
        (format!("ab/{h1}-d"), &secret_d),
        (format!("ab/{h2}-a"), &secret_a),
        (format!("ab/{h3}-d"), &exec),
    ];
    for (rel, target) in &links {
        let l = c.cache.join(rel);
        std::os::unix::fs::symlink(target, &l).expect("symlink");
        age(&l, OLD);
        c.guard(&l);
    }
    // An old action naming the symlinked output: it goes, the symlink stays.
    let namer = c.action(&id("cd", 1), &h1, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();

    let rels: Vec<&str> = links.iter().map(|(r, _)| r.as_str()).collect();
    let chk = c.check();
    assert_finding(&chk, "symlink", 3, &rels);

    let e = c.enforce(0);
    assert_refused(&e, "symlink", &rels);
    assert_no_failures(&e);
    for (rel, target) in &links {
        assert_eq!(
            &std::fs::read_link(c.cache.join(rel)).expect("symlink kept"),
            *target
        );
    }
    for p in [&namer, &old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
    c.assert_fixed(&c.cache.join("ab"));
}

/// Restores `/proc/sys/fs/protected_hardlinks` when dropped (also on panic).
struct SysctlGuard {
    path: &'static str,
    orig: String,
}

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> SysctlGuard {
        let orig = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let g = SysctlGuard { path, orig };
        std::fs::write(path, value).unwrap_or_else(|e| {
            panic!("write {path} (needs root outside a read-only /proc/sys): {e}")
        });
        g
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.orig.trim());
    }
}

// 3. Hard links into the cache to root-owned files outside, under both settings of
// fs.protected_hardlinks (one test: the sysctl is global).
#[test]
fn hardlinks_to_outside_files_are_refused_with_and_without_protected_hardlinks() {
    require_root();
    let user = ensure_user("gwt-adv-mallory", &[GROUP]);
    for protected in ["0", "1"] {
        let _g = SysctlGuard::set("/proc/sys/fs/protected_hardlinks", protected);
        let mut c = Case::new(&["ab", "cd"]);
        // Let the group member reach the sentinel and write into the shard, as in a shared
        // cache before enforce has run.
        std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&c.outside, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(c.cache.join("ab"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let secret = c.outside_file("secret", b"root:$6$hash:19000:0:99999:7:::\n");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let rec = c.outside_file(
            "record-a",
            &record(&id("ab", 2), &id("cd", 8), 300, OLD).into_bytes(),
        );
        let (ld, la) = (
            c.cache.join(format!("ab/{}-d", id("ab", 1))),
            c.cache.join(format!("ab/{}-a", id("ab", 2))),
        );
        let as_user = Command::new("ln")
            .arg(&secret)
            .arg(&ld)
            .uid(user)
            .gid(user)
            .output()
            .expect("ln");
        if protected == "0" {
            assert!(
                as_user.status.success(),
                "an unprivileged link must work with protected_hardlinks=0: {}",
                String::from_utf8_lossy(&as_user.stderr)
            );
        } else {
            assert!(
                !as_user.status.success(),
                "protected_hardlinks=1 must stop an unprivileged link"
            );
            std::fs::hard_link(&secret, &ld).expect("link as root");
        }
        std::fs::hard_link(&rec, &la).expect("link as root");
        for p in [&secret, &rec] {
            age(p, OLD);
        }
        let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
        let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
        c.seal();

        let (rd, ra) = (rel_of(&c, &ld).to_string(), rel_of(&c, &la).to_string());
        let chk = c.check();
        assert_finding(&chk, "hardlink", 2, &[&rd, &ra]);

        let e = c.enforce(0);
        assert_refused(&e, "hardlink", &[&rd, &ra]);
        assert_no_failures(&e);
        for (l, s) in [(&ld, &secret), (&la, &rec)] {
            let (a, b) = (
                std::fs::symlink_metadata(l).expect("link kept"),
                std::fs::metadata(s).expect("sentinel"),
            );
            assert_eq!(
                (a.ino(), a.nlink()),
                (b.ino(), 2),
                "protected_hardlinks={protected}: {}",
                l.display()
            );
        }
        for p in [&old.a, &old.d] {
            assert_gone(p);
        }
        c.assert_fixed(&fresh.a);
        c.assert_fixed(&fresh.d);
    }
}

/// inotify on `paths`: any open, read, write, attribute change, move or delete of them.
fn watch(paths: &[&Path]) -> nix::sys::inotify::Inotify {
    use nix::sys::inotify::{AddWatchFlags as W, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify");
    for p in paths {
        let m = W::IN_OPEN
            | W::IN_ACCESS
            | W::IN_MODIFY
            | W::IN_ATTRIB
            | W::IN_DELETE_SELF
            | W::IN_MOVE_SELF;
        ino.add_watch(*p, m | W::IN_DONT_FOLLOW)
            .unwrap_or_else(|e| panic!("inotify_add_watch {}: {e}", p.display()));
    }
    ino
}

fn events(ino: &nix::sys::inotify::Inotify) -> Vec<String> {
    match ino.read_events() {
        Ok(ev) => ev
            .iter()
            .map(|e| format!("{:?} on wd {:?}", e.mask, e.wd))
            .collect(),
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(e) => panic!("inotify read: {e}"),
    }
}

// 4. A FIFO, a character device and a socket named like entries, old: never opened, left
// alone.
#[test]
fn fifos_device_nodes_and_sockets_are_never_opened() {
    let mut c = Case::new(&["ab", "cd"]);
    let (h1, h2) = (id("ab", 1), id("ab", 2));
    let fifo = c.cache.join(format!("ab/{h1}-d"));
    let dev = c.cache.join(format!("ab/{h2}-a"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod c 1 3");
    let sock = c.cache.join(format!("cd/{}-d", id("cd", 6)));
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let ino = watch(&[&fifo, &dev, &sock]);
    // The watch sees opens: prove it on the device node, then start from a clean slate.
    drop(std::fs::File::open(&dev).expect("open c 1 3"));
    assert!(
        events(&ino).iter().any(|e| e.contains("IN_OPEN")),
        "inotify does not report opens here"
    );
    for p in [&fifo, &dev, &sock] {
        age(p, OLD);
        c.guard(p);
    }
    // An old action naming the FIFO as its output: evicting it must not touch the FIFO.
    let namer = c.action(&id("cd", 1), &h1, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();
    events(&ino);

    let rels = [&fifo, &dev, &sock].map(|p| rel_of(&c, p).to_string());
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    let chk = c.check();
    assert_finding(&chk, "special", 3, &rels);
    let e = c.enforce(0);
    assert_refused(&e, "special", &rels);
    assert_no_failures(&e);
    assert_eq!(
        events(&ino),
        Vec::<String>::new(),
        "a FIFO, device node or socket was opened or changed"
    );
    assert!(
        listener.accept().is_err(),
        "someone connected to the socket"
    );
    for p in [&namer, &old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
}

// 4b. Hostile entries inside an old executable output directory (`<hex>-d/`): the
// directory is a unit, but what it holds is not Go's, so it is left alone with them.
#[test]
fn fifo_and_symlink_inside_an_old_executable_output_are_left_alone() {
    let mut c = Case::new(&["ab", "cd"]);
    let secret = c.outside_file("secret", b"outside");
    let exec = c.cache.join(format!("ab/{}-d", id("ab", 1)));
    std::fs::create_dir(&exec).expect("mkdir exec");
    std::fs::write(exec.join("prog"), b"\x7fELF").expect("write prog");
    let fifo = exec.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let link = exec.join("link");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    for p in [&exec.join("prog"), &fifo, &link, &exec] {
        age(p, OLD);
    }
    c.guard(&fifo);
    c.guard(&link);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    c.seal();

    let (rf, rl) = (rel_of(&c, &fifo).to_string(), rel_of(&c, &link).to_string());
    let chk = c.check();
    assert_finding(&chk, "special", 1, &[&rf]);
    assert_finding(&chk, "symlink", 1, &[&rl]);
    let e = c.enforce(0);
    assert_no_failures(&e);
    for p in [&old.a, &old.d] {
        assert_gone(p);
    }
}

/// Shell-quotes a path for `sh -c`.
fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Runs `check --json` then `enforce --json` inside a private mount namespace after
/// `mount --bind SRC DST` for each pair.
fn run_with_mounts(c: &Case, mounts: &[(&Path, &Path)]) -> (Run, Run) {
    let b = q(&bin());
    let p = q(&c.policy);
    let mut s = String::new();
    for (src, dst) in mounts {
        s += &format!("mount --bind {} {}\n", q(src), q(dst));
    }
    let d = &c.dir;
    for (name, args) in [("check", "check --json"), ("enforce", "enforce --json")] {
        s += &format!(
            "rc=0; timeout 30 {b} --policy {p} {args} >{} 2>{} || rc=$?; echo $rc >{}\n",
            q(&d.join(format!("ns-{name}.out"))),
            q(&d.join(format!("ns-{name}.err"))),
            q(&d.join(format!("ns-{name}.rc")))
        );
    }
    let o = in_mount_ns(&s);
    assert!(
        o.status.success(),
        "mount namespace script failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let get = |name: &str| {
        let rc: i32 = std::fs::read_to_string(d.join(format!("ns-{name}.rc")))
            .expect("rc")
            .trim()
            .parse()
            .expect("rc number");
        assert_ne!(rc, 124, "{name} timed out in the mount namespace");
        Run {
            code: rc,
            stdout: std::fs::read(d.join(format!("ns-{name}.out"))).expect("stdout"),
            stderr: std::fs::read_to_string(d.join(format!("ns-{name}.err"))).unwrap_or_default(),
        }
    };
    (get("check"), get("enforce"))
}

// 5. Bind mounts of sentinel directories inside the cache: a whole shard and an
// executable-output-shaped directory. Not entered, not evicted, not fixed.
#[test]
fn bind_mounted_directories_are_never_entered() {
    let mut c = Case::new(&["ab", "cd", "ef"]);
    let src_exec = c.outside_dir("mnt-exec");
    c.outside_file("mnt-exec/prog", b"#!/bin/sh\n");
    let src_shard = c.outside_dir("mnt-shard");
    let sid = id("ef", 1);
    c.outside_file(
        &format!("mnt-shard/{sid}-a"),
        &record(&sid, &sid, 10, OLD).into_bytes(),
    );
    c.outside_file(&format!("mnt-shard/{sid}-d"), b"0123456789");
    for p in [&src_exec, &src_shard] {
        age(p, OLD);
    }
    let hx = id("ab", 1);
    let exec = c.cache.join(format!("ab/{hx}-d"));
    std::fs::create_dir(&exec).expect("mkdir mountpoint");
    age(&exec, OLD);
    // An old action naming the mounted output.
    let namer = c.action(&id("cd", 1), &hx, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();

    let ef = c.cache.join("ef");
    let (chk, enf) = run_with_mounts(&c, &[(&src_exec, &exec), (&src_shard, &ef)]);
    assert_eq!(chk.code, 1, "check exit code\nstderr: {}", chk.stderr);
    let rx = rel_of(&c, &exec).to_string();
    assert_finding(&chk.json(), "mount", 2, &[&rx, "ef"]);
    let e = c.enforce_done(enf, 0);
    assert_refused(&e, "mount", &[&rx, "ef"]);
    assert_no_failures(&e);
    assert!(exec.is_dir() && ef.is_dir(), "mount points removed");
    for p in [&namer, &old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
}

// 5b. A bind mount of a sentinel *file* over an entry: reported as a mount, left alone, and
// not a failure.
#[test]
fn bind_mounted_file_is_reported_as_a_mount_and_left_alone() {
    let mut c = Case::new(&["ab", "cd"]);
    let src = c.outside_file("secret-d", b"mounted over an output");
    let entry = c.cache.join(format!("ab/{}-d", id("ab", 1)));
    std::fs::write(&entry, b"placeholder").expect("write");
    age(&entry, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();

    let (chk, enf) = run_with_mounts(&c, &[(&src, &entry)]);
    assert_eq!(chk.code, 1, "check exit code\nstderr: {}", chk.stderr);
    let re = rel_of(&c, &entry).to_string();
    let chk = chk.json();
    assert_finding(&chk, "mount", 1, &[&re]);
    for kind in ["group", "acl", "other-access"] {
        if let Some(f) = chk["caches"][0]["findings"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["kind"] == kind))
        {
            assert!(
                !examples(f).contains(&re),
                "the mount point is reported as fixable {kind}: {f}"
            );
        }
    }
    let e = c.enforce_done(enf, 0);
    assert_refused(&e, "mount", &[&re]);
    assert_no_failures(&e);
    assert_eq!(std::fs::read(&entry).expect("entry kept"), b"placeholder");
    for p in [&old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
}

/// A case for the shard-swap races: shard `ab` holds old and fresh units and an old action
/// whose output is in `cd`; `outside/shard` holds old entry-named files.
fn swap_case(cross_shard: bool) -> (Case, PathBuf, Vec<Unit>) {
    let mut c = Case::new(&["ab", "cd"]);
    let target = c.outside_dir("shard");
    c.outside_file(
        &format!("shard/{}-a", id("ab", 1)),
        &record(&id("ab", 1), &id("ab", 2), 300, OLD).into_bytes(),
    );
    c.outside_file(&format!("shard/{}-d", id("ab", 2)), &[b'o'; 300]);
    age(&target, OLD);
    let mut units = vec![
        c.unit(&id("ab", 1), &id("ab", 2), OLD),
        c.unit(&id("ab", 3), &id("ab", 4), FRESH),
        c.unit(&id("cd", 1), &id("cd", 2), OLD),
        c.unit(&id("cd", 3), &id("cd", 4), FRESH),
    ];
    if cross_shard {
        // An old action in cd naming an output in ab: its eviction opens ab by itself, from
        // the root. (Only before-apply can order this against the swap: during a walk the
        // other thread may get to cd before or after.)
        units.push(c.unit(&id("cd", 5), &id("ab", 6), OLD));
    }
    (c, target, units)
}

/// Moves the real shard out of the cache (same filesystem) and puts a symlink to the
/// sentinel directory in its place; guards what was moved (now outside the cache).
fn swap_shard(c: &Case, target: &Path) -> Vec<(PathBuf, Sentinel)> {
    let moved = c.dir.join("moved-ab");
    std::fs::rename(c.cache.join("ab"), &moved).expect("rename shard away");
    std::os::unix::fs::symlink(target, c.cache.join("ab")).expect("symlink shard");
    let mut snaps = Vec::new();
    for e in std::fs::read_dir(&moved).expect("list moved") {
        let p = e.expect("entry").path();
        snaps.push((p.clone(), Case::snap(&p)));
    }
    snaps
}

fn assert_moved_unchanged(snaps: &[(PathBuf, Sentinel)], n: usize) {
    assert_eq!(snaps.len(), n, "moved shard entries");
    for (p, s) in snaps {
        assert_eq!(
            &Case::snap(p),
            s,
            "{} (moved out of the cache) changed",
            p.display()
        );
    }
}

// 6a. The shard becomes a symlink between planning and applying.
#[test]
fn shard_swapped_for_a_symlink_after_planning() {
    let (mut c, target, u) = swap_case(true);
    c.seal();
    let mut moved = Vec::new();
    let r = c.enforce_racing("before-apply:.", || moved = swap_shard(&c, &target));
    let e = c.enforce_done(r, 0);
    assert_moved_unchanged(&moved, 5);
    assert_refused(&e, "symlink", &["ab"]);
    assert_no_failures(&e);
    // cd's old unit went; the old action naming an output in ab went without following ab.
    for p in [&u[2].a, &u[2].d, &u[4].a] {
        assert_gone(p);
    }
    c.assert_fixed(&u[3].a);
    c.assert_fixed(&u[3].d);
}

// 6b. The shard becomes a symlink between the walk's stat and open, in the apply phase's
// first walk (action records; N = 2: the inspection walk opened `ab` first).
#[test]
fn shard_swapped_between_stat_and_open_in_the_actions_walk() {
    let (mut c, target, u) = swap_case(false);
    c.seal();
    let mut moved = Vec::new();
    let r = c.enforce_racing("walk-open#2:ab", || moved = swap_shard(&c, &target));
    let e = c.enforce_done(r, 0);
    assert_moved_unchanged(&moved, 4);
    assert_refused(&e, "symlink", &["ab"]);
    assert_no_failures(&e);
    for p in [&u[2].a, &u[2].d] {
        assert_gone(p);
    }
    c.assert_fixed(&u[3].d);
}

// 6c. The same in the apply phase's second walk (evict the rest, fix; N = 3): the open is
// refused and reported as a failure of that directory, nothing outside is touched.
#[test]
fn shard_swapped_between_stat_and_open_in_the_fix_walk() {
    let (mut c, target, u) = swap_case(false);
    c.seal();
    let mut moved = Vec::new();
    let r = c.enforce_racing("walk-open#3:ab", || moved = swap_shard(&c, &target));
    let e = c.enforce_done(r, 1);
    // The actions walk already ran on the real shard (ab's old action went; its output is
    // the second walk's to evict); what is left of it (that output and the fresh unit) is
    // outside the cache now and must stay as it is.
    assert_moved_unchanged(&moved, 3);
    let o = outcome(&e);
    assert!(
        examples(&o["failed"]).iter().any(|f| f.starts_with("ab:")),
        "failure names ab: {o}"
    );
    assert_eq!(o["failed"]["count"], 1, "{o}");
    // (`ab/...` now resolves into the sentinel directory: ab's old unit is checked by the
    // count of what was moved, above.)
    for p in [&u[2].a, &u[2].d] {
        assert_gone(p);
    }
    c.assert_fixed(&u[3].d);
}

// 6d. Entries (not directories) swapped after planning: an old output for a hard link to a
// root-owned file outside, an old action for a symlink, a fresh output (planned for a fix)
// for a FIFO. Apply judges what is there when it acts.
#[test]
fn entries_swapped_after_planning() {
    let mut c = Case::new(&["ab", "cd"]);
    // Not guarded by the case: the race links it, so it is snapshotted then.
    let secret = c.outside.join("secret");
    std::fs::write(&secret, b"root only").expect("write");
    make_unfixed(&secret, 0o600);
    age(&secret, OLD);
    let mut secret_snap = None;
    let target = c.outside_file("target-a", b"v1 not yours");
    let old = c.unit(&id("ab", 1), &id("ab", 2), OLD);
    let fresh = c.unit(&id("ab", 3), &id("ab", 4), FRESH);
    let other = c.unit(&id("cd", 1), &id("cd", 2), OLD);
    c.seal();
    let r = c.enforce_racing("before-apply:.", || {
        std::fs::remove_file(&old.d).expect("rm");
        std::fs::hard_link(&secret, &old.d).expect("link");
        secret_snap = Some(Case::snap(&secret));
        std::fs::remove_file(&old.a).expect("rm");
        std::os::unix::fs::symlink(&target, &old.a).expect("symlink");
        std::fs::remove_file(&fresh.d).expect("rm");
        nix::unistd::mkfifo(&fresh.d, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .expect("mkfifo");
    });
    let e = c.enforce_done(r, 0);
    assert_eq!(
        Some(Case::snap(&secret)),
        secret_snap,
        "{} changed",
        secret.display()
    );
    assert_refused(&e, "hardlink", &[rel_of(&c, &old.d)]);
    assert_refused(&e, "symlink", &[rel_of(&c, &old.a)]);
    assert_refused(&e, "special", &[rel_of(&c, &fresh.d)]);
    assert_no_failures(&e);
    assert_eq!(std::fs::read_link(&old.a).expect("symlink kept"), target);
    assert_eq!(
        std::fs::symlink_metadata(&old.d)
            .expect("link kept")
            .nlink(),
        2
    );
    assert!(
        std::fs::symlink_metadata(&fresh.d)
            .expect("fifo kept")
            .file_type()
            .is_fifo()
    );
    for p in [&other.a, &other.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
}

/// Names with newlines and control characters, or with invalid UTF-8 too, in a shard and as
/// a directory at the root with a file inside: no crash, reports escape them (no name can
/// start a line of its own), enforce fixes them like any other entry.
fn hostile_names(utf8: bool) {
    let mut c = Case::new(&["ab", "cd"]);
    // fuzz/ is Go's whatever its files are called: hostile names there are fixed, not just
    // reported as foreign.
    let fuzz = c.cache.join("fuzz");
    std::fs::create_dir(&fuzz).expect("mkdir fuzz");
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    // Bring the normal part to policy first, so the hostile names are the only violations
    // and all of them make it into the report's examples.
    let r = c.run(&["enforce"]);
    assert_eq!(r.code, 0, "first enforce: {}\n{}", r.text(), r.stderr);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let name = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    let (n2, nd, n3): (&[u8], &[u8], &[u8]) = if utf8 {
        (b"tab\tbell\x07esc\x1b[31mred", b"dir\n(FORGED", b"x\ny")
    } else {
        (b"\xff\xfe-bad", b"dir\n\xc3(FORGED", b"x\ny\xff")
    };
    let f1 = fuzz.join(name(b"evil\nFORGED e.g. cd-ok"));
    let f2 = fuzz.join(name(n2));
    let d1 = fuzz.join(name(nd));
    let f3 = d1.join(name(n3));
    std::fs::write(&f1, b"1").expect("write");
    std::fs::write(&f2, b"2").expect("write");
    std::fs::create_dir(&d1).expect("mkdir");
    std::fs::write(&f3, b"3").expect("write");
    for p in [&f1, &f2, &f3] {
        make_unfixed(p, 0o644);
        age(p, OLD);
    }
    make_unfixed(&d1, 0o755);
    c.seal();

    let broken = |l: &str| {
        (l.contains("FORGED") && !l.contains(r"\n"))
            || l.starts_with('y')
            || l.contains('\x1b')
            || l.contains('\x07')
    };
    let txt = c.run(&["check"]);
    assert_eq!(
        txt.code,
        1,
        "check exit code\n{}\n{}",
        txt.text(),
        txt.stderr
    );
    let out = txt.text();
    assert!(
        !out.lines().any(broken),
        "a name broke a report line:\n{out}"
    );
    assert!(
        out.contains(r"evil\nFORGED"),
        "the newline is shown escaped:\n{out}"
    );
    if !utf8 {
        assert!(
            out.contains(r"\xFF") || out.contains(r"\xff"),
            "invalid UTF-8 is shown escaped:\n{out}"
        );
    }
    assert!(!txt.stderr.lines().any(broken), "stderr: {}", txt.stderr);

    let chk = c.check();
    let g = finding(&chk, "group");
    assert_eq!(g["count"], 4, "{g}");
    let ex = examples(g);
    assert_eq!(ex.len(), 4, "{ex:?}");
    assert!(
        ex.iter().all(|e| !e.contains('\n') && !e.contains('\x1b')),
        "raw control character in an example: {ex:?}"
    );
    assert!(ex.iter().any(|e| e.contains(r"\n")), "{ex:?}");

    let r = c.run(&["enforce", "--json"]);
    let e = c.enforce_done(r, 0);
    assert_no_failures(&e);
    for p in [&f1, &f2, &f3, &d1] {
        c.assert_fixed(p);
    }
    c.assert_fixed(&fresh.d);
    assert_gone(&old.a);
    assert_gone(&old.d);
    // Something to say about the names again (fix them back to root), in the text form.
    for p in [&f1, &f2, &f3] {
        make_unfixed(p, 0o644);
    }
    let r = c.run(&["enforce"]);
    assert_eq!(r.code, 0, "{}\n{}", r.text(), r.stderr);
    assert!(
        !r.text().lines().chain(r.stderr.lines()).any(broken),
        "{}\n{}",
        r.text(),
        r.stderr
    );
    for p in [&f1, &f2, &f3] {
        c.assert_fixed(p);
    }
}

// 7a. Newlines and control characters (valid UTF-8).
#[test]
fn names_with_newlines_and_control_characters_are_escaped_and_fixed() {
    hostile_names(true);
}

// 7b. Newlines and invalid UTF-8.
#[test]
fn names_with_invalid_utf8_are_escaped_and_fixed() {
    hostile_names(false);
}

/// Creates `n` nested directories `d` under `base`; returns the deepest.
fn chain(base: &Path, n: usize) -> PathBuf {
    let mut p = base.to_path_buf();
    for _ in 0..n {
        p.push("d");
    }
    std::fs::create_dir_all(&p).expect("mkdir chain");
    p
}

// 8a. A 200-deep chain under fuzz/ (Go's, any depth): walked and fixed to the bottom.
#[test]
fn deep_chain_is_fixed_to_the_bottom() {
    let mut c = Case::new(&["ab"]);
    let bottom = chain(&c.cache.join("fuzz"), 200);
    let leaf = bottom.join("leaf");
    std::fs::write(&leaf, b"leaf").expect("write");
    let link = bottom.join("link");
    let secret = c.outside_file("secret", b"deep");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let old = c.unit(&id("ab", 2), &id("ab", 3), OLD);
    c.seal();

    let chk = c.check();
    let rl = rel_of(&c, &link).to_string();
    assert_finding(&chk, "symlink", 1, &[&rl]);
    assert!(
        chk["caches"][0]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["kind"] != "too-deep")
    );
    let e = c.enforce(0);
    assert_no_failures(&e);
    c.assert_fixed(&leaf);
    c.assert_fixed(&bottom);
    c.assert_fixed(bottom.parent().expect("parent"));
    assert_gone(&old.a);
    assert_eq!(std::fs::read_link(&link).expect("symlink kept"), secret);
}

/// Checks a chain longer than the walker's max depth (1024) under fuzz/: reported as too
/// deep once, everything above it fixed, nothing below it touched.
fn too_deep(soft_nofile: Option<u64>) {
    let mut c = Case::new(&["ab"]);
    let fuzz = c.cache.join("fuzz");
    // fuzz is depth 1, the k-th `d` depth k + 1: the 1023rd `d` (depth 1024) is not entered.
    let bottom = chain(&fuzz, 1030);
    let mut first_skipped = fuzz.clone();
    for _ in 0..1023 {
        first_skipped.push("d");
    }
    let last_fixed = first_skipped.parent().expect("parent").to_path_buf();
    std::fs::write(bottom.join("leaf"), b"x").expect("write");
    c.guard(&first_skipped);
    c.guard(&bottom);
    let old = c.unit(&id("ab", 2), &id("ab", 3), OLD);
    c.seal();

    let limit = move |cmd: &mut Command| {
        if let Some(n) = soft_nofile {
            // SAFETY: only async-signal-safe setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut r = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
                    r.rlim_cur = n;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &r);
                    Ok(())
                });
            }
        }
    };
    let mut cmd = c.command(&["check", "--json"]);
    limit(&mut cmd);
    let r = c.run_cmd(&mut cmd, "check");
    assert_eq!(r.code, 1, "check exit code\nstderr: {}", r.stderr);
    let chk = r.json();
    c.assert_guarded_unchanged("check");
    let rel = rel_of(&c, &first_skipped).to_string();
    assert_finding(&chk, "too-deep", 1, &[&rel]);
    assert!(
        chk["caches"][0]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["kind"] != "unreadable"),
        "{}",
        chk["caches"][0]["findings"]
    );

    let mut cmd = c.command(&["enforce", "--json"]);
    limit(&mut cmd);
    let r = c.run_cmd(&mut cmd, "enforce");
    let e = c.enforce_done(r, 0);
    assert_refused(&e, "too-deep", &[&rel]);
    assert_no_failures(&e);
    c.assert_fixed(&last_fixed);
    c.assert_fixed(&fuzz);
    assert_gone(&old.a);
}

// 8b. Deeper than the walker's max depth, at the test's own open-file limit.
#[test]
fn chain_deeper_than_max_depth_is_reported_too_deep() {
    too_deep(None);
}

// 8c. The same under systemd's default soft open-file limit (1024), which is what a service
// gets unless its unit raises LimitNOFILE.
#[test]
fn chain_deeper_than_max_depth_is_reported_too_deep_with_1024_open_files() {
    too_deep(Some(1024));
}

// Extra: trim.txt replaced by a hard link or a symlink to a sentinel: never written through.
#[test]
fn trim_txt_linked_to_an_outside_file_is_never_written_through() {
    for how in ["hardlink", "symlink"] {
        let mut c = Case::new(&["ab"]);
        let secret = c.outside_file("secret-trim", b"0\n");
        let trim = c.cache.join("trim.txt");
        std::fs::remove_file(&trim).expect("rm trim.txt");
        if how == "hardlink" {
            std::fs::hard_link(&secret, &trim).expect("link");
        } else {
            std::os::unix::fs::symlink(&secret, &trim).expect("symlink");
        }
        let old = c.unit(&id("ab", 2), &id("ab", 3), OLD);
        c.seal();
        let chk = c.check();
        assert_finding(&chk, how, 1, &["trim.txt"]);
        let r = c.run(&["enforce", "--json"]);
        assert_eq!(
            r.code, 1,
            "{how}: rewriting trim.txt must fail, not write through\n{}",
            r.stderr
        );
        let e = r.json();
        c.assert_guarded_unchanged("enforce");
        let o = outcome(&e);
        assert!(
            examples(&o["failed"])
                .iter()
                .any(|f| f.starts_with("trim.txt")),
            "{how}: {o}"
        );
        assert_eq!(o["trim_rewritten"], false);
        assert!(std::fs::symlink_metadata(&trim).is_ok(), "trim.txt removed");
        assert_gone(&old.a);
    }
}

// Extra: the cache root itself is a symlink to a sentinel directory.
#[test]
fn cache_root_symlink_is_never_followed() {
    let mut c = Case::new(&[]);
    let target = c.outside_dir("root");
    std::fs::create_dir(target.join("ab")).expect("mkdir");
    c.guard(&target.join("ab"));
    let f = c.outside_file(&format!("root/ab/{}-a", id("ab", 1)), b"v1");
    age(&f, OLD);
    age(&target, OLD);
    std::fs::remove_dir_all(&c.cache).expect("rm cache");
    std::os::unix::fs::symlink(&target, &c.cache).expect("symlink root");
    c.seal();
    let chk = c.check();
    finding(&chk, "root-not-directory");
    let r = c.run(&["enforce", "--json"]);
    assert!(
        r.code != 0,
        "enforce on a symlinked root must not succeed\n{}",
        r.text()
    );
    c.assert_guarded_unchanged("enforce");
    assert_eq!(
        std::fs::read_link(&c.cache).expect("root symlink kept"),
        target
    );
}
