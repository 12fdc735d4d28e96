//! The change feed, by LISTEN/NOTIFY: triggers notify every connection write and every deleted
//! tenant key on the schema's channel. A listener that loses its database connection reconnects
//! with backoff and reports [`Change::Resync`], since notifications sent meanwhile are lost.

use super::pg;
use super::tls::TlsConnector;
use crate::error::Result;
use crate::ids::{ConnectionKey, TenantId};
use crate::store::{Change, ChangeFeed};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_postgres::AsyncMessage;

/// Reconnecting a lost listener: the first retry after this, doubling up to `LISTEN_RETRY_MAX`.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(50);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(2);

/// A connection subscribed to the change channel.
struct Listener {
    /// Kept alive: dropping the client ends the connection.
    _client: tokio_postgres::Client,
    notes: tokio::sync::mpsc::UnboundedReceiver<String>,
    driver: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn connect(
        config: &tokio_postgres::Config,
        connector: &TlsConnector,
        channel: &str,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(connector.clone()).await?;
        let (notes_tx, notes) = tokio::sync::mpsc::unbounded_channel();
        // The connection only makes progress while polled, LISTEN included.
        let driver = tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(note) = message {
                    if notes_tx.send(note.payload().to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
            driver.abort();
            return Err(e);
        }
        Ok(Self {
            _client: client,
            notes,
            driver,
        })
    }

    /// Forwards changes until the connection is lost or nobody is listening any more.
    async fn forward(mut self, tx: &UnboundedSender<Change>) {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                note = self.notes.recv() => match note {
                    Some(payload) => {
                        if let Some(change) = parse_notification(&payload) {
                            let _ = tx.send(change);
                        }
                    }
                    None => break,
                }
            }
        }
        self.driver.abort();
    }
}

/// What the triggers send: `[tenant, provider, user, version]` for a connection,
/// `{"tenant_deleted": tenant}` for a deleted tenant key.
fn parse_notification(payload: &str) -> Option<Change> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Note {
        Connection(String, String, String, Option<i64>),
        TenantDeleted { tenant_deleted: String },
    }
    Some(match serde_json::from_str(payload).ok()? {
        Note::Connection(tenant, provider, user, version) => Change::Connection {
            key: ConnectionKey::parse(&provider, &tenant, &user).ok()?,
            version,
        },
        Note::TenantDeleted { tenant_deleted } => {
            Change::TenantDeleted(TenantId::parse(tenant_deleted).ok()?)
        }
    })
}

/// Reports the changes notified on `channel` from now on, until the receiver is dropped.
pub(super) async fn watch(
    config: tokio_postgres::Config,
    connector: TlsConnector,
    channel: String,
) -> Result<ChangeFeed> {
    // Subscribed before we return: the engine loads connections after this, so no change
    // can fall between its load and the feed.
    let first = Listener::connect(&config, &connector, &channel)
        .await
        .map_err(pg("listen for connection changes"))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut listener = first;
        loop {
            listener.forward(&tx).await;
            // Lost (a restart, a network failure): reconnect, then have everything reloaded,
            // since whatever was notified meanwhile is gone.
            let mut retry = LISTEN_RETRY_MIN;
            listener = loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                match Listener::connect(&config, &connector, &channel).await {
                    Ok(listener) => break listener,
                    Err(_) => retry = (retry * 2).min(LISTEN_RETRY_MAX),
                }
            };
            if tx.send(Change::Resync).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
