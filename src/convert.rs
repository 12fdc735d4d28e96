//! JS shapes in and out of the binding, and core errors into JS errors. Only conversions live
//! here: every rule about what is valid belongs to `authpipe-core`.

use authpipe_core::records::ConnectionRecord;
use authpipe_core::store::TenantDeletion;
use authpipe_core::Client;
use authpipe_core::{AccessToken, ApiKey, ImportFields, ImportRequest, RefreshToken};
use authpipe_core::{Credential, EngineStats, Rotation, TenantKeyRotation};
use authpipe_core::{Error, ErrorCode};
use napi_derive::napi;
use secrecy::{ExposeSecret, SecretString};

/// Core errors cross as `AUTHPIPE:<CODE>:<message>`; the JS wrapper turns that into an
/// `AuthpipeError` with `code`. (napi's async functions cannot carry a custom `code`, so one
/// encoding serves sync and async calls alike.)
pub fn to_napi(err: Error) -> napi::Error {
    napi::Error::new(
        napi::Status::GenericFailure,
        format!("AUTHPIPE:{}:{}", err.code, err.message),
    )
}

pub trait IntoNapi<T> {
    fn napi(self) -> napi::Result<T>;
}

impl<T> IntoNapi<T> for authpipe_core::Result<T> {
    fn napi(self) -> napi::Result<T> {
        self.map_err(to_napi)
    }
}

#[napi(object)]
pub struct MasterKeyInput {
    pub id: Option<String>,
    pub key: String,
    /// Unwrap only (`MasterKeyConfig::retired`); absent means false.
    pub retired: Option<bool>,
}

#[napi(object)]
pub struct OpenInput {
    /// `":memory:"`, a file path or `sqlite:<path>`; the default embedded file when absent.
    pub store: Option<String>,
    /// Configured master keys, primary first; absent means "development key if allowed".
    pub master_keys: Option<Vec<MasterKeyInput>>,
    /// `NODE_ENV === "production"`: refuse to generate a development key.
    pub production: bool,
    /// The `providers` option as JSON: provider id -> settings (custom providers included).
    pub providers: String,
    /// Timeout of each call to a provider, in milliseconds.
    pub http_timeout_ms: Option<i64>,
    /// Most token and probe requests in flight per provider.
    pub provider_concurrency: Option<i64>,
    /// Interval of scheduled health probes, ms; 0 turns them off.
    pub health_check_interval_ms: Option<i64>,
    /// `tenantKeyRotation.maxAgeDays`: 0 turns rotation by age off.
    pub tenant_key_max_age_days: Option<i64>,
    /// `tenantKeyRotation.maxEncryptions`.
    pub tenant_key_max_encryptions: Option<i64>,
}

#[napi(object)]
pub struct DevKeyInfo {
    pub path: Option<String>,
    pub created: bool,
}

#[napi(object)]
pub struct ImportInput {
    pub provider: String,
    pub tenant_id: String,
    pub user_id: String,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// Milliseconds since the epoch.
    pub expires_at: Option<f64>,
    pub api_key: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `extras` as JSON.
    pub extras: Option<String>,
}

impl ImportInput {
    pub fn into_request(self, client: &Client) -> authpipe_core::Result<ImportRequest> {
        let key = client.connection_key(&self.provider, &self.tenant_id, &self.user_id)?;
        let fields = ImportFields {
            access_token: self.access_token.map(AccessToken::from),
            refresh_token: self.refresh_token.map(RefreshToken::from),
            expires_at_ms: self.expires_at,
            api_key: self.api_key.map(ApiKey::from),
            scopes: self.scopes.unwrap_or_default(),
            extras_json: self.extras.map(SecretString::from),
        };
        ImportRequest::new(key, fields)
    }
}

/// A credential for the JS memo: the value plus its generation slot.
#[napi(object)]
pub struct CredentialOutput {
    pub credential: String,
    #[napi(js_name = "type")]
    pub kind: String,
    pub expires_at: Option<f64>,
    pub extras: Option<String>,
    pub slot: u32,
    pub generation: u32,
}

impl From<Credential> for CredentialOutput {
    fn from(c: Credential) -> Self {
        Self {
            credential: c.secret.expose_secret().to_owned(),
            kind: c.kind.as_str().to_owned(),
            expires_at: c.expires_at.map(|v| v as f64),
            extras: c.extras_json.map(|e| e.expose_secret().to_owned()),
            slot: c.slot,
            generation: c.generation,
        }
    }
}

/// Connection metadata. Never a secret.
#[napi(object)]
pub struct ConnectionOutput {
    pub provider: String,
    pub tenant_id: String,
    pub user_id: String,
    #[napi(js_name = "type")]
    pub kind: String,
    pub status: String,
    pub scopes: Vec<String>,
    pub account_id: Option<String>,
    pub account_name: Option<String>,
    pub has_refresh_token: bool,
    pub expires_at: Option<f64>,
    pub created_at: f64,
    pub updated_at: f64,
    pub last_refresh_at: Option<f64>,
    pub next_refresh_at: Option<f64>,
    pub last_check_at: Option<f64>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
}

impl From<ConnectionRecord> for ConnectionOutput {
    fn from(r: ConnectionRecord) -> Self {
        let ms = |v: i64| v as f64;
        Self {
            provider: r.key.provider.to_string(),
            tenant_id: r.key.tenant.to_string(),
            user_id: r.key.user.to_string(),
            kind: r.kind.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            scopes: r.scopes,
            account_id: r.account.id,
            account_name: r.account.name,
            has_refresh_token: r.refresh_token.is_some(),
            expires_at: r.expires_at.map(ms),
            created_at: ms(r.created_at),
            updated_at: ms(r.updated_at),
            last_refresh_at: r.last_refresh_at.map(ms),
            next_refresh_at: r.next_refresh_at.map(ms),
            last_check_at: r.last_check_at.map(ms),
            last_error_code: r.last_error.as_ref().map(|e| e.code.clone()),
            last_error_message: r.last_error.map(|e| e.message),
        }
    }
}

#[napi(object)]
pub struct ListInput {
    pub tenant_id: Option<String>,
    pub provider: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[napi(object)]
pub struct ListOutput {
    pub connections: Vec<ConnectionOutput>,
    pub next_cursor: Option<String>,
}

#[napi(object)]
pub struct TenantKeyRotationOutput {
    pub tenant_id: String,
    pub generation: u32,
    pub resealed: u32,
}

impl From<TenantKeyRotation> for TenantKeyRotationOutput {
    fn from(r: TenantKeyRotation) -> Self {
        Self {
            tenant_id: r.tenant.as_str().to_owned(),
            generation: r.generation,
            resealed: r.resealed.min(u32::MAX as u64) as u32,
        }
    }
}

#[napi(object)]
pub struct RotationOutput {
    pub primary_key_id: String,
    pub rewrapped: u32,
    pub already_current: u32,
}

impl From<Rotation> for RotationOutput {
    fn from(r: Rotation) -> Self {
        Self {
            primary_key_id: r.primary_key_id,
            rewrapped: r.rewrapped as u32,
            already_current: r.already_current as u32,
        }
    }
}

#[napi(object)]
pub struct TenantDeletionOutput {
    pub connections: u32,
    pub secrets: u32,
    pub sessions: u32,
    pub flows: u32,
}

impl From<TenantDeletion> for TenantDeletionOutput {
    fn from(d: TenantDeletion) -> Self {
        Self {
            connections: d.connections as u32,
            secrets: d.secrets as u32,
            sessions: d.sessions as u32,
            flows: d.flows as u32,
        }
    }
}

#[napi(object)]
pub struct StatsOutput {
    pub engine_id: u32,
    pub store: String,
    pub cached_connections: u32,
    pub store_reads: u32,
    pub remote_changes: u32,
    pub resyncs: u32,
    /// [median, p99, max] in ms, or null before the first.
    pub remote_change_lag_ms: Option<Vec<u32>>,
}

impl From<EngineStats> for StatsOutput {
    fn from(s: EngineStats) -> Self {
        Self {
            engine_id: s.engine_id as u32,
            store: s.store,
            cached_connections: s.cached_connections as u32,
            store_reads: s.store_reads as u32,
            remote_changes: s.remote_changes as u32,
            resyncs: s.resyncs as u32,
            remote_change_lag_ms: s.remote_change_lag_ms.map(|lags| {
                lags.iter()
                    .map(|&l| l.min(u32::MAX as u64) as u32)
                    .collect()
            }),
        }
    }
}

/// Every stable error code, so the JS wrapper and its types can be checked against the core.
#[napi]
#[allow(dead_code)] // reached only through napi's export registration
pub fn error_codes() -> Vec<String> {
    ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect()
}

#[napi(object)]
pub struct StartConnectInput {
    pub provider: String,
    pub tenant_id: String,
    pub user_id: String,
    pub scopes: Option<Vec<String>>,
    pub redirect_uri: Option<String>,
    /// The handler's browser-binding cookie value.
    pub browser_binding: Option<String>,
}

#[napi(object)]
pub struct StartedOutput {
    pub url: String,
    pub state: String,
    pub expires_at: f64,
    /// `"GET"` or `"POST"`.
    pub callback_method: String,
}

#[napi(object)]
pub struct CallbackInput {
    /// Query or form parameters of the callback.
    pub params: std::collections::HashMap<String, String>,
    /// The provider named by the callback path, if any.
    pub provider: Option<String>,
    pub browser_binding: Option<String>,
}

/// A received webhook request (`verifyWebhook`): header names lowercased by the wrapper, the
/// raw body as bytes.
#[napi(object)]
pub struct WebhookInput {
    pub provider: String,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: std::collections::HashMap<String, String>,
    pub body: napi::bindgen_prelude::Buffer,
}

impl From<WebhookInput> for authpipe_core::WebhookCall {
    fn from(input: WebhookInput) -> Self {
        Self {
            provider: input.provider,
            tenant: input.tenant_id,
            name: input.name,
            method: input.method,
            url: input.url,
            headers: input.headers.into_iter().collect(),
            body: input.body.to_vec(),
        }
    }
}

#[napi(object)]
pub struct SessionOutput {
    pub token: String,
    pub expires_at: f64,
}

#[napi(object)]
pub struct SessionKeyOutput {
    pub tenant_id: String,
    pub user_id: String,
}

#[napi(object)]
pub struct DeletionOutput {
    pub existed: bool,
    pub revocation: String,
    pub revocation_error: Option<String>,
}

/// A connection event for JS. No secret: ids, status, times, error code and message.
#[napi(object)]
pub struct EventOutput {
    #[napi(js_name = "type")]
    pub kind: String,
    pub provider: String,
    pub tenant_id: String,
    pub user_id: String,
    pub at: f64,
    pub status: Option<String>,
    pub expires_at: Option<f64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempt: Option<u32>,
    pub next_retry_at: Option<f64>,
}

impl From<authpipe_core::Event> for EventOutput {
    fn from(e: authpipe_core::Event) -> Self {
        Self {
            kind: e.kind.as_str().to_owned(),
            provider: e.key.provider.to_string(),
            tenant_id: e.key.tenant.to_string(),
            user_id: e.key.user.to_string(),
            at: e.at as f64,
            status: e.status.map(|s| s.as_str().to_owned()),
            expires_at: e.expires_at.map(|v| v as f64),
            error_code: e.error.as_ref().map(|x| x.code.clone()),
            error_message: e.error.map(|x| x.message),
            attempt: e.attempt,
            next_retry_at: e.next_retry_at.map(|v| v as f64),
        }
    }
}

#[napi(object)]
pub struct HealthOutput {
    pub total: u32,
    pub by_status: std::collections::HashMap<String, u32>,
    pub by_provider: std::collections::HashMap<String, std::collections::HashMap<String, u32>>,
}

impl From<authpipe_core::Health> for HealthOutput {
    fn from(h: authpipe_core::Health) -> Self {
        let count = |m: std::collections::BTreeMap<String, u64>| {
            m.into_iter().map(|(k, v)| (k, v as u32)).collect()
        };
        Self {
            total: h.total as u32,
            by_status: count(h.by_status),
            by_provider: h
                .by_provider
                .into_iter()
                .map(|(k, v)| (k, count(v)))
                .collect(),
        }
    }
}
