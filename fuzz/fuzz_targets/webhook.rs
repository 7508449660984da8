//! `POST /api/v1/conductor/task-status`: Conductor's TaskNotification webhook body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse::engines::conductor::webhook::parse_notifications;

fuzz_target!(|data: &[u8]| {
    let _ = parse_notifications(data);
});
