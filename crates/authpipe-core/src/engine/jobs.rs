//! What the engine's timers do when they fire: each scheduled job runs on its own task.

use super::{Engine, RefreshReason};
use crate::scheduler::{Job, Runner};
use std::sync::Arc;

impl Runner for Engine {
    fn run(self: Arc<Self>, job: Job) {
        // A job in flight keeps the engine alive until it ends.
        let engine = self;
        tokio::spawn(async move {
            match job {
                Job::Refresh(cache_key) => {
                    if let Some(entry) = engine.cache.get_by_cache_key(&cache_key) {
                        if !engine.refreshes.backing_off(&cache_key, engine.now_ms()) {
                            let _ = engine
                                .refresh(&entry.record.key, RefreshReason::Scheduled)
                                .await;
                        }
                    }
                }
                Job::Check(cache_key) => {
                    if let Some(entry) = engine.cache.get_by_cache_key(&cache_key) {
                        // Several changes can each schedule a probe for the same time: the first
                        // runs (and schedules the next), the rest find it recently checked.
                        let interval = engine
                            .connector()
                            .and_then(|c| c.health_interval_ms)
                            .unwrap_or(i64::MAX);
                        let checked_recently = entry
                            .record
                            .last_check_at
                            .is_some_and(|last| engine.now_ms() - last < interval / 2);
                        if !checked_recently {
                            let _ = engine.scheduled_check(&entry.record.key, interval).await;
                        }
                    }
                }
                Job::PruneEnded => engine.prune_ended().await,
                Job::TenantKeys => engine.maintain_tenant_keys().await,
                Job::Invalidate { .. } => {}
            }
        });
    }
}
