//! Local users are adversaries (issue 12): each test plays an unprivileged user against the
//! root agent with real users, real `systemd --user` managers (tests/support/usermgr.rs),
//! real `flock`s and real files, and checks the agent neither waits for them, nor runs out of
//! memory, nor reads for them what they could not read themselves.
//!
//! Every run of the binary has a deadline and an address-space limit, so a regression shows
//! up as a failed assertion, not as a hung or swapping test run.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::usermgr::{TestUser, UserManager};
use support::{bin, json, stderr, stdout, tempdir};

/// How long any run of the agent may take here; the real work is a few hundred ms.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the agent with `args`, under `umask` and an address-space limit of 2 GiB (reading
/// `/dev/zero` to the end would hit it), killing it at [`DEADLINE`]. Panics if it had to be
/// killed or died of a signal.
fn agent(args: &[&str], umask: &str) -> Output {
    let script = format!("umask {umask}; exec prlimit --as=2147483648 -- \"$0\" \"$@\"");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .arg(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn the agent");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!(
                "the agent did not finish within {DEADLINE:?}: a user froze it\nstderr: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("collect output");
    assert!(
        out.status.code().is_some(),
        "the agent died of a signal ({:?}): {}",
        out.status,
        stderr(&out)
    );
    out
}

/// `units --json` for every manager, with a rule that judges `w-*` units by go's fallback
/// (so GOENV files and go.env are read too).
fn units_json(dir: &Path) -> (Output, serde_json::Value) {
    let p = support::policy(
        dir,
        "p.toml",
        "[units.hostile]\nmatch = [\"w-*.service\"]\nmanagers = \"user\"\nrequire_gocache = false\n",
    );
    let p = p.display().to_string();
    let out = agent(
        &["--scope", "system", "--policy", &p, "units", "--json"],
        "022",
    );
    let v = json(&out);
    (out, v)
}

/// The findings of `unit` on the manager of `uid`.
fn unit_findings(v: &serde_json::Value, uid: u32, unit: &str) -> Vec<serde_json::Value> {
    v["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter(|u| u["unit"] == unit && u["manager"]["uid"] == uid)
        .flat_map(|u| u["findings"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn oneshot(extra: &str) -> String {
    format!("[Service]\nType=oneshot\n{extra}\nExecStart=/bin/true\n")
}

#[test]
fn unit_files_cannot_freeze_or_exhaust_the_agent() {
    let user = TestUser::create().expect("user");
    let fifo = user.home.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    std::os::unix::fs::lchown(&fifo, Some(user.uid), Some(user.gid)).expect("chown fifo");
    // 2 MiB of valid assignments: systemd takes it, the agent does not read it whole.
    let big: String = (0..70_000)
        .map(|i| format!("V{i}=xxxxxxxxxxxxxxxxxx\n"))
        .collect();
    user.write_file("big.env", big).expect("big.env");
    user.install_unit("w-fifo.service", &oneshot("EnvironmentFile=%h/fifo"))
        .expect("unit");
    user.install_unit("w-zero.service", &oneshot("Environment=GOENV=/dev/zero"))
        .expect("unit");
    user.install_unit("w-goenvfifo.service", &oneshot("Environment=GOENV=%h/fifo"))
        .expect("unit");
    user.install_unit("w-big.service", &oneshot("EnvironmentFile=%h/big.env"))
        .expect("unit");
    let mgr = UserManager::start(user).expect("manager");
    let uid = mgr.uid();
    let d = tempdir();

    let (out, v) = units_json(d.path());
    let text = stdout(&out);
    let fifo_findings = unit_findings(&v, uid, "w-fifo.service");
    assert!(
        fifo_findings.iter().any(|f| f["kind"] == "env_file_error"
            && f["file"] == fifo.display().to_string()
            && f["msg"].as_str().unwrap_or("").contains("a FIFO")
            && f["fatal"] == true),
        "the FIFO is reported by name: {fifo_findings:#?}\n{text}"
    );
    let big_findings = unit_findings(&v, uid, "w-big.service");
    assert!(
        big_findings.iter().any(|f| f["kind"] == "env_file_error"
            && f["msg"].as_str().unwrap_or("").contains("not inspected")
            && f["fatal"] == false),
        "the large file is reported as not inspected: {big_findings:#?}"
    );
    // GOENV=/dev/zero and GOENV=FIFO: go's fallback is still resolved (the files are skipped
    // with a warning), so the units are judged like any other.
    for unit in ["w-zero.service", "w-goenvfifo.service"] {
        let u = v["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["unit"] == unit && u["manager"]["uid"] == uid)
            .unwrap_or_else(|| panic!("{unit} inspected: {text}"));
        let home = mgr.user.home.display().to_string();
        assert_eq!(
            u["gocache"][0],
            format!("{home}/.cache/go-build"),
            "{unit}: {u:#}"
        );
    }
}

#[test]
fn a_root_only_environment_file_is_read_as_the_units_user() {
    let d = tempdir();
    let vault = d.path().join("vault");
    std::fs::create_dir(&vault).expect("mkdir vault");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let secret = vault.join("secret.env");
    std::fs::write(
        &secret,
        "GOCACHE=/srv/SECRET_VALUE_1\nSECRET_LINE_WITHOUT_EQUALS\nexport SECRET_KEY_2=x\n",
    )
    .expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let user = TestUser::create().expect("user");
    user.install_unit(
        "w-secret.service",
        &oneshot(&format!("EnvironmentFile={}", secret.display())),
    )
    .expect("unit");
    // A glob the user cannot list must not be expanded by root either.
    user.install_unit(
        "w-glob.service",
        &oneshot(&format!("EnvironmentFile=-{}/*.env", vault.display())),
    )
    .expect("unit");
    let mgr = UserManager::start(user).expect("manager");
    let uid = mgr.uid();

    let (out, v) = units_json(d.path());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !all.contains("SECRET_"),
        "content of a root-only file reached the output:\n{all}"
    );
    let f = unit_findings(&v, uid, "w-secret.service");
    assert!(
        f.iter().any(|f| f["kind"] == "env_file_error"
            && f["file"] == secret.display().to_string()
            && f["msg"].as_str().unwrap_or("").contains("ermission denied")
            && f["fatal"] == true),
        "the user could not read it, and neither could the agent for them: {f:#?}"
    );
    // The glob over a directory the user may not list matches nothing, as for systemd
    // running the unit as that user.
    let u = v["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "w-glob.service" && u["manager"]["uid"] == uid)
        .unwrap_or_else(|| panic!("w-glob inspected: {all}"));
    assert_ne!(u["gocache"][0], "/srv/SECRET_VALUE_1", "{u:#}");
}

#[test]
fn a_file_system_that_never_answers_does_not_freeze_the_agent() {
    let user = TestUser::create().expect("user");
    user.install_unit("w-fuse.service", &oneshot("EnvironmentFile=%h/fuse/env"))
        .expect("unit");
    user.install_unit(
        "w-plain.service",
        &oneshot("Environment=GOCACHE=/srv/plain"),
    )
    .expect("unit");
    let mgr = UserManager::start(user).expect("manager");
    let uid = mgr.uid();
    // Declared after the manager, so it is gone before the user's home is removed.
    let _fuse = support::DeadFuse::mount(&mgr.user.home.join("fuse"));
    let d = tempdir();

    let start = Instant::now();
    let (out, v) = units_json(d.path());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(30), "{text}");
    let errors: Vec<String> = v["unit_errors"]
        .as_array()
        .expect("unit_errors")
        .iter()
        .filter(|e| e["unit"] == "w-fuse.service" && e["manager"]["uid"] == uid)
        .map(|e| e["msg"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        errors.iter().any(|m| m.contains("took longer than 10s")),
        "the blocked unit is an error saying so: {errors:?}\n{text}"
    );
    let plain = v["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "w-plain.service" && u["manager"]["uid"] == uid)
        .unwrap_or_else(|| panic!("the other unit is still inspected: {text}"));
    assert_eq!(plain["gocache"][0], "/srv/plain", "{plain:#}");
}

/// A shared cache `ROOT` (root:GROUP, 2770, no ACL) whose group has `member`.
struct SharedCache {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    policy: std::path::PathBuf,
    member_uid: u32,
    gid: u32,
}

fn shared_cache(group: &str, member: &str) -> SharedCache {
    let gid = support::ensure_group(group);
    let member_uid = support::ensure_user(member, &[group]);
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = dir.path().join("cache");
    std::fs::create_dir(&root).expect("mkdir");
    nix::unistd::chown(&root, None, Some(nix::unistd::Gid::from_raw(gid))).expect("chgrp");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o2770)).expect("chmod");
    let policy = support::policy(
        dir.path(),
        "p.toml",
        &format!(
            "[cache.shared]\npath = \"{}\"\ngroup = \"{group}\"\n",
            root.display()
        ),
    );
    SharedCache {
        _dir: dir,
        root,
        policy,
        member_uid,
        gid,
    }
}

/// Runs `script` with `sh` as the member (its groups included).
fn as_member(c: &SharedCache, script: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", c.member_uid))
        .arg(format!("--regid={}", c.gid))
        .args(["--init-groups", "sh", "-c", script]);
    cmd
}

#[test]
fn a_member_holding_a_lock_on_trim_txt_does_not_stop_enforce() {
    let c = shared_cache("gcwt-hostile-l", "gcwt-hostile-lm");
    let trim = c.root.join("trim.txt");
    std::fs::write(&trim, "1").expect("stale trim.txt");
    nix::unistd::chown(&trim, None, Some(nix::unistd::Gid::from_raw(c.gid))).expect("chgrp");
    std::fs::set_permissions(&trim, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    // The shell takes a shared lock through fd 9 and becomes `sleep`: one pid holds it.
    let holder = as_member(
        &c,
        &format!(
            "exec 9<'{}'; flock -s 9 || exit 1; exec sleep 600",
            trim.display()
        ),
    )
    .spawn()
    .expect("spawn the lock holder");
    let holder = support::KillOnDrop(holder);
    let start = Instant::now();
    loop {
        let f = std::fs::File::open(&trim).expect("open trim.txt");
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own; released when `f` drops.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the member never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }

    let p = c.policy.display().to_string();
    let started = Instant::now();
    let out = agent(&["--policy", &p, "enforce", "--json"], "022");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "enforce waited for the member's lock ({:?})",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    let cache = &v["outcome"]["caches"][0];
    assert_eq!(cache["trim_skipped_locked"], true, "{cache:#}");
    assert_eq!(cache["trim_rewritten"], false, "{cache:#}");
    assert_eq!(std::fs::read_to_string(&trim).expect("trim"), "1");
    drop(holder);
}

#[test]
fn trim_txt_created_under_umask_022_stays_writable_for_members() {
    let c = shared_cache("gcwt-hostile-u", "gcwt-hostile-um");
    let p = c.policy.display().to_string();
    let out = agent(&["--policy", &p, "enforce", "--json"], "022");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["outcome"]["caches"][0]["trim_rewritten"], true, "{v:#}");
    let trim = c.root.join("trim.txt");
    let md = std::fs::metadata(&trim).expect("trim.txt written");
    assert_eq!(md.mode() & 0o7777, 0o660, "mode {:o}", md.mode());
    assert_eq!(md.gid(), c.gid);
    // What matters: the member's own go can rewrite it once the agent stops.
    let w = as_member(&c, &format!("echo 2 > '{}'", trim.display()))
        .output()
        .expect("member writes trim.txt");
    assert!(
        w.status.success(),
        "member cannot write trim.txt: {}",
        String::from_utf8_lossy(&w.stderr)
    );
}

/// `units --fix --json` with a drop-in rule for `unit`.
fn units_fix(dir: &Path, unit: &str) -> serde_json::Value {
    let p = support::policy(
        dir,
        "fix.toml",
        &format!(
            "[units.fix]\nmatch = [\"{unit}\"]\nmanagers = \"user\"\ngocache = \"/srv/gocache\"\nremediation = \"drop-in\"\n"
        ),
    );
    let p = p.display().to_string();
    let out = agent(
        &[
            "--scope", "system", "--policy", &p, "units", "--fix", "--json",
        ],
        "022",
    );
    json(&out)
}

#[test]
fn a_user_cannot_steer_drop_ins_out_of_their_home() {
    let d = tempdir();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A root-owned stand-in for /etc: what every user's manager would read.
    let victim = d.path().join("etc");
    std::fs::create_dir_all(victim.join("systemd/user")).expect("mkdir victim");
    let user = TestUser::create().expect("user");
    user.install_unit("w-steer.service", &oneshot(""))
        .expect("unit");
    let mgr = UserManager::start(user).expect("manager");
    mgr.systemctl(&[
        "set-environment",
        &format!("XDG_CONFIG_HOME={}", victim.display()),
    ])
    .expect("set-environment");

    let v = units_fix(d.path(), "w-steer.service");
    let steered = victim.join("systemd/user/w-steer.service.d");
    assert!(
        !steered.exists(),
        "root created {} for the user: {v:#}",
        steered.display()
    );
    let skipped = v["plan"]["skipped"].to_string();
    assert!(
        skipped.contains("w-steer.service") && skipped.contains("outside"),
        "the refusal is reported: {v:#}"
    );
}

#[test]
fn drop_ins_are_written_as_the_user_not_as_root() {
    let d = tempdir();
    let user = TestUser::create().expect("user");
    user.install_unit("w-own.service", &oneshot(""))
        .expect("unit");
    let mgr = UserManager::start(user).expect("manager");
    // The user's own unit directory works as usual: created as the user.
    let v = units_fix(d.path(), "w-own.service");
    let dir = mgr.user.home.join(".config/systemd/user/w-own.service.d");
    let md = std::fs::metadata(&dir).unwrap_or_else(|e| panic!("{e}: {v:#}"));
    assert_eq!(md.uid(), mgr.uid());
    let conf = std::fs::metadata(dir.join("50-gocache-warden.conf")).expect("drop-in");
    assert_eq!(conf.uid(), mgr.uid());
    assert_eq!(
        mgr.show("w-own.service", "Environment").expect("show"),
        "GOCACHE=/srv/gocache"
    );

    // A directory in the home the user may not write (an admin's) is not written by root
    // on the user's behalf either.
    mgr.user
        .install_unit("w-locked.service", &oneshot(""))
        .expect("unit");
    mgr.daemon_reload().expect("reload");
    let locked = mgr
        .user
        .home
        .join(".config/systemd/user/w-locked.service.d");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let v = units_fix(d.path(), "w-locked.service");
    assert!(
        !locked.join("50-gocache-warden.conf").exists(),
        "root wrote into a directory the user cannot write: {v:#}"
    );
    let r = v["remediations"].to_string();
    assert!(
        r.contains("w-locked.service") && r.contains("ermission denied"),
        "the failure is reported: {v:#}"
    );
}

#[test]
fn a_users_symlink_on_the_way_to_a_cache_does_not_lead_root_elsewhere() {
    let uid = support::ensure_user("gcwt-hostile-anc", &[]);
    let d = tempdir();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Root's directory holding something cache-shaped, old enough to be evicted.
    let victim = d.path().join("victim");
    std::fs::create_dir_all(victim.join("go-build/ab")).expect("mkdir victim");
    let entry = victim.join(format!("go-build/ab/{}-d", "ab".repeat(32)));
    std::fs::write(&entry, "precious").expect("write");
    support::age(&entry, 90 * 86400);
    // The user's home, where the policy (or go env) says the cache is: `.cache` is theirs,
    // and a symlink to root's directory.
    let home = d.path().join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(uid)), None).expect("chown");
    std::os::unix::fs::symlink(&victim, home.join(".cache")).expect("symlink");
    std::os::unix::fs::lchown(home.join(".cache"), Some(uid), None).expect("lchown");
    let cache = home.join(".cache/go-build");
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.alice]\npath = \"{}\"\nmax_age = \"30d\"\nmin_age = \"1d\"\n",
            cache.display()
        ),
    );
    let p = p.display().to_string();
    let out = agent(&["--policy", &p, "enforce", "--json"], "022");
    assert!(entry.exists(), "root evicted through the user's symlink");
    assert!(
        !victim.join("go-build/trim.txt").exists(),
        "root wrote trim.txt through the user's symlink"
    );
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("symlink of uid"),
        "the refusal names the symlink: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Runs the agent with `args` and returns its exit code and peak resident set (KiB), read
/// from its own rusage when it is reaped.
// Reaped with wait4 (for its rusage), which clippy does not see as a wait.
#[allow(clippy::zombie_processes)]
fn peak_rss_kib(args: &[&str]) -> (i32, i64) {
    let child = Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the agent");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain wait4 on our own child; rusage is a zeroed out-parameter we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            assert!(libc::WIFEXITED(status), "the agent died: status {status}");
            return (libc::WEXITSTATUS(status), ru.ru_maxrss);
        }
        if start.elapsed() > DEADLINE {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the agent did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_shard_with_very_many_names_costs_no_memory_per_name() {
    let d = tempdir();
    let measure = |names: usize| {
        let root = d.path().join(format!("cache{names}"));
        let shard = root.join("ab");
        std::fs::create_dir_all(&shard).expect("mkdir");
        for i in 0..names {
            std::fs::File::create(shard.join(format!("{:064x}-d", i))).expect("create");
        }
        let p = support::policy(
            d.path(),
            &format!("p{names}.toml"),
            &format!("[cache.w]\npath = \"{}\"\n", root.display()),
        );
        let p = p.display().to_string();
        let (code, kib) = peak_rss_kib(&["--policy", &p, "check", "--json"]);
        assert!(code <= 1, "check exit code {code}");
        // Verification too (issue #22): each name is a zero-length output, hashed and
        // found incomplete, the shard read in bounded batches.
        let (code, vkib) = peak_rss_kib(&["--policy", &p, "check", "--verify", "--json"]);
        assert!(code <= 1, "check --verify exit code {code}");
        (kib, vkib)
    };
    let (small, vsmall) = measure(10);
    let (large, vlarge) = measure(300_000);
    eprintln!(
        "peak RSS: {small} KiB with 10 names, {large} KiB with 300 000; verifying: {vsmall} / {vlarge} KiB"
    );
    // Collected, 300 000 names of 66 bytes cost about 29 MiB; streamed, one batch.
    for (what, small, large) in [("check", small, large), ("check --verify", vsmall, vlarge)] {
        assert!(
            large - small < 8 * 1024,
            "{what}: peak RSS grew by {} KiB for 300 000 names ({small} KiB → {large} KiB)",
            large - small
        );
    }
}

/// Issue #22: a read-only member of a shared cache's group takes `flock(LOCK_SH)` on every
/// shard, which any reader can, to keep eviction away. cmd/go never locks shards, so only a
/// lock root holds stops eviction: `enforce` evicts the cache down to its limit anyway and
/// names the holder (pid, command, uid) in its outcome, without waiting for it.
#[test]
fn a_member_locking_every_shard_does_not_stop_eviction() {
    let c = shared_cache("gcwt-hostile-k", "gcwt-hostile-km");
    support::mkcache(&c.root, 400, 22);
    support::age_tree(&c.root);
    // Read-only for the group, as a shared cache written by a trusted account is.
    let o = Command::new("chmod")
        .args(["-R", "g-w,g+rX"])
        .arg(&c.root)
        .output()
        .expect("chmod");
    assert!(o.status.success());
    let o = Command::new("chgrp")
        .args(["-R", &c.gid.to_string()])
        .arg(&c.root)
        .output()
        .expect("chgrp");
    assert!(o.status.success());
    let before = support::du_bytes(&c.root);
    let limit = before / 4;
    let policy = support::policy(
        c.root.parent().expect("parent"),
        "limit.toml",
        &format!(
            "[cache.shared]\npath = \"{}\"\ngroup = \"gcwt-hostile-k\"\nmax_size = {limit}\nmin_age = \"1h\"\n",
            c.root.display()
        ),
    );
    // One process holds a shared lock on each of the 256 shards, then becomes `sleep`.
    let script = format!(
        "cd '{}' || exit 1; for d in ??; do exec {{fd}}<\"$d\"; flock -s \"$fd\" || exit 1; done; echo locked; exec sleep 600",
        c.root.display()
    );
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", c.member_uid))
        .arg(format!("--regid={}", c.gid))
        .args(["--init-groups", "bash", "-c", &script])
        .stdout(Stdio::piped());
    let mut holder = cmd.spawn().expect("spawn the lock holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    let holder = support::KillOnDrop(holder);
    assert_eq!(
        line.trim(),
        "locked",
        "the member could not lock the shards"
    );
    let shard = c.root.join("00");
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&shard).expect("open shard");
        // SAFETY: flock on an fd we own; released when `f` drops.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(r, 0, "shard 00 is not locked by the member");
    }

    let p = policy.display().to_string();
    let started = Instant::now();
    let out = agent(&["--policy", &p, "enforce", "--json"], "022");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "enforce waited for the member's locks ({:?})",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    let cache = &v["outcome"]["caches"][0];
    assert_eq!(cache["locked_skipped"], 0, "{cache:#}");
    assert!(
        cache["locks_ignored"]["count"].as_u64().unwrap_or(0) >= 256,
        "{cache:#}"
    );
    let example = cache["locks_ignored"]["examples"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pid = holder.0.id();
    assert!(
        example.contains(&format!("pid {pid} (sleep, uid {})", c.member_uid)),
        "the holder is named: {example}"
    );
    let after = support::du_bytes(&c.root);
    assert!(
        after <= limit,
        "evicted down to its limit despite the locks: {before} -> {after}, limit {limit}\n{cache:#}"
    );
    assert!(
        stderr(&out).contains("only root's locks stop eviction"),
        "said in the log: {}",
        stderr(&out)
    );
    drop(holder);
}
