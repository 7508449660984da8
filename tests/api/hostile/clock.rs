//! Times from the senders' clocks against `--max-clock-skew` (default 5m): an update from the
//! future cannot make every later update of its task stale, and a terminal update is never
//! lost to a bad clock.

use serde_json::{json, Value};

use super::{in_progress, post, serve};
use crate::helpers::update;

/// The year 3000 and the webhook's largest time, in Unix milliseconds.
const YEAR_3000: i64 = 32_503_680_000_000;
const END_OF_TIME: &str = "9999-12-31T23:59:59.999Z";

fn at(id: &str, status: &str, update_time: i64) -> Value {
    let mut u = update(id, status);
    u["updateTime"] = json!(update_time);
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_from_the_future_are_refused_or_taken_as_now() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]).await;
    let now = taskpulse::now_ms();

    // far ahead: refused, with a reason that says what to fix
    server.ingest(&at("far", "IN_PROGRESS", now)).await;
    let r = server.ingest(&at("far", "IN_PROGRESS", YEAR_3000)).await;
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["rejected"][0]["reason"], "clock_skew", "{r}");
    assert_eq!(r["rejectedByReason"], json!({"clock_skew": 1}), "{r}");
    let detail = r["rejected"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("--max-clock-skew"), "{detail}");
    // so the task's next real update is taken...
    let mut p = at("far", "IN_PROGRESS", now + 1_000);
    p["progressPercent"] = json!(50);
    assert_eq!(server.ingest(&p).await["accepted"], 1);
    // ...and a terminal update is taken whatever its time, stored as now at the latest
    let r = server
        .ingest(&at("far", "COMPLETED", 253_402_300_799_999))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");
    let t = server.get_json("/api/v1/tasks/far").await;
    assert_eq!(t["status"], "COMPLETED");
    assert!(
        t["updateTime"].as_i64().unwrap() <= taskpulse::now_ms(),
        "{t}"
    );

    // a worker whose clock runs a minute fast (inside the bound): its time is taken as now,
    // so the engine's own completion, on a good clock, is not stale
    server
        .ingest(&at("fast", "IN_PROGRESS", now + 60_000))
        .await;
    let r = server
        .ingest(&at("fast", "COMPLETED", taskpulse::now_ms()))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");

    // Conductor's webhook: the largest ISO time it can carry is refused the same way
    let client = reqwest::Client::new();
    let hook = server.url("/api/v1/conductor/task-status");
    let note = |status: &str, update_time: &str| {
        serde_json::to_vec(&json!({
            "taskId": "hook", "workflowId": "wf-hook", "workflowType": "media",
            "taskType": "transcode", "status": status, "updateTime": update_time,
        }))
        .unwrap()
    };
    let (code, text) = post(
        &client,
        &hook,
        note("IN_PROGRESS", END_OF_TIME),
        "application/json",
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["rejected"][0]["reason"], "clock_skew", "{r}");
    let iso_now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let (_, text) = post(
        &client,
        &hook,
        note("IN_PROGRESS", &iso_now),
        "application/json",
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["accepted"],
        1,
        "{text}"
    );
    let (_, text) = post(
        &client,
        &hook,
        note("COMPLETED", END_OF_TIME),
        "application/json",
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["accepted"],
        1,
        "{text}"
    );

    // the counters count what was refused
    let scrape = server.scrape().await;
    let rejected: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "taskpulse_updates_total" && s.labels.get("outcome") == Some("rejected")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(rejected, 2.0);
}

/// Engine times that cannot be an update's: a few milliseconds after 1970 (a counter, or a
/// default), and 2015 for a task first seen now (a clock years behind). Progress samples placed
/// at such times fit a line that reaches 100 % in 1970; they are placed at taskpulse's time of
/// arrival instead, so the prediction lies ahead, from the rate at which progress arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_times_that_cannot_be_the_updates_are_not_sample_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]).await;
    let before = taskpulse::now_ms();
    let year_2015 = 1_420_070_400_000;
    let tasks = [("counter", 5), ("behind", year_2015)];
    for (id, t) in tasks {
        assert_eq!(
            server.ingest(&in_progress(id, 10.0, t)).await["accepted"],
            1
        );
    }
    // a second's gap in arrival: the window keeps both samples
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    for (id, t) in tasks {
        let r = server.ingest(&in_progress(id, 20.0, t + 5)).await;
        assert_eq!(r["accepted"], 1, "{r}");
    }
    for (id, _) in tasks {
        let t = server.get_json(&format!("/api/v1/tasks/{id}")).await;
        let samples = t["progressSamples"].as_array().expect("samples");
        assert_eq!(samples.len(), 2, "{t}");
        for s in samples {
            assert!(
                s[0].as_i64().unwrap() >= before,
                "a sample before the test: {t}"
            );
        }
        let predicted = t["predictedCompletion"].as_i64().expect("a prediction");
        assert!(
            predicted >= before,
            "a completion predicted in the past: {t}"
        );
        let exported = server
            .scrape()
            .await
            .samples
            .into_iter()
            .find(|s| {
                s.metric == "taskpulse_task_predicted_completion_timestamp_seconds"
                    && s.labels.get("task_id") == Some(id)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            });
        assert!(
            exported.is_some_and(|v| v * 1000.0 >= before as f64),
            "{id}: exported prediction {exported:?}"
        );
    }
}
