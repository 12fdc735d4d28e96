//! The identity probe: who a token belongs to and whether it is alive, read with the JSON
//! pointers of the provider's definition. Attio answers a dead token with `200 {"active":false}`,
//! so the body decides, not only the status.

use super::http::{self, Answer, ClientCredentials};
use super::scrub::Sent;
use crate::error::{Error, ErrorCode, Result};
use crate::providers::{IdentityProbe, ProbeStyle, Provider};
use crate::records::ProviderAccount;
use reqwest::header::AUTHORIZATION;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use url::Url;
use zeroize::Zeroizing;

/// What the probe found.
#[derive(Debug, Default)]
pub struct Identity {
    /// `false` when the provider says the token is dead (revoked, app uninstalled).
    pub active: bool,
    pub account: ProviderAccount,
    pub scopes: Option<Vec<String>>,
    /// The definition's `keep` fields.
    pub kept: Map<String, Value>,
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The probe's URL, filled from `values` (the connection's stored extras, or what the callback
/// and token response supplied). A failure here is the app's configuration or the connection's
/// data, never the provider's answer: callers stop on it before sending anything.
pub fn url(provider: &Provider, values: &[&Map<String, Value>]) -> Result<Url> {
    let probe = definition_probe(provider)?;
    provider
        .definition
        .fill("identity.url", &probe.url, &|name| {
            provider.template_value(values, name)
        })
}

fn definition_probe(provider: &Provider) -> Result<&IdentityProbe> {
    provider
        .definition
        .identity
        .as_ref()
        .ok_or_else(|| Error::internal("no identity probe"))
}

/// Calls the provider's identity probe at `url` (from [`url`]).
pub async fn probe(
    http_client: &reqwest::Client,
    provider: &Provider,
    url: Url,
    access_token: &impl ExposeSecret<str>,
) -> Result<Identity> {
    let probe = definition_probe(provider)?;
    let purpose = format!("{} identity endpoint", provider.definition.display_name);
    let answer: Answer = match probe.style {
        ProbeStyle::Bearer => {
            let method = if probe.method.eq_ignore_ascii_case("POST") {
                reqwest::Method::POST
            } else {
                reqwest::Method::GET
            };
            let mut sent = Sent::default();
            sent.add(access_token.expose_secret());
            let authorization = Zeroizing::new(format!(
                "{} {}",
                probe.auth_scheme,
                access_token.expose_secret()
            ));
            let request = http_client
                .request(method, url)
                .header("accept", "application/json")
                .header(
                    AUTHORIZATION,
                    http::secret_header(authorization, "the identity probe's authorization")?,
                );
            http::send(request, &purpose, sent).await?
        }
        ProbeStyle::Introspection => {
            let (id, secret) = provider.require_client()?;
            let credentials = ClientCredentials {
                auth: provider.definition.client_auth,
                id,
                secret,
            };
            http::post_form(
                http_client,
                &purpose,
                url,
                vec![("token", access_token.expose_secret())],
                &credentials,
            )
            .await?
        }
    };
    read_answer(probe, &purpose, &answer)
}

/// What an identity probe's answer says, read with the definition's JSON pointers. Pure, so
/// the fuzzer reaches it without a network.
pub fn read_answer(probe: &IdentityProbe, purpose: &str, answer: &Answer) -> Result<Identity> {
    if answer.status == 401 || answer.status == 403 {
        return Ok(Identity {
            active: false,
            ..Default::default()
        });
    }
    if !answer.is_success() {
        return Err(http::unexpected(purpose, answer));
    }
    let body = answer.json_object().map(Value::Object).ok_or_else(|| {
        Error::new(
            ErrorCode::ProviderError,
            format!("the {purpose} answered with something that is not a JSON object"),
        )
    })?;
    let active = match &probe.active_field {
        Some(pointer) => body
            .pointer(pointer)
            .and_then(Value::as_bool)
            .unwrap_or(false),
        None => true,
    };
    let get = |pointer: &Option<String>| pointer.as_deref().and_then(|p| body.pointer(p));
    // Account and scopes are stored and returned in plaintext: nothing the probe sent (the
    // token) may come back in them from an endpoint that echoes it.
    let clean = |value: Option<String>| value.filter(|v| answer.sent.is_clean(v));
    Ok(Identity {
        active,
        account: ProviderAccount {
            id: clean(text(get(&probe.account_id))),
            name: clean(text(get(&probe.account_name))),
        },
        scopes: get(&probe.scopes)
            .and_then(super::token::scope_list)
            .map(|mut scopes| {
                scopes.retain(|scope| answer.sent.is_clean(scope));
                scopes
            }),
        kept: probe
            .keep
            .iter()
            .filter_map(|(name, pointer)| {
                body.pointer(pointer)
                    .filter(|v| !v.is_null())
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect(),
    })
}
