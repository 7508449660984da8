//! The Helm chart (`helm/taskpulse`): `helm lint`, and `helm template` with the defaults and
//! with every option on (the `ci/*-values.yaml` files), checked object by object. The chart's
//! rules are the single source of `alerts/taskpulse-rules.yaml` and its dashboards are copies
//! of `dashboards/`: both are checked to be identical (`helm/sync.sh` makes them so).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::alerts::{
    assert_promtool_check_clean, describe, promtool, repo_path, run, yaml_file, RULES_FILE,
};
use crate::tools::Tool;

mod copies;
mod lint;
mod render;

pub(crate) const CHART: &str = "helm/taskpulse";
const NAMESPACE: &str = "workflows";
pub(crate) const ALL_ON: &str = "helm/taskpulse/ci/all-on-values.yaml";
pub(crate) const SQLITE_PVC: &str = "helm/taskpulse/ci/sqlite-persistence-values.yaml";
pub(crate) const EXISTING_SECRET: &str = "helm/taskpulse/ci/existing-secret-values.yaml";
pub(crate) const SIDECAR: &str = "helm/taskpulse/ci/sidecar-values.yaml";
/// The oldest Kubernetes the chart supports (Chart.yaml `kubeVersion`); `helm template` renders
/// for it, since older Helm releases assume an older cluster when there is none to ask.
pub(crate) const MIN_KUBE_VERSION: &str = "1.25.0";

/// Helm: `$TASKPULSE_HELM`, else `.tools/helm` (installed by `scripts/test.sh`), else `helm` on
/// PATH; `None` after a skip note (a failure with `TASKPULSE_REQUIRE_TOOLS=1`).
pub(crate) fn helm() -> Option<PathBuf> {
    Tool {
        env: Some("TASKPULSE_HELM"),
        local: Some(".tools/helm"),
        names: &["helm"],
        how: "scripts/test.sh installs it",
    }
    .find()
}

/// The objects `helm template` rendered, as JSON.
pub(crate) struct Objects(pub(crate) Vec<Value>);

impl Objects {
    fn kinds(&self) -> BTreeSet<&str> {
        self.0.iter().filter_map(|o| o["kind"].as_str()).collect()
    }

    fn find(&self, kind: &str) -> Option<&Value> {
        let mut of_kind = self.0.iter().filter(|o| o["kind"] == kind);
        let first = of_kind.next();
        assert!(of_kind.next().is_none(), "more than one {kind}");
        first
    }

    /// The one object of this kind.
    fn one(&self, kind: &str) -> &Value {
        self.find(kind)
            .unwrap_or_else(|| panic!("no {kind} rendered; kinds: {:?}", self.kinds()))
    }
}

fn template_output(helm: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "template",
        "taskpulse",
        CHART,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        MIN_KUBE_VERSION,
    ];
    // a later --kube-version in ARGS wins
    all.extend_from_slice(args);
    run(helm, &all)
}

/// `helm template taskpulse helm/taskpulse --namespace workflows ARGS`, parsed.
pub(crate) fn template(helm: &Path, args: &[&str]) -> Objects {
    let out = template_output(helm, args);
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        describe(&out)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut objects = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("helm template {args:?}: unparsable YAML: {e}\n{text}"));
        if !v.is_null() {
            objects.push(v);
        }
    }
    Objects(objects)
}

/// `helm template` that must fail; its error output.
fn template_error(helm: &Path, args: &[&str]) -> String {
    let out = template_output(helm, args);
    assert!(
        !out.status.success(),
        "helm template {args:?} rendered, but should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn container(deployment: &Value) -> &Value {
    let containers = pod_spec(deployment)["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// `512Mi`, `1Gi` (Kubernetes) or `256MiB`, `1GiB` (taskpulse) in bytes.
fn bytes(size: &str) -> u64 {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("size {size}"));
    n * match size[digits.len()..].trim_end_matches('B') {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        unit => panic!("unit {unit} in {size}"),
    }
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env(container, name).and_then(|e| e["value"].as_str().map(str::to_string))
}

fn secret_ref<'a>(container: &'a Value, name: &str) -> &'a Value {
    let e = env(container, name).unwrap_or_else(|| panic!("no {name} env"));
    assert!(e["value"].is_null(), "{name} has a plain value: {e}");
    &e["valueFrom"]["secretKeyRef"]
}

/// The keys a rendered Secret holds (its values are base64).
fn secret_keys(secret: &Value) -> Vec<&String> {
    secret["data"]
        .as_object()
        .expect("Secret data")
        .keys()
        .collect()
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

/// `labels` holds every pair of `subset`.
fn contains_labels(labels: &Value, subset: &Value) -> bool {
    let subset = subset.as_object().expect("labels");
    !subset.is_empty() && subset.iter().all(|(k, v)| labels[k] == *v)
}

fn b64decode(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 secret")
}

/// What every rendering's Deployment has: probes on /healthz and /readyz, resources, a
/// non-root pod with a read-only root filesystem, the port taskpulse listens on, `serve`.
fn assert_deployment_basics(d: &Value) {
    let pod = pod_spec(d);
    let c = container(d);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
    assert!(
        pod["securityContext"]["runAsUser"]
            .as_i64()
            .is_some_and(|u| u > 0),
        "{pod}"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");

    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}: {}", c[probe]);
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let resources = &c["resources"];
    assert!(
        resources["requests"]["cpu"].is_string()
            && resources["requests"]["memory"].is_string()
            && resources["limits"]["memory"].is_string(),
        "resources: {resources}"
    );

    assert_eq!(c["args"], json!(["serve"]));
    let port = c["ports"][0]["containerPort"].as_i64().expect("port");
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(
        env_value(c, "TASKPULSE_LISTEN").as_deref(),
        Some(format!("0.0.0.0:{port}").as_str()),
        "taskpulse listens on the container port"
    );
    let selector = &d["spec"]["selector"]["matchLabels"];
    assert!(contains_labels(
        &d["spec"]["template"]["metadata"]["labels"],
        selector
    ));
}

/// The Service selects the Deployment's pods and forwards its port to `http`.
fn assert_service_selects(objects: &Objects, port: i64) {
    let svc = objects.one("Service");
    let pod_labels = &objects.one("Deployment")["spec"]["template"]["metadata"]["labels"];
    assert!(
        contains_labels(pod_labels, &svc["spec"]["selector"]),
        "{svc}"
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], port);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["ports"][0]["name"], "http");
}

fn app_version() -> String {
    let chart = yaml_file(&repo_path("helm/taskpulse/Chart.yaml"));
    chart["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_string()
}

/// The alert rule named `name` in a PrometheusRule's (or a rule file's) groups.
fn alert<'a>(groups: &'a Value, name: &str) -> &'a Value {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("no alert {name}"))
}

fn has_alert(groups: &Value, name: &str) -> bool {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .any(|r| r["alert"] == name)
}

/// A PrometheusRule's groups pass `promtool check rules`.
fn assert_rules_valid(spec: &Value) {
    let Some(promtool) = promtool() else { return };
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), serde_norway::to_string(spec).unwrap()).unwrap();
    assert_promtool_check_clean(&promtool, file.path());
}

/// The uids of dashboards/*.json.
pub(crate) fn dashboard_uids() -> BTreeSet<String> {
    dashboard_files("dashboards")
        .iter()
        .map(|(name, text)| {
            let v: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("dashboards/{name}: {e}"));
            v["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("dashboards/{name} has no uid"))
                .to_string()
        })
        .collect()
}

/// File name and text of DIR/*.json, sorted.
fn dashboard_files(dir: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(repo_path(dir))
        .unwrap_or_else(|e| panic!("{dir}/: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}
