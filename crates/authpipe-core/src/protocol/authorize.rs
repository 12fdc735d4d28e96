//! The authorization request (RFC 6749 §4.1.1) with PKCE S256 (RFC 7636) where the provider
//! takes it: where the browser is sent to start a connection.

use crate::error::Result;
use crate::providers::Provider;
use crate::secrets::PkceVerifier;
use oauth2::PkceCodeChallenge;
use url::Url;

/// What the authorize URL carries besides the provider's own parameters.
pub struct AuthorizeRequest<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub state: &'a str,
    pub scopes: &'a [String],
}

/// Where to send the browser, and the PKCE verifier to keep for the code exchange.
pub struct Authorization {
    pub url: Url,
    pub verifier: Option<PkceVerifier>,
}

/// Builds the authorize URL of `provider` (templated from the app's settings only: nothing
/// from the provider is known yet).
pub fn authorize_url(provider: &Provider, request: AuthorizeRequest<'_>) -> Result<Authorization> {
    let definition = &provider.definition;
    let mut url = definition.fill("authorizeUrl", &definition.authorize_url, &|name| {
        provider.template_value(&[], name)
    })?;
    let verifier = {
        let mut query = url.query_pairs_mut();
        query.append_pair("response_type", "code");
        query.append_pair("client_id", request.client_id);
        query.append_pair("redirect_uri", request.redirect_uri);
        query.append_pair("state", request.state);
        if let Some(param) = &definition.scope_param {
            if !request.scopes.is_empty() {
                // Scopes may name the app's params ({org} in Dynamics' scope).
                let filled: Vec<String> = request
                    .scopes
                    .iter()
                    .map(|s| {
                        provider
                            .params
                            .iter()
                            .fold(s.clone(), |acc, (k, v)| acc.replace(&format!("{{{k}}}"), v))
                    })
                    .collect();
                query.append_pair(&param.name, &filled.join(&param.separator));
            }
        }
        for (name, value) in &definition.authorize_params {
            query.append_pair(name, value);
        }
        if definition.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            query.append_pair("code_challenge", challenge.as_str());
            query.append_pair("code_challenge_method", "S256");
            Some(PkceVerifier::new(verifier.into_secret()))
        } else {
            None
        }
    };
    Ok(Authorization { url, verifier })
}
