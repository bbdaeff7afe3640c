//! The shape of the code, checked: the module graph of `src/` has no cycles, and no source
//! or test file grows past the size a reader can hold in their head.
//!
//! Both are promises the README's architecture map makes. A cycle (`alert` ↔ `metrics`,
//! `daemon` ↔ `units`) means two subsystems can only be understood together; the fix is a
//! neutral module below both (`report/`), a stream or callback instead of the other side's
//! event type, or an option passed down instead of a global read up.
//!
//! The graph is read from the text (`crate::NAME` paths, `use crate::{A, B}` groups), the way
//! a reviewer reads imports; code under `#[cfg(test)]` is left out, as unit tests may reach
//! anywhere. A child module using its parent (`safefs::chase` → `safefs`) is not an edge
//! between top-level modules.

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

/// Top-level modules named by `crate::…` in `text`.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::B, c, d::{e, f}}`: the first identifier of each top-level item.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphanumeric() || c == '_') => {
                        out.insert(ident_at(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                out.insert(id);
            }
        }
    }
    out
}

/// The file without its `#[cfg(test)]` items (unit tests are at the end of each file here).
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn module_graph() -> Graph {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut g = Graph::new();
    for f in &files {
        let Some(m) = top_module(&src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read source");
        for to in references(non_test(&text)) {
            if to != m && modules.contains(&to) {
                let rel = f
                    .strip_prefix(root())
                    .expect("under root")
                    .display()
                    .to_string();
                g.entry(m.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(rel);
            }
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
    let g = module_graph();
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
