//! The shape of `src/` that `docs/architecture.md` promises, read from the source itself:
//!
//! - no import circles among the top-level modules (each engine's folder counts as one), nor
//!   among the files of one folder;
//! - no module outside `src/engines/`, the composition root (`app.rs`, `main.rs`) and the CLI
//!   (`cli.rs`) names an engine, and those three only through `engines::settings`;
//! - no file over 800 lines (`src/`, `loadgen/src/` and `tests/`), and a `main.rs` of about 100
//!   at most; no function in `src/` over about 120 lines;
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

/// Every `.rs` file under `dir`, at any depth.
fn rust_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    assert!(!out.is_empty(), "no Rust files under {}", dir.display());
    out
}

#[test]
fn files_stay_short_and_main_stays_a_composition_root() {
    let mut long = Vec::new();
    let loadgen = src().join("../loadgen/src");
    let tests = src().join("../tests");
    for f in files()
        .into_iter()
        .chain(
            std::fs::read_dir(loadgen)
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .chain(rust_files_under(&tests))
    {
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

/// The lines of each function of a file longer than `limit`, as `file:line name (n lines)`. A
/// function runs from its `fn` line to the first line that is its indentation and `}` (as
/// rustfmt lays code out); declarations without a body and one-line functions are skipped.
fn long_functions(file: &Path, limit: usize) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let after_vis = code
            .strip_prefix("pub ")
            .or_else(|| code.strip_prefix("pub(crate) "))
            .or_else(|| code.strip_prefix("pub(super) "))
            .unwrap_or(code);
        let after_kw = ["const ", "async ", "unsafe "]
            .iter()
            .fold(after_vis, |c, kw| c.strip_prefix(kw).unwrap_or(c));
        let Some(rest) = after_kw.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // the signature ends at the first line ending in `{` (a body) or `;` (none)
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == close) {
            let n = end - i + 1;
            if n > limit {
                out.push(format!("{}:{} {name} ({n} lines)", file.display(), i + 1));
            }
        }
    }
    out
}

/// No function in `src/` over about 120 lines: a longer one does several things, and is split
/// by what they are.
#[test]
fn functions_stay_short() {
    let long: Vec<String> = files()
        .iter()
        .flat_map(|f| long_functions(f, 125))
        .collect();
    assert!(long.is_empty(), "split these by what they do: {long:#?}");
    // the check finds functions: one of this file's own is over 20 lines
    let me = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/architecture.rs");
    assert!(
        long_functions(&me, 20)
            .iter()
            .any(|f| f.contains(" long_functions (")),
        "the length check finds no function: is it reading them?"
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
/// The command line and the composition root take the engines through the seam
/// (`engines::settings`: one settings group, one constructor), so adding an engine touches
/// neither.
#[test]
fn the_cli_and_the_composition_root_name_no_engine() {
    let engines: Vec<String> = std::fs::read_dir(src().join("engines"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.is_dir()
                .then(|| p.file_name().unwrap().to_string_lossy().to_string())
        })
        .collect();
    let mut offenders = Vec::new();
    for rel in ["app.rs", "cli.rs", "main.rs"] {
        let text = code(&src().join(rel));
        for e in &engines {
            let type_name = format!("{}{}", e[..1].to_uppercase(), &e[1..]);
            for named in [
                format!("{e}::"),
                format!("{type_name}Settings"),
                format!("{type_name}::new"),
            ] {
                if text.contains(&named) {
                    offenders.push(format!("{rel}: names `{named}`"));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

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
