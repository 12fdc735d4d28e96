//! What the connect flow and the app keep in the store besides connections: started flows
//! (their PKCE verifier sealed with the tenant's key), connect sessions, and the app's named
//! secrets per tenant.

use super::{flow_place, secret_place, utf8, Engine};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::ConnectionKey;
use crate::input;
use crate::records::{FlowRecord, Sealed, SecretRecord, SessionRecord};
use crate::scheduler::Job;
use crate::secrets::PkceVerifier;
use crate::store::{FlowTake, SecretKey, PRUNE_INTERVAL_MS};
use crate::vault::WriteId;
use secrecy::{ExposeSecret, SecretString};

impl Engine {
    /// Stores a connect flow, with its PKCE verifier (if any) sealed with the tenant's key,
    /// bound to that flow.
    pub async fn put_flow(&self, flow: FlowRecord, verifier: Option<&PkceVerifier>) -> Result<()> {
        let flow = &flow;
        self.sealed_write(&[&flow.key.tenant], move || async move {
            // The key is made now even without a verifier to seal: the callback stores its
            // connection only into a tenant that still has it (see `import_connected`).
            let tenant_key = self.tenant_key(&flow.key.tenant, true).await?;
            let mut flow = flow.clone();
            if let Some(secret) = verifier {
                let place = flow_place(&flow.key, &flow.state_hash);
                let sealed = self.vault.seal(
                    &tenant_key,
                    WriteId::random(),
                    &place,
                    secret.expose_secret().as_bytes(),
                )?;
                flow.verifier = Some(sealed);
            }
            self.store.put_flow(flow).await
        })
        .await
    }

    /// The flow's PKCE verifier, opened.
    pub async fn open_flow_verifier(
        &self,
        key: &ConnectionKey,
        state_hash: &str,
        sealed: &Sealed,
    ) -> Result<PkceVerifier> {
        let place = flow_place(key, state_hash);
        let tenant_key = self.tenant_key_for(&key.tenant, sealed).await?;
        let opened = match self.vault.open(&tenant_key, &place, sealed) {
            // A rotation re-sealed it, and deleted the old key, since the flow was read.
            Err(e) if e.code == ErrorCode::VaultKeyMissing => {
                let resealed = self.store.flow(state_hash).await?.and_then(|f| f.verifier);
                let Some(resealed) = resealed.filter(|v| v != sealed) else {
                    return Err(e);
                };
                let tenant_key = self.tenant_key_for(&key.tenant, &resealed).await?;
                self.vault.open(&tenant_key, &place, &resealed)?
            }
            opened => opened?,
        };
        Ok(PkceVerifier::from(utf8(&opened)?))
    }

    /// Consumes a flow, if `browser_hash` is the binding it was started with.
    pub async fn take_flow(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
    ) -> Result<FlowTake> {
        self.store
            .take_flow(state_hash, browser_hash, self.now_ms())
            .await
    }

    pub async fn put_session(&self, session: SessionRecord) -> Result<()> {
        self.store.put_session(session).await
    }

    /// Reads a connect session without consuming it.
    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self.store.session(token_hash).await
    }

    /// Consumes a connect session (one flow per session).
    pub async fn take_session(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self.store.take_session(token_hash).await
    }

    /// Drops ended flows and expired sessions now, and again every [`PRUNE_INTERVAL_MS`].
    pub(crate) async fn prune_ended(&self) {
        // A failure (the store is down) is retried at the next interval; nothing depends on it.
        let _ = self.store.prune_ended(self.now_ms()).await;
        self.scheduler
            .at(self.now_ms() + PRUNE_INTERVAL_MS, Job::PruneEnded);
    }

    pub async fn set_secret(&self, key: &SecretKey, value: &SecretString) -> Result<()> {
        input::check_secret("value", value)?;
        self.sealed_write(&[&key.tenant], move || async move {
            let tenant_key = self.tenant_key(&key.tenant, true).await?;
            let sealed = self.vault.seal(
                &tenant_key,
                WriteId::random(),
                &secret_place(key),
                value.expose_secret().as_bytes(),
            )?;
            let now = self.now_ms();
            self.store
                .put_secret(SecretRecord {
                    tenant: key.tenant.clone(),
                    provider: key.provider.clone(),
                    name: key.name.clone(),
                    value: sealed,
                    created_at: now,
                    updated_at: now,
                })
                .await
        })
        .await
    }

    pub async fn secret(&self, key: &SecretKey) -> Result<SecretString> {
        match self.secret_once(key).await {
            // A rotation re-sealed it, and deleted the old key, between our two reads.
            Err(e) if e.code == ErrorCode::VaultKeyMissing => self.secret_once(key).await,
            read => read,
        }
    }

    async fn secret_once(&self, key: &SecretKey) -> Result<SecretString> {
        self.count_read();
        let record = self.store.secret(key).await?.ok_or_else(|| {
            let provider = key
                .provider
                .as_ref()
                .map(|p| format!(" and provider '{p}'"))
                .unwrap_or_default();
            Error::new(
                ErrorCode::SecretNotFound,
                format!(
                    "no secret named '{}' for tenant '{}'{provider}; store it with setSecret()",
                    key.name, key.tenant
                ),
            )
        })?;
        let tenant_key = self.tenant_key_for(&key.tenant, &record.value).await?;
        utf8(
            &self
                .vault
                .open(&tenant_key, &secret_place(key), &record.value)?,
        )
    }

    pub async fn delete_secret(&self, key: &SecretKey) -> Result<bool> {
        self.store.delete_secret(key).await
    }
}
