//! `helm template` object by object: the defaults and every values file.

use super::*;

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
