//! The accept loop: `axum::serve` without its blind spots for slow clients.
//!
//! `axum::serve` offers neither a header-read timeout nor a cap on connections, so a slowloris
//! client (opening connections and sending a request head byte by byte, or nothing at all) could
//! hold an unbounded number of sockets and tasks. Here every connection:
//!
//! - holds one of `--max-connections` permits; at the cap the loop stops accepting, so further
//!   clients wait in the kernel's listen backlog (and are served as permits free up) instead of
//!   taking memory and file descriptors;
//! - is closed by hyper when a request head (including the first one, and the next one on an
//!   idle keep-alive connection) has not fully arrived within `--header-read-timeout`.
//!
//! - has its response writes bounded by `--send-timeout`: a client that stops reading (its
//!   socket buffer full) for that long loses its connection, and with it the permit it holds,
//!   so clients that pipeline requests and never read the answers can't keep others out or
//!   hold up a shutdown.
//!
//! The body deadline (`--body-read-timeout`) is a router layer, see [`super::body`].
//!
//! When `stop` is cancelled the listener closes and every connection finishes the request it is
//! serving and closes (idle ones at once); [`Connections::closed`] tells when all have.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;

/// What one client may hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
}

/// The connections still open after the listener closed.
pub struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Connections {
    /// Resolves once every connection has closed.
    pub async fn closed(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.permits.acquire_many(all).await;
    }
}

/// Serves `router` on `listener` until `stop` is cancelled; then asks every connection to close
/// once its current request is answered, and returns.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    stop: CancellationToken,
) -> Connections {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin, as
                    // axum::serve does.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.send_timeout));
        let service = TowerToHyperService::new(router.clone());
        let mut close = close_rx.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(Box::pin(stream)), service);
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                }
                _ = close.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = close_tx.send(());
    Connections {
        permits,
        max: limits.max_connections,
    }
}
