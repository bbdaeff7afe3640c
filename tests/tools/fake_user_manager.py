#!/usr/bin/env python3
"""A hostile stand-in for `systemd --user` on /run/user/UID/systemd/private (issue 12).

Run as the user whose manager it replaces: `fake_user_manager.py SOCKET MODE`. It answers the
D-Bus authentication handshake like systemd (EXTERNAL, then BEGIN), then treats every method
call the agent makes according to MODE:

  silent     never answers
  trickle    starts a plausible reply (a 64 KiB body) and sends it one byte every 100 ms
  huge       sends a reply whose header announces a 100 MiB body, and the body, at full speed
  malformed  answers with a reply whose header carries an INTERFACE field that is not an
             interface name (a string where the D-Bus spec requires dots), which zbus 5
             accepted when parsing and then panicked on when it rebuilt the header

It prints "ready" on stdout once the socket listens. Each connection is served on its own
thread; the process runs until it is killed.
"""

import os
import socket
import struct
import sys
import threading
import time


def align(buf, n):
    while len(buf) % n:
        buf.append(0)


def reply_header(serial, reply_serial, body_len, signature, extra_fields=()):
    """A little-endian METHOD_RETURN header (fields padded to 8) for a body of body_len."""
    fields = bytearray()

    def field(code, sig, value):
        # Offsets inside the fields array are offsets in the message minus 16, and 16 is a
        # multiple of 8, so aligning here aligns in the message.
        align(fields, 8)
        fields.append(code)
        fields.extend(bytes([len(sig)]) + sig.encode() + b"\0")
        if sig in ("s", "o"):
            align(fields, 4)
            data = value.encode()
            fields.extend(struct.pack("<I", len(data)) + data + b"\0")
        elif sig == "g":
            data = value.encode()
            fields.extend(bytes([len(data)]) + data + b"\0")
        elif sig == "u":
            align(fields, 4)
            fields.extend(struct.pack("<I", value))

    field(5, "u", reply_serial)
    field(7, "s", ":1.1")
    if signature:
        field(8, "g", signature)
    for code, sig, value in extra_fields:
        field(code, sig, value)
    head = bytearray(b"l\x02\x00\x01")
    head += struct.pack("<III", body_len, serial, len(fields))
    head += fields
    align(head, 8)
    return bytes(head)


def read_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def handshake(conn):
    """Reads the client's lines up to BEGIN, answering as sd-bus does."""
    buf = b""
    while True:
        while b"\r\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                raise EOFError
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        line = line.lstrip(b"\0")
        if line.startswith(b"AUTH"):
            conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        elif line.startswith(b"NEGOTIATE_UNIX_FD"):
            conn.sendall(b"AGREE_UNIX_FD\r\n")
        elif line.startswith(b"BEGIN"):
            return buf
        else:
            conn.sendall(b"ERROR\r\n")


def next_call(conn, pending):
    """The serial of the next message the client sends, and what is left of the stream."""
    while len(pending) < 16:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        pending += chunk
    body_len, serial, fields_len = struct.unpack("<III", pending[4:16])
    total = ((16 + fields_len + 7) & ~7) + body_len
    while len(pending) < total:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        pending += chunk
    return serial, pending[total:]


def serve(conn, mode):
    try:
        pending = handshake(conn)
        serial, pending = next_call(conn, pending)
        if mode == "silent":
            while conn.recv(65536):
                pass
        elif mode == "trickle":
            body = 64 * 1024
            conn.sendall(reply_header(1, serial, body, "ay"))
            for _ in range(body):
                conn.sendall(b"\0")
                time.sleep(0.1)
        elif mode == "huge":
            body = 100 * 1024 * 1024
            conn.sendall(reply_header(1, serial, body, "ay"))
            chunk = b"\0" * (1024 * 1024)
            for _ in range(body // len(chunk)):
                conn.sendall(chunk)
            while conn.recv(65536):
                pass
        elif mode == "malformed":
            body = struct.pack("<I", 0)
            bad = [(2, "s", "not-an-interface")]
            conn.sendall(reply_header(1, serial, len(body), "as", bad) + body)
            while conn.recv(65536):
                pass
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def main():
    path, mode = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
