//! `verifyWebhook`: the provider's scheme, then the request's signature and timestamp (before
//! any store read, so unsigned requests cost nothing), then the key, opened from the vault or
//! taken from the app's settings, and the constant-time MAC check of `protocol::webhook`. The
//! key is used and dropped here: it never leaves Rust.

use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{SecretName, TenantId};
use crate::protocol::webhook::{self, WebhookRequest};
use crate::providers::{WebhookKey, DEFAULT_WEBHOOK_SECRET_NAME};
use crate::store::SecretKey;
use secrecy::ExposeSecret;

/// One received webhook request, and whose secret verifies it.
pub struct WebhookCall {
    pub provider: String,
    /// Whose vault secret is the key (required unless the provider signs with the app's client
    /// secret and no `name` is given).
    pub tenant: Option<String>,
    /// The vault secret's name; default [`DEFAULT_WEBHOOK_SECRET_NAME`].
    pub name: Option<String>,
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Client {
    /// `Ok(())` if the request is signed as its provider signs webhooks, with the right key.
    pub async fn verify_webhook(&self, call: &WebhookCall) -> Result<()> {
        let id = self.provider(&call.provider)?;
        let provider = self.catalog().require(&id)?;
        let display = &provider.definition.display_name;
        let scheme = provider.definition.webhook.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::WebhookUnsupported,
                format!(
                    "{display} has no webhook signature scheme here; a custom provider declares one in providers.{id}.webhook"
                ),
            )
        })?;
        let name = call.name.as_deref().map(SecretName::parse).transpose()?;
        let tenant = call.tenant.as_deref().map(TenantId::parse).transpose()?;
        let vault_key = match (scheme.key, name) {
            (WebhookKey::ClientSecret, None) => None,
            (_, name) => {
                let tenant = tenant.ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "tenantId is required: {display}'s webhook secret is kept per tenant (setSecret)"
                    ))
                })?;
                let name = match name {
                    Some(name) => name,
                    None => SecretName::parse(DEFAULT_WEBHOOK_SECRET_NAME)?,
                };
                Some(SecretKey {
                    tenant,
                    provider: Some(id.clone()),
                    name,
                })
            }
        };

        let headers: Vec<(&str, &str)> = call
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request = WebhookRequest {
            method: call.method.as_deref(),
            url: call.url.as_deref(),
            headers: &headers,
            body: &call.body,
        };
        let signed = webhook::parse(scheme, &request, self.engine().now_ms())?;

        match vault_key {
            None => {
                let secret = provider.client_secret.as_ref().ok_or_else(|| {
                    Error::new(
                        ErrorCode::WebhookSecretMissing,
                        format!(
                            "providers.{id}.clientSecret is not configured: {display} signs webhooks with the app's client secret"
                        ),
                    )
                })?;
                signed.verify(secret.expose_secret().as_bytes())
            }
            Some(key) => {
                let secret = self.engine().secret(&key).await.map_err(|e| match e.code {
                    ErrorCode::SecretNotFound => Error::new(
                        ErrorCode::WebhookSecretMissing,
                        format!(
                            "no webhook secret named '{}' for tenant '{}' and provider '{id}': store the signing secret {display} issued with setSecret({{ tenantId, provider: '{id}', name: '{}', value }})",
                            key.name, key.tenant, key.name
                        ),
                    ),
                    _ => e,
                })?;
                signed.verify(secret.expose_secret().as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, T0};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use secrecy::SecretString;
    use serde_json::json;
    use sha2::Sha256;

    fn mac(key: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        parts.iter().for_each(|p| mac.update(p));
        mac.finalize().into_bytes().to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn attio_call(tenant: &str, signature: String, body: &[u8]) -> WebhookCall {
        WebhookCall {
            provider: "attio".into(),
            tenant: Some(tenant.into()),
            name: None,
            method: Some("POST".into()),
            url: None,
            headers: vec![("attio-signature".into(), signature)],
            body: body.to_vec(),
        }
    }

    #[tokio::test]
    async fn attio_webhooks_verify_with_the_tenants_vault_secret() {
        let f = Fixture::start().await;
        let client = Fixture::attach(&f.engine, &json!({}), None);
        for (tenant, secret) in [("t-a", "whsec-a"), ("t-b", "whsec-b")] {
            let key = client.secret_key(tenant, Some("attio"), "webhook").unwrap();
            f.engine
                .set_secret(&key, &SecretString::from(secret))
                .await
                .unwrap();
        }
        let body = br#"{"event_type":"record.created"}"#;
        let signature = hex(&mac("whsec-a", &[body]));
        client
            .verify_webhook(&attio_call("t-a", signature.clone(), body))
            .await
            .unwrap();
        let other_tenant = client
            .verify_webhook(&attio_call("t-b", signature.clone(), body))
            .await;
        assert_eq!(
            other_tenant.unwrap_err().code,
            ErrorCode::WebhookSignatureMismatch
        );
        let absent = client
            .verify_webhook(&attio_call("t-c", signature.clone(), body))
            .await
            .unwrap_err();
        assert_eq!(absent.code, ErrorCode::WebhookSecretMissing);
        assert!(
            absent.message.contains("'webhook'") && absent.message.contains("'t-c'"),
            "{}",
            absent.message
        );
        let mut named = attio_call("t-a", signature, body);
        named.name = Some("webhook-2".into());
        assert_eq!(
            client.verify_webhook(&named).await.unwrap_err().code,
            ErrorCode::WebhookSecretMissing
        );
        let mut untenanted = attio_call("t-a", String::new(), body);
        untenanted.tenant = None;
        assert_eq!(
            client.verify_webhook(&untenanted).await.unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[tokio::test]
    async fn hubspot_webhooks_verify_with_the_client_secret_on_the_engines_clock() {
        let f = Fixture::start().await;
        let client = Fixture::attach(
            &f.engine,
            &json!({ "hubspot": { "clientId": "id", "clientSecret": "cs-1" } }),
            None,
        );
        let (url, body, stamp) = (
            "https://app.example.com/hooks/hubspot?a=1",
            b"[]",
            T0.to_string(),
        );
        let signature = STANDARD.encode(mac(
            "cs-1",
            &[b"POST", url.as_bytes(), body, stamp.as_bytes()],
        ));
        let call = WebhookCall {
            provider: "hubspot".into(),
            tenant: None,
            name: None,
            method: Some("POST".into()),
            url: Some(url.into()),
            headers: vec![
                ("X-HubSpot-Signature-v3".into(), signature),
                ("X-HubSpot-Request-Timestamp".into(), stamp),
            ],
            body: body.to_vec(),
        };
        client.verify_webhook(&call).await.unwrap();
        f.clock.advance(300_000);
        client.verify_webhook(&call).await.unwrap();
        f.clock.advance(1);
        assert_eq!(
            client.verify_webhook(&call).await.unwrap_err().code,
            ErrorCode::WebhookTimestampExpired
        );

        let unconfigured = Fixture::attach(&f.engine, &json!({}), None);
        f.clock.advance(-300_001);
        let err = unconfigured.verify_webhook(&call).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::WebhookSecretMissing);
        assert!(
            err.message.contains("providers.hubspot.clientSecret"),
            "{}",
            err.message
        );
        assert!(!format!("{err:?}").contains("cs-1"));
    }

    #[tokio::test]
    async fn providers_without_a_scheme_are_refused() {
        let f = Fixture::start().await;
        let mut call = attio_call("t", "00".repeat(32), b"");
        call.provider = "pipedrive".into();
        let err = f.client.verify_webhook(&call).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::WebhookUnsupported);
        call.provider = "nope".into();
        assert_eq!(
            f.client.verify_webhook(&call).await.unwrap_err().code,
            ErrorCode::UnknownProvider
        );
    }
}
