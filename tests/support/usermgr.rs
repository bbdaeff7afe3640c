//! Test fixture: throwaway users running real `systemd --user` managers.
//!
//! What works on these machines (systemd 252, no systemd as PID 1, hybrid cgroups), and why:
//! - Each manager runs in its own mount namespace (`unshare -m`, private propagation) with a
//!   tmpfs on `/run/systemd` holding `/run/systemd/system`, which is how systemd decides it
//!   was "booted with systemd". The tmpfs hides nothing of the host's `/run/systemd`.
//! - `XDG_RUNTIME_DIR` is `/run/user/UID` on the *host's* `/run` (outside the namespaced
//!   tmpfs), so the test process, which cannot join a mount namespace (it is multithreaded),
//!   sees the manager's `systemd/private` socket and the `bus` socket directly.
//! - A non-root manager needs cgroups it owns: `/sys/fs/cgroup/unified/NAME` and
//!   `/sys/fs/cgroup/systemd/NAME` (or `/sys/fs/cgroup/NAME` on a pure cgroup2 host) are
//!   created, chowned, and the helper shell moves itself there before `exec`ing
//!   `setpriv … systemd --user`, so the child we spawned *is* the manager (kill by that pid).
//! - Root may talk to the manager peer-to-peer over `systemd/private`; `systemctl --user` as
//!   root refuses a manager of another uid, so [`UserManager::systemctl`] runs it as the user.
//! - Outside the namespace `systemctl is-system-running` says "offline" (it checks for
//!   `/run/systemd/system`, which only the namespace has), so readiness polls the manager's
//!   `SystemState` property instead. The manager's own log is not captured: without journald
//!   a user manager reopens `/dev/console` per message, which the user may not open.
//! - Never start systemd as PID 1 in any namespace: it would wipe the host's /tmp.
//!
//! Parallel tests: user names are unique (`gcwt<pid hex>x<n>`), useradd/userdel run under a
//! file lock, and each manager has its own namespace, cgroup and runtime dir. Users left behind
//! by a test process that died are removed when the next fixture starts (their name carries the
//! dead pid). Drop order: stop the manager (SIGTERM, then SIGKILL), kill what is left in its
//! cgroups by pid, remove the cgroups depth-first and the runtime dir, `userdel`, remove home.
//!
//! Usage:
//! ```ignore
//! let user = TestUser::create()?;
//! user.install_unit("w-a.service", "[Service]\nExecStart=/bin/true\n")?;
//! let mgr = UserManager::start(user)?;          // waits until the manager is up
//! mgr.systemctl(&["start", "w-a.service"])?;   // runs as the user
//! let socket = mgr.private_socket();            // /run/user/UID/systemd/private
//! ```
//! Needs (Debian): systemd, dbus-user-session, util-linux (unshare, setpriv), passwd (useradd).
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LOCK_FILE: &str = super::USERS_LOCK;
const PREFIX: &str = "gcwt";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails with a clear message when a tool the fixture needs is missing.
pub fn require_tools() -> Result<()> {
    for (tool, package) in [
        ("systemd", "systemd"),
        ("systemctl", "systemd"),
        ("unshare", "util-linux"),
        ("setpriv", "util-linux"),
        ("useradd", "passwd"),
        ("userdel", "passwd"),
        ("dbus-daemon", "dbus-user-session"),
    ] {
        let found = std::env::split_paths(PATH).any(|d| d.join(tool).exists());
        if !found {
            bail!("{tool} is missing: apt-get install {package}");
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the systemd user-manager tests must run as root");
    }
    Ok(())
}

/// Serialises useradd/userdel, which fail when /etc/passwd is locked by another call.
fn users_lock() -> Result<nix::fcntl::Flock<fs::File>> {
    let file = super::open_users_lock().with_context(|| format!("cannot open \"{LOCK_FILE}\""))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock \"{LOCK_FILE}\": {e}"))
}

/// Runs a command, failing with its stderr unless it exits 0.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// useradd/userdel with retries: other test binaries may hold the passwd lock without ours.
fn run_passwd_tool(cmd: &mut Command) -> Result<()> {
    let mut last = None;
    for _ in 0..20 {
        match run(cmd) {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{cmd:?} failed")))
}

/// Cgroup directories a manager named `name` runs in, for this host's cgroup layout.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(name)];
    }
    ["unified", "systemd"]
        .iter()
        .map(|h| root.join(h))
        .filter(|h| h.join("cgroup.procs").exists())
        .map(|h| h.join(name))
        .collect()
}

/// Kills every process in `dir` and below (by pid) and removes the cgroups depth-first.
fn destroy_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for _ in 0..100 {
        let mut dirs = Vec::new();
        collect_dirs(dir, &mut dirs);
        let pids: Vec<i32> = dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs);
    // Deepest first: a cgroup can only be removed once its children are gone.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        for _ in 0..50 {
            match fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Removes users (and their managers' leftovers) created by test processes that have died.
fn sweep_stale_users() {
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return;
    };
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let (Some(name), Some(uid), Some(home)) = (fields.first(), fields.get(2), fields.get(5))
        else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest
            .split('x')
            .next()
            .and_then(|p| i32::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || kill(Pid::from_raw(pid), None).is_ok() {
            continue;
        }
        for dir in cgroup_dirs(name) {
            destroy_cgroup(&dir);
        }
        let _ = fs::remove_dir_all(format!("/run/user/{uid}"));
        let _ = run(Command::new("userdel").arg(name));
        let base = Path::new(home).parent();
        if let Some(base) = base.filter(|b| {
            b.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gcwt-"))
        }) {
            let _ = fs::remove_dir_all(base);
        }
    }
}

/// A throwaway Unix user with a home under a private temp dir. Dropping it runs `userdel`.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    base: tempfile::TempDir,
}

impl TestUser {
    pub fn create() -> Result<TestUser> {
        require_tools()?;
        let name = format!(
            "{PREFIX}{:x}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let base = tempfile::Builder::new()
            .prefix("gcwt-")
            .tempdir()
            .context("cannot create temp dir")?;
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755))?;
        let home = base.path().join(&name);
        {
            let _lock = users_lock()?;
            sweep_stale_users();
            run_passwd_tool(
                Command::new("useradd")
                    .args(["-M", "-U", "-s", "/bin/sh", "-d"])
                    .arg(&home)
                    .arg(&name),
            )?;
        }
        let pw = nix::unistd::User::from_name(&name)?
            .with_context(|| format!("useradd did not create {name}"))?;
        let user = TestUser {
            name,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            home,
            base,
        };
        fs::create_dir(&user.home)?;
        chown(&user.home, Some(user.uid), Some(user.gid))?;
        fs::set_permissions(&user.home, fs::Permissions::from_mode(0o755))?;
        Ok(user)
    }

    /// Writes `rel` (relative to the home) with its parent dirs, all owned by the user.
    pub fn write_file(&self, rel: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.home.join(rel);
        let mut dir = self.home.clone();
        if let Some(parent) = Path::new(rel).parent() {
            for c in parent.components() {
                dir.push(c);
                if !dir.exists() {
                    fs::create_dir(&dir)?;
                    chown(&dir, Some(self.uid), Some(self.gid))?;
                }
            }
        }
        let mut f = fs::File::create(&path)
            .with_context(|| format!("cannot create \"{}\"", path.display()))?;
        f.write_all(contents.as_ref())?;
        chown(&path, Some(self.uid), Some(self.gid))?;
        Ok(path)
    }

    /// Installs a user unit file into `~/.config/systemd/user`. A running manager needs
    /// [`UserManager::daemon_reload`] afterwards.
    pub fn install_unit(&self, name: &str, contents: &str) -> Result<PathBuf> {
        self.write_file(&format!(".config/systemd/user/{name}"), contents)
    }

    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/user/{}", self.uid))
    }

    /// A command run as this user with a clean, manager-like environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--init-groups".to_owned(),
            "env".to_owned(),
            "-i".to_owned(),
        ]);
        cmd.arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!("LOGNAME={}", self.name))
            .arg(format!("XDG_RUNTIME_DIR={}", self.runtime_dir().display()))
            .arg(format!("PATH={PATH}"))
            .arg(program);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Ok(_lock) = users_lock() {
            let _ = run_passwd_tool(Command::new("userdel").arg(&self.name));
        }
    }
}

/// A running `systemd --user` for a [`TestUser`]; dropping it stops everything it started.
pub struct UserManager {
    pub user: TestUser,
    child: Child,
    cgroups: Vec<PathBuf>,
    log: PathBuf,
}

impl UserManager {
    /// Starts the manager and waits until it has finished starting up.
    pub fn start(user: TestUser) -> Result<UserManager> {
        let runtime = user.runtime_dir();
        if runtime.exists() {
            fs::remove_dir_all(&runtime)?;
        }
        fs::create_dir_all(&runtime)?;
        chown(&runtime, Some(user.uid), Some(user.gid))?;
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700))?;
        let cgroups = cgroup_dirs(&user.name);
        if cgroups.is_empty() {
            bail!("no usable cgroup hierarchy under /sys/fs/cgroup");
        }
        let log = user.base.path().join("manager.log");
        let script = r#"set -e
mount -t tmpfs -o mode=0755 gcw-test /run/systemd
mkdir /run/systemd/system
uid=$1; gid=$2; shift 2

for cg in $CGROUPS; do
    mkdir "$cg"
    chown -R "$uid:$gid" "$cg"
    echo $$ > "$cg/cgroup.procs"
done
exec setpriv --reuid="$uid" --regid="$gid" --init-groups env -i "$@" systemd --user
"#;
        let cgroup_list: Vec<String> = cgroups.iter().map(|p| p.display().to_string()).collect();
        let log_file = fs::File::create(&log)?;
        let mut manager = UserManager {
            child: Command::new("unshare")
                .args([
                    "-m",
                    "--propagation",
                    "private",
                    "/bin/sh",
                    "-c",
                    script,
                    "sh",
                ])
                .arg(user.uid.to_string())
                .arg(user.gid.to_string())
                .arg(format!("HOME={}", user.home.display()))
                .arg(format!("USER={}", user.name))
                .arg(format!("LOGNAME={}", user.name))
                .arg(format!("XDG_RUNTIME_DIR={}", runtime.display()))
                .arg(format!("PATH={PATH}"))
                .env("CGROUPS", cgroup_list.join(" "))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .context("cannot start unshare")?,
            user,
            cgroups,
            log,
        };
        manager.wait_ready().with_context(|| {
            format!(
                "user manager did not start; setup output:\n{}",
                fs::read_to_string(&manager.log).unwrap_or_default()
            )
        })?;
        Ok(manager)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.private_socket().exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("manager exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("no {} after 60 s", self.private_socket().display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `systemctl is-system-running` would say "offline": it checks sd_booted(), and
        // /run/systemd/system only exists inside the manager's namespace. Poll the state.
        let mut state = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("manager exited early: {status}");
            }
            state = self
                .show("", "SystemState")
                .unwrap_or_else(|e| format!("unknown ({e:#})"));
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("manager state is {state:?} after 60 s")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uid(&self) -> u32 {
        self.user.uid
    }

    pub fn private_socket(&self) -> PathBuf {
        self.user.runtime_dir().join("systemd/private")
    }

    /// `systemctl --user ARGS` as the user; stdout on success, an error with stderr otherwise.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let out = run(self.user.command("systemctl").arg("--user").args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl --user show -p PROP --value UNIT` (the manager itself when `unit` is "").
    pub fn show(&self, unit: &str, prop: &str) -> Result<String> {
        let mut args = vec!["show", "-p", prop, "--value"];
        if !unit.is_empty() {
            args.push(unit);
        }
        Ok(self.systemctl(&args)?.trim_end_matches('\n').to_owned())
    }

    pub fn daemon_reload(&self) -> Result<()> {
        self.systemctl(&["daemon-reload"]).map(|_| ())
    }

    /// Output of the setup script. The manager itself logs nothing useful here: without
    /// journald a user manager reopens /dev/console for each message, which the user cannot
    /// open.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        for dir in &self.cgroups {
            destroy_cgroup(dir);
        }
        let _ = fs::remove_dir_all(self.user.runtime_dir());
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        self.stop();
    }
}
