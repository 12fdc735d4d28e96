//! What `authpipe doctor` checks that no other call reports: the store's schema and clock
//! reference ([`StoreInfo`]), and the master keys as configured here beside those the store
//! knows, with how many tenant keys each still wraps. Reads only; no key material leaves.

use super::Engine;
use crate::error::Result;
use crate::store::StoreInfo;
use std::collections::BTreeMap;

/// One master key id, as this engine is configured and as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyStatus {
    pub id: String,
    /// How it is configured here: `primary` (wraps new tenant keys), `active` (unwraps, until a
    /// rotation is done), `retired` (unwrap only, for a repair); `None` if not configured.
    pub configured: Option<&'static str>,
    /// Whether the store holds its key check (some instance opened the store with it).
    pub known_to_store: bool,
    /// When the store marked it retired, ms since the epoch.
    pub retired_at: Option<i64>,
    /// Tenant data keys (current and older generations) wrapped by it.
    pub tenant_keys: u64,
}

/// [`Engine::diagnostics`].
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// The store, without credentials.
    pub store: String,
    pub info: StoreInfo,
    /// This engine's clock when the store was read, ms since the epoch.
    pub now_ms: i64,
    /// Configured keys first (primary first), then those only the store knows.
    pub master_keys: Vec<MasterKeyStatus>,
    /// Tenants with a data key.
    pub tenants: u64,
}

impl Engine {
    /// Reads what [`Diagnostics`] reports from the store and the vault.
    pub async fn diagnostics(&self) -> Result<Diagnostics> {
        let info = self.store.info().await?;
        let now_ms = self.now_ms();
        let stored = self.store.master_keys().await?;
        let tenant_keys = self.store.tenant_keys().await?;
        let older = self.store.older_tenant_keys().await?;
        let mut wraps: BTreeMap<&str, u64> = BTreeMap::new();
        for key in tenant_keys.iter().chain(&older) {
            *wraps.entry(key.master_key_id.as_str()).or_default() += 1;
        }
        let status = |id: &str, configured: Option<&'static str>| {
            let record = stored.iter().find(|k| k.id == id);
            MasterKeyStatus {
                id: id.to_owned(),
                configured,
                known_to_store: record.is_some(),
                retired_at: record.and_then(|k| k.retired_at),
                tenant_keys: wraps.get(id).copied().unwrap_or(0),
            }
        };
        let configured = self.vault.configured_keys();
        let mut master_keys: Vec<MasterKeyStatus> = configured
            .iter()
            .map(|(id, role)| status(id, Some(role)))
            .collect();
        let unconfigured = stored
            .iter()
            .map(|k| k.id.as_str())
            .chain(wraps.keys().copied())
            .filter(|id| !configured.iter().any(|(c, _)| c == id));
        for id in unconfigured {
            if !master_keys.iter().any(|k| k.id == id) {
                master_keys.push(status(id, None));
            }
        }
        Ok(Diagnostics {
            store: self.store.describe(),
            info,
            now_ms,
            master_keys,
            tenants: tenant_keys.len() as u64,
        })
    }
}

impl super::StoreLocation {
    /// Whether an Authpipe store is there already, found without creating one (opening would:
    /// a file, or a PostgreSQL schema and its tables). An in-memory store never is.
    pub async fn exists(&self) -> Result<bool> {
        match self {
            Self::File(path) => Ok(path.is_file()),
            Self::Memory => Ok(false),
            Self::Postgres { url, schema, tls } => {
                use secrecy::ExposeSecret;
                crate::store::postgres::store_exists(url.expose_secret(), schema, tls).await
            }
        }
    }
}
