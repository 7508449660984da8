//! Bounds on label values taken from input. A task type, workflow type or worker id becomes a
//! label value shared by series; a sender with many distinct values (generated pod names, a
//! bug, an attacker) must not make `/metrics` grow without end. Past a bound, values are
//! folded into one documented value, [`OTHER`], so totals stay right, and what was folded is
//! counted.

use dashmap::DashSet;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The label value that stands for every value past a bound.
pub const OTHER: &str = "__other__";

/// Distinct values each histogram keeps for its label from input (task type, workflow type):
/// a histogram has 16 series per value and status, so it gets fewer than the gauges.
pub const HISTOGRAM_LABEL_VALUES: usize = 30;

/// `taskpulse_folded_observations_total{histogram}`: observations recorded under [`OTHER`]
/// because their histogram already had its distinct label values.
#[derive(Clone, Debug)]
pub struct Folding {
    folded: IntCounterVec,
}

impl Folding {
    pub fn register(registry: &Registry) -> prometheus::Result<Folding> {
        let folded = IntCounterVec::new(
            Opts::new(
                "taskpulse_folded_observations_total",
                "Histogram observations recorded under the label value __other__ because the histogram already had its maximum of distinct label values.",
            ),
            &["histogram"],
        )?;
        registry.register(Box::new(folded.clone()))?;
        Ok(Folding { folded })
    }

    pub fn unregistered() -> Folding {
        Folding::register(&Registry::new()).expect("fresh registry")
    }

    /// A bound of `max` distinct values for the histogram named `histogram`.
    pub fn cap(&self, histogram: &str, max: usize) -> LabelCap {
        LabelCap {
            max,
            kept: DashSet::new(),
            folded: self.folded.with_label_values(&[histogram]),
        }
    }
}

/// The first `max` distinct values seen keep their own series; later ones are [`OTHER`].
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    kept: DashSet<Box<str>>,
    folded: IntCounter,
}

impl LabelCap {
    /// `value` itself, or [`OTHER`] past the bound (counted).
    pub fn label<'a>(&self, value: &'a str) -> &'a str {
        if self.kept.contains(value) {
            return value;
        }
        if self.kept.len() < self.max {
            self.kept.insert(value.into());
            return value;
        }
        self.folded.inc();
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_bound_are_folded_and_counted() {
        let folding = Folding::unregistered();
        let cap = folding.cap("h", 2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("a"), "a", "a kept value stays");
        assert_eq!(cap.label("c"), OTHER);
        assert_eq!(cap.label("d"), OTHER);
        assert_eq!(folding.folded.with_label_values(&["h"]).get(), 2);
    }
}
