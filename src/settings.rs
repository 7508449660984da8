//! The core's settings, one group per subsystem (engines bring their own groups, see
//! `engines::*::settings`). Each setting is declared once, here, with its flag, environment
//! variable, default and help: clap derives the command line, the environment and the help text
//! from it, and [`crate::cli`] layers the optional TOML file under them, so the precedence is
//! flag > `TASKPULSE_<NAME>` > file > default (`docs/contract.md` §1).
//!
//! A group checks what a type can't (ranges, relations) in its `validate`, with a message that
//! names the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Command, FromArgMatches};

use crate::error::{Error, Result};

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// The HTTP server: where it listens, what one client may send and hold, who may call it, and
/// how it stops.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpSettings {
    /// HTTP address for the API, /metrics and health
    #[arg(
        long,
        env = "TASKPULSE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9477"
    )]
    pub listen: SocketAddr,

    /// Request body limit; larger bodies get 413
    #[arg(
        long,
        env = "TASKPULSE_MAX_BODY_BYTES",
        value_name = "SIZE",
        default_value = "8MiB"
    )]
    pub max_body_bytes: ByteSize,

    /// Require `Authorization: Bearer TOKEN` on /api/v1/
    #[arg(
        long,
        env = "TASKPULSE_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<Secret>,

    /// Read the bearer token from this file (a mounted Kubernetes Secret); one trailing newline is ignored
    #[arg(long, env = "TASKPULSE_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// A connection that has not sent a complete request head within this time is closed
    #[arg(long, env = "TASKPULSE_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A request whose body has not fully arrived this long after its head gets 408
    #[arg(long, env = "TASKPULSE_BODY_READ_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// Open HTTP connections, at most; further ones wait in the listen backlog
    #[arg(
        long,
        env = "TASKPULSE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// A response the client has not taken within this time (it stopped reading) is dropped and its connection closed
    #[arg(long, env = "TASKPULSE_SEND_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,

    /// After SIGTERM, how long /readyz answers 503 while the API still serves (so load balancers deregister) before the listener closes
    #[arg(long, env = "TASKPULSE_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// A secret from a file named by the setting `name`: one trailing newline (`echo S > file`) is
/// not part of it; an unreadable or empty file is a configuration error. The contents never
/// appear in an error message.
pub fn read_secret_file(name: &str, path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("`{name}`: cannot read {}: {e}", path.display())))?;
    let secret = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if secret.trim().is_empty() {
        return Err(Error::Config(format!(
            "`{name}`: {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_string())
}

impl HttpSettings {
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
        self.auth_token = Some(Secret(read_secret_file("auth-token-file", path)?));
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_body_bytes.as_u64() < 1024 {
            return bad("max-body-bytes", "must be at least 1KiB");
        }
        if let Some(token) = &self.auth_token {
            if token.0.trim().is_empty() {
                return bad("auth-token", "is set but empty");
            }
        }
        positive("header-read-timeout", self.header_read_timeout, "10s")?;
        positive("body-read-timeout", self.body_read_timeout, "30s")?;
        positive("send-timeout", self.send_timeout, "10s")?;
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad(
                "max-connections",
                &format!(
                    "must be between 1 and 1000000, got {}",
                    self.max_connections
                ),
            );
        }
        Ok(())
    }
}

/// Where taskpulse keeps its own state.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store")]
pub struct StoreSettings {
    /// sqlite://PATH (created if absent) or postgres://...
    #[arg(
        long,
        env = "TASKPULSE_DATABASE",
        value_name = "URL",
        default_value = "sqlite://taskpulse.db"
    )]
    pub database: String,
}

impl StoreSettings {
    pub fn validate(&self) -> Result<()> {
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

/// How often a task's progress may be written. Its own group because the checker needs it too:
/// a stored row may lag memory by one interval.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Throttle")]
pub struct ThrottleSettings {
    /// At most one stored progress write per task per interval
    #[arg(long, env = "TASKPULSE_PROGRESS_MIN_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_min_interval: Duration,
}

impl ThrottleSettings {
    pub fn validate(&self) -> Result<()> {
        positive("progress-min-interval", self.progress_min_interval, "5s")
    }
}

/// What the update pipeline keeps in memory and how far the store may fall behind.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Pipeline")]
pub struct PipelineSettings {
    /// Percentage points progress must move before it is worth a write; 0 = any change
    #[arg(
        long,
        env = "TASKPULSE_PROGRESS_MIN_DELTA",
        value_name = "POINTS",
        default_value_t = 0.0
    )]
    pub progress_min_delta: f64,

    /// How long a finished task stays in memory (for duplicate and late-update detection)
    #[arg(long, env = "TASKPULSE_TERMINAL_RETENTION", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub terminal_retention: Duration,

    /// Store writes waiting beyond this answer 503 to updates
    #[arg(
        long,
        env = "TASKPULSE_MAX_PENDING_WRITES",
        value_name = "N",
        default_value_t = 100_000
    )]
    pub max_pending_writes: usize,

    /// Tasks kept in memory, at most; the least recently updated leave memory (not the store)
    #[arg(
        long,
        env = "TASKPULSE_MAX_TRACKED_TASKS",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    pub max_tracked_tasks: usize,

    /// Memory the tasks kept in memory may take, at most (as estimated per task: about 900 bytes plus its ids and message); past it the least recently updated leave memory (not the store)
    #[arg(
        long,
        env = "TASKPULSE_MAX_TRACKED_MEMORY",
        value_name = "SIZE",
        default_value = "1GiB"
    )]
    pub max_tracked_memory: ByteSize,

    /// An update whose updateTime is further ahead of taskpulse's clock is rejected (clock_skew), unless it is terminal; times less far ahead are taken as now
    #[arg(long, env = "TASKPULSE_MAX_CLOCK_SKEW", value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_clock_skew: Duration,
}

impl PipelineSettings {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=100.0).contains(&self.progress_min_delta) || self.progress_min_delta.is_nan() {
            return bad(
                "progress-min-delta",
                &format!("must be between 0 and 100, got {}", self.progress_min_delta),
            );
        }
        if self.max_tracked_tasks == 0 {
            return bad("max-tracked-tasks", "must be greater than 0");
        }
        if self.max_pending_writes == 0 {
            return bad("max-pending-writes", "must be greater than 0");
        }
        if self.max_tracked_memory.as_u64() < 1024 * 1024 {
            return bad("max-tracked-memory", "must be at least 1MiB");
        }
        Ok(())
    }
}

/// What `/metrics` exports from the current state.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsSettings {
    /// An in-flight task whose progress hasn't changed this long counts as stalled
    #[arg(long, env = "TASKPULSE_STALL_AFTER", value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub stall_after: Duration,

    /// Cap on per-task metric series
    #[arg(
        long,
        env = "TASKPULSE_MAX_TASK_SERIES",
        value_name = "N",
        default_value_t = 2000
    )]
    pub max_task_series: usize,

    /// Distinct values of a label taken from input (task type, workflow type, worker) per aggregate family; the rest are folded into "__other__"
    #[arg(
        long,
        env = "TASKPULSE_MAX_LABEL_VALUES",
        value_name = "N",
        default_value_t = 100
    )]
    pub max_label_values: usize,

    /// Series in one scrape, at most: per-task series beyond what the rest leaves are omitted
    #[arg(
        long,
        env = "TASKPULSE_MAX_SERIES",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_series: usize,

    /// Bytes of one scrape, at most: per-task series beyond what the rest leaves are omitted
    #[arg(
        long,
        env = "TASKPULSE_MAX_SCRAPE_BYTES",
        value_name = "SIZE",
        default_value = "2MiB"
    )]
    pub max_scrape_bytes: ByteSize,

    /// A worker with no task in flight leaves the worker gauges this long after it was last seen
    #[arg(long, env = "TASKPULSE_WORKER_EXPIRY", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub worker_expiry: Duration,
}

impl MetricsSettings {
    pub fn validate(&self) -> Result<()> {
        positive("stall-after", self.stall_after, "5m")?;
        positive("worker-expiry", self.worker_expiry, "10m")?;
        if self.max_label_values == 0 {
            return bad("max-label-values", "must be greater than 0");
        }
        Ok(())
    }
}

/// When a WAIT task counts as overdue (the gauges, the checker and every WAIT source agree).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "WAIT queue")]
pub struct WaitSettings {
    /// A WAIT task this late past its wake-up time counts as overdue
    #[arg(long, env = "TASKPULSE_WAIT_GRACE", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait_grace: Duration,
}

/// What a checker pass may do, in `serve` and in `taskpulse check`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Checker")]
pub struct CheckerSettings {
    /// At most this many repairs per checker pass
    #[arg(
        long,
        env = "TASKPULSE_MAX_REPAIRS_PER_RUN",
        value_name = "N",
        default_value_t = 1000
    )]
    pub max_repairs_per_run: usize,

    /// Extra time past a response timeout or deadline before a silent task counts as expired
    #[arg(long, env = "TASKPULSE_LEASE_GRACE", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub lease_grace: Duration,
}

/// The checker loop inside `serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Checker")]
pub struct CheckLoopSettings {
    /// Consistency checker period, 0 disables it
    #[arg(long, env = "TASKPULSE_CHECK_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// Let the checker repair what it finds (false = report only)
    #[arg(long, env = "TASKPULSE_REPAIR", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub repair: bool,
}

/// How long the store keeps what is over: the leader deletes it (`crate::retention`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionSettings {
    /// Finished tasks, with their history and attempts, are deleted from the store this long after they finished; 0 keeps them forever
    #[arg(long, env = "TASKPULSE_RETENTION", value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// The checker's audit trail (GET /api/v1/repairs) is deleted this long after each repair; 0 keeps it forever
    #[arg(long, env = "TASKPULSE_AUDIT_RETENTION", value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,
}

/// The defaults of a settings group, as clap declares them (no flags, no environment).
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults")).mut_args(|a| a.env(None));
    let matches = cmd
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("defaults parse into their own type")
}

macro_rules! default_from_clap {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                defaults()
            }
        }
    )*};
}
default_from_clap!(
    HttpSettings,
    StoreSettings,
    ThrottleSettings,
    PipelineSettings,
    MetricsSettings,
    WaitSettings,
    CheckerSettings,
    CheckLoopSettings,
    RetentionSettings
);

fn bad(name: &str, why: &str) -> Result<()> {
    Err(Error::Config(format!("`{name}` {why}")))
}

fn positive(name: &str, d: Duration, example: &str) -> Result<()> {
    if d.is_zero() {
        return bad(name, &format!("must be greater than 0 (e.g. {example})"));
    }
    Ok(())
}

/// Hides the password of a database URL for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // not a URL: nothing in it is known to be a password, but say nothing after an `@`
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret = |k: &str| matches!(k, "password" | "sslpassword" | "pass");
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_match_the_contract() {
        let h = HttpSettings::default();
        assert_eq!(h.listen.to_string(), "127.0.0.1:9477");
        assert_eq!(h.max_body_bytes, ByteSize::mib(8));
        assert!(h.auth_token.is_none());
        assert_eq!(h.header_read_timeout, Duration::from_secs(10));
        assert_eq!(h.body_read_timeout, Duration::from_secs(30));
        assert_eq!(h.max_connections, 1024);
        assert_eq!(h.shutdown_grace, Duration::from_secs(5));
        assert_eq!(StoreSettings::default().database, "sqlite://taskpulse.db");
        assert_eq!(
            ThrottleSettings::default().progress_min_interval,
            Duration::from_secs(5)
        );
        let p = PipelineSettings::default();
        assert_eq!(p.progress_min_delta, 0.0);
        assert_eq!(p.terminal_retention, Duration::from_secs(600));
        assert_eq!(p.max_pending_writes, 100_000);
        assert_eq!(p.max_tracked_tasks, 1_000_000);
        let m = MetricsSettings::default();
        assert_eq!(m.stall_after, Duration::from_secs(300));
        assert_eq!(m.max_task_series, 2000);
        assert_eq!(WaitSettings::default().wait_grace, Duration::from_secs(30));
        let c = CheckerSettings::default();
        assert_eq!(c.max_repairs_per_run, 1000);
        assert_eq!(c.lease_grace, Duration::from_secs(60));
        let l = CheckLoopSettings::default();
        assert_eq!(l.check_interval, Duration::from_secs(30));
        assert!(l.repair);
    }

    #[test]
    fn defaults_ignore_the_environment() {
        // A variable of this process must not leak into what tests and docs call the default.
        std::env::set_var("TASKPULSE_MAX_TASK_SERIES", "7");
        assert_eq!(MetricsSettings::default().max_task_series, 2000);
        std::env::remove_var("TASKPULSE_MAX_TASK_SERIES");
    }

    #[test]
    fn ranges_are_checked_naming_the_setting() {
        let mut p = PipelineSettings {
            progress_min_delta: 150.0,
            ..Default::default()
        };
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("progress-min-delta"), "{err}");
        p.progress_min_delta = 0.0;
        p.max_tracked_tasks = 0;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max-tracked-tasks"));
        let h = HttpSettings {
            max_connections: 0,
            ..Default::default()
        };
        assert!(h
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max-connections"));
        let s = StoreSettings {
            database: "mysql://x".into(),
        };
        assert!(s.validate().unwrap_err().to_string().contains("database"));
        let t = ThrottleSettings {
            progress_min_interval: Duration::ZERO,
        };
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("progress-min-interval"));
    }

    #[test]
    fn token_file_is_read_trimmed_and_exclusive() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "tok en\r\n").unwrap();
        let mut h = HttpSettings {
            auth_token_file: Some(file.path().to_path_buf()),
            ..Default::default()
        };
        h.read_token_file().unwrap();
        assert_eq!(h.auth_token, Some(Secret("tok en".into())));
        assert!(
            !format!("{h:?}").contains("tok en"),
            "the token stays out of Debug"
        );

        let mut both = HttpSettings {
            auth_token: Some(Secret("a".into())),
            auth_token_file: Some(file.path().to_path_buf()),
            ..Default::default()
        };
        let err = both.read_token_file().unwrap_err().to_string();
        assert!(err.contains("both"), "{err}");

        let empty = tempfile::NamedTempFile::new().unwrap();
        let mut h = HttpSettings {
            auth_token_file: Some(empty.path().to_path_buf()),
            ..Default::default()
        };
        let err = h.read_token_file().unwrap_err().to_string();
        assert!(
            err.contains("auth-token-file") && err.contains("empty"),
            "{err}"
        );

        let mut h = HttpSettings {
            auth_token_file: Some("/nonexistent/taskpulse-token".into()),
            ..Default::default()
        };
        let err = h.read_token_file().unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let h = HttpSettings {
            auth_token: Some(Secret("hunter2".into())),
            ..Default::default()
        };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(
            redact_url("postgres://u:pw@host/db"),
            "postgres://u:***@host/db"
        );
    }

    #[test]
    fn redact_url_hides_every_password_a_url_can_carry() {
        // an `@` in the password (a hand split at the first `@` showed its tail)
        let r = redact_url("postgres://u:p@ss@host:5432/db");
        assert!(!r.contains("ss@host") && !r.contains("p@"), "{r}");
        assert!(r.ends_with("@host:5432/db"), "{r}");
        // sqlx takes the password from the query too
        let r = redact_url("postgres://u@host/db?sslmode=disable&password=hunter2");
        assert!(
            !r.contains("hunter2") && r.contains("sslmode=disable"),
            "{r}"
        );
        assert_eq!(
            redact_url("redis://:secret@r:6379/0"),
            "redis://:***@r:6379/0"
        );
        assert_eq!(redact_url("sqlite://taskpulse.db"), "sqlite://taskpulse.db");
        assert!(!redact_url("not a url:pw@x").contains("pw"));
    }
}
