//! The container image (`scripts/image.sh`, `target/image/taskpulse.oci.tar`) run under a real
//! OCI runtime (runc), the way a kubelet runs it with the chart's security context: as the
//! image's own non-root user, with a read-only root filesystem and a writable `/data` volume.
//! It must answer `/healthz`, accept an update, and keep it in the SQLite file on the volume.
//!
//! `scripts/test.sh` builds the image and names it in `TASKPULSE_TEST_IMAGE` (runc in
//! `TASKPULSE_OCI_RUNTIME`). Without it the test is skipped, or fails with
//! `TASKPULSE_REQUIRE_TOOLS=1`.
//!
//! What the test changes in the bundle's `config.json`, and why: the network namespace goes
//! (a kubelet would give the pod one with its own address; here the host's loopback stands in
//! for it, so the test can reach the port), and so do the cgroup settings (containers like
//! this machine may not delegate cgroups). Everything the image decides (user, entrypoint,
//! environment, working directory) is left as `umoci unpack` derived it from the image.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::alerts::repo_path;
use crate::helpers::{free_port, update};
use crate::tools::missing;

/// The user and group the image runs as (`scripts/image.sh`; the chart's `runAsUser`).
const IMAGE_UID: u32 = 65532;

/// The image archive and the OCI runtime, or `None` after a skip note.
fn image_and_runtime() -> Option<(PathBuf, PathBuf)> {
    let image = std::env::var_os("TASKPULSE_TEST_IMAGE").map(PathBuf::from);
    let runtime = std::env::var_os("TASKPULSE_OCI_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("runc"));
    match image {
        Some(image) if image.is_file() => Some((image, runtime)),
        other => {
            let why = match other {
                Some(p) => format!("TASKPULSE_TEST_IMAGE={} is not a file", p.display()),
                None => "TASKPULSE_TEST_IMAGE is not set".to_string(),
            };
            missing(
                &why,
                "scripts/test.sh builds the image with scripts/image.sh",
            )
        }
    }
}

/// Runs a tool to completion; its stdout, or a panic with everything it printed.
fn run(tool: impl AsRef<Path>, args: &[&str]) -> String {
    let tool = tool.as_ref();
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}\n{}",
        tool.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A container started with `runc run`; killed and deleted when the test ends, however it ends.
struct Container {
    runtime: PathBuf,
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Container {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's exit status, if `runc run` has returned.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The host pid of the container's first process (`runc state`).
    fn pid(&self) -> u32 {
        let state: Value =
            serde_json::from_str(&run(&self.runtime, &["state", &self.name])).expect("state JSON");
        state["pid"].as_u64().expect("a pid") as u32
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(&self.runtime)
            .args(["delete", "--force", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `KEY=value` entries of an OCI environment list, with `key` set to `value`.
fn set_env(env: &mut Vec<Value>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
    env.push(json!(format!("{key}={value}")));
}

fn env_of(process: &Value, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    process["env"]
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str())
        .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
}

/// The uid line (`Uid: real effective saved fs`) of a process, from the host's /proc.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid line")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// `image.repository:appVersion`, what the chart installs with its defaults.
fn chart_default_image() -> String {
    let yaml = |path: &str| -> Value {
        serde_norway::from_str(&std::fs::read_to_string(repo_path(path)).unwrap()).unwrap()
    };
    let values = yaml("helm/taskpulse/values.yaml");
    let chart = yaml("helm/taskpulse/Chart.yaml");
    assert_eq!(values["image"]["tag"], "", "the tag defaults to appVersion");
    format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap(),
        chart["appVersion"].as_str().unwrap()
    )
}

/// The instructions of the Dockerfile's last stage, continuation lines joined: (word, rest).
fn dockerfile_final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let mut joined = Vec::new();
    let mut line = String::new();
    for raw in text.lines() {
        let raw = raw.trim();
        if raw.starts_with('#') || (raw.is_empty() && line.is_empty()) {
            continue;
        }
        match raw.strip_suffix('\\') {
            Some(part) => line.push_str(part),
            None => {
                line.push_str(raw);
                joined.push(std::mem::take(&mut line));
            }
        }
    }
    let last_from = joined.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    joined[last_from..]
        .iter()
        .filter_map(|l| {
            let (word, rest) = l.split_once(char::is_whitespace)?;
            Some((word.to_string(), rest.trim().to_string()))
        })
        .collect()
}

/// `KEY=value KEY="a value"` pairs of an ENV or LABEL instruction.
fn pairs(rest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|&c| c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| !c.is_whitespace()).collect()
        };
        out.push((key, value));
    }
}

/// The Dockerfile is not built here (no Docker daemon); it declares what the image built here
/// declares, so the two cannot drift apart: user, directory, environment, port, volume,
/// entrypoint, command and labels (all but the revision, a build argument).
#[test]
fn dockerfile_declares_what_the_tested_image_declares() {
    let Some((archive, _)) = image_and_runtime() else {
        return;
    };
    let archive_ref = format!("oci-archive:{}", archive.canonicalize().unwrap().display());
    let config: Value =
        serde_json::from_str(&run("skopeo", &["inspect", "--config", &archive_ref])).unwrap();
    let c = &config["config"];
    let stage = dockerfile_final_stage();
    let one = |word: &str| -> String {
        let found: Vec<&String> = stage
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(found.len(), 1, "one {word} in the Dockerfile's last stage");
        found[0].clone()
    };
    assert_eq!(one("FROM"), "scratch");
    assert_eq!(
        one("COPY"),
        "--from=build /rootfs /",
        "the rootfs.sh layout"
    );
    assert_eq!(c["User"], one("USER"));
    assert_eq!(c["WorkingDir"], one("WORKDIR"));
    let entrypoint: Value = serde_json::from_str(&one("ENTRYPOINT")).unwrap();
    let cmd: Value = serde_json::from_str(&one("CMD")).unwrap();
    assert_eq!(c["Entrypoint"], entrypoint);
    assert_eq!(c["Cmd"], cmd);
    assert!(c["ExposedPorts"].get(one("EXPOSE")).is_some(), "{c:#}");
    assert!(c["Volumes"].get(one("VOLUME")).is_some(), "{c:#}");
    let env: Vec<String> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .filter(|e| !e.starts_with("PATH="))
        .collect();
    let declared: Vec<String> = pairs(&one("ENV"))
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(env, declared);
    let labels = c["Labels"].as_object().unwrap();
    let declared = pairs(&one("LABEL"));
    assert_eq!(
        declared.len(),
        labels.len(),
        "{declared:?} against {labels:?}"
    );
    for (key, value) in declared {
        if key == "org.opencontainers.image.revision" {
            assert_eq!(value, "${REVISION}");
            continue;
        }
        assert_eq!(labels.get(&key), Some(&json!(value)), "label {key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_runs_under_runc_as_its_own_user_with_a_read_only_root() {
    let Some((archive, runtime)) = image_and_runtime() else {
        return;
    };
    let archive = archive.canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive_ref = format!("oci-archive:{}", archive.display());

    // What the image declares: its user, entrypoint, port, volume and labels.
    let config: Value =
        serde_json::from_str(&run("skopeo", &["inspect", "--config", &archive_ref])).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], format!("{IMAGE_UID}:{IMAGE_UID}"), "{config:#}");
    assert_eq!(
        c["Entrypoint"],
        json!(["/usr/local/bin/taskpulse"]),
        "{config:#}"
    );
    assert_eq!(c["Cmd"], json!(["serve"]), "{config:#}");
    assert!(c["ExposedPorts"].get("9477/tcp").is_some(), "{config:#}");
    assert!(c["Volumes"].get("/data").is_some(), "{config:#}");
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION"),
        "{labels:#}"
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels:#}"
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{labels:#}"
    );
    assert_eq!(
        labels["org.opencontainers.image.ref.name"],
        chart_default_image(),
        "the image is the one the chart installs by default"
    );

    // Unpacked into a runtime bundle, as a container engine would.
    let layout = dir.path().join("layout");
    let bundle = dir.path().join("bundle");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &archive_ref,
            &format!("oci:{}:test", layout.display()),
        ],
    );
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:test", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let rootfs = bundle.join("rootfs");
    let binary = rootfs.join("usr/local/bin/taskpulse");
    assert!(binary.is_file(), "no binary in the image");
    let certs = rootfs.join("etc/ssl/certs/ca-certificates.crt");
    assert!(
        std::fs::metadata(&certs).unwrap().len() > 1000,
        "no CA certificates"
    );
    // nothing a shell would need: the binary, its libraries and /etc
    assert!(!rootfs.join("bin/sh").exists(), "the image has a shell");

    let config_path = bundle.join("config.json");
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(spec["process"]["user"]["uid"], IMAGE_UID, "{spec:#}");
    assert_eq!(spec["process"]["user"]["gid"], IMAGE_UID, "{spec:#}");
    assert_eq!(
        env_of(&spec["process"], "TASKPULSE_LISTEN").as_deref(),
        Some("0.0.0.0:9477")
    );
    assert_eq!(
        env_of(&spec["process"], "TASKPULSE_DATABASE").as_deref(),
        Some("sqlite:///data/taskpulse.db")
    );

    // The pod's view: a read-only root, /data a writable volume owned by the image's user (the
    // chart's fsGroup), the port on loopback.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    let port = free_port();
    spec["root"]["readonly"] = json!(true);
    spec["process"]["terminal"] = json!(false);
    let env = spec["process"]["env"].as_array_mut().unwrap();
    set_env(env, "TASKPULSE_LISTEN", &format!("127.0.0.1:{port}"));
    set_env(env, "TASKPULSE_SHUTDOWN_GRACE", "1s");
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data",
        "type": "bind",
        "source": data.to_str().unwrap(),
        "options": ["rbind", "rw"],
    }));
    let linux = spec["linux"].as_object_mut().unwrap();
    linux.remove("resources");
    linux.remove("cgroupsPath");
    linux["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != "network");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let name = format!("taskpulse-test-{}-{port}", std::process::id());
    let log = dir.path().join("container.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&runtime)
        .args(["run", "--bundle", bundle.to_str().unwrap(), &name])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", runtime.display()));
    let mut container = Container {
        runtime,
        name,
        child: Some(child),
        log,
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = container.exited() {
            panic!("the container exited ({status}):\n{}", container.log());
        }
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            assert!(r.status().is_success(), "healthz: {}", r.status());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz within 30 s:\n{}",
            container.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It runs as the image's user, not as root, though runc itself runs as root.
    let pid = container.pid();
    assert!(
        uids(pid).iter().all(|&u| u == IMAGE_UID),
        "container process {pid} runs as {:?}",
        uids(pid)
    );

    // One update, accepted, readable through the API, and stored in the file on the volume.
    let mut body = update("img-1", "IN_PROGRESS");
    body["progressPercent"] = json!(40.0);
    body["workerId"] = json!("worker-a");
    let r = http
        .post(format!("{base}/api/v1/updates"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "ingest: {}", r.status());
    let task: Value = http
        .get(format!("{base}/api/v1/tasks/img-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "IN_PROGRESS", "{task:#}");
    assert_eq!(task["progressPercent"], 40.0, "{task:#}");

    let db = data.join("taskpulse.db");
    let url = format!("sqlite://{}?mode=ro", db.display());
    let deadline = Instant::now() + Duration::from_secs(15);
    let stored = loop {
        if db.is_file() {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let row: Option<(String, f64)> =
                sqlx::query_as("SELECT status, progress FROM tasks WHERE task_id = 'img-1'")
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            if let Some(row) = row {
                break row;
            }
        }
        assert!(
            Instant::now() < deadline,
            "img-1 not in {} within 15 s:\n{}",
            db.display(),
            container.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored, ("IN_PROGRESS".to_string(), 40.0));
    assert_eq!(
        std::fs::metadata(&db).unwrap().uid(),
        IMAGE_UID,
        "the database file belongs to the image's user"
    );

    // SIGTERM, as a kubelet stops a pod: a clean exit.
    run(&container.runtime, &["kill", &container.name, "TERM"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = container.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM:\n{}",
            container.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", container.log());
}
