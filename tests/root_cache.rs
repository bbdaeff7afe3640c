//! Root's caches too (issue #21, point 4): in the system scope `users = "all"` covers root's
//! own build and module caches (`sudo go build`, root's CI jobs) as root's `go env` finds
//! them, opened beneath root's home without following a link, limited like anyone's; and
//! `exclude_users` leaves root (or anyone) out.
//!
//! Root's real home holds the Go cache this very suite builds with, and the agent finds root's
//! home in the user database (`/root`), so nothing here runs where that home is real: root's
//! `go` and the binary run in a private mount namespace in which a scratch directory is
//! bind-mounted over `/root` (pip's Go toolchain, which lives under `/root`, is bind-mounted
//! out of its way first). Runs that take `users = "all"` only `check`; `enforce` is run with
//! `users = ["root"]`, so no other test's users' caches are touched.

mod support;

use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use support::{policy, tempdir};

/// A scratch world: `home` is what `/root` shows in the namespace, `dir` holds the policies
/// and what each run leaves (outside `/root`, so the test reads it afterwards).
struct Scratch {
    dir: tempfile::TempDir,
    home: PathBuf,
}

fn scratch() -> Scratch {
    support::require_root();
    let dir = tempdir();
    let home = dir.path().join("root-home");
    std::fs::create_dir(&home).expect("mkdir");
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    std::fs::create_dir(dir.path().join("goroot")).expect("mkdir");
    Scratch { dir, home }
}

impl Scratch {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `script` (sh) in a private mount namespace where `/root` is the scratch home,
    /// with `$B` the binary, `$T` the scratch directory and `go` on `PATH` as root's `go`
    /// with a login's environment (`HOME=/root`), offline. Fails the test if it fails.
    fn as_root(&self, script: &str) {
        let go = support::go_binary();
        let goroot = go.parent().and_then(Path::parent).expect("GOROOT of go");
        let full = format!(
            "T='{t}'; B='{b}'\n\
             mount --bind '{goroot}' \"$T/goroot\"\n\
             mount --bind '{home}' /root\n\
             export PATH=\"$T/goroot/bin:/usr/bin:/bin\" HOME=/root USER=root LOGNAME=root\n\
             export GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOTELEMETRY=off CGO_ENABLED=0\n\
             unset GOCACHE GOMODCACHE GOENV GOPATH XDG_CACHE_HOME XDG_CONFIG_HOME\n\
             {script}",
            t = self.dir.path().display(),
            b = support::bin().display(),
            goroot = goroot.display(),
            home = self.home.display(),
        );
        let o = support::in_mount_ns(&full);
        assert!(
            o.status.success(),
            "{script}\n{}{}",
            support::stdout(&o),
            support::stderr(&o)
        );
    }

    fn json(&self, name: &str) -> Value {
        let text = std::fs::read_to_string(self.path(name)).expect(name);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
    }
}

/// Root builds a tiny module in its (scratch) home: root's build cache fills.
const BUILD: &str = "mkdir -p /root/hello && cd /root/hello\n\
     printf 'module example.com/hello\\n\\ngo 1.24\\n' > go.mod\n\
     printf 'package main\\n\\nfunc main() { println(\"hi\") }\\n' > main.go\n\
     go build -o hello .\n";

fn of_root(check: &Value) -> Vec<&Value> {
    check["caches"]
        .as_array()
        .expect("caches")
        .iter()
        .filter(|c| c["user"] == "root")
        .collect()
}

/// `users = "all"`: root's build cache where root's `go env GOCACHE` says (Go's default) and
/// its module cache where root's go env file moved it, each with `user` "root", `via`
/// "go env" and the per-user limit; `exclude_users = ["root"]` and the same policy list
/// no cache of root's.
#[test]
fn all_covers_roots_caches_as_roots_go_finds_them_and_exclude_users_leaves_root_out() {
    let s = scratch();
    let body = "[cache.b]\npath = \"auto\"\nusers = \"all\"\nmax_size = \"100MiB\"\n\
                [cache.m]\npath = \"auto\"\nkind = \"module\"\nusers = \"all\"\nmax_age = \"180d\"\n";
    let all = policy(s.dir.path(), "all.toml", body);
    let out = policy(
        s.dir.path(),
        "out.toml",
        &body.replace(
            "users = \"all\"\n",
            "users = \"all\"\nexclude_users = [\"root\"]\n",
        ),
    );
    s.as_root(&format!(
        "go env -w GOMODCACHE=/root/mods\n{BUILD}\
         go env GOCACHE GOMODCACHE > \"$T/go-env\"\n\
         \"$B\" --policy '{all}' check --json > \"$T/all.json\" || true\n\
         \"$B\" --policy '{out}' check --json > \"$T/out.json\" || true\n",
        all = all.display(),
        out = out.display(),
    ));
    let go_env = std::fs::read_to_string(s.path("go-env")).expect("go env");
    let want: Vec<&str> = go_env.lines().collect();
    assert_eq!(
        want,
        ["/root/.cache/go-build", "/root/mods"],
        "root's go env"
    );

    let r = s.json("all.json");
    let mine = of_root(&r);
    assert_eq!(mine.len(), 2, "root's build and module cache: {r}");
    let b = mine.iter().find(|c| c["name"] == "b").expect("build");
    assert_eq!(b["path"], want[0], "{b}");
    assert_eq!(b["via"], "go env", "{b}");
    assert_eq!(b["limit_bytes"], 100u64 << 20, "{b}");
    assert!(b["refused"].is_null(), "{b}");
    assert!(
        b["observed"]["allocated_bytes"].as_u64().unwrap_or(0) > 0,
        "root's build filled it: {b}"
    );
    let m = mine.iter().find(|c| c["name"] == "m").expect("module");
    assert_eq!(m["path"], want[1], "root's go env file: {m}");
    assert_eq!(m["via"], "go env", "{m}");

    let r = s.json("out.json");
    assert!(of_root(&r).is_empty(), "exclude_users = [\"root\"]: {r}");
}

/// `enforce` on root's cache: old entries are evicted under root's limits, `trim.txt` is
/// created as root, and root's next build still works.
#[test]
fn enforce_manages_roots_cache_under_its_limits() {
    let s = scratch();
    let p = policy(
        s.dir.path(),
        "root.toml",
        "[cache.b]\npath = \"auto\"\nusers = [\"root\"]\nmax_age = \"1d\"\nmin_age = \"1h\"\n",
    );
    s.as_root(&format!(
        "{BUILD}\
         find /root/.cache/go-build -exec touch -h -d @1000000000 {{}} +\n\
         rm /root/.cache/go-build/trim.txt\n\
         rc=0; \"$B\" --policy '{p}' enforce --json > \"$T/enforce.json\" || rc=$?\n\
         echo $rc > \"$T/enforce.rc\"\n\
         cd /root/hello && go build -o hello . && echo ok > \"$T/rebuilt\"\n",
        p = p.display(),
    ));
    let rc = std::fs::read_to_string(s.path("enforce.rc")).expect("rc");
    let e = s.json("enforce.json");
    assert_eq!(rc.trim(), "0", "{e}");
    let caches = e["outcome"]["caches"].as_array().expect("outcome");
    assert_eq!(caches.len(), 1, "{e}");
    assert_eq!(caches[0]["path"], "/root/.cache/go-build", "{e}");
    assert!(
        caches[0]["evicted"]["age"]["entries"].as_u64().unwrap_or(0) > 0,
        "{e}"
    );
    let cache = s.home.join(".cache/go-build");
    let trim = std::fs::metadata(cache.join("trim.txt")).expect("trim.txt created");
    assert_eq!((trim.uid(), trim.gid()), (0, 0));
    assert!(s.path("rebuilt").exists(), "root's build after enforce");
}

/// Root's cache is opened beneath root's home like anyone's: a `~/.cache` that is a symlink
/// to a Go cache elsewhere is refused and nothing there changes; a cache in root's home that
/// belongs to someone else is refused as not root's.
#[test]
fn roots_cache_is_opened_without_links_and_must_be_roots() {
    let s = scratch();
    let victim = s.path("victim");
    support::mkcache(&victim.join("go-build"), 50, 21);
    support::age_tree(&victim);
    let listing = || {
        std::process::Command::new("find")
            .arg(&victim)
            .args(["-printf", "%p %m %U %G %T@ %C@\n"])
            .output()
            .expect("find")
            .stdout
    };
    let before = listing();
    std::os::unix::fs::symlink(&victim, s.home.join(".cache")).expect("symlink");
    let linked = policy(
        s.dir.path(),
        "linked.toml",
        "[cache.b]\npath = \"auto\"\nusers = [\"root\"]\nmax_age = \"1d\"\nmin_age = \"1h\"\n",
    );
    // The module cache of root (GOMODCACHE=/root/go/pkg/mod) belongs to nobody.
    let foreign = s.home.join("go/pkg/mod");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown");
    let owned = policy(
        s.dir.path(),
        "owned.toml",
        "[cache.m]\npath = \"auto\"\nkind = \"module\"\nusers = [\"root\"]\nmax_age = \"1d\"\n",
    );
    s.as_root(&format!(
        "\"$B\" --policy '{linked}' check --json > \"$T/linked.json\" || true\n\
         rc=0; \"$B\" --policy '{linked}' enforce --json > /dev/null || rc=$?\n\
         echo $rc > \"$T/linked.rc\"\n\
         \"$B\" --policy '{owned}' check --json > \"$T/owned.json\" || true\n",
        linked = linked.display(),
        owned = owned.display(),
    ));
    assert_eq!(
        String::from_utf8_lossy(&listing()),
        String::from_utf8_lossy(&before),
        "the cache at the end of root's symlink changed"
    );
    let rc = std::fs::read_to_string(s.path("linked.rc")).expect("rc");
    assert_eq!(rc.trim(), "1", "a refused cache fails enforce");
    let r = s.json("linked.json");
    let c = of_root(&r)[0];
    assert!(
        c["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["kind"] == "root-not-directory"),
        "{c}"
    );
    let r = s.json("owned.json");
    let c = of_root(&r)[0];
    assert_eq!(c["path"], "/root/go/pkg/mod", "{c}");
    assert!(
        c["refused"]
            .as_str()
            .is_some_and(|why| why.contains("not to root (uid 0)")),
        "{c}"
    );
}
