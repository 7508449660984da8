//! Wiring: build every part from the settings, serve until told to stop, then drain.
//!
//! `Application::build` binds the listener before returning, so tests start the real app on
//! port 0 and read the port back; `run_until` takes the shutdown signal as a future, so tests can
//! trigger it without signals.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::checker::{self, CheckSettings, Checker, Context};
use crate::config::{redact_url, Settings};
use crate::engines::conductor::proxy::Proxy;
use crate::engines::conductor::rules::LostTerminalUpdate;
use crate::engines::conductor::wait_queue;
use crate::error::{Error, Result};
use crate::leader::{self, Leadership};
use crate::metrics::scrape::{ScrapeConfig, StateCollector};
use crate::metrics::Metrics;
use crate::state::Tracker;
use crate::store::{self, Store};
use crate::throttle::{self, Throttle};

/// How often finished tasks, idle limiter state and idle workers are swept from memory.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the WAIT queue is read from Conductor's database (besides every notification).
const WAIT_REFRESH: Duration = Duration::from_secs(5);
/// A worker with no in-flight task disappears from the worker gauges after this long unseen.
const WORKER_IDLE: Duration = Duration::from_secs(3600);
/// Longest a shutdown waits for the store to take the last writes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A built, listening taskpulse.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    leadership: Leadership,
    background: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
}

impl Application {
    /// Connects and migrates the store, rebuilds memory from it, starts the writer and the
    /// throttle timers, and binds the listener.
    pub async fn build(settings: Settings) -> Result<Application> {
        let store = Store::connect(&settings.database).await.map_err(|e| {
            Error::Config(format!(
                "cannot open database `{}`: {e}",
                redact_url(&settings.database)
            ))
        })?;
        store.migrate().await?;
        let metrics = Arc::new(Metrics::new());

        let (conflict_tx, mut conflict_rx) = mpsc::unbounded_channel();
        let (writer, writer_join) =
            store::writer::spawn(store.clone(), metrics.clone(), conflict_tx);
        let (throttle, timer_rx) =
            Throttle::new(settings.progress_min_interval, settings.progress_min_delta);
        let mut tracker = Tracker::new(throttle, writer, metrics.clone())
            .with_max_tracked(settings.max_tracked_tasks);
        if settings.conductor_db.is_some() {
            tracker = tracker.without_wait_lag();
        }
        let tracker = Arc::new(tracker);

        let retention_ms = settings.terminal_retention.as_millis() as i64;
        let started = std::time::Instant::now();
        let loaded = store
            .each_task(crate::now_ms() - retention_ms, &mut |rec| {
                tracker.load_one(rec)
            })
            .await?;
        tracker.loaded();
        tracing::info!(tasks = loaded, took = ?started.elapsed(), "rebuilt in-memory state from the store");

        let (leadership, election) = leader::start(
            &store,
            settings.check_interval,
            metrics.checker_leader.clone(),
        )
        .await;
        // The leader folds in other replicas' writes at the election's pace.
        let every = leader::timing(settings.check_interval).0 * 2;
        // With --conductor-db the WAIT queue is read from Conductor's own tables.
        let mut wait_reader = None;
        let wait_source = match &settings.conductor_db {
            None => None,
            Some(url) => {
                let (rx, task) = wait_queue::spawn(
                    url,
                    settings.wait_grace,
                    WAIT_REFRESH,
                    metrics.wait_wakeup_lag_seconds.clone(),
                )
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "cannot read the WAIT queue from `{}` (--conductor-db): {e}",
                        redact_url(url)
                    ))
                })?;
                wait_reader = Some(task);
                Some(rx)
            }
        };
        metrics.set_state(StateCollector::new(
            tracker.clone(),
            ScrapeConfig {
                stall_after: settings.stall_after,
                wait_grace: settings.wait_grace,
                max_task_series: settings.max_task_series,
            },
            leadership.clone(),
            wait_source,
        ));

        let mut background: Vec<JoinHandle<()>> = wait_reader.into_iter().collect();
        background.push(tokio::spawn(throttle::run_timers(
            tracker.clone(),
            timer_rx,
        )));
        let t = tracker.clone();
        background.push(tokio::spawn(async move {
            while let Some((stored, attempted)) = conflict_rx.recv().await {
                t.lost_to_store(stored, attempted);
            }
        }));
        let t = tracker.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => t.sweep(retention_ms, WORKER_IDLE.as_millis() as i64),
                    // A flood of new tasks went far over --max-tracked-tasks: evict now.
                    _ = t.eviction_wanted() => {}
                }
                t.evict_over_cap();
            }
        }));

        background.extend(election);
        if matches!(store, Store::Postgres(_)) {
            background.push(tokio::spawn(refresh_from_store(
                store.clone(),
                tracker.clone(),
                leadership.clone(),
                every,
                retention_ms,
            )));
        }
        let conductor = settings.conductor_url.as_deref().map(|url| {
            Arc::new(Proxy::new(
                url,
                settings.progress_min_interval,
                settings.conductor_timeout,
            ))
        });
        if let Some(px) = &conductor {
            tracing::info!(engine = %px.base(), "Conductor worker proxy on /api/");
            let sweep = px.clone();
            let quiet = settings.terminal_retention;
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    sweep.sweep(quiet);
                }
            }));
            // Every replica verifies the terminal updates it forwarded, soon after sending them.
            let verifier = Checker::side_loop(
                vec![Box::new(LostTerminalUpdate { px: px.clone() })],
                metrics.clone(),
            );
            background.push(tokio::spawn(run_checker(
                verifier,
                serving_context(&store, &tracker, &settings),
                None,
                Duration::from_secs(1),
            )));
        }
        if !settings.check_interval.is_zero() {
            let checker = Checker::new(checker::rules_for(conductor.as_ref()), metrics.clone());
            background.push(tokio::spawn(run_checker(
                checker,
                serving_context(&store, &tracker, &settings),
                Some(leadership.clone()),
                settings.check_interval,
            )));
        }

        let listener = TcpListener::bind(settings.listen).await.map_err(|e| {
            Error::Config(format!(
                "cannot listen on `{}` (--listen): {e}",
                settings.listen
            ))
        })?;
        let state = AppState {
            tracker,
            store,
            metrics,
            settings: Arc::new(settings),
            draining: Arc::new(AtomicBool::new(false)),
            conductor,
        };
        Ok(Application {
            listener,
            state,
            leadership,
            background,
            writer: writer_join,
        })
    }

    /// The bound address (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn tracker(&self) -> Arc<Tracker> {
        self.state.tracker.clone()
    }

    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// Whether this replica leads (always on SQLite).
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Serves until `shutdown` completes, then stops taking requests, writes every coalesced
    /// value and waits for the store to commit them.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let draining = self.state.draining.clone();
        let router = api::router(self.state.clone());
        let limits = ConnLimits {
            header_read_timeout: self.state.settings.header_read_timeout,
            max_connections: self.state.settings.max_connections,
        };
        serve(self.listener, router, limits, async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
        })
        .await;

        let tracker = &self.state.tracker;
        let flushed = tracker.flush_all();
        tracing::info!(tasks = flushed, "shutting down: writing coalesced progress");
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, tracker.writer().barrier()).await;
        for task in &self.background {
            task.abort();
        }
        self.writer.abort();
        self.state.store.close().await;
        match drained {
            Ok(true) => {
                tracing::info!("all writes committed; bye");
                Ok(())
            }
            _ => Err(Error::StoreUnavailable),
        }
    }
}

/// What one client may hold of the server.
struct ConnLimits {
    header_read_timeout: Duration,
    max_connections: usize,
}

/// The accept loop: `axum::serve` without its blind spots for slow clients.
///
/// `axum::serve` offers neither a header-read timeout nor a cap on connections, so a slowloris
/// client (opening connections and sending a request head byte by byte, or nothing at all) could
/// hold an unbounded number of sockets and tasks. Here every connection:
///
/// - holds one of `--max-connections` permits; at the cap the loop stops accepting, so further
///   clients wait in the kernel's listen backlog (and are served as permits free up) instead of
///   taking memory and file descriptors;
/// - is closed by hyper when a request head (including the first one, and the next one on an
///   idle keep-alive connection) has not fully arrived within `--header-read-timeout`.
///
/// The body deadline (`--body-read-timeout`) is a router layer, see `api::router`.
///
/// On `shutdown` the listener closes, every connection finishes the request it is serving and
/// closes (idle ones at once), and this returns when all have: the same graceful shutdown
/// `axum::serve` gives, so SIGTERM still drains before the final flush.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::sync::{watch, Semaphore};

    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (close_tx, close_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin, as
                    // axum::serve does.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut close = close_rx.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                }
                _ = close.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = close_tx.send(());
    // Every connection gives its permit back when it is done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// What a checker pass inside `serve` sees: the store, this process's memory, and repairs as
/// `--repair` says (`now` is set at each pass).
fn serving_context(store: &Store, tracker: &Arc<Tracker>, settings: &Settings) -> Context {
    Context {
        store: store.clone(),
        tracker: Some(tracker.clone()),
        now: 0,
        settings: check_settings(settings, settings.repair),
    }
}

/// The checker's settings from the process's settings.
pub fn check_settings(settings: &Settings, repair: bool) -> CheckSettings {
    CheckSettings {
        repair,
        max_repairs_per_run: settings.max_repairs_per_run,
        // A silent task's last write may lag its last update by one throttle interval.
        lease_grace: settings.lease_grace + settings.progress_min_interval,
        wait_grace: settings.wait_grace,
    }
}

/// Runs a checker pass every `interval` (while this replica leads, when `leadership` is given).
async fn run_checker(
    checker: Checker,
    mut ctx: Context,
    leadership: Option<Leadership>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if leadership.as_ref().is_some_and(|l| !l.is_leader()) {
            // Only the leader's findings are current; a follower exports none.
            checker.forget_findings();
            continue;
        }
        ctx.now = crate::now_ms();
        match checker.run_pass(&ctx).await {
            Ok(report) if report.violations.is_empty() => tracing::debug!("checker: clean"),
            Ok(report) => tracing::warn!(
                violations = report.violations.len(),
                repairs = report.repairs.len(),
                skipped = report.skipped,
                "checker found violations"
            ),
            Err(e) => tracing::warn!(error = %e, "checker pass failed"),
        }
    }
}

/// On PostgreSQL the leader folds in what other replicas wrote, so its state gauges count every
/// task once. The first refresh after taking the lead reads every unfinished task; later ones
/// only rows changed since (with a margin for clock skew between replicas).
async fn refresh_from_store(
    store: Store,
    tracker: Arc<Tracker>,
    leadership: Leadership,
    every: Duration,
    retention_ms: i64,
) {
    let margin = (every * 4).as_millis() as i64 + 5_000;
    let mut since: Option<i64> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !leadership.is_leader() {
            since = None;
            continue;
        }
        let started = crate::now_ms();
        let rows = match since {
            None => store.load_tasks(started - retention_ms).await,
            Some(t) => store.changed_since(t - margin).await,
        };
        match rows {
            Ok(rows) => {
                tracker.merge_from_store(rows);
                since = Some(started);
            }
            Err(e) => tracing::warn!(error = %e, "leader: refreshing from the store failed"),
        }
    }
}
