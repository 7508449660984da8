//! The SQLite store failing: locked by another connection, an unusable path, a full disk.

use super::*;

/// Another process holding SQLite's write lock makes writes wait (busy_timeout), not fail:
/// the completion is acknowledged once the lock is gone, and progress is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_connection_is_waited_for() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let (status, _, body, _) = post(&app, &progress("sq-lock", 5.0)).await;
    assert_eq!(status, 200, "{body}");

    let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other.close().await.unwrap();
    });

    let completion = {
        let client = app.client.clone();
        let url = app.url("/api/v1/updates");
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .post(url)
                .timeout(Duration::from_secs(20))
                .json(&update("sq-lock", "COMPLETED"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body, took) = post(&app, &progress("sq-lock", 6.0)).await;
    assert!(
        status == 200 || status == 503,
        "progress under the lock: {status} {body}"
    );
    assert!(took < Duration::from_secs(1), "progress took {took:?}");
    let (status, took) = completion.await.unwrap();
    assert_eq!(status, 200, "completion once the lock is gone");
    assert!(
        took >= Duration::from_millis(1500),
        "the completion waited for the lock: {took:?}"
    );
    holder.await.unwrap();
    app.settle().await;
    let rec = app.stored("sq-lock").await.unwrap();
    assert_eq!(rec.status.as_str(), "COMPLETED");
    app.shutdown().await;
}

/// A bad SQLite location stops `serve` at start with exit 2 and a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unusable_path_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing_parent = dir.path().join("no-such-dir").join("sub").join("x.db");
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    // The unprivileged user must reach the directory, and be unable to write in it.
    Command::new("chmod")
        .args(["755"])
        .arg(dir.path())
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["555"])
        .arg(&read_only)
        .status()
        .unwrap();
    let in_read_only = read_only.join("x.db");
    for path in [missing_parent, in_read_only] {
        let url = format!("sqlite://{}", path.display());
        let args = ["serve", "--listen", "127.0.0.1:0", "--database", &url];
        let mut cmd = as_unprivileged(&binary());
        cmd.args(args);
        let mut p = Proc::from_command(cmd, dir.path(), format!("taskpulse {}", args.join(" ")));
        let status = p.wait_exit(Duration::from_secs(15)).await;
        let stderr = p.stderr();
        assert_eq!(status.code(), Some(2), "{url}: {status}; stderr:\n{stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "the message names {}:\n{stderr}",
            path.display()
        );
        assert!(!path.exists());
    }
}

/// A small tmpfs of the test's own, unmounted on drop; None when mounting is not allowed (not
/// root), in which case the test says so and does nothing.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::Builder::new()
            .prefix("taskpulse-disk-")
            .tempdir()
            .unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk with one file until the filesystem refuses more.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// SQLite on a full disk. At start: exit 2 with a message naming the database. While running:
/// the writer's "database or disk is full" is retried, not dropped; updates that need a commit
/// get 503, /readyz says 503; once space is freed, everything taken in is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_disk_fails_at_start_and_is_retried_while_running() {
    let Some(full) = SmallDisk::mount("256k") else {
        eprintln!("cannot mount a tmpfs here (not root); skipped");
        return;
    };
    full.fill();
    let path = full.path().join("x.db");
    let url = format!("sqlite://{}", path.display());
    let cwd = tempfile::tempdir().unwrap(); // not on the full disk: the child's output goes here
    let (status, _, stderr) = run(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--database", &url],
        &[],
        Duration::from_secs(15),
    )
    .await;
    eprintln!("start-up on a full disk:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(2),
        "full disk at start: {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("full"),
        "the message names {} and says the disk is full:\n{stderr}",
        path.display()
    );
    drop(full);

    // Large enough for the 3,000 rows and the WAL of the batches they are written in, once
    // the filler is gone.
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("t.db").display());
    let mut settings = settings_for(&url);
    settings.throttle.progress_min_interval = taskpulse::Settings::default()
        .throttle
        .progress_min_interval;
    settings.check_loop.check_interval = Duration::ZERO;
    let app = TestApp::start(settings).await;
    let (status, _, body, _) = post(&app, &progress("disk-0", 5.0)).await;
    assert_eq!(status, 200, "{body}");
    app.settle().await;
    let filler = disk.fill();

    // New tasks need a commit: an NDJSON body of 3,000 is more than any WAL space left over.
    let body: String = (0..3000)
        .map(|i| {
            format!(
                "{}\n",
                update(
                    &format!("disk-new-{i:04}-{}", "x".repeat(120)),
                    "IN_PROGRESS"
                )
            )
        })
        .collect();
    let send = || async {
        app.client
            .post(app.url("/api/v1/updates"))
            .header("content-type", "application/x-ndjson")
            .timeout(Duration::from_secs(20))
            .body(body.clone())
            .send()
            .await
            .unwrap()
    };
    let resp = send().await;
    assert_eq!(resp.status().as_u16(), 503, "new tasks on a full disk");
    assert!(resp.headers().get("retry-after").is_some());
    until(
        "/readyz 503 on a full disk",
        Duration::from_secs(10),
        || async { status_of(&app, "/readyz").await == 503 },
    )
    .await;
    let errors = app
        .metric_value("taskpulse_store_write_errors_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "write errors counted: {errors}");
    // Progress for a known task is still taken into memory.
    let (status, _, body, _) = post(&app, &progress("disk-0", 6.0)).await;
    assert_eq!(status, 200, "progress on a full disk: {body}");

    std::fs::remove_file(&filler).unwrap();
    until(
        "/readyz 200 after space is freed",
        Duration::from_secs(15),
        || async { status_of(&app, "/readyz").await == 200 },
    )
    .await;
    until(
        "the retried body acknowledged",
        Duration::from_secs(15),
        || async { send().await.status().as_u16() == 200 },
    )
    .await;
    app.settle().await;
    let store = Store::connect(&url).await.unwrap();
    let Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks WHERE task_id LIKE 'disk-new-%'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 3000, "every task taken in is stored");
    store.close().await;
    app.shutdown().await;
}
