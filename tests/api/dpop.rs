//! DPoP (RFC 9449): sender-constrained tokens. A session logged in with a proof is
//! bound to the proof's key; its refresh tokens and access tokens are worthless without
//! that key. Proofs here are made by this file's own signer (p256, ed25519-dalek), not
//! by the server's code; clients/js/e2e has the third-party (jose) interop.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::both_stores;
use crate::helpers::*;
use crate::services::service_client;

const TOKEN_URL: &str = "http://tessera.test/oauth/token";

fn me_url() -> String {
    format!("{ISSUER}/v1/me")
}

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    out
}

fn now() -> i64 {
    tessera::http::extract::now()
}

enum Signer {
    Es256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A client's DPoP key pair, and proofs signed with it.
pub struct DpopKey {
    signer: Signer,
    pub jwk: Value,
}

impl DpopKey {
    pub fn es256() -> Self {
        let key = loop {
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&random32()) {
                break k;
            }
        };
        let point = key.verifying_key().to_sec1_point(false);
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        Self {
            signer: Signer::Es256(key),
            jwk,
        }
    }

    pub fn ed25519() -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(&random32());
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        });
        Self {
            signer: Signer::Ed25519(key),
            jwk,
        }
    }

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::Ed25519(_) => "EdDSA",
        }
    }

    /// RFC 7638: SHA-256 over the required members, in lexicographic order.
    pub fn jkt(&self) -> String {
        let j = &self.jwk;
        let canonical = match self.signer {
            Signer::Es256(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                j["x"].as_str().unwrap(),
                j["y"].as_str().unwrap()
            ),
            Signer::Ed25519(_) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                j["x"].as_str().unwrap()
            ),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A JWS of `header` and `payload`, signed with this key whatever they say.
    pub fn sign(&self, header: &Value, payload: &Value) -> String {
        use p256::ecdsa::signature::Signer as _;
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = match &self.signer {
            Signer::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
            Signer::Ed25519(k) => k.sign(input.as_bytes()).to_bytes().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk})
    }

    pub fn claims(&self, htm: &str, htu: &str) -> Value {
        json!({"jti": Uuid::new_v4().to_string(), "htm": htm, "htu": htu, "iat": now()})
    }

    /// A fresh proof for the token endpoint.
    pub fn token_proof(&self) -> String {
        self.sign(&self.header(), &self.claims("POST", TOKEN_URL))
    }

    /// A fresh proof for a resource request with `access_token`.
    pub fn resource_proof(&self, htm: &str, htu: &str, access_token: &str) -> String {
        let mut claims = self.claims(htm, htu);
        claims["ath"] = URL_SAFE_NO_PAD
            .encode(Sha256::digest(access_token.as_bytes()))
            .into();
        self.sign(&self.header(), &claims)
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    fn www_authenticate(&self) -> Vec<String> {
        self.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    }
}

/// POST /oauth/token with these DPoP headers (none, one, or several).
pub async fn token_with(app: &TestApp, form: &[(&str, &str)], proofs: &[&str]) -> Answer {
    let mut request = app.client.post(app.url("/oauth/token")).form(form);
    for p in proofs {
        request = request.header("DPoP", *p);
    }
    answer(request.send().await.unwrap()).await
}

async fn login_with(app: &TestApp, email: &str, proof: Option<&str>) -> Answer {
    let form = [
        ("grant_type", "password"),
        ("username", email),
        ("password", PASSWORD),
    ];
    token_with(app, &form, proof.as_slice()).await
}

async fn refresh_with(app: &TestApp, refresh_token: &str, proof: Option<&str>) -> Answer {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    token_with(app, &form, proof.as_slice()).await
}

/// GET /v1/me with `Authorization: <scheme> <token>` and these DPoP headers.
async fn me_with(app: &TestApp, scheme: &str, token: &str, proofs: &[&str]) -> Answer {
    let mut request = app
        .client
        .get(app.url("/v1/me"))
        .header("Authorization", format!("{scheme} {token}"));
    for p in proofs {
        request = request.header("DPoP", *p);
    }
    answer(request.send().await.unwrap()).await
}

async fn new_user(app: &TestApp) -> String {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    email
}

/// Signs up and logs in with a proof by `key`: the token response.
pub async fn bound_session(app: &TestApp, key: &DpopKey) -> Value {
    let email = new_user(app).await;
    let a = login_with(app, &email, Some(&key.token_proof())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body
}

fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The details of the audit events with this action.
async fn audit_actions(app: &TestApp, action: &str) -> Vec<Value> {
    crate::refresh::audit_actions(app, action)
        .await
        .into_iter()
        .map(|r| r.event.detail)
        .collect()
}

both_stores!(
    a_proof_binds_the_session_and_every_token_to_the_key,
    ed25519_proofs_are_accepted_too,
    the_attack_table,
    a_client_that_requires_dpop_refuses_requests_without_a_proof,
    nonces_are_asked_for_and_honoured_across_instances,
    a_proof_is_accepted_once_even_when_racing,
    a_grace_replay_of_a_bound_token_needs_the_key_too,
    the_verify_crate_takes_bound_tokens_with_proofs_only,
    a_flooding_user_fills_its_own_replay_quota_not_the_service,
    the_janitor_forgets_proofs_once_too_old,
);

async fn a_proof_binds_the_session_and_every_token_to_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = DpopKey::es256();
    let tokens = bound_session(&app, &key).await;
    assert_eq!(s(&tokens, "token_type"), "DPoP");
    let access = s(&tokens, "access_token");
    assert_eq!(payload(&access)["cnf"]["jkt"], key.jkt().as_str());

    // The refresh token rotates with a proof by the same key, and the new access token
    // is bound to it too.
    let next = refresh_with(&app, &s(&tokens, "refresh_token"), Some(&key.token_proof())).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    assert_eq!(s(&next.body, "token_type"), "DPoP");
    let access = s(&next.body, "access_token");
    assert_eq!(payload(&access)["cnf"]["jkt"], key.jkt().as_str());

    // The account routes take it with the DPoP scheme and a proof with `ath`.
    let me = me_with(
        &app,
        "DPoP",
        &access,
        &[&key.resource_proof("GET", &me_url(), &access)],
    )
    .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);

    // Introspection tells services the key (RFC 9449 §6.2) of an access token (a
    // refresh token is answered only to its own client: tests/api/hardening.rs).
    let (id, secret) = service_client(&app).await;
    for (token, kind) in [(access.as_str(), "DPoP")] {
        let (status, body) = json(
            app.client
                .post(app.url("/oauth/introspect"))
                .basic_auth(&id, Some(&secret))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["active"], true, "{body}");
        assert_eq!(body["token_type"], kind);
        assert_eq!(body["cnf"]["jkt"], key.jkt().as_str(), "{body}");
    }

    // Metadata says which proof algorithms are taken.
    let meta: Value = app.fetch("/.well-known/oauth-authorization-server").await;
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );

    // A login without a proof is a plain bearer session, as before.
    let (_, plain) = app.user_with_session().await;
    assert_eq!(s(&plain, "token_type"), "Bearer");
    assert!(payload(&s(&plain, "access_token")).get("cnf").is_none());
}

async fn ed25519_proofs_are_accepted_too(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = DpopKey::ed25519();
    let tokens = bound_session(&app, &key).await;
    assert_eq!(
        payload(&s(&tokens, "access_token"))["cnf"]["jkt"],
        key.jkt().as_str()
    );
    let next = refresh_with(&app, &s(&tokens, "refresh_token"), Some(&key.token_proof())).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
}

/// One row of the attack table: what was tried, what came back, what must.
struct Row {
    attack: &'static str,
    got: (StatusCode, String),
    want: (StatusCode, &'static str),
}

async fn the_attack_table(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = DpopKey::es256();
    let thief = DpopKey::es256();
    let tokens = bound_session(&app, &key).await;
    let refresh = s(&tokens, "refresh_token");
    let access = s(&tokens, "access_token");
    let email = new_user(&app).await;
    let mut rows = Vec::new();
    let mut add = |attack, a: &Answer, want: (StatusCode, &'static str)| {
        rows.push(Row {
            attack,
            got: (a.status, a.error().to_owned()),
            want,
        });
    };
    let bad_proof = (StatusCode::BAD_REQUEST, "invalid_dpop_proof");

    // The token endpoint.
    let proof = key.token_proof();
    let used = login_with(&app, &email, Some(&proof)).await;
    assert_eq!(used.status, StatusCode::OK);
    add(
        "proof replayed (same jti) at the token endpoint",
        &login_with(&app, &email, Some(&proof)).await,
        bad_proof,
    );

    let other_server = key.sign(
        &key.header(),
        &key.claims("POST", "https://evil.example/oauth/token"),
    );
    add(
        "wrong htu (a proof made for another server)",
        &login_with(&app, &email, Some(&other_server)).await,
        bad_proof,
    );
    let other_path = key.sign(
        &key.header(),
        &key.claims("POST", &format!("{ISSUER}/oauth/revoke")),
    );
    add(
        "wrong htu (another endpoint of this server)",
        &login_with(&app, &email, Some(&other_path)).await,
        bad_proof,
    );
    let wrong_method = key.sign(&key.header(), &key.claims("GET", TOKEN_URL));
    add(
        "wrong htm (GET for a POST)",
        &login_with(&app, &email, Some(&wrong_method)).await,
        bad_proof,
    );
    let mut stale = key.claims("POST", TOKEN_URL);
    stale["iat"] = (now() - 120).into();
    add(
        "stale iat (two minutes old)",
        &login_with(&app, &email, Some(&key.sign(&key.header(), &stale))).await,
        bad_proof,
    );
    let mut future = key.claims("POST", TOKEN_URL);
    future["iat"] = (now() + 120).into();
    add(
        "iat two minutes in the future",
        &login_with(&app, &email, Some(&key.sign(&key.header(), &future))).await,
        bad_proof,
    );
    // The header names the victim's public key; the thief signs with its own.
    let forged = thief.sign(&key.header(), &key.claims("POST", TOKEN_URL));
    add(
        "proof signed by another key than its jwk",
        &refresh_with(&app, &refresh, Some(&forged)).await,
        bad_proof,
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD
            .encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}).to_string()),
        URL_SAFE_NO_PAD.encode(key.claims("POST", TOKEN_URL).to_string())
    );
    add(
        "alg: none",
        &refresh_with(&app, &refresh, Some(&none)).await,
        bad_proof,
    );
    let secret = b"a shared secret the attacker chose";
    let hs_header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}});
    let hs_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(hs_header.to_string()),
        URL_SAFE_NO_PAD.encode(key.claims("POST", TOKEN_URL).to_string())
    );
    let hs_key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    let hs_sig =
        jsonwebtoken::crypto::sign(hs_input.as_bytes(), &hs_key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
    add(
        "symmetric alg (HS256 with the key in the jwk)",
        &login_with(&app, &email, Some(&format!("{hs_input}.{hs_sig}"))).await,
        bad_proof,
    );
    let mut leaky = key.header();
    leaky["jwk"]["d"] = URL_SAFE_NO_PAD.encode(random32()).into();
    add(
        "private key material (d) in the jwk header",
        &login_with(
            &app,
            &email,
            Some(&key.sign(&leaky, &key.claims("POST", TOKEN_URL))),
        )
        .await,
        bad_proof,
    );
    let mut untyped = key.header();
    untyped["typ"] = "JWT".into();
    add(
        "typ is not dpop+jwt",
        &login_with(
            &app,
            &email,
            Some(&key.sign(&untyped, &key.claims("POST", TOKEN_URL))),
        )
        .await,
        bad_proof,
    );
    add(
        "two DPoP headers",
        &token_with(
            &app,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            &[&key.token_proof(), &key.token_proof()],
        )
        .await,
        bad_proof,
    );

    // The stolen refresh token.
    add(
        "bound refresh token used as plain bearer (no proof)",
        &refresh_with(&app, &refresh, None).await,
        bad_proof,
    );
    add(
        "bound refresh token with a valid proof by the thief's key",
        &refresh_with(&app, &refresh, Some(&thief.token_proof())).await,
        (StatusCode::BAD_REQUEST, "invalid_grant"),
    );

    // The stolen access token.
    let unauthorized = |code| (StatusCode::UNAUTHORIZED, code);
    add(
        "bound access token as Authorization: Bearer",
        &me_with(&app, "Bearer", &access, &[]).await,
        unauthorized("invalid_token"),
    );
    add(
        "bound access token without a proof",
        &me_with(&app, "DPoP", &access, &[]).await,
        unauthorized("invalid_dpop_proof"),
    );
    add(
        "bound access token with the thief's proof",
        &me_with(
            &app,
            "DPoP",
            &access,
            &[&thief.resource_proof("GET", &me_url(), &access)],
        )
        .await,
        unauthorized("invalid_dpop_proof"),
    );
    let (_, other) = app.user_with_session().await;
    add(
        "proof whose ath is another token's",
        &me_with(
            &app,
            "DPoP",
            &access,
            &[&key.resource_proof("GET", &me_url(), &s(&other, "access_token"))],
        )
        .await,
        unauthorized("invalid_dpop_proof"),
    );
    add(
        "resource proof with the token endpoint's htu",
        &me_with(
            &app,
            "DPoP",
            &access,
            &[&key.resource_proof("GET", TOKEN_URL, &access)],
        )
        .await,
        unauthorized("invalid_dpop_proof"),
    );
    let good = key.resource_proof("GET", &me_url(), &access);
    assert_eq!(
        me_with(&app, "DPoP", &access, &[&good]).await.status,
        StatusCode::OK
    );
    add(
        "resource proof replayed",
        &me_with(&app, "DPoP", &access, &[&good]).await,
        unauthorized("invalid_dpop_proof"),
    );
    // Revocation (RFC 7009) of the stolen tokens by their own (public) client: refused
    // with the reason, and nothing revoked (checked below: the holder still refreshes).
    let revoke = |token: String, proof: Option<String>| {
        let mut r = app
            .client
            .post(app.url("/oauth/revoke"))
            .form(&[("token", token)]);
        if let Some(p) = proof {
            r = r.header("DPoP", p);
        }
        async move { answer(r.send().await.unwrap()).await }
    };
    let revoke_url = format!("{ISSUER}/oauth/revoke");
    add(
        "bound refresh token revoked without the key (to log the holder out)",
        &revoke(refresh.clone(), None).await,
        bad_proof,
    );
    add(
        "bound access token revoked with the thief's proof",
        &revoke(
            access.clone(),
            Some(thief.sign(&thief.header(), &thief.claims("POST", &revoke_url))),
        )
        .await,
        bad_proof,
    );
    add(
        "unbound bearer token sent with the DPoP scheme",
        &me_with(
            &app,
            "DPoP",
            &s(&other, "access_token"),
            &[&key.resource_proof("GET", &me_url(), &s(&other, "access_token"))],
        )
        .await,
        unauthorized("invalid_token"),
    );

    println!("| attack | expected | got |");
    println!("|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} {} | {} {} |",
            r.attack,
            r.want.0.as_u16(),
            r.want.1,
            r.got.0.as_u16(),
            r.got.1
        );
    }
    for r in &rows {
        assert_eq!((r.got.0, r.got.1.as_str()), r.want, "{}", r.attack);
    }

    // A bound access token refused as Bearer challenges with the DPoP scheme.
    let as_bearer = me_with(&app, "Bearer", &access, &[]).await;
    assert!(
        as_bearer
            .www_authenticate()
            .iter()
            .any(|c| c.starts_with("DPoP") && c.contains("error=\"invalid_token\"")),
        "{:?}",
        as_bearer.www_authenticate()
    );
    let no_proof = me_with(&app, "DPoP", &access, &[]).await;
    assert!(
        no_proof
            .www_authenticate()
            .iter()
            .any(|c| c.contains("algs=\"ES256 EdDSA\"")
                && c.contains("error=\"invalid_dpop_proof\"")),
        "{:?}",
        no_proof.www_authenticate()
    );

    // None of it spent, revoked or harmed anything: the holder refreshes as usual,
    // and the two uses of the stolen refresh token are security events.
    let next = refresh_with(&app, &refresh, Some(&key.token_proof())).await;
    assert_eq!(
        next.status,
        StatusCode::OK,
        "the holder still refreshes: {}",
        next.body
    );
    let events = audit_actions(&app, "refresh_dpop_refused").await;
    let presented: Vec<&str> = events
        .iter()
        .filter_map(|d| d["presented"].as_str())
        .collect();
    assert!(
        presented.contains(&"no_proof") && presented.contains(&"other_key"),
        "{events:?}"
    );
    let thief_event = events
        .iter()
        .find(|d| d["presented"] == "other_key")
        .unwrap();
    assert_eq!(thief_event["proof_jkt"], thief.jkt().as_str());
    assert_eq!(thief_event["bound_jkt"], key.jkt().as_str());
    assert_eq!(audit_actions(&app, "revoke_dpop_refused").await.len(), 2);

    // A thief repeating the attempt is counted every time but audited once a minute
    // per session and kind: the audit log does not grow with the flood.
    let refused_before = app
        .state
        .auth
        .metrics
        .refreshes(tessera::metrics::RefreshOutcome::dpop_refused);
    let live = s(&next.body, "refresh_token");
    for _ in 0..5 {
        let again = refresh_with(&app, &live, None).await;
        assert_eq!(again.error(), "invalid_dpop_proof");
        let revoked = revoke(live.clone(), None).await;
        assert_eq!(revoked.error(), "invalid_dpop_proof");
    }
    assert_eq!(
        app.state
            .auth
            .metrics
            .refreshes(tessera::metrics::RefreshOutcome::dpop_refused),
        refused_before + 5
    );
    assert_eq!(
        audit_actions(&app, "refresh_dpop_refused").await.len(),
        events.len(),
        "no new audit rows for repeats within the minute"
    );
    assert_eq!(audit_actions(&app, "revoke_dpop_refused").await.len(), 2);
    assert!(app.state.auth.metrics.dpop_refusals("missing") >= 5);
    assert!(app.state.auth.metrics.audit_left_out.get() >= 10);

    // With the key, revocation works as for any token.
    let mine = s(&next.body, "refresh_token");
    let proof = key.sign(&key.header(), &key.claims("POST", &revoke_url));
    assert_eq!(
        revoke(mine.clone(), Some(proof)).await.status,
        StatusCode::OK
    );
    let after = refresh_with(&app, &mine, Some(&key.token_proof())).await;
    assert_eq!(
        after.error(),
        "invalid_grant",
        "revoked with its key: {}",
        after.body
    );
    // Its access token, still unexpired, now names an ended session: the challenge is
    // the DPoP one, as for any refusal of a bound token.
    let ended_access = s(&next.body, "access_token");
    let ended = me_with(
        &app,
        "DPoP",
        &ended_access,
        &[&key.resource_proof("GET", &me_url(), &ended_access)],
    )
    .await;
    assert_eq!(
        (ended.status, ended.error()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    assert!(
        ended
            .www_authenticate()
            .iter()
            .any(|c| c.starts_with("DPoP") && c.contains("invalid_token")),
        "{:?}",
        ended.www_authenticate()
    );
}

async fn a_client_that_requires_dpop_refuses_requests_without_a_proof(backend: Backend) {
    let app = spawn_app(backend).await;
    let spa = app
        .state
        .auth
        .create_client_with_scopes("spa", false, "", true, now())
        .await
        .unwrap();
    assert!(spa.require_dpop);
    let email = new_user(&app).await;
    let id = spa.client_id.as_str();
    let form = [
        ("grant_type", "password"),
        ("username", email.as_str()),
        ("password", PASSWORD),
        ("client_id", id),
    ];
    let refused = token_with(&app, &form, &[]).await;
    assert_eq!(
        (refused.status, refused.error()),
        (StatusCode::BAD_REQUEST, "invalid_dpop_proof"),
        "{}",
        refused.body
    );
    let key = DpopKey::es256();
    let ok = token_with(&app, &form, &[&key.token_proof()]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(s(&ok.body, "token_type"), "DPoP");
    // The default client keeps taking bearer logins.
    assert_eq!(login_with(&app, &email, None).await.status, StatusCode::OK);
    // The admin list shows the policy.
    let (_, admin) = app.admin_session().await;
    let (_, list) = app
        .get("/v1/admin/clients", &s(&admin, "access_token"))
        .await;
    let listed = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == id)
        .unwrap()
        .clone();
    assert_eq!(listed["require_dpop"], true);
}

async fn nonces_are_asked_for_and_honoured_across_instances(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_DPOP_REQUIRE_NONCE", "true")]).await;
    let other = spawn_instance(
        &app.database_url,
        &app.secret_key,
        &[("TESSERA_DPOP_REQUIRE_NONCE", "true")],
    )
    .await;
    let key = DpopKey::es256();
    let email = new_user(&app).await;
    let asked = login_with(&app, &email, Some(&key.token_proof())).await;
    assert_eq!(
        (asked.status, asked.error()),
        (StatusCode::BAD_REQUEST, "use_dpop_nonce"),
        "{}",
        asked.body
    );
    let nonce = asked
        .headers
        .get("dpop-nonce")
        .expect("a DPoP-Nonce to retry with")
        .to_str()
        .unwrap()
        .to_owned();
    let mut claims = key.claims("POST", TOKEN_URL);
    claims["nonce"] = nonce.clone().into();
    // Another instance takes this instance's nonce.
    let ok = login_with(&other, &email, Some(&key.sign(&key.header(), &claims))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert!(
        ok.headers.get("dpop-nonce").is_some(),
        "a fresh nonce with every answer"
    );
    let mut forged = key.claims("POST", TOKEN_URL);
    forged["nonce"] = URL_SAFE_NO_PAD.encode(random32()).into();
    let refused = login_with(&app, &email, Some(&key.sign(&key.header(), &forged))).await;
    assert_eq!(refused.error(), "use_dpop_nonce");

    // Resource routes ask too, with a 401 and a DPoP challenge.
    let access = s(&ok.body, "access_token");
    let asked = me_with(
        &app,
        "DPoP",
        &access,
        &[&key.resource_proof("GET", &me_url(), &access)],
    )
    .await;
    assert_eq!(
        (asked.status, asked.error()),
        (StatusCode::UNAUTHORIZED, "use_dpop_nonce")
    );
    assert!(
        asked
            .www_authenticate()
            .iter()
            .any(|c| c.contains("error=\"use_dpop_nonce\"")),
        "{:?}",
        asked.www_authenticate()
    );
    let nonce = asked.headers.get("dpop-nonce").unwrap().to_str().unwrap();
    let mut claims = key.claims("GET", &me_url());
    claims["ath"] = URL_SAFE_NO_PAD
        .encode(Sha256::digest(access.as_bytes()))
        .into();
    claims["nonce"] = nonce.into();
    let me = me_with(&app, "DPoP", &access, &[&key.sign(&key.header(), &claims)]).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
}

async fn a_proof_is_accepted_once_even_when_racing(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = spawn_instance(&app.database_url, &app.secret_key, &[]).await;
    let key = DpopKey::es256();
    let tokens = bound_session(&app, &key).await;
    let refresh = s(&tokens, "refresh_token");
    // One proof, sixteen refreshes at once, half to each instance: one rotation.
    let proof = key.token_proof();
    let mut racers = Vec::new();
    for i in 0..16 {
        let target = if i % 2 == 0 { &app } else { &other };
        racers.push(refresh_with(target, &refresh, Some(&proof)));
    }
    let answers = futures_util::future::join_all(racers).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let replayed = answers
        .iter()
        .filter(|a| a.error() == "invalid_dpop_proof")
        .count();
    assert_eq!(
        (ok, replayed),
        (1, 15),
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    // The login proof was taken on one instance: the other refuses it too.
    let email = new_user(&app).await;
    let p = key.token_proof();
    assert_eq!(
        login_with(&app, &email, Some(&p)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        login_with(&other, &email, Some(&p)).await.error(),
        "invalid_dpop_proof"
    );
}

async fn a_grace_replay_of_a_bound_token_needs_the_key_too(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = DpopKey::es256();
    let thief = DpopKey::es256();
    let tokens = bound_session(&app, &key).await;
    let parent = s(&tokens, "refresh_token");
    let first = refresh_with(&app, &parent, Some(&key.token_proof())).await;
    assert_eq!(first.status, StatusCode::OK);
    // The holder's retry (a lost response) gets the same successor, bound again.
    let retry = refresh_with(&app, &parent, Some(&key.token_proof())).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(
        s(&retry.body, "refresh_token"),
        s(&first.body, "refresh_token")
    );
    assert_eq!(s(&retry.body, "token_type"), "DPoP");
    // A thief replaying the spent parent inside the window, with or without a key of
    // its own, gets nothing, and does not end the holder's session either.
    assert_eq!(
        refresh_with(&app, &parent, Some(&thief.token_proof()))
            .await
            .error(),
        "invalid_grant"
    );
    assert_eq!(
        refresh_with(&app, &parent, None).await.error(),
        "invalid_dpop_proof"
    );
    let next = refresh_with(
        &app,
        &s(&first.body, "refresh_token"),
        Some(&key.token_proof()),
    )
    .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
}

async fn the_verify_crate_takes_bound_tokens_with_proofs_only(backend: Backend) {
    use tessera::verify::{Verifier, VerifierConfig};
    let app = spawn_app(backend).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Verifier::new(VerifierConfig {
        base_url: app.base.clone(),
        resource_url: Some("https://api.example.com".into()),
        ..VerifierConfig::new(ISSUER, ISSUER)
    })
    .await
    .unwrap();
    let hello = |verifier: Verifier| {
        axum::Router::new()
            .route(
                "/hello",
                axum::routing::get(|user: tessera::verify::Authenticated| async move {
                    user.0.sub.to_string()
                }),
            )
            .with_state(verifier)
    };
    // Nested: the proof names the path the client called, `/api/hello`.
    let service = axum::Router::new().nest("/api", hello(verifier.clone()));
    tokio::spawn(async move { axum::serve(listener, service).await });
    let url = format!("http://{addr}/api/hello");
    let htu = "https://api.example.com/api/hello";
    let key = DpopKey::es256();
    let tokens = bound_session(&app, &key).await;
    let access = s(&tokens, "access_token");
    // Verified on its own (as a bearer token would be), a bound token is refused.
    assert_eq!(
        verifier.verify(&access).await,
        Err(tessera::verify::VerifyError::DpopBoundAsBearer)
    );
    let call = |scheme: &'static str, proof: Option<String>| {
        let mut r = app
            .client
            .get(&url)
            .header("Authorization", format!("{scheme} {access}"));
        if let Some(p) = proof {
            r = r.header("DPoP", p);
        }
        async move { answer(r.send().await.unwrap()).await }
    };
    let good = key.resource_proof("GET", htu, &access);
    assert_eq!(
        call("DPoP", Some(good.clone())).await.status,
        StatusCode::OK
    );
    let replay = call("DPoP", Some(good)).await;
    assert_eq!(
        (replay.status, replay.error()),
        (StatusCode::UNAUTHORIZED, "invalid_dpop_proof")
    );
    let bearer = call("Bearer", None).await;
    assert_eq!(
        (bearer.status, bearer.error()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    assert!(
        bearer
            .www_authenticate()
            .iter()
            .any(|c| c.starts_with("DPoP")),
        "{:?}",
        bearer.www_authenticate()
    );
    let wrong_host = call("DPoP", Some(key.resource_proof("GET", &url, &access))).await;
    assert_eq!(
        wrong_host.error(),
        "invalid_dpop_proof",
        "htu must be the configured public URL"
    );
    let thief = DpopKey::es256();
    let stolen = call("DPoP", Some(thief.resource_proof("GET", htu, &access))).await;
    assert_eq!(stolen.error(), "invalid_dpop_proof");
    let inner_path = call_with(
        &app,
        &url,
        &access,
        key.resource_proof("GET", "https://api.example.com/hello", &access),
    )
    .await;
    assert_eq!(
        inner_path.error(),
        "invalid_dpop_proof",
        "the nested router's own path is not the URL the client called"
    );
    // Unbound tokens keep working as bearer tokens.
    let (_, plain) = app.user_with_session().await;
    let ok = app
        .client
        .get(&url)
        .bearer_auth(s(&plain, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // A service that does not know its public URL takes no bound token, whatever Host
    // the request names: a proof made for another service (here: for this one's own
    // address, as a replay from elsewhere would claim) is not enough.
    let bare = Verifier::new(VerifierConfig {
        base_url: app.base.clone(),
        ..VerifierConfig::new(ISSUER, ISSUER)
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_url = format!("http://{}/hello", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hello(bare)).await });
    let refused = call_with(
        &app,
        &bare_url,
        &access,
        key.resource_proof("GET", &bare_url, &access),
    )
    .await;
    assert_eq!(
        (refused.status, refused.error()),
        (StatusCode::UNAUTHORIZED, "invalid_token"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.to_string().contains("resource_url"),
        "{}",
        refused.body
    );
    let ok = app
        .client
        .get(&bare_url)
        .bearer_auth(s(&plain, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        StatusCode::OK,
        "bearer tokens need no resource_url"
    );
}

async fn a_flooding_user_fills_its_own_replay_quota_not_the_service(backend: Backend) {
    use tessera::verify::{Verifier, VerifierConfig};
    let app = spawn_app(backend).await;
    let verifier = Verifier::new(VerifierConfig {
        base_url: app.base.clone(),
        resource_url: Some("https://api.example.com".into()),
        dpop_replay_per_user: 3,
        ..VerifierConfig::new(ISSUER, ISSUER)
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hello", listener.local_addr().unwrap());
    let service = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|_: tessera::verify::Authenticated| async { "hi" }),
        )
        .with_state(verifier);
    tokio::spawn(async move { axum::serve(listener, service).await });
    let htu = "https://api.example.com/hello";
    // One account, logged in with two keys: its quota is per user, not per key.
    let key = DpopKey::es256();
    let email = new_user(&app).await;
    let first = login_with(&app, &email, Some(&key.token_proof())).await;
    let other_key = DpopKey::es256();
    let second = login_with(&app, &email, Some(&other_key.token_proof())).await;
    let (a1, a2) = (
        s(&first.body, "access_token"),
        s(&second.body, "access_token"),
    );
    for _ in 0..2 {
        let ok = call_with(&app, &url, &a1, key.resource_proof("GET", htu, &a1)).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    }
    let ok = call_with(&app, &url, &a2, other_key.resource_proof("GET", htu, &a2)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let full = call_with(&app, &url, &a2, other_key.resource_proof("GET", htu, &a2)).await;
    assert_eq!(
        (full.status, full.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        "a full quota is not a verdict on the proof (a client must not refresh for it)"
    );
    assert_eq!(full.headers.get("retry-after").unwrap(), "1");
    // Another user is not affected.
    let bob = DpopKey::es256();
    let tokens = bound_session(&app, &bob).await;
    let b = s(&tokens, "access_token");
    let ok = call_with(&app, &url, &b, bob.resource_proof("GET", htu, &b)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

async fn call_with(app: &TestApp, url: &str, access: &str, proof: String) -> Answer {
    let r = app
        .client
        .get(url)
        .header("Authorization", format!("DPoP {access}"))
        .header("DPoP", proof);
    answer(r.send().await.unwrap()).await
}

async fn the_janitor_forgets_proofs_once_too_old(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = DpopKey::es256();
    bound_session(&app, &key).await;
    let auth = &app.state.auth;
    let what = [tessera::store::Prunable::DpopProofs];
    // Still young: kept (a replay now must still be caught).
    let kept = auth.prune_kinds(&what, now()).await;
    assert_eq!(kept.deleted.get("dpop_proofs").copied().unwrap_or(0), 0);
    // Past the acceptance window of its `iat`: gone.
    let later = now() + tessera::verify::dpop::REMEMBER_SECS + 2;
    let pruned = auth.prune_kinds(&what, later).await;
    assert_eq!(
        pruned.deleted.get("dpop_proofs").copied(),
        Some(1),
        "{pruned:?}"
    );
}
