//! HTTP webhook sinks: Slack incoming webhooks (Block Kit message) and a generic JSON
//! webhook (the [`Alert`] as JSON). The URL is a secret (a Slack webhook URL is a
//! bearer token): it is read from a file or a systemd credential, never logged, and
//! scrubbed from any error text.
//!
//! Not here: queueing and retries (see `dispatch`); this sink makes one attempt per
//! call and classifies the failure.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Alert, AlertStatus, DeliveryError, Sink, human_bytes};

/// Where a webhook URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the URL (trailing newline allowed).
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=name:...`).
    Credential(String),
}

/// A webhook URL. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

impl SecretUrl {
    /// Wraps a URL already in memory (tests, or a caller that read it itself).
    pub fn new(url: impl Into<String>) -> Result<SecretUrl> {
        let url = url.into().trim().to_string();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            // Do not echo the value: it may be a valid secret pasted with a typo.
            bail!("webhook URL must be a single http:// or https:// URL");
        }
        Ok(SecretUrl(url))
    }

    pub fn from_file(path: &Path) -> Result<SecretUrl> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read webhook URL file \"{}\"", path.display()))?;
        SecretUrl::new(text)
            .with_context(|| format!("invalid webhook URL in \"{}\"", path.display()))
    }

    /// Reads `$CREDENTIALS_DIRECTORY/<name>`.
    pub fn from_credential(name: &str) -> Result<SecretUrl> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            bail!("invalid credential name \"{name}\"");
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").with_context(|| {
            format!("credential \"{name}\" needs $CREDENTIALS_DIRECTORY (set LoadCredential= in the unit)")
        })?;
        SecretUrl::from_file(&Path::new(&dir).join(name))
    }

    pub fn load(source: &SecretSource) -> Result<SecretUrl> {
        match source {
            SecretSource::File(p) => SecretUrl::from_file(p),
            SecretSource::Credential(n) => SecretUrl::from_credential(n),
        }
    }

    /// Removes the URL, and its path on its own, from `text`.
    /// A hash of the URL, to notice a changed secret without keeping a second copy of it.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        h.finish()
    }

    /// The URL itself, for the one place that must send it on (the relay request).
    pub(super) fn expose(&self) -> &str {
        &self.0
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.0, "<webhook-url>");
        let after_scheme = self.0.split_once("://").map_or("", |(_, rest)| rest);
        if let Some(idx) = after_scheme.find('/') {
            let path = &after_scheme[idx..];
            if path.len() > 1 {
                out = out.replace(path, "/<redacted>");
            }
        }
        out
    }
}

/// Message format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Slack incoming webhook: `text` fallback plus Block Kit `blocks`.
    Slack,
    /// The alert itself as JSON.
    Json,
}

/// How a webhook request leaves the machine.
enum Transport {
    /// This process connects out itself (the user instance, `alert test`).
    Direct(ureq::Agent),
    /// Handed to the relay listening on this socket (the system agent, which has no
    /// network of its own: see `relay`).
    Relay(PathBuf),
}

/// One webhook endpoint.
pub struct WebhookSink {
    name: String,
    format: WebhookFormat,
    url: SecretUrl,
    timeout: Duration,
    transport: Transport,
}

impl WebhookSink {
    /// `timeout` bounds each request as a whole (connect, send, response). With `relay`,
    /// requests go through the relay listening on that socket instead of out from here.
    pub fn new(
        name: impl Into<String>,
        format: WebhookFormat,
        url: SecretUrl,
        timeout: Duration,
        relay: Option<&Path>,
    ) -> WebhookSink {
        let transport = match relay {
            Some(socket) => Transport::Relay(socket.to_path_buf()),
            None => Transport::Direct(http_agent(timeout)),
        };
        WebhookSink {
            name: name.into(),
            format,
            url,
            timeout,
            transport,
        }
    }
}

/// The HTTP client every webhook request uses, here or in the relay. It trusts the
/// system's CA store, as curl does ([`system_roots`]).
pub(super) fn http_agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(system_roots().clone())
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // A redirect would leave the secret URL's host; webhooks do not redirect.
        .max_redirects(0)
        .user_agent(concat!("gocache-warden/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// The system's CA store, as curl and OpenSSL find it (`/etc/ssl/certs` on Debian, where
/// `update-ca-certificates` puts a corporate CA; `SSL_CERT_FILE` and `SSL_CERT_DIR` replace
/// it, as they do for OpenSSL), read once per process by `rustls-native-certs`. A store
/// with no usable certificate (a minimal container without `ca-certificates`) falls back to
/// the Mozilla roots built in, said once in the log.
fn system_roots() -> &'static ureq::tls::RootCerts {
    static ROOTS: std::sync::OnceLock<ureq::tls::RootCerts> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in found.errors.iter().take(3) {
            tracing::warn!("CA store: {e}");
        }
        if found.certs.is_empty() {
            tracing::warn!(
                "no CA certificate in the system's store (SSL_CERT_FILE, SSL_CERT_DIR, /etc/ssl/certs): webhooks trust the built-in Mozilla roots instead"
            );
            return ureq::tls::RootCerts::WebPki;
        }
        ureq::tls::RootCerts::new_with_certs(
            &found
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect::<Vec<_>>(),
        )
    })
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (when.timestamp() - chrono::Utc::now().timestamp()).max(0);
    Some(Duration::from_secs(secs as u64))
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, alert: &Alert) -> std::result::Result<(), DeliveryError> {
        let body = match self.format {
            WebhookFormat::Slack => slack_payload(alert),
            WebhookFormat::Json => serde_json::to_value(alert)
                .map_err(|e| DeliveryError::permanent(format!("cannot serialize alert: {e}")))?,
        };
        let body = body.to_string();
        match &self.transport {
            Transport::Direct(agent) => post(agent, &self.url, &body),
            Transport::Relay(socket) => {
                super::relay::post_via(socket, &self.url, &body, self.timeout)
            }
        }
    }
}

/// One POST of `body` to `url`, the failure classified for the dispatcher's retries.
pub(super) fn post(
    agent: &ureq::Agent,
    url: &SecretUrl,
    body: &str,
) -> std::result::Result<(), DeliveryError> {
    let resp = agent
        .post(url.0.as_str())
        .content_type("application/json")
        .send(body.as_bytes());
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let retryable = !matches!(e, ureq::Error::BadUri(_) | ureq::Error::TooManyRedirects);
            let reason = url.scrub(&e.to_string());
            return Err(DeliveryError {
                retryable,
                status: None,
                retry_after: None,
                reason,
            });
        }
    };
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let snippet: String = text.chars().take(200).collect();
    let retryable = status == 429 || status == 408 || status >= 500;
    Err(DeliveryError {
        retryable,
        status: Some(status),
        retry_after,
        reason: url.scrub(&format!("HTTP {status}: {}", snippet.trim())),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cuts `s` to at most `max` characters, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn code_block(title: &str, body: &str) -> Value {
    // Section text is limited to 3000 characters by Slack.
    let body = cut(&esc(body.trim_end()), 2900);
    json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{title}*\n```{body}```")}})
}

/// The Slack Block Kit message for `alert`.
pub fn slack_payload(a: &Alert) -> Value {
    let state = match a.status {
        AlertStatus::Firing => "FIRING",
        AlertStatus::Resolved => "RESOLVED",
    };
    let icon = match a.status {
        AlertStatus::Firing => ":rotating_light:",
        AlertStatus::Resolved => ":white_check_mark:",
    };
    let mut fields = vec![format!("*Host*\n{}", esc(&a.host))];
    if let Some(c) = &a.cache {
        let kind = a
            .cache_kind
            .map(|k| format!(" ({})", k.as_str()))
            .unwrap_or_default();
        fields.push(format!(
            "*Cache*\n`{}`{kind}",
            esc(&c.display().to_string())
        ));
    }
    if let (Some(uid), Some(user)) = (a.uid, &a.user) {
        fields.push(format!("*User*\n{} (uid {uid})", esc(user)));
    }
    if let Some(size) = a.size_bytes {
        let limit = a
            .limit_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "none".to_string());
        let pct = a
            .percent_of_limit
            .map(|p| format!(" ({p:.0}%)"))
            .unwrap_or_default();
        fields.push(format!(
            "*Size / limit*\n{} / {limit}{pct}",
            human_bytes(size)
        ));
    }
    if let (Some(used), Some(total)) = (a.inodes_used, a.inodes_total) {
        fields.push(format!("*Inodes*\n{used} of {total}"));
    }
    if !a.violations.is_empty() {
        let v: Vec<String> = a
            .violations
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        fields.push(format!("*Violations*\n{}", esc(&v.join(", "))));
    }
    if !a.errors.is_empty() {
        let v: Vec<String> = a.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        fields.push(format!("*Errors*\n{}", esc(&v.join(", "))));
    }
    if let Some(since) = &a.since {
        fields.push(format!("*Since*\n{since}"));
    }
    fields.truncate(10);
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|t| json!({"type": "mrkdwn", "text": cut(&t, 1900)}))
        .collect();

    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{state}: {}", a.kind.title()), 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("{icon} {}", esc(&a.summary)), 2900)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some(root) = &a.root {
        blocks.push(code_block("Cache root", &root.ls_line));
        blocks.push(code_block("ACL", &root.acl_text));
    }
    if !a.top_users.is_empty() {
        let lines: Vec<String> = a
            .top_users
            .iter()
            .map(|u| {
                format!(
                    "• {} (uid {}): {}",
                    esc(&u.label()),
                    u.uid,
                    human_bytes(u.bytes)
                )
            })
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("*Top users*\n{}", lines.join("\n")), 2900)}}));
    }
    if !a.units.is_empty() {
        let lines: Vec<String> = a
            .units
            .iter()
            .map(|u| format!("• `{}` ({}, uid {})", esc(&u.unit), esc(&u.user), u.uid))
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("*Units*\n{}", lines.join("\n")), 2900)}}));
    }
    let actions = if a.actions.is_empty() {
        "nothing".to_string()
    } else {
        a.actions.join("\n• ")
    };
    let actions = if a.actions.is_empty() {
        actions
    } else {
        format!("• {actions}")
    };
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("*What the agent did*\n{}", esc(&actions)), 2900)}}));
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&format!("gocache-warden · {} · {}", esc(&a.id), a.sent_at.as_deref().unwrap_or("")), 2900)}]}));

    json!({
        "text": cut(&format!("[{state}] {} on {}: {}", a.kind.title(), a.host, a.summary), 3000),
        "blocks": blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_url_is_never_shown() {
        let u = SecretUrl::new("https://hooks.example/services/T0/B0/XYZSECRET\n").unwrap();
        assert_eq!(format!("{u:?}"), "SecretUrl(<redacted>)");
        let scrubbed = u.scrub("bad uri: https://hooks.example/services/T0/B0/XYZSECRET is odd; /services/T0/B0/XYZSECRET");
        assert!(!scrubbed.contains("XYZSECRET"), "{scrubbed}");
        let err = SecretUrl::new("hooks.example/XYZSECRET").unwrap_err();
        assert!(!format!("{err:#}").contains("XYZSECRET"));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
