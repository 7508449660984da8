//! `POST /api/v1/conductor/task-status`: Conductor's TaskNotification webhook body, decoded as
//! it is without a charset (UTF-8 or ISO-8859-1), and the `Content-Type` charset handling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse::engines::conductor::webhook::{decode, parse_notifications};

fuzz_target!(|data: &[u8]| {
    let _ = parse_notifications(data);
    // The input's first bytes as a Content-Type header, the whole input as the body.
    let head = &data[..data.len().min(64)];
    if let Ok(content_type) = std::str::from_utf8(head) {
        let _ = decode(Some(content_type), data);
    }
});
