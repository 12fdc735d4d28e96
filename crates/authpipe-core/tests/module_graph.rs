//! The crate's modules form layers: no module uses, directly or through others, a module that
//! uses it. Read from the source (`crate::<module>`, `crate::{<module>, ...}` and `super::`
//! paths that climb to the crate root, outside test code), so a new cycle fails here with the
//! path that closes it, before it sets in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`engine/refresh/mod.rs` is `engine`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib").then(|| name.to_owned())
}

/// The module path of a file below `src` (`engine/refresh/mod.rs` is `engine::refresh`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut path: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// The first path segment of each item a `use`-like path names after `at` (the text just past
/// `crate::` or the last `super::`): one name, or each name of a `{...}` group.
fn first_segments(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = text.strip_prefix('{') else {
        return vec![ident(text)];
    };
    let (mut depth, mut item_start, mut names) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(ident(&group[item_start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(ident(&group[item_start..i]));
                item_start = i + 1;
            }
            _ => {}
        }
    }
    names
}

/// The source without its unit tests: test code may reach anywhere.
fn without_tests(text: &str) -> &str {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    &text[..cut]
}

/// Which top-level modules each module's code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        // Files that only hold tests (`engine/refresh/tests.rs`).
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = without_tests(&text);
        let depth = module_path(&src, &file).len();
        let mut named = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            named.extend(first_segments(&code[at + "crate::".len()..]));
        }
        // `super::` as many times as the file is deep lands at the crate root.
        let to_root = "super::".repeat(depth);
        for (at, _) in code.match_indices(&to_root) {
            let before = &code[..at];
            if !before.ends_with("super::") {
                named.extend(first_segments(&code[at + to_root.len()..]));
            }
        }
        let uses = graph.entry(module.clone()).or_default();
        for name in named {
            let is_module = src.join(format!("{name}.rs")).exists() || src.join(&name).is_dir();
            if is_module && name != module {
                uses.insert(name);
            }
        }
    }
    graph
}

/// A path from `from` back to `to`, if there is one.
fn path_back(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_owned()]);
    }
    if !seen.insert(from.to_owned()) {
        return None;
    }
    for next in graph.get(from).into_iter().flatten() {
        if let Some(mut path) = path_back(graph, next, to, seen) {
            path.insert(0, from.to_owned());
            return Some(path);
        }
    }
    None
}

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let graph = graph();
    assert!(graph.len() > 10, "the source was not found: {graph:?}");
    let mut cycles = Vec::new();
    for (module, uses) in &graph {
        for used in uses {
            if let Some(path) = path_back(&graph, used, module, &mut BTreeSet::new()) {
                cycles.push(format!("{module} -> {}", path.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_protocol_code_knows_nothing_of_the_engine() {
    let graph = graph();
    let protocol = &graph["protocol"];
    for inner in ["engine", "client", "connect", "store", "vault", "cache"] {
        assert!(
            !protocol.contains(inner),
            "protocol uses {inner}: {protocol:?}"
        );
    }
}
