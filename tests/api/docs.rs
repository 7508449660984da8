//! The documentation follows the code: the configuration reference lists exactly the flags the
//! binary takes, and every relative link in the README and `docs/` leads to a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::binary;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `--name` words in some text (`--name`, `--name=…`, `--name[=BOOL]` all give `name`).
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
            continue;
        }
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if name.len() > 1 && !name.ends_with('-') {
            out.insert(name);
        }
    }
    out
}

/// The flags of `taskpulse <command> --help`.
fn flags_of(command: &str) -> BTreeSet<String> {
    let out = Command::new(binary())
        .args([command, "--help"])
        .env_clear()
        .output()
        .expect("run taskpulse --help");
    assert!(out.status.success(), "{command} --help: {out:?}");
    let mut flags = flags_in(&String::from_utf8_lossy(&out.stdout));
    flags.remove("help");
    flags
}

#[test]
fn the_configuration_reference_lists_exactly_the_flags_the_binary_takes() {
    let doc = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let rows: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .flat_map(|l| flags_in(l.split('|').nth(1).unwrap_or("")))
        .collect();
    let mut taken = BTreeSet::new();
    for command in ["serve", "check", "migrate"] {
        taken.extend(flags_of(command));
    }
    assert!(taken.contains("conductor-db"), "{taken:?}");
    let undocumented: Vec<_> = taken.difference(&rows).collect();
    let unknown: Vec<_> = rows.difference(&taken).collect();
    assert!(
        undocumented.is_empty(),
        "flags missing from docs/configuration.md's table: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/configuration.md's table names flags the binary does not take: {unknown:?}"
    );
}

/// Relative links `](path)` and `](path#anchor)` in a Markdown file.
fn links(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
            continue;
        }
        out.push(target.split('#').next().unwrap().to_string());
    }
    out
}

#[test]
fn every_relative_link_in_the_readme_and_docs_leads_to_a_file() {
    let mut files = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut broken = Vec::new();
    let mut seen = 0;
    for f in &files {
        for target in links(f) {
            seen += 1;
            if !f.parent().unwrap().join(&target).exists() {
                broken.push(format!("{}: {target}", f.display()));
            }
        }
    }
    assert!(
        seen > 10,
        "only {seen} links found: is the check reading them?"
    );
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_readme_stays_a_front_door() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.len() <= 15 * 1024,
        "README.md is {} bytes: move reference material into docs/",
        readme.len()
    );
    for section in [
        "## Two commands",
        "## Documentation",
        "scripts/test.sh",
        "cargo run --release -- serve",
    ] {
        assert!(readme.contains(section), "README.md lost `{section}`");
    }
}
