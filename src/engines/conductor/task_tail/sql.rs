//! The statements the task tail runs on Conductor's `task` table.
//!
//! Times: `modified_on` is a `TIMESTAMP` without zone holding the writing session's wall
//! time (`docs/engines/conductor-redis.md` §7). Where it is compared or paged on, it stays a
//! wall time, carried as exact integer microseconds ("wall µs": the wall clock's reading as if
//! it were UTC), so a keyset restarts exactly after its last row, never before or past it;
//! where it becomes an instant (the lag), it is read `AT TIME ZONE` the configured zone.
//! Every statement binds the zone as a parameter: no zone name is ever spliced into SQL.

/// `modified_on` as wall µs: whole seconds and the microseconds apart, so no float rounds it.
macro_rules! wall_us_sql {
    () => {
        "(EXTRACT(EPOCH FROM date_trunc('second', modified_on))::int8 * 1000000 \
          + EXTRACT(MICROSECONDS FROM modified_on)::int8 % 1000000)"
    };
}
pub(super) use wall_us_sql as wall_us;

/// Rows changed after the keyset `($1` wall µs, `$2` task id`)`, in keyset order, at most
/// `$3`: id, document size, wall µs. The size (`octet_length` reads the stored size, without
/// decompressing the document).
pub const LIST_CHANGED: &str = concat!(
    "SELECT task_id::text, octet_length(json_data)::int8, ",
    wall_us!(),
    " FROM task \
     WHERE (modified_on, task_id) > \
           (TIMESTAMP 'epoch' + ($1::int8 / 1000000) * INTERVAL '1 second' \
                              + ($1::int8 % 1000000) * INTERVAL '1 microsecond', $2) \
     ORDER BY modified_on, task_id LIMIT $3"
);

/// The database's clock as wall µs in zone `$1`: where Conductor's newest writes are.
pub const NOW_WALL: &str = "\
    SELECT (EXTRACT(EPOCH FROM date_trunc('second', n))::int8 * 1000000 \
            + EXTRACT(MICROSECONDS FROM n)::int8 % 1000000) \
    FROM (SELECT statement_timestamp() AT TIME ZONE $1 AS n) AS now";

/// These rows (`$1` ids): id, document (NULL when now past `$3` bytes), wall µs,
/// `modified_on` as an instant in zone `$2` (epoch ms), and the database's clock (epoch ms).
pub const FETCH: &str = concat!(
    "SELECT task_id::text, CASE WHEN octet_length(json_data) <= $3 THEN json_data END, ",
    wall_us!(),
    ", (EXTRACT(EPOCH FROM (modified_on AT TIME ZONE $2)) * 1000)::int8, \
       (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8 \
     FROM task WHERE task_id = ANY($1)"
);

/// One oversized row (`$1`): what [`super::update_from_row`] reads of it, picked out by the
/// database so the document itself never crosses the wire; the rest as [`FETCH`].
pub const FETCH_SMALL: &str = concat!(
    "SELECT task_id::text, jsonb_strip_nulls(jsonb_build_object( \
        'taskId', j->'taskId', 'workflowInstanceId', j->'workflowInstanceId', \
        'taskType', j->'taskType', 'taskDefName', j->'taskDefName', \
        'workflowType', j->'workflowType', 'referenceTaskName', j->'referenceTaskName', \
        'seq', j->'seq', 'iteration', j->'iteration', 'retryCount', j->'retryCount', \
        'status', j->'status', 'workerId', j->'workerId', 'startTime', j->'startTime', \
        'updateTime', j->'updateTime', 'endTime', j->'endTime', \
        'scheduledTime', j->'scheduledTime', \
        'responseTimeoutSeconds', j->'responseTimeoutSeconds', \
        'waitTimeout', j->'waitTimeout', 'parentTaskId', j->'parentTaskId', \
        'outputData', jsonb_build_object('progress', j->'outputData'->'progress')))::text, ",
    wall_us!(),
    ", (EXTRACT(EPOCH FROM (modified_on AT TIME ZONE $2)) * 1000)::int8, \
       (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8 \
     FROM (SELECT task_id, modified_on, json_data::jsonb AS j FROM task WHERE task_id = $1) AS t"
);

/// The end of the next range of [`super::SCAN_PAGE`] ids after `$1` (none: the rest is
/// shorter), read from the primary key's index alone.
pub const PAGE_END: &str =
    "SELECT task_id::text FROM task WHERE task_id > $1 ORDER BY task_id OFFSET $2 LIMIT 1";

/// The in-flight candidates in one range of ids, with their sizes. The text match is a cheap
/// filter (whatever the JSON's spacing), run by the database; the parsed status decides.
pub const IN_FLIGHT_RANGE: &str = "\
    SELECT task_id::text, octet_length(json_data)::int8, \
           (EXTRACT(EPOCH FROM date_trunc('second', modified_on))::int8 * 1000000 \
            + EXTRACT(MICROSECONDS FROM modified_on)::int8 % 1000000) FROM task \
    WHERE task_id > $1 AND ($2::text IS NULL OR task_id <= $2) \
      AND json_data ~ '\"status\"\\s*:\\s*\"(IN_PROGRESS|SCHEDULED)\"'";
