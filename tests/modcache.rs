//! Module cache eviction against a module cache filled by the real `go mod download` from a
//! local file proxy: whole module versions go (download files and the read-only extracted
//! tree), fresh ones stay, a version whose lock go holds stays, and go still works after.
//! Eviction follows cmd/go's own protocol (see src/modcache.rs): lock files are never
//! deleted, a held lock is skipped at once and named, an eviction interrupted half-way leaves
//! a version the real `go build` re-extracts, and use of the extracted tree counts as use.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{json, policy, run, stderr, tempdir};

/// Writes a GOPROXY file tree with `mods` (module path, version) and returns its URL.
fn proxy(dir: &Path, mods: &[(&str, &str)]) -> String {
    let script = r#"
import sys, os, zipfile, json
root = sys.argv[1]
def esc(p):
    return "".join("!" + c.lower() if c.isupper() else c for c in p)
for spec in sys.argv[2:]:
    mod, ver = spec.split("@")
    d = os.path.join(root, esc(mod), "@v")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "list"), "a") as f: f.write(ver + "\n")
    with open(os.path.join(d, ver + ".info"), "w") as f: json.dump({"Version": ver, "Time": "2024-01-01T00:00:00Z"}, f)
    gomod = "module %s\n\ngo 1.21\n" % mod
    with open(os.path.join(d, ver + ".mod"), "w") as f: f.write(gomod)
    with zipfile.ZipFile(os.path.join(d, ver + ".zip"), "w") as z:
        z.writestr("%s@%s/go.mod" % (mod, ver), gomod)
        z.writestr("%s@%s/lib.go" % (mod, ver), "package lib\n\nvar Data = %s\n" % json.dumps("x" * 20000))
        z.writestr("%s@%s/sub/sub.go" % (mod, ver), "package sub\n")
"#;
    let specs: Vec<String> = mods.iter().map(|(m, v)| format!("{m}@{v}")).collect();
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .args(&specs)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    format!("file://{}", dir.display())
}

/// The real `go` with a clean environment on `modcache`, its build cache beside `home`.
fn go_cmd(home: &Path, modcache: &Path, proxy: &str) -> Command {
    let go = support::go_binary();
    let mut c = Command::new(&go);
    c.env_clear()
        .env("HOME", home)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", go.parent().expect("bin").display()),
        )
        .env("GOMODCACHE", modcache)
        .env("GOCACHE", home.join("gocache"))
        .env("GOPROXY", proxy)
        .env("GOSUMDB", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("GOFLAGS", "-mod=mod")
        .current_dir(home);
    c
}

fn go_download(home: &Path, modcache: &Path, proxy: &str, what: &[String]) {
    let o = go_cmd(home, modcache, proxy)
        .args(["mod", "download"])
        .args(what)
        .output()
        .expect("go mod download");
    assert!(
        o.status.success(),
        "go mod download: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Makes a version look downloaded and extracted `secs` ago: its download files and every
/// entry of its extracted tree.
fn age_version(modcache: &Path, escaped: &str, ver: &str, secs: i64) {
    for ext in ["info", "mod", "zip", "ziphash", "lock"] {
        let p = download_dir(modcache, escaped).join(format!("{ver}.{ext}"));
        if p.exists() {
            support::age(&p, secs);
        }
    }
    each_entry(&extracted(modcache, escaped, ver), &mut |p| {
        support::age(p, secs)
    });
}

/// Runs `f` on every entry beneath `dir` (children first) and on `dir` itself.
fn each_entry(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.expect("read_dir entry").path();
            if p.symlink_metadata().expect("lstat").is_dir() {
                each_entry(&p, f);
            } else {
                f(&p);
            }
        }
    }
    if dir.exists() {
        f(dir);
    }
}

fn download_dir(modcache: &Path, escaped: &str) -> PathBuf {
    modcache.join("cache/download").join(escaped).join("@v")
}

fn extracted(modcache: &Path, escaped: &str, ver: &str) -> PathBuf {
    modcache.join(format!("{escaped}@{ver}"))
}

#[test]
fn old_module_versions_go_whole_and_go_still_works() {
    let d = tempdir();
    let home = d.path().join("home");
    let mc = d.path().join("mod");
    std::fs::create_dir_all(&home).expect("mkdir");
    let mods = [
        ("example.com/Old/a", "v1.0.0"),
        ("example.com/old/b", "v1.2.0"),
        ("example.com/new/c", "v0.3.0"),
        ("example.com/locked/d", "v1.0.0"),
    ];
    let url = proxy(&d.path().join("proxy"), &mods);
    let what: Vec<String> = mods.iter().map(|(m, v)| format!("{m}@{v}")).collect();
    go_download(&home, &mc, &url, &what);
    let old_a = ("example.com/!old/a", "v1.0.0");
    let old_b = ("example.com/old/b", "v1.2.0");
    let locked = ("example.com/locked/d", "v1.0.0");
    for (m, v) in [old_a, old_b, locked] {
        age_version(&mc, m, v, 100 * 86400);
    }
    // go extracts read-only: the agent must make directories writable to remove them.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(extracted(&mc, old_a.0, old_a.1))
        .expect("extracted")
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "go's module trees are read-only");
    // go holds the version lock while it works on a version: hold it like go would.
    let lock = std::fs::File::open(
        mc.join("cache/download")
            .join(locked.0)
            .join("@v")
            .join(format!("{}.lock", locked.1)),
    )
    .expect("lock file");
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let p = policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.m]\npath = \"{}\"\nkind = \"module\"\nmax_age = \"30d\"\nmin_age = \"1d\"\n",
            mc.display()
        ),
    );
    let c = run(
        [
            "--policy".to_string(),
            p.display().to_string(),
            "check".into(),
            "--json".into(),
        ],
        &[],
    );
    let v = json(&c);
    assert_eq!(
        v["caches"][0]["observed"]["past_max_age"]["entries"], 3,
        "{}",
        v["caches"][0]
    );
    let o = run(
        [
            "--policy".to_string(),
            p.display().to_string(),
            "enforce".into(),
            "--json".into(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        v["outcome"]["caches"][0]["evicted"]["age"]["entries"], 2,
        "{}",
        v["outcome"]
    );
    // The version whose lock go holds is skipped without waiting, and counted as such.
    assert_eq!(
        v["outcome"]["caches"][0]["locked_skipped"], 1,
        "{}",
        v["outcome"]
    );
    for (m, ver) in [old_a, old_b] {
        assert!(
            !extracted(&mc, m, ver).exists(),
            "{m}@{ver} extracted tree removed"
        );
        assert!(
            !mc.join("cache/download")
                .join(m)
                .join("@v")
                .join(format!("{ver}.zip"))
                .exists(),
            "{m}@{ver} zip removed"
        );
    }
    assert!(
        extracted(&mc, "example.com/new/c", "v0.3.0").exists(),
        "fresh version kept"
    );
    assert!(
        extracted(&mc, locked.0, locked.1).exists(),
        "locked version kept"
    );
    drop(lock);
    // The cache is still one go trusts: the evicted version downloads again.
    go_download(&home, &mc, &url, &["example.com/Old/a@v1.0.0".to_string()]);
    assert!(extracted(&mc, old_a.0, old_a.1).join("lib.go").exists());
}

/// A module cache the real `go mod download` filled from a file proxy serving `mods`
/// (lower-case paths, so escaped and plain paths are the same).
struct Filled {
    d: tempfile::TempDir,
    home: PathBuf,
    mc: PathBuf,
    url: String,
}

fn filled(mods: &[(&str, &str)]) -> Filled {
    support::require_root();
    let d = tempdir();
    let home = d.path().join("home");
    let mc = d.path().join("mod");
    std::fs::create_dir_all(&home).expect("mkdir");
    let url = proxy(&d.path().join("proxy"), mods);
    let what: Vec<String> = mods.iter().map(|(m, v)| format!("{m}@{v}")).collect();
    go_download(&home, &mc, &url, &what);
    Filled { d, home, mc, url }
}

impl Filled {
    /// Module policy: evict what is unused for 30 days, never anything used within a day.
    fn policy(&self) -> PathBuf {
        policy(
            self.d.path(),
            "p.toml",
            &format!(
                "[cache.m]\npath = \"{}\"\nkind = \"module\"\nmax_age = \"30d\"\nmin_age = \"1d\"\n",
                self.mc.display()
            ),
        )
    }

    fn enforce(&self) -> (std::process::Output, serde_json::Value) {
        let o = run(
            [
                "--policy".to_string(),
                self.policy().display().to_string(),
                "enforce".into(),
                "--json".into(),
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = json(&o);
        (o, v)
    }

    /// `go build` of a program importing `module` and its `sub` package with `GOPROXY=off`:
    /// only the module cache can serve the module.
    fn build_offline(&self, module: &str, ver: &str) -> std::process::Output {
        let app = self.home.join(format!("app-{}", module.replace('/', "_")));
        std::fs::create_dir_all(&app).expect("mkdir app");
        std::fs::write(
            app.join("go.mod"),
            format!("module app\n\ngo 1.21\n\nrequire {module} {ver}\n"),
        )
        .expect("write go.mod");
        std::fs::write(
            app.join("main.go"),
            format!(
                "package main\n\nimport (\n\tlib \"{module}\"\n\t_ \"{module}/sub\"\n)\n\nfunc main() {{ println(len(lib.Data)) }}\n"
            ),
        )
        .expect("write main.go");
        go_cmd(&self.home, &self.mc, "off")
            .args(["build", "-o", "/dev/null", "."])
            .current_dir(&app)
            .output()
            .expect("go build")
    }

    fn file(&self, module: &str, ver: &str, ext: &str) -> PathBuf {
        download_dir(&self.mc, module).join(format!("{ver}.{ext}"))
    }
}

/// cmd/go never deletes a version's `.lock` (a `go` blocked on the old inode would wake up
/// holding a lock no one else sees): eviction keeps every lock file, creates a missing one to
/// hold it, and leaves no `.partial` behind after a complete eviction.
#[test]
fn evicted_versions_keep_their_lock_files() {
    let mods = [
        ("example.com/keep/a", "v1.0.0"),
        ("example.com/keep/b", "v1.1.0"),
    ];
    let f = filled(&mods);
    for (m, v) in mods {
        assert!(f.file(m, v, "lock").exists(), "go made {m}@{v}.lock");
        age_version(&f.mc, m, v, 100 * 86400);
    }
    // A version whose lock file is missing (a cache copied without it): the agent makes the
    // lock, as go's lockedfile would, to hold it while it evicts.
    std::fs::remove_file(f.file(mods[1].0, mods[1].1, "lock")).expect("rm lock");

    let (_, v) = f.enforce();
    let c = &v["outcome"]["caches"][0];
    assert_eq!(c["evicted"]["age"]["entries"], 2, "{c}");
    for (m, ver) in mods {
        assert!(!extracted(&f.mc, m, ver).exists(), "{m}@{ver} tree removed");
        for ext in ["zip", "ziphash", "info", "mod", "partial"] {
            assert!(!f.file(m, ver, ext).exists(), "{m}@{ver}.{ext} removed");
        }
        assert!(f.file(m, ver, "lock").exists(), "{m}@{ver}.lock kept");
    }
    // go takes those locks again and fetches the versions anew.
    go_download(
        &f.home,
        &f.mc,
        &f.url,
        &mods
            .iter()
            .map(|(m, v)| format!("{m}@{v}"))
            .collect::<Vec<_>>(),
    );
    let b = f.build_offline(mods[0].0, mods[0].1);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
}

/// A version whose lock another process holds (as a `go` extracting it would, or a user who
/// never lets go) is skipped at once, counted and named in the log; the sweep does not wait.
#[test]
fn a_held_version_lock_is_skipped_promptly_and_named() {
    let mods = [
        ("example.com/held/d", "v1.0.0"),
        ("example.com/free/e", "v1.0.0"),
    ];
    let f = filled(&mods);
    for (m, v) in mods {
        age_version(&f.mc, m, v, 100 * 86400);
    }
    let lock = f.file(mods[0].0, mods[0].1, "lock");
    // Another process holds the lock, with flock(1) as cmd/go's lockedfile takes it: on an
    // fd that the shell then hands to `sleep` by exec, so the child killed on drop is the
    // holder itself (`flock FILE sleep` would fork a sleep that outlives the test by 5 min).
    let holder = support::KillOnDrop(
        Command::new("sh")
            .args([
                "-c",
                "exec 9>>\"$0\" && flock --exclusive 9 && exec sleep 300",
            ])
            .arg(&lock)
            .spawn()
            .expect("flock(1) (util-linux)"),
    );
    let probe = std::fs::File::open(&lock).expect("open lock");
    let start = std::time::Instant::now();
    loop {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            break;
        }
        // SAFETY: as above.
        unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_UN) };
        assert!(
            start.elapsed().as_secs() < 10,
            "flock(1) never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let start = std::time::Instant::now();
    let (o, v) = f.enforce();
    let took = start.elapsed();
    assert!(
        took.as_secs() < 10,
        "the sweep waited for the lock: {took:?}"
    );
    let c = &v["outcome"]["caches"][0];
    assert_eq!(c["locked_skipped"], 1, "{c}");
    assert_eq!(c["evicted"]["age"]["entries"], 1, "{c}");
    let log = stderr(&o);
    assert!(
        log.contains("example.com/held/d@v1.0.0") && log.contains("holds its lock"),
        "the skipped version is named in the log:\n{log}"
    );
    assert!(
        extracted(&f.mc, mods[0].0, mods[0].1)
            .join("lib.go")
            .exists(),
        "held version kept whole"
    );
    assert!(f.file(mods[0].0, mods[0].1, "zip").exists());
    assert!(!f.file(mods[0].0, mods[0].1, "partial").exists());
    assert!(
        !extracted(&f.mc, mods[1].0, mods[1].1).exists(),
        "free version evicted"
    );
    drop(holder);
}

/// An eviction killed after it wrote `.partial` and removed part of the tree leaves a version
/// `go` sees as incomplete: a real offline `go build` re-extracts it from the zip and succeeds,
/// instead of compiling a module with files missing.
#[test]
fn an_interrupted_eviction_leaves_a_version_go_re_extracts() {
    support::require_test_hooks();
    let (m, ver) = ("example.com/cut/f", "v1.0.0");
    let f = filled(&[(m, ver)]);
    age_version(&f.mc, m, ver, 100 * 86400);
    let fp = f.d.path().join("failpoint");
    std::fs::create_dir_all(&fp).expect("mkdir");
    let (out, err) = (f.d.path().join("out"), f.d.path().join("err"));
    let mut child = support::KillOnDrop(
        Command::new(support::bin())
            .arg("--policy")
            .arg(f.policy())
            .args(["enforce", "--json"])
            .env(
                "GOCACHE_WARDEN_FAILPOINT",
                format!("modcache-evict:{m}@{ver}:{}", fp.display()),
            )
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err"))
            .spawn()
            .expect("spawn enforce"),
    );
    let start = std::time::Instant::now();
    while !fp.join("modcache-evict.ready").exists() {
        let exited = child.0.try_wait().expect("wait").is_some();
        assert!(
            !exited && start.elapsed().as_secs() < 60,
            "failpoint modcache-evict never reached\nstderr: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let tree = extracted(&f.mc, m, ver);
    let left: Vec<bool> = ["go.mod", "lib.go", "sub/sub.go"]
        .iter()
        .map(|p| tree.join(p).exists())
        .collect();
    assert!(left.contains(&false), "part of the tree is gone: {left:?}");
    assert!(f.file(m, ver, "partial").exists(), ".partial written first");
    // Interrupted for good: the agent dies holding the lock (the kernel releases it).
    child.0.kill().expect("kill enforce");
    child.0.wait().expect("reap enforce");
    assert!(f.file(m, ver, "lock").exists());

    let b = f.build_offline(m, ver);
    assert!(
        b.status.success(),
        "go build after an interrupted eviction: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    for p in ["go.mod", "lib.go", "sub/sub.go"] {
        assert!(tree.join(p).exists(), "go re-extracted {p}");
    }
    assert!(
        !f.file(m, ver, "partial").exists(),
        "go finished the extraction"
    );
}

/// Sets only the atime of every entry beneath `dir` to `secs` ago, keeping mtimes: what a
/// `noatime` mount shows after reads.
fn old_atimes(dir: &Path, secs: i64) {
    each_entry(dir, &mut |p| {
        let old = nix::sys::time::TimeSpec::new(support::now() - secs, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &old,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
    });
}

/// Use through the extracted tree counts: a version whose sources an editor read (atime of
/// the tree's files only) and one `go` re-extracted on a noatime-like view (every atime old,
/// only the tree's mtimes new) are kept, while their download files look 100 days old; an
/// untouched version of the same age goes.
#[test]
fn a_version_used_through_its_tree_is_not_evicted_as_old() {
    let read = ("example.com/read/g", "v1.0.0");
    let again = ("example.com/again/h", "v1.0.0");
    let idle = ("example.com/idle/i", "v1.0.0");
    let f = filled(&[read, again, idle]);
    for (m, v) in [read, again, idle] {
        age_version(&f.mc, m, v, 100 * 86400);
    }
    // An editor (gopls, "go to definition") reads the sources of `read` only.
    each_entry(&extracted(&f.mc, read.0, read.1), &mut |p| {
        if p.is_file() {
            std::fs::read(p).expect("read source");
        }
    });
    let md = std::fs::metadata(extracted(&f.mc, read.0, read.1).join("lib.go")).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert!(
        md.atime() > support::now() - 3600,
        "this filesystem records reads (relatime): the test needs that"
    );
    // `again`'s tree was lost (removed by hand); a build re-extracts it from the old zip.
    let tree = extracted(&f.mc, again.0, again.1);
    each_entry(&tree, &mut |p| {
        use std::os::unix::fs::PermissionsExt;
        if p.is_dir() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    });
    std::fs::remove_dir_all(&tree).expect("rm tree");
    let b = f.build_offline(again.0, again.1);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    // On noatime nothing of those reads shows: every atime of the version stays old.
    old_atimes(&download_dir(&f.mc, again.0), 100 * 86400);
    old_atimes(&tree, 100 * 86400);

    let (_, v) = f.enforce();
    let c = &v["outcome"]["caches"][0];
    assert_eq!(c["evicted"]["age"]["entries"], 1, "{c}");
    assert!(
        !extracted(&f.mc, idle.0, idle.1).exists(),
        "idle version evicted"
    );
    for (m, ver) in [read, again] {
        assert!(
            extracted(&f.mc, m, ver).join("lib.go").exists() && f.file(m, ver, "zip").exists(),
            "{m}@{ver} used through its tree: kept"
        );
    }
}
