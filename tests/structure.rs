//! The shape of the code, checked: the module graph of `src/` has no cycles, and no source
//! or test file grows past the size a reader can hold in their head.
//!
//! Both are promises the README's architecture map makes. A cycle (`alert` ↔ `metrics`,
//! `daemon` ↔ `units`) means two subsystems can only be understood together; the fix is a
//! neutral module below both (`report/`), a stream or callback instead of the other side's
//! event type, or an option passed down instead of a global read up.
//!
//! The graph is read from the text of whole files, the way a reviewer reads imports:
//! `crate::NAME` paths, `use crate::{A, B}` groups, and `super::` chains that climb to the
//! crate root. A child module using its parent (`safefs::chase` → `safefs`) is not an edge
//! between top-level modules. Code under `#[cfg(test)]` counts too: a unit test that reaches
//! into another subsystem ties the two together for whoever reads or changes them. The few
//! such edges known to close a cycle are listed in [`KNOWN_TEST_EDGES`], each of which must
//! stay test-only and must still exist, so the list can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate root files).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("file under src/");
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first identifier of each item after `crate::` or a `super::` chain: one for a path,
/// one per top-level item of a `{a::B, c, d::{e, f}}` group.
fn names_after(rest: &str) -> Vec<String> {
    let Some(group) = rest.strip_prefix('{') else {
        let id = ident_at(rest);
        return if id.is_empty() { Vec::new() } else { vec![id] };
    };
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (j, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && (c.is_ascii_alphanumeric() || c == '_') => {
                out.push(ident_at(&group[j..]));
                start = false;
            }
            _ => {}
        }
    }
    out
}

/// Top-level modules named by `crate::…` in `text`, each with its position.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    text.match_indices("crate::")
        .flat_map(|(i, _)| {
            names_after(&text[i + "crate::".len()..])
                .into_iter()
                .map(move |n| (i, n))
        })
        .collect()
}

/// Top-level modules named by `crate::…` in `text`.
fn references(text: &str) -> BTreeSet<String> {
    crate_refs(text).into_iter().map(|(_, n)| n).collect()
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `text` with string and character literals blanked (same length and line breaks), and
/// comments too unless `keep_comments`, so that braces and words inside them are not read
/// as code.
fn blank_literals(text: &str, keep_comments: bool) -> String {
    let b = text.as_bytes();
    let n = b.len();
    // Just past the first `pat` at or after `from` (the end of the text if there is none).
    let past = |from: usize, pat: &[u8]| {
        b[from.min(n)..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map_or(n, |p| from + p + pat.len())
    };
    // `r` opens a raw string only as a token of its own or after a `b` that is one.
    let raw_start = |i: usize| {
        let lone = |j: usize| j == 0 || !is_ident_byte(b[j - 1]);
        (lone(i) || (b[i - 1] == b'b' && lone(i - 1)))
            && b[i + 1..].iter().find(|c| **c != b'#') == Some(&b'"')
    };
    let mut out = b.to_vec();
    let mut i = 0;
    while i < n {
        let end = match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => past(i, b"\n") - 1,
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (0, i);
                while j < n {
                    if b[j..].starts_with(b"/*") {
                        depth += 1;
                        j += 2;
                    } else if b[j..].starts_with(b"*/") {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                j
            }
            b'r' if raw_start(i) => {
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                past(i + 2 + hashes, &close)
            }
            b'"' => {
                let mut j = i + 1;
                while j < n && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                j + 1
            }
            b'\'' if b.get(i + 1) == Some(&b'\\') => past(i + 3, b"'"),
            b'\'' => {
                // A character literal closes right after one character; a lifetime does not.
                let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + len) == Some(&b'\'') {
                    i + 2 + len
                } else {
                    i + 1
                }
            }
            _ => i + 1,
        };
        let end = end.clamp(i + 1, n);
        if end > i + 1 && !(keep_comments && b[i] == b'/') {
            for x in &mut out[i..end] {
                if *x != b'\n' {
                    *x = b' ';
                }
            }
        }
        i = end;
    }
    String::from_utf8(out).expect("only whole characters are blanked")
}

/// `text` with comments and literals blanked: the code alone.
fn code_only(text: &str) -> String {
    blank_literals(text, false)
}

/// The index just past the bracket that closes the one at `open` in `code`.
fn matching(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, c) in code.iter().enumerate().skip(open) {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// What the reader knows about one file's code.
#[derive(Default)]
struct Shape {
    /// Byte ranges of `mod NAME { … }` blocks (for `super::` chains).
    inline_mods: Vec<(usize, usize)>,
    /// Byte ranges of items under `#[cfg(test)]` (or `all(test, …)`).
    test_items: Vec<(usize, usize)>,
    /// Out-of-line modules declared under `#[cfg(test)]` (`mod tests;`).
    test_mod_files: Vec<String>,
}

/// Whether the `{` at `brace` opens `mod NAME { … }`.
fn opens_inline_mod(code: &str, brace: usize) -> bool {
    let before = code[..brace].trim_end();
    let name_len = before
        .bytes()
        .rev()
        .take_while(|c| is_ident_byte(*c))
        .count();
    let before = before[..before.len() - name_len].trim_end();
    name_len > 0
        && before
            .strip_suffix("mod")
            .is_some_and(|p| !p.bytes().last().is_some_and(is_ident_byte))
}

const ITEM_KEYWORDS: [&str; 17] = [
    "pub", "fn", "mod", "use", "impl", "struct", "enum", "const", "static", "type", "trait",
    "unsafe", "async", "extern", "let", "if", "return",
];

fn shape(code: &str) -> Shape {
    let b = code.as_bytes();
    let mut s = Shape::default();
    let mut stack = Vec::new();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'{' => stack.push((i, opens_inline_mod(code, i))),
            b'}' => {
                if let Some((open, true)) = stack.pop() {
                    s.inline_mods.push((open, i + 1));
                }
            }
            _ => {}
        }
    }
    for (at, _) in code.match_indices("#[cfg(") {
        let close = matching(b, at + 1);
        let pred = &code[at + "#[cfg(".len()..close.saturating_sub(2)];
        let words: Vec<&str> = pred
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        let test_only = pred.trim() == "test"
            || (pred.trim_start().starts_with("all(")
                && words.contains(&"test")
                && !pred.contains("not(test"));
        if !test_only {
            continue;
        }
        // The item: past further attributes, up to its `;`, its body's `}`, or (a field or a
        // variant) its `,`, whichever comes first; never past the block around it.
        let mut start = close;
        loop {
            start += code[start..].len() - code[start..].trim_start().len();
            if code[start..].starts_with("#[") {
                start = matching(b, start + 1);
            } else {
                break;
            }
        }
        let item_like = ITEM_KEYWORDS.contains(&ident_at(&code[start..]).as_str());
        let mut end = start;
        while end < b.len() {
            match b[end] {
                b';' => {
                    end += 1;
                    break;
                }
                b',' if !item_like => break,
                b')' | b']' | b'}' => break,
                b'{' => {
                    end = matching(b, end);
                    break;
                }
                b'(' | b'[' => end = matching(b, end),
                _ => end += 1,
            }
        }
        let item = &code[start..end];
        let decl = item
            .trim_start_matches("pub(crate)")
            .trim_start_matches("pub")
            .trim();
        if let Some(name) = decl.strip_prefix("mod ")
            && item.trim_end().ends_with(';')
        {
            s.test_mod_files.push(ident_at(name.trim()));
        }
        s.test_items.push((at, end));
    }
    s
}

/// Top-level modules a file at module depth `depth` (`acl.rs`: 1, `goenv/findings.rs`: 2)
/// names by `super::` chains that climb to the crate root, each with its position.
fn super_refs(code: &str, depth: usize, inline_mods: &[(usize, usize)]) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("super::") {
        let chained = at >= 2 && &code[at - 2..at] == "::";
        if chained || (at > 0 && is_ident_byte(b[at - 1])) {
            continue;
        }
        let mut rest = &code[at..];
        let mut k = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            k += 1;
            rest = r.trim_start();
        }
        let nested = inline_mods
            .iter()
            .filter(|(s, e)| *s < at && at < *e)
            .count();
        if k == depth + nested {
            out.extend(names_after(rest).into_iter().map(|n| (at, n)));
        }
    }
    out
}

/// Edges from one top-level module to another, with the files that make them; a file's
/// name carries " (test)" when only its `#[cfg(test)]` code makes the edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The top-level modules (other than its own) that the file `rel` (relative to `src/`)
/// names, each with whether only its `#[cfg(test)]` code does (`test_file`: all of it is).
fn file_edges(
    rel: &Path,
    text: &str,
    modules: &BTreeSet<String>,
    test_file: bool,
) -> BTreeMap<String, bool> {
    let own = top_module(Path::new(""), rel);
    let depth =
        rel.components().count() - usize::from(rel.file_name().is_some_and(|n| n == "mod.rs"));
    let code = code_only(text);
    let s = shape(&code);
    let in_test = |at: usize| test_file || s.test_items.iter().any(|(a, e)| *a <= at && at < *e);
    let mut edges: BTreeMap<String, bool> = BTreeMap::new();
    // Paths in comments count (a doc link ties two modules for a reader); in strings not.
    for (at, to) in crate_refs(&blank_literals(text, true))
        .into_iter()
        .chain(super_refs(&code, depth, &s.inline_mods))
    {
        if Some(&to) != own.as_ref() && modules.contains(&to) {
            let test_only = edges.entry(to).or_insert(true);
            *test_only &= in_test(at);
        }
    }
    edges
}

fn module_graph() -> Graph {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).expect("read source")))
        .collect();
    // Files that are test modules declared elsewhere (`#[cfg(test)] mod tests;`).
    let mut test_files = BTreeSet::new();
    for (f, text) in &texts {
        let stem = f.file_stem().expect("file name").to_string_lossy();
        let dir = if matches!(stem.as_ref(), "mod" | "lib" | "main") {
            f.parent().expect("parent").to_path_buf()
        } else {
            f.with_extension("")
        };
        for name in shape(&code_only(text)).test_mod_files {
            test_files.insert(dir.join(format!("{name}.rs")));
            test_files.insert(dir.join(&name).join("mod.rs"));
        }
    }
    let mut g = Graph::new();
    for (f, text) in &texts {
        let Some(m) = top_module(&src, f) else {
            continue;
        };
        let rel = f.strip_prefix(&src).expect("under src/");
        let name = f
            .strip_prefix(root())
            .expect("under root")
            .display()
            .to_string();
        for (to, test_only) in file_edges(rel, text, &modules, test_files.contains(f)) {
            let label = if test_only {
                format!("{name} (test)")
            } else {
                name.clone()
            };
            g.entry(m.clone())
                .or_default()
                .entry(to)
                .or_default()
                .insert(label);
        }
    }
    g
}

/// Edges that only unit tests make and that close a cycle, known and to be removed (moving
/// the test to the module it exercises). Each entry must stay test-only (a production use
/// is a cycle again) and must still exist (then delete the entry). Empty since `safefs`'s
/// test of its openat2 fallback through a walk moved to `scan::walk`: keep it so.
const KNOWN_TEST_EDGES: [(&str, &str, &str); 0] = [];

/// `g` without the [`KNOWN_TEST_EDGES`]; panics on an entry that is stale or no longer
/// test-only.
fn without_known_test_edges(mut g: Graph) -> Graph {
    for (a, b, file) in KNOWN_TEST_EDGES {
        let stale =
            || panic!("{file}'s tests no longer make {a} -> {b}: remove it from KNOWN_TEST_EDGES");
        let Some(files) = g.get_mut(a).and_then(|e| e.get_mut(b)) else {
            stale()
        };
        assert!(
            !files.contains(file),
            "{a} -> {b} is made by {file}'s own code now, not only by its tests"
        );
        if !files.remove(&format!("{file} (test)")) {
            stale()
        }
        if files.is_empty() {
            g.get_mut(a).expect("edges of a").remove(b);
        }
    }
    g
}

/// Every cycle's modules, found as strongly connected components (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        next: usize,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[v].min(self.low[w]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.low[v].min(self.index[w]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = T {
        g,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = without_known_test_edges(module_graph());
    assert!(
        g.len() > 10,
        "the graph looks empty; is the reader broken? {g:?}"
    );
    let found = cycles(&g);
    let mut explain = String::new();
    for scc in &found {
        explain.push_str(&format!("cycle among {scc:?}:\n"));
        for a in scc {
            for (b, files) in g.get(a).into_iter().flatten() {
                if scc.contains(b) {
                    explain.push_str(&format!("  {a} -> {b} in {files:?}\n"));
                }
            }
        }
    }
    assert!(found.is_empty(), "{explain}");
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_reads_use_groups() {
    // The checker must be able to fail: a two-module cycle and a group import.
    let mut g = Graph::new();
    for (a, b) in [
        ("alert", "metrics"),
        ("metrics", "alert"),
        ("daemon", "alert"),
    ] {
        g.entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert("x.rs".into());
    }
    assert_eq!(
        cycles(&g),
        vec![vec!["alert".to_string(), "metrics".into()]]
    );
    let refs = references(
        "use crate::{check::{self, Report}, scan, policy::value::x};\nlet a = crate::units::f();",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["check", "policy", "scan", "units"]
    );
}

#[test]
fn the_reader_reads_whole_files_and_tells_test_code_apart() {
    let modules: BTreeSet<String> = ["alert", "daemon", "goenv", "metrics", "scan", "units"]
        .map(String::from)
        .into();
    // Production code after a `#[cfg(test)]` import, a test module using another subsystem,
    // braces and paths in strings, characters and comments, and `super::` chains.
    let text = r##"
use super::Event;
#[cfg(test)]
use std::path::Path;
const OPEN: char = '{';
const S: &str = "crate::metrics is only text }";
// crate::units in a comment is read, as a reviewer would
fn f<'a>(x: &'a str) -> &'a str { crate::scan::g(x) }
#[cfg(test)]
mod tests {
    use super::super::super::alert::X;
    use super::super::resolve;
    #[test]
    fn t() { let _ = r#"}"#; }
}
"##;
    let e = file_edges(Path::new("daemon/verify.rs"), text, &modules, false);
    assert_eq!(
        e,
        [("alert", true), ("scan", false), ("units", false)]
            .map(|(m, t)| (m.to_string(), t))
            .into()
    );
    // A whole file that is a test module counts as test code.
    let e = file_edges(
        Path::new("goenv/tests.rs"),
        "use crate::scan;",
        &modules,
        true,
    );
    assert_eq!(e, [("scan".to_string(), true)].into());
    // `super::` from a top-level file reaches the crate root.
    let e = file_edges(
        Path::new("goenv/mod.rs"),
        "use super::{units, metrics::M};",
        &modules,
        false,
    );
    assert_eq!(e.keys().collect::<Vec<_>>(), ["metrics", "units"]);
}

#[test]
fn no_source_or_test_file_is_longer_than_800_lines() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        let d = root().join(dir);
        if d.exists() {
            rust_files(&d, &mut files);
        }
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).expect("read").lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by subsystem or threat (at most {MAX_LINES} lines each): {long:#?}"
    );
}
