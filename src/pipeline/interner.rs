//! Shares one allocation among equal strings (task types, workflow ids, workers): a million
//! tasks of a hundred types hold a hundred type names, not a million.

use std::sync::Arc;

use dashmap::DashSet;

/// Distinct names shared through the interner, at most; past it a name is still returned,
/// only not shared.
const MAX_INTERNED: usize = 1_000_000;

#[derive(Default)]
pub(crate) struct Interner(DashSet<Arc<str>>);

impl Interner {
    pub(crate) fn get(&self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.key().clone();
        }
        let a: Arc<str> = Arc::from(s);
        if self.0.len() < MAX_INTERNED {
            self.0.insert(a.clone());
        }
        a
    }

    /// Forgets names nothing else refers to any more.
    pub(crate) fn prune(&self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}
