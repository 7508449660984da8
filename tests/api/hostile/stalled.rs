//! Engine stores that stop answering (issue 23 items 2 and 5), against the real binary: the
//! network path to the engine's PostgreSQL frozen mid-session (sockets open, no byte moves, so
//! the server's `statement_timeout` cannot help), or cut. Every poll has a client-side
//! deadline, `/readyz` answers 503 naming the source once a poll is overdue (15 s) or failing,
//! and SIGTERM ends the process within the usual bound whatever the readers are doing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::conductor_db::Conductor;
use crate::kestra::Kestra;
use crate::process::Server;

/// A TCP path to `target` that can be frozen (bytes held, sockets open) or cut (every
/// connection closed, new ones refused).
struct Path {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Path {
    async fn to(target: &'static str) -> Path {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let f = frozen.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                conns.spawn(pump(cr, sw, f.clone()));
                conns.spawn(pump(sr, cw, f.clone()));
            }
        });
        Path {
            addr,
            frozen,
            tasks,
        }
    }

    /// `url` (postgres://user@host:port/db) through this path.
    fn carry(&self, url: &str) -> String {
        let at = url.find('@').unwrap() + 1;
        let slash = at + url[at..].find('/').unwrap();
        format!("{}{}{}", &url[..at], self.addr, &url[slash..])
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Every connection closed and the listener gone: the database is unreachable.
    fn cut(&mut self) {
        self.tasks.abort_all();
    }
}

/// Copies bytes one way, holding them while the path is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `/readyz` until it answers 503 with a body naming `flag`, within `limit`; the body.
async fn unready_naming(server: &Server, flag: &str, limit: Duration) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let resp = client.get(server.url("/readyz")).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        if status == 503 && body.contains(flag) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {status} ({body}) {limit:?} after the engine's database stopped answering"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ready(server: &Server) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client
        .get(server.url("/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the binary reading `engine_url` through a path, with `flag` naming it.
async fn serve_through(
    dir: &std::path::Path,
    path: &Path,
    flag: &str,
    poll: &str,
    engine_url: &str,
) -> Server {
    let db = format!("sqlite://{}?mode=rwc", dir.join("tp.db").display());
    let url = path.carry(engine_url);
    let server = Server::start(dir, &["--database", &db, flag, &url, poll, "200ms"], &[]).await;
    ready(&server).await;
    server
}

/// The reader's query is made to wait on a lock of `table`, the path is frozen while it waits,
/// and the lock released: the server's answer (rows, or the `statement_timeout` error) never
/// arrives.
async fn frozen_path_makes_readyz_fail_and_sigterm_still_ends(
    flag: &str,
    poll: &str,
    url: &str,
    table: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = Path::to("127.0.0.1:5432").await;
    let server = serve_through(dir.path(), &path, flag, poll, url).await;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *lock)
        .await
        .unwrap();
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query ILIKE '%{table}%' AND pid <> pg_backend_pid()"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(&waiting)
        .fetch_one(&pool)
        .await
        .unwrap()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no read waits on the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    path.freeze();
    lock.commit().await.unwrap();
    let body = unready_naming(&server, flag, Duration::from_secs(25)).await;
    assert!(body.contains("read"), "{body}");
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{status}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_conductor_database_makes_readyz_fail_and_sigterm_still_ends() {
    let conductor = Conductor::new().await;
    frozen_path_makes_readyz_fail_and_sigterm_still_ends(
        "--conductor-db",
        "--conductor-poll-interval",
        &conductor.url,
        "task",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_kestra_database_makes_readyz_fail_and_sigterm_still_ends() {
    let kestra = Kestra::new().await;
    frozen_path_makes_readyz_fail_and_sigterm_still_ends(
        "--kestra-db",
        "--kestra-poll-interval",
        &kestra.url,
        "executions",
    )
    .await;
}

/// Issue 23 item 5: the task table's reader has a readiness check of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_conductor_database_makes_readyz_fail() {
    let conductor = Conductor::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut path = Path::to("127.0.0.1:5432").await;
    let server = serve_through(
        dir.path(),
        &path,
        "--conductor-db",
        "--conductor-poll-interval",
        &conductor.url,
    )
    .await;
    path.cut();
    let body = unready_naming(&server, "--conductor-db", Duration::from_secs(10)).await;
    assert!(body.contains("Conductor's task table"), "{body}");
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{status}\n{stderr}");
}
