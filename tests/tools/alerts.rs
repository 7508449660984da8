//! The Prometheus rules in `alerts/`: `promtool check rules` is clean, `promtool test rules`
//! passes, and those unit tests cover every alert the chart ships both firing (with its labels and
//! annotations) and not firing. That the rule file is the Helm chart's rendering is checked in
//! `helm.rs`; that its metric names are exported, in `drift.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::parse_yaml;
use crate::tools::Tool;
use serde_json::Value;

/// The alerts the chart ships (the README lists them), by name.
const ALERTS: &[&str] = &[
    "TaskPredictedTimeout",
    "TaskStalled",
    "WaitTasksOverdue",
    "IllegalTransitionsDetected",
    "ConsistencyViolationsUnrepaired",
    "CheckerNotRunning",
    "TaskpulseDown",
    "StoreWriteErrors",
];

pub(crate) const RULES_FILE: &str = "alerts/taskpulse-rules.yaml";

pub(crate) fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `promtool` on PATH, or `None` after a skip note (a failure with `TASKPULSE_REQUIRE_TOOLS=1`).
pub(crate) fn promtool() -> Option<PathBuf> {
    Tool {
        env: None,
        local: None,
        names: &["promtool"],
        how: "apt-get install prometheus, or run scripts/test.sh",
    }
    .find()
}

/// Runs a tool to completion in the repository root.
pub(crate) fn run(tool: &Path, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `promtool check rules` on a rule file: success, and nothing but its success lines.
pub(crate) fn assert_promtool_check_clean(promtool: &Path, file: &Path) {
    let out = run(promtool, &["check", "rules", &file.to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && out.stderr.is_empty()
            && !stdout.to_lowercase().contains("warn")
            && stdout.contains("SUCCESS"),
        "promtool check rules {}: {}",
        file.display(),
        describe(&out)
    );
}

/// A YAML file as JSON values (one per document).
pub(crate) fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_yaml(&text, &path.display().to_string())
}

/// The unit-test files: alerts/tests/*.yaml.
fn test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("alerts/tests"))
        .expect("alerts/tests/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no alerts/tests/*.yaml");
    files
}

#[test]
fn alerts_rule_file_passes_promtool_check() {
    let Some(promtool) = promtool() else { return };
    assert_promtool_check_clean(&promtool, &repo_path(RULES_FILE));
}

#[test]
fn alerts_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let files: Vec<String> = test_files()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&promtool, &args);
    assert!(
        out.status.success(),
        "promtool test rules: {}",
        describe(&out)
    );
}

/// Every alert of the rule file is one of these, every one of those is there, and each
/// carries a severity, a summary, a description and a dashboard link to a shipped dashboard.
#[test]
fn alerts_are_the_issues_with_severity_summary_description_and_dashboard() {
    let rules = yaml_file(&repo_path(RULES_FILE));
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            names.insert(name.to_string());
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{name}: severity label `{severity}`"
            );
            for key in ["summary", "description", "dashboard"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{name}: no `{key}` annotation"
                );
            }
            let link = rule["annotations"]["dashboard"].as_str().unwrap();
            let uid = link
                .split("/d/")
                .nth(1)
                .and_then(|rest| rest.split(['?', '/']).next())
                .unwrap_or_else(|| panic!("{name}: dashboard link `{link}` is not /d/UID"));
            assert!(
                crate::helm::dashboard_uids().contains(uid),
                "{name}: dashboard link to uid `{uid}`, which no dashboards/*.json has"
            );
        }
    }
    let wanted: BTreeSet<String> = ALERTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, wanted, "the alerts of {RULES_FILE}");
}

/// For every alert, some unit test expects it to fire (with labels and annotations) and some
/// evaluation expects it silent.
#[test]
fn alerts_unit_tests_cover_every_alert_firing_and_not_firing() {
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for file in test_files() {
        let doc = yaml_file(&file);
        let rule_files: Vec<&str> = doc["rule_files"]
            .as_array()
            .expect("rule_files")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            rule_files
                .iter()
                .any(|f| f.ends_with("taskpulse-rules.yaml")),
            "{}: does not load {RULES_FILE}",
            file.display()
        );
        for test in doc["tests"].as_array().expect("tests") {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_string();
                let expected = case["exp_alerts"].as_array().cloned().unwrap_or_default();
                if expected.is_empty() {
                    silent.insert(name);
                    continue;
                }
                for alert in &expected {
                    let annotations = &alert["exp_annotations"];
                    assert!(
                        ["summary", "description", "dashboard"]
                            .iter()
                            .all(|k| annotations[k].is_string()),
                        "{}: a firing {name} is expected without all of its annotations",
                        file.display()
                    );
                    assert!(
                        alert["exp_labels"]["severity"].is_string(),
                        "{}: a firing {name} is expected without its labels",
                        file.display()
                    );
                }
                firing.insert(name);
            }
        }
    }
    for alert in ALERTS {
        assert!(
            firing.contains(*alert),
            "no unit test expects {alert} to fire"
        );
        assert!(
            silent.contains(*alert),
            "no unit test expects {alert} to stay silent"
        );
    }
}
