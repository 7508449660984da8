//! Hostile input and overload: a flood of distinct tasks against `--max-tracked-tasks`,
//! slow clients against the header/body timeouts and `--max-connections`, hostile label values
//! against the exposition format, and the auth token against the logs. Every wait is bounded.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{binary, update, Backend, TestApp, TestDb};

/// Polls `cond` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
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
fn in_progress(id: &str, progress: f64, update_time: i64) -> Value {
    let mut u = update(id, "IN_PROGRESS");
    u["progressPercent"] = json!(progress);
    u["updateTime"] = json!(update_time);
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_tasks_stays_within_the_cap_and_evicted_tasks_survive() {
    const CAP: usize = 20;
    let db = TestDb::new(Backend::Sqlite).await;
    // A long throttle interval: a coalesced value is written only by the eviction itself.
    let app = TestApp::spawn_with(&db, |s| {
        s.pipeline.max_tracked_tasks = CAP;
        s.throttle.progress_min_interval = Duration::from_secs(3600);
    })
    .await;

    // "held" has a coalesced progress value when it is evicted; "old" is an evicted task that
    // later gets a stale update; "done" finished and is evicted first.
    app.ingest(&in_progress("held", 10.0, 1_000)).await;
    let r = app.ingest(&in_progress("held", 20.0, 2_000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    app.ingest(&in_progress("old", 50.0, 5_000)).await;
    app.ingest(&update("done", "COMPLETED")).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        app.stored("held").await.unwrap().progress,
        Some(10.0),
        "20% is coalesced, not written yet"
    );

    // 200 distinct tasks that never finish, in batches of 20
    for batch in 0..10 {
        let body: Vec<Value> = (0..20)
            .map(|i| in_progress(&format!("flood-{batch}-{i}"), 1.0, 1_000))
            .collect();
        let r = app.ingest(&json!(body)).await;
        assert_eq!(r["accepted"], 20, "{r}");
        // never far over the cap, even before the sweeper catches up (a new task a tenth over
        // the cap wakes it; allow it a batch or two of lag on a busy machine)
        assert!(
            app.tracker.len() <= 3 * CAP,
            "{} tasks in memory",
            app.tracker.len()
        );
    }
    assert!(
        eventually(Duration::from_secs(8), || app.tracker.len() <= CAP).await,
        "memory never came down to the cap: {} tasks",
        app.tracker.len()
    );
    let evicted = app
        .metric_value("taskpulse_tasks_evicted_total", &[])
        .await
        .unwrap();
    assert!(evicted >= 183.0, "evicted {evicted}");
    for id in ["held", "old", "done"] {
        assert!(app.tracker.get(id).is_none(), "{id} is still in memory");
    }

    // the coalesced value was written before "held" left memory
    app.settle().await;
    let held = app.stored("held").await.expect("held stays in the store");
    assert_eq!(held.progress, Some(20.0));
    assert_eq!(held.update_time, Some(2_000));
    assert_eq!(app.task("held").await["progressPercent"], 20.0);

    // progress for an evicted task is decided against the stored row and accepted
    let r = app.ingest(&in_progress("held", 30.0, 3_000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    assert_eq!(app.tracker.get("held").unwrap().progress, Some(30.0));
    // a stale update for an evicted task is rejected, as if it had never left memory
    let r = app.ingest(&in_progress("old", 60.0, 4_000)).await;
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["rejected"][0]["reason"], "stale", "{r}");
    assert_eq!(app.stored("old").await.unwrap().progress, Some(50.0));
    // and a finished, evicted task still can't be reopened
    let r = app.ingest(&update("done", "IN_PROGRESS")).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");

    // the store has every task; memory only the most recent
    app.shutdown().await;
    let store = db.store().await;
    for id in ["held", "old", "done", "flood-0-0", "flood-9-19"] {
        assert!(store.get_task(id).await.unwrap().is_some(), "{id} lost");
    }
    assert_eq!(
        store.get_task("held").await.unwrap().unwrap().progress,
        Some(30.0)
    );
}

/// Reads until EOF or error; `true` if the server closed the connection within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> (bool, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (closed, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_others() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.header_read_timeout = Duration::from_secs(2);
        s.http.body_read_timeout = Duration::from_secs(2);
    })
    .await;

    // slowloris: a request head, one byte every 100 ms, forever
    let mut slow_heads = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"P").await.unwrap();
        slow_heads.push(tokio::spawn(async move {
            let started = Instant::now();
            let head = b"OST /api/v1/updates HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut i = 0;
            loop {
                let byte = head.get(i).copied().unwrap_or(b'a');
                i += 1;
                if s.write_all(&[byte]).await.is_err() {
                    return started.elapsed();
                }
                // the server closing is seen on read as well
                let mut b = [0u8; 64];
                if let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await
                {
                    if matches!(r, Ok(0) | Err(_)) {
                        return started.elapsed();
                    }
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return started.elapsed();
                }
            }
        }));
    }
    // a slow body: a complete head promising 1000 bytes, then 10 of them
    let mut slow_body = TcpStream::connect(app.addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /api/v1/updates HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"taskId\"",
        )
        .await
        .unwrap();
    let body_started = Instant::now();

    // meanwhile everyone else is served normally
    for i in 0..5 {
        let started = Instant::now();
        let r = app.ingest(&update(&format!("fast-{i}"), "SCHEDULED")).await;
        assert_eq!(r["accepted"], 1);
        // served while the slow connections are still open (they are cut off after 2 s)
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for h in slow_heads {
        let took = h.await.unwrap();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
            "a slow head was cut off after {took:?}"
        );
    }
    let (closed, answer) = closed_within(&mut slow_body, Duration::from_secs(6)).await;
    assert!(closed, "slow body connection still open: {answer}");
    assert!(
        body_started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        body_started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-read-timeout"), "{answer}");

    // a connection that sends nothing at all is closed too
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let (closed, _) = closed_within(&mut idle, Duration::from_secs(6)).await;
    assert!(closed, "an idle connection stayed open");
    app.shutdown().await;
}

/// One `GET path` on a raw keep-alive connection; the status line.
async fn raw_get(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answer within 5s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_clients_wait_while_open_ones_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.max_connections = 2;
        s.http.header_read_timeout = Duration::from_secs(20);
    })
    .await;
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(raw_get(&mut first, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(raw_get(&mut second, "/healthz").await, "HTTP/1.1 200 OK");

    // a third client waits: both slots are taken
    let client = reqwest::Client::new();
    let url = app.url("/healthz");
    let third = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "a third connection was served");
    // the open ones keep working
    assert_eq!(raw_get(&mut first, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(raw_get(&mut second, "/readyz").await, "HTTP/1.1 200 OK");

    // one closes: the waiting client is served
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(second);
    app.shutdown().await;
}

/// Names that are legal in JSON and awkward in the exposition format.
const HOSTILE: &[&str] = &[
    "quote\"d",
    "back\\slash",
    "trailing\\",
    "curly}brace{",
    "#hash # TYPE x counter",
    "a=\"b\",c=\"d\"",
    "ünïcødé ✓ 名前 🚀",
    "   spaced   ",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_label_values_keep_metrics_valid_and_come_back_unchanged() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let body: Vec<Value> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut u = in_progress(&format!("hostile-{i}"), 40.0, 1_000);
            u["taskType"] = json!(name);
            u["workflowType"] = json!(format!("wf {name}"));
            u["workerId"] = json!(format!("w {name}"));
            u
        })
        .collect();
    let r = app.ingest(&json!(body)).await;
    assert_eq!(r["accepted"], HOSTILE.len(), "{r}");

    // rejected: control characters, and label values over 128 bytes
    let mut newline = update("nl", "SCHEDULED");
    newline["taskType"] = json!("a\nb");
    let mut long = update("long", "SCHEDULED");
    long["workerId"] = json!("w".repeat(129));
    let mut longest = update("longest", "SCHEDULED");
    longest["workflowType"] = json!("t".repeat(128));
    let r = app.ingest(&json!([newline, long, longest])).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let rejected = r["rejected"].as_array().unwrap();
    assert!(rejected[0]["detail"]
        .as_str()
        .unwrap()
        .contains("control characters"));
    assert!(
        rejected[1]["detail"].as_str().unwrap().contains("128"),
        "{r}"
    );

    // values come back unchanged from memory and from the store
    for (i, name) in HOSTILE.iter().enumerate() {
        let id = format!("hostile-{i}");
        let t = app.task(&id).await;
        assert_eq!(t["taskType"], *name);
        assert_eq!(t["workflowType"], format!("wf {name}"));
        assert_eq!(t["workerId"], format!("w {name}"));
    }
    app.settle().await;
    for (i, name) in HOSTILE.iter().enumerate() {
        let rec = app.stored(&format!("hostile-{i}")).await.unwrap();
        assert_eq!(&*rec.task_type, *name);
    }

    // the exposition parses (prometheus_parse does not unescape label values, so they are read
    // back with the strict reader below), and every label value reads back exactly
    let text = app.metrics_text().await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("exposition parses");
    let samples: Vec<(String, Vec<(String, String)>)> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unreadable sample line: {l:?}")))
        .collect();
    let has = |metric: &str, want: &[(&str, &str)]| {
        samples.iter().any(|(name, labels)| {
            name == metric
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    };
    for (i, name) in HOSTILE.iter().enumerate() {
        let id = format!("hostile-{i}");
        let wf = format!("wf {name}");
        let worker = format!("w {name}");
        assert!(
            has(
                "taskpulse_task_progress_ratio",
                &[
                    ("task_id", id.as_str()),
                    ("task_type", name),
                    ("workflow_type", wf.as_str()),
                ]
            ),
            "progress series of {name:?} in:\n{text}"
        );
        assert!(
            has(
                "taskpulse_task_worker_info",
                &[("task_id", id.as_str()), ("worker_id", worker.as_str())]
            ),
            "worker series of {name:?}"
        );
        assert!(
            has(
                "taskpulse_tasks",
                &[("task_type", name), ("status", "IN_PROGRESS")]
            ),
            "state gauge of {name:?}"
        );
    }
    // every line is a comment or a sample: nothing a name contains started a line of its own
    for line in text.lines() {
        assert!(
            line.is_empty() || line.starts_with("# ") || line.starts_with("taskpulse_"),
            "stray line: {line:?}"
        );
    }
    promtool_check(&text);
    app.shutdown().await;
}

/// One exposition sample line, read strictly by the text format's rules: the metric name and
/// its labels with values unescaped (`\\`, `\"`, `\n`); `None` if the line breaks the format.
fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if chars.next() != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        _ => return None,
                    },
                    '\n' => return None,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next()? {
                ',' => continue,
                '}' => break,
                _ => return None,
            }
        }
    }
    let value: String = chars.collect();
    value.trim().parse::<f64>().ok()?;
    Some((name.to_string(), labels))
}

/// `promtool check metrics` on the text, when promtool is installed (skipped otherwise, unless
/// `TASKPULSE_REQUIRE_TOOLS=1`).
fn promtool_check(text: &str) {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    let Some(promtool) = found else {
        assert_ne!(
            std::env::var("TASKPULSE_REQUIRE_TOOLS").as_deref(),
            Ok("1"),
            "promtool is not on PATH"
        );
        eprintln!("SKIPPED: promtool is not on PATH");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // promtool exits 3 for lint warnings only (naming conventions); 1 is a parse error
    assert!(
        out.status.code() != Some(1) && !stderr.contains("error while linting"),
        "promtool: {:?}\n{stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The token, from a file, never reaches the logs, even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_token_from_a_file_never_appears_in_logs() {
    const TOKEN: &str = "tok-Zq8v1-never-log-me";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stderr_path = dir.path().join("stderr");
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let child = Command::new(binary())
        .args(["serve", "--listen", &addr.to_string(), "--database", &db])
        .env("TASKPULSE_AUTH_TOKEN_FILE", &token_file)
        .env("TASKPULSE_LOG", "trace")
        .env_remove("TASKPULSE_AUTH_TOKEN")
        .env_remove("TASKPULSE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _guard = Kill(child);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://{addr}/api/v1/updates");
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "taskpulse did not start: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |auth: Option<String>| {
        let mut req = client.post(&url).json(&update("t1", "SCHEDULED"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(
        send(Some(format!("Bearer {TOKEN}x")))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        send(Some(format!("Bearer {TOKEN}")))
            .await
            .unwrap()
            .status(),
        200
    );
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .contains("bye")
    })
    .await;
    let logs = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(logs.contains("DEBUG") || logs.contains("TRACE"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token is in the logs:\n{logs}");
    assert!(!logs.contains("never-log-me"));

    // a bad token file stops start-up with a clear message (and no token)
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--auth-token-file", "/nonexistent/token"])
        .env_remove("TASKPULSE_AUTH_TOKEN")
        .env_remove("TASKPULSE_AUTH_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth-token-file"), "{err}");
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--auth-token", TOKEN])
        .env("TASKPULSE_AUTH_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
}
