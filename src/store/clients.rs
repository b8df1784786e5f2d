//! The clients table, as plain functions shared by both backends (generic over the
//! executor): each client's secret hash and scope allow-list.

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::Client;

fn client_row<R: Row>(row: &R) -> Result<Client, sqlx::Error>
where
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(Client {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        scopes: row.try_get("scopes")?,
        require_dpop: row.try_get("require_dpop")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn find<'c, DB, E>(ex: E, id: &str) -> Result<Option<Client>, sqlx::Error>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> String: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let row = sqlx::query::<DB>(
        "SELECT id, name, secret_hash, scopes, require_dpop, created_at FROM clients WHERE id = $1",
    )
    .bind(id.to_owned())
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(client_row).transpose()
}

/// Every client, oldest first. Clients are registered by operators, so they are few.
pub(super) async fn list<'c, DB, E>(ex: E) -> Result<Vec<Client>, sqlx::Error>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let rows = sqlx::query::<DB>(
        "SELECT id, name, secret_hash, scopes, require_dpop, created_at FROM clients ORDER BY created_at, id",
    )
    .fetch_all(ex)
    .await?;
    rows.iter().map(client_row).collect()
}

pub(super) async fn insert<'c, DB, E>(ex: E, c: &Client) -> Result<(), sqlx::Error>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO clients (id, name, secret_hash, scopes, require_dpop, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(c.id.clone())
    .bind(c.name.clone())
    .bind(c.secret_hash.clone())
    .bind(c.scopes.clone())
    .bind(c.require_dpop)
    .bind(c.created_at)
    .execute(ex)
    .await?;
    Ok(())
}
