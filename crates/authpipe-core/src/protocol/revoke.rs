//! Token revocation (RFC 7009), where the provider has an endpoint for it.

use super::http::{self, ClientCredentials};
use crate::error::Result;
use crate::providers::definition::TokenIn;
use crate::providers::Provider;
use crate::secrets::RefreshToken;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

/// What a revocation at the provider came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The provider confirmed (RFC 7009: 200 also for an already invalid token).
    Revoked,
    /// The provider has no revocation endpoint (Attio, Copper, Microsoft).
    NotSupported,
    /// No client credentials are configured, so it could not be attempted.
    NotAttempted,
    /// The provider did not confirm; the message says why. The local copy is deleted anyway.
    Failed(String),
}

impl Revocation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::NotSupported => "not_supported",
            Self::NotAttempted => "not_attempted",
            Self::Failed(_) => "failed",
        }
    }
}

/// The tokens of the grant to revoke.
pub struct GrantTokens<'a> {
    /// The connection's credential (its access token).
    pub access_token: &'a SecretString,
    pub refresh_token: Option<&'a RefreshToken>,
    /// The connection's stored extras, for the revocation URL's template.
    pub values: &'a Map<String, Value>,
}

/// Why a revocation at `provider` cannot be attempted, if it cannot: checked before the
/// connection's secrets are opened for it.
pub fn unattemptable(provider: &Provider) -> Option<Revocation> {
    if provider.definition.revoke.is_none() {
        Some(Revocation::NotSupported)
    } else if provider.require_client().is_err() {
        Some(Revocation::NotAttempted)
    } else {
        None
    }
}

/// Revokes the grant: its refresh token, or the access token if it has none (RFC 7009 §2.1).
pub async fn revoke(
    http_client: &reqwest::Client,
    provider: &Provider,
    tokens: GrantTokens<'_>,
) -> Result<Revocation> {
    if let Some(outcome) = unattemptable(provider) {
        return Ok(outcome);
    }
    let definition = &provider.definition;
    let revoke = definition
        .revoke
        .as_ref()
        .ok_or_else(|| crate::error::Error::internal("no revocation endpoint"))?;
    let credentials = ClientCredentials::of(provider)?;
    let mut url = definition.fill("revoke.url", &revoke.url, &|name| {
        provider.template_value(&[tokens.values], name)
    })?;
    let (token, hint) = match tokens.refresh_token {
        Some(rt) => (rt.expose_secret(), "refresh_token"),
        None => (tokens.access_token.expose_secret(), "access_token"),
    };
    let mut form = vec![("token_type_hint", hint)];
    match revoke.token_in {
        TokenIn::Body => form.push(("token", token)),
        TokenIn::Query => {
            url.query_pairs_mut().append_pair("token", token);
        }
    }
    let purpose = format!("{} revocation endpoint", definition.display_name);
    let answer = http::post_form(http_client, &purpose, url, form, &credentials).await?;
    Ok(if answer.is_success() {
        Revocation::Revoked
    } else {
        Revocation::Failed(http::unexpected(&purpose, &answer).message)
    })
}
