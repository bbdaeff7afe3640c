//! A disk that never fills (issue #13, part 2): real small filesystems (tmpfs with `size=`
//! and `nr_inodes=`, a loop-mounted ext4 made with few inodes) in a private mount namespace,
//! holding two aged synthetic Go caches of different owners, filled to 0 bytes or 0 inodes
//! free by a process that is not Go (`dd`, many empty files). `enforce` and the daemon evict
//! least recently used entries across both caches back to the low-water mark (1.25 ×
//! `min_free`), never entries younger than `min_age`, while the agent's own writes (the
//! metrics textfile, on a filesystem full from the start) fail with ENOSPC.

mod support;

use support::{bin, ensure_user, in_mount_ns, mkcache_script, require_root, tempdir};

/// What a scenario printed: `KEY=VALUE` lines.
struct Result {
    vars: std::collections::BTreeMap<String, String>,
    out: String,
}

impl Result {
    fn num(&self, k: &str) -> f64 {
        self.vars
            .get(k)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in the output:\n{}", self.out))
    }
}

enum Fs {
    Tmpfs,
    Ext4,
}

enum Fill {
    Bytes,
    Inodes,
}

enum Agent {
    Enforce,
    Daemon,
}

/// Mounts the filesystem at `$M`, makes caches `a` (root's, with the headroom settings) and
/// `b` (another user's, without), fills the rest, recovers with `agent`, and prints figures.
fn scenario(fs: Fs, fill: Fill, agent: Agent, headroom: &str) -> Result {
    require_root();
    ensure_user("gwt-hr-user", &[]);
    let d = tempdir();
    let m = d.path().join("m");
    std::fs::create_dir(&m).expect("mkdir");
    let mount = match fs {
        Fs::Tmpfs => "mount -t tmpfs -o size=64m,nr_inodes=8000,mode=755 gcw-hr \"$M\"".to_string(),
        Fs::Ext4 => format!(
            "truncate -s 80M {img}; mkfs.ext4 -q -F -N 8000 {img}; mount -o loop {img} \"$M\"",
            img = d.path().join("fs.img").display()
        ),
    };
    let policy = d.path().join("p.toml");
    // The agent's own write goes to a filesystem that is full from the start: every
    // textfile write fails with ENOSPC, and eviction must go on regardless.
    let textfile = d.path().join("full/gcw.prom");
    std::fs::write(
        &policy,
        format!(
            "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n\
             [cache.a]\npath = \"{m}/a\"\nmin_age = \"1h\"\n{headroom}\n\
             [cache.b]\npath = \"{m}/b\"\nmin_age = \"1h\"\n\
             [agent]\ninterval = \"1h\"\nwatch = false\n\
             [metrics]\ntextfile = \"{tf}\"\n",
            m = m.display(),
            tf = textfile.display()
        ),
    )
    .expect("policy");
    let fill_cmd = match fill {
        Fill::Bytes => "dd if=/dev/zero of=\"$M/fill\" bs=64k 2>/dev/null || true",
        Fill::Inodes => {
            "mkdir \"$M/many\"; python3 -c 'import os,sys\ni=0\ntry:\n    while True:\n        open(os.path.join(sys.argv[1],str(i)),\"w\").close(); i+=1\nexcept OSError: pass' \"$M/many\""
        }
    };
    let run_agent = match agent {
        Agent::Enforce => "T0=$(date +%s.%N); rc=0; \"$BIN\" --policy \"$P\" enforce --json > \"$D/enforce.json\" 2>\"$D/enforce.err\" || rc=$?; \
             T1=$(date +%s.%N); echo AGENT_EXIT=$rc"
            .to_string(),
        Agent::Daemon => (
            "T0=$(date +%s.%N); i=0; while [ $i -lt 300 ]; do \
               A=$(stat -f -c '%a*%S' \"$M\"); I=$(stat -f -c %d \"$M\"); \
               if [ $(( $A )) -ge \"$WANT_B\" ] && [ \"$I\" -ge \"$WANT_I\" ]; then break; fi; \
               sleep 0.1; i=$((i+1)); done; T1=$(date +%s.%N); \
             kill $AGENT || echo AGENT_GONE=1; rc=0; wait $AGENT || rc=$?; echo AGENT_EXIT=$rc")
            .to_string(),
    };
    let start_daemon = match agent {
        Agent::Enforce => String::new(),
        Agent::Daemon => "STATE_DIRECTORY=\"$D/state\" \"$BIN\" --policy \"$P\" run 2>\"$D/agent.log\" & AGENT=$!; \
             i=0; until grep -q 'last sweep' \"$D/agent.log\" || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done"
            .to_string(),
    };
    let script = format!(
        r#"
M={m}; D={d}; P={p}; BIN={bin}
{mount}
mkdir "$D/full"; mount -t tmpfs -o size=64k gcw-full "$D/full"
dd if=/dev/zero of="$D/full/fill" bs=4k 2>/dev/null || true
python3 {mk} "$M/a" --entries 1500 --seed 1 >/dev/null
python3 {mk} "$M/b" --entries 1500 --seed 2 >/dev/null
chown -R gwt-hr-user: "$M/b"
FRESH_BEFORE=$(find "$M/a" "$M/b" -type f -newermt '-55 minutes' | wc -l)
{start_daemon}
{fill}
sync
echo "--- before"; df -B1 "$M"; df -i "$M"
echo AVAIL_BEFORE=$(( $(stat -f -c '%a*%S' "$M") ))
echo IFREE_BEFORE=$(stat -f -c %d "$M")
echo SIZE=$(( $(stat -f -c '%b*%S' "$M") ))
echo INODES=$(stat -f -c %c "$M")
SIZE=$(( $(stat -f -c '%b*%S' "$M") )); INODES=$(stat -f -c %c "$M")
WANT_B=$(( WB * SIZE / 8 )); WANT_I=$(( WI * ((INODES + 9) / 10) * 125 / 100 ))
{run_agent}
sync
echo "--- after"; df -B1 "$M"; df -i "$M"
echo AVAIL_AFTER=$(( $(stat -f -c '%a*%S' "$M") ))
echo IFREE_AFTER=$(stat -f -c %d "$M")
echo SECONDS_TO_RECOVER=$(awk "BEGIN{{print $T1 - $T0}}")
echo FRESH_BEFORE=$FRESH_BEFORE
echo FRESH_AFTER=$(find "$M/a" "$M/b" -type f -newermt '-55 minutes' | wc -l)
echo FILES_A=$(find "$M/a" -type f | wc -l)
echo FILES_B=$(find "$M/b" -type f | wc -l)
"#,
        m = m.display(),
        d = d.path().display(),
        p = policy.display(),
        bin = bin().display(),
        mk = mkcache_script().display(),
        fill = fill_cmd,
    );
    // The low-water marks the daemon loop waits for: 1.25 × 10% of the filesystem's size
    // (f_blocks × f_frsize, as the agent computes it) or inode count (rounded up).
    let (b, i) = (
        headroom.contains("min_free ="),
        headroom.contains("min_free_inodes"),
    );
    let script = format!("WB={}; WI={}\n{script}", u8::from(b), u8::from(i));
    let o = in_mount_ns(&script);
    let out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "scenario failed:\n{out}");
    let mut vars = std::collections::BTreeMap::new();
    for l in out.lines() {
        if let Some((k, v)) = l.split_once('=')
            && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    let enforce = std::fs::read_to_string(d.path().join("enforce.json")).unwrap_or_default();
    let enforce_err = std::fs::read_to_string(d.path().join("enforce.err")).unwrap_or_default();
    let log = std::fs::read_to_string(d.path().join("agent.log")).unwrap_or_default();
    eprintln!("{out}");
    let r = Result {
        vars,
        out: format!(
            "{out}\nenforce.json:\n{enforce}\nenforce's stderr:\n{enforce_err}\nagent.log:\n{log}"
        ),
    };
    // enforce recovers the filesystem and says so with 0; the daemon runs until the SIGTERM
    // above and then exits 0 (one that died before it is a failure too).
    assert!(
        !r.vars.contains_key("AGENT_GONE"),
        "the agent was gone before SIGTERM:\n{}",
        r.out
    );
    assert_eq!(
        r.num("AGENT_EXIT"),
        0.0,
        "the agent's exit status:\n{}",
        r.out
    );
    r
}

fn assert_recovered(r: &Result, bytes: bool) {
    let out = &r.out;
    if bytes {
        assert!(
            r.num("AVAIL_BEFORE") < r.num("SIZE") * 0.02,
            "not full before:\n{out}"
        );
        let low = r.num("SIZE") * 0.10 * 1.25;
        assert!(
            r.num("AVAIL_AFTER") >= low * 0.97,
            "not back to the low-water mark {low}:\n{out}"
        );
    } else {
        assert_eq!(r.num("IFREE_BEFORE"), 0.0, "inodes not exhausted:\n{out}");
        let low = (r.num("INODES") * 0.10).ceil() * 1.25;
        assert!(
            r.num("IFREE_AFTER") >= low.floor() * 0.97,
            "not back to {low} free inodes:\n{out}"
        );
    }
    // Oldest first, whoever owns them: both caches gave up entries.
    assert!(
        r.num("FILES_A") < 3000.0 && r.num("FILES_B") < 3000.0,
        "{out}"
    );
    // The floor: nothing used within min_age went.
    assert_eq!(r.num("FRESH_AFTER"), r.num("FRESH_BEFORE"), "{out}");
}

#[test]
fn tmpfs_at_zero_bytes_free_recovers_with_enforce() {
    let r = scenario(Fs::Tmpfs, Fill::Bytes, Agent::Enforce, "min_free = \"10%\"");
    assert_recovered(&r, true);
    assert!(
        r.out.contains("\"free\""),
        "evicted for reason free:\n{}",
        r.out
    );
}

#[test]
fn tmpfs_at_zero_inodes_free_recovers_with_enforce() {
    let r = scenario(
        Fs::Tmpfs,
        Fill::Inodes,
        Agent::Enforce,
        "min_free_inodes = \"10%\"",
    );
    assert_recovered(&r, false);
}

#[test]
fn ext4_at_zero_bytes_free_recovers_with_enforce() {
    let r = scenario(Fs::Ext4, Fill::Bytes, Agent::Enforce, "min_free = \"10%\"");
    assert_recovered(&r, true);
}

#[test]
fn ext4_at_zero_inodes_free_recovers_with_enforce() {
    let r = scenario(
        Fs::Ext4,
        Fill::Inodes,
        Agent::Enforce,
        "min_free_inodes = \"10%\"",
    );
    assert_recovered(&r, false);
}

#[test]
fn daemon_notices_a_full_tmpfs_within_seconds_and_recovers() {
    let r = scenario(Fs::Tmpfs, Fill::Bytes, Agent::Daemon, "min_free = \"10%\"");
    assert_recovered(&r, true);
    let secs = r.num("SECONDS_TO_RECOVER");
    assert!(secs < 15.0, "took {secs}s:\n{}", r.out);
    assert!(r.out.contains("below min_free: sweeping now"), "{}", r.out);
    assert!(
        r.out.contains("cannot write the metrics textfile")
            && r.out.contains("No space left on device"),
        "the textfile write failed with ENOSPC:\n{}",
        r.out
    );
}

#[test]
fn daemon_recovers_an_ext4_out_of_inodes() {
    let r = scenario(
        Fs::Ext4,
        Fill::Inodes,
        Agent::Daemon,
        "min_free_inodes = \"10%\"",
    );
    assert_recovered(&r, false);
    assert!(r.num("SECONDS_TO_RECOVER") < 15.0, "{}", r.out);
}

#[test]
fn check_says_what_limits_the_filesystem() {
    require_root();
    let d = tempdir();
    let m = d.path().join("m");
    std::fs::create_dir(&m).expect("mkdir");
    let policy = d.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n\
             [cache.a]\npath = \"{}/a\"\nmin_free = \"10%\"\nmin_free_inodes = \"10%\"\n",
            m.display()
        ),
    )
    .expect("policy");
    let script = format!(
        "mount -t tmpfs -o size=16m,nr_inodes=2000 gcw-hr {m}\n\
         python3 {mk} {m}/a --entries 200 >/dev/null\n\
         dd if=/dev/zero of={m}/fill bs=64k 2>/dev/null || true\n\
         {bin} --policy {p} check || echo EXIT=$?\n\
         {bin} --policy {p} check --json > {d}/check.json || true\n",
        m = m.display(),
        mk = mkcache_script().display(),
        bin = bin().display(),
        p = policy.display(),
        d = d.path().display()
    );
    let o = in_mount_ns(&script);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("EXIT=1"), "{out}");
    assert!(out.contains("low-free-space"), "{out}");
    assert!(out.contains("below min_free"), "{out}");
    assert!(out.contains("(policy: keep "), "{out}");
    assert!(out.contains("inodes free)"), "{out}");
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("check.json")).expect("check.json"),
    )
    .expect("json");
    let c = &j["caches"][0];
    let size = c["filesystem"]["size_bytes"].as_u64().expect("size");
    assert_eq!(c["min_free_bytes"].as_u64(), Some(size / 10), "{c}");
    assert_eq!(c["min_free_inodes"].as_u64(), Some(200), "{c}");
}

#[test]
fn min_free_values_are_validated_with_their_location() {
    let d = support::tempdir();
    let cases: &[(&str, &str)] = &[
        ("min_free = 0", "3:12: min_free must be greater than zero"),
        (
            "min_free = \"60%\"",
            "3:12: 60% is more than half of the filesystem",
        ),
        ("min_free = \"lots\"", "3:12: invalid size \"lots\""),
        (
            "min_free_inodes = \"0%\"",
            "3:19: percentage \"0%\" must be above 0%",
        ),
        ("min_free_inodes = \"51%\"", "3:19: 51% is more than half"),
    ];
    for (line, want) in cases {
        let f = d.path().join("p.toml");
        std::fs::write(&f, format!("[cache.x]\npath = \"/srv/gocache\"\n{line}\n")).expect("write");
        let o = support::run(["policy".as_ref(), "validate".as_ref(), f.as_os_str()], &[]);
        assert_eq!(o.status.code(), Some(2), "{line} accepted");
        let err = support::stderr(&o);
        assert!(
            err.contains(&format!("{}:{want}", f.display())),
            "{line}: {err}"
        );
    }
    let f = d.path().join("ok.toml");
    std::fs::write(
        &f,
        "[cache.x]\npath = \"/srv/gocache\"\nmin_free = \"10%\"\nmin_free_inodes = \"5%\"\n\
         [cache.y]\npath = \"/srv/other\"\nmin_free = \"20GiB\"\n",
    )
    .expect("write");
    let o = support::run(["policy".as_ref(), "validate".as_ref(), f.as_os_str()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
}
