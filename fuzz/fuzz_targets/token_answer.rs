//! A token endpoint's answer to a code exchange and to a refresh grant, for every built-in
//! provider; no error message may echo what the request sent.
//!
//! Input: `status\nretry-after\nsent values, space-separated\nnow (ms)\n` then the body.
#![no_main]

#[path = "../common/header.rs"]
mod header;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((lines, body)) = header::split(data, 4) else {
        return;
    };
    let status = lines[0].trim().parse().unwrap_or(200);
    let retry_after = Some(lines[1]).filter(|v| !v.is_empty());
    let sent = authpipe_core::fuzzing::sent_values(&header::words(lines[2]));
    let now_ms = lines[3].trim().parse().unwrap_or(1_700_000_000_000);
    authpipe_core::fuzzing::token_answer(status, body, retry_after, &sent, now_ms);
});
