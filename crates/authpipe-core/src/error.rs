//! One error type for the whole core, carrying a stable machine-readable [`ErrorCode`].
//!
//! Messages are written for the person who reads them in a log: they say what was wrong and
//! what to do. They never contain a secret: they name fields and ids, never values.

use crate::string_enum::string_enum;
use std::fmt;

string_enum! {
    /// Stable error codes. The string form (see [`ErrorCode::as_str`]) is part of the public API:
    /// it is what JS callers see as `err.code`, so a variant is never renamed. The doc comments
    /// are also the TypeScript docs of `AuthpipeErrorCode` (`lib/generated.ts`), so they are
    /// written for JS callers too.
    pub enum ErrorCode {
        /// An argument or option is missing, of the wrong type, or out of bounds.
        InvalidArgument = "INVALID_ARGUMENT",
        /// The provider id is neither built in nor configured in `providers`.
        UnknownProvider = "UNKNOWN_PROVIDER",
        /// No connection exists for (provider, tenantId, userId).
        ConnectionNotFound = "CONNECTION_NOT_FOUND",
        /// The access token expired and could not be refreshed.
        ConnectionExpired = "CONNECTION_EXPIRED",
        /// The provider revoked the connection; the user has to connect again.
        ConnectionRevoked = "CONNECTION_REVOKED",
        /// No secret exists under (tenantId, provider, name).
        SecretNotFound = "SECRET_NOT_FOUND",
        /// The tenant has no data key: it has stored nothing yet, or was deleted (`rotateTenantKey`).
        TenantNotFound = "TENANT_NOT_FOUND",
        /// A master key does not match the store, or a key the store needs is not configured.
        VaultKeyMismatch = "VAULT_KEY_MISMATCH",
        /// The tenant's data key was destroyed (`deleteTenant`: crypto-shredded), so its records
        /// cannot be decrypted.
        VaultKeyMissing = "VAULT_KEY_MISSING",
        /// A stored ciphertext failed authentication: altered, copied from another row or tenant,
        /// or put back to an older ciphertext of itself.
        VaultIntegrity = "VAULT_INTEGRITY",
        /// The master key still wraps tenant keys; run `rotateMasterKey()` first.
        KeyInUse = "KEY_IN_USE",
        /// The store failed (I/O, SQL, not an Authpipe store).
        StoreError = "STORE_ERROR",
        /// The user (or the provider) declined the authorization (`error=access_denied`).
        AuthorizationDenied = "AUTHORIZATION_DENIED",
        /// The provider answered the authorization request with another error.
        AuthorizationFailed = "AUTHORIZATION_FAILED",
        /// A callback's `state` is missing, malformed or unknown.
        InvalidState = "INVALID_STATE",
        /// The connect flow expired (10 minutes) before the callback.
        StateExpired = "STATE_EXPIRED",
        /// The callback was already handled: a state is usable once (a replay).
        StateAlreadyUsed = "STATE_ALREADY_USED",
        /// The callback arrived for another provider than the flow was started for.
        StateProviderMismatch = "STATE_PROVIDER_MISMATCH",
        /// The callback did not come from the browser that started the flow (cookie missing or wrong).
        BrowserMismatch = "BROWSER_MISMATCH",
        /// The callback's `iss` is not the provider's issuer, or is missing where required (RFC 9207).
        IssuerMismatch = "ISSUER_MISMATCH",
        /// The provider refused to exchange the authorization code (e.g. `invalid_grant`).
        CodeExchangeFailed = "CODE_EXCHANGE_FAILED",
        /// The provider answered with something that is not a valid OAuth response.
        ProviderError = "PROVIDER_ERROR",
        /// The provider did not answer in time, or could not be reached.
        ProviderTimeout = "PROVIDER_TIMEOUT",
        /// The connection lacks a scope the app requires (`requiredScopes`).
        InsufficientScope = "INSUFFICIENT_SCOPE",
        /// A connect session token is unknown, expired, or not valid for that provider.
        SessionInvalid = "SESSION_INVALID",
        /// `verifyWebhook`: the provider has no webhook signature scheme (a custom provider can
        /// declare one in `providers.<id>.webhook`).
        WebhookUnsupported = "WEBHOOK_UNSUPPORTED",
        /// `verifyWebhook`: there is no key to verify with: no secret was stored with
        /// `setSecret` under (tenantId, provider, name), or, for a provider that signs with the
        /// app's client secret (HubSpot), `providers.<id>.clientSecret` is not configured. The
        /// app's configuration is at fault, not the request.
        WebhookSecretMissing = "WEBHOOK_SECRET_MISSING",
        /// `verifyWebhook`: the request carries none of the provider's signature headers.
        WebhookSignatureMissing = "WEBHOOK_SIGNATURE_MISSING",
        /// `verifyWebhook`: the signature header is not a signature: not hex (or base64), of the
        /// wrong length, or given twice.
        WebhookSignatureMalformed = "WEBHOOK_SIGNATURE_MALFORMED",
        /// `verifyWebhook`: the signature is well-formed but wrong: the body, method or URL differ
        /// from what was signed (a body parsed and serialised again differs), or another secret
        /// signed it.
        WebhookSignatureMismatch = "WEBHOOK_SIGNATURE_MISMATCH",
        /// `verifyWebhook`: the signed timestamp header (HubSpot's `X-HubSpot-Request-Timestamp`)
        /// is missing or not a number.
        WebhookTimestampInvalid = "WEBHOOK_TIMESTAMP_INVALID",
        /// `verifyWebhook`: the signed timestamp is further from now than the provider allows
        /// (5 minutes for HubSpot), in the past (a replay) or in the future.
        WebhookTimestampExpired = "WEBHOOK_TIMESTAMP_EXPIRED",
        /// The instance was closed.
        Closed = "CLOSED",
        /// A bug in @authpipe/node (an invariant broke or Rust panicked); the operation did not
        /// complete.
        Internal = "INTERNAL",
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
