//! Apache Airflow 3 (its metadata database on PostgreSQL), read-only: each task instance is a
//! taskpulse task under its stable key, followed in `task_instance` ([`reader`]), with the host
//! of every try from `task_instance_history`, and the WAIT queue of deferred task instances and
//! reschedule-mode sensors. Facts: `docs/engines/airflow.md`.
//!
//! Checker rules: Airflow's task instances carry no `responseTimeoutSeconds`, `timeoutSeconds`
//! or `seq`, so the core's `lease_expired` and `successor_finished` find nothing to say about
//! them, and `wait_overdue` concerns Conductor's WAIT tasks (Airflow's overdue waits show in
//! the WAIT gauges). `store_divergence` (taskpulse's memory against its store) applies to
//! every engine. Airflow's own: `airflow_queued_too_long` and `airflow_heartbeat_stopped`
//! ([`rules`]) and `airflow_success_overwritten` ([`rules_overwritten`]), report only.

pub mod instance;
mod metrics;
pub mod reader;
pub mod rows;
pub mod rules;
pub mod rules_overwritten;
mod settings;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{store_source, Contribution, Engine, EngineContext, EngineGroup, EngineInit};
use crate::checker::Rule;
use crate::error::{Error, Result};
use crate::settings::redact_url;
use metrics::AirflowMetrics;

pub use settings::AirflowSettings;

/// The Airflow adapter.
pub struct Airflow {
    settings: AirflowSettings,
}

impl EngineGroup for AirflowSettings {
    fn validate(&self) -> Result<()> {
        AirflowSettings::validate(self)
    }

    fn engine(&self, _init: &EngineInit) -> Result<Box<dyn Engine>> {
        Ok(Box::new(Airflow::new(self)))
    }
}

impl Airflow {
    pub fn new(settings: &AirflowSettings) -> Airflow {
        Airflow {
            settings: settings.clone(),
        }
    }
}

impl Engine for Airflow {
    fn name(&self) -> &'static str {
        "airflow"
    }

    fn sources(&self) -> &'static [&'static str] {
        &[reader::SOURCE]
    }

    fn rules(&self) -> Vec<Box<dyn Rule>> {
        let Some(url) = &self.settings.db else {
            return Vec::new();
        };
        // validated already; a pool that can't be built leaves the rule out, and the reader
        // says why at start
        match store_source::read_only_pool("airflow-db", reader::APPLICATION_NAME, url) {
            Ok(pool) => {
                let pool = pool.lazy();
                vec![
                    Box::new(rules::Overdue::queued(
                        pool.clone(),
                        self.settings.queued_limit,
                    )),
                    Box::new(rules::Overdue::heartbeat(
                        pool.clone(),
                        self.settings.heartbeat_limit,
                    )),
                    Box::new(rules_overwritten::SuccessOverwritten::new(pool)),
                ]
            }
            Err(_) => Vec::new(),
        }
    }

    fn start<'a>(&'a self, ctx: &'a EngineContext) -> BoxFuture<'a, Result<Contribution>> {
        async move {
            let metrics = AirflowMetrics::register(&ctx.registry)
                .map_err(|e| Error::Config(format!("Airflow metrics: {e}")))?;
            let mut out = Contribution::default();
            if let Some(url) = &self.settings.db {
                let (reader, waits) = reader::AirflowReader::start(
                    url,
                    ctx.pipeline.clone(),
                    ctx.store.clone(),
                    metrics,
                    ctx.wait_metrics.clone(),
                    ctx.core.wait_grace,
                )
                .await
                .map_err(|e| Error::Unavailable {
                    what: format!(
                        "cannot read Airflow's task instances from `{}` (--airflow-db)",
                        redact_url(url)
                    ),
                    source: Box::new(e),
                })?;
                let health = reader.health();
                out.readiness.push(Arc::new(move || health.failing()));
                out.wait_queue = Some(waits);
                out.tasks
                    .push(reader.run(self.settings.poll_interval, ctx.stop.clone()));
            }
            Ok(out)
        }
        .boxed()
    }
}
