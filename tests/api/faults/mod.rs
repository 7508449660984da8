//! Faults to survive: the store stopping, slowing down or locked, a bad database
//! path, crashes with the SQLite WAL in place, and the engine unreachable behind the Conductor
//! proxy. Every wait is bounded by a deadline; every child process and private PostgreSQL
//! cluster is stopped when its test ends, pass or fail.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskpulse::store::Store;

use crate::helpers::free_port;
use crate::helpers::{binary, settings_for, update, Backend, TestApp, TestDb};
use crate::pgcluster::{as_unprivileged, PgCluster};
use crate::process::{run, Proc};

mod crash;
mod postgres;
mod proxy;
mod sqlite;

fn progress(id: &str, percent: f64) -> Value {
    let mut u = update(id, "IN_PROGRESS");
    u["progressPercent"] = json!(percent);
    u["workerId"] = json!("worker-1");
    u
}

/// POSTs a body; the status, the Retry-After header, the body and how long it took.
async fn post(app: &TestApp, body: &Value) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let resp = app
        .client
        .post(app.url("/api/v1/updates"))
        .timeout(Duration::from_secs(20))
        .json(body)
        .send()
        .await
        .expect("POST /api/v1/updates answers");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, body, started.elapsed())
}

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.client
        .get(app.url(path))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls `f` every 100 ms until it is true; fails the test after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
