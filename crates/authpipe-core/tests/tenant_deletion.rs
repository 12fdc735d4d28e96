//! `deleteTenant` ends the tenant everywhere: its connect sessions and flows go with its key,
//! and no process, not even one that has not heard of the deletion yet, writes what the others
//! cannot read once the tenant is created again.

mod common;
mod processes;

use authpipe_core::store::{FlowTake, SecretKey};
use authpipe_core::Client;
use authpipe_core::ErrorCode;
use authpipe_core::{open_unshared, Engine, RefreshReason};
use authpipe_core::{Callback, StartRequest};
use authpipe_core::{ConnectionKey, ProviderId, SecretName, UserId};
use processes::{all_open, conn, eventually, import, key, tenant, token, Backend, HeldFeed, K1};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client(engine: Arc<Engine>, settings: serde_json::Value) -> Client {
    common::client(
        engine,
        settings.as_object().unwrap(),
        Duration::from_secs(5),
    )
}

/// Settings of a custom provider `crm` whose endpoints are at `origin`.
fn crm_at(origin: &str) -> serde_json::Value {
    json!({ "crm": {
        "authorizeUrl": format!("{origin}/authorize"), "tokenUrl": format!("{origin}/token"),
        "clientId": "c", "clientSecret": "s", "redirectUri": "https://app.example/cb" } })
}

fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_tenant_keeps_no_connect_session_and_no_flow() {
    for backend in Backend::all().await {
        let engine = backend.engine(&[key("k1", K1)]).await.unwrap();
        let attio = json!({ "attio": { "clientId": "c", "clientSecret": "s", "redirectUri": "https://app.example/cb" } });
        let client = client(engine.clone(), attio);
        let provider = ProviderId::parse("attio").unwrap();
        let user = UserId::parse("u").unwrap();
        let mut sessions = Vec::new();
        let mut states = Vec::new();
        for t in ["doomed", "kept"] {
            let grant = client
                .create_session(tenant(t), user.clone(), vec![], None)
                .await
                .unwrap();
            sessions.push(grant.token.expose_secret().to_owned());
            let started = client
                .start_connect(StartRequest {
                    key: conn(t, "u"),
                    scopes: None,
                    redirect_uri: None,
                    browser_binding: None,
                })
                .await
                .unwrap();
            states.push(sha256_hex(started.state.expose_secret()));
        }

        let deletion = engine.delete_tenant(&tenant("doomed")).await.unwrap();
        assert_eq!(
            (deletion.sessions, deletion.flows),
            (1, 1),
            "{}",
            backend.name()
        );

        let err = client
            .session_key(&sessions[0], &provider)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::SessionInvalid, "{}", backend.name());
        assert_eq!(
            engine.take_flow(&states[0], None).await.unwrap(),
            FlowTake::Unknown,
            "{}: the flow is gone",
            backend.name()
        );
        // Another tenant's session and flow are untouched.
        client.session_key(&sessions[1], &provider).await.unwrap();
        assert!(matches!(
            engine.take_flow(&states[1], None).await.unwrap(),
            FlowTake::Fresh(_)
        ));
        backend.clean_up().await;
    }
}

/// A and B both hold tenant T's data key. A deletes T and creates it again (a new key); B, whose
/// change feed is held back, goes on with the old key: it imports, stores a secret and reads.
/// Every row of T must open in A, in B and in a process started afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_missed_the_deletion_writes_nothing_the_others_cannot_read() {
    let keys = [key("k1", K1)];
    for backend in Backend::all().await {
        let name = backend.name();
        let a = backend.engine(&keys).await.unwrap();
        let b_store = HeldFeed::new(backend.store().await);
        let b = open_unshared(b_store.clone(), &keys, None).await.unwrap();
        import(&a, &conn("t", "u1"), "old-1").await.unwrap();
        import(&b, &conn("t", "u2"), "old-2").await.unwrap();
        assert_eq!(token(&b, &conn("t", "u1")).await.unwrap(), "old-1");
        assert_eq!(token(&a, &conn("t", "u2")).await.unwrap(), "old-2");

        // B hears nothing from here on.
        b_store.hold();
        a.delete_tenant(&tenant("t")).await.unwrap();
        import(&a, &conn("t", "u1"), "new-1").await.unwrap();
        import(&b, &conn("t", "u3"), "new-3").await.unwrap();
        // B now reads what A wrote under T's new key (its cached copy of u1 was sealed with
        // the old one).
        assert_eq!(
            token(&b, &conn("t", "u1")).await.unwrap(),
            "new-1",
            "{name}"
        );

        // Once more, with a secret.
        a.delete_tenant(&tenant("t")).await.unwrap();
        import(&a, &conn("t", "u1"), "newer-1").await.unwrap();
        let secret = SecretKey {
            tenant: tenant("t"),
            provider: None,
            name: SecretName::parse("webhook").unwrap(),
        };
        b.set_secret(&secret, &SecretString::from("whsec"))
            .await
            .unwrap();
        assert_eq!(a.secret(&secret).await.unwrap().expose_secret(), "whsec");
        let gone = token(&a, &conn("t", "u3")).await.unwrap_err();
        assert_eq!(gone.code, ErrorCode::ConnectionNotFound);

        // B hears it all now, and follows.
        b_store.release();
        eventually("B drops the deleted u3", || async {
            b.stats().cached_connections == 1
        })
        .await;
        let fresh = backend.engine(&keys).await.unwrap();
        for engine in [&a, &b, &fresh] {
            assert_eq!(all_open(engine, "t").await.unwrap(), 1, "{name}");
            assert_eq!(token(engine, &conn("t", "u1")).await.unwrap(), "newer-1");
            assert_eq!(
                engine.secret(&secret).await.unwrap().expose_secret(),
                "whsec"
            );
        }
        drop((a, b, fresh));
        backend.clean_up().await;
    }
}

/// The other processes hear of the deletion through the change feed: they drop the tenant's
/// connections and its key, and read the tenant created again under its new key.
#[tokio::test(flavor = "multi_thread")]
async fn other_processes_hear_of_the_deletion() {
    let keys = [key("k1", K1)];
    for backend in Backend::all().await {
        let a = backend.engine(&keys).await.unwrap();
        let b = backend.engine(&keys).await.unwrap();
        import(&a, &conn("t", "u1"), "old").await.unwrap();
        assert_eq!(token(&b, &conn("t", "u1")).await.unwrap(), "old");
        import(&a, &conn("kept", "u1"), "kept").await.unwrap();
        eventually("B caches both", || async {
            b.stats().cached_connections == 2
        })
        .await;
        a.delete_tenant(&tenant("t")).await.unwrap();
        eventually("B drops T", || async { b.stats().cached_connections == 1 }).await;
        import(&a, &conn("t", "u1"), "new").await.unwrap();
        eventually("B caches T's new connection", || async {
            b.stats().cached_connections == 2
        })
        .await;
        assert_eq!(token(&b, &conn("t", "u1")).await.unwrap(), "new");
        import(&b, &conn("t", "u2"), "new-2").await.unwrap();
        assert_eq!(token(&a, &conn("t", "u2")).await.unwrap(), "new-2");
        drop((a, b));
        backend.clean_up().await;
    }
}

/// A token endpoint on loopback that tells when a request arrived and answers it only when the
/// test adds a permit: `(origin, arrivals, answers)`.
async fn gated_token_server() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    Arc<tokio::sync::Semaphore>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let answers = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = answers.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (arrived, gate) = (arrived.clone(), gate.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n @ 1..) = socket.read(&mut buf).await else {
                        return;
                    };
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = arrived.send(());
                let Ok(permit) = gate.acquire().await else {
                    return;
                };
                permit.forget();
                let body = r#"{"access_token":"refreshed","token_type":"Bearer","expires_in":3600,"refresh_token":"rotated"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (origin, arrivals, answers)
}

/// B refreshes a connection of T, and while the provider answers, A deletes T and imports the
/// connection again under T's new key. B's refreshed tokens belong to the deleted connection and
/// were sealed with the destroyed key: the store refuses them, and A's import stands.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_across_the_deletion_stores_nothing_unreadable() {
    let keys = [key("k1", K1)];
    for backend in Backend::all().await {
        let name = backend.name();
        let (origin, mut arrivals, answers) = gated_token_server().await;
        let crm = crm_at(&origin);
        let a = backend.engine(&keys).await.unwrap();
        let b_store = HeldFeed::new(backend.store().await);
        let b = open_unshared(b_store.clone(), &keys, None).await.unwrap();
        let _b_client = client(b.clone(), crm);
        let key = ConnectionKey::parse("crm", "t", "u1").unwrap();
        import(&a, &key, "old").await.unwrap();

        b_store.hold();
        let refresh = tokio::spawn({
            let (b, key) = (b.clone(), key.clone());
            async move { b.refresh(&key, RefreshReason::Forced).await }
        });
        arrivals.recv().await.unwrap();
        a.delete_tenant(&tenant("t")).await.unwrap();
        import(&a, &key, "new").await.unwrap();
        answers.add_permits(1);
        let refreshed = refresh.await.unwrap();
        assert_eq!(
            refreshed.unwrap_err().code,
            ErrorCode::VaultKeyMissing,
            "{name}"
        );

        b_store.release();
        let fresh = backend.engine(&keys).await.unwrap();
        for engine in [&a, &b, &fresh] {
            assert_eq!(all_open(engine, "t").await.unwrap(), 1, "{name}");
            assert_eq!(token(engine, &key).await.unwrap(), "new", "{name}");
        }
        drop((a, b, fresh));
        backend.clean_up().await;
    }
}

/// A callback whose code is being exchanged while `deleteTenant()` runs stores nothing: the
/// tenant stays deleted (its flow made its key when it started, and the connection goes only
/// into a tenant that still has it).
#[tokio::test(flavor = "multi_thread")]
async fn a_callback_under_way_does_not_bring_a_deleted_tenant_back() {
    let keys = [key("k1", K1)];
    for backend in Backend::all().await {
        let name = backend.name();
        let (origin, mut arrivals, answers) = gated_token_server().await;
        let crm = crm_at(&origin);
        let engine = backend.engine(&keys).await.unwrap();
        let client = client(engine.clone(), crm);
        let key = ConnectionKey::parse("crm", "t", "u1").unwrap();
        let started = client
            .start_connect(StartRequest {
                key: key.clone(),
                scopes: None,
                redirect_uri: None,
                browser_binding: None,
            })
            .await
            .unwrap();
        let callback = Callback {
            params: [
                ("state".to_owned(), started.state.expose_secret().to_owned()),
                ("code".to_owned(), "the-code".to_owned()),
            ]
            .into(),
            provider: None,
            browser_binding: None,
        };
        let handled = tokio::spawn(async move { client.handle_callback(callback).await });
        arrivals.recv().await.unwrap();
        engine.delete_tenant(&tenant("t")).await.unwrap();
        answers.add_permits(1);
        let err = handled.await.unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState, "{name}: {}", err.message);
        assert_eq!(all_open(&engine, "t").await.unwrap(), 0, "{name}");
        assert!(
            engine.stored_connection(&key).await.unwrap().is_none(),
            "{name}"
        );
        drop(engine);
        backend.clean_up().await;
    }
}
