//! Redis's clock, not taskpulse's (issue 22 §6): Conductor scores its queues with its own
//! clock, which agrees with its Redis; taskpulse's host may not. The reader takes "now" from
//! `TIME` once per poll. A skewed Redis is played by a proxy that forwards every command and
//! answers `TIME` with the server's time moved by a fixed offset.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{app_on, connect_when_up, now_ms, task_model, RedisServer};
use crate::conductor_tail::eventually;
use crate::helpers::{free_port, metric_value, Backend, TestDb};

/// Length of the first complete RESP2 value in `buf`, if it holds one.
fn frame(buf: &[u8]) -> Option<usize> {
    let line = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let n = || {
        std::str::from_utf8(&buf[1..line - 2])
            .ok()?
            .parse::<i64>()
            .ok()
    };
    match buf.first()? {
        b'+' | b'-' | b':' => Some(line),
        b'$' => {
            let len = n()?;
            if len < 0 {
                return Some(line);
            }
            let end = line + len as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let mut at = line;
            for _ in 0..n()?.max(0) {
                at += frame(&buf[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// The first bulk string of a request (its command name), upper-cased.
fn command_name(request: &[u8]) -> String {
    let line = request.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
    let rest = &request[line.min(request.len())..];
    let Some(len_end) = rest.windows(2).position(|w| w == b"\r\n") else {
        return String::new();
    };
    let len: usize = std::str::from_utf8(&rest[1..len_end])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let start = len_end + 2;
    String::from_utf8_lossy(&rest[start..(start + len).min(rest.len())]).to_uppercase()
}

/// `TIME`'s answer moved by `offset_ms`.
fn skewed_time(reply: &[u8], offset_ms: i64) -> Vec<u8> {
    let text = String::from_utf8_lossy(reply);
    let parts: Vec<i64> = text
        .split("\r\n")
        .filter(|p| !p.is_empty() && !p.starts_with(['*', '$']))
        .filter_map(|p| p.parse().ok())
        .collect();
    let micros = parts[0] * 1_000_000 + parts[1] + offset_ms * 1000;
    let (s, us) = (micros / 1_000_000, micros % 1_000_000);
    let (s, us) = (s.to_string(), us.to_string());
    format!("*2\r\n${}\r\n{s}\r\n${}\r\n{us}\r\n", s.len(), us.len()).into_bytes()
}

/// Forwards frames from `from` to `to`; requests push whether they are `TIME`, replies pop it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    pending: Arc<Mutex<VecDeque<bool>>>,
    requests: bool,
    offset_ms: i64,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let Ok(n) = from.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(len) = frame(&buf) {
            let f: Vec<u8> = buf.drain(..len).collect();
            if requests {
                pending
                    .lock()
                    .unwrap()
                    .push_back(command_name(&f) == "TIME");
                out.extend(f);
            } else if pending.lock().unwrap().pop_front() == Some(true) {
                out.extend(skewed_time(&f, offset_ms));
            } else {
                out.extend(f);
            }
        }
        if to.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A proxy to `upstream` whose `TIME` is `offset_ms` off; answers its own port.
async fn skewed_proxy(upstream: u16, offset_ms: i64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let pending = Arc::new(Mutex::new(VecDeque::new()));
            tokio::spawn(pump(cr, sw, pending.clone(), true, offset_ms));
            tokio::spawn(pump(sr, cw, pending, false, offset_ms));
        }
    });
    port
}

#[test]
fn the_proxy_frames_and_skews() {
    assert_eq!(frame(b"+OK\r\n"), Some(5));
    assert_eq!(frame(b"$3\r\nabc\r\n:1\r\n"), Some(9));
    assert_eq!(frame(b"*2\r\n$1\r\na\r\n$-1\r\n"), Some(16));
    assert_eq!(frame(b"*2\r\n$1\r\na\r\n"), None);
    assert_eq!(command_name(b"*1\r\n$4\r\ntime\r\n"), "TIME");
    let r = skewed_time(b"*2\r\n$10\r\n1700000000\r\n$6\r\n500000\r\n", -600_000);
    assert_eq!(r, b"*2\r\n$10\r\n1699999400\r\n$6\r\n500000\r\n");
}

/// taskpulse's clock 10 minutes ahead of Redis's: what is due and overdue follows Redis.
#[tokio::test]
async fn due_and_overdue_follow_redis_clock_not_taskpulses() {
    const SKEW_MS: i64 = 600_000;
    let port = free_port();
    let Some(_server) = RedisServer::start(port) else {
        return;
    };
    let mut c = connect_when_up(&format!("redis://127.0.0.1:{port}")).await;
    let proxy = skewed_proxy(port, -SKEW_MS).await;
    // Conductor's clock agrees with its Redis: 10 minutes behind taskpulse's
    let redis_now = now_ms() - SKEW_MS;
    for (id, due) in [("late", redis_now - 120_000), ("soon", redis_now + 30_000)] {
        c.write_task(&task_model(id, "WAIT", "IN_PROGRESS", redis_now))
            .await;
        c.push("WAIT", id, due as f64).await;
    }
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&format!("redis://127.0.0.1:{proxy}/0"), &db).await;
    eventually(&app, "soon", "read", |v| v["status"] == "IN_PROGRESS").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = app.scrape().await;
        let v = |name: &str, labels: &[(&str, &str)]| metric_value(&scrape, name, labels);
        let media = [("workflow_type", "media")];
        let seen = (
            v("taskpulse_wait_tasks", &media),
            v("taskpulse_wait_overdue_tasks", &media),
            v("taskpulse_wait_due_next_minute_tasks", &media),
            v("taskpulse_conductor_queue_due", &[("queue", "WAIT")]),
        );
        if seen.0 == Some(2.0) {
            assert_eq!(
                (seen.1, seen.2, seen.3),
                (Some(1.0), Some(1.0), Some(1.0)),
                "one overdue, one due within the minute, one due now: on Redis's clock"
            );
            let oldest = v("taskpulse_wait_oldest_overdue_seconds", &[]).unwrap();
            assert!((115.0..130.0).contains(&oldest), "{oldest}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.shutdown().await;
}
