//! Verifying a webhook request against its provider's [`WebhookScheme`]: pure functions of the
//! request, the key and the time, tested (and fuzzed) without a store. The caller's mistakes
//! (`INVALID_ARGUMENT`) come first, then the request's signature and timestamp are read
//! ([`parse`], no key needed), then the MAC is compared in constant time ([`Signed::verify`]).

use crate::error::{Error, ErrorCode, Result};
use crate::providers::webhook::{
    SignatureEncoding, SignedContent, TimestampRule, TimestampUnit, WebhookScheme,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256's output length.
const MAC_BYTES: usize = 32;

/// The parts of a received HTTP request that a signature can cover.
#[derive(Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// As received (`POST`); required when the scheme signs it.
    pub method: Option<&'a str>,
    /// The full URL the provider called (`https://host/path?query`); required when the scheme
    /// signs it.
    pub url: Option<&'a str>,
    /// Names and values as received; names are compared case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
    /// The raw body, byte for byte.
    pub body: &'a [u8],
}

/// A request whose signature is well-formed and whose timestamp (if the scheme has one) is in
/// the window: what is left to check is the MAC, which needs the key.
pub struct Signed<'a> {
    scheme: &'a WebhookScheme,
    request: WebhookRequest<'a>,
    timestamp: Option<&'a str>,
    mac: [u8; MAC_BYTES],
}

/// The whole check, for callers that hold the key already (and for fuzzing): `Ok(())` when the
/// request is signed with `key`, else the error whose code says why not.
pub fn verify_webhook_signature(
    scheme: &WebhookScheme,
    request: &WebhookRequest<'_>,
    key: &[u8],
    now_ms: i64,
) -> Result<()> {
    parse(scheme, request, now_ms)?.verify(key)
}

/// Reads the signature and the timestamp, without the key.
pub fn parse<'a>(
    scheme: &'a WebhookScheme,
    request: &WebhookRequest<'a>,
    now_ms: i64,
) -> Result<Signed<'a>> {
    if scheme.signs == SignedContent::MethodUriBodyTimestamp {
        check_method_and_url(request)?;
    }
    let mac = signature(scheme, request)?;
    let timestamp = scheme
        .timestamp
        .as_ref()
        .map(|rule| timestamp(rule, request, now_ms))
        .transpose()?;
    Ok(Signed {
        scheme,
        request: *request,
        timestamp,
        mac,
    })
}

impl Signed<'_> {
    /// Compares the MAC of the signed content under `key` with the request's, in constant time.
    pub fn verify(&self, key: &[u8]) -> Result<()> {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        let body = self.request.body;
        match self.scheme.signs {
            SignedContent::Body => mac.update(body),
            SignedContent::MethodUriBodyTimestamp => {
                let (Some(method), Some(url), Some(timestamp)) =
                    (self.request.method, self.request.url, self.timestamp)
                else {
                    return Err(Error::internal(
                        "a parsed request lacks what its scheme signs",
                    ));
                };
                mac.update(method.as_bytes());
                mac.update(hubspot_uri(url).as_bytes());
                mac.update(body);
                mac.update(timestamp.as_bytes());
            }
        }
        mac.verify_slice(&self.mac).map_err(|_| {
            Error::new(
                ErrorCode::WebhookSignatureMismatch,
                "the webhook signature does not match: the request differs from what was signed \
                 (pass the raw body, not one parsed and serialised again, and the exact method and \
                 URL), or another secret signed it",
            )
        })
    }
}

fn check_method_and_url(request: &WebhookRequest<'_>) -> Result<()> {
    if request.method.is_none_or(str::is_empty) {
        return Err(Error::invalid_argument(
            "method is required: this provider's webhook signature covers the request method",
        ));
    }
    let absolute = request
        .url
        .and_then(|u| url::Url::parse(u).ok())
        .is_some_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
    if !absolute {
        return Err(Error::invalid_argument(
            "url must be the full URL the provider called, with its query \
             (https://app.example.com/webhooks/hubspot?...): this provider's signature covers it",
        ));
    }
    Ok(())
}

/// A header's value (trimmed), `Ok(None)` if absent, `Err(())` if given more than once.
fn header<'a>(request: &WebhookRequest<'a>, name: &str) -> Result<Option<&'a str>, ()> {
    let mut values = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim_matches([' ', '\t']));
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

fn signature(scheme: &WebhookScheme, request: &WebhookRequest<'_>) -> Result<[u8; MAC_BYTES]> {
    let malformed = |why: String| Error::new(ErrorCode::WebhookSignatureMalformed, why);
    let mut found = None;
    for name in &scheme.signature_headers {
        match header(request, name) {
            Err(()) => {
                return Err(malformed(format!(
                    "the {name} header is given more than once"
                )))
            }
            Ok(Some(value)) => {
                found = Some((name, value));
                break;
            }
            Ok(None) => {}
        }
    }
    let Some((name, value)) = found.filter(|(_, value)| !value.is_empty()) else {
        return Err(Error::new(
            ErrorCode::WebhookSignatureMissing,
            format!(
                "the webhook request has no signature: no {} header",
                scheme.signature_headers.join(" or ")
            ),
        ));
    };
    let bytes = match scheme.encoding {
        SignatureEncoding::Hex => decode_hex(value).ok_or_else(|| {
            malformed(format!(
                "the {name} header is not {} hexadecimal digits",
                MAC_BYTES * 2
            ))
        })?,
        SignatureEncoding::Base64 => STANDARD
            .decode(value)
            .map_err(|_| malformed(format!("the {name} header is not base64")))?,
    };
    bytes.as_slice().try_into().map_err(|_| {
        malformed(format!(
            "the {name} header holds {} bytes; an HMAC-SHA256 has {MAC_BYTES}",
            bytes.len()
        ))
    })
}

fn decode_hex(value: &str) -> Option<Vec<u8>> {
    let pairs = value.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16);
    pairs
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// The timestamp header as sent (it is signed as text), checked against the window.
fn timestamp<'a>(
    rule: &TimestampRule,
    request: &WebhookRequest<'a>,
    now_ms: i64,
) -> Result<&'a str> {
    let invalid = |why: String| Error::new(ErrorCode::WebhookTimestampInvalid, why);
    let header_name = &rule.header;
    let value = header(request, header_name)
        .map_err(|()| invalid(format!("the {header_name} header is given more than once")))?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(format!("the webhook request has no {header_name} header")))?;
    let (unit_ms, unit) = match rule.unit {
        TimestampUnit::Seconds => (1000, "seconds"),
        TimestampUnit::Milliseconds => (1, "milliseconds"),
    };
    let at_ms = Some(value)
        .filter(|v| v.len() <= 16 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| {
            invalid(format!(
                "the {header_name} header is not a whole number of {unit}"
            ))
        })?;
    let tolerance_ms = i64::from(rule.tolerance_seconds) * 1000;
    let age_ms = now_ms.saturating_sub(at_ms);
    if age_ms.saturating_abs() > tolerance_ms {
        let (how_far, side) = if age_ms > 0 {
            (age_ms, "old")
        } else {
            (age_ms.saturating_neg(), "in the future")
        };
        return Err(Error::new(
            ErrorCode::WebhookTimestampExpired,
            format!(
                "the webhook request's {header_name} is {} s {side}; at most {} s are allowed",
                how_far / 1000,
                rule.tolerance_seconds
            ),
        ));
    }
    Ok(value)
}

/// The URI as HubSpot's v3 signature covers it: the URL with these escapes decoded (and no
/// others, and each once).
fn hubspot_uri(url: &str) -> String {
    const DECODED: [(&str, char); 12] = [
        ("3A", ':'),
        ("2F", '/'),
        ("3F", '?'),
        ("40", '@'),
        ("21", '!'),
        ("24", '$'),
        ("27", '\''),
        ("28", '('),
        ("29", ')'),
        ("2A", '*'),
        ("2C", ','),
        ("3B", ';'),
    ];
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let decoded = after.get(..2).and_then(|hex| {
            DECODED
                .iter()
                .find(|(code, _)| code.eq_ignore_ascii_case(hex))
        });
        match decoded {
            Some((_, c)) => {
                out.push(*c);
                rest = &after[2..];
            }
            None => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(id: &str) -> WebhookScheme {
        WebhookScheme::builtin(id).unwrap()
    }

    fn code(result: Result<()>) -> ErrorCode {
        result.unwrap_err().code
    }

    fn body_request<'a>(headers: &'a [(&'a str, &'a str)], body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest {
            method: None,
            url: None,
            headers,
            body,
        }
    }

    /// RFC 4231 §4.2, §4.3 and §4.7, through Attio's scheme: the MAC of the body, in hex.
    #[test]
    fn rfc_4231_vectors_verify_as_attio_signatures() {
        let attio = builtin("attio");
        let vectors: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, body, mac) in vectors {
            let upper = mac.to_uppercase();
            for (name, value) in [
                ("attio-signature", mac),
                ("X-ATTIO-SIGNATURE", upper.as_str()),
            ] {
                let headers = [(name, value)];
                verify_webhook_signature(&attio, &body_request(&headers, body), key, 0).unwrap();
            }
            let headers = [("Attio-Signature", mac)];
            let mut tampered = body.to_vec();
            tampered[0] ^= 1;
            assert_eq!(
                code(verify_webhook_signature(
                    &attio,
                    &body_request(&headers, &tampered),
                    key,
                    0
                )),
                ErrorCode::WebhookSignatureMismatch
            );
            assert_eq!(
                code(verify_webhook_signature(
                    &attio,
                    &body_request(&headers, body),
                    b"other",
                    0
                )),
                ErrorCode::WebhookSignatureMismatch
            );
        }
    }

    #[test]
    fn missing_and_malformed_signatures_have_their_own_codes() {
        let attio = builtin("attio");
        let good = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let cases: [(&[(&str, &str)], ErrorCode); 8] = [
            (&[], ErrorCode::WebhookSignatureMissing),
            (
                &[("content-type", "application/json")],
                ErrorCode::WebhookSignatureMissing,
            ),
            (
                &[("attio-signature", "  ")],
                ErrorCode::WebhookSignatureMissing,
            ),
            (
                &[("attio-signature", &good[..63])],
                ErrorCode::WebhookSignatureMalformed,
            ),
            (
                &[("attio-signature", &good[..62])],
                ErrorCode::WebhookSignatureMalformed,
            ),
            (
                &[("attio-signature", "zz")],
                ErrorCode::WebhookSignatureMalformed,
            ),
            (
                &[("attio-signature", "é5")],
                ErrorCode::WebhookSignatureMalformed,
            ),
            (
                &[("attio-signature", good), ("Attio-Signature", good)],
                ErrorCode::WebhookSignatureMalformed,
            ),
        ];
        for (headers, expected) in cases {
            let request = body_request(headers, b"what do ya want for nothing?");
            assert_eq!(
                code(verify_webhook_signature(&attio, &request, b"Jefe", 0)),
                expected,
                "{:?}",
                headers
            );
        }
        let non_hex = format!("{}g", &good[..63]);
        let headers = [("attio-signature", non_hex.as_str())];
        let err =
            verify_webhook_signature(&attio, &body_request(&headers, b""), b"Jefe", 0).unwrap_err();
        assert!(
            err.message.contains("Attio-Signature") && !err.message.contains(&non_hex),
            "{}",
            err.message
        );
        // The preferred header is the one verified, even when the legacy one is right.
        let headers = [
            ("attio-signature", &good[..62]),
            ("x-attio-signature", good),
        ];
        let request = body_request(&headers, b"what do ya want for nothing?");
        assert_eq!(
            code(verify_webhook_signature(&attio, &request, b"Jefe", 0)),
            ErrorCode::WebhookSignatureMalformed
        );
    }

    const SECRET: &[u8] = b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const TS: i64 = 1_700_000_000_000;

    fn hubspot<'a>(
        headers: &'a [(&'a str, &'a str)],
        url: &'a str,
        body: &'a [u8],
    ) -> WebhookRequest<'a> {
        WebhookRequest {
            method: Some("POST"),
            url: Some(url),
            headers,
            body,
        }
    }

    /// Signatures computed with Python's `hmac` and `base64`, apart from this code.
    #[test]
    fn hubspot_v3_signs_method_uri_body_and_timestamp() {
        let scheme = builtin("hubspot");
        let body = br#"{"example_field":"example_value"}"#;
        let headers = [
            (
                "X-HubSpot-Signature-v3",
                "rQEKkaNUiu+1qGF//O/pw4BCzstSqO1PyUnGICmf+7o=",
            ),
            ("x-hubspot-request-timestamp", "1700000000000"),
        ];
        let url = "https://www.example.com/webhook_uri";
        verify_webhook_signature(&scheme, &hubspot(&headers, url, body), SECRET, TS).unwrap();
        let mut get = hubspot(&headers, url, body);
        get.method = Some("GET");
        for changed in [
            get,
            hubspot(&headers, "https://www.example.com/webhook_uri?x=1", body),
            hubspot(&headers, "http://www.example.com/webhook_uri", body),
            hubspot(&headers, url, b"{}"),
        ] {
            assert_eq!(
                code(verify_webhook_signature(&scheme, &changed, SECRET, TS)),
                ErrorCode::WebhookSignatureMismatch
            );
        }
        let restamped = [headers[0], ("x-hubspot-request-timestamp", "1700000000001")];
        assert_eq!(
            code(verify_webhook_signature(
                &scheme,
                &hubspot(&restamped, url, body),
                SECRET,
                TS
            )),
            ErrorCode::WebhookSignatureMismatch,
            "the timestamp is signed"
        );
        // HubSpot signs the URI with these escapes decoded; %7E stays as sent.
        let headers = [
            (
                "x-hubspot-signature-v3",
                "ZfNKGE+cuTBBW5iFX+uKrJJNoVfB0mO2NwsPXI5FJzs=",
            ),
            ("x-hubspot-request-timestamp", "1700000000000"),
        ];
        let encoded = "https://app.example.com/hooks/hub%3Aspot?portal=1%2c2&q=%7E&at=%40";
        verify_webhook_signature(&scheme, &hubspot(&headers, encoded, b"[]"), SECRET, TS).unwrap();
    }

    #[test]
    fn hubspot_timestamps_have_a_five_minute_window() {
        let scheme = builtin("hubspot");
        let body = br#"{"example_field":"example_value"}"#;
        let signature = (
            "x-hubspot-signature-v3",
            "rQEKkaNUiu+1qGF//O/pw4BCzstSqO1PyUnGICmf+7o=",
        );
        let headers = [signature, ("x-hubspot-request-timestamp", "1700000000000")];
        let request = hubspot(&headers, "https://www.example.com/webhook_uri", body);
        for now in [TS - 300_000, TS + 300_000] {
            verify_webhook_signature(&scheme, &request, SECRET, now).unwrap();
        }
        for now in [TS - 300_001, TS + 300_001, 0, i64::MAX, i64::MIN] {
            assert_eq!(
                code(verify_webhook_signature(&scheme, &request, SECRET, now)),
                ErrorCode::WebhookTimestampExpired,
                "{now}"
            );
        }
        for stamp in ["", "17e11", "-1", "1700000000000.0", "99999999999999999999"] {
            let headers = [signature, ("x-hubspot-request-timestamp", stamp)];
            let request = hubspot(&headers, "https://www.example.com/webhook_uri", body);
            assert_eq!(
                code(verify_webhook_signature(&scheme, &request, SECRET, TS)),
                ErrorCode::WebhookTimestampInvalid,
                "{stamp}"
            );
        }
        let headers = [signature];
        let request = hubspot(&headers, "https://www.example.com/webhook_uri", body);
        assert_eq!(
            code(verify_webhook_signature(&scheme, &request, SECRET, TS)),
            ErrorCode::WebhookTimestampInvalid
        );
    }

    #[test]
    fn hubspot_needs_the_method_and_the_full_url() {
        let scheme = builtin("hubspot");
        for (method, url) in [
            (None, Some("https://app.example.com/hook")),
            (Some(""), Some("https://app.example.com/hook")),
            (Some("POST"), None),
            (Some("POST"), Some("/hook?x=1")),
            (Some("POST"), Some("app.example.com/hook")),
        ] {
            let request = WebhookRequest {
                method,
                url,
                headers: &[],
                body: b"",
            };
            assert_eq!(
                code(verify_webhook_signature(&scheme, &request, SECRET, TS)),
                ErrorCode::InvalidArgument
            );
        }
    }

    #[test]
    fn only_hubspots_escapes_are_decoded_and_each_once() {
        assert_eq!(
            hubspot_uri("https://h/a%3a%2F%3F%40%21%24%27%28%29%2A%2C%3B"),
            "https://h/a:/?@!$'()*,;"
        );
        assert_eq!(
            hubspot_uri("https://h/%253A%20%7e%"),
            "https://h/%253A%20%7e%"
        );
        assert_eq!(hubspot_uri("https://h/%3"), "https://h/%3");
        assert_eq!(hubspot_uri("https://h/%é3A"), "https://h/%é3A");
    }
}
