//! Policy loading (TOML fragments → merged → validated): any text, no panic; an accepted
//! policy serialises.
#![no_main]

use gocache_warden::policy::{self, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = [Source {
        name: "fuzz.toml".into(),
        text: text.into(),
    }];
    if let Ok(p) = policy::load(&sources) {
        let _ = p.to_json();
    }
});
