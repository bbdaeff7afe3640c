//! The socket halves of a peer-to-peer connection to a user manager, which its user controls.
//!
//! A local user can stop their own `systemd --user` and serve `/run/user/UID/systemd/private`
//! themselves, so everything that comes over this socket is hostile until checked. The read half
//! bounds what the peer can cost the agent: at most [`MAX_HANDSHAKE`] bytes of authentication
//! handshake and at most [`MAX_MESSAGE`] bytes per message, refused from the primary header
//! before the body is read (the time a peer may take is bounded by the callers, see
//! `dbus::USER_MANAGER_TIMEOUT`). zbus 6 checks each received message as a whole (header fields,
//! repeated fields, padding) and turns a malformed one into an error; decoding runs under
//! `catch_unwind` as well, so no header a peer can send panics the connection's reader task.
//!
//! systemd stamps every message on its private socket with the sender `org.freedesktop.systemd1`
//! (`sd_bus_set_sender()` in `core/dbus.c`), a well-known name where the D-Bus spec requires a
//! unique one, which zbus 6 rejects (zbus 5 accepted it and then panicked rebuilding the
//! header). So the read half still rewrites any sender that is not a valid unique name into a
//! unique name of the same length (`:s.xxx…`), in place, so nothing else in the message moves.
//! It changes nothing else and is only used for peer-to-peer connections; bus connections never
//! see such senders.

use std::os::fd::{BorrowedFd, OwnedFd};

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use zbus::connection::socket::{ReadHalf, WriteHalf};
use zbus::message::Message;

type RecvmsgResult = std::io::Result<(usize, Vec<OwnedFd>)>;

/// The largest message accepted from a user manager. The agent's calls are answered with a few
/// KiB (unit lists filtered by the policy's patterns, a handful of properties); 1 MiB leaves
/// room for thousands of units without letting a peer make the agent hold 128 MiB (the D-Bus
/// limit) per user.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// The most bytes the authentication handshake may take (systemd's takes under 100).
pub const MAX_HANDSHAKE: usize = 16 * 1024;
/// Header field code of SENDER in the D-Bus spec.
const HEADER_CODE_SENDER: u8 = 7;

/// The read half of a peer-to-peer connection to a user manager.
#[derive(Debug)]
pub struct SenderFix {
    inner: OwnedReadHalf,
    raw: Vec<u8>,
    /// Bytes the handshake has read so far.
    handshake: usize,
}

impl SenderFix {
    pub fn new(inner: OwnedReadHalf) -> Self {
        SenderFix {
            inner,
            raw: Vec::new(),
            handshake: 0,
        }
    }

    async fn fill(&mut self, want: usize) -> zbus::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while self.raw.len() < want {
            let room = (want - self.raw.len()).min(buf.len());
            let n = self.inner.read(&mut buf[..room]).await?;
            if n == 0 {
                let eof = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the user manager closed the connection",
                );
                return Err(eof.into());
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ReadHalf for SenderFix {
    async fn receive_message(
        &mut self,
        seq: u64,
        already_received_bytes: &mut Vec<u8>,
        already_received_fds: &mut Vec<OwnedFd>,
    ) -> zbus::Result<Message> {
        // Bytes the handshake read past its end come first. File descriptors are never
        // accepted (`can_pass_unix_fd` is false), so any the handshake saw are dropped.
        if !already_received_bytes.is_empty() {
            let mut early = std::mem::take(already_received_bytes);
            early.append(&mut self.raw);
            self.raw = early;
        }
        already_received_fds.clear();

        self.fill(16).await?;
        let big = match self.raw[0] {
            b'l' => false,
            b'B' => true,
            other => {
                return Err(zbus::Error::Failure(format!(
                    "bad D-Bus endianness byte {other:#x} from the user manager"
                )));
            }
        };
        let body_len = read_u32(&self.raw, 4, big).unwrap_or(0) as usize;
        let fields_len = read_u32(&self.raw, 12, big).unwrap_or(0) as usize;
        let total = align8(16 + fields_len) + body_len;
        if total > MAX_MESSAGE {
            return Err(zbus::Error::Failure(format!(
                "the user manager sent a message of {total} bytes, more than the {} KiB \
                 accepted from a user manager",
                MAX_MESSAGE / 1024
            )));
        }
        self.fill(total).await?;
        let mut msg: Vec<u8> = self.raw.drain(..total).collect();
        fix_sender(&mut msg, big, fields_len);
        let mut replay = Replay { data: msg, pos: 0 };
        // zbus 6 turns a malformed message into an error; a panic in its decoding would kill the
        // connection's reader task and leave calls waiting, so it is an error here too.
        let (mut no_bytes, mut no_fds) = (Vec::new(), Vec::new());
        let decode = replay.receive_message(seq, &mut no_bytes, &mut no_fds);
        match std::panic::AssertUnwindSafe(decode).catch_unwind().await {
            Ok(r) => r,
            Err(_) => Err(zbus::Error::Failure(
                "zbus could not decode a message from the user manager".to_owned(),
            )),
        }
    }

    async fn recvmsg(&mut self, buf: &mut [u8]) -> RecvmsgResult {
        // Only the authentication handshake reads raw bytes; zbus keeps all of them until it
        // has the lines it waits for, so a peer that never ends a line is cut off here.
        if self.handshake >= MAX_HANDSHAKE {
            return Err(std::io::Error::other(format!(
                "the user manager's authentication handshake is longer than {MAX_HANDSHAKE} bytes"
            )));
        }
        let room = buf.len().min(MAX_HANDSHAKE - self.handshake);
        let n = self.inner.read(&mut buf[..room]).await?;
        self.handshake += n;
        Ok((n, Vec::new()))
    }
}

/// The write half of a peer-to-peer connection to a user manager.
#[derive(Debug)]
pub struct Writer(pub OwnedWriteHalf);

#[async_trait::async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
        // The read half says it cannot pass descriptors, so zbus never hands any here.
        if !fds.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "file descriptors are not sent to user managers",
            ));
        }
        self.0.write(buffer).await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.0.shutdown().await
    }
}

/// Serves one already-read message to zbus's own message decoding.
#[derive(Debug)]
struct Replay {
    data: Vec<u8>,
    pos: usize,
}

#[async_trait::async_trait]
impl ReadHalf for Replay {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> RecvmsgResult {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok((n, Vec::new()))
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
            .build(&())
            .unwrap();
        let reply = Message::method_return(&call.header())
            .sender(":1.234567890123456789012")
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

    async fn decode(bytes: Vec<u8>) -> zbus::Result<Message> {
        let mut replay = Replay {
            data: bytes,
            pos: 0,
        };
        replay
            .receive_message(1, &mut Vec::new(), &mut Vec::new())
            .await
    }

    /// zbus 6 refuses systemd's sender outright, so the rewrite is still needed.
    #[tokio::test]
    async fn zbus_6_still_needs_the_sender_rewrite() {
        let msg = systemd_reply("org.freedesktop.systemd1");
        assert!(decode(msg.clone()).await.is_err());
        let mut fixed = msg;
        let fields_len = read_u32(&fixed, 12, false).unwrap() as usize;
        fix_sender(&mut fixed, false, fields_len);
        let m = decode(fixed).await.unwrap();
        assert_eq!(
            m.header().sender().unwrap().as_str(),
            ":s.xxxxxxxxxxxxxxxxxxxxx"
        );
    }

    /// A message announced larger than MAX_MESSAGE is refused from its first 16 bytes.
    #[tokio::test]
    async fn oversized_messages_are_refused_before_their_body() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let (read, _write) = ours.into_split();
        let mut half = SenderFix::new(read);
        let mut head = systemd_reply(":1.234567890123456789012");
        head[4..8].copy_from_slice(&(MAX_MESSAGE as u32).to_le_bytes());
        peer.write_all(&head[..16]).await.unwrap();
        let err = half
            .receive_message(1, &mut Vec::new(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1024 KiB"), "{err}");
        assert!(half.raw.len() <= 16);
    }

    /// A handshake that never ends a line stops at MAX_HANDSHAKE bytes.
    #[tokio::test]
    async fn the_handshake_is_bounded() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let (read, _write) = ours.into_split();
        let mut half = SenderFix::new(read);
        tokio::spawn(async move {
            let junk = vec![b'x'; 4096];
            while peer.write_all(&junk).await.is_ok() {}
        });
        let mut buf = vec![0u8; 1024];
        let mut total = 0;
        let err = loop {
            match half.recvmsg(&mut buf).await {
                Ok((n, _)) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(total, MAX_HANDSHAKE);
        assert!(err.to_string().contains("handshake"), "{err}");
    }
}
