//! The connect flow: authorization code with PKCE (S256) and a server-side, single-use state.
//!
//! ```text
//! start_connect ──► authorize URL (state, code_challenge) ──► the provider ──► callback
//! handle_callback, in phases:
//!   consume_state   the provider's error?, else the flow (once, by the browser that started it)
//!   check_bindings  the callback's provider and issuer (RFC 9207) are the flow's
//!   exchange_code   the code, redeemed once, with the PKCE verifier
//!   identify        the identity probe, the required scopes
//!   store_connected into the tenant the flow started in, if it still exists
//! ```
//!
//! The OAuth requests themselves live in `protocol`; this module owns the flow's state.
//!
//! Only the SHA-256 of `state` is stored, bound to the provider, tenant, user, redirect URI,
//! the PKCE verifier (sealed with the tenant's key) and, through the HTTP handler's cookie, the
//! browser. Every check happens before the code is redeemed, and a code is redeemed once.

mod session;

pub use crate::protocol::Revocation;
pub use session::SessionGrant;

use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, ProviderId};
use crate::input::{check_scopes, ImportRequest, ImportedCredential};
use crate::protocol::authorize::{self, AuthorizeRequest};
use crate::protocol::exchange::{self, CodeGrant};
use crate::protocol::revoke::{self, GrantTokens};
use crate::protocol::token::TokenSet;
use crate::protocol::{http, identity};
use crate::providers::Provider;
use crate::records::{ConnectionRecord, CredentialKind, FlowRecord};
use crate::secrets::{BrowserBinding, StateToken};
use crate::store::FlowTake;
use oauth2::CsrfToken;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How long a started flow waits for its callback.
pub const FLOW_TTL_MS: i64 = 10 * 60 * 1000;

/// `startConnect` input.
pub struct StartRequest {
    pub key: ConnectionKey,
    pub scopes: Option<Vec<String>>,
    pub redirect_uri: Option<String>,
    /// A secret the HTTP handler also put in a cookie; the callback must present it again.
    pub browser_binding: Option<BrowserBinding>,
}

/// A started flow: send the browser to `url`.
pub struct Started {
    pub url: String,
    pub state: StateToken,
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
    pub browser_binding: Option<BrowserBinding>,
}

/// `deleteConnection`'s result.
pub struct Deletion {
    pub existed: bool,
    pub revocation: Revocation,
}

pub(crate) fn sha256_hex(value: &str) -> String {
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

impl Client {
    fn connect_provider(&self, id: &ProviderId) -> Result<&Provider> {
        Ok(self.catalog().require(id)?.as_ref())
    }

    /// Starts a connect flow.
    pub async fn start_connect(&self, request: StartRequest) -> Result<Started> {
        let provider = self.connect_provider(&request.key.provider)?;
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
        let authorization = authorize::authorize_url(
            provider,
            AuthorizeRequest {
                client_id,
                redirect_uri: &redirect_uri,
                state: state.secret(),
                scopes: &scopes,
            },
        )?;
        let engine = self.engine();
        let now = engine.now_ms();
        let flow = FlowRecord {
            state_hash: sha256_hex(state.secret()),
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
            .put_flow(flow, authorization.verifier.as_ref())
            .await?;
        Ok(Started {
            url: authorization.url.into(),
            state: StateToken::new(state.secret().as_str()),
            expires_at: now + FLOW_TTL_MS,
            callback_method: provider.definition.callback_method,
        })
    }

    /// Completes a connect flow from its callback; returns the stored connection. Each phase
    /// refuses before the next begins, so no code is redeemed for a callback that fails a check.
    pub async fn handle_callback(&self, callback: Callback) -> Result<ConnectionRecord> {
        let flow = self.consume_state(&callback).await?;
        let provider = self.check_bindings(&callback, &flow)?;
        let code = callback
            .params
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::ProviderError,
                    "the callback has neither a code nor an error",
                )
            })?;
        // Values the provider supplied in the callback (Zoho's accounts-server, ...).
        let callback_values: Map<String, Value> = provider
            .definition
            .callback_params
            .iter()
            .filter_map(|name| {
                callback
                    .params
                    .get(name)
                    .map(|v| (name.clone(), Value::String(v.clone())))
            })
            .collect();
        let (tokens, requested_at) = self
            .exchange_code(provider, &flow, code, &callback_values)
            .await?;
        let request = self
            .identify(provider, &flow, tokens, callback_values, requested_at)
            .await?;
        self.store_connected(request).await
    }

    /// Phase 1: the provider's error, if it sent one, else the flow its `state` names, consumed
    /// (once, and only by the browser that started it).
    async fn consume_state(&self, callback: &Callback) -> Result<FlowRecord> {
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
        match engine
            .take_flow(&sha256_hex(state), browser_hash.as_deref())
            .await?
        {
            FlowTake::Fresh(flow) => Ok(flow),
            FlowTake::WrongBrowser => Err(browser_mismatch()),
            FlowTake::Used(_) => Err(Error::new(
                ErrorCode::StateAlreadyUsed,
                "this callback was already handled (a state can be used once)",
            )),
            FlowTake::Expired(_) => Err(Error::new(
                ErrorCode::StateExpired,
                "the connect flow expired (10 minutes); start connecting again",
            )),
            FlowTake::Unknown => Err(Error::new(
                ErrorCode::InvalidState,
                "the callback's state is unknown: it was not issued by this store",
            )),
        }
    }

    /// Phase 2: the callback came for the flow's provider (by its path) and from its issuer
    /// (RFC 9207's `iss`, against mix-up attacks).
    fn check_bindings(&self, callback: &Callback, flow: &FlowRecord) -> Result<&Provider> {
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
            match callback.params.get("iss") {
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
        Ok(provider)
    }

    /// Phase 3: the code, redeemed once, with the flow's PKCE verifier; with the time the
    /// request was sent (the token's lifetime counts from it).
    async fn exchange_code(
        &self,
        provider: &Provider,
        flow: &FlowRecord,
        code: &str,
        callback_values: &Map<String, Value>,
    ) -> Result<(TokenSet, i64)> {
        let verifier = match &flow.verifier {
            Some(sealed) => Some(
                self.engine()
                    .open_flow_verifier(&flow.key, &flow.state_hash, sealed)
                    .await?,
            ),
            None => None,
        };
        let grant = CodeGrant {
            code,
            redirect_uri: &flow.redirect_uri,
            verifier: verifier.as_ref(),
            callback_values,
        };
        let requested_at = self.engine().now_ms();
        let tokens = exchange::exchange_code(self.http(), provider, grant).await?;
        Ok((tokens, requested_at))
    }

    /// Phase 4: who the token belongs to (the identity probe, where the provider has one) and
    /// whether it carries the required scopes; the connection to store.
    async fn identify(
        &self,
        provider: &Provider,
        flow: &FlowRecord,
        tokens: TokenSet,
        callback_values: Map<String, Value>,
        requested_at: i64,
    ) -> Result<ImportRequest> {
        let definition = &provider.definition;
        let mut extras = tokens.extras.clone();
        extras.extend(callback_values.clone());
        let mut account = Default::default();
        let mut granted = tokens.scopes.clone();
        if definition.identity.is_some() {
            let url = identity::url(provider, &[&callback_values, &tokens.extras])?;
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
        Ok(request)
    }

    /// Phase 5: stored into the tenant the flow was started for, if it still exists.
    async fn store_connected(&self, request: ImportRequest) -> Result<ConnectionRecord> {
        self.engine()
            .import_connected(request)
            .await
            .map_err(|e| {
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
        // In this order: an API key has nothing to revoke, whatever the provider offers.
        if provider.definition.revoke.is_none() || record.kind != CredentialKind::OAuth2 {
            return Ok(Revocation::NotSupported);
        }
        if let Some(outcome) = revoke::unattemptable(provider) {
            return Ok(outcome);
        }
        let secrets = self.engine().secrets_of(record).await?;
        let values = secrets.values();
        let tokens = GrantTokens {
            access_token: &secrets.credential,
            refresh_token: secrets.refresh_token.as_ref(),
            values: &values,
        };
        revoke::revoke(self.http(), provider, tokens).await
    }
}
