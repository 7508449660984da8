//! The composition root: build every part from the settings, ask each engine for what it adds,
//! serve until told to stop, then shut down in two phases.
//!
//! `Application::build` binds the listener before returning, so tests start the real app on
//! port 0 and read the port back; `run` takes the shutdown as a value, so tests can trigger it
//! without signals.
//!
//! # Shutdown
//!
//! 1. **Drain** (first SIGTERM/SIGINT): `/readyz` answers 503 at once, while the API keeps
//!    serving and acknowledging for `--shutdown-grace`, so load balancers and Kubernetes
//!    endpoints stop routing here before anything is refused.
//! 2. **Stop**: the listener closes and every connection finishes the request it is serving;
//!    the throttle's waiting values go to the writer at once (not after the connections drain,
//!    so a slow client can't cost an acknowledged value); then sources and loops stop, the
//!    last values are flushed, the writer commits everything, and `run` returns `Ok`.
//!
//! A second signal ([`Shutdown::abort`]) ends this at once with [`Error::Aborted`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cardinality::Folding;
use crate::checker::{self, CheckSettings, Checker, CheckerMetrics, Context, PassReport};
use crate::cli::{CheckArgs, Settings};
use crate::engines::settings::{self as engine_settings, EngineSettings};
use crate::engines::{Contribution, CoreSettings, Engine, EngineContext, EngineInit};
use crate::error::{Error, Result};
use crate::http::server::{self, ConnLimits};
use crate::http::{HttpShared, HttpState, Overview, OverviewSources, Routes};
use crate::leader::{self, Leadership};
use crate::metrics::state::{ScrapeConfig, StateCollector};
use crate::metrics::{self, Budget, Collector, Exposition};
use crate::pipeline::{background, Pipeline, PipelineMetrics, Tracker};
use crate::retention::{self, RetentionMetrics};
use crate::settings::{redact_url, Secret};
use crate::store::{self, Store, StoreMetrics};
use crate::throttle::Throttle;
use crate::wait::WaitMetrics;

/// Longest the stop phase waits for open connections to finish the requests they are serving.
pub const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the stop phase waits for the store to take the last writes. With
/// `--shutdown-grace` and [`CONNECTION_DRAIN_TIMEOUT`] this bounds a shutdown; the Helm chart's
/// `terminationGracePeriodSeconds` stays above the sum.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the background loops (engine readers, sweepers, the election) get to return once
/// stopped; each returns at once on `stop`, so a straggler is stuck (a reader on a frozen
/// engine connection) and is aborted rather than hold the process.
pub const SOURCES_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an engine's start (connecting to its store, the first read) may take before
/// start-up fails naming the engine: a store that never answers must not hang start-up.
pub const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often every replica runs the engines' side rules.
const SIDE_RULES_EVERY: Duration = Duration::from_secs(1);

/// The engines of this build, made from their settings.
fn engines(
    settings: &EngineSettings,
    progress_min_interval: Duration,
    token: Option<Secret>,
) -> Result<Vec<Box<dyn Engine>>> {
    let init = EngineInit {
        progress_min_interval,
        token,
    };
    engine_settings::build(settings, &init)
}

/// The two signals a serving process reacts to.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    abort: CancellationToken,
}

impl Shutdown {
    /// Starts the two-phase shutdown.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Stops at once, without flushing.
    pub fn abort(&self) {
        self.abort.cancel();
    }
}

/// A built, listening taskpulse.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    shutdown_grace: Duration,
    draining: Arc<AtomicBool>,
    pipeline: Arc<Pipeline>,
    store: Store,
    leadership: Leadership,
    /// Cancelled when the stop phase begins: sources, loops and the election end.
    stop: CancellationToken,
    background: Vec<JoinHandle<()>>,
    stop_writer: CancellationToken,
    writer: JoinHandle<()>,
}

impl Application {
    /// Connects and migrates the store, rebuilds memory from it, starts the writer, the
    /// engines and the background loops, and binds the listener.
    pub async fn build(settings: Settings) -> Result<Application> {
        // the binary calls it before its runtime starts; again here for embedders and tests
        crate::alloc::tune();
        let store = open_store(&settings.store.database).await?;
        let registry = Registry::new();
        let m = CoreMetrics::register(&registry)?;
        let stop = CancellationToken::new();
        let core = Core::start(&settings, &store, &m, &stop).await?;
        let check_interval = settings.check_loop.check_interval;
        let (leadership, election) = leader::start(
            &store,
            check_interval,
            m.checker.leader.clone(),
            stop.clone(),
        )
        .await;
        let ctx = EngineContext {
            pipeline: core.pipeline.clone(),
            store: store.clone(),
            registry: registry.clone(),
            wait_metrics: m.wait.clone(),
            core: CoreSettings {
                max_body_bytes: settings.http.max_body_bytes,
                progress_min_interval: settings.throttle.progress_min_interval,
                terminal_retention: settings.pipeline.terminal_retention,
                wait_grace: settings.wait.wait_grace,
            },
            stop: stop.clone(),
        };
        let (mut added, engine_rules) = start_engines(&settings, &ctx, &m.pipeline).await?;
        let exposition = exposition(
            &settings,
            registry,
            &core.tracker,
            &m,
            &leadership,
            &mut added,
        )?;
        let mut background: Vec<JoinHandle<()>> = election.into_iter().collect();
        background.extend(core.background);
        background.extend(
            std::mem::take(&mut added.tasks)
                .into_iter()
                .map(tokio::spawn),
        );
        let loops = Loops {
            store: &store,
            tracker: &core.tracker,
            metrics: &m,
            leadership: &leadership,
            stop: &stop,
        };
        background.extend(loops.spawn(
            &settings,
            std::mem::take(&mut added.side_rules),
            engine_rules,
        ));
        let listener = bind(&settings).await?;
        let draining = Arc::new(AtomicBool::new(false));
        let limits = ConnLimits {
            header_read_timeout: settings.http.header_read_timeout,
            send_timeout: settings.http.send_timeout,
            max_connections: settings.http.max_connections,
        };
        let shutdown_grace = settings.http.shutdown_grace;
        if crate::http::max_streams(limits.max_connections) == 0 {
            tracing::warn!(
                max_connections = limits.max_connections,
                "no event streams (GET /api/v1/events) with one connection: they may take at \
                 most half of --max-connections; status pages refresh without them"
            );
        }
        let overview = Arc::new(Overview::new(OverviewSources {
            tracker: core.tracker.clone(),
            wait_source: added.wait_queue.take(),
            wait_metrics: m.wait.clone(),
            wait_grace: settings.wait.wait_grace,
            stall_after: settings.metrics.stall_after,
            leadership: leadership.clone(),
            checker: (!check_interval.is_zero()).then_some(m.checker.clone()),
        }));
        let state = HttpState::new(HttpShared {
            pipeline: core.pipeline.clone(),
            store: store.clone(),
            exposition,
            stall_after: settings.metrics.stall_after,
            settings: Arc::new(settings.http),
            draining: draining.clone(),
            engine_readiness: Arc::new(std::mem::take(&mut added.readiness)),
            overview,
            live: Arc::default(),
            shared_lists: Arc::default(),
        });
        let router = crate::http::router(state, Routes::merge(Routes::default(), added.routes));
        Ok(Application {
            listener,
            router,
            limits,
            shutdown_grace,
            draining,
            pipeline: core.pipeline,
            store,
            leadership,
            stop,
            background,
            stop_writer: core.stop_writer,
            writer: core.writer,
        })
    }

    /// The bound address (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn tracker(&self) -> Arc<Tracker> {
        self.pipeline.tracker().clone()
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Whether this replica leads (always on SQLite).
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Serves until `shutdown` completes, then shuts down in two phases (never aborted).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let s = Shutdown::default();
        let drain = s.clone();
        tokio::spawn(async move {
            shutdown.await;
            drain.drain();
        });
        self.run(s).await
    }

    /// Serves until [`Shutdown::drain`], then shuts down as the module docs say.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        let stop_http = CancellationToken::new();
        let server = tokio::spawn(server::serve(
            self.listener,
            self.router,
            self.limits,
            stop_http.clone(),
        ));
        let aborted = shutdown.abort.clone();
        let abortable = |d: Duration| {
            let aborted = aborted.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => Ok(()),
                    _ = aborted.cancelled() => Err(Error::Aborted),
                }
            }
        };
        tokio::select! {
            _ = shutdown.drain.cancelled() => {}
            _ = aborted.cancelled() => return Err(Error::Aborted),
        }
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(grace = ?self.shutdown_grace, "shutting down: /readyz answers 503, still serving for --shutdown-grace (send the signal again to stop at once)");
        abortable(self.shutdown_grace).await?;

        stop_http.cancel();
        let connections = server
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let tracker = self.pipeline.tracker();
        let flushed = tracker.flush_all();
        tracing::info!(
            tasks = flushed,
            "listener closed: writing coalesced progress"
        );
        tokio::select! {
            _ = tokio::time::timeout(CONNECTION_DRAIN_TIMEOUT, connections.closed()) => {}
            _ = aborted.cancelled() => return Err(Error::Aborted),
        }
        self.pipeline.close();
        self.stop.cancel();
        stop_sources(self.background, &aborted).await?;
        tracker.flush_all();
        let drained = tokio::select! {
            d = tokio::time::timeout(FLUSH_TIMEOUT, tracker.writer().barrier()) => d,
            _ = aborted.cancelled() => return Err(Error::Aborted),
        };
        self.stop_writer.cancel();
        if matches!(drained, Ok(true)) {
            let _ = self.writer.await;
        }
        self.store.close().await;
        match drained {
            Ok(true) => {
                tracing::info!("all writes committed; bye");
                Ok(())
            }
            _ => Err(Error::DrainTimeout(FLUSH_TIMEOUT)),
        }
    }
}

/// The store named by `--database`, connected and migrated.
async fn open_store(url: &str) -> Result<Store> {
    let store = Store::connect(url).await.map_err(|e| Error::Unavailable {
        what: format!("cannot open database `{}`", redact_url(url)),
        source: Box::new(e),
    })?;
    store.migrate().await?;
    Ok(store)
}

fn registered(e: prometheus::Error) -> Error {
    Error::Config(format!("metrics: {e}"))
}

/// The core's metric families, registered once per process.
struct CoreMetrics {
    pipeline: PipelineMetrics,
    store: StoreMetrics,
    wait: WaitMetrics,
    checker: CheckerMetrics,
    retention: RetentionMetrics,
}

impl CoreMetrics {
    fn register(registry: &Registry) -> Result<CoreMetrics> {
        metrics::register_build_info(registry).map_err(registered)?;
        let folding = Folding::register(registry).map_err(registered)?;
        let m = CoreMetrics {
            pipeline: PipelineMetrics::register(registry, &folding).map_err(registered)?,
            store: StoreMetrics::register(registry).map_err(registered)?,
            wait: WaitMetrics::register(registry, &folding).map_err(registered)?,
            checker: CheckerMetrics::register(registry).map_err(registered)?,
            retention: RetentionMetrics::register(registry).map_err(registered)?,
        };
        m.pipeline.declare_source(crate::http::ingest::SOURCE);
        Ok(m)
    }
}

/// The path of an update: the writer, the tracker rebuilt from the store, the pipeline, and
/// the loops that serve them (throttle timers, lost-write settling, the sweeper).
struct Core {
    tracker: Arc<Tracker>,
    pipeline: Arc<Pipeline>,
    background: Vec<JoinHandle<()>>,
    stop_writer: CancellationToken,
    writer: JoinHandle<()>,
}

impl Core {
    async fn start(
        settings: &Settings,
        store: &Store,
        m: &CoreMetrics,
        stop: &CancellationToken,
    ) -> Result<Core> {
        let stop_writer = CancellationToken::new();
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let (writer, writer_join) =
            store::writer::spawn(store.clone(), m.store.clone(), lost_tx, stop_writer.clone());
        let (throttle, timer_rx) = Throttle::new(
            settings.throttle.progress_min_interval,
            settings.pipeline.progress_min_delta,
        );
        let p = &settings.pipeline;
        let tracker = Arc::new(
            Tracker::new(throttle, writer, m.pipeline.clone(), m.wait.clone())
                .with_max_tracked(p.max_tracked_tasks)
                .with_max_tracked_memory(
                    usize::try_from(p.max_tracked_memory.as_u64()).unwrap_or(usize::MAX),
                )
                .with_max_clock_skew(p.max_clock_skew),
        );
        let retention = p.terminal_retention;
        let started = std::time::Instant::now();
        let loaded = store
            .each_task(crate::now_ms() - retention.as_millis() as i64, &mut |rec| {
                tracker.load_one(rec)
            })
            .await?;
        tracker.loaded();
        tracing::info!(tasks = loaded, took = ?started.elapsed(), "rebuilt in-memory state from the store");
        let pipeline = Arc::new(Pipeline::new(
            tracker.clone(),
            store.clone(),
            p.max_pending_writes,
        ));
        let background = vec![
            tokio::spawn(background::timers(tracker.clone(), timer_rx, stop.clone())),
            tokio::spawn(background::settle_lost(
                tracker.clone(),
                lost_rx,
                stop.clone(),
            )),
            tokio::spawn(background::sweeper(
                tracker.clone(),
                retention,
                settings.metrics.worker_expiry,
                stop.clone(),
            )),
        ];
        Ok(Core {
            tracker,
            pipeline,
            background,
            stop_writer,
            writer: writer_join,
        })
    }
}

/// Starts every engine of this build; what they add, and their checker rules.
async fn start_engines(
    settings: &Settings,
    ctx: &EngineContext,
    pipeline_metrics: &PipelineMetrics,
) -> Result<(Contribution, Vec<Box<dyn crate::checker::Rule>>)> {
    let engines = engines(
        &settings.engines,
        settings.throttle.progress_min_interval,
        settings.http.auth_token.clone(),
    )?;
    let mut added = Contribution::default();
    let mut engine_rules = Vec::new();
    for engine in &engines {
        for source in engine.sources() {
            pipeline_metrics.declare_engine_source(source);
        }
        engine_rules.extend(engine.rules());
        let c = tokio::time::timeout(ENGINE_START_TIMEOUT, engine.start(ctx))
            .await
            .map_err(|_| {
                Error::Config(format!(
                    "{}: its store did not answer within {} s of start-up",
                    engine.name(),
                    ENGINE_START_TIMEOUT.as_secs()
                ))
            })??;
        added.routes = added.routes.merge(c.routes);
        added.tasks.extend(c.tasks);
        added.side_rules.extend(c.side_rules);
        added.collectors.extend(c.collectors);
        added.readiness.extend(c.readiness);
        if c.wait_queue.is_some() {
            if added.wait_queue.is_some() {
                tracing::warn!(
                    engine = engine.name(),
                    "a second WAIT queue source is ignored"
                );
            } else {
                added.wait_queue = c.wait_queue;
            }
        }
    }
    Ok((added, engine_rules))
}

/// `/metrics`: the registry, the scrape-time state, and what the engines write at scrape time.
fn exposition(
    settings: &Settings,
    registry: Registry,
    tracker: &Arc<Tracker>,
    m: &CoreMetrics,
    leadership: &Leadership,
    added: &mut Contribution,
) -> Result<Arc<Exposition>> {
    let mut collectors: Vec<Arc<dyn Collector>> = vec![Arc::new(StateCollector::new(
        tracker.clone(),
        ScrapeConfig {
            stall_after: settings.metrics.stall_after,
            wait_grace: settings.wait.wait_grace,
            max_task_series: settings.metrics.max_task_series,
            max_label_values: settings.metrics.max_label_values,
        },
        leadership.clone(),
        added.wait_queue.clone(),
    ))];
    collectors.extend(std::mem::take(&mut added.collectors));
    let exposition = Exposition::new(
        registry,
        collectors,
        Budget {
            series: settings.metrics.max_series,
            bytes: settings.metrics.max_scrape_bytes.as_u64() as usize,
        },
    )
    .map_err(registered)?
    .with_histograms(&[
        &m.pipeline.task_duration_seconds,
        &m.wait.wakeup_lag_seconds,
    ]);
    Ok(Arc::new(exposition))
}

/// What the loops beside the pipeline share.
struct Loops<'a> {
    store: &'a Store,
    tracker: &'a Arc<Tracker>,
    metrics: &'a CoreMetrics,
    leadership: &'a Leadership,
    stop: &'a CancellationToken,
}

impl Loops<'_> {
    /// Following other replicas, the side rules, the checker and retention.
    fn spawn(
        &self,
        settings: &Settings,
        side_rules: Vec<Box<dyn crate::checker::Rule>>,
        engine_rules: Vec<Box<dyn crate::checker::Rule>>,
    ) -> Vec<JoinHandle<()>> {
        let (store, tracker, m, stop) = (self.store, self.tracker, self.metrics, self.stop);
        let check_interval = settings.check_loop.check_interval;
        let retention = settings.pipeline.terminal_retention;
        let mut out = Vec::new();
        if matches!(store, Store::Postgres(_)) {
            // The leader folds in other replicas' writes at the election's pace.
            out.push(tokio::spawn(background::follow_replicas(
                store.clone(),
                tracker.clone(),
                self.leadership.clone(),
                leader::timing(check_interval).0 * 2,
                retention,
                stop.clone(),
            )));
        }
        let check = CheckSettings::new(
            &settings.checker,
            &settings.throttle,
            &settings.wait,
            settings.check_loop.repair,
        )
        .with_retention(settings.retention.retention);
        let context = || Context {
            store: store.clone(),
            tracker: Some(tracker.clone()),
            now: 0,
            settings: check.clone(),
        };
        if !side_rules.is_empty() {
            let side = Checker::side_loop(side_rules, m.checker.clone(), m.store.clone());
            out.push(tokio::spawn(checker::run_loop(
                side,
                context(),
                None,
                SIDE_RULES_EVERY,
                stop.clone(),
            )));
        }
        if !check_interval.is_zero() {
            let rules = checker::compose(checker::default_rules(), engine_rules);
            let checker = Checker::new(rules, m.checker.clone(), m.store.clone());
            out.push(tokio::spawn(checker::run_loop(
                checker,
                context(),
                Some(self.leadership.clone()),
                check_interval,
                stop.clone(),
            )));
        }
        out.push(tokio::spawn(retention::run(
            store.clone(),
            settings.retention.clone(),
            retention::every(check_interval),
            self.leadership.clone(),
            m.retention.clone(),
            stop.clone(),
        )));
        out
    }
}

/// The listener on `--listen`.
async fn bind(settings: &Settings) -> Result<TcpListener> {
    TcpListener::bind(settings.http.listen).await.map_err(|e| {
        Error::Config(format!(
            "cannot listen on `{}` (--listen): {e}",
            settings.http.listen
        ))
    })
}

/// Waits up to [`SOURCES_STOP_TIMEOUT`] for the background loops to return after `stop`, then
/// aborts the rest.
async fn stop_sources(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    aborted: &CancellationToken,
) -> Result<()> {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let all = futures_util::future::join_all(tasks);
    tokio::select! {
        r = tokio::time::timeout(SOURCES_STOP_TIMEOUT, all) => {
            if r.is_err() {
                let left = aborts.iter().filter(|a| !a.is_finished()).count();
                tracing::warn!(left, "background sources still busy after {:?}: aborted", SOURCES_STOP_TIMEOUT);
                aborts.iter().for_each(|a| a.abort());
            }
            Ok(())
        }
        _ = aborted.cancelled() => Err(Error::Aborted),
    }
}

/// Logs to stderr at `TASKPULSE_LOG` (default `info,sqlx=warn`), in colour on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKPULSE_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `taskpulse migrate`: the store's schema brought up to date. An SQLite file from before
/// retention is also converted to incremental vacuum, so that retention gives deleted rows'
/// space back from then on; true when it was.
pub async fn migrate(url: &str) -> Result<bool> {
    let store = Store::connect(url).await?;
    store.migrate().await?;
    store.enable_reclaim().await
}

/// `taskpulse check`: one pass against the store alone (no memory, so `store_divergence` has
/// nothing to compare), with the engines' rules, repairing only with `--repair`.
pub async fn check(args: &CheckArgs) -> Result<PassReport> {
    let store = Store::connect_within(&args.store.database, Duration::from_secs(3)).await?;
    store.ready().await?;
    let engine_rules = engines(&args.engines, args.throttle.progress_min_interval, None)?
        .iter()
        .flat_map(|e| e.rules())
        .collect();
    let checker = Checker::new(
        checker::compose(checker::default_rules(), engine_rules),
        CheckerMetrics::unregistered(),
        StoreMetrics::unregistered(),
    );
    let ctx = Context {
        store: store.clone(),
        tracker: None,
        now: crate::now_ms(),
        settings: CheckSettings::new(&args.checker, &args.throttle, &args.wait, args.repair),
    };
    let report = checker.run_pass(&ctx).await;
    store.close().await;
    report
}
