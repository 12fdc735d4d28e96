//! Each built-in provider's authorize request carries its quirks: scope parameter and
//! separator, extra parameters, PKCE or not, templates filled from the app's params.

mod common;

use authpipe_core::Client;
use authpipe_core::ConnectionKey;
use authpipe_core::StartRequest;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

async fn client() -> Client {
    let engine = common::memory_engine().await;
    let mut settings = serde_json::Map::new();
    for id in [
        "attio",
        "hubspot",
        "salesforce",
        "pipedrive",
        "zoho",
        "dynamics365",
        "close",
        "copper",
    ] {
        let mut s = json!({ "clientId": format!("{id}-client"), "clientSecret": "s", "redirectUri": format!("https://app.example/cb/{id}") });
        if id == "dynamics365" {
            s["params"] = json!({ "org": "contoso" });
        }
        settings.insert(id.to_owned(), s);
    }
    common::client(engine, &settings, Duration::from_secs(5))
}

async fn authorize(client: &Client, provider: &str) -> (String, BTreeMap<String, String>) {
    let key = ConnectionKey::parse(provider, "t", "u").unwrap();
    let started = client
        .start_connect(StartRequest {
            key,
            scopes: None,
            redirect_uri: None,
            browser_binding: None,
        })
        .await
        .unwrap();
    let url = url::Url::parse(&started.url).unwrap();
    let base = format!("{}{}", url.origin().ascii_serialization(), url.path());
    (base, url.query_pairs().into_owned().collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_gets_its_own_authorize_request() {
    let c = client().await;

    let (base, q) = authorize(&c, "attio").await;
    assert_eq!(base, "https://app.attio.com/authorize");
    assert!(
        !q.contains_key("scope"),
        "Attio scopes live in the app settings"
    );
    assert_eq!(q["code_challenge_method"], "S256");

    let (base, q) = authorize(&c, "hubspot").await;
    assert_eq!(base, "https://app.hubspot.com/oauth/authorize");
    assert_eq!(q["scope"], "oauth");

    let (base, q) = authorize(&c, "salesforce").await;
    assert_eq!(
        base,
        "https://login.salesforce.com/services/oauth2/authorize"
    );
    assert_eq!(q["scope"], "api refresh_token");
    assert!(q.contains_key("code_challenge"));

    let (base, q) = authorize(&c, "pipedrive").await;
    assert_eq!(base, "https://oauth.pipedrive.com/oauth/authorize");
    assert!(
        !q.contains_key("scope") && !q.contains_key("code_challenge"),
        "{q:?}"
    );

    let (base, q) = authorize(&c, "zoho").await;
    assert_eq!(base, "https://accounts.zoho.com/oauth/v2/auth");
    assert_eq!(
        q["scope"],
        "ZohoCRM.modules.ALL,ZohoCRM.settings.ALL,ZohoCRM.users.READ"
    );
    assert_eq!(
        (q["access_type"].as_str(), q["prompt"].as_str()),
        ("offline", "consent")
    );

    let (base, q) = authorize(&c, "dynamics365").await;
    assert_eq!(
        base,
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize"
    );
    assert_eq!(
        q["scope"],
        "https://contoso.crm.dynamics.com/user_impersonation offline_access"
    );
    assert_eq!(q["response_mode"], "query");

    let (base, q) = authorize(&c, "close").await;
    assert_eq!(
        base, "https://app.close.com/oauth2/authorize/",
        "Close keeps its trailing slash"
    );
    assert!(!q.contains_key("scope"));

    let (base, q) = authorize(&c, "copper").await;
    assert_eq!(base, "https://app.copper.com/oauth/authorize");
    assert_eq!(q["scope"], "developer/v1/all");

    for provider in ["attio", "zoho", "copper"] {
        let (_, q) = authorize(&c, provider).await;
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], format!("{provider}-client"));
        assert_eq!(
            q["redirect_uri"],
            format!("https://app.example/cb/{provider}")
        );
        assert_eq!(q["state"].len(), 43);
    }
}
