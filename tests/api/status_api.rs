//! The read API the status page uses (`docs/contract.md` §5): sorting and paging the task list,
//! the overview, the repairs of one task, the live event stream and the embedded page itself.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp, TestDb};

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = app.get(path).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn task(id: &str, task_type: &str, progress: Option<f64>, start: i64) -> Value {
    let mut t = json!({
        "taskId": id, "workflowId": format!("wf-{id}"), "taskType": task_type,
        "workflowType": "media", "status": "IN_PROGRESS", "startTime": start,
        "timeoutSeconds": 3600,
    });
    if let Some(p) = progress {
        t["progressPercent"] = json!(p);
    }
    t
}

/// Every page of a query, following `next`; checks `total` on each.
async fn all_pages(app: &TestApp, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/tasks?{query}&limit={limit}"),
            Some(c) => format!("/api/v1/tasks?{query}&limit={limit}&cursor={c}"),
        };
        let (status, body) = get_json(app, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = body["tasks"].as_array().unwrap();
        assert!(page.len() <= limit);
        ids.extend(
            page.iter()
                .map(|t| t["taskId"].as_str().unwrap().to_string()),
        );
        assert!(ids.len() <= body["total"].as_u64().unwrap() as usize);
        match body["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn the_task_list_sorts_pages_and_counts_on_the_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    // 23 in flight with distinct progress and start times, 2 without progress, one finished,
    // one waiting
    let mut body = Vec::new();
    for i in 0..23 {
        let kind = if i % 2 == 0 { "encode" } else { "resize" };
        body.push(task(
            &format!("t{i:02}"),
            kind,
            Some(f64::from(i * 4)),
            1_000_000 + i64::from((i * 7) % 23) * 1000,
        ));
    }
    body.push(task("none-a", "encode", None, 5));
    body.push(task("none-b", "encode", None, 6));
    let mut done = task("done", "encode", Some(100.0), 1);
    done["status"] = json!("COMPLETED");
    body.push(done);
    let mut wait = task("wait", "WAIT", None, 1);
    wait["waitUntil"] = json!(taskpulse::now_ms() - 120_000);
    body.push(wait);
    let r = app.ingest(&json!(body)).await;
    assert_eq!(r["accepted"], 27, "{r}");

    // progress, descending: the 23 by progress, then the two without progress; across pages
    let ids = all_pages(&app, "inFlight=true&sort=progress&order=desc", 4).await;
    let mut expected: Vec<String> = (0..23).rev().map(|i| format!("t{i:02}")).collect();
    expected.extend(["none-a".to_string(), "none-b".to_string()]);
    assert_eq!(ids, expected, "progress desc, missing values last");
    // ascending: still the ones without progress last
    let ids = all_pages(&app, "inFlight=true&sort=progress&order=asc", 5).await;
    assert_eq!(&ids[..3], ["t00", "t01", "t02"]);
    assert_eq!(&ids[23..], ["none-a", "none-b"]);
    // started, ascending, filtered by type: each page continues where the last ended
    let ids = all_pages(
        &app,
        "inFlight=true&taskType=resize&sort=started&order=asc",
        3,
    )
    .await;
    let mut by_start: Vec<(i64, String)> = (0..23)
        .filter(|i| i % 2 == 1)
        .map(|i| (i64::from((i * 7) % 23), format!("t{i:02}")))
        .collect();
    by_start.sort();
    assert_eq!(
        ids,
        by_start.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    );
    // totals: in flight leaves out the finished and the waiting task
    let (_, b) = get_json(&app, "/api/v1/tasks?inFlight=true&limit=1").await;
    assert_eq!(b["total"], 25, "{b}");
    let (_, b) = get_json(&app, "/api/v1/tasks?limit=1").await;
    assert_eq!(b["total"], 27, "{b}");
    let (_, b) = get_json(&app, "/api/v1/tasks?taskType=WAIT&sort=waitUntil&order=asc").await;
    assert_eq!(b["tasks"][0]["taskId"], "wait");
    // the WAIT queue: unfinished WAIT tasks only
    let mut woke = task("woke", "WAIT", None, 1);
    woke["status"] = json!("COMPLETED");
    app.ingest(&json!(woke)).await;
    let (_, b) = get_json(&app, "/api/v1/tasks?waiting=true&sort=waitUntil").await;
    assert_eq!(b["total"], 1, "{b}");
    assert_eq!(b["tasks"][0]["taskId"], "wait");
    // a cursor belongs to its sort
    let (_, b) = get_json(&app, "/api/v1/tasks?sort=progress&limit=2").await;
    let c = b["next"].as_str().unwrap().to_string();
    let (status, b) = get_json(&app, &format!("/api/v1/tasks?sort=started&cursor={c}")).await;
    assert_eq!(status, 400);
    assert!(b["error"].as_str().unwrap().contains("cursor"), "{b}");
    // a request that accepts a recent answer may get the one computed for the same query;
    // one that doesn't always gets a fresh one
    let q = "/api/v1/tasks?inFlight=true&sort=progress&limit=1";
    let (_, before) = get_json(&app, &format!("{q}&maxAge=5000")).await;
    let mut top = task("t22", "encode", Some(1.0), 1);
    top["updateTime"] = json!(taskpulse::now_ms());
    app.ingest(&json!(top)).await;
    let (_, shared) = get_json(&app, &format!("{q}&maxAge=5000")).await;
    assert_eq!(shared, before, "within maxAge: the shared answer");
    let (_, fresh) = get_json(&app, q).await;
    assert_eq!(
        fresh["tasks"][0]["taskId"], "t21",
        "t22 moved down: {fresh}"
    );
    let (_, other) = get_json(&app, &format!("{q}&maxAge=0")).await;
    assert_eq!(other, fresh);
    for bad in [
        "sort=colour",
        "order=sideways",
        "inFlight=maybe",
        "maxAge=60000",
    ] {
        let (status, b) = get_json(&app, &format!("/api/v1/tasks?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        let value = bad.split('=').nth(1).unwrap();
        assert!(b["error"].as_str().unwrap().contains(value), "{bad}: {b}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_overview_counts_what_the_metrics_count() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.metrics.stall_after = Duration::from_millis(300);
    })
    .await;
    let now = taskpulse::now_ms();
    let mut scheduled = task("s1", "resize", None, now);
    scheduled["status"] = json!("SCHEDULED");
    let mut waiting = task("w1", "WAIT", None, now);
    waiting["waitUntil"] = json!(now + 20_000);
    let mut overdue = task("w2", "WAIT", None, now);
    overdue["waitUntil"] = json!(now - 600_000);
    let r = app
        .ingest(&json!([
            task("p1", "encode", Some(10.0), now),
            task("p2", "encode", Some(50.0), now),
            scheduled,
            waiting,
            overdue
        ]))
        .await;
    assert_eq!(r["accepted"], 5, "{r}");
    // the overview is reused for a second; stalled needs 300 ms without progress
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, o) = get_json(&app, "/api/v1/overview").await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["inFlight"]["total"], 3, "{o}");
    assert_eq!(o["inFlight"]["byStatus"]["IN_PROGRESS"], 2, "{o}");
    assert_eq!(o["inFlight"]["byStatus"]["SCHEDULED"], 1, "{o}");
    assert_eq!(
        o["inFlight"]["byType"][0],
        json!({"taskType": "encode", "count": 2})
    );
    assert_eq!(o["wait"]["waiting"], 2, "{o}");
    assert_eq!(o["wait"]["overdue"], 1, "{o}");
    assert_eq!(o["wait"]["dueWithinMinute"], 1, "{o}");
    assert_eq!(o["stalled"], 2, "{o}");
    assert_eq!(o["checker"]["enabled"], true);
    assert_eq!(o["checker"]["leader"], true);
    assert_eq!(o["taskTypes"], json!(["encode", "resize"]));
    assert_eq!(o["workflowTypes"], json!(["media"]));
    // the same figures as the scrape
    let stalled = app
        .metric_value("taskpulse_tasks_stalled", &[("task_type", "encode")])
        .await;
    assert_eq!(stalled, Some(2.0));
    let overdue = app
        .metric_value(
            "taskpulse_wait_overdue_tasks",
            &[("workflow_type", "media")],
        )
        .await;
    assert_eq!(overdue, Some(1.0));
    app.shutdown().await;
}

/// Reads server-sent events from a response until `until` says stop (or 5 s pass).
async fn read_events(
    mut resp: reqwest::Response,
    mut until: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if name.is_empty() {
                continue; // a keep-alive comment
            }
            let data: Value = serde_json::from_str(&data).expect("event data is JSON");
            let stop = until(&name, &data);
            seen.push((name, data));
            if stop {
                return seen;
            }
        }
    }
    seen
}

#[tokio::test]
async fn the_event_stream_sends_watched_changes_and_stays_bounded() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| s.http.max_connections = 8).await;
    let now = taskpulse::now_ms();
    app.ingest(&json!([
        task("live", "encode", Some(20.0), now),
        task("other", "encode", Some(5.0), now)
    ]))
    .await;
    let client = reqwest::Client::new();
    let resp = client
        .get(app.url("/api/v1/events?watch=live"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let poster = {
        let url = app.url("/api/v1/updates");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let mut other = task("other", "encode", Some(6.0), now);
            other["updateTime"] = json!(now + 500);
            let mut live = task("live", "encode", Some(75.0), now);
            live["updateTime"] = json!(now + 1000);
            for body in [other, live] {
                reqwest::Client::new()
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    // the change, and the count of updates that comes in the same tick
    let mut moved = false;
    let events = read_events(resp, |name, data| {
        moved |= name == "tasks" && data["tasks"][0]["progressPercent"] == 75.0;
        moved && name == "changed"
    })
    .await;
    poster.await.unwrap();
    let tasks: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "tasks")
        .flat_map(|(_, d)| d["tasks"].as_array().unwrap())
        .collect();
    assert!(
        tasks.len() >= 2,
        "the current state at connect, then the change: {events:?}"
    );
    assert_eq!(tasks[0]["progressPercent"], 20.0);
    assert_eq!(tasks.last().unwrap()["progressPercent"], 75.0);
    assert!(
        tasks.iter().all(|t| t["taskId"] == "live"),
        "only the watched task: {tasks:?}"
    );
    assert!(events.iter().any(|(n, _)| n == "overview"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "changed" && d["since"].as_u64() >= Some(1)),
        "{events:?}"
    );

    // at most half of --max-connections streams; the next gets 503 with the reason
    let mut open = Vec::new();
    for _ in 0..4 {
        let r = client.get(app.url("/api/v1/events")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let refused = client.get(app.url("/api/v1/events")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("event streams"));
    // a stream given back frees its place
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        let r = client.get(app.url("/api/v1/events")).send().await.unwrap();
        if r.status() == 200 {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a closed stream gives its place back");
    let too_many: Vec<String> = (0..201).map(|i| format!("t{i}")).collect();
    let (status, b) = get_json(
        &app,
        &format!("/api/v1/events?watch={}", too_many.join(",")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(b["error"].as_str().unwrap().contains("watch"), "{b}");
    drop(open);
    drop(again);
    app.shutdown().await;
}

#[tokio::test]
async fn the_page_is_embedded_and_same_origin_only() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.auth_token = Some(taskpulse::settings::Secret("s3cret".into()))
    })
    .await;
    // the page holds no data, so it is served without the token; the API is not
    let index = app.get("/").await;
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = index.text().await.unwrap();
    for asset in ["/ui/app.js", "/ui/app.css"] {
        assert!(html.contains(asset), "index.html loads {asset}");
        let r = app.get(asset).await;
        assert_eq!(r.status(), 200, "{asset}");
        assert!(!r.text().await.unwrap().is_empty());
    }
    // nothing in the page names another origin
    for asset in ["/", "/ui/app.js", "/ui/app.css"] {
        let text = app.get(asset).await.text().await.unwrap();
        // XML namespace names (the progress chart's SVG) are identifiers, never fetched
        let text = text.replace("http://www.w3.org/", "");
        for scheme in ["http://", "https://", "//cdn", "@import url("] {
            assert!(!text.contains(scheme), "{asset} names {scheme}");
        }
    }
    for path in ["/api/v1/overview", "/api/v1/events", "/api/v1/tasks"] {
        assert_eq!(app.get(path).await.status(), 401, "{path}");
    }
    app.shutdown().await;
}

/// The page's script is ES modules that `/ui/app.js` imports from `/ui/`: every file of
/// `src/http/ui/` is served there with the page's own headers (JavaScript as JavaScript, or the
/// browser refuses a module under `nosniff`), every import names one of them, none is over about
/// 400 lines, and a name that is not one of them is a 404.
#[tokio::test]
async fn every_page_module_is_served_like_the_page() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let index = app.get("/").await;
    let same = [
        "content-security-policy",
        "x-content-type-options",
        "cache-control",
    ];
    let dir = crate::drift::repo_path("src/http/ui");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "index.html")
        .collect();
    names.sort();
    assert!(names.len() > 2, "{names:?}");
    let mut imports: Vec<(String, String)> = Vec::new();
    for name in &names {
        let source = std::fs::read_to_string(dir.join(name)).unwrap();
        let r = app.get(&format!("/ui/{name}")).await;
        assert_eq!(r.status(), 200, "/ui/{name}");
        let want = if name.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        let ty = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ty.starts_with(want), "/ui/{name}: {ty}");
        for h in same {
            assert_eq!(r.headers().get(h), index.headers().get(h), "/ui/{name} {h}");
        }
        let text = r.text().await.unwrap();
        assert_eq!(text, source, "/ui/{name} is the file in src/http/ui");
        let text = text.replace("http://www.w3.org/", "");
        for scheme in ["http://", "https://", "//cdn", "@import url("] {
            assert!(!text.contains(scheme), "/ui/{name} names {scheme}");
        }
        if !name.ends_with(".js") {
            continue;
        }
        let lines = source.lines().count();
        assert!(lines <= 400, "src/http/ui/{name} has {lines} lines");
        for target in page_imports(&source) {
            assert!(names.contains(&target), "{name} imports {target}");
            imports.push((name.clone(), target));
        }
    }
    assert_no_import_circles(&imports);
    for path in [
        "/ui/nope.js",
        "/ui/index.html",
        "/ui/..%2Fui.rs",
        "/ui/app.js/x",
    ] {
        assert_eq!(app.get(path).await.status(), 404, "{path}");
    }
    app.shutdown().await;
}

/// The modules a page module imports (`... from './name.js'`).
fn page_imports(source: &str) -> Vec<String> {
    source
        .split("from './")
        .skip(1)
        .map(|rest| rest.split('\'').next().unwrap_or_default().to_string())
        .collect()
}

/// The page's modules import one another without a circle (a circle would make a module's
/// top-level code run before what it imports is ready).
fn assert_no_import_circles(imports: &[(String, String)]) {
    fn visit(at: &str, path: &mut Vec<String>, imports: &[(String, String)]) {
        assert!(
            !path.iter().any(|p| p == at),
            "import circle: {path:?} -> {at}"
        );
        path.push(at.to_string());
        for (_, to) in imports.iter().filter(|(from, _)| from == at) {
            visit(to, path, imports);
        }
        path.pop();
    }
    for (from, _) in imports {
        visit(from, &mut Vec::new(), imports);
    }
}
