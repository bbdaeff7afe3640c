//! Alert delivery against real local HTTP servers: retries through 500, 429 with
//! Retry-After and a stalled server, exactly-once delivery, a non-blocking enqueue,
//! logs without the secret URL; the Slack and JSON payloads checked field by field
//! against a real cache root whose `ls`/`getfacl` views are compared with the tools.

#[path = "../support/mod.rs"]
mod support;

// Delivery (retries, relay, queue) and payloads (Slack, JSON, hand-over on reload); the
// scripted server, captured logs and relay socket they share are this file.
mod delivery;
mod payloads;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gocache_warden::alert::{
    Alert, AlertKind, AlertStatus, AlertTracker, CacheObservation, DeliveryError, Dispatcher,
    Observation, RetryPolicy, SecretUrl, Sink, Thresholds, UnitRef, WebhookFormat, WebhookSink,
    describe_root, evaluate, slack_payload,
};
use gocache_warden::metrics::{CacheKind, encode_text};
use prometheus::Registry;
use support::observe::*;

// ---- captured tracing output (global: the workers log from their own threads) ----

#[derive(Clone)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::util::SubscriberInitExt;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        // DEBUG for every target, and `log` records (ureq's own logging) bridged in:
        // the most verbose setting an operator would plausibly use.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Buf(b.clone()))
            .finish()
            .try_init()
            .expect("cannot install the test subscriber");
        buf
    })
    .clone()
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

// ---- a scripted HTTP server ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Reply {
    Fail500,
    TooMany,
    Hang,
    Ok,
    NotFound,
}

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    path: String,
    body: String,
    reply: Reply,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let path = first.split(' ').nth(1)?.to_string();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((path, String::from_utf8_lossy(&body).into_owned()))
}

/// Answers requests in order from `script`, then `Ok` forever. Held (hung)
/// connections stay open until the process ends the test thread.
fn server(script: Vec<Reply>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut conn) = conn else { break };
            let Some((path, body)) = read_request(&mut conn) else {
                continue;
            };
            let reply = script.get(n).copied().unwrap_or(Reply::Ok);
            s2.lock().unwrap().push(Seen {
                at: Instant::now(),
                path,
                body,
                reply,
            });
            let resp = match reply {
                Reply::Fail500 => {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!"
                }
                Reply::TooMany => {
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow"
                }
                Reply::NotFound => {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nno_service"
                }
                Reply::Ok => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                Reply::Hang => {
                    held.push(conn);
                    continue;
                }
            };
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    Server { addr, seen }
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let end = Instant::now() + within;
        while self.seen().len() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.seen()
    }
}

/// "Returns at once": far below the 500 ms stall, with room for a busy CI machine
/// descheduling the test thread.
const ENQUEUE_BUDGET: Duration = Duration::from_millis(10);

const SECRET: &str = "SECRETxyz123";

fn secret_url(addr: SocketAddr) -> SecretUrl {
    SecretUrl::new(format!("http://{addr}/services/T0000/B0000/{SECRET}")).unwrap()
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(5),
    }
}

fn test_alert(id: &str) -> Alert {
    let mut obs = Observation {
        host: "build01".into(),
        ..Observation::default()
    };
    obs.caches.push(CacheObservation {
        snapshot: snapshot(&format!("/srv/{id}"), CacheKind::Build, 2),
        last_sweep: None,
        root: None,
        units: vec![],
    });
    evaluate(&obs, &Thresholds::default())
        .into_iter()
        .find(|a| a.kind == AlertKind::OverLimit)
        .unwrap()
}

fn counter(reg: &Registry, sink: &str, outcome: &str) -> Option<f64> {
    let parsed = parse_exposition(&encode_text(reg).unwrap()).unwrap();
    value(
        &parsed,
        "gocache_warden_alert_notifications_total",
        &[
            &format!("sink=\"{sink}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
}

/// A relay as `gocache-warden-relay.socket` (`Accept=yes`) runs it: the real binary,
/// one process per connection, the connection as its standard input and output.
struct RelaySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// Everything the relay processes wrote to stderr (their journal, under systemd).
    stderr: Arc<Mutex<Vec<u8>>>,
    /// How many connections it served.
    served: Arc<Mutex<usize>>,
}

fn relay_socket() -> RelaySocket {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.sock");
    let l = UnixListener::bind(&path).unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(Mutex::new(0));
    let (e2, s2) = (stderr.clone(), served.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let input = std::os::fd::OwnedFd::from(conn.try_clone().unwrap());
            let out = Command::new(env!("CARGO_BIN_EXE_gocache-warden"))
                .args(["alert", "relay"])
                .stdin(input)
                .stdout(std::os::fd::OwnedFd::from(conn))
                .stderr(std::process::Stdio::piped())
                .output()
                .unwrap();
            assert!(out.status.success(), "relay failed: {out:?}");
            e2.lock().unwrap().extend_from_slice(&out.stderr);
            *s2.lock().unwrap() += 1;
        }
    });
    RelaySocket {
        _dir: dir,
        path,
        stderr,
        served,
    }
}

impl RelaySocket {
    /// The number of relay processes that have exited, once it reaches `n` (the agent
    /// has its reply before the process is reaped) or after a few seconds.
    fn wait_served(&self, n: usize) -> usize {
        let end = Instant::now() + Duration::from_secs(5);
        while *self.served.lock().unwrap() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        *self.served.lock().unwrap()
    }
}
