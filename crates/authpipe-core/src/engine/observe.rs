//! What the engine tells its operator: each happening counted in the instruments and, for
//! those who subscribed, written as a log record (`telemetry`). One method per happening, so
//! the engine's logic says "a refresh was answered" once and this file decides what follows.

use super::{Engine, RefreshReason};
use crate::events::Event;
use crate::ids::{ConnectionKey, TenantId};
use crate::protocol::refresh::RefreshFailure;
use crate::providers::Provider;
use crate::store::{Availability, LeasePurpose, LeaseTake, StoreHealth, TenantDeletion};
use crate::telemetry::{metrics, Family, Level, Readings, Record, Telemetry};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How the provider answered a refresh, as the metrics' `outcome` label says it.
pub(super) fn refresh_outcome(failure: Option<&RefreshFailure>) -> &'static str {
    match failure {
        None => "ok",
        Some(RefreshFailure::Terminal { .. }) => "revoked",
        Some(RefreshFailure::Transient { .. }) => "transient",
        Some(RefreshFailure::Ambiguous { .. }) => "ambiguous",
        Some(RefreshFailure::Config { .. }) => "config",
    }
}

fn reason_name(reason: RefreshReason) -> &'static str {
    match reason {
        RefreshReason::Stale => "stale",
        RefreshReason::Scheduled => "scheduled",
        RefreshReason::Forced => "forced",
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Engine {
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Every metric family, read now (no I/O).
    pub fn metrics(&self) -> Vec<Family> {
        let mut connections: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut last_refresh_at: BTreeMap<String, i64> = BTreeMap::new();
        for entry in self.cache.entries() {
            let record = &entry.record;
            let provider = record.key.provider.to_string();
            if let Some(at) = record.last_refresh_at {
                let latest = last_refresh_at.entry(provider.clone()).or_insert(at);
                *latest = (*latest).max(at);
            }
            *connections
                .entry((provider, record.status.as_str()))
                .or_default() += 1;
        }
        let health = &self.store_health;
        self.telemetry.families(Readings {
            connections,
            last_refresh_at,
            resyncs: self.follow_stats.resyncs.load(Ordering::Relaxed),
            store_errors: health.errors(),
            store_reconnects: health.reconnects(),
            store_up: health.up(),
            now_ms: self.now_ms(),
        })
    }

    /// Has the store tell the telemetry when it stops and starts answering.
    pub(super) fn listen_to_store(
        telemetry: &Arc<Telemetry>,
        engine: &Weak<Self>,
        store: &StoreHealth,
    ) {
        let telemetry = Arc::downgrade(telemetry);
        let engine = engine.clone();
        store.listen(move |change| {
            let (Some(telemetry), Some(engine)) = (telemetry.upgrade(), engine.upgrade()) else {
                return;
            };
            let at = engine.now_ms();
            let described = engine.store.describe();
            telemetry.record(|| match change {
                Availability::Lost { message } => Record::new(
                    Level::Error,
                    "store.unavailable",
                    at,
                    format!("the store ({described}) failed: {message}"),
                )
                .with("code", "STORE_ERROR")
                .with("store", described.clone())
                .with("message", message),
                Availability::Regained { down_ms } => Record::new(
                    Level::Info,
                    "store.reconnected",
                    at,
                    format!("the store ({described}) answers again after {down_ms} ms"),
                )
                .with("store", described.clone())
                .with("downMs", down_ms),
            });
        });
    }

    /// Sends a connection event to the instances, and its record to the logs.
    pub(super) fn emit(&self, event: Event) {
        self.telemetry.record(|| Record::of_event(&event));
        self.events.emit(event);
    }

    /// A request for `key`'s provider: counted in flight while the guard lives.
    pub(super) fn request_in_flight(
        &self,
        key: &ConnectionKey,
    ) -> crate::telemetry::metrics::InFlight<'_> {
        self.telemetry.metrics.in_flight(key.provider.as_str())
    }

    /// A request had to wait for a free slot under `providerConcurrency`.
    pub(super) fn waited_for_slot(&self, key: &ConnectionKey) {
        self.telemetry
            .metrics
            .concurrency_waits
            .add(key.provider.as_str(), 0);
    }

    /// A credential served from the Rust cache, no I/O.
    pub(super) fn served_from_cache(&self, key_provider: &str) {
        self.telemetry
            .metrics
            .credential_requests
            .add(key_provider, metrics::NATIVE_HIT);
    }

    /// A credential served after I/O (a store read, a refresh).
    pub(super) fn served_after_io(&self, key: &ConnectionKey) {
        self.telemetry
            .metrics
            .credential_requests
            .add(key.provider.as_str(), metrics::STORE_READ);
    }

    /// What taking a lease found, counted if it was a takeover.
    pub(super) fn lease_taken(&self, key: &ConnectionKey, purpose: LeasePurpose, take: LeaseTake) {
        if take != LeaseTake::TakenOver {
            return;
        }
        self.telemetry
            .metrics
            .lease_takeovers
            .fetch_add(1, Ordering::Relaxed);
        let at = self.now_ms();
        self.telemetry.record(|| {
            Record::new(
                Level::Info,
                "lease.taken_over",
                at,
                format!(
                    "took over the {} lease of {}/{}/{} from a process whose lease ran out",
                    purpose.as_str(),
                    key.provider,
                    key.tenant,
                    key.user
                ),
            )
            .about(key)
            .with("purpose", purpose.as_str())
        });
    }

    /// The provider answered a refresh request (or it failed) after `took`.
    pub(super) fn refresh_answered(
        &self,
        key: &ConnectionKey,
        reason: RefreshReason,
        failure: Option<&RefreshFailure>,
        took: Duration,
        expires_at: Option<i64>,
    ) {
        let outcome = refresh_outcome(failure);
        let metrics = &self.telemetry.metrics;
        metrics
            .refreshes
            .observe(key.provider.as_str(), outcome, took.as_secs_f64());
        let at = self.now_ms();
        self.telemetry.record(|| match failure {
            None => Record::new(
                Level::Info,
                "refresh.succeeded",
                at,
                format!(
                    "refreshed the {} token of {}/{} in {} ms",
                    key.provider,
                    key.tenant,
                    key.user,
                    millis(took)
                ),
            )
            .about(key)
            .with("reason", reason_name(reason))
            .with("durationMs", millis(took))
            .with("expiresAt", expires_at),
            Some(failure) => {
                let level = if outcome == "config" {
                    Level::Error
                } else {
                    Level::Warn
                };
                // The code only: a provider's message may echo what was sent.
                Record::new(
                    level,
                    "refresh.failed",
                    at,
                    format!(
                        "refreshing the {} token of {}/{} failed: {} ({outcome})",
                        key.provider,
                        key.tenant,
                        key.user,
                        failure.code()
                    ),
                )
                .about(key)
                .with("reason", reason_name(reason))
                .with("outcome", outcome)
                .with("code", failure.code())
                .with("durationMs", millis(took))
            }
        });
    }

    /// A health probe's answer, classified as `outcome`, after `took`; `code` for a failure.
    pub(super) fn probe_answered(
        &self,
        key: &ConnectionKey,
        outcome: &'static str,
        code: Option<&str>,
        took: Duration,
    ) {
        self.telemetry
            .metrics
            .probes
            .observe(key.provider.as_str(), outcome, took.as_secs_f64());
        let at = self.now_ms();
        self.telemetry.record(|| {
            let record = if outcome == "ok" {
                Record::new(
                    Level::Debug,
                    "probe.succeeded",
                    at,
                    format!(
                        "{} connection of {}/{} is alive",
                        key.provider, key.tenant, key.user
                    ),
                )
            } else {
                Record::new(
                    Level::Warn,
                    "probe.failed",
                    at,
                    format!(
                        "probing the {} connection of {}/{} found {outcome}",
                        key.provider, key.tenant, key.user
                    ),
                )
                .with("outcome", outcome)
                .with("code", code)
            };
            record.about(key).with("durationMs", millis(took))
        });
    }

    /// A change brought by the change feed reached the cache `lag_ms` after its write.
    pub(super) fn followed(&self, lag_ms: u64) {
        self.telemetry.metrics.observe_feed_lag(lag_ms);
    }

    pub(super) fn resynced(&self) {
        let at = self.now_ms();
        self.telemetry.record(|| {
            Record::new(
                Level::Warn,
                "change_feed.resynced",
                at,
                "reloaded every connection: the change feed may have missed changes",
            )
        });
    }

    pub(super) fn master_key_rotated(&self, primary: &str, rewrapped: u64) {
        let at = self.now_ms();
        self.telemetry.record(|| {
            Record::new(
                Level::Info,
                "master_key.rotated",
                at,
                format!("rewrapped {rewrapped} tenant key(s) under master key '{primary}'"),
            )
            .with("masterKeyId", primary)
            .with("tenants", rewrapped)
        });
    }

    pub(super) fn master_key_retired(&self, id: &str) {
        let at = self.now_ms();
        self.telemetry.record(|| {
            Record::new(
                Level::Info,
                "master_key.retired",
                at,
                format!("retired master key '{id}'"),
            )
            .with("masterKeyId", id)
        });
    }

    pub(super) fn tenant_key_rotated(&self, tenant: &TenantId, generation: u32, resealed: u64) {
        let at = self.now_ms();
        self.telemetry.record(|| {
            Record::new(Level::Info, "tenant_key.rotated", at, format!(
                "rotated the data key of tenant '{tenant}' to generation {generation}, re-sealing {resealed} record(s)"
            ))
            .with("tenantId", tenant.as_str())
            .with("generation", generation)
            .with("resealed", resealed)
        });
    }

    pub(super) fn tenant_deleted(&self, tenant: &TenantId, deletion: &TenantDeletion) {
        let at = self.now_ms();
        self.telemetry.record(|| {
            Record::new(
                Level::Info,
                "tenant.deleted",
                at,
                format!(
                    "deleted tenant '{tenant}' and its {} connection(s); its data key is destroyed",
                    deletion.connections
                ),
            )
            .with("tenantId", tenant.as_str())
            .with("connections", deletion.connections)
        });
    }
}

/// What the provider's answer to a probe says, as the metrics' `outcome` label names it (before
/// the engine weighs it: an "inactive" token near its end is left to its refresh), with the
/// error code of a failure.
pub(super) fn probe_outcome<'a>(
    answer: &'a crate::error::Result<crate::protocol::identity::Identity>,
    provider: &Provider,
) -> (&'static str, Option<&'a str>) {
    match answer {
        Ok(identity) if !identity.active => ("revoked", Some("inactive")),
        Ok(identity) => {
            let lost = identity
                .scopes
                .as_deref()
                .is_some_and(|granted| !provider.missing_scopes(granted).is_empty());
            if lost {
                ("insufficient_scope", Some("INSUFFICIENT_SCOPE"))
            } else {
                ("ok", None)
            }
        }
        Err(e) if e.code == crate::error::ErrorCode::InvalidArgument => {
            ("config", Some(e.code.as_str()))
        }
        Err(e) => ("transient", Some(e.code.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::RefreshReason;
    use crate::telemetry::{Family, Record};
    use crate::test_support::{Fixture, Reply};
    use crate::Lookup;

    const HOUR_MS: i64 = 3_600_000;

    fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = families.iter().find(|f| f.name == name)?;
        family
            .series
            .iter()
            .find(|s| {
                labels.len() == s.labels.len()
                    && labels
                        .iter()
                        .all(|(n, v)| s.labels.iter().any(|(ln, lv)| ln == n && lv == v))
            })
            .map(|s| s.value)
    }

    async fn next_record(
        records: &mut tokio::sync::broadcast::Receiver<Record>,
        event: &str,
    ) -> Record {
        let find = async {
            loop {
                let record = records.recv().await.unwrap();
                if record.event == event {
                    return record;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), find)
            .await
            .unwrap_or_else(|_| panic!("no {event} record came"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_is_counted_timed_and_logged_without_its_tokens() {
        let f = Fixture::start().await;
        f.connect(HOUR_MS).await;
        let mut records = f.engine.telemetry().subscribe();
        f.provider.reply([Reply::tokens(1, 3600)]);
        f.provider.close_gate();
        let refresh = {
            let (engine, key) = (f.engine.clone(), f.key());
            tokio::spawn(async move { engine.refresh(&key, RefreshReason::Forced).await })
        };
        f.provider.received(1).await;
        let during = f.engine.metrics();
        let in_flight = [("provider", "fake")];
        assert_eq!(
            value(&during, "authpipe_token_requests_in_flight", &in_flight),
            Some(1.0)
        );
        f.provider.open_gate();
        refresh.await.unwrap().unwrap();

        let after = f.engine.metrics();
        let ok = [("provider", "fake"), ("outcome", "ok")];
        assert_eq!(value(&after, "authpipe_refreshes_total", &ok), Some(1.0));
        assert_eq!(
            value(&after, "authpipe_refresh_duration_seconds", &ok),
            Some(1.0)
        );
        assert_eq!(
            value(&after, "authpipe_token_requests_in_flight", &in_flight),
            Some(0.0)
        );
        let since = value(
            &after,
            "authpipe_seconds_since_last_successful_refresh",
            &in_flight,
        );
        assert_eq!(since, Some(0.0), "the fixture's clock stands still");
        let active = [("provider", "fake"), ("status", "active")];
        assert_eq!(value(&after, "authpipe_connections", &active), Some(1.0));

        let record = next_record(&mut records, "refresh.succeeded").await;
        assert_eq!(record.fields["tenantId"], "tenant-1");
        assert_eq!(record.fields["reason"], "forced");
        assert!(record.fields["durationMs"].is_u64());
        let printed = format!(
            "{} {}",
            record.message,
            serde_json::Value::Object(record.fields)
        );
        for token in ["at-0", "rt-0", "at-1", "rt-1"] {
            assert!(!printed.contains(token), "{token} in {printed}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_grant_is_counted_as_revoked_and_logged_with_its_code() {
        let f = Fixture::start().await;
        f.connect(HOUR_MS).await;
        let mut records = f.engine.telemetry().subscribe();
        f.provider.reply([Reply::error(400, "invalid_grant")]);
        f.engine
            .refresh(&f.key(), RefreshReason::Forced)
            .await
            .unwrap();
        let metrics = f.engine.metrics();
        let revoked = [("provider", "fake"), ("outcome", "revoked")];
        assert_eq!(
            value(&metrics, "authpipe_refreshes_total", &revoked),
            Some(1.0)
        );
        let failed = next_record(&mut records, "refresh.failed").await;
        assert_eq!(failed.fields["outcome"], "revoked");
        assert_eq!(failed.fields["code"], "invalid_grant");
        let status = next_record(&mut records, "connection.revoked").await;
        assert_eq!(status.fields["status"], "revoked");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credentials_are_counted_by_how_they_were_served() {
        let f = Fixture::start().await;
        f.connect(HOUR_MS).await;
        let key = f.key();
        let (p, t, u) = (
            key.provider.as_str(),
            key.tenant.as_str(),
            key.user.as_str(),
        );
        // `served()` takes the path of a miss (`resolve`); the cache serves the lookups after it.
        f.served().await.unwrap();
        assert!(matches!(f.engine.lookup(p, t, u).unwrap(), Lookup::Hit(_)));
        assert!(matches!(f.engine.lookup(p, t, u).unwrap(), Lookup::Hit(_)));
        let metrics = f.engine.metrics();
        let hits = [("provider", "fake"), ("outcome", "native_hit")];
        let reads = [("provider", "fake"), ("outcome", "store_read")];
        assert_eq!(
            value(&metrics, "authpipe_credential_requests_total", &hits),
            Some(2.0)
        );
        assert_eq!(
            value(&metrics, "authpipe_credential_requests_total", &reads),
            Some(1.0)
        );
    }
}
