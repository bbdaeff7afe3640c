//! `gocache-warden explain PID` (issue #23, point 3): what a real user's running process
//! uses — its environment, its go env file as that user reads it, the policy's view of its
//! caches, the cache files it holds open — for root and the owner, and for no one else.

mod support;

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const OWNER: &str = "gwt-explain-owner";
const OTHER: &str = "gwt-explain-other";

/// A process of `uid` with exactly `env`, holding `held` open on fd 7 (`sleep` inherits it).
fn spawn_as(uid: u32, env: &[(&str, &str)], held: &Path) -> support::KillOnDrop {
    let u = nix::unistd::User::from_uid(uid.into())
        .expect("getpwuid")
        .expect("user");
    let mut c = Command::new("sh");
    c.args(["-c", "exec 7<\"$0\" && echo ready && exec sleep 300"])
        .arg(held)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir("/")
        .stdout(Stdio::piped())
        .uid(uid)
        .gid(u.gid.as_raw());
    let mut child = c.spawn().expect("spawn as the user");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line.trim(), "ready");
    support::KillOnDrop(child)
}

fn explain(policy: &Path, pid: u32, json: bool, as_uid: Option<u32>) -> std::process::Output {
    let mut c = Command::new(support::bin());
    c.args(["--policy", policy.to_str().expect("utf-8"), "explain"])
        .arg(pid.to_string());
    if json {
        c.arg("--json");
    }
    if let Some(uid) = as_uid {
        let u = nix::unistd::User::from_uid(uid.into())
            .expect("getpwuid")
            .expect("user");
        c.uid(uid)
            .gid(u.gid.as_raw())
            .env("HOME", &u.dir)
            .current_dir("/");
    }
    c.output().expect("run explain")
}

fn first_output(cache: &Path) -> PathBuf {
    for shard in std::fs::read_dir(cache).expect("cache").flatten() {
        if !shard.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            if f.file_name().to_string_lossy().ends_with("-d") {
                return f.path();
            }
        }
    }
    panic!("no output in {}", cache.display())
}

#[test]
fn explain_names_what_a_users_process_really_uses() {
    support::require_root();
    let owner = support::ensure_user(OWNER, &[]);
    let other = support::ensure_user(OTHER, &[]);
    let home = nix::unistd::User::from_uid(owner.into())
        .expect("getpwuid")
        .expect("owner")
        .dir;
    let d = support::tempdir();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let cache = d.path().join("cache");
    support::mkcache(&cache, 20, 3);
    let envfile = d.path().join("goenv");
    std::fs::write(
        &envfile,
        "GOFLAGS=-mod=mod\nGOCACHEPROG=gocache-warden cacheprog\n",
    )
    .expect("env file");
    let o = Command::new("chown")
        .args(["-R", &format!("{owner}:{owner}")])
        .arg(&cache)
        .arg(&envfile)
        .output()
        .expect("chown");
    assert!(o.status.success());
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.shared]\npath = \"{}\"\nmax_size = \"1GiB\"\n",
            cache.display()
        ),
    );
    let held = first_output(&cache);
    let (c, e, h) = (
        cache.display().to_string(),
        envfile.display().to_string(),
        home.display().to_string(),
    );
    let proc_ = spawn_as(
        owner,
        &[
            ("HOME", h.as_str()),
            ("PATH", "/usr/bin:/bin"),
            ("GOCACHE", c.as_str()),
            ("GOENV", e.as_str()),
        ],
        &held,
    );
    let pid = proc_.0.id();

    // Root asks.
    let o = explain(&p, pid, true, None);
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    let v = support::json(&o);
    assert_eq!(v["schema"], "gocache-warden.explain/v1");
    assert_eq!(v["uid"], owner, "{v}");
    assert_eq!(v["user"], OWNER);
    assert_eq!(v["environment"]["GOCACHE"], c.as_str());
    assert_eq!(v["environment"]["GOENV"], e.as_str());
    assert!(v["environment"]["GOMODCACHE"].is_null(), "{v}");
    let go = &v["go"];
    assert_eq!(go["gocache"]["printed"], c.as_str());
    assert_eq!(go["gocache"]["source"]["kind"], "process");
    assert_eq!(
        go["gomodcache"]["printed"],
        format!("{h}/go/pkg/mod").as_str(),
        "Go's default, from its HOME: {go}"
    );
    assert_eq!(go["goflags"]["value"], "-mod=mod", "{go}");
    assert_eq!(go["goflags"]["source"]["kind"], "env_file");
    assert_eq!(go["goflags"]["source"]["path"], e.as_str());
    assert_eq!(go["gocacheprog"]["value"], "gocache-warden cacheprog");
    let caches = v["caches"].as_array().expect("caches");
    assert_eq!(caches[0]["var"], "GOCACHE");
    assert_eq!(caches[0]["policy"], "shared", "{v}");
    assert_eq!(
        caches[0]["report"]["observed"]["allocated_bytes"].as_u64(),
        Some(support::du_bytes(&cache)),
        "the cache's state as check measures it"
    );
    assert_eq!(caches[0]["report"]["limit_bytes"].as_u64(), Some(1 << 30));
    assert_eq!(caches[1]["var"], "GOMODCACHE");
    assert!(caches[1]["policy"].is_null(), "{v}");
    let open = v["open_files"].as_array().expect("open files");
    assert!(
        open.iter()
            .any(|f| f["var"] == "GOCACHE" && f["path"].as_str() == held.to_str()),
        "the file it holds open: {open:?}"
    );

    // The human text says the same.
    let o = explain(&p, pid, false, None);
    assert_eq!(o.status.code(), Some(0));
    let text = support::stdout(&o);
    assert!(
        text.contains(&format!("of {OWNER} (uid {owner})"))
            && text.contains("under the policy's cache \"shared\"")
            && text.contains(held.to_str().expect("utf-8"))
            && text.contains(&format!("-mod=mod (set by {e})")),
        "{text}"
    );

    // The owner may ask about their own process; another user may not.
    let o = explain(&p, pid, true, Some(owner));
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    assert_eq!(support::json(&o)["go"]["gocache"]["printed"], c.as_str());
    let o = explain(&p, pid, true, Some(other));
    assert_eq!(o.status.code(), Some(1), "{}", support::stdout(&o));
    assert!(
        support::stderr(&o).contains("only root or its owner"),
        "{}",
        support::stderr(&o)
    );
    assert!(o.stdout.is_empty(), "nothing of the process shown");

    // A GOENV the user points at a file only root may read is read as the user: refused,
    // said, never shown.
    let hostile = spawn_as(
        owner,
        &[
            ("HOME", h.as_str()),
            ("PATH", "/usr/bin:/bin"),
            ("GOENV", "/etc/shadow"),
        ],
        &held,
    );
    let o = explain(&p, hostile.0.id(), true, None);
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    let v = support::json(&o);
    let warnings = v["go"]["warnings"].to_string();
    assert!(
        warnings.contains("/etc/shadow") && warnings.contains("ermission denied"),
        "{warnings}"
    );
    assert!(
        !support::stdout(&o).contains("root:"),
        "no line of /etc/shadow"
    );

    // A process that has gone.
    drop(proc_);
    drop(hostile);
    let o = explain(&p, pid, true, None);
    assert_eq!(o.status.code(), Some(2), "{}", support::stdout(&o));
    assert!(support::stderr(&o).contains("no process"));
}
