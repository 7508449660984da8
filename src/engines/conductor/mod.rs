//! Conductor (conductor-oss): the status webhook, the worker proxy, the WAIT queue read from
//! Conductor's own PostgreSQL, and checker rules that ask the engine. Wire formats and
//! behaviour follow `docs/engines/conductor.md`.
//!
//! The webhook is always served (Conductor pushes to it; nothing to configure here). With
//! `--conductor-url` the worker proxy runs at `/api/` and the checker asks the engine; with
//! `--conductor-db` every task transition is followed in Conductor's `task` table
//! ([`task_tail`]) and the WAIT gauges come from Conductor's queue.

pub mod client;
pub mod db;
pub mod lookup;
mod metrics;
pub mod proxy;
pub mod redis_reader;
pub mod rules;
mod settings;
pub mod task_tail;
pub mod wait_queue;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Contribution, Engine, EngineContext, EngineGroup, EngineInit};
use crate::checker::Rule;
use crate::error::{Error, Result};
use crate::http::seam::Routes;
use crate::settings::{redact_url, Secret};
use client::EngineClient;
use lookup::Lookup;
use metrics::ConductorMetrics;
use proxy::Proxy;
use rules::LostTerminalUpdate;

pub use settings::ConductorSettings;

/// How often the proxy forgets per-task state of quiet tasks.
const PROXY_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the WAIT queue is read from Conductor's database (besides every notification).
const WAIT_REFRESH: Duration = Duration::from_secs(5);

/// The Conductor adapter.
pub struct Conductor {
    settings: ConductorSettings,
    client: Option<Arc<EngineClient>>,
    proxy: Option<Arc<Proxy>>,
    /// Where the checker reads the engine's side: its store when one is followed, else REST.
    lookup: Option<Arc<Lookup>>,
}

impl Conductor {
    /// `heartbeat_min_interval`: at most one lease heartbeat per task per this long goes
    /// upstream through the proxy (`--progress-min-interval`). `token`: taskpulse's
    /// `--auth-token`, which the proxy wants before it records what a caller says. Fails on a
    /// password file that can't be read or a store URL that can't be parsed (nothing is
    /// connected yet).
    pub fn new(
        settings: &ConductorSettings,
        heartbeat_min_interval: Duration,
        token: Option<Secret>,
    ) -> Result<Conductor> {
        let client = settings
            .url
            .as_deref()
            .map(|url| Arc::new(EngineClient::new(url, settings.timeout)));
        let proxy = client.clone().map(|c| {
            Arc::new(Proxy::new(
                c,
                heartbeat_min_interval,
                proxy::Callers::new(token.clone(), settings.proxy_trust_engine_auth),
            ))
        });
        let lookup = if let Some(url) = &settings.db {
            Some(Lookup::postgres(&settings.db_options().session_url(url))?)
        } else if let Some(url) = &settings.redis {
            Some(Lookup::redis(
                url,
                settings.redis_password()?,
                settings.redis_keys(),
            ))
        } else {
            client.clone().map(Lookup::Rest)
        };
        Ok(Conductor {
            settings: settings.clone(),
            client,
            proxy,
            lookup: lookup.map(Arc::new),
        })
    }

    /// The worker proxy's routes, its sweep, and the side rule that checks what it forwarded.
    fn add_proxy(
        &self,
        px: &Arc<Proxy>,
        ctx: &EngineContext,
        metrics: &ConductorMetrics,
        out: &mut Contribution,
    ) {
        tracing::info!(engine = %px.client.base(), "Conductor worker proxy on /api/");
        out.routes.root = proxy::routes(
            px.clone(),
            ctx.pipeline.clone(),
            metrics.clone(),
            ctx.core.max_body_bytes.as_u64() as usize,
        );
        out.collectors.push(px.clone());
        // Every replica verifies the terminal updates it forwarded, soon after.
        if let Some(lookup) = &self.lookup {
            out.side_rules
                .push(Box::new(LostTerminalUpdate::forwarded_only(
                    lookup.clone(),
                    px.clone(),
                )));
        }
        let (sweep, stop) = (px.clone(), ctx.stop.clone());
        let quiet = ctx.core.terminal_retention;
        out.tasks.push(
            async move {
                let mut tick = tokio::time::interval(PROXY_SWEEP_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => sweep.sweep(quiet),
                    }
                }
            }
            .boxed(),
        );
    }

    /// The task table's tail and the WAIT queue from Conductor's PostgreSQL (`--conductor-db`).
    async fn add_db(
        &self,
        url: &str,
        ctx: &EngineContext,
        metrics: &ConductorMetrics,
        skips: db::SkipMetrics,
        out: &mut Contribution,
    ) -> Result<()> {
        let options = self.settings.db_options();
        let tail =
            task_tail::TaskTail::start(url, &options, ctx.pipeline.clone(), metrics.clone(), skips)
                .await
                .map_err(|e| Error::Unavailable {
                    what: format!(
                        "cannot read Conductor's task table from `{}` (--conductor-db)",
                        redact_url(url)
                    ),
                    source: Box::new(e),
                })?;
        let health = tail.health();
        out.readiness.push(Arc::new(move || health.failing()));
        out.tasks
            .push(tail.run(self.settings.poll_interval, ctx.stop.clone()));
        let (rx, reader) = wait_queue::spawn(
            url,
            &options,
            ctx.core.wait_grace,
            WAIT_REFRESH,
            ctx.wait_metrics.clone(),
            ctx.stop.clone(),
        )
        .await
        .map_err(|e| Error::Unavailable {
            what: format!(
                "cannot read the WAIT queue from `{}` (--conductor-db)",
                redact_url(url)
            ),
            source: Box::new(e),
        })?;
        // Wake-up lag is measured from Conductor's queue, so not from updates too.
        ctx.pipeline.tracker().wait_lag_measured_elsewhere();
        out.wait_queue = Some(rx);
        out.tasks.push(
            async move {
                let _ = reader.await;
            }
            .boxed(),
        );
        Ok(())
    }

    /// The Redis reader (`--conductor-redis`): tasks, the WAIT queue and the queues' depths.
    async fn add_redis(
        &self,
        url: &str,
        ctx: &EngineContext,
        parts: RedisParts,
        out: &mut Contribution,
    ) -> Result<()> {
        let s = &self.settings;
        let started = redis_reader::RedisReader::start(
            url,
            s.redis_password()?.as_deref(),
            s.redis_keys(),
            ctx.pipeline.clone(),
            ctx.core.wait_grace,
            s.poll_interval,
            ctx.wait_metrics.clone(),
            parts.queues,
            parts.poll_seconds,
            parts.metrics,
        )
        .await
        .map_err(|e| Error::Unavailable {
            what: format!(
                "cannot read Conductor's Redis at `{}` (--conductor-redis)",
                redact_url(url)
            ),
            source: Box::new(e),
        })?;
        ctx.pipeline.tracker().wait_lag_measured_elsewhere();
        out.wait_queue = Some(started.wait_queue);
        let health = started.health;
        out.readiness.push(Arc::new(move || health.failing()));
        out.tasks
            .push(started.reader.run(s.poll_interval, ctx.stop.clone()));
        Ok(())
    }

    /// The worker proxy, when `--conductor-url` is set.
    pub fn proxy(&self) -> Option<&Arc<Proxy>> {
        self.proxy.as_ref()
    }
}

/// The metrics the Redis reader updates.
struct RedisParts {
    queues: redis_reader::QueueMetrics,
    poll_seconds: prometheus::Histogram,
    metrics: redis_reader::RedisMetrics,
}

impl EngineGroup for ConductorSettings {
    fn validate(&self) -> Result<()> {
        ConductorSettings::validate(self)
    }

    fn engine(&self, init: &EngineInit) -> Result<Box<dyn Engine>> {
        let engine = Conductor::new(self, init.progress_min_interval, init.token.clone())?;
        Ok(Box::new(engine))
    }
}

impl Engine for Conductor {
    fn name(&self) -> &'static str {
        "conductor"
    }

    fn sources(&self) -> &'static [&'static str] {
        &[
            webhook::SOURCE,
            proxy::SOURCE,
            task_tail::SOURCE,
            redis_reader::SOURCE,
        ]
    }

    fn rules(&self) -> Vec<Box<dyn Rule>> {
        rules::engine_rules(self.lookup.clone(), self.client.clone(), self.proxy.clone())
    }

    fn start<'a>(&'a self, ctx: &'a EngineContext) -> BoxFuture<'a, Result<Contribution>> {
        async move {
            let metrics = ConductorMetrics::register(&ctx.registry)
                .map_err(|e| Error::Config(format!("Conductor metrics: {e}")))?;
            // registered whether or not --conductor-db is set: every family is on /metrics
            let skips = db::SkipMetrics::register(&ctx.registry)
                .map_err(|e| Error::Config(format!("Conductor metrics: {e}")))?;
            let redis_metrics = redis_reader::RedisMetrics::register(&ctx.registry)
                .map_err(|e| Error::Config(format!("Conductor's Redis metrics: {e}")))?;
            let webhook_metrics = webhook::WebhookMetrics::register(&ctx.registry)
                .map_err(|e| Error::Config(format!("Conductor webhook metrics: {e}")))?;
            let queue_metrics = redis_reader::QueueMetrics::default();
            let mut out = Contribution {
                routes: Routes {
                    api: webhook::routes(
                        ctx.pipeline.clone(),
                        ctx.core.max_body_bytes,
                        webhook_metrics,
                    ),
                    ..Default::default()
                },
                ..Default::default()
            };
            if let Some(px) = &self.proxy {
                self.add_proxy(px, ctx, &metrics, &mut out);
            }
            if let Some(url) = &self.settings.db {
                self.add_db(url, ctx, &metrics, skips, &mut out).await?;
            }
            out.collectors.push(Arc::new(queue_metrics.clone()));
            if let Some(url) = &self.settings.redis {
                let parts = RedisParts {
                    queues: queue_metrics,
                    poll_seconds: metrics.redis_poll_seconds.clone(),
                    metrics: redis_metrics,
                };
                self.add_redis(url, ctx, parts, &mut out).await?;
            }
            Ok(out)
        }
        .boxed()
    }
}
