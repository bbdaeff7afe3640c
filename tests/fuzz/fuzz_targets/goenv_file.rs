//! The `go env` file parser (`$GOENV`, users' own file) on any bytes: no panic, and what it
//! returns is what go would read (names start with A-Z and hold no '=', nothing spans lines).
//! The parser takes bytes, so no file is written per run.
#![no_main]

use gocache_warden::goenv::envfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = envfile::parse(data);
    let lines = data.split(|b| *b == b'\n').count();
    assert!(parsed.settings.len() <= lines);
    for (key, val) in &parsed.settings {
        assert!(key.starts_with(|c: char| c.is_ascii_uppercase()), "{key:?}");
        assert!(!key.contains('=') && !key.contains('\n') && !val.contains('\n'));
    }
    for (line, _) in &parsed.warnings {
        assert!((1..=lines).contains(line));
    }
});
