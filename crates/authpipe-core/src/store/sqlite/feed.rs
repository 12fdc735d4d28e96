//! The change feed, by polling: triggers append every connection write and every deleted tenant
//! key to `connection_changes`, and the feed reads what is new whenever `PRAGMA data_version`
//! says another connection committed.

use super::run_on;
use crate::error::Result;
use crate::ids::{ConnectionKey, TenantId};
use crate::store::{Change, ChangeFeed};
use parking_lot::Mutex;
use rusqlite::Connection;
use std::sync::Arc;
use std::time::Duration;

/// `connection_changes.kind` of a deleted tenant key.
const TENANT_DELETED: &str = "tenant_deleted";

/// Rows `connection_changes` keeps (the pruning trigger's literal); a process that falls
/// further behind reloads everything.
#[cfg(test)]
pub(super) const CHANGE_LOG_ROWS: i64 = 10_000;

/// How often other processes' changes are looked for: the bound on how stale this process's
/// cache is after another process's write (one `PRAGMA data_version` when nothing changed).
const CHANGE_POLL: Duration = Duration::from_millis(20);

/// Where a change-feed reader is: the last change seen, and the last `data_version` read.
pub(super) struct FeedPosition {
    pub(super) seq: i64,
    pub(super) data_version: Option<i64>,
}

impl FeedPosition {
    /// The end of the log as `conn` sees it now.
    pub(super) fn now(conn: &Connection) -> Result<Self> {
        let seq = conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM connection_changes",
            [],
            |r| r.get(0),
        )?;
        let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(Self {
            seq,
            data_version: Some(data_version),
        })
    }
}

/// Reads the changes other connections committed since `position`.
pub(super) fn poll_changes(conn: &Connection, position: &mut FeedPosition) -> Result<Vec<Change>> {
    let data_version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if position.data_version == Some(data_version) {
        return Ok(Vec::new());
    }
    position.data_version = Some(data_version);
    let mut statement = conn.prepare_cached(
        "SELECT seq, tenant_id, provider, user_id, version, kind FROM connection_changes WHERE seq > ?1 ORDER BY seq",
    )?;
    let rows = statement.query_map([position.seq], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut changes = Vec::new();
    for row in rows {
        let (seq, tenant, provider, user, version, kind) = row?;
        // Sequence numbers have no gaps (AUTOINCREMENT, one writer at a time): a gap means the
        // rows in between were pruned before we read them.
        if changes.is_empty() && seq != position.seq + 1 {
            changes.push(Change::Resync);
        }
        position.seq = seq;
        if kind == TENANT_DELETED {
            if let Ok(tenant) = TenantId::parse(tenant) {
                changes.push(Change::TenantDeleted(tenant));
            }
        } else if let Ok(key) = ConnectionKey::parse(&provider, &tenant, &user) {
            changes.push(Change::Connection { key, version });
        }
    }
    Ok(changes)
}

/// Reports the changes committed to `conn`'s file from now on, until the receiver is dropped.
pub(super) async fn watch(conn: &Arc<Mutex<Connection>>) -> Result<ChangeFeed> {
    let mut position = run_on(conn, |conn| FeedPosition::now(conn)).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = conn.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHANGE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {}
            }
            // The usual answer, nothing new, is one PRAGMA that reads shared memory: asked
            // here when the connection is free, not handed to the blocking pool.
            let unchanged = conn.try_lock().is_some_and(|c| {
                c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                    .is_ok_and(|v| position.data_version == Some(v))
            });
            if unchanged {
                continue;
            }
            let conn = conn.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let changes = poll_changes(&conn.lock(), &mut position);
                (changes, position)
            })
            .await;
            let Ok((changes, moved)) = polled else { return };
            position = moved;
            // A failed poll (the file busy past the timeout) is tried again next tick.
            for change in changes.unwrap_or_default() {
                if tx.send(change).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}
