//! `NativeAuthpipe`: one JS `Authpipe` instance's handle on the core. Every method converts its
//! arguments, calls the core and converts the result; none makes a decision of its own.
//! (Class methods cost about 0.6 µs more than free functions, which is irrelevant here: the
//! hot path is the JS memo, and this class serves only its misses.)

use crate::convert::{
    CallbackInput, ConnectionOutput, CredentialOutput, DeletionOutput, DevKeyInfo, EventOutput,
    HealthOutput, ImportInput, IntoNapi, ListInput, ListOutput, RotationOutput, SessionKeyOutput,
    SessionOutput, StartConnectInput, StartedOutput, StatsOutput, TenantDeletionOutput,
    TenantKeyRotationOutput, WebhookInput,
};
use crate::forward::{Forwarder, Listener};
use crate::generation_pages::{page_buffer, PageBuffer};
use authpipe_core::CallbackMethod;
use authpipe_core::DevKeyNotice;
use authpipe_core::{encode_cursor, Client, ListFilter};
use authpipe_core::{BrowserBinding, Callback, Revocation, StartRequest};
use authpipe_core::{ConnectionKey, TenantId, UserId};
use authpipe_core::{Error, ErrorCode};
use authpipe_core::{Lookup, RefreshReason};
use napi::bindgen_prelude::{Either, PromiseRaw};
use napi::Env;
use napi_derive::napi;
use parking_lot::RwLock;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

#[napi]
pub struct NativeAuthpipe {
    client: RwLock<Option<Arc<Client>>>,
    dev_key: Option<DevKeyNotice>,
    /// Forwards engine events to the JS listener until `close()`.
    events: parking_lot::Mutex<Option<Forwarder>>,
    /// Forwards log records to the JS logger until `close()` (`telemetry.rs`).
    pub(crate) telemetry_records: parking_lot::Mutex<Option<Forwarder>>,
}

impl NativeAuthpipe {
    pub fn new(client: Client, dev_key: Option<DevKeyNotice>) -> Self {
        Self {
            client: RwLock::new(Some(Arc::new(client))),
            dev_key,
            events: Default::default(),
            telemetry_records: Default::default(),
        }
    }

    /// The client and a validated connection key.
    fn connection_key(
        &self,
        provider: &str,
        tenant_id: &str,
        user_id: &str,
    ) -> napi::Result<(Arc<Client>, ConnectionKey)> {
        let client = self.client()?;
        let key = client.connection_key(provider, tenant_id, user_id).napi()?;
        Ok((client, key))
    }

    pub(crate) fn client(&self) -> napi::Result<Arc<Client>> {
        self.client
            .read()
            .clone()
            .ok_or_else(|| Error::new(ErrorCode::Closed, "this Authpipe instance was closed"))
            .napi()
    }
}

#[napi]
impl NativeAuthpipe {
    /// Set when a development master key is in use.
    #[napi(catch_unwind)]
    pub fn dev_key(&self) -> Option<DevKeyInfo> {
        self.dev_key.as_ref().map(|n| DevKeyInfo {
            path: n.path.as_ref().map(|p| p.display().to_string()),
            created: n.created,
        })
    }

    /// Serves a credential: at once from the cache, or (a miss: a stale token, or nothing
    /// cached) as a promise that reads the store or waits for the refresh. One call either way,
    /// so a miss validates the ids and looks at the cache once.
    #[napi(
        catch_unwind,
        ts_return_type = "CredentialOutput | Promise<CredentialOutput>"
    )]
    pub fn credential<'env>(
        &self,
        env: &'env Env,
        provider: String,
        tenant_id: String,
        user_id: String,
    ) -> napi::Result<Either<CredentialOutput, PromiseRaw<'env, CredentialOutput>>> {
        let client = self.client()?;
        match client
            .engine()
            .lookup(&provider, &tenant_id, &user_id)
            .napi()?
        {
            Lookup::Hit(credential) => Ok(Either::A(credential.into())),
            Lookup::Pending(pending) => {
                let engine = client.engine().clone();
                // Validated before any I/O, so bad input gets its proper error.
                let key = client
                    .connection_key(&provider, &tenant_id, &user_id)
                    .napi()?;
                let served = async move {
                    engine
                        .resolve(&key, pending)
                        .await
                        .map(CredentialOutput::from)
                        .napi()
                };
                Ok(Either::B(env.spawn_future(served)?))
            }
        }
    }

    #[napi]
    pub async fn import_connections(
        &self,
        inputs: Vec<ImportInput>,
    ) -> napi::Result<Vec<ConnectionOutput>> {
        let client = self.client()?;
        let requests = inputs
            .into_iter()
            .map(|i| i.into_request(&client))
            .collect::<authpipe_core::Result<Vec<_>>>()
            .napi()?;
        let stored = client.engine().import(requests).await.napi()?;
        Ok(stored.into_iter().map(Into::into).collect())
    }

    #[napi]
    pub async fn connection(
        &self,
        provider: String,
        tenant_id: String,
        user_id: String,
    ) -> napi::Result<ConnectionOutput> {
        let (client, key) = self.connection_key(&provider, &tenant_id, &user_id)?;
        client
            .engine()
            .connection(&key)
            .await
            .map(Into::into)
            .napi()
    }

    #[napi]
    pub async fn list_connections(&self, input: ListInput) -> napi::Result<ListOutput> {
        let client = self.client()?;
        let query = client
            .list_query(&ListFilter {
                tenant: input.tenant_id.as_deref(),
                provider: input.provider.as_deref(),
                status: input.status.as_deref(),
                limit: input.limit,
                cursor: input.cursor.as_deref(),
            })
            .napi()?;
        let page = client.engine().list(query).await.napi()?;
        Ok(ListOutput {
            connections: page.connections.into_iter().map(Into::into).collect(),
            next_cursor: page.next_after.as_ref().map(encode_cursor),
        })
    }

    #[napi]
    pub async fn delete_connection(
        &self,
        provider: String,
        tenant_id: String,
        user_id: String,
    ) -> napi::Result<DeletionOutput> {
        let (client, key) = self.connection_key(&provider, &tenant_id, &user_id)?;
        let deletion = client.delete_connection(&key).await.napi()?;
        let revocation_error = match &deletion.revocation {
            Revocation::Failed(message) => Some(message.clone()),
            _ => None,
        };
        Ok(DeletionOutput {
            existed: deletion.existed,
            revocation: deletion.revocation.as_str().to_owned(),
            revocation_error,
        })
    }

    #[napi]
    pub async fn start_connect(&self, input: StartConnectInput) -> napi::Result<StartedOutput> {
        let (client, key) =
            self.connection_key(&input.provider, &input.tenant_id, &input.user_id)?;
        let started = client
            .start_connect(StartRequest {
                key,
                scopes: input.scopes,
                redirect_uri: input.redirect_uri,
                browser_binding: input.browser_binding.map(BrowserBinding::from),
            })
            .await
            .napi()?;
        Ok(StartedOutput {
            url: started.url,
            state: started.state.expose_secret().to_owned(),
            expires_at: started.expires_at as f64,
            callback_method: match started.callback_method {
                CallbackMethod::Get => "GET".to_owned(),
                CallbackMethod::Post => "POST".to_owned(),
            },
        })
    }

    #[napi]
    pub async fn handle_callback(&self, input: CallbackInput) -> napi::Result<ConnectionOutput> {
        let client = self.client()?;
        let callback = Callback {
            params: input.params.into_iter().collect(),
            provider: input.provider,
            browser_binding: input.browser_binding.map(BrowserBinding::from),
        };
        client
            .handle_callback(callback)
            .await
            .map(Into::into)
            .napi()
    }

    #[napi]
    pub async fn create_connect_session(
        &self,
        tenant_id: String,
        user_id: String,
        providers: Option<Vec<String>>,
        ttl_seconds: Option<i64>,
    ) -> napi::Result<SessionOutput> {
        let client = self.client()?;
        let tenant = TenantId::parse(tenant_id).napi()?;
        let user = UserId::parse(user_id).napi()?;
        let providers = providers
            .unwrap_or_default()
            .iter()
            .map(|p| client.provider(p))
            .collect::<authpipe_core::Result<Vec<_>>>()
            .napi()?;
        let grant = client
            .create_session(tenant, user, providers, ttl_seconds)
            .await
            .napi()?;
        Ok(SessionOutput {
            token: grant.token.expose_secret().to_owned(),
            expires_at: grant.expires_at as f64,
        })
    }

    /// The (tenant, user) a connect session stands for, if it may connect `provider`.
    #[napi]
    pub async fn session_key(
        &self,
        token: String,
        provider: String,
    ) -> napi::Result<SessionKeyOutput> {
        let client = self.client()?;
        let provider = client.provider(&provider).napi()?;
        let key = client.session_key(&token, &provider).await.napi()?;
        Ok(SessionKeyOutput {
            tenant_id: key.tenant.to_string(),
            user_id: key.user.to_string(),
        })
    }

    #[napi]
    pub async fn set_secret(
        &self,
        tenant_id: String,
        provider: Option<String>,
        name: String,
        value: String,
    ) -> napi::Result<()> {
        let client = self.client()?;
        let key = client
            .secret_key(&tenant_id, provider.as_deref(), &name)
            .napi()?;
        client
            .engine()
            .set_secret(&key, &SecretString::from(value))
            .await
            .napi()
    }

    #[napi]
    pub async fn get_secret(
        &self,
        tenant_id: String,
        provider: Option<String>,
        name: String,
    ) -> napi::Result<String> {
        let client = self.client()?;
        let key = client
            .secret_key(&tenant_id, provider.as_deref(), &name)
            .napi()?;
        let secret = client.engine().secret(&key).await.napi()?;
        Ok(secret.expose_secret().to_owned())
    }

    #[napi]
    pub async fn delete_secret(
        &self,
        tenant_id: String,
        provider: Option<String>,
        name: String,
    ) -> napi::Result<bool> {
        let client = self.client()?;
        let key = client
            .secret_key(&tenant_id, provider.as_deref(), &name)
            .napi()?;
        client.engine().delete_secret(&key).await.napi()
    }

    /// Resolves if the request is signed as its provider signs webhooks; the key stays here.
    #[napi]
    pub async fn verify_webhook(&self, input: WebhookInput) -> napi::Result<()> {
        let client = self.client()?;
        client.verify_webhook(&input.into()).await.napi()
    }

    #[napi]
    pub async fn rotate_master_key(&self) -> napi::Result<RotationOutput> {
        self.client()?
            .engine()
            .rotate_master_key()
            .await
            .map(Into::into)
            .napi()
    }

    #[napi]
    pub async fn rotate_tenant_key(
        &self,
        tenant_id: String,
    ) -> napi::Result<TenantKeyRotationOutput> {
        let tenant = authpipe_core::TenantId::parse(tenant_id).napi()?;
        self.client()?
            .engine()
            .rotate_tenant_key(&tenant)
            .await
            .map(Into::into)
            .napi()
    }

    #[napi]
    pub async fn retire_master_key(&self, id: String) -> napi::Result<()> {
        self.client()?.engine().retire_master_key(&id).await.napi()
    }

    #[napi]
    pub async fn delete_tenant(&self, tenant_id: String) -> napi::Result<TenantDeletionOutput> {
        let tenant = authpipe_core::TenantId::parse(tenant_id).napi()?;
        self.client()?
            .engine()
            .delete_tenant(&tenant)
            .await
            .map(Into::into)
            .napi()
    }

    /// Page `index` of the engine's generation counters (`null` if not allocated yet).
    #[napi(catch_unwind, ts_return_type = "ArrayBuffer | null")]
    pub fn generation_page(&self, env: Env, index: u32) -> napi::Result<Option<PageBuffer>> {
        match self.client()?.engine().generation_page(index as usize) {
            Some(page) => page_buffer(&env, page).map(Some),
            None => Ok(None),
        }
    }

    #[napi(catch_unwind)]
    pub fn stats(&self) -> napi::Result<StatsOutput> {
        Ok(self.client()?.engine().stats().into())
    }

    /// Releases this instance's hold on the engine (which closes with its last instance), then
    /// waits for refreshes already sent to a provider to be stored: the provider may have rotated
    /// the refresh token, and a process that exits before storing the new one loses the grant.
    /// Events of what happened until then (those refreshes too) are handed to the listener
    /// before it resolves; none after.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        let client = self.client.write().take();
        if let Some(client) = client {
            let (engine, limit) = (client.engine().clone(), client.refresh_lease());
            client.close();
            drop(client);
            engine.settle(limit).await;
        }
        let events = self.events.lock().take();
        let records = self.telemetry_records.lock().take();
        for forwarder in [events, records].into_iter().flatten() {
            forwarder.finish().await;
        }
        Ok(())
    }

    /// Delivers the engine's connection events to `listener` until `close()`.
    #[napi(catch_unwind, ts_args_type = "listener: (event: EventOutput) => void")]
    pub fn subscribe(&self, listener: Listener<EventOutput>) -> napi::Result<()> {
        let receiver = self.client()?.engine().subscribe();
        let forwarder = Forwarder::start(receiver, listener);
        if let Some(old) = self.events.lock().replace(forwarder) {
            old.abort();
        }
        Ok(())
    }

    #[napi]
    pub async fn refresh_connection(
        &self,
        provider: String,
        tenant_id: String,
        user_id: String,
    ) -> napi::Result<ConnectionOutput> {
        let (client, key) = self.connection_key(&provider, &tenant_id, &user_id)?;
        client
            .engine()
            .refresh(&key, RefreshReason::Forced)
            .await
            .map(Into::into)
            .napi()
    }

    #[napi]
    pub async fn check_connection(
        &self,
        provider: String,
        tenant_id: String,
        user_id: String,
    ) -> napi::Result<ConnectionOutput> {
        let (client, key) = self.connection_key(&provider, &tenant_id, &user_id)?;
        client.engine().check(&key).await.map(Into::into).napi()
    }

    #[napi(catch_unwind)]
    pub fn health(&self) -> napi::Result<HealthOutput> {
        Ok(self.client()?.engine().health().into())
    }
}
