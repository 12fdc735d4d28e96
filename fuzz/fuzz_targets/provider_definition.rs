//! Provider definitions (the catalog's data, or a custom provider's) with their URL templates
//! filled, and the app's provider settings of `new Authpipe({ providers })`.
//!
//! Input: `definition` or `settings`, `\ntemplate values, space-separated\n`, then the JSON.
#![no_main]

#[path = "../common/header.rs"]
mod header;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((lines, json)) = header::split(data, 2) else {
        return;
    };
    if lines[0] == "settings" {
        authpipe_core::fuzzing::provider_settings(json);
    } else {
        authpipe_core::fuzzing::provider_definition(json, &header::words(lines[1]));
    }
});
