//! Which replica leads. Replicas share one PostgreSQL; exactly one of them runs the checker and
//! exports the state gauges (so Prometheus never counts a task twice), while every replica
//! takes in updates and exports its own ingest counters.
//!
//! Nothing home-made: the leader holds a PostgreSQL session advisory lock on a connection of
//! its own. When the leader dies (even by kill -9) its connection closes and PostgreSQL
//! releases the lock; the others try to take it every tick.
//!
//! Never two leaders: a leader checks its connection every tick and steps down when that check
//! fails or takes longer than the ping timeout. A replica that takes the lock therefore waits
//! one tick plus the ping timeout (plus a margin) before it claims to lead; by then a previous
//! leader that lost the lock without dying has noticed and stepped down. Failover takes at most
//! about three ticks plus the ping timeout, well inside two check intervals. SQLite is
//! single-process and always leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The advisory lock key: "taskpuls" in ASCII.
const LOCK_KEY: i64 = 0x7461_736b_7075_6c73;
/// Slack on top of the old leader's detection time before a new leader claims.
const CLAIM_MARGIN: Duration = Duration::from_millis(100);

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

/// The election's timing for a given check interval: (tick, ping timeout). A tick of at most
/// 250 ms and a 500 ms ping timeout put the claim delay under a second and failover under
/// about 1.5 s, inside two check intervals for any interval of a second or more.
pub fn timing(check_interval: Duration) -> (Duration, Duration) {
    let tick = if check_interval.is_zero() {
        Duration::from_millis(250)
    } else {
        (check_interval / 4).clamp(Duration::from_millis(100), Duration::from_millis(250))
    };
    (tick, Duration::from_millis(500))
}

/// Starts the election. On PostgreSQL it runs in the background; a lone replica leads after
/// its first claim delay (under a second). When `stop` is cancelled a leader steps down and
/// closes its connection, which hands the lock to another replica at once.
pub async fn start(
    store: &Store,
    check_interval: Duration,
    gauge: IntGauge,
    stop: CancellationToken,
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
            let (tick, ping_timeout) = timing(check_interval);
            let mut elector = Elector {
                options: (*pool.connect_options()).clone(),
                conn: None,
                holding_since: None,
                leadership: leadership.clone(),
                ping_timeout,
                claim_after: tick + ping_timeout + CLAIM_MARGIN,
            };
            let task = tokio::spawn(async move {
                let mut ticks = tokio::time::interval(tick);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticks.tick() => elector.round().await,
                    }
                }
                elector.step_down();
            });
            (leadership, Some(task))
        }
    }
}

struct Elector {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    /// When this replica took the lock (it holds it since, on `conn`).
    holding_since: Option<Instant>,
    leadership: Leadership,
    ping_timeout: Duration,
    claim_after: Duration,
}

impl Elector {
    /// One round: a holder checks it still has its connection (and so the lock), and claims
    /// the lead once it has held it long enough; anyone else tries to take the lock.
    async fn round(&mut self) {
        if self.conn.is_none() {
            match tokio::time::timeout(
                self.ping_timeout * 2,
                PgConnection::connect_with(&self.options),
            )
            .await
            {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => tracing::debug!(error = %e, "election: cannot connect"),
                Err(_) => tracing::debug!("election: connecting timed out"),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            self.step_down();
            return;
        };
        let query = if self.holding_since.is_some() {
            sqlx::query_scalar::<_, bool>("SELECT TRUE")
        } else {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY)
        };
        match tokio::time::timeout(self.ping_timeout, query.fetch_one(&mut *conn)).await {
            Ok(Ok(true)) => {
                let since = *self.holding_since.get_or_insert_with(Instant::now);
                self.leadership.set(since.elapsed() >= self.claim_after);
            }
            Ok(Ok(false)) => self.leadership.set(false),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "election connection failed");
                self.step_down();
            }
            Err(_) => {
                tracing::warn!("election connection did not answer in time");
                self.step_down();
            }
        }
    }

    /// Stops leading; dropping the connection releases the lock if the server still has it.
    fn step_down(&mut self) {
        self.leadership.set(false);
        self.holding_since = None;
        self.conn = None;
    }
}
