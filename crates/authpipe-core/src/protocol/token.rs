//! Token responses, read leniently (RFC 6749 §5.1): unknown fields ignored, `token_type`
//! compared case-insensitively, `expires_in` as a number or a numeric string, scopes as a
//! string or an array. Provider fields the definition asks for are kept as extras.

use super::scrub::Sent;
use crate::error::{Error, ErrorCode, Result};
use crate::providers::ProviderDefinition;
use crate::secrets::{AccessToken, RefreshToken};
use serde_json::{Map, Value};

/// What a token endpoint granted.
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    /// Seconds, from `expires_in` or the provider's documented default.
    pub expires_in: Option<u64>,
    /// Granted scopes, when the response says.
    pub scopes: Option<Vec<String>>,
    /// The definition's `tokenFields` found in the response.
    pub extras: Map<String, Value>,
}

impl TokenSet {
    /// When the access token expires, for a response to a request sent at `requested_at` (ms).
    ///
    /// Counted from the request, not the response: the server started the token's life
    /// somewhere between the two, so a clock started on receipt would outlive the token by the
    /// round trip (and a slow response, or a busy process, makes that long). What `expires_in`
    /// loses to whole seconds is left to `maintenance::timing::usable_until`.
    pub fn expires_at(&self, requested_at: i64) -> Option<i64> {
        self.expires_in
            .map(|s| requested_at.saturating_add((s as i64).saturating_mul(1000)))
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

fn garbage(what: &str) -> Error {
    Error::new(
        ErrorCode::ProviderError,
        format!("the token response {what}"),
    )
}

/// Scopes as a provider writes them: a string split on spaces or commas, or an array.
pub fn scope_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(
            s.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// [`parse`] for the answer to a request that sent `sent`: a granted scope that repeats a value
/// the request carried is dropped, since scopes are stored and returned in plaintext.
pub fn parse_answer(
    definition: &ProviderDefinition,
    body: &Map<String, Value>,
    sent: &Sent,
) -> Result<TokenSet> {
    let mut tokens = parse(definition, body)?;
    if let Some(scopes) = tokens.scopes.as_mut() {
        scopes.retain(|scope| sent.is_clean(scope));
    }
    Ok(tokens)
}

pub fn parse(definition: &ProviderDefinition, body: &Map<String, Value>) -> Result<TokenSet> {
    let access_token = match body.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() && !t.chars().any(char::is_control) => {
            AccessToken::new(t.clone())
        }
        _ => return Err(garbage("has no usable access_token")),
    };
    if let Some(kind) = body.get("token_type") {
        // RFC 6749 §7.1: a client must not use a token type it does not understand.
        if !kind
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("bearer"))
        {
            return Err(garbage("is for a token type other than Bearer"));
        }
    }
    let expires_in = match body.get("expires_in") {
        None | Some(Value::Null) => definition.default_expires_in,
        Some(Value::Number(n)) => Some(
            n.as_f64()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| garbage("has a bad expires_in"))? as u64,
        ),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| garbage("has a bad expires_in"))?,
        ),
        Some(_) => return Err(garbage("has a bad expires_in")),
    };
    let refresh_token = match body.get("refresh_token") {
        Some(Value::String(t)) if !t.is_empty() => Some(RefreshToken::new(t.clone())),
        _ => None,
    };
    let scopes = body
        .get("scope")
        .or_else(|| body.get("scopes"))
        .and_then(scope_list);
    let extras = definition
        .token_fields
        .iter()
        .filter_map(|field| {
            body.get(field)
                .filter(|v| !v.is_null())
                .map(|v| (field.clone(), v.clone()))
        })
        .collect();
    Ok(TokenSet {
        access_token,
        refresh_token,
        expires_in,
        scopes,
        extras,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::builtin_definitions;
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn def(id: &str) -> ProviderDefinition {
        builtin_definitions()
            .into_iter()
            .find(|d| d.id == id)
            .unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_the_shapes_providers_really_send() {
        let attio = parse(
            &def("attio"),
            &obj(json!({ "access_token": "a", "token_type": "Bearer" })),
        )
        .unwrap();
        assert_eq!(attio.access_token.expose_secret(), "a");
        assert!(attio.refresh_token.is_none() && attio.expires_in.is_none());

        let hubspot = parse(
            &def("hubspot"),
            &obj(json!({ "token_type": "bearer", "refresh_token": "r", "hub_id": 62515, "scopes": ["oauth", "crm.objects.contacts.read"], "access_token": "a", "expires_in": 1800 })),
        )
        .unwrap();
        assert_eq!(hubspot.expires_in, Some(1800));
        assert_eq!(
            hubspot.scopes.unwrap(),
            ["oauth", "crm.objects.contacts.read"]
        );
        assert_eq!(hubspot.extras["hub_id"], json!(62515));

        let pipedrive = parse(
            &def("pipedrive"),
            &obj(json!({ "access_token": "a", "token_type": "Bearer", "expires_in": "3599", "refresh_token": "r", "scope": "base,deals:full", "api_domain": "https://acme.pipedrive.com" })),
        )
        .unwrap();
        assert_eq!(pipedrive.expires_in, Some(3599));
        assert_eq!(pipedrive.scopes.unwrap(), ["base", "deals:full"]);
        assert_eq!(
            pipedrive.extras["api_domain"],
            json!("https://acme.pipedrive.com")
        );

        let zoho = parse(
            &def("zoho"),
            &obj(json!({ "access_token": "a", "api_domain": "https://www.zohoapis.eu" })),
        )
        .unwrap();
        assert_eq!(
            zoho.expires_in,
            Some(3600),
            "the documented default when expires_in is absent"
        );
    }

    #[test]
    fn refuses_what_is_not_a_bearer_token_response() {
        let d = def("attio");
        for body in [
            json!({}),
            json!({ "access_token": "" }),
            json!({ "access_token": 5 }),
            json!({ "access_token": "a", "token_type": "mac" }),
            json!({ "access_token": "a", "expires_in": "soon" }),
        ] {
            assert_eq!(
                parse(&d, &obj(body)).unwrap_err().code,
                ErrorCode::ProviderError
            );
        }
    }

    #[test]
    fn expiry_counts_from_the_request() {
        let d = def("hubspot");
        let tokens = parse(&d, &obj(json!({ "access_token": "a", "expires_in": 1800 }))).unwrap();
        assert_eq!(tokens.expires_at(10_000), Some(10_000 + 1_800_000));
        let forever = parse(&def("attio"), &obj(json!({ "access_token": "a" }))).unwrap();
        assert_eq!(forever.expires_at(10_000), None);
    }
}
