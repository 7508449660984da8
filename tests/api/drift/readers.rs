//! Readers of the dashboards, the rule files and PromQL.

use super::*;

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Files in a directory of the repository with one of the extensions, sorted.
fn files(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    let dir = repo_path(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| exts.contains(&e))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every dashboard: file name and parsed JSON. Panics if there is none or one doesn't parse.
pub fn dashboards() -> Vec<(String, Value)> {
    let paths = files("dashboards", &["json"]);
    assert!(!paths.is_empty(), "no dashboards/*.json");
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (file_name(p), v)
        })
        .collect()
}

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every panel target's `expr`, rows' nested panels included.
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        panel: p["title"].as_str().unwrap_or("").to_string(),
                        ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The queries of a dashboard's query variables (`label_values(...)`).
pub fn variable_queries(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| match &v["query"] {
            Value::String(s) => Some(s.clone()),
            q => q["query"].as_str().map(str::to_string),
        })
        .collect()
}

/// A rule of a Prometheus rule file, as far as these tests need it.
#[derive(Debug, Clone)]
pub struct RuleEntry {
    /// `alert` or `record`.
    pub kind: &'static str,
    pub name: String,
    pub expr: String,
}

/// The Prometheus rule files under `alerts/`: path and text. Panics if there is none.
pub fn rule_files() -> Vec<(PathBuf, String)> {
    let paths = files("alerts", &["yaml", "yml"]);
    assert!(
        !paths.is_empty(),
        "no alerts/*.yaml: the alert rules are missing"
    );
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of a YAML block-mapping key starting at `lines[i]` (after `key:` at column
/// `key_col`), with the lines that continue it: block scalars (`|`, `>`), multi-line plain and
/// quoted scalars. Enough YAML for Prometheus rule files.
fn yaml_value(lines: &[&str], i: usize, key_col: usize, first: &str) -> String {
    let mut cont: Vec<&str> = Vec::new();
    for l in &lines[i + 1..] {
        if l.trim().is_empty() || indent_of(l) > key_col {
            cont.push(l);
        } else {
            break;
        }
    }
    while cont.last().is_some_and(|l| l.trim().is_empty()) {
        cont.pop();
    }
    let first = first.trim();
    if first.starts_with('|') || first.starts_with('>') {
        let sep = if first.starts_with('|') { "\n" } else { " " };
        return cont.iter().map(|l| l.trim()).collect::<Vec<_>>().join(sep);
    }
    let joined = std::iter::once(first)
        .chain(cont.iter().map(|l| l.trim()))
        .collect::<Vec<_>>()
        .join(" ");
    let joined = joined.trim();
    if let Some(inner) = joined.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        inner
            .replace("\\\"", "\"")
            .replace("\\n", "\n")
            .replace("\\\\", "\\")
    } else if let Some(inner) = joined.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        // a plain scalar ends at a comment
        match joined.find(" #") {
            Some(at) => joined[..at].trim_end().to_string(),
            None => joined.to_string(),
        }
    }
}

/// The alerting and recording rules of a rule file: name and expression. A rule is a list item
/// (`- `) holding an `expr:` key, named by its `alert:` or `record:` key.
pub fn parse_rules(text: &str) -> Vec<RuleEntry> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<RuleEntry> = Vec::new();
    let mut named: Option<(&'static str, String)> = None;
    let mut expr: Option<String> = None;
    let mut flush = |named: &mut Option<(&'static str, String)>, expr: &mut Option<String>| {
        if let Some(expr) = expr.take() {
            let (kind, name) = named.take().unwrap_or(("alert", String::new()));
            out.push(RuleEntry { kind, name, expr });
        }
        *named = None;
    };
    for (i, line) in lines.iter().enumerate() {
        let mut rest = line.trim_start();
        let mut col = indent_of(line);
        if rest.starts_with("- ") {
            flush(&mut named, &mut expr);
        }
        while let Some(r) = rest.strip_prefix("- ") {
            let r2 = r.trim_start();
            col += rest.len() - r2.len();
            rest = r2;
        }
        for (key, kind) in [("alert:", "alert"), ("record:", "record")] {
            if let Some(v) = rest.strip_prefix(key) {
                named = Some((kind, yaml_value(&lines, i, col, v)));
            }
        }
        if let Some(v) = rest.strip_prefix("expr:") {
            expr = Some(yaml_value(&lines, i, col, v));
        }
    }
    flush(&mut named, &mut expr);
    out
}

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
pub struct PromqlNames {
    /// Metric names starting with `taskpulse_` (series names: `_bucket` etc. kept).
    pub metrics: BTreeSet<String>,
    /// Names with a colon: recording rules.
    pub recorded: BTreeSet<String>,
    /// Each `name{...}` selector of a `taskpulse_` metric with the label names it matches on.
    pub selectors: Vec<(String, Vec<String>)>,
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Finds metric names, recording-rule names and selector labels in PromQL (with Grafana
/// variables in it). String literals, comments and range/subquery brackets are blanked first,
/// so label values and durations never look like names.
pub fn promql_names(expr: &str) -> PromqlNames {
    let mut clean: Vec<char> = Vec::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let mut bracket = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                clean.push(' ');
                while let Some(d) = chars.next() {
                    clean.push(' ');
                    if d == '\\' && c != '`' {
                        if chars.next().is_some() {
                            clean.push(' ');
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        clean.push('\n');
                        break;
                    }
                    clean.push(' ');
                }
            }
            '[' => {
                bracket += 1;
                clean.push(' ');
            }
            ']' => {
                bracket = bracket.saturating_sub(1);
                clean.push(' ');
            }
            _ if bracket > 0 => clean.push(' '),
            _ => clean.push(c),
        }
    }

    let mut out = PromqlNames::default();
    let mut i = 0;
    while i < clean.len() {
        let c = clean[i];
        let starts = (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || (!ident_char(clean[i - 1]) && clean[i - 1] != '$'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < clean.len() && ident_char(clean[j]) {
            j += 1;
        }
        let name: String = clean[i..j].iter().collect();
        i = j;
        if name.contains(':') {
            out.recorded.insert(name);
            continue;
        }
        if !name.starts_with("taskpulse_") {
            continue;
        }
        out.metrics.insert(name.clone());
        let mut k = j;
        while k < clean.len() && clean[k].is_whitespace() {
            k += 1;
        }
        if k < clean.len() && clean[k] == '{' {
            let end = clean[k..]
                .iter()
                .position(|&c| c == '}')
                .map(|p| k + p)
                .unwrap_or(clean.len());
            let inside: String = clean[k + 1..end].iter().collect();
            let labels = inside
                .split(',')
                .map(|m| {
                    m.trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .filter(|l| !l.is_empty())
                .collect();
            out.selectors.push((name, labels));
            i = end;
        }
    }
    out
}
