//! The `go env` file parser (`$GOENV`, users' own file) through the real resolution: the
//! input is written to a file GOENV names; any bytes, no panic.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use gocache_warden::goenv::{self, GoEnv};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static std::path::Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gcw-fuzz-goenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join("env")
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("write");
    let vars: BTreeMap<String, String> = [
        ("HOME".to_string(), "/h".to_string()),
        ("GOENV".to_string(), path().display().to_string()),
    ]
    .into();
    let r = goenv::resolve(&GoEnv::new(vars, None));
    let _ = r.gocache.path();
});
