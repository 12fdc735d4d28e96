//! Connect sessions: a short-lived, single-use token that lets a browser start one flow for a
//! (tenant, user) the app's backend chose, without the browser naming them.

use super::sha256_hex;
use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, ProviderId, TenantId, UserId};
use crate::records::SessionRecord;
use crate::secrets::SessionToken;
use oauth2::CsrfToken;

/// Connect sessions: default and longest lifetime, in seconds.
pub const DEFAULT_SESSION_TTL_S: u32 = 600;
pub const MAX_SESSION_TTL_S: u32 = 3600;

/// A connect session: the token the browser carries, and when it expires.
pub struct SessionGrant {
    pub token: SessionToken,
    pub expires_at: i64,
}

impl Client {
    /// A short-lived token that lets a browser start flows for (tenant, user) without naming them.
    pub async fn create_session(
        &self,
        tenant: TenantId,
        user: UserId,
        mut providers: Vec<ProviderId>,
        ttl_seconds: Option<i64>,
    ) -> Result<SessionGrant> {
        // Each provider once: a list of 100,000 copies of one is stored as that one.
        providers.sort();
        providers.dedup();
        let ttl = ttl_seconds.unwrap_or(DEFAULT_SESSION_TTL_S.into());
        if !(1..=i64::from(MAX_SESSION_TTL_S)).contains(&ttl) {
            return Err(Error::invalid_argument(format!(
                "ttlSeconds must be between 1 and {MAX_SESSION_TTL_S}"
            )));
        }
        let token = CsrfToken::new_random_len(32);
        let now = self.engine().now_ms();
        let expires_at = now + ttl * 1000;
        self.engine()
            .put_session(SessionRecord {
                token_hash: sha256_hex(token.secret()),
                tenant,
                user,
                providers: providers.iter().map(|p| p.to_string()).collect(),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(SessionGrant {
            token: SessionToken::new(token.secret().as_str()),
            expires_at,
        })
    }

    /// The (tenant, user) a session token stands for, if it may connect `provider`. A session
    /// starts one flow: this consumes it, so a token that leaked (a log, a history entry) after
    /// its use is worth nothing. It is checked before it is consumed, so a request for a
    /// provider it does not allow leaves it usable.
    pub async fn session_key(&self, token: &str, provider: &ProviderId) -> Result<ConnectionKey> {
        let invalid = || {
            Error::new(
                ErrorCode::SessionInvalid,
                "the connect session is unknown, expired or already used (a session starts one flow); create a new one",
            )
        };
        let token_hash = sha256_hex(token);
        let engine = self.engine();
        let session = engine.session(&token_hash).await?.ok_or_else(invalid)?;
        if session.expires_at <= engine.now_ms() {
            return Err(invalid());
        }
        if !session.providers.is_empty()
            && !session.providers.iter().any(|p| p == provider.as_str())
        {
            return Err(Error::new(
                ErrorCode::SessionInvalid,
                format!("the connect session does not allow connecting '{provider}'"),
            ));
        }
        // Of concurrent uses of one token, exactly one gets here with the session.
        engine
            .take_session(&token_hash)
            .await?
            .ok_or_else(invalid)?;
        Ok(ConnectionKey::new(
            provider.clone(),
            session.tenant,
            session.user,
        ))
    }
}
