//! rusqlite on the store's side: its rows read as [`SqlRow`]s, [`SqlValue`]s bound as its
//! parameters, and statements run through the connection's statement cache.

use crate::error::{Error, Result};
use crate::store::row::{FromColumn, SqlRow, SqlValue};
use crate::store::sql::{Params, Placeholders::Sqlite, Statement};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection};

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::store("SQLite", err)
    }
}

impl SqlRow for rusqlite::Row<'_> {
    const INVALID_ROW_HINT: &'static str = "; was the file edited by hand?";

    fn read<T: FromColumn>(&self, index: usize) -> Result<T> {
        Ok(rusqlite::Row::get(self, index)?)
    }

    fn generation(&self, index: usize) -> Result<u32> {
        Ok(rusqlite::Row::get(self, index)?)
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Int(v) => ValueRef::Integer(*v),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Runs `statement`; returns how many rows it changed.
pub(super) fn execute(conn: &Connection, statement: &Statement) -> Result<usize> {
    Ok(conn
        .prepare_cached(&statement.sql)?
        .execute(params_from_iter(&statement.values))?)
}

/// The rows `statement` returns, each read by `decode`.
pub(super) fn query<T>(
    conn: &Connection,
    statement: &Statement,
    decode: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut prepared = conn.prepare_cached(&statement.sql)?;
    let mut rows = prepared.query(params_from_iter(&statement.values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// The first row `statement` returns, if any, read by `decode`.
pub(super) fn query_opt<T>(
    conn: &Connection,
    statement: &Statement,
    decode: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut prepared = conn.prepare_cached(&statement.sql)?;
    let mut rows = prepared.query(params_from_iter(&statement.values))?;
    rows.next()?.map(decode).transpose()
}

/// A statement without parameters.
pub(super) fn plain(sql: String) -> Statement {
    Params::new(Sqlite).statement(sql)
}
