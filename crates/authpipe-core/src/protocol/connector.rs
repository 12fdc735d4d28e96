//! How one `Authpipe` instance talks to providers: the settings and limits its calls share.

use crate::error::{Error, Result};
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

/// `new Authpipe()`'s options for provider calls, as the caller gave them (JS numbers);
/// [`ConnectorOptions::validate`] is the one place they are checked and defaulted.
#[derive(Clone, Debug, Default)]
pub struct ConnectorOptions {
    pub http_timeout_ms: Option<i64>,
    pub provider_concurrency: Option<i64>,
    /// `0` turns scheduled probes off.
    pub health_check_interval_ms: Option<i64>,
}

/// The defaults and limits of [`ConnectorOptions`].
pub const DEFAULT_HTTP_TIMEOUT_MS: i64 = 15_000;
pub const MAX_HTTP_TIMEOUT_MS: i64 = 120_000;
pub const DEFAULT_PROVIDER_CONCURRENCY: i64 = 8;
pub const MAX_PROVIDER_CONCURRENCY: i64 = 1024;
pub const DEFAULT_HEALTH_CHECK_INTERVAL_MS: i64 = 3_600_000;

/// Validated [`ConnectorOptions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectorSettings {
    pub timeout: std::time::Duration,
    pub concurrency: usize,
    /// `None`: no scheduled probes.
    pub health_interval_ms: Option<i64>,
}

impl ConnectorOptions {
    pub fn validate(&self) -> Result<ConnectorSettings> {
        let within = |value: Option<i64>, default: i64, min: i64, max: i64, name: &str| match value
        {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(_) => Err(Error::invalid_argument(format!(
                "{name} must be between {min} and {max}"
            ))),
        };
        let timeout_ms = within(
            self.http_timeout_ms,
            DEFAULT_HTTP_TIMEOUT_MS,
            1,
            MAX_HTTP_TIMEOUT_MS,
            "httpTimeoutMs",
        )?;
        let concurrency = within(
            self.provider_concurrency,
            DEFAULT_PROVIDER_CONCURRENCY,
            1,
            MAX_PROVIDER_CONCURRENCY,
            "providerConcurrency",
        )?;
        let health_interval_ms = match self.health_check_interval_ms {
            None => Some(DEFAULT_HEALTH_CHECK_INTERVAL_MS),
            Some(0) => None,
            Some(ms) if ms > 0 => Some(ms),
            Some(_) => {
                return Err(Error::invalid_argument(
                    "healthCheckIntervalMs must not be negative (0 turns probes off)",
                ))
            }
        };
        Ok(ConnectorSettings {
            timeout: std::time::Duration::from_millis(timeout_ms as u64),
            concurrency: concurrency as usize,
            health_interval_ms,
        })
    }
}

/// What a refresh needs besides its token request: reading and writing the store.
const REFRESH_LEASE_MARGIN_MS: i64 = 5_000;

impl Connector {
    /// `http` must have been built with `settings.timeout` ([`super::http::client`]).
    pub fn new(catalog: Catalog, http: reqwest::Client, settings: ConnectorSettings) -> Self {
        Self {
            catalog,
            http,
            concurrency: settings.concurrency.max(1),
            health_interval_ms: settings.health_interval_ms,
            refresh_lease_ms: settings.timeout.as_millis() as i64 + REFRESH_LEASE_MARGIN_MS,
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

    /// A slot to call `provider`, waiting for one if all are taken; and whether it waited.
    pub async fn permit(&self, provider: &ProviderId) -> (OwnedSemaphorePermit, bool) {
        let semaphore = self
            .limits
            .entry(provider.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.concurrency)))
            .clone();
        if let Ok(free) = semaphore.clone().try_acquire_owned() {
            return (free, false);
        }
        let waited = semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        (waited, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(
        http_timeout_ms: Option<i64>,
        provider_concurrency: Option<i64>,
        health_check_interval_ms: Option<i64>,
    ) -> Result<ConnectorSettings> {
        ConnectorOptions {
            http_timeout_ms,
            provider_concurrency,
            health_check_interval_ms,
        }
        .validate()
    }

    #[test]
    fn options_are_defaulted_and_bounded_here_and_nowhere_else() {
        let defaults = validate(None, None, None).unwrap();
        assert_eq!(defaults.timeout, std::time::Duration::from_millis(15_000));
        assert_eq!(defaults.concurrency, 8);
        assert_eq!(defaults.health_interval_ms, Some(3_600_000));

        for ms in [1, 120_000] {
            let settings = validate(Some(ms), None, None).unwrap();
            assert_eq!(settings.timeout.as_millis() as i64, ms);
        }
        for ms in [0, -1, 120_001, i64::MAX] {
            let err = validate(Some(ms), None, None).unwrap_err();
            assert_eq!(err.message, "httpTimeoutMs must be between 1 and 120000");
        }
        for n in [1, 1024] {
            assert_eq!(
                validate(None, Some(n), None).unwrap().concurrency,
                n as usize
            );
        }
        for n in [0, 1025, -5] {
            let err = validate(None, Some(n), None).unwrap_err();
            assert_eq!(
                err.message,
                "providerConcurrency must be between 1 and 1024"
            );
        }
        assert_eq!(
            validate(None, None, Some(0)).unwrap().health_interval_ms,
            None
        );
        assert_eq!(
            validate(None, None, Some(1)).unwrap().health_interval_ms,
            Some(1)
        );
        let err = validate(None, None, Some(-1)).unwrap_err();
        assert!(err
            .message
            .starts_with("healthCheckIntervalMs must not be negative"));
    }
}
