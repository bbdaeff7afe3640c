//! Alert delivery against real local HTTP servers: retries through 500, 429 with
//! Retry-After and a stalled server, exactly-once delivery, a non-blocking enqueue,
//! logs without the secret URL; the Slack and JSON payloads checked field by field
//! against a real cache root whose `ls`/`getfacl` views are compared with the tools.

mod observe_support;

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
use observe_support::*;
use prometheus::Registry;

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

#[test]
fn webhook_retries_through_errors_and_delivers_exactly_once() {
    retries_through_errors_and_delivers_exactly_once("slack-flaky", None);
}

/// The same sequence of server answers through the relay: every outcome (status,
/// Retry-After, timeout) reaches the agent's dispatcher as it would directly.
#[test]
fn webhook_through_the_relay_retries_and_delivers_exactly_once() {
    let relay = relay_socket();
    retries_through_errors_and_delivers_exactly_once("slack-relayed", Some(&relay));
    assert_eq!(relay.wait_served(5), 5, "one relay process per attempt");
    let stderr = String::from_utf8_lossy(&relay.stderr.lock().unwrap()).into_owned();
    assert!(
        stderr.contains("HTTP 500"),
        "the relay logs a failed POST: {stderr}"
    );
    assert!(
        !stderr.contains(SECRET),
        "the relay logged the URL: {stderr}"
    );
}

fn retries_through_errors_and_delivers_exactly_once(name: &str, relay: Option<&RelaySocket>) {
    let logs = logs();
    let srv = server(vec![Reply::Fail500, Reply::TooMany, Reply::Hang]);
    let reg = Registry::new();
    let sink = WebhookSink::new(
        name,
        WebhookFormat::Slack,
        secret_url(srv.addr),
        Duration::from_millis(500),
        relay.map(|r| r.path.as_path()),
    );
    let d = Dispatcher::start(vec![Box::new(sink)], fast_policy(), 16, Some(&reg)).unwrap();

    let a = test_alert("first");
    let t = Instant::now();
    assert_eq!(d.enqueue(a.clone()), 1);
    let first_enqueue = t.elapsed();

    // While the worker waits on the stalled third request, enqueue must not block.
    let seen = srv.wait_for(3, Duration::from_secs(10));
    assert_eq!(seen.len(), 3, "{seen:?}");
    let b = test_alert("second");
    let t = Instant::now();
    assert_eq!(d.enqueue(b.clone()), 1);
    let stalled_enqueue = t.elapsed();
    assert!(
        srv.seen().len() == 3,
        "server answered during the measurement"
    );
    assert!(
        first_enqueue < ENQUEUE_BUDGET,
        "enqueue took {first_enqueue:?}"
    );
    assert!(
        stalled_enqueue < ENQUEUE_BUDGET,
        "enqueue took {stalled_enqueue:?} while the server stalled"
    );

    let seen = srv.wait_for(5, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(800)); // no late duplicates may follow
    let seen_after = srv.seen();
    assert_eq!(seen_after.len(), 5, "{seen_after:?}");
    let replies: Vec<Reply> = seen.iter().map(|s| s.reply).collect();
    assert_eq!(
        replies,
        [
            Reply::Fail500,
            Reply::TooMany,
            Reply::Hang,
            Reply::Ok,
            Reply::Ok
        ]
    );
    let delivered: Vec<String> = seen
        .iter()
        .filter(|s| s.reply == Reply::Ok)
        .map(|s| serde_json::from_str::<serde_json::Value>(&s.body).unwrap()["blocks"].to_string())
        .collect();
    assert_eq!(
        delivered
            .iter()
            .filter(|b| b.contains("/srv/first"))
            .count(),
        1,
        "first alert not delivered exactly once"
    );
    assert_eq!(
        delivered
            .iter()
            .filter(|b| b.contains("/srv/second"))
            .count(),
        1,
        "second alert not delivered exactly once"
    );
    for s in &seen[..4] {
        assert_eq!(
            s.body,
            slack_payload(&a).to_string(),
            "retries must resend the same payload"
        );
        assert_eq!(s.path, format!("/services/T0000/B0000/{SECRET}"));
    }
    let waited = seen[2].at - seen[1].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 not honoured, retried after {waited:?}"
    );
    assert!(
        seen[3].at - seen[2].at >= Duration::from_millis(500),
        "the stalled request did not run into the timeout"
    );

    assert!(d.shutdown(Duration::from_secs(5)));
    assert_eq!(counter(&reg, name, "delivered"), Some(2.0));
    assert_eq!(counter(&reg, name, "failed"), Some(0.0));

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("will retry") && l.contains(&format!("sink=\"{name}\"")))
        .collect();
    eprintln!("enqueue took {first_enqueue:?}, {stalled_enqueue:?} during the stall");
    for r in &retries {
        eprintln!("{r}");
    }
    assert_eq!(retries.len(), 3, "{text}");
    assert!(
        retries[0].contains("attempt=1") && retries[0].contains("status=500"),
        "{}",
        retries[0]
    );
    assert!(
        retries[1].contains("attempt=2") && retries[1].contains("status=429"),
        "{}",
        retries[1]
    );
    assert!(
        retries[2].contains("attempt=3") && !retries[2].contains("status="),
        "{}",
        retries[2]
    );
    // Through the relay ureq runs in the relay's process (its stderr is checked there).
    assert!(
        relay.is_some() || text.contains("ureq"),
        "ureq's own log records were not captured, so the check below proves little"
    );
    assert!(
        !text.contains(SECRET),
        "the webhook URL leaked into the logs:\n{text}"
    );
    assert!(
        !text.contains("/services/T0000"),
        "the webhook URL path leaked into the logs:\n{text}"
    );
}

#[test]
fn client_errors_are_not_retried() {
    client_errors_are_not_retried_by("json-404", None);
}

#[test]
fn client_errors_through_the_relay_are_not_retried() {
    let relay = relay_socket();
    client_errors_are_not_retried_by("json-404-relayed", Some(&relay));
    assert_eq!(relay.wait_served(1), 1);
}

/// With no relay listening, a delivery is retried (the relay may be restarting) and
/// the log names the socket.
#[test]
fn a_missing_relay_is_retried_and_named() {
    let _ = logs();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let reg = Registry::new();
    let sink = WebhookSink::new(
        "json-norelay",
        WebhookFormat::Json,
        SecretUrl::new(format!("http://127.0.0.1:9/{SECRET}")).unwrap(),
        Duration::from_secs(1),
        Some(&socket),
    );
    let policy = RetryPolicy {
        max_attempts: 2,
        ..fast_policy()
    };
    let d = Dispatcher::start(vec![Box::new(sink)], policy, 4, Some(&reg)).unwrap();
    d.enqueue(test_alert("norelay"));
    // Shutting down abandons pending retries: wait for the worker to give up first.
    let end = Instant::now() + Duration::from_secs(10);
    while !log_text()
        .lines()
        .any(|l| l.contains("sink=\"json-norelay\"") && l.contains("giving up"))
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.shutdown(Duration::from_secs(10)));
    assert_eq!(counter(&reg, "json-norelay", "failed"), Some(1.0));
    let text = log_text();
    let tried: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sink=\"json-norelay\""))
        .collect();
    assert_eq!(tried.len(), 2, "{text}");
    assert!(
        tried[0].contains("will retry") && tried[0].contains("absent.sock"),
        "{}",
        tried[0]
    );
    assert!(!text.contains(SECRET));
}

fn client_errors_are_not_retried_by(name: &str, relay: Option<&RelaySocket>) {
    let _ = logs();
    let srv = server(vec![Reply::NotFound]);
    let reg = Registry::new();
    let sink = WebhookSink::new(
        name,
        WebhookFormat::Json,
        secret_url(srv.addr),
        Duration::from_secs(2),
        relay.map(|r| r.path.as_path()),
    );
    let d = Dispatcher::start(vec![Box::new(sink)], fast_policy(), 4, Some(&reg)).unwrap();
    d.enqueue(test_alert("gone"));
    srv.wait_for(1, Duration::from_secs(5));
    assert!(d.shutdown(Duration::from_secs(5)));
    assert_eq!(srv.seen().len(), 1);
    assert_eq!(counter(&reg, name, "failed"), Some(1.0));
    let text = log_text();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("sink=\"{name}\"")) && l.contains("permanently"))
        .expect("no failure log");
    assert!(
        line.contains("status=404") && line.contains("no_service"),
        "{line}"
    );
    assert!(!text.contains(SECRET));
}

/// A sink that blocks until released, to fill the queue.
struct Blocking(Arc<Mutex<()>>);
impl Sink for Blocking {
    fn name(&self) -> &str {
        "blocking"
    }
    fn deliver(&mut self, _: &Alert) -> Result<(), DeliveryError> {
        drop(self.0.lock().unwrap());
        Ok(())
    }
}

#[test]
fn a_full_queue_drops_instead_of_blocking() {
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let reg = Registry::new();
    let d = Dispatcher::start(
        vec![Box::new(Blocking(gate.clone()))],
        fast_policy(),
        1,
        Some(&reg),
    )
    .unwrap();
    assert_eq!(d.enqueue(test_alert("q1")), 1);
    // Give the worker the first alert so exactly one slot remains.
    let end = Instant::now() + Duration::from_secs(5);
    let mut accepted = 0;
    while Instant::now() < end {
        let t = Instant::now();
        accepted = d.enqueue(test_alert("q2"));
        assert!(t.elapsed() < ENQUEUE_BUDGET);
        if accepted == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(accepted, 1);
    let t = Instant::now();
    assert_eq!(
        d.enqueue(test_alert("q3")),
        0,
        "a full queue accepted an alert"
    );
    assert!(t.elapsed() < ENQUEUE_BUDGET);
    drop(held);
    assert!(d.shutdown(Duration::from_secs(5)));
    assert!(counter(&reg, "blocking", "dropped").unwrap() >= 1.0);
}

// ---- payloads built from a real cache root ----

/// A setgid shared-cache root owned by nobody:nogroup with an extended and default ACL
/// whose mask limits a grant (so getfacl prints `#effective:`).
fn shared_root() -> tempfile::TempDir {
    let setfacl = tool("setfacl", "acl");
    let dir = tempfile::Builder::new()
        .prefix("gocache-root-")
        .tempdir()
        .unwrap();
    let p = dir.path();
    std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let (ok, out, err) = run(Command::new(&setfacl)
        .args([
            "-m",
            "u:daemon:rwx,g::rwx,m::r-x,d:u::rwx,d:g::rwx,d:u:daemon:rwx,d:m::rwx,d:o::---",
        ])
        .arg(p));
    assert!(ok, "setfacl: {out}{err}");
    dir
}

fn root_alert(root: &Path) -> Alert {
    let desc = describe_root(root).unwrap();
    let mut snap = snapshot(root.to_str().unwrap(), CacheKind::Build, 3);
    snap.violations.clear();
    let obs = Observation {
        host: "build01".into(),
        caches: vec![CacheObservation {
            snapshot: snap,
            last_sweep: Some(sweep(root.to_str().unwrap(), CacheKind::Build, true)),
            root: Some(desc),
            units: vec![UnitRef {
                unit: "ci-runner.service".into(),
                uid: 65534,
                user: "nobody".into(),
            }],
        }],
        units_missing_gocache: vec![],
    };
    let mut tracker = AlertTracker::new(Duration::from_secs(3600));
    let sent = tracker.update(
        evaluate(&obs, &Thresholds::default()),
        std::time::SystemTime::now(),
    );
    sent.into_iter()
        .find(|a| a.kind == AlertKind::OverLimit)
        .unwrap()
}

#[test]
fn root_description_matches_ls_and_getfacl() {
    let dir = shared_root();
    let p = dir.path();
    let desc = describe_root(p).unwrap();
    let ls = tool("ls", "coreutils");
    let (ok, out, err) = run(Command::new(ls)
        .args(["-ldL", "--time-style=long-iso"])
        .arg(p));
    assert!(ok, "{err}");
    assert_eq!(desc.ls_line, out.trim_end());
    assert!(desc.ls_line.starts_with("drwxr-s---+ "), "{}", desc.ls_line);
    let (ok, out, err) = run(Command::new(tool("getfacl", "acl")).arg("-p").arg(p));
    assert!(ok, "{err}");
    assert_eq!(desc.acl_text, out);
    assert!(
        desc.acl_text.contains("#effective:r-x"),
        "{}",
        desc.acl_text
    );
    assert_eq!(
        (desc.uid, desc.user.as_str(), desc.group.as_str(), desc.mode),
        (65534, "nobody", "nogroup", 0o2750)
    );

    // A plain directory: no `+`, no flags line, no default ACL.
    let plain = tempfile::tempdir().unwrap();
    let d = describe_root(plain.path()).unwrap();
    let (_, out, _) = run(Command::new(tool("ls", "coreutils"))
        .args(["-ldL", "--time-style=long-iso"])
        .arg(plain.path()));
    assert_eq!(d.ls_line, out.trim_end());
    let (_, out, _) = run(Command::new(tool("getfacl", "acl"))
        .arg("-p")
        .arg(plain.path()));
    assert_eq!(d.acl_text, out);
}

#[test]
fn slack_payload_carries_every_field() {
    let dir = shared_root();
    let path = dir.path().to_str().unwrap().to_string();
    let a = root_alert(dir.path());
    let root = a.root.clone().unwrap();
    let p = slack_payload(&a);

    let text = p["text"].as_str().unwrap();
    assert!(
        text.starts_with("[FIRING] Go cache over its size limit on build01: "),
        "{text}"
    );
    let blocks = p["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(
        blocks[0]["text"]["text"],
        "FIRING: Go cache over its size limit"
    );
    assert!(
        blocks[1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "{path} is over its size limit: 12.0 GiB of 10.0 GiB (120%)"
            ))
    );
    let fields: Vec<&str> = blocks[2]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(fields[0], "*Host*\nbuild01");
    assert_eq!(fields[1], format!("*Cache*\n`{path}` (build)"));
    assert_eq!(fields[2], "*User*\nnobody (uid 65534)");
    assert_eq!(fields[3], "*Size / limit*\n12.0 GiB / 10.0 GiB (120%)");
    assert!(fields[4].starts_with("*Since*\n20"), "{}", fields[4]);
    assert_eq!(fields.len(), 5, "{fields:?}");
    let section = |title: &str| {
        blocks
            .iter()
            .filter_map(|b| b["text"]["text"].as_str())
            .find(|t| t.starts_with(&format!("*{title}*\n")))
            .unwrap_or_else(|| panic!("no {title} block in {p:#}"))
            .to_string()
    };
    assert_eq!(
        section("Cache root"),
        format!("*Cache root*\n```{}```", root.ls_line)
    );
    assert!(
        root.ls_line.starts_with("drwxr-s---+ ") && root.ls_line.contains(" nobody nogroup "),
        "{}",
        root.ls_line
    );
    let acl = section("ACL");
    assert_eq!(acl, format!("*ACL*\n```{}```", root.acl_text.trim_end()));
    for line in [
        &format!("# file: {path}"),
        "# owner: nobody",
        "# flags: -s-",
        "user:daemon:rwx",
        "#effective:r-x",
        "default:user:daemon:rwx",
        "default:mask::rwx",
    ] {
        assert!(acl.contains(line), "ACL block lacks {line:?}: {acl}");
    }
    assert!(section("Top users").contains("• user2 (uid 1002): 2.9 MiB"));
    assert_eq!(
        section("Units"),
        "*Units*\n• `ci-runner.service` (nobody, uid 65534)"
    );
    let did = section("What the agent did");
    assert!(
        did.contains("evicted 3221225472 bytes in 900 entries by size")
            && did.contains("fixed mode on 4 paths"),
        "{did}"
    );
    let context = blocks.last().unwrap();
    assert_eq!(context["type"], "context");
    assert!(
        context["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("over_limit:{path}"))
    );

    let mut resolved = a.clone();
    resolved.status = AlertStatus::Resolved;
    let r = slack_payload(&resolved);
    assert_eq!(
        r["blocks"][0]["text"]["text"],
        "RESOLVED: Go cache over its size limit"
    );
}

#[test]
fn json_webhook_posts_the_alert_document() {
    let _ = logs();
    let dir = shared_root();
    let a = root_alert(dir.path());
    let srv = server(vec![]);
    let sink = WebhookSink::new(
        "json",
        WebhookFormat::Json,
        secret_url(srv.addr),
        Duration::from_secs(2),
        None,
    );
    let d = Dispatcher::start(vec![Box::new(sink)], fast_policy(), 4, None).unwrap();
    d.enqueue(a.clone());
    let seen = srv.wait_for(1, Duration::from_secs(5));
    assert!(d.shutdown(Duration::from_secs(5)));
    let v: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(v["kind"], "over_limit");
    assert_eq!(v["status"], "firing");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["host"], "build01");
    assert_eq!(v["cache"], dir.path().to_str().unwrap());
    assert_eq!(v["cache_kind"], "build");
    assert_eq!(v["uid"], 65534);
    assert_eq!(v["user"], "nobody");
    assert_eq!(v["size_bytes"], 12 * GIB);
    assert_eq!(v["limit_bytes"], 10 * GIB);
    assert_eq!(
        v["root"]["ls_line"],
        a.root.as_ref().unwrap().ls_line.as_str()
    );
    assert_eq!(
        v["root"]["acl_text"],
        a.root.as_ref().unwrap().acl_text.as_str()
    );
    assert_eq!(v["units"][0]["unit"], "ci-runner.service");
    assert_eq!(v["actions"][0], "evicted 1000 bytes in 2 entries by age");
    assert_eq!(v["id"], format!("over_limit:{}", dir.path().display()));
}

/// Stopping a dispatcher (a reload that changes the sinks) hands back what it had not
/// delivered — an alert waiting between retries and one still queued behind it — with the
/// sink's name, and the replacement delivers both.
#[test]
fn undelivered_alerts_survive_a_dispatcher_replacement() {
    let _ = logs();
    let old_srv = server(vec![Reply::Fail500]);
    let slow_retry = RetryPolicy {
        initial_backoff: Duration::from_secs(30),
        ..fast_policy()
    };
    let sink = |addr| {
        WebhookSink::new(
            "handover",
            WebhookFormat::Json,
            secret_url(addr),
            Duration::from_secs(2),
            None,
        )
    };
    let d = Dispatcher::start(vec![Box::new(sink(old_srv.addr))], slow_retry, 4, None).unwrap();
    d.enqueue(test_alert("retrying"));
    d.enqueue(test_alert("queued"));
    assert_eq!(old_srv.wait_for(1, Duration::from_secs(10)).len(), 1);
    let (ended, left) = d.stop_and_take(Duration::from_secs(5));
    assert!(ended, "the worker waiting in its backoff did not end");
    let ids: Vec<&str> = left
        .iter()
        .map(|(s, a)| {
            assert_eq!(s, "handover");
            a.id.as_str()
        })
        .collect();
    assert_eq!(ids, ["over_limit:/srv/retrying", "over_limit:/srv/queued"]);

    let new_srv = server(vec![]);
    let d = Dispatcher::start(vec![Box::new(sink(new_srv.addr))], fast_policy(), 4, None).unwrap();
    for (s, a) in left {
        assert!(d.enqueue_to(&s, a));
    }
    let seen = new_srv.wait_for(2, Duration::from_secs(10));
    assert!(d.shutdown(Duration::from_secs(5)));
    let paths: Vec<bool> = seen
        .iter()
        .map(|s| s.body.contains("/srv/retrying") || s.body.contains("/srv/queued"))
        .collect();
    assert_eq!(paths, [true, true], "{seen:?}");
    assert_eq!(old_srv.seen().len(), 1, "the old server was tried again");
}
