//! The commands the reader sends, each bounded, and what it does with a malformed key.
//!
//! - **Paging.** No command returns a whole large collection: keys come by `SCAN` steps, set and
//!   sorted-set members by `SSCAN`/`ZSCAN` (`COUNT` [`PAGE`]), documents by `MGET` of at most
//!   [`PAGE`] keys and [`CHUNK_BYTES`] (their sizes asked first with `STRLEN`). A collection
//!   read stops at [`MAX_MEMBERS`] members or [`MAX_COLLECTION_BYTES`] bytes (logged, and the
//!   caller told it is partial).
//! - **Malformed keys.** A key of the wrong type (`WRONGTYPE`), a key, member or document
//!   that is not UTF-8, or a document over [`MAX_DOC_BYTES`] is skipped and counted in
//!   `taskpulse_conductor_redis_skipped_total{reason}`, named in the log once; the rest of the
//!   poll goes on. A document that is not UTF-8 is still read (its invalid bytes replaced): a
//!   bad byte in an output never costs the task's transition.
//! - **Cost.** Every command sent (each one of a pipeline too) counts in
//!   `taskpulse_conductor_redis_commands_total`.

use std::collections::HashSet;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo, RedisResult};

use crate::error::{Error, Result};

/// `COUNT` of `SCAN`/`SSCAN`/`ZSCAN`, and keys per `MGET` or pipeline.
pub const PAGE: usize = 1000;
/// Members (or keys) of one collection read in one poll, at most.
pub const MAX_MEMBERS: usize = 1_000_000;
/// Bytes of members (or keys) of one collection read in one poll, at most.
pub const MAX_COLLECTION_BYTES: usize = 64 << 20;
/// A task document larger than this is skipped and counted (`reason="oversized"`).
pub const MAX_DOC_BYTES: usize = 64 << 20;
/// Bytes of documents asked for in one `MGET` (a single larger document goes alone).
pub const CHUNK_BYTES: usize = 16 << 20;
/// A command that takes longer than this fails the read (retried with backoff).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bad keys remembered so each is logged and counted once; past this, each is again.
const REMEMBERED_BAD: usize = 10_000;

/// Why a key, member or document was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    WrongType,
    NotUtf8,
    Oversized,
}

impl Skip {
    const ALL: [Skip; 3] = [Skip::WrongType, Skip::NotUtf8, Skip::Oversized];

    fn label(self) -> &'static str {
        match self {
            Skip::WrongType => "wrong_type",
            Skip::NotUtf8 => "not_utf8",
            Skip::Oversized => "oversized",
        }
    }
}

/// The reader's own metrics, declared at start so they are in the first scrape.
#[derive(Clone, Debug)]
pub struct RedisMetrics {
    skipped: IntCounterVec,
    commands: IntCounter,
    poll_commands: IntGauge,
}

impl RedisMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<RedisMetrics> {
        let skipped = IntCounterVec::new(
            Opts::new(
                "taskpulse_conductor_redis_skipped_total",
                "Keys, members or documents of Conductor's Redis skipped by the reader, by reason (wrong_type, not_utf8, oversized); each is named once in the log.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        for r in Skip::ALL {
            skipped.with_label_values(&[r.label()]);
        }
        let commands = IntCounter::new(
            "taskpulse_conductor_redis_commands_total",
            "Commands sent to Conductor's Redis by the reader (each command of a pipeline counts).",
        )?;
        registry.register(Box::new(commands.clone()))?;
        let poll_commands = IntGauge::new(
            "taskpulse_conductor_redis_poll_commands",
            "Commands the last complete poll of Conductor's Redis sent (bounded by the work in flight, plus a keyspace walk on re-discovery).",
        )?;
        registry.register(Box::new(poll_commands.clone()))?;
        Ok(RedisMetrics {
            skipped,
            commands,
            poll_commands,
        })
    }
}

/// A connection to Conductor's Redis that reconnects on its own. `password`: from
/// `--conductor-redis-password-file`.
pub async fn connect(url: &str, password: Option<&str>) -> Result<ConnectionManager> {
    if !url.starts_with("redis://") {
        return Err(Error::Config(
            "--conductor-redis: expected a redis://HOST:PORT[/DB] URL (TLS, Sentinel and Cluster are not supported)".into(),
        ));
    }
    let mut info = url
        .into_connection_info()
        .map_err(|e| Error::Config(format!("--conductor-redis: {e}")))?;
    if let Some(pw) = password {
        let redis = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(redis);
    }
    let client = redis::Client::open(info).map_err(redis_error)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(redis_error)
}

pub fn redis_error(e: redis::RedisError) -> Error {
    Error::Engine(format!("Conductor's Redis: {e}"))
}

fn wrong_type(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

/// A collection as read: its members, and whether a bound cut it short.
pub struct Collection<T> {
    pub members: Vec<T>,
    pub partial: bool,
}

/// The connection, the metrics, and the bad keys already named.
pub struct Io {
    con: ConnectionManager,
    metrics: RedisMetrics,
    named: HashSet<Vec<u8>>,
    /// Commands sent since the poll began.
    sent: u64,
}

impl Io {
    pub fn new(con: ConnectionManager, metrics: RedisMetrics) -> Io {
        Io {
            con,
            metrics,
            named: HashSet::new(),
            sent: 0,
        }
    }

    pub fn begin_poll(&mut self) {
        self.sent = 0;
    }

    /// The poll completed: its command count goes to the gauge.
    pub fn end_poll(&mut self) {
        self.metrics.poll_commands.set(self.sent as i64);
    }

    /// Counts and logs (once per key) a skipped key, member or document.
    pub fn skip(&mut self, reason: Skip, key: &[u8], detail: &str) {
        if self.named.contains(key) {
            return;
        }
        if self.named.len() < REMEMBERED_BAD {
            self.named.insert(key.to_vec());
        }
        self.metrics
            .skipped
            .with_label_values(&[reason.label()])
            .inc();
        tracing::warn!(
            key = %String::from_utf8_lossy(key),
            reason = reason.label(),
            detail,
            "Conductor's Redis: skipped a malformed key (counted in taskpulse_conductor_redis_skipped_total)"
        );
    }

    async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        self.metrics.commands.inc();
        self.sent += 1;
        cmd.query_async(&mut self.con).await
    }

    /// Each command's own result (a wrong-type key fails its command, not the pipeline).
    async fn pipe<T: FromRedisValue>(
        &mut self,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<RedisResult<T>>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.metrics.commands.inc_by(cmds.len() as u64);
        self.sent += cmds.len() as u64;
        let mut p = redis::pipe();
        for c in cmds {
            p.add_command(c);
        }
        p.ignore_errors()
            .query_async(&mut self.con)
            .await
            .map_err(redis_error)
    }

    /// The server's clock (`TIME`), in epoch milliseconds.
    pub async fn time_ms(&mut self) -> Result<i64> {
        let (secs, micros): (i64, i64) =
            self.query(&redis::cmd("TIME")).await.map_err(redis_error)?;
        Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
    }

    /// One `SCAN MATCH` step from `cursor`: the next cursor and the UTF-8 keys.
    pub async fn scan_step(&mut self, pattern: &str, cursor: u64) -> Result<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(PAGE);
        let (next, keys): (u64, Vec<Vec<u8>>) = self.query(&cmd).await.map_err(redis_error)?;
        let page = Collection {
            members: keys,
            partial: false,
        };
        Ok((next, self.utf8(page, |k| k).members))
    }

    /// Every member of a set (`SSCAN`); `None` when the key is not a set (skipped, counted).
    pub async fn members(&mut self, key: &str) -> Result<Option<Collection<String>>> {
        let raw = self
            .cursor(key.as_bytes(), |c| {
                let mut cmd = redis::cmd("SSCAN");
                cmd.arg(key).arg(c).arg("COUNT").arg(PAGE);
                cmd
            })
            .await?;
        Ok(raw.map(|r| self.utf8(r, |m| m)))
    }

    /// The first page of each of these sets, in one pipeline: `(cursor, members)` per key,
    /// `None` for a key that is not a set (skipped, counted). A cursor other than 0 means the
    /// set is larger than a page: read it whole with [`Io::members`].
    pub async fn first_pages(
        &mut self,
        keys: &[String],
    ) -> Result<Vec<Option<(u64, Vec<String>)>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let cmds = chunk
                .iter()
                .map(|k| {
                    let mut cmd = redis::cmd("SSCAN");
                    cmd.arg(k).arg(0).arg("COUNT").arg(PAGE);
                    cmd
                })
                .collect();
            let answers: Vec<RedisResult<(u64, Vec<Vec<u8>>)>> = self.pipe(cmds).await?;
            for (key, answer) in chunk.iter().zip(answers) {
                match answer {
                    Ok((next, items)) => {
                        let page = Collection {
                            members: items,
                            partial: false,
                        };
                        out.push(Some((next, self.utf8(page, |m| m).members)));
                    }
                    Err(e) if wrong_type(&e) => {
                        self.skip(Skip::WrongType, key.as_bytes(), "not a set");
                        out.push(None);
                    }
                    Err(e) => return Err(redis_error(e)),
                }
            }
        }
        Ok(out)
    }

    /// Every member of a sorted set with its score (`ZSCAN`, which returns every member
    /// present for the whole walk, unlike `ZRANGE` pages that shift as members leave); `None`
    /// when the key is not a sorted set (skipped, counted).
    pub async fn scored(&mut self, key: &str) -> Result<Option<Collection<(String, f64)>>> {
        let Some(raw) = self
            .cursor(key.as_bytes(), |c| {
                let mut cmd = redis::cmd("ZSCAN");
                cmd.arg(key).arg(c).arg("COUNT").arg(PAGE);
                cmd
            })
            .await?
        else {
            return Ok(None);
        };
        let mut members = Vec::with_capacity(raw.members.len() / 2);
        let mut seen = HashSet::with_capacity(raw.members.len() / 2);
        let mut items = raw.members.into_iter();
        while let (Some(m), Some(s)) = (items.next(), items.next()) {
            let score = std::str::from_utf8(&s)
                .ok()
                .and_then(|s| s.parse::<f64>().ok());
            match (String::from_utf8(m), score) {
                (Ok(m), Some(score)) => {
                    // ZSCAN may return a member twice (the set was rehashed meanwhile)
                    if seen.insert(m.clone()) {
                        members.push((m, score));
                    }
                }
                (Err(e), _) => self.skip(Skip::NotUtf8, e.as_bytes(), "a member of the WAIT queue"),
                (Ok(m), None) => self.skip(Skip::NotUtf8, m.as_bytes(), "a score"),
            }
        }
        Ok(Some(Collection {
            members,
            partial: raw.partial,
        }))
    }

    /// Runs a cursor command from cursor 0 until Redis answers 0, or a bound is reached.
    /// `None` when the key is of the wrong type (skipped, counted).
    async fn cursor(
        &mut self,
        key: &[u8],
        step: impl Fn(u64) -> redis::Cmd,
    ) -> Result<Option<Collection<Vec<u8>>>> {
        let mut cursor = 0u64;
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        loop {
            let (next, items): (u64, Vec<Vec<u8>>) = match self.query(&step(cursor)).await {
                Ok(v) => v,
                Err(e) if wrong_type(&e) => {
                    self.skip(Skip::WrongType, key, "not of the type Conductor writes");
                    return Ok(None);
                }
                Err(e) => return Err(redis_error(e)),
            };
            bytes += items.iter().map(Vec::len).sum::<usize>();
            out.extend(items);
            if next == 0 {
                return Ok(Some(Collection {
                    members: out,
                    partial: false,
                }));
            }
            if out.len() >= MAX_MEMBERS || bytes >= MAX_COLLECTION_BYTES {
                tracing::warn!(
                    key = %String::from_utf8_lossy(key),
                    members = out.len(),
                    bytes,
                    "Conductor's Redis: a collection past the per-poll bound; read in part"
                );
                return Ok(Some(Collection {
                    members: out,
                    partial: true,
                }));
            }
            cursor = next;
        }
    }

    /// UTF-8 items only; the others skipped and counted.
    fn utf8<T>(&mut self, raw: Collection<Vec<u8>>, f: impl Fn(String) -> T) -> Collection<T> {
        let mut members = Vec::with_capacity(raw.members.len());
        for item in raw.members {
            match String::from_utf8(item) {
                Ok(s) => members.push(f(s)),
                Err(e) => self.skip(Skip::NotUtf8, e.as_bytes(), "not UTF-8"),
            }
        }
        Collection {
            members,
            partial: raw.partial,
        }
    }

    /// The documents at these keys, `None` where there is none (or not a string). Sizes first
    /// (`STRLEN`, pipelined), then `MGET` in chunks of at most [`PAGE`] keys and
    /// [`CHUNK_BYTES`]; a document over [`MAX_DOC_BYTES`] is skipped and counted.
    pub async fn documents(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        let mut sizes = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let cmds = chunk
                .iter()
                .map(|k| {
                    let mut cmd = redis::cmd("STRLEN");
                    cmd.arg(k);
                    cmd
                })
                .collect();
            let answers: Vec<RedisResult<usize>> = self.pipe(cmds).await?;
            for (key, answer) in chunk.iter().zip(answers) {
                sizes.push(match answer {
                    Ok(n) => n,
                    Err(e) if wrong_type(&e) => {
                        self.skip(Skip::WrongType, key.as_bytes(), "not a string");
                        0
                    }
                    Err(e) => return Err(redis_error(e)),
                });
            }
        }
        let mut out: Vec<Option<String>> = vec![None; keys.len()];
        let mut batch: Vec<usize> = Vec::new();
        let mut batch_bytes = 0usize;
        for (i, size) in sizes.iter().copied().enumerate() {
            if size == 0 {
                continue;
            }
            if size > MAX_DOC_BYTES {
                self.skip(
                    Skip::Oversized,
                    keys[i].as_bytes(),
                    "a task document over 64 MiB",
                );
                continue;
            }
            if !batch.is_empty() && (batch.len() >= PAGE || batch_bytes + size > CHUNK_BYTES) {
                self.mget(keys, &std::mem::take(&mut batch), &mut out)
                    .await?;
                batch_bytes = 0;
            }
            batch.push(i);
            batch_bytes += size;
        }
        self.mget(keys, &batch, &mut out).await?;
        Ok(out)
    }

    async fn mget(
        &mut self,
        keys: &[String],
        which: &[usize],
        out: &mut [Option<String>],
    ) -> Result<()> {
        if which.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("MGET");
        for i in which {
            cmd.arg(&keys[*i]);
        }
        let docs: Vec<Option<Vec<u8>>> = self.query(&cmd).await.map_err(redis_error)?;
        for (i, doc) in which.iter().zip(docs) {
            out[*i] = doc.map(|d| match String::from_utf8(d) {
                Ok(s) => s,
                Err(e) => {
                    self.skip(
                        Skip::NotUtf8,
                        keys[*i].as_bytes(),
                        "a document not UTF-8 (read with its bad bytes replaced)",
                    );
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                }
            });
        }
        Ok(())
    }

    /// `ZCARD` and `ZCOUNT 0 now` of each queue, pipelined: `None` for a key that is not a
    /// sorted set (skipped, counted).
    pub async fn depths(&mut self, keys: &[String], now: i64) -> Result<Vec<Option<(i64, i64)>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE / 2) {
            let mut cmds = Vec::with_capacity(chunk.len() * 2);
            for k in chunk {
                let mut card = redis::cmd("ZCARD");
                card.arg(k);
                let mut due = redis::cmd("ZCOUNT");
                due.arg(k).arg(0).arg(now);
                cmds.extend([card, due]);
            }
            let answers: Vec<RedisResult<i64>> = self.pipe(cmds).await?;
            let mut answers = answers.into_iter();
            for key in chunk {
                match (answers.next(), answers.next()) {
                    (Some(Ok(depth)), Some(Ok(due))) => out.push(Some((depth, due))),
                    (Some(Err(e)), _) | (_, Some(Err(e))) if wrong_type(&e) => {
                        self.skip(
                            Skip::WrongType,
                            key.as_bytes(),
                            "a queue that is not a sorted set",
                        );
                        out.push(None);
                    }
                    (Some(Err(e)), _) | (_, Some(Err(e))) => return Err(redis_error(e)),
                    _ => {
                        return Err(Error::Engine(
                            "Conductor's Redis: a short pipeline answer".into(),
                        ))
                    }
                }
            }
        }
        Ok(out)
    }
}
