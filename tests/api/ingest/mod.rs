//! Ingest over HTTP (`docs/contract.md` §2): body formats, Conductor aliases, per-item rejections, hostile
//! bodies, stale and duplicate updates, auth and the ingest counters, on both stores.

use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::settings::Secret;

use crate::helpers::{update, Backend, TestApp, TestDb};
use crate::store_test;

mod auth;
mod bodies;
mod hostile;
mod updates;

/// `base` with the fields of `extra` set (replacing what was there).
fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("extra is an object") {
        base[k] = v.clone();
    }
    base
}

/// `base` without `key`.
fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().expect("an object").remove(key);
    base
}

/// Asserts the three counts of an ingest answer.
#[track_caller]
fn assert_counts(r: &Value, accepted: u64, duplicates: u64, rejected: usize) {
    assert_eq!(r["accepted"], accepted, "accepted: {r}");
    assert_eq!(r["duplicates"], duplicates, "duplicates: {r}");
    assert_eq!(
        r["rejected"].as_array().map(Vec::len),
        Some(rejected),
        "rejected: {r}"
    );
}

/// The rejection for item `index`, failing the test when there is none.
#[track_caller]
fn rejection(r: &Value, index: usize) -> &Value {
    r["rejected"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["index"] == index))
        .unwrap_or_else(|| panic!("no rejection for item {index}: {r}"))
}

/// Sends raw bytes and returns the status and the body (JSON when it parses, else a string).
async fn send(app: &TestApp, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    let resp = app.post_raw(body, content_type).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
