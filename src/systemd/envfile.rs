//! Parser for systemd `EnvironmentFile=` files, byte for byte as systemd 252 reads them.
//!
//! This mirrors `parse_env_file_internal()` in systemd 252's `src/basic/env-file.c` plus the
//! checks `exec_context_load_environment()` applies afterwards (`load_env_file_push()` and
//! `strv_env_clean_with_callback()`), so that the inspector sees exactly the variables a service
//! would get. It is not a shell parser: there is no `$VAR` expansion, no `export`, and quotes are
//! only special right after `=`.
//!
//! The rules, as systemd 252 applies them:
//! - Whitespace is `" \t\n\r"`; both `\n` and `\r` end a line. Leading whitespace before a key
//!   is skipped; a line starting with `#` or `;` is a comment.
//! - A comment line ending in a backslash swallows the next line too (changed in systemd 254;
//!   we warn about it because it silently drops an assignment).
//! - A line without `=` is dropped silently by systemd; we warn.
//! - The key is everything before `=`, trailing whitespace removed. Keys that are not valid
//!   bash-style names (`[A-Za-z_][A-Za-z0-9_]*`, e.g. `export FOO`) are dropped by systemd with
//!   "Ignoring invalid environment assignment"; we keep them as warnings.
//! - After `=`, leading whitespace is skipped. `'…'` is taken literally; in `"…"` a backslash
//!   before one of `` " \ ` $ `` yields that character, a backslash-newline is removed, and any
//!   other backslash is kept. Outside quotes a backslash takes the next character literally and
//!   a backslash-newline continues the value on the next line. Trailing whitespace of an unquoted
//!   value is removed. Quoted and unquoted parts concatenate (`A="x" y` is `xy`).
//! - Invalid UTF-8 in a key or value makes systemd reject the whole file (the service then fails
//!   to start unless the file was listed with `-`): that is the one fatal error besides I/O.
//! - Everything after a NUL byte is ignored. Later assignments of a key replace earlier ones.
//!
//! Line numbers in our diagnostics are the real 1-based line where the assignment starts;
//! systemd's own messages count lines differently (they skip blank lines and continuations).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Files larger than this are refused by systemd's `read_full_file()` (`READ_FULL_BYTES_MAX`).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024 - 1;

/// One variable assignment that systemd would pass to the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    /// 1-based line where the assignment starts.
    pub line: u32,
}

/// A problem in an environment file, located as FILE:LINE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line; `None` when the problem concerns the whole file (I/O, size).
    pub line: Option<u32>,
    pub msg: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.msg),
            None => write!(f, "{}: {}", self.file.display(), self.msg),
        }
    }
}

impl std::error::Error for Diagnostic {}

/// The outcome of parsing a file systemd accepts: the variables it would set, in first-seen
/// order with the last value of each key, plus the assignments it would ignore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvFile {
    pub vars: Vec<Assignment>,
    pub warnings: Vec<Diagnostic>,
}

impl EnvFile {
    /// The value systemd would set for `key`, with the line it came from.
    pub fn get(&self, key: &str) -> Option<&Assignment> {
        self.vars.iter().find(|a| a.key == key)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
    CommentEscape,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_nl(c: u8) -> bool {
    matches!(c, b'\n' | b'\r')
}

/// Bash's (and systemd's) rule for variable names.
pub fn is_valid_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    match bytes.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return false,
    }
    bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `sysconf(_SC_ARG_MAX)`, which bounds names and values in systemd's validity checks.
fn arg_max() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    usize::try_from(n).unwrap_or(2 * 1024 * 1024)
}

/// Accumulates assignments the way `load_env_file_push` + `strv_env_clean` do.
struct Collector<'a> {
    file: &'a Path,
    out: EnvFile,
    arg_max: usize,
}

impl Collector<'_> {
    fn diag(&self, line: u32, msg: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_path_buf(),
            line: Some(line),
            msg,
        }
    }

    fn push(&mut self, line: u32, key: &[u8], value: &[u8]) -> Result<(), Diagnostic> {
        let key = std::str::from_utf8(key).map_err(|_| {
            self.diag(
                line,
                format!(
                    "invalid UTF-8 in key \"{}\": systemd rejects the whole file",
                    String::from_utf8_lossy(key)
                ),
            )
        })?;
        let value = std::str::from_utf8(value).map_err(|_| {
            self.diag(
                line,
                format!(
                    "invalid UTF-8 in value of {key} (\"{}\"): systemd rejects the whole file",
                    String::from_utf8_lossy(value)
                ),
            )
        })?;
        if !is_valid_name(key) || key.len() > self.arg_max.saturating_sub(2) {
            let msg = format!("invalid variable name \"{key}\": systemd ignores this assignment");
            self.out.warnings.push(self.diag(line, msg));
            return Ok(());
        }
        if value.len() > self.arg_max.saturating_sub(3)
            || key.len() + 1 + value.len() > self.arg_max.saturating_sub(1)
        {
            let msg = format!("value of {key} is longer than ARG_MAX: systemd ignores it");
            self.out.warnings.push(self.diag(line, msg));
            return Ok(());
        }
        let assignment = Assignment {
            key: key.to_owned(),
            value: value.to_owned(),
            line,
        };
        match self.out.vars.iter_mut().find(|a| a.key == key) {
            Some(existing) => *existing = assignment,
            None => self.out.vars.push(assignment),
        }
        Ok(())
    }
}

/// Parses the contents of an environment file. `file` only names the file in diagnostics.
/// `Err` means systemd would refuse the file as a whole.
pub fn parse(bytes: &[u8], file: &Path) -> Result<EnvFile, Diagnostic> {
    let mut c = Collector {
        file,
        out: EnvFile::default(),
        arg_max: arg_max(),
    };
    let mut state = State::PreKey;
    let mut key: Vec<u8> = Vec::new();
    let mut value: Vec<u8> = Vec::new();
    // Where trailing whitespace starts, if the key/value currently ends in whitespace.
    let mut key_ws: Option<usize> = None;
    let mut value_ws: Option<usize> = None;
    let mut line: u32 = 1;
    let mut start_line: u32 = 1;
    let mut quote_line: u32 = 1;

    let end = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => {
            let at = 1 + bytes[..nul].iter().filter(|&&b| b == b'\n').count();
            let msg = "NUL byte: systemd ignores the rest of the file".to_owned();
            c.out.warnings.push(c.diag(to_u32(at), msg));
            nul
        }
        None => bytes.len(),
    };

    for &ch in &bytes[..end] {
        match state {
            State::PreKey => {
                if ch == b'#' || ch == b';' {
                    state = State::Comment;
                } else if !is_ws(ch) {
                    state = State::Key;
                    key_ws = None;
                    key.clear();
                    key.push(ch);
                    start_line = line;
                }
            }
            State::Key => {
                if is_nl(ch) {
                    state = State::PreKey;
                    let shown = trimmed(&key, key_ws);
                    let msg = format!(
                        "line has no '=': systemd ignores \"{}\"",
                        String::from_utf8_lossy(shown)
                    );
                    c.out.warnings.push(c.diag(start_line, msg));
                    key.clear();
                } else if ch == b'=' {
                    state = State::PreValue;
                    value.clear();
                    value_ws = None;
                } else {
                    if !is_ws(ch) {
                        key_ws = None;
                    } else if key_ws.is_none() {
                        key_ws = Some(key.len());
                    }
                    key.push(ch);
                }
            }
            State::PreValue => {
                if is_nl(ch) {
                    state = State::PreKey;
                    c.push(start_line, trimmed(&key, key_ws), &value)?;
                } else if ch == b'\'' {
                    state = State::SingleQuote;
                    quote_line = line;
                } else if ch == b'"' {
                    state = State::DoubleQuote;
                    quote_line = line;
                } else if ch == b'\\' {
                    state = State::ValueEscape;
                } else if !is_ws(ch) {
                    state = State::Value;
                    value.push(ch);
                }
            }
            State::Value => {
                if is_nl(ch) {
                    state = State::PreKey;
                    let v = trimmed(&value, value_ws);
                    c.push(start_line, trimmed(&key, key_ws), v)?;
                } else if ch == b'\\' {
                    state = State::ValueEscape;
                    value_ws = None;
                } else {
                    if !is_ws(ch) {
                        value_ws = None;
                    } else if value_ws.is_none() {
                        value_ws = Some(value.len());
                    }
                    value.push(ch);
                }
            }
            State::ValueEscape => {
                state = State::Value;
                // An escaped newline is a line continuation and disappears entirely.
                if !is_nl(ch) {
                    value.push(ch);
                }
            }
            State::SingleQuote => {
                if ch == b'\'' {
                    state = State::PreValue;
                } else {
                    value.push(ch);
                }
            }
            State::DoubleQuote => {
                if ch == b'"' {
                    state = State::PreValue;
                } else if ch == b'\\' {
                    state = State::DoubleQuoteEscape;
                } else {
                    value.push(ch);
                }
            }
            State::DoubleQuoteEscape => {
                state = State::DoubleQuote;
                if matches!(ch, b'"' | b'\\' | b'`' | b'$') {
                    value.push(ch);
                } else if ch != b'\n' {
                    // Like the shell, an unknown escape keeps its backslash.
                    value.push(b'\\');
                    value.push(ch);
                }
            }
            State::Comment => {
                if ch == b'\\' {
                    state = State::CommentEscape;
                } else if is_nl(ch) {
                    state = State::PreKey;
                }
            }
            State::CommentEscape => {
                state = State::Comment;
                if is_nl(ch) {
                    let msg = "comment ends with a backslash: systemd 252 treats the next line \
                               as part of the comment"
                        .to_owned();
                    c.out.warnings.push(c.diag(line, msg));
                }
            }
        }
        if ch == b'\n' {
            line = line.saturating_add(1);
        }
    }

    match state {
        State::PreValue | State::ValueEscape => {
            c.push(start_line, trimmed(&key, key_ws), &value)?;
        }
        State::Value => {
            let v = trimmed(&value, value_ws);
            c.push(start_line, trimmed(&key, key_ws), v)?;
        }
        State::SingleQuote | State::DoubleQuote | State::DoubleQuoteEscape => {
            let msg = "quote opened here is never closed: systemd takes the rest of the file \
                       as the value"
                .to_owned();
            c.out.warnings.push(c.diag(quote_line, msg));
            c.push(start_line, trimmed(&key, key_ws), &value)?;
        }
        State::Key => {
            let shown = trimmed(&key, key_ws);
            let msg = format!(
                "line has no '=': systemd ignores \"{}\"",
                String::from_utf8_lossy(shown)
            );
            c.out.warnings.push(c.diag(start_line, msg));
        }
        State::PreKey | State::Comment | State::CommentEscape => {}
    }
    Ok(c.out)
}

fn trimmed(buf: &[u8], ws: Option<usize>) -> &[u8] {
    match ws {
        Some(at) => &buf[..at],
        None => buf,
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the agent reads at most of one environment file. systemd accepts up to
/// [`MAX_FILE_BYTES`], but the files are users' and the agent reads them on every sweep: a
/// larger file is reported as not inspected instead of costing the agent its memory.
pub const INSPECT_MAX_BYTES: usize = 1024 * 1024;

/// Reads and parses one environment file. Errors (unreadable, not a regular file, invalid
/// UTF-8) are the ones that make systemd refuse the file; a file larger than
/// [`INSPECT_MAX_BYTES`] is a warning with no variables. The read never blocks (a FIFO is an
/// error, not a wait) and follows the rules of [`crate::untrusted`]; callers run it with the
/// unit's user's credentials.
pub fn read(path: &Path) -> Result<EnvFile, Diagnostic> {
    let whole_file = |msg: String| Diagnostic {
        file: path.to_path_buf(),
        line: None,
        msg,
    };
    let bytes = match crate::untrusted::read_bounded(path, INSPECT_MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            return Ok(EnvFile {
                vars: vec![],
                warnings: vec![whole_file(format!(
                    "larger than {INSPECT_MAX_BYTES} bytes: not inspected (systemd reads up \
                     to {MAX_FILE_BYTES})"
                ))],
            });
        }
        Err(e) => return Err(whole_file(format!("cannot open: {e}"))),
    };
    parse(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(input: &str) -> Vec<(String, String)> {
        parse(input.as_bytes(), Path::new("t.env"))
            .unwrap()
            .vars
            .into_iter()
            .map(|a| (a.key, a.value))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_table() {
        let table: &[(&str, &[(&str, &str)])] = &[
            ("A=1\nB=2\n", &[("A", "1"), ("B", "2")]),
            ("  A = 1  \n", &[("A", "1")]),
            ("A=a b  c   \n", &[("A", "a b  c")]),
            ("A=\n", &[("A", "")]),
            ("A=", &[("A", "")]),
            ("A=x", &[("A", "x")]),
            ("# c\n; c\nA=1\n", &[("A", "1")]),
            ("A=1 # not a comment\n", &[("A", "1 # not a comment")]),
            ("A='x \\\" $y'\n", &[("A", "x \\\" $y")]),
            (
                "A=\"a\\\"b\\\\c\\`d\\$e\\nf\"\n",
                &[("A", "a\"b\\c`d$e\\nf")],
            ),
            ("A=\"one\\\ntwo\"\n", &[("A", "onetwo")]),
            ("A=\"multi\nline\"\n", &[("A", "multi\nline")]),
            ("A=one\\\n  two\n", &[("A", "one  two")]),
            ("A=x\\ \n", &[("A", "x ")]),
            ("A=\\ \\ x\n", &[("A", "  x")]),
            ("A=\"x\" y\n", &[("A", "xy")]),
            ("A=x \"y\"\n", &[("A", "x \"y\"")]),
            ("A=\"x\"'y'\n", &[("A", "xy")]),
            ("A=1\nA=2\n", &[("A", "2")]),
            ("A=1\r\nB=2\r\n", &[("A", "1"), ("B", "2")]),
            ("A=1\rB=2", &[("A", "1"), ("B", "2")]),
            ("A=a=b\n", &[("A", "a=b")]),
            ("\n\n\t A=1", &[("A", "1")]),
            ("# comment \\\nA=1\nB=2\n", &[("B", "2")]),
            ("A=x\0B=2\n", &[("A", "x")]),
            ("A=é\n", &[("A", "é")]),
        ];
        for (input, want) in table {
            assert_eq!(vars(input), pairs(want), "input {input:?}");
        }
    }

    #[test]
    fn warnings_carry_lines() {
        let input = "A=1\n\nexport GOCACHE=/x\nnoequals\n1X=3\nB=\"open\nstill\n";
        let env = parse(input.as_bytes(), Path::new("/etc/w.env")).unwrap();
        let got: Vec<(Option<u32>, String)> = env
            .warnings
            .iter()
            .map(|d| (d.line, d.to_string()))
            .collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(got[0].0, Some(3));
        assert!(
            got[0]
                .1
                .starts_with("/etc/w.env:3: invalid variable name \"export GOCACHE\"")
        );
        assert_eq!(got[1].0, Some(4));
        assert!(got[1].1.contains("no '='"));
        assert_eq!(got[2].0, Some(5));
        assert!(got[2].1.contains("\"1X\""));
        assert_eq!(got[3].0, Some(6));
        assert!(got[3].1.contains("never closed"));
        assert_eq!(
            env.get("B").map(|a| a.value.as_str()),
            Some("open\nstill\n")
        );
        assert_eq!(env.get("GOCACHE"), None);
        assert_eq!(env.get("A").map(|a| a.line), Some(1));
    }

    #[test]
    fn comment_continuation_warns() {
        let env = parse(b"# x \\\nGOCACHE=/a\n", Path::new("f")).unwrap();
        assert!(env.vars.is_empty());
        assert_eq!(env.warnings.len(), 1);
        assert_eq!(env.warnings[0].line, Some(1));
    }

    #[test]
    fn continuation_lines_report_start_line() {
        let env = parse(b"A=1\nB=x\\\ny\\\nz\nC=\"p\nq\"\nD=4\n", Path::new("f")).unwrap();
        let lines: Vec<(&str, u32)> = env.vars.iter().map(|a| (a.key.as_str(), a.line)).collect();
        assert_eq!(lines, vec![("A", 1), ("B", 2), ("C", 5), ("D", 7)]);
    }

    #[test]
    fn invalid_utf8_is_fatal_with_line() {
        let err = parse(b"A=1\nB=2\nGOCACHE=\xff\xfe\n", Path::new("/e/bad.env")).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(
            err.to_string()
                .starts_with("/e/bad.env:3: invalid UTF-8 in value of GOCACHE")
        );
        let err = parse(b"\n\xffA=1\n", Path::new("k")).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.msg.contains("invalid UTF-8 in key"));
    }

    #[test]
    fn nul_byte_warns() {
        let env = parse(b"A=1\nB=2\0C=3\n", Path::new("n")).unwrap();
        assert_eq!(env.warnings.len(), 1);
        assert_eq!(env.warnings[0].line, Some(2));
        assert_eq!(env.vars.len(), 2);
    }

    #[test]
    fn names() {
        for ok in ["A", "_", "a_1", "GOCACHE"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "export A", "Ä", "=A"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn read_reports_missing_file() {
        let err = read(Path::new("/nonexistent/gcw.env")).unwrap_err();
        assert_eq!(err.line, None);
        assert!(
            err.to_string()
                .starts_with("/nonexistent/gcw.env: cannot open")
        );
    }
}
