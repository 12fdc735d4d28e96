//! Calls to providers: form POSTs with the provider's client authentication, bounded reads,
//! and one classification of what can go wrong. Nothing here logs or echoes a secret: error
//! messages carry the endpoint's purpose, the HTTP status and the OAuth `error` code only.

use crate::error::{Error, ErrorCode, Result};
use crate::providers::ClientAuth;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use url::form_urlencoded::byte_serialize;
use url::Url;

/// Largest provider response we read: token responses and identity documents are small.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An HTTP client for provider calls: no redirects (a token endpoint that redirects is
/// misconfigured, and following it could send credentials elsewhere), bounded time.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("authpipe-node/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// Client credentials, attached the way the provider wants them.
pub struct ClientCredentials<'a> {
    pub auth: ClientAuth,
    pub id: &'a str,
    pub secret: &'a SecretString,
}

/// A provider's answer: status, (bounded) body, and `Retry-After` if it sent one.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<String>,
}

/// A request that got no answer, and whether it may have reached the provider.
pub enum Transport {
    /// The connection was never made: the provider cannot have seen the request.
    NotSent(String),
    /// Sent, then no (complete) answer: the provider may have acted on it.
    MaybeSent(String),
}

impl Transport {
    pub fn into_error(self) -> Error {
        let (Self::NotSent(message) | Self::MaybeSent(message)) = self;
        Error::new(ErrorCode::ProviderTimeout, message)
    }
}

impl Answer {
    /// The body as a JSON object.
    pub fn json_object(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_slice(&self.body) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// POSTs `form` to `url` with client authentication.
pub async fn post_form(
    http: &reqwest::Client,
    purpose: &str,
    url: Url,
    form: Vec<(&str, &str)>,
    credentials: &ClientCredentials<'_>,
) -> Result<Answer> {
    try_post_form(http, purpose, url, form, credentials)
        .await
        .map_err(Transport::into_error)
}

/// [`post_form`], telling a request that was never sent from one that may have been.
pub async fn try_post_form(
    http: &reqwest::Client,
    purpose: &str,
    url: Url,
    mut form: Vec<(&str, &str)>,
    credentials: &ClientCredentials<'_>,
) -> std::result::Result<Answer, Transport> {
    let mut request = http.post(url).header("accept", "application/json");
    match credentials.auth {
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: form-urlencode id and secret before base64.
            let id: String = byte_serialize(credentials.id.as_bytes()).collect();
            let secret: String =
                byte_serialize(credentials.secret.expose_secret().as_bytes()).collect();
            let basic = SecretString::from(format!(
                "Basic {}",
                STANDARD.encode(format!("{id}:{secret}"))
            ));
            request = request.header("authorization", basic.expose_secret());
        }
        ClientAuth::Body => {
            form.push(("client_id", credentials.id));
            form.push(("client_secret", credentials.secret.expose_secret()));
        }
    }
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    try_send(
        request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
        purpose,
    )
    .await
}

/// Sends a prepared request and reads at most [`MAX_RESPONSE_BYTES`].
pub async fn send(request: reqwest::RequestBuilder, purpose: &str) -> Result<Answer> {
    try_send(request, purpose)
        .await
        .map_err(Transport::into_error)
}

async fn try_send(
    request: reqwest::RequestBuilder,
    purpose: &str,
) -> std::result::Result<Answer, Transport> {
    let mut response = request.send().await.map_err(|e| transport(purpose, &e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(purpose, &e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Transport::MaybeSent(format!(
                "the {purpose} answered with more than 1 MiB"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

fn transport(purpose: &str, err: &reqwest::Error) -> Transport {
    // reqwest's Display includes the URL, which can carry a token (Zoho's revoke): never use it.
    if err.is_connect() {
        Transport::NotSent(format!("the {purpose} could not be reached"))
    } else if err.is_timeout() {
        Transport::MaybeSent(format!("the {purpose} did not answer in time"))
    } else {
        Transport::MaybeSent(format!("the {purpose} broke off the connection"))
    }
}

/// An OAuth error response (`{"error": "...", "error_description": "..."}`) as a message part,
/// with the description cut short and stripped of control characters.
pub fn oauth_error(answer: &Answer) -> Option<String> {
    let object = answer.json_object()?;
    let code = object.get("error")?.as_str()?;
    let code: String = code
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let description = object
        .get("error_description")
        .and_then(|d| d.as_str())
        .map(|d| {
            d.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
        .filter(|d| !d.is_empty());
    Some(match description {
        Some(d) => format!("{code} ({d})"),
        None => code,
    })
}

/// An unexpected answer: the status and, if it is an OAuth error, its code.
pub fn unexpected(purpose: &str, answer: &Answer) -> Error {
    let detail = oauth_error(answer)
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    Error::new(
        ErrorCode::ProviderError,
        format!("the {purpose} answered HTTP {}{detail}", answer.status),
    )
}
