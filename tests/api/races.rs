//! Races at scale: many sessions, each of whose refresh token is raced by several
//! clients at once across two instances sharing one PostgreSQL database (one instance
//! on SQLite), then the chains go on. Afterwards the invariants are read straight from
//! the database. `TESSERA_RACE_SESSIONS` sets the size (CI runs 100 sessions; the
//! full run is 1,000: `TESSERA_RACE_SESSIONS=1000 cargo test --test api races`).

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, json, s, spawn_app_with, spawn_instance};
use crate::invariants;

both_stores!(racing_clients_at_scale_keep_every_invariant);

const RACERS: usize = 10;
/// Races per session: the first token, then two successors.
const ROUNDS: usize = 3;
/// Sessions raced at once.
const WAVE: usize = 25;
/// Grace replays per rotated token (the default).
const MAX_REPLAYS: usize = 3;

fn sessions() -> usize {
    std::env::var("TESSERA_RACE_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

/// Opens `n` sessions of one user straight through the store (a login's argon2 hash
/// is not what this test is about); their first refresh tokens.
async fn open_sessions(app: &TestApp, n: usize) -> Vec<String> {
    let (_, tokens) = app.user_with_session().await;
    let (_, me) = app.get("/v1/me", &s(&tokens, "access_token")).await;
    let user_id = s(&me, "id").parse().unwrap();
    let now = tessera::http::extract::now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let session = TestApp::new_session(user_id, now);
        let token = app.state.auth.first_refresh_token(session.id);
        let event = tessera::store::AuditEvent {
            at: now,
            action: "login".into(),
            ..Default::default()
        };
        assert!(
            app.state
                .auth
                .store
                .create_session(&session, token.hash(), now + 86_400, &event)
                .await
                .unwrap()
        );
        out.push(token.expose().to_owned());
    }
    out
}

/// `RACERS` clients present `token` at once, alternating between the instances.
async fn race(bases: &[String], client: &reqwest::Client, token: &str) -> Vec<(StatusCode, Value)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let url = format!("{}/oauth/token", bases[i % bases.len()]);
            let (client, token, barrier) = (client.clone(), token.to_owned(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let form = [("grant_type", "refresh_token"), ("refresh_token", &token)];
                json(client.post(url).form(&form).send().await.unwrap()).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(RACERS);
    for r in racers {
        out.push(r.await.unwrap());
    }
    out
}

/// Checks one race: one successor shared by every 200 (one rotation plus at most the
/// capped replays), `invalid_grant` for the rest, no 5xx. Returns the successor.
fn judge(results: &[(StatusCode, Value)]) -> String {
    let mut successors = HashSet::new();
    let mut ok = 0;
    for (status, body) in results {
        assert!(!status.is_server_error(), "{status} {body}");
        if *status == StatusCode::OK {
            ok += 1;
            successors.insert(s(body, "refresh_token"));
        } else {
            assert_eq!(
                (*status, s(body, "error")),
                (StatusCode::BAD_REQUEST, "invalid_grant".to_owned()),
                "{body}"
            );
        }
    }
    assert_eq!(
        ok,
        (1 + MAX_REPLAYS).min(RACERS),
        "one rotation and exactly the capped replays succeed"
    );
    assert_eq!(successors.len(), 1, "one successor per token");
    successors.into_iter().next().unwrap_or_default()
}

/// 250 requests at once per wave: on a loaded machine (SQLite's one writer above all) a
/// wave can outlast the default 5 s database waits or the 10 s grace window, which would
/// fail the race for the machine's sake. The rules under test do not depend on either.
const ROOM: [(&str, &str); 4] = [
    ("TESSERA_DATABASE_MAX_CONNECTIONS", "16"),
    ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "15000"),
    ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "10000"),
    ("TESSERA_REFRESH_GRACE_SECS", "60"),
];

async fn racing_clients_at_scale_keep_every_invariant(backend: Backend) {
    let n = sessions();
    let app = spawn_app_with(backend, &ROOM).await;
    let mut bases = vec![app.base.clone()];
    let other = match backend {
        Backend::Postgres => Some(spawn_instance(&app.database_url, &app.secret_key, &ROOM).await),
        Backend::Sqlite => None,
    };
    if let Some(other) = &other {
        bases.push(other.base.clone());
    }
    let client = reqwest::Client::new();
    let mut tokens = open_sessions(&app, n).await;
    let (mut requests, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let mut next = Vec::with_capacity(n);
        for wave in tokens.chunks(WAVE) {
            let races =
                futures_util::future::join_all(wave.iter().map(|t| race(&bases, &client, t))).await;
            for results in races {
                requests += results.len();
                refused += results
                    .iter()
                    .filter(|(st, _)| *st != StatusCode::OK)
                    .count();
                next.push(judge(&results));
            }
        }
        tokens = next;
    }
    // Every chain's newest token still works: no race revoked a session.
    for wave in tokens.chunks(WAVE) {
        let finals = futures_util::future::join_all(wave.iter().map(|t| {
            let (client, url) = (client.clone(), format!("{}/oauth/token", bases[0]));
            let t = t.clone();
            async move {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t.as_str()),
                ];
                client.post(url).form(&form).send().await.unwrap().status()
            }
        }))
        .await;
        assert!(finals.iter().all(|st| *st == StatusCode::OK), "{finals:?}");
    }
    invariants::check(&app).await;
    // Exactly one successor was issued per spent token: every session moved from its
    // first generation once per round and once for the final refresh.
    let sql = format!(
        "SELECT COUNT(*) FROM sessions WHERE generation = {}",
        ROUNDS + 2
    );
    let rows = invariants::count_all(&app, &sql).await;
    assert_eq!(rows as usize, n, "one successor per token");
    let reuse = app
        .state
        .auth
        .store
        .audit_events(None, Some("refresh_token_reuse"), None, 10)
        .await
        .unwrap();
    assert!(reuse.is_empty(), "a race was judged reuse");
    println!(
        "{backend:?}: {n} sessions x {ROUNDS} races x {RACERS} clients on {} instance(s): \
         {requests} requests, {refused} invalid_grant, 0 5xx, 0 invariant violations",
        bases.len()
    );
}
