//! The provider settings of the instances sharing this engine. Refreshes and probes run with
//! those of the first instance still open; each instance holds its own, the engine only a weak
//! reference, so a closed or dropped instance stops being used at once.

use super::Engine;
use crate::protocol::Connector;
use std::sync::{Arc, Weak};

#[derive(Default)]
pub(super) struct Connectors(parking_lot::RwLock<Vec<Weak<Connector>>>);

impl Connectors {
    /// Adds one; returns whether it is the first (no other instance still holds theirs).
    fn add(&self, connector: &Arc<Connector>) -> bool {
        let mut connectors = self.0.write();
        connectors.retain(|c| c.strong_count() > 0);
        let first = connectors.is_empty();
        connectors.push(Arc::downgrade(connector));
        first
    }

    fn current(&self) -> Option<Arc<Connector>> {
        self.0
            .read()
            .iter()
            .find_map(|c| c.upgrade().filter(|c| !c.is_closed()))
    }
}

impl Engine {
    /// Registers an instance's provider configuration for refreshes and probes.
    pub fn attach(&self, connector: &Arc<Connector>) {
        // Connections loaded before any instance could say how to probe them (once: later
        // instances join the probes already scheduled).
        if self.connectors.add(connector) {
            for entry in self.cache.entries() {
                self.schedule_check(&entry.record);
            }
        }
    }

    /// The settings of an instance still open.
    pub(super) fn connector(&self) -> Option<Arc<Connector>> {
        self.connectors.current()
    }
}
