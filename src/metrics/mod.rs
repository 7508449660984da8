//! The Prometheus exposition (`docs/contract.md` §4).
//!
//! Two kinds of metrics meet here. Counters and histograms of things that happened belong to
//! the subsystem that counts them (the pipeline, the store's writer, the checker, the WAIT
//! sources, each engine), each a struct with its own `register`. Gauges of the *current* state
//! (per-task progress, tasks by status, the WAIT queue, workers) are generated at scrape time
//! from memory by [`Collector`]s such as [`state::StateCollector`], as Prometheus' exporter
//! guidance recommends: a finished task's series then disappears instead of going stale, and
//! nothing has to remember to delete it. [`Exposition`] assembles both, last, into one text.

pub mod state;
pub mod text;

use std::sync::Arc;

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// Something that writes its own families into the exposition at scrape time.
pub trait Collector: Send + Sync {
    /// Appends whole families (HELP, TYPE and samples) in the text format.
    fn write_text(&self, out: &mut String);
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
pub struct Exposition {
    registry: Registry,
    collectors: Vec<Arc<dyn Collector>>,
}

impl Exposition {
    pub fn new(registry: Registry, collectors: Vec<Arc<dyn Collector>>) -> Exposition {
        Exposition {
            registry,
            collectors,
        }
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        for c in &self.collectors {
            c.write_text(&mut text);
        }
        text
    }
}
