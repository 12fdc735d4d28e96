//! What a browser or a caller hands back that we issued: connect-session tokens (one of ours,
//! by index, or any string, for any provider), list cursors, and the ids they name.
#![no_main]

#[path = "../common/instance.rs"]
mod instance;

use arbitrary::Arbitrary;
use authpipe_core::{Client, ConnectionKey, ListFilter, ProviderId, TenantId, UserId};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use std::sync::{LazyLock, Mutex};

#[derive(Arbitrary, Debug)]
enum Token {
    Issued(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    session: Token,
    provider: String,
    cursor: String,
    limit: Option<i64>,
    ids: (String, String, String),
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// Session tokens issued for `user-<n>`, allowed to connect `attio` only.
    sessions: Mutex<Vec<String>>,
}

const SESSIONS: usize = 16;

impl Fixture {
    fn issue(&self, n: usize) -> String {
        let grant = self
            .runtime
            .block_on(self.client.create_session(
                TenantId::parse("tenant-1").unwrap(),
                UserId::parse(format!("user-{n}")).unwrap(),
                vec![ProviderId::parse("attio").unwrap()],
                None,
            ))
            .expect("a session");
        grant.token.expose_secret().to_owned()
    }
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = instance::runtime();
    let client = runtime.block_on(instance::client());
    let fixture = Fixture {
        runtime,
        client,
        sessions: Mutex::new(Vec::new()),
    };
    let sessions = (0..SESSIONS).map(|n| fixture.issue(n)).collect();
    *fixture.sessions.lock().unwrap() = sessions;
    fixture
});

fuzz_target!(|input: Input| {
    let fixture = &*FIXTURE;
    let (token, issued) = match &input.session {
        Token::Issued(i) => {
            let i = usize::from(*i) % SESSIONS;
            (fixture.sessions.lock().unwrap()[i].clone(), Some(i))
        }
        Token::Raw(raw) => (raw.clone(), None),
    };
    if let Ok(provider) = ProviderId::parse(input.provider.as_str()) {
        let result = fixture
            .runtime
            .block_on(fixture.client.session_key(&token, &provider));
        match result {
            Ok(key) => {
                let i = issued.expect("only an issued token names a connection");
                assert_eq!(
                    key.provider.as_str(),
                    "attio",
                    "a session opened another provider"
                );
                assert_eq!(key.user.as_str(), format!("user-{i}"));
                // Used up: issue another for later inputs.
                let fresh = fixture.issue(i);
                fixture.sessions.lock().unwrap()[i] = fresh;
            }
            Err(_) => {}
        }
    }

    let filter = ListFilter {
        cursor: Some(&input.cursor),
        limit: input.limit,
        ..Default::default()
    };
    if let Ok(query) = fixture.client.list_query(&filter) {
        let _ = fixture
            .runtime
            .block_on(fixture.client.engine().list(query));
    }

    let (p, t, u) = &input.ids;
    if let Ok(key) = ConnectionKey::parse(p, t, u) {
        let cursor = authpipe_core::encode_cursor(&key);
        let filter = ListFilter {
            cursor: Some(&cursor),
            ..Default::default()
        };
        assert!(
            fixture.client.list_query(&filter).is_ok(),
            "a cursor we encoded was refused"
        );
    }
});
