//! Structured log records: what happened, under a stable `event` name, with ids, codes and
//! numbers as fields, never a secret. The app's logger (pino or any with the same methods) gets
//! them; the names are part of the API, as error codes are.

use crate::events::{Event, EventKind};
use crate::ids::ConnectionKey;
use crate::string_enum::string_enum;
use serde_json::{Map, Value};

string_enum! {
    /// A record's severity, named as pino names its methods.
    pub enum Level {
        Debug = "debug",
        Info = "info",
        Warn = "warn",
        Error = "error",
    }
}

/// One log record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub level: Level,
    /// Stable name (`refresh.succeeded`, `store.unavailable`, ...).
    pub event: &'static str,
    /// One sentence for a person; the fields say it for a machine.
    pub message: String,
    /// Engine clock, ms since the epoch.
    pub at: i64,
    pub fields: Map<String, Value>,
}

impl Record {
    pub fn new(level: Level, event: &'static str, at: i64, message: impl Into<String>) -> Self {
        Self {
            level,
            event,
            message: message.into(),
            at,
            fields: Map::new(),
        }
    }

    /// Adds a field (ids, codes, counts, times: never a secret).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    /// Adds the connection's ids.
    pub fn about(self, key: &ConnectionKey) -> Self {
        self.with("provider", key.provider.as_str())
            .with("tenantId", key.tenant.as_str())
            .with("userId", key.user.as_str())
    }

    /// The record of a connection event that changes what an operator sees (its status, or its
    /// existence). Refreshes have their own records, with their latency: `None` for those.
    pub fn of_event(event: &Event) -> Option<Self> {
        let (level, name, what) = match event.kind {
            EventKind::Created => (Level::Info, "connection.created", "stored"),
            EventKind::Deleted => (Level::Info, "connection.deleted", "deleted"),
            EventKind::Recovered => (Level::Info, "connection.recovered", "active again"),
            EventKind::Revoked => (Level::Warn, "connection.revoked", "revoked"),
            EventKind::Degraded => (Level::Warn, "connection.degraded", "degraded"),
            EventKind::Refreshed | EventKind::RefreshFailed => return None,
        };
        let key = &event.key;
        let mut record = Self::new(
            level,
            name,
            event.at,
            format!(
                "{} connection of {}/{} {what}",
                key.provider, key.tenant, key.user
            ),
        )
        .about(key);
        if let Some(status) = event.status {
            record = record.with("status", status.as_str());
        }
        if let Some(error) = &event.error {
            record = record.with("code", error.code.as_str());
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ConnectionStatus, LastError};

    #[test]
    fn a_revocation_is_a_warning_with_its_ids_and_code() {
        let key = ConnectionKey::parse("attio", "org_acme", "user_1").unwrap();
        let mut event = Event::new(EventKind::Revoked, &key, 1_000);
        event.status = Some(ConnectionStatus::Revoked);
        event.error = Some(LastError {
            code: "invalid_grant".into(),
            message: "the provider said so".into(),
        });
        let record = Record::of_event(&event).unwrap();
        assert_eq!(record.level, Level::Warn);
        assert_eq!(record.event, "connection.revoked");
        assert_eq!(record.fields["tenantId"], "org_acme");
        assert_eq!(record.fields["status"], "revoked");
        assert_eq!(record.fields["code"], "invalid_grant");
        // The provider's message may echo what was sent; only the code is recorded.
        assert!(!serde_json::to_string(&record.fields)
            .unwrap()
            .contains("provider said"));
    }

    #[test]
    fn refresh_events_have_their_own_records() {
        let key = ConnectionKey::parse("attio", "t", "u").unwrap();
        assert!(Record::of_event(&Event::new(EventKind::Refreshed, &key, 0)).is_none());
    }
}
