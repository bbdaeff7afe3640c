//! Shared helpers for the observability integration tests: sample data and the
//! external tools they need (failing with an install hint when one is missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use gocache_warden::metrics::{
    CacheKind, CacheSnapshot, EvictReason, Evicted, OwnerUsage, SweepOutcome,
};

pub const GIB: u64 = 1 << 30;

/// Path of a required tool, or a panic saying which package provides it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is required by this test: install it with `apt-get install {package}`");
}

pub fn promtool() -> PathBuf {
    tool("promtool", "prometheus")
}

/// Runs a command and returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn snapshot(path: &str, kind: CacheKind, users: usize) -> CacheSnapshot {
    CacheSnapshot {
        path: PathBuf::from(path),
        user: None,
        via: None,
        kind,
        allocated_bytes: 12 * GIB,
        apparent_bytes: 11 * GIB,
        files: 12_345,
        dirs: 257,
        inspected_entries: 12_602,
        fs_inodes_used: 400_000,
        fs_inodes_total: 1_000_000,
        fs_free_bytes: 40 * GIB,
        fs_size_bytes: 100 * GIB,
        limit_bytes: Some(10 * GIB),
        oldest_age_seconds: Some(86_400.5),
        bytes_by_owner: (0..users)
            .map(|i| OwnerUsage {
                uid: 1000 + i as u32,
                name: format!("user{i}"),
                bytes: (i as u64 + 1) * 1_000_000,
            })
            .collect(),
        violations: BTreeMap::from([("mode".to_string(), 2), ("acl".to_string(), 1)]),
        over_limit: true,
        held_over: Some("2.0 GiB used in the last 1d 0h (min_age)".to_string()),
        held_bytes: BTreeMap::from([("recent".to_string(), 2 * GIB)]),
    }
}

pub fn sweep(path: &str, kind: CacheKind, success: bool) -> SweepOutcome {
    SweepOutcome {
        path: PathBuf::from(path),
        kind,
        evicted: BTreeMap::from([
            (
                EvictReason::Age,
                Evicted {
                    bytes: 1_000,
                    entries: 2,
                },
            ),
            (
                EvictReason::Size,
                Evicted {
                    bytes: 3 * GIB,
                    entries: 900,
                },
            ),
        ]),
        fixes: BTreeMap::from([("mode".to_string(), 4)]),
        errors: BTreeMap::from([("io".to_string(), u64::from(!success))]),
        duration: Duration::from_millis(1_500),
        success,
        finished_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

/// Parses a text exposition loosely but completely: every line is a comment or
/// `name{labels} value`, and the text ends with a newline. Returns sample lines by
/// metric name.
pub fn parse_exposition(text: &str) -> Result<BTreeMap<String, Vec<(String, f64)>>, String> {
    if !text.ends_with('\n') {
        return Err("text does not end with a newline".into());
    }
    let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            if !(line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
                return Err(format!("bad comment {line:?}"));
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value in {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let labels = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels in {line:?}"))?;
                (n, labels.to_string())
            }
            None => (series, String::new()),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("bad metric name in {line:?}"));
        }
        out.entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    Ok(out)
}

/// The value of the one sample of `name` whose labels contain all of `want`.
pub fn value(
    parsed: &BTreeMap<String, Vec<(String, f64)>>,
    name: &str,
    want: &[&str],
) -> Option<f64> {
    let hits: Vec<f64> = parsed
        .get(name)?
        .iter()
        .filter(|(labels, _)| want.iter().all(|w| labels.split(',').any(|l| l == *w)))
        .map(|(_, v)| *v)
        .collect();
    match hits.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// A webhook receiver: every POSTed body, parsed, until `stop`.
pub fn receiver(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = got.clone();
    use std::io::{BufRead, Read, Write};
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
            let (mut len, mut line) = (0usize, String::new());
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                out.lock().expect("lock").push(v);
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}
