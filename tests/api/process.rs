//! Running the real `taskpulse` binary from tests: one child process (`Proc`) and one serving
//! process (`Server`). Every child's output goes to files (a full pipe can't block it), every
//! wait is deadline-bounded, and a child still running when its handle is dropped is killed,
//! so no test leaves processes behind. Children never see the developer's own `TASKPULSE_*`
//! settings.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::helpers::binary;

/// Longest a server may take to answer /healthz.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a process may take to exit (after a signal, or a command that should end).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A free loopback address: bind port 0, read the port, release it.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().unwrap()
}

/// One run of the binary. Killed with SIGKILL on drop if still running.
pub struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    pub what: String,
}

impl Proc {
    /// `taskpulse ARGS` in `cwd`, with `envs` on top of an environment scrubbed of every
    /// `TASKPULSE_*` setting (logging stays at info, and the shutdown grace is 0).
    pub fn spawn(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(binary());
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let what = format!(
            "taskpulse {}{}",
            args.join(" "),
            envs.iter()
                .map(|(k, v)| format!(" [{k}={v}]"))
                .collect::<String>()
        );
        Proc::from_command(cmd, cwd, what)
    }

    /// A prepared command (another user's, say) run the same way: in `cwd`, output to files,
    /// every `TASKPULSE_*` setting not set on `cmd` itself removed.
    pub fn from_command(mut cmd: Command, cwd: &Path, what: String) -> Proc {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stdout = cwd.join(format!("proc-{n}.stdout"));
        let stderr = cwd.join(format!("proc-{n}.stderr"));
        let own: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TASKPULSE_") && !own.contains(&key) {
                cmd.env_remove(key);
            }
        }
        if !own.iter().any(|k| k == "TASKPULSE_LOG") {
            cmd.env("TASKPULSE_LOG", "info,sqlx=warn");
        }
        // Stop at once on SIGTERM unless a test asks for the grace (a flag beats this).
        if !own.iter().any(|k| k == "TASKPULSE_SHUTDOWN_GRACE") {
            cmd.env("TASKPULSE_SHUTDOWN_GRACE", "0s");
        }
        cmd.current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            stdout,
            stderr,
            what,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` figure in KiB: `VmRSS` (now) or `VmHWM` (the peak so far).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("/proc/{}/status: {e}", self.pid()));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to end; kills it and fails the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` still running after {limit:?}; killed. stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command that should end by itself within `limit`: (status, stdout, stderr).
pub async fn run(
    cwd: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut p = Proc::spawn(cwd, args, envs);
    let status = p.wait_exit(limit).await;
    (status, p.stdout(), p.stderr())
}

/// A running `taskpulse serve`.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    client: reqwest::Client,
}

impl Server {
    /// `serve --listen <free port> ARGS`, ready when /healthz answers. Retries with another
    /// port if the free one was taken in the meantime.
    pub async fn start(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        for _ in 0..3 {
            let addr = free_addr();
            let listen = addr.to_string();
            let mut all = vec!["serve", "--listen", &listen];
            all.extend_from_slice(args);
            match Server::start_at(addr, cwd, &all, envs).await {
                Ok(s) => return s,
                Err(stderr) if stderr.contains("cannot listen") => continue,
                Err(stderr) => panic!("taskpulse {} exited at start:\n{stderr}", all.join(" ")),
            }
        }
        panic!("no free port after 3 tries");
    }

    /// Runs `args` (the caller picks how the address is set) and waits for /healthz on `addr`.
    /// `Err(stderr)` if the process exits first.
    pub async fn start_at(
        addr: SocketAddr,
        cwd: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server, String> {
        let mut proc = Proc::spawn(cwd, args, envs);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if proc.exited().is_some() {
                return Err(proc.stderr());
            }
            if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
                if r.status() == 200 {
                    return Ok(Server { proc, addr, client });
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "`{}` did not answer /healthz on {addr} within {START_TIMEOUT:?}. stderr:\n{}",
                    proc.what,
                    proc.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /api/v1/updates`; fails the test unless 200.
    pub async fn ingest(&self, body: &Value) -> Value {
        let resp = self
            .client
            .post(self.url("/api/v1/updates"))
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/updates");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(
            status, 200,
            "ingest on {} answered {status}: {text}",
            self.addr
        );
        serde_json::from_str(&text).unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.client.get(self.url(path)).send().await.expect(path);
        assert_eq!(resp.status(), 200, "GET {path} on {}", self.addr);
        resp.json().await.unwrap()
    }

    /// `/metrics`, parsed; `None` if the server does not answer (it may have been killed).
    pub async fn try_scrape(&self) -> Option<prometheus_parse::Scrape> {
        let resp = self.client.get(self.url("/metrics")).send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        let text = resp.text().await.ok()?;
        Some(
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
                .expect("exposition format parses"),
        )
    }

    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        self.try_scrape()
            .await
            .unwrap_or_else(|| panic!("/metrics on {} did not answer", self.addr))
    }

    /// SIGTERM, then the exit status (the test fails if it takes longer than `EXIT_TIMEOUT`).
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        self.proc.signal("-TERM");
        let status = self.proc.wait_exit(EXIT_TIMEOUT).await;
        (status, self.proc.stderr())
    }

    /// SIGKILL: no chance to flush or release anything.
    pub async fn kill9(mut self) {
        self.proc.signal("-KILL");
        let status = self.proc.wait_exit(EXIT_TIMEOUT).await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }
}
