//! Modules import one way. Reads every `.rs` file under `src/`, finds which
//! top-level modules each top-level module names (`crate::x`, `use crate::{x,
//! ...}` groups, nested braces included; `super::` stays inside a module), and
//! fails on any cycle between top-level modules and on any edge that points
//! up the documented layers (the same table as `src/lib.rs` and README).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first; a module may name only modules of a lower rank.
/// Keep in step with the map in `src/lib.rs` and README "Architecture".
const LAYERS: &[(&str, u32)] = &[
    ("cli", 11),
    ("config", 10),
    ("bench", 10),
    ("server", 9),
    ("operations", 8),
    // Cluster mode: etcd session and node directory; used by server and cli.
    ("cluster", 8),
    ("gateway", 7),
    ("departments", 6),
    ("security", 5),
    ("audit", 4),
    ("policy", 3),
    // Leaves.
    ("signing", 2),
    ("subject", 2),
    ("merkle", 1),
    ("metrics", 1),
    ("clock", 1),
    ("telemetry", 1),
    ("pb", 0),
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (None: lib.rs, main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// The code without comments and string literals, so prose and messages
/// that mention `crate::x` do not count.
fn strip_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\'', '–') or a lifetime ('a).
                let rest = &text[i + 1..];
                let literal_len = match rest.chars().next() {
                    Some('\\') => rest
                        .get(2..)
                        .and_then(|r| r.find('\''))
                        .map(|end| 2 + end + 1),
                    Some(c) if rest[c.len_utf8()..].starts_with('\'') => Some(c.len_utf8() + 1),
                    _ => None,
                };
                match literal_len {
                    Some(len) => {
                        i += 1 + len;
                        out.push_str("' '");
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// The top-level modules `code` names through `crate::`.
fn references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `$crate::` and identifiers ending in `crate` are not paths from the root.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !ident.is_empty() {
                            found.insert(std::mem::take(&mut ident));
                        }
                        item_start = true;
                    }
                    c if item_start && (c.is_alphanumeric() || c == '_') => ident.push(c),
                    _ if item_start && !ident.is_empty() => {
                        found.insert(std::mem::take(&mut ident));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !ident.is_empty() {
                found.insert(ident);
            }
        } else {
            let ident: String = trimmed
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.insert(ident);
            }
        }
    }
    found.remove("self");
    found
}

fn source_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let edges = graph.entry(module.clone()).or_default();
        for target in references(&strip_comments_and_strings(&text)) {
            if target != module {
                edges.insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules along it (first repeated at the end).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::Unseen) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::Unseen => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::Unseen) == Mark::Unseen {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// Edges that do not point down the layers, or name a module not in them.
fn upward_edges(graph: &Graph) -> Vec<String> {
    let rank: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, targets) in graph {
        let Some(&from_rank) = rank.get(from.as_str()) else {
            wrong.push(format!("module `{from}` is not in the layer table"));
            continue;
        };
        for to in targets {
            match rank.get(to.as_str()) {
                None => wrong.push(format!("{from} → {to}: `{to}` is not in the layer table")),
                Some(&to_rank) if to_rank >= from_rank => wrong.push(format!(
                    "{from} (rank {from_rank}) → {to} (rank {to_rank}): imports must point down"
                )),
                Some(_) => {}
            }
        }
    }
    wrong
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry((*from).to_owned())
            .or_default()
            .insert((*to).to_owned());
        graph.entry((*to).to_owned()).or_default();
    }
    graph
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = source_graph();
    assert!(graph.len() > 10, "src/ was not read: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn imports_point_down_the_documented_layers() {
    let wrong = upward_edges(&source_graph());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_cycle_finder_finds_cycles_and_only_cycles() {
    let acyclic = graph_of(&[
        ("server", "gateway"),
        ("gateway", "audit"),
        ("server", "audit"),
    ]);
    assert_eq!(find_cycle(&acyclic), None);
    let cyclic = graph_of(&[
        ("audit", "departments"),
        ("departments", "gateway"),
        ("gateway", "audit"),
    ]);
    let cycle = find_cycle(&cyclic).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert!(
        find_cycle(&graph_of(&[("a", "a")])).is_some(),
        "a self-loop"
    );
}

#[test]
fn an_upward_edge_is_reported() {
    assert!(upward_edges(&graph_of(&[("server", "gateway")])).is_empty());
    let wrong = upward_edges(&graph_of(&[("audit", "departments")]));
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].contains("audit"));
}

#[test]
fn references_are_found_in_paths_and_nested_use_groups() {
    let code = strip_comments_and_strings(
        "use crate::{audit::{AuditLog, Projection}, pb, security::{self, Caller}};\n\
         // crate::server in a comment\n\
         let m = \"crate::operations in a string\";\n\
         let x = crate::merkle::leaf_hash(b);\n\
         use super::sibling;\n\
         let c = '\"'; let d = crate::clock::now();",
    );
    let found: Vec<String> = references(&code).into_iter().collect();
    assert_eq!(found, ["audit", "clock", "merkle", "pb", "security"]);
}

#[test]
fn only_the_server_and_the_commands_use_the_mock_departments() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = [
        src.join("departments/mock"),
        src.join("server"),
        src.join("cli"),
        src.join("main.rs"),
    ];
    let users: Vec<String> = files
        .iter()
        .filter(|f| !allowed.iter().any(|a| f.starts_with(a)))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            strip_comments_and_strings(&text).contains("mock::")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        users.is_empty(),
        "the production path needs no mock: {users:?}"
    );
}
