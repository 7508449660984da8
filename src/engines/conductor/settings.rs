//! The Conductor adapter's settings (`docs/contract.md` §1, and the README's "Connecting to Conductor").

use std::time::Duration;

use clap::Args;

use crate::engines::store_source;
use crate::error::{Error, Result};
use crate::settings::redact_url;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Conductor")]
pub struct ConductorSettings {
    /// Conductor server (http://HOST:PORT): serve a Conductor-compatible worker API at /api/ and forward to it; the checker asks the engine too
    #[arg(
        id = "conductor-url",
        long = "conductor-url",
        env = "TASKPULSE_CONDUCTOR_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,

    /// Longest the Conductor server may take to answer a proxied request before the worker gets 504; above the longest long-poll your workers ask for
    #[arg(id = "conductor-timeout", long = "conductor-timeout", env = "TASKPULSE_CONDUCTOR_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// With --auth-token: the engine checks the credentials of every request it accepts (Orkes Conductor, or an authenticating gateway in front of it), so a proxied request it accepted with credentials is recorded without taskpulse's token. Open-source Conductor checks none: leave it off
    #[arg(id = "conductor-proxy-trust-engine-auth", long = "conductor-proxy-trust-engine-auth", env = "TASKPULSE_CONDUCTOR_PROXY_TRUST_ENGINE_AUTH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value_t = false, action = clap::ArgAction::Set)]
    pub proxy_trust_engine_auth: bool,

    /// Conductor's own PostgreSQL, read-only: every task transition from its task table (source conductor_db) and the WAIT queue
    #[arg(
        id = "conductor-db",
        long = "conductor-db",
        env = "TASKPULSE_CONDUCTOR_DB",
        value_name = "URL"
    )]
    pub db: Option<String>,

    /// With --conductor-db: the time zone Conductor's sessions write their TIMESTAMP columns in (modified_on, deliver_on): the Conductor JVM's default zone (-Duser.timezone, TZ), an IANA name. Checked at start against the rows
    #[arg(
        id = "conductor-db-time-zone",
        long = "conductor-db-time-zone",
        env = "TASKPULSE_CONDUCTOR_DB_TIME_ZONE",
        value_name = "ZONE",
        default_value = "UTC"
    )]
    pub db_time_zone: String,

    /// With --conductor-db: Conductor's conductor.postgres.schema, the schema its tables are in
    #[arg(
        id = "conductor-db-schema",
        long = "conductor-db-schema",
        env = "TASKPULSE_CONDUCTOR_DB_SCHEMA",
        value_name = "SCHEMA",
        default_value = "public"
    )]
    pub db_schema: String,

    /// A Redis-backed Conductor (redis://HOST:PORT[/DB]), read-only: tasks in flight and how they ended (source conductor_redis), the WAIT queue and every queue's depth
    #[arg(
        id = "conductor-redis",
        long = "conductor-redis",
        env = "TASKPULSE_CONDUCTOR_REDIS",
        value_name = "URL"
    )]
    pub redis: Option<String>,

    /// Read the Redis password from this file (one trailing newline is ignored)
    #[arg(
        id = "conductor-redis-password-file",
        long = "conductor-redis-password-file",
        env = "TASKPULSE_CONDUCTOR_REDIS_PASSWORD_FILE",
        value_name = "PATH"
    )]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// Conductor's conductor.redis.workflowNamespacePrefix
    #[arg(
        id = "conductor-redis-namespace",
        long = "conductor-redis-namespace",
        env = "TASKPULSE_CONDUCTOR_REDIS_NAMESPACE",
        value_name = "PREFIX",
        default_value = "conductor"
    )]
    pub redis_namespace: String,

    /// Conductor's conductor.redis.queueNamespacePrefix
    #[arg(
        id = "conductor-redis-queue-namespace",
        long = "conductor-redis-queue-namespace",
        env = "TASKPULSE_CONDUCTOR_REDIS_QUEUE_NAMESPACE",
        value_name = "PREFIX",
        default_value = "conductor_queues"
    )]
    pub redis_queue_namespace: String,

    /// Conductor's conductor.app.stack
    #[arg(
        id = "conductor-redis-stack",
        long = "conductor-redis-stack",
        env = "TASKPULSE_CONDUCTOR_REDIS_STACK",
        value_name = "NAME",
        default_value = "test"
    )]
    pub redis_stack: String,

    /// The queue shard: the last character of Conductor's conductor.redis.availabilityZone
    #[arg(
        id = "conductor-redis-shard",
        long = "conductor-redis-shard",
        env = "TASKPULSE_CONDUCTOR_REDIS_SHARD",
        value_name = "SHARD",
        default_value = "c"
    )]
    pub redis_shard: String,

    /// Conductor's conductor.redis.keyspaceDomain, if set
    #[arg(
        id = "conductor-redis-domain",
        long = "conductor-redis-domain",
        env = "TASKPULSE_CONDUCTOR_REDIS_DOMAIN",
        value_name = "DOMAIN"
    )]
    pub redis_domain: Option<String>,

    /// How often Conductor's store (--conductor-db, --conductor-redis) is read for changed tasks
    #[arg(id = "conductor-poll-interval", long = "conductor-poll-interval", env = "TASKPULSE_CONDUCTOR_POLL_INTERVAL", value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
}

impl Default for ConductorSettings {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl ConductorSettings {
    /// Whether any part of the adapter is switched on.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.db.is_some() || self.redis.is_some()
    }

    /// `--conductor-redis-password-file`, read.
    pub fn redis_password(&self) -> Result<Option<String>> {
        self.redis_password_file
            .as_deref()
            .map(|p| crate::settings::read_secret_file("conductor-redis-password-file", p))
            .transpose()
    }

    /// Where Conductor's tables are in its PostgreSQL, and the zone of their timestamps.
    pub fn db_options(&self) -> super::db::DbOptions {
        super::db::DbOptions {
            time_zone: self.db_time_zone.clone(),
            schema: self.db_schema.clone(),
        }
    }

    /// Where Conductor keeps its keys in Redis.
    pub fn redis_keys(&self) -> super::redis_reader::Keys {
        super::redis_reader::Keys {
            namespace: self.redis_namespace.clone(),
            queue_namespace: self.redis_queue_namespace.clone(),
            stack: self.redis_stack.clone(),
            shard: self.redis_shard.clone(),
            domain: self.redis_domain.clone(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, why: String| Err(Error::Config(format!("`{name}` {why}")));
        if self.timeout.is_zero() {
            return bad(
                "conductor-timeout",
                "must be greater than 0 (e.g. 30s)".into(),
            );
        }
        store_source::check_poll_interval("conductor-poll-interval", self.poll_interval)?;
        if let Some(url) = &self.redis {
            if !url.starts_with("redis://") {
                return bad(
                    "conductor-redis",
                    format!("must be a redis://HOST:PORT[/DB] URL (TLS, Sentinel and Cluster are not supported), got `{}`", redact_url(url)),
                );
            }
            if self.db.is_some() {
                return bad(
                    "conductor-redis",
                    "and `conductor-db` are two kinds of Conductor store: set the one your Conductor uses".into(),
                );
            }
        } else if self.redis_password_file.is_some() {
            return bad(
                "conductor-redis-password-file",
                "needs `conductor-redis`".into(),
            );
        }
        if let Some(url) = &self.url {
            if !url.starts_with("http://") {
                return bad(
                    "conductor-url",
                    format!("must be an http:// URL of the Conductor server (TLS to the engine is not supported; run taskpulse next to it), got `{}`", redact_url(url)),
                );
            }
            if url.parse::<http::Uri>().is_err() {
                return bad(
                    "conductor-url",
                    format!("is not a valid URL: `{}`", redact_url(url)),
                );
            }
        }
        // both go into SQL as bound values or startup options: no whitespace or control
        // characters (PostgreSQL splits startup options on whitespace)
        let plain = |v: &str| {
            !v.is_empty()
                && v.len() <= 63
                && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if !plain(&self.db_time_zone) {
            return bad(
                "conductor-db-time-zone",
                "must be an IANA zone name (e.g. UTC, America/Los_Angeles)".into(),
            );
        }
        if !plain(&self.db_schema) {
            return bad(
                "conductor-db-schema",
                "must be a schema name of 1 to 63 characters without spaces".into(),
            );
        }
        if let Some(url) = &self.db {
            store_source::check_postgres_url("conductor-db", "Conductor's database", url)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let s = ConductorSettings::default();
        assert!(!s.enabled());
        assert_eq!(s.timeout, Duration::from_secs(30));
        let s = ConductorSettings {
            timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-timeout"));
        let s = ConductorSettings {
            url: Some("https://c:8080".into()),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-url"));
        let s = ConductorSettings {
            db: Some("mysql://c".into()),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-db"));
        assert_eq!(
            (s.db_time_zone.as_str(), s.db_schema.as_str()),
            ("UTC", "public")
        );
        let s = ConductorSettings {
            db_schema: "my schema".into(),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-db-schema"));
    }
}
