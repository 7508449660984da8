//! Reading task rows bounded in bytes as well as rows: a fetch holds at most [`FETCH_BATCH`]
//! documents and at most [`FETCH_BYTES`] of them, and a document past [`MAX_DOCUMENT_BYTES`]
//! never crosses the wire whole: the database picks out the fields a transition needs
//! (`sql::FETCH_SMALL`), the update notes `json_data` as dropped
//! (`taskpulse_engine_fields_adjusted_total`), the row is counted in
//! `taskpulse_conductor_db_documents_skipped_total{reason="too_large"}` and logged once per
//! task. Conductor keeps documents up to its external-payload threshold in the row (3 MB by
//! default, `docs/engines/conductor-redis.md` §7), so without this a batch of 2,000 rows could
//! hold about 6 GB.

use sqlx::Row;

use super::{sql, update_from_row, TaskTail, FETCH_BATCH};
use crate::engines::conductor::task_tail::sql::wall_us;
use crate::error::Result;
use crate::ingest::{Adjusted, Adjustment, TaskUpdate};

/// Bytes of documents one fetch holds at most (one document alone may reach
/// [`MAX_DOCUMENT_BYTES`], which is below this).
pub const FETCH_BYTES: i64 = 32 << 20;
/// A document larger than this is not loaded; its transition is read by the database.
pub const MAX_DOCUMENT_BYTES: i64 = 16 << 20;

/// Sizes of these rows' documents (for ids listed without one).
const SIZES: &str = concat!(
    "SELECT task_id::text, octet_length(json_data)::int8, ",
    wall_us!(),
    " FROM task WHERE task_id = ANY($1)"
);

/// A row listed for reading: id, document size, `modified_on` wall µs.
pub type Listed = (String, i64, i64);

/// Splits listed rows into fetches of at most [`FETCH_BATCH`] rows and [`FETCH_BYTES`]
/// bytes (a batch is never empty), and the rows past [`MAX_DOCUMENT_BYTES`] (id, wall µs).
pub fn plan_batches(listed: &[Listed]) -> (Vec<Vec<String>>, Vec<(String, i64)>) {
    let (mut batches, mut large) = (Vec::new(), Vec::new());
    let (mut batch, mut bytes) = (Vec::new(), 0i64);
    for (id, size, wall) in listed {
        if *size > MAX_DOCUMENT_BYTES {
            large.push((id.clone(), *wall));
            continue;
        }
        if !batch.is_empty() && (batch.len() >= FETCH_BATCH || bytes + size > FETCH_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size.max(&0);
        batch.push(id.clone());
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, large)
}

/// One row as fetched: id, document (`None`: grown past the limit since it was listed),
/// `modified_on` wall µs.
type Fetched = (String, Option<String>, i64);

impl TaskTail {
    /// Reads these rows and submits, batch by batch, the updates `keep` takes that say
    /// something new.
    pub(super) async fn read_rows(
        &mut self,
        listed: &[Listed],
        keep: impl Fn(&TaskUpdate) -> bool,
    ) -> Result<usize> {
        let mut n = 0;
        let (batches, mut large) = plan_batches(listed);
        for ids in batches {
            let mut updates = Vec::new();
            for (id, json, wall) in self.fetch(&ids).await? {
                match json {
                    Some(json) => self.take_row(&id, &json, wall, false, &keep, &mut updates),
                    None => large.push((id, wall)),
                }
            }
            n += self.submit(updates).await;
        }
        for (id, listed_wall) in large {
            let mut updates = Vec::new();
            if let Some((id, json, wall)) = self.fetch_small(&id, listed_wall).await? {
                self.take_row(&id, &json, wall, true, &keep, &mut updates);
            }
            n += self.submit(updates).await;
        }
        Ok(n)
    }

    /// These rows (by id) as listed, in chunks of [`FETCH_BATCH`].
    pub(super) async fn sized(&self, ids: &[String]) -> Result<Vec<Listed>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(FETCH_BATCH) {
            let rows: Vec<Listed> = sqlx::query_as(SIZES)
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    fn take_row(
        &mut self,
        id: &str,
        json: &str,
        wall: i64,
        cut: bool,
        keep: &impl Fn(&TaskUpdate) -> bool,
        updates: &mut Vec<TaskUpdate>,
    ) {
        self.read_at.insert(id.to_string(), wall);
        let Some(mut u) = update_from_row(id, json) else {
            return;
        };
        if cut {
            u.adjusted.push(Adjusted {
                field: "json_data",
                action: Adjustment::Dropped,
            });
        }
        if keep(&u) && self.note(&u, wall) {
            updates.push(u);
        }
    }

    /// These rows; observes each row's lag (`modified_on` in the zone to the database's clock).
    async fn fetch(&self, ids: &[String]) -> Result<Vec<Fetched>> {
        let rows = sqlx::query(sql::FETCH)
            .bind(ids)
            .bind(&self.zone)
            .bind(MAX_DOCUMENT_BYTES)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                self.observe_lag(r.try_get(3)?, r.try_get(4)?);
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
            })
            .collect()
    }

    fn observe_lag(&self, modified_ms: i64, now_ms: i64) {
        self.metrics
            .lag_seconds
            .observe((now_ms - modified_ms).max(0) as f64 / 1000.0);
    }

    /// An oversized row's small fields, read by the database. A document the database can't
    /// read as JSON is left out (counted `unreadable`, and not read again until it changes);
    /// any other failure fails the poll, to be retried.
    async fn fetch_small(
        &mut self,
        id: &str,
        listed_wall: i64,
    ) -> Result<Option<(String, String, i64)>> {
        let row = match sqlx::query(sql::FETCH_SMALL)
            .bind(id)
            .bind(&self.zone)
            .fetch_optional(&self.pool)
            .await
        {
            Ok(r) => r,
            Err(sqlx::Error::Database(e)) => {
                self.skipped(id, "unreadable", &e.to_string());
                self.read_at.insert(id.to_string(), listed_wall);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(r) = row else { return Ok(None) };
        self.observe_lag(r.try_get(3)?, r.try_get(4)?);
        self.skipped(id, "too_large", "");
        Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
    }

    fn skipped(&mut self, id: &str, reason: &'static str, error: &str) {
        self.skips.skipped.with_label_values(&[reason]).inc();
        if self.logged_large.insert(id.to_string()) {
            tracing::warn!(
                task_id = id,
                reason,
                error,
                limit_bytes = MAX_DOCUMENT_BYTES,
                "conductor task table: a json_data past the size limit was not loaded; the transition was taken from its small fields, read by the database (counted in taskpulse_conductor_db_documents_skipped_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(sizes: &[i64]) -> Vec<Listed> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("t{i}"), *s, 7))
            .collect()
    }

    #[test]
    fn batches_are_bounded_in_rows_and_bytes() {
        let mb = 1 << 20;
        let (b, large) = plan_batches(&listed(&[10 * mb, 10 * mb, 10 * mb, 10 * mb, 1]));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 2]);
        assert!(large.is_empty());
        let (b, large) = plan_batches(&listed(&[16 * mb + 1, 16 * mb, 16 * mb, 1]));
        assert_eq!(large, vec![("t0".to_string(), 7)]);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
        let many = listed(&vec![100; FETCH_BATCH * 2 + 1]);
        let (b, _) = plan_batches(&many);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![FETCH_BATCH, FETCH_BATCH, 1]
        );
        assert_eq!(plan_batches(&[]).0.len(), 0);
    }
}
