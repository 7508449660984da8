//! `GET /api/v1/events`: the status page's live feed, a server-sent event stream.
//!
//! Why it is shaped like this: at 10,000 updates a second a feed of every change would cost
//! each open page megabytes a second, and a page shows at most a few hundred tasks. So a page
//! names the tasks it shows (`watch`), and every [`TICK`] the stream sends those that changed
//! (`tasks`), how many updates memory accepted meanwhile (`changed`, so a page showing the
//! newest tasks knows to fetch its page again), and once a second the overview (`overview`,
//! one shared computation for all pages). A stream costs a few hash lookups per tick,
//! whatever the update rate; nothing is kept per update.
//!
//! Streams are bounded ([`max_streams`]: at most [`MAX_STREAMS`], and at most half of
//! `--max-connections`, rounded down), so open pages can never take the connections health
//! probes, scrapes and ingest need: with `--max-connections 1` there are no streams at all (a
//! page then refreshes on its own). They end when shutdown begins.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::views::TaskView;
use super::{error, unavailable, HttpState};

/// How often a stream looks for changes: a moved bar shows within about a second.
pub const TICK: Duration = Duration::from_millis(250);
/// The overview goes out every this many ticks (it is recomputed about once a second anyway).
const OVERVIEW_EVERY: u64 = 4;
/// Tasks one stream may watch.
pub const MAX_WATCHED: usize = 200;
/// Open streams, at most (and at most half of `--max-connections`).
pub const MAX_STREAMS: usize = 100;

/// Streams open at once, at most: [`MAX_STREAMS`], and half of `--max-connections` rounded down,
/// so at least as many connections as streams stay for everything else (none with one
/// connection).
pub fn max_streams(max_connections: usize) -> usize {
    MAX_STREAMS.min(max_connections / 2)
}

/// The open streams, counted so there are never more than the bound.
#[derive(Debug, Default)]
pub struct LiveStreams {
    open: AtomicUsize,
}

/// Held by a stream; gives its place back when the stream ends (the client went away).
struct Slot(Arc<LiveStreams>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LiveStreams {
    fn take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    /// Task ids, comma-separated.
    watch: Option<String>,
}

/// What a stream last sent of a watched task: it is sent again when this changes.
#[derive(Clone, Copy, PartialEq)]
struct Seen {
    last_seen: i64,
    stalled: bool,
}

struct Feed {
    s: HttpState,
    watched: Vec<(String, Option<Seen>)>,
    ticks: u64,
    accepted: u64,
    overview_at: Option<i64>,
    _slot: Slot,
}

pub(super) async fn events(State(s): State<HttpState>, Query(q): Query<EventsQuery>) -> Response {
    // Checked while splitting, so a URL of a million ids costs no more than one of 201.
    let mut watched: Vec<(String, Option<Seen>)> = Vec::new();
    for id in q.watch.as_deref().unwrap_or("").split(',') {
        if id.is_empty() || watched.iter().any(|(w, _)| w == id) {
            continue;
        }
        if watched.len() == MAX_WATCHED {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`watch` names more than {MAX_WATCHED} tasks, the most a stream watches"),
            );
        }
        watched.push((id.to_string(), None));
    }
    if s.draining.load(Ordering::Relaxed) {
        return unavailable("shutting down");
    }
    let connections = s.settings.max_connections;
    let max = max_streams(connections);
    if max == 0 {
        // not a passing state: no Retry-After
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "event streams are off: they may take at most half of --max-connections \
                 ({connections}), so health probes, /metrics and ingest always have a \
                 connection; the page refreshes without one"
            ),
        );
    }
    let Some(slot) = s.live.take(max) else {
        return unavailable(format!(
            "event streams are all taken: {max} open, the most taskpulse serves (at most \
             {MAX_STREAMS}, and half of --max-connections {connections}); try again later"
        ));
    };
    let feed = Feed {
        accepted: s.pipeline.tracker().accepted(),
        s,
        watched,
        ticks: 0,
        overview_at: None,
        _slot: slot,
    };
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let events = stream::unfold((feed, interval), |(mut feed, mut interval)| async move {
        interval.tick().await;
        if feed.s.draining.load(Ordering::Relaxed) {
            return None;
        }
        let batch = feed.tick();
        Some((stream::iter(batch), (feed, interval)))
    })
    .flatten()
    .map(Ok::<Event, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

impl Feed {
    /// The events of one tick.
    fn tick(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let tracker = self.s.pipeline.tracker();
        let now = crate::now_ms();
        let stall_ms = self.s.stall_after.as_millis() as i64;
        let mut views = Vec::new();
        for (id, seen) in &mut self.watched {
            // compared in place; a record is copied only for a task that changed
            let now_seen = tracker.inspect(id, |st| Seen {
                last_seen: st.rec.last_seen,
                stalled: st.rec.is_in_flight() && st.rec.progress_stalled(now, stall_ms),
            });
            if now_seen.is_none() || *seen == now_seen {
                continue;
            }
            let Some(rec) = tracker.get(id) else {
                continue;
            };
            *seen = now_seen;
            let predicted = tracker.predicted_completion(id, now, stall_ms);
            views.push(
                serde_json::to_value(TaskView::new(&rec, predicted, now, stall_ms))
                    .unwrap_or_default(),
            );
        }
        if !views.is_empty() {
            out.extend(json_event("tasks", &json!({ "tasks": views })));
        }
        let accepted = tracker.accepted();
        if accepted != self.accepted {
            let since = accepted.wrapping_sub(self.accepted);
            self.accepted = accepted;
            out.extend(json_event(
                "changed",
                &json!({ "accepted": accepted, "since": since }),
            ));
        }
        // the last computed overview, never a wait for one: until the stream has sent one,
        // looked for every tick (the first computation may still be running)
        let due = self.ticks % OVERVIEW_EVERY == 0 || self.overview_at.is_none();
        if let Some(overview) = due.then(|| self.s.overview.latest()).flatten() {
            let at = Some(overview.at);
            if at != self.overview_at {
                self.overview_at = at;
                out.extend(json_event("overview", &*overview));
            }
        }
        self.ticks += 1;
        out
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Option<Event> {
    Event::default().event(name).json_data(data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_leave_at_least_as_many_connections_as_they_take() {
        assert_eq!(max_streams(1), 0);
        assert_eq!(max_streams(2), 1);
        assert_eq!(max_streams(3), 1);
        assert_eq!(max_streams(8), 4);
        assert_eq!(max_streams(1024), MAX_STREAMS);
        for c in 1..=1_000 {
            assert!(max_streams(c) <= c - max_streams(c), "{c}");
        }
    }
}
