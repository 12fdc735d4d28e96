//! Custom providers from an issuer URL: RFC 8414 authorization server metadata, falling back to
//! OpenID Connect discovery. The metadata's `issuer` must equal the configured one exactly
//! (RFC 8414 §3.3), or the document is refused.

use super::definition::check_endpoint;
use crate::error::{Error, ErrorCode, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl Metadata {
    /// Writes what was discovered into a provider's settings object, leaving whatever the app
    /// set explicitly.
    pub fn merge_into(&self, settings: &mut serde_json::Value) {
        let Some(object) = settings.as_object_mut() else {
            return;
        };
        let mut set = |key: &str, value: serde_json::Value| {
            object.entry(key.to_owned()).or_insert(value);
        };
        set("authorizeUrl", self.authorization_endpoint.clone().into());
        set("tokenUrl", self.token_endpoint.clone().into());
        if let Some(url) = &self.revocation_endpoint {
            set("revokeUrl", url.clone().into());
        }
        set(
            "issParameterSupported",
            self.authorization_response_iss_parameter_supported.into(),
        );
        set(
            "pkce",
            self.code_challenge_methods_supported
                .iter()
                .any(|m| m == "S256")
                .into(),
        );
        let methods = &self.token_endpoint_auth_methods_supported;
        // RFC 8414: absent means client_secret_basic.
        let basic = methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic");
        set("clientAuth", if basic { "basic" } else { "body" }.into());
        if let Some(url) = &self.introspection_endpoint {
            set(
                "identity",
                serde_json::json!({ "style": "introspection", "method": "POST", "url": url, "activeField": "/active", "scopes": "/scope" }),
            );
        }
    }
}

/// Largest metadata document read: real ones are a few KiB, and an issuer is outside input.
const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// The body, unless it breaks off or grows past [`MAX_METADATA_BYTES`] (whatever
/// `Content-Length` claims: chunked bodies have none).
async fn read_capped(mut response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_METADATA_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// The metadata document `body`, fetched from `url` for `issuer`, checked: it must name that
/// issuer and usable endpoints. Pure, so the fuzzer reaches it without a network.
pub fn read_document(field: &str, issuer: &str, url: &str, body: &[u8]) -> Result<Metadata> {
    let not_metadata = || {
        Error::new(
            ErrorCode::ProviderError,
            format!("{field}: {url} is not authorization server metadata"),
        )
    };
    let metadata: Metadata = serde_json::from_slice(body).map_err(|_| not_metadata())?;
    if metadata.issuer != issuer {
        return Err(Error::new(
            ErrorCode::ProviderError,
            format!(
                "{field}: the metadata at {url} names issuer '{}', not '{issuer}'",
                metadata.issuer
            ),
        ));
    }
    check_endpoint(
        &format!("{field} authorization_endpoint"),
        &metadata.authorization_endpoint,
    )?;
    check_endpoint(&format!("{field} token_endpoint"), &metadata.token_endpoint)?;
    Ok(metadata)
}

/// Fetches and checks the metadata of `issuer`.
pub async fn discover(http: &reqwest::Client, field: &str, issuer: &str) -> Result<Metadata> {
    check_endpoint(field, issuer)?;
    let base = issuer.trim_end_matches('/');
    let mut last = String::new();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let url = format!("{base}{path}");
        match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                let not_metadata = || {
                    Error::new(
                        ErrorCode::ProviderError,
                        format!("{field}: {url} is not authorization server metadata"),
                    )
                };
                let body = read_capped(response).await.ok_or_else(not_metadata)?;
                return read_document(field, issuer, &url, &body);
            }
            Ok(response) => last = format!("{url} answered {}", response.status().as_u16()),
            Err(e) => {
                last = format!(
                    "{url}: {}",
                    if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        "unreachable".to_owned()
                    }
                )
            }
        }
    }
    Err(Error::new(
        ErrorCode::ProviderError,
        format!("{field}: discovery failed ({last})"),
    ))
}
