//! What the checker reports, and whether this replica leads.

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct CheckerMetrics {
    pub runs_total: IntCounterVec,
    pub last_run_timestamp_seconds: Gauge,
    pub violations: IntGaugeVec,
    pub repairs_total: IntCounterVec,
    /// 1 on the leading replica (see [`crate::leader`]).
    pub leader: IntGauge,
}

impl CheckerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<CheckerMetrics> {
        let m = CheckerMetrics {
            runs_total: IntCounterVec::new(
                Opts::new(
                    "taskpulse_checker_runs_total",
                    "Consistency checker passes, by outcome (ok, error).",
                ),
                &["outcome"],
            )?,
            last_run_timestamp_seconds: Gauge::new(
                "taskpulse_checker_last_run_timestamp_seconds",
                "When the last checker pass ended, Unix seconds (0: never on this replica).",
            )?,
            violations: IntGaugeVec::new(
                Opts::new(
                    "taskpulse_checker_violations",
                    "Violations found by the last checker pass, by rule.",
                ),
                &["rule"],
            )?,
            repairs_total: IntCounterVec::new(
                Opts::new(
                    "taskpulse_checker_repairs_total",
                    "Checker repairs by rule and outcome (repaired, conflict, failed, skipped).",
                ),
                &["rule", "outcome"],
            )?,
            leader: IntGauge::new(
                "taskpulse_checker_leader",
                "1 on the replica that leads (runs the checker, exports the state gauges), else 0.",
            )?,
        };
        registry.register(Box::new(m.runs_total.clone()))?;
        registry.register(Box::new(m.last_run_timestamp_seconds.clone()))?;
        registry.register(Box::new(m.violations.clone()))?;
        registry.register(Box::new(m.repairs_total.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        for outcome in ["ok", "error"] {
            m.runs_total.with_label_values(&[outcome]);
        }
        Ok(m)
    }

    pub fn unregistered() -> CheckerMetrics {
        CheckerMetrics::register(&Registry::new()).expect("fresh registry")
    }
}
