//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, which no shipped build
//! enables). Each one hands outside input to a parser the way production does, and panics only
//! where an invariant breaks: libFuzzer reports the panic as a crash.
//!
//! What runs through the public API (callbacks, session and state tokens, list cursors, store
//! rows) is fuzzed from `fuzz/` directly; what is private to the crate (the provider's answers,
//! definitions, sealed records) is reached from here.

use crate::ids::TenantId;
use crate::protocol::http::Answer;
use crate::protocol::scrub::{Sent, REDACTED};
use crate::protocol::token::TokenSet;
use crate::protocol::{exchange, identity, refresh};
use crate::providers::definition::{placeholders, ValueSource};
use crate::providers::discovery;
use crate::providers::{builtin_definitions, Catalog, ProviderDefinition};
use crate::records::{Sealed, TenantKeyRecord};
use crate::vault::{Keyring, MasterKey, RecordPlace, Vault, WriteId};
use secrecy::SecretString;
use std::sync::LazyLock;

/// Marks a value the request "sent", so that the invariant below cannot mistake our own message
/// text for an echo: no fixed message of the crate contains it.
const SENT_MARK: &str = "SENT";

/// A stretch this long of a sent value found in a message is a leak (the scrubber cuts any
/// stretch of 8 characters of a sent value, see `protocol/scrub.rs`).
const LEAK_STRETCH: usize = 8;

/// Turns fuzzer-chosen strings into values a request sent: marked, printable ASCII, as tokens are.
pub fn sent_values(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|v| {
            let tail: String = v.chars().filter(char::is_ascii_graphic).collect();
            format!("{SENT_MARK}{tail}")
        })
        .collect()
}

fn answer(status: u16, body: &[u8], retry_after: Option<&str>, sent: &[String]) -> Answer {
    let mut recorded = Sent::default();
    for value in sent {
        recorded.add(value);
    }
    Answer {
        status,
        body: body.to_vec(),
        retry_after: retry_after.map(str::to_owned),
        sent: recorded,
    }
}

/// Panics if `message` carries a stretch of a sent value: provider text that echoed what we sent
/// must have been cut before it reached a message.
fn assert_no_echo(message: &str, sent: &[String]) {
    // What the scrubber put in is no echo, even where a sent value happens to contain its text.
    let message = message.replace(REDACTED, "\u{0}");
    for value in sent {
        let stretch = value
            .char_indices()
            .nth(LEAK_STRETCH)
            .map_or(value.as_str(), |(end, _)| &value[..end]);
        if stretch.chars().count() >= LEAK_STRETCH {
            assert!(
                !message.contains(stretch),
                "a sent value reached a message: {message:?} contains {stretch:?}"
            );
        }
    }
}

/// A token endpoint's answer (to a code exchange and to a refresh grant), read for every built-in
/// provider. Error messages never carry what the request sent.
pub fn token_answer(
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
    sent: &[String],
    now_ms: i64,
) {
    let answer = answer(status, body, retry_after, sent);
    for definition in builtin_definitions() {
        let purpose = "fuzz token endpoint";
        match exchange::read_answer(&definition, purpose, &answer) {
            Ok(tokens) => plaintext_of_tokens(&tokens, sent, now_ms),
            Err(e) => assert_no_echo(&e.message, sent),
        }
        match refresh::classify(&definition, purpose, &answer, now_ms) {
            Ok(tokens) => plaintext_of_tokens(&tokens, sent, now_ms),
            Err(failure) => {
                assert_no_echo(failure.message(), sent);
                assert_no_echo(failure.code(), sent);
            }
        }
    }
}

/// What of a token answer is kept in plaintext (the granted scopes, stored and shown as they
/// are) echoes nothing the request sent; the tokens themselves are sealed.
fn plaintext_of_tokens(tokens: &TokenSet, sent: &[String], now_ms: i64) {
    let _ = tokens.expires_at(now_ms);
    for scope in tokens.scopes.iter().flatten() {
        assert_no_echo(scope, sent);
    }
}

/// An identity probe's answer (bearer and introspection styles), read with each built-in
/// provider's JSON pointers.
pub fn identity_answer(status: u16, body: &[u8], sent: &[String]) {
    let answer = answer(status, body, None, sent);
    for definition in builtin_definitions() {
        let Some(probe) = &definition.identity else {
            continue;
        };
        match identity::read_answer(probe, "fuzz identity endpoint", &answer) {
            // The account and the scopes are stored in plaintext and shown on the handler's page.
            Ok(found) => {
                let account = [&found.account.id, &found.account.name];
                for text in account.into_iter().flatten() {
                    assert_no_echo(text, sent);
                }
                for scope in found.scopes.iter().flatten() {
                    assert_no_echo(scope, sent);
                }
            }
            Err(e) => assert_no_echo(&e.message, sent),
        }
    }
}

/// An issuer's metadata document; what is accepted merges into provider settings that the
/// catalog then accepts or refuses with an error (never a panic).
pub fn discovery_document(issuer: &str, body: &[u8]) {
    let url = format!("{issuer}/.well-known/openid-configuration");
    if let Ok(metadata) = discovery::read_document("providers.fuzz.issuer", issuer, &url, body) {
        let mut settings = serde_json::json!({
            "clientId": "fuzz-client",
            "clientSecret": "fuzz-secret",
            "redirectUri": "http://127.0.0.1:9/callback",
        });
        metadata.merge_into(&mut settings);
        let mut all = serde_json::Map::new();
        all.insert("fuzz".into(), settings);
        let _ = Catalog::from_settings(&all);
    }
}

/// A provider definition as JSON; one that validates has its URL templates filled from
/// fuzzer-chosen values, from the app's configuration and from the provider.
pub fn provider_definition(json: &[u8], values: &[String]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let Ok(definition) = ProviderDefinition::from_json(value) else {
        return;
    };
    fill_templates(&definition, values);
}

fn fill_templates(definition: &ProviderDefinition, values: &[String]) {
    let mut templates = vec![
        definition.authorize_url.as_str(),
        definition.token_url.as_str(),
    ];
    templates.extend(definition.revoke.as_ref().map(|r| r.url.as_str()));
    templates.extend(definition.identity.as_ref().map(|p| p.url.as_str()));
    for (i, template) in templates.into_iter().enumerate() {
        for (j, source) in [ValueSource::Config, ValueSource::Provider]
            .into_iter()
            .enumerate()
        {
            let names = placeholders(template);
            let lookup = |name: &str| {
                let at = names.iter().position(|n| *n == name)?;
                let value = values.get((at + i + j) % values.len().max(1))?;
                Some((value.clone(), source))
            };
            if let Ok(url) = definition.fill("fuzz", template, &lookup) {
                // A filled URL is absolute, and a provider-supplied value never turns it into
                // plain HTTP to a remote host.
                assert!(
                    url.scheme() == "https" || url.scheme() == "http",
                    "filled URL has scheme {}",
                    url.scheme()
                );
            }
        }
    }
}

/// The app's provider settings (`providers: {...}` of `new Authpipe()`), built-in or custom.
pub fn provider_settings(json: &[u8]) {
    if let Ok(serde_json::Value::Object(settings)) = serde_json::from_slice(json) {
        let _ = Catalog::check(&settings);
        let _ = Catalog::from_settings(&settings);
    }
}

/// A vault with one tenant key, made once: key generation is not what is fuzzed.
struct SealingFixture {
    vault: Vault,
    key: std::sync::Arc<crate::vault::TenantKey>,
    record: TenantKeyRecord,
}

/// A vault holding the one master key the fuzz targets use, and no tenant key yet.
fn fuzz_vault() -> Vault {
    let master = MasterKey::parse(
        Some("fuzz"),
        &SecretString::from("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        "masterKey",
    )
    .expect("a valid test key");
    Vault::new(Keyring::new(vec![master]).expect("one key"))
}

static SEALING: LazyLock<SealingFixture> = LazyLock::new(|| {
    let vault = fuzz_vault();
    let tenant = TenantId::parse("fuzz-tenant").expect("a valid id");
    let record = vault.new_tenant_key(&tenant, None, 0).expect("a new key");
    let key = vault.unwrap(&record).expect("our own key");
    SealingFixture { vault, key, record }
});

const PLACE: RecordPlace<'static> = RecordPlace {
    tenant: "fuzz-tenant",
    scope: "connection",
    provider: "attio",
    subject: "user-1",
    field: "credential",
};

/// Stored record bytes: opening them fails with an error unless they are exactly what was
/// sealed, and whatever is sealed opens to itself and nowhere else.
pub fn sealed_record(stored: &[u8], plaintext: &[u8], flip: usize) {
    let fixture = &*SEALING;
    let _ = crate::vault::sealed_generation(&Sealed(stored.to_vec()));
    let _ = fixture
        .vault
        .open(&fixture.key, &PLACE, &Sealed(stored.to_vec()));

    let sealed = fixture
        .vault
        .seal(&fixture.key, WriteId::random(), &PLACE, plaintext)
        .expect("sealing succeeds");
    let opened = fixture
        .vault
        .open(&fixture.key, &PLACE, &sealed)
        .expect("a sealed record opens");
    assert_eq!(&opened[..], plaintext);

    let mut tampered = sealed.0.clone();
    let at = flip % tampered.len();
    tampered[at] ^= 1 + (flip / tampered.len()) as u8 % 255;
    assert!(
        fixture
            .vault
            .open(&fixture.key, &PLACE, &Sealed(tampered))
            .is_err(),
        "a record with byte {at} changed still opened"
    );
    let elsewhere = RecordPlace {
        field: "refresh_token",
        ..PLACE
    };
    assert!(
        fixture
            .vault
            .open(&fixture.key, &elsewhere, &sealed)
            .is_err(),
        "a record opened in another field"
    );
}

/// A stored wrapped tenant key, and a configured master key: refused with an error, never a
/// panic, unless genuine.
pub fn wrapped_tenant_key(wrapped: &[u8], generation: u32, master_key: &str) {
    let fixture = &*SEALING;
    let record = TenantKeyRecord {
        wrapped: Sealed(wrapped.to_vec()),
        generation,
        ..fixture.record.clone()
    };
    let fresh = fuzz_vault();
    if fresh.unwrap(&record).is_ok() {
        assert!(
            record.wrapped == fixture.record.wrapped
                && record.generation == fixture.record.generation,
            "a forged or renumbered tenant key unwrapped"
        );
    }
    let _ = MasterKey::parse(
        None,
        &SecretString::from(master_key.to_owned()),
        "masterKey",
    );
}
