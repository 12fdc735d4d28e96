//! Validated identifiers. Once a value is a [`TenantId`], [`UserId`], [`ProviderId`] or
//! [`SecretName`], it is known to be non-empty, bounded and free of control characters, so the
//! rest of the crate (AAD encoding, cache keys, SQL) never re-checks it.
//!
//! Error messages name the field (in the JS API's spelling) and the rule, never the value:
//! a caller who passes a token in the wrong field must not see it echoed into a log.

use crate::error::{Error, Result};
use std::fmt;

/// Longest tenant id, user id or secret name, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest provider id, in bytes.
pub const MAX_PROVIDER_ID_BYTES: usize = 64;

fn check_id(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > max {
        return Err(Error::invalid_argument(format!(
            "{field} is {} bytes long; the limit is {max}",
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

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`; the error names the field as JS callers spell it.
            pub fn parse(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                check_id($field, &value, MAX_ID_BYTES)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// The app's id for one of its customers (an organisation, workspace, account).
    TenantId,
    "tenantId"
);
id_type!(
    /// The app's id for a user inside a tenant.
    UserId,
    "userId"
);
id_type!(
    /// The name of a secret kept with `setSecret` (an API key, a webhook signing secret).
    SecretName,
    "name"
);

/// A provider id such as `attio`: lowercase ASCII letters, digits, `-` and `_`, starting with a
/// letter or digit. Whether the provider is *known* is the catalog's question, not this type's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(String);

impl ProviderId {
    pub fn parse(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check_id("provider", &value, MAX_PROVIDER_ID_BYTES)?;
        let mut chars = value.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !(first_ok && rest_ok) {
            return Err(Error::invalid_argument(
                "provider must be lowercase letters, digits, '-' or '_' (for example \"attio\")",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one connection: one user of one tenant connected to one provider.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    pub tenant: TenantId,
    pub provider: ProviderId,
    pub user: UserId,
}

impl ConnectionKey {
    pub fn new(provider: ProviderId, tenant: TenantId, user: UserId) -> Self {
        Self {
            tenant,
            provider,
            user,
        }
    }

    /// Parses the three parts as they arrive from JS.
    pub fn parse(provider: &str, tenant: &str, user: &str) -> Result<Self> {
        Ok(Self::new(
            ProviderId::parse(provider)?,
            TenantId::parse(tenant)?,
            UserId::parse(user)?,
        ))
    }

    /// A single string key for hash maps. Unambiguous because no part may contain NUL.
    pub fn cache_key(&self) -> String {
        cache_key(
            self.provider.as_str(),
            self.tenant.as_str(),
            self.user.as_str(),
        )
    }
}

/// The cache key of (provider, tenant, user) without validating the parts: used by the hot
/// path, where an invalid part simply finds nothing.
pub fn cache_key(provider: &str, tenant: &str, user: &str) -> String {
    let mut key = String::with_capacity(provider.len() + tenant.len() + user.len() + 2);
    key.push_str(provider);
    key.push('\0');
    key.push_str(tenant);
    key.push('\0');
    key.push_str(user);
    key
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.tenant, self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn accepts_ordinary_ids() {
        assert_eq!(TenantId::parse("org_acme").unwrap().as_str(), "org_acme");
        assert!(UserId::parse("user 123 / ü").is_ok());
        assert!(ProviderId::parse("attio").is_ok());
        assert!(ProviderId::parse("zoho-crm_eu").is_ok());
    }

    #[test]
    fn rejections_name_the_field_but_never_the_value() {
        let secret = "sk_live_0123456789abcdef";
        for (result, field) in [
            (TenantId::parse(format!("{secret}\0")).err(), "tenantId"),
            (UserId::parse(secret.repeat(20)).err(), "userId"),
            (TenantId::parse("").err(), "tenantId"),
            (ProviderId::parse(format!("{secret}\n")).err(), "provider"),
        ] {
            let err = result.expect("must be rejected");
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains(field), "{}", err.message);
            assert!(!err.message.contains(secret), "{}", err.message);
        }
    }

    #[test]
    fn provider_ids_are_lowercase_slugs() {
        for bad in ["Attio", "-attio", "at tio", "attio!", "", "ä"] {
            assert!(ProviderId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_limit_is_in_bytes() {
        assert!(TenantId::parse("a".repeat(MAX_ID_BYTES)).is_ok());
        assert!(TenantId::parse("a".repeat(MAX_ID_BYTES + 1)).is_err());
        // 129 two-byte characters are 258 bytes.
        assert!(TenantId::parse("é".repeat(129)).is_err());
    }
}
