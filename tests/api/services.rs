//! Backend services: the `verify` module against a real server, introspection, the
//! revocation feed, key rotation and every signing algorithm.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera::tokens::access::AccessTokens;
use tessera::verify::{Verifier, VerifierConfig, VerifyError};

use crate::both_stores;
use crate::helpers::{
    Backend, ISSUER, TestApp, fresh_database, json, s, spawn_app, spawn_app_with, spawn_instance,
};

both_stores!(
    verifier_accepts_good_tokens_and_rejects_bad_ones,
    verifier_learns_revocations_from_the_stream,
    verifier_survives_key_rotation,
    introspection_needs_a_confidential_client_and_tracks_sessions,
    revocation_feed_pages_by_cursor,
    concurrent_revocations_all_reach_the_stream,
);

async fn concurrent_revocations_all_reach_the_stream(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_LOGIN_THROTTLE", "off")]).await;
    let (id, secret) = service_client(&app).await;
    let verifier = Verifier::new(verifier_config(&app)).await.unwrap();
    let _feed = verifier.subscribe_revocations(&id, &secret);
    let mut tokens = Vec::new();
    for _ in 0..24 {
        tokens.push(s(&app.user_with_session().await.1, "access_token"));
    }
    // All at once: their feed entries commit in some order; none may be skipped.
    let logouts: Vec<_> = tokens
        .iter()
        .map(|t| {
            let (client, url, t) = (app.client.clone(), app.url("/v1/logout"), t.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(t)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for l in logouts {
        assert_eq!(l.await.unwrap(), StatusCode::NO_CONTENT);
    }
    let all = eventually(Duration::from_secs(10), || {
        tokens
            .iter()
            .all(|t| verifier.verify_cached(t) == Err(VerifyError::Revoked))
    })
    .await;
    assert!(all.is_some(), "every revocation reached the verifier");
}

pub async fn service_client(app: &TestApp) -> (String, String) {
    let client = app
        .state
        .auth
        .create_client("billing", true, tessera::http::extract::now())
        .await
        .unwrap();
    (client.client_id, client.client_secret.unwrap())
}

fn verifier_config(app: &TestApp) -> VerifierConfig {
    VerifierConfig {
        base_url: app.base.clone(),
        ..VerifierConfig::new(ISSUER, ISSUER)
    }
}

/// Waits (bounded) until `f` holds; returns how long it took.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn reencode(
    token: &str,
    header: impl FnOnce(&mut Value),
    claims: impl FnOnce(&mut Value),
) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mut c: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    header(&mut h);
    claims(&mut c);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(h.to_string()),
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    )
}

async fn verifier_accepts_good_tokens_and_rejects_bad_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let verifier = Verifier::new(verifier_config(&app)).await.unwrap();
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "access_token");
    let claims = verifier.verify(&token).await.unwrap();
    let (_, me) = app.get("/v1/me", &token).await;
    assert_eq!(claims.sub.to_string(), s(&me, "id"));
    assert_eq!(claims.sid.to_string(), s(&me, "session_id"));

    let keys = app.state.auth.keys();
    let now = tessera::http::extract::now();
    let mint = |iss: &str, aud: &str, at: i64| {
        let m = AccessTokens::new(iss, aud, 900);
        m.sign(
            &keys,
            &m.claims(claims.sub, claims.sid, "app", "", vec![], at),
        )
    };
    assert_eq!(
        verifier.verify(&mint(ISSUER, ISSUER, now - 3600)).await,
        Err(VerifyError::Expired)
    );
    assert_eq!(
        verifier
            .verify(&mint(ISSUER, "https://other.example", now))
            .await,
        Err(VerifyError::Invalid)
    );
    assert_eq!(
        verifier
            .verify(&mint("https://evil.example", ISSUER, now))
            .await,
        Err(VerifyError::Invalid)
    );
    assert!(
        verifier.verify(&mint(ISSUER, ISSUER, now)).await.is_ok(),
        "control"
    );

    let tampered = reencode(&token, |_| {}, |c| c["roles"] = json!(["admin"]));
    assert_eq!(verifier.verify(&tampered).await, Err(VerifyError::Invalid));
    let wrong_typ = reencode(&token, |h| h["typ"] = json!("JWT"), |_| {});
    assert_eq!(
        verifier.verify(&wrong_typ).await,
        Err(VerifyError::WrongType)
    );
    let none = reencode(&token, |h| h["alg"] = json!("none"), |_| {});
    let none = format!("{}.", none.rsplit_once('.').unwrap().0);
    assert!(verifier.verify(&none).await.is_err(), "alg none");

    // HS256 keyed with the published public key (algorithm confusion).
    let set: JwkSet = app.fetch("/.well-known/jwks.json").await;
    let x = serde_json::to_value(&set.keys[0]).unwrap()["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = jsonwebtoken::Header {
        alg: Algorithm::HS256,
        typ: Some("at+jwt".into()),
        kid: set.keys[0].common.key_id.clone(),
        ..jsonwebtoken::Header::default()
    };
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let confused = jsonwebtoken::encode(
        &header,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(verifier.verify(&confused).await, Err(VerifyError::Invalid));

    let unknown = reencode(&token, |h| h["kid"] = json!("no-such-key"), |_| {});
    assert_eq!(
        verifier.verify(&unknown).await,
        Err(VerifyError::UnknownKey),
        "still unknown after a refetch"
    );
    assert_eq!(
        verifier.verify(&"a".repeat(5000)).await,
        Err(VerifyError::TooLarge)
    );
    assert_eq!(
        verifier.verify("not-a-jwt").await,
        Err(VerifyError::Malformed)
    );

    // The axum extractor: 401 with the RFC 6750 challenge, claims for a good token.
    let service = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|user: tessera::verify::Authenticated| async move {
                user.0.sub.to_string()
            }),
        )
        .with_state(verifier.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, service).await });
    let url = format!("http://{addr}/hello");
    let ok = app
        .client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), claims.sub.to_string());
    let bad = app
        .client
        .get(&url)
        .bearer_auth(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(
        bad.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    assert_eq!(
        app.client.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn verifier_learns_revocations_from_the_stream(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret) = service_client(&app).await;
    let verifier = Verifier::new(verifier_config(&app)).await.unwrap();
    let _feed = verifier.subscribe_revocations(&id, &secret);
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "access_token");
    assert!(verifier.verify(&token).await.is_ok());

    assert_eq!(app.logout(&token).await, StatusCode::NO_CONTENT);
    let took = eventually(Duration::from_secs(5), || {
        verifier.verify_cached(&token) == Err(VerifyError::Revoked)
    })
    .await;
    assert!(took.is_some(), "the verifier learned the revocation");
    // The token itself is still unexpired: only the feed makes it fail.
    let other = Verifier::new(verifier_config(&app)).await.unwrap();
    assert!(
        other.verify(&token).await.is_ok(),
        "a verifier without the feed still accepts it"
    );
}

async fn verifier_survives_key_rotation(backend: Backend) {
    // Short lifetimes so the rotation's publication lead passes in about 3 s.
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_JWKS_MAX_AGE_SECS", "1"),
            ("TESSERA_KEY_RELOAD_SECS", "1"),
        ],
    )
    .await;
    let verifier = Verifier::new(verifier_config(&app)).await.unwrap();
    let first_kid = app.state.auth.keys().active_kid().to_owned();
    // The login (an argon2 run, slow on a loaded machine) before the rotation: after it
    // only refreshes run, so the old key's tokens are seen before the new key signs.
    let (_, mut tokens) = app.user_with_session().await;
    let mut kids = std::collections::HashSet::new();
    let login_token = s(&tokens, "access_token");
    let login_kid = jsonwebtoken::decode_header(&login_token)
        .unwrap()
        .kid
        .unwrap();
    assert_eq!(login_kid, first_kid);
    assert!(verifier.verify(&login_token).await.is_ok());
    kids.insert(login_kid);
    assert!(
        app.state
            .auth
            .rotate_keys(tessera::http::extract::now(), true)
            .await
            .unwrap()
    );
    assert_eq!(
        app.state.auth.keys().active_kid(),
        first_kid,
        "published first, not signing yet"
    );

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && kids.len() < 2 {
        let (status, next) = app.refresh(&s(&tokens, "refresh_token")).await;
        assert_eq!(status, StatusCode::OK);
        tokens = next;
        let token = s(&tokens, "access_token");
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert!(
            verifier.verify(&token).await.is_ok(),
            "no failed request across the rotation (kid {kid})"
        );
        kids.insert(kid);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        kids.len(),
        2,
        "tokens were signed by the old key, then by the new one"
    );
    let jwks: Value = app.fetch("/.well-known/jwks.json").await;
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "the old key stays published while its tokens live"
    );
}

async fn introspect(
    app: &TestApp,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = app.client.post(app.url("/oauth/introspect")).form(form);
    if let Some((id, secret)) = auth {
        request = request.basic_auth(id, Some(secret));
    }
    json(request.send().await.unwrap()).await
}

async fn introspection_needs_a_confidential_client_and_tracks_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret) = service_client(&app).await;
    let (email, tokens) = app.user_with_session().await;
    let (access, refresh) = (s(&tokens, "access_token"), s(&tokens, "refresh_token"));

    let (status, body) = introspect(&app, None, &[("token", &access)]).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    assert_eq!(
        introspect(&app, Some((&id, "tsc_wrong")), &[("token", &access)])
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, Some(("app", "anything")), &[("token", &access)])
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let (status, active) = introspect(&app, Some((&id, &secret)), &[("token", &access)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active["active"], true);
    assert_eq!(active["token_type"], "Bearer");
    assert_eq!(active["username"], email.as_str());
    for claim in [
        "sub",
        "sid",
        "exp",
        "iat",
        "scope",
        "client_id",
        "iss",
        "aud",
        "jti",
    ] {
        assert!(active.get(claim).is_some(), "{claim}");
    }
    // client_secret_post works too. A refresh token is answered only to its own
    // client (the app's, here: to a service, it is inactive; tests/api/hardening.rs).
    let (_, r) = introspect(
        &app,
        None,
        &[
            ("token", &refresh),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(r, json!({"active": false}));
    let (_, by_post) = introspect(
        &app,
        None,
        &[
            ("token", &access),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(by_post["sid"], active["sid"]);

    let (_, garbage) = introspect(&app, Some((&id, &secret)), &[("token", "garbage")]).await;
    assert_eq!(garbage, json!({"active": false}));
    let (status, _) = introspect(&app, Some((&id, &secret)), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A rotated refresh token is inactive; its successor too, to a service (to its own
    // client it is active: tests/api/hardening.rs follows a refresh token's life).
    let (_, next) = app.refresh(&refresh).await;
    assert_eq!(
        introspect(&app, Some((&id, &secret)), &[("token", &refresh)])
            .await
            .1,
        json!({"active": false})
    );
    assert_eq!(
        introspect(
            &app,
            Some((&id, &secret)),
            &[("token", &s(&next, "refresh_token"))]
        )
        .await
        .1["active"],
        false
    );

    // Revoking the session makes its still-unexpired access token inactive at once.
    assert_eq!(app.logout(&access).await, StatusCode::NO_CONTENT);
    assert_eq!(
        introspect(&app, Some((&id, &secret)), &[("token", &access)])
            .await
            .1,
        json!({"active": false})
    );
    assert_eq!(
        introspect(
            &app,
            Some((&id, &secret)),
            &[("token", &s(&next, "refresh_token"))]
        )
        .await
        .1,
        json!({"active": false})
    );
}

async fn revocation_feed_pages_by_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret) = service_client(&app).await;
    let feed = |after: &str| {
        app.client
            .get(app.url(&format!("/v1/revocations?after={after}")))
            .basic_auth(&id, Some(&secret))
            .send()
    };
    assert_eq!(
        app.client
            .get(app.url("/v1/revocations"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, empty) = json(feed("").await.unwrap()).await;
    assert_eq!(empty["revocations"], json!([]));

    let before_a = tessera::http::extract::now();
    let (_, a) = app.user_with_session().await;
    let (_, b) = app.user_with_session().await;
    for t in [&a, &b] {
        assert_eq!(
            app.logout(&s(t, "access_token")).await,
            StatusCode::NO_CONTENT
        );
    }
    let (status, page) = json(feed("").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let entries = page["revocations"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let (_, me_a) = app.get("/v1/me", &s(&a, "access_token")).await;
    assert_eq!(me_a["error"], "invalid_token", "logged out");
    let exp_a = entries[0]["expires_at"].as_i64().unwrap();
    assert!(
        (before_a..=tessera::http::extract::now())
            .contains(&(exp_a - app.state.auth.token_tail_secs())),
        "until its last access token expires"
    );
    let (_, rest) = json(feed(&s(&page, "cursor")).await.unwrap()).await;
    assert_eq!(rest["revocations"], json!([]));
    assert_eq!(rest["cursor"], page["cursor"]);
    assert_eq!(
        feed("nope").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_on_one_instance_reaches_a_verifier_of_another() {
    let url = fresh_database(Backend::Postgres).await;
    let secret_key = tessera::tokens::keys::SecretKey::generate().to_base64();
    let a = spawn_instance(&url, &secret_key, &[]).await;
    let b = spawn_instance(&url, &secret_key, &[]).await;
    let (id, secret) = service_client(&a).await;
    let verifier = Verifier::new(verifier_config(&a)).await.unwrap();
    let _feed = verifier.subscribe_revocations(&id, &secret);

    let (_, admin) = b.admin_session().await;
    let (_, tokens) = a.user_with_session().await;
    let token = s(&tokens, "access_token");
    assert!(verifier.verify(&token).await.is_ok());
    let sid = verifier.verify(&token).await.unwrap().sid;
    let (status, _) = b
        .delete(
            &format!("/v1/admin/sessions/{sid}"),
            &s(&admin, "access_token"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let took = eventually(Duration::from_secs(5), || {
        verifier.verify_cached(&token) == Err(VerifyError::Revoked)
    })
    .await;
    assert!(
        took.is_some(),
        "revoked on B, rejected by a verifier following A"
    );

    // A key rotated through B is served by A once A re-reads its keys.
    assert!(
        b.state
            .auth
            .rotate_keys(tessera::http::extract::now(), true)
            .await
            .unwrap()
    );
    let new_kid = b
        .state
        .auth
        .store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|k| k.created_at)
        .unwrap()
        .kid;
    a.state
        .auth
        .reload_keys(tessera::http::extract::now())
        .await
        .unwrap();
    let jwks = a.text("/.well-known/jwks.json").await;
    assert!(jwks.contains(&new_kid));
}

/// Each algorithm end to end: signed by the server, verified by the module and, for the
/// asymmetric ones, by plain `jsonwebtoken` with the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_signing_algorithm_end_to_end() {
    let shared = "an HS256 secret of at least thirty-two bytes";
    for alg in ["EdDSA", "ES256", "RS256", "HS256"] {
        let extra: Vec<(&str, &str)> = if alg == "HS256" {
            vec![
                ("TESSERA_SIGNING_ALG", alg),
                ("TESSERA_ALLOW_HS256", "true"),
                ("TESSERA_HS256_SECRET", shared),
            ]
        } else {
            vec![("TESSERA_SIGNING_ALG", alg)]
        };
        let app = spawn_app_with(Backend::Sqlite, &extra).await;
        let (_, tokens) = app.user_with_session().await;
        let token = s(&tokens, "access_token");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg);

        let mut config = verifier_config(&app);
        if alg == "HS256" {
            config.hs256_secret = Some(shared.as_bytes().to_vec());
        }
        let verifier = Verifier::new(config).await.unwrap();
        assert!(
            verifier.verify(&token).await.is_ok(),
            "{alg} with the verify module"
        );
        assert_eq!(
            app.get("/v1/me", &token).await.0,
            StatusCode::OK,
            "{alg} on the server"
        );

        let set: JwkSet = app.fetch("/.well-known/jwks.json").await;
        let kid = header.kid.unwrap();
        if alg == "HS256" {
            assert!(
                set.find(&kid).is_none(),
                "no JWKS entry for a shared secret"
            );
            let without_secret = Verifier::new(verifier_config(&app)).await.unwrap();
            assert_eq!(
                without_secret.verify(&token).await,
                Err(VerifyError::UnknownKey)
            );
            continue;
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        let key = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
        assert!(
            jsonwebtoken::decode::<Value>(&token, &key, &validation).is_ok(),
            "{alg} with the JWKS alone"
        );
    }
}

#[test]
fn hs256_needs_an_explicit_opt_in_and_a_long_secret() {
    let load = |pairs: &[(&str, &str)]| {
        tessera::config::Config::load(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    assert!(load(&[("TESSERA_SIGNING_ALG", "HS256")]).contains("TESSERA_ALLOW_HS256"));
    assert!(
        load(&[
            ("TESSERA_SIGNING_ALG", "HS256"),
            ("TESSERA_ALLOW_HS256", "true"),
            ("TESSERA_HS256_SECRET", "short")
        ])
        .contains("TESSERA_HS256_SECRET")
    );
    assert!(load(&[("TESSERA_SIGNING_ALG", "PS512")]).contains("TESSERA_SIGNING_ALG"));
}
