//! Health probes: the provider's identity probe, run on a schedule (one process per interval,
//! under a store lease as long as the interval) or on demand with `checkConnection()`, decides
//! whether a connection is alive (`revoked` otherwise) and still has its required scopes.

use super::observe::probe_outcome;
use super::Engine;
use crate::error::{ErrorCode, Result};
use crate::events::{Event, EventKind};
use crate::ids::ConnectionKey;
use crate::maintenance;
use crate::protocol::identity;
use crate::providers::Provider;
use crate::records::{ConnectionRecord, ConnectionStatus, CredentialKind, LastError};
use crate::scheduler::Job;
use crate::store::{Lease, LeasePurpose, LeaseTake};
use dashmap::DashMap;

/// Connections with a scheduled probe under way in this process.
#[derive(Default)]
pub(super) struct Probes(DashMap<String, ()>);

impl Probes {
    /// This connection's turn to be probed, unless a probe of it is under way already.
    fn start(&self, key: &ConnectionKey) -> Option<ProbeTurn<'_>> {
        let cache_key = key.cache_key();
        self.0
            .insert(cache_key.clone(), ())
            .is_none()
            .then(|| ProbeTurn(self, cache_key))
    }
}

/// Marks a scheduled probe of a connection as under way while alive.
struct ProbeTurn<'a>(&'a Probes, String);

impl Drop for ProbeTurn<'_> {
    fn drop(&mut self) {
        (self.0).0.remove(&self.1);
    }
}

impl Engine {
    /// Schedules the next health probe of a connection, spread over the interval by its key.
    pub(super) fn schedule_check(&self, record: &ConnectionRecord) {
        let Some(connector) = self.connector() else {
            return;
        };
        let Some(interval) = connector.health_interval_ms else {
            return;
        };
        // Only connections Authpipe can speak for: OAuth, of a provider the app configured.
        let probe = connector
            .catalog
            .get(&record.key.provider)
            .is_some_and(|p| p.definition.identity.is_some() && p.require_client().is_ok());
        if !probe
            || record.kind != CredentialKind::OAuth2
            || record.status == ConnectionStatus::Revoked
        {
            return;
        }
        let due = match record.last_check_at {
            Some(last) => last + interval,
            // First probe: a stable offset inside the interval, so probes spread evenly.
            None => {
                self.now_ms() + (spread(&record.key.cache_key()) % interval.max(1) as u64) as i64
            }
        };
        self.scheduler.at(due, Job::Check(record.key.cache_key()));
    }

    /// A scheduled probe: run by whichever process takes the connection's probe lease for
    /// this interval; the others skip it, and learn its result through the change feed.
    pub(super) async fn scheduled_check(&self, key: &ConnectionKey, interval: i64) -> Result<()> {
        // One probe per connection at a time in this process (jobs for the same moment pile up;
        // the lease would let them all through, since it is ours).
        let Some(_probing) = self.probes.start(key) else {
            return Ok(());
        };
        let now = self.now_ms();
        let lease = Lease {
            key,
            purpose: LeasePurpose::Check,
            owner: &self.owner,
            until: now + interval,
        };
        let take = self.store.try_lease(lease, now).await?;
        self.lease_taken(key, LeasePurpose::Check, take);
        match take {
            LeaseTake::Acquired | LeaseTake::TakenOver => {
                let record = self.load(key).await?;
                let probed_meanwhile = record
                    .last_check_at
                    .is_some_and(|last| now - last < interval / 2);
                // A token about to be refreshed says little; its refresh will tell, and the
                // probe comes after it (the refreshed record schedules it).
                let refreshing =
                    record.refresh_token.is_some() && maintenance::is_stale(&record, now);
                if refreshing {
                    let _ = self
                        .store
                        .release_lease(key, LeasePurpose::Check, &self.owner)
                        .await;
                } else if !probed_meanwhile {
                    self.check(key).await?;
                }
            }
            // Should its holder die before probing, this process probes after the lease ends.
            LeaseTake::HeldUntil(until) => {
                self.scheduler.at(until + 1, Job::Check(key.cache_key()))
            }
        }
        Ok(())
    }

    /// Probes a connection's health now: the provider's identity probe decides whether it is
    /// alive (`revoked` otherwise) and still has its required scopes.
    pub async fn check(&self, key: &ConnectionKey) -> Result<ConnectionRecord> {
        let record = self.load(key).await?;
        let Some(connector) = self.connector() else {
            return Ok(self.cache_put(record).record.clone());
        };
        let Some(provider) = connector.catalog.get(&key.provider).cloned() else {
            return Ok(self.cache_put(record).record.clone());
        };
        if provider.definition.identity.is_none() || record.status == ConnectionStatus::Revoked {
            return Ok(self.cache_put(record).record.clone());
        }
        let secrets = self.secrets_of(&record).await?;
        let url = identity::url(&provider, &[&secrets.values()])?;
        let outcome = {
            let (_slot, waited) = connector.permit(&key.provider).await;
            if waited {
                self.waited_for_slot(key);
            }
            let sent = std::time::Instant::now();
            let _in_flight = self.request_in_flight(key);
            let outcome =
                identity::probe(&connector.http, &provider, url, &secrets.credential).await;
            let (label, code) = probe_outcome(&outcome, &provider);
            self.probe_answered(key, label, code, sent.elapsed());
            outcome
        };
        let now = self.now_ms();
        let Verdict {
            status,
            error,
            event: kind,
        } = verdict(
            &record,
            outcome,
            Context {
                // A token near its end may already be dead at the provider (expiry is known to
                // the second only): "inactive" then proves nothing, and its refresh will tell.
                near_end: maintenance::is_stale(&record, now),
                refresh_failing: self.refreshes.failing(key),
                provider: &provider,
            },
        )?;
        let checked = |base: &ConnectionRecord| ConnectionRecord {
            status,
            last_error: error.clone(),
            last_check_at: Some(now),
            updated_at: now,
            ..base.clone()
        };
        // Another writer may have got there first: a refresh, most often, which moots what the
        // probe said of the old token. Its row stands, with the probe's time on it, so that the
        // next probe comes an interval from now and not at once (probing again and again while
        // refreshes keep winning). A status change found on the same token is still applied.
        let (stored, changed_from) = match self
            .store
            .update_connection(checked(&record), record.version)
            .await?
        {
            Some(stored) => (stored, Some(record.status)),
            None => {
                let newer = self.load(key).await?;
                let applies = kind.is_some() && newer.credential == record.credential;
                let rewritten = if applies {
                    checked(&newer)
                } else {
                    ConnectionRecord {
                        last_check_at: Some(now),
                        updated_at: now,
                        ..newer.clone()
                    }
                };
                match self
                    .store
                    .update_connection(rewritten, newer.version)
                    .await?
                {
                    Some(stored) => (stored, applies.then_some(newer.status)),
                    None => (self.load(key).await?, None),
                }
            }
        };
        let stored = self.cache_put(stored).record.clone();
        let kind = kind.filter(|_| changed_from.is_some_and(|from| from != status));
        if let Some(kind) = kind {
            let mut event = Event::about(kind, &stored, now);
            event.error = error;
            self.emit(event);
        }
        Ok(stored)
    }
}

/// A stable spread of keys over an interval (FNV-1a).
fn spread(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a probe's answer means for a connection.
#[derive(Debug, PartialEq)]
pub(super) struct Verdict {
    pub status: ConnectionStatus,
    pub error: Option<LastError>,
    /// The event to emit if the status changes.
    pub event: Option<EventKind>,
}

/// What besides the answer decides a verdict.
pub(super) struct Context<'a> {
    /// The token is past its stale point: an "inactive" answer may only mean it expired.
    pub near_end: bool,
    /// Its last refresh failed: a live identity does not make it active again (the refresh
    /// will, when it succeeds).
    pub refresh_failing: bool,
    pub provider: &'a Provider,
}

/// The probe's state machine: alive with the required scopes is `active`; dead is `revoked`;
/// alive without a required scope is `insufficient_scope`; an unreachable or failing provider
/// is `degraded` (the token stays in service). A configuration error is ours, not the
/// connection's, and is returned.
pub(super) fn verdict(
    record: &ConnectionRecord,
    outcome: Result<identity::Identity>,
    context: Context<'_>,
) -> Result<Verdict> {
    let unchanged = || Verdict {
        status: record.status,
        error: record.last_error.clone(),
        event: None,
    };
    let provider = context.provider;
    Ok(match outcome {
        Ok(identity) if !identity.active && context.near_end => unchanged(),
        Ok(identity) if !identity.active => Verdict {
            status: ConnectionStatus::Revoked,
            error: Some(LastError {
                code: "inactive".into(),
                message: format!(
                    "{} reports the token inactive (revoked or uninstalled)",
                    provider.definition.display_name
                ),
            }),
            event: Some(EventKind::Revoked),
        },
        Ok(identity) => {
            let missing = identity
                .scopes
                .as_deref()
                .map(|granted| provider.missing_scopes(granted))
                .unwrap_or_default();
            if !missing.is_empty() {
                Verdict {
                    status: ConnectionStatus::InsufficientScope,
                    error: Some(LastError {
                        code: ErrorCode::InsufficientScope.as_str().into(),
                        message: format!(
                            "the connection lost required scope(s) {}",
                            missing.join(", ")
                        ),
                    }),
                    event: Some(EventKind::Degraded),
                }
            } else if context.refresh_failing {
                unchanged()
            } else {
                let recovered = record.status != ConnectionStatus::Active;
                Verdict {
                    status: ConnectionStatus::Active,
                    error: None,
                    event: recovered.then_some(EventKind::Recovered),
                }
            }
        }
        // Our configuration, not the connection's health.
        Err(e) if e.code == ErrorCode::InvalidArgument => return Err(e),
        Err(e) => Verdict {
            status: ConnectionStatus::Degraded,
            error: Some(LastError {
                code: e.code.as_str().into(),
                message: e.message,
            }),
            event: (record.status == ConnectionStatus::Active).then_some(EventKind::Degraded),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;
    use crate::test_support::{Fixture, Reply};
    use crate::Error;

    fn alive(scopes: &[&str]) -> Result<Identity> {
        Ok(Identity {
            active: true,
            scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        })
    }

    fn dead() -> Result<Identity> {
        Ok(Identity::default())
    }

    /// Status before, answer, near its end, its refresh failing; status after, event, and the
    /// error code then on record.
    type Case = (
        ConnectionStatus,
        Result<Identity>,
        bool,
        bool,
        ConnectionStatus,
        Option<EventKind>,
        Option<&'static str>,
    );

    /// Every (status before, answer, context) the probe's state machine distinguishes, and the
    /// status, event and error it comes to.
    #[tokio::test]
    async fn the_verdict_of_each_answer_in_each_state() {
        let f = Fixture::start().await;
        let provider = f.client.catalog().get(&f.key().provider).unwrap().clone();
        let mut record = f.connect(3_600_000).await;
        use ConnectionStatus::*;
        use EventKind as E;
        let unreachable = || Err(Error::new(ErrorCode::ProviderError, "HTTP 503"));
        let (scope, provider_error) = (Some("INSUFFICIENT_SCOPE"), Some("PROVIDER_ERROR"));
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // before,   answer,            near_end, failing, after,             event,               error
            (Active,     alive(&["read"]),  false, false, Active,            None,                None),
            (Degraded,   alive(&["read"]),  false, false, Active,            Some(E::Recovered),  None),
            (InsufficientScope, alive(&["read"]), false, false, Active,      Some(E::Recovered),  None),
            // Alive, but its refresh is failing: the refresh decides, the earlier error stays.
            (Degraded,   alive(&["read"]),  false, true,  Degraded,          None,                Some("earlier")),
            (Active,     alive(&["write"]), false, false, InsufficientScope, Some(E::Degraded),   scope),
            (Active,     dead(),            false, false, Revoked,           Some(E::Revoked),    Some("inactive")),
            (Degraded,   dead(),            false, true,  Revoked,           Some(E::Revoked),    Some("inactive")),
            // Dead near its expiry proves nothing: unchanged.
            (Active,     dead(),            true,  false, Active,            None,                None),
            (Active,     unreachable(),     false, false, Degraded,          Some(E::Degraded),   provider_error),
            (Degraded,   unreachable(),     false, false, Degraded,          None,                provider_error),
        ];
        for (before, answer, near_end, refresh_failing, after, event, code) in cases {
            record.status = before;
            record.last_error = (before != Active).then(|| LastError {
                code: "earlier".into(),
                message: "an earlier failure".into(),
            });
            let case = format!("{before:?} near_end={near_end} failing={refresh_failing}");
            let verdict = verdict(
                &record,
                answer,
                Context {
                    near_end,
                    refresh_failing,
                    provider: &provider,
                },
            )
            .unwrap();
            assert_eq!((verdict.status, verdict.event), (after, event), "{case}");
            assert_eq!(verdict.error.map(|e| e.code).as_deref(), code, "{case}");
        }
        // A configuration error is ours: returned, not recorded on the connection.
        let config = Err(Error::invalid_argument("providers.fake.identity.url"));
        let context = Context {
            near_end: false,
            refresh_failing: false,
            provider: &provider,
        };
        assert!(verdict(&record, config, context).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_records_its_verdict_once_and_emits_only_changes() {
        let f = Fixture::start().await;
        f.connect(3_600_000).await;
        let mut events = f.engine.subscribe();
        let key = f.key();
        let check = || async { f.engine.check(&key).await.unwrap() };

        f.provider
            .set_identity(Reply::error(503, "temporarily_unavailable"));
        let degraded = check().await;
        assert_eq!(degraded.status, ConnectionStatus::Degraded);
        assert_eq!(degraded.last_check_at, Some(f.engine.now_ms()));
        // The token stays in service while the provider is down.
        assert_eq!(f.served().await.unwrap(), "at-0");

        f.clock.advance(60_000);
        let again = check().await;
        assert_eq!(again.status, ConnectionStatus::Degraded);
        assert_eq!(again.last_check_at, Some(f.engine.now_ms()));

        f.provider.set_identity(Reply::ok(
            serde_json::json!({ "active": true, "scope": "read" }),
        ));
        assert_eq!(check().await.status, ConnectionStatus::Active);

        f.provider
            .set_identity(Reply::ok(serde_json::json!({ "active": false })));
        assert_eq!(check().await.status, ConnectionStatus::Revoked);
        assert_eq!(
            f.served().await.unwrap_err().code,
            ErrorCode::ConnectionRevoked
        );

        let mut kinds = Vec::new();
        while let Ok(event) = events.try_recv() {
            kinds.push(event.kind);
        }
        assert_eq!(
            kinds,
            [
                EventKind::Degraded,
                EventKind::Recovered,
                EventKind::Revoked
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scheduled_probe_runs_in_one_process_per_interval() {
        let f = Fixture::with_probes(Some(60_000)).await;
        f.connect(3_600_000).await;
        let key = f.key();
        let now = f.engine.now_ms();
        // Another process holds this interval's probe lease: this one skips the probe.
        let held = crate::store::Lease {
            key: &key,
            purpose: LeasePurpose::Check,
            owner: "another-process",
            until: now + 60_000,
        };
        f.engine.store.try_lease(held, now).await.unwrap();
        f.engine.scheduled_check(&key, 60_000).await.unwrap();
        assert_eq!(f.stored().await.last_check_at, None);

        // Its lease lapsed: this process probes, and holds the next interval's lease.
        f.clock.advance(60_001);
        f.engine.scheduled_check(&key, 60_000).await.unwrap();
        assert_eq!(f.stored().await.last_check_at, Some(f.engine.now_ms()));
        let mine = crate::store::Lease {
            key: &key,
            purpose: LeasePurpose::Check,
            owner: "another-process",
            until: f.engine.now_ms() + 60_000,
        };
        assert!(matches!(
            f.engine
                .store
                .try_lease(mine, f.engine.now_ms())
                .await
                .unwrap(),
            LeaseTake::HeldUntil(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_whose_url_cannot_be_filled_sends_nothing_and_records_nothing() {
        let f = Fixture::start().await;
        // Pipedrive's identity URL takes the connection's `api_domain`, which must be one of
        // Pipedrive's hosts; this one is not (and, under `.invalid`, resolves nowhere).
        let settings = serde_json::json!({ "pipedrive": {
            "clientId": "c", "clientSecret": "s", "redirectUri": "https://app.example/cb" } });
        f.client.close();
        let _client = Fixture::attach(&f.engine, &settings, None);
        let key = ConnectionKey::parse("pipedrive", "tenant-1", "user-1").unwrap();
        let fields = crate::input::ImportFields {
            access_token: Some(crate::secrets::AccessToken::new("at-0")),
            extras_json: Some(secrecy::SecretString::from(
                r#"{"api_domain":"https://elsewhere.invalid"}"#,
            )),
            ..Default::default()
        };
        let request = crate::input::ImportRequest::new(key.clone(), fields).unwrap();
        let before = f.engine.import(vec![request]).await.unwrap().remove(0);
        let mut events = f.engine.subscribe();

        let err = f.engine.check(&key).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ProviderError);
        assert!(err.message.contains("known hosts"), "{}", err.message);
        let after = f.engine.stored_connection(&key).await.unwrap().unwrap();
        assert_eq!(after.version, before.version);
        assert_eq!(after.status, ConnectionStatus::Active);
        assert_eq!(after.last_check_at, None);
        assert!(events.try_recv().is_err());
    }
}
