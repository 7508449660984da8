//! `POST /api/v1/updates` with a JSON body (one object or an array of objects).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse::ingest::{parse_body, Format};

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = parse_body(data, Format::Json) {
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item.index, i);
        }
    }
});
