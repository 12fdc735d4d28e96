//! How one `Authpipe` instance talks to providers: the settings and limits its calls share.

use crate::ids::ProviderId;
use crate::providers::Catalog;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How an instance talks to providers: its catalog, its HTTP client, how many calls it makes
/// at once per provider, and how often it probes connections. The engine runs refreshes and
/// probes with the connector of an instance that is still open.
#[derive(Debug)]
pub struct Connector {
    pub catalog: Catalog,
    pub http: reqwest::Client,
    /// Most token and probe requests in flight per provider.
    pub concurrency: usize,
    /// Interval of scheduled health probes; `None` turns them off.
    pub health_interval_ms: Option<i64>,
    /// How long a refresh lease is taken for: the longest a refresh can take (one token request,
    /// `http`'s timeout) and a margin to store its result. A holder that dies blocks the
    /// connection's refreshes this long at most.
    pub refresh_lease_ms: i64,
    limits: DashMap<ProviderId, Arc<Semaphore>>,
    /// Set by [`Connector::close`]: the engine no longer starts refreshes or probes with it.
    closed: AtomicBool,
}

/// What a refresh needs besides its token request: reading and writing the store.
const REFRESH_LEASE_MARGIN_MS: i64 = 5_000;

impl Connector {
    /// `request_timeout` must be the timeout `http` was built with.
    pub fn new(
        catalog: Catalog,
        http: reqwest::Client,
        request_timeout: std::time::Duration,
        concurrency: usize,
        health_interval_ms: Option<i64>,
    ) -> Self {
        Self {
            catalog,
            http,
            concurrency: concurrency.max(1),
            health_interval_ms,
            refresh_lease_ms: request_timeout.as_millis() as i64 + REFRESH_LEASE_MARGIN_MS,
            limits: DashMap::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether its instance was closed. (SeqCst: the engine's `settle` relies on it, see
    /// `Client::close`.)
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Marks its instance closed: no refresh or probe starts with it from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Waits for a slot to call `provider`.
    pub async fn permit(&self, provider: &ProviderId) -> OwnedSemaphorePermit {
        let semaphore = self
            .limits
            .entry(provider.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.concurrency)))
            .clone();
        semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}
