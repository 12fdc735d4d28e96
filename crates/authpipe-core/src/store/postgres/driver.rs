//! tokio-postgres on the store's side: its rows read as [`SqlRow`]s, [`SqlValue`]s sent as its
//! parameters, and statements run with the store's error for each.

use super::super::row::{FromColumn, SqlRow, SqlValue};
use super::super::sql::Statement;
use super::tls::PostgresTls;
use crate::error::{Error, Result};
use bytes::BytesMut;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::Row;

pub(super) fn pg(context: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    // The database's own message (a constraint, a missing table) names no secret: values are
    // sent as parameters, never printed.
    move |e| {
        Error::store(
            &format!("PostgreSQL: {context}"),
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        )
    }
}

pub(super) fn pool_error(tls: &PostgresTls, e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => tls.connect_error(&e),
        e => Error::store("PostgreSQL: no connection from the pool", e),
    }
}

/// `sql` from the pooled connection's statement cache: parsed and planned by the server once per
/// connection instead of on every call. (For the statements a refresh runs, that parsing cost
/// PostgreSQL more time than running them.)
pub(super) async fn prepared(
    client: &deadpool_postgres::Client,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    client.prepare_cached(sql).await.map_err(pg("prepare"))
}

impl SqlRow for tokio_postgres::Row {
    const INVALID_ROW_HINT: &'static str = "";

    fn read<T: FromColumn>(&self, index: usize) -> Result<T> {
        self.try_get(index).map_err(pg("read a row"))
    }

    fn generation(&self, index: usize) -> Result<u32> {
        Ok(self.try_get::<_, i32>(index).map_err(pg("read a row"))? as u32)
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Each value as its Rust type would be sent; an integer for an `integer` column (a key
/// generation) goes as 32 bits.
impl ToSql for SqlValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            SqlValue::Int(v) => v.to_sql(ty, out),
            SqlValue::Text(s) => s.to_sql(ty, out),
            SqlValue::Blob(b) => b.to_sql(ty, out),
        }
    }

    /// Any type: which ones a value takes depends on its variant, checked in `to_sql_checked`.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, BoxError> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql_checked(ty, out),
            SqlValue::Int(v) => v.to_sql_checked(ty, out),
            SqlValue::Text(s) => s.to_sql_checked(ty, out),
            SqlValue::Blob(b) => b.to_sql_checked(ty, out),
        }
    }
}

/// A statement's values as tokio-postgres takes them.
pub(super) fn params(statement: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    statement
        .values
        .iter()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect()
}

/// Runs `statement`; returns how many rows it changed. `what` names it in an error.
pub(super) async fn execute(
    client: &impl GenericClient,
    statement: &Statement,
    what: &str,
) -> Result<u64> {
    client
        .execute(&statement.sql, &params(statement))
        .await
        .map_err(pg(what))
}

pub(super) async fn query(
    client: &impl GenericClient,
    statement: &Statement,
    what: &str,
) -> Result<Vec<Row>> {
    client
        .query(&statement.sql, &params(statement))
        .await
        .map_err(pg(what))
}

pub(super) async fn query_one(
    client: &impl GenericClient,
    statement: &Statement,
    what: &str,
) -> Result<Row> {
    client
        .query_one(&statement.sql, &params(statement))
        .await
        .map_err(pg(what))
}

pub(super) async fn query_opt(
    client: &impl GenericClient,
    statement: &Statement,
    what: &str,
) -> Result<Option<Row>> {
    client
        .query_opt(&statement.sql, &params(statement))
        .await
        .map_err(pg(what))
}

/// [`execute`] through the connection's statement cache ([`prepared`]).
pub(super) async fn execute_cached(
    client: &deadpool_postgres::Client,
    statement: &Statement,
    what: &str,
) -> Result<u64> {
    let prepared = prepared(client, &statement.sql).await?;
    client
        .execute(&prepared, &params(statement))
        .await
        .map_err(pg(what))
}

/// [`query_opt`] through the connection's statement cache ([`prepared`]).
pub(super) async fn query_opt_cached(
    client: &deadpool_postgres::Client,
    statement: &Statement,
    what: &str,
) -> Result<Option<Row>> {
    let prepared = prepared(client, &statement.sql).await?;
    client
        .query_opt(&prepared, &params(statement))
        .await
        .map_err(pg(what))
}
