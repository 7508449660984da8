//! The exposition's families, the checks of an expression against them, and the README's
//! metric reference.

use super::*;
use crate::helpers::parse_scrape;
use prometheus_parse::{LineInfo, SampleType, Value as PromValue};

/// One metric family of a scrape.
#[derive(Debug, Default, Clone)]
pub struct Family {
    pub kind: String,
    /// Label names of its samples (`le`/`quantile` not included).
    pub labels: BTreeSet<String>,
    pub samples: usize,
}

/// The families of a `/metrics` text, by name: their kinds from the `# TYPE` lines, their
/// samples and label names from the exposition reader the other tests use. That reader splits
/// labels at commas, so a label value holding `,` and `=` would show as an extra label name: a
/// false alarm, never a missed one. A histogram's or summary's samples count once per label
/// set (only whether a family has samples matters).
pub fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let LineInfo::Type {
            metric_name,
            metric_alias,
            sample_type,
        } = LineInfo::parse(line)
        {
            let name = metric_alias.unwrap_or(metric_name);
            families.entry(name).or_default().kind = kind_name(sample_type).to_string();
        }
    }
    for sample in parse_scrape(text).samples {
        let grouped = matches!(
            sample.value,
            PromValue::Histogram(_) | PromValue::Summary(_)
        );
        let family = if grouped {
            Some(sample.metric.clone())
        } else {
            family_of(&families, &sample.metric).map(str::to_string)
        };
        let Some(family) = family else {
            families.entry(sample.metric).or_default().samples += 1;
            continue;
        };
        let f = families.entry(family).or_default();
        f.samples += 1;
        f.labels.extend(
            sample
                .labels
                .keys()
                .filter(|l| *l != "le" && *l != "quantile")
                .cloned(),
        );
    }
    families
}

/// The `# TYPE` word of a kind.
fn kind_name(kind: SampleType) -> &'static str {
    match kind {
        SampleType::Counter => "counter",
        SampleType::Gauge => "gauge",
        SampleType::Histogram => "histogram",
        SampleType::Summary => "summary",
        SampleType::Untyped => "untyped",
    }
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
