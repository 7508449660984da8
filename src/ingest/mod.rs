//! Taking updates in: a request body becomes a list of items, each either a validated
//! [`TaskUpdate`] or a rejection naming what was wrong.
//!
//! Bodies are one JSON object, a JSON array of objects, or NDJSON. Each item is parsed on its
//! own, so one bad item never fails the others. Only a body that is not JSON at all (or an
//! NDJSON body none of whose lines parse) is an error for the whole request, reported with the
//! line and column where parsing stopped.

mod engine_row;
mod output;
mod update;

pub use engine_row::fit;
pub use output::OutputProgress;
pub(crate) use update::truncate;
pub use update::{
    Adjusted, Adjustment, AttemptReport, RawAttempt, RawUpdate, Reopen, TaskUpdate, MAX_ID_LEN,
    MAX_LABEL_LEN, MAX_MESSAGE_LEN,
};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::lifecycle::Rejection;

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// `application/x-ndjson` (also `application/ndjson`, `application/jsonl`) means NDJSON;
    /// anything else is parsed as JSON.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        let ct = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        match ct.as_deref() {
            Some(
                "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonl"
                | "application/x-jsonlines",
            ) => Format::Ndjson,
            _ => Format::Json,
        }
    }
}

/// One item of a body: its position, and either the update or why it was rejected.
#[derive(Debug)]
pub struct Item {
    /// Array index, or 0-based line number for NDJSON.
    pub index: usize,
    pub parsed: Result<TaskUpdate, ItemError>,
}

/// A rejected item, with the task id when one could be read.
#[derive(Debug, Clone)]
pub struct ItemError {
    pub task_id: Option<String>,
    pub rejection: Rejection,
}

/// The whole body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body is not valid JSON: {message} at line {line} column {column}")]
pub struct BodyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What was wrong, for callers that answer in their own words (an engine's webhook).
    pub kind: BodyErrorKind,
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyErrorKind {
    /// Not JSON (or not NDJSON), or not UTF-8.
    #[default]
    Syntax,
    /// Nothing but whitespace.
    Empty,
    /// Valid JSON, but a scalar: neither an object nor an array.
    NotAnObject,
    /// One JSON object followed by more (objects one per line sent as JSON).
    Trailing,
}

impl BodyError {
    fn from_json(e: &serde_json::Error, line_offset: usize) -> BodyError {
        BodyError {
            line: e.line() + line_offset,
            column: e.column(),
            message: strip_position(&e.to_string()),
            kind: BodyErrorKind::Syntax,
        }
    }

    /// A body whose first JSON value ends at `end`, followed by more than whitespace.
    fn trailing(body: &[u8], end: usize) -> BodyError {
        let at = end
            + body[end..]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(0);
        let line_start = body[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        BodyError {
            line: 1 + body[..at].iter().filter(|b| **b == b'\n').count(),
            column: at - line_start + 1,
            message: "trailing characters (several objects, one per line? send them with \
                      Content-Type: application/x-ndjson)"
                .into(),
            kind: BodyErrorKind::Trailing,
        }
    }
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Parses a request body into items, all at once (for small bodies: engine answers, tests).
pub fn parse_body(body: &[u8], format: Format) -> Result<Vec<Item>, BodyError> {
    Ok(items(body, format)?.collect())
}

/// The items of a body, each parsed and validated only when it is taken, so a request costs
/// its body, 8 bytes of index per item of a JSON array, and the items the caller holds at a
/// time (the pipeline takes them in chunks), never a copy of every item at once.
///
/// A body that is not JSON at all is an error before the first item: a JSON array is checked
/// whole when it is indexed, and an NDJSON body is an error when none of its lines is JSON
/// (the lines up to the first one that is are looked at up front).
pub fn items(body: &[u8], format: Format) -> Result<Items<'_>, BodyError> {
    let kind = match format {
        Format::Ndjson => {
            let mut lines = NdjsonLines::new(body);
            let mut before = Vec::new();
            loop {
                match lines.next_line() {
                    None => {
                        return Err(lines.first_error.take().unwrap_or(BodyError {
                            line: 1,
                            column: 0,
                            message: "empty body; expected one JSON object per line".into(),
                            kind: BodyErrorKind::Empty,
                        }))
                    }
                    Some((index, Line { json, parsed })) => {
                        before.push(Item { index, parsed });
                        if json {
                            break; // the first line that is JSON: the body is NDJSON
                        }
                    }
                }
            }
            Kind::Ndjson {
                before: before.into_iter(),
                lines,
            }
        }
        Format::Json => Kind::Json(values(body)?),
    };
    Ok(Items { kind })
}

/// The JSON values of a body that is one JSON object or an array of them, each as its text,
/// with its index: what [`items`] parses updates from, and what an adapter with its own item
/// format (a webhook's notifications) reads the same way.
pub fn values(body: &[u8]) -> Result<Values<'_>, BodyError> {
    json_kind(body)
}

/// A body's items as they are taken; see [`items`].
pub struct Items<'a> {
    kind: Kind<'a>,
}

enum Kind<'a> {
    Json(Values<'a>),
    Ndjson {
        before: std::vec::IntoIter<Item>,
        lines: NdjsonLines<'a>,
    },
}

/// The values of a JSON body, each as its text; see [`values`].
pub enum Values<'a> {
    Array {
        text: &'a str,
        spans: std::vec::IntoIter<(u32, u32)>,
        next: usize,
    },
    One(Option<&'a RawValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        match self {
            Values::Array { text, spans, next } => {
                let (start, end) = spans.next()?;
                let index = *next;
                *next += 1;
                // The span is a value serde_json found well-formed, on char boundaries.
                Some((index, text.get(start as usize..end as usize)?))
            }
            Values::One(raw) => raw.take().map(|raw| (0, raw.get())),
        }
    }
}

impl Iterator for Items<'_> {
    type Item = Item;

    /// Exact for a JSON body; for an NDJSON one, at most one item per line left.
    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.kind {
            Kind::Json(Values::Array { spans, .. }) => (spans.len(), Some(spans.len())),
            Kind::Json(Values::One(raw)) => (raw.is_some() as usize, Some(raw.is_some() as usize)),
            Kind::Ndjson { before, lines } => {
                (before.len(), Some(before.len() + lines.lines.remaining))
            }
        }
    }

    fn next(&mut self) -> Option<Item> {
        match &mut self.kind {
            Kind::Json(values) => values.next().map(|(index, text)| Item {
                index,
                parsed: parse_item(text),
            }),
            Kind::Ndjson { before, lines } => {
                if let Some(item) = before.next() {
                    return Some(item);
                }
                let (index, line) = lines.next_line()?;
                Some(Item {
                    index,
                    parsed: line.parsed,
                })
            }
        }
    }
}

fn json_kind(body: &[u8]) -> Result<Values<'_>, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        Some(b'[') => {
            let (text, spans) = array_spans(body)?;
            Ok(Values::Array {
                text,
                spans: spans.into_iter(),
                next: 0,
            })
        }
        Some(b'{') => {
            let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>();
            // the first byte is `{`, so there is a first value or an error
            let raw = match stream.next() {
                Some(Ok(raw)) => raw,
                Some(Err(e)) => return Err(BodyError::from_json(&e, 0)),
                None => return Err(BodyError::trailing(body, 0)),
            };
            let end = stream.byte_offset();
            if body[end..].iter().any(|b| !b.is_ascii_whitespace()) {
                return Err(BodyError::trailing(body, end));
            }
            Ok(Values::One(Some(raw)))
        }
        None => Err(BodyError {
            line: 1,
            column: 0,
            message: "empty body; expected a JSON object, a JSON array or NDJSON".into(),
            kind: BodyErrorKind::Empty,
        }),
        Some(_) => {
            // Let serde_json say where and why it fails; if it somehow parses (a bare number),
            // it is still not an update.
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) => Err(BodyError::from_json(&e, 0)),
                Ok(_) => Err(BodyError {
                    line: 1,
                    column: 1,
                    message: "expected a JSON object or an array of objects".into(),
                    kind: BodyErrorKind::NotAnObject,
                }),
            }
        }
    }
}

/// Start and end offsets of one array element in the body.
type Span = (u32, u32);

/// Where each element of a JSON array lies in the body, checking the whole array's syntax on
/// the way. 8 bytes per element, whatever the element.
fn array_spans(body: &[u8]) -> Result<(&str, Vec<Span>), BodyError> {
    struct Spans<'b>(usize, std::marker::PhantomData<&'b ()>);
    impl<'de: 'b, 'b> serde::de::Visitor<'de> for Spans<'b> {
        type Value = Vec<Span>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                let start = raw.get().as_ptr() as usize - self.0;
                let end = start + raw.get().len();
                // bodies are bounded by --max-body-bytes, far below 4 GiB
                out.push((start as u32, end as u32));
            }
            Ok(out)
        }
    }
    let text = std::str::from_utf8(body).map_err(|e| BodyError {
        line: 1 + body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        column: 0,
        message: "invalid UTF-8".into(),
        kind: BodyErrorKind::Syntax,
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let spans = serde::Deserializer::deserialize_seq(
        &mut de,
        Spans(text.as_ptr() as usize, std::marker::PhantomData),
    )
    .and_then(|spans| de.end().map(|()| spans))
    .map_err(|e| BodyError::from_json(&e, 0))?;
    Ok((text, spans))
}

/// The numbered lines of a body, split at `\n` exactly as `slice::split` would (a body ending
/// in a newline has an empty last line), the breaks found with `memchr`, many bytes at a time.
struct LineSplit<'a> {
    rest: Option<&'a [u8]>,
    index: usize,
    /// Lines not yet handed out, not counting the empty one after a final newline: an upper
    /// bound on the items left (blank lines yield none).
    remaining: usize,
}

impl<'a> LineSplit<'a> {
    fn new(body: &'a [u8]) -> LineSplit<'a> {
        let breaks = memchr::memchr_iter(b'\n', body).count();
        LineSplit {
            rest: Some(body),
            index: 0,
            remaining: breaks + usize::from(!body.ends_with(b"\n")),
        }
    }
}

impl<'a> Iterator for LineSplit<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        let rest = self.rest?;
        let line = match memchr::memchr(b'\n', rest) {
            Some(end) => {
                self.rest = Some(&rest[end + 1..]);
                &rest[..end]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        let index = self.index;
        self.index += 1;
        self.remaining = self.remaining.saturating_sub(1);
        Some((index, line))
    }
}

/// One non-blank line of an NDJSON body: the update it is or why it is none.
struct Line {
    /// The line is a JSON value. A body none of whose lines is, is not NDJSON at all.
    json: bool,
    parsed: Result<TaskUpdate, ItemError>,
}

impl Line {
    fn not_json(e: ItemError) -> Line {
        Line {
            json: false,
            parsed: Err(e),
        }
    }

    fn json(parsed: Result<TaskUpdate, ItemError>) -> Line {
        Line { json: true, parsed }
    }
}

/// The lines of an NDJSON body, each parsed and validated as an update.
struct NdjsonLines<'a> {
    lines: LineSplit<'a>,
    first_error: Option<BodyError>,
}

impl<'a> NdjsonLines<'a> {
    fn new(body: &'a [u8]) -> NdjsonLines<'a> {
        NdjsonLines {
            lines: LineSplit::new(body),
            first_error: None,
        }
    }

    /// The next non-blank line: its index, and what it holds.
    fn next_line(&mut self) -> Option<(usize, Line)> {
        loop {
            let (index, line) = self.lines.next()?;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = match std::str::from_utf8(line) {
                Err(e) => {
                    let err = BodyError {
                        line: index + 1,
                        column: e.valid_up_to() + 1,
                        message: "invalid UTF-8".into(),
                        kind: BodyErrorKind::Syntax,
                    };
                    let rejection =
                        Rejection::Invalid(err.to_string().replace("body is", "line is"));
                    self.first_error.get_or_insert(err);
                    Line::not_json(ItemError {
                        task_id: None,
                        rejection,
                    })
                }
                Ok(text) => self.parse_line(index, text),
            };
            return Some((index, parsed));
        }
    }

    /// One line's text: parsed once as an update; only a line that is not one is read again,
    /// to tell a line that is not JSON from an item that is not an update.
    fn parse_line(&mut self, index: usize, text: &str) -> Line {
        if let Ok(raw) = serde_json::from_str::<RawUpdate>(text) {
            return Line::json(raw.validate_item());
        }
        match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => Line::json(parse_item(raw.get())),
            Err(e) => {
                let err = BodyError::from_json(&e, index);
                let rejection = Rejection::Invalid(format!(
                    "line {} is not valid JSON: {} at column {}",
                    index + 1,
                    err.message,
                    err.column
                ));
                self.first_error.get_or_insert(err);
                Line::not_json(ItemError {
                    task_id: None,
                    rejection,
                })
            }
        }
    }
}

/// Parses and validates one update already read as a JSON value (the worker proxy reads a
/// TaskResult this way, to forward it as well).
pub fn parse_value(v: &serde_json::Value) -> Result<TaskUpdate, ItemError> {
    validated(v, || {
        v.get("taskId")
            .and_then(|t| t.as_str())
            .map(|s| update::truncate(s, MAX_ID_LEN).to_string())
    })
}

/// Parses and validates one item (the text of one JSON value). Parsed plainly first; only an
/// item that does not deserialize is parsed again, tracking the path to the field at fault for
/// the rejection (tracking it for every item cost a tenth of the ingest path).
fn parse_item(text: &str) -> Result<TaskUpdate, ItemError> {
    if let Ok(raw) = serde_json::from_str::<RawUpdate>(text) {
        return raw.validate_item();
    }
    let mut de = serde_json::Deserializer::from_str(text);
    validated(&mut de, || salvage_task_id(text))
}

/// Deserializes one update, naming the field that is wrong (`salvage` finds the task id for
/// the rejection when the item doesn't deserialize), then validates it.
fn validated<'de, D: serde::Deserializer<'de>>(
    de: D,
    salvage: impl FnOnce() -> Option<String>,
) -> Result<TaskUpdate, ItemError>
where
    D::Error: std::fmt::Display,
{
    let raw: RawUpdate = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            let inner = strip_position(&e.inner().to_string());
            let msg = if path == "." || path.is_empty() {
                if inner.contains("expected struct RawUpdate") {
                    "expected a JSON object".to_string()
                } else {
                    inner
                }
            } else {
                format!("`{path}`: {inner}")
            };
            return Err(ItemError {
                task_id: salvage(),
                rejection: Rejection::Invalid(msg),
            });
        }
    };
    raw.validate_item()
}

/// On a malformed item, still try to name the task in the rejection.
fn salvage_task_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct OnlyId {
        #[serde(rename = "taskId")]
        task_id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<OnlyId>(text).ok()?.task_id? {
        serde_json::Value::String(s) => Some(update::truncate(&s, MAX_ID_LEN).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    fn ok(items: &[Item]) -> Vec<&TaskUpdate> {
        items
            .iter()
            .filter_map(|i| i.parsed.as_ref().ok())
            .collect()
    }
    fn errs(items: &[Item]) -> Vec<(usize, String)> {
        items
            .iter()
            .filter_map(|i| {
                i.parsed
                    .as_ref()
                    .err()
                    .map(|e| (i.index, e.rejection.reason()))
            })
            .collect()
    }

    #[test]
    fn one_object_with_conductor_aliases() {
        let body = br#"{"taskId":"t1","workflowInstanceId":"w1","taskDefName":"encode","status":"IN_PROGRESS",
            "outputData":{"progressPercent":42.5,"progressMessage":"chunk 3/7","other":{"deep":[1,2]}},
            "workerId":"host-1","updateTime":1700000000000,"unknownField":true}"#;
        let items = parse_body(body, Format::Json).unwrap();
        let u = ok(&items)[0];
        assert_eq!(u.task_id, "t1");
        assert_eq!(u.workflow_id, "w1");
        assert_eq!(u.task_type.as_deref(), Some("encode"));
        assert_eq!(u.status, Status::InProgress);
        assert_eq!(u.progress, Some(42.5));
        assert_eq!(u.progress_message.as_deref(), Some("chunk 3/7"));
        assert_eq!(u.worker_id.as_deref(), Some("host-1"));
        assert_eq!(u.update_time, Some(1_700_000_000_000));
    }

    #[test]
    fn conductor_task_json_with_both_type_fields_parses() {
        // Conductor's Task JSON carries taskType and taskDefName, workflowInstanceId only.
        let body =
            br#"{"taskId":"t1","taskType":"WAIT","taskDefName":"wait_ref","workflowInstanceId":"w",
            "status":"IN_PROGRESS","waitTimeout":1700000060000,"outputData":{"progress":"n/a"}}"#;
        let items = parse_body(body, Format::Json).unwrap();
        let u = ok(&items)[0];
        assert_eq!(u.task_type.as_deref(), Some("WAIT"));
        assert_eq!(u.wait_until, Some(1_700_000_060_000));
        assert_eq!(
            u.progress, None,
            "a non-number outputData.progress is ignored"
        );
    }

    #[test]
    fn progress_sources_in_order() {
        let body = br#"[
            {"taskId":"a","workflowId":"w","status":"IN_PROGRESS","progressPercent":10,"outputData":{"progressPercent":20,"progress":30}},
            {"taskId":"b","workflowId":"w","status":"IN_PROGRESS","outputData":{"progressPercent":20,"progress":30}},
            {"taskId":"c","workflowId":"w","status":"IN_PROGRESS","outputData":{"progress":30}},
            {"taskId":"d","workflowId":"w","status":"IN_PROGRESS","outputData":"not a map"}
        ]"#;
        let items = parse_body(body, Format::Json).unwrap();
        let p: Vec<_> = ok(&items).iter().map(|u| u.progress).collect();
        assert_eq!(p, vec![Some(10.0), Some(20.0), Some(30.0), None]);
    }

    #[test]
    fn bad_items_are_rejected_one_by_one() {
        let body = br#"[
            {"taskId":"ok","workflowId":"w","status":"SCHEDULED"},
            {"workflowId":"w","status":"SCHEDULED"},
            {"taskId":"t","status":"SCHEDULED"},
            {"taskId":"t","workflowId":"w","status":"RUNNING"},
            {"taskId":"t","workflowId":"w","status":"IN_PROGRESS","progressPercent":150},
            {"taskId":"t","workflowId":"w","status":"IN_PROGRESS","progressPercent":"50"},
            {"taskId":42,"workflowId":"w","status":"SCHEDULED"},
            "a string",
            {"taskId":"t","workflowId":"w","status":"IN_PROGRESS","outputData":{"progress":-3}},
            {"taskId":"","workflowId":"w","status":"SCHEDULED"}
        ]"#;
        let items = parse_body(body, Format::Json).unwrap();
        assert_eq!(ok(&items).len(), 1);
        let e = errs(&items);
        assert_eq!(e.len(), 9);
        let reasons: Vec<&str> = e.iter().map(|(_, r)| r.as_str()).collect();
        assert!(reasons[0].contains("taskId"), "{}", reasons[0]);
        assert!(reasons[1].contains("workflowId"), "{}", reasons[1]);
        assert!(reasons[2].contains("status"), "{}", reasons[2]);
        assert!(reasons[3].contains("progressPercent") && reasons[3].contains("150"));
        assert!(reasons[4].contains("progressPercent"), "{}", reasons[4]);
        assert!(reasons[5].contains("taskId"), "{}", reasons[5]);
        assert!(reasons[6].contains("object"), "{}", reasons[6]);
        assert!(reasons[7].contains("outputData.progress"), "{}", reasons[7]);
        assert!(reasons[8].contains("empty"), "{}", reasons[8]);
        // the salvaged task id is reported even when the item doesn't parse
        assert_eq!(
            items[5].parsed.as_ref().unwrap_err().task_id.as_deref(),
            Some("t")
        );
    }

    #[test]
    fn ndjson_keeps_good_lines_around_bad_ones() {
        let body = b"{\"taskId\":\"a\",\"workflowId\":\"w\",\"status\":\"SCHEDULED\"}\n\
                     {\"taskId\":\"b\",\"workflowId\n\
                     \n\
                     {\"taskId\":\"c\",\"workflowId\":\"w\",\"status\":\"SCHEDULED\"}\r\n\
                     \xff\xfe\n";
        let items = parse_body(body, Format::Ndjson).unwrap();
        let ids: Vec<_> = ok(&items).iter().map(|u| u.task_id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        let e = errs(&items);
        assert_eq!(e.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 4]);
        assert!(e[0].1.contains("line 2"), "{}", e[0].1);
        assert!(e[1].1.contains("UTF-8"), "{}", e[1].1);
    }

    #[test]
    fn an_ndjson_body_says_at_most_how_many_items_are_left() {
        let line = r#"{"taskId":"a","workflowId":"w","status":"SCHEDULED"}"#;
        for (body, most) in [
            (format!("{line}\n{line}\n"), 2), // a final newline is no line
            (format!("{line}\n{line}"), 2),
            (format!("{line}\n\n{line}\n"), 3), // a blank line may be counted
        ] {
            let mut items = items(body.as_bytes(), Format::Ndjson).unwrap();
            assert_eq!(items.size_hint(), (1, Some(most)), "{body:?}");
            items.next();
            assert_eq!(items.size_hint().1, Some(most - 1), "{body:?}");
            assert_eq!(items.count(), 1);
        }
    }

    #[test]
    fn a_body_that_is_not_json_names_line_and_column() {
        let err = parse_body(b"{\n  \"taskId\": \"a\",\n  oops\n}", Format::Json).unwrap_err();
        assert_eq!((err.line, err.column), (3, 3), "{err}");
        let err = parse_body(b"hello", Format::Json).unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse_body(b"", Format::Json).unwrap_err();
        assert!(err.message.contains("empty"));
        let err = parse_body(b"not json\nstill not\n", Format::Ndjson).unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse_body(
            b"{\"taskId\":\"a\",\"workflowId\":\"w\",\"status\":\"SCHEDULED\"}\n{\"taskId\":\"b\"}",
            Format::Json,
        )
        .unwrap_err();
        assert!(err.message.contains("x-ndjson"), "{err}");
        assert_eq!(err.line, 2);
    }

    #[test]
    fn deep_nesting_and_invalid_utf8_are_errors_not_crashes() {
        // 100k nested arrays: either the body is refused or its one item is rejected; no
        // stack overflow either way.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        match parse_body(deep.as_bytes(), Format::Json) {
            Err(e) => assert_eq!(e.line, 1),
            Ok(items) => assert!(items.iter().all(|i| i.parsed.is_err())),
        }
        let deep_item = format!(
            "[{{\"taskId\":\"a\",\"workflowId\":\"w\",\"status\":\"SCHEDULED\",\"outputData\":{{\"x\":{}{}}}}}]",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // deep junk inside outputData is skipped without recursion; the update itself is fine
        let items = parse_body(deep_item.as_bytes(), Format::Json).unwrap();
        assert_eq!(ok(&items).len(), 1);
        let err = parse_body(b"{\"taskId\":\"\xff\"}", Format::Json).unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn nul_bytes_are_dropped_from_messages() {
        let body = br#"{"taskId":"t","workflowId":"w","status":"IN_PROGRESS","progressMessage":"a\u0000b"}"#;
        let items = parse_body(body, Format::Json).unwrap();
        assert_eq!(ok(&items)[0].progress_message.as_deref(), Some("ab"));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::from_content_type(Some("application/x-ndjson")),
            Format::Ndjson
        );
        assert_eq!(
            Format::from_content_type(Some("Application/X-NDJSON; charset=utf-8")),
            Format::Ndjson
        );
        assert_eq!(
            Format::from_content_type(Some("application/json")),
            Format::Json
        );
        assert_eq!(Format::from_content_type(None), Format::Json);
    }

    #[test]
    fn long_messages_are_cut_and_long_ids_rejected() {
        let body = format!(
            "{{\"taskId\":\"t\",\"workflowId\":\"w\",\"status\":\"IN_PROGRESS\",\"progressMessage\":\"{}\"}}",
            "é".repeat(2000)
        );
        let items = parse_body(body.as_bytes(), Format::Json).unwrap();
        let msg = ok(&items)[0].progress_message.clone().unwrap();
        assert!(msg.len() <= MAX_MESSAGE_LEN && msg.len() > MAX_MESSAGE_LEN - 4);
        let body = format!(
            "{{\"taskId\":\"{}\",\"workflowId\":\"w\",\"status\":\"IN_PROGRESS\"}}",
            "x".repeat(MAX_ID_LEN + 1)
        );
        let items = parse_body(body.as_bytes(), Format::Json).unwrap();
        assert!(errs(&items)[0].1.contains("taskId"));
    }
}
