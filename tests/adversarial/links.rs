//! Links: a shard, entries, `trim.txt` or the root itself replaced by a symlink, and hard
//! links to files outside the cache: reported, never followed, never written through.

use super::*;
// 1. A symlink in place of a shard.
#[test]
fn symlinked_shard_is_reported_and_never_followed() {
    let mut c = Case::new(&["cd"]);
    let target = c.outside_dir("shard");
    let out_id = id("ab", 0x51);
    c.outside_file(&format!("shard/{out_id}-d"), b"looks like an output");
    c.outside_file(
        &format!("shard/{}-a", id("ab", 0x52)),
        &record(&id("ab", 0x52), &out_id, 20, OLD).into_bytes(),
    );
    age(&target, OLD);
    std::os::unix::fs::symlink(&target, c.cache.join("ab")).expect("symlink");
    age(&c.cache.join("ab"), OLD);
    // An old action whose output lives "in" the symlinked shard: evicting the action must not
    // take the output along through the symlink.
    let reach = c.action(&id("cd", 1), &out_id, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.guard(&c.cache.join("ab"));
    c.seal();

    let chk = c.check();
    assert_finding(&chk, "symlink", 1, &["ab"]);

    let e = c.enforce(0);
    assert_refused(&e, "symlink", &["ab"]);
    assert_no_failures(&e);
    assert_eq!(
        std::fs::read_link(c.cache.join("ab")).expect("symlink kept"),
        target
    );
    for p in [&reach, &old.a, &old.d] {
        assert_gone(p);
    }
    assert!(evicted_entries(&e) >= 3);
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
    c.assert_fixed(&c.cache.join("cd"));
    c.assert_fixed(&c.cache);
}

// 2. Symlinks named like entries (-d to a file and to a directory, -a), themselves old.
#[test]
fn symlinked_entries_are_reported_and_never_followed() {
    let mut c = Case::new(&["ab", "cd"]);
    let secret_d = c.outside_file("secret-d", b"not an output");
    let secret_a = c.outside_file(
        "secret-a",
        &record(&id("cd", 9), &id("cd", 8), 20, OLD).into_bytes(),
    );
    let exec = c.outside_dir("execdir");
    c.outside_file("execdir/prog", b"#!/bin/sh\n");
    age(&exec, OLD);
    let (h1, h2, h3) = (id("ab", 1), id("ab", 2), id("ab", 3));
    let links = [
        (format!("ab/{h1}-d"), &secret_d),
        (format!("ab/{h2}-a"), &secret_a),
        (format!("ab/{h3}-d"), &exec),
    ];
    for (rel, target) in &links {
        let l = c.cache.join(rel);
        std::os::unix::fs::symlink(target, &l).expect("symlink");
        age(&l, OLD);
        c.guard(&l);
    }
    // An old action naming the symlinked output: it goes, the symlink stays.
    let namer = c.action(&id("cd", 1), &h1, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();

    let rels: Vec<&str> = links.iter().map(|(r, _)| r.as_str()).collect();
    let chk = c.check();
    assert_finding(&chk, "symlink", 3, &rels);

    let e = c.enforce(0);
    assert_refused(&e, "symlink", &rels);
    assert_no_failures(&e);
    for (rel, target) in &links {
        assert_eq!(
            &std::fs::read_link(c.cache.join(rel)).expect("symlink kept"),
            *target
        );
    }
    for p in [&namer, &old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
    c.assert_fixed(&c.cache.join("ab"));
}

/// Restores `/proc/sys/fs/protected_hardlinks` when dropped (also on panic).
struct SysctlGuard {
    path: &'static str,
    orig: String,
}

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> SysctlGuard {
        let orig = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let g = SysctlGuard { path, orig };
        std::fs::write(path, value).unwrap_or_else(|e| {
            panic!("write {path} (needs root outside a read-only /proc/sys): {e}")
        });
        g
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.orig.trim());
    }
}

// 3. Hard links into the cache to root-owned files outside, under both settings of
// fs.protected_hardlinks (one test: the sysctl is global).
#[test]
fn hardlinks_to_outside_files_are_refused_with_and_without_protected_hardlinks() {
    require_root();
    let user = ensure_user("gwt-adv-mallory", &[GROUP]);
    // Its own primary group: a uid is not a gid (they differ when a group took the number).
    let user_gid = nix::unistd::User::from_uid(user.into())
        .ok()
        .flatten()
        .expect("user exists")
        .gid
        .as_raw();
    for protected in ["0", "1"] {
        let _g = SysctlGuard::set("/proc/sys/fs/protected_hardlinks", protected);
        let mut c = Case::new(&["ab", "cd"]);
        // Let the group member reach the sentinel and write into the shard, as in a shared
        // cache before enforce has run.
        std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&c.outside, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(c.cache.join("ab"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let secret = c.outside_file("secret", b"root:$6$hash:19000:0:99999:7:::\n");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let rec = c.outside_file(
            "record-a",
            &record(&id("ab", 2), &id("cd", 8), 300, OLD).into_bytes(),
        );
        let (ld, la) = (
            c.cache.join(format!("ab/{}-d", id("ab", 1))),
            c.cache.join(format!("ab/{}-a", id("ab", 2))),
        );
        let as_user = Command::new("ln")
            .arg(&secret)
            .arg(&ld)
            .uid(user)
            .gid(user_gid)
            .output()
            .expect("ln");
        if protected == "0" {
            assert!(
                as_user.status.success(),
                "an unprivileged link must work with protected_hardlinks=0: {}",
                String::from_utf8_lossy(&as_user.stderr)
            );
        } else {
            assert!(
                !as_user.status.success(),
                "protected_hardlinks=1 must stop an unprivileged link"
            );
            std::fs::hard_link(&secret, &ld).expect("link as root");
        }
        std::fs::hard_link(&rec, &la).expect("link as root");
        for p in [&secret, &rec] {
            age(p, OLD);
        }
        let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
        let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
        c.seal();

        let (rd, ra) = (rel_of(&c, &ld).to_string(), rel_of(&c, &la).to_string());
        let chk = c.check();
        assert_finding(&chk, "hardlink", 2, &[&rd, &ra]);

        let e = c.enforce(0);
        assert_refused(&e, "hardlink", &[&rd, &ra]);
        assert_no_failures(&e);
        for (l, s) in [(&ld, &secret), (&la, &rec)] {
            let (a, b) = (
                std::fs::symlink_metadata(l).expect("link kept"),
                std::fs::metadata(s).expect("sentinel"),
            );
            assert_eq!(
                (a.ino(), a.nlink()),
                (b.ino(), 2),
                "protected_hardlinks={protected}: {}",
                l.display()
            );
        }
        for p in [&old.a, &old.d] {
            assert_gone(p);
        }
        c.assert_fixed(&fresh.a);
        c.assert_fixed(&fresh.d);
    }
}

// Extra: trim.txt replaced by a hard link or a symlink to a sentinel: never written through.
#[test]
fn trim_txt_linked_to_an_outside_file_is_never_written_through() {
    for how in ["hardlink", "symlink"] {
        let mut c = Case::new(&["ab"]);
        let secret = c.outside_file("secret-trim", b"0\n");
        let trim = c.cache.join("trim.txt");
        std::fs::remove_file(&trim).expect("rm trim.txt");
        if how == "hardlink" {
            std::fs::hard_link(&secret, &trim).expect("link");
        } else {
            std::os::unix::fs::symlink(&secret, &trim).expect("symlink");
        }
        let old = c.unit(&id("ab", 2), &id("ab", 3), OLD);
        c.seal();
        let chk = c.check();
        assert_finding(&chk, how, 1, &["trim.txt"]);
        let r = c.run(&["enforce", "--json"]);
        assert_eq!(
            r.code, 1,
            "{how}: rewriting trim.txt must fail, not write through\n{}",
            r.stderr
        );
        let e = r.json();
        c.assert_guarded_unchanged("enforce");
        let o = outcome(&e);
        assert!(
            examples(&o["failed"])
                .iter()
                .any(|f| f.starts_with("trim.txt")),
            "{how}: {o}"
        );
        assert_eq!(o["trim_rewritten"], false);
        assert!(std::fs::symlink_metadata(&trim).is_ok(), "trim.txt removed");
        assert_gone(&old.a);
    }
}

// Extra: the cache root itself is a symlink to a sentinel directory.
#[test]
fn cache_root_symlink_is_never_followed() {
    let mut c = Case::new(&[]);
    let target = c.outside_dir("root");
    std::fs::create_dir(target.join("ab")).expect("mkdir");
    c.guard(&target.join("ab"));
    let f = c.outside_file(&format!("root/ab/{}-a", id("ab", 1)), b"v1");
    age(&f, OLD);
    age(&target, OLD);
    std::fs::remove_dir_all(&c.cache).expect("rm cache");
    std::os::unix::fs::symlink(&target, &c.cache).expect("symlink root");
    c.seal();
    let chk = c.check();
    finding(&chk, "root-not-directory");
    let r = c.run(&["enforce", "--json"]);
    assert!(
        r.code != 0,
        "enforce on a symlinked root must not succeed\n{}",
        r.text()
    );
    c.assert_guarded_unchanged("enforce");
    assert_eq!(
        std::fs::read_link(&c.cache).expect("root symlink kept"),
        target
    );
}
