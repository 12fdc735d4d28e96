//! One type per secret role, so a refresh token cannot be sent where an access token goes, a
//! connect state cannot be stored as a credential, and none of them prints: `Debug` shows the
//! role and `[redacted]`, and there is no `Display`. Each wraps a [`SecretString`], which wipes
//! the value from memory when dropped. Reading the value takes an explicit
//! [`ExposeSecret::expose_secret`], which is easy to find in review.
//!
//! Only the roles that are copied in the course of their work are `Clone` (tokens are sealed,
//! opened and compared); the connect flow's one-use values are not:
//!
//! ```compile_fail
//! let verifier = authpipe_core::PkceVerifier::new("v".repeat(43));
//! let copy = verifier.clone();
//! ```
//!
//! ```compile_fail
//! let state = authpipe_core::StateToken::new("s");
//! let copy = state.clone();
//! ```
//!
//! ```
//! use authpipe_core::{AccessToken, RefreshToken};
//! use secrecy::ExposeSecret;
//! let token = AccessToken::new("at-123");
//! assert_eq!(format!("{token:?}"), "AccessToken([redacted])");
//! assert_eq!(token.expose_secret(), "at-123");
//! // A refresh token is another type: `let t: AccessToken = RefreshToken::new("rt")` does not compile.
//! let _ = RefreshToken::new("rt-456");
//! ```

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_role {
    ($(#[$doc:meta])* $name:ident $(: $($derive:ident),+)?) => {
        $(#[$doc])*
        $(#[derive($($derive),+)])?
        pub struct $name(SecretString);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }
        }

        impl ExposeSecret<str> for $name {
            fn expose_secret(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }

        impl From<SecretString> for $name {
            fn from(value: SecretString) -> Self {
                Self(value)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        // Same value, same secret: for compare-and-swap checks, never for authentication
        // (those compare hashes in constant time elsewhere).
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.expose_secret() == other.expose_secret()
            }
        }
    };
}

secret_role!(
    /// An OAuth access token: sent to the provider's API as `Bearer`, handed to callers.
    AccessToken: Clone
);
secret_role!(
    /// An OAuth refresh token: sent only to the provider's token and revocation endpoints.
    RefreshToken: Clone
);
secret_role!(
    /// An API key, for providers that use one instead of OAuth.
    ApiKey: Clone
);
secret_role!(
    /// The app's OAuth client secret, sent only to the provider's token endpoints.
    ClientSecret: Clone
);
secret_role!(
    /// The `state` of one connect flow: handed to the browser once; only its hash is stored.
    StateToken
);
secret_role!(
    /// The secret the HTTP handler puts in the browser's cookie when a flow starts; the callback
    /// must bring it back. Only its hash is stored.
    BrowserBinding
);
secret_role!(
    /// A connect flow's PKCE code verifier (RFC 7636): sealed with the flow, sent once with the
    /// code. (`oauth2`'s own type does not wipe its memory on drop; this one does.)
    PkceVerifier
);
secret_role!(
    /// A connect session's token, carried by the browser; only its hash is stored.
    SessionToken
);

impl<'de> serde::Deserialize<'de> for ClientSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}
