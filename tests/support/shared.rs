//! A shared build cache as issue #14 describes it, for the tests of `gocache-warden
//! cacheprog` and of the agent over it: a trusted account fills it with plain `go`, the
//! builders' group may only read it (group `r-x` ACL), and members build with `GOCACHEPROG`
//! pointing at the program, each into an own cache of theirs.

use super::gobuild;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub const GROUP: &str = "gwc-builders";
pub const WRITER: &str = "gwc-writer";
pub const MEMBERS: [&str; 2] = ["gwc-alice", "gwc-bob"];
/// Not in the builders' group: cannot read the shared cache at all.
pub const OUTSIDER: &str = "gwc-carol";
pub const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// The Go tests compile much of the standard library once; one at a time on 2 cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub const PROGRAM: &str = r#"package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

func main() {
	words := strings.Fields("shared caches without shared trust")
	sort.Strings(words)
	b, _ := json.Marshal(words)
	fmt.Println(string(b))
}
"#;
pub const PROGRAM_OUT: &str = "[\"caches\",\"shared\",\"shared\",\"trust\",\"without\"]\n";

pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn user(name: &'static str, groups: &[&str]) -> User {
    let uid = super::ensure_user(name, groups);
    let u = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .expect("user exists");
    User {
        name,
        uid,
        gid: u.gid.as_raw(),
        home: u.dir,
    }
}

/// A shared cache at `dir/shared` filled by the writer with a plain `go build` (no cache
/// program: the trusted account is the one writer), group `r-x` for the builders.
pub struct World {
    pub dir: tempfile::TempDir,
    pub shared: PathBuf,
    pub writer: User,
}

impl World {
    pub fn new() -> World {
        super::require_root();
        super::ensure_group(GROUP);
        let writer = user(WRITER, &[]);
        let dir = super::tempdir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir shared");
        let gid = nix::unistd::Group::from_name(GROUP)
            .ok()
            .flatten()
            .expect("group")
            .gid
            .as_raw();
        chown(&shared, Some(writer.uid), Some(gid)).expect("chown shared");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2750))
            .expect("chmod shared");
        let acl = format!("g:{GROUP}:r-x,m::r-x,d:g:{GROUP}:r-x,d:m::r-x,d:o::---");
        sh("setfacl", &["-m", &acl, &shared.display().to_string()]);
        let w = World {
            dir,
            shared,
            writer,
        };
        let src = w.checkout(&w.writer, "hello");
        let shared_env = w.shared.display().to_string();
        let o = gobuild::go_as(
            w.writer.uid,
            w.writer.gid,
            &w.writer.home,
            &src,
            &[("GOCACHE", shared_env)],
            &["build", "-o", "hello", "."],
            BUILD_LIMIT,
        );
        must(&o, "the writer's build");
        w
    }

    /// A copy of the program owned by `u`.
    pub fn checkout(&self, u: &User, name: &str) -> PathBuf {
        let d = self.dir.path().join("src").join(u.name).join(name);
        std::fs::create_dir_all(&d).expect("mkdir src");
        std::fs::write(
            d.join("go.mod"),
            format!("module example.com/{name}\n\ngo 1.24\n"),
        )
        .expect("go.mod");
        std::fs::write(d.join("main.go"), PROGRAM).expect("main.go");
        for p in [
            d.parent().expect("parent"),
            &d,
            &d.join("go.mod"),
            &d.join("main.go"),
        ] {
            chown(p, Some(u.uid), Some(u.gid)).expect("chown src");
        }
        d
    }

    /// A fresh own cache for `u` (what `go env GOCACHE` gives them: set in the environment).
    pub fn own(&self, u: &User, tag: &str) -> PathBuf {
        let p = self.dir.path().join(format!("own-{}-{tag}", u.name));
        std::fs::create_dir(&p).expect("mkdir own");
        chown(&p, Some(u.uid), Some(u.gid)).expect("chown own");
        p
    }

    pub fn cacheprog(&self, extra: &str) -> String {
        format!(
            "{} cacheprog --shared {} --trusted {WRITER}{extra}",
            super::bin().display(),
            self.shared.display()
        )
    }

    /// `go build` as `u` with the cache program; returns the output and the built program's.
    pub fn build(&self, u: &User, own: &Path, prog: &str) -> (Output, String) {
        let src = self.checkout(u, "hello");
        let out_name = format!("hello-{}", own.file_name().unwrap().to_string_lossy());
        let o = gobuild::go_as(
            u.uid,
            u.gid,
            &u.home,
            &src,
            &[
                ("GOCACHE", own.display().to_string()),
                ("GOCACHEPROG", prog.to_string()),
            ],
            &["build", "-o", &out_name, "."],
            BUILD_LIMIT,
        );
        let ran = Command::new(src.join(&out_name)).output();
        let ran = ran.map(|r| String::from_utf8_lossy(&r.stdout).into_owned());
        (o, ran.unwrap_or_default())
    }
}

pub fn sh(program: &str, args: &[&str]) {
    let o = Command::new(program).args(args).output();
    let o = o.unwrap_or_else(|e| panic!("{program}: {e}"));
    must(&o, &format!("{program} {args:?}"));
}

pub fn must(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every entry of a tree: relative path → (type and mode, size, owner, mtime in ns).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, u32, i128)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let md = std::fs::symlink_metadata(e.path()).expect("lstat");
            let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            let rel = e.path().strip_prefix(root).expect("beneath").to_path_buf();
            out.insert(rel, (md.mode(), md.size(), md.uid(), mtime));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

pub fn counters(own: &Path) -> Value {
    let p = own.join("gocache-warden-cacheprog.json");
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).expect("counters JSON")
}

pub fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no counter {k} in {v}"))
}
