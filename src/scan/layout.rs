//! The shape of a Go build cache as cmd/go writes it, and nothing else.
//!
//! `ROOT/{README,trim.txt,testexpire.txt,log.txt}`, `ROOT/fuzz/`, 256 shards `00`..`ff`
//! holding `<64 hex>-a` (action records) and `<64 hex>-d` (outputs; since Go 1.24 an
//! executable output is a directory holding one file). Everything else is foreign.
//! A module cache's top level holds `cache/` and the first elements of module paths
//! (`golang.org`, `github.com`: they contain a dot, as Go requires of downloaded modules);
//! anything else there is foreign. Foreign entries are reported and never changed.

use crate::policy::CacheKind;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Root,
    Shard,
    /// README, trim.txt, testexpire.txt, log.txt, the cache program's counters: never
    /// evicted.
    Meta,
    /// fuzz/ and everything under it: Go's fuzzing corpus, never evicted by us.
    Fuzz,
    Action,
    Output,
    /// An executable output: a `-d` directory, evicted whole.
    Exec,
    ExecContent,
    Foreign,
    /// Anything in a module cache under `cache/` or a module path (see `modcache`).
    Module,
    /// `gocache-warden-quarantine/` (see `integrity`) and what it holds: the agent's own,
    /// never evicted, never given the cache's permissions (it stays 0700), not foreign.
    Quarantine,
}

pub const META_FILES: [&[u8]; 6] = [
    b"README",
    b"trim.txt",
    b"testexpire.txt",
    b"log.txt",
    // `gocache-warden cacheprog`'s per-user counters (see `cacheprog::stats`).
    b"gocache-warden-cacheprog.json",
    // Its memo of shared outputs already verified (see `cacheprog::memo`).
    b"gocache-warden-verified",
];

/// The cache program writes its memo under this prefix and renames it into place; one left
/// by a process killed in between is its too.
pub const MEMO_TEMP: &[u8] = b"gocache-warden-verified.tmp.";

/// Where `enforce --verify` moves what fails verification (`integrity::QUARANTINE`).
pub const QUARANTINE_DIR: &[u8] = b"gocache-warden-quarantine";

/// The first line of the README cmd/go writes into every build cache it creates.
pub const GO_README: &[u8] =
    b"This directory holds cached build artifacts from the Go build system.";

/// Can `name` be a top-level entry of a module cache? `cache` (downloads, VCS and sumdb
/// data) or the first element of an escaped module path: it has a dot, and the escaping
/// leaves no upper-case letters (`!` + lower case instead). Hidden names are never Go's.
pub fn is_module_top(name: &[u8], is_dir: bool) -> bool {
    is_dir
        && (name == b"cache"
            || (name.contains(&b'.')
                && !name.starts_with(b".")
                && name.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._~!@+".contains(c)
                })))
}

/// Classifies an entry of a cache of `kind`: [`classify`] for build caches; for module
/// caches `Root`, `Module` under Go's top-level names, `Foreign` elsewhere.
pub fn classify_in(
    kind: CacheKind,
    depth: usize,
    stack: &[&[u8]],
    name: &[u8],
    is_dir: bool,
) -> Class {
    match (kind, depth) {
        (CacheKind::Build, _) => classify(depth, stack, name, is_dir),
        (CacheKind::Module, 0) => Class::Root,
        (CacheKind::Module, 1) if is_module_top(name, is_dir) => Class::Module,
        (CacheKind::Module, 1) => Class::Foreign,
        (CacheKind::Module, _) if stack.first().is_some_and(|s| is_module_top(s, true)) => {
            Class::Module
        }
        (CacheKind::Module, _) => Class::Foreign,
    }
}

/// The class of walk entry `e` in a cache of `kind`: the one classifier inspection and apply
/// both use (the root, at depth 0, is `Root` whatever its name).
pub fn class_of(kind: CacheKind, e: &super::walk::Entry) -> Class {
    if e.depth == 0 {
        return Class::Root;
    }
    let stack: Vec<&[u8]> = e.stack.iter().map(|s| s.to_bytes()).collect();
    let is_dir = e.st.kind() == crate::safefs::Kind::Dir;
    classify_in(kind, e.depth, &stack, e.name.to_bytes(), is_dir)
}

/// Can child `name` at `depth` be an action record, by its name alone (before any `statx`)?
/// What a walk that needs only action records looks at below the shards.
pub fn may_be_action(depth: usize, name: &[u8]) -> bool {
    depth == 2 && entry_suffix(name) == Some(b'a')
}

fn is_hex(b: &[u8]) -> bool {
    b.iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

pub fn is_shard(name: &[u8]) -> bool {
    name.len() == 2 && is_hex(name)
}

/// `Some(b'a')` / `Some(b'd')` for `<64 hex>-a` / `<64 hex>-d`.
pub fn entry_suffix(name: &[u8]) -> Option<u8> {
    if name.len() == 66
        && name[64] == b'-'
        && is_hex(&name[..64])
        && matches!(name[65], b'a' | b'd')
    {
        Some(name[65])
    } else {
        None
    }
}

/// Classifies an entry of a build cache by where it is and what it is called.
/// `stack` holds the names of the directories between the root and the entry.
pub fn classify(depth: usize, stack: &[&[u8]], name: &[u8], is_dir: bool) -> Class {
    match depth {
        0 => Class::Root,
        1 if is_dir && is_shard(name) => Class::Shard,
        1 if is_dir && name == b"fuzz" => Class::Fuzz,
        1 if !is_dir && (META_FILES.contains(&name) || name.starts_with(MEMO_TEMP)) => Class::Meta,
        1 if is_dir && name == QUARANTINE_DIR => Class::Quarantine,
        1 => Class::Foreign,
        _ if stack.first() == Some(&&b"fuzz"[..]) => Class::Fuzz,
        _ if stack.first() == Some(&QUARANTINE_DIR) => Class::Quarantine,
        _ if !stack.first().is_some_and(|s| is_shard(s)) => Class::Foreign,
        2 => match (entry_suffix(name), is_dir) {
            (Some(b'a'), false) => Class::Action,
            (Some(b'd'), false) => Class::Output,
            (Some(b'd'), true) => Class::Exec,
            _ => Class::Foreign,
        },
        3 if !is_dir && stack.get(1).is_some_and(|s| entry_suffix(s) == Some(b'd')) => {
            Class::ExecContent
        }
        _ => Class::Foreign,
    }
}

/// The output id an action record names: `v1 <action hex> <output hex> <size> <time>\n`.
pub fn action_output(record: &[u8]) -> Option<[u8; 64]> {
    let mut f = record.split(|&b| b == b' ');
    if f.next()? != b"v1" {
        return None;
    }
    let _action = f.next()?;
    let out = f.next()?;
    if out.len() != 64 || !is_hex(out) {
        return None;
    }
    out.try_into().ok()
}

/// The output id and size an action record names (`v1 <action> <output> <size, 20
/// columns> <time, 20 columns>\n`): what `go` compares an output's size with before using it.
pub fn action_output_size(record: &[u8]) -> Option<([u8; 64], u64)> {
    let out = action_output(record)?;
    let rest = record.get(3 + 64 + 1 + 64 + 1..)?;
    let size = std::str::from_utf8(rest)
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((out, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_records_output_and_size() {
        let (a, o) = ("a".repeat(64), "b".repeat(64));
        let r = format!("v1 {a} {o} {:20} {:20}\n", 12345, 1);
        assert_eq!(r.len(), 175);
        let (out, size) = action_output_size(r.as_bytes()).expect("parsed");
        assert_eq!((&out[..], size), (o.as_bytes(), 12345));
        assert_eq!(action_output_size(b"v1 short"), None);
    }

    #[test]
    fn classes() {
        let h = [b'a'; 64];
        let mut a = h.to_vec();
        a.extend_from_slice(b"-a");
        let mut d = h.to_vec();
        d.extend_from_slice(b"-d");
        assert_eq!(classify(1, &[], b"0f", true), Class::Shard);
        assert_eq!(classify(1, &[], b"0F", true), Class::Foreign);
        assert_eq!(classify(1, &[], b"trim.txt", false), Class::Meta);
        assert_eq!(classify(2, &[b"aa"], &a, false), Class::Action);
        assert_eq!(classify(2, &[b"aa"], &d, false), Class::Output);
        assert_eq!(classify(2, &[b"aa"], &d, true), Class::Exec);
        assert_eq!(
            classify(3, &[b"aa", &d], b"prog", false),
            Class::ExecContent
        );
        assert_eq!(classify(3, &[b"fuzz", b"x"], b"y", false), Class::Fuzz);
        assert_eq!(classify(2, &[b"aa"], b"notes.txt", false), Class::Foreign);
    }

    #[test]
    fn module_cache_classes() {
        let m = CacheKind::Module;
        assert_eq!(classify_in(m, 0, &[], b"mod", true), Class::Root);
        assert_eq!(classify_in(m, 1, &[], b"cache", true), Class::Module);
        assert_eq!(classify_in(m, 1, &[], b"golang.org", true), Class::Module);
        assert_eq!(classify_in(m, 1, &[], b"github.com", true), Class::Module);
        assert_eq!(
            classify_in(m, 2, &[b"github.com"], b"!burnt!sushi", true),
            Class::Module
        );
        // A file, a hidden name, an unescaped upper-case name, a name without a dot.
        assert_eq!(classify_in(m, 1, &[], b"golang.org", false), Class::Foreign);
        assert_eq!(classify_in(m, 1, &[], b".git", true), Class::Foreign);
        assert_eq!(classify_in(m, 1, &[], b"GitHub.com", true), Class::Foreign);
        assert_eq!(classify_in(m, 1, &[], b"notes", true), Class::Foreign);
        assert_eq!(
            classify_in(m, 3, &[b"notes", b"x"], b"y", false),
            Class::Foreign
        );
    }

    /// One classifier for inspection and apply: the root is `Root` for both kinds, and the
    /// name-only filter apply's action walk uses agrees with it below the shards (a
    /// `notes-a` in a shard is foreign, not an action record to skip).
    #[test]
    fn the_walk_classifier_and_the_action_filter_agree() {
        let st = crate::safefs::Stat::default();
        let root = crate::scan::walk::Entry {
            parent: None,
            name: c".",
            st: &st,
            depth: 0,
            stack: &[],
        };
        assert_eq!(class_of(CacheKind::Build, &root), Class::Root);
        assert_eq!(class_of(CacheKind::Module, &root), Class::Root);
        let a = format!("{}-a", "c".repeat(64));
        for name in [a.as_bytes(), b"notes-a", b"x-a"] {
            assert_eq!(
                may_be_action(2, name),
                classify(2, &[b"cc"], name, false) == Class::Action,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        assert!(!may_be_action(3, a.as_bytes()));
    }

    #[test]
    fn output_of_action() {
        let rec = format!(
            "v1 {} {} {:20} {:20}\n",
            "a".repeat(64),
            "b".repeat(64),
            5,
            7
        );
        assert_eq!(rec.len(), 175);
        assert_eq!(action_output(rec.as_bytes()), Some([b'b'; 64]));
        assert_eq!(action_output(b"v2 x y"), None);
    }
}
