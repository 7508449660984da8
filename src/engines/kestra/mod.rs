//! Kestra (the JDBC PostgreSQL backend), read-only: each task run of Kestra's executions is a
//! taskpulse task, followed in Kestra's `executions` table ([`reader`]), with the worker of
//! each attempt resolved to its host (kestra-io/kestra#7799). Facts: `docs/engines/kestra.md`.
//!
//! Checker rules: Kestra's task runs carry no `responseTimeoutSeconds`, `timeoutSeconds` or
//! `seq`, so the core's `lease_expired` and `successor_finished` find nothing to say about them
//! (rightly: a Kestra task's timeout lives in the flow, which taskpulse doesn't read), and
//! `wait_overdue` concerns Conductor's WAIT tasks only. `store_divergence` (taskpulse's memory
//! against its store) applies to every engine. Kestra brings no rules of its own yet.

pub mod execution;
mod metrics;
pub mod reader;
mod rows;
mod settings;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Contribution, Engine, EngineContext, EngineGroup, EngineInit};
use crate::checker::Rule;
use crate::error::{Error, Result};
use crate::settings::redact_url;
use metrics::KestraMetrics;

pub use settings::KestraSettings;

/// The Kestra adapter.
pub struct Kestra {
    settings: KestraSettings,
}

impl Kestra {
    pub fn new(settings: &KestraSettings) -> Kestra {
        Kestra {
            settings: settings.clone(),
        }
    }
}

impl EngineGroup for KestraSettings {
    fn validate(&self) -> Result<()> {
        KestraSettings::validate(self)
    }

    fn engine(&self, _init: &EngineInit) -> Result<Box<dyn Engine>> {
        Ok(Box::new(Kestra::new(self)))
    }
}

impl Engine for Kestra {
    fn name(&self) -> &'static str {
        "kestra"
    }

    fn sources(&self) -> &'static [&'static str] {
        &[reader::SOURCE]
    }

    fn rules(&self) -> Vec<Box<dyn Rule>> {
        Vec::new()
    }

    fn start<'a>(&'a self, ctx: &'a EngineContext) -> BoxFuture<'a, Result<Contribution>> {
        async move {
            let metrics = KestraMetrics::register(&ctx.registry)
                .map_err(|e| Error::Config(format!("Kestra metrics: {e}")))?;
            let mut out = Contribution::default();
            if let Some(url) = &self.settings.db {
                let reader = reader::KestraReader::start(
                    &self.settings,
                    url,
                    ctx.pipeline.clone(),
                    ctx.store.clone(),
                    metrics,
                )
                .await
                .map_err(|e| Error::Unavailable {
                    what: format!(
                        "cannot read Kestra's executions from `{}` (--kestra-db)",
                        redact_url(url)
                    ),
                    source: Box::new(e),
                })?;
                let health = reader.health();
                out.readiness.push(Arc::new(move || health.failing()));
                out.tasks
                    .push(reader.run(self.settings.poll_interval, ctx.stop.clone()));
            }
            Ok(out)
        }
        .boxed()
    }
}
