//! The status webhook fed exactly as Conductor's notifier feeds it (conductor-oss b54f0d4e,
//! `task-status-listener`, see docs/engines/conductor.md, "The task status webhook"):
//!
//! - the body is `TaskNotification.toJsonStringWithInputOutput()` (Jackson, non-ASCII kept raw)
//!   put on the wire by `new StringEntity(json)`: ISO-8859-1, characters above U+00FF as `?`;
//! - the headers are `Accept: application/json`, `Content-type: application/json` (no charset)
//!   and the one `headerPrefer: headerPreferValue` header, when configured;
//! - times are `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'` (GMT), 0 written as 1970;
//! - `output` is the output map's Java `toString()` unless
//!   `conductor.app.summary-input-output-json-serialization.enabled=true`, then JSON;
//! - a terminal write keeps the `updateTime` of the task's last non-terminal write and sets
//!   `endTime` (`ExecutionDAOFacade.updateTask`).

use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp, TestDb};
use crate::process::Server;
use crate::store_test;

/// A point in time as `TaskSummary` writes it.
fn iso(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// 2026-11-21T10:00:00Z, epoch ms.
const T0: i64 = 1_795_255_200_000;

/// What Conductor knows of a task when it publishes: the `TaskModel` fields a TaskNotification
/// is built from.
#[derive(Clone)]
struct Task {
    id: &'static str,
    name: &'static str,
    status: &'static str,
    scheduled: i64,
    start: i64,
    update: i64,
    end: i64,
    reason: Option<&'static str>,
    /// The output as `TaskSummary` holds it (Java `toString()` or JSON).
    output: String,
}

impl Task {
    fn new(id: &'static str) -> Task {
        Task {
            id,
            name: "transcode",
            status: "SCHEDULED",
            scheduled: T0,
            start: 0,
            update: T0,
            end: 0,
            reason: None,
            output: "{}".into(),
        }
    }

    /// `TaskNotification` as Jackson writes it, every TaskSummary field (nulls included) and
    /// the four of its own.
    fn notification(&self) -> Value {
        let execution = if self.end > 0 {
            self.end - self.start
        } else {
            0
        };
        json!({
            "workflowId": format!("wf-{}", self.id), "workflowType": "media_pipeline",
            "correlationId": null, "scheduledTime": iso(self.scheduled),
            "startTime": iso(self.start), "updateTime": iso(self.update),
            "endTime": iso(self.end), "status": self.status,
            "reasonForIncompletion": self.reason, "executionTime": execution,
            "queueWaitTime": 0, "taskDefName": self.name, "taskType": self.name,
            "input": "{file=a.mp4}", "output": self.output, "taskId": self.id,
            "externalInputPayloadStoragePath": null, "externalOutputPayloadStoragePath": null,
            "workflowPriority": 0, "domain": null, "workflowTaskType": "SIMPLE",
            "referenceTaskName": "transcode_ref", "retryCount": 0, "taskDescription": null
        })
    }
}

/// The bytes `new StringEntity(json)` sends (Apache HttpClient 4.5: ISO-8859-1, and Java's
/// encoder writes `?` for a character it cannot map, one per code point).
fn latin1(json: &str) -> Vec<u8> {
    json.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// POSTs `body` with the headers `RestClientManager.createPostRequest` sets, plus `extra`
/// (`headerPrefer`/`headerPreferValue`).
async fn post_as_conductor(
    app: &TestApp,
    body: Vec<u8>,
    extra: Option<(&str, &str)>,
) -> reqwest::Response {
    let url = app.url("/api/v1/conductor/task-status");
    send_as_conductor(&app.client, &url, body, extra).await
}

async fn send_as_conductor(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    extra: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut req = client
        .post(url)
        .header("Accept", "application/json")
        .header("Content-type", "application/json")
        .header("User-Agent", "Apache-HttpClient/4.5.14 (Java/17.0.13)")
        .body(body);
    if let Some((name, value)) = extra {
        req = req.header(name, value);
    }
    req.send().await.unwrap()
}

/// Posts one notification as Conductor does and wants a 200.
async fn publish(app: &TestApp, task: &Task) -> Value {
    let json = serde_json::to_string(&task.notification()).unwrap();
    let resp = post_as_conductor(app, latin1(&json), None).await;
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The worker's completion, published after newer progress reached taskpulse, is taken.
///
/// Conductor's write sequence for a worker task: scheduled (SCHEDULED published), polled
/// (IN_PROGRESS written with `updateTime` = now and published from `ExecutionService.poll`),
/// the worker reports progress to taskpulse with its own later `updateTime`, then completes
/// through `POST /api/tasks`: `WorkflowExecutorOps.updateTask` sets `endTime`,
/// `ExecutionDAOFacade.updateTask` leaves `updateTime` alone (it is not 0), and COMPLETED is
/// published with the poll's `updateTime` and the later `endTime`.
async fn a_completion_after_newer_progress_is_taken(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut task = Task::new("stale-1");
    assert_eq!(publish(&app, &task).await["accepted"], 1);
    task.status = "IN_PROGRESS";
    task.start = T0 + 1_000;
    task.update = T0 + 1_000;
    assert_eq!(publish(&app, &task).await["accepted"], 1);
    let r = app
        .ingest(&json!({"taskId": "stale-1", "workflowId": "wf-stale-1",
            "status": "IN_PROGRESS", "progressPercent": 60, "updateTime": T0 + 5_000}))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");

    task.status = "COMPLETED";
    task.end = T0 + 9_000;
    task.output = r#"{"progress":100}"#.into();
    let r = publish(&app, &task).await;
    assert_eq!(r["accepted"], 1, "the completion was refused: {r}");
    let t = app.task("stale-1").await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(
        t["updateTime"],
        json!(T0 + 9_000),
        "finished at endTime: {t}"
    );
    app.settle().await;
    assert_eq!(
        app.stored("stale-1").await.unwrap().status.as_str(),
        "COMPLETED"
    );
}
store_test!(a_completion_after_newer_progress_is_taken);

/// A task cancelled with its workflow, published before its write: Conductor's
/// `cancelNonTerminalTasks` sets CANCELED and calls the listener, then writes the task (which
/// stamps `endTime`); the sender thread may serialize it before that write, with `endTime` 0 and
/// the poll's `updateTime`. Newer progress had reached taskpulse: the cancellation is taken,
/// timed by its arrival.
async fn a_cancellation_published_before_its_write_is_taken(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut task = Task::new("cancel-1");
    task.status = "IN_PROGRESS";
    task.start = T0 + 1_000;
    task.update = T0 + 1_000;
    assert_eq!(publish(&app, &task).await["accepted"], 1);
    let r = app
        .ingest(&json!({"taskId": "cancel-1", "workflowId": "wf-cancel-1",
            "status": "IN_PROGRESS", "progressPercent": 20, "updateTime": T0 + 5_000}))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");
    task.status = "CANCELED";
    let before = taskpulse::now_ms();
    let r = publish(&app, &task).await;
    assert_eq!(r["accepted"], 1, "the cancellation was refused: {r}");
    app.settle().await;
    let stored = app.stored("cancel-1").await.unwrap();
    assert_eq!(stored.status.as_str(), "CANCELED");
    assert!(stored.terminal_at.unwrap() >= before);
}
store_test!(a_cancellation_published_before_its_write_is_taken);

/// A notification with é, ü and ß in its task name, reason and output, as Conductor puts it on
/// the wire (ISO-8859-1, no charset), is decoded, stored and counted; a character above U+00FF
/// arrives as `?`, as Conductor sent it.
async fn latin1_bodies_from_conductor_are_decoded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut task = Task::new("latin-1");
    task.name = "übersetzung_café";
    task.status = "IN_PROGRESS";
    task.start = T0 + 1_000;
    task.update = T0 + 1_000;
    task.output = r#"{"progress":40,"progressMessage":"Größe geprüft → café"}"#.into();
    let r = publish(&app, &task).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let t = app.task("latin-1").await;
    assert_eq!(t["taskType"], "übersetzung_café", "{t}");
    assert_eq!(t["progressMessage"], "Größe geprüft ? café", "{t}");

    task.status = "FAILED";
    task.end = T0 + 2_000;
    task.reason = Some("Zeitüberschreitung: Straße gesperrt");
    assert_eq!(publish(&app, &task).await["accepted"], 1);
    app.settle().await;
    let stored = app.stored("latin-1").await.unwrap();
    assert_eq!(stored.status.as_str(), "FAILED");
    assert_eq!(&*stored.task_type, "übersetzung_café");
    assert_eq!(
        app.metric_value(
            "taskpulse_conductor_webhook_bodies_total",
            &[("charset", "iso-8859-1")]
        )
        .await,
        Some(2.0)
    );
}
store_test!(latin1_bodies_from_conductor_are_decoded);

/// Without a charset, valid UTF-8 is UTF-8 (what curl sends); a declared charset is honoured,
/// and one taskpulse cannot decode is refused by name.
#[tokio::test]
async fn declared_charsets_are_honoured() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let mut task = Task::new("utf8-1");
    task.name = "café";
    let body = serde_json::to_vec(&task.notification()).unwrap();
    let resp = post_as_conductor(&app, body.clone(), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.task("utf8-1").await["taskType"], "café");

    // the same UTF-8 bytes declared as ISO-8859-1 are read as ISO-8859-1
    let mut task = Task::new("declared-1");
    task.name = "café";
    let body = serde_json::to_vec(&task.notification()).unwrap();
    let url = app.url("/api/v1/conductor/task-status");
    let send = |body: Vec<u8>, content_type: &'static str| {
        app.client
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let resp = send(body, "application/json; charset=ISO-8859-1")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.task("declared-1").await["taskType"], "cafÃ©");

    // declared UTF-8 that is not: 400, naming it
    let resp = send(
        latin1(r#"{"taskId":"é"}"#),
        "application/json;charset=\"utf-8\"",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("UTF-8"), "{err}");

    let resp = send(b"{}".to_vec(), "application/json; charset=UTF-16")
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("UTF-16"), "{err}");

    let scrape = app.scrape().await;
    let bodies = |charset| {
        crate::helpers::metric_value(
            &scrape,
            "taskpulse_conductor_webhook_bodies_total",
            &[("charset", charset)],
        )
    };
    assert_eq!(bodies("utf-8"), Some(1.0));
    assert_eq!(bodies("iso-8859-1"), Some(1.0));
}

/// With Conductor's default, `output` is the map's Java `toString()`: the notification is still
/// taken, and the unreadable output is counted (a log line names the flag that fixes it).
#[tokio::test]
async fn a_java_tostring_output_is_counted_and_the_notification_taken() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let mut task = Task::new("tostring-1");
    task.status = "IN_PROGRESS";
    task.start = T0 + 1_000;
    task.update = T0 + 1_000;
    task.output = "{progress=40, progressMessage=chunk 4/10}".into();
    assert_eq!(publish(&app, &task).await["accepted"], 1);
    task.status = "COMPLETED";
    task.end = T0 + 3_000;
    task.output = "{progress=100, files=[a.mp4, b.mp4]}".into();
    assert_eq!(publish(&app, &task).await["accepted"], 1);
    task.output = "{}".into(); // an empty map is `{}` either way: nothing to count
    let mut other = task.clone();
    other.id = "tostring-2";
    assert_eq!(publish(&app, &other).await["accepted"], 1);

    let t = app.task("tostring-1").await;
    assert_eq!(t["status"], "COMPLETED");
    assert_eq!(
        app.metric_value(
            "taskpulse_conductor_webhook_output_unread_total",
            &[("reason", "not_json")]
        )
        .await,
        Some(2.0)
    );
}

/// `headerPrefer=Authorization` and `headerPreferValue=Bearer <token>` add exactly that header
/// to every notification: with `--auth-token`, it is accepted; without it, or with another
/// token, refused (Conductor then counts a failure and drops the notification).
#[tokio::test]
async fn the_token_travels_in_header_prefer() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.auth_token = Some(taskpulse::settings::Secret("s3cret".into()))
    })
    .await;
    let task = Task::new("token-1");
    let body = || latin1(&task.notification().to_string());
    let resp = post_as_conductor(&app, body(), Some(("Authorization", "Bearer s3cret"))).await;
    assert_eq!(resp.status(), 200);
    app.settle().await;
    assert!(app.stored("token-1").await.is_some());
    for extra in [None, Some(("Authorization", "Bearer nope"))] {
        let resp = post_as_conductor(&app, body(), extra).await;
        assert_eq!(resp.status(), 401, "{extra:?}");
    }
}

/// The real binary logs Conductor's `toString()` output once, naming the Conductor property
/// that fixes it, however many such notifications arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_names_the_json_output_flag_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]).await;
    let client = reqwest::Client::new();
    let url = server.url("/api/v1/conductor/task-status");
    for id in ["log-1", "log-2", "log-3"] {
        let mut task = Task::new(id);
        task.output = "{progress=10}".into();
        let body = latin1(&task.notification().to_string());
        let resp = send_as_conductor(&client, &url, body, None).await;
        assert_eq!(resp.status(), 200);
    }
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let flag = "conductor.app.summary-input-output-json-serialization.enabled=true";
    assert_eq!(stderr.matches(flag).count(), 1, "{stderr}");
    assert!(stderr.contains("WARN"), "{stderr}");
}
