//! The engine's view of a store: every operation passed through to the store, and what its
//! result says of the store's availability noted in a [`StoreHealth`]. One wrapper for every
//! store, so no store needs to count (and none can forget to).

use super::{
    ChangeFeed, FlowTake, Lease, LeasePurpose, LeaseTake, ListQuery, SealedRow, SecretKey, Store,
    StoreHealth, TenantDeletion, TenantKeyUsage,
};
use crate::error::Result;
use crate::ids::{ConnectionKey, TenantId};
use crate::records::{
    ConnectionRecord, FlowRecord, MasterKeyRecord, Sealed, SecretRecord, SessionRecord,
    TenantKeyRecord,
};
use async_trait::async_trait;
use std::sync::Arc;

/// A store whose operations are observed.
#[derive(Debug)]
pub struct Observed {
    inner: Arc<dyn Store>,
    health: Arc<StoreHealth>,
}

impl Observed {
    pub fn new(inner: Arc<dyn Store>, health: Arc<StoreHealth>) -> Self {
        Self { inner, health }
    }

    fn seen<T>(&self, result: Result<T>) -> Result<T> {
        self.health.observe(&result);
        result
    }
}

#[async_trait]
impl Store for Observed {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>> {
        self.seen(self.inner.master_keys().await)
    }
    async fn add_master_keys(&self, records: Vec<MasterKeyRecord>) -> Result<()> {
        self.seen(self.inner.add_master_keys(records).await)
    }
    async fn retire_master_key(&self, id: &str, now: i64) -> Result<()> {
        self.seen(self.inner.retire_master_key(id, now).await)
    }
    async fn tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        self.seen(self.inner.tenant_keys().await)
    }
    async fn tenant_key(&self, tenant: &TenantId) -> Result<Option<TenantKeyRecord>> {
        self.seen(self.inner.tenant_key(tenant).await)
    }
    async fn deleted_generation(&self, tenant: &TenantId) -> Result<Option<u32>> {
        self.seen(self.inner.deleted_generation(tenant).await)
    }
    async fn insert_tenant_key(&self, record: TenantKeyRecord) -> Result<TenantKeyRecord> {
        self.seen(self.inner.insert_tenant_key(record).await)
    }
    async fn rewrap_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_master_key_id: &str,
    ) -> Result<bool> {
        self.seen(
            self.inner
                .rewrap_tenant_key(record, expected_master_key_id)
                .await,
        )
    }
    async fn rotate_tenant_key(
        &self,
        record: TenantKeyRecord,
        expected_generation: u32,
    ) -> Result<bool> {
        self.seen(
            self.inner
                .rotate_tenant_key(record, expected_generation)
                .await,
        )
    }
    async fn older_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        self.seen(self.inner.older_tenant_keys().await)
    }
    async fn older_tenant_key(
        &self,
        tenant: &TenantId,
        generation: u32,
    ) -> Result<Option<TenantKeyRecord>> {
        self.seen(self.inner.older_tenant_key(tenant, generation).await)
    }
    async fn delete_older_tenant_key(&self, tenant: &TenantId, generation: u32) -> Result<bool> {
        self.seen(self.inner.delete_older_tenant_key(tenant, generation).await)
    }
    async fn tenant_key_usage(&self) -> Result<Vec<TenantKeyUsage>> {
        self.seen(self.inner.tenant_key_usage().await)
    }
    async fn rows_sealed_otherwise(
        &self,
        tenant: &TenantId,
        generation: u32,
        limit: u32,
    ) -> Result<Vec<SealedRow>> {
        self.seen(
            self.inner
                .rows_sealed_otherwise(tenant, generation, limit)
                .await,
        )
    }
    async fn reseal_secret(&self, record: SecretRecord, expected: &Sealed) -> Result<bool> {
        self.seen(self.inner.reseal_secret(record, expected).await)
    }
    async fn flow(&self, state_hash: &str) -> Result<Option<FlowRecord>> {
        self.seen(self.inner.flow(state_hash).await)
    }
    async fn reseal_flow(
        &self,
        flow: &FlowRecord,
        verifier: Sealed,
        expected: &Sealed,
    ) -> Result<bool> {
        self.seen(self.inner.reseal_flow(flow, verifier, expected).await)
    }
    async fn oldest_record_format(&self) -> Result<u8> {
        self.seen(self.inner.oldest_record_format().await)
    }
    async fn finish_format_migration(&self) -> Result<bool> {
        self.seen(self.inner.finish_format_migration().await)
    }
    async fn delete_tenant(&self, tenant: &TenantId) -> Result<TenantDeletion> {
        self.seen(self.inner.delete_tenant(tenant).await)
    }
    async fn put_connections(
        &self,
        records: Vec<ConnectionRecord>,
    ) -> Result<Vec<ConnectionRecord>> {
        self.seen(self.inner.put_connections(records).await)
    }
    async fn update_connection(
        &self,
        record: ConnectionRecord,
        expected_version: i64,
    ) -> Result<Option<ConnectionRecord>> {
        self.seen(self.inner.update_connection(record, expected_version).await)
    }
    async fn connection(&self, key: &ConnectionKey) -> Result<Option<ConnectionRecord>> {
        self.seen(self.inner.connection(key).await)
    }
    async fn connections(&self, keys: &[ConnectionKey]) -> Result<Vec<ConnectionRecord>> {
        self.seen(self.inner.connections(keys).await)
    }
    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        self.seen(self.inner.all_connections().await)
    }
    async fn list_connections(&self, query: &ListQuery) -> Result<Vec<ConnectionRecord>> {
        self.seen(self.inner.list_connections(query).await)
    }
    async fn delete_connection(&self, key: &ConnectionKey) -> Result<bool> {
        self.seen(self.inner.delete_connection(key).await)
    }
    async fn put_secret(&self, record: SecretRecord) -> Result<()> {
        self.seen(self.inner.put_secret(record).await)
    }
    async fn secret(&self, key: &SecretKey) -> Result<Option<SecretRecord>> {
        self.seen(self.inner.secret(key).await)
    }
    async fn delete_secret(&self, key: &SecretKey) -> Result<bool> {
        self.seen(self.inner.delete_secret(key).await)
    }
    async fn put_flow(&self, flow: FlowRecord) -> Result<()> {
        self.seen(self.inner.put_flow(flow).await)
    }
    async fn take_flow(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: i64,
    ) -> Result<FlowTake> {
        self.seen(self.inner.take_flow(state_hash, browser_hash, now).await)
    }
    async fn put_session(&self, session: SessionRecord) -> Result<()> {
        self.seen(self.inner.put_session(session).await)
    }
    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self.seen(self.inner.session(token_hash).await)
    }
    async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self.seen(self.inner.take_session(token_hash).await)
    }
    async fn prune_ended(&self, now: i64) -> Result<u64> {
        self.seen(self.inner.prune_ended(now).await)
    }
    async fn try_lease(&self, lease: Lease<'_>, now: i64) -> Result<LeaseTake> {
        self.seen(self.inner.try_lease(lease, now).await)
    }
    async fn release_lease(
        &self,
        key: &ConnectionKey,
        purpose: LeasePurpose,
        owner: &str,
    ) -> Result<()> {
        self.seen(self.inner.release_lease(key, purpose, owner).await)
    }
    async fn watch(&self) -> Result<Option<ChangeFeed>> {
        self.seen(self.inner.watch().await)
    }
}
