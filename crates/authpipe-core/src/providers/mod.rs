//! The provider catalog: built-in CRM definitions plus the app's custom providers, each merged
//! with the app's settings for it (client credentials, redirect URIs, scopes, overrides).
//!
//! - [`definition`]: what a provider is (endpoints and quirks, as validated data);
//! - [`discovery`]: definitions from RFC 8414 / OIDC discovery of an issuer;
//! - [`webhook`]: how a provider signs its webhook requests (part of a definition);
//! - this module: app settings, merging, and the catalog an instance connects with.

pub mod definition;
pub mod discovery;
pub mod webhook;

pub use definition::{
    CallbackMethod, ClientAuth, IdentityProbe, ProbeStyle, ProviderDefinition, ValueSource,
};
pub use webhook::{WebhookKey, WebhookScheme, DEFAULT_WEBHOOK_SECRET_NAME};

use crate::error::{Error, ErrorCode, Result};
use crate::ids::ProviderId;
use crate::secrets::ClientSecret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

const BUILTIN_JSON: &str = include_str!("builtin.json");

/// The built-in definitions, parsed and validated once (a test keeps them valid).
static BUILTIN: LazyLock<Vec<ProviderDefinition>> = LazyLock::new(|| {
    let values: Vec<serde_json::Value> =
        serde_json::from_str(BUILTIN_JSON).expect("builtin.json is JSON");
    values
        .into_iter()
        .map(|v| ProviderDefinition::from_json(v).expect("builtin.json is valid"))
        .collect()
});

pub fn builtin_definitions() -> Vec<ProviderDefinition> {
    BUILTIN.clone()
}

/// A custom provider that names only an issuer: its endpoints come from discovery.
fn needs_discovery(id: &str, settings: &serde_json::Value) -> bool {
    !BUILTIN.iter().any(|d| d.id == id)
        && settings.get("issuer").is_some()
        && settings.get("authorizeUrl").is_none()
        && settings.get("tokenUrl").is_none()
}

/// The app's settings for one provider (`providers.<id>` in `new Authpipe()`), as JSON.
/// For a custom provider, the same object also defines it (`authorizeUrl`, `tokenUrl`, ... or
/// `issuer` for discovery).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderSettings {
    pub client_id: Option<String>,
    /// A [`ClientSecret`] from the moment it is parsed, so `Debug` (derived) prints no secret.
    pub client_secret: Option<ClientSecret>,
    /// The redirect URI(s) registered with the provider; the first is the default.
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Scopes to request (default: the provider's default scopes).
    pub scopes: Option<Vec<String>>,
    /// Scopes a connection must have been granted, or it is refused (`INSUFFICIENT_SCOPE`).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Values for the definition's `configParams` (e.g. Dynamics `org`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub display_name: Option<String>,
    // Endpoint overrides (tests, sandboxes, private deployments) or a custom definition.
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revoke_url: Option<String>,
    pub identity_url: Option<String>,
    pub issuer: Option<String>,
    pub iss_parameter_supported: Option<bool>,
    pub client_auth: Option<ClientAuth>,
    pub pkce: Option<bool>,
    pub scope_separator: Option<String>,
    pub token_fields: Option<Vec<String>>,
    pub default_expires_in: Option<u64>,
    pub identity: Option<IdentityProbe>,
    /// How a custom provider signs its webhooks (or a replacement for a built-in's scheme).
    pub webhook: Option<WebhookScheme>,
}

/// A provider as an instance uses it: its definition and the app's settings.
#[derive(Debug)]
pub struct Provider {
    pub id: ProviderId,
    pub definition: ProviderDefinition,
    pub client_id: Option<String>,
    pub client_secret: Option<ClientSecret>,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub required_scopes: Vec<String>,
    pub params: BTreeMap<String, String>,
}

impl Provider {
    fn build(
        id: ProviderId,
        base: Option<ProviderDefinition>,
        settings: ProviderSettings,
    ) -> Result<Self> {
        let field = |name: &str| format!("providers.{id}.{name}");
        let mut definition = match base {
            Some(d) => d,
            None => {
                let (Some(authorize_url), Some(token_url)) =
                    (settings.authorize_url.clone(), settings.token_url.clone())
                else {
                    return Err(Error::invalid_argument(format!(
                        "{} is not a built-in provider: give it authorizeUrl and tokenUrl, or an issuer to discover them from",
                        field("").trim_end_matches('.')
                    )));
                };
                ProviderDefinition {
                    id: id.to_string(),
                    display_name: id.to_string(),
                    authorize_url,
                    token_url,
                    revoke: None,
                    issuer: None,
                    iss_parameter_supported: false,
                    scope_param: Some(definition::ScopeParam {
                        name: "scope".into(),
                        separator: " ".into(),
                    }),
                    default_scopes: Vec::new(),
                    known_scopes: Vec::new(),
                    authorize_params: BTreeMap::new(),
                    config_params: BTreeMap::new(),
                    client_auth: ClientAuth::Basic,
                    pkce: true,
                    callback_method: CallbackMethod::Get,
                    callback_params: Vec::new(),
                    token_fields: Vec::new(),
                    default_expires_in: None,
                    // Unknown providers are assumed to rotate: a returned refresh token always replaces the old one.
                    refresh: definition::RefreshPolicy {
                        supported: true,
                        rotates: true,
                    },
                    provider_hosts: BTreeMap::new(),
                    identity: None,
                    webhook: None,
                    notes: None,
                }
            }
        };
        // Overrides. Endpoint overrides replace templates with fixed URLs.
        if let Some(v) = settings.display_name {
            definition.display_name = v;
        }
        if let Some(v) = settings.authorize_url {
            definition.authorize_url = v;
        }
        if let Some(v) = settings.token_url {
            definition.token_url = v;
        }
        if let Some(v) = settings.revoke_url {
            definition.revoke = Some(definition::Revoke {
                url: v,
                token_in: definition::TokenIn::Body,
            });
        }
        if let Some(v) = settings.issuer {
            definition.issuer = Some(v);
        }
        if let Some(v) = settings.iss_parameter_supported {
            definition.iss_parameter_supported = v;
        }
        if let Some(v) = settings.client_auth {
            definition.client_auth = v;
        }
        if let Some(v) = settings.pkce {
            definition.pkce = v;
        }
        if let Some(v) = settings.scope_separator {
            if let Some(scope) = definition.scope_param.as_mut() {
                scope.separator = v;
            }
        }
        if let Some(v) = settings.token_fields {
            definition.token_fields = v;
        }
        if let Some(v) = settings.default_expires_in {
            definition.default_expires_in = Some(v);
        }
        if let Some(v) = settings.webhook {
            definition.webhook = Some(v);
        }
        if let Some(v) = settings.identity {
            definition.identity = Some(v);
        } else if let (Some(url), Some(identity)) =
            (settings.identity_url.clone(), definition.identity.as_mut())
        {
            identity.url = url;
        }
        if let (Some(url), None) = (settings.identity_url, &definition.identity) {
            definition.identity = Some(IdentityProbe {
                style: ProbeStyle::Bearer,
                auth_scheme: "Bearer".into(),
                method: "GET".into(),
                url,
                active_field: None,
                account_id: None,
                account_name: None,
                scopes: None,
                scope_separator: " ".into(),
                keep: BTreeMap::new(),
            });
        }
        definition.validate()?;

        let mut redirect_uris: Vec<String> = settings.redirect_uri.into_iter().collect();
        redirect_uris.extend(settings.redirect_uris);
        for (i, uri) in redirect_uris.iter().enumerate() {
            definition::check_endpoint(&field(&format!("redirectUris[{i}]")), uri)?;
        }
        for (name, default) in &definition.config_params {
            if default.is_none()
                && !settings.params.contains_key(name)
                && settings.client_id.is_some()
            {
                return Err(Error::invalid_argument(format!(
                    "{} is required for {}",
                    field(&format!("params.{name}")),
                    definition.display_name
                )));
            }
        }
        let scopes = settings
            .scopes
            .unwrap_or_else(|| definition.default_scopes.clone());
        Ok(Self {
            id,
            definition,
            client_id: settings.client_id,
            client_secret: settings.client_secret,
            redirect_uris,
            scopes,
            required_scopes: settings.required_scopes,
            params: settings.params,
        })
    }

    /// A configuration value for a template: the app's `params`, else the definition's default.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params
            .get(name)
            .cloned()
            .or_else(|| self.definition.config_params.get(name).cloned().flatten())
    }

    /// A value for a URL template of this connection: what the provider supplied (callback
    /// parameters, token-response fields; first map first), else the app's `params`.
    pub fn template_value(
        &self,
        supplied: &[&serde_json::Map<String, serde_json::Value>],
        name: &str,
    ) -> Option<(String, ValueSource)> {
        supplied
            .iter()
            .find_map(|values| values.get(name).and_then(|v| v.as_str()))
            .map(|v| (v.to_owned(), ValueSource::Provider))
            .or_else(|| self.param(name).map(|v| (v, ValueSource::Config)))
    }

    /// The client id, or an error saying how to configure it.
    pub fn require_client(&self) -> Result<(&str, &ClientSecret)> {
        match (&self.client_id, &self.client_secret) {
            (Some(id), Some(secret)) => Ok((id, secret)),
            _ => Err(Error::invalid_argument(format!(
                "providers.{}.clientId and clientSecret are required to connect {}",
                self.id, self.definition.display_name
            ))),
        }
    }

    /// Whether `granted` lacks one of the required scopes; returns the missing ones.
    pub fn missing_scopes(&self, granted: &[String]) -> Vec<String> {
        self.required_scopes
            .iter()
            .filter(|s| !granted.contains(s))
            .cloned()
            .collect()
    }
}

/// The providers one instance knows.
#[derive(Clone, Debug)]
pub struct Catalog {
    providers: BTreeMap<ProviderId, Arc<Provider>>,
}

impl Catalog {
    /// Built-ins, merged with `settings` (a JSON object of provider id -> settings). Custom
    /// providers that name only an `issuer` must be discovered first ([`Catalog::discover`]).
    pub fn from_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        let mut builtins: BTreeMap<String, ProviderDefinition> = builtin_definitions()
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let mut providers = BTreeMap::new();
        for (id, value) in settings {
            let provider_id = ProviderId::parse(id.as_str())
                .map_err(|e| Error::invalid_argument(format!("providers: {}", e.message)))?;
            let parsed: ProviderSettings = serde_json::from_value(value.clone()).map_err(|e| {
                Error::invalid_argument(format!("providers.{id}: {}", scrub_serde(&e.to_string())))
            })?;
            let provider = Provider::build(provider_id.clone(), builtins.remove(id), parsed)?;
            providers.insert(provider_id, Arc::new(provider));
        }
        for (id, definition) in builtins {
            let provider_id = ProviderId::parse(id).expect("built-in ids are valid");
            providers.insert(
                provider_id.clone(),
                Arc::new(Provider::build(
                    provider_id,
                    Some(definition),
                    ProviderSettings::default(),
                )?),
            );
        }
        Ok(Self { providers })
    }

    /// Like [`Catalog::from_settings`], first discovering custom providers that give only an
    /// `issuer` (RFC 8414, then OpenID Connect discovery).
    pub async fn discover(
        settings: serde_json::Map<String, serde_json::Value>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let mut resolved = serde_json::Map::new();
        for (id, mut value) in settings {
            if needs_discovery(&id, &value) {
                let issuer = value["issuer"].as_str().unwrap_or_default().to_owned();
                let found =
                    discovery::discover(http, &format!("providers.{id}.issuer"), &issuer).await?;
                found.merge_into(&mut value);
            }
            resolved.insert(id, value);
        }
        Self::from_settings(&resolved)
    }

    /// Checks settings without network access: entries that await discovery are skipped.
    pub fn check(settings: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
        let checkable: serde_json::Map<String, serde_json::Value> = settings
            .iter()
            .filter(|(id, v)| !needs_discovery(id, v))
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect();
        for (id, value) in settings {
            if let Some(issuer) = value.get("issuer").and_then(|i| i.as_str()) {
                definition::check_endpoint(&format!("providers.{id}.issuer"), issuer)?;
            }
        }
        Self::from_settings(&checkable).map(|_| ())
    }

    pub fn get(&self, id: &ProviderId) -> Option<&Arc<Provider>> {
        self.providers.get(id)
    }

    /// `UNKNOWN_PROVIDER` unless the catalog has `id`.
    pub fn require(&self, id: &ProviderId) -> Result<&Arc<Provider>> {
        self.providers.get(id).ok_or_else(|| {
            let known: Vec<&str> = self.providers.keys().map(ProviderId::as_str).collect();
            Error::new(
                ErrorCode::UnknownProvider,
                format!(
                    "unknown provider '{id}'; known providers: {}. Custom providers are added with the `providers` option",
                    known.join(", ")
                ),
            )
        })
    }

    pub fn ids(&self) -> impl Iterator<Item = &ProviderId> {
        self.providers.keys()
    }
}

/// serde's messages quote offending values ("invalid type: string \"sk_live...\""). Keep the
/// ones that quote only keys; cut the rest before the first quote.
fn scrub_serde(message: &str) -> String {
    if message.starts_with("unknown field") || message.starts_with("missing field") {
        return message.to_owned();
    }
    message
        .split(['`', '"'])
        .next()
        .unwrap_or_default()
        .trim_end()
        .trim_end_matches(':')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog(settings: serde_json::Value) -> Result<Catalog> {
        Catalog::from_settings(settings.as_object().unwrap())
    }

    #[test]
    fn settings_and_providers_debug_without_the_client_secret() {
        let secret = "cs-planted-0123456789";
        let settings: ProviderSettings =
            serde_json::from_value(json!({ "clientId": "id-1", "clientSecret": secret })).unwrap();
        let shown = format!("{settings:?} {settings:#?}");
        assert!(shown.contains("id-1"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
        let c =
            catalog(json!({ "attio": { "clientId": "id-1", "clientSecret": secret } })).unwrap();
        assert!(!format!("{c:?}").contains(secret));
    }

    #[test]
    fn every_builtin_definition_is_valid_and_present() {
        let ids: Vec<String> = builtin_definitions().into_iter().map(|d| d.id).collect();
        assert_eq!(
            ids,
            [
                "attio",
                "hubspot",
                "salesforce",
                "pipedrive",
                "zoho",
                "dynamics365",
                "close",
                "copper"
            ]
        );
        let c = catalog(json!({})).unwrap();
        assert_eq!(c.ids().count(), 8);
    }

    #[test]
    fn attio_is_exact() {
        let c = catalog(json!({})).unwrap();
        let attio = &c
            .require(&ProviderId::parse("attio").unwrap())
            .unwrap()
            .definition;
        assert_eq!(attio.authorize_url, "https://app.attio.com/authorize");
        assert_eq!(attio.token_url, "https://app.attio.com/oauth/token");
        assert!(
            attio.scope_param.is_none(),
            "Attio scopes are configured on the app"
        );
        assert!(!attio.refresh.supported);
        assert!(attio.revoke.is_none());
        assert!(attio
            .known_scopes
            .iter()
            .any(|s| s == "record_permission:read-write"));
        assert!(attio.known_scopes.iter().any(|s| s == "list_entry:read"));
        assert!(
            !attio.known_scopes.iter().any(|s| s == "list:read"),
            "list:read does not exist in Attio"
        );
        let identity = attio.identity.as_ref().unwrap();
        assert_eq!(identity.url, "https://api.attio.com/v2/self");
        assert_eq!(identity.active_field.as_deref(), Some("/active"));
    }

    #[test]
    fn settings_merge_and_custom_providers() {
        let c = catalog(json!({
            "attio": { "clientId": "id", "clientSecret": "s", "redirectUri": "https://app.example/callback/attio",
                       "requiredScopes": ["record_permission:read"], "authorizeUrl": "http://127.0.0.1:9/authorize" },
            "mycrm": { "authorizeUrl": "https://crm.example/auth", "tokenUrl": "https://crm.example/token", "clientAuth": "body" }
        }))
        .unwrap();
        let attio = c.require(&ProviderId::parse("attio").unwrap()).unwrap();
        assert_eq!(
            attio.definition.authorize_url,
            "http://127.0.0.1:9/authorize"
        );
        assert_eq!(attio.redirect_uris, ["https://app.example/callback/attio"]);
        assert_eq!(
            attio.missing_scopes(&["note:read".into()]),
            ["record_permission:read"]
        );
        let mycrm = c.require(&ProviderId::parse("mycrm").unwrap()).unwrap();
        assert_eq!(mycrm.definition.client_auth, ClientAuth::Body);
        assert!(mycrm.definition.pkce);
    }

    #[test]
    fn the_synchronous_check_defers_exactly_what_discovery_will_resolve() {
        let discovered = json!({ "x": { "issuer": "https://idp.example" } });
        assert!(
            Catalog::check(discovered.as_object().unwrap()).is_ok(),
            "left to discovery at open"
        );
        let half = json!({ "x": { "issuer": "https://idp.example", "tokenUrl": "https://idp.example/token" } });
        let err = Catalog::check(half.as_object().unwrap()).unwrap_err();
        assert!(
            err.message
                .contains("providers.x is not a built-in provider"),
            "{}",
            err.message
        );
        let insecure = json!({ "x": { "issuer": "http://idp.example" } });
        assert!(Catalog::check(insecure.as_object().unwrap())
            .unwrap_err()
            .message
            .contains("https"));
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let cases = [
            (
                json!({ "attio": { "authorizeUrl": "http://attio.example/authorize" } }),
                "providers.attio.authorizeUrl must be an https URL",
            ),
            (
                json!({ "attio": { "redirectUri": "http://app.example/cb" } }),
                "providers.attio.redirectUris[0] must be an https URL",
            ),
            (
                json!({ "mycrm": {} }),
                "providers.mycrm is not a built-in provider",
            ),
            (
                json!({ "attio": { "clientSecretTypo": "x" } }),
                "unknown field `clientSecretTypo`",
            ),
            (
                json!({ "dynamics365": { "clientId": "x", "clientSecret": "y" } }),
                "providers.dynamics365.params.org is required",
            ),
        ];
        for (settings, message) in cases {
            let err = catalog(settings).unwrap_err();
            assert!(
                err.message.contains(message),
                "{} <- {message}",
                err.message
            );
        }
        let err = catalog(json!({ "attio": { "clientSecret": 12345 } })).unwrap_err();
        assert!(!err.message.contains("12345"), "{}", err.message);
    }
}
