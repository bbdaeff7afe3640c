//! `EnvironmentFile=` parser (systemd 252's rules): any bytes, no panic; every variable it
//! returns has a valid name and comes from a line inside the input.
#![no_main]

use gocache_warden::systemd::envfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = envfile::parse(data, std::path::Path::new("fuzz.env")) {
        let lines = data.iter().filter(|b| matches!(**b, b'\n' | b'\r')).count() + 1;
        for a in &env.vars {
            assert!(envfile::is_valid_name(&a.key), "{:?}", a.key);
            assert!(a.line as usize >= 1 && a.line as usize <= lines, "{}", a.line);
        }
    }
});
