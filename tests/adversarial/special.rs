//! Things that must never be opened or entered: FIFOs, devices and sockets named like
//! entries, and bind mounts inside a cache.

use super::*;
/// inotify on `paths`: any open, read, write, attribute change, move or delete of them.
fn watch(paths: &[&Path]) -> nix::sys::inotify::Inotify {
    use nix::sys::inotify::{AddWatchFlags as W, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify");
    for p in paths {
        let m = W::IN_OPEN
            | W::IN_ACCESS
            | W::IN_MODIFY
            | W::IN_ATTRIB
            | W::IN_DELETE_SELF
            | W::IN_MOVE_SELF;
        ino.add_watch(*p, m | W::IN_DONT_FOLLOW)
            .unwrap_or_else(|e| panic!("inotify_add_watch {}: {e}", p.display()));
    }
    ino
}

fn events(ino: &nix::sys::inotify::Inotify) -> Vec<String> {
    match ino.read_events() {
        Ok(ev) => ev
            .iter()
            .map(|e| format!("{:?} on wd {:?}", e.mask, e.wd))
            .collect(),
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(e) => panic!("inotify read: {e}"),
    }
}

// 4. A FIFO, a character device and a socket named like entries, old: never opened, left
// alone.
#[test]
fn fifos_device_nodes_and_sockets_are_never_opened() {
    let mut c = Case::new(&["ab", "cd"]);
    let (h1, h2) = (id("ab", 1), id("ab", 2));
    let fifo = c.cache.join(format!("ab/{h1}-d"));
    let dev = c.cache.join(format!("ab/{h2}-a"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod c 1 3");
    let sock = c.cache.join(format!("cd/{}-d", id("cd", 6)));
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let ino = watch(&[&fifo, &dev, &sock]);
    // The watch sees opens: prove it on the device node, then start from a clean slate.
    drop(std::fs::File::open(&dev).expect("open c 1 3"));
    assert!(
        events(&ino).iter().any(|e| e.contains("IN_OPEN")),
        "inotify does not report opens here"
    );
    for p in [&fifo, &dev, &sock] {
        age(p, OLD);
        c.guard(p);
    }
    // An old action naming the FIFO as its output: evicting it must not touch the FIFO.
    let namer = c.action(&id("cd", 1), &h1, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();
    events(&ino);

    let rels = [&fifo, &dev, &sock].map(|p| rel_of(&c, p).to_string());
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    let chk = c.check();
    assert_finding(&chk, "special", 3, &rels);
    let e = c.enforce(0);
    assert_refused(&e, "special", &rels);
    assert_no_failures(&e);
    assert_eq!(
        events(&ino),
        Vec::<String>::new(),
        "a FIFO, device node or socket was opened or changed"
    );
    assert!(
        listener.accept().is_err(),
        "someone connected to the socket"
    );
    for p in [&namer, &old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
}

// 4b. Hostile entries inside an old executable output directory (`<hex>-d/`): the
// directory is a unit, but what it holds is not Go's, so it is left alone with them.
#[test]
fn fifo_and_symlink_inside_an_old_executable_output_are_left_alone() {
    let mut c = Case::new(&["ab", "cd"]);
    let secret = c.outside_file("secret", b"outside");
    let exec = c.cache.join(format!("ab/{}-d", id("ab", 1)));
    std::fs::create_dir(&exec).expect("mkdir exec");
    std::fs::write(exec.join("prog"), b"\x7fELF").expect("write prog");
    let fifo = exec.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let link = exec.join("link");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    for p in [&exec.join("prog"), &fifo, &link, &exec] {
        age(p, OLD);
    }
    c.guard(&fifo);
    c.guard(&link);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    c.seal();

    let (rf, rl) = (rel_of(&c, &fifo).to_string(), rel_of(&c, &link).to_string());
    let chk = c.check();
    assert_finding(&chk, "special", 1, &[&rf]);
    assert_finding(&chk, "symlink", 1, &[&rl]);
    let e = c.enforce(0);
    assert_no_failures(&e);
    for p in [&old.a, &old.d] {
        assert_gone(p);
    }
}

/// Shell-quotes a path for `sh -c`.
fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Runs `check --json` then `enforce --json` inside a private mount namespace after
/// `mount --bind SRC DST` for each pair.
fn run_with_mounts(c: &Case, mounts: &[(&Path, &Path)]) -> (Run, Run) {
    let b = q(&bin());
    let p = q(&c.policy);
    let mut s = String::new();
    for (src, dst) in mounts {
        s += &format!("mount --bind {} {}\n", q(src), q(dst));
    }
    let d = &c.dir;
    for (name, args) in [("check", "check --json"), ("enforce", "enforce --json")] {
        s += &format!(
            "rc=0; timeout 30 {b} --policy {p} {args} >{} 2>{} || rc=$?; echo $rc >{}\n",
            q(&d.join(format!("ns-{name}.out"))),
            q(&d.join(format!("ns-{name}.err"))),
            q(&d.join(format!("ns-{name}.rc")))
        );
    }
    let o = in_mount_ns(&s);
    assert!(
        o.status.success(),
        "mount namespace script failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let get = |name: &str| {
        let rc: i32 = std::fs::read_to_string(d.join(format!("ns-{name}.rc")))
            .expect("rc")
            .trim()
            .parse()
            .expect("rc number");
        assert_ne!(rc, 124, "{name} timed out in the mount namespace");
        Run {
            code: rc,
            stdout: std::fs::read(d.join(format!("ns-{name}.out"))).expect("stdout"),
            stderr: std::fs::read_to_string(d.join(format!("ns-{name}.err"))).unwrap_or_default(),
        }
    };
    (get("check"), get("enforce"))
}

// 5. Bind mounts of sentinel directories inside the cache: a whole shard and an
// executable-output-shaped directory. Not entered, not evicted, not fixed.
#[test]
fn bind_mounted_directories_are_never_entered() {
    let mut c = Case::new(&["ab", "cd", "ef"]);
    let src_exec = c.outside_dir("mnt-exec");
    c.outside_file("mnt-exec/prog", b"#!/bin/sh\n");
    let src_shard = c.outside_dir("mnt-shard");
    let sid = id("ef", 1);
    c.outside_file(
        &format!("mnt-shard/{sid}-a"),
        &record(&sid, &sid, 10, OLD).into_bytes(),
    );
    c.outside_file(&format!("mnt-shard/{sid}-d"), b"0123456789");
    for p in [&src_exec, &src_shard] {
        age(p, OLD);
    }
    let hx = id("ab", 1);
    let exec = c.cache.join(format!("ab/{hx}-d"));
    std::fs::create_dir(&exec).expect("mkdir mountpoint");
    age(&exec, OLD);
    // An old action naming the mounted output.
    let namer = c.action(&id("cd", 1), &hx, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();

    let ef = c.cache.join("ef");
    let (chk, enf) = run_with_mounts(&c, &[(&src_exec, &exec), (&src_shard, &ef)]);
    assert_eq!(chk.code, 1, "check exit code\nstderr: {}", chk.stderr);
    let rx = rel_of(&c, &exec).to_string();
    assert_finding(&chk.json(), "mount", 2, &[&rx, "ef"]);
    let e = c.enforce_done(enf, 0);
    assert_refused(&e, "mount", &[&rx, "ef"]);
    assert_no_failures(&e);
    assert!(exec.is_dir() && ef.is_dir(), "mount points removed");
    for p in [&namer, &old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
    c.assert_fixed(&fresh.d);
}

// 5b. A bind mount of a sentinel *file* over an entry: reported as a mount, left alone, and
// not a failure.
#[test]
fn bind_mounted_file_is_reported_as_a_mount_and_left_alone() {
    let mut c = Case::new(&["ab", "cd"]);
    let src = c.outside_file("secret-d", b"mounted over an output");
    let entry = c.cache.join(format!("ab/{}-d", id("ab", 1)));
    std::fs::write(&entry, b"placeholder").expect("write");
    age(&entry, OLD);
    let old = c.unit(&id("cd", 2), &id("cd", 3), OLD);
    let fresh = c.unit(&id("cd", 4), &id("cd", 5), FRESH);
    c.seal();

    let (chk, enf) = run_with_mounts(&c, &[(&src, &entry)]);
    assert_eq!(chk.code, 1, "check exit code\nstderr: {}", chk.stderr);
    let re = rel_of(&c, &entry).to_string();
    let chk = chk.json();
    assert_finding(&chk, "mount", 1, &[&re]);
    for kind in ["group", "acl", "other-access"] {
        if let Some(f) = chk["caches"][0]["findings"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["kind"] == kind))
        {
            assert!(
                !examples(f).contains(&re),
                "the mount point is reported as fixable {kind}: {f}"
            );
        }
    }
    let e = c.enforce_done(enf, 0);
    assert_refused(&e, "mount", &[&re]);
    assert_no_failures(&e);
    assert_eq!(std::fs::read(&entry).expect("entry kept"), b"placeholder");
    for p in [&old.a, &old.d] {
        assert_gone(p);
    }
    c.assert_fixed(&fresh.a);
}
