//! The connect flow: authorization code with PKCE (S256) and a server-side, single-use state.
//!
//! ```text
//! start_connect ──► authorize URL (state, code_challenge) ──► the provider ──► callback
//! handle_callback: state + browser (consumed once, only by the browser that started it, 10 min)
//!                  ─ error? ─ provider ─ iss ─ code exchange (once) ─ identity probe
//!                  ─ required scopes ─ store
//! ```
//!
//! Only the SHA-256 of `state` is stored, bound to the provider, tenant, user, redirect URI,
//! the PKCE verifier (sealed with the tenant's key) and, through the HTTP handler's cookie, the
//! browser. Every check happens before the code is redeemed, and a code is redeemed once.

pub mod http;
pub mod identity;
pub mod refresh;
pub mod scrub;
pub mod token;

use crate::client::Client;
use crate::engine::input::{check_scopes, ImportRequest, ImportedCredential};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, ProviderId, TenantId, UserId};
use crate::providers::Provider;
use crate::records::{ConnectionRecord, CredentialKind, FlowRecord, SessionRecord};
use crate::store::FlowTake;
use http::ClientCredentials;
use oauth2::{CsrfToken, PkceCodeChallenge};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How long a started flow waits for its callback.
pub const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
/// Connect sessions: default and longest lifetime, in seconds.
pub const DEFAULT_SESSION_TTL_S: u32 = 600;
pub const MAX_SESSION_TTL_S: u32 = 3600;

/// `startConnect` input.
pub struct StartRequest {
    pub key: ConnectionKey,
    pub scopes: Option<Vec<String>>,
    pub redirect_uri: Option<String>,
    /// A secret the HTTP handler also put in a cookie; the callback must present it again.
    pub browser_binding: Option<SecretString>,
}

/// A started flow: send the browser to `url`.
pub struct Started {
    pub url: String,
    pub state: SecretString,
    pub expires_at: i64,
    /// How the provider will call back (a cross-site POST needs a `SameSite=None` cookie).
    pub callback_method: crate::providers::CallbackMethod,
}

/// A callback as it arrived: query or form parameters, the provider named by the callback
/// path (if the app uses one path per provider), and the browser-binding cookie.
#[derive(Default)]
pub struct Callback {
    pub params: BTreeMap<String, String>,
    pub provider: Option<String>,
    pub browser_binding: Option<SecretString>,
}

/// A connect session: the token the browser carries, and when it expires.
pub struct SessionGrant {
    pub token: SecretString,
    pub expires_at: i64,
}

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

/// `deleteConnection`'s result.
pub struct Deletion {
    pub existed: bool,
    pub revocation: Revocation,
}

fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn browser_mismatch() -> Error {
    Error::new(
        ErrorCode::BrowserMismatch,
        "the callback did not come from the browser that started the flow (its cookie is missing or different)",
    )
}

fn secure(value: &str) -> SecretString {
    SecretString::from(value.to_owned())
}

impl Client {
    fn connect_provider(&self, id: &ProviderId) -> Result<&Provider> {
        Ok(self.catalog().require(id)?.as_ref())
    }

    /// Starts a connect flow.
    pub async fn start_connect(&self, request: StartRequest) -> Result<Started> {
        let provider = self.connect_provider(&request.key.provider)?;
        let definition = &provider.definition;
        let (client_id, _) = provider.require_client()?;
        let redirect_uri = match &request.redirect_uri {
            Some(uri) if provider.redirect_uris.iter().any(|r| r == uri) => uri.clone(),
            Some(_) => {
                return Err(Error::invalid_argument(format!(
                    "redirectUri is not one of providers.{}.redirectUris (it must match a registered URI exactly)",
                    provider.id
                )))
            }
            None => provider.redirect_uris.first().cloned().ok_or_else(|| {
                Error::invalid_argument(format!("providers.{}.redirectUri is required to connect", provider.id))
            })?,
        };
        let scopes = request
            .scopes
            .clone()
            .unwrap_or_else(|| provider.scopes.clone());
        check_scopes(&scopes)?;

        let state = CsrfToken::new_random_len(32);
        let state_hash = sha256_hex(state.secret());
        // Nothing from the provider yet: only the app's params can fill the authorize URL.
        let mut url = definition.fill("authorizeUrl", &definition.authorize_url, &|name| {
            provider.template_value(&[], name)
        })?;
        let verifier = {
            let mut query = url.query_pairs_mut();
            query.append_pair("response_type", "code");
            query.append_pair("client_id", client_id);
            query.append_pair("redirect_uri", &redirect_uri);
            query.append_pair("state", state.secret());
            if let Some(param) = &definition.scope_param {
                if !scopes.is_empty() {
                    let filled: Vec<String> = scopes
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
                Some(verifier)
            } else {
                None
            }
        };
        let engine = self.engine();
        let now = engine.now_ms();
        let flow = FlowRecord {
            state_hash,
            key: request.key,
            verifier: None,
            redirect_uri,
            scopes,
            browser_hash: request
                .browser_binding
                .as_ref()
                .map(|b| sha256_hex(b.expose_secret())),
            created_at: now,
            expires_at: now + FLOW_TTL_MS,
            consumed_at: None,
        };
        engine
            .put_flow(flow, verifier.as_ref().map(|v| v.secret().as_str()))
            .await?;
        Ok(Started {
            url: url.into(),
            state: secure(state.secret()),
            expires_at: now + FLOW_TTL_MS,
            callback_method: definition.callback_method,
        })
    }

    /// Completes a connect flow from its callback; returns the stored connection.
    pub async fn handle_callback(&self, callback: Callback) -> Result<ConnectionRecord> {
        let params = &callback.params;
        let engine = self.engine();
        let browser_hash = callback
            .browser_binding
            .as_ref()
            .map(|b| sha256_hex(b.expose_secret()));
        let state = params.get("state").filter(|s| !s.is_empty());

        if let Some(error) = params.get("error") {
            // Burn the state all the same (a denied flow cannot be resumed), but only from the
            // browser that started it: anyone else who learnt the state must not cancel it.
            if let Some(state) = state {
                if engine
                    .take_flow(&sha256_hex(state), browser_hash.as_deref())
                    .await?
                    == FlowTake::WrongBrowser
                {
                    return Err(browser_mismatch());
                }
            }
            let code = http::printable_code(error);
            return Err(if code == "access_denied" {
                Error::new(
                    ErrorCode::AuthorizationDenied,
                    "the authorization was declined (access_denied); the user can connect again",
                )
            } else {
                Error::new(
                    ErrorCode::AuthorizationFailed,
                    format!("the provider answered the authorization request with error '{code}'"),
                )
            });
        }

        let state = state.ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidState,
                "the callback has no state: start connecting with startConnect() or the handler",
            )
        })?;
        let flow = match engine
            .take_flow(&sha256_hex(state), browser_hash.as_deref())
            .await?
        {
            FlowTake::Fresh(flow) => flow,
            FlowTake::WrongBrowser => return Err(browser_mismatch()),
            FlowTake::Used(_) => {
                return Err(Error::new(
                    ErrorCode::StateAlreadyUsed,
                    "this callback was already handled (a state can be used once)",
                ))
            }
            FlowTake::Expired(_) => {
                return Err(Error::new(
                    ErrorCode::StateExpired,
                    "the connect flow expired (10 minutes); start connecting again",
                ))
            }
            FlowTake::Unknown => {
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    "the callback's state is unknown: it was not issued by this store",
                ))
            }
        };
        if let Some(named) = &callback.provider {
            if named != flow.key.provider.as_str() {
                return Err(Error::new(
                    ErrorCode::StateProviderMismatch,
                    format!("the callback arrived for provider '{named}', but the flow was started for '{}'", flow.key.provider),
                ));
            }
        }
        let provider = self.connect_provider(&flow.key.provider)?;
        let definition = &provider.definition;
        if let Some(issuer) = &definition.issuer {
            match params.get("iss") {
                Some(iss) if iss == issuer => {}
                Some(_) => {
                    return Err(Error::new(
                        ErrorCode::IssuerMismatch,
                        format!("the callback's iss is not {}'s issuer: refusing a possible mix-up (RFC 9207)", definition.display_name),
                    ))
                }
                None if definition.iss_parameter_supported => {
                    return Err(Error::new(
                        ErrorCode::IssuerMismatch,
                        format!("the callback has no iss, which {} always sends (RFC 9207)", definition.display_name),
                    ))
                }
                None => {}
            }
        }
        let code = params
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::ProviderError,
                    "the callback has neither a code nor an error",
                )
            })?;

        // Values the provider supplied in the callback (Zoho's accounts-server, ...).
        let callback_values: Map<String, Value> = definition
            .callback_params
            .iter()
            .filter_map(|name| {
                params
                    .get(name)
                    .map(|v| (name.clone(), Value::String(v.clone())))
            })
            .collect();
        let token_url = definition.fill("tokenUrl", &definition.token_url, &|name| {
            provider.template_value(&[&callback_values], name)
        })?;
        let verifier = match &flow.verifier {
            Some(sealed) => Some(
                engine
                    .open_flow_secret(&flow.key, &flow.state_hash, sealed)
                    .await?,
            ),
            None => None,
        };
        let (client_id, client_secret) = provider.require_client()?;
        let credentials = ClientCredentials {
            auth: definition.client_auth,
            id: client_id,
            secret: client_secret,
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", flow.redirect_uri.as_str()),
        ];
        if let Some(v) = &verifier {
            form.push(("code_verifier", v.expose_secret()));
        }
        let purpose = format!("{} token endpoint", definition.display_name);
        let requested_at = engine.now_ms();
        let answer = http::post_form(self.http(), &purpose, token_url, form, &credentials).await?;
        let refused = (400..500)
            .contains(&answer.status)
            .then(|| http::oauth_error(&answer))
            .flatten();
        let tokens = match answer.json_object() {
            Some(body) if answer.is_success() => token::parse(definition, &body)?,
            _ if refused.is_some() => {
                return Err(Error::new(
                    ErrorCode::CodeExchangeFailed,
                    format!(
                        "the {purpose} refused the authorization code: {}",
                        refused.unwrap_or_default()
                    ),
                ))
            }
            None if answer.is_success() => {
                return Err(Error::new(
                    ErrorCode::ProviderError,
                    format!("the {purpose} answered with something that is not JSON"),
                ))
            }
            _ => return Err(http::unexpected(&purpose, &answer)),
        };

        let mut extras = tokens.extras.clone();
        extras.extend(callback_values.clone());
        let mut account = Default::default();
        let mut granted = tokens.scopes.clone();
        if let Some(probe) = &definition.identity {
            let url = definition.fill("identity.url", &probe.url, &|name| {
                provider.template_value(&[&callback_values, &tokens.extras], name)
            })?;
            let identity =
                identity::probe(self.http(), provider, url, &tokens.access_token).await?;
            if !identity.active {
                return Err(Error::new(
                    ErrorCode::ProviderError,
                    format!(
                        "{} reports the token it just issued as inactive",
                        definition.display_name
                    ),
                ));
            }
            account = identity.account;
            granted = granted.or(identity.scopes);
            extras.extend(identity.kept);
        }
        let granted = granted.unwrap_or_else(|| flow.scopes.clone());
        let missing = provider.missing_scopes(&granted);
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorCode::InsufficientScope,
                format!(
                    "the {} connection lacks required scope(s) {}; grant them to the app and connect again",
                    definition.display_name,
                    missing.join(", ")
                ),
            ));
        }

        let request = ImportRequest {
            key: flow.key.clone(),
            credential: ImportedCredential::OAuth2 {
                expires_at: tokens.expires_at(requested_at),
                access_token: tokens.access_token,
                refresh_token: tokens.refresh_token,
            },
            scopes: granted.into_iter().filter(|s| !s.is_empty()).collect(),
            extras: (!extras.is_empty())
                .then(|| SecretString::from(Value::Object(extras).to_string())),
            account,
        };
        request.validate().map_err(|e| {
            Error::new(
                ErrorCode::ProviderError,
                format!("the provider's token response: {}", e.message),
            )
        })?;
        engine.import_connected(request).await.map_err(|e| {
            if e.code == ErrorCode::VaultKeyMissing {
                Error::new(
                    ErrorCode::InvalidState,
                    "the tenant was deleted while this connection was being made; nothing was stored",
                )
            } else {
                e
            }
        })
    }

    /// A short-lived token that lets a browser start flows for (tenant, user) without naming them.
    pub async fn create_session(
        &self,
        tenant: TenantId,
        user: UserId,
        providers: Vec<ProviderId>,
        ttl_seconds: Option<u32>,
    ) -> Result<SessionGrant> {
        let ttl = ttl_seconds.unwrap_or(DEFAULT_SESSION_TTL_S);
        if !(1..=MAX_SESSION_TTL_S).contains(&ttl) {
            return Err(Error::invalid_argument(format!(
                "ttlSeconds must be between 1 and {MAX_SESSION_TTL_S}"
            )));
        }
        let token = CsrfToken::new_random_len(32);
        let now = self.engine().now_ms();
        let expires_at = now + i64::from(ttl) * 1000;
        self.engine()
            .put_session(SessionRecord {
                token_hash: sha256_hex(token.secret()),
                tenant,
                user,
                providers: providers.iter().map(|p| p.to_string()).collect(),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(SessionGrant {
            token: secure(token.secret()),
            expires_at,
        })
    }

    /// The (tenant, user) a session token stands for, if it may connect `provider`. A session
    /// starts one flow: this consumes it, so a token that leaked (a log, a history entry) after
    /// its use is worth nothing. It is checked before it is consumed, so a request for a
    /// provider it does not allow leaves it usable.
    pub async fn session_key(&self, token: &str, provider: &ProviderId) -> Result<ConnectionKey> {
        let invalid = || {
            Error::new(
                ErrorCode::SessionInvalid,
                "the connect session is unknown, expired or already used (a session starts one flow); create a new one",
            )
        };
        let token_hash = sha256_hex(token);
        let engine = self.engine();
        let session = engine.session(&token_hash).await?.ok_or_else(invalid)?;
        if session.expires_at <= engine.now_ms() {
            return Err(invalid());
        }
        if !session.providers.is_empty()
            && !session.providers.iter().any(|p| p == provider.as_str())
        {
            return Err(Error::new(
                ErrorCode::SessionInvalid,
                format!("the connect session does not allow connecting '{provider}'"),
            ));
        }
        // Of concurrent uses of one token, exactly one gets here with the session.
        engine
            .take_session(&token_hash)
            .await?
            .ok_or_else(invalid)?;
        Ok(ConnectionKey::new(
            provider.clone(),
            session.tenant,
            session.user,
        ))
    }

    /// Revokes the connection at the provider where it can, then deletes it here.
    pub async fn delete_connection(&self, key: &ConnectionKey) -> Result<Deletion> {
        let engine = self.engine();
        let Some(record) = engine.stored_connection(key).await? else {
            engine.delete_connection(key).await?;
            return Ok(Deletion {
                existed: false,
                revocation: Revocation::NotAttempted,
            });
        };
        let revocation = match self.revoke(&record).await {
            Ok(r) => r,
            Err(e) => Revocation::Failed(e.message),
        };
        let existed = engine.delete_connection(key).await?;
        Ok(Deletion {
            existed,
            revocation,
        })
    }

    async fn revoke(&self, record: &ConnectionRecord) -> Result<Revocation> {
        let provider = self.connect_provider(&record.key.provider)?;
        let definition = &provider.definition;
        let Some(revoke) = &definition.revoke else {
            return Ok(Revocation::NotSupported);
        };
        if record.kind != CredentialKind::OAuth2 {
            return Ok(Revocation::NotSupported);
        }
        let Ok((client_id, client_secret)) = provider.require_client() else {
            return Ok(Revocation::NotAttempted);
        };
        let secrets = self.engine().secrets_of(record).await?;
        let extras: Map<String, Value> = secrets
            .extras
            .as_ref()
            .and_then(|e| serde_json::from_str(e.expose_secret()).ok())
            .unwrap_or_default();
        let mut url = definition.fill("revoke.url", &revoke.url, &|name| {
            provider.template_value(&[&extras], name)
        })?;
        // RFC 7009: revoke the refresh token (the grant); the access token if there is none.
        let (token, hint) = match &secrets.refresh_token {
            Some(rt) => (rt, "refresh_token"),
            None => (&secrets.credential, "access_token"),
        };
        let mut form = vec![("token_type_hint", hint)];
        match revoke.token_in {
            crate::providers::definition::TokenIn::Body => {
                form.push(("token", token.expose_secret()))
            }
            crate::providers::definition::TokenIn::Query => {
                url.query_pairs_mut()
                    .append_pair("token", token.expose_secret());
            }
        }
        let purpose = format!("{} revocation endpoint", definition.display_name);
        let credentials = ClientCredentials {
            auth: definition.client_auth,
            id: client_id,
            secret: client_secret,
        };
        let answer = http::post_form(self.http(), &purpose, url, form, &credentials).await?;
        Ok(if answer.is_success() {
            Revocation::Revoked
        } else {
            Revocation::Failed(http::unexpected(&purpose, &answer).message)
        })
    }
}
