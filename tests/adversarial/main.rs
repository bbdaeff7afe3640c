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

#[path = "../support/mod.rs"]
mod support;

// Cases by threat; the harness (`Case`, runs, assertions) is this file.
mod links;
mod names;
mod races;
mod special;

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
