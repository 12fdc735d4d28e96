//! A webhook request as a provider (or anyone) sends it, checked against Attio's and HubSpot's
//! v3 schemes: refused with a webhook error code unless signed with the key; one the target
//! signed itself (computed here, apart from the library) verifies, and no longer does with any
//! byte of the body or the key changed.
//!
//! Input: `attio` or `hubspot`, then the method, the URL, now (ms), the key and `sign` (or
//! anything else), each on a line; then header lines `name: value` up to an empty line; then
//! the body.
#![no_main]

#[path = "../common/header.rs"]
mod header;

use authpipe_core::{verify_webhook_signature, ErrorCode, WebhookRequest, WebhookScheme};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((lines, mut rest)) = header::split(data, 6) else {
        return;
    };
    let hubspot = lines[0] == "hubspot";
    let scheme = WebhookScheme::builtin(if hubspot { "hubspot" } else { "attio" })
        .expect("both providers have a webhook scheme");
    let method = Some(lines[1]).filter(|m| !m.is_empty());
    let url = Some(lines[2]).filter(|u| !u.is_empty());
    let now_ms: i64 = lines[3].trim().parse().unwrap_or(1_700_000_000_000);
    let key = lines[4].as_bytes();
    let mut headers: Vec<(String, String)> = Vec::new();
    while let Some((line, after)) = header::split(rest, 1) {
        rest = after;
        match line[0].split_once(':') {
            Some((name, value)) => headers.push((name.to_owned(), value.to_owned())),
            None => break,
        }
    }
    let body = rest;

    // Signed here, the way the provider documents it (HubSpot's URL as given: only one without
    // escapes, which HubSpot's decoding leaves alone).
    let signs = lines[5] == "sign" && !(hubspot && url.is_none_or(|u| u.contains('%')));
    if signs {
        let timestamp = now_ms.to_string();
        if hubspot {
            let signed = mac(
                key,
                &[
                    method.unwrap_or("POST").as_bytes(),
                    url.unwrap_or_default().as_bytes(),
                    body,
                    timestamp.as_bytes(),
                ],
            );
            headers.retain(|(n, _)| {
                !n.eq_ignore_ascii_case("x-hubspot-signature-v3")
                    && !n.eq_ignore_ascii_case("x-hubspot-request-timestamp")
            });
            headers.push((
                "X-HubSpot-Signature-v3".into(),
                base64::engine::general_purpose::STANDARD.encode(signed),
            ));
            headers.push(("X-HubSpot-Request-Timestamp".into(), timestamp));
        } else {
            headers.retain(|(n, _)| !n.to_ascii_lowercase().contains("attio-signature"));
            headers.push(("Attio-Signature".into(), hex(&mac(key, &[body]))));
        }
    }
    let method = if signs && hubspot {
        method.or(Some("POST"))
    } else {
        method
    };
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let request = WebhookRequest {
        method,
        url,
        headers: &pairs,
        body,
    };
    match verify_webhook_signature(&scheme, &request, key, now_ms) {
        Ok(()) => {
            let mut other_key = key.to_vec();
            match other_key.first_mut() {
                Some(first) => *first ^= 1,
                None => other_key.push(1),
            }
            assert!(
                verify_webhook_signature(&scheme, &request, &other_key, now_ms).is_err(),
                "verified under another key"
            );
            let longer: Vec<u8> = body.iter().copied().chain([b'x']).collect();
            let tampered = WebhookRequest {
                body: &longer,
                ..request
            };
            assert!(
                verify_webhook_signature(&scheme, &tampered, key, now_ms).is_err(),
                "verified with a changed body"
            );
        }
        Err(e) => {
            assert!(
                e.code != ErrorCode::Internal,
                "internal error: {}",
                e.message
            );
            // A request signed here with headers it could not disturb verifies, unless the
            // method or URL is unusable (the caller's mistake, INVALID_ARGUMENT) or a header the
            // fuzzer added duplicates one the signature needs.
            if signs && e.code == ErrorCode::WebhookSignatureMismatch {
                panic!(
                    "a request signed with its key did not verify: {}",
                    e.message
                );
            }
        }
    }
});
