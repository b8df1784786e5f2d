//! Invariants of the token table, read straight from the database after the races.

use crate::helpers::TestApp;

const TWO_UNSPENT: &str = "SELECT COUNT(*) FROM (SELECT session_id FROM refresh_tokens \
     WHERE spent_at IS NULL GROUP BY session_id HAVING COUNT(*) > 1) AS doubled";
const LOST_SUCCESSOR: &str = "SELECT COUNT(*) FROM refresh_tokens p \
     JOIN sessions s ON s.id = p.session_id \
     LEFT JOIN refresh_tokens c ON c.hash = p.successor_hash \
     WHERE p.spent_at IS NOT NULL AND c.hash IS NULL AND s.revoked_at IS NULL";

/// No session has two unspent tokens; no spent token lacks its successor unless its
/// session was revoked.
pub async fn check(app: &TestApp) {
    let counts: Vec<i64> = if app.database_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        let mut v = Vec::new();
        for q in [TWO_UNSPENT, LOST_SUCCESSOR] {
            v.push(sqlx::query_scalar(q).fetch_one(&pool).await.unwrap());
        }
        v
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        let mut v = Vec::new();
        for q in [TWO_UNSPENT, LOST_SUCCESSOR] {
            v.push(sqlx::query_scalar(q).fetch_one(&pool).await.unwrap());
        }
        v
    };
    assert_eq!(counts[0], 0, "a session with two unspent refresh tokens");
    assert_eq!(counts[1], 0, "a spent token whose successor is missing");
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
