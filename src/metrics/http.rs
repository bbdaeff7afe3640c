//! A minimal HTTP/1.1 server for Prometheus scrapes: `GET /metrics` returns the text
//! exposition, everything else gets a short error. It runs as one task on the
//! daemon's tokio runtime, on a listener either bound to a loopback address or passed
//! in by systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`).
//!
//! It is deliberately not a web framework: one request per connection
//! (`Connection: close`), request heads capped at 8 KiB and 10 s, at most 16
//! connections at once. That is all a scraper needs, and it keeps the dependency list
//! to tokio, which the daemon already runs.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Default listen address: loopback only; exposing metrics wider is an explicit choice.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9798));

/// `FileDescriptorName=` the socket unit should give the metrics socket.
pub const FD_NAME: &str = "metrics";

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 16;

/// Where the listener came from, for the startup log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerOrigin {
    SocketActivation,
    Bound,
}

/// Returns the listening socket systemd passed for metrics, if any: the fd named
/// [`FD_NAME`], or the only fd passed. Call once, early: the fd is taken over (it
/// becomes close-on-exec and is owned by the returned listener). The environment is
/// left alone because changing it is unsound once threads exist.
pub fn activated_listener() -> Result<Option<TcpListener>> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(false)
        .context("invalid socket activation environment (LISTEN_FDS, LISTEN_FDNAMES)")?
        .collect();
    let fd = match pick_fd(&fds)? {
        Some(fd) => fd,
        None => return Ok(None),
    };
    check_listening_tcp(fd)?;
    // SAFETY: systemd handed this fd to this process (LISTEN_PID matched) and nothing
    // else in the program takes socket-activation fds, so the listener owns it alone.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(Some(listener))
}

fn pick_fd(fds: &[(RawFd, String)]) -> Result<Option<RawFd>> {
    if let Some((fd, _)) = fds.iter().find(|(_, n)| n == FD_NAME) {
        return Ok(Some(*fd));
    }
    match fds {
        [] => Ok(None),
        [(fd, _)] => Ok(Some(*fd)),
        _ => bail!(
            "socket activation passed {} fds but none is named \"{FD_NAME}\" (set FileDescriptorName={FD_NAME} in the socket unit)",
            fds.len()
        ),
    }
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val and len are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(val)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn check_listening_tcp(fd: RawFd) -> Result<()> {
    let what = format!("socket-activated fd {fd}");
    let domain = sockopt(fd, libc::SO_DOMAIN).with_context(|| format!("{what} is not a socket"))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        bail!("{what} is not an IPv4/IPv6 socket (use ListenStream=ADDRESS:PORT)");
    }
    let ty = sockopt(fd, libc::SO_TYPE).with_context(|| format!("cannot query {what}"))?;
    if ty != libc::SOCK_STREAM {
        bail!("{what} is not a stream socket");
    }
    if sockopt(fd, libc::SO_ACCEPTCONN).with_context(|| format!("cannot query {what}"))? != 1 {
        bail!("{what} is not listening");
    }
    Ok(())
}

/// The socket-activated listener if systemd passed one, else a new one bound to `addr`.
pub fn listener(addr: SocketAddr) -> Result<(TcpListener, ListenerOrigin)> {
    if let Some(l) = activated_listener()? {
        return Ok((l, ListenerOrigin::SocketActivation));
    }
    let l = TcpListener::bind(addr).with_context(|| {
        // The shipped system unit has RestrictAddressFamilies=AF_UNIX and PrivateNetwork=yes:
        // say what works there instead of only "address family not supported".
        format!(
            "cannot listen on \"{addr}\" (the system unit has no network of its own: enable \
             gocache-warden-metrics.socket, with its ListenStream= set to this address, instead)"
        )
    })?;
    Ok((l, ListenerOrigin::Bound))
}

/// Serves `/metrics` from `registry` until `shutdown` completes. Must run inside a
/// tokio runtime (current-thread is fine).
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    listener
        .set_nonblocking(true)
        .context("cannot make the metrics listener non-blocking")?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("cannot register the metrics listener with the runtime")?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            p = slots.clone().acquire_owned() => p.context("connection limiter closed")?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Accept errors (EMFILE, ECONNABORTED) are per-connection; keep serving
                    // after a short pause so a full fd table does not spin the loop.
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &registry).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, registry: &Registry) -> Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .context("timed out reading the request")??;
    let (status, ctype, body) = match parse_request_line(&head) {
        Some(("GET" | "HEAD", path)) if path_only(path) == "/metrics" => {
            match super::encode_text(registry) {
                Ok(text) => ("200 OK", prometheus::TEXT_FORMAT, text),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("{e:#}\n"),
                ),
            }
        }
        Some(("GET" | "HEAD", "/")) => (
            "200 OK",
            "text/plain",
            "gocache-warden: metrics at /metrics\n".to_string(),
        ),
        Some(("GET" | "HEAD", _)) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        Some(_) => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let is_head = head.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !is_head {
        out.push_str(&body);
    }
    stream
        .write_all(out.as_bytes())
        .await
        .context("cannot send the response")?;
    stream
        .shutdown()
        .await
        .context("cannot close the connection")?;
    Ok(())
}

async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .context("cannot read the request")?;
        if n == 0 {
            bail!("connection closed before the request head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            bail!("request head larger than {MAX_HEAD} bytes");
        }
    }
}

fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target))
}

fn path_only(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET /a b HTTP/1.1\r\n\r\n"), None);
        assert_eq!(path_only("/metrics?name[]=x"), "/metrics");
    }

    #[test]
    fn picks_the_named_or_only_fd() {
        let named = vec![(3, "dbus".to_string()), (4, "metrics".to_string())];
        assert_eq!(pick_fd(&named).unwrap(), Some(4));
        assert_eq!(pick_fd(&[(3, "unknown".to_string())]).unwrap(), Some(3));
        assert_eq!(pick_fd(&[]).unwrap(), None);
        assert!(pick_fd(&[(3, "a".to_string()), (4, "b".to_string())]).is_err());
    }
}
