//! Integrity of a build cache (`check --verify`, `enforce --verify`): every output must have
//! the SHA-256 its name states (`<hex>-d`, and the one file inside an executable's `-d/`
//! directory, whose content hash is the same OutputID), and, when the policy names
//! `trusted_writers`, every action record and output must be owned by one of them.
//!
//! Go itself never re-hashes an output before using it, so this is what catches a poisoned
//! shared cache. The walk goes through `safefs` handles (no symlink followed, no mount
//! crossed, hardlinked files never read); outputs are read with `O_NOATIME` where
//! permitted, so verifying does not look like use. What it finds is reported, or — with
//! `untrusted = "evict" | "quarantine"` and `enforce --verify` — removed or moved into
//! `ROOT/gocache-warden-quarantine/`, inside the cache, by `renameat` between directory
//! fds after re-checking the entry's identity. Besides `apply`, this is the only code that
//! removes anything from a cache (see README, "Architecture"). The agent runs the same
//! checks in the background, paced and resumable ([`background`]).

pub mod background;
mod incomplete;
mod quarantine;

pub use quarantine::Keep;
use quarantine::{open_quarantine, quarantine};

use crate::cacheprog::store::{Hash, Trust, hash_reader};
use crate::policy::Untrusted;
use crate::safefs::{Dir, Kind, Stat, name_os};
use crate::scan::layout;
use serde::Serialize;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The quarantine directory inside a cache root.
pub const QUARANTINE: &str = match std::str::from_utf8(crate::scan::layout::QUARANTINE_DIR) {
    Ok(s) => s,
    Err(_) => panic!("the quarantine's name is ASCII"),
};
/// Examples kept per kind of problem.
const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// An output whose content does not hash to its name although it has the size an
    /// action record gives it: `go` would use it as it is.
    Tampered,
    /// An output `go` misses on: zero-length (what its failed writes truncate to), or not
    /// the size any action record naming it gives (a write cut short). Go's own leftover,
    /// not someone's code.
    Incomplete,
    /// An entry owned by a UID outside the trusted writers.
    Untrusted,
    /// An output that cannot be verified (hardlinked, unreadable).
    Unverifiable,
}

/// What a verification pass found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verified {
    pub outputs: u64,
    pub bytes_hashed: u64,
    pub tampered: u64,
    pub untrusted: u64,
    pub unverifiable: u64,
    /// Outputs `go` misses on (see [`Problem::Incomplete`]); evicted whenever `untrusted`
    /// says to act at all, never quarantined.
    pub incomplete: u64,
    /// Entries removed (`evict`) or moved into the quarantine (`quarantine`).
    pub evicted: u64,
    pub quarantined: u64,
    /// Actions that failed (the entry stays; reported again next pass).
    pub failed: u64,
    pub examples: Vec<(Problem, PathBuf)>,
    pub seconds: f64,
}

/// What to do with a problem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Report,
    Evict,
    Quarantine,
}

impl Act {
    pub fn from_policy(u: Untrusted, apply: bool) -> Act {
        match (apply, u) {
            (false, _) | (_, Untrusted::Report) => Act::Report,
            (true, Untrusted::Evict) => Act::Evict,
            (true, Untrusted::Quarantine) => Act::Quarantine,
        }
    }
}

struct Shared<'a> {
    root: &'a Dir,
    quarantine: Option<Dir>,
    act: Act,
    outputs: AtomicU64,
    bytes: AtomicU64,
    tampered: AtomicU64,
    untrusted: AtomicU64,
    unverifiable: AtomicU64,
    incomplete: AtomicU64,
    evicted: AtomicU64,
    quarantined: AtomicU64,
    failed: AtomicU64,
    examples: Mutex<Vec<(Problem, PathBuf)>>,
    /// Outputs whose hash is wrong, to be told apart ([`incomplete`]) once the pass has
    /// seen them all: at most [`incomplete::MAX_SUSPECTS`]; more wait for the next pass.
    suspects: Mutex<Vec<incomplete::Suspect>>,
    /// The agent's background pass: reads paced to a byte rate, entries in name order so
    /// a pass can resume, stopping between entries once its budget is spent.
    pace: Option<&'a background::Pacer>,
}

impl<'a> Shared<'a> {
    fn new(
        root: &'a Dir,
        quarantine: Option<Dir>,
        act: Act,
        pace: Option<&'a background::Pacer>,
    ) -> Self {
        Shared {
            root,
            quarantine,
            act,
            outputs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tampered: AtomicU64::new(0),
            untrusted: AtomicU64::new(0),
            unverifiable: AtomicU64::new(0),
            incomplete: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
            suspects: Mutex::new(Vec::new()),
            pace,
        }
    }

    fn into_verified(self, t0: std::time::Instant) -> Verified {
        let examples = self
            .examples
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        Verified {
            outputs: self.outputs.into_inner(),
            bytes_hashed: self.bytes.into_inner(),
            tampered: self.tampered.into_inner(),
            untrusted: self.untrusted.into_inner(),
            unverifiable: self.unverifiable.into_inner(),
            incomplete: self.incomplete.into_inner(),
            evicted: self.evicted.into_inner(),
            quarantined: self.quarantined.into_inner(),
            failed: self.failed.into_inner(),
            examples,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

/// Verifies the cache at `root`. `trust`: the policy's trusted writers (`None`: no owner
/// check). With `act` other than `Report`, problem entries are evicted or quarantined;
/// the quarantine is first trimmed to `keep`.
pub fn verify(
    root: &Path,
    trust: Option<&Trust>,
    act: Act,
    keep: Keep,
) -> anyhow::Result<Verified> {
    use anyhow::Context;
    let t0 = std::time::Instant::now();
    let dir = Dir::open_root(root).with_context(|| format!("cannot open {root:?}"))?;
    let quarantine = open_quarantine(&dir, root, act, keep)?;
    let shards: Vec<CString> = dir
        .list()
        .with_context(|| format!("cannot list {root:?}"))?
        .into_iter()
        .filter(|n| layout::is_shard(n.to_bytes()))
        .collect();
    let s = Shared::new(&dir, quarantine, act, None);
    let next = AtomicUsize::new(0);
    // Hashing is CPU-bound on a warm cache and I/O-bound on a cold one: one thread per
    // core keeps both busy without flooding a shared build machine.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            let trust = trust.cloned();
            let (s, shards, next) = (&s, &shards, &next);
            sc.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = shards.get(i) else { break };
                    if shard(s, name, trust.as_ref(), None).is_err() {
                        s.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    incomplete::resolve(&s, trust);
    Ok(s.into_verified(t0))
}

fn decode(name: &[u8]) -> Option<Hash> {
    let mut h = [0u8; 32];
    for (i, pair) in name.get(..64)?.chunks(2).enumerate() {
        h[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(h)
}

/// Verifies the entries of one shard whose names sort after `after` (all with `None`).
/// `None` when the shard is done; when a paced pass ran out of budget or was asked to stop,
/// `Some(where to resume)`: after that entry, or (`Some(None)`) from the shard's start.
fn shard(
    s: &Shared<'_>,
    name: &CStr,
    trust: Option<&Trust>,
    after: Option<&CStr>,
) -> std::io::Result<Option<Option<CString>>> {
    let st = match s.root.stat(name) {
        Ok(st) => st,
        // A shard `go` has not made yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if st.kind() != Kind::Dir {
        return Ok(None);
    }
    let d = s.root.open_dir(name, &st)?;
    let mut done: Option<CString> = after.map(CStr::to_owned);
    loop {
        // Name order, so that a pass stopped here resumes after the last entry it handled,
        // in batches, so that memory does not grow with the shard.
        let batch = next_names(&d, done.as_deref(), BATCH)?;
        if batch.is_empty() {
            return Ok(None);
        }
        for entry in batch {
            if let Some(stop) = entry_in_shard(s, &d, name, entry, trust, &mut done) {
                return Ok(stop);
            }
        }
    }
}

/// At most this many names of a shard are held at once ([`next_names`]).
pub const BATCH: usize = 4096;

/// The `max` smallest names of `d` after `after`, in order: one streamed read of the
/// directory per batch, holding `max` names (a shard of a million names costs rounds, not
/// memory).
fn next_names(d: &Dir, after: Option<&CStr>, max: usize) -> std::io::Result<Vec<CString>> {
    let mut heap = std::collections::BinaryHeap::new();
    d.for_each_name(|n| {
        if after.is_some_and(|a| n <= a) {
            return;
        }
        if heap.len() < max {
            heap.push(n.to_owned());
        } else if heap.peek().is_some_and(|top: &CString| n < top.as_c_str()) {
            heap.pop();
            heap.push(n.to_owned());
        }
    })?;
    Ok(heap.into_sorted_vec())
}

/// One entry of a shard; `Some(where to resume)` when a paced pass must stop before it.
fn entry_in_shard(
    s: &Shared<'_>,
    d: &Dir,
    name: &CStr,
    entry: CString,
    trust: Option<&Trust>,
    done: &mut Option<CString>,
) -> Option<Option<Option<CString>>> {
    {
        if let Some(p) = s.pace
            && p.spent()
        {
            return Some(Some(done.clone()));
        }
        crate::progress::tick();
        *done = Some(entry.clone());
        let suffix = layout::entry_suffix(entry.to_bytes())?;
        let est = d.stat(&entry).ok()?;
        let rel = PathBuf::from(name_os(name)).join(name_os(&entry));
        match judge(s, d, &entry, &est, suffix, trust) {
            Judged::Fine => {}
            Judged::Problem(p) => note(s, p, rel, d, &entry, &est, name),
            Judged::Writable(st) => {
                let who = writers(d, &entry, &st);
                let rel = PathBuf::from(format!("{} (writable by {who})", rel.display()));
                note(s, Problem::Untrusted, rel, d, &entry, &est, name)
            }
            Judged::Mismatch { size, changed } => s.suspect(incomplete::Suspect {
                shard: name.to_owned(),
                entry: entry.clone(),
                est,
                size,
                changed,
            }),
        }
    }
    None
}

/// What one entry is, as far as its own bytes tell.
enum Judged {
    Fine,
    Problem(Problem),
    /// Owned by a trusted writer, but someone else can write it (this inode: the entry, or
    /// an executable's file): untrusted all the same.
    Writable(Stat),
    /// An output (file, or an executable's file) whose hash is not its name: tampered or
    /// incomplete, which only the action records naming it can tell ([`incomplete`]).
    /// `size`: its length; `changed`: the later of its mtime and ctime.
    Mismatch {
        size: u64,
        changed: i64,
    },
}

/// Judges entry `entry` of shard dir `d` (`est`: as listed, `suffix`: `a` or `d`).
fn judge(
    s: &Shared<'_>,
    d: &Dir,
    entry: &CStr,
    est: &Stat,
    suffix: u8,
    trust: Option<&Trust>,
) -> Judged {
    let untrusted = |uid: u32| trust.is_some_and(|t| !t.allows(uid));
    match (suffix, est.kind()) {
        (b'a' | b'd', Kind::File) if untrusted(est.uid) => Judged::Problem(Problem::Untrusted),
        (b'a' | b'd', Kind::File) if writable(trust, est) => Judged::Writable(*est),
        (b'a', Kind::File) => Judged::Fine,
        (b'd', Kind::File) => check_output(s, d, entry, est, entry.to_bytes()),
        (b'd', Kind::Dir) => exec_problem(s, d, entry, est, trust),
        // A symlink, FIFO or device under an entry's name is never Go's doing, and `go`
        // would follow a symlink: it could point a build at any file.
        _ => Judged::Problem(Problem::Tampered),
    }
}

/// Someone besides the owner can write this inode, in a cache whose policy names trusted
/// writers: trust is who can write, not only who owns ([`crate::acl::others_can_write`]).
fn writable(trust: Option<&Trust>, st: &Stat) -> bool {
    trust.is_some_and(|t| !t.is_open()) && crate::acl::others_can_write(st.mode)
}

/// Who besides the owner can write entry `entry` of `d` (for an executable, its
/// directory's entry stands for it), as names where they resolve.
fn writers(d: &Dir, entry: &CStr, st: &Stat) -> String {
    let mut buf = Vec::new();
    let acl = match d.get_xattr(entry, crate::acl::XATTR_ACCESS, &mut buf) {
        Ok(Some(n)) => buf.get(..n).and_then(crate::acl::Acl::decode),
        _ => None,
    };
    let who = crate::acl::other_writers(st.mode, st.gid, acl.as_ref());
    if who.is_empty() {
        return format!("mode {:o}", st.perm_bits());
    }
    who.iter()
        .map(|w| name_writer(w))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `user 1001` → `user alice (1001)`, `group 1002` → `group builders (1002)`.
fn name_writer(w: &str) -> String {
    let name = |kind: &str, id: u32| match kind {
        "user" => nix::unistd::User::from_uid(id.into())
            .ok()
            .flatten()
            .map(|u| u.name),
        _ => nix::unistd::Group::from_gid(id.into())
            .ok()
            .flatten()
            .map(|g| g.name),
    };
    match w.split_once(' ') {
        Some((kind, id)) => match id.parse::<u32>().ok().and_then(|n| name(kind, n)) {
            Some(n) => format!("{kind} {n} ({id})"),
            None => w.to_string(),
        },
        None => w.to_string(),
    }
}

/// An executable's `-d/` directory: owner of the directory and its file, and the file's
/// hash against the directory's name.
fn exec_problem(
    s: &Shared<'_>,
    d: &Dir,
    entry: &CStr,
    est: &Stat,
    trust: Option<&Trust>,
) -> Judged {
    let untrusted = |uid: u32| trust.is_some_and(|t| !t.allows(uid));
    if untrusted(est.uid) {
        return Judged::Problem(Problem::Untrusted);
    }
    if writable(trust, est) {
        return Judged::Writable(*est);
    }
    let Ok(x) = d.open_dir(entry, est) else {
        return Judged::Problem(Problem::Unverifiable);
    };
    let Ok(names) = x.list() else {
        return Judged::Problem(Problem::Unverifiable);
    };
    for n in &names {
        match x.stat(n) {
            Ok(ist) if untrusted(ist.uid) => return Judged::Problem(Problem::Untrusted),
            Ok(_) => {}
            Err(_) => return Judged::Problem(Problem::Unverifiable),
        }
    }
    // Go writes exactly one file; anything else is not Go's doing.
    let [inner] = names.as_slice() else {
        return Judged::Problem(Problem::Tampered);
    };
    let Ok(ist) = x.stat(inner) else {
        return Judged::Problem(Problem::Unverifiable);
    };
    if ist.kind() != Kind::File {
        return Judged::Problem(Problem::Tampered);
    }
    if writable(trust, &ist) {
        return Judged::Writable(ist);
    }
    // `go` runs a cached executable without comparing its size with the record: a wrong
    // one is tampered, once it has been still long enough not to be mid-write.
    match check_output(s, &x, inner, &ist, entry.to_bytes()) {
        Judged::Mismatch { changed, .. }
            if crate::check::now() - changed >= incomplete::SETTLE.as_secs() as i64 =>
        {
            Judged::Problem(Problem::Tampered)
        }
        j => j,
    }
}

/// Hashes one output file and compares with the id in `id_name` (`<hex>-d`).
fn check_output(s: &Shared<'_>, d: &Dir, name: &CStr, st: &Stat, id_name: &[u8]) -> Judged {
    let Some(want) = decode(id_name) else {
        return Judged::Fine;
    };
    let Ok(mut f) = d.open_read(name, st) else {
        return Judged::Problem(Problem::Unverifiable);
    };
    let hashed = match s.pace {
        Some(p) => hash_reader(&mut p.reader(&mut f)),
        None => hash_reader(&mut f),
    };
    let Ok((got, n)) = hashed else {
        // A pass stopped mid-file has not verified it: nothing to say about it.
        if s.pace.is_some_and(|p| p.stopped()) {
            return Judged::Fine;
        }
        return Judged::Problem(Problem::Unverifiable);
    };
    s.outputs.fetch_add(1, Ordering::Relaxed);
    s.bytes.fetch_add(n, Ordering::Relaxed);
    if got == want {
        return Judged::Fine;
    }
    Judged::Mismatch {
        size: n,
        changed: st.mtime.max(st.ctime),
    }
}

fn note(s: &Shared<'_>, p: Problem, rel: PathBuf, d: &Dir, entry: &CStr, est: &Stat, shard: &CStr) {
    match p {
        Problem::Tampered => &s.tampered,
        Problem::Untrusted => &s.untrusted,
        Problem::Unverifiable => &s.unverifiable,
        Problem::Incomplete => &s.incomplete,
    }
    .fetch_add(1, Ordering::Relaxed);
    {
        let mut ex = s.examples.lock().unwrap_or_else(|e| e.into_inner());
        if ex.iter().filter(|(q, _)| *q == p).count() < EXAMPLES {
            ex.push((p, rel));
        }
    }
    let done = match s.act {
        Act::Report => return,
        // Go's own leftover: nothing to keep as evidence.
        Act::Evict | Act::Quarantine if p == Problem::Incomplete => {
            evict(d, entry, est).map(|_| &s.evicted)
        }
        Act::Evict => evict(d, entry, est).map(|_| &s.evicted),
        Act::Quarantine => match &s.quarantine {
            Some(q) => quarantine(d, entry, est, q, shard).map(|_| &s.quarantined),
            None => Err(std::io::Error::other("no quarantine")),
        },
    };
    match done {
        Ok(c) => {
            c.fetch_add(1, Ordering::Relaxed);
            let rel = Path::new(name_os(shard)).join(name_os(entry));
            tracing::info!(
                gocache_warden_action = crate::logging::action::INTEGRITY,
                reason = ?p,
                "{} {p:?} entry {}",
                if s.act == Act::Evict { "evicted" } else { "quarantined" },
                rel.display()
            );
        }
        Err(e) => {
            s.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                gocache_warden_action = crate::logging::action::INTEGRITY_FAILED,
                error = %e,
                "cannot evict or quarantine {p:?} entry {}",
                Path::new(name_os(shard)).join(name_os(entry)).display()
            );
        }
    }
}

/// Removes an entry (an executable directory with its contents), re-checking identity.
fn evict(d: &Dir, entry: &CStr, est: &Stat) -> std::io::Result<()> {
    if est.kind() == Kind::Dir {
        let x = d.open_dir(entry, est)?;
        for n in x.list()? {
            let st = x.stat(&n)?;
            if st.kind() == Kind::Dir {
                return Err(std::io::Error::other("nested directory in an output"));
            }
            x.remove(&n, &st)?;
        }
    }
    d.remove(entry, est)
}

/// The findings `check --verify` reports for one cache.
pub fn findings(v: &Verified, policy: &crate::policy::CachePolicy) -> Vec<crate::report::Finding> {
    use crate::report::{Finding, Severity};
    let act = match policy.untrusted {
        Untrusted::Report => None,
        Untrusted::Evict => Some("evict them"),
        Untrusted::Quarantine => Some("move them into gocache-warden-quarantine/ inside the cache"),
    };
    let fix = |what: &str| match act {
        Some(a) => format!("{a} (with --verify, as the policy's `untrusted` says)"),
        None => format!(
            "{what}; set untrusted = \"evict\" or \"quarantine\" in the policy and run enforce --verify"
        ),
    };
    let examples = |p: Problem| {
        v.examples
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, r)| r.display().to_string())
            .collect::<Vec<_>>()
    };
    let mut out = vec![Finding {
        kind: "verified".into(),
        severity: Severity::Info,
        count: v.outputs,
        bytes: Some(v.bytes_hashed),
        message: format!(
            "{} outputs ({} bytes) hashed in {:.2} s ({:.0} MB/s)",
            v.outputs,
            v.bytes_hashed,
            v.seconds,
            v.bytes_hashed as f64 / v.seconds.max(1e-9) / 1e6
        ),
        fix: "nothing to do".into(),
        auto_fix: false,
        examples: vec![],
    }];
    if v.tampered > 0 {
        out.push(Finding {
            kind: "tampered-output".into(),
            severity: Severity::Error,
            count: v.tampered,
            bytes: None,
            message: format!(
                "{} outputs do not have the SHA-256 their names state: go would use them as they are (it does not re-hash), so builds reading this cache may contain someone else's code",
                v.tampered
            ),
            fix: fix("find who could write the cache (check its ACL) and remove them"),
            auto_fix: act.is_some(),
            examples: examples(Problem::Tampered),
        });
    }
    if v.untrusted > 0 {
        let writers = policy
            .trusted_writers
            .iter()
            .map(|w| w.spelled())
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Finding {
            kind: "untrusted-entry".into(),
            severity: Severity::Error,
            count: v.untrusted,
            bytes: None,
            message: format!(
                "{} action records or outputs are owned by users outside trusted_writers ({writers}), or writable by someone besides their owner (group or others, by mode or ACL: the examples say who): an action record can point a build at anyone's output, and a writable output can change after it was verified",
                v.untrusted
            ),
            fix: fix("remove them and take the writers' access away (chmod go-w, setfacl -x)"),
            auto_fix: act.is_some(),
            examples: examples(Problem::Untrusted),
        });
    }
    if v.incomplete > 0 {
        out.push(Finding {
            kind: "incomplete-output".into(),
            severity: Severity::Warning,
            count: v.incomplete,
            bytes: None,
            message: format!(
                "{} outputs are zero-length or not the size any action record gives them: writes `go` did not finish (a full disk, a killed build); go misses on them and rebuilds, so no build uses them",
                v.incomplete
            ),
            fix: match act {
                Some(_) => "evict them (with --verify, whenever the policy's `untrusted` says to act)".into(),
                None => "nothing urgent: go rebuilds them; `enforce --verify` with untrusted = \"evict\" or \"quarantine\" removes them".into(),
            },
            auto_fix: act.is_some(),
            examples: examples(Problem::Incomplete),
        });
    }
    if v.unverifiable > 0 {
        out.push(Finding {
            kind: "unverifiable-output".into(),
            severity: Severity::Warning,
            count: v.unverifiable,
            bytes: None,
            message: format!(
                "{} outputs could not be verified (hardlinked, unreadable or odd): go does not write such entries",
                v.unverifiable
            ),
            fix: fix("look at them"),
            auto_fix: act.is_some(),
            examples: examples(Problem::Unverifiable),
        });
    }
    out
}

/// The trusted writers of a cache as the verifier checks them (`None`: not declared).
pub fn trust_of(policy: &crate::policy::CachePolicy) -> anyhow::Result<Option<Trust>> {
    if policy.trusted_writers.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = policy.trusted_writers.iter().map(|w| w.spelled()).collect();
    Ok(Some(Trust::parse(&names)?))
}

/// Verifies every existing build cache of a `check` report; with `apply`, acts as each
/// cache's `untrusted` setting says. Adds the findings to the report and recomputes its
/// verdict. Returns what each cache's pass found, by path.
pub fn verify_report(
    report: &mut crate::report::Report,
    policy: &crate::policy::Policy,
    apply: bool,
) -> Vec<(PathBuf, anyhow::Result<Verified>)> {
    let mut out = Vec::new();
    for c in &mut report.caches {
        let Some(p) = policy.caches.iter().find(|p| p.name == c.name) else {
            continue;
        };
        let (Some(path), true, crate::policy::CacheKind::Build) = (&c.path, c.exists, p.kind)
        else {
            continue;
        };
        let res = trust_of(p).and_then(|t| {
            let act = Act::from_policy(p.untrusted, apply);
            verify(path, t.as_ref(), act, Keep::of(p))
        });
        match &res {
            Ok(v) => c.findings.extend(findings(v, p)),
            Err(e) => c.inspect_error = Some(format!("verify: {e:#}")),
        }
        out.push((path.clone(), res));
    }
    crate::report::recompute(report);
    out
}
