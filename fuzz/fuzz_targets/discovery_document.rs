//! An issuer's authorization server metadata (RFC 8414 / OpenID discovery), and the provider
//! settings it merges into.
//!
//! Input: `issuer\n` then the document.
#![no_main]

#[path = "../common/header.rs"]
mod header;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((lines, body)) = header::split(data, 1) else {
        return;
    };
    authpipe_core::fuzzing::discovery_document(lines[0], body);
});
