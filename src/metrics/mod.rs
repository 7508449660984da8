//! The Prometheus exposition (`docs/metrics.md`).
//!
//! Two kinds of metrics meet here. Counters and histograms of things that happened belong to
//! the subsystem that counts them (the pipeline, the store's writer, the checker, the WAIT
//! sources, each engine), each a struct with its own `register`. Gauges of the *current* state
//! (per-task progress, tasks by status, the WAIT queue, workers) are generated at scrape time
//! from memory by [`Collector`]s such as [`state::StateCollector`], as Prometheus' exporter
//! guidance recommends: a finished task's series then disappears instead of going stale, and
//! nothing has to remember to delete it. [`Exposition`] assembles both, last, into one text,
//! every family written by the same writer ([`text`]).

pub mod state;
pub mod text;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::Notify;

/// What is left of a scrape's bounds (`--max-series`, `--max-scrape-bytes`) for a collector.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub series: usize,
    pub bytes: usize,
}

/// Something that writes its own families into the exposition at scrape time.
pub trait Collector: Send + Sync {
    /// Appends whole families (HELP, TYPE and samples) in the text format, keeping within
    /// `budget` where it can choose what to leave out, and taking what it wrote off it.
    fn write_text(&self, out: &mut String, budget: &mut Budget);
}

/// `taskpulse_build_info{version}`, always 1.
pub fn register_build_info(registry: &Registry) -> prometheus::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new("taskpulse_build_info", "Always 1; the version in a label."),
        &["version"],
    )?;
    registry.register(Box::new(info.clone()))?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    Ok(())
}

/// Everything `/metrics` shows: the registered metrics, then each collector's families.
///
/// Concurrent scrapes share renders ([`Exposition::scrape`]): a scrape is answered by a render
/// that started after it arrived (so it shows everything acknowledged before it), and renders
/// start at most once per [`RENDER_GAP`], or per three times the last render's duration when
/// that is longer, so ten scrapers polling ten times a second cost what a few renders cost, not
/// a hundred, and renders take at most about a third of a core however large the state.
pub struct Exposition {
    registry: Registry,
    collectors: Vec<Arc<dyn Collector>>,
    bounds: Budget,
    shared: Mutex<Shared>,
    rendered: Notify,
    /// `taskpulse_scrapes_total{outcome="rendered"}` and `{outcome="shared"}`.
    scrapes_rendered: IntCounter,
    scrapes_shared: IntCounter,
    /// Families whose label values come from input, so they may have no series yet: their
    /// HELP and TYPE are written anyway, and a dashboard or rule naming them finds the family.
    declared: Vec<(String, String, &'static str)>,
    /// The length of the last render: the next one starts with room for about that much, so
    /// a large exposition is not copied over and over as its buffer doubles.
    last_len: std::sync::atomic::AtomicUsize,
}

/// Renders start at most this often, however many scrapes arrive.
pub const RENDER_GAP: Duration = Duration::from_millis(100);

enum Step {
    Done(Bytes),
    Render(Instant),
    Wait,
    Sleep(Instant),
}

#[derive(Default)]
struct Shared {
    rendering: bool,
    last_start: Option<Instant>,
    /// How long the last render took.
    last_took: Duration,
    /// The newest render and when it started.
    last: Option<(Instant, Bytes)>,
}

impl Exposition {
    /// `bounds`: the scrape's `--max-series` and `--max-scrape-bytes`. Registers
    /// `taskpulse_scrapes_total` in `registry`.
    pub fn new(
        registry: Registry,
        collectors: Vec<Arc<dyn Collector>>,
        bounds: Budget,
    ) -> prometheus::Result<Exposition> {
        let scrapes = IntCounterVec::new(
            Opts::new(
                "taskpulse_scrapes_total",
                "Scrapes of /metrics, by whether the scrape rendered the text or was answered by a render another scrape started after it arrived (shared).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(scrapes.clone()))?;
        Ok(Exposition {
            registry,
            collectors,
            bounds,
            shared: Mutex::new(Shared::default()),
            rendered: Notify::new(),
            scrapes_rendered: scrapes.with_label_values(&["rendered"]),
            scrapes_shared: scrapes.with_label_values(&["shared"]),
            declared: Vec::new(),
            last_len: Default::default(),
        })
    }

    /// Histograms whose labels come from input: their families are in every scrape, with no
    /// series until the first observation (the registry leaves empty families out).
    pub fn with_histograms(mut self, histograms: &[&HistogramVec]) -> Exposition {
        for h in histograms {
            for d in prometheus::core::Collector::desc(*h) {
                self.declared
                    .push((d.fq_name.clone(), d.help.clone(), "histogram"));
            }
        }
        self
    }

    /// The exposition text for `/metrics`, rendered now: the registered families, the declared
    /// ones the registry left out for having no series yet, then each collector's, all through
    /// the one writer in [`text`].
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last_len.load(Relaxed);
        let mut text = String::with_capacity((last + last / 8).max(64 * 1024));
        let mut series = 0;
        for f in &families {
            series += text::family(&mut text, f);
        }
        for (name, help, kind) in &self.declared {
            if !families.iter().any(|f| f.name() == name) {
                text::header(&mut text, name, help, kind);
            }
        }
        let mut budget = Budget {
            series: self.bounds.series.saturating_sub(series),
            bytes: self.bounds.bytes.saturating_sub(text.len()),
        };
        for c in &self.collectors {
            c.write_text(&mut text, &mut budget);
        }
        self.last_len.store(text.len(), Relaxed);
        text
    }

    /// A render for a scrape that arrived now, shared with the scrapes that wait for the same
    /// one (see the type's docs). The render itself runs on the blocking pool.
    pub async fn scrape(self: &Arc<Self>) -> Result<Bytes, ScrapeFailed> {
        let asked = Instant::now();
        loop {
            let notified = self.rendered.notified();
            match self.next_step(asked) {
                Step::Done(text) => {
                    self.scrapes_shared.inc();
                    return Ok(text);
                }
                Step::Render(started) => {
                    self.scrapes_rendered.inc();
                    return self.render_shared(started).await;
                }
                // another scrape renders: its result, or the next one, is ours
                Step::Wait => notified.await,
                Step::Sleep(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
            }
        }
    }

    /// What a scrape that arrived at `asked` does next (decided under the lock, done after).
    fn next_step(&self, asked: Instant) -> Step {
        let mut sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((started, text)) = &sh.last {
            if *started >= asked {
                return Step::Done(text.clone());
            }
        }
        if sh.rendering {
            return Step::Wait;
        }
        let now = Instant::now();
        let gap = RENDER_GAP.max(sh.last_took * 3);
        match sh.last_start.map(|t| t + gap).filter(|t| *t > now) {
            Some(t) => Step::Sleep(t),
            None => {
                sh.rendering = true;
                sh.last_start = Some(now);
                Step::Render(now)
            }
        }
    }

    /// Renders on the blocking pool and publishes the text to every waiting scrape. The
    /// render finishes and publishes even when the scrape that started it is dropped (its
    /// client went away mid-render): otherwise `rendering` stayed set and every later scrape
    /// waited for a render nobody would finish. [`RenderDone`] clears it on a panic too.
    async fn render_shared(self: &Arc<Self>, started: Instant) -> Result<Bytes, ScrapeFailed> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let done = RenderDone(&me);
            let t0 = Instant::now();
            let text = Bytes::from(me.render());
            let mut sh = me.shared.lock().unwrap_or_else(|e| e.into_inner());
            sh.last_took = t0.elapsed();
            sh.last = Some((started, text.clone()));
            drop(sh);
            drop(done);
            text
        })
        .await
        .map_err(ScrapeFailed)
    }
}

/// Ends a render, however it ends: the next scrape may render, and the waiting ones look again.
struct RenderDone<'a>(&'a Exposition);

impl Drop for RenderDone<'_> {
    fn drop(&mut self) {
        let mut sh = self.0.shared.lock().unwrap_or_else(|e| e.into_inner());
        sh.rendering = false;
        drop(sh);
        self.0.rendered.notify_waiters();
    }
}

/// The render of a scrape did not finish (it panicked or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("scrape failed: {0}")]
pub struct ScrapeFailed(#[source] tokio::task::JoinError);

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector that takes a while, so a scrape can be dropped while it renders.
    struct Slow;

    impl Collector for Slow {
        fn write_text(&self, out: &mut String, _budget: &mut Budget) {
            std::thread::sleep(Duration::from_millis(300));
            out.push_str("# slow family\n");
        }
    }

    /// A client that goes away mid-render (its scrape dropped) must not wedge `/metrics`: the
    /// next scrape used to wait forever for a render no one would finish (found by the Airflow
    /// end-to-end test, whose watcher is cancelled while scraping).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_dropped_mid_render_does_not_wedge_the_next() {
        let bounds = Budget {
            series: 1_000,
            bytes: 1 << 20,
        };
        let exp = Arc::new(Exposition::new(Registry::new(), vec![Arc::new(Slow)], bounds).unwrap());
        let dropped = tokio::time::timeout(Duration::from_millis(50), exp.scrape()).await;
        assert!(
            dropped.is_err(),
            "the first scrape is dropped while it renders"
        );
        let next = tokio::time::timeout(Duration::from_secs(5), exp.scrape())
            .await
            .expect("the next scrape answers")
            .unwrap();
        assert!(String::from_utf8_lossy(&next).contains("# slow family"));
    }
}
