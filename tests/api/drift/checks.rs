//! The drift test, and the tests of its readers.

use super::*;

/// Every metric name the dashboards, the alert rules and the README mention is one a real scrape
/// has, with the labels they select on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_alerts_and_readme_name_only_exported_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, workload_settings).await;
    start_tasks(&app).await;
    churn(&app, 1).await;
    wait_for_checker(&app, 1).await;
    app.settle().await;
    let text = app.metrics_text().await;
    let mut families = parse_exposition(&text);
    let others = proxy_workload_metrics().await + &redis_workload_metrics().await;
    for (name, f) in parse_exposition(&others) {
        let mine = families.entry(name).or_default();
        if mine.samples == 0 {
            *mine = f;
        }
    }
    let mut problems = Vec::new();

    // the workload reaches every family the app declares
    for (name, f) in &families {
        if f.samples == 0 {
            problems.push(format!(
                "the workload left `{name}` without samples; extend it"
            ));
        }
    }

    let rules: Vec<(PathBuf, Vec<RuleEntry>)> = rule_files()
        .into_iter()
        .map(|(p, text)| {
            let rules = parse_rules(&text);
            (p, rules)
        })
        .collect();
    let recorded: BTreeSet<String> = rules
        .iter()
        .flat_map(|(_, rs)| {
            rs.iter()
                .filter(|r| r.kind == "record")
                .map(|r| r.name.clone())
        })
        .collect();
    let mut checked = 0;
    for (path, rs) in &rules {
        assert!(
            !rs.is_empty(),
            "{} holds no rule with an expr",
            path.display()
        );
        for r in rs {
            let place = format!("alerts/{} {} `{}`", file_name(path), r.kind, r.name);
            check_expr(&families, &recorded, &place, &r.expr, true, &mut problems);
            checked += 1;
        }
    }
    for (file, dashboard) in dashboards() {
        let queries = panel_queries(&dashboard);
        assert!(!queries.is_empty(), "dashboards/{file} has no queries");
        for q in queries {
            let place = format!("dashboards/{file} panel `{}` ({})", q.panel, q.ref_id);
            check_expr(&families, &recorded, &place, &q.expr, true, &mut problems);
            checked += 1;
        }
        for v in variable_queries(&dashboard) {
            let place = format!("dashboards/{file} variable query");
            check_expr(&families, &recorded, &place, &v, true, &mut problems);
            checked += 1;
        }
    }

    // the README's metric reference, both ways, with types and labels
    let readme = std::fs::read_to_string(repo_path("docs/metrics.md")).unwrap();
    let documented = readme_metrics(&readme);
    assert!(
        documented.len() >= 10,
        "README's metric reference table not found: {documented:?}"
    );
    for (name, kind, labels) in &documented {
        match families.get(name) {
            None => problems.push(format!(
                "README documents `{name}`, which /metrics doesn't have"
            )),
            Some(f) => {
                if &f.kind != kind {
                    problems.push(format!(
                        "README says `{name}` is a {kind}, /metrics says {}",
                        f.kind
                    ));
                }
                if &f.labels != labels {
                    problems.push(format!(
                        "README gives `{name}` the labels {labels:?}, /metrics has {:?}",
                        f.labels
                    ));
                }
            }
        }
    }
    for name in families.keys() {
        if !documented.iter().any(|(n, _, _)| n == name) {
            problems.push(format!(
                "`{name}` is exported but not in README's metric reference"
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "{} drift problem(s) ({checked} expressions checked):\n{}\n\n/metrics:\n{text}",
        problems.len(),
        problems.join("\n")
    );
    app.shutdown().await;
}

/// The readers above do what the drift test relies on.
#[test]
fn promql_rule_and_exposition_readers_and_checks() {
    let n = promql_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(taskpulse_wait_wakeup_lag_seconds_bucket{workflow_type=~"$workflow_type", job!="taskpulse_x"}[$__rate_interval])))
           / on () group_left job:taskpulse_tasks:sum offset $stall_after # taskpulse_comment"#,
    );
    assert_eq!(
        n.metrics.into_iter().collect::<Vec<_>>(),
        ["taskpulse_wait_wakeup_lag_seconds_bucket"]
    );
    assert_eq!(
        n.recorded.into_iter().collect::<Vec<_>>(),
        ["job:taskpulse_tasks:sum"]
    );
    assert_eq!(
        n.selectors,
        [(
            "taskpulse_wait_wakeup_lag_seconds_bucket".to_string(),
            vec!["workflow_type".to_string(), "job".to_string()]
        )]
    );

    let rules = parse_rules(
        "groups:\n  - name: g\n    rules:\n      - record: a:b:sum\n        expr: sum(taskpulse_tasks)\n      - alert: A\n        expr: |\n          sum(taskpulse_x)\n            > 0\n        for: 5m\n        labels:\n          severity: page\n      - alert: 'B'\n        expr: \"taskpulse_y{a=\\\"1\\\"} > 0\"\n      - expr: taskpulse_z\n          > 1 # note\n        alert: C\n",
    );
    let got: Vec<(&str, &str, &str)> = rules
        .iter()
        .map(|r| (r.kind, r.name.as_str(), r.expr.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("record", "a:b:sum", "sum(taskpulse_tasks)"),
            ("alert", "A", "sum(taskpulse_x)\n> 0"),
            ("alert", "B", "taskpulse_y{a=\"1\"} > 0"),
            ("alert", "C", "taskpulse_z > 1"),
        ]
    );

    let fams = parse_exposition(
        "# TYPE taskpulse_h histogram\ntaskpulse_h_bucket{a=\"x,\\\"y\",le=\"1\"} 1\ntaskpulse_h_sum{a=\"\"} 1\ntaskpulse_h_count{a=\"\"} 1\n# TYPE taskpulse_g gauge\ntaskpulse_g 2\n",
    );
    assert_eq!(family_of(&fams, "taskpulse_h_bucket"), Some("taskpulse_h"));
    assert_eq!(
        family_of(&fams, "taskpulse_h"),
        None,
        "a histogram is not one series"
    );
    assert_eq!(fams["taskpulse_h"].labels.iter().collect::<Vec<_>>(), ["a"]);
    assert_eq!(fams["taskpulse_h"].samples, 3);
    assert_eq!(family_of(&fams, "taskpulse_g"), Some("taskpulse_g"));

    // what the drift test reports: an unknown name, a bare histogram name, an unknown label, a
    // recording rule nobody defines; and nothing for correct use
    let recorded: BTreeSet<String> = ["job:taskpulse_g:sum".to_string()].into();
    let mut problems = Vec::new();
    check_expr(
        &fams,
        &recorded,
        "x",
        r#"rate(taskpulse_h_bucket{a="1", le="+Inf", job="j"}[5m]) + taskpulse_g + job:taskpulse_g:sum"#,
        true,
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    check_expr(
        &fams,
        &recorded,
        "x",
        r#"taskpulse_nope + taskpulse_h + taskpulse_g{b="1"} + job:taskpulse_nope:sum"#,
        true,
        &mut problems,
    );
    assert_eq!(problems.len(), 4, "{problems:#?}");
}
