//! The `exec` sink: runs a command (no shell) with the alert JSON on stdin, for sites
//! that page through `mail`, a ticket CLI, or their own script.
//!
//! The command gets `GOCACHE_WARDEN_ALERT_ID`, `_KIND` and `_STATUS` in its
//! environment for quick filtering. A non-zero exit or a timeout counts as a
//! retryable failure; the child is killed when it overruns. Not a general process
//! runner: output is only kept for the log line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Alert, AlertStatus, DeliveryError, Sink};

/// Runs `program args...` per alert.
#[derive(Debug, Clone)]
pub struct ExecSink {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

impl ExecSink {
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        timeout: Duration,
    ) -> ExecSink {
        ExecSink {
            name: name.into(),
            program: program.into(),
            args,
            timeout,
        }
    }
}

impl Sink for ExecSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, alert: &Alert) -> Result<(), DeliveryError> {
        let mut json = serde_json::to_vec(alert)
            .map_err(|e| DeliveryError::permanent(format!("cannot serialize alert: {e}")))?;
        json.push(b'\n');
        let status = match alert.status {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        };
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("GOCACHE_WARDEN_ALERT_ID", &alert.id)
            .env("GOCACHE_WARDEN_ALERT_KIND", alert.kind.as_str())
            .env("GOCACHE_WARDEN_ALERT_STATUS", status)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                DeliveryError::transient(format!("cannot run \"{}\": {e}", self.program.display()))
            })?;

        // Feed stdin and drain stderr on helper threads so a child that ignores stdin
        // or writes a lot cannot deadlock us; the timeout below bounds everything.
        if let Some(mut stdin) = child.stdin.take() {
            std::thread::spawn(move || {
                let _ = stdin.write_all(&json);
            });
        }
        let (err_tx, err_rx) = mpsc::channel();
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if kept.len() < 2048 {
                        kept.extend_from_slice(&buf[..n.min(2048 - kept.len())]);
                    }
                }
                let _ = err_tx.send(kept);
            });
        }

        let deadline = Instant::now() + self.timeout;
        let exit = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    return Err(DeliveryError::transient(format!(
                        "cannot wait for the command: {e}"
                    )));
                }
            }
        };
        let Some(exit) = exit else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DeliveryError::transient(format!(
                "command \"{}\" timed out after {:?} and was killed",
                self.program.display(),
                self.timeout
            )));
        };
        if exit.success() {
            return Ok(());
        }
        // A grandchild may hold stderr open; do not wait for it for long.
        let stderr = err_rx
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr);
        Err(DeliveryError::transient(format!(
            "command \"{}\" failed ({exit}): {}",
            self.program.display(),
            stderr.trim()
        )))
    }
}
