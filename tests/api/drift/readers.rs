//! Readers of the dashboards, the rule files and PromQL.

use super::*;
use crate::helpers::parse_yaml;

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

/// The alerting and recording rules of a rule file (`groups[].rules[]`): name and expression,
/// read with the YAML reader the alert tests use. Each line of an expression is trimmed (a
/// block scalar keeps its indentation and final newline), so problems quote it compactly.
pub fn parse_rules(text: &str) -> Vec<RuleEntry> {
    let doc = parse_yaml(text, "rule file");
    let rules = doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten());
    rules
        .filter_map(|r| {
            let expr = match &r["expr"] {
                Value::Null => return None,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (kind, name) = match (r["record"].as_str(), r["alert"].as_str()) {
                (Some(name), _) => ("record", name),
                (None, name) => ("alert", name.unwrap_or_default()),
            };
            let expr = expr.lines().map(str::trim).collect::<Vec<_>>().join("\n");
            Some(RuleEntry {
                kind,
                name: name.to_string(),
                expr: expr.trim().to_string(),
            })
        })
        .collect()
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
