//! One error type for the whole core, carrying a stable machine-readable [`ErrorCode`].
//!
//! Messages are written for the person who reads them in a log: they say what was wrong and
//! what to do. They never contain a secret: they name fields and ids, never values.

use std::fmt;

/// Stable error codes. The string form (see [`ErrorCode::as_str`]) is part of the public API:
/// it is what JS callers see as `err.code`, so a variant is never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// An argument or option is missing, of the wrong shape, or out of bounds.
    InvalidArgument,
    /// The provider id is neither built in nor configured.
    UnknownProvider,
    /// No connection exists for (provider, tenant, user).
    ConnectionNotFound,
    /// The connection's access token has expired and cannot be refreshed.
    ConnectionExpired,
    /// The provider revoked the connection; the user has to connect again.
    ConnectionRevoked,
    /// No secret exists under that (tenant, provider, name).
    SecretNotFound,
    /// A master key does not match the store, or a key the store needs is not configured.
    VaultKeyMismatch,
    /// A tenant's data key is gone (crypto-shredded), so its records cannot be decrypted.
    VaultKeyMissing,
    /// A ciphertext failed authentication: it was altered, or moved to another row or tenant.
    VaultIntegrity,
    /// A master key cannot be retired while tenant keys are still wrapped by it.
    KeyInUse,
    /// The store failed (I/O, SQL, a file that is not an Authpipe store).
    StoreError,
    /// The user (or the provider) declined the authorization (`error=access_denied`).
    AuthorizationDenied,
    /// The provider answered the authorization request with another error.
    AuthorizationFailed,
    /// A callback's `state` is missing, malformed or unknown.
    InvalidState,
    /// The connect flow's state expired before the callback.
    StateExpired,
    /// The state was already used by an earlier callback (a replay).
    StateAlreadyUsed,
    /// The callback arrived for another provider than the flow was started for.
    StateProviderMismatch,
    /// The callback did not come from the browser that started the flow (cookie missing or wrong).
    BrowserMismatch,
    /// The callback's `iss` is not the provider's issuer (RFC 9207), or is missing where required.
    IssuerMismatch,
    /// The provider refused to exchange the authorization code (e.g. `invalid_grant`).
    CodeExchangeFailed,
    /// The provider answered with something that is not a valid OAuth response.
    ProviderError,
    /// The provider did not answer in time, or could not be reached.
    ProviderTimeout,
    /// The connection lacks a scope the app requires.
    InsufficientScope,
    /// A connect session token is unknown or expired.
    SessionInvalid,
    /// The instance was closed.
    Closed,
    /// A bug: an invariant broke or Rust panicked. The operation did not complete.
    Internal,
}

impl ErrorCode {
    /// The stable string form, e.g. `"CONNECTION_NOT_FOUND"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::UnknownProvider => "UNKNOWN_PROVIDER",
            Self::ConnectionNotFound => "CONNECTION_NOT_FOUND",
            Self::ConnectionExpired => "CONNECTION_EXPIRED",
            Self::ConnectionRevoked => "CONNECTION_REVOKED",
            Self::SecretNotFound => "SECRET_NOT_FOUND",
            Self::VaultKeyMismatch => "VAULT_KEY_MISMATCH",
            Self::VaultKeyMissing => "VAULT_KEY_MISSING",
            Self::VaultIntegrity => "VAULT_INTEGRITY",
            Self::KeyInUse => "KEY_IN_USE",
            Self::StoreError => "STORE_ERROR",
            Self::AuthorizationDenied => "AUTHORIZATION_DENIED",
            Self::AuthorizationFailed => "AUTHORIZATION_FAILED",
            Self::InvalidState => "INVALID_STATE",
            Self::StateExpired => "STATE_EXPIRED",
            Self::StateAlreadyUsed => "STATE_ALREADY_USED",
            Self::StateProviderMismatch => "STATE_PROVIDER_MISMATCH",
            Self::BrowserMismatch => "BROWSER_MISMATCH",
            Self::IssuerMismatch => "ISSUER_MISMATCH",
            Self::CodeExchangeFailed => "CODE_EXCHANGE_FAILED",
            Self::ProviderError => "PROVIDER_ERROR",
            Self::ProviderTimeout => "PROVIDER_TIMEOUT",
            Self::InsufficientScope => "INSUFFICIENT_SCOPE",
            Self::SessionInvalid => "SESSION_INVALID",
            Self::Closed => "CLOSED",
            Self::Internal => "INTERNAL",
        }
    }

    /// Every code, for documentation and for tests that check the JS side knows them all.
    pub const ALL: [ErrorCode; 26] = [
        Self::InvalidArgument,
        Self::UnknownProvider,
        Self::ConnectionNotFound,
        Self::ConnectionExpired,
        Self::ConnectionRevoked,
        Self::SecretNotFound,
        Self::VaultKeyMismatch,
        Self::VaultKeyMissing,
        Self::VaultIntegrity,
        Self::KeyInUse,
        Self::StoreError,
        Self::AuthorizationDenied,
        Self::AuthorizationFailed,
        Self::InvalidState,
        Self::StateExpired,
        Self::StateAlreadyUsed,
        Self::StateProviderMismatch,
        Self::BrowserMismatch,
        Self::IssuerMismatch,
        Self::CodeExchangeFailed,
        Self::ProviderError,
        Self::ProviderTimeout,
        Self::InsufficientScope,
        Self::SessionInvalid,
        Self::Closed,
        Self::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn store(context: &str, cause: impl fmt::Display) -> Self {
        Self::new(ErrorCode::StoreError, format!("{context}: {cause}"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_screaming_snake_case() {
        let names: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}"
            );
        }
    }
}
