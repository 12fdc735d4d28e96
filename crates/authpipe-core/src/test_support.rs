//! What the engine's unit tests share: a provider on loopback whose answers a test scripts, and
//! an engine wired to it under a [`ManualClock`]. (The end-to-end tests in `__test__/` run the
//! same flows against oidc-provider; these pin the state machines down to the request.)

use crate::clock::{Clock, ManualClock};
use crate::engine::{open_shared, Engine, EngineOptions, MasterKeySource, StoreLocation};
use crate::ids::ConnectionKey;
use crate::input::{ImportFields, ImportRequest};
use crate::protocol::{Connector, ConnectorSettings};
use crate::providers::Catalog;
use crate::records::ConnectionRecord;
use crate::secrets::{AccessToken, RefreshToken};
use crate::vault::MasterKeyConfig;
use crate::{http_client, Client};
use parking_lot::Mutex;
use secrecy::SecretString;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

/// 2026-12-01T00:00:00Z: where test clocks start.
pub const T0: i64 = 1_796_083_200_000;

/// The one fixed master key the unit tests open engines with.
pub fn test_keys() -> MasterKeySource {
    MasterKeySource::Configured(vec![MasterKeyConfig {
        id: None,
        key: SecretString::from("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        retired: false,
    }])
}

/// How the fake provider answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Json {
        status: u16,
        body: serde_json::Value,
        retry_after: Option<&'static str>,
    },
    /// Reads the request, then closes the connection without answering: the request may have
    /// reached the provider (a timeout or reset after sending).
    BreakOff,
}

impl Reply {
    pub fn ok(body: serde_json::Value) -> Self {
        Self::Json {
            status: 200,
            body,
            retry_after: None,
        }
    }

    pub fn error(status: u16, error: &str) -> Self {
        Self::Json {
            status,
            body: serde_json::json!({ "error": error }),
            retry_after: None,
        }
    }

    /// A token response with a new access token, a rotated refresh token, and `expires_in`.
    pub fn tokens(n: usize, expires_in_s: u64) -> Self {
        Self::ok(serde_json::json!({
            "access_token": format!("at-{n}"),
            "refresh_token": format!("rt-{n}"),
            "token_type": "Bearer",
            "expires_in": expires_in_s,
        }))
    }
}

/// A request the fake provider received. (No `Debug`: the body holds the client secret and
/// tokens, and a failing assertion would print it.)
#[derive(Clone)]
pub struct Received {
    pub path: String,
    pub body: String,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    received: Vec<Received>,
}

/// A provider on 127.0.0.1: `/token` answers with the scripted replies in order (and a 500
/// once they run out), `/identity` with [`FakeProvider::set_identity`]. With a gate closed, a
/// request is received and counted but not answered until [`FakeProvider::open_gate`].
pub struct FakeProvider {
    pub base: String,
    script: Arc<Mutex<Script>>,
    identity: Arc<Mutex<Reply>>,
    gate: Arc<Semaphore>,
    received_one: Arc<Notify>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let provider = Self {
            base,
            script: Default::default(),
            identity: Arc::new(Mutex::new(Reply::ok(
                serde_json::json!({ "active": true, "id": "acct-1", "scope": "read" }),
            ))),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            received_one: Default::default(),
        };
        let (script, identity, gate, received_one) = (
            provider.script.clone(),
            provider.identity.clone(),
            provider.gate.clone(),
            provider.received_one.clone(),
        );
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (script, identity, gate, received_one) = (
                    script.clone(),
                    identity.clone(),
                    gate.clone(),
                    received_one.clone(),
                );
                tokio::spawn(async move {
                    serve(socket, &script, &identity, &gate, &received_one).await;
                });
            }
        });
        provider
    }

    /// Queues the answers of the next token requests.
    pub fn reply(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().replies.extend(replies);
    }

    pub fn set_identity(&self, reply: Reply) {
        *self.identity.lock() = reply;
    }

    /// Token requests received so far.
    pub fn token_requests(&self) -> Vec<Received> {
        self.script
            .lock()
            .received
            .iter()
            .filter(|r| r.path == "/token")
            .cloned()
            .collect()
    }

    /// Holds every answer until [`FakeProvider::open_gate`].
    pub fn close_gate(&self) {
        self.gate.forget_permits(Semaphore::MAX_PERMITS);
    }

    pub fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS);
    }

    /// Waits until the provider has received `n` requests in all.
    pub async fn received(&self, n: usize) {
        loop {
            let next = self.received_one.notified();
            if self.script.lock().received.len() >= n {
                return;
            }
            tokio::time::timeout(Duration::from_secs(10), next)
                .await
                .expect("the provider received no request");
        }
    }

    /// The settings of a custom provider `fake` served by this one.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "fake": {
            "clientId": "client-1",
            "clientSecret": "client-secret-1",
            "redirectUri": "https://app.example/callback",
            "authorizeUrl": format!("{}/authorize", self.base),
            "tokenUrl": format!("{}/token", self.base),
            "requiredScopes": ["read"],
            "identity": {
                "url": format!("{}/identity", self.base),
                "activeField": "/active",
                "accountId": "/id",
                "scopes": "/scope"
            }
        }})
    }
}

/// Answers the requests of one connection (each answer closes it, so the client never reuses a
/// connection and never retries a request on its own).
async fn serve(
    mut socket: TcpStream,
    script: &Mutex<Script>,
    identity: &Mutex<Reply>,
    gate: &Semaphore,
    received_one: &Notify,
) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let reply = {
        let mut script = script.lock();
        script.received.push(request.clone());
        match request.path.as_str() {
            // A request no test expected: a 500 the engine backs off on, and a count the
            // test's assertions on `token_requests` see.
            "/token" => script
                .replies
                .pop_front()
                .unwrap_or_else(|| Reply::error(500, "unscripted_request")),
            "/identity" => identity.lock().clone(),
            _ => Reply::error(404, "not_found"),
        }
    };
    received_one.notify_waiters();
    drop(gate.acquire().await);
    match reply {
        Reply::BreakOff => drop(socket),
        Reply::Json {
            status,
            body,
            retry_after,
        } => {
            let body = body.to_string();
            let retry_after = retry_after
                .map(|v| format!("retry-after: {v}\r\n"))
                .unwrap_or_default();
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{retry_after}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Received> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    Some(Received {
        path,
        body: String::from_utf8_lossy(&buffer[head_end..]).to_string(),
    })
}

/// An engine on a private in-memory store whose clock stands at [`T0`] until moved, and an
/// instance that talks to `provider`.
pub struct Fixture {
    pub engine: Arc<Engine>,
    pub client: Client,
    pub clock: Arc<ManualClock>,
    pub provider: FakeProvider,
}

impl Fixture {
    pub async fn start() -> Self {
        Self::with_probes(None).await
    }

    /// With scheduled probes every `interval_ms` (`None`: off).
    pub async fn with_probes(interval_ms: Option<i64>) -> Self {
        let provider = FakeProvider::start().await;
        let clock = Arc::new(ManualClock::new(T0));
        let engine = open_shared(EngineOptions {
            store: StoreLocation::Memory,
            keys: test_keys(),
            clock: Some(clock.clone()),
            key_rotation: Default::default(),
        })
        .await
        .unwrap()
        .engine;
        let client = Self::attach(&engine, &provider.settings(), interval_ms);
        Self {
            engine,
            client,
            clock,
            provider,
        }
    }

    /// An instance on `engine` for the providers in `settings`, with scheduled probes every
    /// `interval_ms` (`None`: off).
    pub fn attach(
        engine: &Arc<Engine>,
        settings: &serde_json::Value,
        interval_ms: Option<i64>,
    ) -> Client {
        let calls = ConnectorSettings {
            timeout: Duration::from_secs(5),
            concurrency: 4,
            health_interval_ms: interval_ms,
        };
        let catalog = Catalog::from_settings(settings.as_object().unwrap()).unwrap();
        let connector = Connector::new(catalog, http_client(calls.timeout).unwrap(), calls);
        Client::new(engine.clone(), connector)
    }

    pub fn key(&self) -> ConnectionKey {
        ConnectionKey::parse("fake", "tenant-1", "user-1").unwrap()
    }

    /// Stores a connection whose access token (`at-0`) expires in `expires_in_ms`.
    pub async fn connect(&self, expires_in_ms: i64) -> ConnectionRecord {
        self.store_tokens("at-0", "rt-0", expires_in_ms).await
    }

    /// Stores (or replaces) the connection with these tokens, as an import or another process
    /// would.
    pub async fn store_tokens(
        &self,
        access_token: &str,
        refresh_token: &str,
        expires_in_ms: i64,
    ) -> ConnectionRecord {
        let fields = ImportFields {
            access_token: Some(AccessToken::new(access_token)),
            refresh_token: Some(RefreshToken::new(refresh_token)),
            expires_at_ms: Some((self.clock.now_ms() + expires_in_ms) as f64),
            scopes: vec!["read".into()],
            ..Default::default()
        };
        let request = ImportRequest::new(self.key(), fields).unwrap();
        self.engine.import(vec![request]).await.unwrap().remove(0)
    }

    /// The stored row, read past the cache.
    pub async fn stored(&self) -> ConnectionRecord {
        self.engine
            .stored_connection(&self.key())
            .await
            .unwrap()
            .unwrap()
    }

    /// The access token the engine serves now.
    pub async fn served(&self) -> crate::Result<String> {
        use secrecy::ExposeSecret;
        let credential = self.engine.credential(&self.key()).await?;
        Ok(credential.secret.expose_secret().to_owned())
    }
}
