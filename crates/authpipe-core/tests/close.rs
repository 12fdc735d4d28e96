//! A closed instance starts no refresh, even while something still holds its provider settings
//! (a probe under way, say). By then `close()` may have stopped waiting for refreshes, and a
//! token request sent while the process exits spends a refresh token whose successor is never
//! stored: the grant is lost at a provider that rotates them.

mod common;

use authpipe_core::records::ConnectionStatus;
use authpipe_core::Catalog;
use authpipe_core::ConnectionKey;
use authpipe_core::RefreshReason;
use authpipe_core::{AccessToken, ImportFields, ImportRequest, RefreshToken};
use authpipe_core::{Client, Connector, ConnectorSettings};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// A token endpoint on loopback that counts the connections made to it (and answers none: a
/// request fails at once instead of waiting for a timeout).
async fn counting_token_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (url, accepted)
}

fn connector(token_url: &str) -> Connector {
    let settings = json!({ "hubspot": {
        "clientId": "c", "clientSecret": "s", "redirectUri": "https://app.example/cb",
        "tokenUrl": token_url } });
    let catalog = Catalog::from_settings(settings.as_object().unwrap()).unwrap();
    Connector::new(
        catalog,
        authpipe_core::http_client(Duration::from_secs(2)).unwrap(),
        ConnectorSettings {
            timeout: Duration::from_secs(2),
            concurrency: 4,
            health_interval_ms: None,
        },
    )
}

#[tokio::test]
async fn a_closed_client_starts_no_refresh_while_its_settings_are_still_held() {
    let engine = common::memory_engine().await;
    let (token_url, requests) = counting_token_endpoint().await;
    let client = Client::new(engine.clone(), connector(&token_url));
    let key = ConnectionKey::parse("hubspot", "t", "u").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let import = ImportRequest::new(
        key.clone(),
        ImportFields {
            access_token: Some(AccessToken::new("access")),
            refresh_token: Some(RefreshToken::new("refresh")),
            expires_at_ms: Some(now + 3_600_000.0),
            ..Default::default()
        },
    )
    .unwrap();
    engine.import(vec![import]).await.unwrap();

    client.close(); // `client` itself stays alive, as a probe under way would keep it
    let record = engine.refresh(&key, RefreshReason::Forced).await.unwrap();
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "no token request was sent"
    );
    assert_eq!(record.status, ConnectionStatus::Active);
    assert!(record.last_error.is_none(), "{:?}", record.last_error);
    assert!(record.last_refresh_at.is_none());
    drop(client);

    // The endpoint does count: an open client's forced refresh reaches it.
    let open = Client::new(engine.clone(), connector(&token_url));
    let _ = engine.refresh(&key, RefreshReason::Forced).await;
    assert!(
        requests.load(Ordering::SeqCst) > 0,
        "an open client's refresh reaches the endpoint"
    );
    drop(open);
}
