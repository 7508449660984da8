//! Writing the Prometheus text exposition format (version 0.0.4) straight into a buffer.
//!
//! The scrape-time state gauges can be tens of thousands of series. Building them through the
//! prometheus crate's vectors hashes every label set, copies it into protobuf structures and
//! encodes those again, which cost more than the walk over the tasks itself; writing the text
//! directly costs one copy of each label value.

/// `# HELP` and `# TYPE` lines of a family. `help` is one of our own constants.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(out, help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Appends a label value escaped as the format requires: backslash, double quote and line feed.
/// Values come from input (task types, workflow ids, worker ids), so anything may be in them.
pub fn label_value(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `{name="value",...}`, or nothing for no labels.
pub fn labels(out: &mut String, pairs: &[(&str, &str)]) {
    if pairs.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Appends ` value\n` for a float, with the format's spellings of the special values.
pub fn value_f64(out: &mut String, v: f64) {
    out.push(' ');
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
    out.push('\n');
}

/// Appends ` value\n` for an integer.
pub fn value_i64(out: &mut String, v: i64) {
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(v));
    out.push('\n');
}

/// One whole sample line: `name{labels} value`.
pub fn sample_i64(out: &mut String, name: &str, pairs: &[(&str, &str)], v: i64) {
    out.push_str(name);
    labels(out, pairs);
    value_i64(out, v);
}

/// One whole sample line with a float value.
pub fn sample_f64(out: &mut String, name: &str, pairs: &[(&str, &str)], v: f64) {
    out.push_str(name);
    labels(out, pairs);
    value_f64(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        labels(&mut out, &[("a", "x\"y\\z\nw"), ("b", "plain")]);
        assert_eq!(out, r#"{a="x\"y\\z\nw",b="plain"}"#);
    }

    #[test]
    fn special_floats_use_the_format_spelling() {
        let mut out = String::new();
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.25,
            1.0,
            1732170000.5,
        ] {
            value_f64(&mut out, v);
        }
        assert_eq!(out, " NaN\n +Inf\n -Inf\n 0.25\n 1.0\n 1732170000.5\n");
    }

    #[test]
    fn help_text_is_escaped() {
        let mut out = String::new();
        header(&mut out, "m", "a\\b\nc", "gauge");
        assert_eq!(out, "# HELP m a\\\\b\\nc\n# TYPE m gauge\n");
    }
}
