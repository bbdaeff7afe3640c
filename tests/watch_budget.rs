//! Growth watches cost 257 inotify watches per build cache with a limit (the root and its 256
//! shards). When the kernel's budget runs out the agent says how many directories it could
//! not watch, naming the sysctl, and goes on (the periodic sweep still measures them).
//!
//! The budget is lowered for the agent alone: it runs as root of a user namespace of its own
//! (uid 0 mapped to uid 0, so it still owns the root-owned test cache), whose
//! `/proc/sys/user/max_inotify_watches` (Linux ≥ 5.11 counts watches per user namespace) is
//! set to 100. Nothing of the machine's own inotify limits changes.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn watches_that_run_out_are_reported_with_the_sysctl_to_raise() {
    support::require_root();
    let d = support::tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 20, 5);
    for i in 0..256 {
        std::fs::create_dir_all(cache.join(format!("{i:02x}"))).expect("shard");
    }
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"1GiB\"\n[agent]\ninterval = \"1h\"\n",
            cache.display()
        ),
    );
    let log = d.path().join("log");
    let stderr = std::fs::File::create(&log).expect("log");
    // `unshare` and `sh` exec the agent: the child's pid is the agent's.
    let _agent = support::KillOnDrop(
        Command::new("unshare")
            .args(["--user", "--map-root-user", "sh", "-c"])
            .arg(
                "echo 100 > /proc/sys/user/max_inotify_watches || exit 97; exec \"$0\" --policy \"$1\" run",
            )
            .arg(support::bin())
            .arg(&p)
            // Its state next to the policy, never in this machine's /var/lib.
            .env("STATE_DIRECTORY", p.with_extension("state"))
            .stderr(stderr)
            .spawn()
            .expect("unshare (util-linux)"),
    );
    let start = Instant::now();
    let want = "157 cache directories could not be watched for growth (is fs.inotify.max_user_watches too low? each cache with a limit needs 257)";
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(want) {
            assert!(
                text.contains("in use; last sweep"),
                "the sweep still ran: {text}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no warning about watches:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
