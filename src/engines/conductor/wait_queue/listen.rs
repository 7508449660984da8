//! `LISTEN conductor_queue_state`: Conductor's `experimentalQueueNotify` trigger tells of every
//! queue change; a change of the WAIT entry pokes the refresher.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{Acquire, PgPool};
use tokio::sync::Notify;

use super::{is_wait_queue, NOTIFY_CHANNEL};
use crate::engines::store_source::backoff;
use crate::error::Result;

/// Whether a `conductor_queue_state` payload shows the WAIT queues (`WAIT`, `WAIT-<group>`...)
/// different from the last ones seen (`last`: `None` = nothing seen yet). Anything
/// unparsable counts as a change.
fn wait_state_changed(payload: &str, last: &mut Option<Option<Value>>) -> bool {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(m)) => {
            let waits: serde_json::Map<String, Value> =
                m.into_iter().filter(|(k, _)| is_wait_queue(k)).collect();
            let wait = (!waits.is_empty()).then_some(Value::Object(waits));
            if last.as_ref() == Some(&wait) {
                false
            } else {
                *last = Some(wait);
                true
            }
        }
        _ => {
            *last = None;
            true
        }
    }
}

pub(super) async fn connect_listener(pool: &PgPool) -> Result<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(NOTIFY_CHANNEL).await?;
    Ok(l)
}

/// Pokes the refresher on every notification that changes the WAIT queue, and after every
/// (re)connection of the LISTEN session.
pub(super) async fn listen(pool: PgPool, mut listener: Option<PgListener>, poke: Arc<Notify>) {
    let mut last_wait: Option<Option<Value>> = None;
    let mut failures = 0u32;
    // After an error the session is re-established before receiving again.
    let mut lost = false;
    loop {
        let Some(l) = listener.as_mut() else {
            match connect_listener(&pool).await {
                Ok(l) => {
                    tracing::info!("WAIT queue: listening on {NOTIFY_CHANNEL}");
                    listener = Some(l);
                    failures = 0;
                    last_wait = None;
                    poke.notify_one();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "WAIT queue: cannot LISTEN yet");
                    tokio::time::sleep(backoff(failures, Duration::from_secs(1))).await;
                }
            }
            continue;
        };
        if lost {
            match (&mut *l).acquire().await {
                Ok(_) => {
                    tracing::info!("WAIT queue: LISTEN {NOTIFY_CHANNEL} re-established");
                    lost = false;
                    failures = 0;
                    last_wait = None;
                    poke.notify_one();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "WAIT queue: LISTEN session still down");
                    tokio::time::sleep(backoff(failures, Duration::from_secs(1))).await;
                }
            }
            continue;
        }
        match l.try_recv().await {
            Ok(Some(n)) => {
                if wait_state_changed(n.payload(), &mut last_wait) {
                    poke.notify_one();
                }
            }
            Ok(None) => {
                // The session dropped and PgListener opened a new one (LISTEN included);
                // notifications may have been missed in between.
                tracing::info!("WAIT queue: LISTEN session reconnected");
                last_wait = None;
                poke.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAIT queue: LISTEN session lost; reconnecting");
                lost = true;
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures, Duration::from_secs(1))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_of_the_wait_entry_cause_a_read() {
        let mut last = None;
        let p1 = r#"{"WAIT":{"nextDelivery":1,"depth":2},"x":{"nextDelivery":5,"depth":1},"__now__":10}"#;
        assert!(wait_state_changed(p1, &mut last));
        let p2 = r#"{"WAIT":{"nextDelivery":1,"depth":2},"x":{"nextDelivery":5,"depth":9},"__now__":11}"#;
        assert!(!wait_state_changed(p2, &mut last));
        let p3 = r#"{"WAIT":{"nextDelivery":1,"depth":3},"__now__":12}"#;
        assert!(wait_state_changed(p3, &mut last));
        let grouped = r#"{"WAIT":{"nextDelivery":1,"depth":3},"WAIT-gpu":{"nextDelivery":1,"depth":1},"__now__":12}"#;
        assert!(wait_state_changed(grouped, &mut last));
        assert!(!wait_state_changed(grouped, &mut last));
        let empty = r#"{"__now__":13}"#;
        assert!(wait_state_changed(empty, &mut last));
        assert!(!wait_state_changed(empty, &mut last));
        assert!(wait_state_changed("garbage", &mut last));
        assert!(wait_state_changed(empty, &mut last));
    }
}
