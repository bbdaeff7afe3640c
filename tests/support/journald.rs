//! Test fixture: runs one command next to a real, private systemd-journald and returns what
//! the journal recorded, parsed from `journalctl -o json`. It is not a journald mock and does
//! not touch the machine's journal: everything happens in a fresh mount namespace.
//!
//! How: `unshare --mount --propagation private` runs a shell script (the test process is
//! multithreaded and cannot unshare itself) that mounts tmpfs on `/run/systemd` and `/run/log`,
//! writes a journald.conf drop-in there (volatile storage, no rate limit, no kmsg, no
//! forwarding), starts `/lib/systemd/systemd-journald`, waits for its socket, runs the command,
//! then `journalctl --sync` and `journalctl -o json -D /run/log/journal` (only the private
//! runtime journal, never the host's `/var/log/journal`). The script is PID 1 of a new PID
//! namespace (`--pid --fork --kill-child --mount-proc`; a shell, never systemd): when it exits,
//! or the fixture kills `unshare` on timeout or drop, the kernel kills journald and anything
//! the command left behind. Each run has its own namespaces, so runs may go in parallel.
//! Needs root, util-linux (`unshare`), systemd (`systemd-journald`, `journalctl`,
//! `systemd-cat`) and coreutils (`stat`, `env`).
//!
//! ```text
//! let out = JournaldCommand::new(env!("CARGO_BIN_EXE_gocache-warden"))
//!     .args(["sweep", "--dry-run"])
//!     .env("INVOCATION_ID", "0123")
//!     .run()?;
//! let ours = out.entries_from("gocache-warden");
//! ```
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

/// One journal entry as `journalctl -o json` prints it (values are strings, or arrays when a
/// field repeats).
pub type Entry = Map<String, Value>;

/// Where the command's stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrTo {
    /// A file, returned as [`JournaldOutput::stderr`]; `JOURNAL_STREAM` is removed.
    /// (`INVOCATION_ID` is removed in every mode unless set with [`JournaldCommand::env`].)
    File,
    /// A file, with `JOURNAL_STREAM` set to that file's `dev:ino`, as if systemd had connected
    /// stderr to the journal: whatever the command writes there counts as double logging.
    FileAsJournalStream,
    /// A real journald stdout stream (via `systemd-cat -t STREAM_IDENTIFIER`), with
    /// `JOURNAL_STREAM` set to its `dev:ino`; lines land in the journal with
    /// `_TRANSPORT=stdout`. stdout still goes to a file. `env_remove("JOURNAL_STREAM")` keeps
    /// the stream but hides it from the command.
    JournalStream,
}

/// `SYSLOG_IDENTIFIER` of lines that arrive through [`StderrTo::JournalStream`].
pub const STREAM_IDENTIFIER: &str = "fixture-stderr-stream";

/// Builder for one run; see the module documentation.
#[derive(Debug, Clone)]
pub struct JournaldCommand {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    stderr: StderrTo,
    journald: bool,
    timeout: Duration,
}

/// What a run produced.
#[derive(Debug)]
pub struct JournaldOutput {
    /// Exit status of the command (not of the script around it).
    pub status: ExitStatus,
    pub stdout: String,
    /// Empty for [`StderrTo::JournalStream`].
    pub stderr: String,
    /// Every entry of the private journal, journald's own included; empty without journald.
    pub entries: Vec<Entry>,
    /// journald's own output and the script's stderr, for failure messages.
    pub diagnostics: String,
}

const SCRIPT: &str = r#"
set -eu
dir=$GWJ_DIR
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
if [ "$GWJ_JOURNALD" = 1 ]; then
    mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
    # Volatile storage keeps journald away from the host's /var/log/journal.
    cat >/run/systemd/journald.conf.d/90-fixture.conf <<'CONF'
[Journal]
Storage=volatile
RateLimitBurst=0
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
CONF
    SYSTEMD_LOG_TARGET=console "$GWJ_JOURNALD_BIN" </dev/null >"$dir/journald.log" 2>&1 &
    jpid=$!
    trap 'kill "$jpid" 2>/dev/null || true; wait "$jpid" 2>/dev/null || true' EXIT
    i=0
    while [ ! -S /run/systemd/journal/socket ] || [ ! -S /run/systemd/journal/stdout ]; do
        if ! kill -0 "$jpid" 2>/dev/null; then
            echo "systemd-journald exited before creating its sockets" >&2
            exit 91
        fi
        i=$((i + 1))
        if [ "$i" -gt 400 ]; then
            echo "systemd-journald did not create its sockets within 20s" >&2
            exit 92
        fi
        sleep 0.05
    done
fi
set +e
case "$GWJ_STDERR" in
    stream)
        systemd-cat -t "$GWJ_STREAM_ID" sh -c \
            'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM &&
             exec "$@" >"$GWJ_DIR/stdout"' \
            sh "$@" ;;
    *)
        "$@" >"$dir/stdout" 2>>"$dir/stderr" ;;
esac
echo "$?" >"$dir/status"
set -e
if [ "$GWJ_JOURNALD" = 1 ]; then
    journalctl --sync
    journalctl -o json --no-pager -D /run/log/journal >"$dir/journal.json"
fi
"#;

impl JournaldCommand {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            // A test run from a service (or CI) may inherit this; each run states its own.
            // JOURNAL_STREAM is handled per [`StderrTo`] mode.
            env_remove: vec!["INVOCATION_ID".into()],
            stderr: StderrTo::File,
            journald: true,
            timeout: Duration::from_secs(60),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable for the command only (journald does not see it); wins over the
    /// `JOURNAL_STREAM` a [`StderrTo`] mode sets.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_owned();
        self.env_remove.retain(|k| *k != key);
        self.env.push((key, value.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_owned());
        self
    }

    pub fn stderr(mut self, to: StderrTo) -> Self {
        self.stderr = to;
        self
    }

    /// Same private `/run/systemd` and `/run/log`, but no journald: the socket does not exist.
    pub fn without_journald(mut self) -> Self {
        self.journald = false;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn run(self) -> anyhow::Result<JournaldOutput> {
        preflight(self.stderr)?;
        let dir = tempfile::Builder::new()
            .prefix("journald-fixture-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let stderr_path = dir.path().join("stderr");
        std::fs::write(&stderr_path, b"")
            .with_context(|| format!("cannot create \"{}\"", stderr_path.display()))?;

        // The command runs through env(1) so that its variables do not reach journald.
        // env(1) takes every -u before any assignment.
        let mut remove: Vec<OsString> = ["GWJ_DIR", "GWJ_JOURNALD", "GWJ_JOURNALD_BIN"]
            .into_iter()
            .chain(["GWJ_STDERR", "GWJ_STREAM_ID"])
            .map(OsString::from)
            .collect();
        if self.stderr == StderrTo::File {
            remove.push("JOURNAL_STREAM".into());
        }
        remove.extend(self.env_remove.iter().cloned());
        let mut wrapped: Vec<OsString> = vec!["env".into()];
        for key in remove {
            wrapped.push("-u".into());
            wrapped.push(key);
        }
        if self.stderr == StderrTo::FileAsJournalStream {
            let meta = std::fs::metadata(&stderr_path)
                .with_context(|| format!("cannot stat \"{}\"", stderr_path.display()))?;
            wrapped.push(format!("JOURNAL_STREAM={}:{}", meta.dev(), meta.ino()).into());
        }
        for (key, value) in &self.env {
            let mut pair = key.clone();
            pair.push("=");
            pair.push(value);
            wrapped.push(pair);
        }
        wrapped.push(self.program.clone());
        wrapped.extend(self.args.iter().cloned());

        let script_stderr_path = dir.path().join("script.stderr");
        let script_stderr = std::fs::File::create(&script_stderr_path)
            .with_context(|| format!("cannot create \"{}\"", script_stderr_path.display()))?;
        let mut command = Command::new("unshare");
        command
            // A PID namespace (with its own /proc, so journald reads the right process
            // metadata) guarantees that nothing the run started survives it.
            .args([
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
            ])
            .args(["--mount-proc", "sh", "-c", SCRIPT, "sh"])
            .args(&wrapped)
            .env("GWJ_DIR", dir.path())
            .env("GWJ_JOURNALD", if self.journald { "1" } else { "0" })
            .env("GWJ_JOURNALD_BIN", journald_binary()?)
            .env(
                "GWJ_STDERR",
                match self.stderr {
                    StderrTo::JournalStream => "stream",
                    _ => "file",
                },
            )
            .env("GWJ_STREAM_ID", STREAM_IDENTIFIER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(script_stderr);
        let child = command.spawn().context("cannot run unshare")?;
        let script_status = ChildGuard { child: Some(child) }.wait(self.timeout)?;

        let read = |name: &str| -> String {
            std::fs::read_to_string(dir.path().join(name)).unwrap_or_default()
        };
        let diagnostics = format!(
            "script stderr:\n{}\njournald output:\n{}",
            read("script.stderr"),
            read("journald.log")
        );
        if !script_status.success() {
            bail!("journald fixture script failed with {script_status}\n{diagnostics}");
        }
        let code: i32 = read("status")
            .trim()
            .parse()
            .with_context(|| format!("fixture did not record an exit status\n{diagnostics}"))?;
        let mut entries = Vec::new();
        for (n, line) in read("journal.json").lines().enumerate() {
            let entry: Entry = serde_json::from_str(line)
                .with_context(|| format!("journalctl line {} is not a JSON object", n + 1))?;
            entries.push(entry);
        }
        Ok(JournaldOutput {
            // The shell reports "killed by signal N" as 128 + N.
            status: if code > 128 {
                ExitStatus::from_raw(code - 128)
            } else {
                ExitStatus::from_raw(code << 8)
            },
            stdout: read("stdout"),
            stderr: read("stderr"),
            entries,
            diagnostics,
        })
    }
}

impl JournaldOutput {
    /// Entries whose `SYSLOG_IDENTIFIER` is `identifier`.
    pub fn entries_from(&self, identifier: &str) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| field(e, "SYSLOG_IDENTIFIER") == Some(identifier))
            .collect()
    }
}

/// A single-valued string field of an entry.
pub fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

fn journald_binary() -> anyhow::Result<PathBuf> {
    [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .context(
        "systemd-journald not found in /lib/systemd or /usr/lib/systemd: \
             install the systemd package",
    )
}

/// Fails (never skips) with what to install when a prerequisite is missing.
fn preflight(stderr: StderrTo) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the journald fixture needs root (it mounts tmpfs in a private mount namespace)");
    }
    journald_binary()?;
    let mut tools = vec![
        ("unshare", "util-linux"),
        ("journalctl", "systemd"),
        ("stat", "coreutils"),
    ];
    if stderr == StderrTo::JournalStream {
        tools.push(("systemd-cat", "systemd"));
    }
    for (tool, package) in tools {
        if !on_path(tool) {
            bail!("\"{tool}\" is not on PATH: install the {package} package");
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(tool).is_file())
    })
}

/// Kills `unshare` unless the run ended by itself; `--kill-child` then takes the namespace's
/// init (the script) down, and the kernel kills every process left in the PID namespace.
struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .context("fixture child already reaped")?;
            if let Some(status) = child.try_wait().context("cannot wait for unshare")? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("journald fixture timed out after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
