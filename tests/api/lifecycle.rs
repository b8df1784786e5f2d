//! Data lifecycle: the janitor keeps tables bounded by what is live, and never deletes
//! what a rule still needs. Time is a parameter: a month passes in the loop, not on
//! the clock.

use reqwest::StatusCode;
use tessera::auth::{Caller, RequestClient};
use tessera::http::extract::now;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, s, spawn_app_with};
use crate::invariants::count;

both_stores!(
    a_simulated_month_of_refreshes_leaves_bounded_rows,
    ended_sessions_feed_rows_and_old_audit_events_are_pruned,
);

const TOKENS_OF: &str = "SELECT COUNT(*) FROM refresh_tokens WHERE session_id = $1";
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

async fn lifecycle_app(backend: Backend) -> TestApp {
    spawn_app_with(
        backend,
        &[
            ("TESSERA_REFRESH_TOKEN_TTL_SECS", "86400"),
            ("TESSERA_SESSION_MAX_AGE_SECS", "3024000"),
            ("TESSERA_PRUNE_AFTER_SECS", "86400"),
            // The test runs the janitor itself, at simulated times.
            ("TESSERA_JANITOR_INTERVAL_SECS", "0"),
            ("TESSERA_LOGIN_THROTTLE", "off"),
        ],
    )
    .await
}

async fn a_simulated_month_of_refreshes_leaves_bounded_rows(backend: Backend) {
    let app = lifecycle_app(backend).await;
    let auth = &app.state.auth;
    let (_, tokens) = app.user_with_session().await;
    let session_id = s(
        &app.get("/v1/me", &s(&tokens, "access_token")).await.1,
        "session_id",
    )
    .parse()
    .unwrap();
    let caller = Caller::default();
    let start = now();
    let mut token = s(&tokens, "refresh_token");
    // Refresh every 15 minutes for 30 days; the janitor runs every simulated hour.
    let mut spent = Vec::new();
    let mut most = 0;
    let mut t = start;
    for step in 1..=30 * 96 {
        t = start + step * 900;
        let grant = auth
            .refresh(&token, &RequestClient::Default, &caller, t)
            .await
            .unwrap_or_else(|e| panic!("refresh at step {step}: {e}"));
        spent.push((
            t,
            std::mem::replace(&mut token, grant.refresh_token.expose().to_owned()),
        ));
        if step % 4 == 0 {
            auth.prune(t).await.unwrap();
            most = most.max(count(&app, TOKENS_OF, session_id).await);
        }
    }
    // One refresh-token lifetime of tokens plus the margin, at four an hour, plus the
    // newest: the bound does not grow with the session's age.
    let bound = (DAY + DAY) / 900 + 1;
    println!(
        "{backend:?}: 2,880 refreshes over 30 simulated days; at most {most} token rows for the session (bound {bound}; without the janitor: 2,881)"
    );
    assert!(
        most <= bound,
        "{most} token rows for one session (bound {bound})"
    );
    assert!(most > 96, "tokens are kept for their lifetime ({most})");

    // A token spent 12 hours ago is still inside its lifetime: its copy is reuse.
    let (_, twelve_hours_ago) = spent[spent.len() - 48].clone();
    let err = auth
        .refresh(&twelve_hours_ago, &RequestClient::Default, &caller, t + 60)
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
    auth.prune(t).await.unwrap();
    assert!(auth.store.session(session_id).await.unwrap().is_some());
    assert_eq!(count(&app, TOKENS_OF, session_id).await, 1);
    assert_eq!(
        auth.store.revocations_after(0, t, 10).await.unwrap().len(),
        1
    );

    // A day and a bit later the session, its token and its feed row are gone.
    let later = t + DAY + HOUR + 1;
    let pruned = auth.prune(later).await.unwrap();
    assert_eq!(pruned["sessions"], 1, "{pruned:?}");
    assert!(auth.store.session(session_id).await.unwrap().is_none());
    assert_eq!(count(&app, TOKENS_OF, session_id).await, 0);
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
    let pruned = auth.prune(later + 91 * DAY).await.unwrap();
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
