//! The exposition's families, the checks of an expression against them, and the README's
//! metric reference.

use super::*;

/// One metric family of a scrape.
#[derive(Debug, Default, Clone)]
pub struct Family {
    pub kind: String,
    /// Label names of its samples (`le`/`quantile` not included).
    pub labels: BTreeSet<String>,
    pub samples: usize,
}

/// The families of a `/metrics` text, by name.
pub fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                families.entry(name.to_string()).or_default().kind = kind.to_string();
            }
        }
    }
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let series = &line[..name_end];
        let Some(family) = family_of(&families, series).map(str::to_string) else {
            families.entry(series.to_string()).or_default().samples += 1;
            continue;
        };
        let labels = if line[name_end..].starts_with('{') {
            label_names(&line[name_end + 1..])
        } else {
            Vec::new()
        };
        let f = families.get_mut(&family).unwrap();
        f.samples += 1;
        f.labels
            .extend(labels.into_iter().filter(|l| l != "le" && l != "quantile"));
    }
    families
}

/// Label names of a sample line from just after its `{`.
fn label_names(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            '=' => {
                out.push(std::mem::take(&mut name).trim().to_string());
                // the quoted value
                let _ = chars.next();
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        break;
                    }
                }
            }
            ',' => {}
            c => name.push(c),
        }
    }
    out
}

/// The family a series name belongs to: itself, or a histogram's/summary's for `_bucket`,
/// `_sum`, `_count`.
pub fn family_of<'a>(families: &'a BTreeMap<String, Family>, series: &'a str) -> Option<&'a str> {
    if let Some((name, f)) = families.get_key_value(series) {
        if f.kind != "histogram" && f.kind != "summary" {
            return Some(name);
        }
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = series.strip_suffix(suffix) {
            if let Some((name, f)) = families.get_key_value(base) {
                if kinds.contains(&f.kind.as_str()) {
                    return Some(name);
                }
            }
        }
    }
    None
}

/// Problems with the metric names and selector labels of one expression. `require_samples`:
/// a family must have series (after the workload), not only be declared (a fresh sidecar).
pub fn check_expr(
    families: &BTreeMap<String, Family>,
    recorded: &BTreeSet<String>,
    place: &str,
    expr: &str,
    require_samples: bool,
    problems: &mut Vec<String>,
) {
    let names = promql_names(expr);
    for m in &names.metrics {
        match family_of(families, m) {
            None => problems.push(format!(
                "{place}: `{m}` is not a series taskpulse exports (expr: {expr})"
            )),
            Some(f) if require_samples && families[f].samples == 0 => problems.push(format!(
                "{place}: `{m}` has no samples in the scrape (expr: {expr})"
            )),
            Some(_) => {}
        }
    }
    for r in &names.recorded {
        if !recorded.contains(r) {
            problems.push(format!(
                "{place}: `{r}` is not a recording rule of alerts/*.yaml (expr: {expr})"
            ));
        }
    }
    for (m, labels) in &names.selectors {
        let Some(f) = family_of(families, m) else {
            continue;
        };
        if families[f].samples == 0 {
            continue; // an empty family's labels are not in the text (and were reported above)
        }
        for l in labels {
            let known = families[f].labels.contains(l)
                || ["instance", "job", "__name__"].contains(&l.as_str())
                || (l == "le" && m.ends_with("_bucket"));
            if !known {
                problems.push(format!(
                    "{place}: `{m}` has no label `{l}` (it has {:?}; expr: {expr})",
                    families[f].labels
                ));
            }
        }
    }
}

/// The README's metric reference rows: name, type, label names.
pub fn readme_metrics(readme: &str) -> Vec<(String, String, BTreeSet<String>)> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .expect("README has a `## Metrics` section");
    let mut rows = Vec::new();
    let mut previous: BTreeSet<String> = BTreeSet::new();
    for line in section.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 3 || !cells[0].starts_with("`taskpulse_") {
            continue;
        }
        let name = cells[0].trim_matches('`').to_string();
        let labels: BTreeSet<String> = if cells[2] == "same" {
            previous.clone()
        } else {
            cells[2]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        previous = labels.clone();
        rows.push((name, cells[1].to_string(), labels));
    }
    rows
}
