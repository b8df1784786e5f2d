//! Invariants of the session rows, read straight from the database after the races.

use crate::helpers::TestApp;

/// A session without a current token, or one past generation 1 that lost what the
/// grace window needs of its previous token (its hash and the sealed successor).
const NO_TOKEN: &str = "SELECT COUNT(*) FROM sessions WHERE generation < 1 OR token_hash IS NULL";
const LOST_SUCCESSOR: &str = "SELECT COUNT(*) FROM sessions \
     WHERE generation > 1 AND (prev_hash IS NULL OR prev_sealed IS NULL OR prev_hash = token_hash)";
/// Refreshes write no token rows (the old table is read only for legacy tokens).
const TOKEN_ROWS: &str = "SELECT COUNT(*) FROM refresh_tokens";

/// Every session has its current token; none past its first rotation lacks its
/// previous token's hash or sealed successor; no refresh wrote a row.
pub async fn check(app: &TestApp) {
    let counts: Vec<i64> = if app.database_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        let mut v = Vec::new();
        for q in [NO_TOKEN, LOST_SUCCESSOR, TOKEN_ROWS] {
            v.push(sqlx::query_scalar(q).fetch_one(&pool).await.unwrap());
        }
        v
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        let mut v = Vec::new();
        for q in [NO_TOKEN, LOST_SUCCESSOR, TOKEN_ROWS] {
            v.push(sqlx::query_scalar(q).fetch_one(&pool).await.unwrap());
        }
        v
    };
    assert_eq!(counts[0], 0, "a session without its current refresh token");
    assert_eq!(
        counts[1], 0,
        "a rotated session that lost its previous token"
    );
    assert_eq!(counts[2], 0, "a refresh wrote a token row");
}

/// A `SELECT COUNT(*) ... WHERE ... = $1` straight from the database.
pub async fn count(app: &TestApp, sql: &str, id: uuid::Uuid) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if app.database_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

/// A `SELECT COUNT(*)` with no parameters, straight from the database.
pub async fn count_all(app: &TestApp, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if app.database_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    }
}
