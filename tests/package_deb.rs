//! The Debian package, end to end as root: the two-step build the README documents (release
//! build, `generate-assets` into the target dir, `cargo deb --no-build`), the archive's file
//! list and control data, `dpkg -i`, `systemd-analyze verify` of the installed units, the
//! installed binary, man page, completions and monitoring files, then `dpkg --purge` leaving
//! nothing behind. Not a test of the units under a running systemd (there is no systemd
//! PID 1 here; the daemon tests run the agent under real user managers) nor of upgrades.

mod support;

use support::deb::{build_deb, ensure_cargo_deb, ok, repo, target_dir, text};

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PACKAGE: &str = "gocache-warden";

/// Every file the package ships, with its mode; monitoring rule tests are added from the
/// repository's monitoring/tests/ so a new one is expected without editing this list.
const FILES: [(&str, u32); 20] = [
    ("usr/bin/gocache-warden", 0o755),
    ("usr/lib/systemd/system/gocache-warden.service", 0o644),
    (
        "usr/lib/systemd/system/gocache-warden-enforce.service",
        0o644,
    ),
    ("usr/lib/systemd/system/gocache-warden-enforce.timer", 0o644),
    (
        "usr/lib/systemd/system/gocache-warden-metrics.socket",
        0o644,
    ),
    ("usr/lib/systemd/system/gocache-warden-relay.socket", 0o644),
    (
        "usr/lib/systemd/system/gocache-warden-relay@.service",
        0o644,
    ),
    ("usr/lib/systemd/user/gocache-warden.service", 0o644),
    ("usr/lib/gocache-warden/default.toml", 0o644),
    ("usr/lib/gocache-warden/policy.d/README", 0o644),
    (
        "usr/lib/gocache-warden/examples/shared-build-server.toml",
        0o644,
    ),
    ("usr/lib/gocache-warden/examples/single-user.toml", 0o644),
    ("usr/share/man/man1/gocache-warden.1.gz", 0o644),
    (
        "usr/share/bash-completion/completions/gocache-warden",
        0o644,
    ),
    ("usr/share/zsh/vendor-completions/_gocache-warden", 0o644),
    (
        "usr/share/fish/vendor_completions.d/gocache-warden.fish",
        0o644,
    ),
    (
        "usr/share/gocache-warden/monitoring/gocache-warden.rules.yml",
        0o644,
    ),
    (
        "usr/share/gocache-warden/monitoring/grafana-dashboard.json",
        0o644,
    ),
    ("usr/share/doc/gocache-warden/README.md", 0o644),
    ("usr/share/doc/gocache-warden/copyright", 0o644),
];

/// Installed files copied verbatim from the repository.
const VERBATIM: [(&str, &str); 10] = [
    (
        "units/system/gocache-warden.service",
        "/usr/lib/systemd/system/gocache-warden.service",
    ),
    (
        "units/system/gocache-warden-enforce.service",
        "/usr/lib/systemd/system/gocache-warden-enforce.service",
    ),
    (
        "units/system/gocache-warden-enforce.timer",
        "/usr/lib/systemd/system/gocache-warden-enforce.timer",
    ),
    (
        "units/system/gocache-warden-metrics.socket",
        "/usr/lib/systemd/system/gocache-warden-metrics.socket",
    ),
    (
        "units/system/gocache-warden-relay.socket",
        "/usr/lib/systemd/system/gocache-warden-relay.socket",
    ),
    (
        "units/system/gocache-warden-relay@.service",
        "/usr/lib/systemd/system/gocache-warden-relay@.service",
    ),
    (
        "units/user/gocache-warden.service",
        "/usr/lib/systemd/user/gocache-warden.service",
    ),
    (
        "policy/default.toml",
        "/usr/lib/gocache-warden/default.toml",
    ),
    (
        "policy/single-user.toml",
        "/usr/lib/gocache-warden/examples/single-user.toml",
    ),
    (
        "monitoring/gocache-warden.rules.yml",
        "/usr/share/gocache-warden/monitoring/gocache-warden.rules.yml",
    ),
];

/// Everything the package may leave on the system: all must be gone after the purge.
const LEFTOVERS: [&str; 16] = [
    "/usr/bin/gocache-warden",
    "/usr/lib/systemd/system/gocache-warden.service",
    "/usr/lib/systemd/system/gocache-warden-enforce.service",
    "/usr/lib/systemd/system/gocache-warden-enforce.timer",
    "/usr/lib/systemd/system/gocache-warden-metrics.socket",
    "/usr/lib/systemd/system/gocache-warden-relay.socket",
    "/usr/lib/systemd/system/gocache-warden-relay@.service",
    "/usr/lib/systemd/user/gocache-warden.service",
    "/usr/lib/gocache-warden",
    "/usr/share/gocache-warden",
    "/usr/share/doc/gocache-warden",
    "/usr/share/man/man1/gocache-warden.1.gz",
    "/usr/share/bash-completion/completions/gocache-warden",
    "/etc/gocache-warden",
    "/etc/systemd/system/multi-user.target.wants/gocache-warden.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/gocache-warden.service.dsh-also",
];

/// Holds a lock other tests that run dpkg can take too: dpkg does not wait for its own.
fn dpkg_lock() -> File {
    let f = File::create("/tmp/gocache-warden-tests.dpkg.lock").expect("dpkg lock file");
    // SAFETY: flock on an fd we own; released when the file is closed.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

/// dpkg's view of the package: "" when unknown, else e.g. "install ok installed".
fn dpkg_status() -> String {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .expect("dpkg-query (this test needs a Debian system)");
    text(&o.stdout)
}

/// Purges the package if any trace of it is known to dpkg (a run that failed midway).
fn purge_if_present() {
    let s = dpkg_status();
    if !s.is_empty() && !s.ends_with("not-installed") {
        ok(
            Command::new("dpkg").args(["--purge", PACKAGE]),
            "dpkg --purge (leftover of an earlier run)",
        );
    }
}

/// Purges on the way out, also when an assertion fails with the package installed.
struct PurgeGuard;

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
        }
    }
}

/// `dpkg-deb -c`: regular files (path without "./" → mode), directories, symlinks.
fn contents(deb: &Path) -> (BTreeMap<String, u32>, Vec<String>) {
    let o = ok(Command::new("dpkg-deb").arg("-c").arg(deb), "dpkg-deb -c");
    let (mut files, mut others) = (BTreeMap::new(), Vec::new());
    for line in text(&o.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "unexpected dpkg-deb -c line: {line}");
        let path = f[5]
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let perms = f[0];
        let mode = perms[1..].chars().enumerate().fold(0u32, |m, (i, c)| {
            if c == '-' { m } else { m | (1 << (8 - i)) }
        });
        match perms.as_bytes()[0] {
            b'-' => {
                files.insert(path, mode);
            }
            b'd' => {}
            _ => others.push(line.to_owned()),
        }
    }
    (files, others)
}

fn control_field(deb: &Path, field: &str) -> String {
    let o = ok(
        Command::new("dpkg-deb").args(["-f"]).arg(deb).arg(field),
        "dpkg-deb -f",
    );
    text(&o.stdout).trim().to_owned()
}

/// Checks the archive: exactly the expected files with their modes, the control fields and
/// the maintainer scripts.
fn inspect(deb: &Path) {
    let (files, others) = contents(deb);
    let mut expected: BTreeMap<String, u32> =
        FILES.iter().map(|(p, m)| (p.to_string(), *m)).collect();
    for e in std::fs::read_dir(repo().join("monitoring/tests")).expect("monitoring/tests") {
        let name = e
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".test.yml") {
            expected.insert(
                format!("usr/share/gocache-warden/monitoring/tests/{name}"),
                0o644,
            );
        }
    }
    assert_eq!(
        files, expected,
        "the package's files and modes (left: dpkg-deb -c, right: expected)"
    );
    assert!(
        others.is_empty(),
        "unexpected non-regular entries: {others:?}"
    );

    assert_eq!(control_field(deb, "Package"), PACKAGE);
    let depends = control_field(deb, "Depends");
    assert!(
        depends.split(',').any(|d| d.trim().starts_with("libacl1")),
        "Depends lacks libacl1: {depends}"
    );
    assert!(
        depends.contains("libc6"),
        "Depends lacks $auto's libc6: {depends}"
    );

    let info = ok(Command::new("dpkg-deb").arg("-I").arg(deb), "dpkg-deb -I");
    let info = text(&info.stdout);
    for script in ["postinst", "prerm", "postrm"] {
        assert!(
            info.contains(script),
            "no {script} in the control archive:\n{info}"
        );
    }
    let dir = support::tempdir();
    let ctrl = dir.path().join("DEBIAN");
    ok(
        Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl),
        "dpkg-deb -e",
    );
    let read = |n: &str| std::fs::read_to_string(ctrl.join(n)).expect("maintainer script");
    let postinst = read("postinst");
    for needle in [
        "install -d -m 0755 /etc/gocache-warden/policy.d",
        "deb-systemd-helper enable gocache-warden.service",
        "deb-systemd-helper update-state gocache-warden-enforce.timer",
        "deb-systemd-helper update-state gocache-warden-metrics.socket",
        // Starts happen only with systemd as PID 1, via policy-rc.d-honouring invoke.
        "if [ -d /run/systemd/system ]",
        "deb-systemd-invoke $_dh_action gocache-warden.service",
    ] {
        assert!(
            postinst.contains(needle),
            "postinst lacks {needle:?}:\n{postinst}"
        );
    }
    // The timer and the socket are opt-in: enabled again on upgrade only if the admin
    // enabled them (the "dont-enable" fragment), never started.
    for unit in [
        "gocache-warden-enforce.timer",
        "gocache-warden-metrics.socket",
    ] {
        let needle = format!("deb-systemd-helper debian-installed {unit}");
        assert!(
            postinst.contains(&needle),
            "postinst lacks {needle:?}:\n{postinst}"
        );
    }
    assert!(
        !postinst.contains("$_dh_action gocache-warden-enforce")
            && !postinst.contains("$_dh_action gocache-warden-metrics"),
        "the timer and the socket must not be started:\n{postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#"), "token left in postinst");
    let postrm = read("postrm");
    assert!(
        postrm.contains("deb-systemd-helper purge"),
        "postrm:\n{postrm}"
    );
    assert!(
        postrm.contains("rmdir /etc/gocache-warden"),
        "postrm:\n{postrm}"
    );
    for s in ["postinst", "prerm", "postrm"] {
        ok(
            Command::new("sh").arg("-n").arg(ctrl.join(s)),
            "sh -n maintainer script",
        );
        let mode = std::fs::metadata(ctrl.join(s))
            .expect("script")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{s} mode");
    }
}

/// The installed state: files as in the repository, enablement, the empty /etc drop-in
/// directory, clean `systemd-analyze verify`, a working binary, man page and completions.
fn check_installed() {
    for (src, dst) in VERBATIM {
        assert_eq!(
            std::fs::read(repo().join(src)).expect("repo file"),
            std::fs::read(dst).unwrap_or_else(|e| panic!("{dst}: {e}")),
            "{dst} differs from {src}"
        );
    }

    // Enabled by deb-systemd-helper without systemd running; the timer and socket are not.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/gocache-warden.service");
    // deb-systemd-helper links to /lib/systemd/system, the same file on merged-/usr.
    assert_eq!(
        std::fs::canonicalize(wants).expect("agent enabled: multi-user.target.wants symlink"),
        std::fs::canonicalize("/usr/lib/systemd/system/gocache-warden.service").expect("unit")
    );
    for p in [
        "/etc/systemd/system/timers.target.wants/gocache-warden-enforce.timer",
        "/etc/systemd/system/sockets.target.wants/gocache-warden-metrics.socket",
    ] {
        assert!(!Path::new(p).exists(), "{p} enabled, must be opt-in");
    }

    let etc = Path::new("/etc/gocache-warden/policy.d");
    let md = std::fs::metadata(etc).expect("/etc/gocache-warden/policy.d exists");
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_dir(etc).expect("read policy.d").count(),
        0,
        "policy.d empty"
    );

    // Clean means no output at all: a missing man page or binary is reported on stderr.
    let units = [
        "/usr/lib/systemd/system/gocache-warden.service",
        "/usr/lib/systemd/system/gocache-warden-enforce.service",
        "/usr/lib/systemd/system/gocache-warden-enforce.timer",
        "/usr/lib/systemd/system/gocache-warden-metrics.socket",
        "/usr/lib/systemd/system/gocache-warden-relay.socket",
        "/usr/lib/systemd/system/gocache-warden-relay@.service",
    ];
    let o = ok(
        Command::new("systemd-analyze").arg("verify").args(units),
        "systemd-analyze verify (system units)",
    );
    assert_eq!(
        text(&o.stderr).trim(),
        "",
        "systemd-analyze verify: not clean"
    );
    let runtime = support::tempdir();
    let o = ok(
        Command::new("systemd-analyze")
            .args([
                "--user",
                "verify",
                "/usr/lib/systemd/user/gocache-warden.service",
            ])
            .env("XDG_RUNTIME_DIR", runtime.path()),
        "systemd-analyze --user verify",
    );
    assert_eq!(
        text(&o.stderr).trim(),
        "",
        "systemd-analyze --user verify: not clean"
    );

    let bin = Path::new("/usr/bin/gocache-warden");
    let o = ok(
        Command::new(bin).arg("--version"),
        "gocache-warden --version",
    );
    assert_eq!(
        text(&o.stdout).trim(),
        format!("gocache-warden {}", env!("CARGO_PKG_VERSION"))
    );
    // A fresh HOME: the report is about caches that do not exist yet, not this machine's.
    let home = support::tempdir();
    let o = Command::new(bin)
        .arg("check")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .output()
        .expect("run /usr/bin/gocache-warden check");
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "gocache-warden check exited {:?} (0 or 1 expected):\n{}{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    // The vendor README and the default's documentation copy are not policy sources.
    let o = ok(
        Command::new(bin).args(["policy", "cat"]),
        "gocache-warden policy cat",
    );
    let headers: Vec<_> = text(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("# <") || l.starts_with("# /"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        headers,
        ["# <embedded>/policy/default.toml"],
        "policy sources"
    );
    ok(
        Command::new(bin).args([
            "policy",
            "validate",
            "/usr/lib/gocache-warden/examples/single-user.toml",
        ]),
        "policy validate of an installed example",
    );

    // The page by file and by name (as Documentation=man:gocache-warden(1) resolves it).
    for args in [
        vec!["-l", "/usr/share/man/man1/gocache-warden.1.gz"],
        vec!["gocache-warden"],
    ] {
        let o = ok(
            Command::new("man")
                .args(["-P", "cat", "--warnings"])
                .args(&args)
                .env("MANWIDTH", "100")
                .env("LC_ALL", "C.UTF-8"),
            "man gocache-warden",
        );
        let page = text(&o.stdout);
        for sub in ["CHECK", "ENFORCE", "RUN", "UNITS", "POLICY"] {
            assert!(
                page.contains(&format!("GOCACHE-WARDEN {sub}")),
                "man {args:?} lacks the {sub} section:\n{page}"
            );
        }
        for opt in [
            "--dry-run",
            "--detailed-exitcode",
            "--json",
            "--fix",
            "--policy",
        ] {
            assert!(page.contains(opt), "man {args:?} lacks {opt}");
        }
        assert_eq!(
            text(&o.stderr).trim(),
            "",
            "groff warnings for man {args:?}"
        );
    }

    let o = ok(
        Command::new("bash").args([
            "-c",
            "source /usr/share/bash-completion/completions/gocache-warden && complete -p gocache-warden",
        ]),
        "bash completion loads",
    );
    assert!(text(&o.stdout).contains("gocache-warden"));

    // The rule tests name their rules as ../gocache-warden.rules.yml: the layout must hold.
    let tests: Vec<PathBuf> = std::fs::read_dir("/usr/share/gocache-warden/monitoring/tests")
        .expect("installed rule tests")
        .map(|e| e.expect("dir entry").path())
        .collect();
    ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .args(&tests),
        "promtool test rules (installed; apt-get install prometheus)",
    );
}

#[test]
fn deb_builds_installs_verifies_and_purges_cleanly() {
    support::require_root();
    let t0 = Instant::now();
    let _lock = dpkg_lock();
    purge_if_present();
    ensure_cargo_deb();

    let deb = build_deb(&target_dir());
    inspect(&deb);

    let _guard = PurgeGuard;
    let o = ok(Command::new("dpkg").arg("-i").arg(&deb), "dpkg -i");
    assert!(
        !text(&o.stderr).contains("error"),
        "dpkg -i reported errors:\n{}",
        text(&o.stderr)
    );
    assert_eq!(dpkg_status(), "install ok installed");
    check_installed();

    ok(
        Command::new("dpkg").args(["--purge", PACKAGE]),
        "dpkg --purge",
    );
    let s = dpkg_status();
    assert!(
        s.is_empty() || s.ends_with("not-installed"),
        "dpkg status after purge: {s}"
    );
    let left: Vec<_> = LEFTOVERS
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    // Enablement symlinks and deb-systemd-helper's state (enabled and masked) are gone too.
    let o = Command::new("find")
        .args([
            "/etc/systemd",
            "/var/lib/systemd/deb-systemd-helper-enabled",
            "/var/lib/systemd/deb-systemd-helper-masked",
            "-name",
            "*gocache-warden*",
        ])
        .output()
        .expect("find");
    assert!(
        o.stdout.is_empty(),
        "systemd state left: {}",
        text(&o.stdout)
    );
    let o = Command::new("grep")
        .args([
            "-rl",
            "gocache-warden",
            "/var/lib/systemd/deb-systemd-helper-enabled",
        ])
        .output()
        .expect("grep");
    assert!(
        o.stdout.is_empty(),
        "deb-systemd-helper state left: {}",
        text(&o.stdout)
    );

    eprintln!("[{:6.1}s] total", t0.elapsed().as_secs_f64());
}

/// Nested subcommands (`policy validate`, `policy cat`) are documented in the page like the
/// top-level ones. Checked on the binary under test, without packaging or root, so a gap in
/// the page shows apart from the package test.
#[test]
fn man_page_documents_nested_subcommands() {
    let dir = support::tempdir();
    ok(
        Command::new(support::bin())
            .arg("generate-assets")
            .arg(dir.path()),
        "gocache-warden generate-assets",
    );
    let o = ok(
        Command::new("man")
            .args(["-P", "cat", "--warnings", "-l"])
            .arg(dir.path().join("gocache-warden.1"))
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8"),
        "man -l",
    );
    let page = text(&o.stdout);
    // The packaged copy is the same page, compressed as `gzip -9n` would: no file name and no
    // timestamp in the header, so two builds give the same bytes.
    let gz = std::fs::read(dir.path().join("gocache-warden.1.gz")).expect("read the .gz");
    assert_eq!(gz[..3], [0x1f, 0x8b, 8], "a gzip stream");
    assert_eq!(gz[3] & 0x08, 0, "no FNAME in the gzip header");
    assert_eq!(gz[4..8], [0, 0, 0, 0], "mtime 0 in the gzip header");
    let unzipped = ok(
        Command::new("gzip")
            .arg("-dc")
            .arg(dir.path().join("gocache-warden.1.gz")),
        "gzip -dc",
    );
    assert_eq!(
        unzipped.stdout,
        std::fs::read(dir.path().join("gocache-warden.1")).expect("read the page"),
        "the .gz holds the page"
    );
    for needle in [
        "GOCACHE-WARDEN POLICY VALIDATE",
        "GOCACHE-WARDEN POLICY CAT",
        "--effective",
    ] {
        assert!(
            page.contains(needle),
            "the man page lacks {needle:?}:\n{page}"
        );
    }
    // Every subcommand is a section of this one page: no references to pages that do not
    // exist, such as gocache-warden-check(1).
    assert!(
        !page.contains("gocache-warden-check(1)") && !page.contains("policy-validate(1)"),
        "the man page refers to man pages that are not installed:\n{page}"
    );
}
