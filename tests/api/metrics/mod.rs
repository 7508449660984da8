//! `/metrics` (`docs/metrics.md`), read with a real exposition-format parser: values, not just names.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{json, Value};

use crate::helpers::{metric_value, update, Backend, TestApp, TestDb};
use crate::store_test;

mod counters;
mod gauges;
mod per_task;

/// `base` with the fields of `extra` set.
fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("extra is an object") {
        base[k] = v.clone();
    }
    base
}

/// Every sample of one metric.
fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn number(s: &Sample) -> f64 {
    match s.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
        _ => panic!("{} is not a single number", s.metric),
    }
}

/// The per-task sample of `name` for `task_id`.
fn per_task<'a>(scrape: &'a Scrape, name: &str, task_id: &str) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("task_id") == Some(task_id))
}

/// The task ids that have a sample of `name`.
fn task_ids(scrape: &Scrape, name: &str) -> BTreeSet<String> {
    samples(scrape, name)
        .iter()
        .map(|s| s.labels.get("task_id").expect("task_id label").to_string())
        .collect()
}

/// Histogram buckets (upper bound, cumulative count) of the series with these labels.
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let s = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && matches!(s.value, PromValue::Histogram(_))
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"));
    match &s.value {
        PromValue::Histogram(b) => b.iter().map(|b| (b.less_than, b.count)).collect(),
        _ => unreachable!(),
    }
}

fn bucket(b: &[(f64, f64)], le: f64) -> f64 {
    b.iter()
        .find(|(l, _)| *l == le)
        .unwrap_or_else(|| panic!("no bucket le={le} in {b:?}"))
        .1
}

#[track_caller]
fn assert_close(got: f64, want: f64, eps: f64, what: &str) {
    assert!(
        (got - want).abs() <= eps,
        "{what}: got {got}, want {want} (±{eps})"
    );
}

async fn accept_all(app: &TestApp, body: Value) {
    let n = body.as_array().map_or(1, Vec::len);
    let r = app.ingest(&body).await;
    assert_eq!(r["accepted"], n, "{r}");
}
