//! Webhook delivery through a relay, so that the system agent needs no network.
//!
//! The system agent runs as root with the capabilities to change any file; giving that
//! process the network as well would put an HTTP and TLS stack, and every answer a remote
//! server sends, next to those capabilities. Instead its unit has `PrivateNetwork=yes` and
//! hands each webhook request to `gocache-warden-relay.socket` (an `AF_UNIX` socket only
//! root may connect to). systemd starts one `gocache-warden-relay@.service` per connection
//! (`Accept=yes`): a dynamic user with no capabilities and no view of the caches, whose
//! standard input and output are the connection. It reads one request, makes the POST
//! with the same client and classification as a direct delivery, writes one reply, exits.
//!
//! The protocol is one JSON object each way, bounded in size; the agent closes its
//! sending side after the request, and the relay after the reply. Retries stay with the
//! agent's dispatcher, which sees the relay's reply exactly as it would see the HTTP
//! answer (status, `Retry-After`, whether retrying is worth it).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::DeliveryError;
use super::webhook::{SecretUrl, http_agent, post};

/// The socket the shipped units use (`gocache-warden-relay.socket`).
pub const DEFAULT_SOCKET: &str = "/run/gocache-warden-relay.sock";

/// The largest request the relay reads: a Slack message is cut to well under this.
const MAX_REQUEST: u64 = 1 << 20;
/// The largest reply the agent reads: a status and a 200-character reason.
const MAX_REPLY: u64 = 64 << 10;
/// The longest request timeout the relay honours, whatever a request says.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Added to the request's own timeout while the agent waits for the reply: the relay's
/// start (one process per request) and DNS.
const RELAY_SLACK: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    url: String,
    body: String,
    timeout_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    retryable: bool,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    retry_after_secs: Option<u64>,
    #[serde(default)]
    reason: String,
}

impl Reply {
    fn from_result(r: std::result::Result<(), DeliveryError>) -> Reply {
        match r {
            Ok(()) => Reply {
                ok: true,
                retryable: false,
                status: None,
                retry_after_secs: None,
                reason: String::new(),
            },
            Err(e) => Reply {
                ok: false,
                retryable: e.retryable,
                status: e.status,
                retry_after_secs: e.retry_after.map(|d| d.as_secs()),
                reason: e.reason,
            },
        }
    }

    fn into_result(self) -> std::result::Result<(), DeliveryError> {
        if self.ok {
            return Ok(());
        }
        Err(DeliveryError {
            retryable: self.retryable,
            status: self.status,
            retry_after: self.retry_after_secs.map(Duration::from_secs),
            reason: self.reason,
        })
    }
}

/// The agent's side: one POST through the relay at `socket`. Failing to reach the relay
/// is retryable (it may be restarting); its reply is taken as the HTTP outcome.
pub fn post_via(
    socket: &Path,
    url: &SecretUrl,
    body: &str,
    timeout: Duration,
) -> std::result::Result<(), DeliveryError> {
    let relay_err = |what: &str, e: &dyn std::fmt::Display| {
        DeliveryError::transient(format!("webhook relay {}: {what}: {e}", socket.display()))
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| relay_err("cannot connect", &e))?;
    let request = Request {
        url: url.expose().to_string(),
        body: body.to_string(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let bytes = serde_json::to_vec(&request)
        .map_err(|e| DeliveryError::permanent(format!("cannot encode relay request: {e}")))?;
    // Timeouts on both directions: the relay is started by systemd for this connection,
    // and a relay that hangs must cost this worker thread a bounded time only.
    let _ = stream.set_write_timeout(Some(RELAY_SLACK));
    let _ = stream.set_read_timeout(Some(timeout.min(MAX_TIMEOUT) + RELAY_SLACK));
    stream
        .write_all(&bytes)
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|e| relay_err("cannot send the request", &e))?;
    let mut reply = Vec::new();
    stream
        .take(MAX_REPLY)
        .read_to_end(&mut reply)
        .map_err(|e| relay_err("no reply", &e))?;
    if reply.is_empty() {
        return Err(relay_err("no reply", &"it closed the connection"));
    }
    let reply: Reply =
        serde_json::from_slice(&reply).map_err(|e| relay_err("unreadable reply", &e))?;
    reply.into_result()
}

/// The relay's side: reads one request from `input`, POSTs it, writes the reply to
/// `output`. A malformed request gets a permanent failure as its reply. Errors only when
/// no reply could be written.
pub fn serve(input: impl Read, mut output: impl Write) -> Result<()> {
    let mut raw = Vec::new();
    input
        .take(MAX_REQUEST + 1)
        .read_to_end(&mut raw)
        .context("cannot read the request")?;
    let result = match parse_request(&raw) {
        Ok((url, body, timeout)) => post(&http_agent(timeout), &url, &body),
        Err(e) => Err(DeliveryError::permanent(format!(
            "webhook relay refused the request: {e:#}"
        ))),
    };
    let failed = result.as_ref().err().map(|e| e.reason.clone());
    let reply = serde_json::to_vec(&Reply::from_result(result)).context("cannot encode reply")?;
    output
        .write_all(&reply)
        .and_then(|()| output.flush())
        .context("cannot write the reply")?;
    // The agent logs and counts the outcome; this line is for whoever reads the relay's
    // own journal. The relay did its job (a reply was written), so it exits 0 either way:
    // a refused delivery must not leave failed relay units behind.
    if let Some(reason) = failed {
        tracing::warn!("webhook delivery failed: {reason}");
    }
    Ok(())
}

fn parse_request(raw: &[u8]) -> Result<(SecretUrl, String, Duration)> {
    if raw.len() as u64 > MAX_REQUEST {
        bail!("request larger than {MAX_REQUEST} bytes");
    }
    let req: Request = serde_json::from_slice(raw).context("not a relay request")?;
    // Never echo the URL: it is a secret (a Slack webhook URL is a bearer token).
    let url = SecretUrl::new(req.url)?;
    let timeout = Duration::from_millis(req.timeout_ms).min(MAX_TIMEOUT);
    if timeout.is_zero() {
        bail!("request timeout is zero");
    }
    Ok((url, req.body, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_every_field() {
        let e = DeliveryError {
            retryable: true,
            status: Some(429),
            retry_after: Some(Duration::from_secs(7)),
            reason: "HTTP 429: slow down".into(),
        };
        let bytes = serde_json::to_vec(&Reply::from_result(Err(e.clone()))).unwrap();
        let back: Reply = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.into_result(), Err(e));
        let ok: Reply = serde_json::from_slice(br#"{"ok":true}"#).unwrap();
        assert_eq!(ok.into_result(), Ok(()));
    }

    #[test]
    fn bad_requests_are_refused_without_echoing_the_url() {
        let mut out = Vec::new();
        let req = br#"{"url":"ftp://secret-token@example","body":"{}","timeout_ms":1000}"#;
        serve(&req[..], &mut out).unwrap();
        let reply: Reply = serde_json::from_slice(&out).unwrap();
        assert!(!reply.ok && !reply.retryable, "{reply:?}");
        assert!(!reply.reason.contains("secret-token"), "{}", reply.reason);

        let mut out = Vec::new();
        let huge = vec![b' '; (MAX_REQUEST + 10) as usize];
        serve(&huge[..], &mut out).unwrap();
        let reply: Reply = serde_json::from_slice(&out).unwrap();
        assert!(reply.reason.contains("larger than"), "{}", reply.reason);

        let mut out = Vec::new();
        serve(&b"not json"[..], &mut out).unwrap();
        let reply: Reply = serde_json::from_slice(&out).unwrap();
        assert!(!reply.ok && !reply.retryable);
    }
}
