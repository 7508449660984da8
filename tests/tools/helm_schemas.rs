//! Every manifest the chart renders is valid Kubernetes: with the defaults and with every
//! `ci/*-values.yaml` file, rendered for each Kubernetes minor version from the chart's
//! `kubeVersion` up to the newest the validator knows, and checked against that version's
//! OpenAPI schemas, strictly (an unknown field is an error) by `kubernetes-validate`
//! (tests/chart/validate_k8s.py, from PyPI in .venv). The ServiceMonitor and PrometheusRule are
//! checked against the Prometheus Operator's CRD schemas (tests/chart/validate_crds.mjs, from
//! the npm package @kubernetes-models/prometheus-operator in tests/chart/node_modules).
//!
//! Both validators are shown to reject what Kubernetes would reject, so a green run means
//! something.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::alerts::{describe, repo_path};
use crate::helm::{
    helm, template, Objects, ALL_ON, CHART, EXISTING_SECRET, MIN_KUBE_VERSION, SIDECAR, SQLITE_PVC,
};
use crate::tools::missing;

/// The values sets the chart is rendered with: the defaults, then every ci file.
const VALUES: [Option<&str>; 5] = [
    None,
    Some(ALL_ON),
    Some(SQLITE_PVC),
    Some(EXISTING_SECRET),
    Some(SIDECAR),
];

fn skip(why: &str) {
    missing::<()>(why, "scripts/test.sh installs it");
}

/// The Python with kubernetes-validate ($TASKPULSE_TEST_PYTHON, else .venv), or `None`.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("TASKPULSE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".venv/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        skip(&format!(
            "no kubernetes-validate for {} (tests/requirements.txt)",
            python.display()
        ));
        return None;
    }
    Some(python)
}

/// `node`, with tests/chart/node_modules installed, or `None`.
fn node() -> Option<PathBuf> {
    let modules = repo_path("tests/chart/node_modules/@kubernetes-models/prometheus-operator");
    let node = PathBuf::from("node");
    let works = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works || !modules.is_dir() {
        skip("no node, or no tests/chart/node_modules (npm ci in tests/chart)");
        return None;
    }
    Some(node)
}

/// The minor versions kubernetes-validate has schemas for, as `1.N.0`, oldest first.
fn known_versions(python: &Path) -> Vec<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import json, kubernetes_validate.utils as u; print(json.dumps(sorted(set(u.all_versions()))))",
        ])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", describe(&out));
    let mut versions: Vec<String> = serde_json::from_slice(&out.stdout).expect("a JSON list");
    versions.sort_by_key(|v| minor(v));
    versions
}

fn minor(version: &str) -> u32 {
    version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("not a Kubernetes version: {version}"))
}

/// The oldest version Chart.yaml's `kubeVersion: ">=1.N.0-0"` admits.
fn chart_min_version() -> String {
    let chart = std::fs::read_to_string(repo_path(&format!("{CHART}/Chart.yaml"))).unwrap();
    let line = chart
        .lines()
        .find_map(|l| l.strip_prefix("kubeVersion:"))
        .expect("Chart.yaml names a kubeVersion");
    let constraint = line.trim().trim_matches('"');
    let min = constraint
        .strip_prefix(">=")
        .unwrap_or_else(|| panic!("kubeVersion {constraint:?} is not a lower bound"));
    min.trim_end_matches("-0").to_string()
}

/// Writes the objects to a JSON file in `dir`.
fn write(dir: &Path, name: &str, objects: &[Value]) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(objects).unwrap()).unwrap();
    path
}

/// Runs a validator; its reports (one JSON line each) and whether it exited 0.
fn validate(tool: &Path, args: &[String]) -> (Vec<Value>, bool) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(repo_path("tests/chart"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}\n{}", describe(&out))))
        .collect();
    assert!(!reports.is_empty(), "no report: {}", describe(&out));
    (reports, out.status.success())
}

/// validate_k8s.py on `VERSION=FILE` pairs.
fn validate_k8s(python: &Path, pairs: impl IntoIterator<Item = String>) -> (Vec<Value>, bool) {
    let script = repo_path("tests/chart/validate_k8s.py")
        .display()
        .to_string();
    let args: Vec<String> = std::iter::once(script).chain(pairs).collect();
    validate(python, &args)
}

/// validate_crds.mjs on one file.
fn validate_crds(node: &Path, file: &Path) -> (Vec<Value>, bool) {
    let script = repo_path("tests/chart/validate_crds.mjs")
        .display()
        .to_string();
    validate(node, &[script, file.display().to_string()])
}

fn errors(report: &Value) -> Vec<String> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

fn names(report: &Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

fn is_custom(o: &Value) -> bool {
    o["apiVersion"]
        .as_str()
        .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
}

fn name_of(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap(),
        o["metadata"]["name"].as_str().unwrap()
    )
}

#[test]
fn helm_every_rendered_manifest_is_valid_for_every_supported_kubernetes() {
    let Some(helm) = helm() else { return };
    let Some(python) = python() else { return };
    let Some(node) = node() else { return };

    let min = chart_min_version();
    assert_eq!(
        min, MIN_KUBE_VERSION,
        "the tests render for the chart's oldest Kubernetes"
    );
    let known = known_versions(&python);
    assert!(
        known.contains(&min),
        "the chart claims Kubernetes {min}, which kubernetes-validate has no schemas for ({known:?})"
    );
    let versions: Vec<&String> = known.iter().filter(|v| minor(v) >= minor(&min)).collect();
    assert!(versions.len() >= 10, "{versions:?}");

    let dir = tempfile::tempdir().unwrap();
    let mut pairs = Vec::new();
    let mut expected = Vec::new();
    let mut custom_files = Vec::new();
    let mut custom_expected = Vec::new();
    for (i, values) in VALUES.iter().enumerate() {
        for version in &versions {
            let mut args = vec!["--kube-version", version.as_str()];
            if let Some(v) = values {
                args.extend(["-f", v]);
            }
            let Objects(objects) = template(&helm, &args);
            let file = write(dir.path(), &format!("{i}-{version}"), &objects);
            pairs.push(format!("{version}={}", file.display()));
            let builtin: Vec<String> = objects
                .iter()
                .filter(|o| !is_custom(o))
                .map(name_of)
                .collect();
            expected.push((values.unwrap_or("defaults"), version.to_string(), builtin));
            if *version == versions[0] {
                custom_expected.push(
                    objects
                        .iter()
                        .filter(|o| is_custom(o))
                        .map(name_of)
                        .collect::<Vec<_>>(),
                );
                custom_files.push(file);
            }
        }
    }

    // Kubernetes' own kinds, every version, strict.
    let (reports, ok) = validate_k8s(&python, pairs);
    assert_eq!(reports.len(), expected.len());
    let mut failures = Vec::new();
    for (report, (values, version, builtin)) in reports.iter().zip(&expected) {
        assert_eq!(report["version"], json!(version));
        for e in errors(report) {
            failures.push(format!("{values} on Kubernetes {version}: {e}"));
        }
        assert_eq!(
            &names(report, "validated"),
            builtin,
            "{values} on {version}: every built-in object validated"
        );
    }
    assert!(
        ok && failures.is_empty(),
        "invalid manifests:\n{}",
        failures.join("\n")
    );

    // The Prometheus Operator's kinds, against its CRD schemas.
    for (file, custom) in custom_files.iter().zip(&custom_expected) {
        let (reports, ok) = validate_crds(&node, file);
        assert!(ok, "invalid custom resources: {:?}", errors(&reports[0]));
        assert_eq!(&names(&reports[0], "validated"), custom);
    }
    let all_on_custom = &custom_expected[1];
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            all_on_custom.iter().any(|n| n.starts_with(kind)),
            "every option on renders a {kind}: {all_on_custom:?}"
        );
    }
}

/// A broken manifest: its name, the edit that breaks it, what the validator's error names.
type Case = (&'static str, Box<dyn Fn(&mut Value)>, &'static str);

/// The validators reject what a cluster would: a typo'd field, a wrong type, a malformed
/// duration in a ServiceMonitor or a PrometheusRule.
#[test]
fn helm_schema_validators_reject_broken_manifests() {
    let Some(helm) = helm() else { return };
    let Some(python) = python() else { return };
    let Some(node) = node() else { return };
    let Objects(objects) = template(&helm, &["-f", ALL_ON]);
    let dir = tempfile::tempdir().unwrap();
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut objects = objects.clone();
        for o in &mut objects {
            edit(o);
        }
        objects
    };

    let cases: [Case; 3] = [
        (
            "typo",
            Box::new(|o| {
                if o["kind"] == "Deployment" {
                    let c = &mut o["spec"]["template"]["spec"]["containers"][0];
                    c["resourses"] = c["resources"].take();
                }
            }),
            "resourses",
        ),
        (
            "type",
            Box::new(|o| {
                if o["kind"] == "Service" {
                    o["spec"]["ports"][0]["port"] = json!("http");
                }
            }),
            "spec/ports/0/port",
        ),
        (
            "enum",
            Box::new(|o| {
                if o["kind"] == "Deployment" {
                    o["spec"]["strategy"] = json!({"type": 7});
                }
            }),
            "spec/strategy/type",
        ),
    ];
    for (name, edit, expect) in &cases {
        let file = write(dir.path(), name, &broken(edit.as_ref()));
        let (reports, ok) =
            validate_k8s(&python, [format!("{MIN_KUBE_VERSION}={}", file.display())]);
        let errs = errors(&reports[0]);
        assert!(
            !ok && errs.iter().any(|e| e.contains(expect)),
            "{name}: {errs:?}"
        );
    }

    let cases: [Case; 2] = [
        (
            "interval",
            Box::new(|o| {
                if o["kind"] == "ServiceMonitor" {
                    o["spec"]["endpoints"][0]["interval"] = json!("30 seconds");
                }
            }),
            "ServiceMonitor",
        ),
        (
            "for",
            Box::new(|o| {
                if o["kind"] == "PrometheusRule" {
                    o["spec"]["groups"][0]["rules"][0]["for"] = json!("5 minutes");
                }
            }),
            "PrometheusRule",
        ),
    ];
    for (name, edit, expect) in &cases {
        let file = write(dir.path(), name, &broken(edit.as_ref()));
        let (reports, ok) = validate_crds(&node, &file);
        let errs = errors(&reports[0]);
        assert!(
            !ok && errs.len() == 1 && errs[0].starts_with(expect),
            "{name}: {errs:?}"
        );
    }
}
