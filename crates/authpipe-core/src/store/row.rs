//! How records become rows and rows records, once for both SQL stores. A driver gives rows
//! through [`SqlRow`] and takes parameters as [`SqlValue`]s; everything between (column order,
//! parsing ids, JSON lists, sealed blobs) is written here.

use crate::error::{Error, ErrorCode, Result};
use crate::ids::{ConnectionKey, ProviderId, TenantId, UserId};
use crate::records::{
    ConnectionRecord, ConnectionStatus, CredentialKind, FlowRecord, LastError, MasterKeyRecord,
    ProviderAccount, Sealed, SessionRecord, TenantKeyRecord,
};

/// A column type both drivers read the same way (text, integers, blobs, and their `Option`s).
pub trait FromColumn:
    rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>
{
}
impl<T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>> FromColumn for T {}

/// A row as a driver returns it, read by column index (the position in the statement's list).
pub trait SqlRow {
    /// Said after "the store holds an invalid ...": how such a row could have come about.
    const INVALID_ROW_HINT: &'static str;

    fn read<T: FromColumn>(&self, index: usize) -> Result<T>;

    /// A data key's generation. Its own method because the column is not the same type in
    /// both: SQLite's INTEGER reads as a `u32` directly, PostgreSQL's `integer` is an `i32`.
    fn generation(&self, index: usize) -> Result<u32>;

    fn text(&self, index: usize) -> Result<String> {
        self.read(index)
    }

    fn invalid(&self, what: &str) -> Error {
        invalid_row::<Self>(what)
    }
}

fn invalid_row<R: SqlRow + ?Sized>(what: &str) -> Error {
    Error::new(
        ErrorCode::StoreError,
        format!("the store holds an invalid {what}{}", R::INVALID_ROW_HINT),
    )
}

/// A parameter value, for either driver: each maps these to its own parameter type.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u32> for SqlValue {
    fn from(value: u32) -> Self {
        Self::Int(value.into())
    }
}

impl From<&Sealed> for SqlValue {
    fn from(value: &Sealed) -> Self {
        Self::Blob(value.0.clone())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

/// A list column (scopes, providers) as stored: JSON text.
pub fn json(list: &[String]) -> Result<String> {
    serde_json::to_string(list).map_err(|e| Error::internal(e.to_string()))
}

macro_rules! connection_columns {
    ($first:ident = $first_name:literal $(, $column:ident = $name:literal)* $(,)?) => {
        /// The columns of `connections`, in the order every statement lists them (the order of
        /// [`CONNECTION_COLUMNS`]): `column as usize` is its index in a row.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ConnectionColumn {
            $first, $($column),*
        }

        impl ConnectionColumn {
            pub const ALL: &'static [Self] = &[Self::$first, $(Self::$column),*];

            pub fn name(self) -> &'static str {
                match self {
                    Self::$first => $first_name,
                    $(Self::$column => $name),*
                }
            }
        }

        /// The columns of `connections`, as every `SELECT` of them reads them.
        pub const CONNECTION_COLUMNS: &str = concat!($first_name $(, ", ", $name)*);
    };
}

connection_columns! {
    TenantId = "tenant_id",
    Provider = "provider",
    UserId = "user_id",
    Kind = "kind",
    Status = "status",
    Scopes = "scopes",
    AccountId = "account_id",
    AccountName = "account_name",
    ExpiresAt = "expires_at",
    CreatedAt = "created_at",
    UpdatedAt = "updated_at",
    LastRefreshAt = "last_refresh_at",
    NextRefreshAt = "next_refresh_at",
    LastCheckAt = "last_check_at",
    LastErrorCode = "last_error_code",
    LastErrorMessage = "last_error_message",
    Credential = "credential",
    RefreshToken = "refresh_token",
    Extras = "extras",
    Version = "version",
    TokenIssuedAt = "token_issued_at",
}

impl ConnectionColumn {
    /// Part of the row's key (tenant, provider, user).
    pub fn is_key(self) -> bool {
        matches!(self, Self::TenantId | Self::Provider | Self::UserId)
    }

    /// Whether writing a record over a stored row replaces this column: all but the key,
    /// `created_at` (kept from the first write) and `version` (the store bumps it).
    pub fn is_replaced(self) -> bool {
        !self.is_key() && !matches!(self, Self::CreatedAt | Self::Version)
    }

    fn value(self, r: &ConnectionRecord, scopes: &str) -> SqlValue {
        let error = r.last_error.as_ref();
        match self {
            Self::TenantId => r.key.tenant.as_str().into(),
            Self::Provider => r.key.provider.as_str().into(),
            Self::UserId => r.key.user.as_str().into(),
            Self::Kind => r.kind.as_str().into(),
            Self::Status => r.status.as_str().into(),
            Self::Scopes => scopes.into(),
            Self::AccountId => r.account.id.as_deref().into(),
            Self::AccountName => r.account.name.as_deref().into(),
            Self::ExpiresAt => r.expires_at.into(),
            Self::CreatedAt => r.created_at.into(),
            Self::UpdatedAt => r.updated_at.into(),
            Self::LastRefreshAt => r.last_refresh_at.into(),
            Self::NextRefreshAt => r.next_refresh_at.into(),
            Self::LastCheckAt => r.last_check_at.into(),
            Self::LastErrorCode => error.map(|e| e.code.as_str()).into(),
            Self::LastErrorMessage => error.map(|e| e.message.as_str()).into(),
            Self::Credential => (&r.credential).into(),
            Self::RefreshToken => r.refresh_token.as_ref().into(),
            Self::Extras => r.extras.as_ref().into(),
            Self::Version => r.version.into(),
            Self::TokenIssuedAt => r.token_issued_at.into(),
        }
    }
}

/// A record's column values, each with its column, in [`CONNECTION_COLUMNS`] order.
pub fn connection_values(r: &ConnectionRecord) -> Result<Vec<(ConnectionColumn, SqlValue)>> {
    let scopes = json(&r.scopes)?;
    Ok(ConnectionColumn::ALL
        .iter()
        .map(|&column| (column, column.value(r, &scopes)))
        .collect())
}

/// A row of [`CONNECTION_COLUMNS`].
pub fn connection_from_row(row: &impl SqlRow) -> Result<ConnectionRecord> {
    use ConnectionColumn as C;
    let get_text = |column: C| row.text(column as usize);
    let key = ConnectionKey::new(
        ProviderId::parse(get_text(C::Provider)?).map_err(|_| row.invalid("provider id"))?,
        TenantId::parse(get_text(C::TenantId)?).map_err(|_| row.invalid("tenant id"))?,
        UserId::parse(get_text(C::UserId)?).map_err(|_| row.invalid("user id"))?,
    );
    let kind =
        CredentialKind::parse(&get_text(C::Kind)?).ok_or_else(|| row.invalid("credential kind"))?;
    let status =
        ConnectionStatus::parse(&get_text(C::Status)?).ok_or_else(|| row.invalid("status"))?;
    let scopes =
        serde_json::from_str(&get_text(C::Scopes)?).map_err(|_| row.invalid("scope list"))?;
    let last_error = LastError::from_columns(
        row.read(C::LastErrorCode as usize)?,
        row.read(C::LastErrorMessage as usize)?,
    );
    let sealed =
        |column: C| Ok::<_, Error>(row.read::<Option<Vec<u8>>>(column as usize)?.map(Sealed));
    Ok(ConnectionRecord {
        key,
        kind,
        status,
        scopes,
        account: ProviderAccount {
            id: row.read(C::AccountId as usize)?,
            name: row.read(C::AccountName as usize)?,
        },
        expires_at: row.read(C::ExpiresAt as usize)?,
        created_at: row.read(C::CreatedAt as usize)?,
        updated_at: row.read(C::UpdatedAt as usize)?,
        last_refresh_at: row.read(C::LastRefreshAt as usize)?,
        next_refresh_at: row.read(C::NextRefreshAt as usize)?,
        last_check_at: row.read(C::LastCheckAt as usize)?,
        last_error,
        credential: Sealed(row.read(C::Credential as usize)?),
        refresh_token: sealed(C::RefreshToken)?,
        extras: sealed(C::Extras)?,
        version: row.read(C::Version as usize)?,
        token_issued_at: row.read(C::TokenIssuedAt as usize)?,
    })
}

/// The columns [`tenant_key_from_row`] reads.
pub const TENANT_KEY_COLUMNS: &str = "tenant_id, generation, master_key_id, wrapped, created_at";

pub fn tenant_key_from_row(row: &impl SqlRow) -> Result<TenantKeyRecord> {
    Ok(TenantKeyRecord {
        tenant: TenantId::parse(row.text(0)?).map_err(|_| row.invalid("tenant id"))?,
        generation: row.generation(1)?,
        master_key_id: row.read(2)?,
        wrapped: Sealed(row.read(3)?),
        created_at: row.read(4)?,
    })
}

/// A row of [`crate::store::sql::TENANT_KEY_USAGE`].
pub fn tenant_key_usage_from_row(row: &impl SqlRow) -> Result<crate::store::TenantKeyUsage> {
    Ok(crate::store::TenantKeyUsage {
        tenant: TenantId::parse(row.text(0)?).map_err(|_| row.invalid("tenant id"))?,
        generation: row.generation(1)?,
        created_at: row.read(2)?,
        encryptions: row.read(3)?,
    })
}

/// A row of `sql::rows_sealed_otherwise` for `SEALED_TABLES[table]`.
pub fn sealed_row(
    table: usize,
    tenant: &TenantId,
    row: &impl SqlRow,
) -> Result<crate::store::SealedRow> {
    use crate::store::{SealedRow, SecretKey};
    Ok(match table {
        0 => SealedRow::Connection(
            ConnectionKey::parse(&row.text(0)?, tenant.as_str(), &row.text(1)?)
                .map_err(|_| row.invalid("connection key"))?,
        ),
        1 => {
            let provider = row.text(0)?;
            SealedRow::Secret(SecretKey {
                tenant: tenant.clone(),
                provider: if provider.is_empty() {
                    None
                } else {
                    Some(ProviderId::parse(provider).map_err(|_| row.invalid("provider id"))?)
                },
                name: crate::ids::SecretName::parse(row.text(1)?)
                    .map_err(|_| row.invalid("secret name"))?,
            })
        }
        _ => SealedRow::Flow(row.text(0)?),
    })
}

/// The columns [`master_key_from_row`] reads.
pub const MASTER_KEY_COLUMNS: &str = "id, key_check, created_at, retired_at";

pub fn master_key_from_row(row: &impl SqlRow) -> Result<MasterKeyRecord> {
    Ok(MasterKeyRecord {
        id: row.read(0)?,
        key_check: Sealed(row.read(1)?),
        created_at: row.read(2)?,
        retired_at: row.read(3)?,
    })
}

/// The columns [`session_from_row`] reads (the token hash is the one looked up).
pub const SESSION_COLUMNS: &str = "tenant_id, user_id, providers, created_at, expires_at";

pub fn session_from_row(token_hash: &str, row: &impl SqlRow) -> Result<SessionRecord> {
    Ok(SessionRecord {
        token_hash: token_hash.to_owned(),
        tenant: TenantId::parse(row.text(0)?).map_err(|_| row.invalid("connect session"))?,
        user: UserId::parse(row.text(1)?).map_err(|_| row.invalid("connect session"))?,
        providers: serde_json::from_str(&row.text(2)?)
            .map_err(|_| row.invalid("connect session"))?,
        created_at: row.read(3)?,
        expires_at: row.read(4)?,
    })
}

/// The columns [`flow_from_row`] reads (the state hash is the one looked up).
pub const FLOW_COLUMNS: &str = "tenant_id, provider, user_id, verifier, redirect_uri, scopes, \
     browser_hash, created_at, expires_at, consumed_at";

pub fn flow_from_row(state_hash: &str, row: &impl SqlRow) -> Result<FlowRecord> {
    Ok(FlowRecord {
        state_hash: state_hash.to_owned(),
        key: ConnectionKey::parse(&row.text(1)?, &row.text(0)?, &row.text(2)?)
            .map_err(|_| row.invalid("connect flow"))?,
        verifier: row.read::<Option<Vec<u8>>>(3)?.map(Sealed),
        redirect_uri: row.read(4)?,
        scopes: serde_json::from_str(&row.text(5)?).map_err(|_| row.invalid("connect flow"))?,
        browser_hash: row.read(6)?,
        created_at: row.read(7)?,
        expires_at: row.read(8)?,
        consumed_at: row.read(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_list_is_the_one_the_columns_name() {
        let names: Vec<_> = ConnectionColumn::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.join(", "), CONNECTION_COLUMNS);
        for (index, column) in ConnectionColumn::ALL.iter().enumerate() {
            assert_eq!(*column as usize, index, "{column:?}");
        }
    }
}
