//! What a browser or a caller hands back that we issued: connect-session tokens (one of ours,
//! by index, or any string, for any provider), list cursors, and the ids they name.
#![no_main]

#[path = "../common/instance.rs"]
mod instance;

use arbitrary::Arbitrary;
use authpipe_core::{Client, ConnectionKey, ListFilter, ProviderId, TenantId, UserId};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use std::sync::LazyLock;

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

/// Session tokens issued for `user-<n>`, allowed to connect `attio` only.
fn issue(runtime: &tokio::runtime::Runtime, client: &Client, n: usize) -> String {
    let grant = runtime
        .block_on(client.create_session(
            TenantId::parse("tenant-1").unwrap(),
            UserId::parse(format!("user-{n}")).unwrap(),
            vec![ProviderId::parse("attio").unwrap()],
            None,
        ))
        .expect("a session");
    grant.token.expose_secret().to_owned()
}

static SESSIONS: LazyLock<instance::Issued<String>> =
    LazyLock::new(|| instance::Issued::new(16, issue));

fuzz_target!(|input: Input| {
    let sessions = &*SESSIONS;
    let (token, issued) = match &input.session {
        Token::Issued(i) => {
            let (slot, token) = sessions.get(usize::from(*i));
            (token, Some(slot))
        }
        Token::Raw(raw) => (raw.clone(), None),
    };
    if let Ok(provider) = ProviderId::parse(input.provider.as_str()) {
        let result = sessions
            .runtime
            .block_on(sessions.client.session_key(&token, &provider));
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
                sessions.reissue(i);
            }
            Err(_) => {}
        }
    }

    let filter = ListFilter {
        cursor: Some(&input.cursor),
        limit: input.limit,
        ..Default::default()
    };
    if let Ok(query) = sessions.client.list_query(&filter) {
        let _ = sessions
            .runtime
            .block_on(sessions.client.engine().list(query));
    }

    let (p, t, u) = &input.ids;
    if let Ok(key) = ConnectionKey::parse(p, t, u) {
        let cursor = authpipe_core::encode_cursor(&key);
        let filter = ListFilter {
            cursor: Some(&cursor),
            ..Default::default()
        };
        assert!(
            sessions.client.list_query(&filter).is_ok(),
            "a cursor we encoded was refused"
        );
    }
});
