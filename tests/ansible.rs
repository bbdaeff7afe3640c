//! The Ansible example (policy/examples/ansible) run for real: `ansible-playbook -c local`
//! applies the role to a scratch cache with a scratch policy directory and the binary under
//! test, and the PLAY RECAP and the disk must agree with the configuration-management
//! contract: the first run changes things, the second changes nothing, `--check` reports a
//! change and leaves the disk alone, and the `validate:` hook keeps a broken fragment out.
//! The real /etc is never touched (the role passes `--policy DIR` for a non-default dir).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const GROUP: &str = "gwt-ansible";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// ansible-core, from PyPI when missing; runs its playbook CLI as a module of the same
/// python3, so a fresh install needs no PATH or pyenv shim refresh.
fn ensure_ansible() {
    let have = Command::new("python3")
        .args(["-c", "import ansible.cli.playbook"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return;
    }
    let o = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "ansible-core"])
        .output()
        .expect("python3 (this test needs python3 with pip)");
    assert!(
        o.status.success(),
        "ansible-core is missing and `python3 -m pip install ansible-core` failed:\n{}",
        text(&o.stderr)
    );
}

struct Run {
    recap: BTreeMap<String, u64>,
    log: String,
}

impl Run {
    fn get(&self, k: &str) -> u64 {
        *self
            .recap
            .get(k)
            .unwrap_or_else(|| panic!("no {k}= in the recap:\n{}", self.log))
    }
}

/// The scratch world one playbook run sees.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            dir: support::tempdir(),
        }
    }
    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy.d")
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn fragment(&self) -> PathBuf {
        self.policy_dir().join("50-shared-cache.toml")
    }

    /// Runs the example playbook; `extra` overrides variables, `check` adds `--check`.
    fn playbook(&self, check: bool, extra: &[(&str, &str)]) -> Run {
        let home = self.dir.path().join("ansible");
        std::fs::create_dir_all(home.join("tmp")).expect("ansible home");
        let cfg = home.join("ansible.cfg");
        std::fs::write(&cfg, "").expect("ansible.cfg");
        let python = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        let mut vars = serde_json::json!({
            "gocache_warden_bin": support::bin(),
            "gocache_warden_policy_dir": self.policy_dir(),
            "gocache_warden_cache_path": self.cache(),
            "gocache_warden_group": GROUP,
            "gocache_warden_max_age": "14d",
            "gocache_warden_reload_agent": false,
            // Already root; the play's `become` would need sudo.
            "ansible_become": false,
            "ansible_python_interpreter": text(&python.stdout).trim(),
        });
        for (k, v) in extra {
            vars[*k] = serde_json::Value::String(v.to_string());
        }
        let vars_file = home.join("vars.json");
        std::fs::write(&vars_file, vars.to_string()).expect("vars file");

        let playbook =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/examples/ansible/site.yml");
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "ansible.cli.playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
        ])
        .arg("-e")
        .arg(format!("@{}", vars_file.display()))
        .arg(&playbook);
        if check {
            c.arg("--check");
        }
        c.env("ANSIBLE_CONFIG", &cfg)
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", home.join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8");
        let t = Instant::now();
        let o = c.output().expect("run ansible-playbook");
        eprintln!(
            "[{:5.1}s] ansible-playbook{}",
            t.elapsed().as_secs_f64(),
            if check { " --check" } else { "" }
        );
        let log = format!("{}{}", text(&o.stdout), text(&o.stderr));
        let line = log
            .lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .find(|l| l.starts_with("localhost"))
            .unwrap_or_else(|| panic!("no PLAY RECAP for localhost:\n{log}"));
        let recap = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect();
        Run { recap, log }
    }
}

/// What enforce could change about one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
}

/// Every entry under `root` and all their ACLs: a dry run must leave them identical.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    entries: Vec<Entry>,
    acls: String,
}

fn snapshot(root: &Path) -> Snapshot {
    fn walk(p: &Path, out: &mut Vec<Entry>) {
        let md = std::fs::symlink_metadata(p).expect("stat");
        out.push(Entry {
            path: p.to_path_buf(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
        });
        if md.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            for c in children {
                walk(&c, out);
            }
        }
    }
    let mut entries = Vec::new();
    walk(root, &mut entries);
    let acl = Command::new("getfacl")
        .args(["-R", "-P", "-n", "--absolute-names"])
        .arg(root)
        .output()
        .expect("getfacl (apt-get install acl)");
    Snapshot {
        entries,
        acls: text(&acl.stdout),
    }
}

#[test]
fn playbook_enforces_then_is_idempotent_and_check_mode_changes_nothing() {
    support::require_root();
    ensure_ansible();
    let gid = support::ensure_group(GROUP);
    let w = World::new();
    support::mkcache(&w.cache(), 400, 11);

    // A broken fragment: the validate hook rejects it and nothing is installed.
    let r = w.playbook(false, &[("gocache_warden_group_access", "rwz")]);
    assert_eq!(
        r.get("failed"),
        1,
        "validate must fail the play:\n{}",
        r.log
    );
    assert!(
        r.log.contains("failed to validate") && r.log.contains("invalid access \\\"rwz\\\""),
        "the validate hook must be what failed, naming the problem:\n{}",
        r.log
    );
    assert!(!w.fragment().exists(), "a rejected fragment was installed");

    // First run: fragment installed, cache brought to policy.
    let r = w.playbook(false, &[]);
    assert_eq!(r.get("failed"), 0, "{}", r.log);
    assert!(
        r.get("changed") >= 2,
        "first run must change things:\n{}",
        r.log
    );
    let fragment = std::fs::read_to_string(w.fragment()).expect("fragment installed");
    assert!(
        fragment.contains(&format!("group = \"{GROUP}\"")),
        "{fragment}"
    );
    let md = std::fs::metadata(w.cache()).expect("cache");
    assert_eq!(md.gid(), gid, "cache group fixed");
    assert_ne!(md.mode() & 0o2000, 0, "setgid set");
    assert_eq!(md.mode() & 0o007, 0, "other access removed");

    // Second run: nothing to do, nothing reported.
    let r = w.playbook(false, &[]);
    assert_eq!(r.get("failed"), 0, "{}", r.log);
    assert_eq!(
        r.get("changed"),
        0,
        "second run must change nothing:\n{}",
        r.log
    );

    // A broken drop-in beside the fragment: enforce exits 2 without a plan (a policy
    // error), which the role must report as a failure, not as a change.
    let broken = w.policy_dir().join("90-broken.toml");
    std::fs::write(&broken, "[cache.shared]\nmax_size = \"lots\"\n").expect("write");
    let r = w.playbook(false, &[]);
    assert_eq!(
        r.get("failed"),
        1,
        "a policy error must fail the play:\n{}",
        r.log
    );
    assert_eq!(r.get("changed"), 0, "{}", r.log);
    std::fs::remove_file(&broken).expect("remove broken drop-in");

    // Check mode on a fresh non-compliant cache, fragment in place: the dry run reports
    // the change (exit 2) and the cache stays exactly as it was.
    std::fs::remove_dir_all(w.cache()).expect("remove cache");
    support::mkcache(&w.cache(), 400, 12);
    let before = snapshot(&w.cache());
    let r = w.playbook(true, &[]);
    assert_eq!(r.get("failed"), 0, "{}", r.log);
    assert_eq!(
        r.get("changed"),
        1,
        "only the enforce dry run changes:\n{}",
        r.log
    );
    assert!(before == snapshot(&w.cache()), "--check changed the cache");

    // Check mode on a fresh host (no policy directory yet): the policy tasks report the
    // change, nothing is written, the cache is untouched.
    let fresh = World::new();
    support::mkcache(&fresh.cache(), 100, 13);
    let before = snapshot(&fresh.cache());
    let r = fresh.playbook(true, &[]);
    assert_eq!(r.get("failed"), 0, "{}", r.log);
    assert!(r.get("changed") >= 1, "{}", r.log);
    assert!(
        !fresh.policy_dir().exists(),
        "--check created the policy directory"
    );
    assert!(
        before == snapshot(&fresh.cache()),
        "--check changed the cache"
    );
}
