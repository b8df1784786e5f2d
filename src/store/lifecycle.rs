//! Small queries shared by both backends as plain functions generic over the executor:
//! the revocation feed's end and the readiness write.

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

/// The highest feed `seq` so far (0 when empty).
pub(super) async fn revocations_max_seq<'c, DB, E>(ex: E) -> Result<i64, sqlx::Error>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    sqlx::query::<DB>("SELECT COALESCE(MAX(seq), 0) FROM revocations")
        .fetch_one(ex)
        .await?
        .try_get(0)
}

/// The readiness write: one row, upserted, so it commits only where writes commit.
pub(super) async fn readiness_write<'c, DB, E>(ex: E, now: i64) -> Result<(), sqlx::Error>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO readiness_probe (id, at) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}
