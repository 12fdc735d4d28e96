//! What callers hand the engine, validated into types the rest of the engine can trust.

use crate::error::{Error, Result};
use crate::ids::ConnectionKey;
use crate::records::ProviderAccount;
use crate::secrets::{AccessToken, ApiKey, RefreshToken};
use secrecy::{ExposeSecret, SecretString};

/// Longest access token, refresh token, API key or secret value, in bytes. Real tokens are at
/// most a few KiB (large JWTs); anything near this is a caller bug, not a token.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Longest serialized `extras` object.
pub const MAX_EXTRAS_BYTES: usize = 64 * 1024;
/// Most scopes on one connection, and the longest scope.
pub const MAX_SCOPES: usize = 512;
pub const MAX_SCOPE_BYTES: usize = 256;
/// Timestamps must fall between 2000-01-01 and 9999-12-31 (ms since epoch).
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_000;

/// The secret part of an imported connection.
pub enum ImportedCredential {
    OAuth2 {
        access_token: AccessToken,
        refresh_token: Option<RefreshToken>,
        expires_at: Option<i64>,
    },
    ApiKey {
        api_key: ApiKey,
    },
}

/// One connection to store: imported (`importConnection`) or just connected.
pub struct ImportRequest {
    pub key: ConnectionKey,
    pub credential: ImportedCredential,
    pub scopes: Vec<String>,
    /// Provider fields to keep with the connection, as a JSON object.
    pub extras: Option<SecretString>,
    /// The account at the provider, when known (from the identity probe).
    pub account: ProviderAccount,
}

/// The fields of an import as callers pass them; [`ImportRequest::new`] decides what they mean.
#[derive(Default)]
pub struct ImportFields {
    pub access_token: Option<AccessToken>,
    pub refresh_token: Option<RefreshToken>,
    /// Milliseconds since the epoch (a JS number).
    pub expires_at_ms: Option<f64>,
    pub api_key: Option<ApiKey>,
    pub scopes: Vec<String>,
    /// `extras` serialized as JSON.
    pub extras_json: Option<SecretString>,
}

impl ImportRequest {
    /// An OAuth import (`accessToken`, optional `refreshToken`/`expiresAt`) or an API-key import
    /// (`apiKey` alone), validated.
    pub fn new(key: ConnectionKey, fields: ImportFields) -> Result<Self> {
        let expires_at = match fields.expires_at_ms {
            Some(ms) if ms.is_finite() => Some(ms.floor() as i64),
            Some(_) => return Err(Error::invalid_argument("expiresAt must be a valid date")),
            None => None,
        };
        let credential = match (fields.access_token, fields.api_key) {
            (Some(access_token), None) => ImportedCredential::OAuth2 {
                access_token,
                refresh_token: fields.refresh_token,
                expires_at,
            },
            (None, Some(api_key)) if fields.refresh_token.is_none() && expires_at.is_none() => {
                ImportedCredential::ApiKey { api_key }
            }
            (None, Some(_)) => {
                return Err(Error::invalid_argument(
                    "refreshToken and expiresAt belong to OAuth connections, not to apiKey",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid_argument(
                    "pass either accessToken or apiKey, not both",
                ))
            }
            (None, None) => {
                return Err(Error::invalid_argument(
                    "accessToken (OAuth) or apiKey is required",
                ))
            }
        };
        let request = Self {
            key,
            credential,
            scopes: fields.scopes,
            extras: fields.extras_json,
            account: ProviderAccount::default(),
        };
        request.validate()?;
        Ok(request)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        match &self.credential {
            ImportedCredential::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => {
                check_secret("accessToken", access_token)?;
                if let Some(rt) = refresh_token {
                    check_secret("refreshToken", rt)?;
                }
                if let Some(at) = expires_at {
                    check_timestamp("expiresAt", *at)?;
                }
            }
            ImportedCredential::ApiKey { api_key } => check_secret("apiKey", api_key)?,
        }
        check_scopes(&self.scopes)?;
        if let Some(extras) = &self.extras {
            check_extras(extras)?;
        }
        Ok(())
    }
}

pub fn check_secret(field: &str, value: &impl ExposeSecret<str>) -> Result<()> {
    let value = value.expose_secret();
    if value.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(Error::invalid_argument(format!(
            "{field} is {} bytes long; the limit is {MAX_SECRET_BYTES}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_argument(format!(
            "{field} must not contain control characters (NUL, newline, ...)"
        )));
    }
    Ok(())
}

pub fn check_timestamp(field: &str, ms: i64) -> Result<()> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "{field} must be a date between the years 2000 and 9999 (a Date, or milliseconds since the epoch)"
        )))
    }
}

pub fn check_scopes(scopes: &[String]) -> Result<()> {
    if scopes.len() > MAX_SCOPES {
        return Err(Error::invalid_argument(format!(
            "scopes has {} entries; the limit is {MAX_SCOPES}",
            scopes.len()
        )));
    }
    for (i, scope) in scopes.iter().enumerate() {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        let valid = !scope.is_empty()
            && scope.len() <= MAX_SCOPE_BYTES
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            return Err(Error::invalid_argument(format!(
                "scopes[{i}] is not a scope token: 1-{MAX_SCOPE_BYTES} printable ASCII characters, no spaces, quotes or backslashes"
            )));
        }
    }
    Ok(())
}

fn check_extras(extras: &SecretString) -> Result<()> {
    let json = extras.expose_secret();
    if json.len() > MAX_EXTRAS_BYTES {
        return Err(Error::invalid_argument(format!(
            "extras is {} bytes as JSON; the limit is {MAX_EXTRAS_BYTES}",
            json.len()
        )));
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(Error::invalid_argument(
            "extras must be a plain JSON object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    fn oauth(token: &str) -> ImportRequest {
        ImportRequest {
            key: ConnectionKey::parse("attio", "t", "u").unwrap(),
            credential: ImportedCredential::OAuth2 {
                access_token: AccessToken::new(token),
                refresh_token: None,
                expires_at: None,
            },
            scopes: vec!["record_permission:read".into()],
            extras: None,
            account: ProviderAccount::default(),
        }
    }

    #[test]
    fn accepts_a_realistic_import() {
        let mut req = oauth(&"x".repeat(1200));
        req.extras = Some(s(r#"{"instance_url":"https://acme.my.salesforce.com"}"#));
        req.validate().unwrap();
    }

    #[test]
    fn rejects_bad_secrets_without_echoing_them() {
        let secret = "tok_live_abcdef0123456789";
        for (token, needle) in [
            (String::new(), "accessToken must not be empty"),
            (format!("{secret}\0"), "control characters"),
            (secret.repeat(4000), "the limit is 65536"),
        ] {
            let err = oauth(&token).validate().unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains(needle), "{}", err.message);
            assert!(!err.message.contains(secret));
        }
    }

    #[test]
    fn rejects_bad_scopes_extras_and_dates() {
        let mut req = oauth("t");
        req.scopes = vec!["ok".into(), "has space".into()];
        assert!(req.validate().unwrap_err().message.starts_with("scopes[1]"));

        let mut req = oauth("t");
        req.extras = Some(s("[1,2]"));
        assert!(req
            .validate()
            .unwrap_err()
            .message
            .contains("extras must be a plain JSON object"));

        let mut req = oauth("t");
        req.credential = ImportedCredential::OAuth2 {
            access_token: AccessToken::new("t"),
            refresh_token: None,
            expires_at: Some(42),
        };
        assert!(req.validate().unwrap_err().message.contains("expiresAt"));
    }
}
