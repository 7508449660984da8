//! The path a proxied request names, as Conductor's server will read it.
//!
//! Conductor serves its API from Spring MVC on Tomcat (conductor-oss/conductor b54f0d4e,
//! `build.gradle`: Spring Boot 3.5, Tomcat 10.1; no path-matching configuration of its own). Tomcat
//! drops `;parameters` from each segment, percent-decodes the path, rejects an encoded `/`, and
//! resolves `.` and `..`; Spring then matches the decoded path. The proxy decides what a request
//! is (an update to guard and record, a poll to learn from, taskpulse's own API) on that same
//! reading, and forwards the canonical form, so what it guarded is what the engine runs. What it
//! cannot read the same way is refused: dot segments (a server or a proxy in front may resolve
//! them elsewhere), an encoded `/` or `\`, control characters, and bytes that are not UTF-8.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// Why a path is not forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `.` or `..`, raw or encoded.
    DotSegment,
    /// An encoded `/` or `\`, a control character or an invalid encoding.
    Ambiguous,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::DotSegment => {
                "paths with `.` or `..` segments are not forwarded to the engine"
            }
            Refused::Ambiguous => {
                "paths with an encoded `/` or `\\`, control characters or invalid percent-encoding are not forwarded to the engine"
            }
        }
    }
}

/// What stays percent-encoded when a segment is written back: everything but unreserved
/// characters and the sub-delimiters a path segment may hold.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b';')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The decoded path the engine will match (`/api/tasks` for `/api/tasks;x=1/`,
/// `/api/%74asks` or `//api//tasks`), and its canonical encoded form to forward.
#[derive(Debug, PartialEq, Eq)]
pub struct Canonical {
    pub decoded: String,
    pub encoded: String,
}

/// Reads `raw` (a request's path, without its query) as the engine's server will.
pub fn canonical(raw: &str) -> Result<Canonical, Refused> {
    let mut decoded = String::with_capacity(raw.len());
    let mut encoded = String::with_capacity(raw.len());
    for seg in raw.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        let text = percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| Refused::Ambiguous)?;
        if text.contains(['/', '\\']) || text.chars().any(char::is_control) {
            return Err(Refused::Ambiguous);
        }
        if text == "." || text == ".." {
            return Err(Refused::DotSegment);
        }
        if text.is_empty() {
            continue; // `//` and a trailing `/` name the same resource
        }
        decoded.push('/');
        decoded.push_str(&text);
        encoded.push('/');
        encoded.extend(utf8_percent_encode(&text, SEGMENT));
    }
    if decoded.is_empty() {
        decoded.push('/');
        encoded.push('/');
    }
    Ok(Canonical { decoded, encoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> String {
        canonical(raw).unwrap().decoded
    }

    #[test]
    fn variants_of_one_path_read_as_the_engine_reads_them() {
        for raw in [
            "/api/tasks",
            "/api/tasks/",
            "/api/tasks;x=1",
            "/api/tasks;jsessionid=1/",
            "/api/%74asks",
            "/api/%74%61%73%6B%73",
            "//api//tasks",
            "/api;a=b/tasks",
        ] {
            assert_eq!(decoded(raw), "/api/tasks", "{raw}");
        }
        assert_eq!(decoded("/api/%76%31/tasks"), "/api/v1/tasks");
        assert_eq!(decoded("/api/tasks/update-v2/"), "/api/tasks/update-v2");
        let c = canonical("/api/tasks/t%20%C3%A9;v=1").unwrap();
        assert_eq!(c.decoded, "/api/tasks/t é");
        assert_eq!(c.encoded, "/api/tasks/t%20%C3%A9", "written back encoded");
        assert_eq!(canonical("/").unwrap().encoded, "/");
    }

    #[test]
    fn what_cannot_be_read_the_same_way_is_refused() {
        for raw in [
            "/api/tasks/../v1",
            "/api/./tasks",
            "/api/%2e%2e/x",
            "/api/%2E",
        ] {
            assert_eq!(canonical(raw), Err(Refused::DotSegment), "{raw}");
        }
        for raw in [
            "/api/tasks%2F",
            "/api/tasks%2fupdate-v2",
            "/api/tasks%5C",
            "/api/tasks%00",
            "/api/%ff",
            "/api/tasks%0a",
        ] {
            assert_eq!(canonical(raw), Err(Refused::Ambiguous), "{raw}");
        }
        // `..` inside a name is a name
        assert_eq!(decoded("/api/tasks/a..b"), "/api/tasks/a..b");
    }
}
