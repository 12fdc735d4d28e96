//! Internal calls for the `authpipe` command line (lib/cli/), not part of the public API:
//! `storeInfo` for `authpipe doctor`, `checkImports` for `authpipe import`, which validates
//! every line of a file before it imports any.

use crate::authpipe::NativeAuthpipe;
use crate::convert::{ImportInput, IntoNapi};
use authpipe_core::{Diagnostics, MasterKeyStatus};
use napi_derive::napi;

#[napi(object)]
pub struct MasterKeyStatusOutput {
    pub id: String,
    /// `primary`, `active` or `retired` (unwrap only); absent when not configured here.
    pub configured: Option<String>,
    pub known_to_store: bool,
    pub retired_at: Option<f64>,
    pub tenant_keys: u32,
}

#[napi(object)]
pub struct StoreInfoOutput {
    /// The store, without credentials.
    pub store: String,
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub schema_version: u32,
    pub expected_schema_version: u32,
    /// PostgreSQL's `now()`, ms.
    pub server_now_ms: Option<f64>,
    /// The newest timestamp written into the store, ms.
    pub newest_write_ms: Option<f64>,
    /// This process's clock when the store was read, ms.
    pub now_ms: f64,
    pub master_keys: Vec<MasterKeyStatusOutput>,
    pub tenants: u32,
}

/// Why one import input would be refused.
#[napi(object)]
pub struct ImportProblemOutput {
    /// Its index in the list checked.
    pub index: u32,
    pub code: String,
    pub message: String,
}

impl From<MasterKeyStatus> for MasterKeyStatusOutput {
    fn from(k: MasterKeyStatus) -> Self {
        Self {
            id: k.id,
            configured: k.configured.map(str::to_owned),
            known_to_store: k.known_to_store,
            retired_at: k.retired_at.map(|v| v as f64),
            tenant_keys: k.tenant_keys as u32,
        }
    }
}

impl From<Diagnostics> for StoreInfoOutput {
    fn from(d: Diagnostics) -> Self {
        Self {
            store: d.store,
            kind: d.info.kind.to_owned(),
            schema_version: d.info.schema_version,
            expected_schema_version: d.info.expected_schema_version,
            server_now_ms: d.info.server_now_ms.map(|v| v as f64),
            newest_write_ms: d.info.newest_write_ms.map(|v| v as f64),
            now_ms: d.now_ms as f64,
            master_keys: d.master_keys.into_iter().map(Into::into).collect(),
            tenants: d.tenants as u32,
        }
    }
}

#[napi]
impl NativeAuthpipe {
    /// The store's schema version and clock reference, and the master keys configured here
    /// beside those the store knows.
    #[napi]
    pub async fn store_info(&self) -> napi::Result<StoreInfoOutput> {
        let client = self.client()?;
        let diagnostics = client.engine().diagnostics().await.napi()?;
        Ok(diagnostics.into())
    }

    /// What `importConnections` would refuse in `inputs`, each by its index, without storing
    /// anything (the store's own checks, tenant keys, still run at import).
    #[napi(catch_unwind)]
    pub fn check_imports(
        &self,
        inputs: Vec<ImportInput>,
    ) -> napi::Result<Vec<ImportProblemOutput>> {
        let client = self.client()?;
        Ok(inputs
            .into_iter()
            .enumerate()
            .filter_map(|(index, input)| {
                input
                    .into_request(&client)
                    .err()
                    .map(|e| ImportProblemOutput {
                        index: index as u32,
                        code: e.code.as_str().to_owned(),
                        message: e.message,
                    })
            })
            .collect())
    }
}

/// Whether an Authpipe store exists at `store` (the `store` option's syntax), creating nothing.
#[napi]
pub async fn store_exists(store: String) -> napi::Result<bool> {
    let location = authpipe_core::StoreLocation::parse(&store).napi()?;
    location.exists().await.napi()
}
