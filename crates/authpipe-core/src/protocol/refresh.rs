//! The refresh grant, and what its failures mean for the connection (RFC 6749 §5.2, §6;
//! RFC 9700 §4.14.2). The distinction that matters most: whether the request may have reached
//! the provider. A rotating provider that received it has already spent the old refresh token,
//! so resending it would be a replay that revokes the whole grant.

use super::http::{self, Answer, ClientCredentials};
use super::token::{self, TokenSet};
use crate::providers::Provider;
use crate::secrets::RefreshToken;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

/// Why a refresh did not produce tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshFailure {
    /// The provider refused the grant (`invalid_grant`, `unauthorized_client`): it is gone.
    Terminal { code: String, message: String },
    /// The provider answered that it failed (5xx, 429, `temporarily_unavailable`), or the request
    /// was never sent: the refresh token is untouched, retry later.
    Transient {
        code: String,
        message: String,
        retry_after_ms: Option<i64>,
    },
    /// The request may have reached the provider and rotated the token (timeout or reset after
    /// sending, an unreadable 200): re-read before resending.
    Ambiguous { message: String },
    /// Our side is misconfigured (`invalid_client`, no client credentials): no connection's fault.
    Config { code: String, message: String },
}

impl RefreshFailure {
    pub fn code(&self) -> &str {
        match self {
            Self::Terminal { code, .. }
            | Self::Transient { code, .. }
            | Self::Config { code, .. } => code,
            Self::Ambiguous { .. } => "refresh_outcome_unknown",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Terminal { message, .. }
            | Self::Transient { message, .. }
            | Self::Ambiguous { message }
            | Self::Config { message, .. } => message,
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date, in ms from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some((seconds.min(24 * 3600) * 1000) as i64);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some((at_ms - now_ms).clamp(0, 24 * 3600 * 1000))
}

/// Sends the refresh grant. `values` are the connection's stored extras (template values such
/// as Zoho's `accounts-server`).
pub async fn refresh(
    http_client: &reqwest::Client,
    provider: &Provider,
    refresh_token: &RefreshToken,
    values: &Map<String, Value>,
    now_ms: i64,
) -> Result<TokenSet, RefreshFailure> {
    let definition = &provider.definition;
    let config = |message: String| RefreshFailure::Config {
        code: "configuration".into(),
        message,
    };
    let credentials = ClientCredentials::of(provider).map_err(|e| config(e.message))?;
    let url = definition
        .fill("tokenUrl", &definition.token_url, &|name| {
            provider.template_value(&[values], name)
        })
        .map_err(|e| config(e.message))?;
    let purpose = format!("{} token endpoint", definition.display_name);
    let form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ];
    let answer = match http::try_post_form(http_client, &purpose, url, form, &credentials).await {
        Ok(answer) => answer,
        Err(http::Transport::NotSent(message)) => {
            return Err(RefreshFailure::Transient {
                code: "unreachable".into(),
                message,
                retry_after_ms: None,
            })
        }
        Err(http::Transport::MaybeSent(message)) => {
            return Err(RefreshFailure::Ambiguous { message })
        }
    };
    classify(definition, &purpose, &answer, now_ms)
}

/// What the token endpoint's answer to a refresh grant means for the connection. Pure, so the
/// fuzzer reaches it without a network.
pub fn classify(
    definition: &crate::providers::ProviderDefinition,
    purpose: &str,
    answer: &Answer,
    now_ms: i64,
) -> Result<TokenSet, RefreshFailure> {
    let body = answer.json_object();
    if answer.is_success() {
        return match body {
            Some(body) => token::parse_answer(definition, &body, &answer.sent)
                .map_err(|e| RefreshFailure::Ambiguous { message: e.message }),
            None => Err(RefreshFailure::Ambiguous {
                message: format!("the {purpose} answered 200 with something that is not JSON"),
            }),
        };
    }
    let error = body
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .map(|code| http::oauth_error_code(answer, code))
        .unwrap_or_default();
    let detail = http::oauth_error(answer).unwrap_or_else(|| format!("HTTP {}", answer.status));
    let message = format!("the {purpose} refused the refresh: {detail}");
    let retry_after_ms = answer
        .retry_after
        .as_deref()
        .and_then(|v| retry_after_ms(v, now_ms));
    match (answer.status, error.as_str()) {
        (_, "invalid_grant" | "unauthorized_client") => Err(RefreshFailure::Terminal {
            code: error,
            message,
        }),
        (_, "invalid_client") => Err(RefreshFailure::Config {
            code: error,
            message,
        }),
        (429, _) => Err(RefreshFailure::Transient {
            code: "rate_limited".into(),
            message,
            retry_after_ms,
        }),
        (500..=599, _) | (_, "temporarily_unavailable" | "server_error") => {
            let code = if error.is_empty() {
                format!("http_{}", answer.status)
            } else {
                error
            };
            Err(RefreshFailure::Transient {
                code,
                message,
                retry_after_ms,
            })
        }
        // Other 4xx: a request the provider will keep refusing; retry slowly, never revoke on it.
        _ => Err(RefreshFailure::Config {
            code: if error.is_empty() {
                format!("http_{}", answer.status)
            } else {
                error
            },
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        let now = 1_684_852_920_000; // Tue, 23 May 2023 14:42:00 GMT
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(
            retry_after_ms("Tue, 23 May 2023 14:42:01 GMT", now),
            Some(1_000)
        );
        assert_eq!(
            retry_after_ms("Tue, 23 May 2023 14:41:00 GMT", now),
            Some(0),
            "a date in the past means now"
        );
        assert_eq!(retry_after_ms("soon", now), None);
    }

    fn answer(status: u16, body: &str, retry_after: Option<&str>) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: retry_after.map(str::to_owned),
            sent: Default::default(),
        }
    }

    #[test]
    fn failures_are_classified_by_what_they_mean_for_the_grant() {
        let def = crate::providers::builtin_definitions()
            .into_iter()
            .find(|d| d.id == "hubspot")
            .unwrap();
        let now = 1_684_852_920_000;
        let c = |a: Answer| classify(&def, "token endpoint", &a, now).unwrap_err();
        assert!(matches!(
            c(answer(400, r#"{"error":"invalid_grant"}"#, None)),
            RefreshFailure::Terminal { .. }
        ));
        assert!(matches!(
            c(answer(400, r#"{"error":"unauthorized_client"}"#, None)),
            RefreshFailure::Terminal { .. }
        ));
        assert!(matches!(
            c(answer(401, r#"{"error":"invalid_client"}"#, None)),
            RefreshFailure::Config { .. }
        ));
        assert!(matches!(
            c(answer(503, "oops", None)),
            RefreshFailure::Transient {
                retry_after_ms: None,
                ..
            }
        ));
        assert_eq!(
            c(answer(429, "{}", Some("Tue, 23 May 2023 14:42:05 GMT"))),
            RefreshFailure::Transient {
                code: "rate_limited".into(),
                message: "the token endpoint refused the refresh: HTTP 429".into(),
                retry_after_ms: Some(5_000)
            }
        );
        assert!(
            matches!(
                c(answer(200, "<html>", None)),
                RefreshFailure::Ambiguous { .. }
            ),
            "the provider may have rotated"
        );
        assert!(matches!(
            c(answer(200, r#"{"token_type":"bearer"}"#, None)),
            RefreshFailure::Ambiguous { .. }
        ));
        let ok = classify(
            &def,
            "t",
            &answer(
                200,
                r#"{"access_token":"a","refresh_token":"r2","expires_in":1800}"#,
                None,
            ),
            now,
        )
        .unwrap();
        assert_eq!(ok.expires_in, Some(1800));
    }
}
