//! Calls to providers: form POSTs with the provider's client authentication, bounded reads,
//! and one classification of what can go wrong. Nothing here logs or echoes a secret: error
//! messages carry the endpoint's purpose, the HTTP status, the OAuth `error` code and a
//! description only once everything the request sent is cut out of it ([`scrub`](super::scrub)).
//! Request bodies and authorization headers that carry secrets live in buffers that are
//! zeroized when the HTTP client lets go of them.

use super::scrub::Sent;
use crate::error::{Error, ErrorCode, Result};
use crate::providers::ClientAuth;
use crate::secrets::ClientSecret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::ExposeSecret;
use std::time::Duration;
use url::form_urlencoded::byte_serialize;
use url::Url;
use zeroize::Zeroizing;

/// Largest provider response we read: token responses and identity documents are small.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How long a pooled connection may sit idle and still be reused: less than the shortest
/// keep-alive servers commonly grant (Node's default is 5 s; nginx's 75 s, AWS load balancers'
/// 60 s). Past the server's, a request can be written into a connection it is closing; the
/// failure then looks like "maybe sent", which for a rotating refresh token means a re-read
/// and a retry instead of a clean answer. (reqwest's default is 90 s.)
const POOL_IDLE: Duration = Duration::from_secs(4);

/// An HTTP client for provider calls: no redirects (a token endpoint that redirects is
/// misconfigured, and following it could send credentials elsewhere), bounded time.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    build_client(timeout, POOL_IDLE)
}

fn build_client(timeout: Duration, pool_idle: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .pool_idle_timeout(pool_idle)
        .user_agent(concat!("authpipe-node/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// Client credentials, attached the way the provider wants them.
pub struct ClientCredentials<'a> {
    pub auth: ClientAuth,
    pub id: &'a str,
    pub secret: &'a ClientSecret,
}

impl<'a> ClientCredentials<'a> {
    /// The app's credentials for `provider`, or `INVALID_ARGUMENT` if it configured none.
    pub fn of(provider: &'a crate::providers::Provider) -> Result<Self> {
        let (id, secret) = provider.require_client()?;
        Ok(Self {
            auth: provider.definition.client_auth,
            id,
            secret,
        })
    }
}

/// A provider's answer: status, (bounded) body, `Retry-After` if it sent one, and what the
/// request sent, so that no text of the answer is kept with any of it.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<String>,
    pub sent: Sent,
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
    form: Vec<(&str, &str)>,
    credentials: &ClientCredentials<'_>,
) -> std::result::Result<Answer, Transport> {
    // Only a header that cannot be built fails here: nothing was sent.
    let (request, sent) =
        form_request(http, url, form, credentials).map_err(|e| Transport::NotSent(e.message))?;
    try_send(request, purpose, sent).await
}

/// Form parameters whose values are public (in the authorize URL, or fixed words of the
/// protocol): a provider's text that repeats them is not scrubbed of them.
const PUBLIC_PARAMETERS: &[&str] = &["grant_type", "redirect_uri", "token_type_hint", "scope"];

/// The form POST with client authentication, and every value it carries that is not public.
fn form_request<'a>(
    http: &reqwest::Client,
    url: Url,
    mut form: Vec<(&'a str, &'a str)>,
    credentials: &ClientCredentials<'a>,
) -> Result<(reqwest::RequestBuilder, Sent)> {
    let mut sent = Sent::default();
    // A token in the query (Zoho's revocation) is sent as much as one in the body.
    for (_, value) in url.query_pairs() {
        sent.add(&value);
    }
    sent.add(credentials.id);
    sent.add(credentials.secret.expose_secret());
    let mut request = http.post(url).header("accept", "application/json");
    match credentials.auth {
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: form-urlencode id and secret before base64.
            let id = Zeroizing::new(byte_serialize(credentials.id.as_bytes()).collect::<String>());
            let secret = Zeroizing::new(
                byte_serialize(credentials.secret.expose_secret().as_bytes()).collect::<String>(),
            );
            sent.add_basic(&id, &secret);
            let pair = Zeroizing::new(format!("{}:{}", *id, *secret));
            let basic = Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())));
            request = request.header(
                AUTHORIZATION,
                secret_header(basic, "the client credentials")?,
            );
        }
        ClientAuth::Body => {
            form.push(("client_id", credentials.id));
            form.push(("client_secret", credentials.secret.expose_secret()));
        }
    }
    for (name, value) in &form {
        if !PUBLIC_PARAMETERS.contains(name) {
            sent.add(value);
        }
    }
    let body = Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish(),
    );
    let request = request
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(wiped_bytes(body));
    Ok((request, sent))
}

/// Bytes for the HTTP client that are zeroized when its last reference is dropped.
fn wiped_bytes(value: Zeroizing<String>) -> bytes::Bytes {
    struct Wiped(Zeroizing<String>);
    impl AsRef<[u8]> for Wiped {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    bytes::Bytes::from_owner(Wiped(value))
}

/// A header value that carries a secret (`what`, for the error): zeroized when dropped, and
/// marked sensitive (left out of `Debug` and of HTTP/2 header compression tables). A value an
/// HTTP header cannot carry (a line break) is an error, never an empty header.
pub fn secret_header(value: Zeroizing<String>, what: &str) -> Result<HeaderValue> {
    let mut header = HeaderValue::from_maybe_shared(wiped_bytes(value)).map_err(|_| {
        Error::invalid_argument(format!(
            "{what} cannot be sent in an HTTP header (it has a control character)"
        ))
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// Sends a prepared request that carried the values in `sent`, and reads at most
/// [`MAX_RESPONSE_BYTES`].
pub async fn send(request: reqwest::RequestBuilder, purpose: &str, sent: Sent) -> Result<Answer> {
    try_send(request, purpose, sent)
        .await
        .map_err(Transport::into_error)
}

async fn try_send(
    request: reqwest::RequestBuilder,
    purpose: &str,
    sent: Sent,
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
        sent,
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

/// Longest provider description kept, after scrubbing.
const DESCRIPTION_CHARS: usize = 200;

/// An OAuth error response (`{"error": "...", "error_description": "..."}`) as a message part:
/// the code, and the description with everything the request sent cut out, control characters
/// removed and cut short. Provider text never reaches a browser page (the handler shows codes).
pub fn oauth_error(answer: &Answer) -> Option<String> {
    let object = answer.json_object()?;
    let code = oauth_error_code(answer, object.get("error")?.as_str()?);
    let description = object
        .get("error_description")
        .and_then(|d| d.as_str())
        // Control characters go first (a line break inside an echoed token must not split it
        // before it is matched), and the text is bounded before scrubbing, whose cost grows
        // with it; it is cut short after.
        .map(|d| {
            d.chars()
                .filter(|c| !c.is_control())
                .take(4 * DESCRIPTION_CHARS)
                .collect::<String>()
        })
        .and_then(|d| answer.sent.scrub(&d))
        .map(|d| d.chars().take(DESCRIPTION_CHARS).collect::<String>())
        .filter(|d| !d.trim().is_empty());
    Some(match description {
        Some(d) => format!("{code} ({d})"),
        None => code,
    })
}

/// An error code from outside (a token endpoint's `error`, a callback's `error=`) as we keep
/// it: RFC 6749's printable ASCII, at most 64 characters.
pub fn printable_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Error codes of RFC 6749, 6750, 7009 and 8628: kept as they are.
const STANDARD_ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "unsupported_response_type",
    "server_error",
    "temporarily_unavailable",
    "invalid_token",
    "insufficient_scope",
    "unsupported_token_type",
    "authorization_pending",
    "slow_down",
    "expired_token",
];

/// The `error` code as kept: RFC 6749's printable ASCII, at most 64 characters, and never a
/// value the request sent (an endpoint that echoes into `error` gets "redacted").
pub fn oauth_error_code(answer: &Answer, code: &str) -> String {
    if STANDARD_ERROR_CODES.contains(&code) {
        return code.to_owned();
    }
    let code = printable_code(code);
    match answer.sent.scrub(&code) {
        Some(scrubbed) if scrubbed == code => code,
        _ => "redacted".to_owned(),
    }
}

/// An unexpected answer: the status and, if it is an OAuth error, its code and scrubbed
/// description ([`oauth_error`]).
pub fn unexpected(purpose: &str, answer: &Answer) -> Error {
    let detail = oauth_error(answer)
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    Error::new(
        ErrorCode::ProviderError,
        format!("the {purpose} answered HTTP {}{detail}", answer.status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A keep-alive HTTP/1.1 server on loopback that answers every request with "ok" and counts
    /// the connections it accepted.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (origin, accepted)
    }

    #[test]
    fn a_form_request_marks_its_secrets_and_remembers_every_value_it_sent() {
        let client = reqwest::Client::new();
        let secret = ClientSecret::new("s3cret value");
        let credentials = ClientCredentials {
            auth: ClientAuth::Basic,
            id: "client id",
            secret: &secret,
        };
        let url = Url::parse("https://idp.example/revoke?token=q-0123456789").unwrap();
        let (request, sent) = form_request(
            &client,
            url,
            vec![("refresh_token", "rt-0123456789")],
            &credentials,
        )
        .unwrap();
        let request = request.build().unwrap();
        let authorization = &request.headers()[AUTHORIZATION];
        assert!(authorization.is_sensitive());
        assert!(!format!("{request:?}").contains(&STANDARD.encode("client+id:s3cret+value")));
        assert_eq!(
            request.body().and_then(|b| b.as_bytes()),
            Some(&b"refresh_token=rt-0123456789"[..])
        );
        assert_eq!(
            sent.scrub("q-0123456789, rt-0123456789, client id, s3cret value")
                .unwrap(),
            "[redacted], [redacted], [redacted], [redacted]"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_connection_is_not_reused_past_the_pool_idle_time() {
        let (origin, accepted) = counting_server().await;
        let client = build_client(Duration::from_secs(5), Duration::from_millis(50)).unwrap();
        let get = || async {
            client
                .get(&origin)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        assert_eq!(get().await, "ok");
        assert_eq!(get().await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");
        // Idle time is what is under test here, so real time passes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get().await, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a new connection after idling"
        );
    }
}
