//! Shares one allocation among equal strings (task types, workflow ids, workers): a million
//! tasks of a hundred types hold a hundred type names, not a million.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashSet;

/// Distinct names shared through the interner, at most; past it a name is still returned,
/// only not shared.
const MAX_INTERNED: usize = 1_000_000;

/// The hasher of the tables keyed by ids and names from input: foldhash's quality variant,
/// seeded per table. The standard SipHash took a tenth of the ingest path (an update is looked
/// up by its id); foldhash is several times faster and, seeded, still leaves a sender no way to
/// aim ids at one bucket.
pub(crate) type IdHasher = foldhash::quality::RandomState;

#[derive(Default)]
pub(crate) struct Interner {
    names: DashSet<Arc<str>, IdHasher>,
    /// About how many names are held (the set's `len` locks every shard, once per new name).
    count: AtomicUsize,
}

impl Interner {
    pub(crate) fn get(&self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.key().clone();
        }
        let a: Arc<str> = Arc::from(s);
        if self.count.load(Ordering::Relaxed) < MAX_INTERNED && self.names.insert(a.clone()) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        a
    }

    /// Forgets names nothing else refers to any more.
    pub(crate) fn prune(&self) {
        self.names.retain(|a| Arc::strong_count(a) > 1);
        self.count.store(self.names.len(), Ordering::Relaxed);
    }
}
