//! What a provider *is*: endpoints and quirks, as data. Built-in definitions live in
//! `builtin.json`; custom ones come from the app's configuration or from discovery. Every
//! definition is validated when loaded, so a bad one fails at startup, not mid-connect.

use super::webhook::WebhookScheme;
use crate::error::{Error, Result};
use crate::ids::ProviderId;
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

/// How the client authenticates at the token (and revoke, introspection) endpoint.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// How the provider sends the user back.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum CallbackMethod {
    #[default]
    Get,
    /// A form POST to the redirect URI (Copper).
    Post,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeParam {
    pub name: String,
    pub separator: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenIn {
    /// RFC 7009: `token=` in the form body.
    #[default]
    Body,
    /// `?token=` in the URL (Zoho).
    Query,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revoke {
    pub url: String,
    #[serde(default)]
    pub token_in: TokenIn,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshPolicy {
    /// Whether the provider issues refresh tokens.
    pub supported: bool,
    /// Whether a refresh may return a new refresh token that replaces the old one.
    pub rotates: bool,
}

/// How the identity / health probe is called.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProbeStyle {
    /// The access token as `Authorization: <scheme> <token>`.
    #[default]
    Bearer,
    /// RFC 7662: `token=` in a form POST, with client authentication.
    Introspection,
}

/// Who the token belongs to, and whether it is still alive.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityProbe {
    #[serde(default)]
    pub style: ProbeStyle,
    #[serde(default = "default_auth_scheme")]
    pub auth_scheme: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    /// JSON pointer to a boolean; `false` means the token is dead (Attio answers 200 so).
    #[serde(default)]
    pub active_field: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub account_name: Option<String>,
    /// JSON pointer to the granted scopes (a string split on `scopeSeparator`, or an array).
    #[serde(default)]
    pub scopes: Option<String>,
    #[serde(default = "default_separator")]
    pub scope_separator: String,
    /// Other fields to keep with the connection's extras: name -> JSON pointer.
    #[serde(default)]
    pub keep: BTreeMap<String, String>,
}

fn default_auth_scheme() -> String {
    "Bearer".to_owned()
}
fn default_method() -> String {
    "GET".to_owned()
}
fn default_separator() -> String {
    " ".to_owned()
}

/// One provider's definition.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderDefinition {
    pub id: String,
    pub display_name: String,
    /// URL templates: `{name}` is filled from `configParams`, `callbackParams` or `tokenFields`.
    pub authorize_url: String,
    pub token_url: String,
    #[serde(default)]
    pub revoke: Option<Revoke>,
    /// The issuer identifier; when `issParameterSupported`, callbacks must carry it (RFC 9207).
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub iss_parameter_supported: bool,
    /// The authorize request's scope parameter; `null` when scopes are set on the provider's app.
    pub scope_param: Option<ScopeParam>,
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// Scope names the provider documents (for validation and display).
    #[serde(default)]
    pub known_scopes: Vec<String>,
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Values the app configures (`params`), with defaults (`null`: required).
    #[serde(default)]
    pub config_params: BTreeMap<String, Option<String>>,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    #[serde(default)]
    pub callback_method: CallbackMethod,
    /// Callback query/form parameters to keep (and to fill templates with).
    #[serde(default)]
    pub callback_params: Vec<String>,
    /// Token-response fields to keep as extras (and to fill templates with).
    #[serde(default)]
    pub token_fields: Vec<String>,
    /// Lifetime to assume when a token response has no `expires_in`, in seconds.
    #[serde(default)]
    pub default_expires_in: Option<u64>,
    pub refresh: RefreshPolicy,
    /// For template values the provider supplies: the hosts they may name (`*.` = any subdomain).
    #[serde(default)]
    pub provider_hosts: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub identity: Option<IdentityProbe>,
    /// How the provider signs its webhook requests; `None`: `verifyWebhook` refuses it.
    #[serde(default)]
    pub webhook: Option<WebhookScheme>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// Whether `url` may receive credentials: https, or http to a loopback address (tests, sandbox).
pub fn check_endpoint(field: &str, url: &str) -> Result<Url> {
    let parsed = Url::parse(url)
        .map_err(|_| Error::invalid_argument(format!("{field} is not a valid URL")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(parsed),
        "http" if loopback => Ok(parsed),
        _ => Err(Error::invalid_argument(format!(
            "{field} must be an https URL (http is accepted only for loopback addresses such as 127.0.0.1)"
        ))),
    }
}

/// The `{name}` placeholders of a template.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(&rest[start + 1..start + len]);
        rest = &rest[start + len + 1..];
    }
    out
}

/// Where a template value came from, which decides how far it is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// The app's own configuration: a host label or name, never a URL.
    Config,
    /// The provider (callback parameter, token response): must be an origin on an allowed host.
    Provider,
}

impl ProviderDefinition {
    /// Parses and validates one definition.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let definition: Self = serde_json::from_value(value)
            .map_err(|e| Error::invalid_argument(format!("invalid provider definition: {e}")))?;
        definition.validate()?;
        Ok(definition)
    }

    pub fn validate(&self) -> Result<()> {
        let id = ProviderId::parse(self.id.as_str())?;
        let field = |name: &str| format!("providers.{id}.{name}");
        let mut templates = vec![
            (field("authorizeUrl"), self.authorize_url.as_str()),
            (field("tokenUrl"), self.token_url.as_str()),
        ];
        if let Some(revoke) = &self.revoke {
            templates.push((field("revoke.url"), revoke.url.as_str()));
        }
        if let Some(identity) = &self.identity {
            templates.push((field("identity.url"), identity.url.as_str()));
            for pointer in [
                &identity.active_field,
                &identity.account_id,
                &identity.account_name,
                &identity.scopes,
            ]
            .into_iter()
            .flatten()
            {
                if !pointer.starts_with('/') {
                    return Err(Error::invalid_argument(format!(
                        "{}: JSON pointers start with '/'",
                        field("identity")
                    )));
                }
            }
        }
        for (name, template) in templates {
            for var in placeholders(template) {
                if self.config_params.contains_key(var) {
                    continue;
                }
                let from_provider = self.callback_params.iter().any(|p| p == var)
                    || self.token_fields.iter().any(|p| p == var);
                if !from_provider {
                    return Err(Error::invalid_argument(format!("{name} uses {{{var}}}, which no configParams, callbackParams or tokenFields entry provides")));
                }
                if !self.provider_hosts.contains_key(var) {
                    return Err(Error::invalid_argument(format!(
                        "{name} uses {{{var}}}, which the provider supplies: list its allowed hosts in providerHosts.{var}"
                    )));
                }
            }
            // With every placeholder standing for an allowed host, the result must be a safe endpoint.
            let sample = placeholders(template)
                .iter()
                .fold(template.to_owned(), |acc, var| {
                    let value = if self.config_params.contains_key(*var) {
                        "example".to_owned()
                    } else {
                        "https://example.com".to_owned()
                    };
                    acc.replace(&format!("{{{var}}}"), &value)
                });
            check_endpoint(&name, &sample)?;
        }
        if let Some(scope) = &self.scope_param {
            if scope.name.is_empty() || scope.separator.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "{}: name and separator must not be empty",
                    field("scopeParam")
                )));
            }
        }
        if let Some(issuer) = &self.issuer {
            check_endpoint(&field("issuer"), issuer)?;
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate(&field("webhook"))?;
        }
        Ok(())
    }

    /// Fills a URL template. Provider-supplied values must be origins on `providerHosts`;
    /// app-configured values must be plain names. The result must be a safe endpoint.
    pub fn fill(
        &self,
        field: &str,
        template: &str,
        lookup: &dyn Fn(&str) -> Option<(String, ValueSource)>,
    ) -> Result<Url> {
        let mut url = template.to_owned();
        for var in placeholders(template) {
            let (value, source) = lookup(var).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{field} needs {{{var}}}, which is not known for this connection"
                ))
            })?;
            let value = match source {
                ValueSource::Config => {
                    let plain = !value.is_empty()
                        && value.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
                        });
                    if !plain {
                        return Err(Error::invalid_argument(format!(
                            "params.{var} must be a plain name (letters, digits, '-', '.', '_')"
                        )));
                    }
                    value
                }
                ValueSource::Provider => self.provider_origin(var, &value)?,
            };
            url = url.replace(&format!("{{{var}}}"), &value);
        }
        check_endpoint(field, &url)
    }

    /// A provider-supplied origin such as `https://acme.my.salesforce.com`, checked against
    /// `providerHosts`, without a trailing slash.
    pub fn provider_origin(&self, var: &str, value: &str) -> Result<String> {
        let reject = || {
            Error::new(
                crate::error::ErrorCode::ProviderError,
                format!("the provider sent a {var} that is not one of its known hosts; refusing to send credentials there"),
            )
        };
        let parsed = Url::parse(value).map_err(|_| reject())?;
        let host = parsed.host_str().ok_or_else(reject)?.to_ascii_lowercase();
        let allowed = self.provider_hosts.get(var).is_some_and(|patterns| {
            patterns.iter().any(|p| match p.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => &host == p,
            })
        });
        let clean = parsed.path() == "/" || parsed.path().is_empty();
        if parsed.scheme() != "https"
            || !allowed
            || !clean
            || parsed.query().is_some()
            || !parsed.username().is_empty()
        {
            return Err(reject());
        }
        Ok(parsed.origin().ascii_serialization())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zoho() -> ProviderDefinition {
        super::super::builtin_definitions()
            .into_iter()
            .find(|d| d.id == "zoho")
            .unwrap()
    }

    #[test]
    fn endpoints_must_be_https_or_loopback_http() {
        assert!(check_endpoint("x", "https://app.attio.com/authorize").is_ok());
        assert!(check_endpoint("x", "http://127.0.0.1:4000/token").is_ok());
        assert!(check_endpoint("x", "http://localhost:4000/token").is_ok());
        assert!(check_endpoint("x", "http://[::1]:4000/token").is_ok());
        for bad in [
            "http://example.com/token",
            "http://10.0.0.1/token",
            "ftp://x/y",
            "javascript:alert(1)",
            "not a url",
        ] {
            assert!(check_endpoint("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn provider_supplied_hosts_are_allow_listed() {
        let z = zoho();
        let lookup = |value: &'static str| {
            move |var: &str| {
                (var == "accounts-server").then(|| (value.to_owned(), ValueSource::Provider))
            }
        };
        let ok = z
            .fill(
                "tokenUrl",
                &z.token_url,
                &lookup("https://accounts.zoho.eu"),
            )
            .unwrap();
        assert_eq!(ok.as_str(), "https://accounts.zoho.eu/oauth/v2/token");
        for evil in [
            "https://attacker.example",
            "https://accounts.zoho.eu.attacker.example",
            "http://accounts.zoho.eu",
            "https://accounts.zoho.eu/steal?x=",
            "https://user@accounts.zoho.eu",
        ] {
            assert!(
                z.fill("tokenUrl", &z.token_url, &lookup(evil)).is_err(),
                "{evil}"
            );
        }
    }

    #[test]
    fn config_values_are_plain_names() {
        let d = super::super::builtin_definitions()
            .into_iter()
            .find(|d| d.id == "dynamics365")
            .unwrap();
        let lookup =
            |value: &'static str| move |_: &str| Some((value.to_owned(), ValueSource::Config));
        assert!(d
            .fill("authorizeUrl", &d.authorize_url, &lookup("organizations"))
            .is_ok());
        assert!(d
            .fill("authorizeUrl", &d.authorize_url, &lookup("evil.com/x?"))
            .is_err());
    }

    #[test]
    fn definitions_with_unbound_or_unsafe_templates_are_rejected() {
        let base = json!({
            "id": "mycrm", "displayName": "My CRM", "authorizeUrl": "https://crm.example/auth",
            "tokenUrl": "https://crm.example/token", "scopeParam": null, "clientAuth": "basic", "pkce": true,
            "refresh": { "supported": true, "rotates": true }
        });
        assert!(ProviderDefinition::from_json(base.clone()).is_ok());
        let mut unbound = base.clone();
        unbound["tokenUrl"] = json!("{host}/token");
        assert!(ProviderDefinition::from_json(unbound)
            .unwrap_err()
            .message
            .contains("{host}"));
        let mut unlisted = base.clone();
        unlisted["tokenUrl"] = json!("{host}/token");
        unlisted["tokenFields"] = json!(["host"]);
        assert!(ProviderDefinition::from_json(unlisted)
            .unwrap_err()
            .message
            .contains("providerHosts.host"));
        let mut http = base;
        http["tokenUrl"] = json!("http://crm.example/token");
        assert!(ProviderDefinition::from_json(http)
            .unwrap_err()
            .message
            .contains("https"));
    }
}
