//! Hostile shapes: names with newlines, control characters or invalid UTF-8, and directory
//! chains deeper than the walker goes.

use super::*;
/// Names with newlines and control characters, or with invalid UTF-8 too, in a shard and as
/// a directory at the root with a file inside: no crash, reports escape them (no name can
/// start a line of its own), enforce fixes them like any other entry.
fn hostile_names(utf8: bool) {
    let mut c = Case::new(&["ab", "cd"]);
    // fuzz/ is Go's whatever its files are called: hostile names there are fixed, not just
    // reported as foreign.
    let fuzz = c.cache.join("fuzz");
    std::fs::create_dir(&fuzz).expect("mkdir fuzz");
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    // Bring the normal part to policy first, so the hostile names are the only violations
    // and all of them make it into the report's examples.
    let r = c.run(&["enforce"]);
    assert_eq!(r.code, 0, "first enforce: {}\n{}", r.text(), r.stderr);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let name = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    let (n2, nd, n3): (&[u8], &[u8], &[u8]) = if utf8 {
        (b"tab\tbell\x07esc\x1b[31mred", b"dir\n(FORGED", b"x\ny")
    } else {
        (b"\xff\xfe-bad", b"dir\n\xc3(FORGED", b"x\ny\xff")
    };
    let f1 = fuzz.join(name(b"evil\nFORGED e.g. cd-ok"));
    let f2 = fuzz.join(name(n2));
    let d1 = fuzz.join(name(nd));
    let f3 = d1.join(name(n3));
    std::fs::write(&f1, b"1").expect("write");
    std::fs::write(&f2, b"2").expect("write");
    std::fs::create_dir(&d1).expect("mkdir");
    std::fs::write(&f3, b"3").expect("write");
    for p in [&f1, &f2, &f3] {
        make_unfixed(p, 0o644);
        age(p, OLD);
    }
    make_unfixed(&d1, 0o755);
    c.seal();

    let broken = |l: &str| {
        (l.contains("FORGED") && !l.contains(r"\n"))
            || l.starts_with('y')
            || l.contains('\x1b')
            || l.contains('\x07')
    };
    let txt = c.run(&["check"]);
    assert_eq!(
        txt.code,
        1,
        "check exit code\n{}\n{}",
        txt.text(),
        txt.stderr
    );
    let out = txt.text();
    assert!(
        !out.lines().any(broken),
        "a name broke a report line:\n{out}"
    );
    assert!(
        out.contains(r"evil\nFORGED"),
        "the newline is shown escaped:\n{out}"
    );
    if !utf8 {
        assert!(
            out.contains(r"\xFF") || out.contains(r"\xff"),
            "invalid UTF-8 is shown escaped:\n{out}"
        );
    }
    assert!(!txt.stderr.lines().any(broken), "stderr: {}", txt.stderr);

    let chk = c.check();
    let g = finding(&chk, "group");
    assert_eq!(g["count"], 4, "{g}");
    let ex = examples(g);
    assert_eq!(ex.len(), 4, "{ex:?}");
    assert!(
        ex.iter().all(|e| !e.contains('\n') && !e.contains('\x1b')),
        "raw control character in an example: {ex:?}"
    );
    assert!(ex.iter().any(|e| e.contains(r"\n")), "{ex:?}");

    let r = c.run(&["enforce", "--json"]);
    let e = c.enforce_done(r, 0);
    assert_no_failures(&e);
    for p in [&f1, &f2, &f3, &d1] {
        c.assert_fixed(p);
    }
    c.assert_fixed(&fresh.d);
    assert_gone(&old.a);
    assert_gone(&old.d);
    // Something to say about the names again (fix them back to root), in the text form.
    for p in [&f1, &f2, &f3] {
        make_unfixed(p, 0o644);
    }
    let r = c.run(&["enforce"]);
    assert_eq!(r.code, 0, "{}\n{}", r.text(), r.stderr);
    assert!(
        !r.text().lines().chain(r.stderr.lines()).any(broken),
        "{}\n{}",
        r.text(),
        r.stderr
    );
    for p in [&f1, &f2, &f3] {
        c.assert_fixed(p);
    }
}

// 7a. Newlines and control characters (valid UTF-8).
#[test]
fn names_with_newlines_and_control_characters_are_escaped_and_fixed() {
    hostile_names(true);
}

// 7b. Newlines and invalid UTF-8.
#[test]
fn names_with_invalid_utf8_are_escaped_and_fixed() {
    hostile_names(false);
}

/// Creates `n` nested directories `d` under `base`; returns the deepest.
fn chain(base: &Path, n: usize) -> PathBuf {
    let mut p = base.to_path_buf();
    for _ in 0..n {
        p.push("d");
    }
    std::fs::create_dir_all(&p).expect("mkdir chain");
    p
}

// 8a. A 200-deep chain under fuzz/ (Go's, any depth): walked and fixed to the bottom.
#[test]
fn deep_chain_is_fixed_to_the_bottom() {
    let mut c = Case::new(&["ab"]);
    let bottom = chain(&c.cache.join("fuzz"), 200);
    let leaf = bottom.join("leaf");
    std::fs::write(&leaf, b"leaf").expect("write");
    let link = bottom.join("link");
    let secret = c.outside_file("secret", b"deep");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let old = c.unit(&id("ab", 2), &id("ab", 3), OLD);
    c.seal();

    let chk = c.check();
    let rl = rel_of(&c, &link).to_string();
    assert_finding(&chk, "symlink", 1, &[&rl]);
    assert!(
        chk["caches"][0]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["kind"] != "too-deep")
    );
    let e = c.enforce(0);
    assert_no_failures(&e);
    c.assert_fixed(&leaf);
    c.assert_fixed(&bottom);
    c.assert_fixed(bottom.parent().expect("parent"));
    assert_gone(&old.a);
    assert_eq!(std::fs::read_link(&link).expect("symlink kept"), secret);
}

/// Checks a chain longer than the walker's max depth (1024) under fuzz/: reported as too
/// deep once, everything above it fixed, nothing below it touched.
fn too_deep(soft_nofile: Option<u64>) {
    let mut c = Case::new(&["ab"]);
    let fuzz = c.cache.join("fuzz");
    // fuzz is depth 1, the k-th `d` depth k + 1: the 1023rd `d` (depth 1024) is not entered.
    let bottom = chain(&fuzz, 1030);
    let mut first_skipped = fuzz.clone();
    for _ in 0..1023 {
        first_skipped.push("d");
    }
    let last_fixed = first_skipped.parent().expect("parent").to_path_buf();
    std::fs::write(bottom.join("leaf"), b"x").expect("write");
    c.guard(&first_skipped);
    c.guard(&bottom);
    let old = c.unit(&id("ab", 2), &id("ab", 3), OLD);
    c.seal();

    let limit = move |cmd: &mut Command| {
        if let Some(n) = soft_nofile {
            // SAFETY: only async-signal-safe setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut r = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
                    r.rlim_cur = n;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &r);
                    Ok(())
                });
            }
        }
    };
    let mut cmd = c.command(&["check", "--json"]);
    limit(&mut cmd);
    let r = c.run_cmd(&mut cmd, "check");
    assert_eq!(r.code, 1, "check exit code\nstderr: {}", r.stderr);
    let chk = r.json();
    c.assert_guarded_unchanged("check");
    let rel = rel_of(&c, &first_skipped).to_string();
    assert_finding(&chk, "too-deep", 1, &[&rel]);
    assert!(
        chk["caches"][0]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["kind"] != "unreadable"),
        "{}",
        chk["caches"][0]["findings"]
    );

    let mut cmd = c.command(&["enforce", "--json"]);
    limit(&mut cmd);
    let r = c.run_cmd(&mut cmd, "enforce");
    let e = c.enforce_done(r, 0);
    assert_refused(&e, "too-deep", &[&rel]);
    assert_no_failures(&e);
    c.assert_fixed(&last_fixed);
    c.assert_fixed(&fuzz);
    assert_gone(&old.a);
}

// 8b. Deeper than the walker's max depth, at the test's own open-file limit.
#[test]
fn chain_deeper_than_max_depth_is_reported_too_deep() {
    too_deep(None);
}

// 8c. The same under systemd's default soft open-file limit (1024), which is what a service
// gets unless its unit raises LimitNOFILE.
#[test]
fn chain_deeper_than_max_depth_is_reported_too_deep_with_1024_open_files() {
    too_deep(Some(1024));
}
