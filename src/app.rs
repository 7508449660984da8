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
use crate::config::{redact_url, Settings};
use crate::error::{Error, Result};
use crate::metrics::scrape::{ScrapeConfig, StateCollector};
use crate::metrics::Metrics;
use crate::state::Tracker;
use crate::store::{self, Store};
use crate::throttle::{self, Throttle};

/// How often finished tasks, idle limiter state and idle workers are swept from memory.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A worker with no in-flight task disappears from the worker gauges after this long unseen.
const WORKER_IDLE: Duration = Duration::from_secs(3600);
/// Longest a shutdown waits for the store to take the last writes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A built, listening taskpulse.
pub struct Application {
    listener: TcpListener,
    state: AppState,
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
        let tracker = Arc::new(Tracker::new(throttle, writer, metrics.clone()));

        let retention_ms = settings.terminal_retention.as_millis() as i64;
        let started = std::time::Instant::now();
        let records = store.load_tasks(crate::now_ms() - retention_ms).await?;
        let loaded = records.len();
        tracker.load(records);
        tracing::info!(tasks = loaded, took = ?started.elapsed(), "rebuilt in-memory state from the store");

        metrics
            .register(Box::new(StateCollector::new(
                tracker.clone(),
                ScrapeConfig {
                    stall_after: settings.stall_after,
                    wait_grace: settings.wait_grace,
                    max_task_series: settings.max_task_series,
                },
            )))
            .expect("state gauges register once");

        let mut background = vec![tokio::spawn(throttle::run_timers(
            tracker.clone(),
            timer_rx,
        ))];
        let t = tracker.clone();
        background.push(tokio::spawn(async move {
            while let Some(rec) = conflict_rx.recv().await {
                t.reload(rec);
            }
        }));
        let t = tracker.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                t.sweep(retention_ms, WORKER_IDLE.as_millis() as i64);
            }
        }));

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
        };
        Ok(Application {
            listener,
            state,
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

    /// Serves until `shutdown` completes, then stops taking requests, writes every coalesced
    /// value and waits for the store to commit them.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let draining = self.state.draining.clone();
        let router = api::router(self.state.clone());
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                draining.store(true, Ordering::SeqCst);
            })
            .await?;

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
