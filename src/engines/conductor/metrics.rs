//! What the Conductor adapter reports on its own.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::engines::store_source::{PollMetrics, POLL_BUCKETS};

#[derive(Clone, Debug)]
pub struct ConductorMetrics {
    forwarded: IntCounter,
    coalesced: IntCounter,
    /// `taskpulse_conductor_db_polls_total{outcome}` and `taskpulse_conductor_db_poll_seconds`:
    /// reads of Conductor's task table.
    pub polls: PollMetrics,
    /// `taskpulse_conductor_db_lag_seconds`: a row's `modified_on` to its read (database clock).
    pub lag_seconds: Histogram,
    /// `taskpulse_conductor_db_poll_rows`: rows the last poll read from Conductor's tables.
    pub poll_rows: IntGauge,
    /// `taskpulse_conductor_db_task_index_used`: 1 while `task_index` is followed.
    pub task_index_used: IntGauge,
    /// `taskpulse_conductor_redis_poll_seconds`: one read of Conductor's Redis.
    pub redis_poll_seconds: Histogram,
}

impl ConductorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ConductorMetrics> {
        let heartbeats = IntCounterVec::new(
            Opts::new(
                "taskpulse_conductor_heartbeats_total",
                "Lease heartbeats through the Conductor worker proxy, by outcome (forwarded, coalesced).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(heartbeats.clone()))?;
        let polls = PollMetrics::register(
            registry,
            "conductor_db",
            "Conductor's task table",
            "--conductor-db",
            "list, fetch, submit",
        )?;
        let lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "taskpulse_conductor_db_lag_seconds",
                "From a task row's modified_on to taskpulse reading it, on the database's clock.",
            )
            // 1.5 and 2 s: where a poll every second puts it, and the 2 s a user expects
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(lag_seconds.clone()))?;
        let poll_rows = IntGauge::new(
            "taskpulse_conductor_db_poll_rows",
            "Rows the last read of Conductor's tables (--conductor-db) returned: ids, sizes and documents, over every table it read.",
        )?;
        registry.register(Box::new(poll_rows.clone()))?;
        let task_index_used = IntGauge::new(
            "taskpulse_conductor_db_task_index_used",
            "1 while Conductor's task_index is followed to find what changed (--conductor-db), 0 when it is absent or found not kept and task is swept by modified_on instead.",
        )?;
        registry.register(Box::new(task_index_used.clone()))?;
        let redis_poll_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "taskpulse_conductor_redis_poll_seconds",
                "Time one read of Conductor's Redis took (tasks in flight, queues, WAIT queue).",
            )
            .buckets(POLL_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(redis_poll_seconds.clone()))?;
        Ok(ConductorMetrics {
            forwarded: heartbeats.with_label_values(&["forwarded"]),
            coalesced: heartbeats.with_label_values(&["coalesced"]),
            polls,
            lag_seconds,
            poll_rows,
            task_index_used,
            redis_poll_seconds,
        })
    }

    /// One lease heartbeat: sent to the engine, or answered here.
    pub fn heartbeat(&self, forwarded: bool) {
        if forwarded {
            self.forwarded.inc()
        } else {
            self.coalesced.inc()
        }
    }
}
