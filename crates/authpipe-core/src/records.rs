//! What a store persists. Plain data: secret fields are already [`Sealed`] (ciphertext), so a
//! store implementation never sees plaintext and needs no crypto.

use crate::ids::{ConnectionKey, ProviderId, SecretName, TenantId};
use crate::string_enum::string_enum;
use std::fmt;

/// An AES-256-GCM ciphertext in the vault's record format (see `vault::envelope`).
/// Its `Debug` prints the length only: ciphertext is not secret, but it is noise.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

string_enum! {
    /// How a connection authenticates against the provider (`type` in JS: `CredentialType`).
    pub enum CredentialKind {
        /// A bearer access token, possibly with a refresh token.
        OAuth2 = "oauth2",
        /// A static API key.
        ApiKey = "api_key",
    }
}

string_enum! {
    /// The health of a connection. Stored as its string form.
    pub enum ConnectionStatus {
        /// Healthy: the credential is served, and refreshed when due.
        Active = "active",
        /// A refresh or health probe failed; the still-valid token keeps being served, and the
        /// refresh is retried.
        Degraded = "degraded",
        /// The access token expired while its refresh kept failing; the refresh is retried.
        Expired = "expired",
        /// The provider revoked the connection (or its refresh token); the user has to connect
        /// again.
        Revoked = "revoked",
        /// A health probe found a scope the app requires (`requiredScopes`) missing.
        InsufficientScope = "insufficient_scope",
    }
}

/// The account at the provider a connection belongs to (e.g. an Attio workspace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderAccount {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// The last error seen on a connection: a stable code and a secret-free message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

impl LastError {
    /// From the two columns stores keep it in: no code, no error.
    pub fn from_columns(code: Option<String>, message: Option<String>) -> Option<Self> {
        code.map(|code| Self {
            code,
            message: message.unwrap_or_default(),
        })
    }
}

/// One stored connection. All timestamps are milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionRecord {
    pub key: ConnectionKey,
    pub kind: CredentialKind,
    pub status: ConnectionStatus,
    pub scopes: Vec<String>,
    pub account: ProviderAccount,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_refresh_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    pub last_check_at: Option<i64>,
    pub last_error: Option<LastError>,
    /// When the current access token was obtained (connect, refresh or import): with
    /// `expires_at`, its lifetime, from which the refresh margin follows.
    pub token_issued_at: Option<i64>,
    /// The access token or API key.
    pub credential: Sealed,
    pub refresh_token: Option<Sealed>,
    /// Provider fields kept from the token response (a JSON object), e.g. Salesforce `instance_url`.
    pub extras: Option<Sealed>,
    /// Bumped by the store on every write; the basis for compare-and-swap updates.
    pub version: i64,
}

impl ConnectionRecord {
    /// The sealed fields: the credential, then the refresh token and extras if present.
    pub fn sealed_fields(&self) -> impl Iterator<Item = &Sealed> {
        std::iter::once(&self.credential)
            .chain(self.refresh_token.as_ref())
            .chain(self.extras.as_ref())
    }
}

/// One stored secret (`setSecret`). `provider` is `None` for tenant-wide secrets.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretRecord {
    pub tenant: TenantId,
    pub provider: Option<ProviderId>,
    pub name: SecretName,
    pub value: Sealed,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A tenant's data key, wrapped by one master key.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantKeyRecord {
    pub tenant: TenantId,
    /// Which data key of the tenant this is; part of every record header it sealed.
    pub generation: u32,
    pub master_key_id: String,
    pub wrapped: Sealed,
    pub created_at: i64,
}

/// Proof, per master key id, of which key material the store was used with.
#[derive(Clone, Debug, PartialEq)]
pub struct MasterKeyRecord {
    pub id: String,
    pub key_check: Sealed,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// One started connect flow, addressed by the SHA-256 of its `state` (the state itself is never
/// stored). Single use: `consumed_at` is set by the first callback that presents it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    pub state_hash: String,
    pub key: ConnectionKey,
    /// The PKCE verifier, sealed with the tenant's key.
    pub verifier: Option<Sealed>,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// SHA-256 of the browser-binding cookie the handler set, if any.
    pub browser_hash: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub consumed_at: Option<i64>,
}

/// A connect session: lets a browser start flows for one (tenant, user) without naming them.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub token_hash: String,
    pub tenant: TenantId,
    pub user: crate::ids::UserId,
    /// Providers the session may connect; empty means any.
    pub providers: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
}
