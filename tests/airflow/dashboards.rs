//! The dashboards and alerts on Airflow's data: a real Prometheus scrapes the taskpulse that
//! follows the real Airflow every second for the whole test (started beside the engine, so it
//! adds no wall time of its own). At the end, through Prometheus' HTTP API, every panel query of
//! `dashboards/*.json` must have returned data at some moment of the run (the query's
//! `max_over_time` over the run), except [`EMPTY_WITH_AIRFLOW`], each with its reason; and
//! every metric a panel or an alert rule of `alerts/*.yaml` names must be in Prometheus, its
//! ingest counters under `source="airflow_db"`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::drift::{dashboards, panel_queries, parse_rules, rule_files};
use crate::helpers::TestApp;
use crate::prom::{self, dashboard_queries, has_finite, query, Proc};

/// Panels with no data from the Airflow test's DAGs, and why. Every other panel must show
/// Airflow's task instances (the task dashboard: `tp_progress.crunch`, which reports progress
/// and has an `execution_timeout`).
const EMPTY_WITH_AIRFLOW: &[&str] = &[
    // no task stops moving while it runs (crunch moves every 1.5 s, the stall window is 5 s)
    "dashboards/taskpulse-overview.json panel `Stalled tasks` (A)",
    // no task is predicted past its deadline (Airflow would kill it at its execution_timeout)
    "dashboards/taskpulse-overview.json panel `Tasks predicted to time out` (A)",
    // each wait wakes once per DAG: the histogram's series starts at its one observation, and
    // a rate needs a second one (the wake-ups themselves are asserted from `/metrics`)
    "dashboards/taskpulse-overview.json panel `Wake-up lag p50 / p90 / p99` (A)",
    "dashboards/taskpulse-overview.json panel `Wake-up lag p50 / p90 / p99` (B)",
    "dashboards/taskpulse-overview.json panel `Wake-up lag p50 / p90 / p99` (C)",
];

/// How far back the panels are looked at: longer than the whole test.
const RUN_WINDOW: &str = "15m";

/// A Prometheus scraping the app every second, for the test's lifetime.
pub struct Scraper {
    proc: Proc,
    url: String,
    client: reqwest::Client,
    _dir: TempDir,
}

impl Scraper {
    /// Prometheus scraping `app`, or `None` when there is none (a skip note, or a failure
    /// under `TASKPULSE_REQUIRE_TOOLS=1`).
    pub async fn start(app: &TestApp) -> Option<Scraper> {
        let bin = prom::prometheus()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let dir = tempfile::tempdir().expect("temp dir");
        let (proc, url) = prom::start_prometheus(
            &client,
            &bin,
            dir.path(),
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n",
            app.addr,
            &[],
        )
        .await;
        Some(Scraper {
            proc,
            url,
            client,
            _dir: dir,
        })
    }

    /// Every panel had data during the run, and every metric named is there.
    pub async fn check(&self, app: &TestApp, task_id: &str) {
        // the last state scraped
        tokio::time::sleep(Duration::from_secs(2)).await;
        let queries = dashboard_queries(&app.url(""), &[("task_id", task_id)]);
        let mut empty = BTreeSet::new();
        for (place, expr) in &queries {
            if !self.had_data(expr).await {
                empty.insert(place.clone());
            }
        }
        let expected: BTreeSet<String> = EMPTY_WITH_AIRFLOW.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            empty,
            expected,
            "panels without data from Airflow's task instances during the run\n{}",
            self.proc.tail()
        );
        let absent: Vec<String> = named_metrics()
            .difference(&self.present().await)
            .cloned()
            .collect();
        assert!(
            absent.is_empty(),
            "metrics named but never scraped: {absent:?}"
        );
        let ingest = query(
            &self.client,
            &self.url,
            "taskpulse_updates_total{source=\"airflow_db\",outcome=\"accepted\"}",
        )
        .await;
        assert!(
            ingest.as_ref().is_ok_and(|r| has_finite(r)),
            "Airflow's ingest counter in Prometheus: {ingest:?}"
        );
    }

    /// Whether `expr` returned a finite value at some moment of the run: its `max_over_time`
    /// (a subquery, one step per scrape), or the expression itself where it is no vector.
    async fn had_data(&self, expr: &str) -> bool {
        let over_run = format!("max_over_time(({expr})[{RUN_WINDOW}:1s])");
        match query(&self.client, &self.url, &over_run).await {
            Ok(r) => has_finite(&r),
            Err(_) => matches!(query(&self.client, &self.url, expr).await, Ok(r) if has_finite(&r)),
        }
    }

    /// The names of the `taskpulse_` metrics Prometheus has a series of.
    async fn present(&self) -> BTreeSet<String> {
        let r = query(
            &self.client,
            &self.url,
            &format!("count by (__name__) (last_over_time({{__name__=~\"taskpulse_.+\"}}[{RUN_WINDOW}]))"),
        )
        .await
        .expect("the metric names");
        r.iter()
            .filter_map(|s: &Value| s["metric"]["__name__"].as_str().map(str::to_string))
            .collect()
    }
}

/// Every `taskpulse_` metric a panel or an alert rule names, recording rules left out (they
/// are Prometheus' own series).
fn named_metrics() -> BTreeSet<String> {
    let mut exprs: Vec<String> = Vec::new();
    let mut recorded = BTreeSet::new();
    for (_, text) in rule_files() {
        for r in parse_rules(&text) {
            if r.kind == "record" {
                recorded.insert(r.name.clone());
            }
            exprs.push(r.expr);
        }
    }
    for (_, dashboard) in dashboards() {
        exprs.extend(panel_queries(&dashboard).into_iter().map(|q| q.expr));
    }
    let mut names = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("taskpulse_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let preceded = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !preceded {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names.retain(|n| !recorded.contains(n));
    names
}
