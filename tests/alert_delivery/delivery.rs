//! Delivery: retries through errors and stalls, exactly once, directly and through the
//! relay; client errors not retried; a missing relay named; a full queue never blocks.

use super::*;
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
