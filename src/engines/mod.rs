//! The engine adapter seam. The core (ingest, pipeline, lifecycle, throttle, store, metrics,
//! checker) knows no engine; everything particular to one lives in a folder of its own here
//! and comes in through [`Engine`]:
//!
//! - its **settings** (a clap group in its `settings` module, listed in [`settings::EngineSettings`]
//!   and made into the engine through [`EngineGroup`]);
//! - its **routes** (a webhook under `/api/v1`, a worker proxy at the root);
//! - its **sources**: background readers that feed the pipeline or keep a WAIT snapshot;
//! - its **checker rules**, which take the place of a core rule of the same name (one that can
//!   ask the engine) or add to them;
//! - its **metrics**, registered into the process's registry or written at scrape time.
//!
//! The composition root ([`crate::app`]) asks each engine [`settings::build`] makes for these.
//! Adding an engine is adding a folder and its line in [`settings`] (`docs/architecture.md`).

pub mod airflow;
pub mod conductor;
pub mod kestra;
pub mod settings;
pub(crate) mod store_source;

use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use futures_util::future::BoxFuture;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::checker::Rule;
use crate::error::Result;
use crate::http::seam::{Readiness, Routes};
use crate::metrics::Collector;
use crate::pipeline::Pipeline;
use crate::settings::Secret;
use crate::store::Store;
use crate::wait::{WaitMetrics, WaitSource};

/// What a serving process gives an engine to start with.
pub struct EngineContext {
    pub pipeline: Arc<Pipeline>,
    pub store: Store,
    /// Where the engine registers its own metrics.
    pub registry: Registry,
    /// The wake-up lag histogram, for an engine that reads its WAIT queue itself.
    pub wait_metrics: WaitMetrics,
    pub core: CoreSettings,
    /// Cancelled when the process stops: sources finish and return.
    pub stop: CancellationToken,
}

/// The few core settings an engine's parts need.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub max_body_bytes: ByteSize,
    pub progress_min_interval: Duration,
    pub terminal_retention: Duration,
    pub wait_grace: Duration,
}

/// What an engine adds to a serving process.
#[derive(Default)]
pub struct Contribution {
    pub routes: Routes,
    /// Background work (readers, sweepers), each returning once `stop` is cancelled.
    pub tasks: Vec<BoxFuture<'static, ()>>,
    /// Rules every replica runs about once a second, not only the leader (checks that follow
    /// up on what this replica did, such as a forwarded completion).
    pub side_rules: Vec<Box<dyn Rule>>,
    /// The WAIT queue as the engine's own store holds it; replaces the one computed from
    /// updates (and the engine then measures wake-up lag itself).
    pub wait_queue: Option<WaitSource>,
    /// Families written at scrape time.
    pub collectors: Vec<Arc<dyn Collector>>,
    /// Asked by `/readyz`: `Some(why)` while a source the engine reads is failing.
    pub readiness: Vec<Readiness>,
}

/// One workflow engine's adapter.
pub trait Engine: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// The `source` labels its updates carry, so their counters exist from the first scrape.
    fn sources(&self) -> &'static [&'static str] {
        &[]
    }

    /// Its checker rules, for `serve` and `taskpulse check` alike.
    fn rules(&self) -> Vec<Box<dyn Rule>>;

    /// Starts what it adds to a serving process. An error here (an engine store that can't be
    /// reached, say) stops start-up.
    fn start<'a>(&'a self, ctx: &'a EngineContext) -> BoxFuture<'a, Result<Contribution>>;
}

/// One engine's settings group: how it is checked and how its engine is made from it.
pub trait EngineGroup {
    /// Ranges and relations among the engine's own settings.
    fn validate(&self) -> Result<()>;

    /// The engine these settings describe (nothing is connected yet; that is
    /// [`Engine::start`]'s).
    fn engine(&self, init: &EngineInit) -> Result<Box<dyn Engine>>;
}

/// The core settings an engine is made with (as opposed to [`CoreSettings`], which it
/// starts with).
#[derive(Clone, Debug)]
pub struct EngineInit {
    /// `--progress-min-interval`: at most one progress update per task per this long goes on.
    pub progress_min_interval: Duration,
    /// `--auth-token`, when the process serves with one (`None` for `taskpulse check`).
    pub token: Option<Secret>,
}
