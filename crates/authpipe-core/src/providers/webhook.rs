//! How a provider signs the webhook requests it sends (`webhook` in a definition), as data:
//! which headers carry the signature, what the HMAC-SHA256 covers, how it is encoded, whether a
//! signed timestamp bounds its age, and which secret is the key. `protocol::webhook` verifies
//! requests against it.

use crate::error::{Error, Result};
use serde::Deserialize;

/// The secret name `verifyWebhook` reads from the vault when the caller names none.
pub const DEFAULT_WEBHOOK_SECRET_NAME: &str = "webhook";

/// What the HMAC-SHA256 is computed over.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SignedContent {
    /// The raw request body, byte for byte (Attio).
    Body,
    /// `method + uri + body + timestamp`, concatenated, where `uri` is the full URL the provider
    /// called with `%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B` decoded (HubSpot's v3).
    MethodUriBodyTimestamp,
}

/// How the signature header spells the 32 MAC bytes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard base64 with padding (RFC 4648 §4).
    Base64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    Seconds,
    Milliseconds,
}

/// A signed timestamp header, and how far from now it may be.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimestampRule {
    pub header: String,
    pub unit: TimestampUnit,
    /// Requests whose timestamp is further than this from now, either way, are refused.
    pub tolerance_seconds: u32,
}

/// Which secret is the HMAC key.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WebhookKey {
    /// A secret kept with `setSecret` under (tenantId, provider, name), per tenant: the signing
    /// secret the provider issued when the webhook was created (Attio).
    #[default]
    Vault,
    /// The app's OAuth client secret, `providers.<id>.clientSecret` (HubSpot). A caller who
    /// names a secret reads it from the vault instead.
    ClientSecret,
}

/// A provider's webhook signature scheme.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookScheme {
    pub signs: SignedContent,
    /// The headers that may carry the signature, the preferred first (names are
    /// case-insensitive); the first one present is the one verified.
    pub signature_headers: Vec<String>,
    pub encoding: SignatureEncoding,
    #[serde(default)]
    pub timestamp: Option<TimestampRule>,
    #[serde(default)]
    pub key: WebhookKey,
}

/// An HTTP header name (RFC 9110 `token`).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl WebhookScheme {
    /// A built-in provider's scheme (`None`: not built in, or it signs no webhooks).
    pub fn builtin(provider: &str) -> Option<Self> {
        super::builtin_definitions()
            .into_iter()
            .find(|d| d.id == provider)
            .and_then(|d| d.webhook)
    }

    /// `field` names the definition's `webhook` entry in errors.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.signature_headers.is_empty() {
            return Err(Error::invalid_argument(format!(
                "{field}.signatureHeaders must name at least one header"
            )));
        }
        let timestamp_header = self.timestamp.as_ref().map(|t| t.header.as_str());
        for name in self
            .signature_headers
            .iter()
            .map(String::as_str)
            .chain(timestamp_header)
        {
            if !is_header_name(name) {
                return Err(Error::invalid_argument(format!(
                    "{field}: '{name}' is not an HTTP header name"
                )));
            }
        }
        match &self.timestamp {
            Some(rule) if rule.tolerance_seconds == 0 => Err(Error::invalid_argument(format!(
                "{field}.timestamp.toleranceSeconds must be at least 1"
            ))),
            None if self.signs == SignedContent::MethodUriBodyTimestamp => {
                Err(Error::invalid_argument(format!(
                    "{field}: signs methodUriBodyTimestamp needs a timestamp header"
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scheme(value: serde_json::Value) -> Result<WebhookScheme> {
        let scheme: WebhookScheme =
            serde_json::from_value(value).map_err(|e| Error::invalid_argument(e.to_string()))?;
        scheme.validate("providers.x.webhook")?;
        Ok(scheme)
    }

    #[test]
    fn a_scheme_is_checked_when_loaded() {
        let body =
            json!({ "signs": "body", "signatureHeaders": ["X-Signature"], "encoding": "hex" });
        assert_eq!(scheme(body.clone()).unwrap().key, WebhookKey::Vault);
        let mut none = body.clone();
        none["signatureHeaders"] = json!([]);
        assert!(scheme(none).unwrap_err().message.contains("at least one"));
        let mut spaced = body.clone();
        spaced["signatureHeaders"] = json!(["X Signature"]);
        assert!(scheme(spaced).unwrap_err().message.contains("header name"));
        let mut unstamped = body.clone();
        unstamped["signs"] = json!("methodUriBodyTimestamp");
        assert!(scheme(unstamped).unwrap_err().message.contains("timestamp"));
        let mut zero = body;
        zero["timestamp"] = json!({ "header": "X-T", "unit": "seconds", "toleranceSeconds": 0 });
        assert!(scheme(zero).unwrap_err().message.contains("at least 1"));
        assert!(scheme(
            json!({ "signs": "body", "signatureHeaders": ["X"], "encoding": "hex", "typo": 1 })
        )
        .is_err());
    }
}
