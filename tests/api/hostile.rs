//! Hostile access tokens, one table: every entry must be refused alike by `/v1/me`
//! (401 `invalid_token`), by introspection (200 `{"active": false}`, RFC 7662) and by
//! `tessera::verify` (an error). Entries signed by the server's own key differ from a
//! good token in one respect only, so that respect is why they fail; the control rows
//! (the real token, and the same claims through the same signing helper) must pass all
//! three, so the table can fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera::tokens::keys::{KeySet, SecretKey, generate};
use tessera::verify::{Verifier, VerifierConfig, VerifyError};

use crate::both_stores;
use crate::helpers::{Backend, ISSUER, TestApp, json, s, spawn_app};
use crate::services::service_client;

both_stores!(hostile_access_tokens_are_refused_everywhere);

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decoded(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// `{...}` with `member` (raw JSON text, e.g. `"aud":"x"`) added first or last, so a
/// key can be duplicated in either order.
fn with_member(object: &Value, member: &str, first: bool) -> String {
    let text = object.to_string();
    if first {
        format!("{{{member},{}", &text[1..])
    } else {
        format!("{},{member}}}", &text[..text.len() - 1])
    }
}

/// A token over raw header and payload JSON text, signed by `keys`' active key.
fn signed(keys: &KeySet, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = keys.sign_input(&input);
    format!("{input}.{signature}")
}

/// The same base64url text with different padding bits in its last character: the
/// same bytes to a lenient decoder, a different string to a strict one.
fn non_canonical(part: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *part.as_bytes().last().unwrap();
    let value = ALPHABET.iter().position(|c| *c == last).unwrap();
    // An Ed25519 signature (64 bytes, 86 characters) leaves 4 unused low bits.
    let flipped = ALPHABET[value ^ 1] as char;
    format!("{}{flipped}", &part[..part.len() - 1])
}

/// A TCP listener that only counts connections: `jku`/`x5u` must never be fetched.
async fn trap() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, hits)
}

struct Case {
    name: String,
    token: String,
    /// What the verifier must answer, where the reason matters (size checked first).
    verifier: Option<VerifyError>,
}

fn case(name: impl Into<String>, token: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        token: token.into(),
        verifier: None,
    }
}

async fn me(app: &TestApp, token: &str) -> (StatusCode, Value, String) {
    let response = app
        .client
        .get(app.url("/v1/me"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, body) = json(response).await;
    (status, body, challenge)
}

async fn introspect(app: &TestApp, client: &(String, String), token: &str) -> (StatusCode, Value) {
    json(
        app.client
            .post(app.url("/oauth/introspect"))
            .basic_auth(&client.0, Some(&client.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn hostile_access_tokens_are_refused_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let service = service_client(&app).await;
    let verifier = Verifier::new(VerifierConfig {
        base_url: app.base.clone(),
        ..VerifierConfig::new(ISSUER, ISSUER)
    })
    .await
    .unwrap();
    let (_, tokens) = app.user_with_session().await;
    let good = s(&tokens, "access_token");
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, sig) = (parts[0], parts[1], parts[2]);
    let header = decoded(h);
    let claims = decoded(p);
    let keys = app.state.auth.keys();
    let kid = keys.active_kid().to_owned();
    let now = tessera::http::extract::now();
    let header_with = |f: &dyn Fn(&mut Value)| {
        let mut v = header.clone();
        f(&mut v);
        v.to_string()
    };
    let claims_with = |f: &dyn Fn(&mut Value)| {
        let mut v = claims.clone();
        f(&mut v);
        v.to_string()
    };
    let claims_value = |f: &dyn Fn(&mut Value)| {
        let mut v = claims.clone();
        f(&mut v);
        v
    };
    let ours = |header: &str, payload: &str| signed(&keys, header, payload);

    // Controls: the real token, and the same header and claims through `signed`.
    let control = ours(&header.to_string(), &claims.to_string());
    for token in [&good, &control] {
        let (status, body, _) = me(&app, token).await;
        assert_eq!(status, StatusCode::OK, "control /v1/me: {body}");
        let (status, body) = introspect(&app, &service, token).await;
        assert_eq!(
            (status, &body["active"]),
            (StatusCode::OK, &json!(true)),
            "control introspection: {body}"
        );
        assert!(verifier.verify(token).await.is_ok(), "control verifier");
    }

    // An attacker's own Ed25519 key, and its public JWK.
    let attacker_secret = SecretKey::generate();
    let attacker_stored = generate(Algorithm::EdDSA, &attacker_secret, 0).unwrap();
    let attacker_jwk: Value = serde_json::from_str(&attacker_stored.public_jwk).unwrap();
    let attacker = KeySet::load(&attacker_secret, &[attacker_stored], None, 0).unwrap();
    let attacker_kid = attacker.active_kid().to_owned();
    let theirs = |header: &str, payload: &str| signed(&attacker, header, payload);
    let (trap_url, trap_hits) = trap().await;

    // HS256 keyed with what the JWKS publishes (algorithm confusion).
    let jwks_text = app.text("/.well-known/jwks.json").await;
    let jwks: Value = serde_json::from_str(&jwks_text).unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let hs256 = |secret: &[u8]| {
        let header = header_with(&|v| v["alg"] = json!("HS256"));
        let input = format!("{}.{}", b64(header), p);
        let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
        let mac = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{mac}")
    };

    let mut cases = vec![
        // alg none, and algorithm confusion.
        case(
            "alg none, no signature",
            format!("{}.{p}.", b64(header_with(&|v| v["alg"] = json!("none")))),
        ),
        case(
            "alg none, with the real signature",
            format!(
                "{}.{p}.{sig}",
                b64(header_with(&|v| v["alg"] = json!("none")))
            ),
        ),
        case(
            "alg NONE",
            format!("{}.{p}.", b64(header_with(&|v| v["alg"] = json!("NONE")))),
        ),
        case(
            "alg absent",
            ours(
                &header_with(&|v| {
                    v.as_object_mut().unwrap().remove("alg");
                }),
                p,
            ),
        ),
        case("HS256 keyed with the JWK's x text", hs256(x.as_bytes())),
        case(
            "HS256 keyed with the raw public key",
            hs256(&URL_SAFE_NO_PAD.decode(&x).unwrap()),
        ),
        case(
            "HS256 keyed with the JWKS document",
            hs256(jwks_text.as_bytes()),
        ),
        case(
            "alg ES256 naming an EdDSA key",
            ours(
                &header_with(&|v| v["alg"] = json!("ES256")),
                &claims.to_string(),
            ),
        ),
        // kid.
        case(
            "kid absent",
            ours(
                &header_with(&|v| {
                    v.as_object_mut().unwrap().remove("kid");
                }),
                &claims.to_string(),
            ),
        ),
        case(
            "kid null",
            ours(
                &header_with(&|v| v["kid"] = Value::Null),
                &claims.to_string(),
            ),
        ),
        case(
            "kid a number",
            ours(&header_with(&|v| v["kid"] = json!(1)), &claims.to_string()),
        ),
        case(
            "kid with a trailing space",
            ours(
                &header_with(&|v| v["kid"] = json!(format!("{kid} "))),
                &claims.to_string(),
            ),
        ),
        case(
            "kid upper-cased",
            ours(
                &header_with(&|v| v["kid"] = json!(kid.to_uppercase())),
                &claims.to_string(),
            ),
        ),
    ];
    for hostile_kid in [
        "no-such-key",
        "",
        "../../../../../../etc/passwd",
        "/dev/null",
        "file:///dev/zero",
        "' OR '1'='1",
        "x'; DROP TABLE signing_keys; --",
        "%00",
        "\u{0}",
        "\\\\?\\C:\\keys",
        "http://127.0.0.1:1/jwks.json",
    ] {
        cases.push(case(
            format!("kid {hostile_kid:?}"),
            ours(
                &header_with(&|v| v["kid"] = json!(hostile_kid)),
                &claims.to_string(),
            ),
        ));
    }
    cases.push(case(
        "kid of 2000 characters",
        ours(
            &header_with(&|v| v["kid"] = json!("k".repeat(2000))),
            &claims.to_string(),
        ),
    ));
    // Keys the token brings along: never trusted, never fetched.
    let attacker_header = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": attacker_kid});
        f(&mut v);
        v.to_string()
    };
    cases.extend([
        case(
            "jwk: the attacker's key embedded, its own kid",
            theirs(
                &attacker_header(&|v| v["jwk"] = attacker_jwk.clone()),
                &claims.to_string(),
            ),
        ),
        case(
            "jwk: the attacker's key embedded, the server's kid",
            theirs(
                &attacker_header(&|v| {
                    v["jwk"] = attacker_jwk.clone();
                    v["kid"] = json!(kid);
                }),
                &claims.to_string(),
            ),
        ),
        case(
            "jwk: the attacker's key embedded, no kid",
            theirs(
                &attacker_header(&|v| {
                    v["jwk"] = attacker_jwk.clone();
                    v.as_object_mut().unwrap().remove("kid");
                }),
                &claims.to_string(),
            ),
        ),
        case(
            "jku: the attacker's JWKS",
            theirs(
                &attacker_header(&|v| v["jku"] = json!(trap_url)),
                &claims.to_string(),
            ),
        ),
        case(
            "jku with the server's kid",
            theirs(
                &attacker_header(&|v| {
                    v["jku"] = json!(trap_url);
                    v["kid"] = json!(kid);
                }),
                &claims.to_string(),
            ),
        ),
        case(
            "x5u: the attacker's certificate",
            theirs(
                &attacker_header(&|v| v["x5u"] = json!(trap_url)),
                &claims.to_string(),
            ),
        ),
        case(
            "x5c: a junk certificate chain",
            theirs(
                &attacker_header(&|v| v["x5c"] = json!([STANDARD.encode(b"not a cert")])),
                &claims.to_string(),
            ),
        ),
        // typ (RFC 9068 §4: at+jwt only).
        case(
            "typ JWT",
            ours(
                &header_with(&|v| v["typ"] = json!("JWT")),
                &claims.to_string(),
            ),
        ),
        case(
            "typ absent",
            ours(
                &header_with(&|v| {
                    v.as_object_mut().unwrap().remove("typ");
                }),
                &claims.to_string(),
            ),
        ),
        case(
            "typ application/jwt",
            ours(
                &header_with(&|v| v["typ"] = json!("application/jwt")),
                &claims.to_string(),
            ),
        ),
        case(
            "typ id_token+jwt",
            ours(
                &header_with(&|v| v["typ"] = json!("id_token+jwt")),
                &claims.to_string(),
            ),
        ),
        // Claims.
        case(
            "iss of another issuer",
            ours(
                &header.to_string(),
                &claims_with(&|v| v["iss"] = json!("https://evil.example")),
            ),
        ),
        case(
            "iss absent",
            ours(
                &header.to_string(),
                &claims_with(&|v| {
                    v.as_object_mut().unwrap().remove("iss");
                }),
            ),
        ),
        case(
            "aud of another service",
            ours(
                &header.to_string(),
                &claims_with(&|v| v["aud"] = json!("https://other.example")),
            ),
        ),
        case(
            "aud absent",
            ours(
                &header.to_string(),
                &claims_with(&|v| {
                    v.as_object_mut().unwrap().remove("aud");
                }),
            ),
        ),
        case(
            "exp an hour ago",
            ours(
                &header.to_string(),
                &claims_with(&|v| v["exp"] = json!(now - 3600)),
            ),
        ),
        case(
            "exp absent",
            ours(
                &header.to_string(),
                &claims_with(&|v| {
                    v.as_object_mut().unwrap().remove("exp");
                }),
            ),
        ),
        case(
            "exp a string",
            ours(
                &header.to_string(),
                &claims_with(&|v| v["exp"] = json!((now + 900).to_string())),
            ),
        ),
        case(
            "exp negative",
            ours(&header.to_string(), &claims_with(&|v| v["exp"] = json!(-1))),
        ),
        case(
            "nbf an hour ahead",
            ours(
                &header.to_string(),
                &claims_with(&|v| v["nbf"] = json!(now + 3600)),
            ),
        ),
        case(
            "nbf a string",
            ours(
                &header.to_string(),
                &claims_with(&|v| v["nbf"] = json!("soon")),
            ),
        ),
        // Duplicate members: a parser that keeps the first and one that keeps the last
        // must not be able to disagree about a token we accept.
        case(
            "duplicate aud, foreign first",
            ours(
                &header.to_string(),
                &with_member(&claims, r#""aud":"https://other.example""#, true),
            ),
        ),
        case(
            "duplicate aud, foreign last",
            ours(
                &header.to_string(),
                &with_member(&claims, r#""aud":"https://other.example""#, false),
            ),
        ),
        case(
            "duplicate exp, expired first",
            ours(
                &header.to_string(),
                &with_member(&claims, r#""exp":1"#, true),
            ),
        ),
        case(
            "duplicate exp, expired last",
            ours(
                &header.to_string(),
                &with_member(&claims, r#""exp":1"#, false),
            ),
        ),
        case(
            "duplicate sub",
            ours(
                &header.to_string(),
                &with_member(
                    &claims,
                    &format!(r#""sub":"{}""#, uuid::Uuid::new_v4()),
                    false,
                ),
            ),
        ),
        case(
            "duplicate roles",
            ours(
                &header.to_string(),
                &with_member(
                    &claims_value(&|v| v["roles"] = json!([])),
                    r#""roles":["admin"]"#,
                    false,
                ),
            ),
        ),
        case(
            "duplicate alg, none last",
            ours(
                &with_member(&header, r#""alg":"none""#, false),
                &claims.to_string(),
            ),
        ),
        case(
            "duplicate alg, none first",
            ours(
                &with_member(&header, r#""alg":"none""#, true),
                &claims.to_string(),
            ),
        ),
        case(
            "duplicate typ",
            ours(
                &with_member(&header, r#""typ":"JWT""#, false),
                &claims.to_string(),
            ),
        ),
        case(
            "duplicate kid",
            ours(
                &with_member(&header, r#""kid":"no-such-key""#, true),
                &claims.to_string(),
            ),
        ),
        // Not JSON objects. (Unknown claims are ignored, as RFC 7519 §4 says, however
        // deeply nested: within the size limit that is bounded work.)
        case("header JSON null", ours("null", &claims.to_string())),
        case("header a JSON array", ours("[]", &claims.to_string())),
        case("header not JSON", ours("{alg:EdDSA}", &claims.to_string())),
        case(
            "header nested 1000 deep",
            ours(
                &with_member(
                    &header,
                    &format!(r#""x":{}{}"#, "[".repeat(1000), "]".repeat(1000)),
                    false,
                ),
                &claims.to_string(),
            ),
        ),
        case("payload JSON null", ours(&header.to_string(), "null")),
        case("payload a number", ours(&header.to_string(), "1")),
        // Bad base64.
        case("padding on every part", format!("{h}==.{p}==.{sig}==")),
        case("padding on the signature", format!("{h}.{p}.{sig}==")),
        case(
            "signature with non-canonical trailing bits",
            format!("{h}.{p}.{}", non_canonical(sig)),
        ),
        case("standard alphabet (+ and /)", {
            // A token we sign whose payload is sure to hold a URL-safe `-` (six `~` hold
            // an aligned 0x7E7E7E, which is "fn5-"): in the standard alphabet it must
            // differ from the valid token, or the case would test nothing.
            let valid = ours(
                &header.to_string(),
                &claims_with(&|v| v["pad"] = json!("~~~~~~")),
            );
            let standard = valid.replace('-', "+").replace('_', "/");
            assert_ne!(standard, valid);
            standard
        }),
        case(
            "a space inside",
            format!("{h}.{} {}.{sig}", &p[..10], &p[10..]),
        ),
        case("a percent-escape inside", format!("{h}.{p}.%41{sig}")),
        case("header of one character", format!("A.{p}.{sig}")),
        case("payload of one character", format!("{h}.A.{sig}")),
        case("signature of one character", format!("{h}.{p}.A")),
        case("signature empty", format!("{h}.{p}.")),
        case(
            "signature truncated",
            format!("{h}.{p}.{}", &sig[..sig.len() - 4]),
        ),
        case("signature doubled", format!("{h}.{p}.{sig}{sig}")),
        // Extra and missing dots.
        case("a trailing dot", format!("{good}.")),
        case("a fourth part", format!("{good}.{sig}")),
        case("a leading dot", format!(".{good}")),
        case("a double dot", format!("{h}..{p}.{sig}")),
        case("the header twice", format!("{h}.{h}.{p}.{sig}")),
        case("two parts", format!("{h}.{p}")),
        case("one part", h.to_owned()),
        case("dots only", "..."),
        case("one dot", "."),
        case("a refresh-token shape", format!("tsr_{}", "A".repeat(43))),
    ]);
    // Oversized (past MAX_TOKEN_BYTES, under the header limit): refused on length alone,
    // before any decoding, so the work does not grow with the attacker's input.
    let over = tessera::verify::MAX_TOKEN_BYTES + 1;
    for (name, token) in [
        (
            "oversized header part",
            ours(
                &with_member(&header, &format!(r#""pad":"{}""#, "a".repeat(over)), false),
                &claims.to_string(),
            ),
        ),
        (
            "oversized payload part",
            ours(
                &header.to_string(),
                &with_member(&claims, &format!(r#""pad":"{}""#, "a".repeat(over)), false),
            ),
        ),
        (
            "oversized signature part",
            format!("{h}.{p}.{sig}{}", "A".repeat(over)),
        ),
        ("oversized, 12 KiB of dots", ".".repeat(12 * 1024)),
    ] {
        cases.push(Case {
            verifier: Some(VerifyError::TooLarge),
            ..case(name, token)
        });
    }

    let mut failures = Vec::new();
    for c in &cases {
        let (status, body, challenge) = me(&app, &c.token).await;
        if status != StatusCode::UNAUTHORIZED
            || body["error"] != "invalid_token"
            || !challenge.starts_with("Bearer")
        {
            failures.push(format!(
                "{}: /v1/me answered {status} {body} (challenge {challenge:?})",
                c.name
            ));
        }
        let (status, body) = introspect(&app, &service, &c.token).await;
        if status != StatusCode::OK || body != json!({"active": false}) {
            failures.push(format!(
                "{}: introspection answered {status} {body}",
                c.name
            ));
        }
        let verified = verifier.verify(&c.token).await;
        let verifier_ok = match (&verified, c.verifier) {
            (Err(e), Some(expected)) => *e == expected,
            (Err(_), None) => true,
            (Ok(_), _) => false,
        };
        if !verifier_ok {
            failures.push(format!(
                "{}: the verifier answered {:?}, expected {}",
                c.name,
                verified.map(|claims| claims.sub),
                c.verifier
                    .map_or("an error".to_owned(), |e| format!("{e:?}"))
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile tokens were not refused:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        trap_hits.load(Ordering::SeqCst),
        0,
        "a jku/x5u URL from a token was fetched"
    );
    // Far past every limit: the verifier still refuses on length alone.
    assert_eq!(
        verifier.verify(&"a.".repeat(512 * 1024)).await,
        Err(VerifyError::TooLarge)
    );
}
