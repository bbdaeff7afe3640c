//! Is a directory a Go cache of its kind? Asked before anything is changed in a cache root,
//! so a policy pointing at `/etc`, a home directory or a copy of either can never hand out
//! a group, an ACL or an eviction there.
//!
//! A build cache is recognised by Go's `README` (cmd/go writes it into every cache it
//! creates) or, failing that, by holding nothing but Go's layout (shards, `README`,
//! `trim.txt`, `testexpire.txt`, `log.txt`, `fuzz/`); a module cache by `cache/download/` or
//! nothing but `cache/` and module-path directories. An empty directory holds nothing but
//! Go's layout: `go` (or `create = true`) makes it a cache on first use. Only the root's own
//! entries are looked at (one listing, one `statx` each, one bounded read of `README`).

use super::layout::{self, Class};
use crate::policy::CacheKind;
use crate::safefs::{Dir, Kind};

/// `Ok` if the directory at `root` looks like a Go cache of `kind`, else why not.
pub fn recognize(root: &Dir, kind: CacheKind) -> Result<(), String> {
    let has_marker = match kind {
        CacheKind::Build => has_go_readme(root),
        CacheKind::Module => has_download_dir(root),
    };
    if has_marker {
        return Ok(());
    }
    let names = root
        .list()
        .map_err(|e| format!("cannot list it to tell whether it is a Go cache: {e}"))?;
    for n in names {
        let st = match root.stat(&n) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot stat {n:?} in it: {e}")),
        };
        let is_dir = st.kind() == Kind::Dir;
        let go_entry = matches!(st.kind(), Kind::Dir | Kind::File)
            && layout::classify_in(kind, 1, &[], n.to_bytes(), is_dir) != Class::Foreign;
        if !go_entry {
            let marker = match kind {
                CacheKind::Build => "Go's README",
                CacheKind::Module => "cache/download/",
            };
            return Err(format!(
                "it does not look like a Go {kind} cache: it has no {marker} and {} is not part of Go's layout",
                crate::scan::display_path(std::path::Path::new(crate::safefs::name_os(&n)))
            ));
        }
    }
    Ok(())
}

/// `README` is a regular file with one name whose first line is Go's.
fn has_go_readme(root: &Dir) -> bool {
    let Ok(st) = root.stat(c"README") else {
        return false;
    };
    if st.kind() != Kind::File || st.nlink > 1 {
        return false;
    }
    root.read_small(c"README", &st, layout::GO_README.len())
        .is_ok_and(|b| b.starts_with(layout::GO_README))
}

fn has_download_dir(root: &Dir) -> bool {
    let sub = |d: &Dir, name: &std::ffi::CStr| {
        let st = d.stat(name).ok()?;
        (st.kind() == Kind::Dir).then(|| d.open_dir(name, &st).ok())?
    };
    sub(root, c"cache").is_some_and(|c| sub(&c, c"download").is_some())
}
