//! Build script: lets a fresh machine link libacl without its -dev package.
//!
//! `posix-acl` links `-lacl`, which needs the development symlink `libacl.so` (from
//! `libacl1-dev`). Every Debian/Ubuntu system has the runtime library `libacl.so.1` (coreutils
//! depends on it), so when the symlink is missing we create one in OUT_DIR pointing at the
//! runtime library and add OUT_DIR to the link search path. The binary ends up linked to the
//! same `libacl.so.1` either way.

use std::path::{Path, PathBuf};

const DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

fn main() {
    println!("cargo:rerun-if-changed=src/build.rs");
    if DIRS.iter().any(|d| Path::new(d).join("libacl.so").exists()) {
        return;
    }
    let Some(runtime) = DIRS
        .iter()
        .map(|d| Path::new(d).join("libacl.so.1"))
        .find(|p| p.exists())
    else {
        println!("cargo:warning=libacl not found: install libacl1-dev (Debian) or libacl-devel");
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let link = out.join("libacl.so");
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(&runtime, &link).is_ok() {
        println!("cargo:rustc-link-search=native={}", out.display());
    }
}
