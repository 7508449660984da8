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
/// PATH; `None` after a skip note. With `TASKPULSE_REQUIRE_TOOLS=1` a missing Helm fails.
pub(crate) fn helm() -> Option<PathBuf> {
    let from_env = std::env::var_os("TASKPULSE_HELM")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let local = Some(repo_path(".tools/helm")).filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("helm"))
                .find(|p| p.is_file())
        })
    };
    let found = from_env.or(local).or_else(on_path);
    if found.is_none() {
        if std::env::var("TASKPULSE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("helm not found ($TASKPULSE_HELM, .tools/helm, PATH) and TASKPULSE_REQUIRE_TOOLS=1 (scripts/test.sh installs it)");
        }
        eprintln!("SKIPPED: helm not found ($TASKPULSE_HELM, .tools/helm or PATH; scripts/test.sh installs it)");
    }
    found
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

#[test]
fn helm_lint_is_clean_with_defaults_and_every_values_file() {
    let Some(helm) = helm() else { return };
    for values in [
        None,
        Some(ALL_ON),
        Some(SQLITE_PVC),
        Some(EXISTING_SECRET),
        Some(SIDECAR),
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let out = run(&helm, &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // helm 3.8 lint reports a template's `fail` as [INFO] only
        assert!(
            out.status.success()
                && !text.contains("[WARNING]")
                && !text.contains("[ERROR]")
                && !text.contains("Fail:"),
            "helm {args:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn helm_defaults_render_a_sqlite_deployment_and_service() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &[]);
    assert_eq!(
        objects.kinds(),
        BTreeSet::from(["Deployment", "Service"]),
        "the defaults render a Deployment and a Service only"
    );
    let d = objects.one("Deployment");
    assert_deployment_basics(d);
    assert_service_selects(&objects, 9477);
    assert_eq!(d["metadata"]["namespace"], NAMESPACE);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["strategy"]["type"], "Recreate",
        "never two pods on one SQLite file"
    );

    let c = container(d);
    assert_eq!(
        c["image"],
        format!("ghcr.io/taskpulse/taskpulse:{}", app_version())
    );
    assert_eq!(c["ports"][0]["containerPort"], 9477);
    // SQLite: the one writable volume, where the database file lives
    assert_eq!(
        env_value(c, "TASKPULSE_DATABASE").as_deref(),
        Some("sqlite:///data/taskpulse.db")
    );
    assert_eq!(env_value(c, "SQLITE_TMPDIR").as_deref(), Some("/data"));
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "data", "mountPath": "/data"}])
    );
    let volumes = pod_spec(d)["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0]["name"], "data");
    assert!(volumes[0]["emptyDir"].is_object(), "{volumes:?}");
    assert!(
        env(c, "TASKPULSE_AUTH_TOKEN").is_none(),
        "no auth by default"
    );
    for (name, value) in [
        ("TASKPULSE_STALL_AFTER", "5m"),
        ("TASKPULSE_WAIT_GRACE", "30s"),
        ("TASKPULSE_CHECK_INTERVAL", "30s"),
    ] {
        assert_eq!(env_value(c, name).as_deref(), Some(value), "{name}");
    }
    // The tracked tasks' budget fits the memory limit, with the room the README asks for
    // (1.7 times the budget resident, at most).
    let budget = env_value(c, "TASKPULSE_MAX_TRACKED_MEMORY").expect("a memory budget");
    let limit = c["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    assert!(
        bytes(&budget) as f64 * 1.7 <= bytes(limit) as f64,
        "--max-tracked-memory {budget} needs a memory limit of 1.7 times it, not {limit}"
    );
    // Kubernetes kills the pod after terminationGracePeriodSeconds: it must outlast the
    // shutdown grace, the wait for open requests and the final flush.
    let shutdown = taskpulse::settings::HttpSettings::default().shutdown_grace
        + taskpulse::app::CONNECTION_DRAIN_TIMEOUT
        + taskpulse::app::FLUSH_TIMEOUT;
    let grace = pod_spec(d)["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > shutdown.as_secs(),
        "terminationGracePeriodSeconds {grace} must be above {shutdown:?}"
    );
}

#[test]
fn helm_every_option_on_renders_postgres_secret_and_monitoring_objects() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &["-f", ALL_ON]);
    assert_eq!(
        objects.kinds(),
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "PrometheusRule",
            "Secret",
            "Service",
            "ServiceMonitor"
        ])
    );
    let d = objects.one("Deployment");
    assert_deployment_basics(d);
    assert_service_selects(&objects, 80);
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(
        d["spec"]["strategy"].is_null(),
        "rolling updates on postgres"
    );
    let c = container(d);
    assert_eq!(
        c["image"],
        "registry.example.com/platform/taskpulse:0.1.0-rc1"
    );
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
    );

    // PostgreSQL: URL and token from the chart's Secret, and nothing writable at all
    let secret = objects.one("Secret");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        b64decode(secret["data"]["database-url"].as_str().unwrap()),
        "postgres://taskpulse:s3cret@postgres.db.svc:5432/taskpulse"
    );
    assert_eq!(
        b64decode(secret["data"]["auth-token"].as_str().unwrap()),
        "token-for-ci"
    );
    assert_eq!(
        *secret_ref(c, "TASKPULSE_DATABASE"),
        json!({"name": secret_name, "key": "database-url"})
    );
    assert_eq!(
        *secret_ref(c, "TASKPULSE_AUTH_TOKEN"),
        json!({"name": secret_name, "key": "auth-token"})
    );
    assert!(is_empty(&pod_spec(d)["volumes"]), "no volume on postgres");
    assert!(is_empty(&c["volumeMounts"]), "no volume on postgres");
    assert!(env(c, "SQLITE_TMPDIR").is_none());
    assert!(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].is_string());
    assert_eq!(env_value(c, "TZ").as_deref(), Some("UTC"), "extraEnv");

    // ServiceMonitor: scrapes the Service's named port
    let sm = objects.one("ServiceMonitor");
    let svc = objects.one("Service");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert!(contains_labels(
        &svc["metadata"]["labels"],
        &sm["spec"]["selector"]["matchLabels"]
    ));
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");

    // PrometheusRule: thresholds, labels and links from the values
    let rule = objects.one("PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let spec = &rule["spec"];
    let stalled = alert(spec, "TaskStalled");
    assert!(
        stalled["expr"]
            .as_str()
            .unwrap()
            .trim_end()
            .ends_with("> 3"),
        "{stalled}"
    );
    assert_eq!(stalled["labels"]["severity"], "critical");
    assert_eq!(stalled["labels"]["team"], "workflows");
    assert!(stalled["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("longer than 10m (--stall-after)"));
    assert_eq!(
        stalled["annotations"]["runbook_url"],
        "https://git.example.com/taskpulse/blob/main/alerts/README.md#taskstalled"
    );
    assert!(stalled["annotations"]["dashboard"]
        .as_str()
        .unwrap()
        .starts_with("https://grafana.example.com/d/taskpulse-overview?"));
    assert!(alert(spec, "TaskpulseDown")["expr"]
        .as_str()
        .unwrap()
        .contains(r#"up{job="taskpulse-prod"} == 0"#));
    assert!(alert(spec, "TaskPredictedTimeout")["expr"]
        .as_str()
        .unwrap()
        .trim_end()
        .ends_with("> 60"));
    assert!(alert(spec, "IllegalTransitionsDetected")["expr"]
        .as_str()
        .unwrap()
        .contains(r#"{to=~"SCHEDULED|IN_PROGRESS|COMPLETED"}[30m]"#));
    assert_eq!(alert(spec, "StoreWriteErrors")["for"], "15m");
    assert_rules_valid(spec);

    // the dashboards ConfigMap Grafana's sidecar picks up: every dashboard, verbatim
    let cm = objects.one("ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["namespace"], "grafana");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "taskpulse");
    let data = cm["data"].as_object().expect("data");
    let shipped = dashboard_files("dashboards");
    assert_eq!(
        data.keys().cloned().collect::<Vec<_>>(),
        shipped.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    for (name, text) in &shipped {
        assert!(
            data[name].as_str().unwrap().trim_end() == text.trim_end(),
            "ConfigMap key {name} differs from dashboards/{name}: run helm/sync.sh"
        );
    }
}

#[test]
fn helm_existing_secret_is_used_and_none_rendered() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &["-f", EXISTING_SECRET]);
    assert!(objects.find("Secret").is_none(), "{:?}", objects.kinds());
    let d = objects.one("Deployment");
    assert_deployment_basics(d);
    assert_eq!(d["spec"]["replicas"], 3);
    let c = container(d);
    assert_eq!(
        *secret_ref(c, "TASKPULSE_DATABASE"),
        json!({"name": "taskpulse-credentials", "key": "url"})
    );
    assert_eq!(
        *secret_ref(c, "TASKPULSE_AUTH_TOKEN"),
        json!({"name": "taskpulse-credentials", "key": "token", "optional": true}),
        "auth is on when the Secret has the key"
    );
    assert!(is_empty(&pod_spec(d)["volumes"]));
    assert!(is_empty(&c["volumeMounts"]));

    // the checker is off (checkInterval 0): only the leader part of CheckerNotRunning remains
    let spec = &objects.one("PrometheusRule")["spec"];
    let expr = alert(spec, "CheckerNotRunning")["expr"].as_str().unwrap();
    assert!(expr.contains("no_leader"), "{expr}");
    assert!(!expr.contains("last_run"), "{expr}");
    assert!(!expr.contains("runs_failing"), "{expr}");
    assert_rules_valid(spec);

    // with SQLite, an existing Secret only provides the token
    let objects = template(&helm, &["--set", "existingSecret=tokens"]);
    assert!(objects.find("Secret").is_none());
    let c = container(objects.one("Deployment"));
    assert_eq!(
        env_value(c, "TASKPULSE_DATABASE").as_deref(),
        Some("sqlite:///data/taskpulse.db")
    );
    assert_eq!(secret_ref(c, "TASKPULSE_AUTH_TOKEN")["name"], "tokens");
}

#[test]
fn helm_sqlite_persistence_mounts_a_claim() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &["-f", SQLITE_PVC]);
    let pvc = objects.one("PersistentVolumeClaim");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(pvc["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let d = objects.one("Deployment");
    assert_deployment_basics(d);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let c = container(d);
    assert_eq!(
        env_value(c, "TASKPULSE_DATABASE").as_deref(),
        Some("sqlite:///var/lib/taskpulse/taskpulse.db")
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "data", "mountPath": "/var/lib/taskpulse"}])
    );
    assert_eq!(
        pod_spec(d)["volumes"],
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}])
    );
    // the Secret holds the token only: the SQLite URL is no secret
    let secret = objects.one("Secret");
    assert_eq!(secret_keys(secret), ["auth-token"]);
    assert_eq!(
        secret_ref(c, "TASKPULSE_AUTH_TOKEN")["name"],
        secret["metadata"]["name"]
    );

    // an existing claim: none rendered, that one mounted
    let objects = template(
        &helm,
        &[
            "--set",
            "persistence.enabled=true",
            "--set",
            "persistence.existingClaim=taskpulse-db",
        ],
    );
    assert!(objects.find("PersistentVolumeClaim").is_none());
    assert_eq!(
        pod_spec(objects.one("Deployment"))["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "taskpulse-db"
    );
}

/// `deployment.enabled=false` (taskpulse runs in the engine's pod): only the Secret, the rules
/// and the dashboards, with TaskpulseDown watching the engine pods' job.
#[test]
fn helm_sidecar_mode_renders_secret_rules_and_dashboards_only() {
    let Some(helm) = helm() else { return };
    let objects = template(&helm, &["-f", SIDECAR]);
    assert_eq!(
        objects.kinds(),
        BTreeSet::from(["ConfigMap", "PrometheusRule", "Secret"])
    );
    let secret = objects.one("Secret");
    assert_eq!(secret_keys(secret), ["auth-token", "database-url"]);
    let spec = &objects.one("PrometheusRule")["spec"];
    assert!(alert(spec, "TaskpulseDown")["expr"]
        .as_str()
        .unwrap()
        .contains(r#"up{job="conductor-taskpulse"}"#));
}

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

/// Every setting the chart passes is one taskpulse has (an unknown TASKPULSE_ variable would be
/// ignored silently), and taskpulse accepts the values: `taskpulse migrate` runs with the
/// environment the chart renders with every setting set.
#[test]
fn helm_config_reaches_taskpulse_as_valid_settings() {
    let Some(helm) = helm() else { return };
    let binary = crate::helpers::binary();
    let help = Command::new(&binary)
        .args(["serve", "--help"])
        .output()
        .expect("taskpulse serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: BTreeSet<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.split(['=', '[', '<', ','])
                .next()
                .unwrap()
                .replace('-', "_")
                .to_uppercase()
        })
        .collect();

    let objects = template(&helm, &["-f", ALL_ON]);
    let c = container(objects.one("Deployment"));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&binary);
    cmd.arg("migrate").env_clear();
    let mut passed = 0;
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let Some(setting) = name.strip_prefix("TASKPULSE_") else {
            continue;
        };
        if name == "TASKPULSE_LOG" {
            continue;
        }
        assert!(
            flags.contains(setting),
            "the chart sets {name}, but taskpulse has no --{} (flags: {flags:?})",
            setting.to_lowercase().replace('_', "-")
        );
        let value = match name {
            "TASKPULSE_DATABASE" => format!("sqlite://{}/t.db", dir.path().display()),
            "TASKPULSE_AUTH_TOKEN" => "token".to_string(),
            _ => e["value"].as_str().expect("plain value").to_string(),
        };
        cmd.env(name, value);
        passed += 1;
    }
    assert!(passed >= 12, "every setting of {ALL_ON}: {passed}");
    let out = cmd.output().expect("taskpulse migrate");
    assert!(
        out.status.success(),
        "taskpulse migrate with the chart's settings: {}",
        describe(&out)
    );
}

#[test]
fn helm_refuses_what_cannot_work() {
    let Some(helm) = helm() else { return };
    for (args, message) in [
        (vec!["--set", "replicaCount=2"], "SQLite is single-process"),
        (
            vec!["--set", "database.type=postgres"],
            "needs database.url or existingSecret",
        ),
        (
            vec!["--set", "database.type=mysql"],
            "database.type must be",
        ),
        (
            vec!["--set", "config.database=sqlite://x.db"],
            "config.database is set by the chart",
        ),
    ] {
        let err = template_error(&helm, &args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}
