//! The terminal updates the proxy forwarded, kept until the engine is seen to hold them
//! (`lost_terminal_update`), and bounded whatever the engine does: at most [`MAX_KEPT`] of
//! them, none older than [`MAX_AGE`], and their TaskResults kept for a repost only up to
//! [`MAX_BODY`] each and [`MAX_BODIES`] in all (past that the check still runs and reports,
//! without a repair).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use dashmap::DashMap;

use crate::model::Status;

/// Forwarded terminal updates kept, at most.
pub const MAX_KEPT: usize = 10_000;
/// Longest a forwarded terminal update waits to be seen held by the engine.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Largest TaskResult kept to post again.
pub const MAX_BODY: usize = 16 * 1024;
/// TaskResult bytes kept in all.
pub const MAX_BODIES: usize = 16 * 1024 * 1024;

/// A terminal update that went upstream.
#[derive(Clone, Debug)]
pub struct ForwardedTerminal {
    pub workflow_id: String,
    pub status: Status,
    /// The TaskResult as forwarded, to post again if the engine lost it; `None` when it was
    /// larger than [`MAX_BODY`] or [`MAX_BODIES`] was used up.
    pub body: Option<Bytes>,
    pub forwarded_at: Instant,
}

#[derive(Debug, Default)]
pub struct Forwarded {
    map: DashMap<String, ForwardedTerminal>,
    body_bytes: AtomicUsize,
}

impl Forwarded {
    /// Keeps a forwarded terminal update (its body if it fits).
    pub fn insert(&self, task_id: String, workflow_id: String, status: Status, body: Bytes) {
        if self.map.len() >= MAX_KEPT {
            self.drop_oldest(MAX_KEPT / 10);
        }
        let keep = body.len() <= MAX_BODY
            && self.body_bytes.fetch_add(body.len(), Ordering::AcqRel) + body.len() <= MAX_BODIES;
        if body.len() <= MAX_BODY && !keep {
            self.body_bytes.fetch_sub(body.len(), Ordering::AcqRel);
        }
        let entry = ForwardedTerminal {
            workflow_id,
            status,
            body: keep.then_some(body),
            forwarded_at: Instant::now(),
        };
        if let Some(old) = self.map.insert(task_id, entry) {
            self.release(&old);
        }
    }

    /// The forwarded terminal update of this task, if it is still kept.
    pub fn get(&self, task_id: &str) -> Option<ForwardedTerminal> {
        self.map.get(task_id).map(|e| e.value().clone())
    }

    pub fn remove(&self, task_id: &str) {
        if let Some((_, old)) = self.map.remove(task_id) {
            self.release(&old);
        }
    }

    /// Those forwarded at least `after` ago, at most `n`.
    pub fn due(&self, after: Duration, n: usize) -> Vec<(String, ForwardedTerminal)> {
        self.map
            .iter()
            .filter(|e| e.forwarded_at.elapsed() >= after)
            .take(n)
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Forgets those older than [`MAX_AGE`]; returns how many.
    pub fn expire(&self) -> usize {
        let old: Vec<String> = self
            .map
            .iter()
            .filter(|e| e.forwarded_at.elapsed() >= MAX_AGE)
            .map(|e| e.key().clone())
            .collect();
        for id in &old {
            self.remove(id);
        }
        old.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// TaskResult bytes kept.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes.load(Ordering::Acquire)
    }

    fn release(&self, t: &ForwardedTerminal) {
        if let Some(b) = &t.body {
            self.body_bytes.fetch_sub(b.len(), Ordering::AcqRel);
        }
    }

    fn drop_oldest(&self, n: usize) {
        let mut all: Vec<(Instant, String)> = self
            .map
            .iter()
            .map(|e| (e.forwarded_at, e.key().clone()))
            .collect();
        let n = n.clamp(1, all.len().max(1));
        if n < all.len() {
            all.select_nth_unstable(n - 1);
        }
        for (_, id) in all.into_iter().take(n) {
            self.remove(&id);
        }
        tracing::warn!(
            dropped = n,
            kept = MAX_KEPT,
            "proxy: more forwarded terminal updates unverified than it keeps; the oldest are no longer checked"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_kept_within_their_bounds() {
        let f = Forwarded::default();
        f.insert(
            "small".into(),
            "w".into(),
            Status::Completed,
            Bytes::from(vec![b'x'; 100]),
        );
        f.insert(
            "big".into(),
            "w".into(),
            Status::Completed,
            Bytes::from(vec![b'x'; MAX_BODY + 1]),
        );
        assert_eq!(f.body_bytes(), 100);
        assert!(f.map.get("small").unwrap().body.is_some());
        assert!(
            f.map.get("big").unwrap().body.is_none(),
            "too large: checked, not kept"
        );
        f.remove("small");
        assert_eq!(f.body_bytes(), 0);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn the_count_is_bounded_by_dropping_the_oldest() {
        let f = Forwarded::default();
        for i in 0..MAX_KEPT + 5 {
            f.insert(format!("t{i}"), "w".into(), Status::Completed, Bytes::new());
        }
        assert!(f.len() <= MAX_KEPT, "{}", f.len());
        assert!(
            f.map.contains_key(&format!("t{}", MAX_KEPT + 4)),
            "the newest stay"
        );
    }
}
