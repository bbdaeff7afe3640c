//! A socket adapter that lets zbus 5 talk to systemd's private socket without panicking.
//!
//! On `/run/user/UID/systemd/private` (and `/run/systemd/private`) systemd stamps every message
//! with the sender `org.freedesktop.systemd1` (`sd_bus_set_sender()` in `core/dbus.c`), a
//! well-known name where the D-Bus spec requires a unique one. zbus 5.19 accepts that header
//! while parsing but panics in its socket reader when it rebuilds the header (`Invalid field
//! reconstruction`), which kills the connection's reader task. This adapter sits between the
//! socket and zbus: it reads one whole message at a time and rewrites any sender that is not a
//! valid unique name into a unique name of the same length (`:s.xxx…`), in place, so nothing
//! else in the message moves. It changes nothing else and is only used for peer-to-peer
//! connections; bus connections never see such senders.

use std::os::fd::OwnedFd;

use zbus::connection::socket::ReadHalf;

type RecvmsgResult = std::io::Result<(usize, Vec<OwnedFd>)>;
use zbus::message::Message;

/// D-Bus caps messages at 128 MiB.
const MAX_MESSAGE: usize = 128 * 1024 * 1024;
/// Header field code of SENDER in the D-Bus spec.
const HEADER_CODE_SENDER: u8 = 7;

/// Wraps the read half of a peer-to-peer connection to systemd.
#[derive(Debug)]
pub struct SenderFix<R: ReadHalf> {
    inner: R,
    raw: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl<R: ReadHalf> SenderFix<R> {
    pub fn new(inner: R) -> Self {
        SenderFix {
            inner,
            raw: Vec::new(),
            fds: Vec::new(),
        }
    }

    async fn fill(&mut self, want: usize) -> zbus::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while self.raw.len() < want {
            let (n, fds) = self.inner.recvmsg(&mut buf).await?;
            if n == 0 {
                let eof = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "systemd closed the connection",
                );
                return Err(zbus::Error::InputOutput(eof.into()));
            }
            self.raw.extend_from_slice(&buf[..n]);
            self.fds.extend(fds);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<R: ReadHalf> ReadHalf for SenderFix<R> {
    async fn receive_message(
        &mut self,
        seq: u64,
        already_received_bytes: &mut Vec<u8>,
        already_received_fds: &mut Vec<OwnedFd>,
    ) -> zbus::Result<Message> {
        // Bytes the handshake read past its end come first.
        if !already_received_bytes.is_empty() {
            let mut early = std::mem::take(already_received_bytes);
            early.append(&mut self.raw);
            self.raw = early;
        }
        self.fds.append(already_received_fds);

        self.fill(16).await?;
        let big = match self.raw[0] {
            b'l' => false,
            b'B' => true,
            other => {
                return Err(zbus::Error::Failure(format!(
                    "bad D-Bus endianness byte {other:#x} from systemd"
                )));
            }
        };
        let body_len = read_u32(&self.raw, 4, big).unwrap_or(0) as usize;
        let fields_len = read_u32(&self.raw, 12, big).unwrap_or(0) as usize;
        let total = align8(16 + fields_len) + body_len;
        if total > MAX_MESSAGE {
            return Err(zbus::Error::ExcessData);
        }
        self.fill(total).await?;
        let mut msg: Vec<u8> = self.raw.drain(..total).collect();
        fix_sender(&mut msg, big, fields_len);
        // File descriptors go with the message being completed; systemd sends none to the
        // calls gocache-warden makes, so none can belong to a following message.
        let mut replay = Replay {
            data: msg,
            pos: 0,
            fds: std::mem::take(&mut self.fds),
        };
        replay
            .receive_message(seq, &mut Vec::new(), &mut Vec::new())
            .await
    }

    async fn recvmsg(&mut self, buf: &mut [u8]) -> RecvmsgResult {
        // Only the authentication handshake reads raw bytes; pass them through untouched.
        self.inner.recvmsg(buf).await
    }

    fn can_pass_unix_fd(&self) -> bool {
        self.inner.can_pass_unix_fd()
    }

    async fn peer_credentials(&mut self) -> std::io::Result<zbus::fdo::ConnectionCredentials> {
        self.inner.peer_credentials().await
    }

    fn auth_mechanism(&self) -> zbus::AuthMechanism {
        self.inner.auth_mechanism()
    }
}

/// Serves one already-read message to zbus's own message decoding.
#[derive(Debug)]
struct Replay {
    data: Vec<u8>,
    pos: usize,
    fds: Vec<OwnedFd>,
}

#[async_trait::async_trait]
impl ReadHalf for Replay {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> RecvmsgResult {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok((n, std::mem::take(&mut self.fds)))
    }
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read_u32(buf: &[u8], at: usize, big: bool) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// Rewrites an invalid SENDER header field in place. Malformed headers are left alone: zbus
/// reports those as errors itself.
pub fn fix_sender(msg: &mut [u8], big: bool, fields_len: usize) {
    let end = (16 + fields_len).min(msg.len());
    let mut off = 16;
    while align8(off) < end {
        off = align8(off);
        let (Some(&code), Some(&sig_len)) = (msg.get(off), msg.get(off + 1)) else {
            return;
        };
        let sig_start = off + 2;
        let Some(sig) = msg.get(sig_start..sig_start + sig_len as usize) else {
            return;
        };
        let mut p = sig_start + sig_len as usize + 1;
        match sig {
            b"s" | b"o" => {
                p = align4(p);
                let Some(len) = read_u32(msg, p, big) else {
                    return;
                };
                let start = p + 4;
                let Some(stop) = start.checked_add(len as usize) else {
                    return;
                };
                if code == HEADER_CODE_SENDER && sig == b"s" {
                    if let Some(name) = msg.get_mut(start..stop) {
                        make_unique(name);
                    }
                    return;
                }
                p = stop + 1;
            }
            b"g" => {
                let Some(&len) = msg.get(p) else {
                    return;
                };
                p += 1 + len as usize + 1;
            }
            b"u" => p = align4(p) + 4,
            _ => return,
        }
        off = p;
    }
}

/// Turns `name` into a valid unique bus name of the same length, if it is not one already.
fn make_unique(name: &mut [u8]) {
    let valid = std::str::from_utf8(name)
        .ok()
        .is_some_and(|s| zbus::names::UniqueName::try_from(s).is_ok());
    if valid || name.len() < 4 {
        return;
    }
    name[0] = b':';
    name[1] = b's';
    name[2] = b'.';
    for b in &mut name[3..] {
        *b = b'x';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method return as systemd sends it on its private socket, built with zbus and patched.
    fn systemd_reply(sender: &str) -> Vec<u8> {
        let call = Message::method_call("/org/freedesktop/systemd1", "Reload")
            .unwrap()
            .build(&())
            .unwrap();
        let reply = Message::method_return(&call.header())
            .unwrap()
            .sender(":1.234567890123456789012")
            .unwrap()
            .build(&("ok",))
            .unwrap();
        let mut bytes = reply.data().to_vec();
        let fake = ":1.234567890123456789012".as_bytes();
        let at = bytes.windows(fake.len()).position(|w| w == fake).unwrap();
        bytes[at..at + fake.len()].copy_from_slice(&sender.as_bytes()[..fake.len()]);
        bytes
    }

    #[test]
    fn rewrites_systemd_sender_in_place() {
        let mut msg = systemd_reply("org.freedesktop.systemd1");
        let len = msg.len();
        let fields_len = read_u32(&msg, 12, false).unwrap() as usize;
        fix_sender(&mut msg, false, fields_len);
        assert_eq!(msg.len(), len);
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains(":s.xxxxxxxxxxxxxxxxxxxxx"), "{text:?}");
        assert!(!text.contains("org.freedesktop.systemd1"));
    }

    #[test]
    fn leaves_valid_and_malformed_headers_alone() {
        let mut msg = systemd_reply(":1.234567890123456789012");
        let before = msg.clone();
        let fields_len = read_u32(&msg, 12, false).unwrap() as usize;
        fix_sender(&mut msg, false, fields_len);
        assert_eq!(msg, before);
        let mut short = vec![b'l', 2, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 200, 0, 0, 0, 2, 9];
        fix_sender(&mut short, false, 200);
        assert_eq!(short.len(), 18);
    }
}
