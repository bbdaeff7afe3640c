//! The `/metrics` listener: a real scrape over loopback (values change without any
//! sleep), error paths, and systemd socket activation through the real
//! `systemd-socket-activate` tool.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use gocache_warden::metrics::http::{ListenerOrigin, listener, serve};
use gocache_warden::metrics::{CacheKind, Metrics, MetricsConfig};
use prometheus::Registry;
use support::observe::*;

/// Sends a raw request and returns the whole response.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn get(addr: SocketAddr, path: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"),
    )
}

/// Runs `serve` on its own current-thread runtime; returns the address and a stopper.
fn start(
    reg: Registry,
    l: TcpListener,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(serve(l, reg, async {
            let _ = rx.await;
        }))
        .unwrap();
    });
    (addr, tx, h)
}

#[test]
fn scrape_sees_updates_immediately_and_rejects_other_requests() {
    let reg = Registry::new();
    let m = Metrics::new(&reg, MetricsConfig::default()).unwrap();
    m.set_caches(&[(PathBuf::from("/srv/gocache"), CacheKind::Build)]);
    let (l, origin) = listener("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_eq!(origin, ListenerOrigin::Bound);
    let (addr, stop, h) = start(reg, l);

    let r = get(addr, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{r}"
    );
    let body = r.split_once("\r\n\r\n").unwrap().1;
    let len: usize = r
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    let parsed = parse_exposition(body).unwrap();
    assert_eq!(
        value(&parsed, "gocache_warden_units_missing_gocache", &[]),
        Some(0.0)
    );

    m.set_units_missing_gocache(7);
    m.observe_snapshot(&snapshot("/srv/gocache", CacheKind::Build, 1));
    let body = get(addr, "/metrics?x=1")
        .split_once("\r\n\r\n")
        .unwrap()
        .1
        .to_string();
    let parsed = parse_exposition(&body).unwrap();
    assert_eq!(
        value(&parsed, "gocache_warden_units_missing_gocache", &[]),
        Some(7.0)
    );
    assert_eq!(
        value(
            &parsed,
            "gocache_warden_cache_allocated_bytes",
            &["cache=\"/srv/gocache\""]
        ),
        Some(12.0 * GIB as f64)
    );

    let head = raw(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    let post = raw(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
        "{post}"
    );
    assert!(raw(addr, "garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    // An oversized head (no blank line ever comes) is cut off instead of buffered for ever:
    // the server closes the connection without an answer, well before its 10 s timeout for
    // a slow head would, so a read that times out here is a failure, not a pass.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = std::time::Instant::now();
    // The server may close (and reset) while the head is still being written.
    let _ =
        s.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000)).as_bytes());
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the oversized head was not cut off (after {:?}): {e}",
            t0.elapsed()
        ),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        t0.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&rest)
    );

    stop.send(()).unwrap();
    h.join().unwrap();
    // Closed: the port can be bound again, or (if a parallel test took the freed port)
    // whatever answers there is not our exporter.
    let ours = || -> bool {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("gocache_warden")
    };
    assert!(
        std::net::TcpListener::bind(addr).is_ok() || !ours(),
        "listener still open after shutdown"
    );
}

const CHILD_ENV: &str = "GOCACHE_WARDEN_TEST_SOCKET_CHILD";

/// Runs twice: as the test (starts `systemd-socket-activate` with this test binary as
/// the service) and, inside that, as the service serving on the passed fd.
#[test]
fn socket_activation_serves_on_the_passed_fd() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let (l, origin) = listener("127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(origin, ListenerOrigin::SocketActivation);
        let reg = Registry::new();
        Metrics::new(&reg, MetricsConfig::default())
            .unwrap()
            .set_units_missing_gocache(42);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { serve(l, reg, tokio::time::sleep(Duration::from_secs(60))).await })
            .unwrap();
        return;
    }

    let tool = tool("systemd-socket-activate", "systemd");
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut child = Command::new(tool)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=metrics")
        .arg("-E")
        .arg(format!("{CHILD_ENV}=1"))
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "socket_activation_serves_on_the_passed_fd",
            "--test-threads=1",
            "--nocapture",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tool announces the socket before exec'ing the service.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!("127.0.0.1:{port}")),
        "unexpected announcement: {line}"
    );
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
        eprint!("{sink}");
    });

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = get(addr, "/metrics");
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200 OK"),
        "child ({status}) answered: {r}"
    );
    let parsed = parse_exposition(r.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        value(&parsed, "gocache_warden_units_missing_gocache", &[]),
        Some(42.0)
    );
}
