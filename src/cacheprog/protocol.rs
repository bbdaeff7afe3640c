//! The GOCACHEPROG wire protocol, exactly as cmd/go speaks it (Go ≥ 1.24,
//! `cmd/go/internal/cacheprog` and `cmd/go/internal/cache/prog.go`).
//!
//! One JSON object per line each way. Requests carry `ID`, `Command` and, for `get` and
//! `put`, `ActionID`/`OutputID` as JSON strings of standard base64 (Go's `[]byte`). A `put`
//! with `BodySize > 0` is followed by a line holding the body as one JSON string of base64
//! (written raw by cmd/go: `"` + base64 + `"\n`), which we decode while streaming it to
//! its destination, never holding it in memory. Responses may be sent in any order; we
//! answer in order, several per write when cmd/go has pipelined several requests. The first response (ID 0) lists `KnownCommands`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::{self, BufRead, Write};

/// Go's hash size (SHA-256): ActionID and OutputID are exactly this long.
pub const HASH_SIZE: usize = 32;

/// Longest request line we accept: a real one is under 300 bytes. Anything longer is
/// malformed and is skipped without being buffered whole.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Request {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Command")]
    pub command: String,
    #[serde(rename = "ActionID", default, deserialize_with = "de_b64")]
    pub action_id: Option<Vec<u8>>,
    #[serde(rename = "OutputID", default, deserialize_with = "de_b64")]
    pub output_id: Option<Vec<u8>>,
    #[serde(rename = "BodySize", default)]
    pub body_size: i64,
}

impl Request {
    /// The action ID as a fixed-size hash, when it is one.
    pub fn action(&self) -> Option<[u8; HASH_SIZE]> {
        self.action_id.as_deref()?.try_into().ok()
    }
    pub fn output(&self) -> Option<[u8; HASH_SIZE]> {
        self.output_id.as_deref()?.try_into().ok()
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Err", skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(rename = "KnownCommands", skip_serializing_if = "Vec::is_empty")]
    pub known_commands: Vec<&'static str>,
    #[serde(rename = "Miss", skip_serializing_if = "std::ops::Not::not")]
    pub miss: bool,
    #[serde(
        rename = "OutputID",
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_b64"
    )]
    pub output_id: Option<[u8; HASH_SIZE]>,
    #[serde(rename = "Size", skip_serializing_if = "is_zero")]
    pub size: i64,
    /// RFC 3339 with nanoseconds, which Go's `time.Time` unmarshals.
    #[serde(rename = "Time", skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(rename = "DiskPath", skip_serializing_if = "String::is_empty")]
    pub disk_path: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => STANDARD
            .decode(s.as_bytes())
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn ser_b64<S: Serializer>(v: &Option<[u8; HASH_SIZE]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

/// Formats Unix nanoseconds as Go's `time.Time` JSON (RFC 3339, nanoseconds, UTC).
pub fn go_time(unix_nanos: i64) -> Option<String> {
    let t = chrono::DateTime::from_timestamp(
        unix_nanos.div_euclid(1_000_000_000),
        unix_nanos.rem_euclid(1_000_000_000) as u32,
    )?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

/// What reading the next request gave.
#[derive(Debug)]
pub enum Next {
    Request(Request),
    /// A line that is not a request (logged and skipped: cmd/go never sends one).
    Malformed(String),
    /// End of input: cmd/go closed our stdin.
    Eof,
}

/// Reads the next non-empty line and parses it as a request. cmd/go writes an extra `\n`
/// after every request, so empty lines are normal.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Next> {
    loop {
        let mut line = Vec::new();
        let n = io::Read::take(&mut *r, MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(Next::Eof);
        }
        if line.last() != Some(&b'\n') && n >= MAX_LINE {
            skip_line(r)?;
            return Ok(Next::Malformed(format!(
                "request line longer than {MAX_LINE} bytes"
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Ok(match serde_json::from_slice::<Request>(&line) {
            Ok(req) => Next::Request(req),
            Err(e) => Next::Malformed(format!("invalid request: {e}")),
        });
    }
}

fn skip_line(r: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        r.consume(n);
    }
}

/// Streams a `put` body (`"<base64>"` on its own line) into `out`, decoding as it goes.
/// Returns the number of decoded bytes. The whole body line is always consumed, even when
/// `out` fails (the error is then returned after the line is drained), so the stream stays
/// in sync with cmd/go's requests.
pub fn read_body(r: &mut impl BufRead, out: &mut dyn Write) -> io::Result<u64> {
    // Skip whitespace up to the opening quote.
    loop {
        let buf = r.fill_buf()?;
        let Some(&b) = buf.first() else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "missing body"));
        };
        if b.is_ascii_whitespace() {
            r.consume(1);
            continue;
        }
        if b != b'"' {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "body is not a JSON string",
            ));
        }
        r.consume(1);
        break;
    }
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024 + 4);
    let mut decoded = vec![0u8; 48 * 1024 + 3];
    let mut total = 0u64;
    let mut write_err: Option<io::Error> = None;
    let mut flush = |pending: &mut Vec<u8>, last: bool, total: &mut u64| -> io::Result<()> {
        let take = if last {
            pending.len()
        } else {
            pending.len() / 4 * 4
        };
        if take == 0 {
            return Ok(());
        }
        let n = STANDARD
            .decode_slice(&pending[..take], &mut decoded)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("body: {e}")))?;
        *total += n as u64;
        if write_err.is_none()
            && let Err(e) = out.write_all(&decoded[..n])
        {
            write_err = Some(e);
        }
        pending.drain(..take);
        Ok(())
    };
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        let (chunk, done) = match memchr::memchr(b'"', buf) {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let mut rest = chunk;
        while !rest.is_empty() {
            let room = 64 * 1024 - pending.len();
            let k = room.min(rest.len());
            pending.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if pending.len() >= 64 * 1024 {
                flush(&mut pending, false, &mut total)?;
            }
        }
        match done {
            Some(consumed) => {
                r.consume(consumed);
                flush(&mut pending, true, &mut total)?;
                break;
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
    match write_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Writes one response line and flushes it (cmd/go waits for each).
pub fn write_response(w: &mut impl Write, res: &Response) -> io::Result<()> {
    write_response_unflushed(w, res)?;
    w.flush()
}

/// Writes one response line into `w`'s buffer; the caller flushes (see
/// [`request_buffered`]).
pub fn write_response_unflushed(w: &mut impl Write, res: &Response) -> io::Result<()> {
    serde_json::to_writer(&mut *w, res)?;
    w.write_all(b"\n")
}

/// Whether `buf` (what is already read from cmd/go) holds a whole next request line, i.e.
/// reading it will not block: then the responses so far may wait for it in our buffer.
pub fn request_buffered(buf: &[u8]) -> bool {
    buf.iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| buf[i..].contains(&b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_put_and_streams_body() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let text = format!(
            "{{\"ID\":3,\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{}}}\n\n\"{}\"\n{{\"ID\":4,\"Command\":\"close\"}}\n\n",
            STANDARD.encode([1u8; 32]),
            STANDARD.encode([2u8; 32]),
            body.len(),
            STANDARD.encode(&body)
        );
        let mut r = io::BufReader::with_capacity(1000, text.as_bytes());
        let Next::Request(req) = read_request(&mut r).unwrap() else {
            panic!("expected a request")
        };
        assert_eq!(req.command, "put");
        assert_eq!(req.action(), Some([1u8; 32]));
        assert_eq!(req.output(), Some([2u8; 32]));
        let mut out = Vec::new();
        assert_eq!(read_body(&mut r, &mut out).unwrap(), body.len() as u64);
        assert_eq!(out, body);
        let Next::Request(req) = read_request(&mut r).unwrap() else {
            panic!("expected close")
        };
        assert_eq!((req.id, req.command.as_str()), (4, "close"));
        assert!(matches!(read_request(&mut r).unwrap(), Next::Eof));
    }

    #[test]
    fn a_request_counts_as_buffered_only_when_its_whole_line_is() {
        // What cmd/go leaves after a request line: its extra newline, maybe the next one.
        assert!(!request_buffered(b""));
        assert!(!request_buffered(b"\n"));
        assert!(!request_buffered(b"\n{\"ID\":2,\"Command\":\"get\""));
        assert!(request_buffered(b"\n{\"ID\":2,\"Command\":\"close\"}\n"));
        assert!(request_buffered(b"{\"ID\":2}\n\n"));
    }

    #[test]
    fn malformed_lines_are_reported_not_fatal() {
        let text = "not json\n{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"!!\"}\n{\"ID\":2,\"Command\":\"close\"}\n";
        let mut r = io::BufReader::new(text.as_bytes());
        assert!(matches!(read_request(&mut r).unwrap(), Next::Malformed(_)));
        assert!(matches!(read_request(&mut r).unwrap(), Next::Malformed(_)));
        assert!(matches!(read_request(&mut r).unwrap(), Next::Request(q) if q.id == 2));
    }

    #[test]
    fn response_matches_go_field_names() {
        let res = Response {
            id: 7,
            output_id: Some([0xab; 32]),
            size: 5,
            time: go_time(1_700_000_000_123_456_789),
            disk_path: "/x/y".into(),
            ..Default::default()
        };
        let j = serde_json::to_string(&res).unwrap();
        assert_eq!(
            j,
            format!(
                "{{\"ID\":7,\"OutputID\":\"{}\",\"Size\":5,\"Time\":\"2023-11-14T22:13:20.123456789Z\",\"DiskPath\":\"/x/y\"}}",
                STANDARD.encode([0xab; 32])
            )
        );
        let miss = Response {
            id: 1,
            miss: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&miss).unwrap(),
            "{\"ID\":1,\"Miss\":true}"
        );
    }
}
