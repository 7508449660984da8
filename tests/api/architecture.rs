//! The shape of `src/` that `docs/architecture.md` promises, read from the source itself:
//!
//! - no import circles among the top-level modules (each engine's folder counts as one), nor
//!   among the files of one folder;
//! - no module outside `src/engines/`, the composition root (`app.rs`, `main.rs`) and the CLI
//!   (`cli.rs`) names an engine;
//! - no file over 800 lines, and a `main.rs` of about 100 at most;
//! - the README's Architecture section lists every top-level module and engine, and nothing
//!   that isn't there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file (binaries under a `src/bin/` would not be modules of the crate).
fn files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.sort();
    out
}

/// The module path of a file: `src/pipeline/tracker.rs` is `pipeline::tracker`,
/// `src/pipeline/mod.rs` is `pipeline`, `src/lib.rs` is the crate root (empty).
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The unit the top-level check works on: the first segment, or `engines::<name>`.
fn component(module: &[String]) -> Option<String> {
    match module {
        [] => None,
        [first, name, ..] if first == "engines" => Some(format!("engines::{name}")),
        [first, ..] => Some(first.clone()),
    }
}

/// The code of a file without its comment lines.
fn code(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths a file refers to: `crate::a::b` gives `[a, b]`; `super::x` is resolved
/// against the file's own module.
fn references(file: &Path) -> Vec<Vec<String>> {
    let text = code(file);
    let own = module_of(file);
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let ident = |start: usize| -> Vec<String> {
        // a::b::c, stopping at anything that is not a plain path segment
        let mut segs = Vec::new();
        let mut i = start;
        loop {
            let s = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if i == s {
                break;
            }
            segs.push(text[s..i].to_string());
            if text[i..].starts_with("::") {
                i += 2;
            } else {
                break;
            }
        }
        segs
    };
    for (pos, _) in text.match_indices("crate::") {
        if pos > 0 && (bytes[pos - 1].is_ascii_alphanumeric() || bytes[pos - 1] == b'_') {
            continue;
        }
        out.push(ident(pos + "crate::".len()));
    }
    for (pos, _) in text.match_indices("super::") {
        if pos > 0 && (bytes[pos - 1].is_ascii_alphanumeric() || bytes[pos - 1] == b'_') {
            continue;
        }
        // `super` of `a::b` (a file b.rs in a/) is `a`; of `a` written in a/mod.rs it is the
        // crate root.
        let mut path = own.clone();
        path.pop();
        path.extend(ident(pos + "super::".len()));
        out.push(path);
    }
    out
}

#[test]
fn no_import_circles_among_the_modules() {
    let tops: BTreeSet<String> = files()
        .iter()
        .filter_map(|f| component(&module_of(f)))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files() {
        let Some(from) = component(&module_of(&f)) else {
            continue;
        };
        for r in references(&f) {
            if let Some(to) = component(&r).filter(|t| tops.contains(t) && *t != from) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "import circle among the modules of src/: {}",
            cycle.join(" -> ")
        );
    }
    // The shape the architecture promises, in a few edges that must not exist.
    for (from, to) in [
        ("store", "pipeline"),
        ("pipeline", "http"),
        ("pipeline", "metrics"),
        ("checker", "http"),
        ("http", "engines"),
        ("model", "store"),
        ("settings", "engines"),
    ] {
        assert!(
            !edges.get(from).is_some_and(|t| t
                .iter()
                .any(|t| t == to || t.starts_with(&format!("{to}::")))),
            "{from} must not depend on {to}"
        );
    }
}

#[test]
fn no_import_circles_among_the_files_of_a_folder() {
    let mut by_folder: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let all: BTreeSet<Vec<String>> = files().iter().map(|f| module_of(f)).collect();
    for f in files() {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "mod.rs" || name == "lib.rs" {
            continue; // a folder's façade re-exports its files; the files are what must not loop
        }
        let own = module_of(&f);
        let Some((me, folder)) = own.split_last() else {
            continue;
        };
        let (me, folder) = (me.clone(), folder.to_vec());
        for r in references(&f) {
            if r.len() > folder.len() && r[..folder.len()] == folder[..] {
                let sibling = r[folder.len()].clone();
                let mut path = folder.clone();
                path.push(sibling.clone());
                if sibling != me && all.contains(&path) {
                    by_folder
                        .entry(folder.clone())
                        .or_default()
                        .entry(me.clone())
                        .or_default()
                        .insert(sibling);
                }
            }
        }
    }
    for (folder, edges) in by_folder {
        if let Some(cycle) = find_cycle(&edges) {
            panic!(
                "import circle among the files of src/{}: {}",
                folder.join("/"),
                cycle.join(" -> ")
            );
        }
    }
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn only_the_engines_the_composition_root_and_the_cli_name_an_engine() {
    let allowed = ["app.rs", "main.rs", "cli.rs"];
    let engines: Vec<String> = std::fs::read_dir(src().join("engines"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.is_dir()
                .then(|| p.file_name().unwrap().to_string_lossy().to_string())
        })
        .collect();
    assert!(engines.contains(&"conductor".to_string()), "{engines:?}");
    let mut offenders = Vec::new();
    for f in files() {
        let rel = f.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        if rel.starts_with("engines/") || allowed.contains(&rel.as_str()) {
            continue;
        }
        for r in references(&f) {
            if r.first().is_some_and(|s| s == "engines") && r.len() > 1 {
                offenders.push(format!("{rel}: crate::{}", r.join("::")));
            }
        }
        let text = code(&f);
        for e in &engines {
            if text.contains(&format!("{e}::")) {
                offenders.push(format!("{rel}: names `{e}::`"));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn files_stay_short_and_main_stays_a_composition_root() {
    let mut long = Vec::new();
    let loadgen = src().join("../loadgen/src");
    for f in files().into_iter().chain(
        std::fs::read_dir(loadgen)
            .unwrap()
            .map(|e| e.unwrap().path()),
    ) {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        if n > 800 {
            long.push(format!("{} ({n} lines)", f.display()));
        }
    }
    assert!(long.is_empty(), "split these by what they do: {long:?}");
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    assert!(
        main.lines().count() <= 100,
        "main.rs has {} lines",
        main.lines().count()
    );
}

#[test]
fn the_architecture_docs_source_tree_matches_the_tree() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let start = readme
        .find("## Source tree")
        .expect("docs/architecture.md has a Source tree section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    // every `src/...` the section names exists (placeholders such as `<name>` aside)
    for word in section.split(|c: char| c == '`' || c.is_whitespace()) {
        if let Some(path) = word.strip_prefix("src/").filter(|p| !p.contains('<')) {
            let path = path.trim_end_matches([',', ')', '.']);
            assert!(
                src().join(path).exists(),
                "the Source tree section names src/{path}, which does not exist"
            );
        }
    }
    // and every top-level module and engine folder is named
    for e in std::fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name == "lib.rs" {
            continue;
        }
        let shown = if p.is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        assert!(
            section.contains(&shown),
            "the Source tree section does not mention {shown}"
        );
    }
    for e in std::fs::read_dir(src().join("engines")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let shown = format!("src/engines/{}/", p.file_name().unwrap().to_string_lossy());
            assert!(
                section.contains(&shown),
                "the Source tree section does not mention {shown}"
            );
        }
    }
}

/// Engines reach the HTTP server only through its public seam (`crate::http::seam`): a
/// webhook or a proxy is written against that API, never against the server's own modules.
#[test]
fn engines_use_the_http_server_only_through_its_seam() {
    let mut offenders = Vec::new();
    let mut seen_seam = false;
    for f in files() {
        let rel = f.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        if !rel.starts_with("engines/") {
            continue;
        }
        for r in references(&f) {
            if r.first().is_some_and(|s| s == "http") {
                if r.get(1).is_some_and(|s| s == "seam") {
                    seen_seam = true;
                } else {
                    offenders.push(format!("{rel}: crate::{}", r.join("::")));
                }
            }
        }
    }
    assert!(
        seen_seam,
        "no engine uses crate::http::seam: is the check reading imports?"
    );
    assert!(offenders.is_empty(), "{offenders:#?}");
}
