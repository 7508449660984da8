//! One connection's requests: built from its tasks, sent, and their answers counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde::Deserialize;

use crate::workload::Workload;
use crate::{now_ms, LoadgenArgs, Mode, Protocol};

/// What the connections counted in the timed run.
#[derive(Default)]
pub(crate) struct Totals {
    /// Updates claimed by the connections so far, for --max-updates.
    pub(crate) reserved: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) errors: AtomicU64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    accepted: u64,
    duplicates: u64,
    rejected: Vec<serde::de::IgnoredAny>,
    /// Every rejection (the list holds the first 100); absent from older builds' answers.
    rejected_count: Option<u64>,
}

/// What one request came to.
enum Outcome {
    /// The answer's counts (the sink's empty answer: every update taken).
    Taken {
        accepted: u64,
        duplicates: u64,
        rejected: u64,
    },
    /// No answer, a non-2xx one, or one that is not taskpulse's report.
    Failed,
}

/// One connection's load: its tasks, and the requests it builds from them.
pub(crate) struct Sender {
    work: Workload,
    client: Client<HttpConnector, Body>,
    /// `POST /api/v1/updates` on the target.
    url: http::Uri,
    /// The target, for the Pushgateway's per-task paths.
    base: String,
    args: LoadgenArgs,
    body: String,
    path: String,
}

impl Sender {
    pub(crate) fn new(
        work: Workload,
        client: Client<HttpConnector, Body>,
        base: &str,
        url: &http::Uri,
        args: &LoadgenArgs,
    ) -> Sender {
        Sender {
            work,
            client,
            url: url.clone(),
            base: base.to_string(),
            args: args.clone(),
            body: String::with_capacity(args.batch.max(1) * 200),
            path: String::with_capacity(128),
        }
    }

    fn per_request(&self) -> usize {
        match self.args.mode {
            Mode::Single => 1,
            Mode::Ndjson => self.args.batch,
        }
    }

    /// The next request: the next update of each of the next tasks, round-robin.
    fn request(&mut self) -> Option<http::Request<Body>> {
        self.body.clear();
        self.path.clear();
        let req = if self.args.protocol == Protocol::Pushgateway {
            self.work.next_push(&mut self.path, &mut self.body);
            http::Request::put(format!("{}{}", self.base, self.path))
                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Body::from(Bytes::from(self.body.clone())))
        } else {
            let now_ms = now_ms();
            for i in 0..self.per_request() {
                if i > 0 {
                    self.body.push('\n');
                }
                self.work.next_update(&mut self.body, now_ms);
            }
            let content_type = match self.args.mode {
                Mode::Single => "application/json",
                Mode::Ndjson => "application/x-ndjson",
            };
            http::Request::post(self.url.clone())
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Body::from(Bytes::from(self.body.clone())))
        };
        let mut req = req.ok()?;
        if let Some(token) = &self.args.token {
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                req.headers_mut().insert(http::header::AUTHORIZATION, v);
            }
        }
        Some(req)
    }

    /// Sends the next request and reads its answer whole.
    async fn send(&mut self) -> Outcome {
        let Some(req) = self.request() else {
            return Outcome::Failed;
        };
        let Ok(resp) = self.client.request(req).await else {
            return Outcome::Failed;
        };
        let ok = resp.status().is_success();
        let Ok(body) = resp.into_body().collect().await else {
            return Outcome::Failed;
        };
        let body = body.to_bytes();
        if !ok {
            return Outcome::Failed;
        }
        if body.is_empty() {
            // the baseline sink answers 200 without a body: every update counts as taken
            return Outcome::Taken {
                accepted: self.per_request() as u64,
                duplicates: 0,
                rejected: 0,
            };
        }
        match serde_json::from_slice::<Answer>(&body) {
            Ok(a) => Outcome::Taken {
                accepted: a.accepted,
                duplicates: a.duplicates,
                rejected: a.rejected_count.unwrap_or(a.rejected.len() as u64),
            },
            Err(_) => Outcome::Failed,
        }
    }

    /// `--warm-up`: one update for each of this connection's tasks, counted nowhere.
    pub(crate) async fn warm_up(&mut self) {
        let requests = self.work.tasks.len().div_ceil(self.per_request());
        for _ in 0..requests {
            self.send().await;
        }
    }

    /// Sends until `deadline` (or the paced schedule or `--max-updates` ends), counting into
    /// `totals`; returns the latency histogram.
    pub(crate) async fn drive(
        &mut self,
        totals: &Totals,
        started: Instant,
        deadline: Instant,
    ) -> Histogram<u64> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let per_request = self.per_request() as u64;
        let per_conn_rate = self.args.rate * self.args.tasks as f64 / self.args.connections as f64;
        let mut sent: u64 = 0;
        while Instant::now() < deadline {
            // --max-updates: reserve this request's updates from the shared budget.
            if self.args.max_updates > 0
                && totals.reserved.fetch_add(per_request, Ordering::Relaxed)
                    >= self.args.max_updates
            {
                break;
            }
            if per_conn_rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / per_conn_rate);
                if due > deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            let t0 = Instant::now();
            let outcome = self.send().await;
            let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
            sent += per_request;
            totals.requests.fetch_add(1, Ordering::Relaxed);
            totals.updates.fetch_add(per_request, Ordering::Relaxed);
            match outcome {
                Outcome::Taken {
                    accepted,
                    duplicates,
                    rejected,
                } => {
                    totals.accepted.fetch_add(accepted, Ordering::Relaxed);
                    totals.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                    totals.rejected.fetch_add(rejected, Ordering::Relaxed);
                }
                Outcome::Failed => {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        hist
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    /// An HTTP server on a free port that keeps every update it is sent, as JSON values.
    async fn recorder() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = seen.clone();
        let app = axum::Router::new().route(
            "/api/v1/updates",
            axum::routing::post(move |body: Bytes| async move {
                let mut kept = kept.lock().unwrap();
                for line in body.split(|b| *b == b'\n') {
                    kept.push(serde_json::from_slice(line).expect("one update per line"));
                }
                axum::http::StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn sender(target: &str, mode: &str, tasks: usize) -> Sender {
        let args = LoadgenArgs::parse_from([
            "taskpulse-loadgen",
            "--target",
            target,
            "--mode",
            mode,
            "--batch",
            "4",
            "--tasks",
            &tasks.to_string(),
            "--wait-fraction",
            "0",
        ]);
        Sender::new(
            // no task finishes (and is replaced by a new one) within the test
            Workload::new(0, tasks, 0.0, u32::MAX, true),
            Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            target,
            &format!("{target}/api/v1/updates").parse().unwrap(),
            &args,
        )
    }

    /// `--warm-up` sends each task's first update once, whatever the batch, and the timed run
    /// goes on with the tasks' later updates (no task is first seen in it).
    #[tokio::test]
    async fn warm_up_sends_every_first_update_once() {
        let (target, seen) = recorder().await;
        for (mode, tasks) in [("single", 5), ("ndjson", 10)] {
            seen.lock().unwrap().clear();
            let mut s = sender(&target, mode, tasks);
            s.warm_up().await;
            let warm: Vec<_> = seen.lock().unwrap().drain(..).collect();
            let ids: std::collections::HashSet<_> =
                warm.iter().map(|v| v["taskId"].to_string()).collect();
            assert_eq!(ids.len(), tasks, "{mode}: every task once: {warm:?}");
            assert!(
                warm.len() >= tasks && warm.len() < tasks + 4,
                "{mode}: one round, the last body filled up: {} updates",
                warm.len()
            );
            assert!(
                warm[..tasks].iter().all(|v| v["taskType"] == "lg_task"),
                "{mode}: first sights carry the task type: {warm:?}"
            );
            let totals = Totals::default();
            let start = Instant::now();
            s.drive(&totals, start, start + Duration::from_millis(50))
                .await;
            let timed: Vec<_> = seen.lock().unwrap().drain(..).collect();
            assert!(!timed.is_empty(), "{mode}: the timed run sent updates");
            assert!(
                timed.iter().all(|v| v.get("taskType").is_none()),
                "{mode}: no first sight in the timed run: {timed:?}"
            );
            assert_eq!(
                totals.accepted.load(Ordering::Relaxed),
                timed.len() as u64,
                "{mode}: the timed run counts its own updates only"
            );
        }
    }
}
