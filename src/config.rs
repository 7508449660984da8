//! Settings, layered as the contract says: flag > `TASKPULSE_<NAME>` environment > TOML file
//! (`--config FILE`) > default.
//!
//! Flags are parsed by clap (so a bad flag value fails with clap's message naming the flag), the
//! file and the environment by figment (so a bad value there fails with a message naming the key
//! and where it came from). Every key has the same name as its flag: `progress-min-interval` in
//! the file, `TASKPULSE_PROGRESS_MIN_INTERVAL` in the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "taskpulse",
    version,
    about = "Monitoring sidecar for workflow engines"
)]
pub struct Cli {
    /// Optional TOML file with settings (keys named like the flags).
    #[arg(long, global = true, env = "TASKPULSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: HTTP API, /metrics, throttled store writes.
    Serve(SettingsArgs),
    /// Apply database migrations and exit.
    Migrate(SettingsArgs),
    /// One consistency pass over the store: exit 0 = clean, 1 = violations found, 2 = error.
    /// Repairs only with --repair.
    Check(CheckArgs),
    /// Simulate an engine against a running taskpulse and report throughput and latency.
    Loadgen(crate::loadgen::LoadgenArgs),
}

/// One optional field per setting. `None` means "not given on the command line", so the
/// environment, the file or the default decides.
#[derive(Debug, Default, Clone, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SettingsArgs {
    /// HTTP address for the API, /metrics and health [default: 127.0.0.1:9477]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// sqlite://PATH (created if absent) or postgres://... [default: sqlite://taskpulse.db]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,

    /// At most one stored progress write per task per interval [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub progress_min_interval: Option<Duration>,

    /// Percentage points progress must move before it is worth a write; 0 = any change [default: 0]
    #[arg(long, value_name = "POINTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_min_delta: Option<f64>,

    /// An in-flight task whose progress hasn't changed this long counts as stalled [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub stall_after: Option<Duration>,

    /// A WAIT task this late past its wake-up time counts as overdue [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub wait_grace: Option<Duration>,

    /// Consistency checker period, 0 disables it [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub check_interval: Option<Duration>,

    /// Let the checker repair what it finds (false = report only) [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<bool>,

    /// Cap on per-task metric series [default: 2000]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_task_series: Option<usize>,

    /// Request body limit, e.g. 8MiB [default: 8MiB]
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<ByteSize>,

    /// Require `Authorization: Bearer TOKEN` on /api/v1/ [default: none]
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,

    /// How long a finished task stays in memory (for duplicate and late-update detection) [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub terminal_retention: Option<Duration>,

    /// Store writes waiting beyond this answer 503 to updates that need a commit [default: 100000]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_writes: Option<usize>,

    /// At most this many repairs per checker pass [default: 1000]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_repairs_per_run: Option<usize>,

    /// Extra time past a response timeout or deadline before a silent task counts as expired [default: 1m]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub lease_grace: Option<Duration>,

    /// Conductor server (http://HOST:PORT): serve a Conductor-compatible worker API at /api/ and forward to it [default: none]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conductor_url: Option<String>,

    /// Longest the Conductor server may take to answer a proxied request before the worker gets 504; above the longest long-poll your workers ask for [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub conductor_timeout: Option<Duration>,

    /// Conductor's own PostgreSQL, read-only, for the WAIT queue [default: none]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conductor_db: Option<String>,

    /// Read the bearer token from this file (a mounted Kubernetes Secret); one trailing newline is ignored [default: none]
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<PathBuf>,

    /// Unfinished tasks kept in memory, at most; the least recently updated leave memory (not the store) [default: 1000000]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tracked_tasks: Option<usize>,

    /// A connection that has not sent a complete request head within this time is closed [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,

    /// A request whose body has not fully arrived this long after its head gets 408 [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub body_read_timeout: Option<Duration>,

    /// Open HTTP connections, at most; further ones wait in the listen backlog [default: 1024]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// `taskpulse check`: the settings, plus how to print.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Print the findings and the audit of this pass as JSON
    #[arg(long)]
    pub json: bool,
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// The resolved settings every component reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database: String,
    #[serde(with = "humantime_serde")]
    pub progress_min_interval: Duration,
    pub progress_min_delta: f64,
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    #[serde(with = "humantime_serde")]
    pub wait_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    pub repair: bool,
    pub max_task_series: usize,
    pub max_body_bytes: ByteSize,
    pub auth_token: Option<Secret>,
    #[serde(with = "humantime_serde")]
    pub terminal_retention: Duration,
    pub max_pending_writes: usize,
    pub max_repairs_per_run: usize,
    #[serde(with = "humantime_serde")]
    pub lease_grace: Duration,
    pub conductor_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub conductor_timeout: Duration,
    pub conductor_db: Option<String>,
    /// Where `auth_token` was read from; resolved into `auth_token` by [`Settings::load`].
    pub auth_token_file: Option<PathBuf>,
    pub max_tracked_tasks: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            database: "sqlite://taskpulse.db".into(),
            progress_min_interval: Duration::from_secs(5),
            progress_min_delta: 0.0,
            stall_after: Duration::from_secs(300),
            wait_grace: Duration::from_secs(30),
            check_interval: Duration::from_secs(30),
            repair: true,
            max_task_series: 2000,
            max_body_bytes: ByteSize::mib(8),
            auth_token: None,
            terminal_retention: Duration::from_secs(600),
            max_pending_writes: 100_000,
            max_repairs_per_run: 1000,
            lease_grace: Duration::from_secs(60),
            conductor_url: None,
            conductor_timeout: Duration::from_secs(30),
            conductor_db: None,
            auth_token_file: None,
            // ~800 B per tracked task: about 800 MB at the cap.
            max_tracked_tasks: 1_000_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Keys read from the environment. Only these are read, so unrelated `TASKPULSE_*` variables
/// (Kubernetes injects `TASKPULSE_PORT` for a Service named taskpulse) cannot break start-up.
const KEYS: &[&str] = &[
    "listen",
    "database",
    "progress-min-interval",
    "progress-min-delta",
    "stall-after",
    "wait-grace",
    "check-interval",
    "repair",
    "max-task-series",
    "max-body-bytes",
    "auth-token",
    "terminal-retention",
    "max-pending-writes",
    "max-repairs-per-run",
    "lease-grace",
    "conductor-url",
    "conductor-timeout",
    "conductor-db",
    "auth-token-file",
    "max-tracked-tasks",
    "header-read-timeout",
    "body-read-timeout",
    "max-connections",
];

impl Settings {
    /// Layers default < file < environment < flags, then validates.
    pub fn load(config_file: Option<&std::path::Path>, flags: &SettingsArgs) -> Result<Settings> {
        Self::load_from(config_file, flags, Env::prefixed("TASKPULSE_"))
    }

    fn load_from(
        config_file: Option<&std::path::Path>,
        flags: &SettingsArgs,
        env: Env,
    ) -> Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = env
            .map(|key| key.as_str().to_ascii_lowercase().replace('_', "-").into())
            .filter(|key| KEYS.contains(&key.as_str()));
        figment = figment.merge(env).merge(Serialized::defaults(flags));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| Error::Config(describe_figment_error(e)))?;
        settings.read_token_file()?;
        settings.validate()?;
        Ok(settings)
    }

    /// With `auth-token-file`, reads the token from the file (Kubernetes mounts a Secret as a
    /// file, so the token never has to sit in the pod spec or the process's arguments). One
    /// trailing newline (`echo TOKEN > file`) is not part of the token. The file's contents never
    /// appear in an error message.
    pub fn read_token_file(&mut self) -> Result<()> {
        let Some(path) = &self.auth_token_file else {
            return Ok(());
        };
        if self.auth_token.is_some() {
            return Err(Error::Config(
                "`auth-token` and `auth-token-file` are both set; use one".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "`auth-token-file`: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let token = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if token.trim().is_empty() {
            return Err(Error::Config(format!(
                "`auth-token-file`: {} is empty",
                path.display()
            )));
        }
        self.auth_token = Some(Secret(token.to_string()));
        Ok(())
    }

    /// Checks the values a type can't: ranges and relations between settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, why: &str| Err(Error::Config(format!("`{name}` {why}")));
        if self.progress_min_interval.is_zero() {
            return bad("progress-min-interval", "must be greater than 0 (e.g. 5s)");
        }
        if !(0.0..=100.0).contains(&self.progress_min_delta) || self.progress_min_delta.is_nan() {
            return bad(
                "progress-min-delta",
                &format!("must be between 0 and 100, got {}", self.progress_min_delta),
            );
        }
        if self.stall_after.is_zero() {
            return bad("stall-after", "must be greater than 0");
        }
        if self.max_body_bytes.as_u64() < 1024 {
            return bad("max-body-bytes", "must be at least 1KiB");
        }
        if let Some(token) = &self.auth_token {
            if token.0.trim().is_empty() {
                return bad("auth-token", "is set but empty");
            }
        }
        if self.max_tracked_tasks == 0 {
            return bad("max-tracked-tasks", "must be greater than 0");
        }
        if self.header_read_timeout.is_zero() {
            return bad("header-read-timeout", "must be greater than 0 (e.g. 10s)");
        }
        if self.body_read_timeout.is_zero() {
            return bad("body-read-timeout", "must be greater than 0 (e.g. 30s)");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad(
                "max-connections",
                &format!(
                    "must be between 1 and 1000000, got {}",
                    self.max_connections
                ),
            );
        }
        if self.max_pending_writes == 0 {
            return bad("max-pending-writes", "must be greater than 0");
        }
        if self.conductor_timeout.is_zero() {
            return bad("conductor-timeout", "must be greater than 0 (e.g. 30s)");
        }
        if let Some(url) = &self.conductor_url {
            if !url.starts_with("http://") {
                return bad(
                    "conductor-url",
                    &format!("must be an http:// URL of the Conductor server (TLS to the engine is not supported; run taskpulse next to it), got `{}`", redact_url(url)),
                );
            }
            if url.parse::<http::Uri>().is_err() {
                return bad(
                    "conductor-url",
                    &format!("is not a valid URL: `{}`", redact_url(url)),
                );
            }
        }
        if let Some(url) = &self.conductor_db {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return bad(
                    "conductor-db",
                    &format!(
                        "must be a postgres:// URL of Conductor's database, got `{}`",
                        redact_url(url)
                    ),
                );
            }
        }
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            return bad(
                "database",
                &format!(
                    "must be sqlite://PATH or postgres://..., got `{}`",
                    redact_url(&self.database)
                ),
            );
        }
        Ok(())
    }
}

/// Figment's errors name the key and the source ("TOML file x", "`TASKPULSE_` environment
/// variable(s)"); flatten them into one line per problem.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let source = err
                .metadata
                .as_ref()
                .map(
                    |m| match &err.metadata.as_ref().and_then(|m| m.source.clone()) {
                        Some(src) => format!("{} {}", m.name, src),
                        None => m.name.to_string(),
                    },
                )
                .unwrap_or_default();
            if key.is_empty() {
                format!("{} (from {source})", err.kind)
            } else {
                format!("`{key}`: {} (from {source})", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Hides the password of a database URL for logs and error messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env_from(vars: &[(&str, &str)]) -> Env {
        // figment's Env reads the process environment; a test keeps its own variables apart by
        // using a unique prefix.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("TPTEST{}X{n}_", std::process::id());
        for (k, v) in vars {
            std::env::set_var(format!("{prefix}{k}"), v);
        }
        Env::prefixed(&prefix)
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, &SettingsArgs::default(), env_from(&[])).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9477");
        assert_eq!(s.database, "sqlite://taskpulse.db");
        assert_eq!(s.progress_min_interval, Duration::from_secs(5));
        assert_eq!(s.stall_after, Duration::from_secs(300));
        assert_eq!(s.wait_grace, Duration::from_secs(30));
        assert_eq!(s.check_interval, Duration::from_secs(30));
        assert!(s.repair);
        assert_eq!(s.max_task_series, 2000);
        assert_eq!(s.max_body_bytes, ByteSize::mib(8));
        assert!(s.auth_token.is_none());
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "progress-min-interval = \"1m\"\nstall-after = \"10m\"\nwait-grace = \"45s\"\nmax-body-bytes = \"1MiB\""
        )
        .unwrap();
        let env = env_from(&[
            ("STALL_AFTER", "2h"),
            ("WAIT_GRACE", "1s"),
            ("PORT", "tcp://x:1"),
        ]);
        let flags = SettingsArgs {
            wait_grace: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        let s = Settings::load_from(Some(file.path()), &flags, env).unwrap();
        assert_eq!(
            s.progress_min_interval,
            Duration::from_secs(60),
            "file beats default"
        );
        assert_eq!(s.stall_after, Duration::from_secs(7200), "env beats file");
        assert_eq!(s.wait_grace, Duration::from_millis(500), "flag beats env");
        assert_eq!(s.max_body_bytes, ByteSize::mib(1));
        assert_eq!(s.check_interval, Duration::from_secs(30), "default stays");
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "stall-after = \"soon\"").unwrap();
        let err = Settings::load_from(Some(file.path()), &SettingsArgs::default(), env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stall-after"), "{err}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "stall-aftr = \"5m\"").unwrap();
        let err = Settings::load_from(Some(file.path()), &SettingsArgs::default(), env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stall-aftr"), "{err}");

        let flags = SettingsArgs {
            progress_min_delta: Some(150.0),
            ..Default::default()
        };
        let err = Settings::load_from(None, &flags, env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("progress-min-delta"), "{err}");

        let flags = SettingsArgs {
            database: Some("mysql://x".into()),
            ..Default::default()
        };
        let err = Settings::load_from(None, &flags, env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database"), "{err}");
    }

    #[test]
    fn token_file_is_read_trimmed_and_exclusive() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "tok en\r\n").unwrap();
        let env = env_from(&[("AUTH_TOKEN_FILE", file.path().to_str().unwrap())]);
        let s = Settings::load_from(None, &SettingsArgs::default(), env).unwrap();
        assert_eq!(s.auth_token, Some(Secret("tok en".into())));

        let flags = SettingsArgs {
            auth_token: Some("a".into()),
            auth_token_file: Some(file.path().to_path_buf()),
            ..Default::default()
        };
        let err = Settings::load_from(None, &flags, env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("both"), "{err}");

        let empty = tempfile::NamedTempFile::new().unwrap();
        let flags = SettingsArgs {
            auth_token_file: Some(empty.path().to_path_buf()),
            ..Default::default()
        };
        let err = Settings::load_from(None, &flags, env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth-token-file") && err.contains("empty"),
            "{err}"
        );

        let flags = SettingsArgs {
            auth_token_file: Some("/nonexistent/taskpulse-token".into()),
            ..Default::default()
        };
        let err = Settings::load_from(None, &flags, env_from(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn overload_settings_have_defaults_and_reject_zero() {
        let s = Settings::load_from(None, &SettingsArgs::default(), env_from(&[])).unwrap();
        assert_eq!(s.max_tracked_tasks, 1_000_000);
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.body_read_timeout, Duration::from_secs(30));
        assert_eq!(s.max_connections, 1024);
        assert_eq!(s.conductor_timeout, Duration::from_secs(30));
        let env = env_from(&[("CONDUCTOR_TIMEOUT", "0s")]);
        let err = Settings::load_from(None, &SettingsArgs::default(), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("conductor-timeout"), "{err}");
        let env = env_from(&[("MAX_CONNECTIONS", "0")]);
        let err = Settings::load_from(None, &SettingsArgs::default(), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max-connections"), "{err}");
        let env = env_from(&[("MAX_TRACKED_TASKS", "0")]);
        let err = Settings::load_from(None, &SettingsArgs::default(), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max-tracked-tasks"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Settings {
            auth_token: Some(Secret("hunter2".into())),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "s3cr3t-from-file").unwrap();
        let mut s = Settings {
            auth_token_file: Some(file.path().to_path_buf()),
            ..Default::default()
        };
        s.read_token_file().unwrap();
        assert_eq!(s.auth_token, Some(Secret("s3cr3t-from-file".into())));
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert_eq!(
            redact_url("postgres://u:pw@host/db"),
            "postgres://u:***@host/db"
        );
    }
}
