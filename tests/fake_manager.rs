//! Fake user managers (issue 12): a local user stops their own `systemd --user` and serves
//! `/run/user/UID/systemd/private` themselves (tests/tools/fake_user_manager.py, run as that
//! user). Whatever it does — never answer, trickle a reply, announce a huge one, send a
//! malformed header — `gocache-warden units` must finish within a bound, stay small, report
//! that user's manager as failed with a clear message, not panic, and still inspect another
//! user's real manager (tests/support/usermgr.rs) correctly.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::KillOnDrop;
use support::usermgr::{TestUser, UserManager};

/// A run that takes longer has waited on the fake manager: the agent's bound for one user
/// manager is 20 s (plus 10 s to connect), zbus 5's default was 120 s per call.
const DEADLINE: Duration = Duration::from_secs(45);
/// Peak resident memory allowed to one run: the agent needs about 20 MiB; reading a 100 MiB
/// message whole would need five times this.
const MAX_RSS_KIB: i64 = 64 * 1024;

/// `units` inspects every user manager on the machine, so one test's fake (a silent one
/// holds every run for 20 s) must not be up while another test times its run: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fake manager serving the private socket of its own user.
struct Fake {
    server: KillOnDrop,
    user: TestUser,
}

impl Fake {
    fn start(mode: &str) -> Fake {
        let user = TestUser::create().expect("user");
        let runtime = user.runtime_dir();
        let _ = fs::remove_dir_all(&runtime);
        fs::create_dir_all(&runtime).expect("runtime dir");
        chown(&runtime, Some(user.uid), Some(user.gid)).expect("chown runtime dir");
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).expect("chmod");
        // Handed over as text: the user may not be able to enter the checkout (a 0700 home).
        let script = fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/fake_user_manager.py"),
        )
        .expect("read tests/tools/fake_user_manager.py");
        let socket = runtime.join("systemd/private");
        let mut child = user
            .command("python3")
            .arg("-c")
            .arg(&script)
            .arg(&socket)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake manager");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the fake manager's ready line");
        assert_eq!(line.trim(), "ready", "the fake manager did not start");
        Fake {
            server: KillOnDrop(child),
            user,
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
        let _ = fs::remove_dir_all(self.user.runtime_dir());
    }
}

struct Run {
    elapsed: Duration,
    max_rss_kib: i64,
    stdout: String,
    stderr: String,
    json: serde_json::Value,
}

/// `units --json` over every manager with a rule for `w-*` units, killed at [`DEADLINE`];
/// its peak memory comes from `wait4`.
// The child is reaped by `wait4` (for its rusage), which `Child::wait` cannot do.
#[allow(clippy::zombie_processes)]
fn units(dir: &std::path::Path) -> Run {
    let p = support::policy(
        dir,
        "p.toml",
        "[units.fake]\nmatch = [\"w-*.service\"]\nmanagers = \"user\"\nrequire_gocache = true\n",
    );
    let start = Instant::now();
    let mut child = Command::new(support::bin())
        .args(["--scope", "system", "--policy"])
        .arg(&p)
        .args(["units", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child, status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not finish within {DEADLINE:?}: a fake user manager froze it\nstderr: {}",
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    let stdout = reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    assert!(
        libc::WIFEXITED(status),
        "the agent died of a signal ({status:#x}): {stderr}"
    );
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("units --json is not JSON ({e}): {stdout}\n{stderr}"));
    Run {
        elapsed,
        max_rss_kib: usage.ru_maxrss,
        stdout,
        stderr,
        json,
    }
}

/// A real manager with one unit, for the agent to inspect beside the fake one.
fn real_manager() -> UserManager {
    let real = TestUser::create().expect("user");
    real.install_unit(
        "w-real.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    .expect("unit");
    UserManager::start(real).expect("real manager")
}

/// Runs `units` with a real manager (one unit lacking GOCACHE) and a fake one in `mode`;
/// returns the fake's manager error message after checking everything the modes share.
fn against_fake(mode: &str) -> (Run, String) {
    let _alone = one_at_a_time();
    let real = real_manager();
    let fake = Fake::start(mode);
    judge(&real, fake.user.uid, mode)
}

/// Runs `units` and checks that it finished in time without a panic, inspected the real
/// manager, and has exactly one error, and nothing else, for `fake_uid`; returns that error.
fn judge(real: &UserManager, fake_uid: u32, what: &str) -> (Run, String) {
    let d = support::tempdir();
    let run = units(d.path());
    let ctx = format!("{}\nstderr: {}", run.stdout, run.stderr);
    assert!(run.elapsed < DEADLINE, "took {:?}\n{ctx}", run.elapsed);
    assert!(
        !run.stderr.contains("panicked"),
        "a task panicked on the fake manager's message:\n{ctx}"
    );
    // The real manager is inspected as if the fake one did not exist.
    let real_uid = real.uid();
    assert!(
        run.json["units"]
            .as_array()
            .expect("units")
            .iter()
            .any(|u| u["unit"] == "w-real.service" && u["manager"]["uid"] == real_uid),
        "the real manager's unit was not judged:\n{ctx}"
    );
    let errors: Vec<String> = run.json["manager_errors"]
        .as_array()
        .expect("manager_errors")
        .iter()
        .filter(|e| {
            let t = e["target"].as_str().unwrap_or("");
            t.contains(&format!("/{fake_uid}/")) || t.starts_with(&format!("user {fake_uid} "))
        })
        .map(|e| e["msg"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(errors.len(), 1, "one error for the fake manager:\n{ctx}");
    assert!(
        !run.json["units"]
            .as_array()
            .expect("units")
            .iter()
            .any(|u| u["manager"]["uid"] == fake_uid),
        "nothing of the fake manager's answers was used:\n{ctx}"
    );
    let msg = errors[0].clone();
    eprintln!(
        "{what}: {msg} ({:?}, {} KiB peak)",
        run.elapsed, run.max_rss_kib
    );
    (run, msg)
}

#[test]
fn a_manager_that_never_answers_costs_a_bounded_time() {
    let (run, msg) = against_fake("silent");
    assert!(
        msg.contains("within 20s"),
        "the error says the manager did not answer in time: {msg}"
    );
    assert!(run.elapsed >= Duration::from_secs(19), "{:?}", run.elapsed);
}

#[test]
fn a_manager_that_trickles_its_reply_costs_a_bounded_time() {
    let (_run, msg) = against_fake("trickle");
    assert!(
        msg.contains("within 20s"),
        "the error says the manager did not answer in time: {msg}"
    );
}

#[test]
fn a_huge_reply_is_refused_from_its_header() {
    let (run, msg) = against_fake("huge");
    assert!(
        msg.contains("more than the 1024 KiB accepted from a user manager"),
        "the error names the size limit: {msg}"
    );
    assert!(
        run.max_rss_kib < MAX_RSS_KIB,
        "the agent held {} KiB: it read the message",
        run.max_rss_kib
    );
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
}

#[test]
fn a_malformed_header_is_an_error_not_a_panic() {
    let (run, msg) = against_fake("malformed");
    assert!(
        msg.to_lowercase().contains("interface"),
        "the error names what was malformed: {msg}"
    );
    // Rejected as it arrives, not after a timeout.
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
}

/// The user's `systemd` directory is a symlink into a file system that never answers (one
/// they mounted with `fusermount`): finding the socket there must not hold up the agent.
#[test]
fn a_runtime_dir_leading_into_a_dead_file_system_costs_a_bounded_time() {
    let _alone = one_at_a_time();
    let real = real_manager();
    let user = TestUser::create().expect("user");
    let runtime = user.runtime_dir();
    let _ = fs::remove_dir_all(&runtime);
    fs::create_dir_all(&runtime).expect("runtime dir");
    chown(&runtime, Some(user.uid), Some(user.gid)).expect("chown runtime dir");
    let d = support::tempdir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let fuse = support::DeadFuse::mount(&d.path().join("mnt"));
    std::os::unix::fs::symlink(&fuse.mnt, runtime.join("systemd")).expect("symlink");
    std::os::unix::fs::lchown(runtime.join("systemd"), Some(user.uid), Some(user.gid))
        .expect("chown symlink");

    let (run, msg) = judge(&real, user.uid, "dead fs");
    drop(fuse);
    let _ = fs::remove_dir_all(&runtime);
    assert!(
        msg.contains("took longer than 10s"),
        "the error says the lookup was given up: {msg}"
    );
    assert!(run.elapsed < Duration::from_secs(25), "{:?}", run.elapsed);
}
