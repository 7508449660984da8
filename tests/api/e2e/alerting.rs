//! The Conductor workload: every dashboard panel has data, and the alerts fire and resolve.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_have_data_and_alerts_fire_and_resolve_through_prometheus_and_alertmanager() {
    let Some((prometheus, alertmanager)) = tools() else {
        return;
    };
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        workload_settings(s);
        s.metrics.stall_after = Duration::from_secs(3);
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // the receiver, Alertmanager, Prometheus
    let receiver = Receiver::default();
    let hook = receiver.start().await;
    let am_port = free_port();
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        format!(
            "route:\n  receiver: test\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: test\n    webhook_configs:\n      - url: http://{hook}/alerts\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("am-data")).unwrap();
    let mut am = Proc::spawn(
        "alertmanager",
        &alertmanager,
        &[
            format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ),
            format!("--storage.path={}", dir.path().join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_string(),
        ],
        dir.path(),
    );
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    let rules = shortened_rules(&rules_dir);
    let rule_list: String = rules
        .iter()
        .map(|(p, _)| format!("  - {}\n", p.display()))
        .collect();
    wait_ready(
        &client,
        &format!("http://127.0.0.1:{am_port}/-/ready"),
        &mut am,
    )
    .await;
    let (prom, prom_url) = start_prometheus(
        &client,
        &prometheus,
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rule_list}\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
        ),
        app.addr,
        &["--rules.alert.resend-delay=1s"],
    )
    .await;
    let logs = || format!("{}\n{}", prom.tail(), am.tail());

    // Prometheus loaded every rule of the files, and scrapes taskpulse
    let loaded: Value = client
        .get(format!("{prom_url}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded_names: Vec<String> = loaded["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect();
    let expected: usize = rules.iter().map(|(_, n)| n).sum();
    assert_eq!(
        loaded_names.len(),
        expected,
        "Prometheus loaded {loaded_names:?}; the files hold {expected} rules\n{}",
        logs()
    );
    for name in ["TaskPredictedTimeout", "WaitTasksOverdue"] {
        assert!(
            loaded_names.iter().any(|n| n == name),
            "no {name} rule: {loaded_names:?}"
        );
    }
    wait_for_data(
        &client,
        &prom_url,
        &format!("up{{job=\"{JOB}\"}} == 1"),
        Duration::from_secs(15),
    )
    .await;

    // the workload: once before Prometheus has seen the counters and histograms, and once
    // after, so rates and percentiles have something to show
    start_tasks(&app).await;
    let ticker = keep_slow_task_moving(&app);
    churn(&app, 1).await;
    wait_for_checker(&app, 1).await;
    for series in [
        "taskpulse_task_duration_seconds_count",
        "taskpulse_wait_wakeup_lag_seconds_count",
        "taskpulse_transitions_rejected_total",
        "taskpulse_checker_repairs_total",
    ] {
        wait_for_data(&client, &prom_url, series, Duration::from_secs(10)).await;
    }
    churn(&app, 2).await;
    wait_for_checker(&app, 2).await;

    // every query of every dashboard panel returns data
    let queries = dashboard_queries(&format!("http://{}", app.addr), &[("task_id", SLOW)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let empty = empty_queries(&client, &prom_url, &queries).await;
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} dashboard queries return no data through Prometheus:\n{}\n{}",
            empty.len(),
            queries.len(),
            empty
                .iter()
                .map(|place| {
                    let expr = &queries.iter().find(|(p, _)| p == place).unwrap().1;
                    format!("{place}: {expr}")
                })
                .collect::<Vec<_>>()
                .join("\n"),
            logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // the alerts fire and reach the receiver with the right labels
    let firing = receiver
        .wait_for(
            "TaskPredictedTimeout",
            "firing",
            Duration::from_secs(20),
            &logs,
        )
        .await;
    for a in &firing {
        let l = &a["labels"];
        assert_eq!(
            l["task_id"], SLOW,
            "only the slow task is predicted to time out: {a}"
        );
        assert_eq!(l["workflow_id"], format!("wf-{SLOW}"), "{a}");
        assert_eq!(l["task_type"], SLOW_TASK_TYPE, "{a}");
        assert_eq!(l["workflow_type"], SLOW_WORKFLOW_TYPE, "{a}");
        assert_eq!(l["job"], JOB, "{a}");
        assert!(l["severity"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains(SLOW)),
            "{a}"
        );
    }
    let firing = receiver
        .wait_for("WaitTasksOverdue", "firing", Duration::from_secs(20), &logs)
        .await;
    for a in &firing {
        let l = &a["labels"];
        assert_eq!(l["workflow_type"], WAIT_WORKFLOW_TYPE, "{a}");
        assert_eq!(l["job"], JOB, "{a}");
        assert!(l["severity"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
    }

    // the tasks finish; both alerts resolve
    ticker.abort();
    let now = taskpulse::now_ms();
    let mut done = vec![json!({"taskId": SLOW, "workflowId": format!("wf-{SLOW}"),
                               "status": "COMPLETED", "updateTime": now, "progressPercent": 100})];
    for id in WAIT_OVERDUE.iter().chain([&WAIT_SOON]) {
        done.push(
            json!({"taskId": id, "workflowId": format!("wf-{id}"), "status": "COMPLETED",
                         "updateTime": now}),
        );
    }
    let r = app.ingest(&json!(done)).await;
    assert_eq!(r["accepted"], done.len(), "{r}");
    for (name, label, value) in [
        ("TaskPredictedTimeout", "task_id", SLOW),
        ("WaitTasksOverdue", "workflow_type", WAIT_WORKFLOW_TYPE),
    ] {
        let resolved = receiver
            .wait_for(name, "resolved", Duration::from_secs(20), &logs)
            .await;
        assert!(
            resolved.iter().any(|a| a["labels"][label] == value),
            "{name} resolved, but not for {label}={value}: {resolved:?}"
        );
    }
    eprintln!("e2e finished in {:?}", began.elapsed());
    drop(prom);
    drop(am);
    app.shutdown().await;
}
