//! The `go env` file format (the user's `$GOENV` and `$GOROOT/go.env`), parsed as cmd/go's
//! `cfg.readEnvFile` does, from bytes already read: no I/O here, so the fuzz target
//! (`tests/fuzz/fuzz_targets/goenv_file.rs`) runs the parser alone, and `resolve.rs` decides
//! which file wins. Besides the settings it reports what go does silently that a user may not
//! expect (kept quotes, kept spaces, lines it ignores).

/// One parsed env file: the `NAME=VALUE` settings in file order (a later one wins in the user
/// file, the first in go.env), and warnings as `(line, message)`, lines counted from 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedEnvFile {
    pub settings: Vec<(String, String)>,
    pub warnings: Vec<(usize, String)>,
}

/// Parses the bytes of a `go env` file. Never fails: go ignores what it cannot use, and so
/// does this, with a warning.
pub fn parse(data: &[u8]) -> ParsedEnvFile {
    let mut out = ParsedEnvFile::default();
    // Go splits on '\n' only; a final line without newline still counts.
    for (idx, raw) in data.split(|b| *b == b'\n').enumerate() {
        let n = idx + 1;
        let mut warn = |message: String| out.warnings.push((n, message));
        let text = String::from_utf8_lossy(raw);
        let eq = raw.iter().position(|b| *b == b'=');
        let valid_start = raw.first().is_some_and(u8::is_ascii_uppercase);
        let (Some(eq), true) = (eq, valid_start) else {
            let t = text.trim();
            if !t.is_empty() && !t.starts_with('#') {
                warn(format!(
                    "ignored by go: not NAME=VALUE with NAME starting with A-Z: {:?}",
                    text
                ));
            }
            continue;
        };
        let key = String::from_utf8_lossy(&raw[..eq]).into_owned();
        let val = String::from_utf8_lossy(&raw[eq + 1..]).into_owned();
        if std::str::from_utf8(raw).is_err() {
            warn("not valid UTF-8; read lossily".to_string());
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            warn(format!(
                "variable name {key:?} has characters go does not trim; it sets nothing useful"
            ));
        }
        if val.ends_with('\r') {
            warn(format!(
                "{key} value ends in a carriage return, which go keeps"
            ));
        } else if val != val.trim() {
            warn(format!(
                "{key} value has surrounding spaces, which go keeps"
            ));
        }
        if val.len() >= 2
            && ((val.starts_with('"') && val.ends_with('"'))
                || (val.starts_with('\'') && val.ends_with('\'')))
        {
            warn(format!("{key} value is quoted; go keeps the quotes"));
        }
        out.settings.push((key, val));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_in_order_and_warnings_by_line() {
        let p = parse(b"# comment\nGOCACHE=/a\nbad line\nGOFLAGS= -x \nGOCACHE=\"/b\"\r\nlower=1");
        assert_eq!(
            p.settings,
            vec![
                ("GOCACHE".to_string(), "/a".to_string()),
                ("GOFLAGS".to_string(), " -x ".to_string()),
                ("GOCACHE".to_string(), "\"/b\"\r".to_string()),
            ]
        );
        let lines: Vec<usize> = p.warnings.iter().map(|w| w.0).collect();
        assert_eq!(lines, vec![3, 4, 5, 6], "{:?}", p.warnings);
    }
}
