//! Writing the Prometheus text exposition format (version 0.0.4) straight into a buffer.
//!
//! The scrape-time state gauges can be tens of thousands of series. Building them through the
//! prometheus crate's vectors hashes every label set, copies it into protobuf structures and
//! encodes those again, which cost more than the walk over the tasks itself; writing the text
//! directly costs one copy of each label value.
//!
//! Every family of `/metrics` is written here: the scrape-time collectors' with the sample
//! writers, the registered metrics' (gathered from the prometheus crate's registry) with
//! [`family`], so one writer produces the whole exposition.

use prometheus::proto::{Metric, MetricFamily, MetricType};

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

/// One family the registry gathered, written the way the prometheus crate's `TextEncoder`
/// writes it (its value spellings included), so the registered families and the scrape-time
/// collectors' go through this one writer. Returns the number of sample lines written.
pub fn family(out: &mut String, mf: &MetricFamily) -> usize {
    let name = mf.name();
    let kind = match mf.get_field_type() {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    };
    if mf.help().is_empty() {
        out.push_str("# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');
    } else {
        header(out, name, mf.help(), kind);
    }
    let mut samples = 0;
    for m in mf.get_metric() {
        let mut line = |suffix: &str, extra: Option<(&str, &str)>, v: f64| {
            registered_sample(out, name, suffix, m, extra, v);
            samples += 1;
        };
        match mf.get_field_type() {
            MetricType::COUNTER => line("", None, m.get_counter().get_value()),
            MetricType::GAUGE => line("", None, m.get_gauge().get_value()),
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                let mut inf_seen = false;
                for b in h.get_bucket() {
                    let le = b.upper_bound();
                    let count = b.cumulative_count() as f64;
                    line("_bucket", Some(("le", &le.to_string())), count);
                    inf_seen |= le.is_sign_positive() && le.is_infinite();
                }
                if !inf_seen {
                    line("_bucket", Some(("le", "+Inf")), h.get_sample_count() as f64);
                }
                line("_sum", None, h.get_sample_sum());
                line("_count", None, h.get_sample_count() as f64);
            }
            MetricType::SUMMARY => {
                let s = m.get_summary();
                for q in s.get_quantile() {
                    line("", Some(("quantile", &q.quantile().to_string())), q.value());
                }
                line("_sum", None, s.sample_sum());
                line("_count", None, s.sample_count() as f64);
            }
            // the crate's registry makes none (its own encoder would panic on one)
            MetricType::UNTYPED => {}
        }
    }
    samples
}

/// A sample of a registered metric: its labels, then `extra` (`le`, `quantile`), the value as
/// Rust displays an `f64` (`1`, `0.005`), and the timestamp when it has one.
fn registered_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    m: &Metric,
    extra: Option<(&str, &str)>,
    v: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = m.get_label();
    if !pairs.is_empty() || extra.is_some() {
        let mut sep = '{';
        for (k, val) in pairs.iter().map(|p| (p.name(), p.value())).chain(extra) {
            out.push(sep);
            out.push_str(k);
            out.push_str("=\"");
            label_value(out, val);
            out.push('"');
            sep = ',';
        }
        out.push('}');
    }
    out.push(' ');
    display_f64(out, v);
    if m.timestamp_ms() != 0 {
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(m.timestamp_ms()));
    }
    out.push('\n');
}

/// `v` as `f64`'s `Display` writes it (never an exponent; `1` for 1.0), by `itoa` for the
/// whole numbers counters and buckets mostly are.
fn display_f64(out: &mut String, v: f64) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact
    if v.fract() == 0.0 && v.abs() < EXACT && !(v == 0.0 && v.is_sign_negative()) {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        use std::fmt::Write;
        let _ = write!(out, "{v}");
    }
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

    /// The registered families come out byte for byte as the prometheus crate's own encoder
    /// writes them (the exposition the tests and dashboards were built against).
    #[test]
    fn registered_families_are_written_as_the_crate_encodes_them() {
        use prometheus::{
            Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
            Registry, TextEncoder,
        };
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("c_total", "a \\ counter\nhelp"), &["k"]).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["x\"y\\z\nw"]).inc_by(3);
        c.with_label_values(&["plain"]).inc_by(1 << 40);
        let plain = IntCounter::new("plain_total", "no labels").unwrap();
        r.register(Box::new(plain.clone())).unwrap();
        let g = GaugeVec::new(Opts::new("g", "gauge"), &["a", "b"]).unwrap();
        r.register(Box::new(g.clone())).unwrap();
        for (i, v) in [
            0.1,
            -0.0,
            1e21,
            -3.0,
            12.5,
            f64::NAN,
            f64::INFINITY,
            1.0 / 3.0,
        ]
        .into_iter()
        .enumerate()
        {
            g.with_label_values(&[&i.to_string(), "v"]).set(v);
        }
        let h = HistogramVec::new(
            HistogramOpts::new("h_seconds", "histogram").buckets(vec![0.005, 0.25, 1.0, 10.0]),
            &["op"],
        )
        .unwrap();
        r.register(Box::new(h.clone())).unwrap();
        for v in [0.001, 0.3, 7.0, 100.0] {
            h.with_label_values(&["w"]).observe(v);
        }
        h.with_label_values(&["idle"]);
        let families = r.gather();
        let mut expected = Vec::new();
        TextEncoder::new().encode(&families, &mut expected).unwrap();
        let mut out = String::new();
        let samples: usize = families.iter().map(|f| family(&mut out, f)).sum();
        assert_eq!(out, String::from_utf8(expected).unwrap());
        assert_eq!(samples, out.lines().filter(|l| !l.starts_with('#')).count());
    }
}
