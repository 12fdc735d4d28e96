//! Redeeming an authorization code at the token endpoint (RFC 6749 §4.1.3).

use super::http::{self, Answer, ClientCredentials};
use super::token::{self, TokenSet};
use crate::error::{Error, ErrorCode, Result};
use crate::providers::{Provider, ProviderDefinition};
use crate::secrets::PkceVerifier;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

/// What a code exchange sends besides the client's credentials.
pub struct CodeGrant<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub verifier: Option<&'a PkceVerifier>,
    /// Values the provider sent with the callback, for the token URL's template (Zoho's
    /// `accounts-server`).
    pub callback_values: &'a Map<String, Value>,
}

/// Exchanges the code, once: a refusal is `CODE_EXCHANGE_FAILED`, anything else unexpected
/// `PROVIDER_ERROR`.
pub async fn exchange_code(
    http_client: &reqwest::Client,
    provider: &Provider,
    grant: CodeGrant<'_>,
) -> Result<TokenSet> {
    let definition = &provider.definition;
    let token_url = definition.fill("tokenUrl", &definition.token_url, &|name| {
        provider.template_value(&[grant.callback_values], name)
    })?;
    let credentials = ClientCredentials::of(provider)?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", grant.code),
        ("redirect_uri", grant.redirect_uri),
    ];
    if let Some(v) = grant.verifier {
        form.push(("code_verifier", v.expose_secret()));
    }
    let purpose = format!("{} token endpoint", definition.display_name);
    let answer = http::post_form(http_client, &purpose, token_url, form, &credentials).await?;
    read_answer(definition, &purpose, &answer)
}

/// What the token endpoint's answer to a code exchange means: tokens, or why not. Pure, so
/// the fuzzer reaches it without a network.
pub fn read_answer(
    definition: &ProviderDefinition,
    purpose: &str,
    answer: &Answer,
) -> Result<TokenSet> {
    let refused = (400..500)
        .contains(&answer.status)
        .then(|| http::oauth_error(answer))
        .flatten();
    match answer.json_object() {
        Some(body) if answer.is_success() => token::parse_answer(definition, &body, &answer.sent),
        _ if refused.is_some() => Err(Error::new(
            ErrorCode::CodeExchangeFailed,
            format!(
                "the {purpose} refused the authorization code: {}",
                refused.unwrap_or_default()
            ),
        )),
        None if answer.is_success() => Err(Error::new(
            ErrorCode::ProviderError,
            format!("the {purpose} answered with something that is not JSON"),
        )),
        _ => Err(http::unexpected(purpose, answer)),
    }
}
