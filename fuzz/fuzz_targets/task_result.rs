//! The proxied `POST /api/tasks` and `/api/tasks/update-v2` body (a TaskResult), read as the
//! proxy reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse::engines::conductor::proxy::inspect_task_result;

fuzz_target!(|data: &[u8]| {
    let _ = inspect_task_result(data);
});
