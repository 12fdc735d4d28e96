//! The health summary: connection counts by status, overall and per provider, from the cache.

use super::Engine;
use std::collections::BTreeMap;

/// Counts of connections by status, overall and per provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_provider: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Engine {
    /// Connection counts by status and provider, from the cache (no I/O).
    pub fn health(&self) -> Health {
        let mut health = Health::default();
        for entry in self.cache.entries() {
            let record = &entry.record;
            let status = record.status.as_str().to_owned();
            health.total += 1;
            *health.by_status.entry(status.clone()).or_default() += 1;
            *health
                .by_provider
                .entry(record.key.provider.to_string())
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        health
    }
}
