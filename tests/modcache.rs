//! Module cache eviction against a module cache filled by the real `go mod download` from a
//! local file proxy: whole module versions go (download files and the read-only extracted
//! tree), fresh ones stay, a version whose lock go holds stays, and go still works after.

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
        z.writestr("%s@%s/lib.go" % (mod, ver), "package lib\n\nvar Data = %r\n" % ("x" * 20000))
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

fn go_download(home: &Path, modcache: &Path, proxy: &str, what: &[String]) {
    let go = support::go_binary();
    let o = Command::new(&go)
        .args(["mod", "download"])
        .args(what)
        .env_clear()
        .env("HOME", home)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", go.parent().expect("bin").display()),
        )
        .env("GOMODCACHE", modcache)
        .env("GOPROXY", proxy)
        .env("GOSUMDB", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("GOFLAGS", "-mod=mod")
        .current_dir(home)
        .output()
        .expect("go mod download");
    assert!(
        o.status.success(),
        "go mod download: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn age_version(modcache: &Path, escaped: &str, ver: &str, secs: i64) {
    for ext in ["info", "mod", "zip", "ziphash", "lock"] {
        let p = modcache
            .join("cache/download")
            .join(escaped)
            .join("@v")
            .join(format!("{ver}.{ext}"));
        if p.exists() {
            support::age(&p, secs);
        }
    }
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
