//! The chart's rules and dashboards: the same as `alerts/` and `dashboards/`.

use super::*;

#[test]
fn helm_prometheus_rule_is_the_alerts_file_and_follows_values() {
    let Some(helm) = helm() else { return };
    let committed = yaml_file(&repo_path(RULES_FILE));
    let objects = template(&helm, &["--set", "prometheusRule.enabled=true"]);
    let spec = &objects.one("PrometheusRule")["spec"];
    assert!(
        *spec == committed,
        "{RULES_FILE} differs from the chart's rules with default values: edit \
         helm/taskpulse/templates/_rules.tpl and run helm/sync.sh"
    );

    // thresholds come from values, and the stall setting reaches both taskpulse and the alert
    let objects = template(
        &helm,
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "alerts.taskStalled.threshold=5",
            "--set",
            "alerts.storeWriteErrors.for=30m",
            "--set",
            "alerts.taskPredictedTimeout.enabled=false",
            "--set",
            "config.stallAfter=15m",
        ],
    );
    let spec = &objects.one("PrometheusRule")["spec"];
    assert!(*spec != committed);
    let stalled = alert(spec, "TaskStalled");
    assert!(
        stalled["expr"].as_str().unwrap().ends_with("> 5"),
        "{stalled}"
    );
    assert!(stalled["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("longer than 15m (--stall-after)"));
    assert_eq!(alert(spec, "StoreWriteErrors")["for"], "30m");
    assert!(!has_alert(spec, "TaskPredictedTimeout"));
    assert!(has_alert(spec, "TaskpulseDown"));
    assert_eq!(
        env_value(
            container(objects.one("Deployment")),
            "TASKPULSE_STALL_AFTER"
        )
        .as_deref(),
        Some("15m")
    );
    assert_rules_valid(spec);
}

#[test]
fn helm_chart_dashboards_are_copies_of_the_dashboards_dir() {
    let shipped = dashboard_files("dashboards");
    let names: Vec<&str> = shipped.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in ["taskpulse-overview.json", "taskpulse-task.json"] {
        assert!(names.contains(&wanted), "no dashboards/{wanted}");
    }
    assert!(
        dashboard_files("helm/taskpulse/dashboards") == shipped,
        "helm/taskpulse/dashboards/ differs from dashboards/: run helm/sync.sh"
    );
}
