//! The layout's promise, checked: no module of `src/` imports from a
//! module that imports it back (directly or round a longer circle), and no
//! source file outside tests is longer than 600 lines.
//!
//! Every file is a module (`a/mod.rs` is `a`). An edge `m → n` is any path
//! in `m` that names an item of `n` — `use` declarations and paths in
//! code alike, resolved from `crate::`, `super::` and `self::` to the
//! longest module they reach. Test modules (`#[cfg(test)]`) are left out:
//! tests may look anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const SOURCE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
const MAX_LINES: usize = 600;

/// Module path (`store::backend`) → file, for every `.rs` file under `src/`.
fn modules() -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![PathBuf::from(SOURCE_ROOT)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.insert(module_of(&path), path);
            }
        }
    }
    found
}

fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(SOURCE_ROOT).expect("under src/");
    let mut segments: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
        segments.pop();
    }
    segments.join("::")
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .meta
                .require_list()
                .is_ok_and(|list| list.tokens.to_string() == "test")
    })
}

/// Collects the crate-relative paths a file mentions.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl Paths {
    fn add_use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.add_use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let mut full = prefix.clone();
                full.push(name.ident.to_string());
                self.found.push(full);
            }
            syn::UseTree::Rename(rename) => {
                let mut full = prefix.clone();
                full.push(rename.ident.to_string());
                self.found.push(full);
            }
            syn::UseTree::Glob(_) => self.found.push(prefix.clone()),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.add_use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test_only(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test_only(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if !is_test_only(&item.attrs) {
            self.add_use_tree(&mut Vec::new(), &item.tree);
        }
    }

    /// `pub(crate)` and `pub(super)` name no item.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.found
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The module a path leads to, seen from module `from`; `None` for paths
/// outside the crate (std, dependencies, local names).
fn resolve(modules: &BTreeMap<String, PathBuf>, from: &str, path: &[String]) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = base.join("::");
    let mut candidate = base.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for segment in rest {
        candidate.push(segment.clone());
        let name = candidate.join("::");
        if modules.contains_key(&name) {
            best = name;
        } else {
            break;
        }
    }
    Some(best)
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("readable source");
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut paths = Paths::default();
        paths.visit_file(&syntax);
        let targets = graph.entry(module.clone()).or_default();
        for path in &paths.found {
            if let Some(target) = resolve(&modules, module, path) {
                if &target != module {
                    targets.insert(target);
                }
            }
        }
    }
    graph
}

/// A circle through `start`, if there is one.
fn circle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        trail: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                trail.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                trail.push(next.clone());
                if walk(graph, start, next, trail, seen) {
                    return true;
                }
                trail.pop();
            }
        }
        false
    }
    let mut trail = vec![start.to_owned()];
    walk(graph, start, start, &mut trail, &mut BTreeSet::new()).then_some(trail)
}

fn show(module: &str) -> &str {
    if module.is_empty() { "crate" } else { module }
}

#[test]
fn no_module_imports_from_a_module_that_imports_it_back() {
    let graph = import_graph();
    assert!(graph.len() > 20, "the sources were found: {graph:?}");
    let circles: Vec<String> = graph
        .keys()
        .filter_map(|module| circle_through(&graph, module))
        .map(|circle| circle.iter().map(|m| show(m)).collect::<Vec<_>>().join(" → "))
        .collect();
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn the_check_sees_a_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(circle_through(&graph, "a").unwrap(), ["a", "b", "c", "a"]);
    assert!(circle_through(&graph, "d").is_none());
}

#[test]
fn paths_resolve_to_the_module_they_name() {
    let modules: BTreeMap<String, PathBuf> = ["", "store", "store::keys", "sticky", "sticky::backup"]
        .into_iter()
        .map(|m| (m.to_owned(), PathBuf::new()))
        .collect();
    let path = |text: &str| text.split("::").map(str::to_owned).collect::<Vec<_>>();
    let resolved = |from: &str, text: &str| resolve(&modules, from, &path(text));
    assert_eq!(
        resolved("sticky::backup", "crate::store::keys::Keys").as_deref(),
        Some("store::keys")
    );
    assert_eq!(resolved("sticky::backup", "super::Sticky").as_deref(), Some("sticky"));
    assert_eq!(
        resolved("sticky", "self::backup::write").as_deref(),
        Some("sticky::backup")
    );
    assert_eq!(resolved("sticky", "crate::Error").as_deref(), Some(""));
    assert_eq!(resolved("sticky", "std::sync::Arc"), None);
}

#[test]
fn no_source_file_is_longer_than_600_lines() {
    let long: Vec<String> = modules()
        .values()
        .filter(|file| file.file_name().is_some_and(|n| n != "tests.rs"))
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).expect("readable").lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files:\n{}", long.join("\n"));
}

/// The README's layout table names every folder and top-level file of
/// `src/`, and nothing that is not there.
#[test]
fn the_readme_layout_table_matches_the_folders() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let section = readme
        .split("## Repository layout")
        .nth(1)
        .expect("a Repository layout section");
    let listed: BTreeSet<String> = section
        .lines()
        .filter(|line| line.starts_with("| `manager/src/"))
        .filter_map(|line| line.split('`').nth(1))
        .map(|path| path.trim_start_matches("manager/src/").trim_end_matches('/').to_owned())
        .collect();
    let top_level: BTreeSet<String> = std::fs::read_dir(SOURCE_ROOT)
        .expect("readable src/")
        .map(|entry| entry.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    for path in &listed {
        assert!(
            Path::new(SOURCE_ROOT).join(path).exists(),
            "README lists manager/src/{path}, which does not exist"
        );
    }
    let unlisted: Vec<&String> = top_level.difference(&listed).collect();
    assert!(unlisted.is_empty(), "the README layout table misses: {unlisted:?}");
}
