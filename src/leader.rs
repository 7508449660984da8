//! Which replica leads. Replicas share one PostgreSQL; exactly one of them runs the checker and
//! exports the state gauges (so Prometheus never counts a task twice), while every replica
//! takes in updates and exports its own ingest counters.
//!
//! Nothing home-made: the leader holds a PostgreSQL session advisory lock on a connection of
//! its own. When the leader dies (even by kill -9) its connection closes and PostgreSQL
//! releases the lock; the others try to take it every `every`, so one takes over within that.
//! A leader whose connection fails steps down at once. SQLite is single-process and always
//! leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

use crate::store::Store;

/// The advisory lock key: "taskpuls" in ASCII.
const LOCK_KEY: i64 = 0x7461_736b_7075_6c73;

/// Whether this replica leads, readable from anywhere.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: Arc<AtomicBool>,
    gauge: IntGauge,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn set(&self, leading: bool) {
        if self.leading.swap(leading, Ordering::AcqRel) != leading {
            if leading {
                tracing::info!(
                    "this replica now leads: it runs the checker and exports the state gauges"
                );
            } else {
                tracing::warn!("this replica stopped leading");
            }
        }
        self.gauge.set(leading as i64);
    }
}

/// Starts the election. On PostgreSQL the first attempt is made before this returns, so a lone
/// replica leads from its first request on.
pub async fn start(
    store: &Store,
    every: Duration,
    gauge: IntGauge,
) -> (Leadership, Option<JoinHandle<()>>) {
    let leadership = Leadership {
        leading: Arc::new(AtomicBool::new(false)),
        gauge,
    };
    match store {
        Store::Sqlite(_) => {
            leadership.set(true);
            (leadership, None)
        }
        Store::Postgres(pool) => {
            let options = (*pool.connect_options()).clone();
            let mut elector = Elector {
                options,
                conn: None,
                leadership: leadership.clone(),
                every,
            };
            elector.round().await;
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    elector.round().await;
                }
            });
            (leadership, Some(task))
        }
    }
}

struct Elector {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    leadership: Leadership,
    every: Duration,
}

impl Elector {
    /// One round: a leader checks it still holds its connection (and so the lock); a follower
    /// tries to take the lock.
    async fn round(&mut self) {
        let limit = self.every.max(Duration::from_secs(1));
        if self.conn.is_none() {
            match tokio::time::timeout(limit, PgConnection::connect_with(&self.options)).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => tracing::debug!(error = %e, "election: cannot connect"),
                Err(_) => tracing::debug!("election: connecting timed out"),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            self.leadership.set(false);
            return;
        };
        let query = if self.leadership.is_leader() {
            sqlx::query_scalar::<_, bool>("SELECT TRUE")
        } else {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY)
        };
        match tokio::time::timeout(limit, query.fetch_one(&mut *conn)).await {
            Ok(Ok(leading)) => self.leadership.set(leading),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "election connection failed; stepping down");
                self.leadership.set(false);
                self.conn = None;
            }
            Err(_) => {
                tracing::warn!("election connection timed out; stepping down");
                self.leadership.set(false);
                // Dropping the connection releases the lock if the server still has it.
                self.conn = None;
            }
        }
    }
}
