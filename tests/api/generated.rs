//! Generated requests to the OAuth endpoints (token, revoke, introspect) over real HTTP:
//! form or JSON or raw bytes, repeated and unknown parameters, values drawn from junk
//! and from live credentials alike. Whatever arrives: never a 5xx, never the 408 of a
//! handler that did not finish, every error exactly RFC 6749 §5.2, every success in
//! its documented shape. `PROPTEST_CASES=N` runs more than the default.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, s, spawn_app_with};
use crate::services::service_client;

both_stores!(generated_oauth_requests_get_a_clear_answer);

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
enum Body {
    Form(Vec<(String, String)>),
    Json(Value),
    /// Bytes as they come, under a content type.
    Raw(&'static str, Vec<u8>),
}

#[derive(Debug, Clone)]
struct Request {
    path: &'static str,
    body: Body,
    authorization: Option<String>,
}

const NAMES: [&str; 11] = [
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
    "token",
    "token_type_hint",
    "GRANT_TYPE",
    "",
];

/// Live values (a user's email and password, a refresh and an access token, a
/// confidential client) beside junk, so some requests get past the parser.
struct Pool {
    live: Vec<String>,
}

fn value(pool: &[String]) -> impl Strategy<Value = String> + use<> {
    prop_oneof![
        prop::sample::select(pool.to_vec()),
        prop::sample::select(vec![
            "password".to_owned(),
            "refresh_token".to_owned(),
            "client_credentials".to_owned(),
            String::new(),
            " ".to_owned(),
            "app".to_owned(),
            "openid profile".to_owned(),
        ]),
        any::<String>(),
        "[ -~]{0,64}",
        (0..70_000_usize).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_value(pool: &[String]) -> impl Strategy<Value = Value> + use<> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        value(pool).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// A request that works, then a few edits: a parameter dropped, repeated, given a
/// generated value, or an unknown one added; sent as a form or as JSON.
fn edited(pool: &Pool) -> impl Strategy<Value = Request> + use<> {
    let live = pool.live.clone();
    let [email, password, refresh, access, _, _, basic] =
        [0, 1, 2, 3, 4, 5, 6].map(|i| live[i].clone());
    let templates = vec![
        (
            "/oauth/token",
            vec![
                ("grant_type", "password".to_owned()),
                ("username", email),
                ("password", password),
            ],
            None,
        ),
        (
            "/oauth/token",
            vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh.clone()),
            ],
            None,
        ),
        (
            "/oauth/introspect",
            vec![("token", access)],
            Some(format!("Basic {basic}")),
        ),
        (
            "/oauth/introspect",
            vec![("token", refresh)],
            Some(format!("Basic {basic}")),
        ),
        (
            "/oauth/revoke",
            vec![("token", "tsr_unknown".to_owned())],
            None,
        ),
    ];
    let edit = (0..4_u8, any::<prop::sample::Index>(), name(), value(&live));
    (
        prop::sample::select(templates),
        prop::collection::vec(edit, 0..3),
        any::<bool>(),
    )
        .prop_map(|((path, params, authorization), edits, as_json)| {
            let mut pairs: Vec<(String, String)> =
                params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            for (kind, at, name, value) in edits {
                match kind {
                    0 if !pairs.is_empty() => {
                        pairs.remove(at.index(pairs.len()));
                    }
                    1 if !pairs.is_empty() => {
                        let repeated = pairs[at.index(pairs.len())].clone();
                        pairs.push(repeated);
                    }
                    2 if !pairs.is_empty() => {
                        let i = at.index(pairs.len());
                        pairs[i].1 = value;
                    }
                    _ => pairs.push((name, value)),
                }
            }
            let body = if as_json {
                Body::Json(Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k, Value::from(v)))
                        .collect(),
                ))
            } else {
                Body::Form(pairs)
            };
            Request {
                path,
                body,
                authorization,
            }
        })
}

fn request(pool: &Pool) -> impl Strategy<Value = Request> + use<> {
    prop_oneof![edited(pool), generated(pool)]
}

fn generated(pool: &Pool) -> impl Strategy<Value = Request> + use<> {
    let live = pool.live.clone();
    let pairs = prop::collection::vec((name(), value(&live)), 0..8);
    let object = prop::collection::btree_map(
        name(),
        prop_oneof![3 => value(&live).prop_map(Value::from), 1 => json_value(&live)],
        0..8,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    let body = prop_oneof![
        3 => pairs.prop_map(Body::Form),
        2 => object.prop_map(Body::Json),
        1 => json_value(&live).prop_map(Body::Json),
        1 => (
            prop::sample::select(vec![
                "application/x-www-form-urlencoded",
                "application/json",
                "text/plain",
                "",
            ]),
            prop::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(ct, bytes)| Body::Raw(ct, bytes)),
    ];
    let authorization = prop::option::of(prop_oneof![
        prop::sample::select(live.clone()).prop_map(|v| format!("Basic {v}")),
        "(Basic|Bearer|basic) [ -~]{0,80}",
    ]);
    (
        prop::sample::select(vec!["/oauth/token", "/oauth/revoke", "/oauth/introspect"]),
        body,
        authorization,
    )
        .prop_map(|(path, body, authorization)| Request {
            path,
            body,
            authorization,
        })
}

/// A connection per request: a generated request may be answered before its body is
/// read (a wrong content type), after which the server may close the connection; a
/// pooled client could then send the next request on it as it closes.
fn unpooled() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    })
}

async fn send(app: &TestApp, r: &Request) -> (StatusCode, String, Option<String>) {
    let mut builder = unpooled().post(app.url(r.path));
    builder = match &r.body {
        Body::Form(pairs) => builder.form(pairs),
        Body::Json(v) => builder.json(v),
        Body::Raw(ct, bytes) => {
            let b = builder.body(bytes.clone());
            if ct.is_empty() {
                b
            } else {
                b.header("content-type", *ct)
            }
        }
    };
    if let Some(a) = &r.authorization
        && let Ok(v) = reqwest::header::HeaderValue::from_str(a)
    {
        builder = builder.header("authorization", v);
    }
    let response = builder
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer to {r:?}: {e}"));
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, response.text().await.unwrap_or_default(), cache)
}

fn check(r: &Request, status: StatusCode, text: &str, cache: Option<&str>) -> Result<(), String> {
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Err(format!("{status}: {text}"));
    }
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if !status.is_success() {
        let shape_ok = body.as_object().is_some_and(|o| {
            o.len() == 2 && o["error"].is_string() && o["error_description"].is_string()
        });
        return if shape_ok {
            Ok(())
        } else {
            Err(format!("{status}: error body not RFC 6749 §5.2: {text}"))
        };
    }
    let ok = match r.path {
        "/oauth/token" => {
            body["token_type"] == "Bearer"
                && body["access_token"].is_string()
                && body["refresh_token"].is_string()
                && body["expires_in"].is_i64()
                && body["scope"].is_string()
                && cache == Some("no-store")
        }
        "/oauth/introspect" => body["active"].is_boolean(),
        _ => status == StatusCode::OK && text.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{status}: success off its shape: {text}"))
    }
}

async fn generated_oauth_requests_get_a_clear_answer(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_LOGIN_THROTTLE", "off")]).await;
    let (id, secret) = service_client(&app).await;
    let (email, tokens) = app.user_with_session().await;
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{id}:{secret}"),
    );
    let pool = Pool {
        live: vec![
            email,
            PASSWORD.to_owned(),
            s(&tokens, "refresh_token"),
            s(&tokens, "access_token"),
            id,
            secret,
            basic,
        ],
    };
    let mut runner = TestRunner::new(Config {
        cases: cases(48),
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    // Printed on failure (the harness captures it): how far the inputs got.
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<(&str, u16), usize>::new());
    let result = runner.run(&request(&pool), |r| {
        let (status, text, cache) = tokio::task::block_in_place(|| handle.block_on(send(&app, &r)));
        *seen
            .lock()
            .unwrap()
            .entry((r.path, status.as_u16()))
            .or_default() += 1;
        check(&r, status, &text, cache.as_deref()).map_err(TestCaseError::fail)
    });
    eprintln!("statuses by endpoint: {:?}", seen.lock().unwrap());
    if let Err(e) = result {
        panic!("{e}");
    }
    // The control: the parameters that must work still do after all of that.
    let (status, body) = app
        .token(&[("grant_type", "refresh_token"), ("refresh_token", "junk")])
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_grant"))
    );
}
