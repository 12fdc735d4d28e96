//! Connection events, broadcast to every instance on the engine. Payloads carry ids, status,
//! times and error codes, never a secret.

use crate::ids::ConnectionKey;
use crate::records::{ConnectionRecord, ConnectionStatus, LastError};
use crate::string_enum::string_enum;
use tokio::sync::broadcast;

string_enum! {
    /// What happened to a connection; the string form is the event's name in JS
    /// (`authpipe.on(name, ...)`).
    pub enum EventKind {
        /// A connection was stored: connected, or imported.
        Created = "connection.created",
        /// The access token was refreshed.
        Refreshed = "connection.refreshed",
        /// A transient refresh failure; the connection keeps serving its still-valid token.
        RefreshFailed = "connection.refresh_failed",
        /// The connection stopped being active: a refresh or health probe failed, or a required
        /// scope went missing.
        Degraded = "connection.degraded",
        /// The provider revoked the connection; the user has to connect again.
        Revoked = "connection.revoked",
        /// A connection that was not active is active again.
        Recovered = "connection.recovered",
        /// The connection was deleted.
        Deleted = "connection.deleted",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub key: ConnectionKey,
    pub at: i64,
    pub status: Option<ConnectionStatus>,
    pub expires_at: Option<i64>,
    pub error: Option<LastError>,
    /// For `RefreshFailed`: which consecutive failure this is, and when the next try is due.
    pub attempt: Option<u32>,
    pub next_retry_at: Option<i64>,
}

impl Event {
    pub fn new(kind: EventKind, key: &ConnectionKey, at: i64) -> Self {
        Self {
            kind,
            key: key.clone(),
            at,
            status: None,
            expires_at: None,
            error: None,
            attempt: None,
            next_retry_at: None,
        }
    }
}

impl Event {
    /// An event about `record` as it stands: its status, expiry and last error.
    pub fn about(kind: EventKind, record: &ConnectionRecord, at: i64) -> Self {
        let mut event = Self::new(kind, &record.key, at);
        event.status = Some(record.status);
        event.expires_at = record.expires_at;
        event.error = record.last_error.clone();
        event
    }
}

/// Events buffered per subscriber before a slow one starts missing them.
const EVENT_BUFFER: usize = 4096;

/// Where an engine's events go: every subscribed instance gets each one.
pub struct EventBus(broadcast::Sender<Event>);

impl Default for EventBus {
    fn default() -> Self {
        Self(broadcast::channel(EVENT_BUFFER).0)
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }

    /// Sends to the subscribers there are (none is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.0.send(event);
    }
}
