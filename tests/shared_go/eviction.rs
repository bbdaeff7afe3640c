//! Eviction under a size limit, at the same moment as members' builds: no build fails.

use super::*;

#[derive(Debug)]
struct BuildRun {
    who: String,
    ok: bool,
    stderr: String,
    secs: f64,
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
