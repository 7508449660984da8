//! What the Conductor adapter reports on its own.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct ConductorMetrics {
    forwarded: IntCounter,
    coalesced: IntCounter,
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
        Ok(ConductorMetrics {
            forwarded: heartbeats.with_label_values(&["forwarded"]),
            coalesced: heartbeats.with_label_values(&["coalesced"]),
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
