//! `POST /api/v1/updates` with an NDJSON body (one object per line, bad lines rejected alone).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse::ingest::{parse_body, Format};

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = parse_body(data, Format::Ndjson) {
        // One item per non-blank line, at most one per line, in line order.
        let lines = data.split(|b| *b == b'\n').count();
        assert!(items.len() <= lines);
        assert!(items.windows(2).all(|w| w[0].index < w[1].index));
    }
});
