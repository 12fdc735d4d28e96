//! An identity probe's answer (bearer and introspection styles), read with every built-in
//! provider's JSON pointers; no error message may echo the token sent.
//!
//! Input: `status\nsent values, space-separated\n` then the body.
#![no_main]

#[path = "../common/header.rs"]
mod header;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((lines, body)) = header::split(data, 2) else {
        return;
    };
    let status = lines[0].trim().parse().unwrap_or(200);
    let sent = authpipe_core::fuzzing::sent_values(&header::words(lines[1]));
    authpipe_core::fuzzing::identity_answer(status, body, &sent);
});
