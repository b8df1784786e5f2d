//! The OpenAPI document describes every route the router has, and the docs page
//! works with no internet access.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, spawn_app};

/// Every `.route("path", method(..).other(..))` written in `src/http/`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for chunk in flat.split(".route(\"").skip(1) {
            let (path, rest) = chunk.split_once('"').unwrap();
            let call = &rest[..rest.find(".route(").unwrap_or(rest.len())];
            for method in ["get", "post", "delete", "put", "patch"] {
                if call.contains(&format!(" {method}("))
                    || call.contains(&format!(".{method}("))
                    || call.contains(&format!("({method}("))
                {
                    routes.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc: Value = app.fetch("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routed = routes_in_source();
    assert!(routed.len() >= 20, "found the router's routes: {routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );

    // And each documented operation reaches a handler (not the 404/405 fallbacks).
    for (method, path) in &documented {
        let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        let response = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let fell_through = matches!(
            body["error"].as_str(),
            Some("not_found" | "method_not_allowed")
        ) && !path.contains("{id}");
        assert!(
            !fell_through && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status} {body}"
        );
    }

    // Error bodies are described too.
    assert!(doc["components"]["schemas"]["Error"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_serves_its_own_assets() {
    let app = spawn_app(Backend::Sqlite).await;
    let page = app.text("/docs/").await;
    assert!(page.contains("swagger-ui"));
    assert!(!page.contains("https://"), "no asset from a CDN");
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 100, "{asset}");
    }
    let init = app.text("/docs/swagger-initializer.js").await;
    assert!(init.contains("/openapi.json"));
}

/// Where the document and the server once disagreed (found by schemathesis): each
/// schema-valid edge is accepted and each schema-invalid one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_server_agree_at_the_edges() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, tokens) = app.user_with_session().await;
    let user = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, admin) = app.admin_session().await;
    let admin = admin["access_token"].as_str().unwrap().to_owned();

    // The logout body is optional (`null` too); a scope named anywhere must be valid.
    let logout = |query: &'static str, body: &'static str| {
        app.client
            .post(app.url(&format!("/v1/logout{query}")))
            .bearer_auth(&user)
            .header("content-type", "application/json")
            .body(body)
    };
    let refused = logout("?scope=AAA", r#"{"scope": "local"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "invalid query scope"
    );
    let null_body = logout("", "null").send().await.unwrap();
    assert_eq!(null_body.status(), StatusCode::NO_CONTENT, "a null body");

    // A present query parameter holds a value of its documented type.
    for path in [
        "/v1/admin/users?cursor=",
        "/v1/admin/users?limit=",
        "/v1/admin/audit?user_id=",
        "/v1/admin/audit?cursor=",
    ] {
        assert_eq!(
            app.get(path, &admin).await.0,
            StatusCode::BAD_REQUEST,
            "{path}"
        );
    }
    assert_eq!(
        app.get("/v1/admin/audit?action=", &admin).await.0,
        StatusCode::OK
    );

    // Passwords are counted in characters, as JSON Schema's minLength counts them.
    let (status, body) = app
        .signup(
            "short-in-chars@example.com",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .signup("eight-chars@example.com", &"\u{e9}".repeat(8))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A client secret that names no client is failed client authentication.
    let (status, body) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_secret", "null"),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );

    // The token request is documented one shape per grant, each naming what it needs.
    let doc: Value = app.fetch("/openapi.json").await;
    let grants = &doc["components"]["schemas"]["TokenGrant"]["oneOf"];
    let required: Vec<Value> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["required"].clone())
        .collect();
    assert_eq!(
        required,
        vec![
            serde_json::json!(["username", "password", "grant_type"]),
            serde_json::json!(["refresh_token", "grant_type"]),
        ],
        "{grants}"
    );
}
