//! The engine's answers the proxy learns tasks from: poll responses (a Task, an array of Tasks,
//! or an empty body) and update-v2 next-task answers, parsed as the proxy does
//! (`parse_body(.., Format::Json)`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse::ingest::{parse_body, Format};

fuzz_target!(|data: &[u8]| {
    if data.iter().all(u8::is_ascii_whitespace) {
        return; // the proxy skips empty answers
    }
    let _ = parse_body(data, Format::Json);
});
