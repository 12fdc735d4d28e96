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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::test]
async fn a_closed_client_starts_no_refresh_while_its_settings_are_still_held() {
    let engine = common::memory_engine().await;
    let settings = json!({ "hubspot": { "clientId": "c", "clientSecret": "s", "redirectUri": "https://app.example/cb" } });
    let catalog = Catalog::from_settings(settings.as_object().unwrap()).unwrap();
    // HubSpot's real token endpoint: unreachable here, so a request would leave its failure on
    // the connection.
    let connector = Connector::new(
        catalog,
        authpipe_core::http_client(Duration::from_secs(2)).unwrap(),
        ConnectorSettings {
            timeout: Duration::from_secs(2),
            concurrency: 4,
            health_interval_ms: None,
        },
    );
    let client = Client::new(engine.clone(), connector);
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
    assert_eq!(record.status, ConnectionStatus::Active);
    assert!(record.last_error.is_none(), "{:?}", record.last_error);
    assert!(record.last_refresh_at.is_none());
    drop(client);
}
