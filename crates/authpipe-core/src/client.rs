//! One `new Authpipe()` as the core sees it: a shared [`Engine`] plus this instance's own
//! configuration (its provider catalog). It turns raw ids from callers into validated keys.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::{ConnectionKey, ProviderId, SecretName, TenantId, UserId};
use crate::protocol::Connector;
use crate::providers::Catalog;
use crate::records::ConnectionStatus;
use crate::store::{ListQuery, SecretKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::sync::Arc;

/// Page size of `listConnections` when `limit` is not given, and the largest allowed.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Filters and position for `listConnections`, as callers pass them.
#[derive(Default)]
pub struct ListFilter<'a> {
    pub tenant: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub status: Option<&'a str>,
    /// As the caller gave it (a JS number); checked here.
    pub limit: Option<i64>,
    pub cursor: Option<&'a str>,
}

/// An opaque cursor: the last key of a page, as URL-safe base64 of a JSON triple.
pub fn encode_cursor(key: &ConnectionKey) -> String {
    let json = serde_json::json!([
        key.tenant.as_str(),
        key.provider.as_str(),
        key.user.as_str()
    ]);
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn decode_cursor(cursor: &str) -> Result<ConnectionKey> {
    let bad = || Error::invalid_argument("cursor is not a cursor returned by listConnections()");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let [tenant, provider, user]: [String; 3] =
        serde_json::from_slice(&bytes).map_err(|_| bad())?;
    ConnectionKey::parse(&provider, &tenant, &user).map_err(|_| bad())
}

#[derive(Debug)]
pub struct Client {
    engine: Arc<Engine>,
    connector: Arc<Connector>,
}

impl Client {
    pub fn new(engine: Arc<Engine>, connector: Connector) -> Self {
        let connector = Arc::new(connector);
        engine.attach(&connector);
        Self { engine, connector }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.connector.http
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops the engine from starting refreshes and probes with this instance's settings, even
    /// while something still holds them (a probe under way). Then [`Engine::settle`] can wait
    /// for the refreshes already started: each one is counted before it looks for settings, so
    /// either `settle` sees it, or it finds them closed and sends nothing.
    pub fn close(&self) {
        self.connector.close();
    }

    /// The longest one refresh can take (its lease).
    pub fn refresh_lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.connector.refresh_lease_ms as u64)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.connector.catalog
    }

    /// A known provider, or `UNKNOWN_PROVIDER`.
    pub fn provider(&self, provider: &str) -> Result<ProviderId> {
        let id = ProviderId::parse(provider)?;
        self.connector.catalog.require(&id)?;
        Ok(id)
    }

    /// Validates (provider, tenant, user); the provider must be in this instance's catalog.
    pub fn connection_key(
        &self,
        provider: &str,
        tenant: &str,
        user: &str,
    ) -> Result<ConnectionKey> {
        Ok(ConnectionKey::new(
            self.provider(provider)?,
            TenantId::parse(tenant)?,
            UserId::parse(user)?,
        ))
    }

    /// A validated page request.
    pub fn list_query(&self, filter: &ListFilter<'_>) -> Result<ListQuery> {
        let limit = match filter.limit {
            None => DEFAULT_PAGE_SIZE,
            Some(limit) if (1..=i64::from(MAX_PAGE_SIZE)).contains(&limit) => limit as u32,
            Some(_) => {
                return Err(Error::invalid_argument(format!(
                    "limit must be between 1 and {MAX_PAGE_SIZE}"
                )))
            }
        };
        let status = filter
            .status
            .map(|s| {
                ConnectionStatus::parse(s).ok_or_else(|| {
                    let all: Vec<&str> = ConnectionStatus::ALL.iter().map(|s| s.as_str()).collect();
                    Error::invalid_argument(format!("status must be one of: {}", all.join(", ")))
                })
            })
            .transpose()?;
        Ok(ListQuery {
            tenant: filter.tenant.map(TenantId::parse).transpose()?,
            provider: filter.provider.map(|p| self.provider(p)).transpose()?,
            status,
            after: filter.cursor.map(decode_cursor).transpose()?,
            limit,
        })
    }

    pub fn secret_key(
        &self,
        tenant: &str,
        provider: Option<&str>,
        name: &str,
    ) -> Result<SecretKey> {
        Ok(SecretKey {
            tenant: TenantId::parse(tenant)?,
            provider: provider.map(|p| self.provider(p)).transpose()?,
            name: SecretName::parse(name)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let key = ConnectionKey::parse("attio", "t/1", "ü \"x\"").unwrap();
        assert_eq!(decode_cursor(&encode_cursor(&key)).unwrap(), key);
        for bad in [
            "",
            "!!",
            "WzFd",
            &URL_SAFE_NO_PAD.encode(r#"["t","Bad","u"]"#),
        ] {
            assert!(
                decode_cursor(bad).unwrap_err().message.contains("cursor"),
                "{bad}"
            );
        }
    }
}
