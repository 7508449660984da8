//! Hostile input and overload, against the real binary or the real application in process:
//! what an attacker or a buggy client can send, and the bounds that hold whatever arrives
//! (the README's "Failure modes" states each one). Every wait is bounded in time, every flood
//! in count; the full-size versions of the floods are `scripts/overload.sh`.
//!
//! - `auth`: the auth token (logs, the worker proxy: who may record what);
//! - `clock`: times from clients' clocks (`--max-clock-skew`);
//! - `connections`: slow clients, `--max-connections`, `--send-timeout`, shutdown under them;
//! - `memory`: the in-memory table's bounds, request and answer sizes, pagination;
//! - `proxy`: what proves a proxied caller, and the paths the proxy reads as the engine does;
//! - `writes`: store writes per task (rejections, flapping, history) and `--max-pending-writes`;
//! - `series`: label values, series and scrape bounds, worker expiry, concurrent scrapes;
//! - `stalled`: engine stores that stop answering (a frozen or cut path to their database);
//! - `status`: the status page's endpoints (event streams against `--max-connections`, the
//!   overview's walk against `/healthz`).

mod auth;
mod clock;
mod connections;
mod memory;
mod proxy;
mod series;
mod stalled;
mod status;
mod writes;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::update;
use crate::process::Server;

/// Polls `cond` every 20 ms for at most `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// An in-flight task with progress and an engine time.
pub fn in_progress(id: &str, progress: f64, update_time: i64) -> Value {
    let mut u = update(id, "IN_PROGRESS");
    u["progressPercent"] = json!(progress);
    u["updateTime"] = json!(update_time);
    u
}

/// `taskpulse serve` on a fresh SQLite file in `dir`, with `args`.
pub async fn serve(dir: &Path, args: &[&str]) -> Server {
    let db = format!("sqlite://{}", dir.join("t.db").display());
    let mut all = vec!["--database", db.as_str()];
    all.extend_from_slice(args);
    Server::start(dir, &all, &[]).await
}

/// NDJSON of `lines`.
pub fn ndjson(lines: impl IntoIterator<Item = Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut out, &l).unwrap();
        out.push(b'\n');
    }
    out
}

/// `POST path` with a raw body: (status, answer text).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (u16, String) {
    let r = client
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The sum of a family's samples (0 when absent).
pub fn family_sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The distinct values of `label` in a family.
pub fn label_values(scrape: &prometheus_parse::Scrape, name: &str, label: &str) -> Vec<String> {
    let mut v: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| s.labels.get(label).map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}
