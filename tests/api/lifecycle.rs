//! Data lifecycle: the janitor keeps tables bounded by what is live, and never deletes
//! what a rule still needs. Time is a parameter: a month passes in the loop, not on
//! the clock.

use reqwest::StatusCode;
use tessera::auth::{Caller, RequestClient};
use tessera::http::extract::now;

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, s, spawn_app_with};
use crate::invariants::count;

both_stores!(
    a_simulated_month_of_weekly_sessions_leaves_bounded_rows,
    ended_sessions_feed_rows_and_old_audit_events_are_pruned,
);

/// The rows that hold a session's refresh tokens: its own row (and, for a session
/// opened before sessions were one row, its legacy token rows).
const ROWS_OF: &str = "SELECT (SELECT COUNT(*) FROM sessions WHERE id = $1) \
     + (SELECT COUNT(*) FROM refresh_tokens WHERE session_id = $1)";
const ROWS_OF_USER: &str = "SELECT (SELECT COUNT(*) FROM sessions WHERE user_id = $1) \
     + (SELECT COUNT(*) FROM refresh_tokens AS t \
        JOIN sessions AS s ON s.id = t.session_id WHERE s.user_id = $1)";
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
/// A refresh every 15 minutes.
const STEP: i64 = 900;
const WEEK_OF_STEPS: i64 = 7 * DAY / STEP;

async fn lifecycle_app(backend: Backend) -> TestApp {
    spawn_app_with(
        backend,
        &[
            ("TESSERA_REFRESH_TOKEN_TTL_SECS", "86400"),
            // A session lasts a week: the app logs in again every week.
            ("TESSERA_SESSION_MAX_AGE_SECS", "604800"),
            ("TESSERA_PRUNE_AFTER_SECS", "86400"),
            // The test runs the janitor itself, at simulated times.
            ("TESSERA_JANITOR_INTERVAL_SECS", "0"),
            ("TESSERA_LOGIN_THROTTLE", "off"),
        ],
    )
    .await
}

/// 27 simulated days of an app that refreshes every 15 minutes and logs in again every
/// week when its session ends; the janitor runs every simulated hour. The user's token
/// rows stay bounded by the live session's row plus the ended one's, kept a day, and a
/// token spent five days earlier in the live session (long past its own expiry) is
/// still caught as reuse.
async fn a_simulated_month_of_weekly_sessions_leaves_bounded_rows(backend: Backend) {
    let app = lifecycle_app(backend).await;
    let auth = &app.state.auth;
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let (_, user) = app.signup(&email, PASSWORD).await;
    let user_id = s(&user, "id").parse().unwrap();
    let caller = Caller::default();
    // Ahead of the clock: a rotation records the later of `now` and the database's clock.
    let start = now() + 1000;
    let steps = 27 * DAY / STEP;
    let (mut token, mut spent, mut most) = (String::new(), Vec::new(), 0);
    let mut t = start;
    for step in 0..steps {
        t = start + step * STEP;
        if step % WEEK_OF_STEPS == 0 {
            let grant = auth
                .login(
                    &email,
                    PASSWORD.into(),
                    &RequestClient::Default,
                    None,
                    None,
                    &caller,
                    t,
                )
                .await
                .unwrap_or_else(|e| panic!("login at step {step}: {e}"));
            token = grant.refresh_token.expose().to_owned();
        }
        let grant = auth
            .refresh(&token, &RequestClient::Default, &caller, t)
            .await
            .unwrap_or_else(|e| panic!("refresh at step {step}: {e}"));
        spent.push((
            t,
            std::mem::replace(&mut token, grant.refresh_token.expose().to_owned()),
        ));
        if step % 4 == 3 {
            auth.prune(t).await;
            most = most.max(count(&app, ROWS_OF_USER, user_id).await);
        }
    }
    println!(
        "{backend:?}: {steps} refreshes and 4 logins over 27 simulated days: at most {most} token rows for the user"
    );
    // The live session's row, plus the previous session's until a day after it ended.
    assert!(most <= 2, "{most} token rows");

    // Five days ago, in the live session: expired four days ago, kept because the
    // session lives. Its copy is the signal of a stolen chain: reuse, session revoked.
    let (_, five_days_ago) = spent[spent.len() - (5 * DAY / STEP) as usize].clone();
    let err = auth
        .refresh(&five_days_ago, &RequestClient::Default, &caller, t + 60)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("already used"), "{err}");
    assert_eq!(
        auth.refresh(&token, &RequestClient::Default, &caller, t + 61)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        "the session has been revoked",
        "reuse detection ended the session"
    );
}

async fn ended_sessions_feed_rows_and_old_audit_events_are_pruned(backend: Backend) {
    let app = lifecycle_app(backend).await;
    let auth = &app.state.auth;
    let (_, tokens) = app.user_with_session().await;
    let access = s(&tokens, "access_token");
    let session_id = s(&app.get("/v1/me", &access).await.1, "session_id")
        .parse()
        .unwrap();
    assert_eq!(app.logout(&access).await, StatusCode::NO_CONTENT);
    let t = now();

    // Right after: nothing of the ended session is gone (its access token may still be
    // presented and must be reported revoked).
    auth.prune(t).await;
    assert!(auth.store.session(session_id).await.unwrap().is_some());
    assert_eq!(count(&app, ROWS_OF, session_id).await, 1);
    assert_eq!(
        auth.store.revocations_after(0, t, 10).await.unwrap().len(),
        1
    );

    // A day and a bit later the session, its token and its feed row are gone.
    let later = t + DAY + HOUR + 1;
    let pruned = auth.prune(later).await.deleted;
    assert_eq!(pruned["sessions"], 1, "{pruned:?}");
    assert_eq!(pruned["refresh_tokens"], 0, "no token rows: {pruned:?}");
    assert!(auth.store.session(session_id).await.unwrap().is_none());
    assert_eq!(count(&app, ROWS_OF, session_id).await, 0);
    assert_eq!(pruned["revocations"], 1, "{pruned:?}");
    assert!(
        auth.store
            .audit_events(None, None, None, 100)
            .await
            .unwrap()
            .len()
            >= 2,
        "audit events are kept for their retention"
    );
    // After the audit retention, they go too, in batches.
    let pruned = auth.prune(later + 91 * DAY).await.deleted;
    assert!(pruned["audit_events"] >= 2, "{pruned:?}");
    assert!(
        auth.store
            .audit_events(None, None, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let metrics = app.text("/metrics").await;
    assert!(
        metrics.contains("tessera_pruned_rows_total{table=\"sessions\"} 1"),
        "{metrics}"
    );
}
